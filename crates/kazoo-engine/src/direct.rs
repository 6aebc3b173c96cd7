//! Direct links: the calling process's own blocking AMQP connection per
//! broker, so that a `kazoo_publish` costs one `write` and one blocking
//! `read` in the SIP worker instead of a round trip through the AMQP
//! process and its AMQP client's I/O thread; a `kazoo_query` is published
//! there too and its reply read from the process's own reply queue
//! ([`DirectPublisher::query`]); a `kazoo_async_query` is only written
//! there ([`DirectPublisher::send_query`]), for a consumer worker to take
//! its reply.
//!
//! [`DirectPublisher::publish`] keeps the guarantees of the AMQP process's
//! [`crate::broker::Brokers::publish_with`]: it returns `Ok` only for the
//! broker's `basic.ack` of this very publish (confirm mode), never waits
//! past its deadline, and fails over between primary-zone brokers in
//! configuration order (`consumer://<id>/` uses that broker only). What
//! differs, because the link lives in one process and runs only while that
//! process publishes:
//!
//! - links open lazily on the first publish (within the connect timeout
//!   and the publish's deadline) and are reopened once per publish after a
//!   loss; a broker that cannot be reached is not tried again for a
//!   back-off (100 ms doubling to 5 s), and while every candidate is in
//!   back-off a publish fails at once ([`PublishError::NoBrokerConnected`]);
//! - heartbeats are off (an idle process cannot send them): a dead link is
//!   found by TCP keepalive, by `TCP_USER_TIMEOUT` on unacknowledged data,
//!   or by the next publish's I/O error, after which it reconnects;
//! - a broker that blocks publishers (`connection.blocked`), or that left a
//!   publish unconfirmed past its deadline, fails later publishes at once
//!   ([`PublishError::Unavailable`]) until it unblocks or the late confirm
//!   arrives; each publish looks for that without waiting;
//! - `amqps://` brokers and `mandatory` publishes are not handled here (see
//!   [`DirectPublisher::covers`]): the caller uses the AMQP process.
use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use amq_protocol::types::ShortString;
use rustix::event::{PollFd, PollFlags, Timespec};

use crate::amqp::{Conn, Event, Login, ProtocolError};
use crate::broker::{self, PublishError, PublishProperties, Published, HANDSHAKE_TIMEOUT};
use crate::config::{Broker, Scheme};
use crate::payload::{self, PreparedPublish};
use crate::subscription::{ExchangeFlags, QueueFlags};

/// The channel publishes go on, in confirm mode.
const CHANNEL: u16 = 1;
/// The channel queries go on (without confirms: the reply is the
/// confirmation) and their replies come back on.
const REPLY_CHANNEL: u16 = 2;
/// The channel asynchronous queries go on, without confirms and without
/// waiting: a consumer worker takes the reply, which is the confirmation
/// (no reply in time resumes the query in its error route).
const ASYNC_CHANNEL: u16 = 3;
/// What one `read` may take.
const READ_CHUNK: usize = 16 * 1024;
/// A write into a full socket buffer (the broker stopped reading) waits at
/// most this long; then the link is dropped.
const WRITE_TIMEOUT: Duration = Duration::from_millis(500);
/// The read timeout is set again only when the wanted one differs by more
/// than this: once per process in the steady state.
const READ_TIMEOUT_SLACK: Duration = Duration::from_millis(5);
/// Reconnect back-off after a failed connect: first, and most.
const BACKOFF_FIRST: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// Unacknowledged data older than this ends the TCP connection: a broker
/// gone without a word is noticed on the next publish.
const TCP_USER_TIMEOUT: Duration = Duration::from_secs(10);

/// What the direct publisher needs from the module's parameters.
#[derive(Clone, Debug)]
pub struct DirectOptions {
    /// `amqp_primary_zone`.
    pub primary_zone: String,
    /// `node_hostname`: in the `Server-ID` and the reply queue's name.
    pub node_hostname: String,
    /// `amqp_max_channels`: the Server-ID indexes of publishes, round-robin
    /// per broker (the AMQP process's reply queues).
    pub reply_queues: u32,
    /// The index of this process's own reply queue (and `Server-ID`) for
    /// its queries: one no other process uses, beyond `reply_queues`.
    pub reply_idx: u32,
    /// `amqp_connect_timeout_*`: the TCP connect (the AMQP login is bounded
    /// by the publish's deadline and [`HANDSHAKE_TIMEOUT`]).
    pub connect_timeout: Duration,
    /// Shown by `rabbitmqctl list_connections name`.
    pub connection_name: String,
}

