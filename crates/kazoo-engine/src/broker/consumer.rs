//! A consuming connection: declares the topology (the C module's order), consumes
//! it, and replays it on every reconnect.
//!
//! Each reply queue and each subscription is a *unit* with its own channel.
//! Declarations never run concurrently on one connection, so an error that
//! makes the broker close the whole connection is blamed on the unit that
//! caused it: that subscription is quarantined on this broker (reported, and
//! skipped on later reconnects) instead of wedging or killing the connection
//! forever as in the C module. A channel-level error affects only its unit,
//! which is retried with back-off on a new channel.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lapin::options::{
    BasicConsumeOptions, BasicQosOptions, ExchangeBindOptions, ExchangeDeclareOptions,
    QueueBindOptions, QueueDeclareOptions,
};
use lapin::protocol::AMQPErrorKind;
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{Channel, Connection, Consumer, ErrorKind, ExchangeKind};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::acker::ChannelAcks;
use super::connect::{
    connection_loop, error_text, next, Backoff, ConnCtx, Reported, Serve, STABLE, WATCH_INTERVAL,
};
use super::{lock, Acker, Consumed, Event, Source};
use crate::subscription::{ExchangeFlags, QueueFlags, Subscription};

/// One unit's declaration may take this long before the connection is
/// considered stuck.
const DECLARE_TIMEOUT: Duration = Duration::from_secs(15);

/// Hard (connection-level) AMQP errors that a declaration itself causes:
/// 501 frame, 502 syntax, 503 command invalid (e.g. an unknown exchange
/// type), 504 channel error, 505 unexpected frame, 530 not allowed, 540 not
/// implemented. Others (320 connection forced, 541 internal error...) are
/// the broker's own doing.
const BLAMED_CODES: &[u16] = &[501, 502, 503, 504, 505, 530, 540];

/// A reply queue or a subscription: declared and consumed on its own channel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Unit {
    Reply { idx: u32 },
    Subscription { index: usize },
}

enum DeclError {
    /// Channel-level: only this unit failed.
    Soft(String),
    /// This unit made the broker close the connection.
    Blamed(String),
    /// The connection is gone, for another reason.
    Gone(String),
}

/// A unit being consumed, and the settlements of its channel's deliveries.
type UnitConsumer = (Consumer, Arc<ChannelAcks>);

/// Why a unit task stopped the connection.
struct ConnFailure {
    unit: Unit,
    blamed: bool,
    reason: String,
}

/// Shared by a connection's unit tasks.
struct Session {
    ctx: Arc<ConnCtx>,
    connection: Arc<Connection>,
    subscriptions: Arc<Vec<Subscription>>,
    handle: tokio::runtime::Handle,
    declare_lock: tokio::sync::Mutex<()>,
    /// The unit being declared right now (declarations are serialized by
    /// `declare_lock`): the one to blame for a connection-level error.
    declaring: Mutex<Option<Unit>>,
    failures: mpsc::UnboundedSender<ConnFailure>,
}

pub(crate) async fn run(
    ctx: Arc<ConnCtx>,
    subscriptions: Arc<Vec<Subscription>>,
    handle: tokio::runtime::Handle,
    shutdown: watch::Receiver<()>,
) {
    let mut consumer = Consuming {
        ctx: ctx.clone(),
        subscriptions,
        handle,
    };
    connection_loop(&ctx, shutdown, &mut consumer).await;
}

/// What a consuming connection serves.
struct Consuming {
    ctx: Arc<ConnCtx>,
    subscriptions: Arc<Vec<Subscription>>,
    handle: tokio::runtime::Handle,
}

impl Serve for Consuming {
    async fn serve(
        &mut self,
        connection: &Arc<Connection>,
        reported: &mut Reported,
        shutdown: &mut watch::Receiver<()>,
    ) -> Option<String> {
        serve(
            &self.ctx,
            connection,
            &self.subscriptions,
            &self.handle,
            reported,
            shutdown,
        )
        .await
    }
}

