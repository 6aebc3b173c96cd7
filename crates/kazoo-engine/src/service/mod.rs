//! The AMQP process's service: it owns the broker connections and answers
//! Kamailio's processes over IPC (see [`crate::ipc`]).
//!
//! - Publishes and queries from any process: the body is completed with the
//!   `Server-ID` of the broker and reply queue actually used, published with
//!   publisher confirms, and answered (`Published`, the reply, `Timeout` or
//!   why it failed). A query's `Msg-ID` is registered before the publish, so
//!   a reply cannot overtake its registration.
//! - Consumed messages: annotated as the C module does, then either handed to
//!   the query waiting for them (replies with a known `Msg-ID`) or delivered
//!   to a consumer worker for the event routes, round-robin or by a
//!   consistent hash; acked on the broker once the worker says the route ran
//!   (subscriptions with `no_ack: 0` and `wait_for_consumer_ack`).
//! - Connection events: every broker connection opening or closing (each
//!   failed attempt included) becomes a synthetic `connection` event for the
//!   routes, as in the C module; and, as 2600hz's builds of the module raise
//!   them, a `connection` `error` event with the reason, and
//!   `listener-zone-available` / `-unavailable` per subscription when a zone
//!   gains its first or loses its last consuming connection. A `mandatory`
//!   publish the broker returns becomes an `amqp_error` `message_returned`
//!   event. All of them travel to the workers as deliveries without an ack,
//!   through one function (`synthetic_event`).
//! - Publishes made during `kazoo:mod-init`, before any broker connection
//!   existed, are published once a broker is connected.
//! - With a KEMI engine, `kazoo:mod-init` runs in consumer worker 1 (engines
//!   set up their interpreter only after the fork); the service waits for
//!   that worker's report of subscriptions and publishes before connecting.
//!
//! Everything runs on one tokio current-thread runtime on the process's main
//! thread, so the service's own log lines may go through Kamailio's logger.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

use crate::async_queries::AsyncQueries;
use crate::broker::{
    Acker, BrokerOptions, Brokers, Event, PublishError, PublishProperties, Role, Source,
};
use crate::config::Broker;
use crate::counters::{QueryOutcome, ScriptCounters, SubscriptionCounters};
use crate::ipc::{Answer, Delivery, Outcome, Outgoing, Request, Resume, ResumeAt, Work};
use crate::payload::{
    annotate_consumed, connection_event, connection_notice, returned_message, PublishTarget,
};
use crate::subscription::Subscription;

mod dispatch;
mod events;
mod lanes;
mod requests;
mod server;
mod status;

pub use status::{BrokerStats, Stats};

use events::broker_events;
use lanes::Lanes;
use requests::{collect_startup, startup_publishes};
use server::accept;
use status::{BrokerState, Counters, SubscriptionFailures};

/// What the service needs from the module's configuration.
#[derive(Debug)]
pub struct ServiceConfig {
    pub brokers: Vec<Broker>,
    pub subscriptions: Vec<Subscription>,
    pub options: BrokerOptions,
    /// `amqp_consumer_workers`.
    pub workers: u32,
    /// `amqp_consumer_event_key` / `_subkey`: the field names of connection
    /// events and the defaults for route names.
    pub event_key: String,
    pub event_subkey: String,
    /// The longest a publish waits for its broker confirm.
    pub publish_timeout: Duration,
    /// Publishes made during `kazoo:mod-init`.
    pub startup_publishes: Vec<Outgoing>,
    /// Where publishes are counted (shared with the processes that publish
    /// directly).
    pub script_counters: ScriptCounters,
    /// What the consumer workers consumed themselves, per subscription.
    pub subscription_counters: SubscriptionCounters,
    /// The asynchronous queries the consumer workers resume themselves
    /// (`amqp_worker_replies`), for the status.
    pub async_queries: Option<AsyncQueries>,
    /// Wait for worker 1's [`Request::StartupDone`] (the KEMI `kazoo:mod-init`
    /// runs there) before connecting, at most this long.
    pub await_startup: Option<Duration>,
    /// Called every [`TICK`] on the runtime's thread (the process's main
    /// thread) with the service's [`Stats`]: the host refreshes its
    /// per-process state there (Kamailio's runtime configuration, which
    /// decides among other things what this process logs) and publishes the
    /// statistics.
    pub on_tick: fn(&Stats),
}

/// How often [`ServiceConfig::on_tick`] runs.
pub const TICK: Duration = Duration::from_millis(100);

/// Runs the service forever on a current-thread runtime. Returns only when
/// the runtime cannot be built.
pub fn run(
    listener: std::os::unix::net::UnixListener,
    config: ServiceConfig,
) -> Result<Infallible, String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the AMQP runtime: {e}"))?;
    runtime.block_on(serve(listener, config))
}

