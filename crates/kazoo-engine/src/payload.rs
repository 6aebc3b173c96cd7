//! The wire rules for payloads, as the C module applies them (`kz_amqp.c`):
//! - what `kazoo_publish` / `kazoo_query` add to a script payload before it is published
//!   (`kz_amqp_add_payload_common_properties`, and the `Server-ID` added in `kz_amqp_send_ex`);
//! - the names of the targeted reply plumbing (`Server-ID`, reply queues);
//! - the `k=v;k=v` AMQP headers argument and the `consumer://<N>/<rk>` routing-key prefix;
//! - what a consumer does to every consumed message (`kz_amqp_send_worker_event`);
//! - the synthetic connection event text (`kz_amqp_fire_connection_event`);
//! - the events of 2600hz's builds of the module that configurations written for them route
//!   (`connection-error`, `connection-listener-zone-*`, `amqp-error-message-returned`); the
//!   C module has none, so these are json-c formatted objects, not vectors.
//!
//! Everything here is byte-exact against the vectors captured from the C module. Where the C
//! module crashes (non-object payloads, long `Server-ID`s) we return an error or just work.

use std::fmt;

use crate::encode::MAX_ROUTING_KEY_LEN;
use crate::json::{parse, to_json, write_json, ParseError, Value};

/// The fields every published payload carries, fixed for the life of the module.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommonFields {
    /// `App-Name`: the `app_name` modparam.
    pub app_name: String,
    /// `App-Version`: the Kamailio version string.
    pub app_version: String,
    /// `Node`: `kamailio@<node_hostname>`.
    pub node: String,
}

/// Why a payload was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PayloadError {
    /// Empty or invalid JSON (json-c's lenient rules).
    Invalid(ParseError),
    /// The payload is JSON `null`: json-c hands the C module a NULL object, which it refuses
    /// (rc -1 on publish, "error parsing json body" on consume).
    Null,
    /// Valid JSON that is not an object (the json-c type name). The C module aborts the whole
    /// server on these (a json-c assertion); we refuse them.
    NotAnObject(&'static str),
}

impl fmt::Display for PayloadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PayloadError::Invalid(e) => write!(f, "empty or invalid JSON payload: {e}"),
            PayloadError::Null => f.write_str("JSON payload is null, not an object"),
            PayloadError::NotAnObject(kind) => write!(f, "JSON payload is {kind}, not an object"),
        }
    }
}

impl std::error::Error for PayloadError {}

/// Parses a payload that must be a JSON object and returns its members.
fn parse_object(payload: &[u8]) -> Result<Vec<(Vec<u8>, Value)>, PayloadError> {
    match parse(payload).map_err(PayloadError::Invalid)? {
        Value::Object(entries) => Ok(entries),
        Value::Null => Err(PayloadError::Null),
        other => Err(PayloadError::NotAnObject(other.type_name())),
    }
}

/// The text `json_object_get_string` gives for a value, cut at the first NUL as the C module's
/// `strlen`/`%s` use of it does: strings raw, JSON null empty (json-c's NULL object), anything
/// else its spaced JSON text.
pub(crate) fn c_text(value: &Value) -> Vec<u8> {
    match value {
        Value::Null => Vec::new(),
        Value::String(s) => s.split(|&b| b == 0).next().unwrap_or_default().to_vec(),
        other => to_json(other),
    }
}

/// C's `strtoll(text, &end, 10)` on a C string: leading white space, an optional sign, then
/// decimal digits; anything after them is ignored and the value saturates on overflow.
/// `None` when no digit was read (what `atoi` turns into 0 and `json_parse_int64` into an
/// error).
pub(crate) fn c_strtoll(text: &[u8]) -> Option<i64> {
    let mut rest = text
        .iter()
        .copied()
        .take_while(|&b| b != 0)
        .skip_while(|&b| matches!(b, b' ' | b'\t' | b'\n' | 0x0B | 0x0C | b'\r'))
        .peekable();
    let negative = match rest.peek() {
        Some(b'-') => {
            rest.next();
            true
        }
        Some(b'+') => {
            rest.next();
            false
        }
        _ => false,
    };
    let mut value: Option<i64> = None;
    for digit in rest.map_while(|b| b.is_ascii_digit().then(|| i64::from(b - b'0'))) {
        // Accumulate towards the sign so that i64::MIN is reachable; saturate like strtoll.
        let so_far = value.unwrap_or(0).saturating_mul(10);
        value = Some(if negative {
            so_far.saturating_sub(digit)
        } else {
            so_far.saturating_add(digit)
        });
    }
    value
}

