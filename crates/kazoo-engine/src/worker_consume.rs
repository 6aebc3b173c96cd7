//! A consumer worker's own consuming connections (`amqp_worker_consume`):
//! the worker consumes the subscriptions it can straight from the brokers
//! and runs their routes, instead of the AMQP process consuming them and
//! handing each delivery over a unix socket (a write, a wake-up and a
//! report per few deliveries, which cost as much CPU as the routes).
//!
//! Which subscriptions ([`consumed_in_workers`]): those whose deliveries
//! any worker may take. A `consistent-worker` subscription needs one
//! chooser of workers, and an exclusive or server-named queue belongs to
//! one connection: those stay with the AMQP process, as do the reply
//! queues. Every worker consumes each such subscription on every
//! primary-zone broker (as the AMQP process's consuming connections do),
//! so the broker spreads the deliveries over the workers; what a `federate`
//! subscription binds on other zones' brokers is still consumed by the AMQP
//! process.
//!
//! What stays as with the AMQP process: every subscription is consumed with
//! acks under `amqp_consumer_prefetch` (the bound on what a worker holds);
//! a delivery is acked after its route when its subscription waits for
//! that, else when the worker takes it; acks go in batches (`basic.ack`
//! with `multiple`) before the worker waits; a worker that dies leaves its
//! unacked deliveries to the broker, which gives them to the others; an
//! unreadable routing key is rejected without requeue.
//!
//! Each worker is single-threaded and blocking: [`WorkerConsumer::wait`]
//! polls the worker's IPC link (resumes of asynchronous queries) and its
//! broker connections together. Connecting and declaring are blocking and
//! bounded (the connect timeout, [`HANDSHAKE_TIMEOUT`], [`DECLARE_TIMEOUT`]);
//! a lost connection is opened again after a back-off (100 ms doubling to
//! 5 s). A subscription whose declaration fails on a channel is retried
//! after a back-off on a new channel; one that makes the broker close the
//! connection is not declared on that broker again (logged).
use std::collections::{HashSet, VecDeque};
use std::io::{self, Write};
use std::net::TcpStream;
use std::os::fd::BorrowedFd;
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags, Timespec};

use crate::amqp::{Conn, Event, Login};
use crate::broker::{log_safe, queue_subscription, unreadable_routing_key, HANDSHAKE_TIMEOUT};
use crate::config::{Broker, Scheme};
use crate::counters::{ScriptCounters, SubscriptionCounters};
use crate::direct::{connect_tcp, io_text, timed_out, Input};
use crate::payload;
use crate::subscription::{self, Subscription, SubscriptionError};

/// A subscription's declaration may take this long.
const DECLARE_TIMEOUT: Duration = Duration::from_secs(15);
/// Reconnect back-off: first, and most.
const BACKOFF_FIRST: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// A subscription whose channel the broker closed is declared again after this.
const REDECLARE_AFTER: Duration = Duration::from_secs(1);
/// A read after the connection polled readable waits at most this.
const RECEIVE_TIMEOUT: Duration = Duration::from_millis(100);
/// What one `read` may take.
const READ_CHUNK: usize = 64 * 1024;

/// Whether workers consume `sub` themselves (see the module's comment).
pub fn consumed_in_workers(sub: &Subscription) -> bool {
    !sub.consistent_worker && !sub.queue.is_empty() && !sub.queue_flags.exclusive
}

/// The index that stands for the queue of asynchronous queries' replies
/// ([`async_replies`]) among the subscriptions a worker consumes.
pub const ASYNC_REPLIES: usize = usize::MAX;

/// The queue the workers take asynchronous queries' replies from
/// (`amqp_worker_replies`), on every primary-zone broker: named and bound
/// to `targeted` by [`payload::async_server_id`], shared by the workers;
/// durable (a transient queue that is not exclusive is deprecated in
/// RabbitMQ 4) and deleted with its last consumer. `Err` when the node's
/// name makes it longer than AMQP allows.
pub fn async_replies(node_hostname: &str) -> Result<Subscription, SubscriptionError> {
    let name = payload::async_server_id(node_hostname);
    let mut sub = subscription::simple(payload::TARGETED_EXCHANGE, "direct", &name, &name)?;
    sub.queue_flags.durable = true;
    sub.no_ack = false;
    sub.wait_for_consumer_ack = false;
    Ok(sub)
}

