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
//! - Connection events: every broker connection opening or closing becomes a
//!   synthetic `connection` event for the routes, as in the C module.
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

use crate::broker::{Acker, BrokerOptions, Brokers, Event, Source};
use crate::config::Broker;
use crate::ipc::{Delivery, Message, Outcome, Outgoing, Resume, Target, MAX_FRAME};
use crate::payload::{annotate_consumed, connection_event, PreparedPublish};
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
    /// thread): the host refreshes its per-process state there (Kamailio's
    /// runtime configuration, which decides among other things what this
    /// process logs).
    pub on_tick: fn(),
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
                })
                .collect(),
        ),
    });
    tokio::spawn(tick(config.on_tick));
    tokio::spawn(accept(listener, shared.clone()));
    if let Some(wait) = config.await_startup {
        collect_startup(&mut config, startup_rx, wait).await;
    }
    let _ = shared.subscriptions.set(config.subscriptions.clone());
    let (brokers, events) = Brokers::start(
        config.brokers.clone(),
        config.subscriptions,
        config.options.clone(),
    );
    let _ = brokers_tx.send(Some(Arc::new(brokers)));
    if !config.startup_publishes.is_empty() {
        tokio::spawn(startup_publishes(shared.clone(), config.startup_publishes));
    }
    broker_events(shared, events).await;
    // The broker layer never closes its event channel while it runs.
    std::future::pending().await
}

async fn tick(on_tick: fn()) {
    let mut interval = tokio::time::interval(TICK);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        on_tick();
    }
}

async fn accept(listener: tokio::net::UnixListener, shared: Arc<Shared>) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                if !same_user(&stream) {
                    log::error!("refused an IPC connection from another user");
                    continue;
                }
                tokio::spawn(connection(shared.clone(), stream));
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

