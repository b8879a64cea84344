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

/// Maps a core error to its Python exception.
pub fn to_py(err: Error) -> PyErr {
    let msg = err.to_string();
    match err {
        Error::InvalidArgument(_) => PyValueError::new_err(msg),
        Error::Cache(_) => CacheError::new_err(msg),
        Error::InvalidHash(_) => InvalidHashError::new_err(msg),
        Error::VerifyMismatch => VerifyMismatchError::new_err(msg),
        Error::Verification(_) => VerificationError::new_err(msg),
        Error::Overloaded(_) => OverloadedError::new_err(msg),
        Error::Internal(_) => PyRuntimeError::new_err(msg),
    }
}

#[cfg(test)]
mod tests {
    // The mapping needs a Python interpreter; it is tested from Python in
    // tests_py/test_exceptions.py (one case per variant).
}
