//! Rollout bucketing: which of 100 buckets a unit (a user, a tenant) falls in for a feature.
//!
//! `bucket(feature, unit) = murmur3_x86_32(utf8(feature + ":" + unit), seed 0) % 100`, and a unit
//! is in a rollout of `p` percent when `bucket < p`. This is Unleash's `normalizedHash - 1`
//! (its clients hash `"{groupId}:{userId}"` the same way and add 1), so assignments agree with
//! Unleash deployments, hold across processes, hosts and restarts, and only grow with `p`.
//! The pure-Python twin (`sark_native/_fallback/bucket.py`) uses `mmh3` and gives the same
//! numbers on every input.

/// Number of buckets: percentages are whole numbers 0..=100.
pub const BUCKETS: u32 = 100;

/// Keys up to this many bytes are hashed from a stack buffer; longer ones allocate once.
const INLINE_KEY: usize = 256;

const C1: u32 = 0xcc9e_2d51;
const C2: u32 = 0x1b87_3593;

#[inline(always)]
fn mix_k1(mut k1: u32) -> u32 {
    k1 = k1.wrapping_mul(C1);
    k1 = k1.rotate_left(15);
    k1.wrapping_mul(C2)
}

#[inline(always)]
fn fmix32(mut h: u32) -> u32 {
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}

/// MurmurHash3 x86 32-bit (Austin Appleby's reference `MurmurHash3_x86_32`, blocks read
/// little-endian on every platform, as `mmh3` and Unleash's clients do).
pub fn murmur3_x86_32(data: &[u8], seed: u32) -> u32 {
    let mut h1 = seed;
    let mut blocks = data.chunks_exact(4);
    for block in &mut blocks {
        let k1 = u32::from_le_bytes([block[0], block[1], block[2], block[3]]);
        h1 ^= mix_k1(k1);
        h1 = h1.rotate_left(13);
        h1 = h1.wrapping_mul(5).wrapping_add(0xe654_6b64);
    }
    let tail = blocks.remainder();
    if !tail.is_empty() {
        let mut k1 = 0u32;
        for (i, byte) in tail.iter().enumerate() {
            k1 |= u32::from(*byte) << (8 * i);
        }
        h1 ^= mix_k1(k1);
    }
    // The reference mixes in the length as a 32-bit value (it wraps past 4 GiB).
    h1 ^= data.len() as u32;
    fmix32(h1)
}

/// The bucket (0..100) of `unit_id` for `feature`: see the module documentation.
pub fn bucket(feature: &str, unit_id: &str) -> u32 {
    let len = feature.len() + 1 + unit_id.len();
    if len <= INLINE_KEY {
        let mut buf = [0u8; INLINE_KEY];
        buf[..feature.len()].copy_from_slice(feature.as_bytes());
        buf[feature.len()] = b':';
        buf[feature.len() + 1..len].copy_from_slice(unit_id.as_bytes());
        murmur3_x86_32(&buf[..len], 0) % BUCKETS
    } else {
        let mut key = Vec::with_capacity(len);
        key.extend_from_slice(feature.as_bytes());
        key.push(b':');
        key.extend_from_slice(unit_id.as_bytes());
        murmur3_x86_32(&key, 0) % BUCKETS
    }
}

/// Whether `unit_id` is in a rollout of `percentage` percent of `feature`: `bucket < percentage`
/// (0 is nobody, 100 and above is everybody).
pub fn is_in_rollout(feature: &str, unit_id: &str, percentage: u32) -> bool {
    match percentage {
        0 => false,
        p if p >= BUCKETS => true,
        p => bucket(feature, unit_id) < p,
    }
}
