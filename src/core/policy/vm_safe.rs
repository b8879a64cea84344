//! Decides whether regorus's bytecode VM may evaluate a snapshot's rules.
//!
//! The VM is about three times faster than the interpreter, but it does not keep the
//! interpreter's (and OPA's) error semantics: an error inside a rule body (a built-in called
//! with the wrong types, a division by zero) makes the body fail silently even in strict mode,
//! and complete rules that produce different values come back undefined instead of raising a
//! conflict. A `deny` rule whose body errors would then fail open. So the VM is used only for
//! snapshots in which none of that can happen, which this module checks on the parsed modules:
//!
//! * no built-in or function calls, no arithmetic on anything but number literals, no set
//!   union/intersection, no object comprehensions, no `with`;
//! * rule heads are plain names (no functions, partial objects or other reference heads);
//! * a complete rule cannot conflict: either all its values are the same constant (`allow if
//!   ...` defined several times), or it has one definition with one body (plus `else`s) and no
//!   iteration that could produce several values;
//! * object literals have distinct constant keys;
//! * a dynamic index into `data` cannot select among packages or rules (dynamic dispatch).
//!
//! What remains (references, comparisons, `in`, `not`, `some`, `every`, array and set
//! comprehensions, partial set rules, `default`, `else`) is what typical authorization policies
//! are made of; the VM's results for it are checked against the interpreter's in
//! `tests_rs/policy.rs`. A refused snapshot runs on the interpreter: the answer is the same,
//! only slower. [`check`] returns the first reason for refusing.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use regorus::Value;
use regorus::unstable::{ArithOp, Expr, Literal, Module, Query, Ref, Rule, RuleHead};

/// What the VM needs of the data for the snapshot's rules to be safe on it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Needs {
    /// A rule indexes `data...` with a value computed at evaluation time. The interpreter (like
    /// OPA) turns a number used as a key of a base document into a string (`data.m[2]` finds
    /// `{"2": ...}`); the VM does not. They agree only if no object in the data has a key that
    /// reads as a number: see [`numeric_keys`].
    pub string_keys: bool,
}

/// Whether some object in `data` has a key that reads as a JSON number (`"2"`, `"1.5"`).
pub fn numeric_keys(data: &Value) -> Option<String> {
    match data {
        Value::Object(fields) => fields.iter().find_map(|(k, v)| match k {
            Value::String(s) if serde_json::from_str::<serde_json::Number>(s).is_ok() => {
                Some(s.to_string())
            }
            _ => numeric_keys(v),
        }),
        Value::Array(items) => items.iter().find_map(numeric_keys),
        Value::Set(items) => items.iter().find_map(numeric_keys),
        _ => None,
    }
}

/// `Err(reason)` when some rule of `modules` may not run on the VM; else what it needs of the
/// data.
pub fn check(modules: &[Ref<Module>]) -> Result<Needs, String> {
    let mut packages = BTreeSet::new();
    for m in modules {
        packages.insert(package_path(m)?);
    }
    let mut checker = Checker {
        packages,
        aliases: HashMap::new(),
        defs: BTreeMap::new(),
        needs: std::cell::Cell::new(Needs::default()),
    };
    for m in modules {
        checker.module(m)?;
    }
    checker.conflicts()?;
    Ok(checker.needs.get())
}

/// One definition of a complete rule.
struct Def {
    /// The value of each body, `None` when it is not a constant.
    values: Vec<Option<Value>>,
    /// Bodies that are not `else` branches: more than one may produce competing values.
    independent_bodies: usize,
    /// Whether a body or the value may produce several solutions.
    iterates: bool,
}

enum RuleKind {
    Complete(Def),
    Set,
}

struct Checker {
    /// `data.a.b` for every package.
    packages: BTreeSet<String>,
    /// Import aliases of the current module: alias -> its root variable (`data` or `input`)
    /// and the path after it.
    aliases: HashMap<String, Vec<String>>,
    /// (package, rule) -> its definitions.
    defs: BTreeMap<(String, String), Vec<RuleKind>>,
    needs: std::cell::Cell<Needs>,
}

fn at(e: &Expr) -> String {
    let s = e.span();
    format!("line {}, column {}", s.line, s.col)
}

fn var_name(e: &Expr) -> Option<String> {
    match e {
        Expr::Var { value, .. } => value.as_string().ok().map(|s| s.to_string()),
        _ => None,
    }
}

