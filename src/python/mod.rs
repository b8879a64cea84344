//! The binding layer: the `sark_native._native` extension module. It converts values, releases
//! the GIL and maps errors; the work itself is in `crate::core`.

mod aio;
mod bucket;
mod cache;
mod errors;
mod gil;
mod hashing;
mod policy;
mod sidecar;
mod tokens;

use pyo3::prelude::*;

use crate::core::cache::sweeper;
use crate::core::hashing::pool;
use crate::core::policy::pool as policy_pool;

/// Before `os.fork()`: park background threads so none holds a lock across the fork.
#[pyfunction]
fn _before_fork(py: Python<'_>) {
    // With the GIL released: the sweeper may be waiting for the GIL to drop a value, and a thread
    // in `PasswordHasher.hash` may hold the pool's lock (it takes it with the GIL released).
    gil::detach(py, || {
        sweeper::before_fork();
        pool::before_fork();
        policy_pool::before_fork();
    });
}

/// After `os.fork()`, in the parent: resume background threads.
#[pyfunction]
fn _after_fork_parent() {
    policy_pool::after_fork_parent();
    pool::after_fork_parent();
    sweeper::after_fork_parent();
}

/// After `os.fork()`, in the child: forget the parent's threads; they restart on first use.
#[pyfunction]
fn _after_fork_child() {
    policy_pool::after_fork_child();
    pool::after_fork_child();
    sweeper::after_fork_child();
}

/// At interpreter exit: stop background threads before the interpreter finalizes. The hash
/// pool drains its queue first (workers resolving awaitables attach to Python: the GIL is
/// released meanwhile).
#[pyfunction]
fn _shutdown(py: Python<'_>) {
    gil::detach(py, || {
        pool::shutdown();
        policy_pool::shutdown();
        sweeper::shutdown();
    });
}

/// `True` while the cache sweeper thread runs.
#[pyfunction]
fn _sweeper_running() -> bool {
    sweeper::is_running()
}

#[pymodule]
#[pyo3(name = "_native")]
fn sark_native_module(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add_function(wrap_pyfunction!(bucket::bucket, m)?)?;
    m.add_class::<bucket::PyRolloutTable>()?;
    m.add_class::<cache::PyCache>()?;
    m.add_function(wrap_pyfunction!(cache::_cache_metrics, m)?)?;
    m.add_class::<hashing::PyPasswordHasher>()?;
    m.add_class::<aio::_Resolve>()?;
    m.add_function(wrap_pyfunction!(hashing::_configure_hashing, m)?)?;
    m.add_function(wrap_pyfunction!(hashing::_hashing_metrics, m)?)?;
    m.add_function(wrap_pyfunction!(hashing::_hash_pool_running, m)?)?;
    m.add_class::<policy::PyPolicyEngine>()?;
    m.add_function(wrap_pyfunction!(policy::_configure_policy, m)?)?;
    m.add_function(wrap_pyfunction!(policy::_policy_metrics, m)?)?;
    m.add_function(wrap_pyfunction!(policy::_policy_pool_running, m)?)?;
    m.add_function(wrap_pyfunction!(policy::_policyd_serve, m)?)?;
    m.add_function(wrap_pyfunction!(policy::_inject_policy_faults, m)?)?;
    m.add_class::<sidecar::PySidecarClient>()?;
    m.add_class::<sidecar::Call>()?;
    m.add_class::<sidecar::Readable>()?;
    m.add_class::<sidecar::Writable>()?;
    m.add_class::<sidecar::Tick>()?;
    m.add_class::<sidecar::Flush>()?;
    m.add_function(wrap_pyfunction!(sidecar::_sidecar_metrics, m)?)?;
    m.add_function(wrap_pyfunction!(sidecar::_sidecar_restarted, m)?)?;
    m.add_function(wrap_pyfunction!(sidecar::_sidecar_request_started, m)?)?;
    m.add_function(wrap_pyfunction!(sidecar::_sidecar_request_finished, m)?)?;
    m.add_class::<sidecar::PySidecarProcess>()?;
    m.add_function(wrap_pyfunction!(sidecar::_spawn_sidecar_worker, m)?)?;
    m.add_class::<tokens::PyEd25519Signer>()?;
    m.add_class::<tokens::PyKeySet>()?;
    m.add_function(wrap_pyfunction!(tokens::_token_metrics, m)?)?;
    m.add("MAX_TOKEN_SIZE", crate::core::tokens::MAX_TOKEN_SIZE)?;
    m.add_function(wrap_pyfunction!(_before_fork, m)?)?;
    m.add_function(wrap_pyfunction!(_after_fork_parent, m)?)?;
    m.add_function(wrap_pyfunction!(_after_fork_child, m)?)?;
    m.add_function(wrap_pyfunction!(_shutdown, m)?)?;
    m.add_function(wrap_pyfunction!(_sweeper_running, m)?)?;
    Ok(())
}
