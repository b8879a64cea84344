//! Criterion benchmarks of the pure-Rust cache core (`core::cache::Cache<u64>`), no Python.
//!
//! `cargo bench --no-default-features --bench cache` (or `make bench-rust`). Same workload as
//! `benches/py/bench_cache.py`: 10k keys of 32 bytes (hex ASCII, like the Python benchmark's str
//! keys), a cache sized 10k for reads and plain inserts, 5k for inserts when full. Every bench
//! reports time per operation: the batched ones declare `Throughput::Elements` so criterion's
//! figures can be divided back to one op (`benches/py/run.py` does this when it reads
//! `target/criterion/*/new/estimates.json` into `docs/benchmarks.md`).

use std::hint::black_box;
use std::sync::Barrier;
use std::time::{Duration, Instant};

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use sark_native::core::cache::Cache;

/// Number of distinct keys in every workload.
const N: usize = 10_000;
/// Size of the cache for the "insert when full" workload: every insert of a new key evicts.
const FULL_SIZE: usize = N / 2;
/// Default time to live (300 s, as in the Python benchmark): deadlines are computed and checked.
const TTL_NANOS: u64 = 300 * 1_000_000_000;

type Key = [u8; 32];

/// splitmix64: a fixed, well-mixed sequence so every run uses the same keys.
fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// `n` distinct keys of 32 hex ASCII bytes; `salt` separates the key sets.
fn keys(n: usize, salt: u64) -> Vec<Key> {
    (0..n as u64)
        .map(|i| {
            let a = splitmix(i ^ (salt << 40));
            let b = splitmix(a ^ salt);
            let text = format!("{a:016x}{b:016x}");
            let mut k = [0u8; 32];
            k.copy_from_slice(text.as_bytes());
            k
        })
        .collect()
}

/// `keys` in a fixed shuffled order, so reads do not follow insertion (= recency) order: each hit
/// then relinks an entry in the middle of a shard's list, as in real traffic and as in the Python
/// benchmark, instead of always the tail.
fn shuffled(keys: &[Key]) -> Vec<Key> {
    let mut out = keys.to_vec();
    let mut state = 0x5EED_u64;
    for i in (1..out.len()).rev() {
        state = splitmix(state);
        let j = (state % (i as u64 + 1)) as usize;
        out.swap(i, j);
    }
    out
}

fn filled(max_size: usize, keys: &[Key]) -> Cache<u64> {
    let c = Cache::new(max_size, Some(TTL_NANOS)).expect("valid cache parameters");
    for (i, k) in keys.iter().enumerate() {
        c.insert(k, i as u64, None);
    }
    c
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(30)
}

/// get-hit (shuffled order, and in insertion order for comparison) and get-miss, one op per
/// iteration, cycling over the 10k keys.
fn bench_get(c: &mut Criterion) {
    let hit_keys = keys(N, 1);
    let hit_reads = shuffled(&hit_keys);
    let miss_keys = keys(N, 2);
    let cache = filled(N, &hit_keys);
    assert_eq!(cache.len(), N);

    let mut g = c.benchmark_group("cache");
    g.throughput(Throughput::Elements(1));
    for (name, order) in [("get_hit", &hit_reads), ("get_hit_in_order", &hit_keys)] {
        g.bench_function(name, |b| {
            let mut i = 0;
            b.iter(|| {
                let k = &order[i];
                i = if i + 1 == N { 0 } else { i + 1 };
                black_box(cache.get_with(black_box(k), |v| *v))
            });
        });
    }
    g.bench_function("get_miss", |b| {
        let mut i = 0;
        b.iter(|| {
            let k = &miss_keys[i];
            i = if i + 1 == N { 0 } else { i + 1 };
            black_box(cache.get_with(black_box(k), |v| *v))
        });
    });
    g.finish();
}

/// Inserts of 10k new keys into a fresh cache: with room (sized 10k) and when full (sized 5k and
/// already holding 5k other keys, so each of the 10k inserts evicts). The fresh cache is built
/// outside the timing and dropped outside it too (it is the routine's output).
fn bench_insert(c: &mut Criterion) {
    let new_keys = keys(N, 3);
    let prefill = keys(FULL_SIZE, 4);

    let mut g = c.benchmark_group("cache");
    g.throughput(Throughput::Elements(N as u64));
    g.bench_function("insert_room_x10k", |b| {
        b.iter_batched(
            || Cache::<u64>::new(N, Some(TTL_NANOS)).expect("valid cache parameters"),
            |cache| {
                for (i, k) in new_keys.iter().enumerate() {
                    cache.insert(black_box(k), i as u64, None);
                }
                cache
            },
            BatchSize::PerIteration,
        );
    });
    g.bench_function("insert_full_x10k", |b| {
        b.iter_batched(
            || filled(FULL_SIZE, &prefill),
            |cache| {
                for (i, k) in new_keys.iter().enumerate() {
                    cache.insert(black_box(k), i as u64, None);
                }
                cache
            },
            BatchSize::PerIteration,
        );
    });
    g.finish();
}

/// get-hit from `threads` threads at once: each thread does `iters` gets over its own pass of the
/// keys (starting at a different offset) on `caches[thread % caches.len()]`. The threads are
/// spawned before the clock starts and released together by a barrier; the time is the wall time
/// until the last one finishes.
fn threaded_get_hit(caches: &[Cache<u64>], keys: &[Key], threads: usize, iters: u64) -> Duration {
    let start_line = Barrier::new(threads + 1);
    let finish_line = Barrier::new(threads + 1);
    std::thread::scope(|s| {
        for t in 0..threads {
            let (start_line, finish_line) = (&start_line, &finish_line);
            let cache = &caches[t % caches.len()];
            s.spawn(move || {
                let mut i = (t * N / threads) % N;
                start_line.wait();
                for _ in 0..iters {
                    let k = &keys[i];
                    i = if i + 1 == N { 0 } else { i + 1 };
                    black_box(cache.get_with(black_box(k), |v| *v));
                }
                finish_line.wait();
            });
        }
        start_line.wait();
        let t0 = Instant::now();
        finish_line.wait();
        t0.elapsed()
    })
}

/// 1 and 2 threads doing get-hit on one shared cache. Criterion's time per iteration is the wall
/// time for every thread to do one get; with `Throughput::Elements(threads)` its throughput is the
/// aggregate. `get_hit_2t_own_cache` is the control: 2 threads, each on a cache of its own, so
/// nothing is shared; it shows what the machine itself allows (2 vCPUs may be 2 hyperthreads).
fn bench_threads(c: &mut Criterion) {
    let hit_keys = keys(N, 1);
    let hit_reads = shuffled(&hit_keys);
    let shared = [filled(N, &hit_keys)];
    let own = [filled(N, &hit_keys), filled(N, &hit_keys)];

    let mut g = c.benchmark_group("cache");
    for (name, caches, threads) in [
        ("get_hit_1t", &shared[..], 1usize),
        ("get_hit_2t", &shared[..], 2),
        ("get_hit_2t_own_cache", &own[..], 2),
    ] {
        g.throughput(Throughput::Elements(threads as u64));
        g.bench_function(name, |b| {
            b.iter_custom(|iters| threaded_get_hit(caches, &hit_reads, threads, iters));
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = config();
    targets = bench_get, bench_insert, bench_threads
}
criterion_main!(benches);
