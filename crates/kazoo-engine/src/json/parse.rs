//! A port of json-c 0.16's tokener, as `json_tokener_parse` runs it (non-strict, no UTF-8
//! validation, default depth 32).
//!
//! The C module hands every JSON text to json-c, and scripts and Kazoo payloads rely on its
//! leniency, so this is a state-by-state port of `json_tokener_parse_ex` rather than a JSON
//! parser with extensions: the odd corners then come out the same by construction. Among them:
//! single-quoted strings, comments, trailing commas, case-insensitive `true`/`false`/`null`/`NaN`/
//! `Infinity`, numbers such as `01`, `5.`, `1e`, `-.5`, and everything after a complete top-level
//! value being ignored (unless it starts with a `/` that does not open a comment).
//!
//! The input is treated as a C string: the first NUL byte, or the end of the slice, is where the
//! text ends. Nesting is capped at [`MAX_DEPTH`] levels and handled with an explicit stack, so
//! no input can exhaust the call stack.

use std::collections::HashMap;
use std::fmt;

use super::{Double, Value};

/// json-c's `JSON_TOKENER_DEFAULT_DEPTH`: at most 32 nested levels, the top-level value
/// counting as the first. Deeper input is a [`ParseErrorKind::Depth`] error.
pub const MAX_DEPTH: usize = 32;

/// Why the text was rejected, with json-c's wording (`json_tokener_error_desc`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParseErrorKind {
    Depth,
    Eof,
    Unexpected,
    Null,
    Boolean,
    Number,
    ArraySeparator,
    ObjectKeyName,
    ObjectKeySeparator,
    ObjectValueSeparator,
    String,
    Comment,
}

impl ParseErrorKind {
    fn description(self) -> &'static str {
        match self {
            ParseErrorKind::Depth => "nesting too deep",
            ParseErrorKind::Eof => "unexpected end of data",
            ParseErrorKind::Unexpected => "unexpected character",
            ParseErrorKind::Null => "null expected",
            ParseErrorKind::Boolean => "boolean expected",
            ParseErrorKind::Number => "number expected",
            ParseErrorKind::ArraySeparator => "array value separator ',' expected",
            ParseErrorKind::ObjectKeyName => "quoted object property name expected",
            ParseErrorKind::ObjectKeySeparator => "object property name separator ':' expected",
            ParseErrorKind::ObjectValueSeparator => "object value separator ',' expected",
            ParseErrorKind::String => "invalid string sequence",
            ParseErrorKind::Comment => "expected comment",
        }
    }
}

/// A rejected JSON text: json-c's reason and the byte offset where the tokener stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    pub kind: ParseErrorKind,
    pub offset: usize,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} at byte {}", self.kind.description(), self.offset)
    }
}

impl std::error::Error for ParseError {}

/// The tokener states, named after json-c's `json_tokener_state_*`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Eatws,
    Start,
    Finish,
    Null,
    CommentStart,
    Comment,
    CommentEol,
    CommentEnd,
    String,
    StringEscape,
    EscapeUnicode,
    EscapeUnicodeNeedEscape,
    EscapeUnicodeNeedU,
    Boolean,
    Number,
    Array,
    ArrayAfterSep,
    ArrayAdd,
    ArraySep,
    ObjectFieldStart,
    ObjectFieldStartAfterSep,
    ObjectField,
    ObjectFieldEnd,
    ObjectValue,
    ObjectValueAdd,
    ObjectSep,
    Inf,
}

/// Objects with more members than this get a key index while they are parsed, so that
/// duplicate detection stays linear on large objects.
const INDEX_THRESHOLD: usize = 64;

/// One nesting level (json-c's `json_tokener_srec`).
struct Level {
    state: State,
    saved_state: State,
    /// The value built at this level; `None` is json-c's NULL (nothing yet, or JSON null).
    current: Option<Value>,
    /// The key whose value is being parsed one level down.
    field_name: Option<Vec<u8>>,
    /// Key positions of `current` once it is a large object.
    #[expect(
        clippy::box_collection,
        reason = "a level is moved for every value parsed; boxing keeps it small"
    )]
    index: Option<Box<HashMap<Vec<u8>, usize>>>,
}

