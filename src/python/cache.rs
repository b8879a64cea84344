//! `sark_native._native.Cache`: the Python face of `core::cache::Cache`, holding Python objects
//! by reference.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::Duration;

use parking_lot::Mutex;
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBool, PyBytes, PyDict, PyFloat, PyInt, PyList, PyString};

use super::errors::{CacheError, to_py};
use super::gil;
use crate::core::cache::{Cache, Stats, sweeper, ttl_to_nanos};
use crate::core::single_flight::{Join, SingleFlight, Wait};

type Value = Py<PyAny>;

/// How long a waiting `get_or_set` sleeps (GIL released) between checks for Ctrl-C.
const WAIT_SLICE: Duration = Duration::from_millis(50);

/// The live native caches and the counters of dropped ones, by metrics name.
struct Registry {
    live: Vec<(String, Weak<Cache<Value>>)>,
    retired: Vec<(String, Stats)>,
}

static REGISTRY: Mutex<Registry> = Mutex::new(Registry {
    live: Vec::new(),
    retired: Vec::new(),
});

/// The cache's key as bytes: the str's UTF-8 (borrowed from the str object), or, for a str with
/// lone surrogates, its `surrogatepass` encoding (one-to-one, prefix-preserving).
#[inline]
fn key_bytes<'a>(key: &'a Bound<'_, PyAny>) -> PyResult<Cow<'a, [u8]>> {
    // An exact str is a pointer comparison; subclasses take the (abi3: out-of-line) flags check.
    let s = if key.is_exact_instance_of::<PyString>() {
        // SAFETY: just checked that `key` is exactly a str.
        unsafe { key.cast_unchecked::<PyString>() }
    } else {
        key.cast::<PyString>().map_err(|_| {
            PyTypeError::new_err(format!("cache keys must be str, not {}", type_name(key)))
        })?
    };
    match s.to_str() {
        Ok(text) => Ok(Cow::Borrowed(text.as_bytes())),
        Err(_) => {
            let encoded = s.call_method1("encode", ("utf-8", "surrogatepass"))?;
            Ok(Cow::Owned(encoded.cast::<PyBytes>()?.as_bytes().to_vec()))
        }
    }
}

fn key_to_py<'py>(py: Python<'py>, key: &[u8]) -> PyResult<Bound<'py, PyAny>> {
    match std::str::from_utf8(key) {
        Ok(text) => Ok(PyString::new(py, text).into_any()),
        Err(_) => PyBytes::new(py, key).call_method1("decode", ("utf-8", "surrogatepass")),
    }
}

fn type_name(obj: &Bound<'_, PyAny>) -> String {
    obj.get_type()
        .name()
        .map(|n| n.to_string())
        .unwrap_or_else(|_| "?".into())
}

/// A time to live in seconds: an int or float (not bool), finite and > 0.
fn ttl_seconds(obj: &Bound<'_, PyAny>) -> PyResult<f64> {
    if obj.is_instance_of::<PyBool>()
        || !(obj.is_instance_of::<PyInt>() || obj.is_instance_of::<PyFloat>())
    {
        return Err(PyTypeError::new_err(format!(
            "ttl must be a number of seconds or None, not {}",
            type_name(obj)
        )));
    }
    let seconds: f64 = obj
        .extract()
        .map_err(|_| PyValueError::new_err("ttl is too large"))?;
    ttl_to_nanos(seconds).map_err(to_py)?;
    Ok(seconds)
}

/// An optional per-call ttl in nanoseconds (`None`: the cache default).
fn ttl_arg(obj: Option<&Bound<'_, PyAny>>) -> PyResult<Option<u64>> {
    match obj {
        None => Ok(None),
        Some(o) if o.is_none() => Ok(None),
        Some(o) => Ok(Some(ttl_to_nanos(ttl_seconds(o)?).map_err(to_py)?)),
    }
}

