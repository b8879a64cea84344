//! `sark_native._native.PolicyEngine`: the Python face of `core::policy`. Inputs are converted
//! straight from Python objects into regorus values (no JSON text), checked against the engine's
//! limits on the way; evaluation runs with the GIL released; results come back as the Python
//! objects `json.loads` would give for OPA's JSON of the same value (sets as lists in their
//! sorted order), so both backends agree.
//!
//! With a `fallback` (the HTTP engine of `backend="auto"` with an `opa_url`), an internal failure
//! of the native path (a panic inside regorus, a conversion bug) is logged, counted and retried
//! there; policy errors and bad input are raised, never retried. Policy writes go to both, and a
//! failed write to the fallback disables it (its rules would be stale).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{
    PyBool, PyByteArray, PyBytes, PyDict, PyFloat, PyInt, PyList, PyMapping, PyMemoryView,
    PyString, PyTuple,
};
use regorus::Value;

use super::aio::LoopFuture;
use super::errors::to_py;
use super::gil;
use crate::core::error::{Error, Result as CoreResult};
use crate::core::policy::{
    self, Config, PolicyEngine, evaluate_in, json_string_len, metrics, pool,
};

pyo3::import_exception!(sark_native.exceptions, PolicyError);

// The literal defaults of the signatures below are the core's constants.
const _: () = assert!(policy::DEFAULT_MAX_INPUT_DEPTH == 64);
const _: () = assert!(policy::DEFAULT_MAX_INPUT_BYTES == 1048576);
const _: () = assert!(policy::DEFAULT_TIME_LIMIT.as_millis() == 1000);

/// Inputs per unit of work of `evaluate_batch` (see there).
const BATCH_CHUNK: usize = 32;

/// Deepest nesting `set_data` accepts (a guard against stack exhaustion, not a policy limit).
const MAX_DATA_DEPTH: usize = 512;

// ----- Python -> regorus ------------------------------------------------------------------------

enum Step {
    Key(String),
    Index(usize),
}

enum Problem {
    /// Not JSON-shaped: `TypeError`.
    Type(String),
    /// Beyond the engine's limits: `PolicyEvaluationError`.
    Limit(String),
}

/// A conversion failure and where it happened (steps collected on the way out). The messages
/// are the pure-Python path's too (`_fallback/policy.py`), word for word.
struct Refused {
    problem: Problem,
    steps: Vec<Step>,
    /// The size limit is about the whole input: no path.
    located: bool,
}

impl Refused {
    fn at(mut self, step: Step) -> Self {
        self.steps.push(step);
        self
    }

    fn into_err(self, root: &str) -> PyErr {
        let mut path = root.to_string();
        for step in self.steps.iter().rev() {
            match step {
                Step::Key(k) => path.push_str(&format!(
                    "[{}]",
                    serde_json::to_string(k).unwrap_or_default()
                )),
                Step::Index(i) => path.push_str(&format!("[{i}]")),
            }
        }
        let text = |what: String| {
            if self.located {
                format!("{path}: {what}")
            } else {
                what
            }
        };
        match self.problem {
            Problem::Type(what) => PyTypeError::new_err(text(what)),
            Problem::Limit(what) => to_py(Error::PolicyEvaluation(text(what))),
        }
    }
}

fn refuse_type(what: String) -> Refused {
    Refused {
        problem: Problem::Type(what),
        steps: Vec::new(),
        located: true,
    }
}

fn type_name(obj: &Bound<'_, PyAny>) -> String {
    obj.get_type()
        .name()
        .map(|n| n.to_string())
        .unwrap_or_else(|_| "?".into())
}

/// Limits and the running size of one conversion.
struct Budget {
    max_depth: usize,
    max_bytes: usize,
    bytes: usize,
}

impl Budget {
    fn spend(&mut self, n: usize) -> Result<(), Refused> {
        self.bytes = self.bytes.saturating_add(n);
        if self.bytes > self.max_bytes {
            return Err(Refused {
                problem: Problem::Limit(format!(
                    "input larger than max_input_bytes={} (as compact JSON)",
                    self.max_bytes
                )),
                steps: Vec::new(),
                located: false,
            });
        }
        Ok(())
    }
}

/// The length of Python's `repr(f)` (what `json.dumps` writes for a float).
fn float_repr_len(f: f64) -> usize {
    let a = f.abs();
    if a == 0.0 || (1e-4..1e16).contains(&a) {
        let s = f.to_string();
        // repr(2.0) is "2.0"; Rust's Display writes "2".
        s.len() + if s.contains('.') { 0 } else { 2 }
    } else {
        // "1.5e+300": the shortest digits, then e, a sign and at least two exponent digits.
        let s = format!("{f:e}");
        let (mantissa, exp) = s.split_once('e').unwrap_or((&s, "0"));
        let digits = exp.trim_start_matches('-').len().max(2);
        mantissa.len() + 2 + digits
    }
}

