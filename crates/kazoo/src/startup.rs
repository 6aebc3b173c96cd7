//! What `kazoo:mod-init` (the `event_route`, or the KEMI `event_callback`)
//! leaves for the processes forked after it: the subscriptions it recorded
//! and the publishes it queued.
//!
//! The route runs once in the main process before Kamailio forks
//! (child_init with PROC_INIT), so every process inherits what it recorded;
//! with a KEMI engine it runs in kazoo worker 1 instead (engines set up their
//! interpreter only after the fork), which reports it to the AMQP process.
use std::cell::Cell;
use std::sync::Mutex;

use kamailio::route::{self, KemiError, RouteOutcome};
use kazoo_engine::ipc::Outgoing;
use kazoo_engine::subscription::Subscription;

use crate::params::config;

/// Subscriptions recorded during `kazoo:mod-init`.
/// With each, its description as JSON text (what worker 1 reports when the
/// KEMI `kazoo:mod-init` ran there).
static SUBSCRIPTIONS: Mutex<Vec<(Subscription, Vec<u8>)>> = Mutex::new(Vec::new());

thread_local! {
    /// Whether `kazoo:mod-init` is running (subscriptions are accepted).
    static IN_MOD_INIT: Cell<bool> = const { Cell::new(false) };
}

/// Publishes made during `kazoo:mod-init` (no broker connection exists yet);
/// the AMQP process inherits them and publishes them once connected.
static STARTUP_PUBLISHES: Mutex<Vec<Outgoing>> = Mutex::new(Vec::new());

/// Records a subscription made in `kazoo:mod-init`, with its description;
/// false (nothing recorded) anywhere else.
pub(crate) fn record_subscription(subscription: Subscription, description: Vec<u8>) -> bool {
    if !IN_MOD_INIT.get() {
        return false;
    }
    let mut list = SUBSCRIPTIONS.lock().unwrap_or_else(|e| e.into_inner());
    kamailio::info!(
        "subscription {} recorded: {}",
        list.len() + 1,
        String::from_utf8_lossy(&description)
    );
    list.push((subscription, description));
    true
}

/// How many subscriptions were recorded.
pub(crate) fn subscription_count() -> usize {
    SUBSCRIPTIONS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .len()
}

/// The recorded subscriptions (for the AMQP process).
pub(crate) fn subscriptions() -> Vec<Subscription> {
    let list = SUBSCRIPTIONS.lock().unwrap_or_else(|e| e.into_inner());
    list.iter().map(|(s, _)| s.clone()).collect()
}

/// The recorded subscriptions' descriptions (worker 1's start-up report).
pub(crate) fn subscription_descriptions() -> Vec<Vec<u8>> {
    let list = SUBSCRIPTIONS.lock().unwrap_or_else(|e| e.into_inner());
    list.iter().map(|(_, d)| d.clone()).collect()
}

/// Whether `kazoo:mod-init` is running in this process.
pub(crate) fn in_mod_init() -> bool {
    IN_MOD_INIT.get()
}

/// Queues a publish made during `kazoo:mod-init`.
pub(crate) fn queue_publish(outgoing: Outgoing) {
    STARTUP_PUBLISHES
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(outgoing);
}

/// The publishes queued during `kazoo:mod-init` (taken by the AMQP process).
pub(crate) fn take_startup_publishes() -> Vec<Outgoing> {
    std::mem::take(&mut STARTUP_PUBLISHES.lock().unwrap_or_else(|e| e.into_inner()))
}

/// Runs `event_route[kazoo:mod-init]` (main process, before the fork).
pub(crate) fn run_mod_init() {
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
pub(crate) fn run_kemi_mod_init(callback: &str) {
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
