//! The sidecar wire format: 4-byte big-endian length, then that many bytes of UTF-8 JSON, with
//! `1 <= length <= max_frame`. A reader that refuses an out-of-range length before reading or
//! allocating the body, and the writer's half: request frames and the JSON text of their parts,
//! written exactly as Python's `json.dumps(..., ensure_ascii=False, separators=(",", ":"))` does
//! (so both clients send the same bytes and agree on sizes).

use std::fmt;

/// Bytes of the length prefix.
pub const HEADER_SIZE: usize = 4;
/// Default cap on a frame's body, both directions: 16 MiB.
pub const DEFAULT_MAX_FRAME: u32 = 16 * 1024 * 1024;

/// A length prefix out of `1..=max_frame`: the connection is dropped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadLength {
    pub length: u32,
    pub max_frame: u32,
}

impl fmt::Display for BadLength {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "frame length {} is out of range (1..{})",
            self.length, self.max_frame
        )
    }
}

/// Splits a byte stream into frame bodies. Only what already arrived is buffered; a body is
/// allocated when its header is known to be in range.
#[derive(Debug)]
pub struct FrameReader {
    max_frame: u32,
    buf: Vec<u8>,
    start: usize,
}

impl FrameReader {
    pub fn new(max_frame: u32) -> Self {
        FrameReader {
            max_frame,
            buf: Vec::new(),
            start: 0,
        }
    }

    /// Appends received bytes.
    pub fn extend(&mut self, data: &[u8]) {
        if self.start > 0 && self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        }
        self.buf.extend_from_slice(data);
    }

    /// The next complete frame body, `Ok(None)` when more bytes are needed, or the bad length.
    pub fn next_frame(&mut self) -> Result<Option<&[u8]>, BadLength> {
        let avail = &self.buf[self.start..];
        if avail.len() < HEADER_SIZE {
            self.compact();
            return Ok(None);
        }
        let length = u32::from_be_bytes([avail[0], avail[1], avail[2], avail[3]]);
        if length == 0 || length > self.max_frame {
            return Err(BadLength {
                length,
                max_frame: self.max_frame,
            });
        }
        let end = HEADER_SIZE + length as usize;
        if avail.len() < end {
            self.compact();
            return Ok(None);
        }
        let from = self.start + HEADER_SIZE;
        self.start += end;
        Ok(Some(&self.buf[from..from + length as usize]))
    }

    /// Bytes received but not yet part of a complete frame.
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.start
    }

    fn compact(&mut self) {
        if self.start > 0 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
    }
}

/// Appends `s` as a JSON string literal, escaped as Python's `json.dumps(ensure_ascii=False)`
/// escapes it: `"`, `\`, `\n`, `\r`, `\t`, `\b`, `\f` as two characters, other control
/// characters as `\u00xx`, everything else as is.
pub fn push_json_string(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    let bytes = s.as_bytes();
    let mut run = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let escape: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x08 => b"\\b",
            0x0c => b"\\f",
            0..=0x1f => b"",
            _ => continue,
        };
        out.extend_from_slice(&bytes[run..i]);
        if escape.is_empty() {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            out.extend_from_slice(b"\\u00");
            out.push(HEX[(b >> 4) as usize]);
            out.push(HEX[(b & 15) as usize]);
        } else {
            out.extend_from_slice(escape);
        }
        run = i + 1;
    }
    out.extend_from_slice(&bytes[run..]);
    out.push(b'"');
}

/// Appends `f` (finite) as Python's `repr(f)` writes it: the shortest digits that round-trip,
/// positional between 1e-4 and 1e16 (with `.0` when integral), else `1.5e+16` / `1e-05`.
pub fn push_py_float(out: &mut Vec<u8>, f: f64) {
    if f == 0.0 {
        out.extend_from_slice(if f.is_sign_negative() {
            b"-0.0"
        } else {
            b"0.0"
        });
        return;
    }
    // `{:e}` gives the shortest round-trip digits: "-1.2345e-7".
    let sci = format!("{f:e}");
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let (sign, mantissa) = match mantissa.strip_prefix('-') {
        Some(m) => ("-", m),
        None => ("", mantissa),
    };
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    out.extend_from_slice(sign.as_bytes());
    if (-4..16).contains(&exp) {
        let point = exp + 1; // digits before the decimal point
        if point <= 0 {
            out.extend_from_slice(b"0.");
            out.extend(std::iter::repeat_n(b'0', (-point) as usize));
            out.extend_from_slice(digits.as_bytes());
        } else if point as usize >= digits.len() {
            out.extend_from_slice(digits.as_bytes());
            out.extend(std::iter::repeat_n(b'0', point as usize - digits.len()));
            out.extend_from_slice(b".0");
        } else {
            out.extend_from_slice(&digits.as_bytes()[..point as usize]);
            out.push(b'.');
            out.extend_from_slice(&digits.as_bytes()[point as usize..]);
        }
    } else {
        out.extend_from_slice(&digits.as_bytes()[..1]);
        if digits.len() > 1 {
            out.push(b'.');
            out.extend_from_slice(&digits.as_bytes()[1..]);
        }
        out.push(b'e');
        out.push(if exp < 0 { b'-' } else { b'+' });
        let e = exp.unsigned_abs();
        if e < 10 {
            out.push(b'0');
        }
        out.extend_from_slice(e.to_string().as_bytes());
    }
}

/// The part of a request frame after its id: `,"method":"m","params":<params>}`.
pub fn request_suffix(method: &str, params_json: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(params_json.len() + method.len() + 24);
    out.extend_from_slice(b",\"method\":");
    push_json_string(&mut out, method);
    out.extend_from_slice(b",\"params\":");
    out.extend_from_slice(params_json);
    out.push(b'}');
    out
}

/// The whole request frame (length prefix included) for `id`, or `Err(size)` when the body
/// would be over `max_frame`.
pub fn request_frame(id: u64, suffix: &[u8], max_frame: u32) -> Result<Vec<u8>, usize> {
    let digits = id.to_string();
    let size = 6 + digits.len() + suffix.len(); // len(b'{"id":') == 6
    if size > max_frame as usize {
        return Err(size);
    }
    let mut frame = Vec::with_capacity(HEADER_SIZE + size);
    frame.extend_from_slice(&(size as u32).to_be_bytes());
    frame.extend_from_slice(b"{\"id\":");
    frame.extend_from_slice(digits.as_bytes());
    frame.extend_from_slice(suffix);
    Ok(frame)
}
