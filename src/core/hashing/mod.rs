//! Argon2id password hashing compatible with argon2-cffi: hash and verify PHC strings, with caps
//! on the parameters a stored hash may ask for, run on one bounded worker pool per process
//! ([`pool`]), counted in [`metrics`].
//!
//! The functions here are pure computations over a caller-supplied memory block; the pool gives
//! each worker its own block and reuses it between hashes (faulting in a fresh 64 MiB block per
//! hash costs about a fifth of the hash in the kernel).

pub mod metrics;
pub mod phc;
pub mod pool;

use std::time::Instant;

pub use argon2::{Algorithm, Block, Version};
use argon2::{Argon2, AssociatedData, ParamsBuilder};
use subtle::ConstantTimeEq;

use self::phc::Phc;
use crate::core::error::{Error, Result};

/// A worker's reusable Argon2 memory.
pub type Memory = Vec<Block>;

/// The hasher's settings: what new hashes use, and the caps on what a stored hash may ask for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub time_cost: u32,
    /// KiB.
    pub memory_cost: u32,
    pub parallelism: u32,
    pub hash_len: u32,
    pub salt_len: u32,
    /// Longest password accepted, in bytes (UTF-8 for str), by hash and verify alike.
    pub max_password_len: usize,
    pub max_time_cost: u32,
    /// KiB.
    pub max_memory_cost: u32,
    pub max_parallelism: u32,
}

impl Default for Config {
    /// argon2-cffi's defaults (RFC 9106's second recommendation) and the project's caps.
    fn default() -> Self {
        Config {
            time_cost: 3,
            memory_cost: 65536,
            parallelism: 1,
            hash_len: 32,
            salt_len: 16,
            max_password_len: 4096,
            max_time_cost: 16,
            max_memory_cost: 262_144,
            max_parallelism: 16,
        }
    }
}

/// The exact inputs of one Argon2 computation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Spec {
    pub algorithm: Algorithm,
    pub version: Version,
    /// KiB.
    pub m_cost: u32,
    pub t_cost: u32,
    pub p_cost: u32,
}

impl Spec {
    /// 1 KiB blocks this computation needs (m rounded down to a multiple of 4p).
    pub fn blocks(&self) -> usize {
        let lanes = self.p_cost as usize;
        let m = (self.m_cost as usize).max(8 * lanes);
        m / (4 * lanes) * 4 * lanes
    }
}

fn invalid(msg: String) -> Error {
    Error::InvalidArgument(msg)
}

/// Computes Argon2 into `out` using (and growing when needed) `memory`.
///
/// `secret` and `associated_data` are empty for PHC hashes; they are here for RFC 9106's test
/// vectors.
pub fn compute(
    spec: &Spec,
    password: &[u8],
    salt: &[u8],
    secret: &[u8],
    associated_data: &[u8],
    out: &mut [u8],
    memory: &mut Memory,
) -> Result<()> {
    let internal = |e: argon2::Error| Error::Verification(format!("Argon2 failed: {e}"));
    let mut builder = ParamsBuilder::new();
    builder
        .m_cost(spec.m_cost)
        .t_cost(spec.t_cost)
        .p_cost(spec.p_cost)
        .output_len(out.len());
    if !associated_data.is_empty() {
        builder.data(AssociatedData::new(associated_data).map_err(internal)?);
    }
    let params = builder.build().map_err(internal)?;
    let blocks = params.block_count();
    grow(memory, blocks);
    let ctx = if secret.is_empty() {
        Argon2::new(spec.algorithm, spec.version, params)
    } else {
        Argon2::new_with_secret(secret, spec.algorithm, spec.version, params).map_err(internal)?
    };
    ctx.hash_password_into_with_memory(password, salt, out, &mut memory[..blocks])
        .map_err(internal)
}

