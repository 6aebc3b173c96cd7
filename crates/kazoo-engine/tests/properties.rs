//! Property tests: no input makes the parser, the path language or the encoder panic, values
//! survive a serialise/parse round trip, and encoded routing keys decode back to their input.

use std::collections::HashSet;

use kazoo_engine::encode::{encode_checked, encode_truncating, MAX_ROUTING_KEY_LEN};
use kazoo_engine::json::{
    array_len, field_text, field_text_or_empty, object_keys, parse, parse_path, to_json, Double,
    Value,
};
use proptest::prelude::*;

/// Fragments that steer random input towards the tokener's interesting states.
const FRAGMENTS: &[&str] = &[
    "{",
    "}",
    "[",
    "]",
    "\"",
    "'",
    ":",
    ",",
    " ",
    "\n",
    "\\",
    "\\u",
    "\\ud800",
    "\\udc00",
    "\\u0000",
    "/*",
    "*/",
    "//",
    "/",
    "-",
    "+",
    ".",
    "e",
    "E",
    "0",
    "7",
    "01",
    "true",
    "False",
    "nULl",
    "NaN",
    "-Infinity",
    "\"k\"",
    "'k'",
    "\u{e9}",
    "\u{ff}",
    "#",
    "\0",
];

fn fragment_soup() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(prop::sample::select(FRAGMENTS), 0..64)
        .prop_map(|parts| parts.concat().into_bytes())
}

fn any_double() -> impl Strategy<Value = f64> {
    prop_oneof![
        any::<f64>(),
        Just(f64::NAN),
        Just(f64::INFINITY),
        Just(f64::NEG_INFINITY),
        Just(-0.0),
        Just(0.1),
        Just(1e17),
    ]
}

fn leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::Int),
        any::<u64>().prop_map(Value::UInt),
        any_double().prop_map(|d| Value::Double(Double::new(d))),
        prop::collection::vec(any::<u8>(), 0..16).prop_map(Value::String),
    ]
}

/// Keys as json-c can hold them: no NUL, and unique within an object (a repeated key would
/// collapse on the way back, which is json-c behaviour, not a round-trip failure).
fn unique_entries(entries: Vec<(Vec<u8>, Value)>) -> Vec<(Vec<u8>, Value)> {
    let mut seen = HashSet::new();
    entries
        .into_iter()
        .map(|(mut key, value)| {
            key.retain(|&b| b != 0);
            (key, value)
        })
        .filter(|(key, _)| seen.insert(key.clone()))
        .collect()
}

fn any_value() -> impl Strategy<Value = Value> {
    leaf().prop_recursive(6, 64, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((prop::collection::vec(any::<u8>(), 0..8), inner), 0..6)
                .prop_map(|entries| Value::Object(unique_entries(entries))),
        ]
    })
}

fn percent_decode(encoded: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(encoded.len());
    let mut i = 0;
    while i < encoded.len() {
        match encoded[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = std::str::from_utf8(&encoded[i + 1..i + 3]).expect("ASCII escape");
                out.push(u8::from_str_radix(hex, 16).expect("two hex digits"));
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    out
}

const DOCUMENT: &[u8] =
    br#"{"a":{"b":[1,{"c":"x"},[2,3]],"d.e":null,"":{"f":true}},"l":[[],{}],"s":"str","n":-1.5}"#;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn parse_never_panics_on_bytes(input in prop::collection::vec(any::<u8>(), 0..256)) {
        let _ = parse(&input);
    }

    #[test]
    fn parse_never_panics_on_fragments(input in fragment_soup()) {
        if let Ok(value) = parse(&input) {
            // Whatever was accepted serialises to text that parses again. (Not always to the
            // same text: json-c keeps a double's source, so `01e` prints as `01`, which then
            // reads as the integer 1.)
            let text = to_json(&value);
            prop_assert!(parse(&text).is_ok(), "{:?}", String::from_utf8_lossy(&text));
        }
    }

    #[test]
    fn serialise_parse_round_trip(value in any_value()) {
        let text = to_json(&value);
        let parsed = parse(&text);
        prop_assert!(parsed.is_ok(), "{:?} did not parse: {:?}", String::from_utf8_lossy(&text), parsed);
        let again = parsed.map(|v| to_json(&v)).unwrap_or_default();
        prop_assert_eq!(String::from_utf8_lossy(&again), String::from_utf8_lossy(&text));
    }

    #[test]
    fn path_lookup_never_panics(
        path in prop::collection::vec(
            prop::sample::select(&[b'a', b'b', b'c', b'd', b'e', b'l', b's', b'.', b'[', b']', b'%', b'0', b'1', b'-', b'+', b' ', 0xFF][..]),
            0..300,
        ),
        escape in prop::sample::select(&[b'%', b'.', b'[', b'a'][..]),
    ) {
        let text = field_text(DOCUMENT, &path, escape);
        let or_empty = field_text_or_empty(DOCUMENT, &path, escape);
        let count = array_len(DOCUMENT, &path, escape);
        let keys = object_keys(DOCUMENT, &path, escape);
        // The helpers agree with one another.
        prop_assert_eq!(text.is_err(), parse_path(&path, escape).is_err());
        prop_assert_eq!(or_empty.ok(), text.clone().ok().map(Option::unwrap_or_default));
        if let Ok(Some(t)) = &text {
            if count.clone().unwrap_or(0) > 0 {
                prop_assert!(t.starts_with(b"["));
            }
            if let Ok(Some(keys)) = &keys {
                prop_assert!(t.starts_with(b"{"), "keys {:?} for {:?}", keys, t);
            }
        }
    }

    #[test]
    fn encode_is_a_reversible_routing_word(input in prop::collection::vec(any::<u8>(), 0..300)) {
        let encoded = encode_truncating(&input);
        prop_assert!(encoded.len() <= MAX_ROUTING_KEY_LEN + 2);
        prop_assert_eq!(encode_checked(&input).is_some(), input.len() <= MAX_ROUTING_KEY_LEN);
        if input == b"#" || input == b"*" {
            prop_assert_eq!(&encoded, &input);
        } else {
            prop_assert!(
                encoded.iter().all(|b| b.is_ascii_alphanumeric() || b"~_%+-".contains(b)),
                "unexpected byte in {:?}", String::from_utf8_lossy(&encoded)
            );
            let decoded = percent_decode(&encoded);
            prop_assert!(input.starts_with(&decoded));
            // Every byte is at most 3 output bytes, so 85 input bytes always fit.
            if input.len() <= MAX_ROUTING_KEY_LEN / 3 {
                prop_assert_eq!(decoded, input);
            }
        }
    }
}
