//! A sharded LRU + TTL cache with O(1) eviction and a strict size bound.
//!
//! Layout: a power-of-two number of shards, each a mutex around an open-addressing index (key
//! hash -> slot), a slab of one-cache-line nodes (keys up to 32 bytes inline) and an intrusive
//! doubly linked recency list (head = most recent). Every use
//! stamps the node from one global counter, and each shard publishes the stamp of its tail in an
//! array of atomics. To make room, the cache reads those stamps (one load per shard, at most
//! [`MAX_SHARDS`]) and evicts the tail with the oldest stamp: constant work that does not grow
//! with the number of entries, and exact LRU when no other thread writes at the same moment.
//!
//! `max_size` is a hard bound: an insert of a new key first reserves a slot in an atomic counter
//! that never exceeds `max_size`, evicting to make one when the cache is full. Values are never
//! dropped while a shard lock is held, so a value whose destructor re-enters the cache (a Python
//! `__del__`) cannot deadlock it.

mod index;
pub mod sweeper;

use std::hash::BuildHasher;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use parking_lot::{Mutex, MutexGuard};

use self::index::Index;

use crate::core::clock::{Clock, MonotonicClock};
use crate::core::error::{Error, Result};

/// The most shards a cache is split into (eviction reads one stamp per shard).
pub const MAX_SHARDS: usize = 16;
// The shard is taken from the top 4 bits of the hash.
const _: () = assert!(MAX_SHARDS <= 16 && MAX_SHARDS.is_power_of_two());
/// Aim for at least this many entries per shard, so small caches keep one exact LRU list.
const ENTRIES_PER_SHARD: usize = 256;
const NIL: u32 = u32::MAX;
/// Tail stamp of an empty shard: never the oldest.
const EMPTY: u64 = u64::MAX;
/// A deadline of 0 means "never expires".
const NEVER: u64 = 0;

/// Counters of one cache, as reported by [`Cache::stats`].
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    /// Reads that found a live entry.
    pub hits: u64,
    /// Reads that found nothing, or an expired entry.
    pub misses: u64,
    /// Writes (`set`, including replacements).
    pub sets: u64,
    /// Live entries removed by `delete` or `delete_prefix`.
    pub deletes: u64,
    /// Live entries removed to make room.
    pub evictions: u64,
    /// Entries removed because their time to live ran out (on read, on eviction or by the sweeper).
    pub expirations: u64,
    /// Entries held, possibly including expired ones not swept yet.
    pub size: u64,
    /// The bound on `size`.
    pub max_size: u64,
}

impl Stats {
    /// Adds another cache's counters to these (sizes included).
    pub fn accumulate(&mut self, other: &Stats) {
        self.hits += other.hits;
        self.misses += other.misses;
        self.sets += other.sets;
        self.deletes += other.deletes;
        self.evictions += other.evictions;
        self.expirations += other.expirations;
        self.size += other.size;
        self.max_size += other.max_size;
    }
}

/// Keys up to this many bytes live inside their node, which is then exactly one 64-byte cache
/// line: a lookup touches the table and one line, with no pointer to chase.
pub const INLINE_KEY: usize = 32;

/// Marks of the last byte of a [`KeyBuf`]. A key of exactly [`INLINE_KEY`] bytes is stored raw
/// when its last byte is below `LEN_MARK`, which every UTF-8 string's last byte is (ASCII or a
/// continuation byte), the same trick as the `compact_str` crate.
const LEN_MARK: u8 = 0xC0;
const HEAP_MARK: u8 = 0xFF;

