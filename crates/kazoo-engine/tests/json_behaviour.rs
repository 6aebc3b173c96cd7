//! json-c leniency and output details (vectors/README.md §7.8), the single-quoted examples of
//! the module README, and `Value` helpers.

use kazoo_engine::json::{field_text, parse, to_json, write_json, Double, ParseErrorKind, Value};

/// Parses and re-serialises, as `$kzE` / `kazoo_json` on an object do.
fn reserialise(text: &str) -> Result<String, ParseErrorKind> {
    parse(text.as_bytes())
        .map(|v| String::from_utf8_lossy(&to_json(&v)).into_owned())
        .map_err(|e| e.kind)
}

fn field(json: &str, path: &str) -> Option<String> {
    field_text(json.as_bytes(), path.as_bytes(), b'%')
        .unwrap_or_else(|e| panic!("{json} / {path}: {e}"))
        .map(|v| String::from_utf8_lossy(&v).into_owned())
}

#[test]
fn readme_query_payload_with_single_quotes() {
    // Example 1.23, after Kamailio has substituted $fd and $fU.
    let payload = "{'Event-Category' : 'call_event' , 'Event-Name' :\n\
                   'query_user_channels_req', 'Realm' : 'example.com', 'Username' : 'alice',\n\
                   'Active-Only' : false }";
    assert_eq!(
        reserialise(payload).as_deref(),
        Ok(
            r#"{ "Event-Category": "call_event", "Event-Name": "query_user_channels_req", "Realm": "example.com", "Username": "alice", "Active-Only": false }"#
        )
    );
    assert_eq!(
        field(payload, "Event-Name").as_deref(),
        Some("query_user_channels_req")
    );
    assert_eq!(field(payload, "Active-Only").as_deref(), Some("false"));
}

#[test]
fn readme_subscription_payload_with_single_quotes() {
    // Example 1.25 (kazoo_subscribe JSON form).
    let payload = "{ 'exchange' : 'dialoginfo' , 'type' : 'direct', 'queue' :\n\
                   'BLF-QUEUE-MY_HOSTNAME', 'routing' : 'BLF-MY_HOSTNAME', 'auto_delete' : 0, 'durable' : 1, \
                   'no_ack' : 0, 'wait_for_consumer_ack' : 1 }";
    let Ok(value) = parse(payload.as_bytes()) else {
        panic!("README subscription payload rejected");
    };
    assert_eq!(
        value.get(b"queue").and_then(Value::as_bytes),
        Some(&b"BLF-QUEUE-MY_HOSTNAME"[..])
    );
    assert_eq!(value.get(b"durable"), Some(&Value::Int(1)));
    assert_eq!(value.get(b"auto_delete"), Some(&Value::Int(0)));
    assert_eq!(
        field(payload, "routing").as_deref(),
        Some("BLF-MY_HOSTNAME")
    );
}

