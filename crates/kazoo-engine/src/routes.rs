//! The event-route names a consumed message (or a synthetic connection event) may run, as the
//! C module's `kz_amqp_consumer_event` composes them (vectors/README §7.2,
//! §7.3), and the rule for picking one of them.
//!
//! The C module tries the five candidates in order with the core's `route_get`, which, for a
//! name that is not a route, stores a pointer to the module's stack buffer in the route-name
//! hash; later lookups of a name of the same length in the same bucket then fail even when the
//! route exists (vectors/README §7.1). We do not reproduce that: the first defined candidate
//! runs, which is what the C module does whenever that stale entry does not interfere.

use crate::json::{parse, Value};
use crate::payload::{c_text, PayloadError};

/// The catch-all route, candidate 5.
pub const CATCH_ALL_ROUTE: &str = "kazoo:consumer-event";

/// The five candidate route names, in the order they are tried:
/// 1. `kazoo:consumer-event-<cat>-<name>`
/// 2. `kazoo:consumer-event-<cat>`
/// 3. `kazoo:consumer-event-<key>-<subkey>`
/// 4. `kazoo:consumer-event-<key>`
/// 5. `kazoo:consumer-event`
///
/// `key`/`subkey` are the subscription's `event_key`/`event_subkey` when it set them (an empty
/// one counts as unset, as in C), else the module defaults passed here. `cat`/`name` are the
/// payload's top-level `key`/`subkey` members: strings raw (cut at a NUL), other values as
/// json-c text; when missing, null or empty, the subscription's own key name if it set one,
/// else empty. Candidates 1–4 are lowercased (ASCII only) with `_` turned into `-`; nothing
/// else is changed, so names holding dots, spaces or other bytes can never match a route
/// defined in a cfg file.
///
/// Bytes that are not UTF-8 are replaced (U+FFFD); such names cannot be route names in a cfg
/// either, so the replacement never changes which route runs.
pub fn candidates(
    payload: &Value,
    key: &str,
    subkey: &str,
    subscription_key: Option<&str>,
    subscription_subkey: Option<&str>,
) -> [String; 5] {
    let subscription_key = subscription_key.filter(|k| !k.is_empty());
    let subscription_subkey = subscription_subkey.filter(|k| !k.is_empty());
    let key = subscription_key.unwrap_or(key);
    let subkey = subscription_subkey.unwrap_or(subkey);
    let cat = field_or_literal(payload, key, subscription_key);
    let name = field_or_literal(payload, subkey, subscription_subkey);
    [
        route_name(&[&cat, b"-", &name]),
        route_name(&[&cat]),
        route_name(&[key.as_bytes(), b"-", subkey.as_bytes()]),
        route_name(&[key.as_bytes()]),
        CATCH_ALL_ROUTE.to_owned(),
    ]
}

/// [`candidates`] for a payload still in text form, as a consumer worker receives it. Invalid
/// JSON and JSON null run no route in the C module, so they are errors here.
pub fn candidates_for_text(
    payload: &[u8],
    key: &str,
    subkey: &str,
    subscription_key: Option<&str>,
    subscription_subkey: Option<&str>,
) -> Result<[String; 5], PayloadError> {
    match parse(payload).map_err(PayloadError::Invalid)? {
        Value::Null => Err(PayloadError::Null),
        value => Ok(candidates(
            &value,
            key,
            subkey,
            subscription_key,
            subscription_subkey,
        )),
    }
}

/// The route to run: the first candidate for which `is_defined` holds, or `None` (the C module
/// logs "kazoo:consumer-event not found" and drops the message).
pub fn first_defined(
    candidates: &[String; 5],
    mut is_defined: impl FnMut(&str) -> bool,
) -> Option<&str> {
    candidates
        .iter()
        .map(String::as_str)
        .find(|name| is_defined(name))
}

/// The payload's text for `field`, or the subscription's literal key name when that text is
/// empty (missing and null members are empty too).
fn field_or_literal(payload: &Value, field: &str, literal: Option<&str>) -> Vec<u8> {
    let text = payload
        .get(field.as_bytes())
        .map(c_text)
        .unwrap_or_default();
    match literal {
        Some(literal) if text.is_empty() => literal.as_bytes().to_vec(),
        _ => text,
    }
}

/// `kazoo:consumer-event-` followed by `parts`, normalised as C does (`tolower` in the C
/// locale, then `_` → `-`).
fn route_name(parts: &[&[u8]]) -> String {
    let mut name = b"kazoo:consumer-event-".to_vec();
    for part in parts {
        name.extend(part.iter().map(|&b| match b {
            b'_' => b'-',
            other => other.to_ascii_lowercase(),
        }));
    }
    String::from_utf8_lossy(&name).into_owned()
}
