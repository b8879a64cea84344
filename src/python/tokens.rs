//! `sark_native._native.Ed25519Signer` and `KeySet`: the Python face of `core::tokens`. Claims
//! are converted to `serde_json` values with the GIL held; signing, verification and JSON work
//! run with it released.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{
    PyBool, PyByteArray, PyBytes, PyDict, PyFloat, PyInt, PyList, PyString, PyTuple,
};
use serde_json::{Map, Number, Value};

use super::errors::to_py;
use super::gil;
use crate::core::tokens::{
    self, Alg, DecodeOptions, EncodeOptions, Key, KeySet, KeySource, metrics,
};

/// Nesting deeper than this in claims or headers is refused (`ValueError`), on both backends.
const MAX_DEPTH: usize = 64;

fn type_name(obj: &Bound<'_, PyAny>) -> String {
    obj.get_type()
        .name()
        .map(|n| n.to_string())
        .unwrap_or_else(|_| "?".into())
}

fn mapping_type(py: Python<'_>) -> PyResult<&Bound<'_, PyAny>> {
    static MAPPING: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    MAPPING.import(py, "collections.abc", "Mapping")
}

/// A Python value as JSON: dict (str keys), list/tuple, str, int (i64), finite float, bool,
/// None. Anything else is a `TypeError`; NaN, infinities and integers beyond i64 a `ValueError`.
fn to_json(obj: &Bound<'_, PyAny>, depth: usize) -> PyResult<Value> {
    if depth > MAX_DEPTH {
        return Err(PyValueError::new_err(format!(
            "JSON nested deeper than {MAX_DEPTH} levels"
        )));
    }
    if obj.is_none() {
        return Ok(Value::Null);
    }
    if let Ok(s) = obj.cast::<PyString>() {
        return Ok(Value::String(s.to_str()?.to_owned()));
    }
    if obj.is_instance_of::<PyBool>() {
        return Ok(Value::Bool(obj.is_truthy()?));
    }
    if obj.is_instance_of::<PyInt>() {
        return match obj.extract::<i64>() {
            Ok(n) => Ok(Value::from(n)),
            Err(_) => Err(PyValueError::new_err(
                "integers in tokens must fit in 64 bits (-2**63 <= n < 2**63)",
            )),
        };
    }
    if obj.is_instance_of::<PyFloat>() {
        let f: f64 = obj.extract()?;
        return Number::from_f64(f).map(Value::Number).ok_or_else(|| {
            PyValueError::new_err(format!(
                "{f} is not allowed in JSON (NaN and Infinity are not)"
            ))
        });
    }
    if let Ok(d) = obj.cast::<PyDict>() {
        return Ok(Value::Object(dict_to_map(d, depth)?));
    }
    if let Ok(l) = obj.cast::<PyList>() {
        let mut out = Vec::with_capacity(l.len());
        for item in l.iter() {
            out.push(to_json(&item, depth + 1)?);
        }
        return Ok(Value::Array(out));
    }
    if let Ok(t) = obj.cast::<PyTuple>() {
        let mut out = Vec::with_capacity(t.len());
        for item in t.iter() {
            out.push(to_json(&item, depth + 1)?);
        }
        return Ok(Value::Array(out));
    }
    Err(PyTypeError::new_err(format!(
        "a {} is not JSON serializable",
        type_name(obj)
    )))
}

fn dict_to_map(d: &Bound<'_, PyDict>, depth: usize) -> PyResult<Map<String, Value>> {
    let mut map = Map::with_capacity(d.len());
    for (k, v) in d.iter() {
        let Ok(k) = k.cast::<PyString>() else {
            return Err(PyTypeError::new_err(format!(
                "JSON object keys must be str, not {}",
                type_name(&k)
            )));
        };
        map.insert(k.to_str()?.to_owned(), to_json(&v, depth + 1)?);
    }
    Ok(map)
}

/// A mapping argument (claims, headers, a JWK) as a JSON object.
fn mapping_arg(obj: &Bound<'_, PyAny>, what: &str) -> PyResult<Map<String, Value>> {
    if let Ok(d) = obj.cast::<PyDict>() {
        return dict_to_map(d, 0);
    }
    if obj.is_instance(mapping_type(obj.py())?)? {
        let d = PyDict::new(obj.py());
        d.update(obj.cast()?)?;
        return dict_to_map(&d, 0);
    }
    Err(PyTypeError::new_err(format!(
        "{what} must be a mapping, not {}",
        type_name(obj)
    )))
}

fn to_py_value<'py>(py: Python<'py>, value: &Value) -> PyResult<Bound<'py, PyAny>> {
    Ok(match value {
        Value::Null => py.None().into_bound(py),
        Value::Bool(b) => PyBool::new(py, *b).to_owned().into_any(),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                i.into_pyobject(py)?.into_any()
            } else if let Some(u) = n.as_u64() {
                u.into_pyobject(py)?.into_any()
            } else {
                n.as_f64().unwrap_or(f64::NAN).into_pyobject(py)?.into_any()
            }
        }
        Value::String(s) => PyString::new(py, s).into_any(),
        Value::Array(items) => {
            let list = PyList::empty(py);
            for item in items {
                list.append(to_py_value(py, item)?)?;
            }
            list.into_any()
        }
        Value::Object(map) => map_to_py(py, map)?.into_any(),
    })
}