/// How logs name subscription `index` (of the module's list, from 0).
fn described(index: usize) -> String {
    match index {
        ASYNC_REPLIES => "the asynchronous queries' reply queue".into(),
        _ => format!("subscription {}", index + 1),
    }
}

/// Whether workers can consume from the primary zone's brokers at all:
/// there is one, and every one is plain `amqp://` (TLS brokers are
/// consumed by the AMQP process).
pub fn brokers_allow(brokers: &[Broker], primary_zone: &str) -> bool {
    let mut primary = brokers.iter().filter(|b| b.zone == primary_zone).peekable();
    primary.peek().is_some() && primary.all(|b| b.scheme == Scheme::Amqp)
}

/// What the consuming connections need from the module's parameters.
#[derive(Clone, Debug)]
pub struct WorkerConsumeOptions {
    pub primary_zone: String,
    /// `amqp_connect_timeout_*`.
    pub connect_timeout: Duration,
    /// `amqp_consumer_prefetch` (0: no limit).
    pub prefetch: u16,
    /// `amqp_heartbeats` (0: the broker's proposal).
    pub heartbeat: u16,
    /// The connection's name (client property `connection_name`).
    pub connection_name: String,
    /// Where what the workers consume, ack and reject is counted.
    pub counters: ScriptCounters,
    pub per_subscription: SubscriptionCounters,
}

/// A message consumed here.
#[derive(Debug)]
pub struct WorkerDelivery {
    /// The subscription's index in the module's list.
    pub subscription: usize,
    pub broker_id: u32,
    pub routing_key: String,
    pub body: Vec<u8>,
    pub redelivered: bool,
    link: usize,
    generation: u64,
    channel: u16,
    tag: u64,
}

/// A worker's consuming connections, one per primary-zone broker.
#[derive(Debug)]
pub struct WorkerConsumer {
    links: Vec<Target>,
    /// (index in the module's list, subscription) of those consumed here.
    subscriptions: Vec<(usize, Subscription)>,
    options: WorkerConsumeOptions,
    /// Deliveries read and not taken yet (at most the prefetch per channel).
    ready: VecDeque<WorkerDelivery>,
    /// Replies to asynchronous queries read and not taken yet: taken before
    /// `ready` (a suspended transaction waits for them).
    replies: VecDeque<WorkerDelivery>,
    /// (subscription index, broker id) that failed to be declared, and the
    /// changes not yet sent by [`send_reports`](Self::send_reports).
    failing: HashSet<(usize, u32)>,
    reports: Vec<SubscriptionReport>,
}

/// A subscription that failed on a broker (`failure` says why), or is
/// consumed there again (`None`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubscriptionReport {
    /// The subscription's index in the module's list.
    pub index: usize,
    pub broker_id: u32,
    pub failure: Option<String>,
}

#[derive(Debug)]
struct Target {
    broker: Broker,
    live: Option<Live>,
    /// Bumped at every connection: a delivery's ack goes only to the
    /// connection it came on.
    generation: u64,
    retry_at: Instant,
    backoff: Duration,
    /// Subscriptions that made this broker close the connection.
    quarantined: HashSet<usize>,
    logged_down: bool,
}

/// One open connection.
struct Live {
    stream: TcpStream,
    conn: Conn,
    input: Input,
    events: Vec<Event>,
    /// The channel of each subscription consumed now (index into
    /// `WorkerConsumer::subscriptions`), and those to declare again.
    channels: Vec<(u16, usize)>,
    redeclare: Vec<(usize, Instant)>,
    last_channel: u16,
    /// The highest delivery tag per channel whose ack is owed (`multiple`).
    acks: Vec<(u16, u64)>,
    heartbeat: Duration,
    last_read: Instant,
    last_write: Instant,
    read_timeout: Option<Duration>,
}

impl std::fmt::Debug for Live {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Live")
            .field("channels", &self.channels)
            .finish_non_exhaustive()
    }
}

