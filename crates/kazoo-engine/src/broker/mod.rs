//! Broker connections over lapin, behind our own interface.
//!
//! [`Brokers::start`] spawns, on the current tokio runtime (a current-thread
//! runtime is enough), one task per connection and returns at once:
//!
//! - one **publisher** connection per broker (every zone), with one
//!   confirm-mode channel: [`Brokers::publish`] waits for the broker's confirm
//!   and fails over between primary-zone brokers;
//! - `consumer_connections` **consuming** connections per primary-zone broker
//!   (one per other broker). Each declares, in the C module's order, the
//!   `targeted` exchange and the reply queues (primary zone only), then every
//!   subscription (other zones: only `federate` ones), each on its own
//!   channel, and consumes them.
//!
//! Every connection reconnects forever with back-off (100 ms doubling to 5 s,
//! reset after a stable connection) and replays its whole topology. What
//! happens is reported as [`Event`]s on the returned receiver, a failed
//! attempt every time (a broker that keeps refusing is reported at each
//! retry, as the C module does).
//!
//! Differences from the C module, on purpose (reference §6, §7.5, §7.6):
//! - the broker closing a connection or a channel is noticed at once (lapin
//!   reads every frame); publishes in flight fail or are retried, never
//!   reported as confirmed when they were not;
//! - a subscription whose declaration fails at channel level is retried with
//!   back-off on its own channel; one that makes the broker close the whole
//!   connection (e.g. an unknown exchange type) is quarantined on that broker
//!   after the first time, so the rest of the connection keeps working;
//! - reply queues are declared durable + auto_delete (C: transient +
//!   auto_delete, which RabbitMQ 4 refuses for non-exclusive queues);
//! - `heartbeat_secs = 0` does not disable heartbeats: lapin then uses the
//!   broker's proposal (RabbitMQ: 60 s), so dead TCP peers are noticed.
//! - a delivery whose routing key is not UTF-8 is rejected without requeue
//!   (dropped, without acks), logged and counted ([`Brokers::rejected`]),
//!   never forwarded; bad bytes elsewhere (properties, header names) and
//!   deeply nested headers are read lossily by the patched
//!   amq-protocol-types, so that no delivery closes the connection.
//!
//! Credentials never appear in log lines or error texts.

mod connect;
mod consumer;
mod publisher;
mod tls;

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use lapin::options::BasicPublishOptions;
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Confirmation};
use tokio::sync::{mpsc, watch, Notify};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::config::Broker;
use crate::subscription::Subscription;

/// How many events may wait in the channel returned by [`Brokers::start`]
/// before the connection tasks wait for the reader.
pub const EVENT_QUEUE: usize = 4096;

/// What the broker layer needs from the module's parameters.
#[derive(Clone, Debug)]
pub struct BrokerOptions {
    /// `node_hostname`: reply queues are `kamailio@<node>-<<id>-<idx>>`, bound
    /// with key `kamailio@<node>-<<id>>-targeted-<idx>`.
    pub node_hostname: String,
    /// `amqp_primary_zone`: brokers of this zone are "primary".
    pub primary_zone: String,
    /// `amqp_max_channels`: reply queues (and Server-ID indexes) per primary broker.
    pub reply_queues: u32,
    /// `amqp_consumer_processes`: consuming connections per primary broker
    /// (other brokers: always 1).
    pub consumer_connections: u32,
    /// `basic.qos` prefetch of every consumer: how many deliveries one
    /// consumer may hold unacked (0 = unlimited).
    pub prefetch: u16,
    /// `amqp_heartbeats`; 0 takes the broker's proposal.
    pub heartbeat_secs: u16,
    /// `amqp_connect_timeout_*`: the TCP connect (the TLS handshake and AMQP
    /// login have a further [`HANDSHAKE_TIMEOUT`]).
    pub connect_timeout: Duration,
    pub tls: TlsOptions,
}

impl Default for BrokerOptions {
    /// The C module's defaults (`node_hostname` empty: set it).
    fn default() -> Self {
        BrokerOptions {
            node_hostname: String::new(),
            primary_zone: "local".into(),
            reply_queues: 50,
            consumer_connections: 1,
            prefetch: 0,
            heartbeat_secs: 0,
            connect_timeout: Duration::from_millis(200),
            tls: TlsOptions::default(),
        }
    }
}