/// A key's bytes in 32 bytes: inline when they fit, else a pointer and length to a heap copy
/// (the pointer kept as a pointer, so its provenance survives).
#[repr(C)]
union KeyBuf {
    bytes: [u8; INLINE_KEY],
    heap: HeapKey,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct HeapKey {
    ptr: *mut u8,
    len: usize,
    _pad: [u8; INLINE_KEY - 1 - 2 * std::mem::size_of::<usize>()],
    mark: u8,
}

// SAFETY: a KeyBuf owns its heap copy exclusively (like a `Box<[u8]>`) and never shares it.
unsafe impl Send for KeyBuf {}
// SAFETY: shared access only reads the bytes.
unsafe impl Sync for KeyBuf {}

impl KeyBuf {
    #[inline]
    fn new(key: &[u8]) -> Self {
        let n = key.len();
        if n < INLINE_KEY {
            let mut b = [0u8; INLINE_KEY];
            b[..n].copy_from_slice(key);
            b[INLINE_KEY - 1] = LEN_MARK | n as u8;
            KeyBuf { bytes: b }
        } else if n == INLINE_KEY && key[n - 1] < LEN_MARK {
            let mut b = [0u8; INLINE_KEY];
            b.copy_from_slice(key);
            KeyBuf { bytes: b }
        } else {
            KeyBuf {
                heap: HeapKey {
                    ptr: Box::into_raw(Box::<[u8]>::from(key)) as *mut u8,
                    len: n,
                    _pad: [0; INLINE_KEY - 1 - 2 * std::mem::size_of::<usize>()],
                    mark: HEAP_MARK,
                },
            }
        }
    }

    #[inline]
    fn mark(&self) -> u8 {
        // SAFETY: every variant initializes all 32 bytes, and the last byte is a plain u8 in both.
        unsafe { self.bytes[INLINE_KEY - 1] }
    }

    #[inline]
    fn heap_parts(&self) -> Option<(*mut u8, usize)> {
        if self.mark() != HEAP_MARK {
            return None;
        }
        // SAFETY: the heap mark is only ever written together with the `heap` variant.
        let h = unsafe { self.heap };
        Some((h.ptr, h.len))
    }

    #[inline]
    fn as_bytes(&self) -> &[u8] {
        let mark = self.mark();
        if mark < LEN_MARK {
            // SAFETY: an inline key of exactly 32 bytes.
            unsafe { &self.bytes }
        } else if mark != HEAP_MARK {
            // SAFETY: an inline key shorter than 32 bytes, its length in the mark.
            unsafe { &self.bytes[..(mark - LEN_MARK) as usize] }
        } else {
            let (ptr, len) = self.heap_parts().expect("heap mark");
            // SAFETY: `ptr`/`len` come from `Box::into_raw` of a `[u8]` of that length in `new`,
            // owned by this KeyBuf until `drop`.
            unsafe { std::slice::from_raw_parts(ptr, len) }
        }
    }

    /// Heap bytes owned by this key.
    fn heap_len(&self) -> usize {
        self.heap_parts().map_or(0, |(_, len)| len)
    }
}

impl Drop for KeyBuf {
    fn drop(&mut self) {
        if let Some((ptr, len)) = self.heap_parts() {
            // SAFETY: see `as_bytes`; this is the one place the box is given back.
            drop(unsafe { Box::from_raw(std::ptr::slice_from_raw_parts_mut(ptr, len)) });
        }
    }
}

/// One entry, one cache line (for values with a niche, such as `Py<PyAny>` or `Box<T>`).
#[repr(C, align(64))]
struct Node<V> {
    key: KeyBuf,
    value: Option<V>,
    expires_at: u64,
    stamp: u64,
    prev: u32,
    /// Next in the recency list, or the next free slot when the node is free.
    next: u32,
}

struct Shard<V> {
    /// The cache's hasher (the same seed in every shard); nodes do not store their hash, so
    /// removal hashes the key again.
    hasher: foldhash::fast::RandomState,
    table: Index,
    nodes: Vec<Node<V>>,
    free: u32,
    head: u32,
    tail: u32,
    len: usize,
    /// This shard's counters (`size` and `max_size` unused here).
    counters: Stats,
    sweep_cursor: usize,
}

/// One shard and its lock, on its own cache lines.
#[repr(align(128))]
struct Slot<V> {
    shard: Mutex<Shard<V>>,
}

/// Outcome of a read that may have found an expired entry: the entry is removed under the lock
/// and its value handed back so the caller drops it after the lock is released.
enum Probe<R, V> {
    Hit(R),
    Miss,
    Expired(V),
}

/// A sharded LRU + TTL cache. See the module documentation.
pub struct Cache<V, C: Clock = MonotonicClock> {
    slots: Box<[Slot<V>]>,
    tail_stamps: Box<[AtomicU64]>,
    shard_mask: usize,
    /// Reserved slots: entries held plus inserts in progress; never above `max_size`.
    reserved: AtomicUsize,
    max_size: usize,
    default_ttl: Option<u64>,
    clock: Arc<C>,
    stamp: AtomicU64,
    hasher: foldhash::fast::RandomState,
}

impl<V> Shard<V> {
    fn new(hasher: foldhash::fast::RandomState) -> Self {
        Shard {
            hasher,
            table: Index::new(),
            nodes: Vec::new(),
            free: NIL,
            head: NIL,
            tail: NIL,
            len: 0,
            counters: Stats::default(),
            sweep_cursor: 0,
        }
    }

