//! JSON as the C module sees it through json-c 0.16.
//!
//! This module owns everything JSON-shaped in the engine:
//! - [`Value`], the in-memory tree, with the number flavours json-c keeps apart;
//! - [`parse`], a port of json-c 0.16's lenient tokener (`json_tokener_parse`);
//! - [`to_json`] / [`write_json`], json-c's default "spaced" serialisation;
//! - [`Path`] / [`parse_path`], the `kazoo_json` / `kz.json` path language;
//! - the script-level helpers [`field_text`], [`field_text_or_empty`], [`array_len`] and
//!   [`object_keys`] that the module glue calls.
//!
//! Byte strings are used throughout: json-c passes invalid UTF-8 through untouched and lets
//! `\u0000` into string values, and scripts can depend on both.

mod parse;
mod path;
mod script;
mod write;

pub use parse::{parse, ParseError, ParseErrorKind, MAX_DEPTH};
pub use path::{parse_path, Path, PathError, MAX_SEGMENT_LEN};
pub use script::{array_len, field_text, field_text_or_empty, object_keys, JsonError};
pub use write::{to_json, write_json};

/// A JSON value, shaped like a json-c object tree.
///
/// Objects keep their keys in insertion order. A key that appears twice keeps the position of
/// its first occurrence and the value of its last one, as `json_object_object_add` does.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    /// A signed 64-bit integer. Parsed integers below `i64::MIN` saturate to it, as json-c's
    /// `strtoll` does.
    Int(i64),
    /// An unsigned integer as json-c stores it when the text is above `i64::MAX`; it saturates at
    /// `u64::MAX`. The parser only produces it for values above `i64::MAX`.
    UInt(u64),
    Double(Double),
    /// The decoded bytes: not necessarily UTF-8, and may contain NUL.
    String(Vec<u8>),
    Array(Vec<Value>),
    /// Key/value pairs in object order. Keys never contain NUL when parsed (json-c stores keys
    /// as C strings, so a `\u0000` cuts the key short).
    Object(Vec<(Vec<u8>, Value)>),
}

impl Value {
    /// The json-c type name (`"null"`, `"boolean"`, `"int"`, `"double"`, `"string"`, `"array"`,
    /// `"object"`), for log messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::Null => "null",
            Value::Bool(_) => "boolean",
            Value::Int(_) | Value::UInt(_) => "int",
            Value::Double(_) => "double",
            Value::String(_) => "string",
            Value::Array(_) => "array",
            Value::Object(_) => "object",
        }
    }

    /// The value stored under `key` when `self` is an object (`json_object_object_get_ex`).
    /// A JSON `null` member is returned as `Some(&Value::Null)`.
    pub fn get(&self, key: &[u8]) -> Option<&Value> {
        match self {
            Value::Object(entries) => entries.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    /// Sets `key` to `value` with `json_object_object_add` semantics: an existing key keeps its
    /// position and gets the new value, a new key is appended. Returns `false`, leaving `self`
    /// unchanged, when `self` is not an object (json-c aborts there).
    pub fn insert(&mut self, key: &[u8], value: Value) -> bool {
        let Value::Object(entries) = self else {
            return false;
        };
        match entries.iter_mut().find(|(k, _)| k == key) {
            Some((_, slot)) => *slot = value,
            None => entries.push((key.to_vec(), value)),
        }
        true
    }

    /// The bytes of a string value.
    pub fn as_bytes(&self) -> Option<&[u8]> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }
}

/// A json-c double: its value and, when it was parsed, the exact source text.
///
/// json-c prints a parsed double with the text it was read from (`1.0`, `1e2`, `-0.0`, `5.`,
/// even `1e400`), and any other double with `%.17g` (plus `.0` when that looks like an
/// integer), or `NaN` / `Infinity` / `-Infinity`.
#[derive(Debug, Clone, PartialEq)]
pub struct Double {
    value: f64,
    text: Option<Box<str>>,
}

impl Double {
    /// A double without source text, printed as json-c prints `json_object_new_double`.
    pub fn new(value: f64) -> Self {
        Double { value, text: None }
    }

    /// A double that prints as `text`. The parser uses this; `text` must be what json-c
    /// accepted as the number's source.
    pub(crate) fn with_text(value: f64, text: &[u8]) -> Self {
        // The number scanner only lets ASCII digits, signs, '.', 'e' and 'E' through, so the
        // lossy conversion never replaces anything.
        let text = String::from_utf8_lossy(text).into_owned().into_boxed_str();
        Double {
            value,
            text: Some(text),
        }
    }

    pub fn value(&self) -> f64 {
        self.value
    }

    /// The source text of a parsed double, if any.
    pub fn text(&self) -> Option<&str> {
        self.text.as_deref()
    }
}
