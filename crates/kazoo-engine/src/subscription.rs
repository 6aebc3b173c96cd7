//! `kazoo_subscribe` descriptions: the JSON form (`ki_kz_amqp_subscribe`) and
//! the simple form, read with the C module's defaults and json-c conversions.
//!
//! Differences from C, all on purpose:
//! - a description is checked when it is made, so that a bad one is reported to the script
//!   and affects only itself: the C module accepts anything and an empty or unknown exchange
//!   type later wedges the whole consumer connection (a connection-level AMQP error);
//! - every `exchange-bindings` entry is kept (C keeps only the first, a list-linking bug);
//! - `wait_for_consumer_ack` is honoured (C reads it and acks on receipt regardless);
//! - `x-queue-type: quorum` (beside the queue flags) declares a quorum queue, which
//!   RabbitMQ 4 recommends for durable queues; it must be durable, not exclusive and not
//!   auto-delete, which is checked here.

use std::fmt;

use crate::json::{parse, ParseError, Value};
use crate::payload::{c_strtoll, c_text};

/// The longest exchange name, queue name, exchange type or routing key AMQP can carry (a short
/// string).
const MAX_SHORTSTR_LEN: usize = 255;

/// Exchange declaration flags. All default to false.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ExchangeFlags {
    pub passive: bool,
    pub durable: bool,
    pub auto_delete: bool,
    pub internal: bool,
}

/// Queue declaration flags. `auto_delete` defaults to true, the others to false.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueFlags {
    pub passive: bool,
    pub durable: bool,
    pub exclusive: bool,
    pub auto_delete: bool,
    /// Declared with `x-queue-type: quorum` (else the broker's default type).
    pub quorum: bool,
}

impl Default for QueueFlags {
    fn default() -> Self {
        QueueFlags {
            passive: false,
            durable: false,
            exclusive: false,
            auto_delete: true,
            quorum: false,
        }
    }
}

/// One `exchange-bindings` entry: `source` is declared, then bound to the subscription's
/// exchange once per routing key (`exchange.bind(destination = exchange, source, rk)`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExchangeBinding {
    pub source: String,
    pub exchange_type: String,
    pub flags: ExchangeFlags,
    pub routing: Vec<String>,
}

/// When a consumed message is acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckMode {
    /// Consumed with `no_ack`: the broker does not wait for acks.
    None,
    /// Acked as soon as it is received, before dispatch (what C always did with `no_ack` 0).
    OnReceipt,
    /// Acked once its event route has run.
    AfterRoute,
}

/// A subscription: what to declare, bind and consume, and how to name its event routes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscription {
    pub exchange: String,
    pub exchange_type: String,
    pub exchange_flags: ExchangeFlags,
    /// Empty asks the broker to name the queue.
    pub queue: String,
    pub queue_flags: QueueFlags,
    /// One queue binding per key; never empty (a missing `routing` binds one empty key).
    pub routing: Vec<String>,
    pub exchange_bindings: Vec<ExchangeBinding>,
    pub no_ack: bool,
    pub wait_for_consumer_ack: bool,
    /// The payload member naming the event category for route names, instead of the module's.
    pub event_key: Option<String>,
    /// The payload member naming the event name for route names, instead of the module's.
    pub event_subkey: Option<String>,
    /// Also bind through brokers of non-primary zones.
    pub federate: bool,
    /// Dispatch to a worker chosen by hash instead of round-robin.
    pub consistent_worker: bool,
    /// The top-level payload member whose value is hashed; the routing key when unset.
    pub consistent_worker_key: Option<String>,
    /// The description's `name` (2600hz's configurations name their listeners), for the
    /// `listener-zone-*` connection events.
    pub name: Option<String>,
}

impl Subscription {
    /// The name the `listener-zone-*` events give: `name`, else the queue, else (a queue
    /// named by the broker) the exchange.
    pub fn listener_name(&self) -> &str {
        match &self.name {
            Some(name) => name,
            None if !self.queue.is_empty() => &self.queue,
            None => &self.exchange,
        }
    }

    /// When consumed messages are acknowledged.
    pub fn ack_mode(&self) -> AckMode {
        match (self.no_ack, self.wait_for_consumer_ack) {
            (true, _) => AckMode::None,
            (false, false) => AckMode::OnReceipt,
            (false, true) => AckMode::AfterRoute,
        }
    }
}

