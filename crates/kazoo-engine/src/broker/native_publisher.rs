//! The publisher connection of one broker on the module's own AMQP core
//! (`amqp_native_client`, on by default; `amqps://` brokers and
//! `amqp_native_client 0` use `publisher`, over lapin): one task on the AMQP
//! process's runtime thread owns the connection and its confirm-mode
//! channel. [`super::Brokers::publish_with`] hands it a [`Job`] and awaits
//! the outcome; the task writes every job it finds waiting in one `write`,
//! and settles them as the broker's confirms come (`multiple` ones too).
//!
//! What the lapin publisher does, it does the same way: the channel is
//! reopened (on a new channel number) when the broker closes it, failing
//! what was in flight there as refused; the connection's loss fails what
//! was in flight as lost; `connection.blocked` marks the link so that
//! publishes skip it; a broker marked as not confirming
//! ([`super::Slot::unresponsive`]) is probed with an empty message to the
//! default exchange, and any confirm clears the mark. A `basic.return` (a
//! `mandatory` publish no queue took) is matched to the oldest `mandatory`
//! publish in flight with the same exchange, routing key and body (any
//! other would have been routed the same way), and reported with its
//! confirm.
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use amq_protocol::protocol::BasicProperties;
use amq_protocol::types::ShortString;
use tokio::sync::{mpsc, oneshot, watch};

use super::connect::{connection_loop, ConnCtx, Reported, Serve, WATCH_INTERVAL};
use super::native::{sleep_until, Ended, Link, LAST_CHANNEL};
use super::publish::{Attempt, Returned};
use super::publisher::set_link;
use super::slot::PubChannel;
use super::Inner;
use crate::amqp::Event;

/// A publish for the task.
pub(super) struct Job {
    pub(super) exchange: ShortString,
    pub(super) routing_key: ShortString,
    pub(super) mandatory: bool,
    pub(super) properties: BasicProperties,
    pub(super) body: Vec<u8>,
}

/// A job and where its outcome goes.
type Waiting = (Job, oneshot::Sender<Attempt>);

/// How the publish path reaches the task, and what it may read of the
/// connection without asking.
pub(super) struct Handle {
    jobs: mpsc::UnboundedSender<Waiting>,
    /// `connection.blocked` and not unblocked since.
    blocked: AtomicBool,
}

impl Handle {
    /// Hands `job` to the task and waits for its outcome (the caller bounds
    /// the wait); a connection gone meanwhile is a lost publish.
    pub(super) async fn publish(&self, job: Job) -> Attempt {
        let lost = || Attempt::Lost("the publisher connection closed".into());
        let (done, outcome) = oneshot::channel();
        if self.jobs.send((job, done)).is_err() {
            return lost();
        }
        outcome.await.unwrap_or_else(|_| lost())
    }

    pub(super) fn blocked(&self) -> bool {
        self.blocked.load(Ordering::Relaxed)
    }

    /// The task behind this handle is gone (its connection closed).
    pub(super) fn closed(&self) -> bool {
        self.jobs.is_closed()
    }
}

pub(crate) async fn run(ctx: Arc<ConnCtx>, inner: Arc<Inner>, shutdown: watch::Receiver<()>) {
    let mut publishing = Publishing {
        ctx: ctx.clone(),
        inner,
    };
    connection_loop(&ctx, shutdown, &mut publishing).await;
}

/// What a publisher connection serves.
struct Publishing {
    ctx: Arc<ConnCtx>,
    inner: Arc<Inner>,
}

impl Serve for Publishing {
    type Link = Link;

    async fn serve(
        &mut self,
        link: &mut Link,
        reported: &mut Reported,
        shutdown: &mut watch::Receiver<()>,
    ) -> Option<String> {
        let (jobs, waiting) = mpsc::unbounded_channel();
        let mut session = Session {
            ctx: &self.ctx,
            inner: &self.inner,
            handle: Arc::new(Handle {
                jobs,
                blocked: AtomicBool::new(false),
            }),
            waiting,
            channel: 0,
            confirming: false,
            next_tag: 1,
            in_flight: BTreeMap::new(),
            probing: false,
        };
        let outcome = session.serve(link, reported, shutdown).await;
        set_link(&self.ctx, &self.inner, None);
        let reason = match &outcome {
            Ok(()) => "shutting down".to_string(),
            Err(ended) => ended.reason.clone(),
        };
        session.fail_in_flight(|| Attempt::Lost(reason.clone()));
        outcome.err().map(|ended| ended.reason)
    }
}