/// What a link waits for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Waiting {
    Nothing,
    /// The confirm of this delivery tag on [`CHANNEL`].
    Confirm(u64),
    /// A query's reply on [`REPLY_CHANNEL`].
    Reply,
}

/// How a single attempt on one link ended.
enum Attempt {
    Confirmed,
    /// A query's reply, annotated as consumed messages are.
    Answered(Vec<u8>),
    Nacked,
    Returned {
        reply_code: u16,
        reply_text: String,
        body: Vec<u8>,
    },
    /// The broker closed the channel because of this publish.
    Refused(String),
    /// The connection is gone (the link is dropped).
    Lost(String),
    /// The broker blocks publishers now; the publish stays in flight.
    Blocked(String),
    /// The deadline passed without a confirm (or a query's reply).
    Timeout,
}

impl Attempt {
    /// Why logging in (or setting up the publish channel) failed.
    fn login_failure(self) -> String {
        match self {
            Attempt::Lost(reason) | Attempt::Refused(reason) | Attempt::Blocked(reason) => reason,
            Attempt::Timeout => "the broker did not answer the login in time".into(),
            _ => "unexpected answer to the login".into(),
        }
    }
}

/// One broker connection with channel [`CHANNEL`] in confirm mode.
struct Link {
    stream: TcpStream,
    conn: Conn,
    input: Input,
    events: Vec<Event>,
    /// The channel is open (or its opening is queued) in confirm mode.
    confirming: bool,
    /// The delivery tag of the channel's next publish.
    next_tag: u64,
    /// `connection.blocked` came, and no `unblocked` since.
    blocked: Option<String>,
    /// The last tag whose confirm did not come before its publish's
    /// deadline: the broker is not answering while it is missing.
    unconfirmed: Option<u64>,
    read_timeout: Option<Duration>,
    /// This process's reply queue is consumed on [`REPLY_CHANNEL`].
    replies: bool,
    /// [`ASYNC_CHANNEL`] is open (or its opening is queued).
    async_open: bool,
    /// Replies read that no query waits for (routing key, body as sent).
    late: Vec<(String, Vec<u8>)>,
    /// Late replies dropped because `late` was full.
    late_dropped: u64,
}

/// What a connection read and did not parse yet, read through a buffer
/// zeroed once: a read copies the bytes that came instead of zeroing a
/// whole chunk of `unparsed` each time.
pub(crate) struct Input {
    pub(crate) unparsed: Vec<u8>,
    chunk: Box<[u8]>,
}

impl Input {
    pub(crate) fn new(chunk: usize) -> Input {
        Input {
            unparsed: Vec::with_capacity(chunk),
            chunk: vec![0; chunk].into_boxed_slice(),
        }
    }

    /// One `read` (at most a chunk), appended to `unparsed`; 0 at the end
    /// of the stream.
    pub(crate) fn read_from(&mut self, stream: &mut impl Read) -> io::Result<usize> {
        let read = stream.read(&mut self.chunk)?;
        self.unparsed.extend_from_slice(&self.chunk[..read]);
        Ok(read)
    }
}

pub(crate) fn io_text(e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::UnexpectedEof => "the broker closed the connection".into(),
        _ => e.to_string(),
    }
}

