//! Property tests for the payload, route and subscription rules: no input makes them panic, a
//! prepared body is the payload with exactly the `Server-ID` it was given, and an annotated
//! message keeps every member of the original object.

use kazoo_engine::json::{parse, Value};
use kazoo_engine::payload::{
    annotate_consumed, parse_headers, parse_target, prepare_publish, CommonFields,
};
use kazoo_engine::routes::candidates_for_text;
use kazoo_engine::subscription::parse_description;
use proptest::prelude::*;

/// Fragments that steer random input towards objects with the interesting members.
const FRAGMENTS: &[&str] = &[
    "{",
    "}",
    "[",
    "]",
    "\"",
    ":",
    ",",
    " ",
    "null",
    "1",
    "\"x\"",
    "\"\"",
    "\"Server-ID\"",
    "\"Msg-ID\"",
    "\"App-Name\"",
    "\"Node\"",
    "\"Event-Category\"",
    "\"AMQP-Received\"",
    "/",
    "\\u0000",
    "consumer://",
    "=",
    ";",
    "\u{e9}",
    "\u{ff}",
];

fn text() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..64),
        proptest::collection::vec(proptest::sample::select(FRAGMENTS), 0..24)
            .prop_map(|parts| parts.concat().into_bytes()),
    ]
}

fn common() -> CommonFields {
    CommonFields {
        app_name: "kamailio".into(),
        app_version: "5.6.3".into(),
        node: "kamailio@n".into(),
    }
}

proptest! {
    #[test]
    fn nothing_panics(input in text()) {
        let _ = parse_headers(&input);
        let _ = parse_target(&input);
        let _ = annotate_consumed(&input, "z", 1, 7);
        let _ = candidates_for_text(&input, "Event-Category", "Event-Name", Some("K"), None);
        let _ = parse_description(&input);
        if let Ok(prepared) = prepare_publish(&input, &common(), || "id".into()) {
            let _ = prepared.body("s");
        }
    }

    #[test]
    fn prepared_bodies_carry_the_given_server_id(input in text(), server_id in ".{0,12}") {
        let Ok(prepared) = prepare_publish(&input, &common(), || "generated".into()) else {
            return Ok(());
        };
        let body = parse(&prepared.body(&server_id));
        prop_assert!(matches!(body, Ok(Value::Object(_))), "{:?}", body);
        let body = body.unwrap_or(Value::Null);
        for key in [&b"App-Name"[..], b"App-Version", b"Node", b"Msg-ID", b"Server-ID"] {
            prop_assert!(!matches!(body.get(key), None | Some(Value::Null)));
        }
        if prepared.has_server_id_slot() {
            prop_assert_eq!(
                body.get(b"Server-ID"),
                Some(&Value::String(server_id.into_bytes()))
            );
        }
    }

    #[test]
    fn annotation_keeps_the_original_members(input in text()) {
        let (Ok(annotated), Ok(Value::Object(original))) =
            (annotate_consumed(&input, "zone", 42, 3), parse(&input))
        else {
            return Ok(());
        };
        let body = parse(&annotated.body).unwrap_or(Value::Null);
        prop_assert_eq!(body.get(b"AMQP-Broker-Zone"), Some(&Value::String(b"zone".to_vec())));
        prop_assert_eq!(body.get(b"AMQP-Received"), Some(&Value::Int(42)));
        for (key, value) in &original {
            if key != b"Server-ID" && key != b"AMQP-Broker-Zone" && key != b"AMQP-Received" {
                prop_assert_eq!(body.get(key), Some(value));
            }
        }
    }
}
