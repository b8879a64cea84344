//! One immutable state of an engine: its policies, its data, a prepared interpreter and the
//! per-path plans built from them.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::num::NonZeroU32;
use std::sync::Arc;

use arc_swap::ArcSwap;
use crossbeam_queue::ArrayQueue;
use regorus::utils::limits::ExecutionTimerConfig;
use regorus::{Engine, Value};
use sha2::{Digest, Sha256};

use super::plan::Plan;
use super::{Config, builtins, compile_error, vm_safe};
use crate::core::error::{Error, Result};

/// Evaluators kept per snapshot for reuse; more are created when threads need them, and the
/// surplus is dropped.
pub(super) const POOL_SIZE: usize = 64;
/// Clock checks of the time budget happen every this many interpreter steps or VM instructions.
const TIMER_CHECK_INTERVAL: u32 = 64;

/// SHA-256 hex of a policy's source: its version.
pub fn content_version(rego: &str) -> String {
    hex(&Sha256::digest(rego.as_bytes()))
}

fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

fn same_sources(a: &BTreeMap<String, Arc<str>>, b: &BTreeMap<String, Arc<str>>) -> bool {
    a.len() == b.len()
        && a.iter()
            .zip(b)
            .all(|((na, sa), (nb, sb))| na == nb && (Arc::ptr_eq(sa, sb) || sa == sb))
}

/// One immutable state of an engine.
pub struct Snapshot {
    seq: u64,
    version: String,
    sources: BTreeMap<String, Arc<str>>,
    versions: BTreeMap<String, String>,
    data: Value,
    /// The policies parsed, without data: a change of data alone starts from a clone of it.
    base: Engine,
    /// What [`vm_safe::check`] found for the policies.
    vm_check: std::result::Result<vm_safe::Needs, String>,
    /// Policies and data loaded and prepared: evaluators are cloned from it.
    template: Engine,
    timer: Option<ExecutionTimerConfig>,
    vm_enabled: bool,
    /// `Some(reason)` when the VM is not used for this snapshot.
    vm_refusal: Option<String>,
    plans: ArcSwap<HashMap<String, Arc<Plan>>>,
    interpreters: ArrayQueue<Box<Engine>>,
}

impl Snapshot {
    /// Builds and checks a snapshot. `previous` lends its parsed engine when only the data
    /// changed.
    pub(super) fn build(
        config: &Config,
        sources: BTreeMap<String, Arc<str>>,
        data: Value,
        previous: Option<&Snapshot>,
        seq: u64,
    ) -> Result<Snapshot> {
        let timer = config.time_limit.map(|limit| ExecutionTimerConfig {
            limit,
            check_interval: NonZeroU32::new(TIMER_CHECK_INTERVAL).unwrap_or(NonZeroU32::MIN),
        });
        let reuse = previous.filter(|p| same_sources(&p.sources, &sources));
        let (base, vm_check) = match reuse {
            Some(p) => (p.base.clone(), p.vm_check.clone()),
            None => {
                let mut base = Engine::new();
                base.set_rego_v0(config.rego_v0);
                base.set_strict_builtin_errors(true);
                if let Some(t) = timer {
                    base.set_execution_timer_config(t);
                }
                builtins::install(&mut base)
                    .map_err(|e| Error::Internal(format!("cannot add built-ins: {e}")))?;
                for (name, rego) in &sources {
                    base.add_policy(name.clone(), rego.to_string())
                        .map_err(|e| Error::PolicyCompile(compile_error(&e)))?;
                }
                let check = if config.vm {
                    vm_safe::check(base.get_modules())
                } else {
                    Err("the VM is disabled (vm=False)".into())
                };
                (base, check)
            }
        };
        let mut engine = base.clone();
        engine
            .add_data(data.clone())
            .map_err(|e| Error::PolicyCompile(compile_error(&e)))?;
        // Analysis, scheduling and rule gathering happen on the first evaluation: run a trivial
        // query now so that a policy that cannot be prepared fails here, not on a request.
        engine
            .eval_query("true".into(), false)
            .map_err(|e| Error::PolicyCompile(compile_error(&e)))?;
        let vm_refusal = match &vm_check {
            Err(reason) => Some(reason.clone()),
            Ok(needs) if needs.string_keys => vm_safe::numeric_keys(&data).map(|key| {
                format!(
                    "a rule indexes data with a computed key and the data has a key that reads as \
                     a number ({key:?}): OPA matches it with a number, the VM does not"
                )
            }),
            Ok(_) => None,
        };
        let versions: BTreeMap<String, String> = sources
            .iter()
            .map(|(name, rego)| (name.clone(), content_version(rego)))
            .collect();
        let data_json = serde_json::to_string(&data)
            .map_err(|e| Error::InvalidArgument(format!("data is not serializable: {e}")))?;
        let mut h = Sha256::new();
        for (name, version) in &versions {
            h.update(name.as_bytes());
            h.update([0]);
            h.update(version.as_bytes());
            h.update([0]);
        }
        h.update(data_json.as_bytes());
        Ok(Snapshot {
            seq,
            version: hex(&h.finalize()),
            sources,
            versions,
            data,
            base,
            vm_check,
            template: engine,
            timer,
            vm_enabled: vm_refusal.is_none(),
            vm_refusal,
            plans: ArcSwap::from_pointee(HashMap::new()),
            interpreters: ArrayQueue::new(POOL_SIZE),
        })
    }