/// How declaring a subscription on a connection ended badly.
enum DeclareError {
    /// Its channel was closed: retry it later on a new channel.
    Channel(String),
    /// The broker closed the connection while declaring it.
    Blamed(String),
    /// The connection failed for another reason.
    Lost(String),
}

impl Live {
    /// Sets the socket's read timeout when it changes (a system call).
    fn read_timeout(&mut self, timeout: Duration) -> io::Result<()> {
        if self.read_timeout != Some(timeout) {
            self.stream.set_read_timeout(Some(timeout))?;
            self.read_timeout = Some(timeout);
        }
        Ok(())
    }

    fn write(&mut self) -> io::Result<()> {
        if self.conn.output().is_empty() {
            return Ok(());
        }
        let written = self.stream.write_all(self.conn.output());
        self.conn.clear_output();
        self.last_write = Instant::now();
        written
    }

    /// One read (blocking up to the socket's timeout) and its frames into
    /// `events`.
    fn read(&mut self) -> io::Result<()> {
        if self.input.read_from(&mut self.stream)? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        self.last_read = Instant::now();
        self.conn
            .receive(&mut self.input.unparsed, &mut self.events)
            .map_err(io::Error::other)?;
        // Close-oks the broker's closes asked for.
        self.write()
    }

    /// Reads until `wanted` (a blocking read bounded by `deadline`);
    /// deliveries and other events met meanwhile go to `pending`.
    fn until(
        &mut self,
        deadline: Instant,
        pending: &mut Vec<Event>,
        wanted: impl Fn(&Event) -> bool,
    ) -> Result<Event, String> {
        loop {
            let mut found = None;
            for event in self.events.drain(..) {
                if found.is_none() && wanted(&event) {
                    found = Some(event);
                } else {
                    pending.push(event);
                }
            }
            if let Some(event) = found {
                return Ok(event);
            }
            if let Some(Event::ConnectionClosed { code, text }) = pending.last() {
                return Err(format!("the broker closed the connection: {code} {text}"));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err("the broker did not answer in time".into());
            }
            self.read_timeout(left).map_err(|e| io_text(&e))?;
            match self.read() {
                Ok(()) => {}
                Err(e) if timed_out(&e) => {}
                Err(e) => return Err(io_text(&e)),
            }
        }
    }
}

impl WorkerConsumer {
    /// Consumes `subscriptions` (index in the module's list, subscription:
    /// those [`consumed_in_workers`]) from the primary zone's `brokers`.
    /// Nothing is connected until [`WorkerConsumer::wait`].
    pub fn new(
        brokers: &[Broker],
        subscriptions: Vec<(usize, Subscription)>,
        options: WorkerConsumeOptions,
    ) -> WorkerConsumer {
        let now = Instant::now();
        let links = brokers
            .iter()
            .filter(|b| b.zone == options.primary_zone && b.scheme == Scheme::Amqp)
            .map(|broker| Target {
                broker: broker.clone(),
                live: None,
                generation: 0,
                retry_at: now,
                backoff: BACKOFF_FIRST,
                quarantined: HashSet::new(),
                logged_down: false,
            })
            .collect();
        WorkerConsumer {
            links,
            subscriptions,
            options,
            ready: VecDeque::new(),
            replies: VecDeque::new(),
            failing: HashSet::new(),
            reports: Vec::new(),
        }
    }

    /// Hands `send` the changes of the subscriptions' states not sent yet,
    /// oldest first. One that `send` fails is kept with those after it, to
    /// be sent at the next call (the worker's link to the AMQP process was
    /// lost: it is opened again, the consumer stays).
    pub fn send_reports<E>(
        &mut self,
        mut send: impl FnMut(&SubscriptionReport) -> Result<(), E>,
    ) -> Result<(), E> {
        while let Some(report) = self.reports.first() {
            send(report)?;
            self.reports.remove(0);
        }
        Ok(())
    }

    /// Notes how declaring subscription `index` on `broker_id` went.
    fn note_state(&mut self, index: usize, broker_id: u32, failure: Option<String>) {
        let changed = match &failure {
            Some(_) => self.failing.insert((index, broker_id)),
            None => self.failing.remove(&(index, broker_id)),
        };
        if changed {
            // Only the latest state of each is worth sending: at most one
            // report per subscription and broker waits.
            self.reports
                .retain(|r| (r.index, r.broker_id) != (index, broker_id));
            self.reports.push(SubscriptionReport {
                index,
                broker_id,
                failure,
            });
        }
    }

