//! The process-wide sweeper: one background thread that removes expired entries from every
//! registered cache.
//!
//! It starts lazily (the first insert with a deadline), exits by itself when no cache is left,
//! pauses around `fork()` ([`before_fork`] / [`after_fork_parent`]) so it never holds a shard lock
//! while the process is copied, and is rebuilt in the child on first use ([`after_fork_child`]).
//! [`shutdown`] stops it for good (interpreter exit).

use std::sync::atomic::{AtomicBool, AtomicPtr, Ordering};
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
    handle: Option<JoinHandle<()>>,
}

/// The sweeper's lock, condition variable and state. A forked child gets a fresh one: the
/// parent's sweeper thread may have held this lock at the instant of the fork (it checks its
/// state on every wake-up), and in the child nothing would ever release it.
struct Shared {
    state: Mutex<State>,
    wake: Condvar,
}

impl Shared {
    fn new(caches: Vec<Weak<dyn Sweep>>) -> Self {
        Shared {
            state: Mutex::new(State {
                caches,
                running: false,
                paused: false,
                busy: false,
                stopped: false,
                handle: None,
            }),
            wake: Condvar::new(),
        }
    }
}

/// The current [`Shared`]; replaced (the old one leaked) after `fork()` in the child.
static SHARED: AtomicPtr<Shared> = AtomicPtr::new(std::ptr::null_mut());
/// Mirrors `State::running` of the current [`Shared`] for a lock-free check on the insert path.
static RUNNING: AtomicBool = AtomicBool::new(false);

fn shared() -> &'static Shared {
    let p = SHARED.load(Ordering::Acquire);
    if !p.is_null() {
        // SAFETY: a published Shared is leaked, never freed.
        return unsafe { &*p };
    }
    let fresh = Box::into_raw(Box::new(Shared::new(Vec::new())));
    match SHARED.compare_exchange(
        std::ptr::null_mut(),
        fresh,
        Ordering::AcqRel,
        Ordering::Acquire,
    ) {
        // SAFETY: just published; never freed.
        Ok(_) => unsafe { &*fresh },
        Err(winner) => {
            // SAFETY: `fresh` was never published; `winner` is leaked, never freed.
            drop(unsafe { Box::from_raw(fresh) });
            unsafe { &*winner }
        }
    }
}

/// Registers a cache for sweeping (held weakly: a dropped cache leaves the list by itself).
pub fn register(cache: Weak<dyn Sweep>) {
    let mut st = shared().state.lock();
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
    let sh = shared();
    let mut st = sh.state.lock();
    if st.running || st.stopped {
        return;
    }
    let spawned = std::thread::Builder::new()
        .name(THREAD_NAME.into())
        .spawn(move || run(sh));
    // When no thread can be made (resource limits), expiry stays lazy, on read, and a later
    // insert tries again.
    if let Ok(handle) = spawned {
        st.running = true;
        st.handle = Some(handle);
        RUNNING.store(true, Ordering::Relaxed);
    }
}

fn run(sh: &'static Shared) {
    let mut st = sh.state.lock();
    loop {
        if !st.stopped {
            sh.wake.wait_for(&mut st, INTERVAL);
        }
        while st.paused && !st.stopped {
            sh.wake.wait(&mut st);
        }
        if st.stopped {
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
        st = sh.state.lock();
        st.busy = false;
        sh.wake.notify_all();
    }
    st.running = false;
    st.handle = None; // detach: this thread is ending
    if std::ptr::eq(SHARED.load(Ordering::Acquire), sh) {
        RUNNING.store(false, Ordering::Relaxed);
    }
}

/// Before `fork()`: wait until the sweeper is idle and keep it parked, so that it holds no shard
/// lock (and drops no value) while the process is copied.
pub fn before_fork() {
    let sh = shared();
    let mut st = sh.state.lock();
    st.paused = true;
    while st.busy {
        sh.wake.wait(&mut st);
    }
}

/// After `fork()`, in the parent: let the sweeper go on.
pub fn after_fork_parent() {
    let sh = shared();
    let mut st = sh.state.lock();
    st.paused = false;
    sh.wake.notify_all();
}

/// After `fork()`, in the child: the sweeper thread did not survive the fork. Start over with a
/// fresh lock and state (the old ones are leaked: the parent's thread may have held the lock at
/// the fork), keeping the registered caches when the old lock is free; the next insert with a
/// deadline starts a new thread.
pub fn after_fork_child() {
    let old = SHARED.load(Ordering::Acquire);
    let caches = if old.is_null() {
        Vec::new()
    } else {
        // SAFETY: a published Shared is leaked, never freed.
        let old = unsafe { &*old };
        match old.state.try_lock() {
            Some(mut st) => {
                // The parent's JoinHandle refers to a thread this process does not have.
                std::mem::forget(st.handle.take());
                std::mem::take(&mut st.caches)
            }
            // Held by a thread that no longer exists: its caches are not swept in this child
            // (their expired entries still are never returned, and go on read).
            None => Vec::new(),
        }
    };
    let fresh = Box::into_raw(Box::new(Shared::new(caches)));
    SHARED.store(fresh, Ordering::Release);
    RUNNING.store(false, Ordering::Relaxed);
}

/// Stops the sweeper for good and waits for its thread (interpreter exit).
pub fn shutdown() {
    let sh = shared();
    let handle = {
        let mut st = sh.state.lock();
        st.stopped = true;
        st.paused = false;
        sh.wake.notify_all();
        st.handle.take()
    };
    if let Some(h) = handle {
        let _ = h.join();
    }
    RUNNING.store(false, Ordering::Relaxed);
}

/// `true` while the sweeper thread runs (for tests and diagnostics).
pub fn is_running() -> bool {
    shared().state.lock().running
}
