//! The process-wide hash pool: a fixed number of worker threads, each owning one reusable Argon2
//! memory block, fed from one bounded queue.
//!
//! * Lazy: nothing starts until the first [`submit`].
//! * Bounded: past `max_pending` queued jobs, [`submit`] fails at once with `Overloaded` (load
//!   shedding), so a burst cannot grow memory without limit.
//! * Fork-safe: the pool remembers the pid that built it; a forked child (where the workers do
//!   not exist) forgets it and builds a fresh one on first use. [`before_fork`] holds the pool's
//!   lock across `fork()` so no thread is half-way through replacing it.
//! * Its locks are `std::sync` ones (a futex word on Linux), not parking_lot's: a parking_lot
//!   lock that is contended parks its waiters in a process-global table whose own locks a forked
//!   child can inherit held by a thread that no longer exists. Callers in the binding take the
//!   pool lock with the GIL released (see `before_fork`).
//! * [`shutdown`] (interpreter exit) lets the workers drain the queue, joins them, and refuses
//!   new work.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;

use super::{Memory, metrics};
use crate::core::error::{Error, Result};

/// A unit of work; it gets the worker's memory block.
pub type Job = Box<dyn FnOnce(&mut Memory) + Send + 'static>;

/// Environment variable giving the number of workers (when not configured in code).
pub const WORKERS_ENV: &str = "SARK_NATIVE_HASH_WORKERS";
/// Default bound on queued (not yet running) jobs.
pub const DEFAULT_MAX_PENDING: usize = 1024;
/// Most workers a pool may have.
pub const MAX_WORKERS: usize = 256;
const THREAD_NAME: &str = "sark-hash";
/// Niceness of the workers (Linux). Hashing is throughput work, the event loop and request
/// threads are latency work: when they compete for a core, the scheduler should favour the
/// latter (the ADR keeps hashing to part of the machine for the same reason). Without
/// contention the workers still get whole cores. On this project's 2-vCPU VMs the loop's wake-up
/// lag while both vCPUs are busy was 3-5 ms whatever the workers' priority (even SCHED_IDLE), so
/// this is a preference, not a latency guarantee.
pub const WORKER_NICE: i32 = 10;

/// Size of the pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    pub workers: usize,
    pub max_pending: usize,
}

/// max(min(cpu, 4), 1): the ADR's bound, leaving cores to the event loop.
pub fn default_workers() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .clamp(1, 4)
}

fn env_workers() -> Option<usize> {
    let raw = std::env::var(WORKERS_ENV).ok()?;
    let n = raw.trim().parse::<usize>().ok()?;
    (1..=MAX_WORKERS).contains(&n).then_some(n)
}

struct Queue {
    jobs: VecDeque<Job>,
    closing: bool,
}

struct Shared {
    pid: u32,
    settings: Settings,
    queue: Mutex<Queue>,
    ready: Condvar,
    handles: Mutex<Vec<JoinHandle<()>>>,
}

struct Global {
    pool: Option<Arc<Shared>>,
    /// Pools replaced by [`configure`] that may still be draining: [`shutdown`] joins them too,
    /// so no worker outlives the interpreter.
    retired: Vec<Arc<Shared>>,
    /// Set by [`configure`]; otherwise the environment, then the default.
    configured: Option<Settings>,
    stopped: bool,
}

static GLOBAL: Mutex<Global> = Mutex::new(Global {
    pool: None,
    retired: Vec::new(),
    configured: None,
    stopped: false,
});
/// Jobs queued and not yet taken by a worker, for the queue depth gauge.
static QUEUED: AtomicUsize = AtomicUsize::new(0);
/// Jobs a worker is running.
static RUNNING: AtomicUsize = AtomicUsize::new(0);

/// Locks `m`; a poisoned lock is still usable (every critical section here leaves its data
/// consistent: plain field updates and `VecDeque` pushes and pops).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn effective(g: &Global) -> Settings {
    g.configured.unwrap_or_else(|| Settings {
        workers: env_workers().unwrap_or_else(default_workers),
        max_pending: DEFAULT_MAX_PENDING,
    })
}

/// The settings the pool has, or will have when it starts.
pub fn settings() -> Settings {
    let g = lock(&GLOBAL);
    match &g.pool {
        Some(p) if p.pid == std::process::id() => p.settings,
        _ => effective(&g),
    }
}