/// TLS settings for `amqps://` brokers (`amqps_*` parameters).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsOptions {
    /// PEM file of the CA certificate(s) to trust; without it, the system's roots.
    pub ca_cert: Option<PathBuf>,
    /// PEM client certificate (chain), sent when `key` is set too.
    pub cert: Option<PathBuf>,
    /// PEM private key of `cert`.
    pub key: Option<PathBuf>,
    /// false: accept any server certificate (no chain, no name check).
    pub verify_peer: bool,
    /// false: check the chain but not that it names the host.
    pub verify_hostname: bool,
}

impl Default for TlsOptions {
    fn default() -> Self {
        TlsOptions {
            ca_cert: None,
            cert: None,
            key: None,
            verify_peer: true,
            verify_hostname: true,
        }
    }
}

/// The TLS handshake plus AMQP login may take this long after the TCP connect.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Which connection of a broker an event is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    Publisher,
    /// The n-th consuming connection of the broker, from 0.
    Consumer(u32),
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Role::Publisher => f.write_str("publisher"),
            Role::Consumer(n) => write!(f, "consumer {n}"),
        }
    }
}

/// What the broker connections report.
#[derive(Debug)]
pub enum Event {
    /// A connection is open and ready: the publisher's confirm channel, or a
    /// consumer's topology declared and consumed (quarantined or failing
    /// subscriptions aside).
    Connected {
        broker_id: u32,
        zone: String,
        host: String,
        role: Role,
    },
    /// A connection closed, or an attempt to open it failed: reported on
    /// every failed attempt, so a broker that keeps refusing the login is
    /// reported at each retry (every 5 s at most, the back-off cap).
    Disconnected {
        broker_id: u32,
        zone: String,
        host: String,
        role: Role,
        reason: String,
    },
    Delivery(Delivery),
    /// A subscription could not be declared or consumed on a broker; reported
    /// once per (index, broker) change, not on every retry.
    SubscriptionFailed {
        index: usize,
        broker_id: u32,
        reason: String,
    },
    /// A subscription that had failed on a broker is consumed there again.
    SubscriptionWorking {
        index: usize,
        broker_id: u32,
    },
}

/// Where a delivery was consumed from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Source {
    /// The reply queue `idx` (a `Server-ID` index).
    Reply { idx: u32 },
    /// The subscription at this index of [`Brokers::start`]'s list.
    Subscription { index: usize },
}

/// A consumed message.
#[derive(Debug)]
pub struct Delivery {
    pub broker_id: u32,
    pub zone: String,
    pub source: Source,
    pub routing_key: String,
    pub body: Vec<u8>,
    /// The broker delivered it before (after a reject or a lost connection).
    pub redelivered: bool,
    /// Every delivery is consumed with acks, so that the broker's prefetch
    /// bounds what the module holds (a subscription's `no_ack` says only
    /// when the ack is sent: see [`Acker`]).
    pub ack: Acker,
}

/// Acknowledges one delivery. Dropping it unused settles it as its source
/// wants, so an abandoned delivery never stays unacked on the broker:
/// requeued for subscriptions with `no_ack: 0` (at-least-once), acked for
/// `no_ack` subscriptions and reply queues (at-most-once, which is what
/// `no_ack` asks for).
///
/// Acks travel on the channel the delivery came from: once that channel or
/// its connection is gone, the broker has requeued the message already and
/// the ack is dropped (logged at debug).
pub struct Acker {
    inner: Option<lapin::Acker>,
    handle: tokio::runtime::Handle,
    broker_id: u32,
    /// What dropping it unused does.
    on_drop: Settle,
}

impl fmt::Debug for Acker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Acker")
            .field("broker_id", &self.broker_id)
            .field("pending", &self.inner.is_some())
            .field("on_drop", &self.on_drop)
            .finish()
    }
}

