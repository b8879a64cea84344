//! OPA built-ins that regorus 0.14 lacks, added to every snapshot's interpreter as extensions,
//! with OPA's semantics (its conformance cases are the reference):
//!
//! * `array.flatten(arr)`: the items of `arr`, with items that are arrays spliced in one level.
//! * `strings.split_n(s, sep, n)`: Go's `strings.SplitN` for `n >= 0` (at most `n` parts, the last
//!   one the rest; `n == 0` gives none; an empty `sep` splits after each character), and for
//!   `n < 0` the last `|n|` parts of the full split.
//!
//! Policies that call them run on the interpreter (`vm_safe` refuses calls).

use anyhow::{Result, bail};
use regorus::{Engine, Value};

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Set(_) => "set",
        Value::Object(_) => "object",
        Value::Undefined => "undefined",
    }
}

fn flatten(args: Vec<Value>) -> Result<Value> {
    let [arr] = args.as_slice() else {
        bail!("array.flatten: expects 1 argument")
    };
    let Value::Array(items) = arr else {
        bail!(
            "array.flatten: operand 1 must be array but got {}",
            type_name(arr)
        )
    };
    let mut out = Vec::with_capacity(items.len());
    for item in items.iter() {
        match item {
            Value::Array(inner) => out.extend(inner.iter().cloned()),
            other => out.push(other.clone()),
        }
    }
    Ok(Value::from(out))
}

/// OPA's `strings.split_n` (see the module doc).
pub fn split_n(s: &str, sep: &str, n: i64) -> Vec<String> {
    if n == 0 {
        return Vec::new();
    }
    let all: Vec<&str> = if sep.is_empty() {
        s.char_indices()
            .map(|(i, c)| &s[i..i + c.len_utf8()])
            .collect()
    } else {
        s.split(sep).collect()
    };
    if n < 0 {
        let keep = usize::try_from(n.unsigned_abs()).unwrap_or(usize::MAX);
        let skip = all.len().saturating_sub(keep);
        return all[skip..].iter().map(|p| p.to_string()).collect();
    }
    let n = usize::try_from(n).unwrap_or(usize::MAX);
    if sep.is_empty() {
        if all.len() <= n {
            return all.iter().map(|p| p.to_string()).collect();
        }
        let mut out: Vec<String> = all[..n - 1].iter().map(|p| p.to_string()).collect();
        out.push(all[n - 1..].concat());
        return out;
    }
    s.splitn(n, sep).map(str::to_string).collect()
}

fn split_n_builtin(args: Vec<Value>) -> Result<Value> {
    let [s, sep, n] = args.as_slice() else {
        bail!("strings.split_n: expects 3 arguments")
    };
    let (Value::String(s), Value::String(sep)) = (s, sep) else {
        let (i, v) = if matches!(s, Value::String(_)) {
            (2, sep)
        } else {
            (1, s)
        };
        bail!(
            "strings.split_n: operand {i} must be string but got {}",
            type_name(v)
        )
    };
    let count = match n {
        Value::Number(num) => num.as_i64(),
        _ => None,
    };
    let Some(count) = count else {
        bail!(
            "strings.split_n: operand 3 must be an integer but got {}",
            type_name(n)
        )
    };
    Ok(Value::from(
        split_n(s, sep, count)
            .into_iter()
            .map(Value::from)
            .collect::<Vec<_>>(),
    ))
}

/// Registers the extensions on `engine`.
pub(super) fn install(engine: &mut Engine) -> Result<()> {
    engine.add_extension("array.flatten".into(), 1, Box::new(flatten))?;
    engine.add_extension("strings.split_n".into(), 3, Box::new(split_n_builtin))?;
    Ok(())
}
