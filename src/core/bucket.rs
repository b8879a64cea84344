//! Rollout bucketing: which of 100 buckets a unit (a user, a tenant) falls in for a feature.
//!
//! `bucket(feature, unit) = murmur3_x86_32(utf8(feature + ":" + unit), seed 0) % 100`, and a unit
//! is in a rollout of `p` percent when `bucket < p`. This is Unleash's `normalizedHash - 1`
//! (its clients hash `"{groupId}:{userId}"` the same way and add 1), so assignments agree with
//! Unleash deployments, hold across processes, hosts and restarts, and only grow with `p`.
//! The pure-Python twin (`sark_native/_fallback/bucket.py`) uses `mmh3` and gives the same
//! numbers on every input.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

use foldhash::fast::RandomState as FoldBuild;
use parking_lot::RwLock;

/// Number of buckets: percentages are whole numbers 0..=100.
pub const BUCKETS: u32 = 100;

const C1: u32 = 0xcc9e_2d51;
const C2: u32 = 0x1b87_3593;

#[inline(always)]
fn mix_k1(mut k1: u32) -> u32 {
    k1 = k1.wrapping_mul(C1);
    k1 = k1.rotate_left(15);
    k1.wrapping_mul(C2)
}

#[inline(always)]
fn fmix32(mut h: u32) -> u32 {
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}

/// MurmurHash3 x86 32-bit (Austin Appleby's reference `MurmurHash3_x86_32`, blocks read
/// little-endian on every platform, as `mmh3` and Unleash's clients do).
pub fn murmur3_x86_32(data: &[u8], seed: u32) -> u32 {
    let mut h1 = seed;
    let mut blocks = data.chunks_exact(4);
    for block in &mut blocks {
        let k1 = u32::from_le_bytes([block[0], block[1], block[2], block[3]]);
        h1 ^= mix_k1(k1);
        h1 = h1.rotate_left(13);
        h1 = h1.wrapping_mul(5).wrapping_add(0xe654_6b64);
    }
    let tail = blocks.remainder();
    if !tail.is_empty() {
        let mut k1 = 0u32;
        for (i, byte) in tail.iter().enumerate() {
            k1 |= u32::from(*byte) << (8 * i);
        }
        h1 ^= mix_k1(k1);
    }
    // The reference mixes in the length as a 32-bit value (it wraps past 4 GiB).
    h1 ^= data.len() as u32;
    fmix32(h1)
}

/// MurmurHash3 x86 32-bit over data given in pieces: the same result as [`murmur3_x86_32`] of
/// the pieces concatenated, without building the concatenation.
#[derive(Debug, Clone, Copy)]
pub struct Murmur3 {
    h1: u32,
    /// Bytes of an unfinished 4-byte block, little-endian, and how many there are (0..=3).
    pending: u32,
    pending_len: u32,
    len: u32,
}

impl Murmur3 {
    /// A hasher with this seed.
    pub fn new(seed: u32) -> Self {
        Self {
            h1: seed,
            pending: 0,
            pending_len: 0,
            len: 0,
        }
    }

    #[inline(always)]
    fn block(&mut self, k1: u32) {
        self.h1 ^= mix_k1(k1);
        self.h1 = self.h1.rotate_left(13);
        self.h1 = self.h1.wrapping_mul(5).wrapping_add(0xe654_6b64);
    }

    /// Feeds `data`.
    #[inline]
    pub fn write(&mut self, mut data: &[u8]) -> &mut Self {
        self.len = self.len.wrapping_add(data.len() as u32);
        while self.pending_len != 0 {
            let Some((&byte, rest)) = data.split_first() else {
                return self;
            };
            self.pending |= u32::from(byte) << (8 * self.pending_len);
            self.pending_len += 1;
            data = rest;
            if self.pending_len == 4 {
                let k1 = self.pending;
                self.block(k1);
                self.pending = 0;
                self.pending_len = 0;
            }
        }
        let mut blocks = data.chunks_exact(4);
        for block in &mut blocks {
            self.block(u32::from_le_bytes([block[0], block[1], block[2], block[3]]));
        }
        for &byte in blocks.remainder() {
            self.pending |= u32::from(byte) << (8 * self.pending_len);
            self.pending_len += 1;
        }
        self
    }

    /// The hash of everything fed so far.
    #[inline]
    pub fn finish(&self) -> u32 {
        let mut h1 = self.h1;
        if self.pending_len != 0 {
            h1 ^= mix_k1(self.pending);
        }
        fmix32(h1 ^ self.len)
    }
}

/// The bucket (0..100) of `unit_id` for `feature`: see the module documentation.
pub fn bucket(feature: &str, unit_id: &str) -> u32 {
    Murmur3::new(0)
        .write(feature.as_bytes())
        .write(b":")
        .write(unit_id.as_bytes())
        .finish()
        % BUCKETS
}