/// A constant scalar literal's value.
fn constant(e: &Expr) -> Option<Value> {
    match e {
        Expr::String { value, .. }
        | Expr::RawString { value, .. }
        | Expr::Number { value, .. }
        | Expr::Bool { value, .. }
        | Expr::Null { value, .. } => Some(value.clone()),
        _ => None,
    }
}

/// The components of a reference made of a variable and `.field` / `["field"]` steps.
fn static_ref(e: &Expr) -> Option<Vec<String>> {
    match e {
        Expr::Var { .. } => var_name(e).map(|v| vec![v]),
        Expr::RefDot { refr, field, .. } => {
            let mut path = static_ref(refr)?;
            path.push(field.1.as_string().ok()?.to_string());
            Some(path)
        }
        Expr::RefBrack { refr, index, .. } => {
            let mut path = static_ref(refr)?;
            match &**index {
                Expr::String { value, .. } | Expr::RawString { value, .. } => {
                    path.push(value.as_string().ok()?.to_string());
                    Some(path)
                }
                _ => None,
            }
        }
        _ => None,
    }
}

fn package_path(m: &Module) -> Result<String, String> {
    let parts = static_ref(&m.package.refr)
        .ok_or_else(|| format!("package at {} is not a plain path", at(&m.package.refr)))?;
    Ok(format!("data.{}", parts.join(".")))
}