/// Grows `memory` to `blocks` blocks. A new allocation is advised for transparent huge pages
/// before its first touch: Argon2 reads blocks all over its memory, and with 4 KiB pages most
/// of those reads also miss the TLB (64 MiB is 16384 pages, 32 huge pages).
fn grow(memory: &mut Memory, blocks: usize) {
    if memory.len() >= blocks {
        return;
    }
    if memory.capacity() < blocks {
        *memory = Vec::new(); // free the old block first: the peak stays one block
        let mut fresh: Memory = Vec::with_capacity(blocks);
        advise_huge_pages(fresh.as_mut_ptr().cast(), blocks * Block::SIZE);
        *memory = fresh;
    }
    memory.resize(blocks, Block::new());
}

#[cfg(target_os = "linux")]
fn advise_huge_pages(ptr: *mut u8, len: usize) {
    const HUGE: usize = 2 << 20;
    let start = (ptr as usize).next_multiple_of(HUGE);
    let end = (ptr as usize + len) & !(HUGE - 1);
    if end > start {
        // SAFETY: [start, end) lies inside the allocation just made; madvise only sets a hint
        // and its failure (THP disabled, old kernel) changes nothing.
        unsafe {
            libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_HUGEPAGE);
        }
    }
}

#[cfg(not(target_os = "linux"))]
fn advise_huge_pages(_ptr: *mut u8, _len: usize) {}

/// An Argon2id hasher with validated settings. Cheap to clone; holds no memory itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hasher {
    config: Config,
}