impl Level {
    fn new() -> Self {
        Level {
            state: State::Eatws,
            saved_state: State::Start,
            current: None,
            field_name: None,
            index: None,
        }
    }

    fn array_add(&mut self, value: Value) {
        if let Some(Value::Array(items)) = &mut self.current {
            items.push(value);
        }
    }

    /// `json_object_object_add`: a repeated key keeps its first position and takes the new
    /// value.
    fn object_add(&mut self, key: Vec<u8>, value: Value) {
        let Some(Value::Object(entries)) = &mut self.current else {
            return;
        };
        let existing = match &self.index {
            Some(index) => index.get(&key).copied(),
            None => entries.iter().position(|(k, _)| *k == key),
        };
        if let Some(pos) = existing {
            if let Some(slot) = entries.get_mut(pos) {
                slot.1 = value;
            }
            return;
        }
        if let Some(index) = &mut self.index {
            index.insert(key.clone(), entries.len());
        } else if entries.len() >= INDEX_THRESHOLD {
            let mut index: HashMap<Vec<u8>, usize> = entries
                .iter()
                .enumerate()
                .map(|(pos, (k, _))| (k.clone(), pos))
                .collect();
            index.insert(key.clone(), entries.len());
            self.index = Some(Box::new(index));
        }
        entries.push((key, value));
    }
}

const INF_LOWER: &[u8; 8] = b"Infinity";
/// "Infinity" with every letter's case swapped: json-c accepts either case at each position.
const INF_SWAPPED: &[u8; 8] = b"iNFINITY";
const UTF8_REPLACEMENT: &[u8] = "\u{FFFD}".as_bytes();

fn is_ws(c: u8) -> bool {
    matches!(c, b' ' | b'\t' | b'\n' | b'\r')
}

fn hex_value(c: u8) -> Option<u32> {
    (c as char).to_digit(16)
}

fn is_high_surrogate(u: u32) -> bool {
    u & 0xFC00 == 0xD800
}

fn is_low_surrogate(u: u32) -> bool {
    u & 0xFC00 == 0xDC00
}

fn push_utf8(out: &mut Vec<u8>, ucs: u32) {
    // Mirrors json-c's hand-written encoder; surrogates never reach it.
    if ucs < 0x80 {
        out.push(ucs as u8);
    } else if ucs < 0x800 {
        out.extend_from_slice(&[0xC0 | (ucs >> 6) as u8, 0x80 | (ucs & 0x3F) as u8]);
    } else if ucs < 0x10000 {
        out.extend_from_slice(&[
            0xE0 | (ucs >> 12) as u8,
            0x80 | ((ucs >> 6) & 0x3F) as u8,
            0x80 | (ucs & 0x3F) as u8,
        ]);
    } else if ucs < 0x110000 {
        out.extend_from_slice(&[
            0xF0 | ((ucs >> 18) & 0x07) as u8,
            0x80 | ((ucs >> 12) & 0x3F) as u8,
            0x80 | ((ucs >> 6) & 0x3F) as u8,
            0x80 | (ucs & 0x3F) as u8,
        ]);
    } else {
        out.extend_from_slice(UTF8_REPLACEMENT);
    }
}

/// Parses `input` the way `json_tokener_parse` does.
///
/// Returns the top-level value; JSON `null` comes back as [`Value::Null`] (json-c returns a NULL
/// object for it, which the C module then reports as invalid JSON, with the same script-visible
/// outcome as a missing field).
pub fn parse(input: &[u8]) -> Result<Value, ParseError> {
    Tokener::new(input).run()
}

/// The tokener's working state (`struct json_tokener`), for one complete input.
struct Tokener<'a> {
    input: &'a [u8],
    /// Offset of the current character (`char_offset`).
    pos: usize,
    /// The current character; 0 at the end of the text.
    c: u8,
    /// The current level; its ancestors are in `stack`.
    top: Level,
    stack: Vec<Level>,
    /// The finished child value handed up to the parent level (json-c's `obj`).
    finished: Value,
    /// String and key contents being decoded (json-c's `pb`).
    buf: Vec<u8>,
    quote_char: u8,
    /// Where the literal (`null`, `true`, ...) being matched starts.
    literal_start: usize,
    st_pos: usize,
    is_double: bool,
    /// Whether the `Infinity` being matched had a leading '-'.
    inf_negative: bool,
    ucs_char: u32,
    high_surrogate: u32,
}