impl Checker {
    fn module(&mut self, m: &Module) -> Result<(), String> {
        let pkg = package_path(m)?;
        self.aliases.clear();
        for import in &m.imports {
            let Some(path) = static_ref(&import.refr) else {
                continue;
            };
            let alias = match &import.r#as {
                Some(span) => span.text().to_string(),
                None => path.last().cloned().unwrap_or_default(),
            };
            // `import rego.v1` and `import future.keywords...` only switch syntax on.
            if matches!(path.first().map(String::as_str), Some("data" | "input")) {
                self.aliases.insert(alias, path);
            }
        }
        for rule in &m.policy {
            self.rule(&pkg, rule)?;
        }
        Ok(())
    }

    fn rule(&mut self, pkg: &str, rule: &Rule) -> Result<(), String> {
        match rule {
            Rule::Default {
                refr, args, value, ..
            } => {
                if !args.is_empty() {
                    return Err(format!("default function at {}", at(refr)));
                }
                if var_name(refr).is_none() {
                    return Err(format!(
                        "default rule with a reference head at {}",
                        at(refr)
                    ));
                }
                self.expr(value)
            }
            Rule::Spec { head, bodies, .. } => {
                let (name, kind) = match head {
                    RuleHead::Func { refr, .. } => {
                        return Err(format!("function at {}", at(refr)));
                    }
                    RuleHead::Set { refr, key, .. } => {
                        let name = var_name(refr)
                            .ok_or_else(|| format!("rule with a reference head at {}", at(refr)))?;
                        if let Some(k) = key {
                            self.expr(k)?;
                        }
                        (name, RuleKind::Set)
                    }
                    RuleHead::Compr { refr, assign, .. } => {
                        let name = var_name(refr).ok_or_else(|| {
                            format!(
                                "rule with a reference head (a partial object?) at {}",
                                at(refr)
                            )
                        })?;
                        let head_value = match assign {
                            Some(a) => {
                                self.expr(&a.value)?;
                                constant(&a.value)
                            }
                            None => Some(Value::Bool(true)),
                        };
                        let mut may_iterate = assign.as_ref().is_some_and(|a| iterates(&a.value));
                        let mut values = Vec::with_capacity(bodies.len().max(1));
                        for (i, body) in bodies.iter().enumerate() {
                            let value = match &body.assign {
                                Some(a) => {
                                    self.expr(&a.value)?;
                                    may_iterate |= iterates(&a.value);
                                    constant(&a.value)
                                }
                                None if i == 0 || !body.is_else => head_value.clone(),
                                None => Some(Value::Bool(true)),
                            };
                            values.push(value);
                            may_iterate |= query_iterates(&body.query);
                        }
                        if bodies.is_empty() {
                            values.push(head_value);
                        }
                        let independent_bodies = bodies.iter().filter(|b| !b.is_else).count();
                        (
                            name,
                            RuleKind::Complete(Def {
                                values,
                                independent_bodies,
                                iterates: may_iterate,
                            }),
                        )
                    }
                };
                for body in bodies {
                    self.query(&body.query)?;
                }
                self.defs
                    .entry((pkg.to_string(), name))
                    .or_default()
                    .push(kind);
                Ok(())
            }
        }
    }

    fn conflicts(&self) -> Result<(), String> {
        for ((pkg, name), kinds) in &self.defs {
            let mut complete = Vec::new();
            let mut sets = 0usize;
            for k in kinds {
                match k {
                    RuleKind::Complete(d) => complete.push(d),
                    RuleKind::Set => sets += 1,
                }
            }
            if sets > 0 && !complete.is_empty() {
                return Err(format!("{pkg}.{name} is both a complete and a set rule"));
            }
            if complete.is_empty() {
                continue;
            }
            let single =
                complete.len() == 1 && complete[0].independent_bodies <= 1 && !complete[0].iterates;
            let first = complete[0].values.first().cloned().flatten();
            let all_same_constant = first.is_some()
                && complete
                    .iter()
                    .flat_map(|d| d.values.iter())
                    .all(|v| v.is_some() && *v == first);
            if !(single || all_same_constant) {
                return Err(format!(
                    "{pkg}.{name} may produce conflicting values (several definitions or \
                     solutions with values that are not one constant)"
                ));
            }
        }
        Ok(())
    }

    fn query(&self, q: &Query) -> Result<(), String> {
        for stmt in &q.stmts {
            if let Some(w) = stmt.with_mods.first() {
                return Err(format!("`with` at {}", at(&w.refr)));
            }
            match &stmt.literal {
                Literal::SomeVars { .. } => {}
                Literal::SomeIn {
                    key,
                    value,
                    collection,
                    ..
                } => {
                    if let Some(k) = key {
                        self.pattern(k)?;
                    }
                    self.pattern(value)?;
                    self.expr(collection)?;
                }
                Literal::Expr { expr, .. } | Literal::NotExpr { expr, .. } => self.expr(expr)?,
                Literal::Every { domain, query, .. } => {
                    self.expr(domain)?;
                    self.query(query)?;
                }
            }
        }
        Ok(())
    }

    /// The left side of `:=`/`=` and the variables of `some ... in`: variables, constants and
    /// arrays of them.
    fn pattern(&self, e: &Expr) -> Result<(), String> {
        match e {
            Expr::Var { .. } => Ok(()),
            Expr::Array { items, .. } => items.iter().try_for_each(|i| self.pattern(i)),
            _ if constant(e).is_some() => Ok(()),
            _ => self.expr(e),
        }
    }

    fn expr(&self, e: &Expr) -> Result<(), String> {
        match e {
            Expr::String { .. }
            | Expr::RawString { .. }
            | Expr::Number { .. }
            | Expr::Bool { .. }
            | Expr::Null { .. }
            | Expr::Var { .. } => Ok(()),
            Expr::Array { items, .. } | Expr::Set { items, .. } => {
                items.iter().try_for_each(|i| self.expr(i))
            }
            Expr::Object { fields, .. } => {
                let mut keys = BTreeSet::new();
                for (_, k, v) in fields {
                    let key = constant(k).ok_or_else(|| {
                        format!("object literal with a computed key at {}", at(k))
                    })?;
                    if !keys.insert(key) {
                        return Err(format!("object literal with a repeated key at {}", at(k)));
                    }
                    self.expr(v)?;
                }
                Ok(())
            }
            Expr::ArrayCompr { term, query, .. } | Expr::SetCompr { term, query, .. } => {
                self.expr(term)?;
                self.query(query)
            }
            Expr::ObjectCompr { .. } => Err(format!("object comprehension at {}", at(e))),
            Expr::Call { fcn, .. } => {
                let name = static_ref(fcn).map(|p| p.join(".")).unwrap_or_default();
                Err(format!("call of {name} at {}", at(e)))
            }
            Expr::UnaryExpr { expr, .. } => match &**expr {
                Expr::Number { .. } => Ok(()),
                _ => Err(format!("unary minus on a non-literal at {}", at(e))),
            },
            Expr::RefDot { refr, .. } => self.expr(refr),
            Expr::RefBrack { refr, index, .. } => {
                self.expr(refr)?;
                self.expr(index)?;
                let literal_data_root = static_root(refr).as_deref() == Some("data");
                match constant(index) {
                    Some(Value::String(_)) => {}
                    Some(_) if literal_data_root => {
                        return Err(format!(
                            "a key of data that is not a string at {}",
                            at(index)
                        ));
                    }
                    Some(_) => {}
                    None => {
                        self.dynamic_data_index(refr, e)?;
                        if literal_data_root {
                            self.needs.set(Needs { string_keys: true });
                        }
                    }
                }
                Ok(())
            }
            Expr::BinExpr { .. } => Err(format!("set union or intersection at {}", at(e))),
            Expr::BoolExpr { lhs, rhs, .. } => {
                self.expr(lhs)?;
                self.expr(rhs)
            }
            Expr::ArithExpr { op, lhs, rhs, .. } => {
                let literal = |x: &Expr| matches!(x, Expr::Number { .. });
                if literal(lhs) && literal(rhs) && !matches!(op, ArithOp::Div | ArithOp::Mod) {
                    Ok(())
                } else {
                    Err(format!("arithmetic at {}", at(e)))
                }
            }
            Expr::AssignExpr { lhs, rhs, .. } => {
                self.pattern(lhs)?;
                self.expr(rhs)
            }
            Expr::Membership {
                key,
                value,
                collection,
                ..
            } => {
                if let Some(k) = key {
                    self.expr(k)?;
                }
                self.expr(value)?;
                self.expr(collection)
            }
        }
    }

    /// `data.a.b[x]` may select a package or a rule when `data.a.b` is (inside) a package path.
    fn dynamic_data_index(&self, refr: &Expr, whole: &Expr) -> Result<(), String> {
        let Some(mut path) = static_ref(refr) else {
            // A dynamic step earlier in the reference was checked when it was visited.
            return Ok(());
        };
        if let Some(target) = path.first().and_then(|root| self.aliases.get(root)) {
            let mut resolved = target.clone();
            resolved.extend(path.drain(1..));
            path = resolved;
        }
        if path.first().map(String::as_str) != Some("data") {
            return Ok(());
        }
        let prefix = path.join(".");
        let dispatch = self.packages.iter().any(|pkg| {
            pkg == &prefix
                || pkg.starts_with(&format!("{prefix}."))
                || prefix.starts_with(&format!("{pkg}."))
        });
        if dispatch {
            Err(format!(
                "dynamic reference into the packages of data at {}",
                at(whole)
            ))
        } else {
            Ok(())
        }
    }
}

