//! Monotonic time for cache deadlines, with a cheap read for the common "far from expiry" case.
//!
//! Deadlines are nanoseconds on `CLOCK_MONOTONIC`, the clock behind Python's `time.monotonic()`,
//! so both backends agree on when an entry expires. Tests inject a [`ManualClock`] instead of
//! sleeping.

use std::sync::atomic::{AtomicU64, Ordering};

/// A source of monotonic nanoseconds.
pub trait Clock: Send + Sync + 'static {
    /// Nanoseconds on a monotonic scale.
    fn now(&self) -> u64;

    /// `true` while `deadline` (on the scale of [`Clock::now`]) lies in the future. May answer
    /// from a cheaper, coarser clock when that settles the question.
    #[inline]
    fn before(&self, deadline: u64) -> bool {
        self.now() < deadline
    }

    /// The deadline `ttl` nanoseconds from now. May be up to one coarse clock tick early
    /// (never late) when that is a negligible part of `ttl`.
    #[inline]
    fn deadline_after(&self, ttl: u64) -> u64 {
        self.now().saturating_add(ttl)
    }
}

/// Time to live from which a deadline may come from the coarse clock: one tick (1-10 ms) early is
/// then at most 1% of the lifetime.
#[cfg(any(target_os = "linux", target_os = "android"))]
const COARSE_DEADLINE_MIN_TTL_NS: u64 = 1_000_000_000;

/// The system's monotonic clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct MonotonicClock;

/// `CLOCK_MONOTONIC_COARSE` lags `CLOCK_MONOTONIC` by at most one scheduler tick (1-10 ms); a
/// deadline further away than this from the coarse reading is certainly in the future.
#[cfg(any(target_os = "linux", target_os = "android"))]
const COARSE_SLACK_NS: u64 = 20_000_000;

#[inline]
fn read(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; monotonic clocks cannot fail on supported OSes.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    (ts.tv_sec as u64)
        .wrapping_mul(1_000_000_000)
        .wrapping_add(ts.tv_nsec as u64)
}

impl Clock for MonotonicClock {
    #[inline]
    fn now(&self) -> u64 {
        read(libc::CLOCK_MONOTONIC)
    }

    #[inline]
    fn before(&self, deadline: u64) -> bool {
        #[cfg(any(target_os = "linux", target_os = "android"))]
        {
            // The coarse clock is a plain memory read in the vDSO, several times cheaper than the
            // precise one on virtual machines.
            if read(libc::CLOCK_MONOTONIC_COARSE).saturating_add(COARSE_SLACK_NS) < deadline {
                return true;
            }
        }
        self.now() < deadline
    }

    #[inline]
    fn deadline_after(&self, ttl: u64) -> u64 {
        #[cfg(any(target_os = "linux", target_os = "android"))]
        {
            // The coarse clock lags the precise one, so this deadline is early, never late: an
            // expired entry is still never returned.
            if ttl >= COARSE_DEADLINE_MIN_TTL_NS {
                return read(libc::CLOCK_MONOTONIC_COARSE).saturating_add(ttl);
            }
        }
        self.now().saturating_add(ttl)
    }
}

/// A clock that only moves when told to: for tests.
#[derive(Debug, Default)]
pub struct ManualClock(AtomicU64);

impl ManualClock {
    /// A clock reading `start` nanoseconds.
    pub fn new(start: u64) -> Self {
        Self(AtomicU64::new(start))
    }

    /// Moves the clock forward by `nanos`.
    pub fn advance(&self, nanos: u64) {
        self.0.fetch_add(nanos, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn monotonic_clock_moves_forward_and_before_agrees_with_now() {
        let c = MonotonicClock;
        let a = c.now();
        let b = c.now();
        assert!(b >= a);
        assert!(c.before(b + 60_000_000_000));
        assert!(!c.before(a));
        // Near the deadline the precise clock decides.
        assert!(c.before(c.now() + 5_000_000));
    }

    #[test]
    fn coarse_deadlines_are_early_by_at_most_a_tick() {
        let c = MonotonicClock;
        let ttl = 5_000_000_000;
        let before = c.now();
        let d = c.deadline_after(ttl);
        let after = c.now();
        assert!(d <= after + ttl, "never late");
        assert!(
            d + COARSE_SLACK_NS >= before + ttl,
            "early by less than the slack"
        );
        let short = c.deadline_after(1_000);
        assert!(short >= before + 1_000, "short ttls use the precise clock");
    }

    #[test]
    fn manual_clock_advances() {
        let c = ManualClock::new(10);
        assert!(c.before(11));
        c.advance(1);
        assert!(!c.before(11));
    }
}
