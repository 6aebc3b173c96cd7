//! What the service counts and the state it is in: [`Stats`] for the host's
//! statistics, and the `kazoo.status` document.
use super::*;

/// What the service did since start-up (totals) and the state it is in
/// now (gauges): the `kazoo.status` RPC and the host's statistics.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Publishes the broker confirmed, and publishes that failed.
    pub published: u64,
    pub publish_failed: u64,
    /// Synchronous queries answered, timed out, failed; queries waiting now.
    pub query_answered: u64,
    pub query_timed_out: u64,
    pub query_failed: u64,
    pub query_pending: u64,
    /// Asynchronous queries resumed with a reply, and without one.
    pub async_answered: u64,
    pub async_not_answered: u64,
    /// Asynchronous queries waiting for the reply a consumer worker takes
    /// (`amqp_worker_replies`).
    pub async_waiting: u64,
    /// Consumed messages handed to workers, dropped as unreadable, and
    /// replies nobody waited for (delivered as events).
    pub delivered: u64,
    /// Messages the consumer workers consumed themselves and routed
    /// (`amqp_worker_consume`), which never cross this process.
    pub consumed_by_workers: u64,
    pub dropped: u64,
    pub unmatched_replies: u64,
    /// Deliveries returned to the broker: their worker's link broke before
    /// the route ran (or before the delivery was written), or the worker's
    /// queue was full.
    pub requeued: u64,
    /// Deliveries acked when handed to a worker (`no_ack` subscriptions,
    /// acks on receipt) whose worker's link broke before its route
    /// reported: the route may not have run.
    pub lost_with_worker: u64,
    /// IPC connections refused: the peer was not one of this Kamailio's
    /// processes.
    pub ipc_refused: u64,
    /// Publishes that failed, by reason: no broker connected (or none such),
    /// refused by the broker (nack, channel closed), not confirmed in time,
    /// returned (`mandatory`, no queue), not sendable.
    pub publish_failed_no_broker: u64,
    pub publish_failed_refused: u64,
    pub publish_failed_timeout: u64,
    pub publish_failed_returned: u64,
    pub publish_failed_invalid: u64,
    /// Deliveries acknowledged to the broker; deliveries it redelivered.
    pub acked: u64,
    pub redelivered: u64,
    /// Deliveries the module could not hand to the script faithfully (an
    /// unreadable routing key): rejected without requeue (dead-lettered
    /// where the queue has a dead-letter exchange) or dropped.
    pub rejected: u64,
    /// Deliveries waiting to be written to their consumer worker.
    pub worker_queued: u64,
    pub brokers: Vec<BrokerStats>,
}

/// A broker and whether each of its connections is up.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BrokerStats {
    pub id: u32,
    pub zone: String,
    pub host: String,
    /// By role (`publisher`, `consumer 0`, ...).
    pub connections: std::collections::BTreeMap<String, bool>,
    /// Connections that opened again after being lost.
    pub reconnects: u64,
}

/// What the service counts, for the `kazoo.status` RPC (publishes apart:
/// [`ScriptCounters`], shared with the processes that publish directly).
#[derive(Default)]
pub(super) struct Counters {
    pub(super) async_answered: AtomicU64,
    pub(super) async_not_answered: AtomicU64,
    pub(super) delivered: AtomicU64,
    pub(super) dropped: AtomicU64,
    pub(super) unmatched_replies: AtomicU64,
    pub(super) requeued: AtomicU64,
    pub(super) lost_with_worker: AtomicU64,
    pub(super) ipc_refused: AtomicU64,
    /// Deliveries acknowledged to the broker, and deliveries the broker
    /// marked as redelivered.
    pub(super) acked: AtomicU64,
    pub(super) redelivered: AtomicU64,
}

/// A broker and whether each of its connections is up.
pub(super) struct BrokerState {
    pub(super) id: u32,
    pub(super) zone: String,
    pub(super) host: String,
    pub(super) connections: std::collections::BTreeMap<String, bool>,
    /// Since when (Unix seconds) each connection is in its state.
    pub(super) since: std::collections::BTreeMap<String, u64>,
    /// The last failure of any of its connections: when, and why.
    pub(super) last_error: Option<(u64, String)>,
    /// Connections that opened again after being lost.
    pub(super) reconnects: u64,
    /// Whether each consuming connection is up (for the zone events).
    pub(super) consumers_up: Vec<bool>,
}

/// Where a subscription cannot be consumed now: by broker id, why.
pub(super) type SubscriptionFailures = std::collections::BTreeMap<u32, String>;