const KEY_APP_NAME: &[u8] = b"App-Name";
const KEY_APP_VERSION: &[u8] = b"App-Version";
const KEY_NODE: &[u8] = b"Node";
const KEY_MSG_ID: &[u8] = b"Msg-ID";
const KEY_SERVER_ID: &[u8] = b"Server-ID";
const KEY_BROKER_ZONE: &[u8] = b"AMQP-Broker-Zone";
const KEY_RECEIVED: &[u8] = b"AMQP-Received";

/// A publish payload with the common fields added and serialised, waiting only for its
/// `Server-ID`, which is known once the AMQP process has picked the broker and channel.
///
/// The serialised text is kept split around the `Server-ID` value so that the final body is
/// one concatenation, not a second parse and serialisation as in the C publisher.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreparedPublish {
    /// Read and written directly by the IPC wire format (`ipc::wire`),
    /// which carries it whole to the AMQP process.
    pub(crate) before: Vec<u8>,
    pub(crate) after: Vec<u8>,
    pub(crate) slot: bool,
    pub(crate) msg_id: String,
}

impl PreparedPublish {
    /// The body to publish. With a `Server-ID` slot, `server_id` is written there as a JSON
    /// string (json-c escaping, so `/` becomes `\/`); without one the payload already had its
    /// own `Server-ID` and `server_id` is not used.
    pub fn body(&self, server_id: &str) -> Vec<u8> {
        if !self.slot {
            return self.before.clone();
        }
        let mut out =
            Vec::with_capacity(self.before.len() + server_id.len() + 2 + self.after.len());
        out.extend_from_slice(&self.before);
        write_json(&Value::String(server_id.as_bytes().to_vec()), &mut out);
        out.extend_from_slice(&self.after);
        out
    }

    /// The key a reply is correlated by: the payload's own `Msg-ID` when it had one (a string
    /// as is, anything else as its JSON text), else the generated one.
    pub fn msg_id(&self) -> &str {
        &self.msg_id
    }

    /// Whether the publisher must supply the `Server-ID` (the payload had none, or null).
    pub fn has_server_id_slot(&self) -> bool {
        self.slot
    }
}

/// Prepares a `kazoo_publish` / `kazoo_query` payload as the C module does before handing it to
/// the publisher: parse it, then add `App-Name`, `App-Version`, `Node` and `Msg-ID`, each only
/// when absent or JSON null (json-c's lookup sees a null member as missing; the add then
/// replaces it in place, while an absent field is appended). `new_msg_id` is called only when
/// a `Msg-ID` has to be generated.
///
/// `Server-ID` follows the same rule, applied later by the publisher
/// ([`PreparedPublish::body`]): a present non-null value (even `""`) is kept.
pub fn prepare_publish(
    payload: &[u8],
    common: &CommonFields,
    new_msg_id: impl FnOnce() -> String,
) -> Result<PreparedPublish, PayloadError> {
    let mut entries = parse_object(payload)?;
    let missing = |entries: &[(Vec<u8>, Value)], key: &[u8]| {
        matches!(member(entries, key), None | Some(Value::Null))
    };

    for (key, text) in [
        (KEY_APP_NAME, &common.app_name),
        (KEY_APP_VERSION, &common.app_version),
        (KEY_NODE, &common.node),
    ] {
        if missing(&entries, key) {
            set_member(&mut entries, key, Value::String(text.as_bytes().to_vec()));
        }
    }

    let msg_id = match member(&entries, KEY_MSG_ID) {
        Some(own) if *own != Value::Null => String::from_utf8_lossy(&c_text(own)).into_owned(),
        _ => {
            let id = new_msg_id();
            set_member(
                &mut entries,
                KEY_MSG_ID,
                Value::String(id.as_bytes().to_vec()),
            );
            id
        }
    };

    let slot = if missing(&entries, KEY_SERVER_ID) {
        // The value is a stand-in: serialise_split leaves the slot's value out.
        Some(set_member(&mut entries, KEY_SERVER_ID, Value::Null))
    } else {
        None
    };
    let (before, after) = serialise_split(&entries, slot);
    Ok(PreparedPublish {
        before,
        after,
        slot: slot.is_some(),
        msg_id,
    })
}

