//! Error mapping, in one place: the core's [`Error`] and the binding layer's own failures become
//! the exception classes defined once in `sark_native/exceptions.py`.

use pyo3::PyErr;
use pyo3::exceptions::{PyRuntimeError, PyValueError};

use crate::core::error::Error;

pyo3::import_exception!(sark_native.exceptions, CacheError);
pyo3::import_exception!(sark_native.exceptions, InvalidHashError);
pyo3::import_exception!(sark_native.exceptions, VerifyMismatchError);
pyo3::import_exception!(sark_native.exceptions, VerificationError);
pyo3::import_exception!(sark_native.exceptions, OverloadedError);
pyo3::import_exception!(sark_native.exceptions, TokenError);
pyo3::import_exception!(sark_native.exceptions, DecodeError);
pyo3::import_exception!(sark_native.exceptions, InvalidSignatureError);
pyo3::import_exception!(sark_native.exceptions, ExpiredSignatureError);
pyo3::import_exception!(sark_native.exceptions, ImmatureSignatureError);
pyo3::import_exception!(sark_native.exceptions, InvalidAudienceError);
pyo3::import_exception!(sark_native.exceptions, InvalidIssuerError);
pyo3::import_exception!(sark_native.exceptions, MissingRequiredClaimError);

/// Maps a core error to its Python exception.
pub fn to_py(err: Error) -> PyErr {
    match err {
        Error::InvalidArgument(msg) => PyValueError::new_err(msg),
        Error::Cache(msg) => CacheError::new_err(msg),
        Error::InvalidHash(msg) => InvalidHashError::new_err(msg),
        Error::VerifyMismatch => VerifyMismatchError::new_err(Error::VerifyMismatch.to_string()),
        Error::Verification(msg) => VerificationError::new_err(msg),
        Error::Overloaded(msg) => OverloadedError::new_err(msg),
        Error::Internal(msg) => PyRuntimeError::new_err(msg),
        Error::Token(msg) => TokenError::new_err(msg),
        Error::Decode(msg) => DecodeError::new_err(msg),
        Error::InvalidSignature(msg) => InvalidSignatureError::new_err(msg),
        Error::ExpiredSignature(msg) => ExpiredSignatureError::new_err(msg),
        Error::ImmatureSignature(msg) => ImmatureSignatureError::new_err(msg),
        Error::InvalidAudience(msg) => InvalidAudienceError::new_err(msg),
        Error::InvalidIssuer(msg) => InvalidIssuerError::new_err(msg),
        Error::MissingRequiredClaim(msg) => MissingRequiredClaimError::new_err(msg),
    }
}

#[cfg(test)]
mod tests {
    // The mapping needs a Python interpreter; it is tested from Python in
    // tests_py/test_exceptions.py (one case per variant).
}