/// Only processes of the same user (Kamailio's own) may talk to the service.
/// The process's own uid is read as the owner of `/proc/self`, which keeps
/// this crate free of `libc` calls.
fn same_user(stream: &UnixStream) -> bool {
    let own = std::fs::metadata("/proc/self").map(|m| {
        use std::os::unix::fs::MetadataExt;
        m.uid()
    });
    match (stream.peer_cred(), own) {
        (Ok(peer), Ok(own)) => peer.uid() == own,
        _ => false,
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
}

struct Shared {
    /// The broker layer, once started (after the start-up report when a
    /// KEMI engine runs `kazoo:mod-init`).
    brokers: watch::Receiver<Option<Arc<Brokers>>>,
    /// Where worker 1's start-up report goes.
    startup: mpsc::Sender<(Vec<Vec<u8>>, Vec<Outgoing>)>,
    node_hostname: String,
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
}

/// The consumer workers' connections, and what waits for those not yet
/// connected.
struct Workers {
    links: Vec<Option<mpsc::UnboundedSender<Vec<u8>>>>,
    queued: Vec<VecDeque<Vec<u8>>>,
}

impl Workers {
    fn new(count: usize) -> Workers {
        Workers {
            links: vec![None; count],
            queued: vec![VecDeque::new(); count],
        }
    }

    fn send(&mut self, worker: usize, frame: Vec<u8>) {
        if let Some(link) = &self.links[worker] {
            if let Err(unsent) = link.send(frame) {
                self.links[worker] = None;
                self.queue(worker, unsent.0);
            }
            return;
        }
        self.queue(worker, frame);
    }

    fn queue(&mut self, worker: usize, frame: Vec<u8>) {
        let queue = &mut self.queued[worker];
        if queue.len() >= MAX_QUEUED_PER_WORKER {
            queue.pop_front();
            log::error!(
                "consumer worker {} is not connected: dropped its oldest queued delivery",
                worker + 1
            );
        }
        queue.push_back(frame);
    }

    fn attach(&mut self, worker: usize, link: mpsc::UnboundedSender<Vec<u8>>) {
        for frame in self.queued[worker].drain(..) {
            let _ = link.send(frame);
        }
        self.links[worker] = Some(link);
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

    async fn publish(&self, outgoing: &Outgoing, deadline: Instant) -> Result<(), String> {
        let brokers = self.brokers(deadline).await?;
        let target = match outgoing.target {
            Target::Primary => None,
            Target::Broker(id) => Some(id),
        };
        let exchange = String::from_utf8_lossy(&outgoing.exchange);
        let routing_key = String::from_utf8_lossy(&outgoing.routing_key);
        brokers
            .publish(
                target,
                &exchange,
                &routing_key,
                &outgoing.headers,
                self.body_for(outgoing),
                deadline,
            )
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    async fn answer_publish(&self, outgoing: Outgoing) -> Outcome {
        let wait = Duration::from_millis(outgoing.timeout_ms.into()).min(self.publish_timeout);
        match self.publish(&outgoing, Instant::now() + wait).await {
            Ok(()) => {
                bump(&self.counters.published);
                Outcome::Published
            }
            Err(reason) => {
                bump(&self.counters.publish_failed);
                Outcome::Failed(reason)
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
        if let Err(reason) = self.publish(&outgoing, deadline).await {
            lock(&self.pending).remove(&outgoing.msg_id);
            bump(&self.counters.query_failed);
            return Outcome::Failed(reason);
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
        let worker =
            self.round_robin.fetch_add(1, Ordering::Relaxed) % lock(&self.workers).links.len();
        lock(&self.workers).send(worker, Message::Resume(resume).encode());
    }

    /// Hands a delivery to a worker; `key` picks the worker for
    /// consistent-worker subscriptions.
    fn deliver(&self, delivery: Delivery, key: Option<&[u8]>) {
        let workers = lock(&self.workers).links.len();
        let worker = match key {
            Some(key) => (fnv1a(key) % workers as u64) as usize,
            None => self.round_robin.fetch_add(1, Ordering::Relaxed) % workers,
        };
        lock(&self.workers).send(worker, Message::Deliver(delivery).encode());
    }

    fn set_connection(&self, broker_id: u32, role: &str, up: bool) {
        let mut brokers = lock(&self.brokers_state);
        if let Some(broker) = brokers.iter_mut().find(|b| b.id == broker_id) {
            broker.connections.insert(role.to_string(), up);
        }
    }

    /// The `kazoo.status` document.
    fn status(&self) -> Vec<u8> {
        use crate::json::Value;
        let text = |s: &str| Value::String(s.as_bytes().to_vec());
        let count = |c: &AtomicU64| Value::UInt(c.load(Ordering::Relaxed));
        let object = |members: Vec<(&str, Value)>| {
            Value::Object(
                members
                    .into_iter()
                    .map(|(k, v)| (k.as_bytes().to_vec(), v))
                    .collect(),
            )
        };
        let brokers = lock(&self.brokers_state)
            .iter()
            .map(|b| {
                object(vec![
                    ("id", Value::UInt(u64::from(b.id))),
                    ("zone", text(&b.zone)),
                    ("host", text(&b.host)),
                    (
                        "connections",
                        Value::Object(
                            b.connections
                                .iter()
                                .map(|(role, up)| {
                                    (
                                        role.as_bytes().to_vec(),
                                        text(if *up { "up" } else { "down" }),
                                    )
                                })
                                .collect(),
                        ),
                    ),
                ])
            })
            .collect();
        let c = &self.counters;
        let status = object(vec![
            ("brokers", Value::Array(brokers)),
            (
                "publish",
                object(vec![
                    ("confirmed", count(&c.published)),
                    ("failed", count(&c.publish_failed)),
                ]),
            ),
            (
                "query",
                object(vec![
                    ("answered", count(&c.query_answered)),
                    ("timed_out", count(&c.query_timed_out)),
                    ("failed", count(&c.query_failed)),
                    ("pending", Value::UInt(lock(&self.pending).len() as u64)),
                ]),
            ),
            (
                "async_query",
                object(vec![
                    ("answered", count(&c.async_answered)),
                    ("not_answered", count(&c.async_not_answered)),
                ]),
            ),
            (
                "consumed",
                object(vec![
                    ("delivered", count(&c.delivered)),
                    ("dropped", count(&c.dropped)),
                    ("unmatched_replies", count(&c.unmatched_replies)),
                ]),
            ),
        ]);
        crate::json::to_json(&status)
    }

    fn next_id(&self) -> u64 {
        self.next_delivery.fetch_add(1, Ordering::Relaxed)
    }

    fn connection_event(&self, open: bool, host: &str, zone: &str) {
        let body = connection_event(&self.event_key, &self.event_subkey, open, host, zone);
        let delivery = Delivery {
            id: self.next_id(),
            routing_key: None,
            body,
            event_key: None,
            event_subkey: None,
            needs_ack: false,
        };
        self.deliver(delivery, None);
    }

    fn consumed(&self, delivery: crate::broker::Delivery) {
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
            Source::Subscription { index } => self.subscriptions.get().and_then(|s| s.get(index)),
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
                shared.set_connection(broker_id, &role.to_string(), true);
                shared.connection_event(true, &host, &zone);
            }
            Event::Disconnected {
                broker_id,
                zone,
                host,
                role,
                reason,
            } => {
                log::warn!(
                    "broker {broker_id} ({host}, zone {zone}): {role:?} connection closed: {reason}"
                );
                shared.set_connection(broker_id, &role.to_string(), false);
                shared.connection_event(false, &host, &zone);
            }
            Event::Delivery(delivery) => shared.consumed(delivery),
            Event::SubscriptionFailed {
                index,
                broker_id,
                reason,
            } => log::error!(
                "subscription {} on broker {broker_id} failed: {reason}",
                index + 1
            ),
        }
    }
}

async fn startup_publishes(shared: Arc<Shared>, publishes: Vec<Outgoing>) {
    for outgoing in publishes {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let deadline = Instant::now() + shared.publish_timeout;
            match shared.publish(&outgoing, deadline).await {
                Ok(()) => break,
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
    let (tx, mut rx) = mpsc::unbounded_channel::<Vec<u8>>();
    tokio::spawn(async move {
        while let Some(frame) = rx.recv().await {
            if writer.write_all(&frame).await.is_err() {
                break;
            }
        }
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
                tokio::spawn(async move {
                    let request = outgoing.request;
                    let outcome = shared.answer_publish(outgoing).await;
                    let _ = tx.send(Message::Answer { request, outcome }.encode());
                });
            }
            Message::Query(outgoing) => {
                let (shared, tx) = (shared.clone(), tx.clone());
                tokio::spawn(async move {
                    let request = outgoing.request;
                    let outcome = shared.answer_query(outgoing).await;
                    let _ = tx.send(Message::Answer { request, outcome }.encode());
                });
            }
            Message::Status { request } => {
                log::debug!("status requested (RPC)");
                let outcome = Outcome::Reply(shared.status());
                let _ = tx.send(Message::Answer { request, outcome }.encode());
            }
            Message::AsyncQuery {
                outgoing,
                hash,
                label,
                ok_route,
                err_route,
            } => {
                let shared = shared.clone();
                tokio::spawn(async move {
                    shared
                        .async_query(outgoing, hash, label, ok_route, err_route)
                        .await;
                });
            }
            Message::Hello { worker: number } => {
                let index = number.saturating_sub(1) as usize;
                let mut workers = lock(&shared.workers);
                if index < workers.links.len() {
                    workers.attach(index, tx.clone());
                    worker = Some(index);
                } else {
                    log::error!("IPC: unknown consumer worker {number}");
                }
            }
            Message::Ack { delivery } => {
                if let Some(acker) = lock(&shared.ackers).remove(&delivery) {
                    acker.ack();
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
    if let Some(index) = worker {
        log::error!("consumer worker {} disconnected", index + 1);
        lock(&shared.workers).links[index] = None;
    }
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

    #[test]
    fn undelivered_frames_wait_for_their_worker_and_are_bounded() {
        let mut workers = Workers::new(2);
        workers.send(1, vec![1]);
        workers.send(1, vec![2]);
        let (tx, mut rx) = mpsc::unbounded_channel();
        workers.attach(1, tx);
        assert_eq!(rx.try_recv().unwrap(), vec![1]);
        assert_eq!(rx.try_recv().unwrap(), vec![2]);
        workers.send(1, vec![3]);
        assert_eq!(rx.try_recv().unwrap(), vec![3]);
        for i in 0..MAX_QUEUED_PER_WORKER + 5 {
            workers.send(0, vec![(i % 256) as u8]);
        }
        assert_eq!(workers.queued[0].len(), MAX_QUEUED_PER_WORKER);
    }
}
