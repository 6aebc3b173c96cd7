//! Checks `kazoo_engine::payload` row for row against the vectors captured from the C module:
//! `vectors/publish.jsonl` (bodies, headers, `consumer://` targets, refusals),
//! `vectors/routes.jsonl` and `vectors/query.jsonl` (the consumer's annotation, `$kzE` /
//! `$kzR`), `vectors/connection_events.jsonl` (connection event text) and the non-object
//! inputs of `vectors/crashers.txt`. Placeholders are those of vectors/README §5.

use kazoo_engine::json::{self, Value};
use kazoo_engine::payload::{
    annotate_consumed, connection_event, new_msg_id, parse_headers, parse_target, prepare_publish,
    server_id, CommonFields, PayloadError, PublishTarget,
};
use serde_json::Value as J;

/// The id our closure "generates"; a valid lowercase UUIDv4 so that body lengths match.
const KNOWN_ID: &str = "3f2b8c1d-9e4a-4b7c-8d6e-0a1b2c3d4e5f";
/// What we pass as `AMQP-Received`.
const RECEIVED: i64 = 1_700_000_123;
const NODE_HOSTNAME: &str = "kzvec.local";
const BROKER_ID: u32 = 1;
const ZONE: &str = "local";

fn rows(file: &str) -> Vec<J> {
    kamailio_test::jsonl(file)
}

fn text<'a>(row: &'a J, key: &str) -> &'a str {
    row[key]
        .as_str()
        .unwrap_or_else(|| panic!("{key} is not a string in {row}"))
}

fn id(row: &J) -> String {
    row["id"].as_str().unwrap_or("?").to_owned()
}

fn common() -> CommonFields {
    CommonFields {
        app_name: "kamailio".into(),
        app_version: "5.6.3".into(),
        node: format!("kamailio@{NODE_HOSTNAME}"),
    }
}

/// A vector text with its placeholders replaced by our values.
fn fill(template: &str, channel: Option<u64>) -> Vec<u8> {
    let mut out = template
        .replace("{{MSG_ID}}", KNOWN_ID)
        .replace("{{AMQP_RECEIVED}}", &RECEIVED.to_string());
    if let Some(ch) = channel {
        out = out.replace("{{CH}}", &ch.to_string());
    }
    assert!(!out.contains("{{"), "unreplaced placeholder in {out}");
    out.into_bytes()
}

/// The correlation key a body's `Msg-ID` gives (string raw, else JSON text).
fn msg_id_of(body: &[u8]) -> String {
    let parsed = json::parse(body).unwrap_or(Value::Null);
    match parsed.get(b"Msg-ID") {
        Some(Value::String(s)) => String::from_utf8_lossy(s).into_owned(),
        Some(other) => String::from_utf8_lossy(&json::to_json(other)).into_owned(),
        None => panic!("no Msg-ID in {}", String::from_utf8_lossy(body)),
    }
}

/// `headers_table` as (key, value) pairs; every type must be a long string.
fn headers_table(properties: &J) -> Vec<(Vec<u8>, Vec<u8>)> {
    let Some(table) = properties["headers_table"].as_array() else {
        return Vec::new();
    };
    table
        .iter()
        .map(|entry| {
            assert_eq!(entry[1], "S", "header type in {entry}");
            (
                text_at(entry, 0).as_bytes().to_vec(),
                text_at(entry, 2).as_bytes().to_vec(),
            )
        })
        .collect()
}

fn text_at(entry: &J, index: usize) -> &str {
    entry[index]
        .as_str()
        .unwrap_or_else(|| panic!("entry {index} of {entry} is not a string"))
}

#[test]
fn generated_msg_ids_are_lowercase_uuid_v4() {
    for _ in 0..64 {
        let id = new_msg_id();
        let bytes = id.as_bytes();
        assert_eq!(bytes.len(), 36, "{id}");
        for (i, &b) in bytes.iter().enumerate() {
            match i {
                8 | 13 | 18 | 23 => assert_eq!(b, b'-', "{id}"),
                14 => assert_eq!(b, b'4', "{id}"),
                19 => assert!(matches!(b, b'8' | b'9' | b'a' | b'b'), "{id}"),
                _ => assert!(matches!(b, b'0'..=b'9' | b'a'..=b'f'), "{id}"),
            }
        }
    }
    assert_ne!(new_msg_id(), new_msg_id());
}