    #[inline]
    fn find(&self, hash: u64, key: &[u8]) -> Option<u32> {
        let nodes = &self.nodes;
        self.table
            .find(hash as u32, |i| nodes[i as usize].key.as_bytes() == key)
    }

    #[inline]
    fn unlink(&mut self, i: u32) {
        let (prev, next) = {
            let n = &self.nodes[i as usize];
            (n.prev, n.next)
        };
        if prev == NIL {
            self.head = next;
        } else {
            self.nodes[prev as usize].next = next;
        }
        if next == NIL {
            self.tail = prev;
        } else {
            self.nodes[next as usize].prev = prev;
        }
    }

    #[inline]
    fn push_front(&mut self, i: u32) {
        let old = self.head;
        {
            let n = &mut self.nodes[i as usize];
            n.prev = NIL;
            n.next = old;
        }
        if old == NIL {
            self.tail = i;
        } else {
            self.nodes[old as usize].prev = i;
        }
        self.head = i;
    }

    #[inline]
    fn touch(&mut self, i: u32, stamp: u64) {
        self.nodes[i as usize].stamp = stamp;
        if self.head != i {
            self.unlink(i);
            self.push_front(i);
        }
    }

    /// Unlinks node `i`, removes it from the table and frees its slot; returns its value.
    fn remove(&mut self, i: u32) -> V {
        self.unlink(i);
        let hash = self.hasher.hash_one(self.nodes[i as usize].key.as_bytes());
        let removed = self.table.remove(hash as u32, i);
        debug_assert!(removed, "a linked node is indexed");
        let free = self.free;
        let n = &mut self.nodes[i as usize];
        n.key = KeyBuf::new(b"");
        n.next = free;
        n.prev = NIL;
        self.free = i;
        self.len -= 1;
        n.value.take().expect("a linked node holds a value")
    }

    fn insert_new(&mut self, hash: u64, key: &[u8], value: V, expires_at: u64, stamp: u64) {
        let node = Node {
            key: KeyBuf::new(key),
            value: Some(value),
            expires_at,
            stamp,
            prev: NIL,
            next: NIL,
        };
        let i = if self.free != NIL {
            let i = self.free;
            self.free = self.nodes[i as usize].next;
            self.nodes[i as usize] = node;
            i
        } else {
            let i = u32::try_from(self.nodes.len()).expect("fewer than 2^32 entries per shard");
            self.nodes.push(node);
            i
        };
        self.table.insert(hash as u32, i);
        self.push_front(i);
        self.len += 1;
    }

    #[inline]
    fn tail_stamp(&self) -> u64 {
        if self.tail == NIL {
            EMPTY
        } else {
            self.nodes[self.tail as usize].stamp
        }
    }

