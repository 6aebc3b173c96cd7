//! Handing work to the consumer workers: consumed messages (annotated,
//! matched to a waiting query or given to a worker) and resumes of
//! asynchronous queries; when each delivery is acked on the broker; and
//! what becomes of them when a worker's link breaks.
//!
//! Backpressure: every delivery is consumed with acks and the broker sends
//! a consumer at most `amqp_consumer_prefetch` unacked ones. A delivery is
//! acked only once a worker has it (written to its link; after its route
//! for subscriptions that wait for the consumer's ack), and a worker's link
//! carries at most [`WINDOW`] deliveries whose route has not reported. So a
//! flood faster than the routes waits on the broker, not in this process;
//! and a resume, which jumps the queue of deliveries, waits behind at most
//! [`WINDOW`] routes, not behind the backlog, before tm's timer ends its
//! transaction.
use super::*;

/// Deliveries written to a worker's link whose route has not reported yet.
pub(super) const WINDOW: usize = 8;

/// Bounds on the deliveries waiting for one worker (beyond the prefetch,
/// which normally holds far fewer: with `amqp_consumer_prefetch` 0 these
/// are the only bound). A delivery over them goes back to the broker.
pub(super) const MAX_QUEUED_PER_WORKER: usize = 10_000;
pub(super) const MAX_QUEUED_BYTES_PER_WORKER: usize = 64 << 20;

/// Work for a consumer worker: the frame, and what it owes the broker.
#[derive(Debug)]
pub(super) struct Outbound {
    pub(super) frame: Vec<u8>,
    pub(super) kind: OutboundKind,
}

#[derive(Debug)]
pub(super) enum OutboundKind {
    /// Resuming a suspended transaction (any worker can).
    Resume,
    /// A delivery for the event routes, and when it is acked.
    Delivery { id: u64, ack: BrokerAck },
}

/// When a delivery is acknowledged to the broker.
#[derive(Debug)]
pub(super) enum BrokerAck {
    /// Never: the module made it up (connection events, returned messages).
    None,
    /// Once written to its worker's link (`no_ack` subscriptions, `no_ack:
    /// 0` ones without `wait_for_consumer_ack`, replies nobody waited for).
    OnHandover(Acker),
    /// Once its route has run (`wait_for_consumer_ack`).
    AfterRoute(Acker),
}

/// A worker's frame to write now, and the ack owed once it is written.
#[derive(Debug)]
pub(super) struct Next {
    /// The delivery's id (`None` for a resume).
    pub(super) id: Option<u64>,
    pub(super) frame: Vec<u8>,
    pub(super) on_written: Option<Acker>,
}

/// What a worker's link held when it broke: each delivery written to it
/// whose route had not reported (with its ack, if owed after the route).
pub(super) type Unreported = Vec<Option<Acker>>;

/// One worker's connection to this process.
struct Attached {
    /// Tells this link from the worker's earlier ones.
    generation: u64,
    /// Wakes the link's writer when there is work or room for it.
    wake: Arc<tokio::sync::Notify>,
    /// Deliveries written to it whose route has not reported, by id, with
    /// the ack owed after the route.
    in_flight: HashMap<u64, Option<Acker>>,
}

/// One worker's work.
#[derive(Default)]
struct Lane {
    link: Option<Attached>,
    /// Resumes go before any delivery: tm ends a suspended transaction when
    /// its timer fires.
    resumes: VecDeque<Outbound>,
    deliveries: VecDeque<Outbound>,
    /// The bytes of the frames in `deliveries`.
    queued_bytes: usize,
    /// Whether the lane refused a delivery since it was last drained below
    /// half its bounds: one log line per overflow, not per delivery.
    overflowing: bool,
}

/// The consumer workers' lanes.
pub(super) struct Lanes {
    lanes: Vec<Lane>,
    generations: u64,
}

impl Lanes {
    pub(super) fn new(workers: usize) -> Lanes {
        Lanes {
            lanes: (0..workers.max(1)).map(|_| Lane::default()).collect(),
            generations: 0,
        }
    }

    pub(super) fn workers(&self) -> usize {
        self.lanes.len()
    }

    /// Deliveries waiting to be written to their worker.
    pub(super) fn queued(&self) -> usize {
        self.lanes.iter().map(|l| l.deliveries.len()).sum()
    }

    /// Queues a delivery for `worker`; gives it back when the worker's
    /// lane is full (the first delivery of an empty lane always fits).
    pub(super) fn push_delivery(&mut self, worker: usize, item: Outbound) -> Result<(), Outbound> {
        let lane = &mut self.lanes[worker];
        let full = lane.deliveries.len() >= MAX_QUEUED_PER_WORKER
            || (!lane.deliveries.is_empty()
                && lane.queued_bytes + item.frame.len() > MAX_QUEUED_BYTES_PER_WORKER);
        if full {
            return Err(item);
        }
        lane.queued_bytes += item.frame.len();
        lane.deliveries.push_back(item);
        lane.wake();
        Ok(())
    }

