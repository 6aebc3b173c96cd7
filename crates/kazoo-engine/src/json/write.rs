//! json-c 0.16's default serialisation (`json_object_to_json_string`, i.e.
//! `JSON_C_TO_STRING_SPACED`), which is what scripts see in `$kzE`, `$kzR` and `kazoo_json`
//! results and what goes out on the wire.
//!
//! Shape: `{ "k": v, "k2": [ 1, 2 ] }`, `{ }`, `[ ]`. Strings escape `"`, `\` and `/`, write
//! `\b \f \n \r \t` for those controls and `\u00xx` (lowercase hex) for the other bytes below
//! 0x20; every other byte, 0x7F and non-UTF-8 included, is copied as is.

use super::{Double, Value};

/// Serialises `value` as json-c does.
pub fn to_json(value: &Value) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    write_json(value, &mut out);
    out
}

/// Appends the json-c serialisation of `value` to `out`.
///
/// Recursion depth is that of the value; parsed values are at most
/// [`MAX_DEPTH`](super::MAX_DEPTH) deep.
pub fn write_json(value: &Value, out: &mut Vec<u8>) {
    match value {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(true) => out.extend_from_slice(b"true"),
        Value::Bool(false) => out.extend_from_slice(b"false"),
        Value::Int(n) => {
            if *n < 0 {
                out.push(b'-');
            }
            write_decimal(n.unsigned_abs(), out);
        }
        Value::UInt(n) => write_decimal(*n, out),
        Value::Double(d) => write_double(d, out),
        Value::String(s) => write_string(s, out),
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                out.push(b' ');
                write_json(item, out);
            }
            out.extend_from_slice(b" ]");
        }
        Value::Object(entries) => {
            out.push(b'{');
            for (i, (key, item)) in entries.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                out.push(b' ');
                // json-c prints keys with strlen(): a NUL ends the key.
                let end = key.iter().position(|&b| b == 0).unwrap_or(key.len());
                write_string(key.get(..end).unwrap_or_default(), out);
                out.extend_from_slice(b": ");
                write_json(item, out);
            }
            out.extend_from_slice(b" }");
        }
    }
}

fn write_decimal(mut n: u64, out: &mut Vec<u8>) {
    let mut digits = [0u8; 20];
    let mut start = digits.len();
    loop {
        start -= 1;
        if let Some(slot) = digits.get_mut(start) {
            *slot = b'0' + (n % 10) as u8;
        }
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(digits.get(start..).unwrap_or_default());
}

const HEX_LOWER: &[u8; 16] = b"0123456789abcdef";

fn write_string(s: &[u8], out: &mut Vec<u8>) {
    out.push(b'"');
    let mut plain_from = 0;
    for (i, &b) in s.iter().enumerate() {
        let escape: &[u8] = match b {
            0x08 => b"\\b",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x0C => b"\\f",
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'/' => b"\\/",
            0..=0x1F => b"",
            _ => continue,
        };
        out.extend_from_slice(s.get(plain_from..i).unwrap_or_default());
        plain_from = i + 1;
        if escape.is_empty() {
            out.extend_from_slice(b"\\u00");
            out.push(HEX_LOWER[usize::from(b >> 4)]);
            out.push(HEX_LOWER[usize::from(b & 0x0F)]);
        } else {
            out.extend_from_slice(escape);
        }
    }
    out.extend_from_slice(s.get(plain_from..).unwrap_or_default());
    out.push(b'"');
}

fn write_double(d: &Double, out: &mut Vec<u8>) {
    if let Some(text) = d.text() {
        out.extend_from_slice(text.as_bytes());
        return;
    }
    let v = d.value();
    if v.is_nan() {
        out.extend_from_slice(b"NaN");
    } else if v.is_infinite() {
        out.extend_from_slice(if v > 0.0 { b"Infinity" } else { b"-Infinity" });
    } else {
        let text = format_g17(v);
        out.extend_from_slice(text.as_bytes());
        // json-c makes sure the text still reads as a double.
        if !text.contains(['.', 'e']) {
            out.extend_from_slice(b".0");
        }
    }
}

/// C's `printf("%.17g", v)` for a finite `v`.
fn format_g17(v: f64) -> String {
    const PRECISION: i32 = 17;
    // %g picks its style from the exponent that %e would print at the same precision.
    let sci = format!("{:.*e}", (PRECISION - 1) as usize, v);
    let (mantissa, exponent) = sci.split_once('e').unwrap_or((sci.as_str(), "0"));
    let exponent: i32 = exponent.parse().unwrap_or(0);
    if (-4..PRECISION).contains(&exponent) {
        let decimals = (PRECISION - 1 - exponent) as usize;
        strip_fraction_zeros(format!("{v:.decimals$}"))
    } else {
        let mut text = strip_fraction_zeros(mantissa.to_owned());
        text.push('e');
        text.push(if exponent < 0 { '-' } else { '+' });
        let magnitude = exponent.unsigned_abs();
        if magnitude < 10 {
            text.push('0');
        }
        text.push_str(&magnitude.to_string());
        text
    }
}

/// %g without '#': trailing zeros of the fraction go, and so does a bare '.'.
fn strip_fraction_zeros(mut text: String) -> String {
    if text.contains('.') {
        let kept = text.trim_end_matches('0').trim_end_matches('.').len();
        text.truncate(kept);
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn double(v: f64) -> String {
        String::from_utf8(to_json(&Value::Double(Double::new(v)))).unwrap_or_default()
    }

    #[test]
    fn doubles_without_text_print_like_json_c() {
        assert_eq!(double(1.0), "1.0");
        assert_eq!(double(-0.0), "-0.0");
        assert_eq!(double(0.1), "0.10000000000000001");
        assert_eq!(double(1.5), "1.5");
        assert_eq!(double(1e20), "1e+20");
        assert_eq!(double(1e16), "10000000000000000.0");
        assert_eq!(double(1e17), "1e+17");
        assert_eq!(double(1.25e-5), "1.2500000000000001e-05");
        assert_eq!(double(0.0001), "0.0001");
        assert_eq!(double(-123456.789), "-123456.789");
        assert_eq!(double(5e-324), "4.9406564584124654e-324");
        assert_eq!(double(f64::NAN), "NaN");
        assert_eq!(double(f64::NEG_INFINITY), "-Infinity");
    }

    #[test]
    fn strings_escape_like_json_c() {
        let out = to_json(&Value::String(
            b"a/\"\\\x01\x1f\x7f\xff\x00\x08\x0c\n\r\t".to_vec(),
        ));
        assert_eq!(
            out,
            b"\"a\\/\\\"\\\\\\u0001\\u001f\x7f\xff\\u0000\\b\\f\\n\\r\\t\"".to_vec()
        );
    }

    #[test]
    fn containers_are_spaced() {
        let v = Value::Object(vec![
            (b"k".to_vec(), Value::Int(-1)),
            (b"e".to_vec(), Value::Object(vec![])),
            (
                b"a".to_vec(),
                Value::Array(vec![Value::UInt(u64::MAX), Value::Array(vec![])]),
            ),
        ]);
        assert_eq!(
            to_json(&v),
            b"{ \"k\": -1, \"e\": { }, \"a\": [ 18446744073709551615, [ ] ] }".to_vec()
        );
        assert_eq!(
            to_json(&Value::Int(i64::MIN)),
            b"-9223372036854775808".to_vec()
        );
    }
}
