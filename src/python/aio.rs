//! Settling asyncio futures from native threads: a worker finishes, attaches to Python, and asks
//! the future's loop to set the result (`loop.call_soon_threadsafe`), so no Python thread waits
//! and the loop never blocks. Used by the hash pool and the policy pool.

use parking_lot::Mutex;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;

/// Called on the event loop (via `call_soon_threadsafe`) to settle a future, unless the caller
/// cancelled it meanwhile.
#[pyclass(module = "sark_native._native", frozen)]
pub struct _Resolve {
    future: Py<PyAny>,
    outcome: Mutex<Option<PyResult<Py<PyAny>>>>,
}

#[pymethods]
impl _Resolve {
    fn __call__(&self, py: Python<'_>) -> PyResult<()> {
        let fut = self.future.bind(py);
        let Some(outcome) = self.outcome.lock().take() else {
            return Ok(());
        };
        if fut.call_method0("done")?.is_truthy()? {
            return Ok(());
        }
        match outcome {
            Ok(value) => fut.call_method1("set_result", (value,))?,
            Err(err) => fut.call_method1("set_exception", (err.into_value(py),))?,
        };
        Ok(())
    }
}

static GET_RUNNING_LOOP: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

/// A future of the running loop, to be settled later from any thread.
pub struct LoopFuture {
    event_loop: Py<PyAny>,
    future: Py<PyAny>,
}

impl LoopFuture {
    /// A new future of the running event loop (`RuntimeError` without one) and the handle that
    /// settles it.
    pub fn new(py: Python<'_>) -> PyResult<(LoopFuture, Bound<'_, PyAny>)> {
        let get_loop = GET_RUNNING_LOOP.import(py, "asyncio", "get_running_loop")?;
        let event_loop = get_loop.call0()?;
        let fut = event_loop.call_method0("create_future")?;
        Ok((
            LoopFuture {
                event_loop: event_loop.unbind(),
                future: fut.clone().unbind(),
            },
            fut,
        ))
    }

    /// Hands `outcome` to the loop; nothing happens if the loop is closed (nobody waits any
    /// more) or the caller cancelled the future.
    pub fn settle(self, py: Python<'_>, outcome: PyResult<Py<PyAny>>) {
        let resolve = _Resolve {
            future: self.future,
            outcome: Mutex::new(Some(outcome)),
        };
        // A closed loop raises RuntimeError: nobody is waiting any more.
        let _ = self
            .event_loop
            .bind(py)
            .call_method1("call_soon_threadsafe", (resolve,));
    }
}
