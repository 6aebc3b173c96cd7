//! Hex helpers matching Kamailio's `{s.encode.hexa}` / `{s.decode.hexa}`.
//!
//! Test configs cannot carry arbitrary bytes in a SIP header, so tests hex-encode
//! them, the script decodes with `{s.decode.hexa}`, and results come back encoded
//! with `{s.encode.hexa}`. Kamailio 5.6 encodes in lowercase and decodes either
//! case; [`hex_encode`] emits lowercase so its output compares equal to
//! Kamailio's, and [`hex_decode`] accepts both cases.

use crate::HarnessError;

/// Lowercase hex of `bytes`, the same text Kamailio's `{s.encode.hexa}` produces.
pub fn hex_encode(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    out
}

/// Decodes hex in either case (surrounding whitespace is ignored, since it
/// usually comes from a header value).
pub fn hex_decode(text: &str) -> Result<Vec<u8>, HarnessError> {
    let text = text.trim();
    if !text.len().is_multiple_of(2) {
        return Err(HarnessError::InvalidHex(format!(
            "odd number of digits in {text:?}"
        )));
    }
    text.as_bytes()
        .chunks_exact(2)
        .map(|pair| match (nibble(pair[0]), nibble(pair[1])) {
            (Some(hi), Some(lo)) => Ok(hi << 4 | lo),
            _ => Err(HarnessError::InvalidHex(format!(
                "non-hex digit in {text:?}"
            ))),
        })
        .collect()
}

fn nibble(digit: u8) -> Option<u8> {
    match digit {
        b'0'..=b'9' => Some(digit - b'0'),
        b'a'..=b'f' => Some(digit - b'a' + 10),
        b'A'..=b'F' => Some(digit - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_all_bytes() {
        let all: Vec<u8> = (0..=255).collect();
        let text = hex_encode(&all);
        assert_eq!(&text[..8], "00010203");
        assert!(text.ends_with("fdfeff"));
        assert_eq!(hex_decode(&text).unwrap(), all);
    }

    #[test]
    fn decode_accepts_both_cases_and_trims() {
        assert_eq!(hex_decode(" 00FfAb\r\n").unwrap(), vec![0x00, 0xff, 0xab]);
        assert_eq!(hex_decode("").unwrap(), Vec::<u8>::new());
    }

    #[test]
    fn decode_rejects_bad_input() {
        assert!(hex_decode("abc").is_err());
        assert!(hex_decode("zz").is_err());
    }
}