/// Why a subscription was refused. `field` names the description field at fault, as a path
/// such as `exchange-def.type` or `exchange-bindings.<source>.type`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SubscriptionError {
    /// The description text is empty or not JSON.
    InvalidJson(ParseError),
    /// A field that must be a JSON object is something else (json-c type name).
    NotAnObject { field: String, found: &'static str },
    /// An empty exchange name: the default exchange cannot be declared or bound.
    EmptyExchange { field: String },
    /// A missing, empty or unknown exchange type.
    BadExchangeType { field: String, value: String },
    /// A name that is not UTF-8.
    NotUtf8 { field: String },
    /// A name longer than an AMQP short string allows.
    TooLong { field: String, len: usize },
    /// An `x-queue-type` other than `classic` and `quorum`.
    BadQueueType { field: String, value: String },
    /// A quorum queue that is not durable, or is exclusive or auto-delete.
    QuorumFlags { field: String },
}

impl fmt::Display for SubscriptionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SubscriptionError::InvalidJson(e) => {
                write!(f, "empty or invalid JSON subscription: {e}")
            }
            SubscriptionError::NotAnObject { field, found } => {
                write!(
                    f,
                    "subscription field `{field}` must be a JSON object, not {found}"
                )
            }
            SubscriptionError::EmptyExchange { field } => write!(
                f,
                "subscription field `{field}` is empty: the default exchange cannot be declared \
                 or bound, name an exchange"
            ),
            SubscriptionError::BadExchangeType { field, value } if value.is_empty() => write!(
                f,
                "subscription field `{field}` is missing or empty: an exchange type is required \
                 (direct, topic, fanout, headers or x-...)"
            ),
            SubscriptionError::BadExchangeType { field, value } => write!(
                f,
                "subscription field `{field}` is {value:?}, not an exchange type (direct, \
                 topic, fanout, headers or x-...)"
            ),
            SubscriptionError::NotUtf8 { field } => {
                write!(f, "subscription field `{field}` is not valid UTF-8")
            }
            SubscriptionError::TooLong { field, len } => write!(
                f,
                "subscription field `{field}` is {len} bytes long, more than the \
                 {MAX_SHORTSTR_LEN} AMQP allows"
            ),
            SubscriptionError::BadQueueType { field, value } => write!(
                f,
                "subscription field `{field}` is {value:?}, not a queue type (classic or quorum)"
            ),
            SubscriptionError::QuorumFlags { field } => write!(
                f,
                "subscription field `{field}` asks for a quorum queue, which must be durable \
                 (durable 1), not exclusive (exclusive 0) and not auto-delete (auto_delete 0)"
            ),
        }
    }
}

impl std::error::Error for SubscriptionError {}

/// json-c 0.16's `json_object_get_int`, through which the C module reads every numeric and
/// boolean field: booleans give 0/1; integers and doubles saturate to `i32` (doubles truncate
/// towards zero); strings are read with `strtoll` (leading blanks, sign, digits, anything
/// after ignored) and give 0 when they hold no number; everything else gives 0.
pub fn json_c_int(value: &Value) -> i32 {
    let saturate = |n: i64| i32::try_from(n).unwrap_or(if n < 0 { i32::MIN } else { i32::MAX });
    match value {
        Value::Bool(b) => i32::from(*b),
        Value::Int(n) => saturate(*n),
        Value::UInt(_) => i32::MAX,
        // `as` saturates and truncates like json-c's range checks and cast; NaN, undefined
        // behaviour in C, gives 0.
        Value::Double(d) => d.value() as i32,
        Value::String(s) => c_strtoll(s).map_or(0, saturate),
        Value::Null | Value::Array(_) | Value::Object(_) => 0,
    }
}

/// Parses and reads a `kazoo_subscribe(json)` description.
pub fn parse_description(text: &[u8]) -> Result<Subscription, SubscriptionError> {
    let value = parse(text).map_err(SubscriptionError::InvalidJson)?;
    from_description(&value)
}