/// The value of member `key` (`json_object_object_get_ex`).
fn member<'a>(entries: &'a [(Vec<u8>, Value)], key: &[u8]) -> Option<&'a Value> {
    entries.iter().find(|(k, _)| k == key).map(|(_, v)| v)
}

/// Sets member `key` as `json_object_object_add` does: an existing member keeps its position
/// and gets the new value, a new one is appended. Returns the member's index.
fn set_member(entries: &mut Vec<(Vec<u8>, Value)>, key: &[u8], value: Value) -> usize {
    match entries.iter().position(|(k, _)| k == key) {
        Some(index) => {
            if let Some((_, slot)) = entries.get_mut(index) {
                *slot = value;
            }
            index
        }
        None => {
            entries.push((key.to_vec(), value));
            entries.len() - 1
        }
    }
}

/// json-c's spaced serialisation of an object, cut just before the value of member `slot`
/// (which is left out): `before` ends with `"Server-ID": `, `after` starts after the value.
/// Without a slot, `before` is the whole text and `after` is empty.
fn serialise_split(entries: &[(Vec<u8>, Value)], slot: Option<usize>) -> (Vec<u8>, Vec<u8>) {
    let mut before = Vec::with_capacity(256);
    let mut after = Vec::new();
    before.push(b'{');
    for (i, (key, value)) in entries.iter().enumerate() {
        let out = match slot {
            Some(s) if i > s => &mut after,
            _ => &mut before,
        };
        if i > 0 {
            out.push(b',');
        }
        out.push(b' ');
        // json-c writes keys with strlen(): a NUL ends the key (parsed keys never hold one).
        let key = key.split(|&b| b == 0).next().unwrap_or_default();
        write_json(&Value::String(key.to_vec()), out);
        out.extend_from_slice(b": ");
        if Some(i) != slot {
            write_json(value, out);
        }
    }
    let end = if slot.is_some() {
        &mut after
    } else {
        &mut before
    };
    end.extend_from_slice(b" }");
    (before, after)
}

/// A random lowercase UUIDv4, as `uuid_generate_random` + `uuid_unparse_lower` give the C
/// module. The randomness comes from the kernel on every call, so forked processes never share
/// a sequence.
pub fn new_msg_id() -> String {
    uuid::Uuid::new_v4().hyphenated().to_string()
}

/// The direct exchange replies are published to, with a `Server-ID` as routing key.
pub const TARGETED_EXCHANGE: &str = "targeted";

/// The `Server-ID` of a broker's publisher channel, also the routing key that binds its reply
/// queue to [`TARGETED_EXCHANGE`]: `kamailio@<node>-<<id>>-targeted-<idx>`, angle brackets
/// included.
pub fn server_id(node_hostname: &str, broker_id: u32, channel_idx: u32) -> String {
    format!("kamailio@{node_hostname}-<{broker_id}>-targeted-{channel_idx}")
}

/// The reply queue of a broker's publisher channel: `kamailio@<node>-<<id>-<idx>>`.
pub fn reply_queue(node_hostname: &str, broker_id: u32, channel_idx: u32) -> String {
    format!("kamailio@{node_hostname}-<{broker_id}-{channel_idx}>")
}

/// The `Server-ID` of asynchronous queries whose replies the consumer workers take
/// (`amqp_worker_replies`), also the name of the queue they share on every primary-zone broker
/// and its binding to [`TARGETED_EXCHANGE`]: `kamailio@<node>-<async>-targeted`. One per
/// Kamailio (node names are unique, as the other reply queues' names already need).
pub fn async_server_id(node_hostname: &str) -> String {
    format!("kamailio@{node_hostname}-<async>-targeted")
}

