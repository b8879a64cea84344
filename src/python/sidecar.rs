//! `sark_native._native.SidecarClient`: the native client of one sidecar worker, driven by the
//! asyncio event loop it is used on.
//!
//! The protocol engine is `core::ipc` (framing, ids, the in-flight bound, connections, write
//! buffers, backoff, timeouts, late answers) and the sockets are non-blocking `std` sockets that
//! the loop's selector watches (`loop.add_reader`/`add_writer`): a request is written from the
//! caller's own call, and an answer is read and settled on the loop thread as soon as the socket
//! is readable, with no hand-off through another thread (on small VMs each thread wake-up costs
//! tens of microseconds, more than the whole exchange). Params are validated and encoded to JSON
//! here, with the messages of the pure-Python client; answers are decoded by the protocol module's
//! JSON decoder (`json.loads` semantics: integers of any size, as the Python client).

use std::collections::HashMap;
use std::path::PathBuf;

use parking_lot::Mutex;
use pyo3::exceptions::{PyRuntimeError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBool, PyDict, PyFloat, PyInt, PyList, PyString, PyTuple};

use crate::core::ipc::client::{
    ClientCore, ConnId, Delivery, Effect, Failure, Options, PrepareError, ReqId,
};
use crate::core::ipc::codec::{self, push_json_string, push_py_float};
use crate::core::ipc::metrics;

pyo3::import_exception!(sark_native.exceptions, SidecarTimeoutError);
pyo3::import_exception!(sark_native.exceptions, SidecarUnavailableError);
pyo3::import_exception!(sark_native.exceptions, SidecarProtocolError);
pyo3::import_exception!(sark_native.exceptions, SidecarRemoteError);

/// Containers in params may nest at most this deep (a scalar is depth 0).
const MAX_DEPTH: usize = 128;

// ----- params -> JSON ---------------------------------------------------------------------------

enum Key {
    Name(String),
    Index(usize),
}

fn path_of(keys: &[Key]) -> String {
    let mut out = String::from("params");
    for k in keys {
        match k {
            Key::Name(name) => {
                let mut b = Vec::new();
                push_json_string(&mut b, name);
                out.push('[');
                out.push_str(&String::from_utf8_lossy(&b));
                out.push(']');
            }
            Key::Index(i) => out.push_str(&format!("[{i}]")),
        }
    }
    out
}

fn type_name(obj: &Bound<'_, PyAny>) -> String {
    obj.get_type()
        .name()
        .map(|n| n.to_string())
        .unwrap_or_else(|_| "?".into())
}

fn repr_of(obj: &Bound<'_, PyAny>) -> String {
    obj.repr()
        .map(|r| r.to_string())
        .unwrap_or_else(|_| "?".into())
}

/// Encodes params as compact JSON, refusing what the Python client refuses with its messages
/// (see `sark_native/sidecar/_protocol.py`): type errors first, in depth-first order; a lone
/// surrogate, found while encoding, only when there is no type error.
struct Encoder {
    out: Vec<u8>,
    keys: Vec<Key>,
    surrogate: Option<String>,
}

impl Encoder {
    fn refuse(&self, what: String) -> PyErr {
        PyTypeError::new_err(format!("{}: {what}", path_of(&self.keys)))
    }

    fn string(&mut self, s: &Bound<'_, PyString>, key_of: Option<&Bound<'_, PyAny>>) {
        match s.to_str() {
            Ok(text) => push_json_string(&mut self.out, text),
            Err(_) => {
                if self.surrogate.is_none() {
                    self.surrogate = Some(match key_of {
                        Some(k) => format!("{}: dict key {}", path_of(&self.keys), repr_of(k)),
                        None => path_of(&self.keys),
                    });
                }
                self.out.extend_from_slice(b"\"\"");
            }
        }
    }