/// Sets the pool size. A running pool is retired (its workers finish the queued jobs, then
/// exit) and the next job starts a new one.
pub fn configure(workers: Option<usize>, max_pending: Option<usize>) -> Result<Settings> {
    if let Some(w) = workers
        && !(1..=MAX_WORKERS).contains(&w)
    {
        return Err(Error::InvalidArgument(format!(
            "hash_workers must be between 1 and {MAX_WORKERS}, got {w}"
        )));
    }
    if max_pending == Some(0) {
        return Err(Error::InvalidArgument(
            "hash_max_pending must be >= 1".into(),
        ));
    }
    let mut g = lock(&GLOBAL);
    let current = effective(&g);
    let new = Settings {
        workers: workers.unwrap_or(current.workers),
        max_pending: max_pending.unwrap_or(current.max_pending),
    };
    g.configured = Some(new);
    if let Some(old) = g.pool.take() {
        if old.pid == std::process::id() {
            retire(&old);
            g.retired.retain(|p| !p.finished());
            g.retired.push(old);
        } else {
            std::mem::forget(old);
        }
    }
    Ok(new)
}

/// Tells a pool's workers to finish the queue and exit, without waiting for them.
fn retire(shared: &Shared) {
    lock(&shared.queue).closing = true;
    shared.ready.notify_all();
}

impl Shared {
    /// Every worker of this pool has exited.
    fn finished(&self) -> bool {
        lock(&self.handles).iter().all(JoinHandle::is_finished)
    }

    /// Closes the queue, lets the workers drain it, and joins them.
    fn drain(&self) {
        retire(self);
        let handles = std::mem::take(&mut *lock(&self.handles));
        for h in handles {
            let _ = h.join();
        }
    }
}

fn start(settings: Settings) -> Result<Arc<Shared>> {
    let shared = Arc::new(Shared {
        pid: std::process::id(),
        settings,
        queue: Mutex::new(Queue {
            jobs: VecDeque::new(),
            closing: false,
        }),
        ready: Condvar::new(),
        handles: Mutex::new(Vec::new()),
    });
    let mut handles = Vec::with_capacity(settings.workers);
    for i in 0..settings.workers {
        let s = Arc::clone(&shared);
        match std::thread::Builder::new()
            .name(format!("{THREAD_NAME}-{i}"))
            .spawn(move || run(&s))
        {
            Ok(h) => handles.push(h),
            Err(e) if handles.is_empty() => {
                return Err(Error::Internal(format!("cannot start a hash worker: {e}")));
            }
            Err(_) => break, // fewer workers than asked: still a working pool
        }
    }
    *lock(&shared.handles) = handles;
    Ok(shared)
}

/// Lowers the calling thread's priority by [`WORKER_NICE`] (best effort; Linux only).
fn lower_priority() {
    #[cfg(target_os = "linux")]
    // SAFETY: plain syscalls on the calling thread's own id; failure only leaves the priority.
    unsafe {
        let tid = libc::gettid();
        let now = libc::getpriority(libc::PRIO_PROCESS, tid as libc::id_t);
        libc::setpriority(
            libc::PRIO_PROCESS,
            tid as libc::id_t,
            (now + WORKER_NICE).min(19),
        );
    }
}

