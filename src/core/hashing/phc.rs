//! PHC strings of Argon2 as libargon2 (and so argon2-cffi) writes them:
//! `$argon2id$v=19$m=65536,t=3,p=1$<salt>$<hash>`, salt and hash in unpadded standard base64.
//!
//! The parser is strict (fields in libargon2's order, canonical decimals and base64) and checks
//! lengths before decoding anything, so a hostile string costs at most a few microseconds.

use argon2::{Algorithm, Version};

use crate::core::error::{Error, Result};

/// Longest PHC string accepted: far above any real one (a 1 KiB salt and hash fit).
pub const MAX_PHC_LEN: usize = 4096;
/// Shortest salt libargon2 accepts.
pub const MIN_SALT_LEN: usize = 8;
/// Longest salt or hash accepted in a PHC string.
pub const MAX_BYTES_LEN: usize = 1024;
/// Shortest hash (tag) Argon2 defines.
pub const MIN_HASH_LEN: usize = 4;

/// The decoded parts of a PHC string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Phc {
    pub algorithm: Algorithm,
    pub version: Version,
    /// Memory in KiB.
    pub m_cost: u32,
    pub t_cost: u32,
    pub p_cost: u32,
    pub salt: Vec<u8>,
    pub hash: Vec<u8>,
}

fn invalid(what: &str) -> Error {
    Error::InvalidHash(format!("invalid Argon2 hash: {what}"))
}

/// The PHC name of an algorithm.
pub fn algorithm_name(algorithm: Algorithm) -> &'static str {
    match algorithm {
        Algorithm::Argon2d => "argon2d",
        Algorithm::Argon2i => "argon2i",
        Algorithm::Argon2id => "argon2id",
    }
}

/// A decimal u32 as libargon2 writes it: 1 to 10 digits, no sign, no leading zero.
fn decimal(s: &str, what: &str) -> Result<u32> {
    let b = s.as_bytes();
    if b.is_empty()
        || b.len() > 10
        || !b.iter().all(u8::is_ascii_digit)
        || (b.len() > 1 && b[0] == b'0')
    {
        return Err(invalid(what));
    }
    s.parse::<u32>().map_err(|_| invalid(what))
}

/// Parses a PHC string; does not check parameters against any cap.
pub fn parse(s: &str) -> Result<Phc> {
    if s.len() > MAX_PHC_LEN {
        return Err(invalid("too long"));
    }
    let mut parts = s.split('$');
    if parts.next() != Some("") {
        return Err(invalid("must start with '$'"));
    }
    let algorithm = match parts.next() {
        Some("argon2id") => Algorithm::Argon2id,
        Some("argon2i") => Algorithm::Argon2i,
        Some("argon2d") => Algorithm::Argon2d,
        _ => return Err(invalid("unknown algorithm")),
    };
    let mut field = parts.next().ok_or_else(|| invalid("missing parameters"))?;
    // libargon2 reads a missing version as 0x10 (the original 1.0).
    let version = if let Some(v) = field.strip_prefix("v=") {
        let version = match decimal(v, "version")? {
            16 => Version::V0x10,
            19 => Version::V0x13,
            _ => return Err(invalid("unsupported version")),
        };
        field = parts.next().ok_or_else(|| invalid("missing parameters"))?;
        version
    } else {
        Version::V0x10
    };
    let mut params = field.split(',');
    let mut take = |key: &str| -> Result<u32> {
        let item = params.next().ok_or_else(|| invalid("missing parameter"))?;
        let value = item
            .strip_prefix(key)
            .and_then(|rest| rest.strip_prefix('='))
            .ok_or_else(|| invalid("parameters must be m=..,t=..,p=.."))?;
        decimal(value, key)
    };
    let m_cost = take("m")?;
    let t_cost = take("t")?;
    let p_cost = take("p")?;
    if params.next().is_some() {
        return Err(invalid("unexpected parameter"));
    }
    let salt = decode_b64(parts.next().ok_or_else(|| invalid("missing salt"))?, "salt")?;
    let hash = decode_b64(parts.next().ok_or_else(|| invalid("missing hash"))?, "hash")?;
    if parts.next().is_some() {
        return Err(invalid("trailing fields"));
    }
    if !(MIN_SALT_LEN..=MAX_BYTES_LEN).contains(&salt.len()) {
        return Err(invalid("salt length out of range"));
    }
    if !(MIN_HASH_LEN..=MAX_BYTES_LEN).contains(&hash.len()) {
        return Err(invalid("hash length out of range"));
    }
    if t_cost < 1
        || !(1..=0x00FF_FFFF).contains(&p_cost)
        || u64::from(m_cost) < 8 * u64::from(p_cost)
    {
        return Err(invalid("parameters out of range"));
    }
    Ok(Phc {
        algorithm,
        version,
        m_cost,
        t_cost,
        p_cost,
        salt,
        hash,
    })
}

/// Writes a PHC string.
pub fn encode(phc: &Phc) -> String {
    let version = match phc.version {
        Version::V0x10 => 16,
        Version::V0x13 => 19,
    };
    format!(
        "${}$v={}$m={},t={},p={}${}${}",
        algorithm_name(phc.algorithm),
        version,
        phc.m_cost,
        phc.t_cost,
        phc.p_cost,
        encode_b64(&phc.salt),
        encode_b64(&phc.hash)
    )
}

const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Unpadded standard base64.
pub fn encode_b64(data: &[u8]) -> String {
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let n = chunk.len();
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let v = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..=n {
            out.push(ALPHABET[((v >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

fn b64_value(c: u8) -> Option<u32> {
    Some(match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        b'/' => 63,
        _ => return None,
    } as u32)
}

/// Unpadded standard base64, canonical only (unused trailing bits must be zero).
pub fn decode_b64(s: &str, what: &str) -> Result<Vec<u8>> {
    let b = s.as_bytes();
    if b.len() % 4 == 1 || b.len() > (MAX_BYTES_LEN * 4).div_ceil(3) {
        return Err(invalid(what));
    }
    let mut out = Vec::with_capacity(b.len() * 3 / 4);
    for chunk in b.chunks(4) {
        let mut v = 0u32;
        for &c in chunk {
            v = (v << 6) | b64_value(c).ok_or_else(|| invalid(what))?;
        }
        let bits = 6 * chunk.len();
        let bytes = bits / 8;
        let spare = bits - 8 * bytes;
        if v & ((1 << spare) - 1) != 0 {
            return Err(invalid(what));
        }
        v >>= spare;
        for i in (0..bytes).rev() {
            out.push((v >> (8 * i)) as u8);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_round_trips_every_length() {
        for n in 0..40u8 {
            let data: Vec<u8> = (0..n).map(|i| i.wrapping_mul(37).wrapping_add(n)).collect();
            assert_eq!(decode_b64(&encode_b64(&data), "x").unwrap(), data);
        }
        assert_eq!(encode_b64(b"somesalt"), "c29tZXNhbHQ");
        assert!(decode_b64("c29tZXNhbHR", "x").is_err()); // non-zero trailing bits
        assert!(decode_b64("c29tZXNhbHQ=", "x").is_err()); // padding
        assert!(decode_b64("c", "x").is_err());
    }
}