impl Acker {
    /// An acker whose delivery is requeued when it is dropped unused
    /// (`requeue_on_drop`), or acked.
    fn new(
        inner: lapin::Acker,
        handle: tokio::runtime::Handle,
        broker_id: u32,
        requeue_on_drop: bool,
    ) -> Acker {
        let on_drop = if requeue_on_drop {
            Settle::Reject { requeue: true }
        } else {
            Settle::Ack
        };
        Acker {
            inner: Some(inner),
            handle,
            broker_id,
            on_drop,
        }
    }

    /// Whether dropping it unused returns the delivery to the broker
    /// (subscriptions with `no_ack: 0`) rather than acking it.
    pub fn requeues_on_drop(&self) -> bool {
        matches!(self.on_drop, Settle::Reject { requeue: true })
    }

    /// `basic.ack` (sent in the background; needs no runtime context).
    pub fn ack(mut self) {
        self.settle(Settle::Ack);
    }

    /// `basic.reject`, with or without requeue.
    pub fn reject(mut self, requeue: bool) {
        self.settle(Settle::Reject { requeue });
    }

    fn settle(&mut self, how: Settle) {
        let Some(acker) = self.inner.take() else {
            return;
        };
        let broker_id = self.broker_id;
        // Spawning on a runtime that has shut down drops the task: the
        // connection is gone with it, and the broker requeues.
        drop(self.handle.spawn(async move {
            let result = match how {
                Settle::Ack => acker.ack(lapin::options::BasicAckOptions::default()).await,
                Settle::Reject { requeue } => {
                    acker
                        .reject(lapin::options::BasicRejectOptions { requeue })
                        .await
                }
            };
            if let Err(e) = result {
                log::debug!("broker {broker_id}: {how:?} not sent (channel gone): {e}");
            }
        }));
    }
}

impl Drop for Acker {
    fn drop(&mut self) {
        self.settle(self.on_drop);
    }
}

#[derive(Clone, Copy, Debug)]
enum Settle {
    Ack,
    Reject { requeue: bool },
}

/// A publish the broker confirmed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Published {
    pub broker_id: u32,
    /// The Server-ID index handed to `body_for`.
    pub idx: u32,
}

/// What a publish carries besides its body.
#[derive(Clone, Copy, Debug, Default)]
pub struct PublishProperties<'a> {
    /// AMQP headers, each sent as a long string (the first of a repeated name).
    pub headers: &'a [(Vec<u8>, Vec<u8>)],
    /// `basic.publish` `mandatory`: the broker returns a message no queue takes.
    pub mandatory: bool,
    /// A query: only a broker whose reply queues are being consumed can
    /// bring its answer back, so only such brokers are candidates.
    pub needs_replies: bool,
}

/// Why a publish was not confirmed.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum PublishError {
    /// No candidate broker's publisher was connected when the publish started.
    NoBrokerConnected,
    /// A query, and no candidate broker has a consuming connection up to
    /// bring the reply back (it would only wait for its timeout).
    NoReplyConsumer,
    /// The only brokers that could take it block publishers or stopped
    /// confirming (see [`Slot`]'s probe): failed at once instead of waiting.
    Unavailable { broker_id: u32, reason: String },
    /// The broker answered with a negative confirm (every candidate that was tried).
    Nacked { broker_id: u32 },
    /// The deadline passed before any broker confirmed.
    Timeout,
    /// `consumer://<id>/` names no configured broker.
    UnknownBroker(u32),
    /// The channel or connection closed before the confirm, and no other
    /// candidate confirmed; the broker's reason (e.g. `NOT_FOUND - no exchange ...`).
    Closed(String),
    /// The exchange, routing key or a header name cannot be sent (longer than
    /// 255 bytes, or a header name that is not UTF-8); nothing was sent.
    Invalid(String),
    /// A `mandatory` publish that no queue took: the broker returned it
    /// (`basic.return`) with this reply code and text; `body` is the message.
    Returned {
        broker_id: u32,
        reply_code: u16,
        reply_text: String,
        body: Vec<u8>,
    },
}

