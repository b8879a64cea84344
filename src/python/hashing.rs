//! `sark_native._native.PasswordHasher`: the Python face of `core::hashing`. Every hash runs on
//! the process-wide pool; `hash`/`verify` wait for it with the GIL released, and
//! `hash_async`/`verify_async` return an asyncio future that a worker resolves through
//! `loop.call_soon_threadsafe`, so no Python thread waits and the loop never blocks.

use std::sync::Arc;
use std::sync::mpsc;
use std::time::Duration;

use pyo3::exceptions::{PyRuntimeError, PyTypeError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyString};

use super::aio::LoopFuture;
use super::errors::{InvalidHashError, to_py};
use super::gil;
use crate::core::error::Result as CoreResult;
use crate::core::hashing::{Config, Hasher, Memory, metrics, pool};

/// How long a waiting sync call sleeps (GIL released) between checks for Ctrl-C.
const WAIT_SLICE: Duration = Duration::from_millis(100);

fn type_name(obj: &Bound<'_, PyAny>) -> String {
    obj.get_type()
        .name()
        .map(|n| n.to_string())
        .unwrap_or_else(|_| "?".into())
}

/// A str (as UTF-8) or bytes, copied into an owned buffer after the length check.
fn text_bytes(obj: &Bound<'_, PyAny>, what: &str, max_len: usize) -> PyResult<Vec<u8>> {
    let bytes = if let Ok(s) = obj.cast::<PyString>() {
        // Lone surrogates raise UnicodeEncodeError (a ValueError), as argon2-cffi does.
        s.to_str()?.as_bytes().to_vec()
    } else if let Ok(b) = obj.cast::<PyBytes>() {
        let b = b.as_bytes();
        if b.len() > max_len {
            return Err(to_py(crate::core::error::Error::InvalidArgument(format!(
                "{what} is longer than {max_len} bytes"
            ))));
        }
        b.to_vec()
    } else {
        return Err(PyTypeError::new_err(format!(
            "{what} must be str or bytes, not {}",
            type_name(obj)
        )));
    };
    Ok(bytes)
}

/// A PHC string, as str or ASCII bytes.
fn phc_string(obj: &Bound<'_, PyAny>) -> PyResult<String> {
    if let Ok(s) = obj.cast::<PyString>() {
        // A str with lone surrogates is no PHC string.
        s.to_cow()
            .map(|c| c.into_owned())
            .map_err(|_| InvalidHashError::new_err("invalid Argon2 hash: not ASCII"))
    } else if let Ok(b) = obj.cast::<PyBytes>() {
        Ok(String::from_utf8_lossy(b.as_bytes()).into_owned())
    } else {
        Err(PyTypeError::new_err(format!(
            "hash must be str or bytes, not {}",
            type_name(obj)
        )))
    }
}

/// Queues `job` with the GIL released: the pool lock is never waited for by a thread holding the
/// GIL (see `pool::before_fork`).
fn submit(py: Python<'_>, job: pool::Job) -> PyResult<()> {
    gil::detach(py, move || pool::submit(job)).map_err(to_py)
}

/// Runs `f` on the pool and waits for it with the GIL released, checking for Ctrl-C.
fn run_sync<T: Send + 'static>(
    py: Python<'_>,
    f: impl FnOnce(&mut Memory) -> CoreResult<T> + Send + 'static,
) -> PyResult<T> {
    let (tx, rx) = mpsc::sync_channel(1);
    let job: pool::Job = Box::new(move |mem| {
        let _ = tx.send(pool::guarded(|| f(mem)));
    });
    submit(py, job)?;
    let mut rx = rx;
    loop {
        let (back, received) = gil::detach(py, move || {
            let r = rx.recv_timeout(WAIT_SLICE);
            (rx, r)
        });
        rx = back;
        match received {
            Ok(result) => return result.map_err(to_py),
            Err(mpsc::RecvTimeoutError::Timeout) => py.check_signals()?,
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                return Err(PyRuntimeError::new_err("the hash worker went away"));
            }
        }
    }
}