#[test]
fn publish_rows() {
    let (mut bodies, mut headers, mut refusals, mut targets) = (0, 0, 0, 0);
    for row in rows("publish.jsonl") {
        let id = id(&row);
        let payload = text(&row, "payload").as_bytes();
        let routing_key = text(&row, "routing_key").as_bytes();
        let prepared = prepare_publish(payload, &common(), || KNOWN_ID.to_owned());
        let target = parse_target(routing_key);

        if let Some(argument) = row["headers"].as_str() {
            let expected = row["messages"]
                .get(0)
                .map(|m| headers_table(&m["properties"]))
                .unwrap_or_default();
            if row["messages"].get(0).is_some() {
                assert_eq!(
                    parse_headers(argument.as_bytes()),
                    expected,
                    "{id}: headers"
                );
                headers += 1;
            }
        }

        let messages = row["messages"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default();
        let Some(message) = messages.first() else {
            if row["script_stopped"] == true {
                // Targeted a broker that does not exist: only the parse is checked.
                assert!(
                    matches!(target, Ok((PublishTarget::Broker(n), _)) if n != BROKER_ID),
                    "{id}: {target:?}"
                );
                assert!(prepared.is_ok(), "{id}");
                targets += 1;
            } else {
                // rc -1, or rc 1 without publishing (bad consumer:// key): both refused here.
                assert!(prepared.is_err() || target.is_err(), "{id}: accepted");
                refusals += 1;
            }
            continue;
        };
        assert_eq!(row["rc"], 1, "{id}");

        let prepared = prepared.unwrap_or_else(|e| panic!("{id}: refused: {e}"));
        let channel = message["observed_channel_idx"].as_u64();
        let ch = u32::try_from(channel.unwrap_or(0)).unwrap_or_default();
        let body = prepared.body(&server_id(NODE_HOSTNAME, BROKER_ID, ch));
        let expected = fill(text(message, "body"), channel);
        assert_eq!(
            String::from_utf8_lossy(&body),
            String::from_utf8_lossy(&expected),
            "{id}: body"
        );
        assert_eq!(body, expected, "{id}: body bytes");
        assert_eq!(
            Some(body.len() as u64),
            message["body_bytes"].as_u64(),
            "{id}: body_bytes"
        );
        assert_eq!(
            prepared.has_server_id_slot(),
            channel.is_some(),
            "{id}: slot"
        );
        assert_eq!(prepared.msg_id(), msg_id_of(&expected), "{id}: msg_id");
        bodies += 1;

        let (target, key) = target.unwrap_or_else(|e| panic!("{id}: target refused: {e}"));
        assert_eq!(
            key,
            text(message, "routing_key").as_bytes(),
            "{id}: routing key"
        );
        let rk = text(&row, "routing_key");
        match target {
            PublishTarget::Broker(n) => assert_eq!(n, BROKER_ID, "{id}"),
            PublishTarget::Primary => assert!(
                !rk.starts_with("consumer://") || rk.starts_with("consumer://0/"),
                "{id}: {rk} went to the primary zone"
            ),
        }
        if rk.starts_with("consumer://") {
            targets += 1;
        }
    }
    println!(
        "publish.jsonl: {bodies} bodies, {headers} header lists, {refusals} refusals, \
         {targets} consumer:// targets checked"
    );
    assert!(bodies > 0 && headers > 0 && refusals > 0 && targets > 0);
}

#[test]
fn query_rows() {
    let (mut requests, mut replies, mut late, mut refusals) = (0, 0, 0, 0);
    for row in rows("query.jsonl") {
        let id = id(&row);
        let payload = text(&row, "payload").as_bytes();
        let prepared = prepare_publish(payload, &common(), || KNOWN_ID.to_owned());

        let request = &row["request_seen_by_responder"];
        if request.is_null() {
            assert!(prepared.is_err(), "{id}: accepted");
            refusals += 1;
        } else {
            let prepared = prepared.unwrap_or_else(|e| panic!("{id}: refused: {e}"));
            let channel = request["observed_channel_idx"].get(0).and_then(J::as_u64);
            let ch = u32::try_from(channel.unwrap_or(0)).unwrap_or_default();
            let body = prepared.body(&server_id(NODE_HOSTNAME, BROKER_ID, ch));
            assert_eq!(
                String::from_utf8_lossy(&body),
                String::from_utf8_lossy(&fill(text(request, "body"), channel)),
                "{id}: request"
            );
            assert_eq!(prepared.msg_id(), KNOWN_ID, "{id}");
            if let Some(argument) = row["headers"].as_str() {
                assert_eq!(
                    parse_headers(argument.as_bytes()),
                    headers_table(&request["properties"]),
                    "{id}: headers"
                );
            }
            requests += 1;
        }

        let annotated: Vec<Result<Vec<u8>, PayloadError>> = row["replies_sent_by_responder"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default()
            .iter()
            .map(|reply| {
                annotate_consumed(&fill(text(reply, "body"), None), ZONE, RECEIVED, BROKER_ID).map(
                    |a| {
                        assert_eq!(a.msg_id.as_deref(), Some(KNOWN_ID), "{id}: reply Msg-ID");
                        a.body
                    },
                )
            })
            .collect();

        let completed = [
            &row["kzR"],
            &row["target_pv_value"],
            &row["async_result"]["kzR"],
        ];
        for expected in completed.into_iter().filter_map(J::as_str) {
            let first = annotated
                .first()
                .unwrap_or_else(|| panic!("{id}: no reply"));
            let first = first
                .as_ref()
                .unwrap_or_else(|e| panic!("{id}: reply refused: {e}"));
            assert_eq!(
                String::from_utf8_lossy(first),
                String::from_utf8_lossy(&fill(expected, None)),
                "{id}: $kzR"
            );
            replies += 1;
        }
        if row["kzR"].is_null() && row["async_result"]["kzR"].is_null() {
            // No reply completed the query: an unparsable reply must be refused.
            for reply in &annotated {
                if let Err(e) = reply {
                    assert!(matches!(e, PayloadError::Invalid(_)), "{id}: {e}");
                    refusals += 1;
                }
            }
        }

        let after = row["event_routes_after"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default();
        let skip = annotated
            .len()
            .checked_sub(after.len())
            .expect("more events than replies");
        for (event, reply) in after.iter().zip(annotated.iter().skip(skip)) {
            let reply = reply
                .as_ref()
                .unwrap_or_else(|e| panic!("{id}: reply refused: {e}"));
            assert_eq!(
                String::from_utf8_lossy(reply),
                String::from_utf8_lossy(&fill(text(event, "kzE"), None)),
                "{id}: $kzE of an unclaimed reply"
            );
            late += 1;
        }
    }
    println!(
        "query.jsonl: {requests} requests, {replies} completed replies, {late} unclaimed replies, \
         {refusals} refusals checked"
    );
    assert!(requests > 0 && replies > 0 && late > 0 && refusals > 0);
}

#[test]
fn consumed_rows() {
    let (mut annotated, mut dropped, mut events) = (0, 0, 0);
    for row in rows("routes.jsonl") {
        let id = id(&row);
        let Some(body) = row["body"].as_str() else {
            // The synthetic connection event has no consumed body.
            check_connection_event(&row, "Event-Category", "Event-Name");
            events += 1;
            continue;
        };
        let result = annotate_consumed(body.as_bytes(), ZONE, RECEIVED, BROKER_ID);
        if row["dropped"] != false {
            assert!(
                matches!(result, Err(PayloadError::Invalid(_))),
                "{id}: {result:?}"
            );
            dropped += 1;
            continue;
        }
        let result = result.unwrap_or_else(|e| panic!("{id}: refused: {e}"));
        let expected = fill(text(&row, "kzE"), None);
        assert_eq!(
            String::from_utf8_lossy(&result.body),
            String::from_utf8_lossy(&expected),
            "{id}: $kzE"
        );
        assert_eq!(result.body, expected, "{id}: $kzE bytes");
        let own_id = json::parse(body.as_bytes())
            .ok()
            .and_then(|v| v.get(b"Msg-ID").is_some().then(|| msg_id_of(&expected)));
        assert_eq!(result.msg_id, own_id, "{id}: msg_id");
        annotated += 1;
    }
    println!("routes.jsonl: {annotated} annotated, {dropped} dropped, {events} events checked");
    assert!(annotated > 0 && dropped > 0);
}

/// Checks that `connection_event` rebuilds the row's `kzE` from its host, zone and state.
fn check_connection_event(row: &J, key: &str, subkey: &str) {
    let expected = text(row, "kzE");
    let parsed = json::parse(expected.as_bytes()).unwrap_or(Value::Null);
    let field = |name: &str| -> String {
        match parsed.get(name.as_bytes()) {
            Some(Value::String(s)) => String::from_utf8_lossy(s).into_owned(),
            other => panic!("{name} is {other:?} in {expected}"),
        }
    };
    assert_eq!(field(key), "connection", "{expected}");
    let open = match field(subkey).as_str() {
        "open" => true,
        "closed" => false,
        other => panic!("unknown state {other} in {expected}"),
    };
    let built = connection_event(key, subkey, open, &field("host"), &field("zone"));
    assert_eq!(String::from_utf8_lossy(&built), expected);
}

/// The value of `modparam("kazoo", "<name>", "<value>")` in a row's `extra_modparams`.
fn modparam<'a>(extra: &'a str, name: &str) -> Option<&'a str> {
    let needle = format!("\"{name}\", \"");
    let start = extra.find(&needle)? + needle.len();
    extra.get(start..)?.split('"').next()
}

#[test]
fn connection_event_rows() {
    let mut checked = 0;
    for row in rows("connection_events.jsonl") {
        let extra = row["extra_modparams"].as_str().unwrap_or_default();
        let key = modparam(extra, "amqp_consumer_event_key").unwrap_or("Event-Category");
        let subkey = modparam(extra, "amqp_consumer_event_subkey").unwrap_or("Event-Name");
        check_connection_event(&row, key, subkey);
        checked += 1;
    }
    println!("connection_events.jsonl: {checked} events checked");
    assert!(checked > 0);
}

/// The inputs after `marker` on the `TRIED` lines of crashers.txt, up to the first blank.
fn crasher_inputs(marker: &str) -> Vec<String> {
    kamailio_test::read_vector("crashers.txt")
        .lines()
        .filter(|line| line.starts_with("TRIED"))
        .filter_map(|line| line.split_once(marker))
        .filter_map(|(_, rest)| rest.split_whitespace().next().map(str::to_owned))
        .collect()
}

#[test]
fn non_object_crashers_are_refused() {
    let published = crasher_inputs("payload=");
    for input in &published {
        let result = prepare_publish(input.as_bytes(), &common(), new_msg_id);
        assert!(
            matches!(result, Err(PayloadError::NotAnObject(_))),
            "{input}: {result:?}"
        );
    }
    let consumed = crasher_inputs("  body ");
    for input in &consumed {
        let result = annotate_consumed(input.as_bytes(), ZONE, RECEIVED, BROKER_ID);
        assert!(
            matches!(result, Err(PayloadError::NotAnObject(_))),
            "{input}: {result:?}"
        );
    }
    println!(
        "crashers.txt: {} published and {} consumed non-objects checked",
        published.len(),
        consumed.len()
    );
    assert!(published.len() >= 4 && consumed.len() >= 2);
}

#[test]
fn long_server_ids_are_rewritten() {
    // crashers.txt: 87 characters and more overflowed the C module's 100-byte buffer.
    for len in [86, 87, 200, 5000] {
        let own = "s".repeat(len);
        let body = format!("{{\"Server-ID\":\"{own}\",\"a\":1}}");
        let annotated = annotate_consumed(body.as_bytes(), ZONE, RECEIVED, BROKER_ID)
            .unwrap_or_else(|e| panic!("{len}: {e}"));
        let expected = format!(
            "{{ \"a\": 1, \"AMQP-Broker-Zone\": \"local\", \"AMQP-Received\": {RECEIVED}, \
             \"Server-ID\": \"consumer:\\/\\/1\\/{own}\" }}"
        );
        assert_eq!(String::from_utf8_lossy(&annotated.body), expected);
    }
}
