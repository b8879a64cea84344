//! Token counters: issued, verified, and rejected by reason, in process-wide atomics (no Python
//! call per token); `sark_native.metrics` reads them at scrape time.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::core::error::Error;

/// Rejection reasons, in the order of [`snapshot`]'s `rejected` list; the Python path uses the
/// same names.
pub const REASONS: [&str; 8] = [
    "decode",
    "invalid_signature",
    "expired",
    "immature",
    "invalid_audience",
    "invalid_issuer",
    "missing_claim",
    "other",
];

static ISSUED: AtomicU64 = AtomicU64::new(0);
static VERIFIED: AtomicU64 = AtomicU64::new(0);
static REJECTED: [AtomicU64; REASONS.len()] = [const { AtomicU64::new(0) }; REASONS.len()];

/// The reason label of a decode failure.
pub fn reason(err: &Error) -> &'static str {
    REASONS[reason_index(err)]
}

fn reason_index(err: &Error) -> usize {
    match err {
        Error::Decode(_) => 0,
        Error::InvalidSignature(_) => 1,
        Error::ExpiredSignature(_) => 2,
        Error::ImmatureSignature(_) => 3,
        Error::InvalidAudience(_) => 4,
        Error::InvalidIssuer(_) => 5,
        Error::MissingRequiredClaim(_) => 6,
        _ => 7,
    }
}

pub(crate) fn issued() {
    ISSUED.fetch_add(1, Ordering::Relaxed);
}

pub(crate) fn verified() {
    VERIFIED.fetch_add(1, Ordering::Relaxed);
}

/// Counts a rejected token (the binding calls it for tokens the core never sees).
pub fn rejected(err: &Error) {
    REJECTED[reason_index(err)].fetch_add(1, Ordering::Relaxed);
}

/// Counter values at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub issued: u64,
    pub verified: u64,
    /// `(reason, count)` for every reason in [`REASONS`].
    pub rejected: Vec<(&'static str, u64)>,
}

/// The current values of the counters.
pub fn snapshot() -> Snapshot {
    Snapshot {
        issued: ISSUED.load(Ordering::Relaxed),
        verified: VERIFIED.load(Ordering::Relaxed),
        rejected: REASONS
            .iter()
            .zip(REJECTED.iter())
            .map(|(name, n)| (*name, n.load(Ordering::Relaxed)))
            .collect(),
    }
}