/// Parses the AMQP headers argument of `kazoo_publish` / `kazoo_query` (`k1=v1;k2=v2`) as the C
/// module's `strtok` does: pairs split on `;`, each pair split on `=`, where empty pieces do
/// not count (so `k==v` is `k`=`v` and a leading `=` is eaten), the value is the second piece
/// (`h=a=b` gives `a`), and a pair without both a key and a value is skipped. Duplicates are
/// kept in order and nothing is trimmed. The argument is a C string there, so a NUL ends it.
/// Every value is sent as an AMQP long string.
pub fn parse_headers(text: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)> {
    let text = text.split(|&b| b == 0).next().unwrap_or_default();
    text.split(|&b| b == b';')
        .filter_map(|pair| {
            let mut pieces = pair.split(|&b| b == b'=').filter(|p| !p.is_empty());
            let key = pieces.next()?;
            let value = pieces.next()?;
            Some((key.to_vec(), value.to_vec()))
        })
        .collect()
}

/// The publish flags of 2600hz's builds of the module (their AMQP client's flag bits), given as the
/// `flags` argument (`kazoo_publish`'s and `kazoo_query`'s 4th, `kazoo_async_query`'s 6th).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PublishFlags(pub u32);

impl PublishFlags {
    /// `mandatory` (2048): the broker returns a message no queue takes.
    pub const MANDATORY: u32 = 0x800;

    /// The argument's value as flags: an unsigned decimal integer (nothing else, so `k=v`
    /// headers and variable names are never taken for flags).
    pub fn parse(value: &[u8]) -> Option<PublishFlags> {
        if value.is_empty() || !value.iter().all(u8::is_ascii_digit) {
            return None;
        }
        std::str::from_utf8(value)
            .ok()?
            .parse()
            .ok()
            .map(PublishFlags)
    }

    pub fn mandatory(self) -> bool {
        self.0 & Self::MANDATORY != 0
    }

    /// The bits that have no effect here (every one but `mandatory`; the
    /// `immediate` bit, 4096, among them: RabbitMQ refuses immediate publishes).
    pub fn ignored(self) -> u32 {
        self.0 & !Self::MANDATORY
    }
}

/// Where a `kazoo_publish` goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PublishTarget {
    /// The primary zone's brokers, with failover.
    Primary,
    /// Only the broker with this id (`consumer://<id>/…`), no failover.
    Broker(u32),
}

/// Why a routing key was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetError {
    /// Longer than [`MAX_ROUTING_KEY_LEN`] bytes (C: rc -1).
    TooLong(usize),
    /// `consumer://<N>` without the `/` before the routing key.
    MissingSlash,
    /// `consumer:///…`: no broker id.
    EmptyBrokerId,
    /// A broker id no broker can have (negative, or beyond `u32`); the C module found no such
    /// server and dropped the message.
    UnknownBroker(String),
}

impl fmt::Display for TargetError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TargetError::TooLong(len) => write!(
                f,
                "routing key is {len} bytes long, more than the {MAX_ROUTING_KEY_LEN} allowed"
            ),
            TargetError::MissingSlash => {
                f.write_str("routing key consumer://<id> lacks the '/' before the routing key")
            }
            TargetError::EmptyBrokerId => {
                f.write_str("routing key consumer:///... has no broker id")
            }
            TargetError::UnknownBroker(id) => {
                write!(
                    f,
                    "routing key consumer://{id}/... names no possible broker"
                )
            }
        }
    }
}

impl std::error::Error for TargetError {}

/// Checks the routing-key length limit (the C module's `MAX_ROUTING_KEY_SIZE`, also AMQP's
/// short-string limit) that every publish and query applies first.
pub fn check_routing_key(routing_key: &[u8]) -> Result<(), TargetError> {
    if routing_key.len() > MAX_ROUTING_KEY_LEN {
        return Err(TargetError::TooLong(routing_key.len()));
    }
    Ok(())
}

/// Interprets a `kazoo_publish` routing key (queries do not: the caller decides). The length is
/// checked on the whole argument, as in C. `consumer://<N>/<rk>` publishes `<rk>` through
/// broker `N` only, where `N` is read like `atoi` (so 0 or a non-number means the primary
/// zone); a missing `/` or an empty `N` is an error (the C module logged it and returned 1
/// without publishing). Any other key goes to the primary zone as is.
pub fn parse_target(routing_key: &[u8]) -> Result<(PublishTarget, &[u8]), TargetError> {
    check_routing_key(routing_key)?;
    let Some(rest) = routing_key.strip_prefix(b"consumer://") else {
        return Ok((PublishTarget::Primary, routing_key));
    };
    let Some(slash) = rest.iter().position(|&b| b == b'/') else {
        return Err(TargetError::MissingSlash);
    };
    let (id, key) = (
        rest.get(..slash).unwrap_or_default(),
        rest.get(slash + 1..).unwrap_or_default(),
    );
    if id.is_empty() {
        return Err(TargetError::EmptyBrokerId);
    }
    match c_strtoll(id).unwrap_or(0) {
        0 => Ok((PublishTarget::Primary, key)),
        n => u32::try_from(n)
            .map(|n| (PublishTarget::Broker(n), key))
            .map_err(|_| TargetError::UnknownBroker(String::from_utf8_lossy(id).into_owned())),
    }
}

