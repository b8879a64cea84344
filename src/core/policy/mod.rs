//! The policy engine: Rego policies on regorus, compiled once per snapshot and shared by every
//! thread, swapped atomically on every change.
//!
//! * A [`Snapshot`] holds the policies (name -> source and SHA-256 version), the base document
//!   (`data`) and everything derived from them: a prepared regorus interpreter to clone
//!   evaluators from, and one [`Plan`] per evaluated path (built on first use).
//! * Writers ([`PolicyEngine::load_policy`], [`PolicyEngine::remove_policy`],
//!   [`PolicyEngine::set_data`], [`PolicyEngine::apply`]) build a complete new snapshot and
//!   publish it with one `ArcSwap` store. A policy that does not compile fails the build, so the
//!   previous snapshot keeps serving; an evaluation sees the old or the new snapshot entirely.
//! * Evaluations take a reusable evaluator from the snapshot's lock-free pool, run with regorus's
//!   strict built-in errors (a built-in that errors raises instead of making a `deny` rule
//!   undefined), under a time budget, and put it back.
//! * Fast path: when [`vm_safe`] proves that regorus's bytecode VM gives the interpreter's answer
//!   for every rule of the snapshot (no built-in calls, arithmetic, conflicts, `with`, functions,
//!   ...), rule paths run on the VM, about three times faster. Everything else, and any VM
//!   failure other than a limit, runs on the interpreter.

pub mod builtins;
pub mod metrics;
mod plan;
pub mod pool;
pub mod server;
mod snapshot;
pub mod vm_safe;

use std::collections::BTreeMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
pub use regorus::Value;

use crate::core::error::{Error, PolicyCompileError, Result};
pub use plan::PlanKind;
pub use snapshot::Snapshot;

/// Default wall-clock budget of one evaluation.
pub const DEFAULT_TIME_LIMIT: Duration = Duration::from_secs(1);
/// Default deepest nesting of containers in an input (a scalar is depth 0, `{"a": 1}` depth 1).
pub const DEFAULT_MAX_INPUT_DEPTH: usize = 64;
/// Default largest input, as the length of its compact JSON encoding.
pub const DEFAULT_MAX_INPUT_BYTES: usize = 1 << 20;
/// Longest policy name.
pub const MAX_POLICY_NAME: usize = 256;
/// Paths evaluated before a swap that the new snapshot prepares before it is published, so the
/// first evaluation after a hot reload does not pay for compiling its plan.
const WARM_PATHS: usize = 64;

/// Engine settings, fixed at construction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Parse policies as Rego v0 (no `if`/`contains` keywords required) instead of v1.
    pub rego_v0: bool,
    /// Wall-clock budget of one evaluation; `None` for no limit.
    pub time_limit: Option<Duration>,
    /// Deepest container nesting an input may have.
    pub max_input_depth: usize,
    /// Largest input (compact JSON bytes).
    pub max_input_bytes: usize,
    /// Use regorus's bytecode VM for rule paths of snapshots that [`vm_safe`] accepts.
    pub vm: bool,
    /// Strict built-in errors (the default here; OPA's default is off): a built-in that errors
    /// raises `PolicyEvaluation` instead of making its expression undefined, so a broken `deny`
    /// rule cannot fail open. Conflicts are errors either way.
    pub strict: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            rego_v0: false,
            time_limit: Some(DEFAULT_TIME_LIMIT),
            max_input_depth: DEFAULT_MAX_INPUT_DEPTH,
            max_input_bytes: DEFAULT_MAX_INPUT_BYTES,
            vm: true,
            strict: true,
        }
    }
}

/// A batch of changes published as one snapshot (policyd's directory reload uses it).
#[derive(Debug, Default, Clone)]
pub struct Changes {
    /// Policies to add or replace: (name, source).
    pub upsert: Vec<(String, String)>,
    /// Policies to remove; unknown names are ignored.
    pub remove: Vec<String>,
    /// A new base document, if any.
    pub data: Option<Value>,
}

