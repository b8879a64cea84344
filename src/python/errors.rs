//! Error mapping, in one place: the core's [`Error`] and the binding layer's own failures become
//! the exception classes defined once in `sark_native/exceptions.py`.

use pyo3::PyErr;
use pyo3::exceptions::PyValueError;

use crate::core::error::Error;

pyo3::import_exception!(sark_native.exceptions, CacheError);

/// Maps a core error to its Python exception.
pub fn to_py(err: Error) -> PyErr {
    match err {
        Error::InvalidArgument(msg) => PyValueError::new_err(msg),
        Error::Cache(msg) => CacheError::new_err(msg),
    }
}

#[cfg(test)]
mod tests {
    // The mapping needs a Python interpreter; it is tested from Python in
    // tests_py/test_exceptions.py (one case per variant).
}