pub(crate) fn timed_out(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

/// A TCP connection to `broker` within `timeout`, set up for a blocking
/// AMQP link: no Nagle delay, a bounded write ([`WRITE_TIMEOUT`]), TCP
/// keepalive and `TCP_USER_TIMEOUT`, so that a peer gone without a word is
/// noticed.
pub(crate) fn connect_tcp(broker: &Broker, timeout: Duration) -> Result<TcpStream, String> {
    let address = (broker.host.as_str(), broker.port)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {}: {e}", broker.host))?
        .next()
        .ok_or_else(|| format!("{} has no address", broker.host))?;
    let stream = TcpStream::connect_timeout(&address, timeout)
        .map_err(|e| format!("cannot connect: {e}"))?;
    let socket = socket2::SockRef::from(&stream);
    let tuned = stream
        .set_nodelay(true)
        .and_then(|()| stream.set_write_timeout(Some(WRITE_TIMEOUT)))
        .and_then(|()| {
            socket.set_tcp_keepalive(
                &socket2::TcpKeepalive::new()
                    .with_time(Duration::from_secs(15))
                    .with_interval(Duration::from_secs(5))
                    .with_retries(3),
            )
        })
        .and_then(|()| socket.set_tcp_user_timeout(Some(TCP_USER_TIMEOUT)));
    tuned.map_err(|e| format!("cannot set up the socket: {e}"))?;
    Ok(stream)
}

impl Link {
    /// Connects and logs in, with channel [`CHANNEL`] in confirm mode.
    fn open(broker: &Broker, options: &DirectOptions, deadline: Instant) -> Result<Link, String> {
        let now = Instant::now();
        let remaining = deadline.saturating_duration_since(now);
        if remaining.is_zero() {
            return Err("no time left to connect".into());
        }
        let stream = connect_tcp(broker, options.connect_timeout.min(remaining))?;
        let login = Login {
            user: broker.user.clone(),
            password: broker.password.clone(),
            vhost: broker.vhost.clone(),
            connection_name: options.connection_name.clone(),
        };
        let mut link = Link {
            stream,
            conn: Conn::new(login),
            input: Input::new(READ_CHUNK),
            events: Vec::new(),
            confirming: false,
            next_tag: 1,
            blocked: None,
            unconfirmed: None,
            read_timeout: None,
            replies: false,
            async_open: false,
            late: Vec::new(),
            late_dropped: 0,
        };
        let deadline = deadline.min(now + HANDSHAKE_TIMEOUT);
        link.flush().map_err(|e| io_text(&e))?;
        link.until(deadline, 0, |e| matches!(e, Event::Ready))
            .map_err(|e| e.login_failure())?;
        link.conn.open_channel(CHANNEL);
        link.conn.confirm_select(CHANNEL);
        link.flush().map_err(|e| io_text(&e))?;
        link.until(deadline, CHANNEL, |e| {
            matches!(e, Event::ConfirmSelected(CHANNEL))
        })
        .map_err(|e| e.login_failure())?;
        link.confirming = true;
        Ok(link)
    }

    /// Reads until an event `wanted` says so (the login, a channel's
    /// set-up); a close of the connection or of `channel` ends it.
    fn until(
        &mut self,
        deadline: Instant,
        channel: u16,
        wanted: fn(&Event) -> bool,
    ) -> Result<(), Attempt> {
        loop {
            for event in std::mem::take(&mut self.events) {
                match event {
                    event if wanted(&event) => return Ok(()),
                    Event::ConnectionClosed { code, text } => {
                        return Err(Attempt::Lost(format!(
                            "the broker closed the connection: {code} {text}"
                        )))
                    }
                    Event::ChannelClosed {
                        channel: closed,
                        code,
                        text,
                    } if closed == channel => {
                        self.note(
                            Event::ChannelClosed {
                                channel,
                                code,
                                text: text.clone(),
                            },
                            Waiting::Nothing,
                        );
                        return Err(Attempt::Refused(format!(
                            "the broker closed the channel: {code} {text}"
                        )));
                    }
                    other => {
                        self.note(other, Waiting::Nothing);
                    }
                }
            }
            match self.read(deadline) {
                Ok(true) => {}
                Ok(false) => return Err(Attempt::Timeout),
                Err(reason) => return Err(Attempt::Lost(reason)),
            }
        }
    }

    /// Writes what the protocol queued.
    fn flush(&mut self) -> io::Result<()> {
        if self.conn.output().is_empty() {
            return Ok(());
        }
        let written = self.stream.write_all(self.conn.output());
        self.conn.clear_output();
        written
    }

    /// One blocking read of what is there, at most until `deadline`, and
    /// its frames into `events`. `Ok(false)`: the deadline passed.
    fn read(&mut self, deadline: Instant) -> Result<bool, String> {
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return Ok(false);
        }
        let stale = self
            .read_timeout
            .is_none_or(|set| set.abs_diff(remaining) > READ_TIMEOUT_SLACK);
        if stale {
            self.stream
                .set_read_timeout(Some(remaining))
                .map_err(|e| io_text(&e))?;
            self.read_timeout = Some(remaining);
        }
        match self.read_some() {
            Ok(()) => Ok(true),
            Err(e) if timed_out(&e) => Ok(false),
            Err(e) => Err(io_text(&e)),
        }
    }

    fn read_some(&mut self) -> io::Result<()> {
        match self.input.read_from(&mut self.stream)? {
            0 => Err(io::ErrorKind::UnexpectedEof.into()),
            _ => self.parse().map_err(io::Error::other),
        }
    }

    fn parse(&mut self) -> Result<(), ProtocolError> {
        self.conn
            .receive(&mut self.input.unparsed, &mut self.events)?;
        // Close-oks the broker's closes asked for; a failure shows on the
        // next read.
        let _ = self.flush();
        Ok(())
    }

    /// Reads what arrived without waiting (blocked/unblocked, late
    /// confirms, a close), when the link's state depends on it.
    fn catch_up(&mut self) -> Result<(), String> {
        self.stream.set_nonblocking(true).map_err(|e| io_text(&e))?;
        let mut result = Ok(());
        loop {
            match self.read_some() {
                Ok(()) => continue,
                Err(e) if timed_out(&e) => break,
                Err(e) => {
                    result = Err(io_text(&e));
                    break;
                }
            }
        }
        self.stream
            .set_nonblocking(false)
            .map_err(|e| io_text(&e))?;
        result?;
        let mut lost = None;
        for event in std::mem::take(&mut self.events) {
            if let Some(Attempt::Lost(reason)) = self.note(event, Waiting::Nothing) {
                lost = Some(reason);
            }
        }
        lost.map_or(Ok(()), Err)
    }

    /// Why publishes should not go here now.
    fn unavailable(&self) -> Option<String> {
        if let Some(reason) = &self.blocked {
            Some(format!(
                "the broker blocks publishers (memory or disk alarm: {reason})"
            ))
        } else if self.unconfirmed.is_some() {
            Some("the broker stopped confirming publishes".into())
        } else {
            None
        }
    }

    /// Updates the link's state from an event; what it means for the
    /// operation `waiting`.
    fn note(&mut self, event: Event, waiting: Waiting) -> Option<Attempt> {
        let tag = match waiting {
            Waiting::Confirm(tag) => tag,
            Waiting::Nothing | Waiting::Reply => 0,
        };
        match event {
            Event::Confirm {
                channel: CHANNEL,
                tag: confirmed,
                multiple,
                ack,
            } => {
                let covers = |t: u64| t == confirmed || (multiple && t <= confirmed);
                if self.unconfirmed.is_some_and(covers) {
                    self.unconfirmed = None;
                }
                (tag != 0 && covers(tag)).then_some(if ack {
                    Attempt::Confirmed
                } else {
                    Attempt::Nacked
                })
            }
            Event::Returned {
                channel: CHANNEL,
                reply_code,
                reply_text,
                body,
                ..
            } if tag != 0 => Some(Attempt::Returned {
                reply_code,
                reply_text,
                body,
            }),
            Event::Delivery {
                channel: REPLY_CHANNEL,
                routing_key,
                body,
                ..
            } => {
                // A reply read while waiting for something else: late.
                self.keep_late(routing_key, body);
                None
            }
            Event::ChannelClosed {
                channel,
                code,
                text,
            } => {
                let ours = if channel == CHANNEL {
                    // Confirms still owed on the channel will never come.
                    self.confirming = false;
                    self.unconfirmed = None;
                    tag != 0
                } else if channel == ASYNC_CHANNEL {
                    // What was published there since is lost: its queries
                    // time out.
                    log::warn!("an asynchronous query was refused: {code} {text}");
                    self.async_open = false;
                    false
                } else {
                    self.replies = false;
                    waiting == Waiting::Reply
                };
                ours.then(|| Attempt::Refused(format!("{code} {text}")))
            }
            Event::ConnectionClosed { code, text } => Some(Attempt::Lost(format!(
                "the broker closed the connection: {code} {text}"
            ))),
            Event::Blocked(reason) => {
                self.blocked = Some(reason.clone());
                Some(Attempt::Blocked(reason))
            }
            Event::Unblocked => {
                self.blocked = None;
                None
            }
            _ => None,
        }
    }

    /// Publishes on [`ASYNC_CHANNEL`] without waiting; first reads, without
    /// waiting either, what the broker sent since the last operation (a
    /// close of that channel, which is then opened again with this write).
    fn send(
        &mut self,
        exchange: &ShortString,
        routing_key: &ShortString,
        properties: &amq_protocol::protocol::BasicProperties,
        body: &[u8],
    ) -> Attempt {
        let mut fd = [PollFd::new(&self.stream, PollFlags::IN)];
        let arrived = matches!(
            rustix::event::poll(&mut fd, Some(&Timespec::default())),
            Ok(n) if n > 0
        );
        if arrived {
            if let Err(reason) = self.catch_up() {
                return Attempt::Lost(reason);
            }
        }
        if !self.async_open {
            self.conn.open_channel(ASYNC_CHANNEL);
            self.async_open = true;
        }
        self.conn.publish(
            ASYNC_CHANNEL,
            exchange,
            routing_key,
            false,
            properties,
            body,
        );
        match self.flush() {
            Ok(()) => Attempt::Confirmed,
            Err(e) => Attempt::Lost(io_text(&e)),
        }
    }

    /// Publishes and waits for its confirm until `deadline`.
    fn publish(
        &mut self,
        exchange: &ShortString,
        routing_key: &ShortString,
        properties: &amq_protocol::protocol::BasicProperties,
        body: &[u8],
        deadline: Instant,
    ) -> Attempt {
        if !self.confirming {
            // Reopened in the same write as the publish: the broker takes
            // the three in order.
            self.conn.open_channel(CHANNEL);
            self.conn.confirm_select(CHANNEL);
            self.next_tag = 1;
            self.confirming = true;
        }
        let tag = self.next_tag;
        self.next_tag += 1;
        self.conn
            .publish(CHANNEL, exchange, routing_key, false, properties, body);
        if let Err(e) = self.flush() {
            return Attempt::Lost(io_text(&e));
        }
        let mut returned = None;
        loop {
            for event in std::mem::take(&mut self.events) {
                match self.note(event, Waiting::Confirm(tag)) {
                    Some(Attempt::Returned {
                        reply_code,
                        reply_text,
                        body,
                    }) => returned = Some((reply_code, reply_text, body)),
                    Some(Attempt::Confirmed) => {
                        return match returned.take() {
                            Some((reply_code, reply_text, body)) => Attempt::Returned {
                                reply_code,
                                reply_text,
                                body,
                            },
                            None => Attempt::Confirmed,
                        }
                    }
                    Some(Attempt::Blocked(reason)) => {
                        self.unconfirmed = Some(tag);
                        return Attempt::Blocked(reason);
                    }
                    Some(attempt) => return attempt,
                    None => {}
                }
            }
            match self.read(deadline) {
                Ok(true) => {}
                Ok(false) => {
                    self.unconfirmed = Some(tag);
                    return Attempt::Timeout;
                }
                Err(reason) => return Attempt::Lost(reason),
            }
        }
    }
}

