//! The ML sidecar's native side: the wire codec and the client state machine (the worker is
//! Python: `sark_native.sidecar`). See `docs/sidecar.md` for the contract.

pub mod client;
pub mod codec;
pub mod metrics;
pub mod process;
