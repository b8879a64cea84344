//! `sark_native._native.bucket`: the Python face of `core::bucket`.

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

use crate::core::bucket as core_bucket;

/// bucket(feature, unit_id) -> int in 0..100: murmur3 x86_32 (seed 0) of the UTF-8 of
/// `feature + ":" + unit_id`, modulo 100 (Unleash's normalizedHash - 1).
///
/// Both arguments must be str (`TypeError` otherwise); an empty feature or a str that is not
/// encodable as UTF-8 (lone surrogates) raises `ValueError` (`UnicodeEncodeError`), as the
/// pure-Python twin does. Quick: it keeps the GIL.
#[pyfunction]
pub fn bucket(feature: &str, unit_id: &str) -> PyResult<u32> {
    if feature.is_empty() {
        return Err(PyValueError::new_err("feature must be a non-empty str"));
    }
    Ok(core_bucket::bucket(feature, unit_id))
}
