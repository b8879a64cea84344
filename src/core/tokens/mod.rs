//! Ed25519 JWS/JWT/JWK: compact JWS encoding with one fixed serialization, strict decoding with
//! PyJWT's claim rules, key sets chosen by `kid`, and the token counters.
//!
//! Decoding checks, in this order, and stops at the first failure (the Python path does the same,
//! so both raise the same error for the same token):
//!
//! 1. size (at most [`MAX_TOKEN_SIZE`] bytes), three segments, each strict base64url without
//!    padding (canonical trailing bits), a header that is a UTF-8 JSON object -> `Decode`;
//! 2. header `alg` present and a string, `kid` absent or a string -> `Decode`; `alg` other than
//!    `EdDSA`/`Ed25519`, any `crit` -> `InvalidSignature`;
//! 3. the key chosen by `kid`, a 64-byte signature that passes `verify_strict` ->
//!    `InvalidSignature`;
//! 4. the payload a JSON object, `exp`/`nbf`/`iat` numbers when present -> `Decode`;
//! 5. required claims -> `MissingRequiredClaim`; `iat`, `nbf` -> `ImmatureSignature`; `exp` ->
//!    `ExpiredSignature`; `iss` -> `InvalidIssuer`; `aud` -> `InvalidAudience` (see [`claims`]).

pub mod claims;
pub mod json;
pub mod key;
pub mod metrics;

use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Map, Value};

pub use self::claims::DecodeOptions;
pub use self::key::Key;
use crate::core::error::{Error, Result};

/// The largest token `decode` looks at, in bytes; a larger one fails before any other work.
pub const MAX_TOKEN_SIZE: usize = 16 * 1024;

/// The JWS `alg` written in the header: RFC 8037's `EdDSA` (what every verifier in use
/// understands) or RFC 9864's fully specified `Ed25519`. `decode` accepts both.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alg {
    EdDSA,
    Ed25519,
}

impl Alg {
    pub fn parse(name: &str) -> Result<Self> {
        match name {
            "EdDSA" => Ok(Alg::EdDSA),
            "Ed25519" => Ok(Alg::Ed25519),
            other => Err(Error::InvalidArgument(format!(
                "alg must be \"EdDSA\" or \"Ed25519\", not {other:?}"
            ))),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Alg::EdDSA => "EdDSA",
            Alg::Ed25519 => "Ed25519",
        }
    }
}

/// Header members the signer sets itself; `headers=` may not override them.
pub const RESERVED_HEADERS: [&str; 3] = ["alg", "typ", "kid"];

/// What `encode` adds to the caller's claims and header.
#[derive(Debug, Clone)]
pub struct EncodeOptions {
    pub alg: Alg,
    /// Extra header members, after `alg`, `typ`, `kid`, in the caller's order.
    pub headers: Option<Map<String, Value>>,
    /// Seconds of validity: sets `iat` = floor(now) and `exp` = floor(now + expires_in).
    pub expires_in: Option<f64>,
    /// The current time, Unix seconds.
    pub now: f64,
}

/// Checks `expires_in` and `headers` (the binding calls this before releasing the GIL).
pub fn check_encode_options(opts: &EncodeOptions) -> Result<()> {
    if let Some(seconds) = opts.expires_in
        && !(seconds.is_finite() && seconds > 0.0)
    {
        return Err(Error::InvalidArgument(format!(
            "expires_in must be a finite number of seconds > 0, not {seconds}"
        )));
    }
    if let Some(headers) = &opts.headers
        && let Some(name) = RESERVED_HEADERS.iter().find(|n| headers.contains_key(**n))
    {
        return Err(Error::InvalidArgument(format!(
            "headers may not set {name:?}: the signer writes alg, typ and kid"
        )));
    }
    Ok(())
}

fn whole_seconds(t: f64) -> Value {
    let t = t.floor();
    if t.abs() < 9.0e15 {
        Value::from(t as i64)
    } else {
        Value::from(t)
    }
}

