//! The one JSON serialization of token headers and claims, identical to the Python path's
//! `json.dumps(obj, separators=(",", ":"), ensure_ascii=False, allow_nan=False)`.
//!
//! serde_json (with `preserve_order`) already writes compact JSON with the same string escapes as
//! Python (`\"`, `\\`, `\b\f\n\r\t`, other control characters as lowercase `\u00XX`, everything
//! else as UTF-8). Only floats differ: serde_json writes ryu's form (`1e16`, `1e-7`), Python its
//! `repr` (`1e+16`, `1e-07`). [`PyFormatter`] writes floats as Python does, so both backends sign
//! the same bytes.

use std::io;

use serde::Serialize;
use serde_json::ser::{Formatter, Serializer};
use serde_json::{Map, Value};

/// Compact serde_json formatting, with floats in Python's `repr` form.
struct PyFormatter;

impl Formatter for PyFormatter {
    fn write_f64<W: ?Sized + io::Write>(&mut self, writer: &mut W, value: f64) -> io::Result<()> {
        writer.write_all(float_repr(value).as_bytes())
    }

    fn write_f32<W: ?Sized + io::Write>(&mut self, writer: &mut W, value: f32) -> io::Result<()> {
        self.write_f64(writer, f64::from(value))
    }
}

/// A finite float as Python's `repr(float)` writes it: the shortest digits that round-trip,
/// positional when the decimal exponent is in `-4 < e <= 16`, else scientific with a sign and at
/// least two exponent digits (`1e+16`, `1.5e-07`), and `.0` on integral values.
pub fn float_repr(value: f64) -> String {
    if value == 0.0 {
        return if value.is_sign_negative() {
            "-0.0"
        } else {
            "0.0"
        }
        .to_owned();
    }
    if !value.is_finite() {
        // Never reached from the token code (serde_json numbers are finite); kept total.
        return if value.is_nan() {
            "NaN".to_owned()
        } else if value > 0.0 {
            "Infinity".to_owned()
        } else {
            "-Infinity".to_owned()
        };
    }
    // Rust's `{:e}` gives the shortest round-trip digits: "-1.2345e-7", "1e16". When two
    // candidates of that length are equally close to the exact binary value, it may pick the other
    // one than Python, which takes the even digit (97129829145223.625 -> ...223.62, not .63).
    // Formatting to that many digits with an explicit precision rounds the exact value half to
    // even, as Python does; keep it when it still round-trips.
    let shortest = format!("{value:e}");
    let digit_count = shortest
        .split_once('e')
        .map_or(0, |(m, _)| m.chars().filter(char::is_ascii_digit).count());
    let rounded = format!("{value:.prec$e}", prec = digit_count.saturating_sub(1));
    let sci = if rounded.parse::<f64>() == Ok(value) {
        rounded
    } else {
        shortest
    };
    let (mantissa, exponent) = sci.split_once('e').expect("{:e} always has an exponent");
    let exponent: i32 = exponent.parse().expect("{:e} exponent is an integer");
    let (negative, mantissa) = match mantissa.strip_prefix('-') {
        Some(m) => (true, m),
        None => (false, mantissa),
    };
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    // Position of the decimal point relative to the start of `digits`.
    let point = exponent + 1;
    let mut out = String::with_capacity(24);
    if negative {
        out.push('-');
    }
    if point <= -4 || point > 16 {
        out.push_str(&digits[..1]);
        if digits.len() > 1 {
            out.push('.');
            out.push_str(&digits[1..]);
        }
        let e = point - 1;
        out.push('e');
        out.push(if e < 0 { '-' } else { '+' });
        out.push_str(&format!("{:02}", e.unsigned_abs()));
    } else if point <= 0 {
        out.push_str("0.");
        out.extend(std::iter::repeat_n('0', point.unsigned_abs() as usize));
        out.push_str(&digits);
    } else {
        let point = point as usize;
        if point >= digits.len() {
            out.push_str(&digits);
            out.extend(std::iter::repeat_n('0', point - digits.len()));
            out.push_str(".0");
        } else {
            out.push_str(&digits[..point]);
            out.push('.');
            out.push_str(&digits[point..]);
        }
    }
    out
}

/// Appends the compact JSON of `value` to `out`.
pub fn write_value(out: &mut Vec<u8>, value: &Value) {
    let mut ser = Serializer::with_formatter(out, PyFormatter);
    value
        .serialize(&mut ser)
        .expect("writing JSON to a Vec cannot fail");
}

/// Appends the compact JSON of an object to `out`.
pub fn write_object(out: &mut Vec<u8>, map: &Map<String, Value>) {
    let mut ser = Serializer::with_formatter(out, PyFormatter);
    map.serialize(&mut ser)
        .expect("writing JSON to a Vec cannot fail");
}

#[cfg(test)]
mod tests {
    use super::float_repr;

    #[test]
    fn floats_as_python_repr() {
        for (v, s) in [
            (1.0, "1.0"),
            (-2.5, "-2.5"),
            (0.1, "0.1"),
            (1e16, "1e+16"),
            (1e15, "1000000000000000.0"),
            (123456789012345680.0, "1.2345678901234568e+17"),
            (0.0001, "0.0001"),
            (0.00001, "1e-05"),
            (1.5e-7, "1.5e-07"),
            (1e100, "1e+100"),
            (-0.0, "-0.0"),
            (1700000000.5, "1700000000.5"),
            (5e-324, "5e-324"),
            (f64::MAX, "1.7976931348623157e+308"),
            // A tie between two shortest candidates: Python keeps the even digit.
            (97129829145223.0 + 0.625, "97129829145223.62"),
            (0.3, "0.3"),
            (2.5, "2.5"),
            (1e23, "1e+23"),
        ] {
            assert_eq!(float_repr(v), s, "{v}");
        }
    }
}
