//! Settling a delivery on the broker: ack, reject, or what dropping it
//! unused means for its source.
use std::fmt;

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
    pub(super) fn new(
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
