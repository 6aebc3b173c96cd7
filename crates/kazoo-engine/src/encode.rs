//! The routing-key encoder behind `kazoo_encode` and `{kz.encode}` (`kz_amqp_util_encode`).
//!
//! Rules, byte by byte:
//! - an input that is exactly `#` or exactly `*` is returned unchanged, so a wildcard can be
//!   passed through as a routing segment;
//! - `A–Z a–z 0–9 - ~ _` are kept;
//! - `.` becomes `%2E` (so the result is a single routing-key word) and space becomes `+`;
//! - every other byte becomes `%` and two uppercase hex digits.
//!
//! Encoding stops as soon as the output has reached 255 bytes, so the last escape can take it to
//! 256 or 257 bytes; this is the C output, kept as is.
//!
//! **Deliberate difference from the C module:** bytes ≥ 0x80 are encoded as correct `%XX`
//! (`Ünï` → `%C3%9Cn%C3%AF`). The C code shifts a signed `char`, so it writes `%` followed by
//! one of `( ) * + , - . /` and the low hex digit (`Ünï` → `%,3%)Cn%,3%*F`); that output can even
//! contain a `.`, which splits the routing key. Kazoo itself (`amqp_util:encode`) percent-encodes
//! these bytes correctly, which is what routing keys built on the Kazoo side look like. The
//! output length is the same either way, so truncation happens at the same place.

/// The longest input `kazoo_encode` accepts, and the output length at which encoding stops.
pub const MAX_ROUTING_KEY_LEN: usize = 255;

const HEX_UPPER: &[u8; 16] = b"0123456789ABCDEF";

/// `kazoo_encode(input, dst)`: `None` (rc -1, destination untouched) when `input` is longer than
/// [`MAX_ROUTING_KEY_LEN`] bytes, the encoded key otherwise.
pub fn encode_checked(input: &[u8]) -> Option<Vec<u8>> {
    (input.len() <= MAX_ROUTING_KEY_LEN).then(|| encode_truncating(input))
}

/// `{kz.encode}`: encodes any input, stopping once the output has reached
/// [`MAX_ROUTING_KEY_LEN`] bytes (the result is then 255 to 257 bytes long).
pub fn encode_truncating(input: &[u8]) -> Vec<u8> {
    if input == b"#" || input == b"*" {
        return input.to_vec();
    }
    let mut out = Vec::with_capacity(input.len().saturating_mul(3).min(MAX_ROUTING_KEY_LEN + 2));
    for &b in input {
        if out.len() >= MAX_ROUTING_KEY_LEN {
            break;
        }
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'~' | b'_' => out.push(b),
            b'.' => out.extend_from_slice(b"%2E"),
            b' ' => out.push(b'+'),
            _ => out.extend_from_slice(&[
                b'%',
                HEX_UPPER[usize::from(b >> 4)],
                HEX_UPPER[usize::from(b & 0x0F)],
            ]),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn examples() {
        assert_eq!(encode_truncating(b"#"), b"#");
        assert_eq!(encode_truncating(b"*"), b"*");
        assert_eq!(encode_truncating(b"#*"), b"%23%2A");
        assert_eq!(encode_truncating(b"a.b c~d_e-f"), b"a%2Eb+c~d_e-f");
        assert_eq!(encode_truncating(b"@/%+"), b"%40%2F%25%2B");
        assert_eq!(encode_truncating("Ünï".as_bytes()), b"%C3%9Cn%C3%AF");
        assert_eq!(encode_truncating(b""), b"");
    }

    #[test]
    fn limits() {
        let mut long = vec![b'a'; 254];
        long.push(b'@');
        assert_eq!(encode_checked(&long).map(|v| v.len()), Some(257));
        long.push(b'@');
        assert_eq!(encode_checked(&long), None);
        assert_eq!(encode_truncating(&long).len(), 257);
        assert_eq!(encode_truncating(&[b'a'; 300]).len(), 255);
    }
}