/// The compact JWS of `claims` signed by `key`: `b64(header).b64(claims).b64(signature)`, with
/// the header `{"alg":...,"typ":"JWT","kid":...}` plus `opts.headers`.
pub fn encode(key: &Key, mut claims: Map<String, Value>, opts: &EncodeOptions) -> Result<String> {
    check_encode_options(opts)?;
    if let Some(seconds) = opts.expires_in {
        // `insert` keeps the position of a key the caller already gave (as a Python dict does).
        claims.insert("iat".into(), whole_seconds(opts.now));
        claims.insert("exp".into(), whole_seconds(opts.now + seconds));
    }
    let mut header = Map::new();
    header.insert("alg".into(), opts.alg.as_str().into());
    header.insert("typ".into(), "JWT".into());
    header.insert("kid".into(), key.kid().into());
    if let Some(extra) = &opts.headers {
        for (k, v) in extra {
            header.insert(k.clone(), v.clone());
        }
    }
    let mut json = Vec::with_capacity(256);
    json::write_object(&mut json, &header);
    let mut token = String::with_capacity(512);
    URL_SAFE_NO_PAD.encode_string(&json, &mut token);
    token.push('.');
    json.clear();
    json::write_object(&mut json, &claims);
    URL_SAFE_NO_PAD.encode_string(&json, &mut token);
    let signature = key.sign(token.as_bytes())?;
    token.push('.');
    URL_SAFE_NO_PAD.encode_string(signature, &mut token);
    metrics::issued();
    Ok(token)
}

fn b64(segment: &[u8], what: &str) -> Result<Vec<u8>> {
    URL_SAFE_NO_PAD
        .decode(segment)
        .map_err(|_| Error::Decode(format!("the {what} is not base64url without padding")))
}

fn json_object(bytes: &[u8], what: &str) -> Result<Map<String, Value>> {
    match serde_json::from_slice::<Value>(bytes) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(Error::Decode(format!("the {what} is not a JSON object"))),
        Err(_) => Err(Error::Decode(format!("the {what} is not valid UTF-8 JSON"))),
    }
}

/// Where `decode` finds the key for a token: one key, or a [`KeySet`].
pub trait KeySource {
    /// The key for a token whose header carries `kid` (`None`: no `kid` member).
    fn key_for(&self, kid: Option<&str>) -> Result<&Key>;
}

impl KeySource for Key {
    fn key_for(&self, kid: Option<&str>) -> Result<&Key> {
        match kid {
            Some(k) if k != self.kid() => Err(Error::InvalidSignature(format!(
                "the token's kid {k:?} is not this key's"
            ))),
            _ => Ok(self),
        }
    }
}

/// Verifies and decodes a compact JWS, returning its claims; counts the outcome.
pub fn decode(
    token: &[u8],
    keys: &dyn KeySource,
    opts: &DecodeOptions,
) -> Result<Map<String, Value>> {
    let result = decode_uncounted(token, keys, opts);
    match &result {
        Ok(_) => metrics::verified(),
        Err(e) => metrics::rejected(e),
    }
    result
}