/// A consumed message after [`annotate_consumed`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Annotated {
    /// The annotated payload, json-c spaced: `$kzE` / `$kzR`.
    pub body: Vec<u8>,
    /// The `Msg-ID` as text, when the message has a non-null one: the query correlation key.
    pub msg_id: Option<String>,
}

/// What a consumer does to every consumed message before it is dispatched, as
/// `kz_amqp_send_worker_event` does:
/// - `AMQP-Broker-Zone` = `zone` and `AMQP-Received` = `received_unix` (an integer) are set,
///   replacing existing members in place or else appended;
/// - a non-empty `Server-ID` becomes the string `consumer://<broker_id>/<its text>` (a
///   non-string is rendered as JSON text first) and moves to the end; an empty one is removed;
///   a null one is left alone (json-c's lookup does not see it). Unlike C (a 100-byte stack
///   buffer) any length works.
///
/// Invalid JSON and JSON null are errors (the C module logs and drops them); so is a
/// non-object, where the C module aborts.
pub fn annotate_consumed(
    body: &[u8],
    zone: &str,
    received_unix: i64,
    broker_id: u32,
) -> Result<Annotated, PayloadError> {
    let mut entries = parse_object(body)?;
    set_member(
        &mut entries,
        KEY_BROKER_ZONE,
        Value::String(zone.as_bytes().to_vec()),
    );
    set_member(&mut entries, KEY_RECEIVED, Value::Int(received_unix));

    if let Some(index) = entries.iter().position(|(k, _)| k == KEY_SERVER_ID) {
        let text = match entries.get(index) {
            Some((_, Value::Null)) | None => None,
            Some((_, other)) => Some(c_text(other)),
        };
        if let Some(text) = text {
            // Delete and re-add, as C does: the rewritten field moves to the end.
            entries.remove(index);
            if !text.is_empty() {
                let mut rewritten = format!("consumer://{broker_id}/").into_bytes();
                rewritten.extend_from_slice(&text);
                entries.push((KEY_SERVER_ID.to_vec(), Value::String(rewritten)));
            }
        }
    }

    let msg_id = match member(&entries, KEY_MSG_ID) {
        None | Some(Value::Null) => None,
        Some(id) => Some(String::from_utf8_lossy(&c_text(id)).into_owned()),
    };
    Ok(Annotated {
        body: to_json(&Value::Object(entries)),
        msg_id,
    })
}

/// The synthetic connection event: `{ "<key>" : "connection", "<subkey>" : "open"|"closed",
/// "host" : "<host>", "zone" : "<zone>" }`, spaced exactly as the C module's `sprintf` writes
/// it (` : `, never re-serialised).
///
/// C writes the texts raw; we escape `"`, `\` and control characters so that the event stays
/// valid JSON whatever the configuration holds (C's event would not parse and no route would
/// run). Ordinary host, zone and key names come out byte for byte as in C.
pub fn connection_event(key: &str, subkey: &str, open: bool, host: &str, zone: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(96 + key.len() + subkey.len() + host.len() + zone.len());
    out.extend_from_slice(b"{ ");
    push_raw_string(key, &mut out);
    out.extend_from_slice(b" : \"connection\", ");
    push_raw_string(subkey, &mut out);
    out.extend_from_slice(if open {
        b" : \"open\", \"host\" : ".as_slice()
    } else {
        b" : \"closed\", \"host\" : ".as_slice()
    });
    push_raw_string(host, &mut out);
    out.extend_from_slice(b", \"zone\" : ");
    push_raw_string(zone, &mut out);
    out.extend_from_slice(b" }");
    out
}

