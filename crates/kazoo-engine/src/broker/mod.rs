//! Broker connections, behind our own interface: on the module's own AMQP
//! client (`native`, `native_consumer`, `native_publisher`, over
//! [`crate::amqp`]) by default, over lapin (`consumer`, `publisher`) for
//! `amqps://` brokers and with `native_client` off. Both serve the same
//! units (`units`), acks (`acker`) and publish path (`publish`).
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
//! Differences from the C module, on purpose:
//! - the broker closing a connection or a channel is noticed at once (every
//!   frame is read); publishes in flight fail or are retried, never
//!   reported as confirmed when they were not;
//! - a subscription whose declaration fails at channel level is retried with
//!   back-off on its own channel; one that makes the broker close the whole
//!   connection (e.g. an unknown exchange type) is quarantined on that broker
//!   after the first time, so the rest of the connection keeps working;
//! - reply queues are declared durable + auto_delete (C: transient +
//!   auto_delete, which RabbitMQ 4 refuses for non-exclusive queues);
//! - `heartbeat_secs = 0` does not disable heartbeats: the broker's
//!   proposal (RabbitMQ: 60 s) is taken, so dead TCP peers are noticed.
//! - every consumer acks (`no_ack` subscriptions and reply queues too), so
//!   that `basic.qos` bounds what the broker sends ahead of the routes;
//! - a delivery whose routing key is not UTF-8 is rejected without requeue,
//!   logged and counted ([`Brokers::rejected`]),
//!   never forwarded; bad bytes elsewhere (properties, header names) and
//!   deeply nested headers are read lossily by the patched
//!   amq-protocol-types, so that no delivery closes the connection.
//!
//! Credentials never appear in log lines or error texts.

mod acker;
mod connect;
mod consumer;
mod native;
mod native_consumer;
mod native_publisher;
mod options;
mod publish;
mod publisher;
mod slot;
mod tls;
mod units;

pub use acker::Acker;
pub(crate) use native::LAST_CHANNEL;
pub use options::{BrokerOptions, TlsOptions, HANDSHAKE_TIMEOUT};
pub(crate) use publish::{names, properties};
pub use publish::{PublishError, PublishProperties, Published};
use slot::Slot;
pub(crate) use units::{
    queue_subscription, safe as log_safe, unreadable as unreadable_routing_key,
};

use std::fmt;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::config::{Broker, Scheme};
use crate::subscription::Subscription;

/// How many events may wait in the channel returned by [`Brokers::start`]
/// before the connection tasks wait for the reader.
pub const EVENT_QUEUE: usize = 4096;

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
    Consumed(Consumed),
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
pub struct Consumed {
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

pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
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
                    tls_cache: Mutex::new(None),
                    events: events.clone(),
                })
            };
            let (publisher_ctx, publisher_inner, publisher_shutdown) =
                (ctx(Role::Publisher), inner.clone(), shutdown_rx.clone());
            let native = options.native_client && slot.broker.scheme == Scheme::Amqp;
            tasks.push(if native {
                crate::task::spawn_supervised("a broker's publisher connection", move || {
                    native_publisher::run(
                        publisher_ctx.clone(),
                        publisher_inner.clone(),
                        publisher_shutdown.clone(),
                    )
                })
            } else {
                crate::task::spawn_supervised("a broker's publisher connection", move || {
                    publisher::run(
                        publisher_ctx.clone(),
                        publisher_inner.clone(),
                        publisher_shutdown.clone(),
                    )
                })
            });
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
                tasks.push(if native {
                    crate::task::spawn_supervised("a broker's consuming connection", move || {
                        native_consumer::run(
                            consumer_ctx.clone(),
                            consumer_subscriptions.clone(),
                            consumer_shutdown.clone(),
                        )
                    })
                } else {
                    crate::task::spawn_supervised("a broker's consuming connection", move || {
                        consumer::run(
                            consumer_ctx.clone(),
                            consumer_subscriptions.clone(),
                            consumer_handle.clone(),
                            consumer_shutdown.clone(),
                        )
                    })
                });
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

    /// Deliveries the consuming connections rejected without requeue because the module cannot
    /// hand them to the script faithfully (see `consumer`), on every broker
    /// since the start: for the `rejected` statistic.
    pub fn rejected(&self) -> u64 {
        self.inner
            .slots
            .iter()
            .map(|s| s.rejected.load(Ordering::Relaxed))
            .sum()
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
