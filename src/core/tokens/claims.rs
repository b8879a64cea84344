//! Registered claim checks, as PyJWT makes them: `exp` fails when `now >= exp + leeway`; `nbf`
//! and `iat` fail when `> now + leeway`; `aud` (a string or a list of strings) must contain one
//! of the expected audiences, and a token with `aud` fails when no audience is expected; `iss`
//! must be one of the expected issuers; required claims must be present and not null.

use serde_json::{Map, Value};

use crate::core::error::{Error, Result};

/// The checks `decode` makes after the signature.
#[derive(Debug, Clone, Default)]
pub struct DecodeOptions {
    /// Accepted audiences (`None`: a token carrying `aud` is refused).
    pub audience: Option<Vec<String>>,
    /// Accepted issuers (`None`: `iss` is not checked).
    pub issuer: Option<Vec<String>>,
    /// Seconds of tolerance on `exp`, `nbf` and `iat` (finite, >= 0).
    pub leeway: f64,
    /// Claims that must be present and not null.
    pub require: Vec<String>,
    /// The current time, Unix seconds.
    pub now: f64,
}

impl DecodeOptions {
    /// Checks `leeway` and `now` (the binding calls this before doing any work).
    pub fn check(&self) -> Result<()> {
        if !(self.leeway.is_finite() && self.leeway >= 0.0) {
            return Err(Error::InvalidArgument(format!(
                "leeway must be a finite number of seconds >= 0, not {}",
                self.leeway
            )));
        }
        if !self.now.is_finite() {
            return Err(Error::InvalidArgument(
                "now must be a finite timestamp".into(),
            ));
        }
        Ok(())
    }
}

/// A numeric claim (`exp`, `nbf`, `iat`) if present: a JSON number, else `Decode`.
fn number(claims: &Map<String, Value>, name: &str) -> Result<Option<f64>> {
    match claims.get(name) {
        None => Ok(None),
        Some(Value::Number(n)) => Ok(n.as_f64()),
        Some(_) => Err(Error::Decode(format!("the {name} claim must be a number"))),
    }
}

/// Checks `claims` against `opts`; the first failure wins, in the order of the module doc.
pub fn validate(claims: &Map<String, Value>, opts: &DecodeOptions) -> Result<()> {
    let exp = number(claims, "exp")?;
    let nbf = number(claims, "nbf")?;
    let iat = number(claims, "iat")?;
    for name in &opts.require {
        if matches!(claims.get(name.as_str()), None | Some(Value::Null)) {
            return Err(Error::MissingRequiredClaim(format!(
                "the token has no {name:?} claim"
            )));
        }
    }
    let now = opts.now;
    let leeway = opts.leeway;
    if let Some(iat) = iat
        && iat > now + leeway
    {
        return Err(Error::ImmatureSignature(
            "the token is not yet valid (iat)".into(),
        ));
    }
    if let Some(nbf) = nbf
        && nbf > now + leeway
    {
        return Err(Error::ImmatureSignature(
            "the token is not yet valid (nbf)".into(),
        ));
    }
    if let Some(exp) = exp
        && now >= exp + leeway
    {
        return Err(Error::ExpiredSignature("the token has expired".into()));
    }
    if let Some(issuers) = &opts.issuer {
        match claims.get("iss") {
            None => {
                return Err(Error::MissingRequiredClaim(
                    "the token has no \"iss\" claim".into(),
                ));
            }
            Some(Value::String(iss)) if issuers.iter().any(|i| i == iss) => {}
            Some(_) => return Err(Error::InvalidIssuer("invalid issuer".into())),
        }
    }
    check_audience(claims.get("aud"), opts.audience.as_deref())
}

fn check_audience(aud: Option<&Value>, expected: Option<&[String]>) -> Result<()> {
    let Some(expected) = expected else {
        return match aud {
            None => Ok(()),
            Some(_) => Err(Error::InvalidAudience(
                "the token has an audience but none was expected".into(),
            )),
        };
    };
    let matches = |a: &str| expected.iter().any(|e| e == a);
    match aud {
        None => Err(Error::MissingRequiredClaim(
            "the token has no \"aud\" claim".into(),
        )),
        Some(Value::String(a)) if matches(a) => Ok(()),
        Some(Value::Array(list)) => {
            let mut found = false;
            for item in list {
                match item {
                    Value::String(a) => found |= matches(a),
                    _ => {
                        return Err(Error::InvalidAudience(
                            "the aud claim must be a string or a list of strings".into(),
                        ));
                    }
                }
            }
            if found {
                Ok(())
            } else {
                Err(Error::InvalidAudience("audience doesn't match".into()))
            }
        }
        Some(Value::String(_)) => Err(Error::InvalidAudience("audience doesn't match".into())),
        Some(_) => Err(Error::InvalidAudience(
            "the aud claim must be a string or a list of strings".into(),
        )),
    }
}
