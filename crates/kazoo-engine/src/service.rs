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
use std::collections::{HashMap, HashSet, VecDeque};
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

use crate::broker::{
    Acker, BrokerOptions, Brokers, Event, PublishError, PublishProperties, Role, Source,
};
use crate::config::Broker;
use crate::ipc::{Delivery, Message, Outcome, Outgoing, Resume, Target, MAX_FRAME};
use crate::payload::{
    annotate_consumed, connection_event, connection_notice, returned_message, PreparedPublish,
};
use crate::subscription::Subscription;

/// Deliveries kept for a worker that has not connected yet (at start-up);
/// beyond this the oldest is dropped with an error line.
const MAX_QUEUED_PER_WORKER: usize = 10_000;

/// How often a publish made during `kazoo:mod-init` is tried before it is
/// reported as dropped.
const STARTUP_PUBLISH_ATTEMPTS: u32 = 60;

/// What the service needs from the module's configuration.
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
    /// Wait for worker 1's [`Message::StartupDone`] (the KEMI `kazoo:mod-init`
    /// runs there) before connecting, at most this long.
    pub await_startup: Option<Duration>,
    /// Called every [`TICK`] on the runtime's thread (the process's main
    /// thread) with the service's [`Stats`]: the host refreshes its
    /// per-process state there (Kamailio's runtime configuration, which
    /// decides among other things what this process logs) and publishes the
    /// statistics.
    pub on_tick: fn(&Stats),
}

/// What the service did since start-up (totals) and the state it is in
/// now (gauges): the `kazoo.status` RPC and the host's statistics.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Publishes the broker confirmed, and publishes that failed.
    pub published: u64,
    pub publish_failed: u64,
    /// Synchronous queries answered, timed out, failed; queries waiting now.
    pub query_answered: u64,
    pub query_timed_out: u64,
    pub query_failed: u64,
    pub query_pending: u64,
    /// Asynchronous queries resumed with a reply, and without one.
    pub async_answered: u64,
    pub async_not_answered: u64,
    /// Consumed messages handed to workers, dropped as unreadable, and
    /// replies nobody waited for (delivered as events).
    pub delivered: u64,
    pub dropped: u64,
    pub unmatched_replies: u64,
    /// Deliveries returned to the broker because their worker's connection
    /// broke before the route ran.
    pub requeued: u64,
    /// Publishes that failed, by reason: no broker connected (or none such),
    /// refused by the broker (nack, channel closed), not confirmed in time,
    /// returned (`mandatory`, no queue), not sendable.
    pub publish_failed_no_broker: u64,
    pub publish_failed_refused: u64,
    pub publish_failed_timeout: u64,
    pub publish_failed_returned: u64,
    pub publish_failed_invalid: u64,
    /// Deliveries acknowledged to the broker; deliveries it redelivered.
    pub acked: u64,
    pub redelivered: u64,
    /// Deliveries the module could not hand to the script faithfully (an
    /// unreadable routing key): rejected without requeue (dead-lettered
    /// where the queue has a dead-letter exchange) or dropped.
    pub rejected: u64,
    /// Deliveries waiting for a consumer worker that is not connected.
    pub worker_queued: u64,
    pub brokers: Vec<BrokerStats>,
}

/// A broker and whether each of its connections is up.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BrokerStats {
    pub id: u32,
    pub zone: String,
    pub host: String,
    /// By role (`publisher`, `consumer 0`, ...).
    pub connections: std::collections::BTreeMap<String, bool>,
    /// Connections that opened again after being lost.
    pub reconnects: u64,
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
        subscriptions: OnceLock::new(),
        event_key: config.event_key.clone(),
        event_subkey: config.event_subkey.clone(),
        publish_timeout: config.publish_timeout,
        pending: Mutex::new(HashMap::new()),
        workers: Mutex::new(Workers::new(config.workers.max(1) as usize)),
        ackers: Mutex::new(HashMap::new()),
        next_delivery: AtomicU64::new(1),
        round_robin: AtomicUsize::new(0),
        counters: Counters::default(),
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

/// Whether an IPC peer is a process of this Kamailio: the AMQP process's
/// parent is Kamailio's main process.
fn trusted(stream: &UnixStream, own_uid: u32) -> Result<(), String> {
    let peer = stream
        .peer_cred()
        .map_err(|e| format!("no peer credentials: {e}"))?;
    crate::ipc::trusted_peer(
        peer.uid(),
        peer.pid(),
        own_uid,
        std::os::unix::process::parent_id(),
    )
}

/// This process's effective uid, as the kernel gives it to a peer (the
/// owner of `/proc/self` is root when the process is not dumpable, e.g.
/// after Kamailio's `-u`, and some chroots have no `/proc`).
fn own_euid() -> std::io::Result<u32> {
    let (ours, _theirs) = UnixStream::pair()?;
    Ok(ours.peer_cred()?.uid())
}

