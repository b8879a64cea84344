//! How one path is evaluated in one snapshot, decided once and cached: on the bytecode VM, on
//! the interpreter as a rule, or on the interpreter as a query (package and data paths).

use std::sync::Arc;

use crossbeam_queue::ArrayQueue;
use regorus::Value;
use regorus::languages::rego::compiler::Compiler;
use regorus::rvm::RegoVM;
use regorus::rvm::program::Program;
use regorus::rvm::vm::VmError;

use super::snapshot::{POOL_SIZE, Snapshot};
use super::{metrics, tidy_message};
use crate::core::error::{Error, Result};

/// regorus's message for a path that names no rule.
const NOT_A_RULE: &str = "not a valid rule path";

/// How a path is evaluated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlanKind {
    /// A rule, on regorus's bytecode VM (the fast path).
    Vm,
    /// A rule, on the interpreter.
    Rule,
    /// A package or data path (or a path inside a rule's value), as a query on the interpreter.
    Query,
}

impl PlanKind {
    pub fn name(self) -> &'static str {
        match self {
            PlanKind::Vm => "vm",
            PlanKind::Rule => "interpreter",
            PlanKind::Query => "query",
        }
    }
}

// One plan per evaluated path, each behind an `Arc`: the size of the VM variant does not matter.
#[allow(clippy::large_enum_variant)]
pub(super) enum Plan {
    Vm {
        program: Arc<Program>,
        vms: ArrayQueue<Box<RegoVM>>,
    },
    Rule,
    Query,
}

impl Plan {
    pub(super) fn kind(&self) -> PlanKind {
        match self {
            Plan::Vm { .. } => PlanKind::Vm,
            Plan::Rule => PlanKind::Rule,
            Plan::Query => PlanKind::Query,
        }
    }

    pub(super) fn build(snap: &Snapshot, path: &str) -> Plan {
        let mut engine = snap.new_interpreter();
        let compiled = match engine.compile_with_entrypoint(&path.into()) {
            Ok(compiled) => compiled,
            Err(e) if format!("{e:#}").contains(NOT_A_RULE) => return Plan::Query,
            // The interpreter will report the same error when the path is evaluated.
            Err(_) => return Plan::Rule,
        };
        if !snap.vm_enabled() {
            return Plan::Rule;
        }
        let Ok(program) = Compiler::compile_from_policy(&compiled, &[path]) else {
            // Something the VM compiler does not support (`print`, some rule shapes, ...).
            return Plan::Rule;
        };
        let vms = ArrayQueue::new(POOL_SIZE);
        match new_vm(snap, &program) {
            Ok(vm) => {
                let _ = vms.push(vm);
                Plan::Vm { program, vms }
            }
            // E.g. a rule and a data document at the same path: the interpreter reports it.
            Err(_) => Plan::Rule,
        }
    }

    /// Evaluates `path`; `strict` chooses the interpreter's built-in error mode (the VM runs
    /// only policies without built-in calls, where the mode changes nothing: it runs non-strict,
    /// which keeps OPA's total order for comparisons of different types).
    pub(super) fn evaluate(
        &self,
        snap: &Snapshot,
        path: &str,
        input: Option<Value>,
        strict: bool,
    ) -> Result<Option<Value>> {
        match self {
            Plan::Vm { program, vms } => {
                let mut vm = match vms.pop() {
                    Some(vm) => vm,
                    None => new_vm(snap, program).map_err(|e| vm_error(path, &e))?,
                };
                vm.set_input(input.clone().unwrap_or(Value::Undefined));
                match vm.execute_entry_point_by_index(0) {
                    Ok(value) => {
                        // Drop the input with the VM's other per-call state before reuse.
                        vm.set_input(Value::Undefined);
                        let _ = vms.push(vm);
                        Ok(defined(value))
                    }
                    Err(
                        e @ (VmError::TimeLimitExceeded { .. }
                        | VmError::InstructionLimitExceeded { .. }
                        | VmError::MemoryLimitExceeded { .. }),
                    ) => Err(Error::PolicyEvaluation(format!(
                        "evaluation of {path} stopped: {e}"
                    ))),
                    Err(_) => {
                        // Not expected for a policy the VM accepted: answer from the interpreter,
                        // which is the reference, and count it.
                        metrics::vm_fallback();
                        eval_rule(snap, path, input, strict)
                    }
                }
            }
            Plan::Rule => eval_rule(snap, path, input, strict),
            Plan::Query => snap.with_interpreter(|engine| {
                engine.set_strict_builtin_errors(strict);
                engine.set_input(input.unwrap_or(Value::Undefined));
                let results = engine
                    .eval_query(path.to_string(), false)
                    .map_err(|e| eval_error(path, &e));
                engine.set_input(Value::Undefined);
                let results = results?;
                Ok(results
                    .result
                    .into_iter()
                    .next()
                    .and_then(|r| r.expressions.into_iter().next())
                    .map(|e| e.value)
                    .and_then(defined))
            }),
        }
    }
}