/// Whether `unit_id` is in a rollout of `percentage` percent of `feature`: `bucket < percentage`
/// (0 is nobody, 100 and above is everybody).
pub fn is_in_rollout(feature: &str, unit_id: &str, percentage: u32) -> bool {
    match percentage {
        0 => false,
        p if p >= BUCKETS => true,
        p => bucket(feature, unit_id) < p,
    }
}

/// Most features a [`RolloutTable`] tracks; decisions for further unknown names are not counted.
pub const MAX_FEATURES: usize = 10_000;

/// One feature's percentage and its decision counters.
#[derive(Debug, Default)]
struct Entry {
    pct: AtomicU32,
    /// Whether the percentage was set (by the store) rather than the entry made for counting.
    known: AtomicBool,
    on: AtomicU64,
    off: AtomicU64,
}

/// Percentages by feature, and how often each feature answered yes / no.
///
/// The request path ([`RolloutTable::is_enabled`]) takes a read lock, finds the feature, hashes
/// and bumps a relaxed atomic counter: no allocation once a feature is known. Changes take the
/// write lock, so a reader sees either the old or the new table, never a half-applied resync.
#[derive(Debug, Default)]
pub struct RolloutTable {
    map: RwLock<HashMap<Box<str>, Entry, FoldBuild>>,
}

impl RolloutTable {
    /// An empty table: every feature is at 0%.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether `unit_id` is in `feature`'s rollout (`bucket < pct`; unknown features are 0%),
    /// counted per feature.
    pub fn is_enabled(&self, feature: &str, unit_id: &str) -> bool {
        {
            let map = self.map.read();
            if let Some(entry) = map.get(feature) {
                let on = is_in_rollout(feature, unit_id, entry.pct.load(Ordering::Relaxed));
                let counter = if on { &entry.on } else { &entry.off };
                counter.fetch_add(1, Ordering::Relaxed);
                return on;
            }
        }
        if !feature.is_empty() {
            let mut map = self.map.write();
            if map.len() < MAX_FEATURES || map.contains_key(feature) {
                let entry = map.entry(feature.into()).or_default();
                entry.off.fetch_add(1, Ordering::Relaxed);
            }
        }
        false
    }

    /// The percentage in force for `feature` (0 when unknown).
    pub fn get(&self, feature: &str) -> u32 {
        self.map
            .read()
            .get(feature)
            .map_or(0, |e| e.pct.load(Ordering::Relaxed))
    }

    /// Sets one feature's percentage (clamped to 100); returns the previous one.
    pub fn set(&self, feature: &str, pct: u32) -> u32 {
        let mut map = self.map.write();
        let entry = map.entry(feature.into()).or_default();
        entry.known.store(true, Ordering::Relaxed);
        entry.pct.swap(pct.min(BUCKETS), Ordering::Relaxed)
    }

    /// Replaces every percentage at once: features absent from `snapshot` drop to 0% and are
    /// no longer listed (their counters stay).
    pub fn replace_all<'a>(&self, snapshot: impl IntoIterator<Item = (&'a str, u32)>) {
        let mut map = self.map.write();
        for entry in map.values() {
            entry.pct.store(0, Ordering::Relaxed);
            entry.known.store(false, Ordering::Relaxed);
        }
        for (feature, pct) in snapshot {
            let entry = map.entry(feature.into()).or_default();
            entry.known.store(true, Ordering::Relaxed);
            entry.pct.store(pct.min(BUCKETS), Ordering::Relaxed);
        }
    }

    /// Every feature whose percentage was set, with its percentage, sorted by name.
    pub fn percentages(&self) -> Vec<(String, u32)> {
        let map = self.map.read();
        let mut out: Vec<_> = map
            .iter()
            .filter(|(_, e)| e.known.load(Ordering::Relaxed))
            .map(|(k, e)| (k.to_string(), e.pct.load(Ordering::Relaxed)))
            .collect();
        out.sort_unstable();
        out
    }

    /// `(feature, times no, times yes)` for every feature asked about, sorted by name.
    pub fn assignments(&self) -> Vec<(String, u64, u64)> {
        let map = self.map.read();
        let mut out: Vec<_> = map
            .iter()
            .filter(|(_, e)| e.on.load(Ordering::Relaxed) + e.off.load(Ordering::Relaxed) > 0)
            .map(|(k, e)| {
                (
                    k.to_string(),
                    e.off.load(Ordering::Relaxed),
                    e.on.load(Ordering::Relaxed),
                )
            })
            .collect();
        out.sort_unstable();
        out
    }
}
