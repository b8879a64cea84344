//! `sark_native._native.bucket` and `RolloutTable`: the Python face of `core::bucket`.

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

use std::collections::HashMap;

use crate::core::bucket as core_bucket;
use crate::core::bucket::{BUCKETS, RolloutTable};

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

/// `RolloutTable`: percentages by feature and decision counters in Rust atomics, so
/// `FeatureFlags.is_enabled` makes one native call per request and metrics cost nothing there.
#[pyclass(name = "RolloutTable", module = "sark_native._native", frozen)]
pub struct PyRolloutTable {
    inner: RolloutTable,
}

#[pymethods]
impl PyRolloutTable {
    #[new]
    fn new() -> Self {
        Self {
            inner: RolloutTable::new(),
        }
    }

    /// Whether `unit_id` is in `feature`'s rollout; counted. Unknown features are 0%.
    fn is_enabled(&self, feature: &str, unit_id: &str) -> bool {
        self.inner.is_enabled(feature, unit_id)
    }

    /// The percentage in force for `feature` (0 when unknown).
    fn get(&self, feature: &str) -> u32 {
        self.inner.get(feature)
    }

    /// Sets one percentage (0..=100); returns the previous one.
    fn set(&self, feature: &str, pct: u32) -> PyResult<u32> {
        if pct > BUCKETS {
            return Err(PyValueError::new_err("percentage must be from 0 to 100"));
        }
        Ok(self.inner.set(feature, pct))
    }

    /// Replaces every percentage at once with `snapshot` (feature -> 0..=100).
    fn replace_all(&self, snapshot: HashMap<String, u32>) -> PyResult<()> {
        if snapshot.values().any(|&p| p > BUCKETS) {
            return Err(PyValueError::new_err("percentages must be from 0 to 100"));
        }
        self.inner
            .replace_all(snapshot.iter().map(|(k, v)| (k.as_str(), *v)));
        Ok(())
    }

    /// `{feature: percentage}` for every feature whose percentage was set.
    fn percentages(&self) -> HashMap<String, u32> {
        self.inner.percentages().into_iter().collect()
    }

    /// `[(feature, times no, times yes)]` for every feature asked about.
    fn assignments(&self) -> Vec<(String, u64, u64)> {
        self.inner.assignments()
    }
}