/// The units this connection declares, in the C module's order.
fn units(ctx: &ConnCtx, subscriptions: &[Subscription]) -> Vec<Unit> {
    let mut units = Vec::new();
    if ctx.slot.primary {
        units.extend((0..ctx.options.reply_queues).map(|idx| Unit::Reply { idx }));
    }
    for (index, sub) in subscriptions.iter().enumerate() {
        if (ctx.slot.primary || sub.federate) && !ctx.slot.is_quarantined(index) {
            units.push(Unit::Subscription { index });
        }
    }
    units
}

/// Serves one connection; returns why it ended, or None on shutdown.
async fn serve(
    ctx: &Arc<ConnCtx>,
    connection: &Arc<Connection>,
    subscriptions: &Arc<Vec<Subscription>>,
    handle: &tokio::runtime::Handle,
    reported: &mut Reported,
    shutdown: &mut watch::Receiver<()>,
) -> Option<String> {
    let mut events = Box::pin(connection.events_listener());
    let (failures, mut failed) = mpsc::unbounded_channel();
    let session = Arc::new(Session {
        ctx: ctx.clone(),
        connection: connection.clone(),
        subscriptions: subscriptions.clone(),
        handle: handle.clone(),
        declare_lock: tokio::sync::Mutex::new(()),
        declaring: Mutex::new(None),
        failures,
    });
    // Dropped on return: aborts every unit task of this connection.
    let mut tasks = JoinSet::new();
    {
        // The first pass declares everything in order; units that failed at
        // channel level retry on their own afterwards.
        let _declaring = session.declare_lock.lock().await;
        for unit in units(ctx, subscriptions) {
            let declared = tokio::select! {
                declared = session.declare(unit) => declared,
                _ = shutdown.changed() => return None,
            };
            let current = match declared {
                Ok(current) => {
                    session.unit_working(unit).await;
                    Some(current)
                }
                Err(DeclError::Soft(reason)) => {
                    session.unit_failed(unit, &reason).await;
                    None
                }
                Err(DeclError::Blamed(reason)) => {
                    session.quarantine(unit, &reason).await;
                    return Some(reason);
                }
                Err(DeclError::Gone(reason)) => {
                    // The operation may have seen only the closed connection;
                    // the broker's reason comes as an event.
                    let until = Instant::now() + Duration::from_millis(300);
                    while let Ok(Some(event)) =
                        tokio::time::timeout_at(until, next(&mut events)).await
                    {
                        if let lapin::Event::Error(e) = event {
                            if blameable(&e) {
                                let reason = error_text(&e);
                                session.quarantine(unit, &reason).await;
                                return Some(reason);
                            }
                        }
                    }
                    return Some(reason);
                }
            };
            tasks.spawn(session.clone().unit_task(unit, current));
        }
    }
    ctx.report_up(reported).await;
    loop {
        tokio::select! {
            event = next(&mut events) => match event {
                Some(lapin::Event::Error(e)) if e.is_amqp_soft_error() => {
                    log::debug!("{}: a channel closed: {}", ctx.name(), error_text(&e));
                }
                Some(lapin::Event::Error(e)) => return Some(session.connection_error(&e).await),
                Some(_) => {}
                None => return Some("connection closed".into()),
            },
            failure = failed.recv() => {
                if let Some(failure) = failure {
                    if failure.blamed {
                        session.quarantine(failure.unit, &failure.reason).await;
                    }
                    return Some(failure.reason);
                }
            }
            _ = tokio::time::sleep(WATCH_INTERVAL) => {}
            _ = shutdown.changed() => return None,
        }
        if !connection.status().connected() {
            // The broker's reason may be on its way as an event.
            let until = Instant::now() + Duration::from_millis(200);
            while let Ok(Some(event)) = tokio::time::timeout_at(until, next(&mut events)).await {
                if let lapin::Event::Error(e) = event {
                    if !e.is_amqp_soft_error() {
                        return Some(session.connection_error(&e).await);
                    }
                }
            }
            return Some("connection closed by the broker".into());
        }
    }
}