/// The exact built-in types of JSON-shaped values, compared by pointer before the (slower)
/// subclass checks.
struct Types {
    str_: *mut pyo3::ffi::PyTypeObject,
    bool_: *mut pyo3::ffi::PyTypeObject,
    int: *mut pyo3::ffi::PyTypeObject,
    float: *mut pyo3::ffi::PyTypeObject,
    dict: *mut pyo3::ffi::PyTypeObject,
    list: *mut pyo3::ffi::PyTypeObject,
}

impl Types {
    fn get(py: Python<'_>) -> Types {
        use pyo3::PyTypeInfo;
        Types {
            str_: PyString::type_object_raw(py),
            bool_: PyBool::type_object_raw(py),
            int: PyInt::type_object_raw(py),
            float: PyFloat::type_object_raw(py),
            dict: PyDict::type_object_raw(py),
            list: PyList::type_object_raw(py),
        }
    }
}

/// Keys up to this long are shared between conversions (see [`key_value`]).
const CACHED_KEY_LEN: usize = 48;
const KEY_SLOTS: usize = 512;

/// One slot of the key cache: Python's hash of the key and the shared string.
type KeySlot = Option<(isize, regorus::Rc<str>)>;

thread_local! {
    /// A direct-mapped cache of dict keys by Python's (cached) string hash: request inputs repeat
    /// the same keys, and sharing one `Arc<str>` saves an allocation and a free per key.
    static KEYS: std::cell::RefCell<Vec<KeySlot>> =
        std::cell::RefCell::new(vec![None; KEY_SLOTS]);
}

fn key_value(key: &Bound<'_, PyString>, text: &str) -> Value {
    if text.len() > CACHED_KEY_LEN {
        return Value::String(text.into());
    }
    let Ok(hash) = key.hash() else {
        return Value::String(text.into());
    };
    KEYS.with(|cache| {
        let mut cache = cache.borrow_mut();
        let slot = &mut cache[hash.unsigned_abs() % KEY_SLOTS];
        if let Some((h, rc)) = slot
            && *h == hash
            && &**rc == text
        {
            return Value::String(rc.clone());
        }
        let rc: regorus::Rc<str> = text.into();
        *slot = Some((hash, rc.clone()));
        Value::String(rc)
    })
}

fn to_value(
    obj: &Bound<'_, PyAny>,
    depth: usize,
    budget: &mut Budget,
    types: &Types,
) -> Result<Value, Refused> {
    let t = obj.get_type_ptr();
    if t == types.str_ || (t != types.dict && t != types.int && obj.cast::<PyString>().is_ok()) {
        let s = obj
            .cast::<PyString>()
            .map_err(|e| refuse_type(e.to_string()))?;
        let s = s
            .to_str()
            .map_err(|_| refuse_type("str with a lone surrogate is not valid UTF-8".into()))?;
        budget.spend(json_string_len(s))?;
        return Ok(Value::String(s.into()));
    }
    if t == types.dict || obj.cast::<PyDict>().is_ok() {
        enter(depth, budget)?;
        let d = obj
            .cast::<PyDict>()
            .map_err(|e| refuse_type(e.to_string()))?;
        let mut entries = Vec::with_capacity(d.len());
        for (i, (k, v)) in d.iter().enumerate() {
            let Ok(key) = k.cast::<PyString>() else {
                return Err(refuse_type(format!(
                    "dict key {} of type {} is not a str",
                    k.repr().map(|r| r.to_string()).unwrap_or_default(),
                    type_name(&k)
                )));
            };
            let text = key.to_str().map_err(|_| {
                refuse_type("dict key with a lone surrogate is not valid UTF-8".into())
            })?;
            budget.spend(json_string_len(text) + 1 + usize::from(i > 0))?;
            let value = to_value(&v, depth + 1, budget, types)
                .map_err(|r| r.at(Step::Key(text.to_string())))?;
            entries.push((key_value(key, text), value));
        }
        // BTreeMap's FromIterator sorts once and bulk-builds: cheaper than inserting one by one.
        return Ok(Value::from(entries.into_iter().collect::<BTreeMap<_, _>>()));
    }
    if t == types.bool_ {
        let b = obj.is_truthy().unwrap_or(false);
        budget.spend(if b { 4 } else { 5 })?;
        return Ok(Value::Bool(b));
    }
    if t == types.int || obj.cast::<PyInt>().is_ok() {
        if let Ok(b) = obj.cast::<PyBool>() {
            let b = b.is_true();
            budget.spend(if b { 4 } else { 5 })?;
            return Ok(Value::Bool(b));
        }
        // As serde_json parses the integer json.dumps writes: u64, i64, else the nearest f64.
        let value = if let Ok(u) = obj.extract::<u64>() {
            budget.spend(digits(u))?;
            Value::from(u)
        } else if let Ok(n) = obj.extract::<i64>() {
            budget.spend(digits(n.unsigned_abs()) + 1)?;
            Value::from(n)
        } else {
            let text = obj.str().map_err(|e| refuse_type(e.to_string()))?;
            let text = text.to_cow().map_err(|e| refuse_type(e.to_string()))?;
            budget.spend(text.len())?;
            let f: f64 = obj
                .extract()
                .map_err(|_| refuse_type("int too large for JSON numbers".into()))?;
            if !f.is_finite() {
                return Err(refuse_type("int too large for JSON numbers".into()));
            }
            Value::from(f)
        };
        return Ok(value);
    }
    if t == types.float || obj.cast::<PyFloat>().is_ok() {
        let f: f64 = obj
            .extract()
            .map_err(|e: PyErr| refuse_type(e.to_string()))?;
        if !f.is_finite() {
            return Err(refuse_type(
                "NaN and infinities are not JSON numbers".to_string(),
            ));
        }
        budget.spend(float_repr_len(f))?;
        return Ok(Value::from(f));
    }
    if obj.is_none() {
        budget.spend(4)?;
        return Ok(Value::Null);
    }
    let items = if t == types.list || obj.cast::<PyList>().is_ok() {
        obj.cast::<PyList>().map(|l| l.iter()).ok().map(Items::List)
    } else {
        obj.cast::<PyTuple>().ok().map(|t| Items::Tuple(t.iter()))
    };
    let Some(items) = items else {
        return Err(refuse_type(format!(
            "{} is not JSON-shaped (expected dict, list, tuple, str, int, float, bool or None)",
            type_name(obj)
        )));
    };
    enter(depth, budget)?;
    let mut out = Vec::new();
    for (i, item) in items.enumerate() {
        budget.spend(usize::from(i > 0))?;
        out.push(to_value(&item, depth + 1, budget, types).map_err(|r| r.at(Step::Index(i)))?);
    }
    Ok(Value::from(out))
}