fn map_to_py<'py>(py: Python<'py>, map: &Map<String, Value>) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    for (k, v) in map {
        d.set_item(k, to_py_value(py, v)?)?;
    }
    Ok(d)
}

/// `bytes` or `bytearray` (anything else is a `TypeError`).
fn bytes_arg(obj: &Bound<'_, PyAny>, what: &str) -> PyResult<Vec<u8>> {
    if let Ok(b) = obj.cast::<PyBytes>() {
        return Ok(b.as_bytes().to_vec());
    }
    if let Ok(b) = obj.cast::<PyByteArray>() {
        return Ok(b.to_vec());
    }
    Err(PyTypeError::new_err(format!(
        "{what} must be bytes, not {}",
        type_name(obj)
    )))
}

/// A token: `str` (ASCII in practice) or `bytes`.
fn token_arg(obj: &Bound<'_, PyAny>) -> PyResult<Vec<u8>> {
    if let Ok(s) = obj.cast::<PyString>() {
        return match s.to_str() {
            Ok(text) => Ok(text.as_bytes().to_vec()),
            // Lone surrogates cannot be in a valid token.
            Err(_) => {
                let err = crate::core::error::Error::Decode("the token is not ASCII".into());
                metrics::rejected(&err);
                Err(to_py(err))
            }
        };
    }
    if obj.is_instance_of::<PyBytes>() || obj.is_instance_of::<PyByteArray>() {
        return bytes_arg(obj, "token");
    }
    Err(PyTypeError::new_err(format!(
        "token must be str or bytes, not {}",
        type_name(obj)
    )))
}

/// A PEM: `str` or `bytes` (UTF-8).
fn pem_arg(obj: &Bound<'_, PyAny>) -> PyResult<String> {
    if let Ok(s) = obj.cast::<PyString>() {
        return Ok(s.to_str()?.to_owned());
    }
    let raw = bytes_arg(obj, "pem")?;
    String::from_utf8(raw).map_err(|_| PyValueError::new_err("a PEM is ASCII text"))
}

/// A number of seconds: an int or float (not bool), or a `datetime.timedelta`.
fn seconds_arg(obj: &Bound<'_, PyAny>, what: &str) -> PyResult<f64> {
    if obj.is_instance_of::<PyBool>()
        || !(obj.is_instance_of::<PyInt>() || obj.is_instance_of::<PyFloat>())
    {
        if obj.hasattr("total_seconds")? && !obj.is_instance_of::<PyBool>() {
            return obj.call_method0("total_seconds")?.extract();
        }
        return Err(PyTypeError::new_err(format!(
            "{what} must be a number of seconds, not {}",
            type_name(obj)
        )));
    }
    obj.extract()
}

