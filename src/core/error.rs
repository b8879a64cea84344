//! The core's error type: what can go wrong below the binding layer, mapped to Python's exception
//! tree in one place (`src/python/errors.rs`).

use std::fmt;

/// Errors raised by the pure-Rust core.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// A caller-supplied value is out of range (Python: `ValueError`).
    InvalidArgument(String),
    /// A cache operation cannot proceed, e.g. a loader re-entering its own key (`CacheError`).
    Cache(String),
    /// A password hash string is malformed or has parameters beyond the caps (`InvalidHashError`).
    InvalidHash(String),
    /// The password does not match the hash (`VerifyMismatchError`).
    VerifyMismatch,
    /// A hash could not be verified for another reason (`VerificationError`).
    Verification(String),
    /// A bounded queue is full, or its pool is shut down (`OverloadedError`).
    Overloaded(String),
    /// An internal invariant failed, e.g. a worker panicked (`RuntimeError`).
    Internal(String),
    /// A token operation cannot proceed, e.g. signing with a public-only key (`TokenError`).
    Token(String),
    /// A token is malformed: segments, base64url, JSON, claim types or size (`DecodeError`).
    Decode(String),
    /// The signature does not verify, the algorithm is not allowed, or no key matches
    /// (`InvalidSignatureError`).
    InvalidSignature(String),
    /// `exp` has passed (`ExpiredSignatureError`).
    ExpiredSignature(String),
    /// `nbf` or `iat` lies in the future (`ImmatureSignatureError`).
    ImmatureSignature(String),
    /// `aud` does not match (`InvalidAudienceError`).
    InvalidAudience(String),
    /// `iss` does not match (`InvalidIssuerError`).
    InvalidIssuer(String),
    /// A required claim is absent (`MissingRequiredClaimError`).
    MissingRequiredClaim(String),
    /// A policy does not parse or compile; nothing was changed (`PolicyCompileError`).
    PolicyCompile(PolicyCompileError),
    /// A policy name is unknown (`PolicyNotFoundError`).
    PolicyNotFound(String),
    /// An evaluation failed: a strict built-in error, a conflict, a limit, or an input beyond the
    /// limits (`PolicyEvaluationError`).
    PolicyEvaluation(String),
}

/// Where and why a policy failed to compile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyCompileError {
    pub message: String,
    /// The policy's name, when the error points into one.
    pub policy: Option<String>,
    /// 1-based line and column of the error, when known.
    pub line: Option<u32>,
    pub column: Option<u32>,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::InvalidArgument(msg)
            | Error::Cache(msg)
            | Error::InvalidHash(msg)
            | Error::Verification(msg)
            | Error::Overloaded(msg)
            | Error::Internal(msg)
            | Error::Token(msg)
            | Error::Decode(msg)
            | Error::InvalidSignature(msg)
            | Error::ExpiredSignature(msg)
            | Error::ImmatureSignature(msg)
            | Error::InvalidAudience(msg)
            | Error::InvalidIssuer(msg)
            | Error::MissingRequiredClaim(msg)
            | Error::PolicyNotFound(msg)
            | Error::PolicyEvaluation(msg) => f.write_str(msg),
            Error::PolicyCompile(e) => f.write_str(&e.message),
            Error::VerifyMismatch => f.write_str("The password does not match the supplied hash"),
        }
    }
}

impl std::error::Error for Error {}

/// The core's result type.
pub type Result<T> = std::result::Result<T, Error>;
