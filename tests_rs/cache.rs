//! Integration tests of the LRU + TTL cache core: recency, bounds, expiry with an injected clock,
//! concurrency, and values dropped outside the shard locks.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier, OnceLock};

use sark_native::core::cache::{Cache, MAX_SHARDS};
use sark_native::core::clock::ManualClock;

const SEC: u64 = 1_000_000_000;

fn manual(max: usize, ttl: Option<u64>) -> (Cache<u64, ManualClock>, Arc<ManualClock>) {
    let clock = Arc::new(ManualClock::new(1_000 * SEC));
    (Cache::with_clock(max, ttl, clock.clone()).unwrap(), clock)
}

fn key(i: usize) -> Vec<u8> {
    format!("key-{i:028}").into_bytes()
}

#[test]
fn rejects_zero_size_and_zero_ttl() {
    assert!(Cache::<u64>::new(0, None).is_err());
    assert!(Cache::<u64>::new(1, Some(0)).is_err());
}

#[test]
fn get_set_replace_delete() {
    let (c, _) = manual(10, None);
    assert_eq!(c.get_with(b"a", |v| *v), None);
    c.insert(b"a", 1, None);
    c.insert(b"a", 2, None);
    assert_eq!(c.get_with(b"a", |v| *v), Some(2));
    assert_eq!(c.len(), 1);
    assert_eq!(c.remove(b"a"), Some(2));
    assert_eq!(c.remove(b"a"), None);
    assert!(c.is_empty());
    let s = c.stats();
    assert_eq!((s.hits, s.misses, s.sets, s.deletes), (1, 1, 2, 1));
}

#[test]
fn single_shard_eviction_is_exact_lru() {
    let (c, _) = manual(3, None);
    for (i, k) in [b"a", b"b", b"c"].iter().enumerate() {
        c.insert(*k, i as u64, None);
    }
    assert_eq!(c.get_with(b"a", |v| *v), Some(0)); // a is now most recent
    c.insert(b"d", 3, None); // evicts b
    assert!(!c.contains(b"b"));
    assert!(c.contains(b"a") && c.contains(b"c") && c.contains(b"d"));
    c.insert(b"e", 4, None); // evicts c
    assert!(!c.contains(b"c"));
    assert_eq!(c.stats().evictions, 2);
}

#[test]
fn eviction_across_shards_is_exact_lru_single_threaded() {
    let n = 4096;
    let (c, _) = manual(n, None);
    assert!(c.shard_count() > 1 && c.shard_count() <= MAX_SHARDS);
    for i in 0..n {
        c.insert(&key(i), i as u64, None);
    }
    // Touch the first half: the second half becomes the oldest.
    for i in 0..n / 2 {
        assert!(c.get_with(&key(i), |_| ()).is_some());
    }
    for i in n..n + n / 2 {
        c.insert(&key(i), i as u64, None);
        assert_eq!(c.len(), n);
    }
    for i in 0..n / 2 {
        assert!(c.contains(&key(i)), "recently used key {i} was evicted");
    }
    for i in n / 2..n {
        assert!(!c.contains(&key(i)), "stale key {i} survived");
    }
    assert_eq!(c.stats().evictions as usize, n / 2);
}

#[test]
fn expiry_uses_the_clock_and_counts() {
    let (c, clock) = manual(10, Some(10 * SEC));
    c.insert(b"default", 1, None);
    c.insert(b"short", 2, Some(SEC));
    clock.advance(SEC);
    assert_eq!(
        c.get_with(b"short", |v| *v),
        None,
        "expired exactly at the deadline"
    );
    assert_eq!(c.get_with(b"default", |v| *v), Some(1));
    assert_eq!(c.expires_in(b"default"), Some(Some(9 * SEC)));
    clock.advance(9 * SEC);
    assert!(!c.contains(b"default"));
    assert_eq!(c.expires_in(b"default"), None);
    let s = c.stats();
    assert_eq!(s.expirations, 1); // only the read removed one; "default" still occupies a slot
    assert_eq!(c.len(), 1);
    assert_eq!(c.sweep(1024), 1);
    assert_eq!(c.len(), 0);
    assert_eq!(c.stats().expirations, 2);
}

#[test]
fn no_ttl_never_expires_and_touch_changes_deadline() {
    let (c, clock) = manual(10, None);
    c.insert(b"k", 1, None);
    assert_eq!(c.expires_in(b"k"), Some(None));
    clock.advance(1_000_000 * SEC);
    assert!(c.contains(b"k"));
    assert!(c.touch(b"k", Some(5 * SEC)));
    assert_eq!(c.expires_in(b"k"), Some(Some(5 * SEC)));
    clock.advance(5 * SEC);
    assert!(
        !c.touch(b"k", Some(SEC)),
        "an expired entry cannot be revived"
    );
    assert!(!c.touch(b"missing", None));
}

