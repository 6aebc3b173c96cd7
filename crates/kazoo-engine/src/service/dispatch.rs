//! Handing work to the consumer workers: consumed messages (annotated,
//! matched to a waiting query or given to a worker) and resumes of
//! asynchronous queries; what becomes of them when a worker's link breaks.
use super::*;

/// Deliveries kept for a worker that has not connected yet (at start-up);
/// beyond this the oldest is dropped with an error line.
pub(super) const MAX_QUEUED_PER_WORKER: usize = 10_000;

/// A frame for a Kamailio process, and what it carries: what becomes of it
/// when the connection breaks before the frame is written.
pub(super) struct Outbound {
    pub(super) frame: Vec<u8>,
    pub(super) kind: OutboundKind,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum OutboundKind {
    /// The answer to a request (lost with the requester, who gave up).
    Answer,
    /// A delivery: with an ack owed to the broker (returned to the broker
    /// when not processed), or without (handed to the worker again).
    Delivery { id: u64, needs_ack: bool },
    /// Resuming a suspended transaction (handed to a worker again).
    Resume,
}

impl Outbound {
    pub(super) fn answer(message: Message) -> Outbound {
        Outbound {
            frame: message.encode(),
            kind: OutboundKind::Answer,
        }
    }
}

pub(super) type Link = mpsc::UnboundedSender<Outbound>;

/// The consumer workers' connections, and what waits for those not yet
/// connected.
pub(super) struct Workers {
    /// Each worker's current connection, with the generation that tells it
    /// from the worker's earlier ones.
    pub(super) links: Vec<Option<(u64, Link)>>,
    pub(super) queued: Vec<VecDeque<Outbound>>,
    pub(super) generations: u64,
}

impl Workers {
    pub(super) fn new(count: usize) -> Workers {
        Workers {
            links: vec![None; count],
            queued: (0..count).map(|_| VecDeque::new()).collect(),
            generations: 0,
        }
    }

    pub(super) fn send(&mut self, worker: usize, item: Outbound) {
        if let Some((_, link)) = &self.links[worker] {
            if let Err(unsent) = link.send(item) {
                self.links[worker] = None;
                self.queue(worker, unsent.0);
            }
            return;
        }
        self.queue(worker, item);
    }

    pub(super) fn queue(&mut self, worker: usize, item: Outbound) {
        let queue = &mut self.queued[worker];
        if queue.len() >= MAX_QUEUED_PER_WORKER {
            queue.pop_front();
            log::error!(
                "consumer worker {} is not connected: dropped its oldest queued delivery",
                worker + 1
            );
        }
        queue.push_back(item);
    }

    /// Makes `link` the worker's connection; returns its generation.
    pub(super) fn attach(&mut self, worker: usize, link: Link) -> u64 {
        for item in self.queued[worker].drain(..) {
            let _ = link.send(item);
        }
        self.generations += 1;
        self.links[worker] = Some((self.generations, link));
        self.generations
    }

    /// Forgets the worker's connection of `generation`, unless the worker
    /// has connected again since.
    pub(super) fn detach(&mut self, worker: usize, generation: u64) {
        if matches!(self.links[worker], Some((g, _)) if g == generation) {
            self.links[worker] = None;
        }
    }
}

impl Shared {
    pub(super) fn resume(&self, resume: Resume) {
        let worker =
            self.round_robin.fetch_add(1, Ordering::Relaxed) % lock(&self.workers).links.len();
        let item = Outbound {
            frame: Message::Resume(resume).encode(),
            kind: OutboundKind::Resume,
        };
        lock(&self.workers).send(worker, item);
    }

    /// A worker's connection broke. What it had not reported is not lost:
    /// deliveries that owe the broker an ack go back to the broker (requeued,
    /// redelivered to a consumer), unwritten deliveries without one wait
    /// for the worker to connect again, unwritten resumes go to any worker.
    /// Deliveries without an ack that were written are gone with the
    /// connection: counted and logged.
    pub(super) fn worker_gone(
        &self,
        worker: usize,
        in_flight: &HashSet<u64>,
        unsent: Vec<Outbound>,
    ) {
        let mut returned = 0;
        let mut returned_ids: Vec<u64> = in_flight.iter().copied().collect();
        let mut handed_again = 0;
        for item in unsent {
            match item.kind {
                OutboundKind::Answer => {}
                OutboundKind::Delivery {
                    id,
                    needs_ack: true,
                } => returned_ids.push(id),
                OutboundKind::Delivery { .. } => {
                    handed_again += 1;
                    lock(&self.workers).send(worker, item);
                }
                OutboundKind::Resume => {
                    handed_again += 1;
                    let workers = lock(&self.workers).links.len();
                    let other = self.round_robin.fetch_add(1, Ordering::Relaxed) % workers;
                    lock(&self.workers).send(other, item);
                }
            }
        }
        for id in returned_ids {
            if let Some(acker) = lock(&self.ackers).remove(&id) {
                acker.reject(true);
                returned += 1;
            }
        }
        self.counters
            .requeued
            .fetch_add(returned, Ordering::Relaxed);
        log::error!(
            "consumer worker {} disconnected: {returned} unprocessed deliveries returned to the broker, {handed_again} handed out again",
            worker + 1
        );
    }