impl fmt::Display for PublishError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PublishError::NoBrokerConnected => f.write_str("no broker connected"),
            PublishError::Unavailable { broker_id, reason } => {
                write!(f, "broker {broker_id} cannot take publishes now: {reason}")
            }
            PublishError::NoReplyConsumer => {
                f.write_str("no broker consumes its reply queues (consuming connections down)")
            }
            PublishError::Nacked { broker_id } => {
                write!(f, "broker {broker_id} refused the message (nack)")
            }
            PublishError::Timeout => f.write_str("no broker confirmed the message in time"),
            PublishError::UnknownBroker(id) => write!(f, "no broker with id {id}"),
            PublishError::Closed(reason) => write!(f, "not confirmed: {reason}"),
            PublishError::Invalid(reason) => write!(f, "cannot publish: {reason}"),
            PublishError::Returned {
                broker_id,
                reply_code,
                reply_text,
                ..
            } => write!(
                f,
                "broker {broker_id} returned the message (no queue took it): {reply_code} {reply_text}"
            ),
        }
    }
}

impl std::error::Error for PublishError {}

/// The broker connections; dropping it closes them (in the background).
pub struct Brokers {
    inner: Arc<Inner>,
    shutdown: Option<watch::Sender<()>>,
    tasks: Vec<JoinHandle<()>>,
}

impl fmt::Debug for Brokers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Brokers")
            .field("brokers", &self.inner.slots.len())
            .finish()
    }
}

/// State shared by the publish path and the connection tasks.
struct Inner {
    slots: Vec<Arc<Slot>>,
    /// Indexes into `slots` of the primary-zone brokers, in configuration order.
    primary: Vec<usize>,
    reply_queues: u32,
    /// Bumped whenever a publisher link appears or goes.
    epoch: watch::Sender<u64>,
}

/// One broker: its configuration and what its connections share.
pub(crate) struct Slot {
    pub(crate) broker: Broker,
    pub(crate) primary: bool,
    publisher: Mutex<Option<PubLink>>,
    next_idx: AtomicU32,
    /// Wakes the publisher task: its channel may need reopening.
    reopen: Notify,
    link_generation: AtomicU64,
    /// Per reply queue or subscription: reported failed (true) or working (false).
    failed: Mutex<HashMap<consumer::Unit, bool>>,
    /// Subscriptions never declared again on this broker.
    quarantined: Mutex<HashSet<usize>>,
    /// Deliveries rejected (or dropped, without acks) as unreadable.
    pub(crate) rejected: AtomicU64,
    /// Consuming connections up: they consume the reply queues (primary
    /// brokers), so a query can be answered only while this is not 0.
    pub(crate) consumers_up: AtomicU32,
    /// A publish waited here [`UNRESPONSIVE_AFTER`] or more without a
    /// confirm, and the broker has confirmed nothing since:
    /// publishes skip it (and fail at once when no other broker can take
    /// them) until the publisher's probe, or any publish, is confirmed.
    pub(crate) unresponsive: AtomicBool,
}

#[derive(Clone)]
struct PubLink {
    connection: lapin::ConnectionStatus,
    channel: lapin::Channel,
    generation: u64,
}

pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

impl Slot {
    fn new(broker: Broker, primary: bool) -> Slot {
        Slot {
            broker,
            primary,
            publisher: Mutex::new(None),
            next_idx: AtomicU32::new(0),
            reopen: Notify::new(),
            link_generation: AtomicU64::new(0),
            failed: Mutex::new(HashMap::new()),
            quarantined: Mutex::new(HashSet::new()),
            rejected: AtomicU64::new(0),
            consumers_up: AtomicU32::new(0),
            unresponsive: AtomicBool::new(false),
        }
    }