fn now_arg(now: Option<&Bound<'_, PyAny>>) -> PyResult<f64> {
    match now {
        Some(n) if !n.is_none() => seconds_arg(n, "now"),
        _ => Ok(SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0)),
    }
}

/// `None`, a str, or an iterable of str.
fn names_arg(obj: Option<&Bound<'_, PyAny>>, what: &str) -> PyResult<Option<Vec<String>>> {
    let Some(obj) = obj else { return Ok(None) };
    if obj.is_none() {
        return Ok(None);
    }
    if let Ok(s) = obj.cast::<PyString>() {
        return Ok(Some(vec![s.to_str()?.to_owned()]));
    }
    let mut out = Vec::new();
    for item in obj.try_iter().map_err(|_| {
        PyTypeError::new_err(format!(
            "{what} must be a str or an iterable of str, not {}",
            type_name(obj)
        ))
    })? {
        let item = item?;
        let Ok(s) = item.cast::<PyString>() else {
            return Err(PyTypeError::new_err(format!(
                "{what} must hold str, not {}",
                type_name(&item)
            )));
        };
        out.push(s.to_str()?.to_owned());
    }
    Ok(Some(out))
}

fn kid_arg(kid: Option<&Bound<'_, PyAny>>) -> PyResult<Option<String>> {
    match kid {
        None => Ok(None),
        Some(k) if k.is_none() => Ok(None),
        Some(k) => match k.cast::<PyString>() {
            Ok(s) => Ok(Some(s.to_str()?.to_owned())),
            Err(_) => Err(PyTypeError::new_err(format!(
                "kid must be a str, not {}",
                type_name(k)
            ))),
        },
    }
}

fn encode_options(
    headers: Option<&Bound<'_, PyAny>>,
    expires_in: Option<&Bound<'_, PyAny>>,
    alg: &str,
    now: Option<&Bound<'_, PyAny>>,
) -> PyResult<EncodeOptions> {
    let headers = match headers {
        Some(h) if !h.is_none() => Some(mapping_arg(h, "headers")?),
        _ => None,
    };
    let expires_in = match expires_in {
        Some(e) if !e.is_none() => Some(seconds_arg(e, "expires_in")?),
        _ => None,
    };
    let opts = EncodeOptions {
        alg: Alg::parse(alg).map_err(to_py)?,
        headers,
        expires_in,
        now: now_arg(now)?,
    };
    tokens::check_encode_options(&opts).map_err(to_py)?;
    Ok(opts)
}

fn decode_options(
    audience: Option<&Bound<'_, PyAny>>,
    issuer: Option<&Bound<'_, PyAny>>,
    leeway: f64,
    require: Option<&Bound<'_, PyAny>>,
    now: Option<&Bound<'_, PyAny>>,
) -> PyResult<DecodeOptions> {
    let require = match require {
        None => vec!["exp".to_owned()],
        Some(r) => names_arg(Some(r), "require")?.unwrap_or_default(),
    };
    let opts = DecodeOptions {
        audience: names_arg(audience, "audience")?,
        issuer: names_arg(issuer, "issuer")?,
        leeway,
        require,
        now: now_arg(now)?,
    };
    opts.check().map_err(to_py)?;
    Ok(opts)
}

fn encode_with(
    py: Python<'_>,
    key: &Key,
    claims: &Bound<'_, PyAny>,
    opts: EncodeOptions,
) -> PyResult<String> {
    let claims = mapping_arg(claims, "claims")?;
    gil::detach(py, || tokens::encode(key, claims, &opts)).map_err(to_py)
}