/// What a state handler wants next.
enum Step {
    /// Consume the current character and go on with the next one.
    Advance,
    /// Run the (new) state on the same character: json-c's `goto redo_char`.
    Redo,
    /// Stop with this error.
    Fail(ParseErrorKind),
    /// Stop as json-c's `goto out` does; success or failure is decided from the state.
    Out,
}

impl<'a> Tokener<'a> {
    fn new(input: &'a [u8]) -> Self {
        Tokener {
            input,
            pos: 0,
            c: 0,
            top: Level::new(),
            stack: Vec::new(),
            finished: Value::Null,
            buf: Vec::new(),
            quote_char: b'"',
            literal_start: 0,
            st_pos: 0,
            is_double: false,
            inf_negative: false,
            ucs_char: 0,
            high_surrogate: 0,
        }
    }

    /// The character at `pos`: a NUL byte and the end of the slice both read as 0, which is
    /// what json-c sees at the end of a C string.
    fn char_at(&self, pos: usize) -> u8 {
        self.input.get(pos).copied().unwrap_or(0)
    }

    fn advance(&mut self) {
        self.pos += 1;
        self.c = self.char_at(self.pos);
    }

    /// json-c's tight loops count the terminating NUL as consumed before they stop; this keeps
    /// error offsets identical.
    fn out_past_end(&mut self) -> Step {
        self.pos += 1;
        Step::Out
    }

    fn depth(&self) -> usize {
        self.stack.len()
    }

