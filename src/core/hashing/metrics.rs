//! Process-wide counters of the hash pool, kept in atomics (no lock, no Python call per hash) and
//! read at scrape time.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds (seconds) of the duration histogram: sub-millisecond to seconds.
pub const BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Which operation a sample is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Hash,
    Verify,
}

/// How an operation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    /// Verify only: the password did not match.
    Mismatch,
    /// Bad hash string, parameters beyond the caps, or an Argon2 failure.
    Error,
}

struct OpCounters {
    ok: AtomicU64,
    mismatch: AtomicU64,
    error: AtomicU64,
    /// Per bucket (not cumulative); the last slot is +Inf.
    buckets: [AtomicU64; BUCKETS.len() + 1],
    sum_nanos: AtomicU64,
}

impl OpCounters {
    const fn new() -> Self {
        OpCounters {
            ok: AtomicU64::new(0),
            mismatch: AtomicU64::new(0),
            error: AtomicU64::new(0),
            buckets: [const { AtomicU64::new(0) }; BUCKETS.len() + 1],
            sum_nanos: AtomicU64::new(0),
        }
    }
}

static HASH: OpCounters = OpCounters::new();
static VERIFY: OpCounters = OpCounters::new();
static REJECTED: AtomicU64 = AtomicU64::new(0);

/// Records one finished operation and how long its Argon2 computation took.
pub fn record(op: Op, outcome: Outcome, elapsed: Duration) {
    let c = match op {
        Op::Hash => &HASH,
        Op::Verify => &VERIFY,
    };
    match outcome {
        Outcome::Ok => &c.ok,
        Outcome::Mismatch => &c.mismatch,
        Outcome::Error => &c.error,
    }
    .fetch_add(1, Ordering::Relaxed);
    let secs = elapsed.as_secs_f64();
    let slot = BUCKETS
        .iter()
        .position(|&b| secs <= b)
        .unwrap_or(BUCKETS.len());
    c.buckets[slot].fetch_add(1, Ordering::Relaxed);
    c.sum_nanos.fetch_add(
        u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX),
        Ordering::Relaxed,
    );
}

/// Counts a call shed because the queue was full.
pub fn record_rejected() {
    REJECTED.fetch_add(1, Ordering::Relaxed);
}

/// A copy of one operation's counters.
#[derive(Debug, Clone, PartialEq)]
pub struct OpSnapshot {
    pub ok: u64,
    pub mismatch: u64,
    pub error: u64,
    /// Per bucket of [`BUCKETS`], not cumulative; the last entry is +Inf.
    pub buckets: Vec<u64>,
    pub sum_seconds: f64,
}

fn snapshot_of(c: &OpCounters) -> OpSnapshot {
    OpSnapshot {
        ok: c.ok.load(Ordering::Relaxed),
        mismatch: c.mismatch.load(Ordering::Relaxed),
        error: c.error.load(Ordering::Relaxed),
        buckets: c
            .buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect(),
        sum_seconds: c.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9,
    }
}

/// Counters of `op` so far in this process.
pub fn snapshot(op: Op) -> OpSnapshot {
    snapshot_of(match op {
        Op::Hash => &HASH,
        Op::Verify => &VERIFY,
    })
}

/// Calls shed so far because the queue was full.
pub fn rejected() -> u64 {
    REJECTED.load(Ordering::Relaxed)
}