/// A Rego policy engine with atomic hot reload.
pub struct PolicyEngine {
    config: Config,
    current: ArcSwap<Snapshot>,
    /// Serializes writers: each builds on the snapshot the previous one published.
    writer: Mutex<u64>,
}

impl std::fmt::Debug for PolicyEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let snap = self.current.load();
        f.debug_struct("PolicyEngine")
            .field("version", &snap.version())
            .field("policies", &snap.policy_versions())
            .finish()
    }
}

impl PolicyEngine {
    /// An engine with no policies and an empty base document.
    pub fn new(config: Config) -> Result<Self> {
        if config.max_input_depth == 0 || config.max_input_bytes == 0 {
            return Err(Error::InvalidArgument(
                "max_input_depth and max_input_bytes must be at least 1".into(),
            ));
        }
        let snap = Snapshot::build(&config, BTreeMap::new(), Value::new_object(), None, 0)?;
        metrics::policies_changed(0, 0);
        Ok(PolicyEngine {
            config,
            current: ArcSwap::from_pointee(snap),
            writer: Mutex::new(0),
        })
    }

    /// The engine's settings.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The snapshot evaluations currently use.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// Adds or replaces the policy `name`; returns its version (SHA-256 hex of `rego`). A policy
    /// that does not compile (alone or with the others) raises `PolicyCompile` and changes
    /// nothing.
    pub fn load_policy(&self, name: &str, rego: &str) -> Result<String> {
        check_policy_name(name)?;
        let version = snapshot::content_version(rego);
        let unchanged = self
            .current
            .load()
            .policy_version(name)
            .is_some_and(|v| v == version);
        if !unchanged {
            self.apply(Changes {
                upsert: vec![(name.to_string(), rego.to_string())],
                ..Changes::default()
            })?;
        }
        Ok(version)
    }

    /// Removes the policy `name` (`PolicyNotFound` when there is none).
    pub fn remove_policy(&self, name: &str) -> Result<()> {
        check_policy_name(name)?;
        let mut seq = lock(&self.writer);
        let cur = self.current.load_full();
        if cur.policy_version(name).is_none() {
            return Err(Error::PolicyNotFound(format!("no policy named {name:?}")));
        }
        let mut policies = cur.sources().clone();
        policies.remove(name);
        self.publish(&mut seq, &cur, policies, cur.data().clone())
    }

    /// Replaces the base document (`data`). It must be an object.
    pub fn set_data(&self, data: Value) -> Result<()> {
        self.apply(Changes {
            data: Some(data),
            ..Changes::default()
        })
    }

    /// Applies several changes as one snapshot: all of them or none.
    pub fn apply(&self, changes: Changes) -> Result<()> {
        for (name, _) in &changes.upsert {
            check_policy_name(name)?;
        }
        if let Some(data) = &changes.data
            && !matches!(data, Value::Object(_))
        {
            return Err(Error::InvalidArgument(
                "data must be an object (a JSON document with keys)".into(),
            ));
        }
        let mut seq = lock(&self.writer);
        let cur = self.current.load_full();
        let mut policies = cur.sources().clone();
        for name in &changes.remove {
            policies.remove(name);
        }
        for (name, rego) in changes.upsert {
            policies.insert(name, Arc::from(rego));
        }
        let data = changes.data.unwrap_or_else(|| cur.data().clone());
        self.publish(&mut seq, &cur, policies, data)
    }

    fn publish(
        &self,
        seq: &mut u64,
        cur: &Arc<Snapshot>,
        policies: BTreeMap<String, Arc<str>>,
        data: Value,
    ) -> Result<()> {
        let started = Instant::now();
        *seq += 1;
        let next = Snapshot::build(&self.config, policies, data, Some(cur), *seq)?;
        next.warm(&cur.planned_paths(WARM_PATHS));
        metrics::policies_changed(cur.policy_count(), next.policy_count());
        metrics::swapped(started.elapsed());
        self.current.store(Arc::new(next));
        Ok(())
    }

    /// `(name, version)` of every policy, sorted by name.
    pub fn policies(&self) -> Vec<(String, String)> {
        self.current.load().policy_versions()
    }

