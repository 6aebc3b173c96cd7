//! Each consumer worker's lane: the work waiting for it (resumes first),
//! what its link holds unreported, and the bounds that keep a flood on the
//! broker (see [`super::dispatch`]).
use std::collections::BTreeMap;

use super::*;

/// Deliveries written to a worker's link whose route has not reported yet.
pub(super) const WINDOW: usize = crate::ipc::WORKER_WINDOW;

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
    in_flight: BTreeMap<u64, Option<Acker>>,
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
            in_flight: BTreeMap::new(),
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

    /// The worker's routes ran up to `delivery` (every delivery written to
    /// the link before it too): returns the acks they owed, and makes room
    /// for the next deliveries.
    pub(super) fn reported(&mut self, worker: usize, generation: u64, delivery: u64) -> Vec<Acker> {
        let lane = &mut self.lanes[worker];
        let Some(link) = lane.link.as_mut().filter(|l| l.generation == generation) else {
            return Vec::new();
        };
        let later = link.in_flight.split_off(&(delivery + 1));
        let done = std::mem::replace(&mut link.in_flight, later);
        lane.wake();
        done.into_values().flatten().collect()
    }

    /// Forgets one delivery the link never got (its write failed); returns
    /// the ack it owed after its route, if any.
    pub(super) fn forget(
        &mut self,
        worker: usize,
        generation: u64,
        delivery: u64,
    ) -> Option<Acker> {
        let lane = &mut self.lanes[worker];
        let link = lane.link.as_mut().filter(|l| l.generation == generation)?;
        link.in_flight.remove(&delivery).flatten()
    }
}

impl Lane {
    fn wake(&self) {
        if let Some(link) = &self.link {
            link.wake.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let pushed = WINDOW + 12;
        for id in 1..=pushed as u64 {
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
        assert_eq!(lanes.queued(), pushed - WINDOW);
        // A resume still goes out with the window full.
        lanes.push_resume(0, resume(8));
        assert_eq!(lanes.next(0, generation).unwrap().frame, vec![8]);
        assert!(lanes.next(0, generation).is_none());
        // A report covers every delivery up to its id, and makes room.
        assert!(lanes.reported(0, generation, 3).is_empty());
        let ids: Vec<_> = std::iter::from_fn(|| lanes.next(0, generation))
            .map(|n| n.id.unwrap())
            .collect();
        let wider = WINDOW as u64;
        assert_eq!(ids, (wider + 1..=wider + 3).collect::<Vec<_>>());
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
            lanes.forget(0, generation, next.id.unwrap());
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