    fn is_live<C: Clock + ?Sized>(&self, i: u32, clock: &C) -> bool {
        let deadline = self.nodes[i as usize].expires_at;
        deadline == NEVER || clock.before(deadline)
    }
}

fn shards_for(max_size: usize) -> usize {
    (max_size / ENTRIES_PER_SHARD)
        .max(1)
        .next_power_of_two()
        .min(MAX_SHARDS)
}

/// Validates a time to live in seconds and turns it into nanoseconds.
pub fn ttl_to_nanos(seconds: f64) -> Result<u64> {
    if !seconds.is_finite() || seconds <= 0.0 {
        return Err(Error::InvalidArgument(format!(
            "ttl must be a finite number of seconds > 0, not {seconds}"
        )));
    }
    // Saturate absurdly long lifetimes (beyond ~584 years) instead of overflowing.
    let nanos = seconds * 1e9;
    Ok(if nanos >= u64::MAX as f64 {
        u64::MAX
    } else {
        (nanos as u64).max(1)
    })
}

impl<V> Cache<V> {
    /// A cache holding at most `max_size` entries (>= 1), whose entries live `default_ttl`
    /// nanoseconds unless told otherwise (`None`: no expiry), on the system's monotonic clock.
    pub fn new(max_size: usize, default_ttl: Option<u64>) -> Result<Self> {
        Self::with_clock(max_size, default_ttl, Arc::new(MonotonicClock))
    }
}

impl<V, C: Clock> Cache<V, C> {
    /// As [`Cache::new`], on the given clock (tests inject a [`crate::core::clock::ManualClock`]).
    pub fn with_clock(max_size: usize, default_ttl: Option<u64>, clock: Arc<C>) -> Result<Self> {
        if max_size < 1 {
            return Err(Error::InvalidArgument(format!(
                "max_size must be >= 1, not {max_size}"
            )));
        }
        if default_ttl == Some(0) {
            return Err(Error::InvalidArgument("ttl must be > 0".into()));
        }
        let n = shards_for(max_size);
        let hasher = foldhash::fast::RandomState::default();
        Ok(Cache {
            slots: (0..n)
                .map(|_| Slot {
                    shard: Mutex::new(Shard::new(hasher.clone())),
                })
                .collect(),
            tail_stamps: (0..n).map(|_| AtomicU64::new(EMPTY)).collect(),
            shard_mask: n - 1,
            reserved: AtomicUsize::new(0),
            max_size,
            default_ttl,
            clock,
            stamp: AtomicU64::new(1),
            hasher,
        })
    }

    /// The bound on the number of entries.
    pub fn max_size(&self) -> usize {
        self.max_size
    }

    /// The default time to live in nanoseconds, `None` for no expiry.
    pub fn default_ttl(&self) -> Option<u64> {
        self.default_ttl
    }

    /// The number of shards (a power of two).
    pub fn shard_count(&self) -> usize {
        self.slots.len()
    }

    /// The clock this cache reads.
    pub fn clock(&self) -> &C {
        &self.clock
    }

    #[inline]
    fn hash(&self, key: &[u8]) -> u64 {
        self.hasher.hash_one(key)
    }

    #[inline]
    fn shard_of(&self, hash: u64) -> usize {
        // The index takes its tag (and home position) from the low 32 bits; the shard comes from
        // the top bits.
        (hash >> 60) as usize & self.shard_mask
    }

    /// The next recency stamp. A plain load and store, not an atomic increment: two threads
    /// racing may draw the same stamp, which only blurs the order of simultaneous uses.
    #[inline]
    fn next_stamp(&self) -> u64 {
        let s = self.stamp.load(Ordering::Relaxed) + 1;
        self.stamp.store(s, Ordering::Relaxed);
        s
    }

    #[inline]
    fn publish_tail(&self, idx: usize, shard: &Shard<V>) {
        let t = shard.tail_stamp();
        let slot = &self.tail_stamps[idx];
        if slot.load(Ordering::Relaxed) != t {
            slot.store(t, Ordering::Relaxed);
        }
    }

    fn deadline(&self, ttl: Option<u64>) -> u64 {
        match ttl.or(self.default_ttl) {
            None => NEVER,
            Some(t) => self.clock.deadline_after(t).max(1),
        }
    }

    #[inline]
    fn lock(&self, idx: usize) -> MutexGuard<'_, Shard<V>> {
        self.slots[idx].shard.lock()
    }

