//! Settling a delivery on the broker: ack, reject, or what dropping it
//! unused means for its source; and sending those settlements coalesced.
//!
//! Every delivery is consumed with acks (the prefetch is the module's
//! backpressure), so a flood of events is a flood of acks. Sending each on
//! its own cost a spawned task, one of lapin's internal commands and a
//! wake-up of its I/O thread per delivery. Instead, a channel's settlements
//! are collected and sent once the runtime gets to them: the acks as one
//! `basic.ack` with `multiple` up to the first delivery still held by this
//! process, the rest one by one. A delivery still held is never covered.
//! Over lapin a task sends them; on the module's own core the connection's
//! task, woken, writes them with whatever else it sends.
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use lapin::options::{BasicAckOptions, BasicRejectOptions};
use tokio::sync::Notify;

use super::lock;

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
    channel: Arc<ChannelAcks>,
    /// `None` once settled.
    tag: Option<u64>,
    /// What dropping it unused does.
    on_drop: Settle,
}

impl fmt::Debug for Acker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Acker")
            .field("broker_id", &self.channel.broker_id)
            .field("pending", &self.tag.is_some())
            .field("on_drop", &self.on_drop)
            .finish()
    }
}

impl Acker {
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
        if let Some(tag) = self.tag.take() {
            ChannelAcks::settle(&self.channel, tag, how);
        }
    }
}

impl Drop for Acker {
    fn drop(&mut self) {
        self.settle(self.on_drop);
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Settle {
    Ack,
    Reject { requeue: bool },
}

/// The settlements of one consuming channel's deliveries.
pub(super) struct ChannelAcks {
    sink: Sink,
    broker_id: u32,
    pending: Mutex<Pending>,
    /// The settlements are being sent (a lapin flush task is scheduled or
    /// running), or the connection's task was woken for them. Changed only
    /// under the `pending` lock; read without it by the connection's task,
    /// which looks at every channel on each wake-up.
    scheduled: AtomicBool,
}

/// Who sends a channel's settlements.
enum Sink {
    /// A task spawned on `handle` calls lapin.
    Lapin {
        channel: lapin::Channel,
        handle: tokio::runtime::Handle,
    },
    /// The connection's own task, woken by this, takes them
    /// ([`ChannelAcks::take_due`]).
    Native(Arc<Notify>),
}

/// What a channel's deliveries wait for.
#[derive(Default)]
struct Pending {
    /// Delivery tags handed out and not settled yet.
    held: BTreeSet<u64>,
    /// Settled and not sent yet.
    settled: BTreeMap<u64, Settle>,
}

/// What one flush sends, in this order.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Frames {
    /// `basic.reject`, each on its own.
    pub(super) rejects: Vec<(u64, bool)>,
    /// `basic.ack`, each on its own (beyond a delivery still held).
    pub(super) acks: Vec<u64>,
    /// One `basic.ack` with `multiple`: every delivery up to this tag.
    pub(super) ack_up_to: Option<u64>,
}

impl Pending {
    /// Takes what is settled and says how to send it. Rejects go first: a
    /// `multiple` ack would otherwise cover them. The `multiple` ack stops
    /// below the first delivery still held, whatever its tag.
    fn take_frames(&mut self) -> Frames {
        let first_held = self.held.first().copied().unwrap_or(u64::MAX);
        let mut frames = Frames::default();
        for (tag, how) in std::mem::take(&mut self.settled) {
            match how {
                Settle::Reject { requeue } => frames.rejects.push((tag, requeue)),
                Settle::Ack if tag < first_held => frames.ack_up_to = Some(tag),
                Settle::Ack => frames.acks.push(tag),
            }
        }
        frames
    }
}

impl ChannelAcks {
    /// Settlements sent on a lapin channel by a task spawned on `handle`.
    pub(super) fn lapin(
        channel: lapin::Channel,
        handle: tokio::runtime::Handle,
        broker_id: u32,
    ) -> Arc<ChannelAcks> {
        ChannelAcks::with_sink(Sink::Lapin { channel, handle }, broker_id)
    }

    /// Settlements the connection's task takes ([`ChannelAcks::take_due`])
    /// once `due` wakes it.
    pub(super) fn native(due: Arc<Notify>, broker_id: u32) -> Arc<ChannelAcks> {
        ChannelAcks::with_sink(Sink::Native(due), broker_id)
    }

    fn with_sink(sink: Sink, broker_id: u32) -> Arc<ChannelAcks> {
        Arc::new(ChannelAcks {
            sink,
            broker_id,
            pending: Mutex::new(Pending::default()),
            scheduled: AtomicBool::new(false),
        })
    }

