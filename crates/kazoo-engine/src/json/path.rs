//! The `kazoo_json` / `kz.json` path language (`kz_json_get_field_object` in `kz_json.c`).
//!
//! A path is split on `.`; one trailing `.` is ignored. In each segment every escape character
//! (the `json_escape_char` modparam, `%` by default) stands for a literal `.`. A segment is
//! `name` or `name[index]`, read as C's `sscanf("%[^[][%[^]]]")` reads it:
//! - the name runs up to the first `[`; the index text runs from there up to the first `]` or the
//!   end of the segment (so `a[1` is `a[1]` and `a[1]x` is `a[1]`), and is converted with C's
//!   `atoi` (leading whitespace, an optional sign, digits; anything else reads as 0);
//! - an empty index (`a[]`) is no index;
//! - a segment that starts with `[` has no name of its own: it reuses the name of the segment
//!   before it and has no index (`a.[0]` looks `a` up twice).
//!
//! Lookup walks the segments from the root: the name is an object-key lookup; then, if the node
//! is an array and the segment has an index, the element at that index. An index on anything
//! but an array is ignored. A missing key, a JSON null, an out-of-range or negative index, or a
//! key lookup on a non-object yields null, and null stays null.
//!
//! The C module aborts or overflows a stack buffer on some paths; here they are [`PathError`]s:
//! an empty path, any empty segment other than one trailing `.` (`a..b`, `.a`, `.`), and a
//! segment whose name or index text is [`MAX_SEGMENT_LEN`] bytes or more (they are `sscanf`'d into
//! 250-byte buffers). Text after the closing `]` is never copied, so it may be of any length. A first segment starting with `[` reads
//! uninitialised stack memory as its name in C; here it has no name and resolves to null, which
//! is also what the C module was seen to return.

use std::fmt;

use super::Value;

/// A segment's name or index text this long or longer overflows the C module's 250-byte `sscanf`
/// buffers; such a path is rejected.
pub const MAX_SEGMENT_LEN: usize = 250;

/// Why a path was rejected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathError {
    /// The path is empty (the C module aborts).
    Empty,
    /// Segment number `index` (0-based) is empty, e.g. in `a..b`, `.a` or `.` (the C module
    /// aborts).
    EmptySegment { index: usize },
    /// Segment number `index` has a name or index text of `len` bytes, at least
    /// [`MAX_SEGMENT_LEN`] (the C module overflows a stack buffer).
    SegmentTooLong { index: usize, len: usize },
}

impl fmt::Display for PathError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PathError::Empty => write!(f, "empty JSON path"),
            PathError::EmptySegment { index } => {
                write!(f, "empty segment {} in JSON path", index + 1)
            }
            PathError::SegmentTooLong { index, len } => write!(
                f,
                "segment {} of JSON path has a {len}-byte key or index (limit {})",
                index + 1,
                MAX_SEGMENT_LEN - 1
            ),
        }
    }
}

impl std::error::Error for PathError {}

/// A parsed path, ready to be looked up in any number of values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Path {
    segments: Vec<Segment>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Segment {
    /// The object key to look up; `None` only for a leading `[` segment, which resolves to null.
    key: Option<Vec<u8>>,
    /// The array index, already converted with `atoi`.
    index: Option<i32>,
}

/// Parses a path; `escape_char` is the character that stands for a literal `.` in keys.
///
/// The path is read as a C string: a NUL byte ends it.
pub fn parse_path(path: &[u8], escape_char: u8) -> Result<Path, PathError> {
    let path = path
        .iter()
        .position(|&b| b == 0)
        .and_then(|end| path.get(..end))
        .unwrap_or(path);
    if path.is_empty() {
        return Err(PathError::Empty);
    }
    // One trailing '.' is dropped; any other empty segment is an error.
    let path = path.strip_suffix(b".").unwrap_or(path);
    let mut segments = Vec::new();
    let mut previous_key: Option<Vec<u8>> = None;
    for (index, raw) in path.split(|&b| b == b'.').enumerate() {
        if raw.is_empty() {
            return Err(PathError::EmptySegment { index });
        }
        let text: Vec<u8> = raw
            .iter()
            .map(|&b| if b == escape_char { b'.' } else { b })
            .collect();
        let (name, index_text) = match text.iter().position(|&b| b == b'[') {
            Some(open) => {
                let (name, rest) = text.split_at(open);
                let index_text = rest.get(1..).unwrap_or_default();
                let index_text = index_text
                    .iter()
                    .position(|&b| b == b']')
                    .and_then(|close| index_text.get(..close))
                    .unwrap_or(index_text);
                (name, index_text)
            }
            None => (text.as_slice(), &[][..]),
        };
        // A segment starting with '[' fails sscanf before anything is copied.
        let longest = if name.is_empty() {
            0
        } else {
            name.len().max(index_text.len())
        };
        if longest >= MAX_SEGMENT_LEN {
            return Err(PathError::SegmentTooLong {
                index,
                len: longest,
            });
        }
        let segment = if name.is_empty() {
            // sscanf's "%[^[" matched nothing: the previous name stays, and no index is read.
            Segment {
                key: previous_key.clone(),
                index: None,
            }
        } else {
            Segment {
                key: Some(name.to_vec()),
                index: (!index_text.is_empty()).then(|| c_atoi(index_text)),
            }
        };
        previous_key.clone_from(&segment.key);
        segments.push(segment);
    }
    Ok(Path { segments })
}

