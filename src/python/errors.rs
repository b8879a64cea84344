//! Error mapping, in one place: the core's [`Error`] and the binding layer's own failures become
//! the exception classes defined once in `sark_native/exceptions.py`.

use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::core::error::{Error, PolicyCompileError as CompileFailure};

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
pyo3::import_exception!(sark_native.exceptions, PolicyCompileError);
pyo3::import_exception!(sark_native.exceptions, PolicyNotFoundError);
pyo3::import_exception!(sark_native.exceptions, PolicyEvaluationError);

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
        Error::PolicyCompile(failure) => Python::attach(|py| compile_error(py, failure)),
        Error::PolicyNotFound(msg) => PolicyNotFoundError::new_err(msg),
        Error::PolicyEvaluation(msg) => PolicyEvaluationError::new_err(msg),
    }
}

/// `PolicyCompileError(message, policy=..., line=..., column=...)`: the location as attributes.
fn compile_error(py: Python<'_>, failure: CompileFailure) -> PyErr {
    let build = || -> PyResult<PyErr> {
        let kwargs = PyDict::new(py);
        kwargs.set_item("policy", failure.policy.as_deref())?;
        kwargs.set_item("line", failure.line)?;
        kwargs.set_item("column", failure.column)?;
        let exc = py
            .get_type::<PolicyCompileError>()
            .call((failure.message.as_str(),), Some(&kwargs))?;
        Ok(PyErr::from_value(exc))
    };
    build().unwrap_or_else(|e| e)
}

#[cfg(test)]
mod tests {
    // The mapping needs a Python interpreter; it is tested from Python in
    // tests_py/test_exceptions.py (one case per variant).
}