    fn value(&mut self, obj: &Bound<'_, PyAny>, depth: usize) -> PyResult<()> {
        if let Ok(s) = obj.cast::<PyString>() {
            self.string(s, None);
            return Ok(());
        }
        if obj.is_none() {
            self.out.extend_from_slice(b"null");
            return Ok(());
        }
        if let Ok(b) = obj.cast::<PyBool>() {
            self.out
                .extend_from_slice(if b.is_true() { b"true" } else { b"false" });
            return Ok(());
        }
        if obj.cast::<PyInt>().is_ok() {
            if let Ok(n) = obj.extract::<i64>() {
                self.out.extend_from_slice(n.to_string().as_bytes());
            } else if let Ok(n) = obj.extract::<u64>() {
                self.out.extend_from_slice(n.to_string().as_bytes());
            } else {
                let text = obj.call_method0("__index__").map(|i| i.to_string());
                return Err(self.refuse(format!(
                    "int {} is out of range (integers must be in [-2**63, 2**64))",
                    text.unwrap_or_default()
                )));
            }
            return Ok(());
        }
        if let Ok(f) = obj.cast::<PyFloat>() {
            let v = f.value();
            if !v.is_finite() {
                let shown = if v.is_nan() {
                    "nan"
                } else if v > 0.0 {
                    "inf"
                } else {
                    "-inf"
                };
                return Err(self.refuse(format!(
                    "float {shown} is not JSON (NaN and infinities are refused)"
                )));
            }
            push_py_float(&mut self.out, v);
            return Ok(());
        }
        let is_list = obj.cast::<PyList>().is_ok() || obj.cast::<PyTuple>().is_ok();
        let is_dict = !is_list && obj.cast::<PyDict>().is_ok();
        if !is_list && !is_dict {
            return Err(self.refuse(format!("{} is not JSON-serializable", type_name(obj))));
        }
        if depth >= MAX_DEPTH {
            return Err(self.refuse(format!("nested more than {MAX_DEPTH} deep")));
        }
        if is_list {
            self.out.push(b'[');
            for (i, item) in obj.try_iter()?.enumerate() {
                if i > 0 {
                    self.out.push(b',');
                }
                self.keys.push(Key::Index(i));
                self.value(&item?, depth + 1)?;
                self.keys.pop();
            }
            self.out.push(b']');
            return Ok(());
        }
        let d = obj.cast::<PyDict>()?;
        self.out.push(b'{');
        for (i, (k, v)) in d.iter().enumerate() {
            let Ok(key) = k.cast::<PyString>() else {
                return Err(self.refuse(format!(
                    "dict key {} is a {}, not a str",
                    repr_of(&k),
                    type_name(&k)
                )));
            };
            if i > 0 {
                self.out.push(b',');
            }
            self.string(key, Some(&k));
            self.out.push(b':');
            let name = key.to_cow().map(|c| c.into_owned()).unwrap_or_default();
            self.keys.push(Key::Name(name));
            self.value(&v, depth + 1)?;
            self.keys.pop();
        }
        self.out.push(b'}');
        Ok(())
    }
}

/// `method` (a non-empty str of valid Unicode) and the request's encoded suffix.
fn prepare(
    method: &Bound<'_, PyAny>,
    params: Option<&Bound<'_, PyAny>>,
) -> PyResult<(String, Vec<u8>)> {
    let Ok(m) = method.cast::<PyString>() else {
        return Err(PyTypeError::new_err(format!(
            "method must be a str, not {}",
            type_name(method)
        )));
    };
    let name = match m.to_str() {
        Ok("") => return Err(PyValueError::new_err("method must be a non-empty str")),
        Ok(s) => s.to_string(),
        Err(_) => {
            return Err(PyValueError::new_err(format!(
                "method {} is not valid Unicode",
                repr_of(method)
            )));
        }
    };
    let mut enc = Encoder {
        out: Vec::with_capacity(64),
        keys: Vec::new(),
        surrogate: None,
    };
    match params {
        Some(p) => enc.value(p, 0)?,
        None => enc.out.extend_from_slice(b"null"),
    }
    if let Some(where_) = enc.surrogate {
        return Err(PyTypeError::new_err(format!(
            "{where_}: str is not valid Unicode (lone surrogate)"
        )));
    }
    Ok((name.clone(), codec::request_suffix(&name, &enc.out)))
}

fn positive(value: &Bound<'_, PyAny>, name: &str) -> PyResult<f64> {
    if value.cast::<PyBool>().is_ok()
        || !(value.cast::<PyInt>().is_ok() || value.cast::<PyFloat>().is_ok())
    {
        return Err(PyTypeError::new_err(format!(
            "{name} must be a number, not {}",
            type_name(value)
        )));
    }
    let v: f64 = value.extract()?;
    if !(v.is_finite() && v > 0.0) {
        return Err(PyValueError::new_err(format!(
            "{name} must be a finite number > 0, got {}",
            repr_of(value)
        )));
    }
    Ok(v)
}

fn count(value: &Bound<'_, PyAny>, name: &str) -> PyResult<usize> {
    if value.cast::<PyBool>().is_ok() || value.cast::<PyInt>().is_err() {
        return Err(PyTypeError::new_err(format!(
            "{name} must be an int, not {}",
            type_name(value)
        )));
    }
    let v: i64 = value.extract().unwrap_or(0);
    if v < 1 {
        return Err(PyValueError::new_err(format!(
            "{name} must be >= 1, got {}",
            repr_of(value)
        )));
    }
    Ok(usize::try_from(v).unwrap_or(usize::MAX))
}

static PROTOCOL: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
static GET_RUNNING_LOOP: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