    /// Why publishes should not wait on this broker now: it blocks
    /// publishers (memory or disk alarm), or it stopped confirming.
    fn unavailable(&self, link: &PubLink) -> Option<&'static str> {
        if link.connection.blocked() {
            Some("the broker blocks publishers (memory or disk alarm)")
        } else if self.unresponsive.load(Ordering::Relaxed) {
            Some("the broker stopped confirming publishes")
        } else {
            None
        }
    }

    /// A publish timed out here: mark the broker (logged once per change)
    /// and have the publisher probe it.
    fn mark_unresponsive(&self) {
        if !self.unresponsive.swap(true, Ordering::Relaxed) {
            log::warn!(
                "broker {}: a publish was not confirmed in time; publishes skip this broker \
                 (failing at once when no other can take them) until it answers again",
                self.broker.id
            );
            self.reopen.notify_one();
        }
    }

    /// The broker confirmed a publish (or the probe).
    pub(crate) fn mark_answering(&self) {
        if self.unresponsive.swap(false, Ordering::Relaxed) {
            log::info!("broker {}: confirms publishes again", self.broker.id);
        }
    }

    /// The publisher's link, if its connection is open right now (its
    /// channel may be closed for a moment, until the publisher task reopens it).
    fn link(&self) -> Option<PubLink> {
        lock(&self.publisher)
            .clone()
            .filter(|link| link.connection.connected())
    }

    /// Records a failure (on any connection of this broker); true when it
    /// must be reported, i.e. the unit was not already failing.
    pub(crate) fn record_failed(&self, unit: consumer::Unit) -> bool {
        let mut failed = lock(&self.failed);
        !std::mem::replace(failed.entry(unit).or_insert(false), true)
    }

    /// Records a unit working; true when it had been reported failing.
    pub(crate) fn record_working(&self, unit: consumer::Unit) -> bool {
        let mut failed = lock(&self.failed);
        std::mem::replace(failed.entry(unit).or_insert(false), false)
    }

    /// Quarantines a subscription; true the first time.
    pub(crate) fn quarantine(&self, index: usize) -> bool {
        lock(&self.quarantined).insert(index)
    }

    pub(crate) fn is_quarantined(&self, index: usize) -> bool {
        lock(&self.quarantined).contains(&index)
    }
}

/// A broker that leaves a publish unconfirmed this long is taken as not
/// answering (see `Slot::unresponsive`).
const UNRESPONSIVE_AFTER: Duration = Duration::from_millis(500);

/// How a single attempt on one broker ended.
enum Attempt {
    Confirmed,
    Nacked,
    /// Confirmed, but returned first: no queue took it (mandatory publishes).
    Returned(Box<lapin::message::BasicReturnMessage>),
    /// The channel was closed because of this publish (or one just before it
    /// on the same channel): worth one more try on a fresh channel only.
    Refused(String),
    /// The channel or connection went away: worth retrying after a reconnect.
    Lost(String),
}

/// Per-candidate bookkeeping of one publish.
#[derive(Default)]
struct CandidateState {
    done: bool,
    refusals: u8,
    failed_generation: Option<u64>,
}

impl Brokers {
    /// Spawns one task per connection on the current tokio runtime and
    /// returns at once. Must be called from within a tokio runtime.
    pub fn start(
        brokers: Vec<Broker>,
        subscriptions: Vec<Subscription>,
        options: BrokerOptions,
    ) -> (Brokers, mpsc::Receiver<Event>) {
        let (events, receiver) = mpsc::channel(EVENT_QUEUE);
        let (shutdown, shutdown_rx) = watch::channel(());
        let (epoch, _) = watch::channel(0u64);
        let options = Arc::new(options);
        let subscriptions = Arc::new(subscriptions);
        let slots: Vec<Arc<Slot>> = brokers
            .into_iter()
            .map(|b| {
                let primary = b.zone == options.primary_zone;
                Arc::new(Slot::new(b, primary))
            })
            .collect();
        let primary = (0..slots.len()).filter(|&i| slots[i].primary).collect();
        let inner = Arc::new(Inner {
            slots,
            primary,
            reply_queues: options.reply_queues,
            epoch,
        });
        let runtime = async_rs::Runtime::tokio_current();
        let handle = tokio::runtime::Handle::current();
        let mut tasks = Vec::new();
        for slot in &inner.slots {
            log::info!(
                "broker {}: {} ({})",
                slot.broker.id,
                slot.broker.redacted_url(),
                if slot.primary { "primary" } else { "secondary" }
            );
            let ctx = |role| {
                Arc::new(connect::ConnCtx {
                    slot: slot.clone(),
                    role,
                    options: options.clone(),
                    runtime: runtime.clone(),
                    events: events.clone(),
                })
            };
            let (publisher_ctx, publisher_inner, publisher_shutdown) =
                (ctx(Role::Publisher), inner.clone(), shutdown_rx.clone());
            tasks.push(crate::task::spawn_supervised(
                "a broker's publisher connection",
                move || {
                    publisher::run(
                        publisher_ctx.clone(),
                        publisher_inner.clone(),
                        publisher_shutdown.clone(),
                    )
                },
            ));
            let consumers = if slot.primary {
                options.consumer_connections
            } else {
                1
            };
            for n in 0..consumers {
                let (consumer_ctx, consumer_subscriptions, consumer_handle, consumer_shutdown) = (
                    ctx(Role::Consumer(n)),
                    subscriptions.clone(),
                    handle.clone(),
                    shutdown_rx.clone(),
                );
                tasks.push(crate::task::spawn_supervised(
                    "a broker's consuming connection",
                    move || {
                        consumer::run(
                            consumer_ctx.clone(),
                            consumer_subscriptions.clone(),
                            consumer_handle.clone(),
                            consumer_shutdown.clone(),
                        )
                    },
                ));
            }
        }
        (
            Brokers {
                inner,
                shutdown: Some(shutdown),
                tasks,
            },
            receiver,
        )
    }