/// A connection-level error that a declaration causes (see [`BLAMED_CODES`]).
fn blameable(e: &lapin::Error) -> bool {
    match e.kind() {
        ErrorKind::ProtocolError(amqp) => {
            matches!(amqp.kind(), AMQPErrorKind::Hard(_)) && BLAMED_CODES.contains(&amqp.get_id())
        }
        _ => false,
    }
}

fn short(text: &str, what: &str) -> Result<ShortString, DeclError> {
    ShortString::try_new(text)
        .map_err(|_| DeclError::Soft(format!("{what} is longer than 255 bytes")))
}

fn exchange_options(flags: ExchangeFlags) -> ExchangeDeclareOptions {
    ExchangeDeclareOptions {
        passive: flags.passive,
        durable: flags.durable,
        auto_delete: flags.auto_delete,
        internal: flags.internal,
        nowait: false,
    }
}

fn queue_options(flags: QueueFlags) -> QueueDeclareOptions {
    QueueDeclareOptions {
        passive: flags.passive,
        durable: flags.durable,
        exclusive: flags.exclusive,
        auto_delete: flags.auto_delete,
        nowait: false,
    }
}

/// `x-queue-type: quorum` for a quorum queue, else none (the broker's default type).
fn queue_arguments(flags: QueueFlags) -> FieldTable {
    let mut arguments = FieldTable::default();
    if flags.quorum {
        arguments.insert(
            "x-queue-type".into(),
            AMQPValue::LongString(LongString::from("quorum")),
        );
    }
    arguments
}

impl Session {
    fn what(&self, unit: Unit) -> String {
        match unit {
            Unit::Reply { idx } => format!(
                "reply queue {}",
                crate::payload::reply_queue(&self.ctx.options.node_hostname, self.ctx.id(), idx)
            ),
            Unit::Subscription { index } => format!("subscription {index}"),
        }
    }

    fn classify(&self, e: &lapin::Error) -> DeclError {
        let text = error_text(e);
        match e.kind() {
            _ if blameable(e) => DeclError::Blamed(text),
            ErrorKind::ProtocolError(amqp) if matches!(amqp.kind(), AMQPErrorKind::Soft(_)) => {
                DeclError::Soft(text)
            }
            ErrorKind::ProtocolError(_) => DeclError::Gone(text),
            _ if self.connection.status().connected() => DeclError::Soft(text),
            _ => DeclError::Gone(text),
        }
    }

    /// Opens the unit's channel, declares what it needs and starts consuming.
    async fn declare(&self, unit: Unit) -> Result<UnitConsumer, DeclError> {
        *lock(&self.declaring) = Some(unit);
        let result = match tokio::time::timeout(DECLARE_TIMEOUT, self.declare_steps(unit)).await {
            Ok(result) => result,
            Err(_) => Err(DeclError::Gone(format!(
                "declaring the {} took longer than {DECLARE_TIMEOUT:?}",
                self.what(unit)
            ))),
        };
        // After a connection-level failure the mark stays: the connection
        // task may see the broker's error before this unit reports it.
        if matches!(result, Ok(_) | Err(DeclError::Soft(_))) {
            *lock(&self.declaring) = None;
        }
        result
    }