enum Items<'py> {
    List(pyo3::types::iter::BoundListIterator<'py>),
    Tuple(pyo3::types::iter::BoundTupleIterator<'py>),
}

impl<'py> Iterator for Items<'py> {
    type Item = Bound<'py, PyAny>;

    fn next(&mut self) -> Option<Self::Item> {
        match self {
            Items::List(i) => i.next(),
            Items::Tuple(i) => i.next(),
        }
    }
}

/// Opens a container: checks the depth and counts its brackets.
fn enter(depth: usize, budget: &mut Budget) -> Result<(), Refused> {
    if depth >= budget.max_depth {
        return Err(Refused {
            problem: Problem::Limit(format!(
                "nested deeper than max_input_depth={}",
                budget.max_depth
            )),
            steps: Vec::new(),
            located: true,
        });
    }
    budget.spend(2)
}

fn digits(mut n: u64) -> usize {
    let mut d = 1;
    while n >= 10 {
        n /= 10;
        d += 1;
    }
    d
}

/// Converts an input, counting a refusal in the metrics; errors name it `root`.
fn input_value(obj: &Bound<'_, PyAny>, config: &Config, root: &str) -> PyResult<Value> {
    let mut budget = Budget {
        max_depth: config.max_input_depth,
        max_bytes: config.max_input_bytes,
        bytes: 0,
    };
    to_value(obj, 0, &mut budget, &Types::get(obj.py())).map_err(|r| {
        metrics::input_rejected();
        r.into_err(root)
    })
}

// ----- regorus -> Python ------------------------------------------------------------------------

static JSON_LOADS: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

/// The Python value `json.loads` gives for OPA's JSON of `value`.
pub fn to_py_value(py: Python<'_>, value: &Value) -> PyResult<Py<PyAny>> {
    Ok(match value {
        Value::Null | Value::Undefined => py.None(),
        Value::Bool(b) => PyBool::new(py, *b).to_owned().into_any().unbind(),
        Value::Number(n) => {
            // Exactly as regorus serializes numbers (decimal text, read back by serde_json).
            let text = n.format_decimal();
            match serde_json::from_str::<serde_json::Number>(&text).ok() {
                Some(num) if num.is_u64() => num.as_u64().into_pyobject(py)?.into_any().unbind(),
                Some(num) if num.is_i64() => num.as_i64().into_pyobject(py)?.into_any().unbind(),
                Some(num) => num
                    .as_f64()
                    .unwrap_or(f64::NAN)
                    .into_pyobject(py)?
                    .into_any()
                    .unbind(),
                None => JSON_LOADS
                    .import(py, "json", "loads")?
                    .call1((text,))?
                    .unbind(),
            }
        }
        Value::String(s) => PyString::new(py, s).into_any().unbind(),
        Value::Array(items) => {
            let list = PyList::empty(py);
            for item in items.iter() {
                list.append(to_py_value(py, item)?)?;
            }
            list.into_any().unbind()
        }
        Value::Set(items) => {
            let list = PyList::empty(py);
            for item in items.iter() {
                list.append(to_py_value(py, item)?)?;
            }
            list.into_any().unbind()
        }
        Value::Object(fields) => {
            let dict = PyDict::new(py);
            for (k, v) in fields.iter_sorted() {
                let key = match k {
                    Value::String(s) => PyString::new(py, s),
                    other => PyString::new(
                        py,
                        &serde_json::to_string(other)
                            .map_err(|e| PyValueError::new_err(e.to_string()))?,
                    ),
                };
                dict.set_item(key, to_py_value(py, v)?)?;
            }
            dict.into_any().unbind()
        }
    })
}

fn data_value(obj: &Bound<'_, PyAny>) -> PyResult<Value> {
    if obj.cast::<PyDict>().is_err() {
        return Err(PyTypeError::new_err(format!(
            "data must be a dict, not {}",
            type_name(obj)
        )));
    }
    let mut budget = Budget {
        max_depth: MAX_DATA_DEPTH,
        max_bytes: usize::MAX,
        bytes: 0,
    };
    to_value(obj, 0, &mut budget, &Types::get(obj.py())).map_err(|r| {
        let err = r.into_err("data");
        Python::attach(|py| {
            if err.is_instance_of::<PyTypeError>(py) {
                err
            } else {
                PyValueError::new_err(err.value(py).to_string())
            }
        })
    })
}

fn path_string(path: &Bound<'_, PyAny>) -> PyResult<String> {
    let s = path.cast::<PyString>().map_err(|_| {
        PyTypeError::new_err(format!("path must be a str, not {}", type_name(path)))
    })?;
    Ok(s.to_cow()?.into_owned())
}

fn text_arg(obj: &Bound<'_, PyAny>, what: &str) -> PyResult<String> {
    let s = obj.cast::<PyString>().map_err(|_| {
        PyTypeError::new_err(format!("{what} must be a str, not {}", type_name(obj)))
    })?;
    Ok(s.to_cow()?.into_owned())
}

// ----- the class --------------------------------------------------------------------------------

static LOGGER: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

fn log_warning(py: Python<'_>, message: String) {
    let logger = LOGGER.get_or_try_init(py, || -> PyResult<Py<PyAny>> {
        Ok(py
            .import("logging")?
            .call_method1("getLogger", ("sark_native.policy",))?
            .unbind())
    });
    if let Ok(logger) = logger {
        let _ = logger.bind(py).call_method1("warning", (message,));
    }
}

/// A Rego policy engine (regorus) with atomic hot reload.
#[pyclass(name = "PolicyEngine", module = "sark_native._native", frozen)]
pub struct PyPolicyEngine {
    inner: Arc<PolicyEngine>,
    fallback: Option<Py<PyAny>>,
    fallback_ok: AtomicBool,
    closed: AtomicBool,
}

impl PyPolicyEngine {
    fn check_open(&self) -> PyResult<()> {
        if self.closed.load(Ordering::Acquire) {
            return Err(PolicyError::new_err("the PolicyEngine is closed"));
        }
        Ok(())
    }

    /// Mirrors a write on the fallback; a failure disables it.
    fn mirror(
        &self,
        py: Python<'_>,
        what: &str,
        call: impl FnOnce(&Bound<'_, PyAny>) -> PyResult<()>,
    ) {
        let Some(fb) = &self.fallback else { return };
        if !self.fallback_ok.load(Ordering::Acquire) {
            return;
        }
        if let Err(e) = call(fb.bind(py)) {
            self.fallback_ok.store(false, Ordering::Release);
            metrics::fallback_write_failed();
            log_warning(
                py,
                format!(
                    "policy: {what} on the HTTP fallback failed ({e}); the fallback is disabled \
                     until the engine is rebuilt, so internal failures of the native path now raise"
                ),
            );
        }
    }

    /// The fallback to retry an internal failure on, if any (logs and counts the retry).
    fn fallback_for<'py>(
        &self,
        py: Python<'py>,
        path: &str,
        err: &Error,
    ) -> Option<Bound<'py, PyAny>> {
        let fb = self.fallback.as_ref()?;
        if !matches!(err, Error::Internal(_)) || !self.fallback_ok.load(Ordering::Acquire) {
            return None;
        }
        metrics::fallback();
        log_warning(
            py,
            format!(
                "policy: native evaluation of {path} failed internally ({err}); retrying on the HTTP path"
            ),
        );
        Some(fb.bind(py).clone())
    }

    fn settle(
        &self,
        py: Python<'_>,
        path: &str,
        input: Option<&Bound<'_, PyAny>>,
        default: &Option<Py<PyAny>>,
        result: Result<Option<Value>, Error>,
    ) -> PyResult<Py<PyAny>> {
        match result {
            Ok(Some(v)) => to_py_value(py, &v),
            Ok(None) => Ok(default
                .as_ref()
                .map_or_else(|| py.None(), |d| d.clone_ref(py))),
            Err(e) => match self.fallback_for(py, path, &e) {
                Some(fb) => {
                    let kwargs = PyDict::new(py);
                    kwargs.set_item("default", default)?;
                    Ok(fb
                        .call_method("evaluate", (path, input), Some(&kwargs))?
                        .unbind())
                }
                None => Err(to_py(e)),
            },
        }
    }
}