    /// Looks `key` up and, when a live entry is there, marks it most recently used and returns
    /// `f(&value)`. An expired entry is removed and counted as a miss and an expiration.
    #[inline]
    pub fn get_with<R>(&self, key: &[u8], f: impl FnOnce(&V) -> R) -> Option<R> {
        let hash = self.hash(key);
        let idx = self.shard_of(hash);
        let probe = {
            let mut shard = self.lock(idx);
            match shard.find(hash, key) {
                None => {
                    shard.counters.misses += 1;
                    Probe::Miss
                }
                Some(i) if shard.is_live(i, &*self.clock) => {
                    shard.counters.hits += 1;
                    let stamp = self.next_stamp();
                    let was_tail = shard.tail == i;
                    shard.touch(i, stamp);
                    if was_tail {
                        self.publish_tail(idx, &shard);
                    }
                    let value = shard.nodes[i as usize].value.as_ref().expect("live node");
                    Probe::Hit(f(value))
                }
                Some(i) => {
                    shard.counters.misses += 1;
                    shard.counters.expirations += 1;
                    let v = shard.remove(i);
                    self.reserved.fetch_sub(1, Ordering::Release);
                    self.publish_tail(idx, &shard);
                    Probe::Expired(v)
                }
            }
        };
        match probe {
            Probe::Hit(r) => Some(r),
            Probe::Miss => None,
            Probe::Expired(v) => {
                drop(v); // after the lock is released
                None
            }
        }
    }

    /// Like [`Cache::get_with`] for a live entry, but neither counts nor refreshes recency.
    pub fn peek_with<R>(&self, key: &[u8], f: impl FnOnce(&V) -> R) -> Option<R> {
        let hash = self.hash(key);
        let shard = self.lock(self.shard_of(hash));
        match shard.find(hash, key) {
            Some(i) if shard.is_live(i, &*self.clock) => Some(f(shard.nodes[i as usize]
                .value
                .as_ref()
                .expect("live node"))),
            _ => None,
        }
    }

    /// `true` when a live entry is held for `key`. Does not count, does not refresh recency.
    pub fn contains(&self, key: &[u8]) -> bool {
        let hash = self.hash(key);
        let shard = self.lock(self.shard_of(hash));
        matches!(shard.find(hash, key), Some(i) if shard.is_live(i, &*self.clock))
    }

    /// Tries to reserve a slot without evicting.
    #[inline]
    fn try_reserve(&self) -> bool {
        let mut n = self.reserved.load(Ordering::Relaxed);
        while n < self.max_size {
            match self
                .reserved
                .compare_exchange_weak(n, n + 1, Ordering::AcqRel, Ordering::Relaxed)
            {
                Ok(_) => return true,
                Err(seen) => n = seen,
            }
        }
        false
    }

    /// The shard whose least recent entry is the oldest of all, if any shard holds one.
    fn oldest_shard(&self) -> Option<usize> {
        let mut best = EMPTY;
        let mut at = None;
        for (i, s) in self.tail_stamps.iter().enumerate() {
            let t = s.load(Ordering::Relaxed);
            if t < best {
                best = t;
                at = Some(i);
            }
        }
        at
    }

    /// Pops the tail of `shard` (index `idx`), counting an eviction or, when it had expired
    /// anyway, an expiration. The slot it held is handed to the caller (not released).
    fn pop_tail(&self, idx: usize, shard: &mut Shard<V>) -> Option<V> {
        let t = shard.tail;
        if t == NIL {
            return None;
        }
        if shard.is_live(t, &*self.clock) {
            shard.counters.evictions += 1;
        } else {
            shard.counters.expirations += 1;
        }
        let v = shard.remove(t);
        self.publish_tail(idx, shard);
        Some(v)
    }