    /// True while the broker's publisher connection is open.
    pub fn is_connected(&self, broker_id: u32) -> bool {
        self.inner
            .slots
            .iter()
            .find(|s| s.broker.id == broker_id)
            .is_some_and(|s| s.link().is_some())
    }

    /// Deliveries the consuming connections rejected without requeue (or
    /// dropped, from queues consumed without acks) because the module cannot
    /// hand them to the script faithfully (see `consumer`), on every broker
    /// since the start: for the `rejected` statistic.
    pub fn rejected(&self) -> u64 {
        self.inner
            .slots
            .iter()
            .map(|s| s.rejected.load(Ordering::Relaxed))
            .sum()
    }

    /// Publishes with publisher confirms (see the module documentation).
    ///
    /// `target`: `None` = the primary-zone brokers in configuration order
    /// (failover: the first whose publisher is connected; if the publish
    /// fails, is nacked or its connection drops before the confirm, the next
    /// one, then earlier ones again once they reconnect, until `deadline`);
    /// `Some(id)` = that broker only. `body_for(broker_id, idx)` builds the
    /// body once the broker and the Server-ID index (round-robin over
    /// `0..reply_queues` per broker) are chosen; it may be called again for
    /// another broker after a failure.
    pub async fn publish(
        &self,
        target: Option<u32>,
        exchange: &str,
        routing_key: &str,
        headers: &[(Vec<u8>, Vec<u8>)],
        body_for: impl Fn(u32, u32) -> Vec<u8>,
        deadline: Instant,
    ) -> Result<Published, PublishError> {
        let how = PublishProperties {
            headers,
            mandatory: false,
            needs_replies: false,
        };
        self.publish_with(target, exchange, routing_key, how, body_for, deadline)
            .await
    }