/// Late replies kept between two operations of a process at most; more
/// (a backend flooding one `Server-ID`) are dropped, logged and counted.
const MAX_LATE: usize = 1000;

/// What identifies a query's reply, and how to annotate it.
struct Reply<'a> {
    msg_id: &'a str,
    zone: &'a str,
    broker_id: u32,
}

impl Link {
    fn keep_late(&mut self, routing_key: String, body: Vec<u8>) {
        if self.late.len() < MAX_LATE {
            self.late.push((routing_key, body));
            return;
        }
        self.late_dropped += 1;
        if self.late_dropped.is_power_of_two() {
            log::warn!(
                "{} replies nobody waited for were dropped: more than {MAX_LATE} came between \
                 two publishes or queries of this process",
                self.late_dropped
            );
        }
    }

    /// Declares this process's reply queue (exclusive: it goes with the
    /// link), binds it to `targeted` with `server_id` and consumes it
    /// without acks on [`REPLY_CHANNEL`], once per link.
    /// A failure is [`Attempt::Lost`] when the connection went (reconnect),
    /// [`Attempt::Refused`] when the broker refused a step.
    fn consume_replies(
        &mut self,
        queue: &str,
        server_id: &str,
        deadline: Instant,
    ) -> Result<(), Attempt> {
        if self.replies {
            return Ok(());
        }
        let short = |text: &str| {
            ShortString::try_new(text)
                .map_err(|_| Attempt::Refused(format!("{text} is longer than 255 bytes")))
        };
        let (queue, key) = (short(queue)?, short(server_id)?);
        let targeted: ShortString = payload::TARGETED_EXCHANGE.into();
        self.conn.open_channel(REPLY_CHANNEL);
        self.conn
            .exchange_declare(REPLY_CHANNEL, &targeted, "direct", ExchangeFlags::default());
        // Exclusive and auto-delete: the queue goes with the connection.
        let flags = QueueFlags {
            exclusive: true,
            ..QueueFlags::default()
        };
        self.conn.queue_declare(REPLY_CHANNEL, &queue, flags);
        self.conn.queue_bind(REPLY_CHANNEL, &queue, &targeted, &key);
        self.conn.consume(REPLY_CHANNEL, &queue, true, true);
        self.flush().map_err(|e| Attempt::Lost(io_text(&e)))?;
        self.until(deadline, REPLY_CHANNEL, |e| {
            matches!(e, Event::Consuming(REPLY_CHANNEL))
        })?;
        self.replies = true;
        Ok(())
    }

