//! sark-native: native hot paths for a FastAPI security gateway.
//!
//! `core` is plain Rust with no knowledge of Python and is tested with `cargo test`;
//! `python` (feature `python`) is the binding layer only: conversion, GIL release and
//! error mapping.
pub mod core;

#[cfg(feature = "python")]
mod python;