    /// [`Brokers::publish`] with every property: with `mandatory`, a message
    /// no queue takes is returned by the broker and reported as
    /// [`PublishError::Returned`] (not tried on another broker: the broker
    /// works, the message has nowhere to go).
    pub async fn publish_with(
        &self,
        target: Option<u32>,
        exchange: &str,
        routing_key: &str,
        how: PublishProperties<'_>,
        body_for: impl Fn(u32, u32) -> Vec<u8>,
        deadline: Instant,
    ) -> Result<Published, PublishError> {
        let exchange = ShortString::try_new(exchange)
            .map_err(|_| PublishError::Invalid("exchange name longer than 255 bytes".into()))?;
        let routing_key = ShortString::try_new(routing_key)
            .map_err(|_| PublishError::Invalid("routing key longer than 255 bytes".into()))?;
        let properties = properties(how.headers)?;
        let options = BasicPublishOptions {
            mandatory: how.mandatory,
            immediate: false,
        };
        let candidates: Vec<usize> = match target {
            None => self.inner.primary.clone(),
            Some(id) => match self.inner.slots.iter().position(|s| s.broker.id == id) {
                Some(i) => vec![i],
                None => return Err(PublishError::UnknownBroker(id)),
            },
        };
        let candidates: Vec<usize> = if how.needs_replies {
            let answering: Vec<usize> = candidates
                .into_iter()
                .filter(|&i| self.inner.slots[i].consumers_up.load(Ordering::Relaxed) > 0)
                .collect();
            if answering.is_empty() {
                return Err(PublishError::NoReplyConsumer);
            }
            answering
        } else {
            candidates
        };
        let mut epoch = self.inner.epoch.subscribe();
        if !candidates
            .iter()
            .any(|&i| self.inner.slots[i].link().is_some())
        {
            return Err(PublishError::NoBrokerConnected);
        }
        let mut states: Vec<CandidateState> = candidates
            .iter()
            .map(|_| CandidateState::default())
            .collect();
        let mut last_error = PublishError::NoBrokerConnected;
        loop {
            epoch.borrow_and_update();
            // A broker that blocks publishers (memory or disk alarm) or
            // stopped confirming is skipped: waiting there would hold the
            // caller (a SIP worker) for the whole timeout. When it is all
            // there is, the publish fails at once.
            let mut unavailable = None;
            for n in 0..candidates.len() {
                let i = candidates[n];
                let slot = &self.inner.slots[i];
                let state = &mut states[n];
                if state.done {
                    continue;
                }
                let Some(link) = slot.link() else {
                    continue;
                };
                if state.failed_generation == Some(link.generation) {
                    continue;
                }
                if let Some(why) = slot.unavailable(&link) {
                    unavailable = Some((slot.broker.id, why));
                    continue;
                }
                let broker_id = slot.broker.id;
                let idx =
                    slot.next_idx.fetch_add(1, Ordering::Relaxed) % self.inner.reply_queues.max(1);
                let body = body_for(broker_id, idx);
                let started = Instant::now();
                let attempt = tokio::time::timeout_at(
                    deadline,
                    publish_once(&link, &exchange, &routing_key, &body, &properties, options),
                )
                .await
                .map_err(|_| {
                    // A caller's short deadline (a query with a tight
                    // timeout) says nothing about the broker's health.
                    if started.elapsed() >= UNRESPONSIVE_AFTER {
                        slot.mark_unresponsive();
                    }
                    PublishError::Timeout
                })?;
                match attempt {
                    Attempt::Confirmed => {
                        slot.mark_answering();
                        return Ok(Published { broker_id, idx });
                    }
                    Attempt::Returned(returned) => {
                        log::warn!(
                            "broker {broker_id}: publish to {exchange}/{routing_key} returned: {} {}",
                            returned.reply_code,
                            returned.reply_text
                        );
                        return Err(PublishError::Returned {
                            broker_id,
                            reply_code: returned.reply_code,
                            reply_text: returned.reply_text.to_string(),
                            body: returned.delivery.data,
                        });
                    }
                    Attempt::Nacked => {
                        log::warn!(
                            "broker {broker_id}: publish to {exchange}/{routing_key} nacked"
                        );
                        state.done = true;
                        last_error = PublishError::Nacked { broker_id };
                    }
                    Attempt::Refused(reason) if refused_for_another(&reason, exchange.as_str()) => {
                        // Another publish made the broker close the shared
                        // confirm channel: this one goes again once it reopens.
                        log::debug!(
                            "broker {broker_id}: publish to {exchange}/{routing_key} caught in \
                             another publish's channel error ({reason}); publishing it again"
                        );
                        state.failed_generation = Some(link.generation);
                        slot.reopen.notify_one();
                        last_error = PublishError::Closed(reason);
                    }
                    Attempt::Refused(reason) => {
                        log::warn!(
                            "broker {broker_id}: publish to {exchange}/{routing_key} refused: {reason}"
                        );
                        state.refusals += 1;
                        state.done = state.refusals >= 2;
                        state.failed_generation = Some(link.generation);
                        slot.reopen.notify_one();
                        last_error = PublishError::Closed(reason);
                    }
                    Attempt::Lost(reason) => {
                        log::warn!(
                            "broker {broker_id}: publish to {exchange}/{routing_key} not confirmed: {reason}"
                        );
                        state.failed_generation = Some(link.generation);
                        slot.reopen.notify_one();
                        last_error = PublishError::Closed(reason);
                    }
                }
            }
            if states.iter().all(|s| s.done) {
                return Err(last_error);
            }
            let can_try_now = candidates.iter().zip(&states).any(|(&i, s)| {
                let slot = &self.inner.slots[i];
                !s.done
                    && slot.link().is_some_and(|l| {
                        s.failed_generation != Some(l.generation) && slot.unavailable(&l).is_none()
                    })
            });
            if let (false, Some((broker_id, why))) = (can_try_now, unavailable) {
                return Err(PublishError::Unavailable {
                    broker_id,
                    reason: why.to_string(),
                });
            }
            if !can_try_now {
                match tokio::time::timeout_at(deadline, epoch.changed()).await {
                    Err(_) => return Err(PublishError::Timeout),
                    Ok(Err(_)) => return Err(PublishError::Closed("shutting down".into())),
                    Ok(Ok(())) => {}
                }
            }
        }
    }

