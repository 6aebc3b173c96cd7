//! `kazoo_engine::presence::plan` on inputs the captured vectors do not cover: the
//! `Flush-Level` and `Expires` conversions, `kazoo_pua_publish` dispatch to every package, the
//! PIDF state table, how non-string fields are rendered, odd JSON, and no panic on any input.

use kazoo_engine::presence::{
    plan, Entry, Outcome, Package, PresenceError, Row, SkipReason, WritePlan,
};
use proptest::prelude::*;

const NOW: i64 = 1_700_000_000;

const DIALOG: &str = r#""From":"sip:1001@example.com","From-User":"1001","From-Realm":"example.com","To":"sip:1002@example.com","To-User":"1002","State":"confirmed","Call-ID":"c1""#;
const PRESENCE: &str = r#""From":"sip:1001@example.com","From-User":"1001","From-Realm":"example.com","To-User":"1001","State":"online","Call-ID":"c1""#;

fn outcome(entry: Entry, json: &str) -> Outcome {
    plan(entry, json.as_bytes(), NOW, true)
        .unwrap_or_else(|e| panic!("{json}: unexpected error {e}"))
}

fn write(entry: Entry, json: &str) -> WritePlan {
    match outcome(entry, json) {
        Outcome::Write(plan) => plan,
        Outcome::Skip(reason) => panic!("{json}: skipped ({reason})"),
    }
}

fn row(entry: Entry, json: &str) -> Row {
    write(entry, json).row().clone()
}

fn body(entry: Entry, json: &str) -> String {
    String::from_utf8(row(entry, json).body).unwrap_or_else(|e| panic!("{json}: {e}"))
}

/// The delete keys of a dialog write with this `Flush-Level` member (`None`: REPLACE).
fn flush_keys(member: &str) -> Option<usize> {
    match write(Entry::DialogInfo, &format!("{{{DIALOG}{member}}}")) {
        WritePlan::DeleteThenInsert { keys, .. } => Some(keys),
        WritePlan::Replace { .. } => None,
    }
}