    fn run(mut self) -> Result<Value, ParseError> {
        let mut failure = None;
        self.c = self.char_at(0);
        'chars: loop {
            loop {
                match self.step() {
                    Step::Redo => continue,
                    Step::Advance => break,
                    Step::Fail(kind) => {
                        failure = Some(kind);
                        break 'chars;
                    }
                    Step::Out => break 'chars,
                }
            }
            if self.c == 0 {
                // The end of the text was consumed; `c` stays 0 for the checks below, as in
                // json-c, even if bytes follow an embedded NUL.
                self.pos += 1;
                break;
            }
            self.advance();
        }
        // At the end of the text anything but a finished value is truncated input; this
        // overrides the error a state may have reported for the NUL itself.
        if self.c == 0 && self.top.state != State::Finish && self.top.saved_state != State::Finish {
            failure = Some(ParseErrorKind::Eof);
        }
        match failure {
            Some(kind) => Err(ParseError {
                kind,
                offset: self.pos,
            }),
            // Like json-c, this is the value of whatever level the text ended in: an
            // unterminated comment right after a nested value returns that value.
            None => Ok(self.top.current.take().unwrap_or(Value::Null)),
        }
    }

    /// Starts a child level for an array element or an object member.
    fn descend(&mut self, parent_state: State) -> Step {
        if self.depth() >= MAX_DEPTH - 1 {
            return Step::Fail(ParseErrorKind::Depth);
        }
        self.top.state = parent_state;
        let parent = std::mem::replace(&mut self.top, Level::new());
        self.stack.push(parent);
        Step::Redo
    }

    fn finish_value(&mut self, value: Option<Value>) -> Step {
        self.top.current = value;
        self.top.saved_state = State::Finish;
        self.top.state = State::Eatws;
        Step::Redo
    }

    fn step(&mut self) -> Step {
        let c = self.c;
        match self.top.state {
            State::Eatws => {
                while is_ws(self.c) {
                    self.advance();
                }
                if self.c == b'/' {
                    self.top.state = State::CommentStart;
                    Step::Advance
                } else {
                    self.top.state = self.top.saved_state;
                    Step::Redo
                }
            }
            State::Start => self.start(c),
            State::Finish => match self.stack.pop() {
                // The top-level value is complete; whatever follows is ignored.
                None => Step::Out,
                Some(parent) => {
                    self.finished = self.top.current.take().unwrap_or(Value::Null);
                    self.top = parent;
                    Step::Redo
                }
            },
            State::Inf => self.infinity(),
            State::Null => self.null_or_nan(),
            State::CommentStart => {
                self.top.state = match c {
                    b'*' => State::Comment,
                    b'/' => State::CommentEol,
                    _ => return Step::Fail(ParseErrorKind::Comment),
                };
                Step::Advance
            }
            State::Comment => {
                while self.c != b'*' {
                    if self.c == 0 {
                        return self.out_past_end();
                    }
                    self.advance();
                }
                self.top.state = State::CommentEnd;
                Step::Advance
            }
            State::CommentEol => {
                while self.c != b'\n' {
                    if self.c == 0 {
                        return self.out_past_end();
                    }
                    self.advance();
                }
                self.top.state = State::Eatws;
                Step::Advance
            }
            State::CommentEnd => {
                self.top.state = if c == b'/' {
                    State::Eatws
                } else {
                    State::Comment
                };
                Step::Advance
            }
            State::String | State::ObjectField => self.string_chars(),
            State::StringEscape => self.string_escape(c),
            State::EscapeUnicode => self.escape_unicode(),
            State::EscapeUnicodeNeedEscape => {
                if c != b'\\' {
                    // A high surrogate not followed by another escape.
                    self.lone_high_surrogate();
                    self.top.state = self.top.saved_state;
                    return Step::Redo;
                }
                self.top.state = State::EscapeUnicodeNeedU;
                Step::Advance
            }
            State::EscapeUnicodeNeedU => {
                if c != b'u' {
                    // A high surrogate followed by some other escape, handled normally.
                    self.lone_high_surrogate();
                    self.top.state = State::StringEscape;
                    return Step::Redo;
                }
                self.top.state = State::EscapeUnicode;
                Step::Advance
            }
            State::Boolean => self.boolean(),
            State::Number => self.number(),
            State::Array | State::ArrayAfterSep => {
                if c == b']' {
                    self.top.saved_state = State::Finish;
                    self.top.state = State::Eatws;
                    Step::Advance
                } else {
                    self.descend(State::ArrayAdd)
                }
            }
            State::ArrayAdd => {
                let value = std::mem::replace(&mut self.finished, Value::Null);
                self.top.array_add(value);
                self.top.saved_state = State::ArraySep;
                self.top.state = State::Eatws;
                Step::Redo
            }
            State::ArraySep => {
                self.top.saved_state = match c {
                    b']' => State::Finish,
                    b',' => State::ArrayAfterSep,
                    _ => return Step::Fail(ParseErrorKind::ArraySeparator),
                };
                self.top.state = State::Eatws;
                Step::Advance
            }
            State::ObjectFieldStart | State::ObjectFieldStartAfterSep => match c {
                b'}' => {
                    self.top.saved_state = State::Finish;
                    self.top.state = State::Eatws;
                    Step::Advance
                }
                b'"' | b'\'' => {
                    self.quote_char = c;
                    self.buf.clear();
                    self.top.state = State::ObjectField;
                    Step::Advance
                }
                _ => Step::Fail(ParseErrorKind::ObjectKeyName),
            },
            State::ObjectFieldEnd => {
                if c != b':' {
                    return Step::Fail(ParseErrorKind::ObjectKeySeparator);
                }
                self.top.saved_state = State::ObjectValue;
                self.top.state = State::Eatws;
                Step::Advance
            }
            State::ObjectValue => self.descend(State::ObjectValueAdd),
            State::ObjectValueAdd => {
                let value = std::mem::replace(&mut self.finished, Value::Null);
                let key = self.top.field_name.take().unwrap_or_default();
                self.top.object_add(key, value);
                self.top.saved_state = State::ObjectSep;
                self.top.state = State::Eatws;
                Step::Redo
            }
            State::ObjectSep => {
                self.top.saved_state = match c {
                    b'}' => State::Finish,
                    b',' => State::ObjectFieldStartAfterSep,
                    _ => return Step::Fail(ParseErrorKind::ObjectValueSeparator),
                };
                self.top.state = State::Eatws;
                Step::Advance
            }
        }
    }

    fn start(&mut self, c: u8) -> Step {
        match c {
            b'{' => {
                self.top.state = State::Eatws;
                self.top.saved_state = State::ObjectFieldStart;
                self.top.current = Some(Value::Object(Vec::new()));
                Step::Advance
            }
            b'[' => {
                self.top.state = State::Eatws;
                self.top.saved_state = State::Array;
                self.top.current = Some(Value::Array(Vec::new()));
                Step::Advance
            }
            b'I' | b'i' => {
                self.top.state = State::Inf;
                self.inf_negative = false;
                self.st_pos = 0;
                Step::Redo
            }
            b'N' | b'n' => {
                self.top.state = State::Null;
                self.literal_start = self.pos;
                self.st_pos = 0;
                Step::Redo
            }
            b'\'' | b'"' => {
                self.top.state = State::String;
                self.buf.clear();
                self.quote_char = c;
                Step::Advance
            }
            b'T' | b't' | b'F' | b'f' => {
                self.top.state = State::Boolean;
                self.literal_start = self.pos;
                self.st_pos = 0;
                Step::Redo
            }
            b'0'..=b'9' | b'-' => {
                self.top.state = State::Number;
                self.is_double = false;
                Step::Redo
            }
            _ => Step::Fail(ParseErrorKind::Unexpected),
        }
    }

    /// Whether the first `size` characters of the literal read so far equal `word`, ignoring
    /// ASCII case (json-c's non-strict `strncasecmp`).
    fn literal_matches(&self, word: &[u8], size: usize) -> bool {
        let size = size.min(word.len());
        word.iter()
            .take(size)
            .enumerate()
            .all(|(k, w)| self.char_at(self.literal_start + k).eq_ignore_ascii_case(w))
    }

    /// `null` or `NaN`, in any case. json-c decides one character after the literal (which
    /// may be the end of the text) and then re-reads that character in the next state.
    fn null_or_nan(&mut self) -> Step {
        let seen = self.st_pos + 1;
        if self.literal_matches(b"null", seen) {
            if self.st_pos == 4 {
                return self.finish_value(Some(Value::Null));
            }
        } else if self.literal_matches(b"nan", seen) {
            if self.st_pos == 3 {
                return self.finish_value(Some(Value::Double(Double::new(f64::NAN))));
            }
        } else {
            return Step::Fail(ParseErrorKind::Null);
        }
        self.st_pos += 1;
        Step::Advance
    }

    /// `true` or `false`, in any case, decided like [`Self::null_or_nan`].
    fn boolean(&mut self) -> Step {
        let seen = self.st_pos + 1;
        if self.literal_matches(b"true", seen) {
            if self.st_pos == 4 {
                return self.finish_value(Some(Value::Bool(true)));
            }
        } else if self.literal_matches(b"false", seen) {
            if self.st_pos == 5 {
                return self.finish_value(Some(Value::Bool(false)));
            }
        } else {
            return Step::Fail(ParseErrorKind::Boolean);
        }
        self.st_pos += 1;
        Step::Advance
    }

    /// `Infinity` in any case, possibly after a '-' read by the number state.
    fn infinity(&mut self) -> Step {
        while let (Some(&exact), Some(&swapped)) =
            (INF_LOWER.get(self.st_pos), INF_SWAPPED.get(self.st_pos))
        {
            if self.c != exact && self.c != swapped {
                return Step::Fail(ParseErrorKind::Unexpected);
            }
            self.st_pos += 1;
            self.advance();
        }
        let value = if self.inf_negative {
            f64::NEG_INFINITY
        } else {
            f64::INFINITY
        };
        self.finish_value(Some(Value::Double(Double::new(value))))
    }

    /// The body of a string or an object key, up to its closing quote or a backslash.
    fn string_chars(&mut self) -> Step {
        let quote = self.quote_char;
        let rest = self.input.get(self.pos..).unwrap_or_default();
        let run = rest
            .iter()
            .position(|&b| b == quote || b == b'\\' || b == 0)
            .unwrap_or(rest.len());
        self.buf
            .extend_from_slice(rest.get(..run).unwrap_or_default());
        self.pos += run;
        self.c = self.char_at(self.pos);
        if self.c == 0 {
            return self.out_past_end();
        }
        if self.c == b'\\' {
            self.top.saved_state = self.top.state;
            self.top.state = State::StringEscape;
            return Step::Advance;
        }
        if self.top.state == State::ObjectField {
            // json-c keeps keys as C strings: a decoded NUL ends the key.
            let end = self
                .buf
                .iter()
                .position(|&b| b == 0)
                .unwrap_or(self.buf.len());
            self.top.field_name = Some(self.buf.get(..end).unwrap_or_default().to_vec());
            self.top.saved_state = State::ObjectFieldEnd;
            self.top.state = State::Eatws;
            return Step::Advance;
        }
        // Copied rather than taken, so that the buffer keeps its capacity for the next string
        // and the value gets an exact-size allocation.
        let text = self.buf.as_slice().to_vec();
        self.finish_value(Some(Value::String(text)));
        Step::Advance
    }

    fn string_escape(&mut self, c: u8) -> Step {
        let decoded = match c {
            b'"' | b'\\' | b'/' => c,
            b'b' => 0x08,
            b'n' => b'\n',
            b'r' => b'\r',
            b't' => b'\t',
            b'f' => 0x0C,
            b'u' => {
                self.ucs_char = 0;
                self.st_pos = 0;
                self.top.state = State::EscapeUnicode;
                return Step::Advance;
            }
            _ => return Step::Fail(ParseErrorKind::String),
        };
        self.buf.push(decoded);
        self.top.state = self.top.saved_state;
        Step::Advance
    }

    /// The four hex digits of a `\u` escape, pairing surrogates across two escapes. Lone
    /// surrogates become U+FFFD, as in json-c.
    fn escape_unicode(&mut self) -> Step {
        loop {
            let Some(digit) = hex_value(self.c) else {
                return Step::Fail(ParseErrorKind::String);
            };
            self.ucs_char |= digit << ((3 - self.st_pos.min(3)) * 4);
            self.st_pos += 1;
            if self.st_pos >= 4 {
                break;
            }
            self.advance();
        }
        self.st_pos = 0;
        if self.high_surrogate != 0 {
            if is_low_surrogate(self.ucs_char) {
                self.ucs_char =
                    (((self.high_surrogate & 0x3FF) << 10) | (self.ucs_char & 0x3FF)) + 0x10000;
            } else {
                self.buf.extend_from_slice(UTF8_REPLACEMENT);
            }
            self.high_surrogate = 0;
        }
        if is_high_surrogate(self.ucs_char) {
            // Wait for a following `\u` that may hold the low half.
            self.high_surrogate = self.ucs_char;
            self.ucs_char = 0;
            self.top.state = State::EscapeUnicodeNeedEscape;
            return Step::Advance;
        }
        if is_low_surrogate(self.ucs_char) {
            self.buf.extend_from_slice(UTF8_REPLACEMENT);
        } else {
            push_utf8(&mut self.buf, self.ucs_char);
        }
        self.top.state = self.top.saved_state;
        Step::Advance
    }

    fn lone_high_surrogate(&mut self) {
        self.buf.extend_from_slice(UTF8_REPLACEMENT);
        self.high_surrogate = 0;
        self.ucs_char = 0;
        self.st_pos = 0;
    }

    fn number(&mut self) -> Step {
        let start = self.pos;
        let mut is_exponent = false;
        let mut neg_sign_ok = true;
        let mut pos_sign_ok = false;
        loop {
            let c = self.c;
            let accepted = c.is_ascii_digit()
                || (!is_exponent && (c == b'e' || c == b'E'))
                || (neg_sign_ok && c == b'-')
                || (pos_sign_ok && c == b'+')
                || (!self.is_double && c == b'.');
            if !accepted {
                break;
            }
            pos_sign_ok = false;
            neg_sign_ok = false;
            match c {
                b'.' => {
                    self.is_double = true;
                    pos_sign_ok = true;
                    neg_sign_ok = true;
                }
                b'e' | b'E' => {
                    is_exponent = true;
                    self.is_double = true;
                    pos_sign_ok = true;
                    neg_sign_ok = true;
                }
                _ => {}
            }
            self.advance();
        }
        let c = self.c;
        // Inside a container the number must be followed by something that can follow a
        // value; at the top level the rest of the text is simply ignored.
        if self.depth() > 0 && !matches!(c, b',' | b']' | b'}' | b'/' | b'I' | b'i') && !is_ws(c) {
            return Step::Fail(ParseErrorKind::Number);
        }
        let input = self.input;
        let mut text = input.get(start..self.pos).unwrap_or_default();
        if text == b"-" && (c == b'i' || c == b'I') {
            self.top.state = State::Inf;
            self.inf_negative = true;
            self.st_pos = 0;
            return Step::Redo;
        }
        if self.is_double {
            // Trailing exponent and sign characters are dropped, so `1e` and `1e+` read as 1.
            while let [rest @ .., last] = text {
                if rest.is_empty() || !matches!(last, b'e' | b'E' | b'-' | b'+') {
                    break;
                }
                text = rest;
            }
        }
        let value = if self.is_double {
            if !strtod_accepts_all(text) {
                return Step::Fail(ParseErrorKind::Number);
            }
            let number = std::str::from_utf8(text)
                .ok()
                .and_then(|s| s.parse::<f64>().ok())
                .unwrap_or(f64::NAN);
            Value::Double(Double::with_text(number, text))
        } else if let Some(digits) = text.strip_prefix(b"-") {
            if digits.is_empty() {
                return Step::Fail(ParseErrorKind::Number);
            }
            Value::Int(saturating_negative(digits))
        } else {
            let n = saturating_unsigned(text);
            match i64::try_from(n) {
                Ok(n) => Value::Int(n),
                Err(_) => Value::UInt(n),
            }
        };
        self.finish_value(Some(value))
    }
}

