//! One broker as the publish path and its connection tasks share it: its
//! publisher link, Server-ID indexes, quarantined subscriptions, and whether
//! it answers.
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;

use super::{lock, native_publisher, units};
use crate::config::Broker;

/// One broker: its configuration and what its connections share.
pub(crate) struct Slot {
    pub(crate) broker: Broker,
    pub(crate) primary: bool,
    pub(super) publisher: Mutex<Option<PubLink>>,
    pub(super) next_idx: AtomicU32,
    /// Wakes the publisher task: its channel may need reopening.
    pub(super) reopen: Notify,
    pub(super) link_generation: AtomicU64,
    /// Per reply queue or subscription: reported failed (true) or working (false).
    pub(super) failed: Mutex<HashMap<units::Unit, bool>>,
    /// Subscriptions never declared again on this broker.
    pub(super) quarantined: Mutex<HashSet<usize>>,
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

/// The publisher's confirm channel as the publish path sees it, and which
/// of its openings this is.
#[derive(Clone)]
pub(super) struct PubLink {
    pub(super) channel: PubChannel,
    pub(super) generation: u64,
}

/// Who carries a publish: lapin's channel, or the module's own client's
/// connection task.
#[derive(Clone)]
pub(super) enum PubChannel {
    Lapin {
        connection: lapin::ConnectionStatus,
        channel: lapin::Channel,
    },
    Native(Arc<native_publisher::Handle>),
}

impl PubLink {
    fn connected(&self) -> bool {
        match &self.channel {
            PubChannel::Lapin { connection, .. } => connection.connected(),
            PubChannel::Native(handle) => !handle.closed(),
        }
    }

    fn blocked(&self) -> bool {
        match &self.channel {
            PubChannel::Lapin { connection, .. } => connection.blocked(),
            PubChannel::Native(handle) => handle.blocked(),
        }
    }
}

impl Slot {
    pub(super) fn new(broker: Broker, primary: bool) -> Slot {
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
    pub(super) fn unavailable(&self, link: &PubLink) -> Option<&'static str> {
        if link.blocked() {
            Some("the broker blocks publishers (memory or disk alarm)")
        } else if self.unresponsive.load(Ordering::Relaxed) {
            Some("the broker stopped confirming publishes")
        } else {
            None
        }
    }

    /// A publish timed out here: mark the broker (logged once per change)
    /// and have the publisher probe it.
    pub(super) fn mark_unresponsive(&self) {
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
    pub(super) fn link(&self) -> Option<PubLink> {
        lock(&self.publisher).clone().filter(PubLink::connected)
    }

    /// Records a failure (on any connection of this broker); true when it
    /// must be reported, i.e. the unit was not already failing.
    pub(crate) fn record_failed(&self, unit: units::Unit) -> bool {
        let mut failed = lock(&self.failed);
        !std::mem::replace(failed.entry(unit).or_insert(false), true)
    }

    /// Records a unit working; true when it had been reported failing.
    pub(crate) fn record_working(&self, unit: units::Unit) -> bool {
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
pub(super) const UNRESPONSIVE_AFTER: Duration = Duration::from_millis(500);
