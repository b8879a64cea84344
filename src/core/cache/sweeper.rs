//! The process-wide sweeper: one background thread that removes expired entries from every
//! registered cache.
//!
//! It starts lazily (the first insert with a deadline), exits by itself when no cache is left,
//! pauses around `fork()` ([`before_fork`] / [`after_fork_parent`]) so it never holds a shard lock
//! while the process is copied, and is rebuilt in the child on first use ([`after_fork_child`]).
//! [`shutdown`] stops it for good (interpreter exit).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::thread::JoinHandle;
use std::time::Duration;

use parking_lot::{Condvar, Mutex};

use super::Cache;
use crate::core::clock::Clock;

/// How often the sweeper wakes.
pub const INTERVAL: Duration = Duration::from_millis(1000);
/// Slots visited per shard per wake-up: bounds how long a shard lock is held.
pub const BUDGET_PER_SHARD: usize = 4096;
const THREAD_NAME: &str = "sark-cache-sweeper";

/// Something the sweeper can clean.
pub trait Sweep: Send + Sync {
    /// Removes expired entries, visiting at most `budget` slots per shard.
    fn sweep(&self, budget: usize) -> usize;
}

impl<V: Send, C: Clock> Sweep for Cache<V, C> {
    fn sweep(&self, budget: usize) -> usize {
        Cache::sweep(self, budget)
    }
}

struct State {
    caches: Vec<Weak<dyn Sweep>>,
    running: bool,
    /// Set around fork(): the thread parks and touches no cache.
    paused: bool,
    /// The thread is sweeping (holds upgraded caches, may take shard locks).
    busy: bool,
    stopped: bool,
    generation: u64,
    handle: Option<JoinHandle<()>>,
}

static STATE: Mutex<State> = Mutex::new(State {
    caches: Vec::new(),
    running: false,
    paused: false,
    busy: false,
    stopped: false,
    generation: 0,
    handle: None,
});
static WAKE: Condvar = Condvar::new();
/// Mirrors `State::running` for a lock-free check on the insert path.
static RUNNING: AtomicBool = AtomicBool::new(false);

/// Registers a cache for sweeping (held weakly: a dropped cache leaves the list by itself).
pub fn register(cache: Weak<dyn Sweep>) {
    let mut st = STATE.lock();
    st.caches.retain(|w| w.strong_count() > 0);
    st.caches.push(cache);
}

/// Starts the sweeper thread unless it runs already. Cheap when it does: one relaxed load.
#[inline]
pub fn ensure_running() {
    if !RUNNING.load(Ordering::Relaxed) {
        start();
    }
}

#[cold]
fn start() {
    let mut st = STATE.lock();
    if st.running || st.stopped {
        return;
    }
    let generation = st.generation;
    let spawned = std::thread::Builder::new()
        .name(THREAD_NAME.into())
        .spawn(move || run(generation));
    // When no thread can be made (resource limits), expiry stays lazy, on read, and a later
    // insert tries again.
    if let Ok(handle) = spawned {
        st.running = true;
        st.handle = Some(handle);
        RUNNING.store(true, Ordering::Relaxed);
    }
}

fn run(generation: u64) {
    let mut st = STATE.lock();
    loop {
        if !st.stopped && st.generation == generation {
            WAKE.wait_for(&mut st, INTERVAL);
        }
        while st.paused && !st.stopped {
            WAKE.wait(&mut st);
        }
        if st.stopped || st.generation != generation {
            break;
        }
        st.caches.retain(|w| w.strong_count() > 0);
        if st.caches.is_empty() {
            break;
        }
        let caches: Vec<Arc<dyn Sweep>> = st.caches.iter().filter_map(Weak::upgrade).collect();
        st.busy = true;
        drop(st);
        for cache in &caches {
            cache.sweep(BUDGET_PER_SHARD);
        }
        drop(caches);
        st = STATE.lock();
        st.busy = false;
        WAKE.notify_all();
    }
    if st.generation == generation {
        st.running = false;
        st.handle = None; // detach: this thread is ending
        RUNNING.store(false, Ordering::Relaxed);
    }
}

/// Before `fork()`: wait until the sweeper is idle and keep it parked.
pub fn before_fork() {
    let mut st = STATE.lock();
    st.paused = true;
    while st.busy {
        WAKE.wait(&mut st);
    }
}

/// After `fork()`, in the parent: let the sweeper go on.
pub fn after_fork_parent() {
    let mut st = STATE.lock();
    st.paused = false;
    WAKE.notify_all();
}

/// After `fork()`, in the child: the thread did not survive the fork; forget it so the next
/// insert with a deadline starts a fresh one. The registered caches (inherited) stay registered.
pub fn after_fork_child() {
    let mut st = STATE.lock();
    st.paused = false;
    st.busy = false;
    st.running = false;
    st.generation += 1;
    // The parent's JoinHandle refers to a thread this process does not have: never join it.
    std::mem::forget(st.handle.take());
    RUNNING.store(false, Ordering::Relaxed);
}

/// Stops the sweeper for good and waits for its thread (interpreter exit).
pub fn shutdown() {
    let handle = {
        let mut st = STATE.lock();
        st.stopped = true;
        st.paused = false;
        WAKE.notify_all();
        st.handle.take()
    };
    if let Some(h) = handle {
        let _ = h.join();
    }
    RUNNING.store(false, Ordering::Relaxed);
}

/// `true` while the sweeper thread runs (for tests and diagnostics).
pub fn is_running() -> bool {
    STATE.lock().running
}