fn protocol(py: Python<'_>) -> PyResult<&Bound<'_, PyAny>> {
    PROTOCOL
        .get_or_try_init(py, || {
            Ok::<_, PyErr>(
                py.import("sark_native.sidecar._protocol")?
                    .into_any()
                    .unbind(),
            )
        })
        .map(|m| m.bind(py))
}

fn failure_err(f: Failure) -> PyErr {
    match f {
        Failure::Timeout(m) => SidecarTimeoutError::new_err(m),
        Failure::Unavailable(m) => SidecarUnavailableError::new_err(m),
        Failure::Protocol(m) => SidecarProtocolError::new_err(m),
    }
}

static DECODE: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

type Answer<'py> = Result<Bound<'py, PyAny>, (String, String)>;

/// A response frame's id and answer, or why it is not a valid response (the messages of
/// `_protocol.decode_frame` and `parse_response`). The JSON is decoded by the protocol module's
/// decoder (`json.loads` refusing NaN/Infinity): results come back as the Python client's do.
fn decode_response<'py>(py: Python<'py>, body: &[u8]) -> Result<(u64, Answer<'py>), String> {
    let text = std::str::from_utf8(body).map_err(|e| format!("frame is not valid UTF-8: {e}"))?;
    let decode = DECODE
        .get_or_try_init(py, || -> PyResult<Py<PyAny>> {
            Ok(protocol(py)?.getattr("_decode")?.unbind())
        })
        .map_err(|e| e.to_string())?
        .bind(py);
    let message = decode
        .call1((text,))
        .map_err(|e| format!("frame is not valid JSON: {}", e.value(py)))?;
    let Ok(fields) = message.cast::<PyDict>() else {
        return Err(format!(
            "a response must be a JSON object, got {}",
            type_name(&message)
        ));
    };
    let raw_id = fields.get_item("id").ok().flatten();
    let id = raw_id
        .as_ref()
        .filter(|v| v.cast::<PyBool>().is_err())
        .and_then(|v| v.extract::<u64>().ok())
        .ok_or_else(|| {
            let shown = raw_id.as_ref().map_or_else(|| "None".into(), repr_of);
            format!("id must be an integer in 0..2**64-1, got {shown}")
        })?;
    let result = fields.get_item("result").ok().flatten();
    let has_error = fields.contains("error").unwrap_or(false);
    if result.is_some() == has_error {
        return Err(format!(
            "response {id} must have exactly one of 'result' and 'error'"
        ));
    }
    if let Some(value) = result {
        return Ok((id, Ok(value)));
    }
    let error = fields.get_item("error").ok().flatten();
    let pair = error
        .as_ref()
        .and_then(|e| e.cast::<PyDict>().ok())
        .and_then(|e| {
            let kind = e.get_item("type").ok().flatten()?;
            let text = e.get_item("message").ok().flatten()?;
            let kind = kind.cast::<PyString>().ok()?.to_cow().ok()?.into_owned();
            let text = text.cast::<PyString>().ok()?.to_cow().ok()?.into_owned();
            Some((kind, text))
        });
    match pair {
        Some(pair) => Ok((id, Err(pair))),
        None => Err(format!(
            "response {id}: 'error' must be {{\"type\": str, \"message\": str}}"
        )),
    }
}

// ----- the client -------------------------------------------------------------------------------

/// `event_loop.<method>(*args)` when the client is bound to a loop; an error is reported as
/// unraisable (the effect comes from the loop's own callbacks, which have no caller to raise to).
fn on_loop<'py, A>(event_loop: &Option<Bound<'py, PyAny>>, method: &str, args: A)
where
    A: pyo3::call::PyCallArgs<'py>,
{
    if let Some(l) = event_loop
        && let Err(e) = l.call_method1(method, args)
    {
        e.write_unraisable(l.py(), None);
    }
}

struct PyReq {
    fut: Py<PyAny>,
    unsent: Option<Py<PyAny>>,
}

struct Inner {
    core: ClientCore,
    loop_: Option<Py<PyAny>>,
    reqs: HashMap<ReqId, PyReq>,
    on_lost: Option<Py<PyAny>>,
    /// The one loop timer of the client (for the earliest deadline) and when it fires.
    timer: Option<(Py<PyAny>, f64)>,
}

/// A client of one sidecar worker socket (see `docs/sidecar.md`).
#[pyclass(name = "SidecarClient", module = "sark_native._native", frozen)]
pub struct PySidecarClient {
    inner: Mutex<Inner>,
    socket_path: String,
    timeout: f64,
    connect_timeout: Option<f64>,
    max_frame: u32,
    connections: usize,
    max_in_flight: usize,
}

/// Monotonic seconds, the clock of asyncio's `loop.time()`.
fn now() -> f64 {
    use crate::core::clock::{Clock, MonotonicClock};
    MonotonicClock.now() as f64 / 1e9
}

