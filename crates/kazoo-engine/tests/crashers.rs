//! Inputs that crash or corrupt the C module (`vectors/crashers.txt`): each must give a clean
//! error or a defined result here, never a panic.

use kazoo_engine::json::{
    array_len, field_text, field_text_or_empty, object_keys, parse, JsonError, ParseErrorKind,
    PathError, MAX_DEPTH, MAX_SEGMENT_LEN,
};

const ESC: u8 = b'%';

fn assert_bad_path(json: &[u8], path: &[u8]) {
    let name = String::from_utf8_lossy(path);
    assert!(
        matches!(field_text(json, path, ESC), Err(JsonError::BadPath(_))),
        "kazoo_json path {name:?}"
    );
    assert!(
        matches!(
            field_text_or_empty(json, path, ESC),
            Err(JsonError::BadPath(_))
        ),
        "kz.json path {name:?}"
    );
    assert!(
        matches!(array_len(json, path, ESC), Err(JsonError::BadPath(_))),
        "kz.json.count path {name:?}"
    );
    assert!(
        matches!(object_keys(json, path, ESC), Err(JsonError::BadPath(_))),
        "kazoo_json_keys path {name:?}"
    );
}

#[test]
fn empty_segments_are_path_errors() {
    let json = br#"{"a":{"b":1}}"#;
    for path in [
        &b"a..b"[..],
        b".a",
        b"",
        b".",
        b"..",
        b"a..",
        b"a.b..",
        b"..a",
    ] {
        assert_bad_path(json, path);
    }
    // One trailing '.' is fine, as in C.
    assert_eq!(
        field_text(json, b"a.", ESC),
        Ok(Some(b"{ \"b\": 1 }".to_vec()))
    );
    assert_eq!(field_text(json, b"a.b.", ESC), Ok(Some(b"1".to_vec())));
}

#[test]
fn path_error_messages_are_loggable() {
    let Err(e) = field_text(b"{}", b"a..b", ESC) else {
        panic!("a..b accepted");
    };
    assert_eq!(
        e.to_string(),
        "invalid JSON path: empty segment 2 in JSON path"
    );
    let Err(e) = field_text(b"{}", b"", ESC) else {
        panic!("empty path accepted");
    };
    assert_eq!(e.to_string(), "invalid JSON path: empty JSON path");
}

#[test]
fn invalid_json_wins_over_a_bad_path() {
    // The C module parses the JSON first and returns before splitting the path.
    assert!(matches!(
        field_text(b"not json", b"a..b", ESC),
        Err(JsonError::InvalidJson(_))
    ));
    assert!(matches!(
        object_keys(b"not json", b"a..b", ESC),
        Err(JsonError::InvalidJson(_))
    ));
}