/// Runs `f` on the pool and returns an asyncio future of the running loop that settles with
/// `convert(result)`.
fn run_async<'py, T: Send + 'static>(
    py: Python<'py>,
    f: impl FnOnce(&mut Memory) -> CoreResult<T> + Send + 'static,
    convert: fn(Python<'_>, T) -> PyResult<Py<PyAny>>,
) -> PyResult<Bound<'py, PyAny>> {
    let (pending, fut) = LoopFuture::new(py)?;
    let job: pool::Job = Box::new(move |mem| {
        let result = pool::guarded(|| f(mem));
        Python::attach(|py| {
            let outcome = match result {
                Ok(value) => convert(py, value),
                Err(err) => Err(to_py(err)),
            };
            pending.settle(py, outcome);
        });
    });
    submit(py, job)?;
    Ok(fut)
}

fn str_to_py(py: Python<'_>, s: String) -> PyResult<Py<PyAny>> {
    Ok(PyString::new(py, &s).into_any().unbind())
}

fn true_to_py(py: Python<'_>, (): ()) -> PyResult<Py<PyAny>> {
    Ok(pyo3::types::PyBool::new(py, true)
        .to_owned()
        .into_any()
        .unbind())
}

/// An Argon2id password hasher, compatible with argon2-cffi's `PasswordHasher`.
#[pyclass(name = "PasswordHasher", module = "sark_native._native", frozen)]
pub struct PyPasswordHasher {
    inner: Arc<Hasher>,
}

fn u32_param(value: i64, name: &str) -> PyResult<u32> {
    u32::try_from(value).map_err(|_| {
        to_py(crate::core::error::Error::InvalidArgument(format!(
            "{name} out of range: {value}"
        )))
    })
}

impl PyPasswordHasher {
    fn max_len(&self) -> usize {
        self.inner.config().max_password_len
    }

    fn password(&self, obj: &Bound<'_, PyAny>) -> PyResult<Vec<u8>> {
        let pw = text_bytes(obj, "password", self.max_len())?;
        self.inner.check_password(&pw).map_err(to_py)?;
        Ok(pw)
    }
}

#[pymethods]
impl PyPasswordHasher {
    #[new]
    #[pyo3(signature = (
        time_cost = 3, memory_cost = 65536, parallelism = 1, hash_len = 32, salt_len = 16,
        *, max_password_len = 4096, max_time_cost = 16, max_memory_cost = 262_144,
        max_parallelism = 16
    ))]
    #[allow(clippy::too_many_arguments)] // argon2-cffi's signature plus the caps
    fn new(
        time_cost: i64,
        memory_cost: i64,
        parallelism: i64,
        hash_len: i64,
        salt_len: i64,
        max_password_len: i64,
        max_time_cost: i64,
        max_memory_cost: i64,
        max_parallelism: i64,
    ) -> PyResult<Self> {
        let config = Config {
            time_cost: u32_param(time_cost, "time_cost")?,
            memory_cost: u32_param(memory_cost, "memory_cost")?,
            parallelism: u32_param(parallelism, "parallelism")?,
            hash_len: u32_param(hash_len, "hash_len")?,
            salt_len: u32_param(salt_len, "salt_len")?,
            max_password_len: u32_param(max_password_len, "max_password_len")? as usize,
            max_time_cost: u32_param(max_time_cost, "max_time_cost")?,
            max_memory_cost: u32_param(max_memory_cost, "max_memory_cost")?,
            max_parallelism: u32_param(max_parallelism, "max_parallelism")?,
        };
        Ok(PyPasswordHasher {
            inner: Arc::new(Hasher::new(config).map_err(to_py)?),
        })
    }

    /// Hashes `password` (str or bytes) into a PHC string, on the pool, GIL released.
    fn hash(&self, py: Python<'_>, password: &Bound<'_, PyAny>) -> PyResult<String> {
        let pw = self.password(password)?;
        let h = Arc::clone(&self.inner);
        run_sync(py, move |mem| h.hash(&pw, mem))
    }

    /// `True` when `password` matches `hash`; raises `VerifyMismatchError` otherwise.
    fn verify(
        &self,
        py: Python<'_>,
        hash: &Bound<'_, PyAny>,
        password: &Bound<'_, PyAny>,
    ) -> PyResult<bool> {
        let phc = phc_string(hash)?;
        let pw = self.password(password)?;
        let h = Arc::clone(&self.inner);
        run_sync(py, move |mem| h.verify(&phc, &pw, mem)).map(|()| true)
    }

    /// An awaitable of `hash(password)`.
    fn hash_async<'py>(
        &self,
        py: Python<'py>,
        password: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let pw = self.password(password)?;
        let h = Arc::clone(&self.inner);
        run_async(py, move |mem| h.hash(&pw, mem), str_to_py)
    }

    /// An awaitable of `verify(hash, password)`.
    fn verify_async<'py>(
        &self,
        py: Python<'py>,
        hash: &Bound<'py, PyAny>,
        password: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let phc = phc_string(hash)?;
        let pw = self.password(password)?;
        let h = Arc::clone(&self.inner);
        run_async(py, move |mem| h.verify(&phc, &pw, mem), true_to_py)
    }

    /// `True` when `hash` was not made with this hasher's parameters.
    fn check_needs_rehash(&self, hash: &Bound<'_, PyAny>) -> PyResult<bool> {
        let phc = phc_string(hash)?;
        self.inner.needs_rehash(&phc).map_err(to_py)
    }

    #[getter]
    fn time_cost(&self) -> u32 {
        self.inner.config().time_cost
    }
    #[getter]
    fn memory_cost(&self) -> u32 {
        self.inner.config().memory_cost
    }
    #[getter]
    fn parallelism(&self) -> u32 {
        self.inner.config().parallelism
    }
    #[getter]
    fn hash_len(&self) -> u32 {
        self.inner.config().hash_len
    }
    #[getter]
    fn salt_len(&self) -> u32 {
        self.inner.config().salt_len
    }
    #[getter]
    fn max_password_len(&self) -> usize {
        self.inner.config().max_password_len
    }
    #[getter]
    fn backend(&self) -> &'static str {
        "rust"
    }

    fn __repr__(&self) -> String {
        let c = self.inner.config();
        format!(
            "PasswordHasher(time_cost={}, memory_cost={}, parallelism={}, hash_len={}, salt_len={}, backend='rust')",
            c.time_cost, c.memory_cost, c.parallelism, c.hash_len, c.salt_len
        )
    }
}