/// A connection event of 2600hz's builds (`connection-error`,
/// `connection-listener-zone-available`, ...): `<key>` is `"connection"`, `<subkey>` is
/// `name`, then `fields` in order, written as json-c writes an object.
pub fn connection_notice(key: &str, subkey: &str, name: &str, fields: &[(&str, &str)]) -> Vec<u8> {
    let text = |s: &str| Value::String(s.as_bytes().to_vec());
    let mut entries = vec![
        (key.as_bytes().to_vec(), text("connection")),
        (subkey.as_bytes().to_vec(), text(name)),
    ];
    for (field, value) in fields {
        set_member(&mut entries, field.as_bytes(), text(value));
    }
    to_json(&Value::Object(entries))
}

/// The event-key value of a message the broker returned (`amqp_error`, with
/// [`RETURNED_SUBKEY_VALUE`]: route `kazoo:consumer-event-amqp-error-message-returned`).
pub const RETURNED_KEY_VALUE: &str = "amqp_error";
/// The event-subkey value of a returned message.
pub const RETURNED_SUBKEY_VALUE: &str = "message_returned";

/// A message the broker returned (`basic.return` of a mandatory publish), as 2600hz's builds
/// hand it to the event routes: the published payload with `<key>`/`<subkey>` set to
/// `amqp_error`/`message_returned`, their former values in `Original-<key>` and
/// `Original-<subkey>` (`null` when absent), the broker's `Error-Code` and `Error-Reason`, and
/// `AMQP-Broker-Zone`.
pub fn returned_message(
    body: &[u8],
    key: &str,
    subkey: &str,
    zone: &str,
    reply_code: u16,
    reply_text: &str,
) -> Result<Vec<u8>, PayloadError> {
    let mut entries = parse_object(body)?;
    let text = |s: &str| Value::String(s.as_bytes().to_vec());
    for (field, value) in [(key, RETURNED_KEY_VALUE), (subkey, RETURNED_SUBKEY_VALUE)] {
        let original = member(&entries, field.as_bytes())
            .cloned()
            .unwrap_or(Value::Null);
        set_member(&mut entries, field.as_bytes(), text(value));
        set_member(
            &mut entries,
            format!("Original-{field}").as_bytes(),
            original,
        );
    }
    set_member(&mut entries, b"Error-Code", Value::Int(reply_code.into()));
    set_member(&mut entries, b"Error-Reason", text(reply_text));
    set_member(&mut entries, KEY_BROKER_ZONE, text(zone));
    Ok(to_json(&Value::Object(entries)))
}