async fn serve(
    listener: std::os::unix::net::UnixListener,
    mut config: ServiceConfig,
) -> Result<Infallible, String> {
    listener
        .set_nonblocking(true)
        .map_err(|e| format!("IPC socket: {e}"))?;
    let listener =
        tokio::net::UnixListener::from_std(listener).map_err(|e| format!("IPC socket: {e}"))?;
    let (brokers_tx, brokers_rx) = watch::channel(None);
    let (startup_tx, startup_rx) = mpsc::channel(1);
    let shared = Arc::new(Shared {
        brokers: brokers_rx,
        startup: startup_tx,
        node_hostname: config.options.node_hostname.clone(),
        primary_zone: config.options.primary_zone.clone(),
        workers_consume: config.options.workers_consume,
        subscriptions: OnceLock::new(),
        event_key: config.event_key.clone(),
        event_subkey: config.event_subkey.clone(),
        publish_timeout: config.publish_timeout,
        pending: Mutex::new(HashMap::new()),
        lanes: Mutex::new(Lanes::new(config.workers as usize)),
        next_delivery: AtomicU64::new(1),
        round_robin: AtomicUsize::new(0),
        counters: Counters::default(),
        script_counters: config.script_counters,
        subscription_counters: config.subscription_counters,
        async_queries: config.async_queries,
        brokers_state: Mutex::new(
            config
                .brokers
                .iter()
                .map(|b| BrokerState {
                    id: b.id,
                    zone: b.zone.clone(),
                    host: b.host.clone(),
                    connections: Default::default(),
                    since: Default::default(),
                    last_error: None,
                    reconnects: 0,
                    consumers_up: Vec::new(),
                })
                .collect(),
        ),
        subscription_failures: Mutex::new(HashMap::new()),
        subscription_consumed: OnceLock::new(),
    });
    let ticking = shared.clone();
    crate::task::spawn_supervised("the AMQP process's tick", move || {
        tick(ticking.clone(), config.on_tick)
    });
    let listener = Arc::new(listener);
    let accepting = shared.clone();
    crate::task::spawn_supervised("the IPC accept loop", move || {
        accept(listener.clone(), accepting.clone())
    });
    if let Some(wait) = config.await_startup {
        collect_startup(&mut config, startup_rx, wait).await;
    }
    let _ = shared.subscription_consumed.set(
        config
            .subscriptions
            .iter()
            .map(|_| AtomicU64::new(0))
            .collect(),
    );
    let _ = shared.subscriptions.set(config.subscriptions.clone());
    let (brokers, events) = Brokers::start(
        config.brokers.clone(),
        config.subscriptions,
        config.options.clone(),
    );
    let _ = brokers_tx.send(Some(Arc::new(brokers)));
    if !config.startup_publishes.is_empty() {
        crate::task::spawn(
            "the kazoo:mod-init publishes",
            startup_publishes(shared.clone(), config.startup_publishes),
        );
    }
    broker_events(shared, events).await;
    // The broker layer never closes its event channel while it runs.
    std::future::pending().await
}

async fn tick(shared: Arc<Shared>, on_tick: fn(&Stats)) {
    let mut interval = tokio::time::interval(TICK);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        on_tick(&shared.stats());
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The service's state, shared by its tasks (all on one thread; the
/// mutexes are never held across an await).
struct Shared {
    /// The broker layer, once started (after the start-up report when a
    /// KEMI engine runs `kazoo:mod-init`): requests wait for it until their
    /// deadline instead of failing during start-up.
    brokers: watch::Receiver<Option<Arc<Brokers>>>,
    /// Where worker 1's start-up report goes.
    startup: mpsc::Sender<(Vec<Vec<u8>>, Vec<Outgoing>)>,
    /// The C module's `node_hostname`: part of every `Server-ID`.
    node_hostname: String,
    /// Zone of the brokers every subscription is consumed from (others
    /// consume only `federate` ones): for the zone events and the status.
    primary_zone: String,
    /// `amqp_worker_consume` in effect: the workers consume some
    /// subscriptions themselves.
    workers_consume: bool,
    /// Set once the start-up report (if any) added its subscriptions: the
    /// broker layer's `Source::Subscription` indexes point into it.
    subscriptions: OnceLock<Vec<Subscription>>,
    /// The field names of the connection events the service makes up.
    event_key: String,
    event_subkey: String,
    /// The longest a publish waits for its confirm (a request's own
    /// timeout may be shorter).
    publish_timeout: Duration,
    /// Queries waiting for their reply, by `Msg-ID`: a reply is matched
    /// here before it could go to the event routes.
    pending: Mutex<HashMap<String, oneshot::Sender<Vec<u8>>>>,
    /// Each consumer worker's queued work and link (see [`dispatch`]).
    lanes: Mutex<Lanes>,
    /// The id of the next delivery, which its worker reports back.
    next_delivery: AtomicU64,
    /// Spreads deliveries and resumes over the workers.
    round_robin: AtomicUsize,
    /// Totals for [`Stats`].
    counters: Counters,
    script_counters: ScriptCounters,
    subscription_counters: SubscriptionCounters,
    async_queries: Option<AsyncQueries>,
    /// Each broker's connections, for the zone events and the status.
    brokers_state: Mutex<Vec<BrokerState>>,
    /// By subscription index: the brokers where it cannot be consumed, and
    /// why (`kazoo.subscriptions`).
    subscription_failures: Mutex<HashMap<usize, SubscriptionFailures>>,
    /// By subscription index: messages it delivered to the event routes.
    subscription_consumed: OnceLock<Vec<AtomicU64>>,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}