#[test]
fn flush_level_through_json_c_int() {
    assert_eq!(flush_keys(""), None, "missing: 0, replace");
    assert_eq!(flush_keys(r#","Flush-Level":null"#), None);
    assert_eq!(flush_keys(r#","Flush-Level":0"#), None);
    assert_eq!(flush_keys(r#","Flush-Level":1"#), Some(3));
    assert_eq!(flush_keys(r#","Flush-Level":"2""#), Some(2));
    assert_eq!(flush_keys(r#","Flush-Level":3"#), Some(1));
    assert_eq!(flush_keys(r#","Flush-Level":4"#), Some(0), "whole table");
    assert_eq!(flush_keys(r#","Flush-Level":99999999999"#), Some(0));
    assert_eq!(flush_keys(r#","Flush-Level":2.9"#), Some(2), "truncated");
    assert_eq!(flush_keys(r#","Flush-Level":true"#), Some(3), "true is 1");
    assert_eq!(flush_keys(r#","Flush-Level":"x""#), None, "no number: 0");
    assert_eq!(flush_keys(r#","Flush-Level":-1"#), None, "negative: as 0");
    assert_eq!(flush_keys(r#","Flush-Level":"-3""#), None);
}

#[test]
fn presence_and_mwi_replace_the_user_rows() {
    // Flush-Level only applies to dialogs.
    for (entry, json) in [
        (
            Entry::Presence,
            format!(r#"{{{PRESENCE},"Flush-Level":4}}"#),
        ),
        (Entry::Mwi, r#"{"Flush-Level":4}"#.to_owned()),
    ] {
        assert!(
            matches!(
                write(entry, &json),
                WritePlan::DeleteThenInsert { keys: 3, .. }
            ),
            "{json}"
        );
    }
}

#[test]
fn expires_conversion() {
    let expires = |member: &str| row(Entry::Presence, &format!("{{{PRESENCE}{member}}}")).expires;
    assert_eq!(expires(""), 0, "missing");
    assert_eq!(expires(r#","Expires":null"#), 0);
    assert_eq!(expires(r#","Expires":3600"#), NOW + 3600);
    assert_eq!(expires(r#","Expires":"120""#), NOW + 120);
    assert_eq!(expires(r#","Expires":" 30s""#), NOW + 30, "strtoll prefix");
    assert_eq!(expires(r#","Expires":12.7"#), NOW + 12);
    assert_eq!(expires(r#","Expires":1e2"#), NOW + 100);
    assert_eq!(expires(r#","Expires":true"#), NOW + 1);
    assert_eq!(expires(r#","Expires":"abc""#), 0);
    assert_eq!(expires(r#","Expires":0"#), 0);
    assert_eq!(expires(r#","Expires":-5"#), -5, "raw when not positive");
    assert_eq!(expires(r#","Expires":"-7""#), -7);
    assert_eq!(expires(r#","Expires":-0.5"#), 0);
    assert_eq!(
        expires(r#","Expires":99999999999"#),
        NOW + i64::from(i32::MAX),
        "saturates to i32 first"
    );
    assert_eq!(expires(r#","Expires":-99999999999"#), i64::from(i32::MIN));
    assert_eq!(expires(r#","Expires":[5]"#), 0);
    assert_eq!(
        row(Entry::Presence, &format!("{{{PRESENCE}}}")).received_time,
        NOW
    );
}

#[test]
fn pidf_state_table() {
    let pidf = |state: &str| {
        let json = format!("{{{}}}", PRESENCE.replace(r#""online""#, state));
        body(Entry::Presence, &json)
    };
    let piece = |basic: &str, note: &str, activities: &str| {
        format!(
            "<status><basic>{basic}</basic></status></tuple>\
             <note xmlns=\"urn:ietf:params:xml:ns:pidf\">{note}</note>\
             <dm:person xmlns:dm=\"urn:ietf:params:xml:ns:pidf:data-model\" \
             xmlns:rpid=\"urn:ietf:params:xml:ns:pidf:rpid\" id=\"1\">\
             <rpid:activities>{activities}</rpid:activities><dm:note>{note}</dm:note>\
             </dm:person></presence>"
        )
    };
    for (state, basic, note, activities) in [
        (r#""early""#, "open", "Busy", "<rpid:busy/>"),
        (
            r#""confirmed""#,
            "open",
            "On the Phone",
            "<rpid:on-the-phone/>",
        ),
        (r#""offline""#, "closed", "Offline", ""),
        (r#""online""#, "open", "Available", ""),
        (r#""terminated""#, "open", "Available", ""),
        (r#""OFFLINE""#, "open", "Available", ""),
        // Cut at the NUL, as C's strcmp sees it.
        (r#""early\u0000x""#, "open", "Busy", "<rpid:busy/>"),
        // A number is compared as its text.
        ("5", "open", "Available", ""),
    ] {
        let body = pidf(state);
        assert!(
            body.ends_with(&piece(basic, note, activities)),
            "{state}: {body}"
        );
    }
    assert_eq!(
        pidf(r#""offline""#),
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?><presence xmlns=\"urn:ietf:params:xml:ns:pidf\" \
         xmlns:dm=\"urn:ietf:params:xml:ns:pidf:data-model\" xmlns:rpid=\"urn:ietf:params:xml:ns:pidf:rpid\" \
         xmlns:c=\"urn:ietf:params:xml:ns:pidf:cipid\" entity=\"1001\"> \
         <tuple xmlns=\"urn:ietf:params:xml:ns:pidf\" id=\"c1\"><status><basic>closed</basic></status></tuple>\
         <note xmlns=\"urn:ietf:params:xml:ns:pidf\">Offline</note><dm:person \
         xmlns:dm=\"urn:ietf:params:xml:ns:pidf:data-model\" xmlns:rpid=\"urn:ietf:params:xml:ns:pidf:rpid\" \
         id=\"1\"><rpid:activities></rpid:activities><dm:note>Offline</dm:note></dm:person></presence>"
    );
}

#[test]
fn publish_dispatches_on_event_package() {
    let any = |extra: &str, fields: &str| outcome(Entry::Any, &format!("{{{fields}{extra}}}"));
    let event = |o: Outcome| match o {
        Outcome::Write(plan) => plan.row().event,
        Outcome::Skip(reason) => panic!("skipped: {reason}"),
    };
    let update = r#","Event-Name":"update","Event-Package":"#;
    assert_eq!(
        event(any(&format!("{update}\"presence\""), PRESENCE)),
        "presence"
    );
    assert_eq!(event(any(&format!("{update}\"dialog\""), DIALOG)), "dialog");
    assert_eq!(
        event(any(&format!("{update}\"message-summary\""), PRESENCE)),
        Package::MessageSummary.event()
    );
    assert_eq!(
        event(any(
            r#","Event-Name":"update\u0000junk","Event-Package":"presence""#,
            PRESENCE
        )),
        "presence",
        "the C string ends at the NUL"
    );
    for (extra, reason) in [
        (r#","Event-Package":"presence""#, SkipReason::NotAnUpdate),
        (
            r#","Event-Name":"Update","Event-Package":"presence""#,
            SkipReason::NotAnUpdate,
        ),
        (
            r#","Event-Name":"update ","Event-Package":"presence""#,
            SkipReason::NotAnUpdate,
        ),
        (r#","Event-Name":"update""#, SkipReason::UnknownPackage),
        (
            r#","Event-Name":"update","Event-Package":"Presence""#,
            SkipReason::UnknownPackage,
        ),
        (
            r#","Event-Name":"update","Event-Package":"presence2""#,
            SkipReason::UnknownPackage,
        ),
    ] {
        assert_eq!(any(extra, PRESENCE), Outcome::Skip(reason), "{extra}");
    }
    // Dispatch happens before the package's own checks.
    assert_eq!(
        outcome(
            Entry::Any,
            r#"{"Event-Name":"update","Event-Package":"presence"}"#
        ),
        Outcome::Skip(SkipReason::MissingField)
    );
    // The direct entry points ignore both fields.
    assert_eq!(
        row(
            Entry::Presence,
            &format!(r#"{{{PRESENCE},"Event-Name":"x","Event-Package":"dialog"}}"#)
        )
        .event,
        "presence"
    );
}

#[test]
fn required_fields() {
    for missing in ["From-User", "To-User", "State"] {
        let json = PRESENCE.replace(&format!("\"{missing}\""), "\"Other\"");
        assert_eq!(
            outcome(Entry::Presence, &format!("{{{json}}}")),
            Outcome::Skip(SkipReason::MissingField),
            "presence without {missing}"
        );
    }
    for missing in ["From", "To", "State"] {
        let json = DIALOG.replace(&format!("\"{missing}\""), "\"Other\"");
        assert_eq!(
            outcome(Entry::DialogInfo, &format!("{{{json}}}")),
            Outcome::Skip(SkipReason::MissingField),
            "dialog without {missing}"
        );
    }
    // Empty and null count as missing.
    let empty_state = format!("{{{}}}", PRESENCE.replace(r#""online""#, r#""""#));
    let null_state = format!("{{{}}}", DIALOG.replace(r#""confirmed""#, "null"));
    assert_eq!(
        outcome(Entry::Presence, &empty_state),
        Outcome::Skip(SkipReason::MissingField)
    );
    assert_eq!(
        outcome(Entry::DialogInfo, &null_state),
        Outcome::Skip(SkipReason::MissingField)
    );
}

#[test]
fn values_are_json_c_text() {
    let json = r#"{"From":"sip:a@b","From-User":"a","From-Realm":"b","Messages-Waiting":true,
        "Message-Account":{"k":[1,"x/y"]},"Messages-New":2,"Messages-Saved":1.50,
        "Messages-Urgent":-0,"Messages-Urgent-Saved":null,"Call-ID":7}"#;
    let mwi = row(Entry::Mwi, json);
    assert_eq!(
        String::from_utf8_lossy(&mwi.body),
        "Messages-Waiting: true\r\nMessage-Account: { \"k\": [ 1, \"x\\/y\" ] }\r\n\
         Voice-Message: 2/1.50 (0/)\r\n"
    );
    assert_eq!(mwi.etag, "7");
    assert_eq!(mwi.sender, "sip:a@b");
    // Nested members are not read: only the top level counts.
    assert_eq!(row(Entry::Mwi, r#"{"x":{"From-User":"a"}}"#).username, "");
}

#[test]
fn dialog_presentity_and_entity() {
    let full = format!(
        r#"{{{DIALOG},"Presentity":"sip:park@pbx","Presentity-User":"park","Presentity-Realm":"pbx","From-URI":"sip:f@1.2.3.4","Switch-URI":"sip:sw"}}"#
    );
    let with = row(Entry::DialogInfo, &full);
    assert_eq!(
        (with.username.as_str(), with.domain.as_str()),
        ("park", "pbx")
    );
    assert_eq!(with.sender, "sip:sw");
    assert_eq!(
        String::from_utf8_lossy(&with.body),
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?><dialog-info xmlns=\"urn:ietf:params:xml:ns:dialog-info\" \
         version=\"1\" state=\"full\" entity=\"sip:park@pbx\"><dialog id=\"c1\" call-id=\"c1\"   direction=\"\">\
         <state>confirmed</state><local><identity display=\"1001\">sip:1001@example.com</identity>\
         <target uri=\"sip:f@1.2.3.4\"/></local><remote><identity display=\"1002\">sip:1002@example.com\
         </identity><target uri=\"sip:1002@example.com\"/></remote></dialog></dialog-info>"
    );
    let without = plan(Entry::DialogInfo, full.as_bytes(), NOW, false);
    let Ok(Outcome::Write(without)) = without else {
        panic!("{without:?}")
    };
    let body = String::from_utf8_lossy(&without.row().body).into_owned();
    assert!(!body.contains("<target"), "{body}");
    assert!(
        body.contains("sip:1001@example.com</identity></local>"),
        "{body}"
    );
}

#[test]
fn odd_json() {
    assert_eq!(
        plan(Entry::Presence, b"null", NOW, true),
        Err(PresenceError::Null)
    );
    for bad in [&b""[..], b"{", b"nope", b"\0{}"] {
        assert!(
            matches!(
                plan(Entry::Any, bad, NOW, true),
                Err(PresenceError::InvalidJson(_))
            ),
            "{bad:?}"
        );
    }
    // Not an object: every field is empty, so MWI still writes an empty row.
    for json in ["[1,2]", "5", "\"text\"", "true"] {
        let mwi = row(Entry::Mwi, json);
        assert_eq!(
            (mwi.username.as_str(), mwi.etag.as_str(), mwi.expires),
            ("", "", 0),
            "{json}"
        );
        assert_eq!(
            outcome(Entry::Presence, json),
            Outcome::Skip(SkipReason::MissingField)
        );
        assert_eq!(
            outcome(Entry::Any, json),
            Outcome::Skip(SkipReason::NotAnUpdate)
        );
    }
    // json-c leniency and duplicate keys (the last value wins).
    let lenient = row(
        Entry::Mwi,
        "{'From-User':'a', /* c */ 'From-User':'b', 'Messages-New': 3,} trailing",
    );
    assert_eq!(lenient.username, "b");
    // Bytes that are not UTF-8 stay in the body; the text columns get U+FFFD.
    let raw = plan(
        Entry::Mwi,
        b"{\"From-User\":\"x\xffy\",\"Messages-Waiting\":\"\xfe\"}",
        NOW,
        true,
    );
    let Ok(Outcome::Write(raw)) = raw else {
        panic!("{raw:?}")
    };
    assert_eq!(raw.row().username, "x\u{FFFD}y");
    assert!(raw.row().body.starts_with(b"Messages-Waiting: \xfe\r\n"));
}

/// Keys the handlers read, so random objects exercise them.
const KEYS: &[&str] = &[
    "From",
    "From-User",
    "From-Realm",
    "From-URI",
    "From-Tag",
    "To",
    "To-User",
    "To-URI",
    "To-Tag",
    "State",
    "Call-ID",
    "Dialog-ID",
    "Direction",
    "ETag",
    "Sender-URI",
    "Switch-URI",
    "Presentity",
    "Presentity-User",
    "Presentity-Realm",
    "Expires",
    "Flush-Level",
    "Event-Name",
    "Event-Package",
    "Messages-New",
];

fn entry() -> impl Strategy<Value = Entry> {
    prop_oneof![
        Just(Entry::Any),
        Just(Entry::Presence),
        Just(Entry::Mwi),
        Just(Entry::DialogInfo),
    ]
}

fn member_value() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z<>&\"' -]{0,12}".prop_map(|s| serde_json::Value::String(s).to_string()),
        any::<i64>().prop_map(|n| n.to_string()),
        (-1e12f64..1e12).prop_map(|f| format!("{f:?}")),
        Just("null".to_owned()),
        Just("\"update\"".to_owned()),
        Just("\"dialog\"".to_owned()),
        Just("\"message-summary\"".to_owned()),
        Just("[1,{\"a\":\"\\u0000\"}]".to_owned()),
    ]
}

proptest! {
    #[test]
    fn never_panics_on_bytes(
        bytes in proptest::collection::vec(any::<u8>(), 0..200),
        entry in entry(),
        include_entity in any::<bool>(),
        now in any::<i64>(),
    ) {
        let _ = plan(entry, &bytes, now, include_entity);
    }

    #[test]
    fn objects_always_plan(
        members in proptest::collection::vec((0..KEYS.len(), member_value()), 0..16),
        entry in entry(),
        include_entity in any::<bool>(),
        now in any::<i64>(),
    ) {
        let body: Vec<String> = members
            .iter()
            .map(|(k, v)| format!("\"{}\":{v}", KEYS[*k]))
            .collect();
        let json = format!("{{{}}}", body.join(","));
        let result = plan(entry, json.as_bytes(), now, include_entity);
        // Any object is valid JSON to json-c; whether it writes depends on the fields.
        prop_assert!(result.is_ok(), "{json}: {result:?}");
        if let Ok(Outcome::Write(plan)) = result {
            prop_assert_eq!(plan.row().received_time, now);
            prop_assert_eq!(plan.row().priority, 0);
        }
    }
}