impl Hasher {
    /// Validates `config`: `InvalidArgument` for parameters Argon2 refuses or beyond the caps.
    pub fn new(config: Config) -> Result<Self> {
        let c = &config;
        if c.parallelism < 1 || c.parallelism > 0x00FF_FFFF {
            return Err(invalid(format!(
                "parallelism must be >= 1, got {}",
                c.parallelism
            )));
        }
        if c.time_cost < 1 {
            return Err(invalid(format!(
                "time_cost must be >= 1, got {}",
                c.time_cost
            )));
        }
        if u64::from(c.memory_cost) < 8 * u64::from(c.parallelism) {
            return Err(invalid(format!(
                "memory_cost must be >= 8 * parallelism ({}), got {}",
                8 * u64::from(c.parallelism),
                c.memory_cost
            )));
        }
        if !(phc::MIN_HASH_LEN as u32..=phc::MAX_BYTES_LEN as u32).contains(&c.hash_len) {
            return Err(invalid(format!(
                "hash_len must be between {} and {}, got {}",
                phc::MIN_HASH_LEN,
                phc::MAX_BYTES_LEN,
                c.hash_len
            )));
        }
        if !(phc::MIN_SALT_LEN as u32..=phc::MAX_BYTES_LEN as u32).contains(&c.salt_len) {
            return Err(invalid(format!(
                "salt_len must be between {} and {}, got {}",
                phc::MIN_SALT_LEN,
                phc::MAX_BYTES_LEN,
                c.salt_len
            )));
        }
        if c.max_password_len < 1 {
            return Err(invalid("max_password_len must be >= 1".into()));
        }
        if c.max_time_cost < 1 || c.max_parallelism < 1 || c.max_memory_cost < 8 {
            return Err(invalid(
                "the caps must be >= 1 (max_memory_cost >= 8)".into(),
            ));
        }
        if c.time_cost > c.max_time_cost
            || c.memory_cost > c.max_memory_cost
            || c.parallelism > c.max_parallelism
        {
            return Err(invalid(format!(
                "parameters beyond the caps (t <= {}, m <= {} KiB, p <= {})",
                c.max_time_cost, c.max_memory_cost, c.max_parallelism
            )));
        }
        Ok(Hasher { config })
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The spec of new hashes.
    pub fn spec(&self) -> Spec {
        Spec {
            algorithm: Algorithm::Argon2id,
            version: Version::V0x13,
            m_cost: self.config.memory_cost,
            t_cost: self.config.time_cost,
            p_cost: self.config.parallelism,
        }
    }

    /// `InvalidArgument` when the password is longer than the cap.
    pub fn check_password(&self, password: &[u8]) -> Result<()> {
        if password.len() > self.config.max_password_len {
            return Err(invalid(format!(
                "password is longer than {} bytes",
                self.config.max_password_len
            )));
        }
        Ok(())
    }

    /// Parses `phc` and checks its parameters against the caps (`InvalidHash` beyond them).
    pub fn parse_capped(&self, phc_str: &str) -> Result<Phc> {
        let phc = phc::parse(phc_str)?;
        let c = &self.config;
        if phc.t_cost > c.max_time_cost
            || phc.m_cost > c.max_memory_cost
            || phc.p_cost > c.max_parallelism
        {
            return Err(Error::InvalidHash(format!(
                "hash parameters m={},t={},p={} are beyond the caps (m <= {}, t <= {}, p <= {})",
                phc.m_cost,
                phc.t_cost,
                phc.p_cost,
                c.max_memory_cost,
                c.max_time_cost,
                c.max_parallelism
            )));
        }
        Ok(phc)
    }

    /// Hashes `password` with a fresh random salt into a PHC string.
    pub fn hash(&self, password: &[u8], memory: &mut Memory) -> Result<String> {
        self.check_password(password)?;
        let mut salt = vec![0u8; self.config.salt_len as usize];
        getrandom::fill(&mut salt)
            .map_err(|e| Error::Internal(format!("no OS randomness for the salt: {e}")))?;
        let spec = self.spec();
        let mut hash = vec![0u8; self.config.hash_len as usize];
        let started = Instant::now();
        let result = compute(&spec, password, &salt, &[], &[], &mut hash, memory);
        let outcome = if result.is_ok() {
            metrics::Outcome::Ok
        } else {
            metrics::Outcome::Error
        };
        metrics::record(metrics::Op::Hash, outcome, started.elapsed());
        self.trim(memory);
        result?;
        Ok(phc::encode(&Phc {
            algorithm: spec.algorithm,
            version: spec.version,
            m_cost: spec.m_cost,
            t_cost: spec.t_cost,
            p_cost: spec.p_cost,
            salt,
            hash,
        }))
    }

    /// Verifies `password` against `phc` in constant time: `Ok(())`, `VerifyMismatch`, or
    /// `InvalidHash` for a malformed string or one beyond the caps.
    pub fn verify(&self, phc_str: &str, password: &[u8], memory: &mut Memory) -> Result<()> {
        self.check_password(password)?;
        let started = Instant::now();
        let result = self.parse_capped(phc_str).and_then(|phc| {
            let spec = Spec {
                algorithm: phc.algorithm,
                version: phc.version,
                m_cost: phc.m_cost,
                t_cost: phc.t_cost,
                p_cost: phc.p_cost,
            };
            let mut out = vec![0u8; phc.hash.len()];
            compute(&spec, password, &phc.salt, &[], &[], &mut out, memory)?;
            if bool::from(out.ct_eq(&phc.hash)) {
                Ok(())
            } else {
                Err(Error::VerifyMismatch)
            }
        });
        let outcome = match &result {
            Ok(()) => metrics::Outcome::Ok,
            Err(Error::VerifyMismatch) => metrics::Outcome::Mismatch,
            Err(_) => metrics::Outcome::Error,
        };
        metrics::record(metrics::Op::Verify, outcome, started.elapsed());
        self.trim(memory);
        result
    }

    /// `true` when `phc` was not made with this hasher's parameters (argon2-cffi's rule: type,
    /// version, m, t, p, salt and hash lengths). Caps do not apply: nothing is computed.
    pub fn needs_rehash(&self, phc_str: &str) -> Result<bool> {
        let phc = phc::parse(phc_str)?;
        let spec = self.spec();
        Ok(phc.algorithm != spec.algorithm
            || phc.version != spec.version
            || phc.m_cost != spec.m_cost
            || phc.t_cost != spec.t_cost
            || phc.p_cost != spec.p_cost
            || phc.salt.len() != self.config.salt_len as usize
            || phc.hash.len() != self.config.hash_len as usize)
    }

    /// Keeps at most this hasher's own block between calls (a verify of a larger stored hash
    /// must not leave a worker holding its memory).
    fn trim(&self, memory: &mut Memory) {
        let keep = self.spec().blocks();
        if memory.len() > keep {
            memory.truncate(keep);
            memory.shrink_to_fit();
        }
    }
}