    /// How many connections are open now.
    pub fn connected(&self) -> usize {
        self.links.iter().filter(|l| l.live.is_some()).count()
    }

    /// The next delivery read, if any.
    pub fn take(&mut self) -> Option<WorkerDelivery> {
        if let Some(reply) = self.replies.pop_front() {
            // Not an event: resumes a query (counted as answered).
            return Some(reply);
        }
        let delivery = self.ready.pop_front()?;
        self.options.counters.record_worker_consumed();
        self.options.per_subscription.record(delivery.subscription);
        Some(delivery)
    }

    /// Whether a delivery was read and not taken.
    fn has_delivery(&self) -> bool {
        !self.ready.is_empty() || !self.replies.is_empty()
    }

    /// The subscription a delivery came from.
    pub fn subscription(&self, index: usize) -> Option<&Subscription> {
        self.subscriptions
            .iter()
            .find(|(i, _)| *i == index)
            .map(|(_, sub)| sub)
    }

    /// Owes the broker the ack of `delivery` (sent by [`flush`](Self::flush),
    /// with every earlier one of its channel); nothing when its connection
    /// is gone (the broker gave it to another consumer).
    pub fn settle(&mut self, delivery: &WorkerDelivery) {
        let Some(target) = self.links.get_mut(delivery.link) else {
            return;
        };
        if target.generation != delivery.generation {
            return;
        }
        let Some(live) = target.live.as_mut() else {
            return;
        };
        match live.acks.iter_mut().find(|(ch, _)| *ch == delivery.channel) {
            Some((_, tag)) => *tag = (*tag).max(delivery.tag),
            None => live.acks.push((delivery.channel, delivery.tag)),
        }
        self.options.counters.record_worker_acked();
    }

    /// Rejects `delivery` without requeue (it cannot be handled).
    pub fn reject(&mut self, delivery: &WorkerDelivery) {
        self.flush();
        let Some(target) = self.links.get_mut(delivery.link) else {
            return;
        };
        if target.generation != delivery.generation {
            return;
        }
        if let Some(live) = target.live.as_mut() {
            live.conn.reject(delivery.channel, delivery.tag, false);
            self.options.counters.record_worker_rejected();
        }
        self.write_all();
    }

    /// Sends the acks owed, one `basic.ack multiple` per channel.
    pub fn flush(&mut self) {
        for target in &mut self.links {
            if let Some(live) = target.live.as_mut() {
                for (channel, tag) in live.acks.drain(..) {
                    live.conn.ack(channel, tag, true);
                }
            }
        }
        self.write_all();
    }

    fn write_all(&mut self) {
        for i in 0..self.links.len() {
            let failed = match self.links[i].live.as_mut() {
                Some(live) => live.write().err(),
                None => None,
            };
            if let Some(e) = failed {
                self.down(i, &io_text(&e));
            }
        }
    }

    /// Reads, without waiting, what the connections have now: called every
    /// few deliveries taken in a row, so that a reply to an asynchronous
    /// query (taken first) does not wait behind the deliveries already read.
    pub fn read_now(&mut self) {
        self.poll_and_receive(None, Duration::ZERO);
    }

    /// Connects what is due, keeps the heartbeats, then waits until `ipc`
    /// or a connection is readable, at most `timeout`; reads what the
    /// connections have. `true`: `ipc` is readable (or closed).
    pub fn wait(&mut self, ipc: BorrowedFd<'_>, timeout: Duration) -> bool {
        self.maintain();
        if self.has_delivery() {
            return false;
        }
        let now = Instant::now();
        let mut until = now + timeout;
        for target in &self.links {
            match &target.live {
                None => until = until.min(target.retry_at),
                Some(live) => {
                    if !live.heartbeat.is_zero() {
                        until = until.min(live.last_write + live.heartbeat / 2);
                    }
                    for (_, at) in &live.redeclare {
                        until = until.min(*at);
                    }
                }
            }
        }
        self.poll_and_receive(Some(ipc), until.saturating_duration_since(now))
    }