fn optional_seconds(value: Option<f64>, what: &str) -> PyResult<Option<Duration>> {
    match value {
        None => Ok(None),
        Some(s) if s.is_finite() && s > 0.0 && s < 1e9 => Ok(Some(Duration::from_secs_f64(s))),
        Some(s) => Err(PyValueError::new_err(format!(
            "{what} must be a positive number of seconds or None, not {s}"
        ))),
    }
}

#[pymethods]
impl PyPolicyEngine {
    #[new]
    // Literal defaults (the core's DEFAULT_* constants; checked below) so that Python's
    // introspection, and stubtest, see the values.
    #[pyo3(signature = (
        *, rego_v0 = false, time_limit = Some(1.0), max_input_depth = 64,
        max_input_bytes = 1048576, vm = true, strict = true, fallback = None
    ))]
    #[allow(clippy::too_many_arguments)] // the engine's settings, one keyword each
    fn new(
        rego_v0: bool,
        time_limit: Option<f64>,
        max_input_depth: usize,
        max_input_bytes: usize,
        vm: bool,
        strict: bool,
        fallback: Option<Py<PyAny>>,
    ) -> PyResult<Self> {
        let config = Config {
            rego_v0,
            time_limit: optional_seconds(time_limit, "time_limit")?,
            max_input_depth,
            max_input_bytes,
            vm,
            strict,
        };
        Ok(PyPolicyEngine {
            inner: Arc::new(PolicyEngine::new(config).map_err(to_py)?),
            fallback,
            fallback_ok: AtomicBool::new(true),
            closed: AtomicBool::new(false),
        })
    }

    /// Adds or replaces a policy; returns its version (SHA-256 hex of the source).
    fn load_policy(
        &self,
        py: Python<'_>,
        name: &Bound<'_, PyAny>,
        rego: &Bound<'_, PyAny>,
    ) -> PyResult<String> {
        self.check_open()?;
        let name = text_arg(name, "name")?;
        let rego = text_arg(rego, "rego")?;
        let inner = self.inner.clone();
        let (n, r) = (name.clone(), rego.clone());
        let version = gil::detach(py, move || inner.load_policy(&n, &r)).map_err(to_py)?;
        self.mirror(py, "load_policy", |fb| {
            fb.call_method1("load_policy", (&name, &rego)).map(drop)
        });
        Ok(version)
    }

    /// Removes a policy (`PolicyNotFoundError` when there is none).
    fn remove_policy(&self, py: Python<'_>, name: &Bound<'_, PyAny>) -> PyResult<()> {
        self.check_open()?;
        let name = text_arg(name, "name")?;
        let inner = self.inner.clone();
        let n = name.clone();
        gil::detach(py, move || inner.remove_policy(&n)).map_err(to_py)?;
        self.mirror(py, "remove_policy", |fb| {
            match fb.call_method1("remove_policy", (&name,)) {
                Ok(_) => Ok(()),
                Err(e) if e.is_instance_of::<super::errors::PolicyNotFoundError>(py) => Ok(()),
                Err(e) => Err(e),
            }
        });
        Ok(())
    }

    /// Replaces the base document (`data`).
    fn set_data(&self, py: Python<'_>, data: &Bound<'_, PyAny>) -> PyResult<()> {
        self.check_open()?;
        let value = data_value(data)?;
        let inner = self.inner.clone();
        gil::detach(py, move || inner.set_data(value)).map_err(to_py)?;
        self.mirror(py, "set_data", |fb| {
            fb.call_method1("set_data", (data,)).map(drop)
        });
        Ok(())
    }

    /// The value of `path`, or `default` when it is undefined.
    #[pyo3(signature = (path, input = None, *, default = None))]
    fn evaluate(
        &self,
        py: Python<'_>,
        path: &Bound<'_, PyAny>,
        input: Option<&Bound<'_, PyAny>>,
        default: Option<Py<PyAny>>,
    ) -> PyResult<Py<PyAny>> {
        self.check_open()?;
        let path = path_string(path)?;
        let value = match input {
            Some(obj) => Some(input_value(obj, self.inner.config(), "input")?),
            None => None,
        };
        let inner = self.inner.clone();
        let p = path.clone();
        let result = gil::detach(py, move || inner.evaluate(&p, value));
        self.settle(py, &path, input, &default, result)
    }

    /// Evaluates `path` for every input, in parallel on the policy pool, in one snapshot.
    #[pyo3(signature = (path, inputs, *, default = None))]
    fn evaluate_batch(
        &self,
        py: Python<'_>,
        path: &Bound<'_, PyAny>,
        inputs: &Bound<'_, PyAny>,
        default: Option<Py<PyAny>>,
    ) -> PyResult<Py<PyList>> {
        self.check_open()?;
        let path = path_string(path)?;
        policy::check_path(&path).map_err(to_py)?;
        if inputs.cast::<PyString>().is_ok()
            || inputs.cast::<PyBytes>().is_ok()
            || inputs.cast::<PyByteArray>().is_ok()
            || inputs.cast::<PyMemoryView>().is_ok()
            || inputs.cast::<PyMapping>().is_ok()
        {
            return Err(PyTypeError::new_err(format!(
                "inputs must be a sequence of inputs (a list or tuple), not {}",
                type_name(inputs)
            )));
        }
        let objs: Vec<Bound<'_, PyAny>> = inputs
            .try_iter()
            .map_err(|_| {
                PyTypeError::new_err(format!(
                    "inputs must be a sequence of inputs, not {}",
                    type_name(inputs)
                ))
            })?
            .collect::<PyResult<_>>()?;
        // Pipelined: chunks go to the policy pool as soon as they are converted, so the pool
        // evaluates while this thread (holding the GIL) converts the next inputs.
        let snap = self.inner.snapshot();
        let strict = self.inner.config().strict;
        let (tx, rx) = std::sync::mpsc::channel::<(usize, Vec<CoreResult<Option<Value>>>)>();
        let mut chunk = Vec::with_capacity(BATCH_CHUNK);
        let mut chunk_start = 0;
        let mut chunks = 0;
        for (i, obj) in objs.iter().enumerate() {
            chunk.push(if obj.is_none() {
                None
            } else {
                Some(input_value(
                    obj,
                    self.inner.config(),
                    &format!("inputs[{i}]"),
                )?)
            });
            if chunk.len() == BATCH_CHUNK || i + 1 == objs.len() {
                let work = std::mem::replace(&mut chunk, Vec::with_capacity(BATCH_CHUNK));
                let (snap, p, tx) = (snap.clone(), path.clone(), tx.clone());
                let start = chunk_start;
                pool::spawn(move || {
                    use rayon::prelude::*;
                    let results = work
                        .into_par_iter()
                        .map(|input| evaluate_in(&snap, &p, input, strict))
                        .collect::<Vec<_>>();
                    let _ = tx.send((start, results));
                })
                .map_err(to_py)?;
                chunks += 1;
                chunk_start = i + 1;
            }
        }
        drop(tx);
        let results = gil::detach(py, move || {
            let mut parts: Vec<(usize, Vec<CoreResult<Option<Value>>>)> = rx.iter().collect();
            parts.sort_by_key(|(start, _)| *start);
            (parts.len() == chunks)
                .then(|| parts.into_iter().flat_map(|(_, r)| r).collect::<Vec<_>>())
        })
        .ok_or_else(|| to_py(Error::Internal("a batch chunk was lost".into())))?;
        let out = PyList::empty(py);
        for (obj, result) in objs.iter().zip(results) {
            let input = (!obj.is_none()).then_some(obj);
            out.append(self.settle(py, &path, input, &default, result)?)?;
        }
        Ok(out.unbind())
    }

    /// An awaitable of `evaluate(...)`, computed on the policy pool: the event loop never runs
    /// the evaluation.
    #[pyo3(signature = (path, input = None, *, default = None))]
    fn evaluate_async<'py>(
        slf: Bound<'py, Self>,
        path: &Bound<'py, PyAny>,
        input: Option<&Bound<'py, PyAny>>,
        default: Option<Py<PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let py = slf.py();
        let this = slf.get();
        this.check_open()?;
        let path = path_string(path)?;
        let value = match input {
            Some(obj) => Some(input_value(obj, this.inner.config(), "input")?),
            None => None,
        };
        let (pending, fut) = LoopFuture::new(py)?;
        let inner = this.inner.clone();
        let engine: Py<PyPolicyEngine> = slf.clone().unbind();
        let input_obj: Option<Py<PyAny>> = input.map(|i| i.clone().unbind());
        pool::spawn(move || {
            let result = inner.evaluate(&path, value);
            Python::attach(|py| {
                let input = input_obj.as_ref().map(|i| i.bind(py).clone());
                let outcome = engine
                    .get()
                    .settle(py, &path, input.as_ref(), &default, result);
                pending.settle(py, outcome);
            });
        })
        .map_err(to_py)?;
        Ok(fut)
    }

    /// How `path` is evaluated: `"vm"`, `"interpreter"` or `"query"`.
    fn plan(&self, path: &Bound<'_, PyAny>) -> PyResult<&'static str> {
        let path = path_string(path)?;
        Ok(self.inner.plan_kind(&path).map_err(to_py)?.name())
    }

    /// `{name: version}` of the loaded policies.
    #[getter]
    fn policies<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        for (name, version) in self.inner.policies() {
            d.set_item(name, version)?;
        }
        Ok(d)
    }

    /// SHA-256 over the policies' versions and the data: changes with every change.
    #[getter]
    fn version(&self) -> String {
        self.inner.version()
    }

    /// Why the bytecode VM is not used, or `None` when it is.
    #[getter]
    fn vm_refusal(&self) -> Option<String> {
        self.inner.vm_refusal()
    }

    #[getter]
    fn rego_v0(&self) -> bool {
        self.inner.config().rego_v0
    }

    #[getter]
    fn time_limit(&self) -> Option<f64> {
        self.inner.config().time_limit.map(|d| d.as_secs_f64())
    }

    #[getter]
    fn max_input_depth(&self) -> usize {
        self.inner.config().max_input_depth
    }

    #[getter]
    fn max_input_bytes(&self) -> usize {
        self.inner.config().max_input_bytes
    }

    #[getter]
    fn strict(&self) -> bool {
        self.inner.config().strict
    }

    #[getter]
    fn backend(&self) -> &'static str {
        "rust"
    }

    /// The HTTP engine internal failures are retried on, if any.
    #[getter]
    fn fallback(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.fallback.as_ref().map(|f| f.clone_ref(py))
    }

    /// Whether the fallback is still usable (a failed write disables it).
    #[getter]
    fn fallback_available(&self) -> bool {
        self.fallback.is_some() && self.fallback_ok.load(Ordering::Acquire)
    }

    #[getter]
    fn closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Closes the fallback's HTTP clients; the engine refuses further calls.
    fn close(&self, py: Python<'_>) -> PyResult<()> {
        if !self.closed.swap(true, Ordering::AcqRel)
            && let Some(fb) = &self.fallback
        {
            fb.bind(py).call_method0("close")?;
        }
        Ok(())
    }

    /// `close()` as an awaitable (closes the fallback's async client too).
    fn aclose<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        if !self.closed.swap(true, Ordering::AcqRel)
            && let Some(fb) = &self.fallback
        {
            return fb.bind(py).call_method0("aclose");
        }
        let (pending, fut) = LoopFuture::new(py)?;
        pending.settle(py, Ok(py.None()));
        Ok(fut)
    }

    fn __enter__(slf: Bound<'_, Self>) -> Bound<'_, Self> {
        slf
    }

    #[pyo3(signature = (*_exc))]
    fn __exit__(&self, py: Python<'_>, _exc: &Bound<'_, PyTuple>) -> PyResult<bool> {
        self.close(py)?;
        Ok(false)
    }

    fn __aenter__<'py>(slf: Bound<'py, Self>) -> PyResult<Bound<'py, PyAny>> {
        let py = slf.py();
        let (pending, fut) = LoopFuture::new(py)?;
        pending.settle(py, Ok(slf.into_any().unbind()));
        Ok(fut)
    }

    #[pyo3(signature = (*_exc))]
    fn __aexit__<'py>(
        &self,
        py: Python<'py>,
        _exc: &Bound<'py, PyTuple>,
    ) -> PyResult<Bound<'py, PyAny>> {
        self.aclose(py)
    }

    fn __repr__(&self) -> String {
        let policies: Vec<String> = self.inner.policies().into_iter().map(|(n, _)| n).collect();
        format!(
            "PolicyEngine(backend='rust', policies={policies:?}, version='{}')",
            &self.inner.version()[..12]
        )
    }
}