async fn accept(listener: Arc<tokio::net::UnixListener>, shared: Arc<Shared>) {
    let own_uid = match own_euid() {
        Ok(uid) => uid,
        Err(e) => {
            log::error!("IPC: cannot learn this process's uid ({e}); refusing every connection");
            u32::MAX
        }
    };
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                if let Err(reason) = trusted(&stream, own_uid) {
                    log::error!("refused an IPC connection: {reason}");
                    continue;
                }
                crate::task::spawn("an IPC connection", connection(shared.clone(), stream));
            }
            Err(e) => {
                log::error!("IPC accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Adds what the KEMI `kazoo:mod-init` in worker 1 declared and published.
async fn collect_startup(
    config: &mut ServiceConfig,
    mut startup: mpsc::Receiver<(Vec<Vec<u8>>, Vec<Outgoing>)>,
    wait: Duration,
) {
    match tokio::time::timeout(wait, startup.recv()).await {
        Ok(Some((descriptions, publishes))) => {
            for text in descriptions {
                match crate::subscription::parse_description(&text) {
                    Ok(subscription) => config.subscriptions.push(subscription),
                    Err(e) => log::error!("a subscription from kazoo:mod-init is invalid: {e}"),
                }
            }
            config.startup_publishes.extend(publishes);
        }
        _ => log::error!(
            "the KEMI kazoo:mod-init did not report within {wait:?}; connecting without its subscriptions"
        ),
    }
}

/// What the service counts, for the `kazoo.status` RPC.
#[derive(Default)]
struct Counters {
    published: AtomicU64,
    publish_failed: AtomicU64,
    query_answered: AtomicU64,
    query_timed_out: AtomicU64,
    query_failed: AtomicU64,
    async_answered: AtomicU64,
    async_not_answered: AtomicU64,
    delivered: AtomicU64,
    dropped: AtomicU64,
    unmatched_replies: AtomicU64,
    /// Deliveries returned to the broker because their worker's connection
    /// broke before the route ran.
    requeued: AtomicU64,
    /// Publishes that failed, by reason.
    publish_failed_no_broker: AtomicU64,
    publish_failed_refused: AtomicU64,
    publish_failed_timeout: AtomicU64,
    publish_failed_returned: AtomicU64,
    publish_failed_invalid: AtomicU64,
    /// Deliveries acknowledged to the broker, and deliveries the broker
    /// marked as redelivered.
    acked: AtomicU64,
    redelivered: AtomicU64,
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// A broker and whether each of its connections is up.
struct BrokerState {
    id: u32,
    zone: String,
    host: String,
    connections: std::collections::BTreeMap<String, bool>,
    /// Since when (Unix seconds) each connection is in its state.
    since: std::collections::BTreeMap<String, u64>,
    /// The last failure of any of its connections: when, and why.
    last_error: Option<(u64, String)>,
    /// Connections that opened again after being lost.
    reconnects: u64,
    /// Whether each consuming connection is up (for the zone events).
    consumers_up: Vec<bool>,
}

/// Where a subscription cannot be consumed now: by broker id, why.
type SubscriptionFailures = std::collections::BTreeMap<u32, String>;

/// A JSON string (status documents).
fn json_text(text: &str) -> crate::json::Value {
    crate::json::Value::String(text.as_bytes().to_vec())
}

/// A JSON object from its members, in order (status documents).
fn json_object(members: Vec<(&str, crate::json::Value)>) -> crate::json::Value {
    crate::json::Value::Object(
        members
            .into_iter()
            .map(|(k, v)| (k.as_bytes().to_vec(), v))
            .collect(),
    )
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Why a publish made by the service failed.
enum Unpublished {
    /// The broker layer is not started yet (the KEMI `kazoo:mod-init` report
    /// is awaited).
    NotStarted(String),
    Broker(PublishError),
}

impl std::fmt::Display for Unpublished {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unpublished::NotStarted(reason) => f.write_str(reason),
            Unpublished::Broker(e) => write!(f, "{e}"),
        }
    }
}

struct Shared {
    /// The broker layer, once started (after the start-up report when a
    /// KEMI engine runs `kazoo:mod-init`).
    brokers: watch::Receiver<Option<Arc<Brokers>>>,
    /// Where worker 1's start-up report goes.
    startup: mpsc::Sender<(Vec<Vec<u8>>, Vec<Outgoing>)>,
    node_hostname: String,
    primary_zone: String,
    subscriptions: OnceLock<Vec<Subscription>>,
    event_key: String,
    event_subkey: String,
    publish_timeout: Duration,
    /// Queries waiting for their reply, by `Msg-ID`.
    pending: Mutex<HashMap<String, oneshot::Sender<Vec<u8>>>>,
    workers: Mutex<Workers>,
    /// Broker acks owed once a worker reports its route ran.
    ackers: Mutex<HashMap<u64, Acker>>,
    next_delivery: AtomicU64,
    round_robin: AtomicUsize,
    counters: Counters,
    brokers_state: Mutex<Vec<BrokerState>>,
    /// By subscription index: where it fails.
    subscription_failures: Mutex<HashMap<usize, SubscriptionFailures>>,
    /// By subscription index: messages it delivered to the event routes.
    subscription_consumed: OnceLock<Vec<AtomicU64>>,
}

/// A frame for a Kamailio process, and what it carries: what becomes of it
/// when the connection breaks before the frame is written.
struct Outbound {
    frame: Vec<u8>,
    kind: OutboundKind,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum OutboundKind {
    /// The answer to a request (lost with the requester, who gave up).
    Answer,
    /// A delivery: with an ack owed to the broker (returned to the broker
    /// when not processed), or without (handed to the worker again).
    Delivery { id: u64, needs_ack: bool },
    /// Resuming a suspended transaction (handed to a worker again).
    Resume,
}

impl Outbound {
    fn answer(message: Message) -> Outbound {
        Outbound {
            frame: message.encode(),
            kind: OutboundKind::Answer,
        }
    }
}

type Link = mpsc::UnboundedSender<Outbound>;

/// The consumer workers' connections, and what waits for those not yet
/// connected.
struct Workers {
    /// Each worker's current connection, with the generation that tells it
    /// from the worker's earlier ones.
    links: Vec<Option<(u64, Link)>>,
    queued: Vec<VecDeque<Outbound>>,
    generations: u64,
}

impl Workers {
    fn new(count: usize) -> Workers {
        Workers {
            links: vec![None; count],
            queued: (0..count).map(|_| VecDeque::new()).collect(),
            generations: 0,
        }
    }

    fn send(&mut self, worker: usize, item: Outbound) {
        if let Some((_, link)) = &self.links[worker] {
            if let Err(unsent) = link.send(item) {
                self.links[worker] = None;
                self.queue(worker, unsent.0);
            }
            return;
        }
        self.queue(worker, item);
    }

    fn queue(&mut self, worker: usize, item: Outbound) {
        let queue = &mut self.queued[worker];
        if queue.len() >= MAX_QUEUED_PER_WORKER {
            queue.pop_front();
            log::error!(
                "consumer worker {} is not connected: dropped its oldest queued delivery",
                worker + 1
            );
        }
        queue.push_back(item);
    }

    /// Makes `link` the worker's connection; returns its generation.
    fn attach(&mut self, worker: usize, link: Link) -> u64 {
        for item in self.queued[worker].drain(..) {
            let _ = link.send(item);
        }
        self.generations += 1;
        self.links[worker] = Some((self.generations, link));
        self.generations
    }

    /// Forgets the worker's connection of `generation`, unless the worker
    /// has connected again since.
    fn detach(&mut self, worker: usize, generation: u64) {
        if matches!(self.links[worker], Some((g, _)) if g == generation) {
            self.links[worker] = None;
        }
    }
}

impl Shared {
    fn body_for(&self, outgoing: &Outgoing) -> impl Fn(u32, u32) -> Vec<u8> + '_ {
        let prepared = PreparedPublish::from_parts(
            outgoing.before.clone(),
            outgoing.after.clone(),
            outgoing.server_id_slot,
            outgoing.msg_id.clone(),
        );
        move |broker_id, idx| {
            let server_id = crate::payload::server_id(&self.node_hostname, broker_id, idx);
            prepared.body(&server_id)
        }
    }

    /// The broker layer, waiting for it to start until `deadline`.
    async fn brokers(&self, deadline: Instant) -> Result<Arc<Brokers>, String> {
        let mut brokers = self.brokers.clone();
        let started = tokio::time::timeout_at(deadline, brokers.wait_for(Option::is_some)).await;
        match started {
            Ok(Ok(brokers)) => brokers.clone().ok_or_else(|| "no broker layer".to_string()),
            _ => Err("the broker connections are not started yet".into()),
        }
    }

    /// Publishes `outgoing`; a query (`needs_replies`) goes only to a broker
    /// whose reply queues are consumed.
    async fn publish(
        &self,
        outgoing: &Outgoing,
        needs_replies: bool,
        deadline: Instant,
    ) -> Result<(), Unpublished> {
        let brokers = self
            .brokers(deadline)
            .await
            .map_err(Unpublished::NotStarted)?;
        let target = match outgoing.target {
            Target::Primary => None,
            Target::Broker(id) => Some(id),
        };
        let exchange = String::from_utf8_lossy(&outgoing.exchange);
        let routing_key = String::from_utf8_lossy(&outgoing.routing_key);
        let how = PublishProperties {
            headers: &outgoing.headers,
            mandatory: outgoing.mandatory,
            needs_replies,
        };
        brokers
            .publish_with(
                target,
                &exchange,
                &routing_key,
                how,
                self.body_for(outgoing),
                deadline,
            )
            .await
            .map(|_| ())
            .map_err(Unpublished::Broker)
    }

    /// Publishes a `kazoo_publish` (or one queued in `kazoo:mod-init`); a
    /// message the broker returned also goes to the event routes.
    async fn publish_message(
        &self,
        outgoing: &Outgoing,
        deadline: Instant,
    ) -> Result<(), Unpublished> {
        let result = self.publish(outgoing, false, deadline).await;
        if let Err(Unpublished::Broker(PublishError::Returned {
            broker_id,
            reply_code,
            reply_text,
            body,
        })) = &result
        {
            self.returned_event(outgoing, *broker_id, *reply_code, reply_text, body);
        }
        result
    }

    async fn answer_publish(&self, outgoing: Outgoing) -> Outcome {
        let wait = Duration::from_millis(outgoing.timeout_ms.into()).min(self.publish_timeout);
        match self.publish_message(&outgoing, Instant::now() + wait).await {
            Ok(()) => {
                bump(&self.counters.published);
                Outcome::Published
            }
            Err(failure) => {
                let c = &self.counters;
                bump(&c.publish_failed);
                bump(match &failure {
                    Unpublished::NotStarted(_)
                    | Unpublished::Broker(
                        PublishError::NoBrokerConnected
                        | PublishError::NoReplyConsumer
                        | PublishError::UnknownBroker(_),
                    ) => &c.publish_failed_no_broker,
                    Unpublished::Broker(PublishError::Nacked { .. } | PublishError::Closed(_)) => {
                        &c.publish_failed_refused
                    }
                    Unpublished::Broker(
                        PublishError::Timeout | PublishError::Unavailable { .. },
                    ) => &c.publish_failed_timeout,
                    Unpublished::Broker(PublishError::Returned { .. }) => {
                        &c.publish_failed_returned
                    }
                    Unpublished::Broker(PublishError::Invalid(_)) => &c.publish_failed_invalid,
                });
                Outcome::Failed(failure.to_string())
            }
        }
    }

    async fn answer_query(&self, outgoing: Outgoing) -> Outcome {
        let deadline = Instant::now() + Duration::from_millis(outgoing.timeout_ms.into());
        let (tx, rx) = oneshot::channel();
        {
            let mut pending = lock(&self.pending);
            if pending.contains_key(&outgoing.msg_id) {
                return Outcome::Failed(format!(
                    "a query with Msg-ID {} is already waiting for its reply",
                    outgoing.msg_id
                ));
            }
            pending.insert(outgoing.msg_id.clone(), tx);
        }
        // A query the broker returned fails at once (its caller is told; no
        // event route runs for it).
        if let Err(failure) = self.publish(&outgoing, true, deadline).await {
            lock(&self.pending).remove(&outgoing.msg_id);
            bump(&self.counters.query_failed);
            return Outcome::Failed(failure.to_string());
        }
        match tokio::time::timeout_at(deadline, rx).await {
            Ok(Ok(reply)) => {
                bump(&self.counters.query_answered);
                Outcome::Reply(reply)
            }
            _ => {
                lock(&self.pending).remove(&outgoing.msg_id);
                bump(&self.counters.query_timed_out);
                Outcome::Timeout
            }
        }
    }

    /// Runs an asynchronous query and has a worker resume its transaction:
    /// in `ok_route` with the reply, or in `err_route` when it failed or
    /// timed out (the reason is logged).
    async fn async_query(
        &self,
        outgoing: Outgoing,
        hash: u32,
        label: u32,
        ok_route: String,
        err_route: String,
    ) {
        let resume = match self.answer_query(outgoing).await {
            Outcome::Reply(reply) => {
                bump(&self.counters.async_answered);
                Resume {
                    hash,
                    label,
                    answered: true,
                    route: ok_route,
                    reply: Some(reply),
                }
            }
            other => {
                bump(&self.counters.async_not_answered);
                let why = match other {
                    Outcome::Failed(reason) => reason,
                    _ => "no reply in time".to_string(),
                };
                log::info!("asynchronous query not answered ({why}): resuming in failure_route[{err_route}]");
                Resume {
                    hash,
                    label,
                    answered: false,
                    route: err_route,
                    reply: None,
                }
            }
        };
        self.resume(resume);
    }

    /// Hands a transaction to resume to a worker (any worker can).
    fn resume(&self, resume: Resume) {
        let worker =
            self.round_robin.fetch_add(1, Ordering::Relaxed) % lock(&self.workers).links.len();
        let item = Outbound {
            frame: Message::Resume(resume).encode(),
            kind: OutboundKind::Resume,
        };
        lock(&self.workers).send(worker, item);
    }

    /// A worker's connection broke. What it had not reported is not lost:
    /// deliveries that owe the broker an ack go back to the broker (requeued,
    /// redelivered to a consumer), unwritten deliveries without one wait
    /// for the worker to connect again, unwritten resumes go to any worker.
    /// Deliveries without an ack that were written are gone with the
    /// connection: counted and logged.
    fn worker_gone(&self, worker: usize, in_flight: &HashSet<u64>, unsent: Vec<Outbound>) {
        let mut returned = 0;
        let mut returned_ids: Vec<u64> = in_flight.iter().copied().collect();
        let mut handed_again = 0;
        for item in unsent {
            match item.kind {
                OutboundKind::Answer => {}
                OutboundKind::Delivery {
                    id,
                    needs_ack: true,
                } => returned_ids.push(id),
                OutboundKind::Delivery { .. } => {
                    handed_again += 1;
                    lock(&self.workers).send(worker, item);
                }
                OutboundKind::Resume => {
                    handed_again += 1;
                    let workers = lock(&self.workers).links.len();
                    let other = self.round_robin.fetch_add(1, Ordering::Relaxed) % workers;
                    lock(&self.workers).send(other, item);
                }
            }
        }
        for id in returned_ids {
            if let Some(acker) = lock(&self.ackers).remove(&id) {
                acker.reject(true);
                returned += 1;
            }
        }
        self.counters
            .requeued
            .fetch_add(returned, Ordering::Relaxed);
        log::error!(
            "consumer worker {} disconnected: {returned} unprocessed deliveries returned to the broker, {handed_again} handed out again",
            worker + 1
        );
    }

    /// Hands a delivery to a worker; `key` picks the worker for
    /// consistent-worker subscriptions.
    fn deliver(&self, delivery: Delivery, key: Option<&[u8]>) {
        let workers = lock(&self.workers).links.len();
        let worker = match key {
            Some(key) => (fnv1a(key) % workers as u64) as usize,
            None => self.round_robin.fetch_add(1, Ordering::Relaxed) % workers,
        };
        let kind = OutboundKind::Delivery {
            id: delivery.id,
            needs_ack: delivery.needs_ack,
        };
        let item = Outbound {
            frame: Message::Deliver(delivery).encode(),
            kind,
        };
        lock(&self.workers).send(worker, item);
    }

    /// Records a connection's state (see [`record_connection`]).
    fn set_connection(
        &self,
        broker_id: u32,
        role: Role,
        up: bool,
    ) -> Option<(String, usize, usize)> {
        record_connection(&mut lock(&self.brokers_state), broker_id, role, up)
    }

    /// What the service did since start-up and the state it is in.
    fn stats(&self) -> Stats {
        let c = &self.counters;
        let count = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let brokers = lock(&self.brokers_state)
            .iter()
            .map(|b| BrokerStats {
                id: b.id,
                zone: b.zone.clone(),
                host: b.host.clone(),
                connections: b.connections.clone(),
                reconnects: b.reconnects,
            })
            .collect();
        Stats {
            published: count(&c.published),
            publish_failed: count(&c.publish_failed),
            query_answered: count(&c.query_answered),
            query_timed_out: count(&c.query_timed_out),
            query_failed: count(&c.query_failed),
            query_pending: lock(&self.pending).len() as u64,
            async_answered: count(&c.async_answered),
            async_not_answered: count(&c.async_not_answered),
            delivered: count(&c.delivered),
            dropped: count(&c.dropped),
            unmatched_replies: count(&c.unmatched_replies),
            requeued: count(&c.requeued),
            publish_failed_no_broker: count(&c.publish_failed_no_broker),
            publish_failed_refused: count(&c.publish_failed_refused),
            publish_failed_timeout: count(&c.publish_failed_timeout),
            publish_failed_returned: count(&c.publish_failed_returned),
            publish_failed_invalid: count(&c.publish_failed_invalid),
            acked: count(&c.acked),
            redelivered: count(&c.redelivered),
            rejected: self
                .brokers
                .borrow()
                .as_ref()
                .map_or(0, |brokers| brokers.rejected()),
            worker_queued: lock(&self.workers)
                .queued
                .iter()
                .map(|q| q.len() as u64)
                .sum(),
            brokers,
        }
    }

    /// The `kazoo.status` document.
    fn status(&self) -> Vec<u8> {
        use crate::json::Value;
        let stats = self.stats();
        let (text, object) = (json_text, json_object);
        let brokers = lock(&self.brokers_state)
            .iter()
            .map(|b| {
                let by_role = |values: Vec<(&String, Value)>| {
                    Value::Object(
                        values
                            .into_iter()
                            .map(|(role, v)| (role.as_bytes().to_vec(), v))
                            .collect(),
                    )
                };
                let states = b
                    .connections
                    .iter()
                    .map(|(role, up)| (role, text(if *up { "up" } else { "down" })))
                    .collect();
                let since = b
                    .since
                    .iter()
                    .map(|(role, at)| (role, Value::UInt(*at)))
                    .collect();
                let last_error = match &b.last_error {
                    Some((at, reason)) => {
                        object(vec![("at", Value::UInt(*at)), ("reason", text(reason))])
                    }
                    None => Value::Null,
                };
                object(vec![
                    ("id", Value::UInt(u64::from(b.id))),
                    ("zone", text(&b.zone)),
                    ("host", text(&b.host)),
                    ("primary", Value::Bool(b.zone == self.primary_zone)),
                    ("connections", by_role(states)),
                    ("since", by_role(since)),
                    ("last_error", last_error),
                    ("reconnects", Value::UInt(b.reconnects)),
                ])
            })
            .collect();
        let subscriptions = self.subscriptions_status();
        let status = object(vec![
            ("brokers", Value::Array(brokers)),
            ("subscriptions", Value::Array(subscriptions)),
            (
                "publish",
                object(vec![
                    ("confirmed", Value::UInt(stats.published)),
                    ("failed", Value::UInt(stats.publish_failed)),
                    (
                        "failed_no_broker",
                        Value::UInt(stats.publish_failed_no_broker),
                    ),
                    ("failed_refused", Value::UInt(stats.publish_failed_refused)),
                    ("failed_timeout", Value::UInt(stats.publish_failed_timeout)),
                    (
                        "failed_returned",
                        Value::UInt(stats.publish_failed_returned),
                    ),
                    ("failed_invalid", Value::UInt(stats.publish_failed_invalid)),
                ]),
            ),
            (
                "query",
                object(vec![
                    ("answered", Value::UInt(stats.query_answered)),
                    ("timed_out", Value::UInt(stats.query_timed_out)),
                    ("failed", Value::UInt(stats.query_failed)),
                    ("pending", Value::UInt(stats.query_pending)),
                ]),
            ),
            (
                "async_query",
                object(vec![
                    ("answered", Value::UInt(stats.async_answered)),
                    ("not_answered", Value::UInt(stats.async_not_answered)),
                ]),
            ),
            (
                "consumed",
                object(vec![
                    ("delivered", Value::UInt(stats.delivered)),
                    ("dropped", Value::UInt(stats.dropped)),
                    ("unmatched_replies", Value::UInt(stats.unmatched_replies)),
                    ("requeued", Value::UInt(stats.requeued)),
                    ("acked", Value::UInt(stats.acked)),
                    ("redelivered", Value::UInt(stats.redelivered)),
                    ("rejected", Value::UInt(stats.rejected)),
                ]),
            ),
        ]);
        crate::json::to_json(&status)
    }

    /// Each subscription: what it declares, the messages it delivered and,
    /// per broker it is consumed on, the consuming connections up or why it
    /// fails there.
    fn subscriptions_status(&self) -> Vec<crate::json::Value> {
        use crate::json::Value;
        let (text, object) = (json_text, json_object);
        let brokers = lock(&self.brokers_state);
        let failures = lock(&self.subscription_failures);
        let consumed = self.subscription_consumed.get();
        let no_failures = SubscriptionFailures::new();
        self.subscriptions
            .get()
            .into_iter()
            .flatten()
            .enumerate()
            .map(|(index, sub)| {
                let failed = failures.get(&index).unwrap_or(&no_failures);
                let on_brokers = brokers
                    .iter()
                    .filter(|b| b.zone == self.primary_zone || sub.federate)
                    .map(|b| {
                        let consumers = b.consumers_up.iter().filter(|up| **up).count();
                        let (state, reason) = match failed.get(&b.id) {
                            Some(reason) => ("failed", text(reason)),
                            None if consumers > 0 => ("consuming", Value::Null),
                            None => ("down", Value::Null),
                        };
                        object(vec![
                            ("id", Value::UInt(u64::from(b.id))),
                            ("state", text(state)),
                            ("consumers", Value::UInt(consumers as u64)),
                            ("reason", reason),
                        ])
                    })
                    .collect();
                let count = consumed
                    .and_then(|c| c.get(index))
                    .map_or(0, |c| c.load(Ordering::Relaxed));
                object(vec![
                    ("index", Value::UInt(index as u64 + 1)),
                    ("name", text(sub.listener_name())),
                    ("exchange", text(&sub.exchange)),
                    ("type", text(&sub.exchange_type)),
                    ("queue", text(&sub.queue)),
                    (
                        "routing",
                        Value::Array(sub.routing.iter().map(|r| text(r)).collect()),
                    ),
                    ("federate", Value::Bool(sub.federate)),
                    ("no_ack", Value::Bool(sub.no_ack)),
                    ("consumed", Value::UInt(count)),
                    ("brokers", Value::Array(on_brokers)),
                ])
            })
            .collect()
    }

    fn next_id(&self) -> u64 {
        self.next_delivery.fetch_add(1, Ordering::Relaxed)
    }

    /// Hands an event the module makes up (not consumed from a broker) to a
    /// worker for the event routes: connection events (no routing key, so
    /// `$kzRK` is null and a missing route is not an error) and returned
    /// messages (the routing key they were published with).
    fn synthetic_event(&self, body: Vec<u8>, routing_key: Option<Vec<u8>>) {
        let delivery = Delivery {
            id: self.next_id(),
            routing_key,
            body,
            event_key: None,
            event_subkey: None,
            needs_ack: false,
        };
        self.deliver(delivery, None);
    }

    fn connection_event(&self, open: bool, host: &str, zone: &str) {
        let body = connection_event(&self.event_key, &self.event_subkey, open, host, zone);
        self.synthetic_event(body, None);
    }

    /// `connection` / `error`: why a connection closed or could not open.
    fn connection_error(&self, broker_id: u32, host: &str, zone: &str, reason: &str) {
        if let Some(broker) = lock(&self.brokers_state)
            .iter_mut()
            .find(|b| b.id == broker_id)
        {
            broker.last_error = Some((unix_now(), reason.to_string()));
        }
        let fields = [("host", host), ("zone", zone), ("message", reason)];
        let body = connection_notice(&self.event_key, &self.event_subkey, "error", &fields);
        self.synthetic_event(body, None);
    }

    /// `connection` / `listener-zone-available` (or `-unavailable`), one per
    /// subscription consumed in `zone` (every one in the primary zone, the
    /// `federate` ones elsewhere), named by [`Subscription::listener_name`].
    fn listener_zone_events(&self, zone: &str, available: bool) {
        let name = if available {
            "listener-zone-available"
        } else {
            "listener-zone-unavailable"
        };
        let primary = zone == self.primary_zone;
        for subscription in self.subscriptions.get().into_iter().flatten() {
            if !(primary || subscription.federate) {
                continue;
            }
            let fields = [("name", subscription.listener_name()), ("zone", zone)];
            let body = connection_notice(&self.event_key, &self.event_subkey, name, &fields);
            self.synthetic_event(body, None);
        }
    }

    /// A `mandatory` publish the broker returned, for the event routes
    /// (`kazoo:consumer-event-amqp-error-message-returned`).
    fn returned_event(
        &self,
        outgoing: &Outgoing,
        broker_id: u32,
        reply_code: u16,
        reply_text: &str,
        body: &[u8],
    ) {
        let zone = lock(&self.brokers_state)
            .iter()
            .find(|b| b.id == broker_id)
            .map(|b| b.zone.clone())
            .unwrap_or_default();
        match returned_message(
            body,
            &self.event_key,
            &self.event_subkey,
            &zone,
            reply_code,
            reply_text,
        ) {
            Ok(event) => self.synthetic_event(event, Some(outgoing.routing_key.clone())),
            Err(e) => log::error!("a returned message cannot go to the event routes: {e}"),
        }
    }

    fn consumed(&self, delivery: crate::broker::Delivery) {
        if delivery.redelivered {
            bump(&self.counters.redelivered);
        }
        let received = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        let annotated =
            match annotate_consumed(&delivery.body, &delivery.zone, received, delivery.broker_id) {
                Ok(annotated) => annotated,
                Err(e) => {
                    log::error!(
                        "dropping a message from broker {} (routing key {}): {e}",
                        delivery.broker_id,
                        delivery.routing_key
                    );
                    if let Some(acker) = delivery.ack {
                        // Redelivering it would fail the same way.
                        acker.ack();
                    }
                    bump(&self.counters.dropped);
                    return;
                }
            };
        if let Source::Reply { .. } = delivery.source {
            if let Some(waiter) = annotated
                .msg_id
                .as_ref()
                .and_then(|id| lock(&self.pending).remove(id))
            {
                if waiter.send(annotated.body.clone()).is_ok() {
                    return;
                }
            }
        }
        let subscription = match delivery.source {
            Source::Subscription { index } => {
                if let Some(consumed) = self.subscription_consumed.get().and_then(|c| c.get(index))
                {
                    bump(consumed);
                }
                self.subscriptions.get().and_then(|s| s.get(index))
            }
            Source::Reply { .. } => {
                bump(&self.counters.unmatched_replies);
                None
            }
        };
        bump(&self.counters.delivered);
        let id = self.next_id();
        let wait_for_route = subscription.is_some_and(|s| s.wait_for_consumer_ack);
        let needs_ack = match delivery.ack {
            Some(acker) if wait_for_route => {
                lock(&self.ackers).insert(id, acker);
                true
            }
            Some(acker) => {
                acker.ack();
                bump(&self.counters.acked);
                false
            }
            None => false,
        };
        let hash_key: Option<Vec<u8>> = subscription
            .filter(|s| s.consistent_worker)
            .map(|s| consistent_key(s, &annotated.body, &delivery.routing_key));
        self.deliver(
            Delivery {
                id,
                routing_key: Some(delivery.routing_key.into_bytes()),
                body: annotated.body,
                event_key: subscription.and_then(|s| s.event_key.clone()),
                event_subkey: subscription.and_then(|s| s.event_subkey.clone()),
                needs_ack,
            },
            hash_key.as_deref(),
        );
    }
}

/// Records a connection's state. For a consuming connection, returns its
/// zone and how many consuming connections of that zone were up before and
/// are up after (0 to 1: the zone is available; 1 to 0: unavailable).
fn record_connection(
    brokers: &mut [BrokerState],
    broker_id: u32,
    role: Role,
    up: bool,
) -> Option<(String, usize, usize)> {
    let zone = brokers.iter().find(|b| b.id == broker_id)?.zone.clone();
    let consuming = |brokers: &[BrokerState]| {
        brokers
            .iter()
            .filter(|b| b.zone == zone)
            .flat_map(|b| b.consumers_up.iter())
            .filter(|up| **up)
            .count()
    };
    let before = consuming(brokers);
    let broker = brokers.iter_mut().find(|b| b.id == broker_id)?;
    let previous = broker.connections.insert(role.to_string(), up);
    if previous != Some(up) {
        broker.since.insert(role.to_string(), unix_now());
    }
    if up && previous == Some(false) {
        broker.reconnects += 1;
    }
    let Role::Consumer(n) = role else {
        return None;
    };
    let n = n as usize;
    if broker.consumers_up.len() <= n {
        broker.consumers_up.resize(n + 1, false);
    }
    broker.consumers_up[n] = up;
    let after = consuming(brokers);
    Some((zone, before, after))
}

/// The value a consistent-worker subscription hashes: its key field when the
/// payload has it as a string, else the routing key.
fn consistent_key(subscription: &Subscription, body: &[u8], routing_key: &str) -> Vec<u8> {
    subscription
        .consistent_worker_key
        .as_ref()
        .and_then(|field| {
            let value = crate::json::parse(body).ok()?;
            value.get(field.as_bytes())?.as_bytes().map(<[u8]>::to_vec)
        })
        .unwrap_or_else(|| routing_key.as_bytes().to_vec())
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &b| {
        (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

async fn broker_events(shared: Arc<Shared>, mut events: mpsc::Receiver<Event>) {
    while let Some(event) = events.recv().await {
        match event {
            Event::Connected {
                broker_id,
                zone,
                host,
                role,
            } => {
                log::info!("broker {broker_id} ({host}, zone {zone}): {role:?} connection open");
                let consuming = shared.set_connection(broker_id, role, true);
                shared.connection_event(true, &host, &zone);
                if let Some((zone, 0, 1..)) = consuming {
                    shared.listener_zone_events(&zone, true);
                }
            }
            Event::Disconnected {
                broker_id,
                zone,
                host,
                role,
                reason,
            } => {
                // The broker layer logs the change; every retry comes here.
                log::debug!(
                    "broker {broker_id} ({host}, zone {zone}): {role:?} connection closed: {reason}"
                );
                let consuming = shared.set_connection(broker_id, role, false);
                shared.connection_event(false, &host, &zone);
                shared.connection_error(broker_id, &host, &zone, &reason);
                if let Some((zone, 1.., 0)) = consuming {
                    shared.listener_zone_events(&zone, false);
                }
            }
            Event::Delivery(delivery) => shared.consumed(delivery),
            Event::SubscriptionFailed {
                index,
                broker_id,
                reason,
            } => {
                log::error!(
                    "subscription {} on broker {broker_id} failed: {reason}",
                    index + 1
                );
                lock(&shared.subscription_failures)
                    .entry(index)
                    .or_default()
                    .insert(broker_id, reason);
            }
            Event::SubscriptionWorking { index, broker_id } => {
                if let Some(failures) = lock(&shared.subscription_failures).get_mut(&index) {
                    failures.remove(&broker_id);
                }
            }
        }
    }
}

async fn startup_publishes(shared: Arc<Shared>, publishes: Vec<Outgoing>) {
    for outgoing in publishes {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let deadline = Instant::now() + shared.publish_timeout;
            match shared.publish_message(&outgoing, deadline).await {
                Ok(()) => break,
                // Reported to the event routes; publishing again would not help.
                Err(Unpublished::Broker(PublishError::Returned { .. })) => break,
                Err(reason) if attempt < STARTUP_PUBLISH_ATTEMPTS => {
                    log::debug!("publish from kazoo:mod-init not done yet: {reason}");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                Err(reason) => {
                    log::error!(
                        "a publish made in kazoo:mod-init to exchange {} was dropped after {attempt} attempts: {reason}",
                        String::from_utf8_lossy(&outgoing.exchange)
                    );
                    break;
                }
            }
        }
    }
}

/// Serves one IPC connection: requests from a process, or a worker's link.
async fn connection(shared: Arc<Shared>, stream: UnixStream) {
    let (reader, mut writer) = stream.into_split();
    // Buffered: a frame's length and body come in one read.
    let mut reader = tokio::io::BufReader::with_capacity(64 * 1024, reader);
    let (tx, mut rx) = mpsc::unbounded_channel::<Outbound>();
    // Deliveries written to this connection whose route has not reported
    // yet: returned to the broker if the connection breaks.
    let in_flight: Arc<Mutex<HashSet<u64>>> = Arc::default();
    let (stop_writer, mut stopped) = oneshot::channel::<()>();
    let writer_in_flight = in_flight.clone();
    let writer = crate::task::spawn("an IPC connection's writer", async move {
        loop {
            let item = tokio::select! {
                item = rx.recv() => item,
                _ = &mut stopped => None,
            };
            let Some(item) = item else { break };
            if let OutboundKind::Delivery {
                id,
                needs_ack: true,
            } = item.kind
            {
                lock(&writer_in_flight).insert(id);
            }
            if writer.write_all(&item.frame).await.is_err() {
                // Not written after all.
                if let OutboundKind::Delivery { id, .. } = item.kind {
                    lock(&writer_in_flight).remove(&id);
                }
                rx.close();
                let mut unsent = vec![item];
                while let Ok(item) = rx.try_recv() {
                    unsent.push(item);
                }
                return unsent;
            }
        }
        rx.close();
        let mut unsent = Vec::new();
        while let Ok(item) = rx.try_recv() {
            unsent.push(item);
        }
        unsent
    });
    let mut worker = None;
    loop {
        let message = match read_message(&mut reader).await {
            Ok(Some(message)) => message,
            Ok(None) => break,
            Err(e) => {
                log::error!("IPC: {e}");
                break;
            }
        };
        match message {
            Message::Publish(outgoing) => {
                let (shared, tx) = (shared.clone(), tx.clone());
                crate::task::spawn("a publish", async move {
                    let request = outgoing.request;
                    let outcome = shared.answer_publish(outgoing).await;
                    let _ = tx.send(Outbound::answer(Message::Answer { request, outcome }));
                });
            }
            Message::Query(outgoing) => {
                let (shared, tx) = (shared.clone(), tx.clone());
                crate::task::spawn("a query", async move {
                    let request = outgoing.request;
                    let outcome = shared.answer_query(outgoing).await;
                    let _ = tx.send(Outbound::answer(Message::Answer { request, outcome }));
                });
            }
            Message::Status { request } => {
                log::debug!("status requested (RPC)");
                let outcome = Outcome::Reply(shared.status());
                let _ = tx.send(Outbound::answer(Message::Answer { request, outcome }));
            }
            Message::AsyncQuery {
                outgoing,
                hash,
                label,
                ok_route,
                err_route,
            } => {
                let shared = shared.clone();
                crate::task::spawn("an asynchronous query", async move {
                    shared
                        .async_query(outgoing, hash, label, ok_route, err_route)
                        .await;
                });
            }
            Message::Hello { worker: number } => {
                let index = number.saturating_sub(1) as usize;
                let mut workers = lock(&shared.workers);
                if index < workers.links.len() {
                    worker = Some((index, workers.attach(index, tx.clone())));
                } else {
                    log::error!("IPC: unknown consumer worker {number}");
                }
            }
            Message::Ack { delivery } => {
                lock(&in_flight).remove(&delivery);
                if let Some(acker) = lock(&shared.ackers).remove(&delivery) {
                    acker.ack();
                    bump(&shared.counters.acked);
                }
            }
            Message::StartupDone {
                subscriptions,
                publishes,
            } => {
                if shared.startup.try_send((subscriptions, publishes)).is_err() {
                    log::error!("IPC: a start-up report came too late or twice; ignored");
                }
            }
            Message::Answer { .. } | Message::Deliver(_) | Message::Resume(_) => {
                log::error!("IPC: unexpected message from a Kamailio process");
            }
        }
    }
    let Some((index, generation)) = worker else {
        return;
    };
    lock(&shared.workers).detach(index, generation);
    let _ = stop_writer.send(());
    let unsent = writer.await.ok().flatten().unwrap_or_default();
    shared.worker_gone(index, &lock(&in_flight), unsent);
}

async fn read_message(
    reader: &mut tokio::io::BufReader<tokio::net::unix::OwnedReadHalf>,
) -> Result<Option<Message>, String> {
    let mut len = [0u8; 4];
    match reader.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.to_string()),
    }
    let len = u32::from_le_bytes(len) as usize;
    if len == 0 || len > MAX_FRAME {
        return Err("bad frame length".into());
    }
    let mut body = vec![0u8; len];
    reader
        .read_exact(&mut body)
        .await
        .map_err(|e| e.to_string())?;
    Message::decode(&body).map(Some).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subscription(key: Option<&str>) -> Subscription {
        let mut s = crate::subscription::simple("ex", "topic", "q", "#").unwrap();
        s.consistent_worker = true;
        s.consistent_worker_key = key.map(str::to_string);
        s
    }

    #[test]
    fn consistent_workers_hash_the_key_field_or_the_routing_key() {
        let by_field = subscription(Some("Call-ID"));
        let body = br#"{"Call-ID": "abc@host", "Other": 1}"#;
        assert_eq!(consistent_key(&by_field, body, "rk.1"), b"abc@host");
        // A missing or non-string field falls back to the routing key.
        assert_eq!(
            consistent_key(&by_field, br#"{"Other": 1}"#, "rk.1"),
            b"rk.1"
        );
        assert_eq!(
            consistent_key(&by_field, br#"{"Call-ID": 5}"#, "rk.1"),
            b"rk.1"
        );
        assert_eq!(consistent_key(&subscription(None), body, "rk.2"), b"rk.2");
    }

    #[test]
    fn the_same_key_always_picks_the_same_worker_and_keys_spread() {
        let workers = 8u64;
        let pick = |key: &str| fnv1a(key.as_bytes()) % workers;
        assert_eq!(pick("call-1@host"), pick("call-1@host"));
        let used: std::collections::BTreeSet<u64> =
            (0..200).map(|i| pick(&format!("call-{i}@host"))).collect();
        assert_eq!(
            used.len() as u64,
            workers,
            "200 keys should reach all 8 workers"
        );
    }

    fn item(byte: u8) -> Outbound {
        Outbound {
            frame: vec![byte],
            kind: OutboundKind::Resume,
        }
    }

    #[test]
    fn undelivered_frames_wait_for_their_worker_and_are_bounded() {
        let mut workers = Workers::new(2);
        workers.send(1, item(1));
        workers.send(1, item(2));
        let (tx, mut rx) = mpsc::unbounded_channel();
        workers.attach(1, tx);
        assert_eq!(rx.try_recv().unwrap().frame, vec![1]);
        assert_eq!(rx.try_recv().unwrap().frame, vec![2]);
        workers.send(1, item(3));
        assert_eq!(rx.try_recv().unwrap().frame, vec![3]);
        for i in 0..MAX_QUEUED_PER_WORKER + 5 {
            workers.send(0, item((i % 256) as u8));
        }
        assert_eq!(workers.queued[0].len(), MAX_QUEUED_PER_WORKER);
    }

    #[test]
    fn an_old_connection_going_never_detaches_the_new_one() {
        let mut workers = Workers::new(1);
        let (old_tx, _old_rx) = mpsc::unbounded_channel();
        let old = workers.attach(0, old_tx);
        let (new_tx, mut new_rx) = mpsc::unbounded_channel();
        let new = workers.attach(0, new_tx);
        workers.detach(0, old);
        workers.send(0, item(7));
        assert_eq!(new_rx.try_recv().unwrap().frame, vec![7]);
        workers.detach(0, new);
        workers.send(0, item(8));
        assert!(new_rx.try_recv().is_err());
        assert_eq!(workers.queued[0].len(), 1);
    }

    #[test]
    fn a_connection_that_opens_again_counts_as_a_reconnect() {
        let mut brokers = vec![BrokerState {
            id: 1,
            zone: "local".into(),
            host: "h".into(),
            connections: Default::default(),
            since: Default::default(),
            last_error: None,
            reconnects: 0,
            consumers_up: Vec::new(),
        }];
        for up in [false, true, true, false, true] {
            record_connection(&mut brokers, 1, Role::Publisher, up);
        }
        assert_eq!(brokers[0].reconnects, 2);
    }

    #[test]
    fn zone_counts_follow_the_consuming_connections_only() {
        let state = |id, zone: &str| BrokerState {
            id,
            zone: zone.into(),
            host: "h".into(),
            connections: Default::default(),
            since: Default::default(),
            last_error: None,
            reconnects: 0,
            consumers_up: Vec::new(),
        };
        let mut brokers = vec![state(1, "local"), state(2, "local"), state(3, "remote")];
        let mut record = |id, role, up| record_connection(&mut brokers, id, role, up);
        let local = |before, after| Some(("local".to_string(), before, after));
        assert_eq!(record(1, Role::Consumer(0), true), local(0, 1));
        assert_eq!(record(1, Role::Consumer(1), true), local(1, 2));
        assert_eq!(record(2, Role::Consumer(0), true), local(2, 3));
        assert_eq!(record(1, Role::Publisher, false), None);
        assert_eq!(
            record(3, Role::Consumer(0), true),
            Some(("remote".to_string(), 0, 1))
        );
        assert_eq!(record(1, Role::Consumer(0), false), local(3, 2));
        // A retry that fails again changes nothing.
        assert_eq!(record(1, Role::Consumer(0), false), local(2, 2));
        assert_eq!(record(1, Role::Consumer(1), false), local(2, 1));
        assert_eq!(record(2, Role::Consumer(0), false), local(1, 0));
        assert_eq!(record(9, Role::Consumer(0), true), None);
    }
}
