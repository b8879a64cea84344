//! sark-native: native hot paths for a FastAPI security gateway.
//!
//! `core` is plain Rust with no knowledge of Python and is tested with `cargo test`;
//! `python` (feature `python`) is the binding layer only: conversion, GIL release and
//! error mapping.
pub mod core;

#[cfg(feature = "python")]
mod python;

/// The extension's own allocations (not Python's) go to mimalloc: regorus allocates and frees many
/// small values per evaluation, often on another thread than the one that made them (inputs are
/// converted on the caller's thread and dropped on a pool thread), where glibc's arenas are slow.
#[cfg(feature = "python")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