/// Sizes the policy pool (threads of `evaluate_batch` and `evaluate_async`); returns the size.
#[pyfunction]
#[pyo3(signature = (workers = None))]
pub fn _configure_policy(workers: Option<usize>) -> PyResult<usize> {
    if let Some(n) = workers {
        pool::configure(n).map_err(to_py)?;
    }
    Ok(pool::workers())
}

/// The policy counters of this process.
#[pyfunction]
pub fn _policy_metrics(py: Python<'_>) -> PyResult<Bound<'_, PyDict>> {
    let s = metrics::snapshot();
    let d = PyDict::new(py);
    d.set_item("evaluations", s.evaluations)?;
    d.set_item("buckets", metrics::BUCKETS.to_vec())?;
    d.set_item("bucket_counts", s.buckets)?;
    d.set_item("sum_seconds", s.sum_seconds)?;
    let errors = PyDict::new(py);
    for (name, n) in s.errors {
        errors.set_item(name, n)?;
    }
    d.set_item("errors", errors)?;
    d.set_item("fallbacks", s.fallbacks)?;
    d.set_item("fallback_write_failures", s.fallback_write_failures)?;
    d.set_item("vm_fallbacks", s.vm_fallbacks)?;
    d.set_item("policies", s.policies)?;
    d.set_item("swaps", s.swaps)?;
    d.set_item("last_swap_seconds", s.last_swap_seconds)?;
    Ok(d)
}

/// `True` while the policy pool's threads exist.
#[pyfunction]
pub fn _policy_pool_running() -> bool {
    pool::is_running()
}

/// Runs policyd until SIGTERM/SIGINT, with the GIL released (`python -m sark_native.policyd`).
#[pyfunction]
#[pyo3(signature = (
    *, bind = None, socket = None, policies = None, data = None, token_sha256 = None,
    watch_interval = 1.0, max_policy_bytes = 1048576, max_data_bytes = 8388608,
    shutdown_grace = 10.0, workers = 2, rego_v0 = false, time_limit = Some(1.0),
    max_input_depth = 64, max_input_bytes = 1048576, vm = true, strict = true
))]
#[allow(clippy::too_many_arguments)] // policyd's command line, one keyword per flag
pub fn _policyd_serve(
    py: Python<'_>,
    bind: Option<String>,
    socket: Option<std::path::PathBuf>,
    policies: Option<std::path::PathBuf>,
    data: Option<std::path::PathBuf>,
    token_sha256: Option<String>,
    watch_interval: f64,
    max_policy_bytes: usize,
    max_data_bytes: usize,
    shutdown_grace: f64,
    workers: usize,
    rego_v0: bool,
    time_limit: Option<f64>,
    max_input_depth: usize,
    max_input_bytes: usize,
    vm: bool,
    strict: bool,
) -> PyResult<()> {
    use crate::core::policy::server::{Listen, ServerConfig, run};
    let listen = match (bind, socket) {
        (Some(addr), None) => Listen::Tcp(addr.parse().map_err(|e| {
            PyValueError::new_err(format!("bind must be HOST:PORT (e.g. 127.0.0.1:8181): {e}"))
        })?),
        (None, Some(path)) => Listen::Unix(path),
        _ => return Err(PyValueError::new_err("give exactly one of bind and socket")),
    };
    let token_sha256 = match token_sha256 {
        None => None,
        Some(hex) => {
            let hex = hex.trim().to_ascii_lowercase();
            let mut digest = [0u8; 32];
            let ok = hex.len() == 64
                && hex.is_ascii()
                && digest.iter_mut().enumerate().all(|(i, b)| {
                    u8::from_str_radix(&hex[2 * i..2 * i + 2], 16)
                        .map(|v| *b = v)
                        .is_ok()
                });
            if !ok {
                return Err(PyValueError::new_err(
                    "token_sha256 must be 64 hex digits (the SHA-256 of the token)",
                ));
            }
            Some(digest)
        }
    };
    let seconds = |v: f64, what: &str| {
        optional_seconds(Some(v), what).map(|d| d.unwrap_or(Duration::from_secs(1)))
    };
    let config = ServerConfig {
        listen,
        policies_dir: policies,
        data_file: data,
        token_sha256,
        watch_interval: seconds(watch_interval, "watch_interval")?,
        max_policy_bytes,
        max_data_bytes,
        shutdown_grace: seconds(shutdown_grace, "shutdown_grace")?,
        workers,
        engine: Config {
            rego_v0,
            time_limit: optional_seconds(time_limit, "time_limit")?,
            max_input_depth,
            max_input_bytes,
            vm,
            strict,
        },
    };
    gil::detach(py, move || run(config)).map_err(to_py)
}

/// Test hook: the next `n` native evaluations fail internally (as a panic in regorus would).
#[pyfunction]
pub fn _inject_policy_faults(n: u32) {
    policy::inject_faults(n);
}