    /// Stores `value` under `key` with `ttl` nanoseconds to live (`None`: the cache default),
    /// evicting the least recently used entry when the cache is full.
    pub fn insert(&self, key: &[u8], value: V, ttl: Option<u64>) {
        let hash = self.hash(key);
        let idx = self.shard_of(hash);
        let expires_at = self.deadline(ttl);
        let stamp = self.next_stamp();
        let mut victim: Option<V> = None;
        let mut value = Some(value);
        let done = {
            let mut shard = self.lock(idx);
            shard.counters.sets += 1;
            if let Some(i) = shard.find(hash, key) {
                let n = &mut shard.nodes[i as usize];
                victim = std::mem::replace(&mut n.value, value.take());
                n.expires_at = expires_at;
                let was_tail = shard.tail == i;
                shard.touch(i, stamp);
                if was_tail {
                    self.publish_tail(idx, &shard);
                }
                true
            } else if self.try_reserve() {
                let was_empty = shard.tail == NIL;
                shard.insert_new(hash, key, value.take().expect("unused"), expires_at, stamp);
                if was_empty {
                    self.publish_tail(idx, &shard);
                }
                true
            } else {
                // Full. Evict while holding our lock when the oldest entry is ours, or when its
                // shard's lock is free; the evicted entry's slot passes straight to the new key.
                let taken = match self.oldest_shard() {
                    Some(o) if o == idx => {
                        victim = self.pop_tail(idx, &mut shard);
                        victim.is_some()
                    }
                    Some(o) => match self.slots[o].shard.try_lock() {
                        Some(mut other) => {
                            victim = self.pop_tail(o, &mut other);
                            victim.is_some()
                        }
                        None => false,
                    },
                    None => false,
                };
                if taken {
                    shard.insert_new(hash, key, value.take().expect("unused"), expires_at, stamp);
                    self.publish_tail(idx, &shard);
                }
                taken
            }
        };
        drop(victim);
        if !done {
            self.insert_slow(
                idx,
                hash,
                key,
                value.take().expect("unused"),
                expires_at,
                stamp,
            );
        }
    }

    /// The contended path of [`Cache::insert`]: reserve a slot, evicting with no lock held, then
    /// insert (or replace, if another thread stored the key meanwhile).
    fn insert_slow(
        &self,
        idx: usize,
        hash: u64,
        key: &[u8],
        value: V,
        expires_at: u64,
        stamp: u64,
    ) {
        loop {
            if self.try_reserve() {
                break;
            }
            let evicted = match self.oldest_shard() {
                Some(o) => {
                    let mut other = self.lock(o);
                    self.pop_tail(o, &mut other)
                }
                None => None,
            };
            match evicted {
                Some(v) => {
                    self.reserved.fetch_sub(1, Ordering::Release);
                    drop(v);
                }
                // Every slot is reserved by inserts in flight on other threads: let them land.
                None => std::thread::yield_now(),
            }
        }
        let old = {
            let mut shard = self.lock(idx);
            if let Some(i) = shard.find(hash, key) {
                self.reserved.fetch_sub(1, Ordering::Release);
                let n = &mut shard.nodes[i as usize];
                let old = n.value.replace(value);
                n.expires_at = expires_at;
                shard.touch(i, stamp);
                self.publish_tail(idx, &shard);
                old
            } else {
                shard.insert_new(hash, key, value, expires_at, stamp);
                self.publish_tail(idx, &shard);
                None
            }
        };
        drop(old);
    }

    /// Removes `key`; returns its value when the entry was live.
    pub fn remove(&self, key: &[u8]) -> Option<V> {
        let hash = self.hash(key);
        let idx = self.shard_of(hash);
        let (live, v) = {
            let mut shard = self.lock(idx);
            let i = shard.find(hash, key)?;
            let live = shard.is_live(i, &*self.clock);
            if live {
                shard.counters.deletes += 1;
            } else {
                shard.counters.expirations += 1;
            }
            let v = shard.remove(i);
            self.reserved.fetch_sub(1, Ordering::Release);
            self.publish_tail(idx, &shard);
            (live, v)
        };
        if live { Some(v) } else { None }
    }

    /// Removes every entry whose key starts with `prefix`; returns the values of the live ones.
    /// Visits every entry (O(n)), one shard lock at a time.
    pub fn remove_prefix(&self, prefix: &[u8]) -> Vec<V> {
        let mut live = Vec::new();
        let mut dead = Vec::new();
        for idx in 0..self.slots.len() {
            let mut shard = self.lock(idx);
            let mut i = shard.head;
            while i != NIL {
                let next = shard.nodes[i as usize].next;
                if shard.nodes[i as usize].key.as_bytes().starts_with(prefix) {
                    let is_live = shard.is_live(i, &*self.clock);
                    let v = shard.remove(i);
                    self.reserved.fetch_sub(1, Ordering::Release);
                    if is_live {
                        shard.counters.deletes += 1;
                        live.push(v);
                    } else {
                        shard.counters.expirations += 1;
                        dead.push(v);
                    }
                }
                i = next;
            }
            self.publish_tail(idx, &shard);
            drop(shard);
            dead.clear(); // dropped with no lock held
        }
        live
    }

