//! The one helper every binding uses to release the GIL.

use pyo3::Python;
use pyo3::marker::Ungil;

/// Runs `f` with the GIL released.
///
/// Use it for anything that blocks or computes for more than a few microseconds: convert every
/// input into owned Rust values *before* the call, and touch no Python object inside `f` (the
/// `Ungil` bound enforces most of this). Quick operations (a cache lookup) keep the GIL: releasing
/// and re-acquiring it costs more than they do.
#[inline]
pub fn detach<T, F>(py: Python<'_>, f: F) -> T
where
    F: Ungil + FnOnce() -> T,
    T: Ungil,
{
    py.detach(f)
}