    /// Publishes a query on [`REPLY_CHANNEL`] and reads until its reply,
    /// at most until `deadline`.
    fn query(
        &mut self,
        exchange: &ShortString,
        routing_key: &ShortString,
        properties: &amq_protocol::protocol::BasicProperties,
        body: &[u8],
        reply: Reply<'_>,
        deadline: Instant,
    ) -> Attempt {
        self.conn.publish(
            REPLY_CHANNEL,
            exchange,
            routing_key,
            false,
            properties,
            body,
        );
        if let Err(e) = self.flush() {
            return Attempt::Lost(io_text(&e));
        }
        loop {
            let mut ended = None;
            for event in std::mem::take(&mut self.events) {
                let Event::Delivery {
                    channel: REPLY_CHANNEL,
                    routing_key,
                    body,
                    ..
                } = event
                else {
                    if let Some(attempt) = self.note(event, Waiting::Reply) {
                        ended.get_or_insert(attempt);
                    }
                    continue;
                };
                match payload::annotate_consumed(&body, reply.zone, unix_now(), reply.broker_id) {
                    Ok(annotated)
                        if ended.is_none() && annotated.msg_id.as_deref() == Some(reply.msg_id) =>
                    {
                        ended = Some(Attempt::Answered(annotated.body));
                    }
                    // Annotated again when taken.
                    Ok(_) => self.keep_late(routing_key, body),
                    Err(e) => log::error!(
                        "dropping a reply from broker {} (routing key {routing_key}): {e}",
                        reply.broker_id
                    ),
                }
            }
            if let Some(attempt) = ended {
                return attempt;
            }
            match self.read(deadline) {
                Ok(true) => {}
                Ok(false) => return Attempt::Timeout,
                Err(reason) => return Attempt::Lost(reason),
            }
        }
    }
}

