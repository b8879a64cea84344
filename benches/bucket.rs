//! Criterion benchmarks of rollout bucketing (`core::bucket`), no Python.
//!
//! `cargo bench --no-default-features --bench bucket` (part of `make bench-rust`). Same workload
//! as `benches/py/bench_rollout.py`: 10k user ids `user-00000000`.., feature `rust_opa` at 50%.
//! Each bench runs over all 10k ids and declares `Throughput::Elements`, so a figure divided by
//! 10k is the time of one decision.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use sark_native::core::bucket::{RolloutTable, bucket, murmur3_x86_32};

const N: usize = 10_000;
const FEATURE: &str = "rust_opa";

fn units() -> Vec<String> {
    (0..N).map(|i| format!("user-{i:08}")).collect()
}

fn benches(c: &mut Criterion) {
    let units = units();
    let mut group = c.benchmark_group("bucket");
    group.throughput(Throughput::Elements(N as u64));
    group.bench_function("murmur3_x86_32 (22-byte key)", |b| {
        let keys: Vec<String> = units.iter().map(|u| format!("{FEATURE}:{u}")).collect();
        b.iter(|| {
            for k in &keys {
                black_box(murmur3_x86_32(black_box(k.as_bytes()), 0));
            }
        });
    });
    group.bench_function("bucket(feature, unit)", |b| {
        b.iter(|| {
            for u in &units {
                black_box(bucket(black_box(FEATURE), black_box(u)));
            }
        });
    });
    let table = RolloutTable::new();
    table.set(FEATURE, 50);
    group.bench_function("RolloutTable::is_enabled, 50%", |b| {
        b.iter(|| {
            for u in &units {
                black_box(table.is_enabled(black_box(FEATURE), black_box(u)));
            }
        });
    });
    group.finish();
}

criterion_group!(bucket_benches, benches);
criterion_main!(bucket_benches);
