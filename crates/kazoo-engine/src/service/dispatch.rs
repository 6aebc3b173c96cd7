//! Handing work to the consumer workers: consumed messages (annotated,
//! matched to a waiting query or given to a worker) and resumes of
//! asynchronous queries; when each delivery is acked on the broker; and
//! what becomes of them when a worker's link breaks.
//!
//! Backpressure: every delivery is consumed with acks and the broker sends
//! a consumer at most `amqp_consumer_prefetch` unacked ones. A delivery is
//! acked only once a worker has it (written to its link; after its route
//! for subscriptions that wait for the consumer's ack), and a worker's link
//! carries at most [`WINDOW`](super::lanes::WINDOW) deliveries whose route has not reported. So a
//! flood faster than the routes waits on the broker, not in this process;
//! and a resume, which jumps the queue of deliveries, waits behind at most
//! [`WINDOW`](super::lanes::WINDOW) routes, not behind the backlog, before tm's timer ends its
//! transaction.
use super::lanes::{BrokerAck, Next, Outbound, OutboundKind, Unreported};
use super::lanes::{MAX_QUEUED_BYTES_PER_WORKER, MAX_QUEUED_PER_WORKER};
use super::*;

impl Shared {
    /// Hands a transaction to resume to a worker (any worker can).
    pub(super) fn resume(&self, resume: Resume) {
        let start = self.round_robin.fetch_add(1, Ordering::Relaxed);
        let item = Outbound {
            frame: Work::Resume(resume).encode(),
            kind: OutboundKind::Resume,
        };
        lock(&self.lanes).push_resume(start, item);
    }

    /// What a worker's broken link held. Deliveries whose ack waited for
    /// their route go back to the broker (requeued, redelivered to a
    /// consumer); the others were acked when written (at-most-once, as
    /// their subscription asked) and are gone with the worker: counted and
    /// logged. Resumes that waited for the worker go to the others;
    /// deliveries not written yet wait for it to connect again.
    pub(super) fn worker_gone(
        &self,
        worker: usize,
        unreported: Unreported,
        resumes: Vec<Outbound>,
    ) {
        let (mut returned, mut lost) = (0, 0);
        for owed in unreported {
            match owed {
                Some(acker) => {
                    acker.reject(true);
                    returned += 1;
                }
                None => lost += 1,
            }
        }
        self.counters
            .requeued
            .fetch_add(returned, Ordering::Relaxed);
        self.counters
            .lost_with_worker
            .fetch_add(lost, Ordering::Relaxed);
        let handed_again = resumes.len();
        for item in resumes {
            let start = self.round_robin.fetch_add(1, Ordering::Relaxed);
            lock(&self.lanes).push_resume(start, item);
        }
        if returned + lost > 0 || handed_again > 0 {
            log::error!(
                "consumer worker {} disconnected: {returned} deliveries returned to the broker, \
                 {lost} acked ones lost with it (their route may not have run), {handed_again} \
                 resumes handed to other workers",
                worker + 1
            );
        }
    }

    /// Hands a delivery to a worker; `key` picks the worker for
    /// consistent-worker subscriptions. A worker whose lane is full gets
    /// nothing more: the delivery goes back to the broker (or, made up by
    /// the module, is dropped), counted, logged once per overflow.
    pub(super) fn deliver(&self, delivery: Delivery, ack: BrokerAck, key: Option<&[u8]>) {
        let mut lanes = lock(&self.lanes);
        let workers = lanes.workers();
        let worker = match key {
            Some(key) => (fnv1a(key) % workers as u64) as usize,
            None => self.round_robin.fetch_add(1, Ordering::Relaxed) % workers,
        };
        let item = Outbound {
            kind: OutboundKind::Delivery {
                id: delivery.id,
                ack,
            },
            frame: Work::Deliver(delivery).encode(),
        };
        let Err(refused) = lanes.push_delivery(worker, item) else {
            return;
        };
        let first = lanes.start_overflow(worker);
        drop(lanes);
        let returned = match refused.kind {
            OutboundKind::Delivery {
                ack: BrokerAck::OnHandover(acker) | BrokerAck::AfterRoute(acker),
                ..
            } => {
                acker.reject(true);
                bump(&self.counters.requeued);
                true
            }
            _ => {
                bump(&self.counters.dropped);
                false
            }
        };
        if first {
            log::error!(
                "consumer worker {} has {MAX_QUEUED_PER_WORKER} deliveries or \
                 {MAX_QUEUED_BYTES_PER_WORKER} bytes waiting: {} until it catches up \
                 (set amqp_consumer_prefetch to bound what the broker sends)",
                worker + 1,
                if returned {
                    "returning deliveries to the broker"
                } else {
                    "dropping connection events"
                }
            );
        }
    }

    /// A frame the writer could not write (the link broke): a delivery
    /// goes back to the broker (its ack, owed now or after the route, was
    /// not sent), a resume to another worker.
    pub(super) fn unwritten(&self, worker: usize, generation: u64, next: Next) {
        let Some(id) = next.id else {
            let item = Outbound {
                frame: next.frame,
                kind: OutboundKind::Resume,
            };
            let start = self.round_robin.fetch_add(1, Ordering::Relaxed);
            lock(&self.lanes).push_resume(start, item);
            return;
        };
        let owed = lock(&self.lanes).forget(worker, generation, id);
        if let Some(acker) = next.on_written.or(owed) {
            acker.reject(true);
            bump(&self.counters.requeued);
        } else {
            bump(&self.counters.lost_with_worker);
        }
    }

    pub(super) fn next_id(&self) -> u64 {
        self.next_delivery.fetch_add(1, Ordering::Relaxed)
    }