    /// What is settled and not sent yet (the connection's task of a
    /// [`ChannelAcks::native`] channel sends it, in this order, before it
    /// waits again).
    pub(super) fn take_due(&self) -> Frames {
        // Set under the lock before the wake-up that follows it.
        if !self.scheduled.load(Ordering::Acquire) {
            return Frames::default();
        }
        let mut pending = lock(&self.pending);
        self.scheduled.store(false, Ordering::Release);
        pending.take_frames()
    }

    /// The [`Acker`] of the delivery `tag` of this channel (tags come in
    /// the order the broker numbered them): requeued when dropped unused
    /// (`requeue_on_drop`), or acked.
    pub(super) fn acker(self: &Arc<Self>, tag: u64, requeue_on_drop: bool) -> Acker {
        lock(&self.pending).held.insert(tag);
        Acker {
            channel: self.clone(),
            tag: Some(tag),
            on_drop: if requeue_on_drop {
                Settle::Reject { requeue: true }
            } else {
                Settle::Ack
            },
        }
    }

    fn settle(this: &Arc<Self>, tag: u64, how: Settle) {
        let mut pending = lock(&this.pending);
        pending.held.remove(&tag);
        pending.settled.insert(tag, how);
        if this.scheduled.swap(true, Ordering::AcqRel) {
            return;
        }
        drop(pending);
        match &this.sink {
            Sink::Native(due) => due.notify_one(),
            Sink::Lapin { handle, .. } => {
                // Spawning on a runtime that has shut down drops the task:
                // the connection is gone with it, and the broker requeues.
                let this = this.clone();
                drop(handle.spawn(async move { this.flush().await }));
            }
        }
    }

    /// Sends what is settled, batch after batch, until nothing is left.
    /// One flush at a time per channel: a `multiple` ack sent ahead of an
    /// earlier batch's ack or reject of a tag it covers would make that
    /// one unknown to the broker, which closes the channel.
    async fn flush(&self) {
        loop {
            let frames = {
                let mut pending = lock(&self.pending);
                if pending.settled.is_empty() {
                    self.scheduled.store(false, Ordering::Release);
                    return;
                }
                pending.take_frames()
            };
            self.send(frames).await;
        }
    }

    async fn send(&self, frames: Frames) {
        let Sink::Lapin { channel, .. } = &self.sink else {
            return;
        };
        let broker_id = self.broker_id;
        let report = |what: &str, tag: u64, e: lapin::Error| {
            log::debug!("broker {broker_id}: {what} {tag} not sent (channel gone): {e}");
        };
        for (tag, requeue) in frames.rejects {
            let options = BasicRejectOptions { requeue };
            if let Err(e) = channel.basic_reject(tag, options).await {
                report("reject of", tag, e);
            }
        }
        for tag in frames.acks {
            if let Err(e) = channel.basic_ack(tag, BasicAckOptions::default()).await {
                report("ack of", tag, e);
            }
        }
        if let Some(tag) = frames.ack_up_to {
            let options = BasicAckOptions { multiple: true };
            if let Err(e) = channel.basic_ack(tag, options).await {
                report("ack up to", tag, e);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pending(held: &[u64], settled: &[(u64, Settle)]) -> Pending {
        Pending {
            held: held.iter().copied().collect(),
            settled: settled.iter().copied().collect(),
        }
    }

    #[test]
    fn acks_in_order_go_as_one_multiple_ack() {
        let mut p = pending(&[], &[(1, Settle::Ack), (2, Settle::Ack), (3, Settle::Ack)]);
        assert_eq!(
            p.take_frames(),
            Frames {
                ack_up_to: Some(3),
                ..Frames::default()
            }
        );
        assert!(p.settled.is_empty());
    }

    #[test]
    fn a_multiple_ack_never_covers_a_delivery_still_held() {
        let mut p = pending(
            &[4],
            &[(2, Settle::Ack), (3, Settle::Ack), (6, Settle::Ack)],
        );
        assert_eq!(
            p.take_frames(),
            Frames {
                rejects: vec![],
                acks: vec![6],
                ack_up_to: Some(3),
            }
        );
    }

    #[test]
    fn rejects_are_sent_alone_and_before_the_multiple_ack() {
        let mut p = pending(
            &[],
            &[
                (1, Settle::Ack),
                (2, Settle::Reject { requeue: true }),
                (3, Settle::Ack),
                (4, Settle::Reject { requeue: false }),
            ],
        );
        assert_eq!(
            p.take_frames(),
            Frames {
                rejects: vec![(2, true), (4, false)],
                acks: vec![],
                ack_up_to: Some(3),
            }
        );
    }

    #[test]
    fn nothing_settled_sends_nothing() {
        let mut p = pending(&[1, 2], &[]);
        assert_eq!(p.take_frames(), Frames::default());
    }
}