fn decode_with<'py>(
    py: Python<'py>,
    keys: &(dyn KeySource + Sync),
    token: &Bound<'py, PyAny>,
    opts: DecodeOptions,
) -> PyResult<Bound<'py, PyDict>> {
    let token = token_arg(token)?;
    let claims = gil::detach(py, || tokens::decode(&token, keys, &opts)).map_err(to_py)?;
    map_to_py(py, &claims)
}

/// An Ed25519 signing key with its `kid`. See `sark_native.Ed25519Signer`.
#[pyclass(name = "Ed25519Signer", module = "sark_native._native", frozen)]
pub struct PyEd25519Signer {
    key: Arc<Key>,
}

#[pymethods]
impl PyEd25519Signer {
    /// A new key from the operating system's randomness.
    #[staticmethod]
    #[pyo3(signature = (kid = None))]
    fn generate(kid: Option<&Bound<'_, PyAny>>) -> PyResult<Self> {
        Ok(PyEd25519Signer {
            key: Arc::new(Key::generate(kid_arg(kid)?).map_err(to_py)?),
        })
    }

    /// A key from a PKCS#8 private-key PEM (str or bytes).
    #[staticmethod]
    #[pyo3(signature = (pem, kid = None))]
    fn from_pem(pem: &Bound<'_, PyAny>, kid: Option<&Bound<'_, PyAny>>) -> PyResult<Self> {
        let pem = zeroize::Zeroizing::new(pem_arg(pem)?);
        Ok(PyEd25519Signer {
            key: Arc::new(Key::from_private_pem(&pem, kid_arg(kid)?).map_err(to_py)?),
        })
    }

    /// A key from a private RFC 8037 JWK (`kty` OKP, `crv` Ed25519, `x`, `d`).
    #[staticmethod]
    #[pyo3(signature = (jwk, kid = None))]
    fn from_jwk(jwk: &Bound<'_, PyAny>, kid: Option<&Bound<'_, PyAny>>) -> PyResult<Self> {
        let jwk = mapping_arg(jwk, "jwk")?;
        let key = Key::from_jwk(&jwk, kid_arg(kid)?, false).map_err(to_py)?;
        if !key.has_private() {
            return Err(PyValueError::new_err(
                "the JWK has no \"d\": a signer needs a private key (use KeySet.from_jwks to verify)",
            ));
        }
        Ok(PyEd25519Signer { key: Arc::new(key) })
    }

    #[getter]
    fn kid(&self) -> &str {
        self.key.kid()
    }