    /// Removes every entry; counters are kept. Values are dropped after each shard's lock is
    /// released.
    pub fn clear(&self) {
        for idx in 0..self.slots.len() {
            let old = {
                let mut shard = self.lock(idx);
                let n = shard.len;
                let counters = std::mem::take(&mut shard.counters);
                let old = std::mem::replace(&mut *shard, Shard::new(self.hasher.clone()));
                shard.counters = counters;
                self.reserved.fetch_sub(n, Ordering::Release);
                self.publish_tail(idx, &shard);
                old
            };
            drop(old);
        }
    }

    /// Entries held, including inserts in progress and expired entries not swept yet.
    #[inline]
    pub fn len(&self) -> usize {
        self.reserved.load(Ordering::Acquire)
    }

    /// `true` when the cache holds nothing.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The keys of the live entries, most recent first within each shard.
    pub fn keys(&self) -> Vec<Box<[u8]>> {
        let mut out = Vec::with_capacity(self.len());
        for idx in 0..self.slots.len() {
            let shard = self.lock(idx);
            let mut i = shard.head;
            while i != NIL {
                let n = &shard.nodes[i as usize];
                if shard.is_live(i, &*self.clock) {
                    out.push(n.key.as_bytes().into());
                }
                i = n.next;
            }
        }
        out
    }

    /// Nanoseconds left for the live entry under `key`: `None` when absent or expired,
    /// `Some(None)` when it never expires.
    pub fn expires_in(&self, key: &[u8]) -> Option<Option<u64>> {
        let hash = self.hash(key);
        let shard = self.lock(self.shard_of(hash));
        let i = shard.find(hash, key)?;
        let deadline = shard.nodes[i as usize].expires_at;
        if deadline == NEVER {
            return Some(None);
        }
        let now = self.clock.now();
        (now < deadline).then_some(Some(deadline - now))
    }

    /// Gives the live entry under `key` a new time to live (`None`: the cache default);
    /// `false` when there is no live entry. Does not refresh recency.
    pub fn touch(&self, key: &[u8], ttl: Option<u64>) -> bool {
        let hash = self.hash(key);
        let expires_at = self.deadline(ttl);
        let mut shard = self.lock(self.shard_of(hash));
        match shard.find(hash, key) {
            Some(i) if shard.is_live(i, &*self.clock) => {
                shard.nodes[i as usize].expires_at = expires_at;
                true
            }
            _ => false,
        }
    }

    /// The counters, summed over the shards.
    pub fn stats(&self) -> Stats {
        let mut s = Stats {
            max_size: self.max_size as u64,
            ..Stats::default()
        };
        for idx in 0..self.slots.len() {
            s.accumulate(&self.lock(idx).counters);
        }
        s.size = self.len() as u64;
        s
    }

    /// Removes expired entries, visiting at most `budget` slots per shard from where the last
    /// sweep stopped; returns how many were removed. Values are dropped after each shard's lock
    /// is released.
    pub fn sweep(&self, budget: usize) -> usize {
        let mut removed = 0;
        let mut dead = Vec::new();
        let now = self.clock.now();
        for idx in 0..self.slots.len() {
            {
                let mut shard = self.lock(idx);
                let total = shard.nodes.len();
                if total == 0 {
                    continue;
                }
                let mut cursor = shard.sweep_cursor % total;
                for _ in 0..budget.min(total) {
                    let n = &shard.nodes[cursor];
                    if n.value.is_some() && n.expires_at != NEVER && n.expires_at <= now {
                        shard.counters.expirations += 1;
                        dead.push(shard.remove(cursor as u32));
                        self.reserved.fetch_sub(1, Ordering::Release);
                    }
                    cursor = (cursor + 1) % total;
                }
                shard.sweep_cursor = cursor;
                self.publish_tail(idx, &shard);
            }
            removed += dead.len();
            dead.clear();
        }
        removed
    }