    async fn declare_steps(&self, unit: Unit) -> Result<UnitConsumer, DeclError> {
        let amqp = |e: lapin::Error| self.classify(&e);
        let channel: Channel = self.connection.create_channel().await.map_err(amqp)?;
        let acks = ChannelAcks::new(channel.clone(), self.handle.clone(), self.ctx.id());
        let none = FieldTable::default;
        // Every unit is consumed with acks, `no_ack` subscriptions too (the
        // service acks them once a worker has them): the prefetch is what
        // stops the broker from sending faster than the routes run.
        if self.ctx.options.prefetch > 0 {
            channel
                .basic_qos(self.ctx.options.prefetch, BasicQosOptions::default())
                .await
                .map_err(amqp)?;
        }
        let consume_with_acks = BasicConsumeOptions {
            no_ack: false,
            ..BasicConsumeOptions::default()
        };
        match unit {
            Unit::Reply { idx } => {
                let node = &self.ctx.options.node_hostname;
                let queue = short(
                    &crate::payload::reply_queue(node, self.ctx.id(), idx),
                    "the reply queue name",
                )?;
                let key = short(
                    &crate::payload::server_id(node, self.ctx.id(), idx),
                    "the reply binding key",
                )?;
                let targeted: ShortString = crate::payload::TARGETED_EXCHANGE.into();
                channel
                    .exchange_declare(
                        targeted.clone(),
                        ExchangeKind::Direct,
                        ExchangeDeclareOptions::default(),
                        none(),
                    )
                    .await
                    .map_err(amqp)?;
                // Durable + auto_delete, not the C module's transient queue:
                // RabbitMQ 4 refuses transient non-exclusive queues.
                let options = QueueDeclareOptions {
                    durable: true,
                    auto_delete: true,
                    ..QueueDeclareOptions::default()
                };
                channel
                    .queue_declare(queue.clone(), options, none())
                    .await
                    .map_err(amqp)?;
                channel
                    .queue_bind(
                        queue.clone(),
                        targeted,
                        key,
                        QueueBindOptions::default(),
                        none(),
                    )
                    .await
                    .map_err(amqp)?;
                channel
                    .basic_consume(queue, ShortString::default(), consume_with_acks, none())
                    .await
                    .map(|consumer| (consumer, acks))
                    .map_err(amqp)
            }
            Unit::Subscription { index } => {
                let Some(sub) = self.subscriptions.get(index) else {
                    return Err(DeclError::Soft("no such subscription".into()));
                };
                let exchange = short(&sub.exchange, "the exchange name")?;
                channel
                    .exchange_declare(
                        exchange.clone(),
                        ExchangeKind::Custom(sub.exchange_type.clone()),
                        exchange_options(sub.exchange_flags),
                        none(),
                    )
                    .await
                    .map_err(amqp)?;
                for binding in &sub.exchange_bindings {
                    let source = short(&binding.source, "an exchange-bindings source")?;
                    channel
                        .exchange_declare(
                            source.clone(),
                            ExchangeKind::Custom(binding.exchange_type.clone()),
                            exchange_options(binding.flags),
                            none(),
                        )
                        .await
                        .map_err(amqp)?;
                    for key in &binding.routing {
                        channel
                            .exchange_bind(
                                exchange.clone(),
                                source.clone(),
                                short(key, "an exchange-bindings routing key")?,
                                ExchangeBindOptions::default(),
                                none(),
                            )
                            .await
                            .map_err(amqp)?;
                    }
                }
                let queue = channel
                    .queue_declare(
                        short(&sub.queue, "the queue name")?,
                        queue_options(sub.queue_flags),
                        queue_arguments(sub.queue_flags),
                    )
                    .await
                    .map_err(amqp)?;
                // An empty name asked the broker to name the queue.
                let queue = queue.name().clone();
                let empty = [String::new()];
                let keys = if sub.routing.is_empty() {
                    &empty[..]
                } else {
                    &sub.routing[..]
                };
                for key in keys {
                    channel
                        .queue_bind(
                            queue.clone(),
                            exchange.clone(),
                            short(key, "a routing key")?,
                            QueueBindOptions::default(),
                            none(),
                        )
                        .await
                        .map_err(amqp)?;
                }
                channel
                    .basic_consume(queue, ShortString::default(), consume_with_acks, none())
                    .await
                    .map(|consumer| (consumer, acks))
                    .map_err(amqp)
            }
        }
    }