/// `strtoll` on `-digits`: saturates at `i64::MIN`.
fn saturating_negative(digits: &[u8]) -> i64 {
    digits.iter().fold(0i64, |acc, d| {
        acc.saturating_mul(10)
            .saturating_sub(i64::from(d.wrapping_sub(b'0')))
    })
}

/// `strtoull` on digits: saturates at `u64::MAX`.
fn saturating_unsigned(digits: &[u8]) -> u64 {
    digits.iter().fold(0u64, |acc, d| {
        acc.saturating_mul(10)
            .saturating_add(u64::from(d.wrapping_sub(b'0')))
    })
}

/// Whether C's `strtod` consumes all of `text`, which json-c requires of a double. The number
/// scanner has already limited `text` to digits, signs, '.', 'e' and 'E', so only the decimal
/// form matters: `[-]digits[.digits][e[+-]digits]`, with at least one mantissa digit; an
/// exponent without digits is not consumed.
fn strtod_accepts_all(text: &[u8]) -> bool {
    let digits_from = |from: usize| {
        text.get(from..).map_or(0, |rest| {
            rest.iter().take_while(|b| b.is_ascii_digit()).count()
        })
    };
    let mut pos = usize::from(matches!(text.first(), Some(b'-' | b'+')));
    let int_digits = digits_from(pos);
    pos += int_digits;
    let mut frac_digits = 0;
    if text.get(pos) == Some(&b'.') {
        frac_digits = digits_from(pos + 1);
        pos += 1 + frac_digits;
    }
    if int_digits + frac_digits == 0 {
        return false;
    }
    if matches!(text.get(pos), Some(b'e' | b'E')) {
        let mut exp = pos + 1;
        if matches!(text.get(exp), Some(b'-' | b'+')) {
            exp += 1;
        }
        let exp_digits = digits_from(exp);
        if exp_digits > 0 {
            pos = exp + exp_digits;
        }
    }
    pos == text.len()
}
