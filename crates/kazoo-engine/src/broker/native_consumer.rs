//! A consuming connection on the module's own AMQP core ([`crate::amqp`])
//! instead of lapin (`amqp_native_client`, on by default; `amqps://`
//! brokers still use lapin, see `consumer`): the same units, order,
//! quarantine and acks (`units`, `acker`), driven by one task on the AMQP
//! process's runtime thread. That task reads and parses the frames, forwards
//! the deliveries and writes the acks itself: no I/O thread of the client's
//! own, no hand-off between threads per delivery or per ack batch, and
//! buffers sized by the traffic (lapin keeps 8 MB of rings per connection).
//!
//! A unit's declaration is pipelined (`channel.open`, `basic.qos`, the
//! exchanges, the queue, its bindings and `basic.consume` in one write) and
//! its `consume-ok` awaited; units are declared one at a time, so that an
//! error that closes the whole connection is blamed on the unit being
//! declared. Deliveries of the other units keep flowing meanwhile.
//!
//! The connection itself (login, heartbeats, reads and writes) is
//! `native::Link`, shared with the publisher.

use std::collections::HashMap;
use std::sync::Arc;

use amq_protocol::types::ShortString;
use tokio::sync::{watch, Notify};
use tokio::time::Instant;

use super::acker::ChannelAcks;
use super::connect::{connection_loop, Backoff, ConnCtx, Reported, Serve, STABLE};
use super::native::{sleep_until, Ended, Link, LAST_CHANNEL};
use super::units::{
    queue_subscription, DeclError, Unit, Units, BLAMED_CODES, DECLARE_TIMEOUT, REDECLARE_BACKOFF,
};
use crate::amqp::{Conn, Event};
use crate::subscription::{ExchangeFlags, QueueFlags, Subscription};

pub(crate) async fn run(
    ctx: Arc<ConnCtx>,
    subscriptions: Arc<Vec<Subscription>>,
    shutdown: watch::Receiver<()>,
) {
    let mut consuming = Consuming {
        units: Units {
            ctx: ctx.clone(),
            subscriptions,
        },
    };
    connection_loop(&ctx, shutdown, &mut consuming).await;
}

/// What a consuming connection serves.
struct Consuming {
    units: Units,
}

/// A unit being consumed on its channel.
struct Running {
    unit: Unit,
    acks: Arc<ChannelAcks>,
    queue: String,
    since: Instant,
    backoff: Backoff,
}

/// A unit waiting to be declared again.
struct Retry {
    unit: Unit,
    at: Instant,
    backoff: Backoff,
}

/// The unit whose declaration is in flight.
struct Declaring {
    unit: Unit,
    channel: u16,
    acks: Arc<ChannelAcks>,
    queue: String,
    backoff: Backoff,
}

/// What woke the connection's task, as far as its caller cares.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Wake {
    /// The broker, settled deliveries or the heartbeat timer: handled.
    Handled,
    Retry,
    Timeout,
    Shutdown,
}

/// One open connection's units.
struct Session<'a> {
    units: &'a Units,
    /// Wakes the task when deliveries were settled.
    acks_due: Arc<Notify>,
    running: HashMap<u16, Running>,
    retries: Vec<Retry>,
    declaring: Option<Declaring>,
    /// How the last declaration ended: its `consume-ok` came (the unit is
    /// running from that event on, so that deliveries read with it are
    /// not missed), or its channel closed (why, and its back-off).
    declared: Option<Result<(), (String, Backoff)>>,
    last_channel: u16,
}

impl Serve for Consuming {
    type Link = Link;

    async fn serve(
        &mut self,
        link: &mut Link,
        reported: &mut Reported,
        shutdown: &mut watch::Receiver<()>,
    ) -> Option<String> {
        let mut session = Session {
            units: &self.units,
            acks_due: Arc::new(Notify::new()),
            running: HashMap::new(),
            retries: Vec::new(),
            declaring: None,
            declared: None,
            last_channel: 0,
        };
        match session.serve(link, reported, shutdown).await {
            Ok(()) => None,
            Err(ended) => Some(ended.reason),
        }
    }
}