/// The variable a reference starts from (`data` of `data.a[x].b`), whatever its steps.
fn static_root(e: &Expr) -> Option<String> {
    match e {
        Expr::Var { .. } => var_name(e),
        Expr::RefDot { refr, .. } | Expr::RefBrack { refr, .. } => static_root(refr),
        _ => None,
    }
}

/// Whether evaluating `e` may bind a variable to several values (`x[_]`, `x[i]`).
fn iterates(e: &Expr) -> bool {
    match e {
        Expr::RefBrack { refr, index, .. } => {
            matches!(&**index, Expr::Var { .. }) || iterates(refr) || iterates(index)
        }
        Expr::RefDot { refr, .. } => iterates(refr),
        Expr::Array { items, .. } | Expr::Set { items, .. } => items.iter().any(|i| iterates(i)),
        Expr::Object { fields, .. } => fields.iter().any(|(_, k, v)| iterates(k) || iterates(v)),
        Expr::BoolExpr { lhs, rhs, .. }
        | Expr::ArithExpr { lhs, rhs, .. }
        | Expr::AssignExpr { lhs, rhs, .. }
        | Expr::BinExpr { lhs, rhs, .. } => iterates(lhs) || iterates(rhs),
        Expr::Membership {
            key,
            value,
            collection,
            ..
        } => key.as_ref().is_some_and(|k| iterates(k)) || iterates(value) || iterates(collection),
        Expr::UnaryExpr { expr, .. } => iterates(expr),
        Expr::Call { params, .. } => params.iter().any(|p| iterates(p)),
        // A comprehension collects its solutions into one value.
        _ => false,
    }
}

fn query_iterates(q: &Query) -> bool {
    q.stmts.iter().any(|s| match &s.literal {
        Literal::SomeIn { .. } | Literal::SomeVars { .. } => true,
        Literal::Expr { expr, .. } => iterates(expr),
        // `not` and `every` do not bind variables outside.
        Literal::NotExpr { .. } | Literal::Every { .. } => false,
    })
}
