//! Checks `kazoo_engine::routes` against the vectors captured from the C module:
//! the candidate names of every consumed message in `vectors/routes.jsonl`, the route that ran
//! for each set of defined candidates (where the C module followed the first-defined rule),
//! the single-worker sequences of `vectors/routes_history.jsonl`, and the connection events of
//! `vectors/connection_events.jsonl` (vectors/README §7.1–§7.4).

use std::collections::HashMap;

use kazoo_engine::json::{self, Value};
use kazoo_engine::payload::{annotate_consumed, connection_event};
use kazoo_engine::routes::{candidates, candidates_for_text, first_defined, CATCH_ALL_ROUTE};
use kazoo_engine::subscription::parse_description;
use serde_json::Value as J;

const DEFAULT_KEY: &str = "Event-Category";
const DEFAULT_SUBKEY: &str = "Event-Name";

fn rows(file: &str) -> Vec<J> {
    kamailio_test::jsonl(file)
}

fn strings(value: &J) -> Vec<String> {
    value
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|v| {
            v.as_str()
                .unwrap_or_else(|| panic!("{v} is not a string"))
                .to_owned()
        })
        .collect()
}

/// The candidates of a routes.jsonl row, computed as a consumer worker does: from the
/// annotated payload and the row's subscription, or for the synthetic connection event from
/// its text. `None` for rows whose message was dropped.
fn row_candidates(row: &J) -> Option<[String; 5]> {
    let Some(body) = row["body"].as_str() else {
        let event = row["kzE"].as_str()?;
        return Some(connection_candidates(
            DEFAULT_KEY,
            DEFAULT_SUBKEY,
            event.as_bytes(),
        ));
    };
    let annotated = annotate_consumed(body.as_bytes(), "local", 1_700_000_000, 1).ok()?;
    let subscription = parse_description(row["subscription"].to_string().as_bytes())
        .unwrap_or_else(|e| panic!("{}: subscription refused: {e}", row["id"]));
    let result = candidates_for_text(
        &annotated.body,
        DEFAULT_KEY,
        DEFAULT_SUBKEY,
        subscription.event_key.as_deref(),
        subscription.event_subkey.as_deref(),
    );
    Some(result.unwrap_or_else(|e| panic!("{}: {e}", row["id"])))
}

/// The candidates of a connection event text (it carries no subscription keys).
fn connection_candidates(key: &str, subkey: &str, text: &[u8]) -> [String; 5] {
    candidates_for_text(text, key, subkey, None, None)
        .unwrap_or_else(|e| panic!("connection event refused: {e}"))
}