    /// Polls the open connections (and `ipc`, when given) for at most
    /// `timeout` and reads what the readable connections have. `true`:
    /// `ipc` is readable (or closed).
    fn poll_and_receive(&mut self, ipc: Option<BorrowedFd<'_>>, timeout: Duration) -> bool {
        let mut fds: Vec<PollFd<'_>> = ipc
            .map(|fd| PollFd::from_borrowed_fd(fd, PollFlags::IN))
            .into_iter()
            .collect();
        let first_link = fds.len();
        let mut polled = Vec::new();
        for (i, target) in self.links.iter().enumerate() {
            if let Some(live) = &target.live {
                fds.push(PollFd::new(&live.stream, PollFlags::IN));
                polled.push(i);
            }
        }
        // A timeout that does not fit a timespec cannot happen (at most the caller's).
        let timespec = Timespec::try_from(timeout).unwrap_or_default();
        let ready: Vec<bool> = match rustix::event::poll(&mut fds, Some(&timespec)) {
            Ok(_) => fds.iter().map(|fd| !fd.revents().is_empty()).collect(),
            // A signal: the caller comes back.
            Err(_) => vec![false; fds.len()],
        };
        drop(fds);
        for (readable, i) in ready[first_link..].iter().zip(polled) {
            if *readable {
                self.receive(i);
            }
        }
        first_link > 0 && ready[0]
    }

    /// Reads what connection `i` has (it polled readable) and handles it.
    fn receive(&mut self, i: usize) {
        let Some(live) = self.links[i].live.as_mut() else {
            return;
        };
        // It polled readable: the timeout only guards against a surprise.
        let result = live
            .read_timeout(RECEIVE_TIMEOUT)
            .and_then(|()| live.read());
        match result {
            Ok(()) => {}
            Err(e) if timed_out(&e) => {}
            Err(e) => return self.down(i, &io_text(&e)),
        }
        let events = std::mem::take(&mut live.events);
        self.handle(i, events);
    }

    /// Deliveries to `ready`; a cancelled consumer or a closed channel is
    /// declared again later; a closed connection is reopened later.
    fn handle(&mut self, i: usize, events: Vec<Event>) {
        let target = &mut self.links[i];
        let Some(live) = target.live.as_mut() else {
            return;
        };
        let mut lost = None;
        for event in events {
            match event {
                Event::Delivery {
                    channel,
                    tag,
                    redelivered,
                    routing_key,
                    body,
                    exchange,
                } => {
                    let Some(&(_, sub)) = live.channels.iter().find(|(ch, _)| *ch == channel)
                    else {
                        continue;
                    };
                    let subscription = self.subscriptions[sub].0;
                    if unreadable_routing_key(&routing_key) {
                        log::error!(
                            "broker {}: rejected (not requeued) a message from exchange {} of \
                             {}: its routing key is not UTF-8 (received as {}); \
                             the script would see another key",
                            target.broker.id,
                            log_safe(&exchange),
                            described(subscription),
                            log_safe(&routing_key)
                        );
                        live.conn.reject(channel, tag, false);
                        self.options.counters.record_worker_rejected();
                        continue;
                    }
                    let queue = if subscription == ASYNC_REPLIES {
                        &mut self.replies
                    } else {
                        &mut self.ready
                    };
                    queue.push_back(WorkerDelivery {
                        subscription,
                        broker_id: target.broker.id,
                        routing_key,
                        body,
                        redelivered,
                        link: i,
                        generation: target.generation,
                        channel,
                        tag,
                    });
                }
                Event::Cancelled(channel) => {
                    let why = "the broker cancelled its consumer (its queue was deleted?)";
                    stopped(live, &self.subscriptions, target.broker.id, channel, why);
                }
                Event::ChannelClosed {
                    channel,
                    code,
                    text,
                } => {
                    let why = format!("the broker closed its channel: {code} {text}");
                    stopped(live, &self.subscriptions, target.broker.id, channel, &why);
                }
                Event::ConnectionClosed { code, text } => {
                    lost = Some(format!("the broker closed the connection: {code} {text}"));
                }
                _ => {}
            }
        }
        match lost {
            Some(reason) => self.down(i, &reason),
            None => self.write_all(),
        }
    }