fn size_arg(obj: &Bound<'_, PyAny>) -> PyResult<usize> {
    if obj.is_instance_of::<PyBool>() || !obj.is_instance_of::<PyInt>() {
        return Err(PyTypeError::new_err(format!(
            "max_size must be an int, not {}",
            type_name(obj)
        )));
    }
    match obj.extract::<i128>() {
        Ok(n) if n < 1 => Err(PyValueError::new_err(format!(
            "max_size must be >= 1, not {n}"
        ))),
        // Larger than any memory: clamp to the largest Python size (sys.maxsize), as the Python
        // backend does.
        Ok(n) => Ok(n.min(isize::MAX as i128) as usize),
        Err(_) => Ok(isize::MAX as usize),
    }
}

/// An in-process LRU + TTL cache of Python objects. See `sark_native.Cache`.
#[pyclass(name = "Cache", module = "sark_native._native", frozen, weakref)]
pub struct PyCache {
    inner: Arc<Cache<Value>>,
    flights: SingleFlight<PyResult<Value>>,
    /// Loads in progress for `aget_or_set`, owned by the shared asyncio helper.
    async_flights: Py<PyDict>,
    name: String,
    ttl_seconds: Option<f64>,
}

impl PyCache {
    #[inline]
    fn store(&self, key: &[u8], value: Value, ttl: Option<u64>) {
        if ttl.is_some() || self.inner.default_ttl().is_some() {
            sweeper::ensure_running();
        }
        self.inner.insert(key, value, ttl);
    }
}

#[pymethods]
impl PyCache {
    #[new]
    /// Built by `sark_native.Cache(...)`, which supplies the defaults.
    #[pyo3(signature = (max_size, ttl, *, name = "default"))]
    fn new(
        py: Python<'_>,
        max_size: &Bound<'_, PyAny>,
        ttl: &Bound<'_, PyAny>,
        name: &str,
    ) -> PyResult<Self> {
        let max_size = size_arg(max_size)?;
        let ttl_seconds = if ttl.is_none() {
            None
        } else {
            Some(ttl_seconds(ttl)?)
        };
        let ttl_nanos = ttl_seconds.map(ttl_to_nanos).transpose().map_err(to_py)?;
        let inner = Arc::new(Cache::new(max_size, ttl_nanos).map_err(to_py)?);
        let weak: Weak<Cache<Value>> = Arc::downgrade(&inner);
        sweeper::register(weak.clone() as Weak<dyn sweeper::Sweep>);
        {
            let mut reg = REGISTRY.lock();
            reg.live.retain(|(_, w)| w.strong_count() > 0);
            reg.live.push((name.to_owned(), weak));
        }
        Ok(PyCache {
            inner,
            flights: SingleFlight::new(),
            async_flights: PyDict::new(py).unbind(),
            name: name.to_owned(),
            ttl_seconds,
        })
    }

    /// The value under `key`, or `default` when it is missing or expired.
    #[pyo3(signature = (key, default = None))]
    fn get(
        &self,
        py: Python<'_>,
        key: &Bound<'_, PyAny>,
        default: Option<Value>,
    ) -> PyResult<Value> {
        let k = key_bytes(key)?;
        match self.inner.get_with(&k, |v| v.clone_ref(py)) {
            Some(v) => Ok(v),
            None => Ok(default.unwrap_or_else(|| py.None())),
        }
    }

    /// Stores `value` (by reference) under `key`; `ttl` in seconds, `None` for the default.
    #[pyo3(signature = (key, value, ttl = None))]
    fn set(
        &self,
        key: &Bound<'_, PyAny>,
        value: Value,
        ttl: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        let k = key_bytes(key)?;
        let ttl = ttl_arg(ttl)?;
        self.store(&k, value, ttl);
        Ok(())
    }

    /// Removes `key`; `True` when a live entry was removed.
    fn delete(&self, key: &Bound<'_, PyAny>) -> PyResult<bool> {
        let k = key_bytes(key)?;
        Ok(self.inner.remove(&k).is_some())
    }

    /// Removes every key starting with `prefix`; returns how many live entries went.
    fn delete_prefix(&self, prefix: &Bound<'_, PyAny>) -> PyResult<usize> {
        let p = key_bytes(prefix)?;
        let removed = self.inner.remove_prefix(&p);
        Ok(removed.len())
    }