/// Reads a `kazoo_subscribe(json)` description.
///
/// Text fields go through `json_object_get_string` (a non-string is used as its JSON text,
/// null as empty); flags and switches through [`json_c_int`], with null counting as absent.
/// The exchange `type` and flags come from `exchange-def` when present, else from the top
/// level; the queue flags from `queue-def` likewise, so a top-level `durable: 1` applies to
/// both. `name` only names the subscription in connection events (never refused: a name
/// that is not UTF-8 is kept lossily); unknown fields are ignored.
pub fn from_description(value: &Value) -> Result<Subscription, SubscriptionError> {
    if !matches!(value, Value::Object(_)) {
        return Err(SubscriptionError::NotAnObject {
            field: "subscription".into(),
            found: value.type_name(),
        });
    }

    let exchange = exchange_name("exchange", text(value, "exchange"))?;
    let queue = short_string("queue", text(value, "queue"))?;

    let (exchange_def, type_field) = match definition(value, "exchange-def")? {
        Some(def) => (def, "exchange-def.type"),
        None => (value, "type"),
    };
    let exchange_type = known_exchange_type(type_field, text(exchange_def, "type"))?;
    let queue_def = definition(value, "queue-def")?.unwrap_or(value);

    // A missing routing, or one of another type, binds one empty key (C logs "creating empty
    // routing key").
    let routing =
        routing_keys("routing", value.get(b"routing"))?.unwrap_or_else(|| vec![String::new()]);

    let queue_flags = queue_flags(queue_def, value)?;

    Ok(Subscription {
        exchange,
        exchange_type,
        exchange_flags: exchange_flags(exchange_def),
        queue,
        queue_flags,
        routing,
        exchange_bindings: exchange_bindings(value.get(b"exchange-bindings"))?,
        no_ack: flag(value, "no_ack", true),
        wait_for_consumer_ack: flag(value, "wait_for_consumer_ack", true),
        // C treats an empty key as no key.
        event_key: optional_text("event_key", value)?,
        event_subkey: optional_text("event_subkey", value)?,
        federate: flag(value, "federate", false),
        consistent_worker: flag(value, "consistent-worker", false),
        consistent_worker_key: match value.get(b"consistent-worker-key") {
            None | Some(Value::Null) => None,
            Some(key) => Some(utf8("consistent-worker-key", c_text(key))?),
        },
        name: Some(String::from_utf8_lossy(&text(value, "name")).into_owned())
            .filter(|name| !name.is_empty()),
    })
}

/// The simple form `kazoo_subscribe(exchange, exchange_type, queue, routing_key)`: exchange
/// flags all false, queue `auto_delete` only, `no_ack`, one routing key, no event keys
/// (the C module's simple form).
pub fn simple(
    exchange: &str,
    exchange_type: &str,
    queue: &str,
    routing_key: &str,
) -> Result<Subscription, SubscriptionError> {
    Ok(Subscription {
        exchange: exchange_name("exchange", exchange.as_bytes().to_vec())?,
        exchange_type: known_exchange_type("exchange_type", exchange_type.as_bytes().to_vec())?,
        exchange_flags: ExchangeFlags::default(),
        queue: short_string("queue", queue.as_bytes().to_vec())?,
        queue_flags: QueueFlags::default(),
        routing: vec![short_string(
            "routing_key",
            routing_key.as_bytes().to_vec(),
        )?],
        exchange_bindings: Vec::new(),
        no_ack: true,
        wait_for_consumer_ack: true,
        event_key: None,
        event_subkey: None,
        federate: false,
        consistent_worker: false,
        consistent_worker_key: None,
        name: None,
    })
}

/// The text of member `key` as `json_extract_field` reads it: `""` when missing or null.
fn text(object: &Value, key: &str) -> Vec<u8> {
    object.get(key.as_bytes()).map(c_text).unwrap_or_default()
}

/// A text member where empty means unset.
fn optional_text(key: &str, object: &Value) -> Result<Option<String>, SubscriptionError> {
    let bytes = text(object, key);
    if bytes.is_empty() {
        return Ok(None);
    }
    utf8(key, bytes).map(Some)
}

/// A flag or switch: `default` when missing or null, else whether json-c's int is non-zero.
fn flag(object: &Value, key: &str, default: bool) -> bool {
    match object.get(key.as_bytes()) {
        None | Some(Value::Null) => default,
        Some(v) => json_c_int(v) != 0,
    }
}

/// The queue flags and type from `queue_def` (the `queue-def` object, else the top level).
fn queue_flags(queue_def: &Value, top: &Value) -> Result<QueueFlags, SubscriptionError> {
    let field = if std::ptr::eq(queue_def, top) {
        "x-queue-type"
    } else {
        "queue-def.x-queue-type"
    };
    let quorum = match text(queue_def, "x-queue-type").as_slice() {
        b"" | b"classic" => false,
        b"quorum" => true,
        other => {
            return Err(SubscriptionError::BadQueueType {
                field: field.into(),
                value: String::from_utf8_lossy(other).into_owned(),
            })
        }
    };
    let flags = QueueFlags {
        passive: flag(queue_def, "passive", false),
        durable: flag(queue_def, "durable", false),
        exclusive: flag(queue_def, "exclusive", false),
        auto_delete: flag(queue_def, "auto_delete", true),
        quorum,
    };
    if quorum && (!flags.durable || flags.exclusive || flags.auto_delete) {
        return Err(SubscriptionError::QuorumFlags {
            field: field.into(),
        });
    }
    Ok(flags)
}

fn exchange_flags(object: &Value) -> ExchangeFlags {
    ExchangeFlags {
        passive: flag(object, "passive", false),
        durable: flag(object, "durable", false),
        auto_delete: flag(object, "auto_delete", false),
        internal: flag(object, "internal", false),
    }
}

