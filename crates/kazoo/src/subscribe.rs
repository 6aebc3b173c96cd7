//! `kazoo_subscribe` and its KEMI forms. A subscription is accepted only
//! during `kazoo:mod-init` (see [`crate::startup`]); made anywhere else it
//! is refused with -1: in the C module it is silently ignored or corrupts
//! memory.
use kamailio::script::SpveArg;
use kamailio::SipMsg;
use kazoo_engine::json::{self, Value};
use kazoo_engine::subscription::{self, Subscription};

use crate::startup;

/// Why `kazoo_subscribe` refused a subscription.
#[derive(Debug)]
pub(crate) enum SubscribeError {
    NotInModInit,
    Arg(kamailio::script::ArgError),
    Invalid(String),
}

impl std::fmt::Display for SubscribeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SubscribeError::NotInModInit => f.write_str(
                "subscriptions must be made in event_route[kazoo:mod-init] (or the KEMI \
                 event_callback for \"kazoo:mod-init\")",
            ),
            SubscribeError::Arg(e) => write!(f, "{e}"),
            SubscribeError::Invalid(reason) => write!(f, "invalid subscription: {reason}"),
        }
    }
}

impl From<kamailio::script::ArgError> for SubscribeError {
    fn from(e: kamailio::script::ArgError) -> Self {
        SubscribeError::Arg(e)
    }
}

fn record(subscription: Subscription, description: Vec<u8>) -> Result<i32, SubscribeError> {
    if startup::record_subscription(subscription, description) {
        Ok(1)
    } else {
        Err(SubscribeError::NotInModInit)
    }
}

fn describe(text: &[u8]) -> Result<i32, SubscribeError> {
    let value = json::parse(text).map_err(|e| SubscribeError::Invalid(e.to_string()))?;
    if !matches!(value, Value::Object(_)) {
        return Err(SubscribeError::Invalid(
            "the description must be a JSON object".into(),
        ));
    }
    let subscription = subscription::from_description(&value)
        .map_err(|e| SubscribeError::Invalid(e.to_string()))?;
    record(subscription, json::to_json(&value))
}

/// `kazoo_subscribe(json_description)`.
pub(crate) fn subscribe_json(msg: &mut SipMsg, args: &[SpveArg; 1]) -> Result<i32, SubscribeError> {
    describe(&args[0].value(msg)?)
}

/// `KSR.kazoo.kazoo_subscribe(json_description)`.
pub(crate) fn subscribe_kemi(_msg: &mut SipMsg, args: [&[u8]; 1]) -> Result<i32, SubscribeError> {
    describe(args[0])
}

/// `kazoo_subscribe(exchange, exchange_type, queue, routing_key)`.
pub(crate) fn subscribe_simple(
    msg: &mut SipMsg,
    args: &[SpveArg; 4],
) -> Result<i32, SubscribeError> {
    simple([
        args[0].value(msg)?,
        args[1].value(msg)?,
        args[2].value(msg)?,
        args[3].value(msg)?,
    ])
}

/// `KSR.kazoo.kazoo_subscribe_simple(exchange, exchange_type, queue, routing_key)`.
pub(crate) fn subscribe_simple_kemi(
    _msg: &mut SipMsg,
    args: [&[u8]; 4],
) -> Result<i32, SubscribeError> {
    simple(args.map(<[u8]>::to_vec))
}

fn simple(values: [Vec<u8>; 4]) -> Result<i32, SubscribeError> {
    let [exchange, exchange_type, queue, routing_key] =
        values.map(|v| String::from_utf8_lossy(&v).into_owned());
    let subscription = subscription::simple(&exchange, &exchange_type, &queue, &routing_key)
        .map_err(|e| SubscribeError::Invalid(e.to_string()))?;
    // The same subscription as a description (the simple form's defaults are
    // the description's).
    let description = Value::Object(
        [
            ("exchange", exchange),
            ("type", exchange_type),
            ("queue", queue),
            ("routing", routing_key),
        ]
        .into_iter()
        .map(|(k, v)| (k.as_bytes().to_vec(), Value::String(v.into_bytes())))
        .collect(),
    );
    record(subscription, json::to_json(&description))
}