    /// Removes every entry (the counters are kept).
    fn clear(&self) {
        self.inner.clear();
    }

    fn __len__(&self) -> usize {
        self.inner.len()
    }

    fn __contains__(&self, key: &Bound<'_, PyAny>) -> PyResult<bool> {
        let k = key_bytes(key)?;
        Ok(self.inner.contains(&k))
    }

    /// The cached value, or `factory()`'s, stored; one loader per key across threads.
    #[pyo3(signature = (key, factory, ttl = None))]
    fn get_or_set(
        &self,
        py: Python<'_>,
        key: &Bound<'_, PyAny>,
        factory: &Bound<'_, PyAny>,
        ttl: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Value> {
        let k = key_bytes(key)?;
        let ttl = ttl_arg(ttl)?;
        if let Some(v) = self.inner.get_with(&k, |v| v.clone_ref(py)) {
            return Ok(v);
        }
        loop {
            match self.flights.join(&k) {
                Join::Reentrant => {
                    return Err(CacheError::new_err(format!(
                        "get_or_set({}): the factory asked for its own key; it would wait for itself",
                        key.repr()?
                    )));
                }
                Join::Leader(leader) => {
                    // A load that finished between our miss and join has stored the value.
                    if let Some(v) = self.inner.peek_with(&k, |v| v.clone_ref(py)) {
                        leader.finish(Ok(v.clone_ref(py)));
                        return Ok(v);
                    }
                    return match factory.call0() {
                        Ok(v) => {
                            let v = v.unbind();
                            self.store(&k, v.clone_ref(py), ttl);
                            leader.finish(Ok(v.clone_ref(py)));
                            Ok(v)
                        }
                        // KeyboardInterrupt, SystemExit...: the load was interrupted, not failed.
                        // Abandon it (dropping the leader) so a waiter takes over.
                        Err(e) if !e.is_instance_of::<pyo3::exceptions::PyException>(py) => {
                            drop(leader);
                            Err(e)
                        }
                        Err(e) => {
                            leader.finish(Err(e.clone_ref(py)));
                            Err(e)
                        }
                    };
                }
                Join::Waiter(flight) => loop {
                    match gil::detach(py, || flight.wait(WAIT_SLICE)) {
                        Wait::Done => {
                            return flight
                                .with_result(|r| match r {
                                    Ok(v) => Ok(v.clone_ref(py)),
                                    Err(e) => Err(e.clone_ref(py)),
                                })
                                .expect("a done flight has a result");
                        }
                        Wait::Abandoned => break,
                        Wait::Pending => py.check_signals()?,
                    }
                },
            }
        }
    }

    /// Awaitable `get_or_set` for asyncio: one loader per key across the tasks of a loop.
    #[pyo3(signature = (key, factory, ttl = None))]
    fn aget_or_set(
        slf: &Bound<'_, Self>,
        key: &Bound<'_, PyAny>,
        factory: &Bound<'_, PyAny>,
        ttl: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Value> {
        static HELPER: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
        let py = slf.py();
        key_bytes(key)?;
        ttl_arg(ttl)?;
        let helper = HELPER.get_or_try_init(py, || {
            Ok::<_, PyErr>(
                py.import("sark_native._cache_async")?
                    .getattr("aget_or_set")?
                    .unbind(),
            )
        })?;
        let flights = slf.get().async_flights.clone_ref(py);
        let ttl = ttl.map(|t| t.clone().unbind());
        Ok(helper
            .bind(py)
            .call1((slf, flights, key, factory, ttl))?
            .unbind())
    }

    /// `{"hits", "misses", "evictions", "expirations", "size", "max_size"}`.
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        stats_dict(py, &self.inner.stats(), false)
    }

    /// A snapshot of the live keys.
    fn keys<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let keys = self.inner.keys();
        let list = PyList::empty(py);
        for k in keys {
            list.append(key_to_py(py, &k)?)?;
        }
        Ok(list)
    }