fn eval_rule(
    snap: &Snapshot,
    path: &str,
    input: Option<Value>,
    strict: bool,
) -> Result<Option<Value>> {
    snap.with_interpreter(|engine| {
        engine.set_strict_builtin_errors(strict);
        engine.set_input(input.unwrap_or(Value::Undefined));
        let value = engine
            .eval_rule(path.to_string())
            .map_err(|e| eval_error(path, &e));
        engine.set_input(Value::Undefined);
        Ok(defined(value?))
    })
}

fn defined(value: Value) -> Option<Value> {
    (value != Value::Undefined).then_some(value)
}

/// A VM of its own for one thread at a time. It gets a private copy of the program and of the
/// data: regorus's values are reference counted, and the VM clones the `Arc<Program>` and the
/// values it reads on every rule call, so VMs sharing them make every core write the same counters
/// (the cache lines bounce between cores and two threads ran slower than one).
fn new_vm(snap: &Snapshot, program: &Arc<Program>) -> std::result::Result<Box<RegoVM>, VmError> {
    let mut vm = Box::new(RegoVM::new());
    let mut own = Program::clone(program);
    own.literals = own.literals.iter().map(deep_copy).collect();
    vm.load_program(Arc::new(own));
    // Large data is shared rather than copied per VM (memory, and the time to build a VM).
    let mut budget = PRIVATE_DATA_NODES;
    let data = bounded_copy(snap.data(), &mut budget).unwrap_or_else(|| snap.data().clone());
    vm.set_data(data)?;
    // The time budget is the limit; the VM's own instruction cap (25,000 by default) would stop
    // ordinary loops over a few thousand items.
    vm.set_max_instructions(usize::MAX);
    vm.set_execution_timer_config(snap.timer());
    Ok(vm)
}

fn vm_error(path: &str, e: &VmError) -> Error {
    Error::PolicyEvaluation(format!("evaluation of {path} failed: {e}"))
}

fn eval_error(path: &str, e: &anyhow::Error) -> Error {
    let message = tidy_message(&format!("{e:#}"));
    if e.chain()
        .any(|c| c.downcast_ref::<regorus::LimitError>().is_some())
    {
        return Error::PolicyEvaluation(format!("evaluation of {path} stopped: {message}"));
    }
    Error::PolicyEvaluation(format!("evaluation of {path} failed: {message}"))
}

/// Data documents up to this many values get a private copy in every VM.
const PRIVATE_DATA_NODES: usize = 50_000;

/// [`deep_copy`] of `v` if it has at most `budget` values.
fn bounded_copy(v: &Value, budget: &mut usize) -> Option<Value> {
    *budget = budget.checked_sub(1)?;
    Some(match v {
        Value::String(s) => Value::String(s.as_ref().into()),
        Value::Array(items) => Value::from(
            items
                .iter()
                .map(|i| bounded_copy(i, budget))
                .collect::<Option<Vec<_>>>()?,
        ),
        Value::Set(items) => Value::from(
            items
                .iter()
                .map(|i| bounded_copy(i, budget))
                .collect::<Option<std::collections::BTreeSet<_>>>()?,
        ),
        Value::Object(fields) => Value::from(
            fields
                .iter()
                .map(|(k, v)| Some((bounded_copy(k, budget)?, bounded_copy(v, budget)?)))
                .collect::<Option<std::collections::BTreeMap<_, _>>>()?,
        ),
        Value::Number(n) => Value::from(n.clone()),
        other => other.clone(),
    })
}

/// A copy of `v` that shares no reference-counted part with it.
pub(super) fn deep_copy(v: &Value) -> Value {
    match v {
        Value::String(s) => Value::String(s.as_ref().into()),
        Value::Array(items) => Value::from(items.iter().map(deep_copy).collect::<Vec<_>>()),
        Value::Set(items) => Value::from(
            items
                .iter()
                .map(deep_copy)
                .collect::<std::collections::BTreeSet<_>>(),
        ),
        Value::Object(fields) => Value::from(
            fields
                .iter()
                .map(|(k, v)| (deep_copy(k), deep_copy(v)))
                .collect::<std::collections::BTreeMap<_, _>>(),
        ),
        Value::Number(n) => Value::from(n.clone()),
        other => other.clone(),
    }
}