#[test]
fn keys_of_non_objects_are_errors() {
    for (json, kind) in [
        (&br#"{"o":[1,2]}"#[..], "array"),
        (br#"{"o":"str"}"#, "string"),
        (br#"{"o":5}"#, "int"),
        (br#"{"o":1.5}"#, "double"),
        (br#"{"o":true}"#, "boolean"),
    ] {
        assert_eq!(
            object_keys(json, b"o", ESC),
            Err(JsonError::NotAnObject(kind)),
            "{}",
            String::from_utf8_lossy(json)
        );
    }
    let Err(e) = object_keys(br#"{"o":[1]}"#, b"o", ESC) else {
        panic!("keys of an array");
    };
    assert_eq!(e.to_string(), "value at JSON path is array, not an object");
    // Root paths cannot be written at all.
    assert!(matches!(
        object_keys(br#"{"o":{"a":1}}"#, b"", ESC),
        Err(JsonError::BadPath(PathError::Empty))
    ));
    // Missing and null add nothing and are not errors; invalid JSON is reported for the log
    // (the C module returns 1 and adds nothing there too).
    assert_eq!(object_keys(br#"{"o":null}"#, b"o", ESC), Ok(None));
    assert_eq!(object_keys(br#"{"o":{}}"#, b"missing", ESC), Ok(None));
    assert!(matches!(
        object_keys(b"{", b"o", ESC),
        Err(JsonError::InvalidJson(e)) if e.kind == ParseErrorKind::Eof
    ));
}

#[test]
fn deep_nesting_is_an_error_not_a_stack_overflow() {
    let nested = |levels: usize| {
        let mut text = vec![b'['; levels];
        text.extend(std::iter::repeat_n(b']', levels));
        text
    };
    // json-c's default depth: 32 levels parse, 33 do not.
    assert!(parse(&nested(MAX_DEPTH)).is_ok());
    let Err(e) = parse(&nested(MAX_DEPTH + 1)) else {
        panic!("33 levels accepted");
    };
    assert_eq!(e.kind, ParseErrorKind::Depth);
    assert_eq!(e.to_string(), "nesting too deep at byte 32");

    let huge = nested(1_000_000);
    assert!(matches!(
        parse(&huge),
        Err(e) if e.kind == ParseErrorKind::Depth
    ));
    let mut objects = b"{\"a\":".repeat(100_000);
    objects.extend(std::iter::repeat_n(b'}', 100_000));
    assert!(matches!(
        field_text(&objects, b"a.a", ESC),
        Err(JsonError::InvalidJson(e)) if e.kind == ParseErrorKind::Depth
    ));
}

#[test]
fn huge_segments_are_path_errors() {
    let json = br#"{"a":{"b":1}}"#;
    let mut long = b"a.".to_vec();
    long.extend(std::iter::repeat_n(b'k', MAX_SEGMENT_LEN));
    assert!(matches!(
        field_text(json, &long, ESC),
        Err(JsonError::BadPath(PathError::SegmentTooLong { index: 1, len })) if len == MAX_SEGMENT_LEN
    ));
    let mut index = b"a[".to_vec();
    index.extend(std::iter::repeat_n(b'1', 10_000));
    index.push(b']');
    assert_bad_path(json, &index);
    // Just under the limit is an ordinary (missing) key.
    let mut fits = b"a.".to_vec();
    fits.extend(std::iter::repeat_n(b'k', MAX_SEGMENT_LEN - 1));
    assert_eq!(field_text(json, &fits, ESC), Ok(None));
    // Long paths made of short segments are fine (and null once a key is missing).
    let many = b"a.".repeat(100_000);
    assert_eq!(field_text(json, &many, ESC), Ok(None));
    // Text after ']' is never copied by the C module, so it may be of any length.
    let mut long_tail = b"a[0]".to_vec();
    long_tail.extend(std::iter::repeat_n(b'x', 100_000));
    long_tail.extend_from_slice(b".b.");
    assert_eq!(field_text(json, &long_tail, ESC), Ok(Some(b"1".to_vec())));
}

#[test]
fn a_leading_bracket_segment_resolves_to_null() {
    // C reads uninitialised stack memory as the key here; it was seen to give null.
    for json in [&br#"{"a":{"b":1}}"#[..], b"[1,2]", br#"{"":1}"#] {
        assert_eq!(field_text(json, b"[0]", ESC), Ok(None));
        assert_eq!(field_text_or_empty(json, b"[0]", ESC), Ok(Vec::new()));
        assert_eq!(array_len(json, b"[0]", ESC), Ok(0));
        assert_eq!(object_keys(json, b"[0]", ESC), Ok(None));
    }
    // After a named segment, '[' reuses that name (json_path.tsv: "a.o.[1]").
    assert_eq!(
        field_text(br#"{"a":{"a":{"a":7}}}"#, b"a.[0].[1]", ESC),
        Ok(Some(b"7".to_vec()))
    );
}

#[test]
fn text_ends_at_a_nul_byte_as_in_c() {
    assert_eq!(
        field_text(b"{\"a\":1}\0garbage", b"a", ESC),
        Ok(Some(b"1".to_vec()))
    );
    assert!(matches!(
        field_text(b"{\"a\":\"x\0y\"}", b"a", ESC),
        Err(JsonError::InvalidJson(e)) if e.kind == ParseErrorKind::Eof
    ));
    assert_eq!(
        field_text(br#"{"a":1}"#, b"a\0.b", ESC),
        Ok(Some(b"1".to_vec()))
    );
    // A decoded \u0000 cuts the kazoo_json result and object keys, not the stored string.
    assert_eq!(
        field_text(br#"{"a":"x\u0000y"}"#, b"a", ESC),
        Ok(Some(b"x".to_vec()))
    );
    assert_eq!(
        field_text(br#"{"o":{"a":"x\u0000y"}}"#, b"o", ESC),
        Ok(Some(br#"{ "a": "x\u0000y" }"#.to_vec()))
    );
    assert_eq!(
        object_keys(br#"{"o":{"k\u0000x":1,"k":2}}"#, b"o", ESC),
        Ok(Some(vec![b"k".to_vec()]))
    );
}