    /// The connection failed with `e`: quarantines the unit being declared
    /// if it caused it; returns the reason.
    async fn connection_error(&self, e: &lapin::Error) -> String {
        let reason = error_text(e);
        let declaring = *lock(&self.declaring);
        if let (true, Some(unit)) = (blameable(e), declaring) {
            self.quarantine(unit, &reason).await;
        }
        reason
    }

    async fn unit_working(&self, unit: Unit) {
        if self.ctx.slot.record_working(unit) {
            log::info!("{}: the {} works again", self.ctx.name(), self.what(unit));
            if let Unit::Subscription { index } = unit {
                self.ctx
                    .send(Event::SubscriptionWorking {
                        index,
                        broker_id: self.ctx.id(),
                    })
                    .await;
            }
        }
    }

    /// Logs and reports a failure once per change (retries stay at debug).
    async fn unit_failed(&self, unit: Unit, reason: &str) {
        if !self.ctx.slot.record_failed(unit) {
            log::debug!(
                "{}: the {} still fails: {reason}",
                self.ctx.name(),
                self.what(unit)
            );
            return;
        }
        log::error!(
            "{}: the {} failed (retrying): {reason}",
            self.ctx.name(),
            self.what(unit)
        );
        if let Unit::Subscription { index } = unit {
            self.ctx
                .send(Event::SubscriptionFailed {
                    index,
                    broker_id: self.ctx.id(),
                    reason: reason.to_string(),
                })
                .await;
        }
    }

    async fn quarantine(&self, unit: Unit, reason: &str) {
        match unit {
            Unit::Reply { .. } => {
                log::error!(
                    "{}: the broker closed the connection over the {}: {reason}",
                    self.ctx.name(),
                    self.what(unit)
                );
            }
            Unit::Subscription { index } => {
                if self.ctx.slot.quarantine(index) {
                    self.ctx.slot.record_failed(unit);
                    let reason = format!(
                        "{reason}; the broker closed the whole connection over it, \
                         so it is no longer declared on this broker"
                    );
                    log::error!(
                        "{}: subscription {index} quarantined: {reason}",
                        self.ctx.name()
                    );
                    self.ctx
                        .send(Event::SubscriptionFailed {
                            index,
                            broker_id: self.ctx.id(),
                            reason,
                        })
                        .await;
                }
            }
        }
    }