    /// Approximate heap bytes used by the cache's own structures (not the values' referents).
    pub fn heap_bytes(&self) -> usize {
        let mut total = std::mem::size_of::<Self>()
            + self.slots.len()
                * (std::mem::size_of::<Slot<V>>() + std::mem::size_of::<AtomicU64>());
        for idx in 0..self.slots.len() {
            let shard = self.lock(idx);
            total += shard.nodes.capacity() * std::mem::size_of::<Node<V>>();
            total += shard.table.heap_bytes();
            total += shard
                .nodes
                .iter()
                .filter(|n| n.value.is_some())
                .map(|n| n.key.heap_len())
                .sum::<usize>();
        }
        total
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::clock::ManualClock;

    #[test]
    fn shard_count_grows_with_size_and_is_capped() {
        assert_eq!(shards_for(1), 1);
        assert_eq!(shards_for(255), 1);
        assert_eq!(shards_for(1024), 4);
        assert_eq!(shards_for(1 << 30), MAX_SHARDS);
    }

    #[test]
    fn nodes_fill_one_aligned_block() {
        // Values with a niche (like `Py<PyAny>`) keep `Option<V>` at one word.
        assert_eq!(std::mem::size_of::<Node<Box<u64>>>(), 64);
        assert_eq!(std::mem::align_of::<Node<Box<u64>>>(), 64);
        assert_eq!(std::mem::size_of::<KeyBuf>(), INLINE_KEY);
    }

    #[test]
    fn key_buf_round_trips_every_length_and_last_byte() {
        for n in 0..=INLINE_KEY + 2 {
            for last in [b'a', 0x7f, 0x80, 0xbf, 0xc0, 0xdf, 0xfe, 0xff] {
                let mut key = vec![b'k'; n];
                if let Some(l) = key.last_mut() {
                    *l = last;
                }
                let buf = KeyBuf::new(&key);
                assert_eq!(buf.as_bytes(), &key[..], "len {n} last {last:#x}");
                let heap = n > INLINE_KEY || (n == INLINE_KEY && last >= LEN_MARK);
                assert_eq!(buf.heap_len(), if heap { n } else { 0 });
            }
        }
    }

    #[test]
    fn long_keys_live_on_the_heap() {
        let c: Cache<u32> = Cache::new(8, None).unwrap();
        let long = vec![b'x'; INLINE_KEY + 1];
        let edge = vec![b'y'; INLINE_KEY];
        c.insert(&long, 1, None);
        c.insert(&edge, 2, None);
        assert_eq!(c.get_with(&long, |v| *v), Some(1));
        assert_eq!(c.get_with(&edge, |v| *v), Some(2));
        assert_eq!(c.get_with(&long[..INLINE_KEY], |v| *v), None);
        assert_eq!(c.keys().len(), 2);
    }

    #[test]
    fn ttl_validation() {
        assert!(ttl_to_nanos(0.0).is_err());
        assert!(ttl_to_nanos(-1.0).is_err());
        assert!(ttl_to_nanos(f64::NAN).is_err());
        assert!(ttl_to_nanos(f64::INFINITY).is_err());
        assert_eq!(ttl_to_nanos(1.5).unwrap(), 1_500_000_000);
        assert_eq!(ttl_to_nanos(1e300).unwrap(), u64::MAX);
        assert_eq!(ttl_to_nanos(1e-12).unwrap(), 1);
    }

    #[test]
    fn slots_are_reused_after_removal() {
        let c: Cache<u32, ManualClock> =
            Cache::with_clock(4, None, Arc::new(ManualClock::new(1))).unwrap();
        for round in 0..10 {
            for k in 0..4u32 {
                c.insert(format!("k{k}").as_bytes(), k + round, None);
            }
            for k in 0..4u32 {
                assert_eq!(c.remove(format!("k{k}").as_bytes()), Some(k + round));
            }
        }
        let shard = c.lock(0);
        assert_eq!(shard.nodes.len(), 4);
        assert_eq!(shard.len, 0);
    }
}