    /// A sequence number, increasing with every published snapshot of an engine.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// SHA-256 over the policies' versions and the data.
    pub fn version(&self) -> &str {
        &self.version
    }

    pub fn data(&self) -> &Value {
        &self.data
    }

    pub(super) fn sources(&self) -> &BTreeMap<String, Arc<str>> {
        &self.sources
    }

    /// The source of policy `name`.
    pub fn source(&self, name: &str) -> Option<&str> {
        self.sources.get(name).map(|s| &**s)
    }

    pub fn policy_version(&self, name: &str) -> Option<&str> {
        self.versions.get(name).map(String::as_str)
    }

    pub fn policy_versions(&self) -> Vec<(String, String)> {
        self.versions
            .iter()
            .map(|(n, v)| (n.clone(), v.clone()))
            .collect()
    }

    pub fn policy_count(&self) -> usize {
        self.sources.len()
    }

    pub(super) fn timer(&self) -> Option<ExecutionTimerConfig> {
        self.timer
    }

    pub(super) fn vm_enabled(&self) -> bool {
        self.vm_enabled
    }

    pub fn vm_refusal(&self) -> Option<&str> {
        self.vm_refusal.as_deref()
    }

    pub(super) fn planned_paths(&self, max: usize) -> Vec<String> {
        self.plans.load().keys().take(max).cloned().collect()
    }

    /// Builds the plans of `paths` before the snapshot is published.
    pub(super) fn warm(&self, paths: &[String]) {
        for p in paths {
            let _ = self.plan(p);
        }
    }

    /// Runs `f` with the plan of `path`, built and cached on first use, borrowed from the plan
    /// table (no reference count is written on the hot path).
    pub(super) fn with_plan<T>(&self, path: &str, f: impl FnOnce(&Plan) -> T) -> T {
        {
            let plans = self.plans.load();
            if let Some(plan) = plans.get(path) {
                return f(plan);
            }
        }
        f(&self.plan(path))
    }

    /// The plan of `path`, built and cached on first use. Two threads may both build it; one
    /// result is kept.
    pub(super) fn plan(&self, path: &str) -> Arc<Plan> {
        if let Some(plan) = self.plans.load().get(path) {
            return plan.clone();
        }
        let built = Arc::new(Plan::build(self, path));
        let mut kept = built.clone();
        self.plans.rcu(|plans| {
            let mut next = HashMap::clone(plans);
            kept = next
                .entry(path.to_string())
                .or_insert_with(|| built.clone())
                .clone();
            next
        });
        kept
    }

    /// A fresh interpreter of this snapshot (policies and data loaded, prepared).
    pub(super) fn new_interpreter(&self) -> Engine {
        self.template.clone()
    }

    /// Runs `f` with an interpreter from the pool; it goes back unless `f` panicked.
    pub(super) fn with_interpreter<T>(&self, f: impl FnOnce(&mut Engine) -> T) -> T {
        let mut engine = self
            .interpreters
            .pop()
            .unwrap_or_else(|| Box::new(self.new_interpreter()));
        let out = f(&mut engine);
        let _ = self.interpreters.push(engine);
        out
    }
}