impl PySidecarClient {
    /// The running loop, bound on first use; another loop is a `RuntimeError`.
    fn bind<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let running = GET_RUNNING_LOOP
            .import(py, "asyncio", "get_running_loop")?
            .call0()?;
        let mut inner = self.inner.lock();
        match &inner.loop_ {
            Some(l) if l.bind(py).is(&running) => {}
            Some(_) => {
                return Err(PyRuntimeError::new_err(
                    "this SidecarClient is bound to another event loop",
                ));
            }
            None => inner.loop_ = Some(running.clone().unbind()),
        }
        Ok(running)
    }

    fn loop_of<'py>(&self, py: Python<'py>) -> Option<Bound<'py, PyAny>> {
        self.inner.lock().loop_.as_ref().map(|l| l.bind(py).clone())
    }

    /// Removes request `id`: its future, unless already done (cancelled), and its unsent value.
    fn take_open<'py>(
        &self,
        py: Python<'py>,
        id: ReqId,
    ) -> Option<(Bound<'py, PyAny>, Option<Py<PyAny>>)> {
        let entry = self.inner.lock().reqs.remove(&id)?;
        let fut = entry.fut.into_bound(py);
        let done = fut
            .call_method0("done")
            .and_then(|d| d.is_truthy())
            .unwrap_or(true);
        (!done).then_some((fut, entry.unsent))
    }

    /// Carries out the core's effects (never with the lock held: futures and the loop run
    /// Python code).
    fn apply(slf: &Bound<'_, Self>, effects: Vec<Effect>) {
        if effects.is_empty() {
            return;
        }
        let py = slf.py();
        let this = slf.get();
        let event_loop = this.loop_of(py);
        for effect in effects {
            match effect {
                Effect::Fail(id, failure) => {
                    if let Some((fut, _)) = this.take_open(py, id) {
                        let exc = failure_err(failure).into_value(py);
                        let _ = fut.call_method1("set_exception", (exc,));
                    }
                }
                Effect::Unsent(id) => {
                    if let Some((fut, unsent)) = this.take_open(py, id) {
                        let value = unsent.unwrap_or_else(|| py.None());
                        let _ = fut.call_method1("set_result", (value,));
                    }
                }
                Effect::Arm(when) => {
                    let Some(l) = &event_loop else { continue };
                    let stale = {
                        let inner = this.inner.lock();
                        match &inner.timer {
                            Some((_, armed)) if *armed <= when => None,
                            Some((handle, _)) => Some(Some(handle.clone_ref(py))),
                            None => Some(None),
                        }
                    };
                    let Some(old) = stale else { continue };
                    if let Some(old) = old {
                        let _ = old.bind(py).call_method0("cancel");
                    }
                    let tick = Tick {
                        client: slf.clone().unbind(),
                    };
                    match l.call_method1("call_later", ((when - now()).max(0.0), tick)) {
                        Ok(handle) => this.inner.lock().timer = Some((handle.unbind(), when)),
                        Err(e) => e.write_unraisable(py, None),
                    }
                }
                Effect::Flush => {
                    let cb = Flush {
                        client: slf.clone().unbind(),
                    };
                    on_loop(&event_loop, "call_soon", (cb,));
                }
                Effect::WatchRead(conn, fd) => {
                    let cb = Readable {
                        client: slf.clone().unbind(),
                        conn,
                    };
                    on_loop(&event_loop, "add_reader", (fd, cb));
                }
                Effect::WatchWrite(conn, fd) => {
                    let cb = Writable {
                        client: slf.clone().unbind(),
                        conn,
                    };
                    on_loop(&event_loop, "add_writer", (fd, cb));
                }
                Effect::UnwatchWrite(_, fd) => {
                    if let Some(l) = &event_loop {
                        let _ = l.call_method1("remove_writer", (fd,));
                    }
                }
                Effect::Unwatch(_, fd, stream) => {
                    if let Some(l) = &event_loop {
                        let _ = l.call_method1("remove_reader", (fd,));
                        let _ = l.call_method1("remove_writer", (fd,));
                    }
                    drop(stream);
                }
                Effect::Lost => {
                    let hook = this.inner.lock().on_lost.as_ref().map(|h| h.clone_ref(py));
                    if let Some(hook) = hook
                        && let Err(e) = hook.bind(py).call0()
                    {
                        e.write_unraisable(py, None);
                    }
                }
            }
        }
    }

    /// Starts a request: the future it settles (see `request`).
    #[allow(clippy::too_many_arguments)] // the request and how the supervisor wants it handled
    fn submit<'py>(
        slf: &Bound<'py, Self>,
        method: &str,
        suffix: &[u8],
        timeout: f64,
        bounded: bool,
        metered: bool,
        unsent: Option<Py<PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let py = slf.py();
        let this = slf.get();
        let event_loop = this.bind(py)?;
        let prepared = this.inner.lock().core.prepare(
            method,
            suffix,
            timeout,
            bounded,
            unsent.is_some(),
            metered,
        );
        let id = match prepared {
            Ok(id) => id,
            Err(PrepareError::TooLarge(m)) => return Err(PyValueError::new_err(m)),
            Err(PrepareError::Closed(m)) => {
                if let Some(u) = unsent {
                    let fut = event_loop.call_method0("create_future")?;
                    fut.call_method1("set_result", (u,))?;
                    let call = Call {
                        client: slf.clone().unbind(),
                        id: 0, // never issued: forgetting it is a no-op
                        fut: fut.unbind(),
                    };
                    return Ok(Bound::new(py, call)?.into_any());
                }
                return Err(SidecarUnavailableError::new_err(m));
            }
        };
        let fut = event_loop.call_method0("create_future")?;
        let mut fx = Vec::new();
        {
            let mut inner = this.inner.lock();
            inner.reqs.insert(
                id,
                PyReq {
                    fut: fut.clone().unbind(),
                    unsent,
                },
            );
            inner.core.start(id, now(), &mut fx);
        }
        Self::apply(slf, fx);
        let call = Call {
            client: slf.clone().unbind(),
            id,
            fut: fut.unbind(),
        };
        Ok(Bound::new(py, call)?.into_any())
    }

    /// The caller stopped waiting for request `id` (its task was cancelled): forget it.
    fn forget(slf: &Bound<'_, Self>, id: ReqId) {
        let this = slf.get();
        let mut fx = Vec::new();
        {
            let mut inner = this.inner.lock();
            inner.reqs.remove(&id);
            inner.core.cancel(id, now(), &mut fx);
        }
        Self::apply(slf, fx);
    }

    fn on_readable(slf: &Bound<'_, Self>, conn: ConnId) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let mut fx = Vec::new();
        let frames = this.inner.lock().core.on_readable(conn, now(), &mut fx);
        Self::apply(slf, std::mem::take(&mut fx));
        for body in frames {
            let (id, answer) = match decode_response(py, &body) {
                Ok(parsed) => parsed,
                Err(why) => {
                    this.inner
                        .lock()
                        .core
                        .protocol_error(conn, &why, now(), &mut fx);
                    Self::apply(slf, std::mem::take(&mut fx));
                    break;
                }
            };
            let (delivery, entry) = {
                let mut inner = this.inner.lock();
                let delivery = inner
                    .core
                    .deliver(conn, id, answer.is_err(), now(), &mut fx);
                let entry = (delivery == Delivery::Awaited)
                    .then(|| inner.reqs.remove(&id))
                    .flatten();
                (delivery, entry)
            };
            if let Some(entry) = entry {
                let fut = entry.fut.bind(py);
                if !fut.call_method0("done")?.is_truthy()? {
                    match answer {
                        Ok(value) => {
                            fut.call_method1("set_result", (value,))?;
                        }
                        Err((kind, message)) => {
                            let exc = SidecarRemoteError::new_err((kind, message));
                            fut.call_method1("set_exception", (exc.into_value(py),))?;
                        }
                    }
                }
            }
            Self::apply(slf, std::mem::take(&mut fx));
            if delivery == Delivery::NeverIssued {
                break;
            }
        }
        this.inner.lock().core.finish_read(now(), &mut fx);
        Self::apply(slf, fx);
        Ok(())
    }
}