/// An `exchange-def` / `queue-def` object; `None` when missing or null (then the top level is
/// read, as in C).
fn definition<'v>(object: &'v Value, key: &str) -> Result<Option<&'v Value>, SubscriptionError> {
    match object.get(key.as_bytes()) {
        None | Some(Value::Null) => Ok(None),
        Some(def @ Value::Object(_)) => Ok(Some(def)),
        Some(other) => Err(SubscriptionError::NotAnObject {
            field: key.into(),
            found: other.type_name(),
        }),
    }
}

/// The routing keys of a `routing` member: a string gives one key, a non-empty array one per
/// element (each read as text); anything else gives `None`, which C treats as "no routing".
fn routing_keys(
    field: &str,
    routing: Option<&Value>,
) -> Result<Option<Vec<String>>, SubscriptionError> {
    match routing {
        Some(key @ Value::String(_)) => Ok(Some(vec![short_string(field, c_text(key))?])),
        Some(Value::Array(keys)) if !keys.is_empty() => keys
            .iter()
            .map(|key| short_string(field, c_text(key)))
            .collect::<Result<Vec<_>, _>>()
            .map(Some),
        _ => Ok(None),
    }
}

/// The `exchange-bindings` object, `{ "<source>": { "type", flags, "routing" }, ... }`, in
/// object order. Entries without a usable `routing` are ignored, as in C.
fn exchange_bindings(bindings: Option<&Value>) -> Result<Vec<ExchangeBinding>, SubscriptionError> {
    let entries = match bindings {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Object(entries)) => entries,
        Some(other) => {
            return Err(SubscriptionError::NotAnObject {
                field: "exchange-bindings".into(),
                found: other.type_name(),
            })
        }
    };
    let mut out = Vec::with_capacity(entries.len());
    for (source, binding) in entries {
        let path = format!("exchange-bindings.{}", String::from_utf8_lossy(source));
        let Some(routing) = routing_keys(&format!("{path}.routing"), binding.get(b"routing"))?
        else {
            continue;
        };
        out.push(ExchangeBinding {
            source: exchange_name(&path, source.clone())?,
            exchange_type: known_exchange_type(&format!("{path}.type"), text(binding, "type"))?,
            flags: exchange_flags(binding),
            routing,
        });
    }
    Ok(out)
}

fn utf8(field: &str, bytes: Vec<u8>) -> Result<String, SubscriptionError> {
    String::from_utf8(bytes).map_err(|_| SubscriptionError::NotUtf8 {
        field: field.into(),
    })
}

/// A name that travels as an AMQP short string.
fn short_string(field: &str, bytes: Vec<u8>) -> Result<String, SubscriptionError> {
    if bytes.len() > MAX_SHORTSTR_LEN {
        return Err(SubscriptionError::TooLong {
            field: field.into(),
            len: bytes.len(),
        });
    }
    utf8(field, bytes)
}

/// An exchange to declare: not the default exchange.
fn exchange_name(field: &str, bytes: Vec<u8>) -> Result<String, SubscriptionError> {
    if bytes.is_empty() {
        return Err(SubscriptionError::EmptyExchange {
            field: field.into(),
        });
    }
    short_string(field, bytes)
}

/// An exchange type the broker knows: a built-in one or a plugin's `x-...` (exact case, as
/// RabbitMQ compares them).
fn known_exchange_type(field: &str, bytes: Vec<u8>) -> Result<String, SubscriptionError> {
    let known = matches!(
        bytes.as_slice(),
        b"direct" | b"topic" | b"fanout" | b"headers"
    ) || (bytes.starts_with(b"x-") && bytes.len() > 2);
    if !known {
        return Err(SubscriptionError::BadExchangeType {
            field: field.into(),
            value: String::from_utf8_lossy(&bytes).into_owned(),
        });
    }
    short_string(field, bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::json::Double;

    #[test]
    fn json_c_int_conversions() {
        assert_eq!(json_c_int(&Value::Bool(true)), 1);
        assert_eq!(json_c_int(&Value::Int(i64::MAX)), i32::MAX);
        assert_eq!(json_c_int(&Value::Int(i64::MIN)), i32::MIN);
        assert_eq!(json_c_int(&Value::UInt(u64::MAX)), i32::MAX);
        assert_eq!(json_c_int(&Value::Double(Double::new(-2.9))), -2);
        assert_eq!(json_c_int(&Value::Double(Double::new(1e20))), i32::MAX);
        assert_eq!(json_c_int(&Value::Double(Double::new(f64::NAN))), 0);
        assert_eq!(json_c_int(&Value::String(b" 12x".to_vec())), 12);
        assert_eq!(
            json_c_int(&Value::String(b"-99999999999".to_vec())),
            i32::MIN
        );
        assert_eq!(json_c_int(&Value::String(b"x1".to_vec())), 0);
        assert_eq!(json_c_int(&Value::Array(vec![Value::Int(1)])), 0);
    }
}