    /// Marks `worker`'s lane as refusing deliveries; true the first time
    /// since it was last below half its bounds (log then).
    pub(super) fn start_overflow(&mut self, worker: usize) -> bool {
        !std::mem::replace(&mut self.lanes[worker].overflowing, true)
    }

    /// Queues a resume for a worker, a connected one when there is one,
    /// trying from `start`.
    pub(super) fn push_resume(&mut self, start: usize, item: Outbound) {
        let count = self.lanes.len();
        let worker = (0..count)
            .map(|i| (start + i) % count)
            .find(|&w| self.lanes[w].link.is_some())
            .unwrap_or(start % count);
        let lane = &mut self.lanes[worker];
        lane.resumes.push_back(item);
        lane.wake();
    }

    /// Makes a new link `worker`'s; returns its generation and what the
    /// worker's previous link, if it is still attached (its connection has
    /// not noticed the break yet), held unreported.
    pub(super) fn attach(
        &mut self,
        worker: usize,
        wake: Arc<tokio::sync::Notify>,
    ) -> (u64, Unreported) {
        self.generations += 1;
        let generation = self.generations;
        let lane = &mut self.lanes[worker];
        let previous = lane.link.replace(Attached {
            generation,
            wake,
            in_flight: HashMap::new(),
        });
        lane.wake();
        let unreported = previous
            .map(|old| old.in_flight.into_values().collect())
            .unwrap_or_default();
        (generation, unreported)
    }

    /// Forgets the link of `generation`, unless the worker has connected
    /// again since; returns what it held unreported, and the resumes that
    /// waited for it, for other workers.
    pub(super) fn detach(&mut self, worker: usize, generation: u64) -> (Unreported, Vec<Outbound>) {
        let lane = &mut self.lanes[worker];
        if !matches!(&lane.link, Some(link) if link.generation == generation) {
            return (Vec::new(), Vec::new());
        }
        let unreported = lane
            .link
            .take()
            .map(|link| link.in_flight.into_values().collect())
            .unwrap_or_default();
        (unreported, lane.resumes.drain(..).collect())
    }

    /// The next frame for the link of `generation`: a resume, else a
    /// delivery while fewer than [`WINDOW`] are unreported. A delivery is
    /// counted unreported from here on.
    pub(super) fn next(&mut self, worker: usize, generation: u64) -> Option<Next> {
        let lane = &mut self.lanes[worker];
        let link = lane.link.as_mut().filter(|l| l.generation == generation)?;
        if let Some(item) = lane.resumes.pop_front() {
            return Some(Next {
                id: None,
                frame: item.frame,
                on_written: None,
            });
        }
        if link.in_flight.len() >= WINDOW {
            return None;
        }
        let item = lane.deliveries.pop_front()?;
        lane.queued_bytes -= item.frame.len();
        if lane.deliveries.len() <= MAX_QUEUED_PER_WORKER / 2
            && lane.queued_bytes <= MAX_QUEUED_BYTES_PER_WORKER / 2
        {
            lane.overflowing = false;
        }
        let (id, ack) = match item.kind {
            OutboundKind::Delivery { id, ack } => (id, ack),
            // Resumes are never queued as deliveries.
            OutboundKind::Resume => {
                return Some(Next {
                    id: None,
                    frame: item.frame,
                    on_written: None,
                })
            }
        };
        let (after_route, on_written) = match ack {
            BrokerAck::None => (None, None),
            BrokerAck::OnHandover(acker) => (None, Some(acker)),
            BrokerAck::AfterRoute(acker) => (Some(acker), None),
        };
        link.in_flight.insert(id, after_route);
        Some(Next {
            id: Some(id),
            frame: item.frame,
            on_written,
        })
    }

    /// The worker's route for `delivery` ran: returns the ack it owed, if
    /// any, and makes room for the next delivery.
    pub(super) fn reported(
        &mut self,
        worker: usize,
        generation: u64,
        delivery: u64,
    ) -> Option<Acker> {
        let lane = &mut self.lanes[worker];
        let link = lane.link.as_mut().filter(|l| l.generation == generation)?;
        let owed = link.in_flight.remove(&delivery).flatten();
        lane.wake();
        owed
    }
}