    #[getter]
    fn backend(&self) -> &'static str {
        "rust"
    }

    /// The RFC 7638 thumbprint of the public key.
    fn thumbprint(&self) -> String {
        self.key.thumbprint()
    }

    /// The private key as PKCS#8 PEM.
    fn private_pem<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyBytes>> {
        let pem = self.key.private_pem().map_err(to_py)?;
        Ok(PyBytes::new(py, pem.as_bytes()))
    }

    /// The public key as SPKI PEM.
    fn public_pem<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, self.key.public_pem().as_bytes())
    }

    /// `{"kty", "crv", "x", "kid", "use"}`.
    fn public_jwk<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        map_to_py(py, &self.key.public_jwk())
    }

    /// The public JWK plus `d`.
    fn private_jwk<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let (public, d) = self.key.private_jwk().map_err(to_py)?;
        let out = map_to_py(py, &public)?;
        out.set_item("d", d.as_str())?;
        Ok(out)
    }

    /// The 64-byte Ed25519 signature of `data`.
    fn sign<'py>(
        &self,
        py: Python<'py>,
        data: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyBytes>> {
        let data = bytes_arg(data, "data")?;
        let key = &self.key;
        let signature = gil::detach(py, || key.sign(&data)).map_err(to_py)?;
        Ok(PyBytes::new(py, &signature))
    }

    /// `True` when `signature` is a valid (strictly verified) signature of `data`.
    fn verify(
        &self,
        py: Python<'_>,
        data: &Bound<'_, PyAny>,
        signature: &Bound<'_, PyAny>,
    ) -> PyResult<bool> {
        let data = bytes_arg(data, "data")?;
        let signature = bytes_arg(signature, "signature")?;
        let key = &self.key;
        Ok(gil::detach(py, || key.verify(&data, &signature)))
    }

    /// A compact JWS (JWT) of `claims`. See `sark_native.Ed25519Signer.encode`.
    #[pyo3(signature = (claims, *, headers = None, expires_in = None, alg = "EdDSA", now = None))]
    fn encode(
        &self,
        py: Python<'_>,
        claims: &Bound<'_, PyAny>,
        headers: Option<&Bound<'_, PyAny>>,
        expires_in: Option<&Bound<'_, PyAny>>,
        alg: &str,
        now: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<String> {
        let opts = encode_options(headers, expires_in, alg, now)?;
        encode_with(py, &self.key, claims, opts)
    }

    /// The verified claims of `token`. See `sark_native.Ed25519Signer.decode`.
    #[pyo3(signature = (token, *, audience = None, issuer = None, leeway = 0.0, require = None, now = None))]
    #[allow(
        clippy::too_many_arguments,
        reason = "one parameter per keyword argument of the Python method"
    )]
    fn decode<'py>(
        &self,
        py: Python<'py>,
        token: &Bound<'py, PyAny>,
        audience: Option<&Bound<'py, PyAny>>,
        issuer: Option<&Bound<'py, PyAny>>,
        leeway: f64,
        require: Option<&Bound<'py, PyAny>>,
        now: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyDict>> {
        let opts = decode_options(audience, issuer, leeway, require, now)?;
        decode_with(py, self.key.as_ref(), token, opts)
    }

    fn __repr__(&self) -> String {
        format!("Ed25519Signer(kid={:?}, backend='rust')", self.key.kid())
    }
}

/// Keys for verification with rotation. See `sark_native.KeySet`.
#[pyclass(name = "KeySet", module = "sark_native._native", frozen)]
pub struct PyKeySet {
    set: KeySet,
}

#[pymethods]
impl PyKeySet {
    /// The public keys of a JWKS: a mapping `{"keys": [...]}` or its JSON text.
    #[staticmethod]
    fn from_jwks(jwks: &Bound<'_, PyAny>) -> PyResult<Self> {
        let value = if let Ok(s) = jwks.cast::<PyString>() {
            serde_json::from_str::<Value>(s.to_str()?)
                .map_err(|e| PyValueError::new_err(format!("the JWKS is not JSON: {e}")))?
        } else if jwks.is_instance_of::<PyBytes>() {
            serde_json::from_slice::<Value>(jwks.cast::<PyBytes>()?.as_bytes())
                .map_err(|e| PyValueError::new_err(format!("the JWKS is not JSON: {e}")))?
        } else {
            Value::Object(mapping_arg(jwks, "jwks")?)
        };
        Ok(PyKeySet {
            set: KeySet::from_jwks(&value).map_err(to_py)?,
        })
    }

    /// A set of the given signers (native ones): it can sign as well as verify.
    #[staticmethod]
    fn from_signers(signers: &Bound<'_, PyAny>) -> PyResult<Self> {
        let mut keys = Vec::new();
        for item in signers.try_iter()? {
            let item = item?;
            let signer = item.cast::<PyEd25519Signer>().map_err(|_| {
                PyTypeError::new_err(format!(
                    "from_signers takes Ed25519Signer objects, not {}",
                    type_name(&item)
                ))
            })?;
            keys.push(signer.get().key.clone());
        }
        Ok(PyKeySet {
            set: KeySet::new(keys).map_err(to_py)?,
        })
    }