    /// The current snapshot's version: SHA-256 over the policies' versions and the data.
    pub fn version(&self) -> String {
        self.current.load().version().to_string()
    }

    /// Checks `input` against the engine's limits (depth and size). The binding checks while it
    /// converts; JSON callers (policyd) call this on the parsed value.
    pub fn check_input(&self, input: &Value) -> Result<()> {
        let mut bytes = 0usize;
        check_value(
            input,
            0,
            &self.config,
            &mut bytes,
            &mut String::from("input"),
        )
    }

    /// Evaluates `path` (`data`, `data.pkg`, `data.pkg.rule`, ...) with `input` (`None`: no
    /// input). `Ok(None)` means undefined.
    pub fn evaluate(&self, path: &str, input: Option<Value>) -> Result<Option<Value>> {
        // A guard, not an `Arc` clone: no write to the snapshot's shared reference count.
        let snap = self.current.load();
        evaluate_in(&snap, path, input, self.config.strict)
    }

    /// [`evaluate`](Self::evaluate) with the strictness of built-in errors chosen per call
    /// (policyd's `strict-builtin-errors` query parameter).
    pub fn evaluate_with(
        &self,
        path: &str,
        input: Option<Value>,
        strict: bool,
    ) -> Result<Option<Value>> {
        let snap = self.current.load();
        evaluate_in(&snap, path, input, strict)
    }

    /// How `path` is evaluated in the current snapshot (for diagnostics and tests).
    pub fn plan_kind(&self, path: &str) -> Result<PlanKind> {
        check_path(path)?;
        let snap = self.current.load();
        Ok(snap.with_plan(path, |plan| plan.kind()))
    }

    /// Why the current snapshot does not use the bytecode VM, if it does not.
    pub fn vm_refusal(&self) -> Option<String> {
        self.current.load().vm_refusal().map(str::to_string)
    }
}

impl Drop for PolicyEngine {
    fn drop(&mut self) {
        metrics::policies_changed(self.current.load().policy_count(), 0);
    }
}

static INJECTED_FAULTS: AtomicU32 = AtomicU32::new(0);

/// Fault injection for tests of the internal-failure path (the binding's fallback): the next `n`
/// evaluations of the process fail as if regorus had panicked.
pub fn inject_faults(n: u32) {
    INJECTED_FAULTS.store(n, Ordering::SeqCst);
}

fn injected_fault() -> bool {
    INJECTED_FAULTS
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok()
}

/// Evaluates `path` in one snapshot: the unit [`PolicyEngine::evaluate`] and batch evaluation
/// share. Times the evaluation and counts it; a panic inside regorus becomes `Internal`.
pub fn evaluate_in(
    snap: &Snapshot,
    path: &str,
    input: Option<Value>,
    strict: bool,
) -> Result<Option<Value>> {
    check_path(path)?;
    let started = Instant::now();
    let result = catch_unwind(AssertUnwindSafe(|| {
        if injected_fault() {
            // As a panic would, without the panic hook's message.
            std::panic::resume_unwind(Box::new("injected fault"));
        }
        snap.with_plan(path, |plan| plan.evaluate(snap, path, input, strict))
    }))
    .unwrap_or_else(|panic| {
        let what = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".into());
        Err(Error::Internal(format!(
            "the policy engine panicked evaluating {path}: {what}"
        )))
    });
    metrics::evaluated(started.elapsed(), result.as_ref().err());
    result
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A policy name: 1..=256 characters of `[A-Za-z0-9._/-]`, usable as a file name and in OPA's
/// `/v1/policies/{id}` URL.
pub fn check_policy_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= MAX_POLICY_NAME
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'/' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidArgument(format!(
            "policy name must be 1-{MAX_POLICY_NAME} characters of A-Z a-z 0-9 . _ / -, not {name:?}"
        )))
    }
}