/// `Ok(())` on shutdown; `Err` when the connection ended.
type Served = Result<(), Ended>;

impl Session<'_> {
    async fn serve(
        &mut self,
        link: &mut Link,
        reported: &mut Reported,
        shutdown: &mut watch::Receiver<()>,
    ) -> Served {
        let units = self.units;
        for unit in units.list() {
            let backoff = Backoff::new(REDECLARE_BACKOFF.0, REDECLARE_BACKOFF.1);
            if !self.declare_unit(link, unit, backoff, shutdown).await? {
                return Ok(());
            }
        }
        units.ctx.report_up(reported).await;
        loop {
            let retry_at = self.retries.iter().map(|r| r.at).min();
            match self.pump(link, shutdown, retry_at, None).await? {
                Wake::Shutdown => return Ok(()),
                Wake::Retry => {
                    let now = Instant::now();
                    let (due, later) = std::mem::take(&mut self.retries)
                        .into_iter()
                        .partition(|r| r.at <= now);
                    self.retries = later;
                    for Retry { unit, backoff, .. } in due {
                        if !self.declare_unit(link, unit, backoff, shutdown).await? {
                            return Ok(());
                        }
                    }
                }
                _ => {}
            }
        }
    }

    /// Declares `unit` and reports the outcome; a unit that failed at
    /// channel level is retried after `backoff`. False on shutdown.
    async fn declare_unit(
        &mut self,
        link: &mut Link,
        unit: Unit,
        backoff: Backoff,
        shutdown: &mut watch::Receiver<()>,
    ) -> Result<bool, Ended> {
        let units = self.units;
        match self.declare(link, unit, backoff, shutdown).await {
            Ok(consuming) => {
                if consuming {
                    units.working(unit).await;
                    log::debug!("{}: consuming the {}", units.ctx.name(), units.what(unit));
                }
                Ok(consuming)
            }
            Err((DeclError::Soft(reason), backoff)) => {
                units.failed(unit, &reason).await;
                self.retry(unit, backoff);
                Ok(true)
            }
            Err((DeclError::Blamed(reason), _)) => {
                units.quarantine(unit, &reason).await;
                Err(Ended {
                    reason,
                    blamed: true,
                })
            }
            Err((DeclError::Gone(reason), _)) => Err(Ended {
                reason,
                blamed: false,
            }),
        }
    }

    fn retry(&mut self, unit: Unit, mut backoff: Backoff) {
        let at = Instant::now() + backoff.next_delay();
        self.retries.push(Retry { unit, at, backoff });
    }

    /// Opens the unit's channel, declares what it needs and consumes it:
    /// true once the broker's `consume-ok` came (the unit is running),
    /// false on shutdown. A failure gives `backoff` back for the retry.
    async fn declare(
        &mut self,
        link: &mut Link,
        unit: Unit,
        backoff: Backoff,
        shutdown: &mut watch::Receiver<()>,
    ) -> Result<bool, (DeclError, Backoff)> {
        if self.last_channel >= LAST_CHANNEL {
            let reason = "every channel number of the connection was used: reopening it";
            return Err((DeclError::Gone(reason.into()), backoff));
        }
        self.last_channel += 1;
        let channel = self.last_channel;
        let queue = match self.queue_frames(&mut link.conn, channel, unit) {
            Ok(queue) => queue,
            Err(e) => return Err((e, backoff)),
        };
        let ctx = &self.units.ctx;
        self.declaring = Some(Declaring {
            unit,
            channel,
            acks: ChannelAcks::native(self.acks_due.clone(), ctx.id()),
            queue,
            backoff,
        });
        self.declared = None;
        let deadline = Instant::now() + DECLARE_TIMEOUT;
        let mut result = link.flush().await.map(|()| Wake::Handled);
        loop {
            if let Some(declared) = self.declared.take() {
                return declared
                    .map(|()| true)
                    .map_err(|(reason, backoff)| (DeclError::Soft(reason), backoff));
            }
            let failure = match result {
                Ok(Wake::Shutdown) => return Ok(false),
                Ok(Wake::Timeout) => DeclError::Gone(format!(
                    "declaring the {} took longer than {DECLARE_TIMEOUT:?}",
                    self.units.what(unit)
                )),
                Ok(_) => {
                    result = self.pump(link, shutdown, None, Some(deadline)).await;
                    continue;
                }
                Err(Ended {
                    reason,
                    blamed: true,
                }) => DeclError::Blamed(reason),
                Err(Ended { reason, .. }) => DeclError::Gone(reason),
            };
            let backoff = match self.declaring.take() {
                Some(d) => d.backoff,
                None => Backoff::new(REDECLARE_BACKOFF.0, REDECLARE_BACKOFF.1),
            };
            return Err((failure, backoff));
        }
    }

    /// Queues the unit's declaration on `channel`: the queue's name (empty:
    /// the broker names it, and later steps use "the last queue declared").
    fn queue_frames(&self, conn: &mut Conn, channel: u16, unit: Unit) -> Result<String, DeclError> {
        let ctx = &self.units.ctx;
        let short = |text: &str, what: &str| {
            ShortString::try_new(text)
                .map_err(|_| DeclError::Soft(format!("{what} is longer than 255 bytes")))
        };
        // Every name is checked before anything is queued.
        match unit {
            Unit::Reply { idx } => {
                let node = &ctx.options.node_hostname;
                let queue_name = crate::payload::reply_queue(node, ctx.id(), idx);
                let queue = short(&queue_name, "the reply queue name")?;
                let key = short(
                    &crate::payload::server_id(node, ctx.id(), idx),
                    "the reply binding key",
                )?;
                let targeted: ShortString = crate::payload::TARGETED_EXCHANGE.into();
                self.open_channel(conn, channel);
                conn.exchange_declare(channel, &targeted, "direct", ExchangeFlags::default());
                // Durable + auto_delete, not the C module's transient queue:
                // RabbitMQ 4 refuses transient non-exclusive queues.
                let flags = QueueFlags {
                    durable: true,
                    ..QueueFlags::default()
                };
                conn.queue_declare(channel, &queue, flags);
                conn.queue_bind(channel, &queue, &targeted, &key);
                conn.consume(channel, &queue, false, false);
                Ok(queue_name)
            }
            Unit::Subscription { index } => {
                let Some(sub) = self.units.subscriptions.get(index) else {
                    return Err(DeclError::Soft("no such subscription".into()));
                };
                queue_subscription(conn, channel, sub, ctx.options.prefetch)
                    .map_err(DeclError::Soft)?;
                Ok(sub.queue.clone())
            }
        }
    }

    /// Queues `channel.open` and the prefetch. Every unit is consumed with
    /// acks, `no_ack` subscriptions too (the service acks them once a
    /// worker has them): the prefetch is what stops the broker from sending
    /// faster than the routes run.
    fn open_channel(&self, conn: &mut Conn, channel: u16) {
        conn.open_channel(channel);
        let prefetch = self.units.ctx.options.prefetch;
        if prefetch > 0 {
            conn.qos(channel, prefetch);
        }
    }

    /// Waits for what comes first (the broker, settled deliveries, a retry
    /// at `retry_at`, the heartbeat timer, `until`, shutdown), handles it
    /// and writes what that queued.
    async fn pump(
        &mut self,
        link: &mut Link,
        shutdown: &mut watch::Receiver<()>,
        retry_at: Option<Instant>,
        until: Option<Instant>,
    ) -> Result<Wake, Ended> {
        let heartbeat_at = link.heartbeat_at();
        let mut read = None;
        let mut heartbeat = false;
        let wake = tokio::select! {
            result = link.read_some() => {
                read = Some(result);
                Wake::Handled
            }
            _ = self.acks_due.notified() => Wake::Handled,
            _ = sleep_until(retry_at), if retry_at.is_some() => Wake::Retry,
            _ = sleep_until(heartbeat_at), if heartbeat_at.is_some() => {
                heartbeat = true;
                Wake::Handled
            }
            _ = sleep_until(until), if until.is_some() => Wake::Timeout,
            _ = shutdown.changed() => Wake::Shutdown,
        };
        if let Some(result) = read {
            link.parse(result)?;
            let mut events = std::mem::take(&mut link.events);
            for event in events.drain(..) {
                self.handle(&mut link.conn, event).await?;
            }
            link.events = events;
        }
        if heartbeat {
            link.heartbeat()?;
        }
        self.send_acks(&mut link.conn);
        link.flush().await?;
        Ok(wake)
    }

    /// Queues every running channel's settled acks and rejects.
    fn send_acks(&self, conn: &mut Conn) {
        for (&channel, running) in &self.running {
            let frames = running.acks.take_due();
            for (tag, requeue) in frames.rejects {
                conn.reject(channel, tag, requeue);
            }
            for tag in frames.acks {
                conn.ack(channel, tag, false);
            }
            if let Some(tag) = frames.ack_up_to {
                conn.ack(channel, tag, true);
            }
        }
    }

    /// What one event from the broker means.
    async fn handle(&mut self, conn: &mut Conn, event: Event) -> Result<(), Ended> {
        let units = self.units;
        match event {
            Event::Delivery {
                channel,
                tag,
                redelivered,
                exchange,
                routing_key,
                body,
            } => match self.running.get(&channel) {
                Some(running) => {
                    let names = (running.queue.as_str(), exchange.as_str());
                    units
                        .deliver(
                            running.unit,
                            &running.acks,
                            names,
                            tag,
                            redelivered,
                            routing_key,
                            body,
                        )
                        .await;
                }
                // Sent before the broker saw the channel's close: it
                // requeues them with the channel.
                None => log::debug!(
                    "{}: a delivery on channel {channel}, which is no longer consumed",
                    units.ctx.name()
                ),
            },
            Event::QueueDeclared { channel, queue } => {
                if let Some(d) = self.declaring.as_mut().filter(|d| d.channel == channel) {
                    d.queue = queue;
                }
            }
            Event::Consuming(channel) => {
                if let Some(d) = self.take_declaring(channel) {
                    let running = Running {
                        unit: d.unit,
                        acks: d.acks,
                        queue: d.queue,
                        since: Instant::now(),
                        backoff: d.backoff,
                    };
                    self.running.insert(channel, running);
                    self.declared = Some(Ok(()));
                }
            }
            Event::ChannelClosed {
                channel,
                code,
                text,
            } => {
                let reason = format!("{code} {text}");
                match self.take_declaring(channel) {
                    Some(d) => self.declared = Some(Err((reason, d.backoff))),
                    None => self.stopped(channel, &reason),
                }
            }
            // Closing the channel returns what it held unacked.
            Event::Cancelled(channel) if self.running.contains_key(&channel) => {
                conn.close_channel(channel);
                self.stopped(channel, "the broker cancelled the consumer");
            }
            Event::ConnectionClosed { code, text } => {
                return Err(Ended {
                    reason: format!("{code} {text}"),
                    blamed: self.declaring.is_some() && BLAMED_CODES.contains(&code),
                })
            }
            // Blocking concerns publishers; this connection only acks.
            _ => {}
        }
        Ok(())
    }

    /// The declaration in flight, if it is on `channel`.
    fn take_declaring(&mut self, channel: u16) -> Option<Declaring> {
        match &self.declaring {
            Some(d) if d.channel == channel => self.declaring.take(),
            _ => None,
        }
    }

    /// The running unit on `channel` stopped: declared again after its
    /// back-off (reset after a stable run).
    fn stopped(&mut self, channel: u16, reason: &str) {
        let Some(mut running) = self.running.remove(&channel) else {
            return;
        };
        let units = self.units;
        log::warn!(
            "{}: consuming the {} stopped: {reason}",
            units.ctx.name(),
            units.what(running.unit)
        );
        if running.since.elapsed() >= STABLE {
            running.backoff.reset();
        }
        self.retry(running.unit, running.backoff);
    }
}