    /// Seconds left for the live entry under `key`; `None` when it never expires.
    fn expires_in(&self, key: &Bound<'_, PyAny>) -> PyResult<Option<f64>> {
        let k = key_bytes(key)?;
        match self.inner.expires_in(&k) {
            None => Err(pyo3::exceptions::PyKeyError::new_err(key.clone().unbind())),
            Some(left) => Ok(left.map(|n| n as f64 / 1e9)),
        }
    }

    /// Gives the live entry under `key` a new time to live; `False` when absent.
    #[pyo3(signature = (key, ttl = None))]
    fn touch(&self, key: &Bound<'_, PyAny>, ttl: Option<&Bound<'_, PyAny>>) -> PyResult<bool> {
        let k = key_bytes(key)?;
        let ttl = ttl_arg(ttl)?;
        if ttl.is_some() {
            sweeper::ensure_running();
        }
        Ok(self.inner.touch(&k, ttl))
    }

    #[getter]
    fn max_size(&self) -> usize {
        self.inner.max_size()
    }

    #[getter]
    fn ttl(&self) -> Option<f64> {
        self.ttl_seconds
    }

    #[getter]
    fn name(&self) -> &str {
        &self.name
    }

    #[getter]
    fn backend(&self) -> &'static str {
        "rust"
    }

    /// Approximate bytes used by the cache's own structures, keys included, values' objects not.
    fn _heap_bytes(&self) -> usize {
        self.inner.heap_bytes()
    }

    fn __repr__(&self) -> String {
        format!(
            "<sark_native.Cache name='{}' backend='rust' size={} max_size={} ttl={}>",
            self.name,
            self.inner.len(),
            self.inner.max_size(),
            self.ttl_seconds
                .map_or_else(|| "None".to_owned(), |t| t.to_string())
        )
    }
}

impl Drop for PyCache {
    fn drop(&mut self) {
        // Keep the counters of a dropped cache so the metrics stay monotonic.
        let mut s = self.inner.stats();
        s.size = 0;
        s.max_size = 0;
        let mut reg = REGISTRY.lock();
        match reg.retired.iter_mut().find(|(n, _)| *n == self.name) {
            Some((_, total)) => total.accumulate(&s),
            None => reg.retired.push((self.name.clone(), s)),
        }
        let me = Arc::as_ptr(&self.inner);
        reg.live
            .retain(|(_, w)| w.strong_count() > 0 && w.as_ptr() != me);
    }
}

/// The counters as a dict: the contract's six keys, plus `sets` and `deletes` for the metrics.
fn stats_dict<'py>(py: Python<'py>, s: &Stats, with_writes: bool) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("hits", s.hits)?;
    d.set_item("misses", s.misses)?;
    d.set_item("evictions", s.evictions)?;
    d.set_item("expirations", s.expirations)?;
    d.set_item("size", s.size)?;
    d.set_item("max_size", s.max_size)?;
    if with_writes {
        d.set_item("sets", s.sets)?;
        d.set_item("deletes", s.deletes)?;
    }
    Ok(d)
}

/// The counters of every native cache, summed by name: `[(name, {counter: value})]`.
#[pyfunction]
pub fn _cache_metrics(py: Python<'_>) -> PyResult<Vec<(String, Bound<'_, PyDict>)>> {
    let (live, mut totals) = {
        let reg = REGISTRY.lock();
        let live: Vec<(String, Arc<Cache<Value>>)> = reg
            .live
            .iter()
            .filter_map(|(n, w)| w.upgrade().map(|c| (n.clone(), c)))
            .collect();
        let totals: HashMap<String, Stats> = reg.retired.iter().cloned().collect();
        (live, totals)
    };
    for (name, cache) in &live {
        totals
            .entry(name.clone())
            .or_default()
            .accumulate(&cache.stats());
    }
    drop(live);
    let mut out = Vec::with_capacity(totals.len());
    for (name, s) in totals {
        out.push((name, stats_dict(py, &s, true)?));
    }
    Ok(out)
}