impl Lane {
    fn wake(&self) {
        if let Some(link) = &self.link {
            link.wake.notify_one();
        }
    }
}

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
        let owed = lock(&self.lanes).reported(worker, generation, id);
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

    fn delivery(id: u64, bytes: usize) -> Outbound {
        Outbound {
            frame: vec![1; bytes],
            kind: OutboundKind::Delivery {
                id,
                ack: BrokerAck::None,
            },
        }
    }

    fn resume(byte: u8) -> Outbound {
        Outbound {
            frame: vec![byte],
            kind: OutboundKind::Resume,
        }
    }

    fn wake() -> Arc<tokio::sync::Notify> {
        Arc::new(tokio::sync::Notify::new())
    }

    #[test]
    fn resumes_jump_the_queue_and_a_link_holds_a_window_of_deliveries() {
        let mut lanes = Lanes::new(1);
        for id in 1..=20 {
            assert!(lanes.push_delivery(0, delivery(id, 10)).is_ok());
        }
        // Nothing goes out before the worker is connected.
        assert!(lanes.next(0, 1).is_none());
        let (generation, unreported) = lanes.attach(0, wake());
        assert!(unreported.is_empty());
        lanes.push_resume(0, resume(9));
        let first = lanes.next(0, generation).unwrap();
        assert_eq!((first.id, first.frame), (None, vec![9]));
        let ids: Vec<_> = std::iter::from_fn(|| lanes.next(0, generation))
            .map(|n| n.id.unwrap())
            .collect();
        assert_eq!(ids, (1..=WINDOW as u64).collect::<Vec<_>>());
        assert_eq!(lanes.queued(), 20 - WINDOW);
        // A resume still goes out with the window full.
        lanes.push_resume(0, resume(8));
        assert_eq!(lanes.next(0, generation).unwrap().frame, vec![8]);
        assert!(lanes.next(0, generation).is_none());
        // A report makes room for one more.
        assert!(lanes.reported(0, generation, 3).is_none());
        assert_eq!(
            lanes.next(0, generation).unwrap().id,
            Some(WINDOW as u64 + 1)
        );
        assert!(lanes.next(0, generation).is_none());
    }

    #[test]
    fn a_full_lane_refuses_deliveries_by_count_and_by_bytes() {
        let mut lanes = Lanes::new(2);
        for id in 0..MAX_QUEUED_PER_WORKER as u64 {
            assert!(lanes.push_delivery(0, delivery(id, 1)).is_ok());
        }
        assert!(lanes.push_delivery(0, delivery(0, 1)).is_err());
        assert!(lanes.start_overflow(0), "the first refusal is logged");
        assert!(!lanes.start_overflow(0), "the next ones are not");
        // One delivery over the byte bound fits an empty lane, not a second.
        let big = MAX_QUEUED_BYTES_PER_WORKER / 2 + 1;
        assert!(lanes.push_delivery(1, delivery(1, big)).is_ok());
        assert!(lanes.push_delivery(1, delivery(2, big)).is_err());
        assert!(lanes.push_delivery(1, delivery(3, 1)).is_ok());
        // Drained below half its bounds, a lane logs its next overflow again.
        let (generation, _) = lanes.attach(0, wake());
        for _ in 0..MAX_QUEUED_PER_WORKER / 2 {
            let next = lanes.next(0, generation).unwrap();
            lanes.reported(0, generation, next.id.unwrap());
        }
        assert!(lanes.start_overflow(0));
    }

    #[test]
    fn a_broken_link_gives_back_what_it_held_and_an_old_one_never_detaches_the_new() {
        let mut lanes = Lanes::new(2);
        let (old, _) = lanes.attach(0, wake());
        for id in 1..=3 {
            lanes.push_delivery(0, delivery(id, 1)).unwrap();
        }
        assert!(lanes.next(0, old).is_some());
        assert!(lanes.next(0, old).is_some());
        // The worker connects again before its old connection noticed.
        let (new, unreported) = lanes.attach(0, wake());
        assert_eq!(unreported.len(), 2, "written to the old link, unreported");
        assert!(
            lanes.next(0, old).is_none(),
            "the old link writes nothing more"
        );
        assert_eq!(lanes.detach(0, old).0.len(), 0);
        assert_eq!(lanes.next(0, new).unwrap().id, Some(3));
        // The new link breaks with a delivery unreported and a resume waiting.
        lanes.push_resume(0, resume(5));
        let (unreported, resumes) = lanes.detach(0, new);
        assert_eq!((unreported.len(), resumes.len()), (1, 1));
        // Resumes go to a connected worker.
        let (other, _) = lanes.attach(1, wake());
        lanes.push_resume(0, resume(6));
        assert_eq!(lanes.next(1, other).unwrap().frame, vec![6]);
    }
}
