//! The pure-Rust core: one module per component, none of them imports pyo3.
pub mod bucket;
pub mod cache;
pub mod clock;
pub mod error;
pub mod hashing;
pub mod ipc;
pub mod policy;
pub mod single_flight;
pub mod tokens;