impl Path {
    /// The node the path designates in `root`, or `None` for null (missing, JSON null, wrong
    /// type on the way, index out of range).
    pub fn lookup<'v>(&self, root: &'v Value) -> Option<&'v Value> {
        let mut node = root;
        for segment in &self.segments {
            node = segment.key.as_deref().and_then(|key| node.get(key))?;
            if let (Some(index), Value::Array(items)) = (segment.index, node) {
                node = usize::try_from(index).ok().and_then(|i| items.get(i))?;
            }
            if matches!(node, Value::Null) {
                return None;
            }
        }
        Some(node)
    }
}

/// glibc's `atoi`: `(int) strtol(s, NULL, 10)`, i.e. leading whitespace, an optional sign,
/// decimal digits, saturation at the `long` range and then truncation to 32 bits.
fn c_atoi(s: &[u8]) -> i32 {
    let mut rest = s;
    while let [b' ' | b'\t' | b'\n' | 0x0B | 0x0C | b'\r', tail @ ..] = rest {
        rest = tail;
    }
    let negative = rest.first() == Some(&b'-');
    if matches!(rest.first(), Some(b'-' | b'+')) {
        rest = rest.get(1..).unwrap_or_default();
    }
    let magnitude = rest
        .iter()
        .take_while(|b| b.is_ascii_digit())
        .fold(0u64, |acc, d| {
            acc.saturating_mul(10)
                .saturating_add(u64::from(d.wrapping_sub(b'0')))
        });
    let signed = if negative {
        -i128::from(magnitude)
    } else {
        i128::from(magnitude)
    };
    let long = signed.clamp(i128::from(i64::MIN), i128::from(i64::MAX));
    // The C cast keeps the low 32 bits.
    long as i32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atoi_matches_glibc() {
        assert_eq!(c_atoi(b"1"), 1);
        assert_eq!(c_atoi(b" 1 "), 1);
        assert_eq!(c_atoi(b"+1"), 1);
        assert_eq!(c_atoi(b"01"), 1);
        assert_eq!(c_atoi(b"1abc"), 1);
        assert_eq!(c_atoi(b"x"), 0);
        assert_eq!(c_atoi(b"0x1"), 0);
        assert_eq!(c_atoi(b"-1"), -1);
        assert_eq!(c_atoi(b"\x0b\x0c-2"), -2);
        assert_eq!(c_atoi(b"- 1"), 0);
        assert_eq!(c_atoi(b"99999999999"), 1_215_752_191);
        assert_eq!(c_atoi(b"4294967296"), 0);
        assert_eq!(c_atoi(b"99999999999999999999999"), -1);
        assert_eq!(c_atoi(b"-99999999999999999999999"), 0);
        assert_eq!(c_atoi(b"-9223372036854775807"), 1);
    }

    #[test]
    fn segments_follow_sscanf() {
        let path = parse_path(b"a.b%c[ 2 ]x.[7].d[].e[3", b'%');
        let Ok(path) = path else {
            panic!("path rejected: {path:?}");
        };
        let seg = |key: &[u8], index| Segment {
            key: Some(key.to_vec()),
            index,
        };
        assert_eq!(
            path.segments,
            vec![
                seg(b"a", None),
                seg(b"b.c", Some(2)),
                seg(b"b.c", None),
                seg(b"d", None),
                seg(b"e", Some(3)),
            ]
        );
    }

    #[test]
    fn leading_bracket_has_no_name() {
        let Ok(path) = parse_path(b"[0].[1].x", b'%') else {
            panic!("path rejected");
        };
        assert_eq!(path.segments.first().and_then(|s| s.key.clone()), None);
        assert_eq!(path.lookup(&Value::Array(vec![Value::Int(1)])), None);
    }

    #[test]
    fn bad_paths_are_errors() {
        assert_eq!(parse_path(b"", b'%'), Err(PathError::Empty));
        assert_eq!(parse_path(b"\0a", b'%'), Err(PathError::Empty));
        assert_eq!(
            parse_path(b"a..b", b'%'),
            Err(PathError::EmptySegment { index: 1 })
        );
        assert_eq!(
            parse_path(b"a..", b'%'),
            Err(PathError::EmptySegment { index: 1 })
        );
        assert_eq!(
            parse_path(b".", b'%'),
            Err(PathError::EmptySegment { index: 0 })
        );
        assert!(parse_path(b"a.", b'%').is_ok());
        let long = vec![b'k'; MAX_SEGMENT_LEN];
        assert_eq!(
            parse_path(&long, b'%'),
            Err(PathError::SegmentTooLong {
                index: 0,
                len: MAX_SEGMENT_LEN
            })
        );
        assert!(parse_path(&long[1..], b'%').is_ok());
        let mut index = b"a.b[".to_vec();
        index.extend_from_slice(&long);
        assert_eq!(
            parse_path(&index, b'%'),
            Err(PathError::SegmentTooLong {
                index: 1,
                len: MAX_SEGMENT_LEN
            })
        );
        // The text after ']' is not copied anywhere in C.
        let mut tail = b"b[1]".to_vec();
        tail.extend_from_slice(&long);
        assert!(parse_path(&tail, b'%').is_ok());
    }
}