/// One broker as this process sees it.
struct Target {
    broker: Broker,
    link: Option<Link>,
    /// Not to be connected again before this (after a failed connect).
    retry_at: Option<Instant>,
    backoff: Duration,
    next_idx: u32,
    /// What was last logged about it: the link is down (true) or up.
    logged_down: bool,
}

impl Target {
    fn connect(&mut self, options: &DirectOptions, deadline: Instant) -> Result<(), String> {
        match Link::open(&self.broker, options, deadline) {
            Ok(link) => {
                if self.logged_down {
                    log::info!("broker {}: direct publishing link up", self.broker.id);
                }
                self.link = Some(link);
                self.retry_at = None;
                self.backoff = BACKOFF_FIRST;
                self.logged_down = false;
                Ok(())
            }
            Err(reason) => {
                self.down(&reason);
                self.retry_at = Some(Instant::now() + self.backoff);
                self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
                Err(reason)
            }
        }
    }

    /// The link is gone or could not open: logged once per change.
    fn down(&mut self, reason: &str) {
        self.link = None;
        if self.logged_down {
            log::debug!(
                "broker {} ({}): direct publishing link: {reason}",
                self.broker.id,
                self.broker.redacted_url()
            );
        } else {
            log::warn!(
                "broker {} ({}): direct publishing link down: {reason}",
                self.broker.id,
                self.broker.redacted_url()
            );
            self.logged_down = true;
        }
    }
}

/// This process's direct links, one per broker, opened on first use.
pub struct DirectPublisher {
    targets: Vec<Target>,
    /// Indexes of the primary-zone brokers, in configuration order.
    primary: Vec<usize>,
    options: DirectOptions,
}

impl std::fmt::Debug for DirectPublisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DirectPublisher")
            .field("brokers", &self.targets.len())
            .field("connected", &self.connected())
            .finish_non_exhaustive()
    }
}

/// Per-candidate bookkeeping of one publish.
#[derive(Default)]
struct Tried {
    done: bool,
    /// The link was lost during this publish: one reconnect is allowed.
    lost: bool,
}

impl DirectPublisher {
    pub fn new(brokers: &[Broker], options: DirectOptions) -> DirectPublisher {
        let targets: Vec<Target> = brokers
            .iter()
            .map(|broker| Target {
                broker: broker.clone(),
                link: None,
                retry_at: None,
                backoff: BACKOFF_FIRST,
                next_idx: 0,
                logged_down: false,
            })
            .collect();
        let primary = targets
            .iter()
            .enumerate()
            .filter(|(_, t)| t.broker.zone == options.primary_zone)
            .map(|(i, _)| i)
            .collect();
        DirectPublisher {
            targets,
            primary,
            options,
        }
    }

    /// The links open now.
    pub fn connected(&self) -> usize {
        self.targets.iter().filter(|t| t.link.is_some()).count()
    }