    /// Closes every connection and waits (at most a few seconds) for it.
    pub async fn close(mut self) {
        self.shutdown.take();
        let tasks = std::mem::take(&mut self.tasks);
        let all = async {
            for task in tasks {
                let _ = task.await;
            }
        };
        if tokio::time::timeout(Duration::from_secs(5), all)
            .await
            .is_err()
        {
            log::warn!("broker connections did not close within 5 s");
        }
    }
}

/// `content_type = application/json` plus the headers as long strings;
/// nothing else (reference §6.3).
fn properties(headers: &[(Vec<u8>, Vec<u8>)]) -> Result<BasicProperties, PublishError> {
    let properties = BasicProperties::default().with_content_type("application/json".into());
    if headers.is_empty() {
        return Ok(properties);
    }
    let mut table = FieldTable::default();
    for (name, value) in headers {
        let name = std::str::from_utf8(name)
            .map_err(|_| PublishError::Invalid("a header name is not UTF-8".into()))?;
        let key = ShortString::try_new(name)
            .map_err(|_| PublishError::Invalid("a header name is longer than 255 bytes".into()))?;
        // A table keeps one value per name: the first, as RabbitMQ reads a
        // table with duplicates (the C module sends them all).
        if !table.contains_key(name) {
            table.insert(key, AMQPValue::LongString(LongString::from(value.clone())));
        }
    }
    Ok(properties.with_headers(table))
}

async fn publish_once(
    link: &PubLink,
    exchange: &ShortString,
    routing_key: &ShortString,
    body: &[u8],
    properties: &BasicProperties,
    options: BasicPublishOptions,
) -> Attempt {
    let confirm = match link
        .channel
        .basic_publish(
            exchange.clone(),
            routing_key.clone(),
            options,
            body,
            properties.clone(),
        )
        .await
    {
        Ok(confirm) => confirm,
        Err(e) => return failed(&e),
    };
    match confirm.await {
        Ok(Confirmation::Ack(Some(returned))) => Attempt::Returned(Box::new(returned)),
        Ok(Confirmation::Ack(None)) => Attempt::Confirmed,
        Ok(Confirmation::Nack(_)) => Attempt::Nacked,
        Ok(Confirmation::NotRequested) => {
            Attempt::Lost("the channel is not in confirm mode".into())
        }
        Err(e) => failed(&e),
    }
}

/// Whether the broker's reason for closing the channel names an exchange
/// other than `exchange` (`NOT_FOUND - no exchange 'x' in vhost '/'`,
/// `ACCESS_REFUSED - access to exchange 'x' ...`): the publish that caused it
/// was another one in flight on the same channel.
fn refused_for_another(reason: &str, exchange: &str) -> bool {
    let Some(at) = reason.find("exchange '") else {
        return false;
    };
    let named = &reason[at + "exchange '".len()..];
    match named.find('\'') {
        Some(end) => &named[..end] != exchange,
        None => false,
    }
}

fn failed(e: &lapin::Error) -> Attempt {
    if e.is_amqp_soft_error() {
        Attempt::Refused(connect::error_text(e))
    } else {
        Attempt::Lost(connect::error_text(e))
    }
}
