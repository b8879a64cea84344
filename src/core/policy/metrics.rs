//! Process-wide policy counters in atomics (no lock, no Python call per evaluation), read at
//! scrape time by `sark_native.metrics` and by policyd's `/metrics`.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use crate::core::error::Error;

/// Upper bounds (seconds) of the evaluation duration histogram: from 1 us.
pub const BUCKETS: [f64; 19] = [
    0.000_001,
    0.000_002_5,
    0.000_005,
    0.000_01,
    0.000_025,
    0.000_05,
    0.000_1,
    0.000_25,
    0.000_5,
    0.001,
    0.002_5,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
];

/// Error types, in the order of [`Snapshot::errors`]; the Python path uses the same names.
pub const ERROR_TYPES: [&str; 4] = ["evaluation", "input", "internal", "other"];

/// The per-evaluation counters of one thread. Each thread writes only its own (no cache line
/// shared between cores on the hot path); a scrape sums them all.
struct Shard {
    evaluations: AtomicU64,
    buckets: [AtomicU64; BUCKETS.len() + 1],
    sum_nanos: AtomicU64,
    errors: [AtomicU64; ERROR_TYPES.len()],
}

impl Shard {
    const fn new() -> Shard {
        Shard {
            evaluations: AtomicU64::new(0),
            buckets: [const { AtomicU64::new(0) }; BUCKETS.len() + 1],
            sum_nanos: AtomicU64::new(0),
            errors: [const { AtomicU64::new(0) }; ERROR_TYPES.len()],
        }
    }
}

/// Every thread's shard (kept after the thread ends: its counts stay in the totals).
static SHARDS: Mutex<Vec<Arc<Shard>>> = Mutex::new(Vec::new());

thread_local! {
    static SHARD: Arc<Shard> = {
        let shard = Arc::new(Shard::new());
        SHARDS
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(shard.clone());
        shard
    };
}

/// Counts of threads whose shard is gone (during their teardown).
static FALLBACK: Shard = Shard::new();

fn with_shard(f: impl Fn(&Shard)) {
    if SHARD.try_with(|s| f(s)).is_err() {
        f(&FALLBACK);
    }
}
static FALLBACKS: AtomicU64 = AtomicU64::new(0);
static FALLBACK_WRITE_FAILURES: AtomicU64 = AtomicU64::new(0);
static VM_FALLBACKS: AtomicU64 = AtomicU64::new(0);
static POLICIES: AtomicI64 = AtomicI64::new(0);
static SWAPS: AtomicU64 = AtomicU64::new(0);
static LAST_SWAP_NANOS: AtomicU64 = AtomicU64::new(0);

fn error_index(err: &Error) -> usize {
    match err {
        Error::PolicyEvaluation(_) => 0,
        Error::InvalidArgument(_) => 1,
        Error::Internal(_) => 2,
        _ => 3,
    }
}

/// Records one evaluation (successful or not) and its duration.
pub fn evaluated(elapsed: Duration, err: Option<&Error>) {
    let secs = elapsed.as_secs_f64();
    let slot = BUCKETS
        .iter()
        .position(|&b| secs <= b)
        .unwrap_or(BUCKETS.len());
    let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
    with_shard(|s| {
        s.evaluations.fetch_add(1, Ordering::Relaxed);
        s.buckets[slot].fetch_add(1, Ordering::Relaxed);
        s.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
        if let Some(e) = err {
            s.errors[error_index(e)].fetch_add(1, Ordering::Relaxed);
        }
    });
}

/// Counts an input refused before evaluation (the binding's conversion).
pub fn input_rejected() {
    with_shard(|s| {
        s.errors[1].fetch_add(1, Ordering::Relaxed);
    });
}

/// Counts an evaluation retried on the HTTP path (the binding's fallback).
pub fn fallback() {
    FALLBACKS.fetch_add(1, Ordering::Relaxed);
}

/// Counts a policy write that failed on the HTTP fallback (which is then disabled).
pub fn fallback_write_failed() {
    FALLBACK_WRITE_FAILURES.fetch_add(1, Ordering::Relaxed);
}

pub(super) fn vm_fallback() {
    VM_FALLBACKS.fetch_add(1, Ordering::Relaxed);
}

pub(super) fn policies_changed(before: usize, after: usize) {
    let delta = i64::try_from(after).unwrap_or(i64::MAX) - i64::try_from(before).unwrap_or(0);
    POLICIES.fetch_add(delta, Ordering::Relaxed);
}

pub(super) fn swapped(elapsed: Duration) {
    SWAPS.fetch_add(1, Ordering::Relaxed);
    LAST_SWAP_NANOS.store(
        u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX),
        Ordering::Relaxed,
    );
}

/// Counter values at one moment.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    pub evaluations: u64,
    /// Per bucket of [`BUCKETS`] (not cumulative), then +Inf.
    pub buckets: Vec<u64>,
    pub sum_seconds: f64,
    /// `(error type, count)` for every type in [`ERROR_TYPES`].
    pub errors: Vec<(&'static str, u64)>,
    pub fallbacks: u64,
    pub fallback_write_failures: u64,
    /// Evaluations the VM could not finish and the interpreter answered.
    pub vm_fallbacks: u64,
    /// Policies loaded in every live engine of the process.
    pub policies: i64,
    pub swaps: u64,
    pub last_swap_seconds: f64,
}

/// The current values of the counters.
pub fn snapshot() -> Snapshot {
    let mut evaluations = 0;
    let mut buckets = [0u64; BUCKETS.len() + 1];
    let mut sum_nanos = 0u64;
    let mut errors = [0u64; ERROR_TYPES.len()];
    let mut add = |s: &Shard| {
        evaluations += s.evaluations.load(Ordering::Relaxed);
        for (total, b) in buckets.iter_mut().zip(&s.buckets) {
            *total += b.load(Ordering::Relaxed);
        }
        sum_nanos = sum_nanos.wrapping_add(s.sum_nanos.load(Ordering::Relaxed));
        for (total, e) in errors.iter_mut().zip(&s.errors) {
            *total += e.load(Ordering::Relaxed);
        }
    };
    for shard in SHARDS.lock().unwrap_or_else(PoisonError::into_inner).iter() {
        add(shard);
    }
    add(&FALLBACK);
    Snapshot {
        evaluations,
        buckets: buckets.to_vec(),
        sum_seconds: sum_nanos as f64 / 1e9,
        errors: ERROR_TYPES.iter().copied().zip(errors).collect(),
        fallbacks: FALLBACKS.load(Ordering::Relaxed),
        fallback_write_failures: FALLBACK_WRITE_FAILURES.load(Ordering::Relaxed),
        vm_fallbacks: VM_FALLBACKS.load(Ordering::Relaxed),
        policies: POLICIES.load(Ordering::Relaxed),
        swaps: SWAPS.load(Ordering::Relaxed),
        last_swap_seconds: LAST_SWAP_NANOS.load(Ordering::Relaxed) as f64 / 1e9,
    }
}