    fn candidates(&self, target: Option<u32>) -> Result<Vec<usize>, PublishError> {
        match target {
            None => Ok(self.primary.clone()),
            Some(id) => self
                .targets
                .iter()
                .position(|t| t.broker.id == id)
                .map(|i| vec![i])
                .ok_or(PublishError::UnknownBroker(id)),
        }
    }

    /// Whether a publish or query to `target` with `how` can go here: every
    /// candidate broker is plain `amqp://`, and it is not `mandatory` (a
    /// returned message goes to the event routes, which the AMQP process
    /// runs).
    pub fn covers(&self, target: Option<u32>, how: &PublishProperties<'_>) -> bool {
        if how.mandatory {
            return false;
        }
        match self.candidates(target) {
            Ok(candidates) => candidates
                .iter()
                .all(|&i| self.targets[i].broker.scheme == Scheme::Amqp),
            Err(_) => true,
        }
    }

    /// Publishes with publisher confirms, as the module documentation says;
    /// `body_for(broker_id, idx)` builds the body once the broker and the
    /// Server-ID index are chosen.
    pub fn publish(
        &mut self,
        target: Option<u32>,
        exchange: &str,
        routing_key: &str,
        how: PublishProperties<'_>,
        body_for: impl Fn(u32, u32) -> Vec<u8>,
        deadline: Instant,
    ) -> Result<Published, PublishError> {
        let (exchange, routing_key) = broker::names(exchange, routing_key)?;
        let properties = broker::properties(how.headers)?;
        let candidates = self.candidates(target)?;
        let reply_queues = self.options.reply_queues.max(1);
        let mut idx = 0;
        let (broker_id, _) = self.attempt(&candidates, deadline, |t| {
            idx = t.next_idx % reply_queues;
            t.next_idx = t.next_idx.wrapping_add(1);
            let body = body_for(t.broker.id, idx);
            match t.link.as_mut() {
                Some(link) => link.publish(&exchange, &routing_key, &properties, &body, deadline),
                None => Attempt::Lost("no link".into()),
            }
        })?;
        Ok(Published { broker_id, idx })
    }

    /// Publishes an asynchronous query on the primary-zone brokers in order,
    /// without waiting for anything (see [`ASYNC_CHANNEL`]): `Ok` once it is
    /// written; `body_for(broker_id)` builds the body once the broker is
    /// chosen. Connecting waits, at most until `deadline`.
    pub fn send_query(
        &mut self,
        exchange: &str,
        routing_key: &str,
        headers: &[(Vec<u8>, Vec<u8>)],
        body_for: impl Fn(u32) -> Vec<u8>,
        deadline: Instant,
    ) -> Result<u32, PublishError> {
        let (exchange, routing_key) = broker::names(exchange, routing_key)?;
        let properties = broker::properties(headers)?;
        let candidates = self.candidates(None)?;
        let (broker_id, _) = self.attempt(&candidates, deadline, |t| {
            let body = body_for(t.broker.id);
            match t.link.as_mut() {
                Some(link) => link.send(&exchange, &routing_key, &properties, &body),
                None => Attempt::Lost("no link".into()),
            }
        })?;
        Ok(broker_id)
    }

    /// A synchronous query on the primary-zone brokers in order: published
    /// with this process's own reply queue's `Server-ID`; the reply whose
    /// `Msg-ID` is the payload's, annotated as consumed messages are, or
    /// [`PublishError::Timeout`]. Replies to other queries that arrive
    /// meanwhile are kept for [`DirectPublisher::take_late_replies`].
    pub fn query(
        &mut self,
        exchange: &str,
        routing_key: &str,
        headers: &[(Vec<u8>, Vec<u8>)],
        payload: &PreparedPublish,
        deadline: Instant,
    ) -> Result<Vec<u8>, PublishError> {
        let (exchange, routing_key) = broker::names(exchange, routing_key)?;
        let properties = broker::properties(headers)?;
        let candidates = self.candidates(None)?;
        let options = self.options.clone();
        let (_, answer) = self.attempt(&candidates, deadline, |t| {
            let node = &options.node_hostname;
            let queue = payload::reply_queue(node, t.broker.id, options.reply_idx);
            let server_id = payload::server_id(node, t.broker.id, options.reply_idx);
            let (id, zone) = (t.broker.id, t.broker.zone.clone());
            let Some(link) = t.link.as_mut() else {
                return Attempt::Lost("no link".into());
            };
            if let Err(attempt) = link.consume_replies(&queue, &server_id, deadline) {
                return attempt;
            }
            let body = payload.body(&server_id);
            link.query(
                &exchange,
                &routing_key,
                &properties,
                &body,
                Reply {
                    msg_id: payload.msg_id(),
                    zone: &zone,
                    broker_id: id,
                },
                deadline,
            )
        })?;
        match answer {
            Attempt::Answered(reply) => Ok(reply),
            _ => Err(PublishError::Timeout),
        }
    }