    /// Connects the connections that are due, declares again what is due,
    /// sends heartbeats, and gives up a broker silent for two intervals.
    fn maintain(&mut self) {
        let now = Instant::now();
        for i in 0..self.links.len() {
            match &self.links[i].live {
                None if self.links[i].retry_at <= now => self.connect(i),
                None => {}
                Some(live) => {
                    if !live.heartbeat.is_zero()
                        && now.saturating_duration_since(live.last_read) > live.heartbeat * 2
                    {
                        self.down(i, "no heartbeat from the broker");
                        continue;
                    }
                    let due: Vec<usize> = live
                        .redeclare
                        .iter()
                        .filter(|(_, at)| *at <= now)
                        .map(|(sub, _)| *sub)
                        .collect();
                    for sub in due {
                        if let Some(live) = self.links[i].live.as_mut() {
                            live.redeclare.retain(|(s, _)| *s != sub);
                        }
                        self.declare(i, sub);
                    }
                    if let Some(live) = self.links[i].live.as_mut() {
                        if !live.heartbeat.is_zero()
                            && now.saturating_duration_since(live.last_write) >= live.heartbeat / 2
                        {
                            live.conn.send_heartbeat();
                            if let Err(e) = live.write() {
                                self.down(i, &io_text(&e));
                            }
                        }
                    }
                }
            }
        }
    }

    /// Opens connection `i` and declares every subscription on it.
    fn connect(&mut self, i: usize) {
        let target = &mut self.links[i];
        match open(&target.broker, &self.options) {
            Ok(live) => {
                if target.logged_down {
                    log::info!("broker {}: consuming again", target.broker.id);
                }
                target.live = Some(live);
                target.generation += 1;
                target.logged_down = false;
            }
            Err(reason) => return self.down(i, &reason),
        }
        for sub in 0..self.subscriptions.len() {
            if self.links[i].live.is_none() {
                return;
            }
            self.declare(i, sub);
        }
        if self.links[i].live.is_some() {
            self.links[i].backoff = BACKOFF_FIRST;
        }
    }

    /// Declares and consumes subscription `sub` on a new channel of
    /// connection `i`, waiting for the broker's `consume-ok`.
    fn declare(&mut self, i: usize, sub: usize) {
        let (index, subscription) = &self.subscriptions[sub];
        let index = *index;
        let target = &mut self.links[i];
        if target.quarantined.contains(&index) {
            return;
        }
        let broker_id = target.broker.id;
        let Some(live) = target.live.as_mut() else {
            return;
        };
        let mut pending = Vec::new();
        let result = declare_on(live, subscription, self.options.prefetch, &mut pending);
        match result {
            Ok(channel) => {
                live.channels.push((channel, sub));
                self.note_state(index, broker_id, None);
            }
            Err(DeclareError::Channel(reason)) => {
                log::error!(
                    "broker {broker_id}: cannot consume {}: {reason}; retrying in \
                     {REDECLARE_AFTER:?}",
                    described(index)
                );
                live.redeclare.push((sub, Instant::now() + REDECLARE_AFTER));
                self.note_state(index, broker_id, Some(reason));
            }
            Err(DeclareError::Blamed(reason)) => {
                log::error!(
                    "broker {broker_id}: {} made the broker close the connection \
                     ({reason}): not consumed from this broker again",
                    described(index)
                );
                target.quarantined.insert(index);
                self.note_state(index, broker_id, Some(reason.clone()));
                // What was read with the close goes with the connection.
                return self.down(i, &reason);
            }
            Err(DeclareError::Lost(reason)) => return self.down(i, &reason),
        }
        self.handle(i, pending);
    }

    /// Connection `i` is gone (or could not open): its deliveries not taken
    /// are forgotten (the broker requeues them), and it is opened again
    /// after the back-off.
    fn down(&mut self, i: usize, reason: &str) {
        let target = &mut self.links[i];
        let was_up = target.live.take().is_some();
        let generation = target.generation;
        let of_link = |d: &WorkerDelivery| d.link == i && d.generation == generation;
        self.ready.retain(|d| !of_link(d));
        self.replies.retain(|d| !of_link(d));
        if was_up || !target.logged_down {
            log::error!(
                "broker {} ({}): consuming connection down: {reason}; retrying in {:?}",
                target.broker.id,
                target.broker.redacted_url(),
                target.backoff
            );
            target.logged_down = true;
        }
        target.retry_at = Instant::now() + target.backoff;
        target.backoff = (target.backoff * 2).min(BACKOFF_MAX);
    }
}

