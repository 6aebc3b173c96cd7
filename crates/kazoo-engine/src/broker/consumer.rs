//! A consuming connection over lapin (`amqp_native_client 0`, and
//! `amqps://` brokers): declares the topology (the C module's order, see
//! `units`), consumes it, and replays it on every reconnect.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use lapin::options::{
    BasicConsumeOptions, BasicQosOptions, ExchangeBindOptions, ExchangeDeclareOptions,
    QueueBindOptions, QueueDeclareOptions,
};
use lapin::protocol::AMQPErrorKind;
use lapin::types::{FieldTable, ShortString};
use lapin::{Channel, Connection, Consumer, ErrorKind, ExchangeKind};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::acker::ChannelAcks;
use super::connect::{
    connection_loop, error_text, next, Backoff, ConnCtx, Reported, Serve, STABLE, WATCH_INTERVAL,
};
use super::lock;
use super::units::{DeclError, Unit, Units, BLAMED_CODES, DECLARE_TIMEOUT, REDECLARE_BACKOFF};
use crate::subscription::{ExchangeFlags, QueueFlags, Subscription};

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
    units: Units,
    connection: Arc<Connection>,
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
    type Link = Arc<Connection>;

    async fn serve(
        &mut self,
        connection: &mut Arc<Connection>,
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
        units: Units {
            ctx: ctx.clone(),
            subscriptions: subscriptions.clone(),
        },
        connection: connection.clone(),
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
        for unit in session.units.list() {
            let declared = tokio::select! {
                declared = session.declare(unit) => declared,
                _ = shutdown.changed() => return None,
            };
            let current = match declared {
                Ok(current) => {
                    session.units.working(unit).await;
                    Some(current)
                }
                Err(DeclError::Soft(reason)) => {
                    session.units.failed(unit, &reason).await;
                    None
                }
                Err(DeclError::Blamed(reason)) => {
                    session.units.quarantine(unit, &reason).await;
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
                                session.units.quarantine(unit, &reason).await;
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
                        session.units.quarantine(failure.unit, &failure.reason).await;
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

impl Session {
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
                self.units.what(unit)
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
        let ctx = &self.units.ctx;
        let acks = ChannelAcks::lapin(channel.clone(), self.handle.clone(), ctx.id());
        let none = FieldTable::default;
        // Every unit is consumed with acks, `no_ack` subscriptions too (the
        // service acks them once a worker has them): the prefetch is what
        // stops the broker from sending faster than the routes run.
        if ctx.options.prefetch > 0 {
            channel
                .basic_qos(ctx.options.prefetch, BasicQosOptions::default())
                .await
                .map_err(amqp)?;
        }
        let consume_with_acks = BasicConsumeOptions {
            no_ack: false,
            ..BasicConsumeOptions::default()
        };
        match unit {
            Unit::Reply { idx } => {
                let node = &ctx.options.node_hostname;
                let queue = short(
                    &crate::payload::reply_queue(node, ctx.id(), idx),
                    "the reply queue name",
                )?;
                let key = short(
                    &crate::payload::server_id(node, ctx.id(), idx),
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
                let Some(sub) = self.units.subscriptions.get(index) else {
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
                        crate::amqp::queue_arguments(sub.queue_flags),
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
            self.units.quarantine(unit, &reason).await;
        }
        reason
    }

    /// Consumes the unit; redeclares it with back-off when its channel
    /// closes or its declaration failed.
    async fn unit_task(self: Arc<Self>, unit: Unit, mut current: Option<UnitConsumer>) {
        let mut backoff = Backoff::new(REDECLARE_BACKOFF.0, REDECLARE_BACKOFF.1);
        loop {
            let (mut consumer, acks) = match current.take() {
                Some(unit_consumer) => unit_consumer,
                None => {
                    tokio::time::sleep(backoff.next_delay()).await;
                    let _declaring = self.declare_lock.lock().await;
                    match self.declare(unit).await {
                        Ok(consumer) => {
                            self.units.working(unit).await;
                            consumer
                        }
                        Err(DeclError::Soft(reason)) => {
                            self.units.failed(unit, &reason).await;
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
            let (ctx, units) = (&self.units.ctx, &self.units);
            log::debug!("{}: consuming the {}", ctx.name(), units.what(unit));
            let queue = consumer.queue();
            let consuming_since = Instant::now();
            let reason = loop {
                match next(&mut consumer).await {
                    Some(Ok(delivery)) => {
                        let names = (queue.as_str(), delivery.exchange.as_str());
                        units
                            .deliver(
                                unit,
                                &acks,
                                names,
                                delivery.delivery_tag,
                                delivery.redelivered,
                                delivery.routing_key.to_string(),
                                delivery.data,
                            )
                            .await;
                    }
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
                ctx.name(),
                units.what(unit)
            );
        }
    }
}