/// A JSON string (status documents).
pub(super) fn json_text(text: &str) -> crate::json::Value {
    crate::json::Value::String(text.as_bytes().to_vec())
}

/// A JSON object from its members, in order (status documents).
pub(super) fn json_object(members: Vec<(&str, crate::json::Value)>) -> crate::json::Value {
    crate::json::Value::Object(
        members
            .into_iter()
            .map(|(k, v)| (k.as_bytes().to_vec(), v))
            .collect(),
    )
}

impl Shared {
    /// What the service did since start-up and the state it is in.
    pub(super) fn stats(&self) -> Stats {
        let c = &self.counters;
        let count = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let brokers = lock(&self.brokers_state)
            .iter()
            .map(|b| BrokerStats {
                id: b.id,
                zone: b.zone.clone(),
                host: b.host.clone(),
                connections: b.connections.clone(),
                reconnects: b.reconnects,
            })
            .collect();
        Stats {
            published: self.script_counters.published(),
            publish_failed: self.script_counters.failed(),
            query_answered: self.script_counters.query_answered(),
            consumed_by_workers: self.script_counters.worker_consumed(),
            query_timed_out: self.script_counters.query_timed_out(),
            query_failed: self.script_counters.query_failed(),
            query_pending: lock(&self.pending).len() as u64,
            async_answered: count(&c.async_answered) + self.script_counters.async_answered(),
            async_not_answered: count(&c.async_not_answered)
                + self.script_counters.async_not_answered(),
            async_waiting: self.async_queries.map_or(0, |q| q.in_flight()),
            delivered: count(&c.delivered),
            dropped: count(&c.dropped),
            unmatched_replies: count(&c.unmatched_replies),
            requeued: count(&c.requeued),
            lost_with_worker: count(&c.lost_with_worker),
            ipc_refused: count(&c.ipc_refused),
            publish_failed_no_broker: self.script_counters.failed_no_broker(),
            publish_failed_refused: self.script_counters.failed_refused(),
            publish_failed_timeout: self.script_counters.failed_timeout(),
            publish_failed_returned: self.script_counters.failed_returned(),
            publish_failed_invalid: self.script_counters.failed_invalid(),
            acked: count(&c.acked) + self.script_counters.worker_acked(),
            redelivered: count(&c.redelivered),
            rejected: self
                .brokers
                .borrow()
                .as_ref()
                .map_or(0, |brokers| brokers.rejected())
                + self.script_counters.worker_rejected(),
            worker_queued: lock(&self.lanes).queued() as u64,
            brokers,
        }
    }

    /// The `kazoo.status` document.
    pub(super) fn status(&self) -> Vec<u8> {
        use crate::json::Value;
        let stats = self.stats();
        let (text, object) = (json_text, json_object);
        let brokers = lock(&self.brokers_state)
            .iter()
            .map(|b| {
                let by_role = |values: Vec<(&String, Value)>| {
                    Value::Object(
                        values
                            .into_iter()
                            .map(|(role, v)| (role.as_bytes().to_vec(), v))
                            .collect(),
                    )
                };
                let states = b
                    .connections
                    .iter()
                    .map(|(role, up)| (role, text(if *up { "up" } else { "down" })))
                    .collect();
                let since = b
                    .since
                    .iter()
                    .map(|(role, at)| (role, Value::UInt(*at)))
                    .collect();
                let last_error = match &b.last_error {
                    Some((at, reason)) => {
                        object(vec![("at", Value::UInt(*at)), ("reason", text(reason))])
                    }
                    None => Value::Null,
                };
                object(vec![
                    ("id", Value::UInt(u64::from(b.id))),
                    ("zone", text(&b.zone)),
                    ("host", text(&b.host)),
                    ("primary", Value::Bool(b.zone == self.primary_zone)),
                    ("connections", by_role(states)),
                    ("since", by_role(since)),
                    ("last_error", last_error),
                    ("reconnects", Value::UInt(b.reconnects)),
                ])
            })
            .collect();
        let subscriptions = self.subscriptions_status();
        let status = object(vec![
            ("brokers", Value::Array(brokers)),
            ("subscriptions", Value::Array(subscriptions)),
            (
                "publish",
                object(vec![
                    ("confirmed", Value::UInt(stats.published)),
                    ("failed", Value::UInt(stats.publish_failed)),
                    (
                        "failed_no_broker",
                        Value::UInt(stats.publish_failed_no_broker),
                    ),
                    ("failed_refused", Value::UInt(stats.publish_failed_refused)),
                    ("failed_timeout", Value::UInt(stats.publish_failed_timeout)),
                    (
                        "failed_returned",
                        Value::UInt(stats.publish_failed_returned),
                    ),
                    ("failed_invalid", Value::UInt(stats.publish_failed_invalid)),
                ]),
            ),
            (
                "query",
                object(vec![
                    ("answered", Value::UInt(stats.query_answered)),
                    ("timed_out", Value::UInt(stats.query_timed_out)),
                    ("failed", Value::UInt(stats.query_failed)),
                    ("pending", Value::UInt(stats.query_pending)),
                ]),
            ),
            (
                "async_query",
                object(vec![
                    ("answered", Value::UInt(stats.async_answered)),
                    ("not_answered", Value::UInt(stats.async_not_answered)),
                    ("waiting", Value::UInt(stats.async_waiting)),
                ]),
            ),
            (
                "ipc",
                object(vec![("refused", Value::UInt(stats.ipc_refused))]),
            ),
            (
                "consumed",
                object(vec![
                    ("delivered", Value::UInt(stats.delivered)),
                    ("by_workers", Value::UInt(stats.consumed_by_workers)),
                    ("dropped", Value::UInt(stats.dropped)),
                    ("unmatched_replies", Value::UInt(stats.unmatched_replies)),
                    ("requeued", Value::UInt(stats.requeued)),
                    ("lost_with_worker", Value::UInt(stats.lost_with_worker)),
                    ("worker_queued", Value::UInt(stats.worker_queued)),
                    ("acked", Value::UInt(stats.acked)),
                    ("redelivered", Value::UInt(stats.redelivered)),
                    ("rejected", Value::UInt(stats.rejected)),
                ]),
            ),
        ]);
        crate::json::to_json(&status)
    }

