//! What a consuming connection declares and consumes, and how it reports
//! and forwards, whichever AMQP client drives it (`consumer`: lapin;
//! `native_consumer`: the module's own core).
//!
//! Each reply queue and each subscription is a *unit* with its own channel.
//! Declarations never run concurrently on one connection, so an error that
//! makes the broker close the whole connection is blamed on the unit that
//! caused it: that subscription is quarantined on this broker (reported, and
//! skipped on later reconnects) instead of wedging or killing the connection
//! forever as in the C module. A channel-level error affects only its unit,
//! which is retried with back-off on a new channel.
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use super::acker::ChannelAcks;
use super::connect::ConnCtx;
use super::{Consumed, Event, Source};
use amq_protocol::types::ShortString;

use crate::amqp::Conn;
use crate::subscription::Subscription;

/// One unit's declaration may take this long before the connection is
/// considered stuck.
pub(super) const DECLARE_TIMEOUT: Duration = Duration::from_secs(15);

/// A unit whose channel closed is declared again after this back-off
/// (doubling up to the second value).
pub(super) const REDECLARE_BACKOFF: (Duration, Duration) =
    (Duration::from_secs(1), Duration::from_secs(30));

/// Hard (connection-level) AMQP errors that a declaration itself causes:
/// 501 frame, 502 syntax, 503 command invalid (e.g. an unknown exchange
/// type), 504 channel error, 505 unexpected frame, 530 not allowed, 540 not
/// implemented. Others (320 connection forced, 541 internal error...) are
/// the broker's own doing.
pub(super) const BLAMED_CODES: &[u16] = &[501, 502, 503, 504, 505, 530, 540];

/// A reply queue or a subscription: declared and consumed on its own channel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Unit {
    Reply { idx: u32 },
    Subscription { index: usize },
}

/// Why declaring a unit failed.
pub(super) enum DeclError {
    /// Channel-level: only this unit failed.
    Soft(String),
    /// This unit made the broker close the connection.
    Blamed(String),
    /// The connection is gone, for another reason.
    Gone(String),
}

/// A consuming connection's units and where their deliveries go.
pub(super) struct Units {
    pub(super) ctx: Arc<ConnCtx>,
    pub(super) subscriptions: Arc<Vec<Subscription>>,
}

impl Units {
    /// The units this connection declares, in the C module's order.
    pub(super) fn list(&self) -> Vec<Unit> {
        let ctx = &self.ctx;
        let mut units = Vec::new();
        if ctx.slot.primary {
            units.extend((0..ctx.options.reply_queues).map(|idx| Unit::Reply { idx }));
        }
        for (index, sub) in self.subscriptions.iter().enumerate() {
            let in_workers =
                ctx.options.workers_consume && crate::worker_consume::consumed_in_workers(sub);
            if (ctx.slot.primary || sub.federate) && !in_workers && !ctx.slot.is_quarantined(index)
            {
                units.push(Unit::Subscription { index });
            }
        }
        units
    }

    pub(super) fn what(&self, unit: Unit) -> String {
        match unit {
            Unit::Reply { idx } => format!(
                "reply queue {}",
                crate::payload::reply_queue(&self.ctx.options.node_hostname, self.ctx.id(), idx)
            ),
            Unit::Subscription { index } => format!("subscription {index}"),
        }
    }

    pub(super) async fn working(&self, unit: Unit) {
        let ctx = &self.ctx;
        if ctx.slot.record_working(unit) {
            log::info!("{}: the {} works again", ctx.name(), self.what(unit));
            if let Unit::Subscription { index } = unit {
                ctx.send(Event::SubscriptionWorking {
                    index,
                    broker_id: ctx.id(),
                })
                .await;
            }
        }
    }

    /// Logs and reports a failure once per change (retries stay at debug).
    pub(super) async fn failed(&self, unit: Unit, reason: &str) {
        let ctx = &self.ctx;
        if !ctx.slot.record_failed(unit) {
            log::debug!(
                "{}: the {} still fails: {reason}",
                ctx.name(),
                self.what(unit)
            );
            return;
        }
        log::error!(
            "{}: the {} failed (retrying): {reason}",
            ctx.name(),
            self.what(unit)
        );
        if let Unit::Subscription { index } = unit {
            ctx.send(Event::SubscriptionFailed {
                index,
                broker_id: ctx.id(),
                reason: reason.to_string(),
            })
            .await;
        }
    }

    pub(super) async fn quarantine(&self, unit: Unit, reason: &str) {
        let ctx = &self.ctx;
        match unit {
            Unit::Reply { .. } => {
                log::error!(
                    "{}: the broker closed the connection over the {}: {reason}",
                    ctx.name(),
                    self.what(unit)
                );
            }
            Unit::Subscription { index } => {
                if ctx.slot.quarantine(index) {
                    ctx.slot.record_failed(unit);
                    let reason = format!(
                        "{reason}; the broker closed the whole connection over it, \
                         so it is no longer declared on this broker"
                    );
                    log::error!("{}: subscription {index} quarantined: {reason}", ctx.name());
                    ctx.send(Event::SubscriptionFailed {
                        index,
                        broker_id: ctx.id(),
                        reason,
                    })
                    .await;
                }
            }
        }
    }