/// A quoted string as C's `"\"%s\""` would write it, escaping only what would break the JSON.
fn push_raw_string(text: &str, out: &mut Vec<u8>) {
    out.push(b'"');
    for &b in text.as_bytes() {
        match b {
            b'"' | b'\\' => out.extend_from_slice(&[b'\\', b]),
            0..=0x1F => out.extend_from_slice(format!("\\u{b:04x}").as_bytes()),
            _ => out.push(b),
        }
    }
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn common() -> CommonFields {
        CommonFields {
            app_name: "kamailio".into(),
            app_version: "5.6.3".into(),
            node: "kamailio@n".into(),
        }
    }

    #[test]
    fn body_equals_a_full_serialisation_with_the_server_id() {
        for payload in [
            &b"{}"[..],
            b"{\"Server-ID\":null,\"a\":[1,{\"b\":null}]}",
            b"{\"a\":1,\"Server-ID\":null}",
            b"{\"x\":\"/\",\"Msg-ID\":null}",
        ] {
            let prepared = prepare_publish(payload, &common(), || "id".into());
            let Ok(prepared) = prepared else {
                panic!("refused {payload:?}");
            };
            let mut expected = parse(&prepared.body("s/1")).unwrap_or(Value::Null);
            assert!(expected.insert(b"Server-ID", Value::String(b"s/1".to_vec())));
            assert_eq!(prepared.body("s/1"), to_json(&expected));
        }
    }

    #[test]
    fn msg_id_is_generated_only_when_needed() {
        let own = prepare_publish(b"{\"Msg-ID\":\"m\"}", &common(), || {
            panic!("generated an id for a payload that has one")
        });
        assert_eq!(own.map(|p| p.msg_id().to_owned()), Ok("m".to_owned()));
    }

    #[test]
    fn strtoll_reads_like_c() {
        assert_eq!(c_strtoll(b" \t+12abc"), Some(12));
        assert_eq!(c_strtoll(b"-7"), Some(-7));
        assert_eq!(c_strtoll(b"abc"), None);
        assert_eq!(c_strtoll(b"-"), None);
        assert_eq!(c_strtoll(b""), None);
        assert_eq!(c_strtoll(b"99999999999999999999"), Some(i64::MAX));
        assert_eq!(c_strtoll(b"-99999999999999999999"), Some(i64::MIN));
        assert_eq!(c_strtoll(b"1\x002"), Some(1));
    }

    #[test]
    fn targets() {
        let t = |rk: &'static [u8]| parse_target(rk);
        assert_eq!(
            t(b"consumer://3/a.b"),
            Ok((PublishTarget::Broker(3), &b"a.b"[..]))
        );
        assert_eq!(
            t(b"consumer://x/a"),
            Ok((PublishTarget::Primary, &b"a"[..]))
        );
        assert_eq!(
            t(b"consumer:// +2z/"),
            Ok((PublishTarget::Broker(2), &b""[..]))
        );
        assert_eq!(
            t(b"consumer://-1/a"),
            Err(TargetError::UnknownBroker("-1".into()))
        );
        assert_eq!(
            t(b"consumer:/1/a"),
            Ok((PublishTarget::Primary, &b"consumer:/1/a"[..]))
        );
        assert_eq!(t(b"consumer://"), Err(TargetError::MissingSlash));
    }

    #[test]
    fn connection_event_escapes_only_what_breaks_json() {
        let text = connection_event("K", "S", false, "h/1", "z\"q");
        assert_eq!(
            text,
            b"{ \"K\" : \"connection\", \"S\" : \"closed\", \"host\" : \"h/1\", \"zone\" : \"z\\\"q\" }"
                .to_vec()
        );
        assert!(parse(&text).is_ok());
    }

    #[test]
    fn connection_notices_are_json_c_objects_with_the_configured_keys() {
        let text = connection_notice(
            "K",
            "S",
            "error",
            &[("host", "h"), ("zone", "z"), ("message", "403 \"no\"")],
        );
        assert_eq!(
            String::from_utf8(text).unwrap(),
            r#"{ "K": "connection", "S": "error", "host": "h", "zone": "z", "message": "403 \"no\"" }"#
        );
    }

    #[test]
    fn a_returned_message_keeps_its_payload_and_names_the_returned_route() {
        let body =
            br#"{"Event-Category": "directory", "Event-Name": "reg_success", "Msg-ID": "m"}"#;
        let text = returned_message(
            body,
            "Event-Category",
            "Event-Name",
            "local",
            312,
            "NO_ROUTE",
        )
        .unwrap();
        assert_eq!(
            String::from_utf8(text).unwrap(),
            r#"{ "Event-Category": "amqp_error", "Event-Name": "message_returned", "Msg-ID": "m", "Original-Event-Category": "directory", "Original-Event-Name": "reg_success", "Error-Code": 312, "Error-Reason": "NO_ROUTE", "AMQP-Broker-Zone": "local" }"#
        );
        let missing = returned_message(b"{}", "K", "S", "z", 312, "NO_ROUTE").unwrap();
        assert!(String::from_utf8(missing)
            .unwrap()
            .contains(r#""Original-K": null"#));
        assert!(returned_message(b"[1]", "K", "S", "z", 312, "NO_ROUTE").is_err());
    }

    #[test]
    fn flags_are_plain_unsigned_integers_and_2048_is_mandatory() {
        assert_eq!(PublishFlags::parse(b"2048"), Some(PublishFlags(2048)));
        assert!(PublishFlags::parse(b"2048").unwrap().mandatory());
        assert_eq!(PublishFlags::parse(b"6144").unwrap().ignored(), 4096);
        assert!(!PublishFlags::parse(b"0").unwrap().mandatory());
        for not_flags in [
            &b""[..],
            b"k=v",
            b"$var(x)",
            b"-1",
            b" 2048",
            b"2048;a=b",
            b"99999999999",
        ] {
            assert_eq!(PublishFlags::parse(not_flags), None, "{not_flags:?}");
        }
    }
}