#[pymethods]
impl PySidecarClient {
    #[new]
    #[pyo3(signature = (
        socket_path, *, timeout = None, max_frame = None, connections = None,
        max_in_flight = None, connect_timeout = None
    ))]
    fn new(
        py: Python<'_>,
        socket_path: &Bound<'_, PyAny>,
        timeout: Option<&Bound<'_, PyAny>>,
        max_frame: Option<&Bound<'_, PyAny>>,
        connections: Option<&Bound<'_, PyAny>>,
        max_in_flight: Option<&Bound<'_, PyAny>>,
        connect_timeout: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Self> {
        // The same checks (and messages) as the Python client.
        let proto = protocol(py)?;
        let path: String = proto
            .call_method1("check_socket_path", (socket_path,))?
            .extract()?;
        let timeout = match timeout {
            Some(t) => positive(t, "timeout")?,
            None => 5.0,
        };
        let max_frame: u32 = match max_frame {
            Some(m) => proto.call_method1("check_max_frame", (m,))?.extract()?,
            None => codec::DEFAULT_MAX_FRAME,
        };
        let connections = match connections {
            Some(c) => count(c, "connections")?,
            None => 2,
        };
        let max_in_flight = match max_in_flight {
            Some(c) => count(c, "max_in_flight")?,
            None => 1024,
        };
        let connect_timeout = match connect_timeout {
            Some(t) if !t.is_none() => Some(positive(t, "connect_timeout")?),
            _ => None,
        };
        Ok(PySidecarClient {
            inner: Mutex::new(Inner {
                core: ClientCore::new(Options {
                    socket_path: PathBuf::from(&path),
                    max_frame,
                    connections,
                    max_in_flight,
                }),
                loop_: None,
                reqs: HashMap::new(),
                on_lost: None,
                timer: None,
            }),
            socket_path: path,
            timeout,
            connect_timeout,
            max_frame,
            connections,
            max_in_flight,
        })
    }

    /// Calls `method(params)` on the worker; an awaitable of its result.
    #[pyo3(signature = (method, params = None, *, timeout = None))]
    fn request<'py>(
        slf: &Bound<'py, Self>,
        method: &Bound<'py, PyAny>,
        params: Option<&Bound<'py, PyAny>>,
        timeout: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let (name, suffix) = prepare(method, params.filter(|p| !p.is_none()))?;
        let seconds = match timeout {
            Some(t) if !t.is_none() => positive(t, "timeout")?,
            _ => slf.get().timeout,
        };
        Self::submit(slf, &name, &suffix, seconds, true, true, None)
    }

    /// The supervisor's request: `bounded=False` takes no in-flight slot (pings), `metered=False`
    /// is counted by the caller, and `unsent` (when given) is the result of a request no
    /// connection could take (nothing was sent) instead of `SidecarUnavailableError`.
    #[pyo3(signature = (method, params, timeout, *, bounded = true, metered = true, unsent = None))]
    fn _call<'py>(
        slf: &Bound<'py, Self>,
        method: &Bound<'py, PyAny>,
        params: Option<&Bound<'py, PyAny>>,
        timeout: f64,
        bounded: bool,
        metered: bool,
        unsent: Option<Py<PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let (name, suffix) = prepare(method, params.filter(|p| !p.is_none()))?;
        Self::submit(slf, &name, &suffix, timeout, bounded, metered, unsent)
    }

    /// Called (with no arguments) when the peer drops a connection.
    fn _set_on_lost(&self, hook: Option<Py<PyAny>>) {
        self.inner.lock().on_lost = hook;
    }

    /// Forgets the connect backoff (the supervisor, while a worker is starting).
    fn _reset_backoff(&self) {
        self.inner.lock().core.reset_backoff();
    }

    /// Fails every caller with `SidecarUnavailableError(message)`; `closing` also refuses new
    /// requests.
    #[pyo3(signature = (message, *, closing = false))]
    fn _abort(slf: &Bound<'_, Self>, message: &str, closing: bool) {
        let mut fx = Vec::new();
        slf.get()
            .inner
            .lock()
            .core
            .abort(message, closing, now(), &mut fx);
        Self::apply(slf, fx);
    }

    /// Drops every connection; callers still waiting get `SidecarUnavailableError`.
    fn close(slf: &Bound<'_, Self>) {
        let message = slf.get().inner.lock().core.close_message().to_string();
        Self::_abort(slf, &message, true);
        let timer = slf.get().inner.lock().timer.take();
        if let Some((handle, _)) = timer {
            let _ = handle.bind(slf.py()).call_method0("cancel");
        }
    }

    /// `close()`; the sockets are closed when it returns, so the awaitable is already done.
    fn aclose<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyAny>> {
        Self::close(slf);
        let py = slf.py();
        let fut = GET_RUNNING_LOOP
            .import(py, "asyncio", "get_running_loop")?
            .call0()?
            .call_method0("create_future")?;
        fut.call_method1("set_result", (py.None(),))?;
        Ok(fut)
    }

    fn __aenter__<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyAny>> {
        let py = slf.py();
        let event_loop = slf.get().bind(py)?;
        let fut = event_loop.call_method0("create_future")?;
        fut.call_method1("set_result", (slf,))?;
        Ok(fut)
    }

    #[pyo3(signature = (*_exc))]
    fn __aexit__<'py>(
        slf: &Bound<'py, Self>,
        _exc: &Bound<'py, PyTuple>,
    ) -> PyResult<Bound<'py, PyAny>> {
        Self::aclose(slf)
    }

    #[getter]
    fn closed(&self) -> bool {
        self.inner.lock().core.is_closed()
    }

    /// Connections open, requests in flight, late answers dropped.
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let inner = self.inner.lock();
        let d = PyDict::new(py);
        d.set_item("connections", inner.core.connection_count())?;
        d.set_item("in_flight", inner.core.in_flight())?;
        d.set_item("late_answers", inner.core.late_answers())?;
        d.set_item("closed", inner.core.is_closed())?;
        Ok(d)
    }

    #[getter]
    fn late_answers(&self) -> u64 {
        self.inner.lock().core.late_answers()
    }

    /// Requests not finished (waiting for a slot, a write, or their answer).
    #[getter]
    fn _active(&self) -> usize {
        self.inner.lock().core.active()
    }

    #[getter]
    fn socket_path(&self) -> &str {
        &self.socket_path
    }

    #[getter]
    fn timeout(&self) -> f64 {
        self.timeout
    }

    #[getter]
    fn connect_timeout(&self) -> Option<f64> {
        self.connect_timeout
    }

    #[getter]
    fn max_frame(&self) -> u32 {
        self.max_frame
    }

    #[getter]
    fn connections(&self) -> usize {
        self.connections
    }

    #[getter]
    fn max_in_flight(&self) -> usize {
        self.max_in_flight
    }

    #[getter]
    fn backend(&self) -> &'static str {
        "rust"
    }

    fn __repr__(&self) -> String {
        format!(
            "SidecarClient({}, timeout={}, backend='rust')",
            crate::core::ipc::client::py_repr(&self.socket_path),
            crate::core::ipc::client::py_g(self.timeout)
        )
    }
}