/// A document path: `data` or `data.<ident>(.<ident>)*`, identifiers `[A-Za-z_][A-Za-z0-9_]*`.
pub fn check_path(path: &str) -> Result<()> {
    let mut parts = path.split('.');
    let ok = parts.next() == Some("data")
        && parts.all(|seg| {
            let mut bytes = seg.bytes();
            matches!(bytes.next(), Some(b) if b.is_ascii_alphabetic() || b == b'_')
                && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
        });
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidArgument(format!(
            "path must be 'data' or 'data.<name>[.<name>...]' with identifier names, not {path:?}"
        )))
    }
}

/// The length of `s` as a JSON string literal (quotes and escapes included).
pub fn json_string_len(s: &str) -> usize {
    2 + s
        .bytes()
        .map(|b| match b {
            b'"' | b'\\' | b'\n' | b'\r' | b'\t' | 0x08 | 0x0c => 2,
            0..=0x1f => 6,
            _ => 1,
        })
        .sum::<usize>()
}

fn check_value(
    value: &Value,
    depth: usize,
    config: &Config,
    bytes: &mut usize,
    path: &mut String,
) -> Result<()> {
    let size = match value {
        Value::Null => 4,
        Value::Bool(b) => 4 + usize::from(!b),
        Value::Number(n) => n.format_decimal().len(),
        Value::String(s) => json_string_len(s),
        Value::Array(_) | Value::Set(_) | Value::Object(_) => {
            if depth >= config.max_input_depth {
                return Err(Error::PolicyEvaluation(format!(
                    "{path}: input nested deeper than max_input_depth={}",
                    config.max_input_depth
                )));
            }
            2
        }
        Value::Undefined => 0,
    };
    *bytes = bytes.saturating_add(size);
    if *bytes > config.max_input_bytes {
        return Err(Error::PolicyEvaluation(format!(
            "input larger than max_input_bytes={} (as compact JSON)",
            config.max_input_bytes
        )));
    }
    match value {
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                let len = path.len();
                path.push_str(&format!("[{i}]"));
                *bytes += usize::from(i > 0);
                check_value(item, depth + 1, config, bytes, path)?;
                path.truncate(len);
            }
        }
        Value::Set(items) => {
            for (i, item) in items.iter().enumerate() {
                *bytes += usize::from(i > 0);
                check_value(item, depth + 1, config, bytes, path)?;
            }
        }
        Value::Object(fields) => {
            for (i, (key, item)) in fields.iter().enumerate() {
                let len = path.len();
                path.push_str(&format!("[{key}]"));
                *bytes += usize::from(i > 0) + 1;
                check_value(key, depth + 1, config, bytes, path)?;
                check_value(item, depth + 1, config, bytes, path)?;
                path.truncate(len);
            }
        }
        _ => {}
    }
    Ok(())
}

/// Extracts `--> file:line:col` from a regorus error.
pub(crate) fn compile_error(err: &anyhow::Error) -> PolicyCompileError {
    let message = format!("{err:#}");
    let mut policy = None;
    let mut line = None;
    let mut column = None;
    if let Some(loc) = message
        .lines()
        .find_map(|l| l.trim_start().strip_prefix("--> "))
    {
        let mut parts = loc.trim().rsplitn(3, ':');
        let col = parts.next().and_then(|c| c.parse::<u32>().ok());
        let row = parts.next().and_then(|r| r.parse::<u32>().ok());
        if let (Some(c), Some(r), Some(file)) = (col, row, parts.next()) {
            policy = Some(file.to_string());
            line = Some(r);
            column = Some(c);
        }
    }
    PolicyCompileError {
        message: tidy_message(&message),
        policy,
        line,
        column,
    }
}

/// regorus errors read `--> file:1:2\n  |\n1 | source\n  |  ^\nerror: what`; keep that
/// layout (it shows the source line) but lead with `file:1:2: what`.
pub(crate) fn tidy_message(message: &str) -> String {
    let location = message
        .lines()
        .find_map(|l| l.trim_start().strip_prefix("--> "))
        .map(str::trim);
    let what = message
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("error: "))
        .map(str::trim);
    match (location, what) {
        (Some(loc), Some(what)) => format!("{loc}: {what}\n{}", message.trim_end()),
        _ => message.trim_end().to_string(),
    }
}