    /// `{"keys": [public JWK, ...]}` (never private members).
    fn to_jwks<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        to_py_value(py, &self.set.to_jwks())
    }

    #[getter]
    fn kids(&self) -> Vec<String> {
        self.set.keys().iter().map(|k| k.kid().to_owned()).collect()
    }

    #[getter]
    fn backend(&self) -> &'static str {
        "rust"
    }

    fn __len__(&self) -> usize {
        self.set.keys().len()
    }

    fn __contains__(&self, kid: &Bound<'_, PyAny>) -> bool {
        match kid.cast::<PyString>() {
            Ok(s) => s.to_str().is_ok_and(|k| self.set.get(k).is_some()),
            Err(_) => false,
        }
    }

    /// A compact JWS signed by the key `kid` (default: the only private key of the set).
    #[pyo3(signature = (claims, *, kid = None, headers = None, expires_in = None, alg = "EdDSA", now = None))]
    #[allow(
        clippy::too_many_arguments,
        reason = "one parameter per keyword argument of the Python method"
    )]
    fn encode(
        &self,
        py: Python<'_>,
        claims: &Bound<'_, PyAny>,
        kid: Option<&Bound<'_, PyAny>>,
        headers: Option<&Bound<'_, PyAny>>,
        expires_in: Option<&Bound<'_, PyAny>>,
        alg: &str,
        now: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<String> {
        let kid = kid_arg(kid)?;
        let key = self.signing_key(kid.as_deref())?;
        let opts = encode_options(headers, expires_in, alg, now)?;
        encode_with(py, key, claims, opts)
    }

    /// The verified claims of `token`, checked with the key its `kid` names.
    #[pyo3(signature = (token, *, audience = None, issuer = None, leeway = 0.0, require = None, now = None))]
    #[allow(
        clippy::too_many_arguments,
        reason = "one parameter per keyword argument of the Python method"
    )]
    fn decode<'py>(
        &self,
        py: Python<'py>,
        token: &Bound<'py, PyAny>,
        audience: Option<&Bound<'py, PyAny>>,
        issuer: Option<&Bound<'py, PyAny>>,
        leeway: f64,
        require: Option<&Bound<'py, PyAny>>,
        now: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyDict>> {
        let opts = decode_options(audience, issuer, leeway, require, now)?;
        decode_with(py, &self.set, token, opts)
    }

    fn __repr__(&self) -> String {
        format!("KeySet(kids={:?}, backend='rust')", self.kids())
    }
}

impl PyKeySet {
    fn signing_key(&self, kid: Option<&str>) -> PyResult<&Key> {
        let err = |msg: String| to_py(crate::core::error::Error::Token(msg));
        match kid {
            Some(kid) => {
                let key = self
                    .set
                    .get(kid)
                    .ok_or_else(|| err(format!("no key in the set has the kid {kid:?}")))?;
                if !key.has_private() {
                    return Err(err(format!("key {kid:?} is public-only: it cannot sign")));
                }
                Ok(key)
            }
            None => {
                let mut private = self.set.keys().iter().filter(|k| k.has_private());
                match (private.next(), private.next()) {
                    (Some(k), None) => Ok(k),
                    (None, _) => Err(err("the key set is public-only: it cannot sign".into())),
                    (Some(_), Some(_)) => Err(err(
                        "the key set holds several private keys: pass kid=".into(),
                    )),
                }
            }
        }
    }
}

/// `{"issued", "verified", "rejected": {reason: count}}` of the native token path.
#[pyfunction]
pub fn _token_metrics(py: Python<'_>) -> PyResult<Bound<'_, PyDict>> {
    let s = metrics::snapshot();
    let d = PyDict::new(py);
    d.set_item("issued", s.issued)?;
    d.set_item("verified", s.verified)?;
    let rejected = PyDict::new(py);
    for (reason, n) in s.rejected {
        rejected.set_item(reason, n)?;
    }
    d.set_item("rejected", rejected)?;
    Ok(d)
}