#[test]
fn candidates_and_first_defined_rule() {
    let (mut rows_checked, mut results, mut deviations) = (0, 0, 0);
    for row in rows("routes.jsonl") {
        let id = row["id"].as_str().unwrap_or("?").to_owned();
        let Some(found) = row_candidates(&row) else {
            assert!(row["dropped"] != false, "{id}: no candidates");
            continue;
        };
        let expected = strings(&row["candidates"]);
        assert_eq!(found.to_vec(), expected, "{id}: candidates");
        assert_eq!(found[4], CATCH_ALL_ROUTE);
        rows_checked += 1;

        for result in row["results"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default()
        {
            let defined: Vec<&str> = result["defined"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or_default()
                .iter()
                .filter_map(J::as_u64)
                .filter_map(|n| found.get(usize::try_from(n).ok()?.checked_sub(1)?))
                .map(String::as_str)
                .collect();
            if result["first_defined_rule"] != true {
                // Rows built to show the C module's stale route_get entry (vectors/README
                // §7.1): the deliberate difference.
                deviations += 1;
                continue;
            }
            let ran = first_defined(&found, |name| defined.contains(&name));
            assert_eq!(ran, result["ran"].as_str(), "{id}: defined {defined:?}");
            results += 1;
        }
    }
    println!(
        "routes.jsonl: {rows_checked} candidate lists, {results} route choices checked, \
         {deviations} stale-entry deviations skipped"
    );
    assert!(rows_checked > 0 && results > 0);
    assert!(
        deviations > 0 && deviations <= 10,
        "{deviations} deviations"
    );
}

#[test]
fn single_worker_history() {
    let by_id: HashMap<String, [String; 5]> = rows("routes.jsonl")
        .iter()
        .filter_map(|row| Some((row["id"].as_str()?.to_owned(), row_candidates(row)?)))
        .collect();
    let open = connection_event(DEFAULT_KEY, DEFAULT_SUBKEY, true, "127.0.0.1", "local");
    let open = connection_candidates(DEFAULT_KEY, DEFAULT_SUBKEY, &open);

    let (mut checked, mut deviations, mut unknown) = (0, 0, 0);
    for config in rows("routes_history.jsonl") {
        let defined = strings(&config["routes_defined"]);
        let mut violations = 0;
        for entry in config["sequence"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default()
        {
            if entry.get("dropped").is_some() {
                continue;
            }
            if entry["first_defined_rule"] != true {
                violations += 1;
                continue;
            }
            let id = entry["id"].as_str().unwrap_or_default();
            let found = match id {
                "ce-open" => &open,
                _ => match by_id.get(id) {
                    Some(found) => found,
                    // A message whose routes.jsonl row is not in this sample.
                    None => {
                        unknown += 1;
                        continue;
                    }
                },
            };
            let ran = first_defined(found, |name| defined.iter().any(|d| d == name));
            assert_eq!(ran, entry["ran"].as_str(), "mask {}: {id}", config["mask"]);
            checked += 1;
        }
        assert_eq!(
            Some(violations),
            config["first_defined_rule_violations"].as_u64()
        );
        deviations += violations;
    }
    println!(
        "routes_history.jsonl: {checked} dispatches checked, {deviations} stale-entry \
         deviations and {unknown} dispatches of unsampled messages skipped"
    );
    assert!(checked > 0);
}

/// The value of `modparam("kazoo", "<name>", "<value>")` in a row's `extra_modparams`.
fn modparam<'a>(extra: &'a str, name: &str) -> Option<&'a str> {
    let needle = format!("\"{name}\", \"");
    let start = extra.find(&needle)? + needle.len();
    extra.get(start..)?.split('"').next()
}

#[test]
fn connection_event_routes() {
    let mut checked = 0;
    for row in rows("connection_events.jsonl") {
        let extra = row["extra_modparams"].as_str().unwrap_or_default();
        let key = modparam(extra, "amqp_consumer_event_key").unwrap_or(DEFAULT_KEY);
        let subkey = modparam(extra, "amqp_consumer_event_subkey").unwrap_or(DEFAULT_SUBKEY);
        let event = row["kzE"].as_str().unwrap_or_default();
        let found = connection_candidates(key, subkey, event.as_bytes());
        let defined = strings(&row["routes_defined"]);
        let ran = first_defined(&found, |name| defined.iter().any(|d| d == name));
        assert_eq!(
            ran,
            row["route_ran"].as_str(),
            "{} {}",
            row["scenario"],
            event
        );
        checked += 1;
    }
    println!("connection_events.jsonl: {checked} route choices checked");
    assert!(checked > 0);
}

#[test]
fn long_and_odd_values_never_panic() {
    // crashers.txt: a 600-character Event-Category overflowed the C module's 512-byte buffer.
    let long = "C".repeat(600);
    let payload = json::parse(format!("{{\"Event-Category\":\"{long}\"}}").as_bytes());
    let payload = payload.unwrap_or(Value::Null);
    let found = candidates(&payload, DEFAULT_KEY, DEFAULT_SUBKEY, None, None);
    assert_eq!(
        found[1],
        format!("kazoo:consumer-event-{}", long.to_lowercase())
    );

    // Invalid UTF-8 and a NUL inside the value: cut at the NUL, bytes replaced.
    let payload = Value::Object(vec![(
        b"Event-Category".to_vec(),
        Value::String(b"A_\xff\x00tail".to_vec()),
    )]);
    let found = candidates(&payload, DEFAULT_KEY, DEFAULT_SUBKEY, None, None);
    assert_eq!(found[1], "kazoo:consumer-event-a-\u{fffd}");

    // An empty per-subscription key counts as none; a non-object payload has no fields.
    let found = candidates(
        &Value::Int(5),
        DEFAULT_KEY,
        DEFAULT_SUBKEY,
        Some(""),
        Some("S_k"),
    );
    assert_eq!(found[0], "kazoo:consumer-event--s-k");
    assert_eq!(found[2], "kazoo:consumer-event-event-category-s-k");

    assert!(candidates_for_text(b"null", DEFAULT_KEY, DEFAULT_SUBKEY, None, None).is_err());
    assert!(candidates_for_text(b"", DEFAULT_KEY, DEFAULT_SUBKEY, None, None).is_err());
}