// ----- the awaitable ----------------------------------------------------------------------------

/// What `request` returns: a coroutine over the request's future (so `asyncio.create_task` and
/// `await` both take it, as they take the Python client's `async def`). Awaiting it yields the
/// future to the task, which resumes it when the answer (or failure) is in.
#[pyclass(name = "SidecarCall", module = "sark_native._native", frozen)]
pub struct Call {
    client: Py<PySidecarClient>,
    id: ReqId,
    fut: Py<PyAny>,
}

impl Call {
    fn step(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        let fut = self.fut.bind(py);
        if fut.call_method0("done")?.is_truthy()? {
            if fut.call_method0("cancelled")?.is_truthy()? {
                // The awaiting task was cancelled: the request is forgotten (its slot freed, a
                // late answer dropped).
                PySidecarClient::forget(self.client.bind(py), self.id);
            }
            let value = fut.call_method0("result")?;
            return Err(pyo3::exceptions::PyStopIteration::new_err(
                (value.unbind(),),
            ));
        }
        fut.setattr("_asyncio_future_blocking", true)?;
        Ok(self.fut.clone_ref(py))
    }
}

#[pymethods]
impl Call {
    fn __await__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    fn __iter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    fn __next__(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        self.step(py)
    }

    #[pyo3(signature = (_value = None))]
    fn send(&self, py: Python<'_>, _value: Option<&Bound<'_, PyAny>>) -> PyResult<Py<PyAny>> {
        self.step(py)
    }