    /// Each subscription: what it declares, the messages it delivered and,
    /// per broker it is consumed on, the consuming connections up or why it
    /// fails there.
    pub(super) fn subscriptions_status(&self) -> Vec<crate::json::Value> {
        use crate::json::Value;
        let (text, object) = (json_text, json_object);
        // Taken (and let go) before the other locks.
        let workers = lock(&self.lanes).workers();
        let brokers = lock(&self.brokers_state);
        let failures = lock(&self.subscription_failures);
        let consumed = self.subscription_consumed.get();
        let no_failures = SubscriptionFailures::new();
        self.subscriptions
            .get()
            .into_iter()
            .flatten()
            .enumerate()
            .map(|(index, sub)| {
                let failed = failures.get(&index).unwrap_or(&no_failures);
                let in_workers =
                    self.workers_consume && crate::worker_consume::consumed_in_workers(sub);
                let on_brokers = brokers
                    .iter()
                    .filter(|b| b.zone == self.primary_zone || sub.federate)
                    .map(|b| {
                        // On the primary zone's brokers, each worker consumes
                        // such a subscription over its own connection.
                        let consumers = if in_workers && b.zone == self.primary_zone {
                            workers
                        } else {
                            b.consumers_up.iter().filter(|up| **up).count()
                        };
                        let (state, reason) = match failed.get(&b.id) {
                            Some(reason) => ("failed", text(reason)),
                            None if consumers > 0 => ("consuming", Value::Null),
                            None => ("down", Value::Null),
                        };
                        object(vec![
                            ("id", Value::UInt(u64::from(b.id))),
                            ("state", text(state)),
                            ("consumers", Value::UInt(consumers as u64)),
                            ("reason", reason),
                        ])
                    })
                    .collect();
                let count = consumed
                    .and_then(|c| c.get(index))
                    .map_or(0, |c| c.load(Ordering::Relaxed))
                    + self.subscription_counters.get(index);
                object(vec![
                    ("index", Value::UInt(index as u64 + 1)),
                    ("name", text(sub.listener_name())),
                    ("exchange", text(&sub.exchange)),
                    ("type", text(&sub.exchange_type)),
                    ("queue", text(&sub.queue)),
                    (
                        "routing",
                        Value::Array(sub.routing.iter().map(|r| text(r)).collect()),
                    ),
                    ("federate", Value::Bool(sub.federate)),
                    ("no_ack", Value::Bool(sub.no_ack)),
                    ("consumed", Value::UInt(count)),
                    (
                        "in_workers",
                        Value::Bool(
                            self.workers_consume && crate::worker_consume::consumed_in_workers(sub),
                        ),
                    ),
                    ("brokers", Value::Array(on_brokers)),
                ])
            })
            .collect()
    }
}