    /// Consumes the unit; redeclares it with back-off when its channel
    /// closes or its declaration failed.
    async fn unit_task(self: Arc<Self>, unit: Unit, mut current: Option<UnitConsumer>) {
        let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(30));
        loop {
            let (mut consumer, acks) = match current.take() {
                Some(unit_consumer) => unit_consumer,
                None => {
                    tokio::time::sleep(backoff.next_delay()).await;
                    let _declaring = self.declare_lock.lock().await;
                    match self.declare(unit).await {
                        Ok(consumer) => {
                            self.unit_working(unit).await;
                            consumer
                        }
                        Err(DeclError::Soft(reason)) => {
                            self.unit_failed(unit, &reason).await;
                            continue;
                        }
                        Err(DeclError::Blamed(reason)) => {
                            let _ = self.failures.send(ConnFailure {
                                unit,
                                blamed: true,
                                reason,
                            });
                            return;
                        }
                        Err(DeclError::Gone(reason)) => {
                            let _ = self.failures.send(ConnFailure {
                                unit,
                                blamed: false,
                                reason,
                            });
                            return;
                        }
                    }
                }
            };
            log::debug!("{}: consuming the {}", self.ctx.name(), self.what(unit));
            let queue = consumer.queue();
            let consuming_since = Instant::now();
            let reason = loop {
                match next(&mut consumer).await {
                    Some(Ok(delivery)) if unreadable(&delivery) => {
                        self.refuse(unit, &queue, &acks, delivery)
                    }
                    Some(Ok(delivery)) => self.forward(unit, &acks, delivery).await,
                    Some(Err(e)) => break error_text(&e),
                    None => break "the consumer was cancelled".to_string(),
                }
            };
            drop(consumer);
            if consuming_since.elapsed() >= STABLE {
                backoff.reset();
            }
            // A lost connection also ends here: the connection task notices
            // it and aborts this task before the back-off ends.
            log::warn!(
                "{}: consuming the {} stopped: {reason}",
                self.ctx.name(),
                self.what(unit)
            );
        }
    }

    /// An [`unreadable`] delivery: rejected without requeue (dead-lettered
    /// if the queue has a dead-letter exchange); logged and counted, never
    /// handed to the script.
    fn refuse(
        &self,
        unit: Unit,
        queue: &ShortString,
        acks: &Arc<ChannelAcks>,
        delivery: lapin::message::Delivery,
    ) {
        self.ctx.slot.rejected.fetch_add(1, Ordering::Relaxed);
        log::error!(
            "{}: rejected (not requeued) a message from queue {} (exchange {}) on the {}: its \
             routing key is not UTF-8 (received as {}); the script would see another key",
            self.ctx.name(),
            safe(queue.as_str()),
            safe(delivery.exchange.as_str()),
            self.what(unit),
            safe(delivery.routing_key.as_str()),
        );
        self.acker(unit, acks, &delivery).reject(false);
    }

    /// The [`Acker`] of a delivery on `unit`: requeued when dropped unused
    /// for subscriptions with `no_ack: 0`, acked for the others.
    fn acker(
        &self,
        unit: Unit,
        acks: &Arc<ChannelAcks>,
        delivery: &lapin::message::Delivery,
    ) -> Acker {
        let requeue_on_drop = match unit {
            Unit::Reply { .. } => false,
            Unit::Subscription { index } => {
                self.subscriptions.get(index).is_some_and(|s| !s.no_ack)
            }
        };
        acks.acker(delivery.delivery_tag, requeue_on_drop)
    }

    async fn forward(
        &self,
        unit: Unit,
        acks: &Arc<ChannelAcks>,
        delivery: lapin::message::Delivery,
    ) {
        log::trace!(
            "{}: delivery {} on the {} ({} bytes)",
            self.ctx.name(),
            delivery.delivery_tag,
            self.what(unit),
            delivery.data.len()
        );
        let source = match unit {
            Unit::Reply { idx } => Source::Reply { idx },
            Unit::Subscription { index } => Source::Subscription { index },
        };
        let ack = self.acker(unit, acks, &delivery);
        self.ctx
            .send(Event::Consumed(Consumed {
                broker_id: self.ctx.id(),
                zone: self.ctx.slot.broker.zone.clone(),
                source,
                routing_key: delivery.routing_key.to_string(),
                body: delivery.data,
                redelivered: delivery.redelivered,
                ack,
            }))
            .await;
    }
}

/// A delivery the module cannot hand to the script faithfully: its routing
/// key (`$kzRK`) was not UTF-8. lapin's parser (amq-protocol-types, patched:
/// see `patches/amq-protocol-types/PATCHED.md`) decodes such bytes to U+FFFD
/// instead of dropping the connection, so U+FFFD is what is seen here; a
/// publisher sending U+FFFD itself is refused alike (no Kazoo application
/// does: it %-encodes routing keys). Invalid UTF-8 elsewhere (the exchange
/// name, properties, header names) does not matter: the script sees only
/// the routing key and the body, which is bytes.
fn unreadable(delivery: &lapin::message::Delivery) -> bool {
    delivery
        .routing_key
        .as_str()
        .contains(char::REPLACEMENT_CHARACTER)
}

/// A name or key for a log line: quoted, control and non-ASCII characters
/// escaped (U+FFFD shows as `\u{fffd}`).
fn safe(text: &str) -> String {
    format!("\"{}\"", text.escape_default())
}