    /// Hands a delivery to a worker; `key` picks the worker for
    /// consistent-worker subscriptions.
    pub(super) fn deliver(&self, delivery: Delivery, key: Option<&[u8]>) {
        let workers = lock(&self.workers).links.len();
        let worker = match key {
            Some(key) => (fnv1a(key) % workers as u64) as usize,
            None => self.round_robin.fetch_add(1, Ordering::Relaxed) % workers,
        };
        let kind = OutboundKind::Delivery {
            id: delivery.id,
            needs_ack: delivery.needs_ack,
        };
        let item = Outbound {
            frame: Message::Deliver(delivery).encode(),
            kind,
        };
        lock(&self.workers).send(worker, item);
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
            needs_ack: false,
        };
        self.deliver(delivery, None);
    }

    pub(super) fn consumed(&self, delivery: crate::broker::Delivery) {
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
                        "dropping a message from broker {} (routing key {}): {e}",
                        delivery.broker_id,
                        delivery.routing_key
                    );
                    if let Some(acker) = delivery.ack {
                        // Redelivering it would fail the same way.
                        acker.ack();
                    }
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
        let id = self.next_id();
        let wait_for_route = subscription.is_some_and(|s| s.wait_for_consumer_ack);
        let needs_ack = match delivery.ack {
            Some(acker) if wait_for_route => {
                lock(&self.ackers).insert(id, acker);
                true
            }
            Some(acker) => {
                acker.ack();
                bump(&self.counters.acked);
                false
            }
            None => false,
        };
        let hash_key: Option<Vec<u8>> = subscription
            .filter(|s| s.consistent_worker)
            .map(|s| consistent_key(s, &annotated.body, &delivery.routing_key));
        self.deliver(
            Delivery {
                id,
                routing_key: Some(delivery.routing_key.into_bytes()),
                body: annotated.body,
                event_key: subscription.and_then(|s| s.event_key.clone()),
                event_subkey: subscription.and_then(|s| s.event_subkey.clone()),
                needs_ack,
            },
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

    fn item(byte: u8) -> Outbound {
        Outbound {
            frame: vec![byte],
            kind: OutboundKind::Resume,
        }
    }

    #[test]
    fn undelivered_frames_wait_for_their_worker_and_are_bounded() {
        let mut workers = Workers::new(2);
        workers.send(1, item(1));
        workers.send(1, item(2));
        let (tx, mut rx) = mpsc::unbounded_channel();
        workers.attach(1, tx);
        assert_eq!(rx.try_recv().unwrap().frame, vec![1]);
        assert_eq!(rx.try_recv().unwrap().frame, vec![2]);
        workers.send(1, item(3));
        assert_eq!(rx.try_recv().unwrap().frame, vec![3]);
        for i in 0..MAX_QUEUED_PER_WORKER + 5 {
            workers.send(0, item((i % 256) as u8));
        }
        assert_eq!(workers.queued[0].len(), MAX_QUEUED_PER_WORKER);
    }

    #[test]
    fn an_old_connection_going_never_detaches_the_new_one() {
        let mut workers = Workers::new(1);
        let (old_tx, _old_rx) = mpsc::unbounded_channel();
        let old = workers.attach(0, old_tx);
        let (new_tx, mut new_rx) = mpsc::unbounded_channel();
        let new = workers.attach(0, new_tx);
        workers.detach(0, old);
        workers.send(0, item(7));
        assert_eq!(new_rx.try_recv().unwrap().frame, vec![7]);
        workers.detach(0, new);
        workers.send(0, item(8));
        assert!(new_rx.try_recv().is_err());
        assert_eq!(workers.queued[0].len(), 1);
    }
}
