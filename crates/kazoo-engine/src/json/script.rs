//! The script-level JSON helpers: what `kazoo_json`, `kazoo_json_keys`, `{kz.json,PATH}` and
//! `{kz.json.count,PATH}` compute, minus the Kamailio plumbing (which stays in the module glue).
//!
//! Each helper parses the JSON text first, as the C module does, so invalid JSON is reported
//! even when the path is bad too. The last document parsed is kept per thread: a route reading
//! several fields of the same payload (`$(kzE{kz.json,...})` again and again) parses it once.

use std::cell::RefCell;
use std::fmt;

use super::{parse, parse_path, to_json, ParseError, PathError, Value};

/// Why a helper could not produce a result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JsonError {
    /// The JSON text was rejected. The C module logs "empty or invalid JSON" and then behaves
    /// as for a missing field: `kazoo_json` → null, `kz.json` → `""`, `kz.json.count` → 0.
    InvalidJson(ParseError),
    /// The path is one the C module crashes on.
    BadPath(PathError),
    /// `kazoo_json_keys` found a value of this json-c type (not an object) at the path; the C
    /// module crashes there.
    NotAnObject(&'static str),
}

impl fmt::Display for JsonError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JsonError::InvalidJson(e) => write!(f, "empty or invalid JSON: {e}"),
            JsonError::BadPath(e) => write!(f, "invalid JSON path: {e}"),
            JsonError::NotAnObject(kind) => {
                write!(f, "value at JSON path is {kind}, not an object")
            }
        }
    }
}

impl std::error::Error for JsonError {}

impl From<ParseError> for JsonError {
    fn from(e: ParseError) -> Self {
        JsonError::InvalidJson(e)
    }
}

impl From<PathError> for JsonError {
    fn from(e: PathError) -> Self {
        JsonError::BadPath(e)
    }
}

/// Documents up to this size are kept for the next lookup (one per thread).
const CACHED_MAX: usize = 64 * 1024;

thread_local! {
    /// The last document parsed on this thread: its text and its tree.
    static LAST_PARSED: RefCell<Option<(Vec<u8>, Value)>> = const { RefCell::new(None) };
}

/// Parses `json`, then `path`, and looks the path up; `Ok(None)` is null.
fn with_node<T>(
    json: &[u8],
    path: &[u8],
    escape_char: u8,
    f: impl FnOnce(Option<&Value>) -> T,
) -> Result<T, JsonError> {
    LAST_PARSED.with(|cell| {
        let mut last = cell.borrow_mut();
        if last
            .as_ref()
            .is_none_or(|(text, _)| text.as_slice() != json)
        {
            let root = parse(json)?;
            if json.len() > CACHED_MAX {
                let path = parse_path(path, escape_char)?;
                return Ok(f(path.lookup(&root)));
            }
            *last = Some((json.to_vec(), root));
        }
        let path = parse_path(path, escape_char)?;
        let root = last.as_ref().map(|(_, root)| root);
        Ok(f(root.and_then(|root| path.lookup(root))))
    })
}

/// The text json-c's `json_object_get_string` gives for a node, cut at the first NUL as the C
/// module's `strlen` does: strings raw and unescaped, everything else as spaced JSON.
fn node_text(node: &Value) -> Vec<u8> {
    match node {
        Value::String(s) => {
            let end = s.iter().position(|&b| b == 0).unwrap_or(s.len());
            s.get(..end).unwrap_or_default().to_vec()
        }
        other => to_json(other),
    }
}

/// `kazoo_json(json, path, dst)`: the text stored in `dst`, or `None` when `dst` becomes null
/// (missing path, JSON null).
pub fn field_text(json: &[u8], path: &[u8], escape_char: u8) -> Result<Option<Vec<u8>>, JsonError> {
    with_node(json, path, escape_char, |node| node.map(node_text))
}

/// `{kz.json,PATH}`: like [`field_text`], but null gives the empty string.
pub fn field_text_or_empty(
    json: &[u8],
    path: &[u8],
    escape_char: u8,
) -> Result<Vec<u8>, JsonError> {
    with_node(json, path, escape_char, |node| {
        node.map(node_text).unwrap_or_default()
    })
}

/// `{kz.json.count,PATH}`: the length of the array at the path, 0 for anything else.
pub fn array_len(json: &[u8], path: &[u8], escape_char: u8) -> Result<i64, JsonError> {
    with_node(json, path, escape_char, |node| match node {
        Some(Value::Array(items)) => i64::try_from(items.len()).unwrap_or(i64::MAX),
        _ => 0,
    })
}

/// `kazoo_json_keys(json, path, avp)`: the keys of the object at the path, in object order.
///
/// `Ok(None)` when nothing is to be added because the path is missing or null. Invalid JSON is
/// [`JsonError::InvalidJson`], for the log line; the C module then also returns 1 and adds
/// nothing. A non-object at the path is [`JsonError::NotAnObject`], a bad path
/// [`JsonError::BadPath`].
pub fn object_keys(
    json: &[u8],
    path: &[u8],
    escape_char: u8,
) -> Result<Option<Vec<Vec<u8>>>, JsonError> {
    with_node(json, path, escape_char, |node| match node {
        None => Ok(None),
        Some(Value::Object(entries)) => Ok(Some(entries.iter().map(|(k, _)| k.clone()).collect())),
        Some(other) => Err(JsonError::NotAnObject(other.type_name())),
    })?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kept_document_never_answers_for_another() {
        let one = br#"{"a": "one", "n": [1, 2]}"#;
        let two = br#"{"a": "two"}"#;
        let big = format!(r#"{{"a": "big", "pad": "{}"}}"#, "x".repeat(CACHED_MAX));
        for _ in 0..2 {
            assert_eq!(field_text(one, b"a", b'%'), Ok(Some(b"one".to_vec())));
            assert_eq!(array_len(one, b"n", b'%'), Ok(2));
            assert_eq!(field_text(two, b"a", b'%'), Ok(Some(b"two".to_vec())));
            assert_eq!(array_len(two, b"n", b'%'), Ok(0));
            assert_eq!(
                field_text(big.as_bytes(), b"a", b'%'),
                Ok(Some(b"big".to_vec()))
            );
            assert!(matches!(
                field_text(b"{", b"a", b'%'),
                Err(JsonError::InvalidJson(_))
            ));
            // A bad path is reported for a kept document too.
            assert!(matches!(
                field_text(one, b"a..b", b'%'),
                Err(JsonError::BadPath(_))
            ));
        }
    }
}