/// The consumer on `channel` stopped: its subscription is declared again
/// on a new channel after [`REDECLARE_AFTER`]; its owed acks are void.
fn stopped(
    live: &mut Live,
    subscriptions: &[(usize, Subscription)],
    broker_id: u32,
    channel: u16,
    why: &str,
) {
    let Some(at) = live.channels.iter().position(|(ch, _)| *ch == channel) else {
        return;
    };
    let (_, sub) = live.channels.remove(at);
    log::error!(
        "broker {broker_id}: {} stopped consuming ({why}); declaring it again in \
         {REDECLARE_AFTER:?}",
        described(subscriptions[sub].0),
    );
    live.acks.retain(|(ch, _)| *ch != channel);
    live.redeclare.push((sub, Instant::now() + REDECLARE_AFTER));
}

/// Connects and logs in (bounded by the connect timeout and
/// [`HANDSHAKE_TIMEOUT`]).
fn open(broker: &Broker, options: &WorkerConsumeOptions) -> Result<Live, String> {
    let stream = connect_tcp(broker, options.connect_timeout)?;
    let login = Login {
        user: broker.user.clone(),
        password: broker.password.clone(),
        vhost: broker.vhost.clone(),
        connection_name: options.connection_name.clone(),
    };
    let now = Instant::now();
    let mut live = Live {
        stream,
        conn: Conn::with_heartbeat(login, Some(options.heartbeat)),
        input: Input::new(READ_CHUNK),
        events: Vec::new(),
        channels: Vec::new(),
        redeclare: Vec::new(),
        last_channel: 0,
        acks: Vec::new(),
        heartbeat: Duration::ZERO,
        last_read: now,
        last_write: now,
        read_timeout: None,
    };
    live.write().map_err(|e| io_text(&e))?;
    let mut pending = Vec::new();
    live.until(now + HANDSHAKE_TIMEOUT, &mut pending, |e| {
        matches!(e, Event::Ready)
    })?;
    live.heartbeat = Duration::from_secs(u64::from(live.conn.heartbeat()));
    Ok(live)
}

/// Declares and consumes `sub` on the connection's next channel; the
/// channel once the broker's `consume-ok` came. Other events read meanwhile
/// (deliveries of channels already consuming) go to `pending`.
fn declare_on(
    live: &mut Live,
    sub: &Subscription,
    prefetch: u16,
    pending: &mut Vec<Event>,
) -> Result<u16, DeclareError> {
    if live.last_channel >= crate::broker::LAST_CHANNEL {
        return Err(DeclareError::Lost(
            "every channel number of the connection was used: reopening it".into(),
        ));
    }
    live.last_channel += 1;
    let channel = live.last_channel;
    queue_subscription(&mut live.conn, channel, sub, prefetch).map_err(DeclareError::Channel)?;
    live.write().map_err(|e| DeclareError::Lost(io_text(&e)))?;
    let deadline = Instant::now() + DECLARE_TIMEOUT;
    let outcome = live.until(deadline, pending, |e| match e {
        Event::Consuming(ch) => *ch == channel,
        Event::ChannelClosed { channel: ch, .. } => *ch == channel,
        _ => false,
    });
    match outcome {
        Ok(Event::Consuming(_)) => Ok(channel),
        Ok(Event::ChannelClosed { code, text, .. }) => Err(DeclareError::Channel(format!(
            "the broker closed its channel: {code} {text}"
        ))),
        Ok(_) => Err(DeclareError::Lost("unexpected answer".into())),
        Err(reason) => {
            let closed = pending
                .iter()
                .any(|e| matches!(e, Event::ConnectionClosed { .. }));
            Err(if closed {
                DeclareError::Blamed(reason)
            } else {
                DeclareError::Lost(reason)
            })
        }
    }
}