    /// An exception thrown in (the task was cancelled before it awaited the future): the request
    /// is cancelled, and the exception raised.
    #[pyo3(signature = (typ, val = None, _tb = None))]
    fn throw(
        &self,
        py: Python<'_>,
        typ: &Bound<'_, PyAny>,
        val: Option<&Bound<'_, PyAny>>,
        _tb: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Py<PyAny>> {
        self.fut.bind(py).call_method0("cancel")?;
        PySidecarClient::forget(self.client.bind(py), self.id);
        let exc = match val {
            Some(v) if !v.is_none() => v.clone(),
            _ if typ.is_instance_of::<pyo3::types::PyType>() => typ.call0()?,
            _ => typ.clone(),
        };
        Err(PyErr::from_value(exc))
    }

    fn close(&self, py: Python<'_>) -> PyResult<()> {
        if self.fut.bind(py).call_method0("cancel")?.is_truthy()? {
            PySidecarClient::forget(self.client.bind(py), self.id);
        }
        Ok(())
    }
}

// ----- loop callbacks ---------------------------------------------------------------------------

/// `loop.add_reader` callback: a connection's socket is readable.
#[pyclass(module = "sark_native._native", frozen)]
pub struct Readable {
    client: Py<PySidecarClient>,
    conn: ConnId,
}

#[pymethods]
impl Readable {
    fn __call__(&self, py: Python<'_>) -> PyResult<()> {
        PySidecarClient::on_readable(self.client.bind(py), self.conn)
    }
}

/// `loop.add_writer` callback: a connection's socket can take more bytes.
#[pyclass(module = "sark_native._native", frozen)]
pub struct Writable {
    client: Py<PySidecarClient>,
    conn: ConnId,
}

#[pymethods]
impl Writable {
    fn __call__(&self, py: Python<'_>) {
        let client = self.client.bind(py);
        let mut fx = Vec::new();
        client
            .get()
            .inner
            .lock()
            .core
            .on_writable(self.conn, now(), &mut fx);
        PySidecarClient::apply(client, fx);
    }
}

/// `loop.call_later` callback: the earliest deadline of the client's requests has come.
#[pyclass(module = "sark_native._native", frozen)]
pub struct Tick {
    client: Py<PySidecarClient>,
}

#[pymethods]
impl Tick {
    fn __call__(&self, py: Python<'_>) {
        let client = self.client.bind(py);
        let mut fx = Vec::new();
        {
            let mut inner = client.get().inner.lock();
            inner.timer = None;
            inner.core.expire_due(now(), &mut fx);
        }
        PySidecarClient::apply(client, fx);
    }
}

/// `loop.call_soon` callback: writes what the requests of this step buffered.
#[pyclass(module = "sark_native._native", frozen)]
pub struct Flush {
    client: Py<PySidecarClient>,
}

#[pymethods]
impl Flush {
    fn __call__(&self, py: Python<'_>) {
        let client = self.client.bind(py);
        let mut fx = Vec::new();
        client.get().inner.lock().core.flush(now(), &mut fx);
        PySidecarClient::apply(client, fx);
    }
}

/// The sidecar counters of the native path, in the shape of the Python path's
/// (`_fallback/sidecar.py::sidecar_metrics`).
#[pyfunction]
pub fn _sidecar_metrics(py: Python<'_>) -> PyResult<Bound<'_, PyDict>> {
    let s = metrics::snapshot();
    let d = PyDict::new(py);
    d.set_item("requests", s.requests)?;
    d.set_item("in_flight", s.in_flight)?;
    d.set_item("restarts", s.restarts)?;
    let errors = PyDict::new(py);
    for (kind, n) in s.errors {
        errors.set_item(kind, n)?;
    }
    d.set_item("errors", errors)?;
    d.set_item("bounds", metrics::BUCKETS.to_vec())?;
    d.set_item("buckets", s.buckets)?;
    d.set_item("sum", s.sum_seconds)?;
    Ok(d)
}

/// The native supervisor's counting of its own requests (its clients' calls are not metered):
/// `started` once per request; `finished(seconds, error_type)` once it ended.
#[pyfunction]
pub fn _sidecar_request_started() {
    metrics::request_started();
}

#[pyfunction]
#[pyo3(signature = (seconds, error_type = None))]
pub fn _sidecar_request_finished(seconds: f64, error_type: Option<&str>) {
    metrics::request_finished(
        std::time::Duration::from_secs_f64(seconds.max(0.0)),
        error_type,
    );
}

/// Counts a worker restart of the native supervisor.
#[pyfunction]
pub fn _sidecar_restarted() {
    metrics::restarted();
}

// ----- worker processes -------------------------------------------------------------------------

/// A worker process spawned natively (see `core::ipc::process`).
#[pyclass(name = "SidecarProcess", module = "sark_native._native", frozen)]
pub struct PySidecarProcess {
    inner: std::sync::Arc<crate::core::ipc::process::Worker>,
}

#[pymethods]
impl PySidecarProcess {
    #[getter]
    fn pid(&self) -> u32 {
        self.inner.pid()
    }

    /// `None` while it runs; else the exit status, or minus the signal that killed it.
    #[getter]
    fn returncode(&self) -> Option<i32> {
        self.inner.returncode()
    }

    fn poll(&self) -> Option<i32> {
        self.inner.returncode()
    }

    /// Sends `sig` unless the process has exited.
    fn send_signal(&self, sig: i32) {
        self.inner.signal(sig);
    }

    fn close_stdin(&self) {
        self.inner.close_stdin();
    }

    /// The last `lines` lines of its output.
    #[pyo3(signature = (lines = 20))]
    fn tail(&self, lines: usize) -> String {
        self.inner.tail(lines)
    }

    /// Waits (GIL released) up to `timeout` seconds, forever with `None`; the returncode, or
    /// `None` if it still runs.
    #[pyo3(signature = (timeout = None))]
    fn wait(&self, py: Python<'_>, timeout: Option<f64>) -> Option<i32> {
        let worker = self.inner.clone();
        let limit = timeout.map(|t| std::time::Duration::from_secs_f64(t.max(0.0)));
        super::gil::detach(py, move || worker.wait(limit))
    }
}

/// Spawns a worker process: `on_line(line)` is called for each line of its output and
/// `on_exit(returncode)` once it exited, both from native threads (skipped once the interpreter
/// is shutting down).
#[pyfunction]
#[pyo3(signature = (program, args, env, cwd, on_line, on_exit))]
pub fn _spawn_sidecar_worker(
    py: Python<'_>,
    program: std::ffi::OsString,
    args: Vec<std::ffi::OsString>,
    env: Vec<(std::ffi::OsString, std::ffi::OsString)>,
    cwd: Option<PathBuf>,
    on_line: Py<PyAny>,
    on_exit: Py<PyAny>,
) -> PyResult<PySidecarProcess> {
    use crate::core::ipc::process::{Spec, spawn};
    let spec = Spec {
        program,
        args,
        env,
        cwd,
    };
    let line_hook = Box::new(move |line: &str| {
        let _ = Python::try_attach(|py| {
            if let Err(e) = on_line.bind(py).call1((line,)) {
                e.write_unraisable(py, None);
            }
        });
    });
    let exit_hook = Box::new(move |code: i32| {
        let _ = Python::try_attach(|py| {
            if let Err(e) = on_exit.bind(py).call1((code,)) {
                e.write_unraisable(py, None);
            }
        });
    });
    let worker = super::gil::detach(py, move || spawn(spec, line_hook, exit_hook))
        .map_err(|e| SidecarUnavailableError::new_err(e.to_string()))?;
    Ok(PySidecarProcess { inner: worker })
}