    /// Hands a delivery of `unit` to the service with its [`super::Acker`]
    /// (requeued when dropped unused for subscriptions with `no_ack: 0`,
    /// acked for the others); an [`unreadable`] one is rejected without
    /// requeue (dead-lettered if the queue has a dead-letter exchange),
    /// logged and counted, never handed to the script.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn deliver(
        &self,
        unit: Unit,
        acks: &Arc<ChannelAcks>,
        (queue, exchange): (&str, &str),
        tag: u64,
        redelivered: bool,
        routing_key: String,
        body: Vec<u8>,
    ) {
        let ctx = &self.ctx;
        let requeue_on_drop = match unit {
            Unit::Reply { .. } => false,
            Unit::Subscription { index } => {
                self.subscriptions.get(index).is_some_and(|s| !s.no_ack)
            }
        };
        let ack = acks.acker(tag, requeue_on_drop);
        if unreadable(&routing_key) {
            ctx.slot.rejected.fetch_add(1, Ordering::Relaxed);
            log::error!(
                "{}: rejected (not requeued) a message from queue {} (exchange {}) on the {}: its \
                 routing key is not UTF-8 (received as {}); the script would see another key",
                ctx.name(),
                safe(queue),
                safe(exchange),
                self.what(unit),
                safe(&routing_key),
            );
            ack.reject(false);
            return;
        }
        log::trace!(
            "{}: delivery {tag} on the {} ({} bytes)",
            ctx.name(),
            self.what(unit),
            body.len()
        );
        let source = match unit {
            Unit::Reply { idx } => Source::Reply { idx },
            Unit::Subscription { index } => Source::Subscription { index },
        };
        ctx.send(Event::Consumed(Consumed {
            broker_id: ctx.id(),
            zone: ctx.slot.broker.zone.clone(),
            source,
            routing_key,
            body,
            redelivered,
            ack,
        }))
        .await;
    }
}

/// A delivery the module cannot hand to the script faithfully: its routing
/// key (`$kzRK`) was not UTF-8. The frame parser (amq-protocol-types,
/// patched: see `patches/amq-protocol-types/PATCHED.md`) decodes such bytes
/// to U+FFFD instead of dropping the connection, so U+FFFD is what is seen
/// here; a publisher sending U+FFFD itself is refused alike (no Kazoo
/// application does: it %-encodes routing keys). Invalid UTF-8 elsewhere
/// (the exchange name, properties, header names) does not matter: the
/// script sees only the routing key and the body, which is bytes.
pub(crate) fn unreadable(routing_key: &str) -> bool {
    routing_key.contains(char::REPLACEMENT_CHARACTER)
}

/// A name or key for a log line: quoted, control and non-ASCII characters
/// escaped (U+FFFD shows as `\u{fffd}`).
pub(crate) fn safe(text: &str) -> String {
    format!("\"{}\"", text.escape_default())
}

/// Queues, on the module's own AMQP core, what consuming `sub` on `channel`
/// takes, in one go: `channel.open`, the prefetch, the exchanges and their
/// bindings, the queue and its bindings, `basic.consume` with acks (every
/// subscription is consumed with acks, `no_ack` ones too, so that the
/// prefetch bounds what the broker sends ahead of the routes). A server-named
/// queue is bound and consumed as "the last queue declared on the channel".
/// Every name is checked before anything is queued; `Err` says which is too
/// long.
pub(crate) fn queue_subscription(
    conn: &mut Conn,
    channel: u16,
    sub: &Subscription,
    prefetch: u16,
) -> Result<(), String> {
    let short = |text: &str, what: &str| {
        ShortString::try_new(text).map_err(|_| format!("{what} is longer than 255 bytes"))
    };
    let exchange = short(&sub.exchange, "the exchange name")?;
    let queue = short(&sub.queue, "the queue name")?;
    let mut bindings = Vec::new();
    for binding in &sub.exchange_bindings {
        let source = short(&binding.source, "an exchange-bindings source")?;
        let keys = binding
            .routing
            .iter()
            .map(|key| short(key, "an exchange-bindings routing key"))
            .collect::<Result<Vec<_>, _>>()?;
        bindings.push((binding, source, keys));
    }
    let keys = if sub.routing.is_empty() {
        vec![ShortString::default()]
    } else {
        sub.routing
            .iter()
            .map(|key| short(key, "a routing key"))
            .collect::<Result<Vec<_>, _>>()?
    };
    conn.open_channel(channel);
    if prefetch > 0 {
        conn.qos(channel, prefetch);
    }
    conn.exchange_declare(channel, &exchange, &sub.exchange_type, sub.exchange_flags);
    for (binding, source, keys) in &bindings {
        conn.exchange_declare(channel, source, &binding.exchange_type, binding.flags);
        for key in keys {
            conn.exchange_bind(channel, &exchange, source, key);
        }
    }
    conn.queue_declare(channel, &queue, sub.queue_flags);
    for key in &keys {
        conn.queue_bind(channel, &queue, &exchange, key);
    }
    conn.consume(channel, &queue, false, false);
    Ok(())
}