/// Sets the process-wide pool size (`None` keeps a value); returns `(workers, max_pending)`.
#[pyfunction]
#[pyo3(signature = (workers = None, max_pending = None))]
pub fn _configure_hashing(
    py: Python<'_>,
    workers: Option<i64>,
    max_pending: Option<i64>,
) -> PyResult<(usize, usize)> {
    let conv = |v: Option<i64>, name: &str| -> PyResult<Option<usize>> {
        v.map(|n| {
            usize::try_from(n).map_err(|_| {
                to_py(crate::core::error::Error::InvalidArgument(format!(
                    "{name} must be >= 1, got {n}"
                )))
            })
        })
        .transpose()
    };
    let (workers, max_pending) = (
        conv(workers, "hash_workers")?,
        conv(max_pending, "hash_max_pending")?,
    );
    let s = gil::detach(py, move || pool::configure(workers, max_pending)).map_err(to_py)?;
    Ok((s.workers, s.max_pending))
}

/// The hash pool's counters: per operation (`hash`, `verify`) the results, the per-bucket
/// durations and their sum; plus `rejected`, `queue_depth`, `running`, `workers`,
/// `max_pending` and the bucket bounds.
#[pyfunction]
pub fn _hashing_metrics(py: Python<'_>) -> PyResult<Bound<'_, PyDict>> {
    let out = PyDict::new(py);
    for (name, op) in [("hash", metrics::Op::Hash), ("verify", metrics::Op::Verify)] {
        let s = metrics::snapshot(op);
        let d = PyDict::new(py);
        d.set_item("ok", s.ok)?;
        d.set_item("mismatch", s.mismatch)?;
        d.set_item("error", s.error)?;
        d.set_item("buckets", s.buckets)?;
        d.set_item("sum", s.sum_seconds)?;
        out.set_item(name, d)?;
    }
    let settings = gil::detach(py, pool::settings);
    out.set_item("bounds", metrics::BUCKETS.to_vec())?;
    out.set_item("rejected", metrics::rejected())?;
    out.set_item("queue_depth", pool::queue_depth())?;
    out.set_item("running", pool::running())?;
    out.set_item("workers", settings.workers)?;
    out.set_item("max_pending", settings.max_pending)?;
    Ok(out)
}

/// `True` while this process has a live hash pool.
#[pyfunction]
pub fn _hash_pool_running(py: Python<'_>) -> bool {
    gil::detach(py, pool::is_running)
}