#[test]
fn sweep_visits_a_bounded_number_of_slots_and_resumes() {
    let (c, clock) = manual(1000, Some(SEC));
    for i in 0..100 {
        c.insert(&key(i), i as u64, None);
    }
    clock.advance(2 * SEC);
    let mut removed = 0;
    for _ in 0..100 {
        removed += c.sweep(10);
        if removed == 100 {
            break;
        }
    }
    assert_eq!(removed, 100);
    assert!(c.is_empty());
}

#[test]
fn full_cache_prefers_counting_expired_tail_as_expiration() {
    let (c, clock) = manual(2, None);
    c.insert(b"old", 1, Some(SEC));
    c.insert(b"live", 2, None);
    clock.advance(2 * SEC);
    c.insert(b"new", 3, None);
    let s = c.stats();
    assert_eq!((s.evictions, s.expirations), (0, 1));
    assert!(c.contains(b"live") && c.contains(b"new"));
}

#[test]
fn remove_prefix_and_clear() {
    let (c, _) = manual(100, None);
    for i in 0..10 {
        c.insert(format!("user:{i}").as_bytes(), i, None);
        c.insert(format!("team:{i}").as_bytes(), i, None);
    }
    let mut removed = c.remove_prefix(b"user:");
    removed.sort_unstable();
    assert_eq!(removed, (0..10).collect::<Vec<_>>());
    assert_eq!(c.len(), 10);
    assert_eq!(c.keys().len(), 10);
    c.clear();
    assert!(c.is_empty());
    assert!(c.keys().is_empty());
    assert_eq!(c.stats().deletes, 10, "clear keeps the counters");
    c.insert(b"again", 1, None);
    assert_eq!(c.get_with(b"again", |v| *v), Some(1));
}

#[test]
fn max_size_holds_under_concurrent_writers() {
    let max = 1000;
    let c = Arc::new(Cache::<u64>::new(max, None).unwrap());
    let threads = 8;
    let barrier = Arc::new(Barrier::new(threads + 1));
    let peak = Arc::new(AtomicUsize::new(0));
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let (c, b, peak) = (c.clone(), barrier.clone(), peak.clone());
            std::thread::spawn(move || {
                b.wait();
                for i in 0..20_000 {
                    c.insert(&key(t * 1_000_000 + i), i as u64, None);
                    peak.fetch_max(c.len(), Ordering::Relaxed);
                    if i % 7 == 0 {
                        c.get_with(&key(t * 1_000_000 + i / 2), |_| ());
                    }
                }
            })
        })
        .collect();
    barrier.wait();
    for h in handles {
        h.join().unwrap();
    }
    assert!(peak.load(Ordering::Relaxed) <= max);
    assert_eq!(c.len(), max);
    assert_eq!(c.keys().len(), max, "the counter matches the entries held");
    let s = c.stats();
    assert_eq!(s.evictions as usize, threads * 20_000 - max);
}

#[test]
fn concurrent_writers_of_the_same_keys_keep_the_count_exact() {
    let c = Arc::new(Cache::<u64>::new(64, None).unwrap());
    let handles: Vec<_> = (0..4)
        .map(|t| {
            let c = c.clone();
            std::thread::spawn(move || {
                for i in 0..50_000usize {
                    let k = key(i % 200);
                    if (i + t) % 5 == 0 {
                        c.remove(&k);
                    } else {
                        c.insert(&k, i as u64, None);
                    }
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    assert!(c.len() <= 64);
    assert_eq!(c.keys().len(), c.len());
}

/// A value whose destructor uses the cache it lived in: it must not deadlock.
struct Reenter(u64);

static REENTRANT: OnceLock<Cache<Reenter>> = OnceLock::new();
static DROPS: AtomicUsize = AtomicUsize::new(0);

impl Drop for Reenter {
    fn drop(&mut self) {
        let c = REENTRANT.get().unwrap();
        let _ = c.contains(b"probe");
        c.get_with(b"probe", |v| v.0);
        DROPS.fetch_add(1, Ordering::SeqCst);
    }
}

#[test]
fn values_are_dropped_outside_the_locks() {
    let c = REENTRANT.get_or_init(|| Cache::new(2, None).unwrap());
    c.insert(b"a", Reenter(1), None);
    c.insert(b"a", Reenter(2), None); // replace
    c.insert(b"b", Reenter(3), None);
    c.insert(b"c", Reenter(4), None); // evict
    drop(c.remove(b"c")); // delete
    drop(c.remove_prefix(b"")); // prefix
    c.insert(b"d", Reenter(5), None);
    c.clear(); // clear
    assert_eq!(DROPS.load(Ordering::SeqCst), 5);
}