fn run(shared: &Shared) {
    lower_priority();
    let mut memory: Memory = Vec::new();
    loop {
        let job = {
            let mut q = lock(&shared.queue);
            loop {
                if let Some(job) = q.jobs.pop_front() {
                    QUEUED.fetch_sub(1, Ordering::Relaxed);
                    break Some(job);
                }
                if q.closing {
                    break None;
                }
                q = shared.ready.wait(q).unwrap_or_else(PoisonError::into_inner);
            }
        };
        let Some(job) = job else { return };
        RUNNING.fetch_add(1, Ordering::Relaxed);
        // A job that panics must not take the worker with it; jobs built by [`guarded`] never do.
        if catch_unwind(AssertUnwindSafe(|| job(&mut memory))).is_err() {
            memory = Vec::new();
        }
        RUNNING.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Queues `job`; `Overloaded` at once when `max_pending` jobs already wait or after
/// [`shutdown`].
pub fn submit(job: Job) -> Result<()> {
    let shared = {
        let mut g = lock(&GLOBAL);
        if g.stopped {
            return Err(Error::Overloaded("the hash pool is shut down".into()));
        }
        match &g.pool {
            Some(p) if p.pid == std::process::id() => Arc::clone(p),
            _ => {
                // None yet, or one inherited through fork() whose workers this process lacks:
                // leak it (its thread handles are not ours to join or detach).
                if let Some(old) = g.pool.take() {
                    std::mem::forget(old);
                    std::mem::forget(std::mem::take(&mut g.retired));
                    QUEUED.store(0, Ordering::Relaxed);
                    RUNNING.store(0, Ordering::Relaxed);
                }
                let settings = effective(&g);
                let p = start(settings)?;
                g.pool = Some(Arc::clone(&p));
                p
            }
        }
    };
    let mut q = lock(&shared.queue);
    if q.jobs.len() >= shared.settings.max_pending {
        drop(q);
        metrics::record_rejected();
        return Err(Error::Overloaded(format!(
            "the hash queue is full ({} jobs waiting)",
            shared.settings.max_pending
        )));
    }
    q.jobs.push_back(job);
    QUEUED.fetch_add(1, Ordering::Relaxed);
    drop(q);
    shared.ready.notify_one();
    Ok(())
}

/// Runs `f` and turns a panic into `Internal`, so a job always reports back.
pub fn guarded<T>(f: impl FnOnce() -> Result<T>) -> Result<T> {
    catch_unwind(AssertUnwindSafe(f))
        .unwrap_or_else(|_| Err(Error::Internal("a hash worker panicked".into())))
}

/// Jobs waiting in the queue.
pub fn queue_depth() -> usize {
    QUEUED.load(Ordering::Relaxed)
}

/// Jobs being computed now.
pub fn running() -> usize {
    RUNNING.load(Ordering::Relaxed)
}

/// `true` while this process has a live pool.
pub fn is_running() -> bool {
    let g = lock(&GLOBAL);
    matches!(&g.pool, Some(p) if p.pid == std::process::id())
}

thread_local! {
    /// The pool lock held across `fork()` by the forking thread (see [`before_fork`]).
    static FORK_GUARD: RefCell<Option<MutexGuard<'static, Global>>> = const { RefCell::new(None) };
}

/// Before `fork()`: take the pool lock and hold it across the fork, so the child never inherits
/// it mid-update. Workers never take it, so this cannot wait on a running hash.
///
/// Lock order: nobody waits for anything else (the GIL included) while holding the pool lock, and
/// the binding takes it only with the GIL released: a thread that held the GIL while it waited
/// for this lock would deadlock with the forking thread, which gives the GIL up between this
/// call and the fork (Python's other at-fork handlers run in between).
pub fn before_fork() {
    let guard = lock(&GLOBAL);
    FORK_GUARD.with(|g| *g.borrow_mut() = Some(guard));
}

fn release_fork_lock() {
    FORK_GUARD.with(|g| drop(g.borrow_mut().take()));
}

/// After `fork()`, in the parent: release the lock taken by [`before_fork`].
pub fn after_fork_parent() {
    release_fork_lock();
}

/// After `fork()`, in the child: the workers did not survive; forget the pool (its queued jobs
/// belong to the parent) so the first job here starts a fresh one.
pub fn after_fork_child() {
    release_fork_lock();
    let mut g = lock(&GLOBAL);
    if let Some(old) = g.pool.take() {
        std::mem::forget(old);
    }
    std::mem::forget(std::mem::take(&mut g.retired));
    QUEUED.store(0, Ordering::Relaxed);
    RUNNING.store(0, Ordering::Relaxed);
}

/// At interpreter exit: refuse new work, let the workers finish the queue, and join them.
pub fn shutdown() {
    let (current, retired) = {
        let mut g = lock(&GLOBAL);
        g.stopped = true;
        (g.pool.take(), std::mem::take(&mut g.retired))
    };
    for pool in current.into_iter().chain(retired) {
        if pool.pid == std::process::id() {
            pool.drain();
        } else {
            std::mem::forget(pool); // inherited through fork(): its threads are not ours
        }
    }
}
