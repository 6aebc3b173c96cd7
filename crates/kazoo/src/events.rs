//! Start-up events and subscriptions: `event_route[kazoo:mod-init]` (or the
//! KEMI `event_callback`), `kazoo_subscribe`, and the per-process values
//! behind `$kzR`, `$kzE`, `$kzRK` and `$knode`.
//!
//! `kazoo:mod-init` runs once in the main process before Kamailio forks
//! (child_init with PROC_INIT); subscriptions made there are recorded and
//! inherited by every process. A subscription made anywhere else is refused
//! with -1: in the C module it is silently ignored or corrupts memory.
use std::cell::Cell;
use std::sync::Mutex;

use kamailio::pv::ByteSlot;
use kamailio::route::{self, KemiError, RouteOutcome};
use kamailio::script::SpveArg;
use kamailio::SipMsg;
use kazoo_engine::json::{self, Value};
use kazoo_engine::subscription::{self, Subscription};

use crate::params::config;

/// `$kzR`: the last query result of this process.
pub static QUERY_RESULT: ByteSlot = ByteSlot::new();
/// `$kzE`: the payload of the event being handled.
pub static EVENT_PAYLOAD: ByteSlot = ByteSlot::new();
/// `$kzRK`: the routing key of the event being handled.
pub static EVENT_ROUTING_KEY: ByteSlot = ByteSlot::new();
/// `$knode`: this node's `Node` (`kamailio@<node_hostname>`), set at `mod_init`.
pub static NODE_NAME: ByteSlot = ByteSlot::new();

/// Subscriptions recorded during `kazoo:mod-init`.
/// With each, its description as JSON text (what worker 1 reports when the
/// KEMI `kazoo:mod-init` ran there).
static SUBSCRIPTIONS: Mutex<Vec<(Subscription, Vec<u8>)>> = Mutex::new(Vec::new());

thread_local! {
    /// Whether `kazoo:mod-init` is running (subscriptions are accepted).
    static IN_MOD_INIT: Cell<bool> = const { Cell::new(false) };
}

/// Why `kazoo_subscribe` refused a subscription.
#[derive(Debug)]
pub enum SubscribeError {
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
    if !IN_MOD_INIT.get() {
        return Err(SubscribeError::NotInModInit);
    }
    let mut list = SUBSCRIPTIONS.lock().unwrap_or_else(|e| e.into_inner());
    kamailio::info!(
        "subscription {} recorded: {}",
        list.len() + 1,
        String::from_utf8_lossy(&description)
    );
    list.push((subscription, description));
    Ok(1)
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
pub fn subscribe_json(msg: &mut SipMsg, args: &[SpveArg; 1]) -> Result<i32, SubscribeError> {
    describe(&args[0].value(msg)?)
}

/// `KSR.kazoo.kazoo_subscribe(json_description)`.
pub fn subscribe_kemi(_msg: &mut SipMsg, args: [&[u8]; 1]) -> Result<i32, SubscribeError> {
    describe(args[0])
}

/// `kazoo_subscribe(exchange, exchange_type, queue, routing_key)`.
pub fn subscribe_simple(msg: &mut SipMsg, args: &[SpveArg; 4]) -> Result<i32, SubscribeError> {
    simple([
        args[0].value(msg)?,
        args[1].value(msg)?,
        args[2].value(msg)?,
        args[3].value(msg)?,
    ])
}

/// `KSR.kazoo.kazoo_subscribe_simple(exchange, exchange_type, queue, routing_key)`.
pub fn subscribe_simple_kemi(_msg: &mut SipMsg, args: [&[u8]; 4]) -> Result<i32, SubscribeError> {
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

/// How many subscriptions were recorded.
pub fn subscription_count() -> usize {
    SUBSCRIPTIONS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .len()
}

/// The recorded subscriptions (for the AMQP process).
pub fn subscriptions() -> Vec<Subscription> {
    let list = SUBSCRIPTIONS.lock().unwrap_or_else(|e| e.into_inner());
    list.iter().map(|(s, _)| s.clone()).collect()
}

/// The recorded subscriptions' descriptions (worker 1's start-up report).
pub fn subscription_descriptions() -> Vec<Vec<u8>> {
    let list = SUBSCRIPTIONS.lock().unwrap_or_else(|e| e.into_inner());
    list.iter().map(|(_, d)| d.clone()).collect()
}

/// Whether `kazoo:mod-init` is running in this process.
pub fn in_mod_init() -> bool {
    IN_MOD_INIT.get()
}

/// `child_init`: runs `kazoo:mod-init` once and binds the IPC socket in the
/// main process before the fork of the SIP workers; forks the module's
/// processes once Kamailio's own are running.
pub fn child_init(rank: i32) -> Result<(), String> {
    #[cfg(feature = "test-hooks")]
    crate::test_hooks::child_init(rank)?;
    if rank == kamailio::sys::PROC_INIT {
        run_mod_init();
        // kazoo:mod-init may have written presence: its connection must not
        // be inherited by the processes forked next.
        kamailio::db::close_connection();
        kamailio::info!(
            "{} subscription(s) recorded at start-up",
            subscription_count()
        );
        crate::processes::bind()?;
    } else if rank == kamailio::sys::PROC_MAIN {
        crate::processes::fork_all()?;
    }
    Ok(())
}

fn run_mod_init() {
    if let Some(callback) = &config().params.event_callback {
        // KEMI engines set up their interpreter only after the fork: the
        // event goes to the KEMI function from kazoo worker 1 instead.
        kamailio::info!(
            "kazoo:mod-init will be delivered to the KEMI function \"{callback}\" in kazoo worker 1"
        );
        return;
    }
    IN_MOD_INIT.set(true);
    if route::run_event_route(c"kazoo:mod-init") == RouteOutcome::Dropped {
        kamailio::error!("event_route[kazoo:mod-init] executed drop; start-up continues");
    }
    IN_MOD_INIT.set(false);
}

/// Runs the KEMI `kazoo:mod-init` (in kazoo worker 1, where the engine is
/// set up); subscriptions and publishes made there are then reported to the
/// AMQP process.
pub fn run_kemi_mod_init(callback: &str) {
    IN_MOD_INIT.set(true);
    match route::run_kemi_event(callback.as_bytes(), b"kazoo:mod-init") {
        Ok(()) => {}
        Err(KemiError::NoEngine) => kamailio::error!(
            "event_callback \"{callback}\" is set but no KEMI engine runs (cfgengine): \
             kazoo:mod-init not delivered"
        ),
        Err(KemiError::Failed(rc)) => {
            kamailio::error!("event_callback \"{callback}\" failed for kazoo:mod-init (rc {rc})")
        }
    }
    IN_MOD_INIT.set(false);
    kamailio::info!(
        "{} subscription(s) recorded by the KEMI kazoo:mod-init",
        subscription_count()
    );
}