#[test]
fn readme_result_path() {
    // Example 1.28: kazoo_json("$var(amqp_result)", "Channels[0].switch_url", "$du").
    let result = r#"{"Channels":[{"switch_url":"sip:10.0.0.1:5060"},{"switch_url":"sip:b"}]}"#;
    assert_eq!(
        field(result, "Channels[0].switch_url").as_deref(),
        Some("sip:10.0.0.1:5060")
    );
    assert_eq!(field(r#"{"Channels":[]}"#, "Channels[0].switch_url"), None);
}

#[test]
fn accepted_leniencies() {
    let cases = [
        (
            r#"{'a':'single', "b":"it's"}"#,
            r#"{ "a": "single", "b": "it's" }"#,
        ),
        (r#"{"a":1}}"#, r#"{ "a": 1 }"#),
        (r#"{"a":1} {"b":2}"#, r#"{ "a": 1 }"#),
        (
            "{\"a\":1 /* c */, // line\n \"b\":2}",
            r#"{ "a": 1, "b": 2 }"#,
        ),
        (r#"{"a":[1,2,],}"#, r#"{ "a": [ 1, 2 ] }"#),
        (
            r#"[True, TRUE, fAlSe, Null, NULL]"#,
            "[ true, true, false, null, null ]",
        ),
        (
            r#"[NaN, nan, Infinity, -Infinity, -iNfInItY]"#,
            "[ NaN, NaN, Infinity, -Infinity, -Infinity ]",
        ),
        ("{\"a\":\"x\ny\t\u{1}\"}", r#"{ "a": "x\ny\t\u0001" }"#),
        (
            r#"[1e, 1e+, 5., 01, -0, -0.0, 1.0, 1e2, 1E+2, -.5, 1e400]"#,
            "[ 1, 1, 5., 1, 0, -0.0, 1.0, 1e2, 1E+2, -.5, 1e400 ]",
        ),
        (
            r#"[9223372036854775808, 18446744073709551616, -9223372036854775809]"#,
            "[ 9223372036854775808, 18446744073709551615, -9223372036854775808 ]",
        ),
        (
            r#"["\u00e9", "\ud83d\ude00", "\ud800", "\udc00x", "\ud800\u0041", "a\/b"]"#,
            "[ \"é\", \"😀\", \"\u{FFFD}\", \"\u{FFFD}x\", \"\u{FFFD}A\", \"a\\/b\" ]",
        ),
        ("\"\u{7f}\"", "\"\u{7f}\""),
        ("  \n\t{\"a\":1}", r#"{ "a": 1 }"#),
        // An unterminated comment after a nested value makes json-c return that value.
        (r#"{"a":"b" /* open"#, r#""b""#),
        ("[1,2] // done", "[ 1, 2 ]"),
        (r#"{"a":1,"b":2,"a":3}"#, r#"{ "a": 3, "b": 2 }"#),
    ];
    for (input, want) in cases {
        assert_eq!(reserialise(input).as_deref(), Ok(want), "input {input:?}");
    }
}

#[test]
fn duplicate_keys_in_large_objects() {
    // Large objects are indexed while parsed; duplicates must still keep the first position
    // and the last value (checked against json-c 0.16 with this very input).
    let mut input: Vec<String> = (0..100).map(|i| format!("\"k{i}\":{i}")).collect();
    input.extend(
        [
            "\"k5\":\"dup\"",
            "\"k80\":\"dup2\"",
            "\"new\":1",
            "\"k5\":\"dup3\"",
        ]
        .map(String::from),
    );
    let input = format!("{{{}}}", input.join(","));
    let mut want: Vec<String> = (0..100).map(|i| format!("\"k{i}\": {i}")).collect();
    want[5] = "\"k5\": \"dup3\"".to_owned();
    want[80] = "\"k80\": \"dup2\"".to_owned();
    want.push("\"new\": 1".to_owned());
    let want = format!("{{ {} }}", want.join(", "));
    assert_eq!(reserialise(&input), Ok(want));
}

#[test]
fn invalid_utf8_passes_through() {
    let Ok(value) = parse(b"{\"a\":\"\xff\xc3(\"}") else {
        panic!("invalid UTF-8 rejected");
    };
    assert_eq!(to_json(&value), b"{ \"a\": \"\xff\xc3(\" }".to_vec());
}

#[test]
fn rejected_inputs() {
    let cases = [
        ("", ParseErrorKind::Eof),
        ("   ", ParseErrorKind::Eof),
        (r#"{"a":1 # c"#, ParseErrorKind::ObjectValueSeparator),
        ("\u{feff}{\"a\":1}", ParseErrorKind::Unexpected),
        ("+1", ParseErrorKind::Unexpected),
        (".5", ParseErrorKind::Unexpected),
        (r#"{"a":0x10}"#, ParseErrorKind::Number),
        (r#"{"a":"\x41"}"#, ParseErrorKind::String),
        (r#"{"a":"\u12"}"#, ParseErrorKind::String),
        (r#"{'a':'it\'s'}"#, ParseErrorKind::String),
        ("{a:1}", ParseErrorKind::ObjectKeyName),
        (r#"{"a":-}"#, ParseErrorKind::Number),
        (r#"{"a":}"#, ParseErrorKind::Unexpected),
        (r#"{"a":"unterminated}"#, ParseErrorKind::Eof),
        ("[1,2]/", ParseErrorKind::Comment),
        (r#"{"a" 1}"#, ParseErrorKind::ObjectKeySeparator),
        ("[1 2]", ParseErrorKind::ArraySeparator),
        ("[1,,2]", ParseErrorKind::Unexpected),
        ("[tru]", ParseErrorKind::Boolean),
        ("[nil]", ParseErrorKind::Null),
        ("[1.-5]", ParseErrorKind::Number),
    ];
    for (input, kind) in cases {
        assert_eq!(reserialise(input), Err(kind), "input {input:?}");
    }
}

#[test]
fn parse_error_display() {
    let Err(e) = parse(br#"{"a":1 # c}"#) else {
        panic!("hash comment accepted");
    };
    assert_eq!(
        e.to_string(),
        "object value separator ',' expected at byte 7"
    );
}

#[test]
fn top_level_scalars_and_trailing_text() {
    assert_eq!(parse(b"42xyz"), Ok(Value::Int(42)));
    assert_eq!(parse(b"null"), Ok(Value::Null));
    assert_eq!(parse(b"'s' trailing"), Ok(Value::String(b"s".to_vec())));
    assert_eq!(parse(b"true"), Ok(Value::Bool(true)));
    assert_eq!(parse(b"18446744073709551615"), Ok(Value::UInt(u64::MAX)));
}

#[test]
fn value_helpers() {
    let Ok(mut value) = parse(br#"{"Msg-ID":null,"a":1}"#) else {
        panic!("rejected");
    };
    // A null member is replaced in place, a new key is appended.
    assert!(value.insert(b"Msg-ID", Value::String(b"id".to_vec())));
    assert!(value.insert(b"Node", Value::String(b"n".to_vec())));
    assert_eq!(
        to_json(&value),
        br#"{ "Msg-ID": "id", "a": 1, "Node": "n" }"#.to_vec()
    );
    assert!(!Value::Array(vec![]).insert(b"k", Value::Null));
    assert_eq!(value.get(b"a"), Some(&Value::Int(1)));
    assert_eq!(value.type_name(), "object");

    let mut out = b"prefix:".to_vec();
    write_json(&Value::Double(Double::new(2.0)), &mut out);
    assert_eq!(out, b"prefix:2.0".to_vec());
    let Ok(Value::Double(parsed)) = parse(b"1.50") else {
        panic!("1.50 is not a double");
    };
    assert_eq!((parsed.value(), parsed.text()), (1.5, Some("1.50")));
}