fn decode_uncounted(
    token: &[u8],
    keys: &dyn KeySource,
    opts: &DecodeOptions,
) -> Result<Map<String, Value>> {
    if token.len() > MAX_TOKEN_SIZE {
        return Err(Error::Decode(format!(
            "the token is longer than {MAX_TOKEN_SIZE} bytes"
        )));
    }
    let mut parts = token.splitn(4, |b| *b == b'.');
    let (Some(h), Some(p), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(Error::Decode(
            "a token has three base64url segments separated by '.'".into(),
        ));
    };
    let header_bytes = b64(h, "header")?;
    let payload_bytes = b64(p, "payload")?;
    let signature = b64(s, "signature")?;
    let header = json_object(&header_bytes, "header")?;
    let alg = match header.get("alg") {
        Some(Value::String(a)) => a.as_str(),
        Some(_) => return Err(Error::Decode("the header's alg is not a string".into())),
        None => return Err(Error::Decode("the header has no alg".into())),
    };
    let kid = match header.get("kid") {
        Some(Value::String(k)) => Some(k.as_str()),
        Some(_) => return Err(Error::Decode("the header's kid is not a string".into())),
        None => None,
    };
    if alg != "EdDSA" && alg != "Ed25519" {
        return Err(Error::InvalidSignature(format!(
            "the algorithm {alg:?} is not allowed (EdDSA or Ed25519 only)"
        )));
    }
    if header.contains_key("crit") {
        return Err(Error::InvalidSignature(
            "the header has \"crit\": no extension is supported".into(),
        ));
    }
    if signature.len() != 64 {
        return Err(Error::InvalidSignature(
            "the signature is not 64 bytes".into(),
        ));
    }
    let key = keys.key_for(kid)?;
    let signing_input = &token[..h.len() + 1 + p.len()];
    if !key.verify(signing_input, &signature) {
        return Err(Error::InvalidSignature(
            "signature verification failed".into(),
        ));
    }
    let payload = json_object(&payload_bytes, "payload")?;
    claims::validate(&payload, opts)?;
    Ok(payload)
}

/// Keys for verification with rotation, chosen by `kid`. Public-only unless built from private
/// keys ([`KeySet::new`] with signers); [`KeySet::to_jwks`] never writes private members.
#[derive(Debug, Clone)]
pub struct KeySet {
    keys: Vec<Arc<Key>>,
}

impl KeySet {
    /// A set of keys with distinct `kid`s.
    pub fn new(keys: Vec<Arc<Key>>) -> Result<Self> {
        for (i, k) in keys.iter().enumerate() {
            if keys[..i].iter().any(|other| other.kid() == k.kid()) {
                return Err(Error::InvalidArgument(format!(
                    "two keys share the kid {:?}",
                    k.kid()
                )));
            }
        }
        Ok(KeySet { keys })
    }

    /// The public keys of a JWKS (`{"keys": [...]}`); every key must be an Ed25519 OKP key.
    pub fn from_jwks(jwks: &Value) -> Result<Self> {
        let list = match jwks {
            Value::Object(m) => match m.get("keys") {
                Some(Value::Array(list)) => list,
                _ => {
                    return Err(Error::InvalidArgument(
                        "a JWKS is an object with a \"keys\" list".into(),
                    ));
                }
            },
            _ => {
                return Err(Error::InvalidArgument(
                    "a JWKS is an object with a \"keys\" list".into(),
                ));
            }
        };
        let mut keys = Vec::with_capacity(list.len());
        for jwk in list {
            let Value::Object(jwk) = jwk else {
                return Err(Error::InvalidArgument("every JWKS key is an object".into()));
            };
            keys.push(Arc::new(Key::from_jwk(jwk, None, true)?));
        }
        Self::new(keys)
    }

    /// `{"keys": [public JWK, ...]}`.
    pub fn to_jwks(&self) -> Value {
        let keys = self
            .keys
            .iter()
            .map(|k| Value::Object(k.public_jwk()))
            .collect();
        let mut m = Map::new();
        m.insert("keys".into(), Value::Array(keys));
        Value::Object(m)
    }

    pub fn keys(&self) -> &[Arc<Key>] {
        &self.keys
    }

    /// The key with this `kid`, if any.
    pub fn get(&self, kid: &str) -> Option<&Arc<Key>> {
        self.keys.iter().find(|k| k.kid() == kid)
    }
}

impl KeySource for KeySet {
    fn key_for(&self, kid: Option<&str>) -> Result<&Key> {
        match kid {
            Some(kid) => self.get(kid).map(|k| k.as_ref()).ok_or_else(|| {
                Error::InvalidSignature(format!("no key in the set has the kid {kid:?}"))
            }),
            None if self.keys.len() == 1 => Ok(&self.keys[0]),
            None => Err(Error::InvalidSignature(format!(
                "the token has no kid and the set holds {} keys",
                self.keys.len()
            ))),
        }
    }
}