    /// Replies read that no query waited for (late, duplicate, unknown
    /// `Msg-ID`), annotated, with their routing key: the C module runs them
    /// through the event routes.
    pub fn take_late_replies(&mut self) -> Vec<(String, Vec<u8>)> {
        let mut late = Vec::new();
        for t in &mut self.targets {
            let Some(link) = t.link.as_mut() else {
                continue;
            };
            for (routing_key, body) in link.late.drain(..) {
                match payload::annotate_consumed(&body, &t.broker.zone, unix_now(), t.broker.id) {
                    Ok(annotated) => late.push((routing_key, annotated.body)),
                    Err(e) => log::error!(
                        "dropping a reply from broker {} (routing key {routing_key}): {e}",
                        t.broker.id
                    ),
                }
            }
        }
        late
    }

    /// Runs `operation` on the candidates' links, in order, with the
    /// failover rules of the module documentation; the broker and the
    /// attempt that succeeded (confirmed or answered).
    fn attempt(
        &mut self,
        candidates: &[usize],
        deadline: Instant,
        mut operation: impl FnMut(&mut Target) -> Attempt,
    ) -> Result<(u32, Attempt), PublishError> {
        let mut tried: Vec<Tried> = candidates.iter().map(|_| Tried::default()).collect();
        let mut last_error = PublishError::NoBrokerConnected;
        loop {
            let mut unavailable = None;
            let mut again = false;
            for (n, &i) in candidates.iter().enumerate() {
                let state = &mut tried[n];
                if state.done {
                    continue;
                }
                let options = &self.options;
                let t = &mut self.targets[i];
                let broker_id = t.broker.id;
                if t.link.is_none() {
                    let waiting = t.retry_at.is_some_and(|at| Instant::now() < at);
                    if waiting || t.connect(options, deadline).is_err() {
                        // Logged by `connect`; counted as no broker connected.
                        state.done = true;
                        continue;
                    }
                }
                let Some(link) = t.link.as_mut() else {
                    continue;
                };
                if link.blocked.is_some() || link.unconfirmed.is_some() {
                    if let Err(reason) = link.catch_up() {
                        t.down(&reason);
                        again = true;
                        continue;
                    }
                }
                if let Some(why) = link.unavailable() {
                    state.done = true;
                    unavailable = Some((broker_id, why));
                    continue;
                }
                match operation(t) {
                    attempt @ (Attempt::Confirmed | Attempt::Answered(_)) => {
                        return Ok((broker_id, attempt))
                    }
                    Attempt::Returned {
                        reply_code,
                        reply_text,
                        body,
                    } => {
                        return Err(PublishError::Returned {
                            broker_id,
                            reply_code,
                            reply_text,
                            body,
                        })
                    }
                    Attempt::Timeout => return Err(PublishError::Timeout),
                    Attempt::Nacked => {
                        log::warn!("broker {broker_id}: a direct publish was nacked");
                        state.done = true;
                        last_error = PublishError::Nacked { broker_id };
                    }
                    Attempt::Refused(reason) => {
                        log::warn!("broker {broker_id}: a direct publish was refused: {reason}");
                        state.done = true;
                        last_error = PublishError::Closed(reason);
                    }
                    Attempt::Blocked(reason) => {
                        state.done = true;
                        unavailable = Some((
                            broker_id,
                            format!(
                                "the broker blocks publishers (memory or disk alarm: {reason})"
                            ),
                        ));
                    }
                    Attempt::Lost(reason) => {
                        t.down(&reason);
                        // The first loss in an operation may be a link that
                        // died while idle: connect once more; a second ends it.
                        state.done = state.lost;
                        state.lost = true;
                        again = !state.done;
                        last_error = PublishError::Closed(reason);
                    }
                }
            }
            if again && Instant::now() < deadline {
                continue;
            }
            return Err(match unavailable {
                Some((broker_id, reason)) if !again => {
                    PublishError::Unavailable { broker_id, reason }
                }
                _ if Instant::now() >= deadline => PublishError::Timeout,
                _ => last_error,
            });
        }
    }
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}
