//! Process-wide sidecar counters of the native client and supervisor, in atomics (a few relaxed
//! adds per request), read at scrape time. The Python path keeps its own (`_fallback/sidecar.py`)
//! under the same names.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds (seconds) of the request duration histogram (the Python path's too).
pub const BUCKETS: [f64; 17] = [
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0,
];

/// Error types, in the order of [`Snapshot::errors`].
pub const ERROR_TYPES: [&str; 4] = ["timeout", "unavailable", "protocol", "remote"];

static REQUESTS: AtomicU64 = AtomicU64::new(0);
static IN_FLIGHT: AtomicI64 = AtomicI64::new(0);
static RESTARTS: AtomicU64 = AtomicU64::new(0);
static ERRORS: [AtomicU64; ERROR_TYPES.len()] = [const { AtomicU64::new(0) }; 4];
static BUCKET_COUNTS: [AtomicU64; BUCKETS.len() + 1] = [const { AtomicU64::new(0) }; 18];
static SUM_NANOS: AtomicU64 = AtomicU64::new(0);

/// A request passed validation and is on its way.
pub fn request_started() {
    REQUESTS.fetch_add(1, Ordering::Relaxed);
    IN_FLIGHT.fetch_add(1, Ordering::Relaxed);
}

/// A request ended after `elapsed`: answered (`None`), or failed with an error type of
/// [`ERROR_TYPES`].
pub fn request_finished(elapsed: Duration, error: Option<&str>) {
    IN_FLIGHT.fetch_sub(1, Ordering::Relaxed);
    let secs = elapsed.as_secs_f64();
    let slot = BUCKETS
        .iter()
        .position(|&b| secs <= b)
        .unwrap_or(BUCKETS.len());
    BUCKET_COUNTS[slot].fetch_add(1, Ordering::Relaxed);
    SUM_NANOS.fetch_add(
        u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX),
        Ordering::Relaxed,
    );
    if let Some(kind) = error
        && let Some(i) = ERROR_TYPES.iter().position(|t| *t == kind)
    {
        ERRORS[i].fetch_add(1, Ordering::Relaxed);
    }
}

/// A worker was started again.
pub fn restarted() {
    RESTARTS.fetch_add(1, Ordering::Relaxed);
}

/// Counter values at one moment.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    pub requests: u64,
    pub in_flight: i64,
    pub restarts: u64,
    pub errors: Vec<(&'static str, u64)>,
    /// Per bucket of [`BUCKETS`] (not cumulative), then +Inf.
    pub buckets: Vec<u64>,
    pub sum_seconds: f64,
}

pub fn snapshot() -> Snapshot {
    Snapshot {
        requests: REQUESTS.load(Ordering::Relaxed),
        in_flight: IN_FLIGHT.load(Ordering::Relaxed),
        restarts: RESTARTS.load(Ordering::Relaxed),
        errors: ERROR_TYPES
            .iter()
            .zip(&ERRORS)
            .map(|(t, n)| (*t, n.load(Ordering::Relaxed)))
            .collect(),
        buckets: BUCKET_COUNTS
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect(),
        sum_seconds: SUM_NANOS.load(Ordering::Relaxed) as f64 / 1e9,
    }
}
