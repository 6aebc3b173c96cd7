//! The totals of the script's publishes and queries, which every process
//! that publishes adds to, and of the deliveries the consumer workers
//! consume themselves (see [`ScriptCounters`]).
use std::sync::atomic::{AtomicU64, Ordering};

use crate::broker::PublishError;

/// What the script's publishes and queries ended with: publishes confirmed,
/// failed, and failed by reason; queries answered, timed out, failed. Every
/// process that publishes or queries adds to the same counters (the AMQP
/// process and, with direct links, the SIP workers), so the host keeps them
/// in memory all its processes share; [`ScriptCounters::private`] keeps
/// them in one process.
#[derive(Clone, Copy, Debug)]
pub struct ScriptCounters {
    slots: &'static [AtomicU64; ScriptCounters::SLOTS],
}

/// How a synchronous query ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QueryOutcome {
    Answered,
    TimedOut,
    /// It could not be published.
    Failed,
}

impl ScriptCounters {
    /// How many counters: see the constants below.
    pub const SLOTS: usize = 15;
    const PUBLISHED: usize = 0;
    const FAILED: usize = 1;
    const NO_BROKER: usize = 2;
    const REFUSED: usize = 3;
    const TIMEOUT: usize = 4;
    const RETURNED: usize = 5;
    const INVALID: usize = 6;
    const QUERY_ANSWERED: usize = 7;
    const QUERY_TIMED_OUT: usize = 8;
    const QUERY_FAILED: usize = 9;
    const WORKER_CONSUMED: usize = 10;
    const WORKER_ACKED: usize = 11;
    const WORKER_REJECTED: usize = 12;
    const ASYNC_ANSWERED: usize = 13;
    const ASYNC_NOT_ANSWERED: usize = 14;

    /// Counters in `slots` (zero at start).
    pub fn new(slots: &'static [AtomicU64; ScriptCounters::SLOTS]) -> ScriptCounters {
        ScriptCounters { slots }
    }

    /// Counters of this process only (tests, a host without shared memory).
    pub fn private() -> ScriptCounters {
        ScriptCounters::new(Box::leak(Box::default()))
    }

    fn bump(&self, slot: usize) {
        self.slots[slot].fetch_add(1, Ordering::Relaxed);
    }

    fn get(&self, slot: usize) -> u64 {
        self.slots[slot].load(Ordering::Relaxed)
    }

    /// Counts a `kazoo_publish`'s outcome; `Err(None)`: it could not start
    /// (no broker layer yet), counted as no broker connected.
    pub fn record(&self, outcome: Result<(), Option<&PublishError>>) {
        let reason = match outcome {
            Ok(()) => return self.bump(Self::PUBLISHED),
            Err(None) => Self::NO_BROKER,
            Err(Some(e)) => match e {
                PublishError::NoBrokerConnected
                | PublishError::NoReplyConsumer
                | PublishError::UnknownBroker(_) => Self::NO_BROKER,
                PublishError::Nacked { .. } | PublishError::Closed(_) => Self::REFUSED,
                PublishError::Timeout | PublishError::Unavailable { .. } => Self::TIMEOUT,
                PublishError::Returned { .. } => Self::RETURNED,
                PublishError::Invalid(_) => Self::INVALID,
            },
        };
        self.bump(Self::FAILED);
        self.bump(reason);
    }

    pub fn record_query(&self, outcome: QueryOutcome) {
        self.bump(match outcome {
            QueryOutcome::Answered => Self::QUERY_ANSWERED,
            QueryOutcome::TimedOut => Self::QUERY_TIMED_OUT,
            QueryOutcome::Failed => Self::QUERY_FAILED,
        });
    }

    /// A delivery a consumer worker consumed itself (`amqp_worker_consume`)
    /// and took for its route.
    pub fn record_worker_consumed(&self) {
        self.bump(Self::WORKER_CONSUMED);
    }

    /// A delivery a consumer worker consumed itself and acked.
    pub fn record_worker_acked(&self) {
        self.bump(Self::WORKER_ACKED);
    }

    /// A delivery a consumer worker consumed itself and rejected (an
    /// unreadable routing key, a payload that is not a JSON object).
    pub fn record_worker_rejected(&self) {
        self.bump(Self::WORKER_REJECTED);
    }

    /// An asynchronous query whose transaction a consumer worker resumed
    /// itself (`amqp_worker_replies`): with its reply, or not answered.
    pub fn record_async(&self, answered: bool) {
        self.bump(if answered {
            Self::ASYNC_ANSWERED
        } else {
            Self::ASYNC_NOT_ANSWERED
        });
    }

    pub fn async_answered(&self) -> u64 {
        self.get(Self::ASYNC_ANSWERED)
    }

    pub fn async_not_answered(&self) -> u64 {
        self.get(Self::ASYNC_NOT_ANSWERED)
    }

    pub fn worker_consumed(&self) -> u64 {
        self.get(Self::WORKER_CONSUMED)
    }

    pub fn worker_acked(&self) -> u64 {
        self.get(Self::WORKER_ACKED)
    }

    pub fn worker_rejected(&self) -> u64 {
        self.get(Self::WORKER_REJECTED)
    }

    pub fn query_answered(&self) -> u64 {
        self.get(Self::QUERY_ANSWERED)
    }

    pub fn query_timed_out(&self) -> u64 {
        self.get(Self::QUERY_TIMED_OUT)
    }

    pub fn query_failed(&self) -> u64 {
        self.get(Self::QUERY_FAILED)
    }

    pub fn published(&self) -> u64 {
        self.get(Self::PUBLISHED)
    }

    pub fn failed(&self) -> u64 {
        self.get(Self::FAILED)
    }

    pub fn failed_no_broker(&self) -> u64 {
        self.get(Self::NO_BROKER)
    }

    pub fn failed_refused(&self) -> u64 {
        self.get(Self::REFUSED)
    }

    pub fn failed_timeout(&self) -> u64 {
        self.get(Self::TIMEOUT)
    }

    pub fn failed_returned(&self) -> u64 {
        self.get(Self::RETURNED)
    }

    pub fn failed_invalid(&self) -> u64 {
        self.get(Self::INVALID)
    }
}

/// How many messages each subscription's consumers in the consumer workers
/// took (`amqp_worker_consume`), by the subscription's index; in memory all
/// processes share, like [`ScriptCounters`]. Subscriptions past the
/// [`SubscriptionCounters::SLOTS`]th are not counted one by one (the totals
/// still count them).
#[derive(Clone, Copy, Debug)]
pub struct SubscriptionCounters {
    slots: &'static [AtomicU64; SubscriptionCounters::SLOTS],
}

impl SubscriptionCounters {
    pub const SLOTS: usize = 64;

    /// Counters in `slots` (zero at start).
    pub fn new(slots: &'static [AtomicU64; SubscriptionCounters::SLOTS]) -> SubscriptionCounters {
        SubscriptionCounters { slots }
    }

    /// Counters of this process only (tests, a host without shared memory).
    pub fn private() -> SubscriptionCounters {
        SubscriptionCounters::new(Box::leak(Box::new(std::array::from_fn(|_| {
            AtomicU64::new(0)
        }))))
    }

    pub fn record(&self, subscription: usize) {
        if let Some(slot) = self.slots.get(subscription) {
            slot.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn get(&self, subscription: usize) -> u64 {
        self.slots
            .get(subscription)
            .map_or(0, |slot| slot.load(Ordering::Relaxed))
    }
}