    /// Hands an event the module makes up (not consumed from a broker) to a
    /// worker for the event routes: connection events (no routing key, so
    /// `$kzRK` is null and a missing route is not an error) and returned
    /// messages (the routing key they were published with).
    pub(super) fn synthetic_event(&self, body: Vec<u8>, routing_key: Option<Vec<u8>>) {
        let delivery = Delivery {
            id: self.next_id(),
            routing_key,
            body,
            event_key: None,
            event_subkey: None,
        };
        self.deliver(delivery, BrokerAck::None, None);
    }

    /// A reply a process's direct query read but did not wait for: to the
    /// event routes, as a reply consumed here that nobody waits for.
    pub(super) fn late_reply(&self, routing_key: Vec<u8>, body: Vec<u8>) {
        bump(&self.counters.unmatched_replies);
        bump(&self.counters.delivered);
        let delivery = Delivery {
            id: self.next_id(),
            routing_key: Some(routing_key),
            body,
            event_key: None,
            event_subkey: None,
        };
        self.deliver(delivery, BrokerAck::None, None);
    }

    /// A consumed message: the reply a query waits for (acked at once), or
    /// a delivery for a worker.
    pub(super) fn consumed(&self, delivery: crate::broker::Consumed) {
        if delivery.redelivered {
            bump(&self.counters.redelivered);
        }
        let received = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        let annotated =
            match annotate_consumed(&delivery.body, &delivery.zone, received, delivery.broker_id) {
                Ok(annotated) => annotated,
                Err(e) => {
                    log::error!(
                        "dropping a message from broker {} (routing key {}): {e} (rejected, not \
                         requeued)",
                        delivery.broker_id,
                        delivery.routing_key
                    );
                    // Redelivering it would fail the same way.
                    delivery.ack.reject(false);
                    bump(&self.counters.dropped);
                    return;
                }
            };
        if let Source::Reply { .. } = delivery.source {
            if let Some(waiter) = annotated
                .msg_id
                .as_ref()
                .and_then(|id| lock(&self.pending).remove(id))
            {
                if waiter.send(annotated.body.clone()).is_ok() {
                    delivery.ack.ack();
                    bump(&self.counters.acked);
                    return;
                }
            }
        }
        let subscription = match delivery.source {
            Source::Subscription { index } => {
                if let Some(consumed) = self.subscription_consumed.get().and_then(|c| c.get(index))
                {
                    bump(consumed);
                }
                self.subscriptions.get().and_then(|s| s.get(index))
            }
            Source::Reply { .. } => {
                bump(&self.counters.unmatched_replies);
                None
            }
        };
        bump(&self.counters.delivered);
        let ack = match subscription {
            Some(s) if !s.no_ack && s.wait_for_consumer_ack => BrokerAck::AfterRoute(delivery.ack),
            _ => BrokerAck::OnHandover(delivery.ack),
        };
        let hash_key: Option<Vec<u8>> = subscription
            .filter(|s| s.consistent_worker)
            .map(|s| consistent_key(s, &annotated.body, &delivery.routing_key));
        self.deliver(
            Delivery {
                id: self.next_id(),
                routing_key: Some(delivery.routing_key.into_bytes()),
                body: annotated.body,
                event_key: subscription.and_then(|s| s.event_key.clone()),
                event_subkey: subscription.and_then(|s| s.event_subkey.clone()),
            },
            ack,
            hash_key.as_deref(),
        );
    }
}

/// The value a consistent-worker subscription hashes: its key field when the
/// payload has it as a string, else the routing key.
pub(super) fn consistent_key(
    subscription: &Subscription,
    body: &[u8],
    routing_key: &str,
) -> Vec<u8> {
    subscription
        .consistent_worker_key
        .as_ref()
        .and_then(|field| {
            let value = crate::json::parse(body).ok()?;
            value.get(field.as_bytes())?.as_bytes().map(<[u8]>::to_vec)
        })
        .unwrap_or_else(|| routing_key.as_bytes().to_vec())
}

pub(super) fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &b| {
        (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subscription(key: Option<&str>) -> Subscription {
        let mut s = crate::subscription::simple("ex", "topic", "q", "#").unwrap();
        s.consistent_worker = true;
        s.consistent_worker_key = key.map(str::to_string);
        s
    }

    #[test]
    fn consistent_workers_hash_the_key_field_or_the_routing_key() {
        let by_field = subscription(Some("Call-ID"));
        let body = br#"{"Call-ID": "abc@host", "Other": 1}"#;
        assert_eq!(consistent_key(&by_field, body, "rk.1"), b"abc@host");
        // A missing or non-string field falls back to the routing key.
        assert_eq!(
            consistent_key(&by_field, br#"{"Other": 1}"#, "rk.1"),
            b"rk.1"
        );
        assert_eq!(
            consistent_key(&by_field, br#"{"Call-ID": 5}"#, "rk.1"),
            b"rk.1"
        );
        assert_eq!(consistent_key(&subscription(None), body, "rk.2"), b"rk.2");
    }

    #[test]
    fn the_same_key_always_picks_the_same_worker_and_keys_spread() {
        let workers = 8u64;
        let pick = |key: &str| fnv1a(key.as_bytes()) % workers;
        assert_eq!(pick("call-1@host"), pick("call-1@host"));
        let used: std::collections::BTreeSet<u64> =
            (0..200).map(|i| pick(&format!("call-{i}@host"))).collect();
        assert_eq!(
            used.len() as u64,
            workers,
            "200 keys should reach all 8 workers"
        );
    }
}