/// A publish written and not confirmed yet.
struct InFlight {
    /// `None` for the probe.
    done: Option<oneshot::Sender<Attempt>>,
    /// A `mandatory` publish: the exchange, routing key and body a
    /// `basic.return` of it carries.
    mandatory: Option<(ShortString, ShortString, Vec<u8>)>,
    returned: Option<Returned>,
}

struct Session<'a> {
    ctx: &'a ConnCtx,
    inner: &'a Inner,
    handle: Arc<Handle>,
    waiting: mpsc::UnboundedReceiver<Waiting>,
    /// The confirm-mode channel (a new number each time it is reopened).
    channel: u16,
    /// Its `confirm.select-ok` came: publishes may go.
    confirming: bool,
    /// The delivery tag of the next publish on the channel.
    next_tag: u64,
    in_flight: BTreeMap<u64, InFlight>,
    /// A probe is in flight.
    probing: bool,
}

impl Session<'_> {
    async fn serve(
        &mut self,
        link: &mut Link,
        reported: &mut Reported,
        shutdown: &mut watch::Receiver<()>,
    ) -> Result<(), Ended> {
        self.open_channel(link)?;
        link.flush().await?;
        let mut reported_up = false;
        loop {
            let heartbeat_at = link.heartbeat_at();
            let mut read = None;
            let mut heartbeat = false;
            tokio::select! {
                result = link.read_some() => read = Some(result),
                job = self.waiting.recv() => {
                    // The session holds a sender: never `None` here.
                    if let Some(waiting) = job {
                        self.publish(link, waiting);
                        while let Ok(waiting) = self.waiting.try_recv() {
                            self.publish(link, waiting);
                        }
                    }
                }
                _ = tokio::time::sleep(WATCH_INTERVAL) => self.probe(link),
                _ = self.ctx.slot.reopen.notified() => self.probe(link),
                _ = sleep_until(heartbeat_at), if heartbeat_at.is_some() => heartbeat = true,
                _ = shutdown.changed() => return Ok(()),
            }
            if let Some(result) = read {
                link.parse(result)?;
                for event in std::mem::take(&mut link.events) {
                    self.handle(link, event)?;
                }
                if self.confirming && !reported_up {
                    reported_up = true;
                    self.ctx.report_up(reported).await;
                }
            }
            if heartbeat {
                link.heartbeat()?;
            }
            link.flush().await?;
        }
    }

    /// Queues `channel.open` and `confirm.select` of a new channel.
    fn open_channel(&mut self, link: &mut Link) -> Result<(), Ended> {
        if self.channel >= LAST_CHANNEL {
            return Err(Ended {
                reason: "every channel number of the connection was used: reopening it".into(),
                blamed: false,
            });
        }
        self.channel += 1;
        self.confirming = false;
        self.next_tag = 1;
        link.conn.open_channel(self.channel);
        link.conn.confirm_select(self.channel);
        Ok(())
    }

    fn publish(&mut self, link: &mut Link, (job, done): Waiting) {
        if !self.confirming {
            // Its link generation failed: it goes again once the channel is back.
            let _ = done.send(Attempt::Lost("the publish channel is reopening".into()));
            return;
        }
        link.conn.publish(
            self.channel,
            &job.exchange,
            &job.routing_key,
            job.mandatory,
            &job.properties,
            &job.body,
        );
        let mandatory = job
            .mandatory
            .then_some((job.exchange, job.routing_key, job.body));
        self.in_flight.insert(
            self.next_tag,
            InFlight {
                done: Some(done),
                mandatory,
                returned: None,
            },
        );
        self.next_tag += 1;
    }

    /// Probes a broker marked as not confirming (one probe at a time): an
    /// empty message to the default exchange that no queue takes, which the
    /// broker confirms and drops.
    fn probe(&mut self, link: &mut Link) {
        if self.probing || !self.confirming || !self.ctx.slot.unresponsive.load(Ordering::Relaxed) {
            return;
        }
        self.probing = true;
        link.conn.publish(
            self.channel,
            &ShortString::default(),
            &"kazoo.probe".into(),
            false,
            &BasicProperties::default(),
            b"",
        );
        self.in_flight.insert(
            self.next_tag,
            InFlight {
                done: None,
                mandatory: None,
                returned: None,
            },
        );
        self.next_tag += 1;
    }

    fn handle(&mut self, link: &mut Link, event: Event) -> Result<(), Ended> {
        let ctx = self.ctx;
        match event {
            Event::ConfirmSelected(channel) if channel == self.channel => {
                self.confirming = true;
                set_link(
                    ctx,
                    self.inner,
                    Some(PubChannel::Native(self.handle.clone())),
                );
            }
            Event::Confirm {
                channel,
                tag,
                multiple,
                ack,
            } if channel == self.channel => self.confirmed(tag, multiple, ack),
            Event::Returned {
                channel,
                reply_code,
                reply_text,
                exchange,
                routing_key,
                body,
            } if channel == self.channel => {
                // Another publish with the same exchange, key and body
                // would have been routed the same way.
                let mine = self.in_flight.values_mut().find(|f| {
                    f.returned.is_none()
                        && f.mandatory.as_ref().is_some_and(|(e, k, b)| {
                            e.as_str() == exchange && k.as_str() == routing_key && *b == body
                        })
                });
                match mine {
                    Some(f) => {
                        f.returned = Some(Returned {
                            reply_code,
                            reply_text,
                            body,
                        })
                    }
                    None => log::debug!("{}: a returned message no publish waits for", ctx.name()),
                }
            }
            Event::ChannelClosed {
                channel,
                code,
                text,
            } if channel == self.channel => {
                let reason = format!("{code} {text}");
                log::warn!(
                    "{}: the publish channel closed ({reason}); opening another",
                    ctx.name()
                );
                self.fail_in_flight(|| Attempt::Refused(reason.clone()));
                self.open_channel(link)?;
            }
            Event::Blocked(reason) => {
                log::warn!("{}: the broker blocks publishing: {reason}", ctx.name());
                self.handle.blocked.store(true, Ordering::Relaxed);
            }
            Event::Unblocked => {
                log::info!("{}: the broker accepts publishing again", ctx.name());
                self.handle.blocked.store(false, Ordering::Relaxed);
            }
            Event::ConnectionClosed { code, text } => {
                return Err(Ended {
                    reason: format!("{code} {text}"),
                    blamed: false,
                })
            }
            _ => {}
        }
        Ok(())
    }

    /// The broker's `basic.ack` (`ack`) or `basic.nack` of `tag` (and of
    /// every earlier one when `multiple`).
    fn confirmed(&mut self, tag: u64, multiple: bool, ack: bool) {
        let settled: Vec<u64> = if multiple {
            self.in_flight.range(..=tag).map(|(&t, _)| t).collect()
        } else {
            vec![tag]
        };
        for tag in settled {
            let Some(f) = self.in_flight.remove(&tag) else {
                continue;
            };
            let attempt = match (f.returned, ack) {
                (Some(returned), _) => Attempt::Returned(returned),
                (None, true) => Attempt::Confirmed,
                (None, false) => Attempt::Nacked,
            };
            match f.done {
                Some(done) => drop(done.send(attempt)),
                None => self.probing = false,
            }
        }
        if ack && self.ctx.slot.unresponsive.load(Ordering::Relaxed) {
            self.ctx.slot.mark_answering();
            self.inner.epoch.send_modify(|epoch| *epoch += 1);
        }
    }

    /// Settles every publish in flight with `attempt`.
    fn fail_in_flight(&mut self, attempt: impl Fn() -> Attempt) {
        for (_, f) in std::mem::take(&mut self.in_flight) {
            if let Some(done) = f.done {
                let _ = done.send(attempt());
            }
        }
        self.probing = false;
    }
}
