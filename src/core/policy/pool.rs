//! The process-wide policy pool: the threads that run `evaluate_batch` (in parallel) and
//! `evaluate_async` (off the event loop). A rayon pool of our own, never rayon's global one:
//!
//! * Lazy: built on first use, `SARK_NATIVE_POLICY_WORKERS` or [`configure`] threads, default the
//!   number of CPUs.
//! * Fork-safe: it remembers the pid that built it; a forked child (where its threads do not
//!   exist) forgets it without touching it and builds a fresh one on first use.
//! * [`shutdown`] (interpreter exit) refuses new work, waits for the jobs in flight (they may
//!   attach to Python to settle a future) and lets the threads go.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use rayon::{ThreadPool, ThreadPoolBuilder};

use crate::core::error::{Error, Result};

/// Environment variable giving the number of threads (when not configured in code).
pub const WORKERS_ENV: &str = "SARK_NATIVE_POLICY_WORKERS";
pub const MAX_WORKERS: usize = 256;
const THREAD_NAME: &str = "sark-policy";
/// How long [`shutdown`] waits for jobs in flight.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

struct Global {
    pool: Option<(u32, Arc<ThreadPool>)>,
    configured: Option<usize>,
}

static GLOBAL: Mutex<Global> = Mutex::new(Global {
    pool: None,
    configured: None,
});
static STOPPED: AtomicBool = AtomicBool::new(false);
static IN_FLIGHT: AtomicUsize = AtomicUsize::new(0);

fn lock() -> MutexGuard<'static, Global> {
    GLOBAL.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The number of CPUs.
pub fn default_workers() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

fn env_workers() -> Option<usize> {
    let n = std::env::var(WORKERS_ENV)
        .ok()?
        .trim()
        .parse::<usize>()
        .ok()?;
    (1..=MAX_WORKERS).contains(&n).then_some(n)
}

/// The number of threads the pool has, or will have.
pub fn workers() -> usize {
    let g = lock();
    match &g.pool {
        Some((pid, p)) if *pid == std::process::id() => p.current_num_threads(),
        _ => g
            .configured
            .or_else(env_workers)
            .unwrap_or_else(default_workers),
    }
}

/// Sets the number of threads; the running pool (if any) finishes its jobs and a new one is built
/// on next use.
pub fn configure(workers: usize) -> Result<()> {
    if !(1..=MAX_WORKERS).contains(&workers) {
        return Err(Error::InvalidArgument(format!(
            "policy_workers must be in 1..={MAX_WORKERS}, not {workers}"
        )));
    }
    let mut g = lock();
    g.configured = Some(workers);
    g.pool = None;
    Ok(())
}

fn pool() -> Result<Arc<ThreadPool>> {
    if STOPPED.load(Ordering::Acquire) {
        return Err(Error::Overloaded(
            "the policy pool is shut down (interpreter exit)".into(),
        ));
    }
    let mut g = lock();
    let pid = std::process::id();
    if let Some((owner, p)) = &g.pool
        && *owner == pid
    {
        return Ok(p.clone());
    }
    if let Some(stale) = g.pool.take() {
        // Built by our parent before fork(): its threads do not exist here.
        std::mem::forget(stale);
    }
    let n = g
        .configured
        .or_else(env_workers)
        .unwrap_or_else(default_workers);
    let p = Arc::new(
        ThreadPoolBuilder::new()
            .num_threads(n)
            .thread_name(|i| format!("{THREAD_NAME}-{i}"))
            // Evaluations catch their own panics; anything else must not abort the process.
            .panic_handler(|_| {})
            .build()
            .map_err(|e| Error::Internal(format!("cannot start the policy pool: {e}")))?,
    );
    g.pool = Some((pid, p.clone()));
    Ok(p)
}

/// Runs `f` on the pool and waits for it (the caller releases the GIL first).
pub fn install<T: Send>(f: impl FnOnce() -> T + Send) -> Result<T> {
    Ok(pool()?.install(f))
}

/// Runs `job` on the pool in the background.
pub fn spawn(job: impl FnOnce() + Send + 'static) -> Result<()> {
    let p = pool()?;
    IN_FLIGHT.fetch_add(1, Ordering::AcqRel);
    p.spawn(move || {
        struct Done;
        impl Drop for Done {
            fn drop(&mut self) {
                IN_FLIGHT.fetch_sub(1, Ordering::AcqRel);
            }
        }
        let _done = Done;
        job();
    });
    Ok(())
}

/// `true` while a pool of this process exists.
pub fn is_running() -> bool {
    matches!(&lock().pool, Some((pid, _)) if *pid == std::process::id())
}

thread_local! {
    static FORK_GUARD: std::cell::RefCell<Option<MutexGuard<'static, Global>>> =
        const { std::cell::RefCell::new(None) };
}

/// Before `fork()` (GIL released): hold the pool's lock across the fork, so no other thread is
/// half-way through building or replacing the pool when the child is made.
pub fn before_fork() {
    let guard = lock();
    FORK_GUARD.with(|g| *g.borrow_mut() = Some(guard));
}

/// After `fork()`, in the parent: release the lock taken by [`before_fork`].
pub fn after_fork_parent() {
    FORK_GUARD.with(|g| drop(g.borrow_mut().take()));
}

/// After `fork()`, in the child: release the lock and forget the parent's pool (see the module
/// doc).
pub fn after_fork_child() {
    FORK_GUARD.with(|g| drop(g.borrow_mut().take()));
    if let Some(stale) = lock().pool.take() {
        std::mem::forget(stale);
    }
    IN_FLIGHT.store(0, Ordering::Release);
}

/// At interpreter exit: refuse new work, wait (bounded) for jobs in flight, drop the pool.
pub fn shutdown() {
    STOPPED.store(true, Ordering::Release);
    let deadline = Instant::now() + DRAIN_TIMEOUT;
    while IN_FLIGHT.load(Ordering::Acquire) > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(1));
    }
    lock().pool = None;
}
