//! Messages between the module's processes and the AMQP process, their wire
//! format, and the blocking client side used by Kamailio's processes.
//!
//! Transport: a Unix stream socket in the abstract namespace, bound by the
//! main process before Kamailio forks (so the name is reserved at start-up
//! and the AMQP process inherits the listening socket). Every other process
//! connects lazily, one connection per process and role, and keeps it.
//!
//! Frame: `u32` little-endian length of what follows, a tag byte, then the
//! fields; byte strings are a `u32` length and the bytes, options a flag
//! byte. The format is private to one Kamailio instance (both ends are the
//! same `kazoo.so`), so it carries no version.
//!
//! The blocking side never waits without a bound: every call takes a
//! deadline, and a connection on which a read timed out mid-frame is
//! dropped (the next call reconnects), so a stale answer can never be read
//! as the answer to a later request; answers also carry the request id.
use std::io::{self, Read, Write};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixListener, UnixStream};
use std::time::{Duration, Instant};

/// Largest frame accepted (payloads are JSON documents of a few KB; this is
/// a guard against a corrupted length, not a product limit).
pub const MAX_FRAME: usize = 64 * 1024 * 1024;

/// Binds the listening socket of the Kamailio instance whose main process
/// has pid `main_pid` (in the main process, before the fork) under a name
/// no other instance holds: `kazoo-<main pid>-<random>`. The random part
/// keeps apart instances with the same pid in one network namespace (each
/// container's Kamailio as PID 1); a name already taken is drawn again.
/// Returns the name and the listener.
pub fn bind(main_pid: u32) -> io::Result<(String, UnixListener)> {
    let mut attempts = 0;
    loop {
        let name = format!("kazoo-{main_pid}-{}", uuid::Uuid::new_v4().simple());
        let addr = SocketAddr::from_abstract_name(name.as_bytes())?;
        match UnixListener::bind_addr(&addr) {
            Ok(listener) => return Ok((name, listener)),
            Err(e) if e.kind() == io::ErrorKind::AddrInUse && attempts < 8 => attempts += 1,
            Err(e) => return Err(e),
        }
    }
}

/// Connects to the AMQP process, waiting at most until `deadline` (a full
/// listen backlog makes a blocking `connect` wait for ever).
fn connect(name: &str, deadline: Instant) -> io::Result<UnixStream> {
    use socket2::{Domain, SockAddr, Socket, Type};
    use std::os::unix::ffi::OsStrExt;
    let mut abstract_path = vec![0u8];
    abstract_path.extend_from_slice(name.as_bytes());
    let addr = SockAddr::unix(std::ffi::OsStr::from_bytes(&abstract_path))?;
    loop {
        let socket = Socket::new(Domain::UNIX, Type::STREAM, None)?;
        socket.set_nonblocking(true)?;
        match socket.connect(&addr) {
            Ok(()) => {
                socket.set_nonblocking(false)?;
                return Ok(socket.into());
            }
            // A Unix stream connect either completes or finds the backlog
            // full (EAGAIN); try again until the deadline.
            Err(e) if e.kind() == io::ErrorKind::WouldBlock && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(2));
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the kazoo AMQP process accepts no connection",
                ));
            }
            Err(e) => return Err(e),
        }
    }
}

/// Whether a peer (its credentials as the kernel gives them) is one of this
/// Kamailio instance's processes: the effective uid of this process
/// (`own_uid`), and either the main process (`main_pid`) or one of its
/// children (Kamailio forks every process from the main one). Without
/// `/proc` only the uid is checked.
pub fn trusted_peer(
    peer_uid: u32,
    peer_pid: Option<i32>,
    own_uid: u32,
    main_pid: u32,
) -> Result<(), String> {
    if peer_uid != own_uid {
        return Err(format!("uid {peer_uid} is not this process's {own_uid}"));
    }
    let Some(pid) = peer_pid.and_then(|p| u32::try_from(p).ok()) else {
        return Err("the peer's pid is unknown".into());
    };
    if pid == main_pid {
        return Ok(());
    }
    match parent_pid(pid) {
        Some(parent) if parent == main_pid => Ok(()),
        Some(parent) => Err(format!(
            "pid {pid} (parent {parent}) is not a process of this Kamailio (main pid {main_pid})"
        )),
        None if !std::path::Path::new("/proc/self/stat").exists() => Ok(()),
        None => Err(format!("pid {pid} is gone")),
    }
}

/// The parent pid of `pid`, from `/proc/<pid>/stat`.
fn parent_pid(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // `pid (comm) state ppid ...`; comm may hold spaces and parentheses.
    let after_comm = &stat[stat.rfind(')')? + 1..];
    after_comm.split_whitespace().nth(1)?.parse().ok()
}

/// Where a publish goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// The primary zone's brokers, in configuration order (failover).
    Primary,
    /// One broker (`consumer://<id>/...`), no failover.
    Broker(u32),
}

/// A publish or a query, with its body already prepared by the caller except
/// for the `Server-ID` value, which only the AMQP process knows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outgoing {
    pub request: u64,
    pub target: Target,
    pub exchange: Vec<u8>,
    pub routing_key: Vec<u8>,
    pub headers: Vec<(Vec<u8>, Vec<u8>)>,
    /// Body text before the Server-ID value slot.
    pub before: Vec<u8>,
    /// Body text after the slot.
    pub after: Vec<u8>,
    /// Whether the AMQP process writes the Server-ID between the two.
    pub server_id_slot: bool,
    /// Correlation key of a query.
    pub msg_id: String,
    /// How long the caller waits for the answer.
    pub timeout_ms: u32,
    /// Published `mandatory`: the broker returns it when no queue is bound
    /// for it (the `flags` argument's 2048 bit).
    pub mandatory: bool,
}

/// How a request ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The broker confirmed the publish.
    Published,
    /// The correlated reply of a query (annotated as consumed messages are).
    Reply(Vec<u8>),
    /// No answer in time.
    Timeout,
    /// Why it failed.
    Failed(String),
}

/// A message (or a synthetic connection event) for an event route.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delivery {
    pub id: u64,
    /// `None` for connection events (`$kzRK` is null then).
    pub routing_key: Option<Vec<u8>>,
    pub body: Vec<u8>,
    /// The subscription's own `event_key` / `event_subkey`, if it set them.
    pub event_key: Option<String>,
    pub event_subkey: Option<String>,
}

/// A suspended transaction to resume in a worker (an asynchronous query's
/// end).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resume {
    /// tm's transaction id.
    pub hash: u32,
    pub label: u32,
    /// Whether the query was answered (`onreply_route[route]` with the reply
    /// in `$kzR`) or not (`failure_route[route]`, `$kzR` null).
    pub answered: bool,
    pub route: String,
    pub reply: Option<Vec<u8>>,
}

/// What a worker receives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Work {
    Deliver(Delivery),
    Resume(Resume),
}

/// Everything that travels on the sockets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    /// Process → AMQP: publish and wait for the broker's confirm.
    Publish(Outgoing),
    /// Process → AMQP: publish and wait for the correlated reply.
    Query(Outgoing),
    /// AMQP → process: the end of a request.
    Answer { request: u64, outcome: Outcome },
    /// Worker → AMQP: this connection delivers to worker `worker`.
    Hello { worker: u32 },
    /// AMQP → worker: run the event route for this.
    Deliver(Delivery),
    /// Worker → AMQP: the route for `delivery` has run.
    Ack { delivery: u64 },
    /// Process → AMQP: publish a query whose end resumes a suspended
    /// transaction in a worker; no answer is sent back to the caller.
    AsyncQuery {
        outgoing: Outgoing,
        hash: u32,
        label: u32,
        ok_route: String,
        err_route: String,
    },
    /// AMQP → worker: resume a suspended transaction.
    Resume(Resume),
    /// Process → AMQP: the service's state and counters, answered with
    /// [`Outcome::Reply`] holding a JSON document (the `kazoo.status` RPC).
    Status { request: u64 },
    /// Worker 1 → AMQP: what the KEMI `kazoo:mod-init` callback declared
    /// (subscription descriptions as JSON text) and published; the AMQP
    /// process waits for it before connecting when a KEMI engine is used.
    StartupDone {
        subscriptions: Vec<Vec<u8>>,
        publishes: Vec<Outgoing>,
    },
}

/// A frame that could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WireError(pub &'static str);

impl std::fmt::Display for WireError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "malformed IPC frame: {}", self.0)
    }
}

impl std::error::Error for WireError {}

const TAG_PUBLISH: u8 = 1;
const TAG_QUERY: u8 = 2;
const TAG_ANSWER: u8 = 3;
const TAG_HELLO: u8 = 4;
const TAG_DELIVER: u8 = 5;
const TAG_ACK: u8 = 6;
const TAG_STARTUP_DONE: u8 = 7;
const TAG_ASYNC_QUERY: u8 = 8;
const TAG_RESUME: u8 = 9;
const TAG_STATUS: u8 = 10;

const OUTCOME_PUBLISHED: u8 = 0;
const OUTCOME_REPLY: u8 = 1;
const OUTCOME_TIMEOUT: u8 = 2;
const OUTCOME_FAILED: u8 = 3;

struct Writer(Vec<u8>);

impl Writer {
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn bytes(&mut self, v: &[u8]) {
        // Frames are capped far below 4 GiB (MAX_FRAME); a longer field
        // cannot be produced by the module's callers.
        self.u32(v.len() as u32);
        self.0.extend_from_slice(v);
    }
    fn opt_bytes(&mut self, v: Option<&[u8]>) {
        match v {
            Some(v) => {
                self.u8(1);
                self.bytes(v);
            }
            None => self.u8(0),
        }
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        if self.0.len() < n {
            return Err(WireError("truncated"));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
    fn u8(&mut self) -> Result<u8, WireError> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Result<u32, WireError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self) -> Result<u64, WireError> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }
    fn bytes(&mut self) -> Result<Vec<u8>, WireError> {
        let n = self.u32()? as usize;
        Ok(self.take(n)?.to_vec())
    }
    fn string(&mut self) -> Result<String, WireError> {
        String::from_utf8(self.bytes()?).map_err(|_| WireError("text is not UTF-8"))
    }
    fn opt_bytes(&mut self) -> Result<Option<Vec<u8>>, WireError> {
        match self.u8()? {
            0 => Ok(None),
            1 => Ok(Some(self.bytes()?)),
            _ => Err(WireError("bad option flag")),
        }
    }
    fn opt_string(&mut self) -> Result<Option<String>, WireError> {
        self.opt_bytes()?
            .map(|b| String::from_utf8(b).map_err(|_| WireError("text is not UTF-8")))
            .transpose()
    }
    fn bool(&mut self) -> Result<bool, WireError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(WireError("bad boolean")),
        }
    }
}

fn write_outgoing(w: &mut Writer, o: &Outgoing) {
    w.u64(o.request);
    match o.target {
        Target::Primary => w.u8(0),
        Target::Broker(id) => {
            w.u8(1);
            w.u32(id);
        }
    }
    w.bytes(&o.exchange);
    w.bytes(&o.routing_key);
    w.u32(o.headers.len() as u32);
    for (k, v) in &o.headers {
        w.bytes(k);
        w.bytes(v);
    }
    w.bytes(&o.before);
    w.bytes(&o.after);
    w.u8(o.server_id_slot as u8);
    w.bytes(o.msg_id.as_bytes());
    w.u32(o.timeout_ms);
    w.u8(o.mandatory as u8);
}

fn read_outgoing(r: &mut Reader<'_>) -> Result<Outgoing, WireError> {
    let request = r.u64()?;
    let target = match r.u8()? {
        0 => Target::Primary,
        1 => Target::Broker(r.u32()?),
        _ => return Err(WireError("bad target")),
    };
    let exchange = r.bytes()?;
    let routing_key = r.bytes()?;
    let count = r.u32()? as usize;
    let mut headers = Vec::with_capacity(count.min(64));
    for _ in 0..count {
        headers.push((r.bytes()?, r.bytes()?));
    }
    Ok(Outgoing {
        request,
        target,
        exchange,
        routing_key,
        headers,
        before: r.bytes()?,
        after: r.bytes()?,
        server_id_slot: r.bool()?,
        msg_id: r.string()?,
        timeout_ms: r.u32()?,
        mandatory: r.bool()?,
    })
}

impl Message {
    /// The frame for this message, length prefix included.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer(vec![0; 4]);
        match self {
            Message::Publish(o) => {
                w.u8(TAG_PUBLISH);
                write_outgoing(&mut w, o);
            }
            Message::Query(o) => {
                w.u8(TAG_QUERY);
                write_outgoing(&mut w, o);
            }
            Message::Answer { request, outcome } => {
                w.u8(TAG_ANSWER);
                w.u64(*request);
                match outcome {
                    Outcome::Published => w.u8(OUTCOME_PUBLISHED),
                    Outcome::Reply(body) => {
                        w.u8(OUTCOME_REPLY);
                        w.bytes(body);
                    }
                    Outcome::Timeout => w.u8(OUTCOME_TIMEOUT),
                    Outcome::Failed(reason) => {
                        w.u8(OUTCOME_FAILED);
                        w.bytes(reason.as_bytes());
                    }
                }
            }
            Message::Hello { worker } => {
                w.u8(TAG_HELLO);
                w.u32(*worker);
            }
            Message::Deliver(d) => {
                w.u8(TAG_DELIVER);
                w.u64(d.id);
                w.opt_bytes(d.routing_key.as_deref());
                w.bytes(&d.body);
                w.opt_bytes(d.event_key.as_deref().map(str::as_bytes));
                w.opt_bytes(d.event_subkey.as_deref().map(str::as_bytes));
            }
            Message::Ack { delivery } => {
                w.u8(TAG_ACK);
                w.u64(*delivery);
            }
            Message::AsyncQuery {
                outgoing,
                hash,
                label,
                ok_route,
                err_route,
            } => {
                w.u8(TAG_ASYNC_QUERY);
                write_outgoing(&mut w, outgoing);
                w.u32(*hash);
                w.u32(*label);
                w.bytes(ok_route.as_bytes());
                w.bytes(err_route.as_bytes());
            }
            Message::Status { request } => {
                w.u8(TAG_STATUS);
                w.u64(*request);
            }
            Message::Resume(resume) => {
                w.u8(TAG_RESUME);
                w.u32(resume.hash);
                w.u32(resume.label);
                w.u8(resume.answered as u8);
                w.bytes(resume.route.as_bytes());
                w.opt_bytes(resume.reply.as_deref());
            }
            Message::StartupDone {
                subscriptions,
                publishes,
            } => {
                w.u8(TAG_STARTUP_DONE);
                w.u32(subscriptions.len() as u32);
                for description in subscriptions {
                    w.bytes(description);
                }
                w.u32(publishes.len() as u32);
                for outgoing in publishes {
                    write_outgoing(&mut w, outgoing);
                }
            }
        }
        let len = (w.0.len() - 4) as u32;
        w.0[..4].copy_from_slice(&len.to_le_bytes());
        w.0
    }

    /// Decodes a frame body (without its length prefix).
    pub fn decode(body: &[u8]) -> Result<Message, WireError> {
        let mut r = Reader(body);
        let message = match r.u8()? {
            TAG_PUBLISH => Message::Publish(read_outgoing(&mut r)?),
            TAG_QUERY => Message::Query(read_outgoing(&mut r)?),
            TAG_ANSWER => {
                let request = r.u64()?;
                let outcome = match r.u8()? {
                    OUTCOME_PUBLISHED => Outcome::Published,
                    OUTCOME_REPLY => Outcome::Reply(r.bytes()?),
                    OUTCOME_TIMEOUT => Outcome::Timeout,
                    OUTCOME_FAILED => Outcome::Failed(r.string()?),
                    _ => return Err(WireError("bad outcome")),
                };
                Message::Answer { request, outcome }
            }
            TAG_HELLO => Message::Hello { worker: r.u32()? },
            TAG_DELIVER => Message::Deliver(Delivery {
                id: r.u64()?,
                routing_key: r.opt_bytes()?,
                body: r.bytes()?,
                event_key: r.opt_string()?,
                event_subkey: r.opt_string()?,
            }),
            TAG_ACK => Message::Ack { delivery: r.u64()? },
            TAG_ASYNC_QUERY => Message::AsyncQuery {
                outgoing: read_outgoing(&mut r)?,
                hash: r.u32()?,
                label: r.u32()?,
                ok_route: r.string()?,
                err_route: r.string()?,
            },
            TAG_STATUS => Message::Status { request: r.u64()? },
            TAG_RESUME => Message::Resume(Resume {
                hash: r.u32()?,
                label: r.u32()?,
                answered: r.bool()?,
                route: r.string()?,
                reply: r.opt_bytes()?,
            }),
            TAG_STARTUP_DONE => {
                let count = r.u32()? as usize;
                let mut subscriptions = Vec::with_capacity(count.min(1024));
                for _ in 0..count {
                    subscriptions.push(r.bytes()?);
                }
                let count = r.u32()? as usize;
                let mut publishes = Vec::with_capacity(count.min(1024));
                for _ in 0..count {
                    publishes.push(read_outgoing(&mut r)?);
                }
                Message::StartupDone {
                    subscriptions,
                    publishes,
                }
            }
            _ => return Err(WireError("unknown message type")),
        };
        if !r.0.is_empty() {
            return Err(WireError("trailing bytes"));
        }
        Ok(message)
    }
}

/// Why a blocking call failed.
#[derive(Debug)]
pub enum IpcError {
    /// The AMQP process is not reachable (not started yet, or gone).
    Connect(io::Error),
    /// Sending or receiving failed.
    Io(io::Error),
    /// No answer before the deadline.
    Timeout,
    /// The peer sent something undecodable.
    Wire(WireError),
}

impl std::fmt::Display for IpcError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            IpcError::Connect(e) => write!(f, "cannot reach the kazoo AMQP process: {e}"),
            IpcError::Io(e) => write!(f, "talking to the kazoo AMQP process: {e}"),
            IpcError::Timeout => f.write_str("no answer from the kazoo AMQP process in time"),
            IpcError::Wire(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for IpcError {}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

/// Reads one frame, giving up at `deadline`. `Ok(None)`: nothing arrived
/// (no byte of a frame was read, so the stream is still in sync).
fn read_frame(stream: &mut UnixStream, deadline: Instant) -> Result<Option<Message>, IpcError> {
    let mut len = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return if got == 0 {
                Ok(None)
            } else {
                Err(IpcError::Timeout)
            };
        }
        stream.set_read_timeout(Some(left)).map_err(IpcError::Io)?;
        match stream.read(&mut len[got..]) {
            Ok(0) => {
                return Err(IpcError::Io(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "connection closed",
                )))
            }
            Ok(n) => got += n,
            Err(e) if is_timeout(&e) && got == 0 => return Ok(None),
            Err(e) if is_timeout(&e) => return Err(IpcError::Timeout),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(IpcError::Io(e)),
        }
    }
    let len = u32::from_le_bytes(len) as usize;
    if len == 0 || len > MAX_FRAME {
        return Err(IpcError::Wire(WireError("bad frame length")));
    }
    let mut body = vec![0u8; len];
    let mut got = 0;
    while got < len {
        // Once a frame has started, finish it even past the deadline for a
        // little while: the peer writes whole frames at once.
        let left = deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(100));
        stream.set_read_timeout(Some(left)).map_err(IpcError::Io)?;
        match stream.read(&mut body[got..]) {
            Ok(0) => {
                return Err(IpcError::Io(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "connection closed",
                )))
            }
            Ok(n) => got += n,
            Err(e) if is_timeout(&e) => return Err(IpcError::Timeout),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(IpcError::Io(e)),
        }
    }
    Message::decode(&body).map(Some).map_err(IpcError::Wire)
}

fn write_frame(stream: &mut UnixStream, frame: &[u8], deadline: Instant) -> Result<(), IpcError> {
    let left = deadline
        .saturating_duration_since(Instant::now())
        .max(Duration::from_millis(1));
    stream.set_write_timeout(Some(left)).map_err(IpcError::Io)?;
    stream.write_all(frame).map_err(|e| {
        if is_timeout(&e) {
            IpcError::Timeout
        } else {
            IpcError::Io(e)
        }
    })
}

/// The request side of one process: publishes and queries, one at a time.
pub struct Requester {
    name: String,
    stream: Option<UnixStream>,
    next_request: u64,
}

impl Requester {
    pub fn new(name: &str) -> Requester {
        Requester {
            name: name.to_string(),
            stream: None,
            next_request: 1,
        }
    }

    /// Sends a publish or query (its `request` id is set here) and waits for
    /// its answer until `deadline`.
    pub fn call(&mut self, message: Message, deadline: Instant) -> Result<Outcome, IpcError> {
        let request = self.next_request;
        self.next_request += 1;
        let message = match message {
            Message::Publish(mut o) => {
                o.request = request;
                Message::Publish(o)
            }
            Message::Query(mut o) => {
                o.request = request;
                Message::Query(o)
            }
            Message::Status { .. } => Message::Status { request },
            other => other,
        };
        let frame = message.encode();
        let result = self.exchange(&frame, request, deadline);
        if result.is_err() {
            // Whatever state the stream is in, start afresh next time.
            self.stream = None;
        }
        result
    }

    /// Sends a message that gets no answer (an asynchronous query).
    pub fn send(&mut self, message: &Message, deadline: Instant) -> Result<(), IpcError> {
        let frame = message.encode();
        let result = self
            .connected(deadline)
            .and_then(|stream| write_frame(stream, &frame, deadline));
        if result.is_err() {
            self.stream = None;
        }
        result
    }

    fn connected(&mut self, deadline: Instant) -> Result<&mut UnixStream, IpcError> {
        if self.stream.is_none() {
            self.stream = Some(connect(&self.name, deadline).map_err(IpcError::Connect)?);
        }
        self.stream
            .as_mut()
            .ok_or(IpcError::Wire(WireError("no connection")))
    }

    fn exchange(
        &mut self,
        frame: &[u8],
        request: u64,
        deadline: Instant,
    ) -> Result<Outcome, IpcError> {
        let stream = self.connected(deadline)?;
        write_frame(stream, frame, deadline)?;
        loop {
            match read_frame(stream, deadline)? {
                None => return Err(IpcError::Timeout),
                Some(Message::Answer {
                    request: r,
                    outcome,
                }) if r == request => return Ok(outcome),
                // An answer to an earlier request this process gave up on.
                Some(Message::Answer { .. }) => continue,
                Some(_) => return Err(IpcError::Wire(WireError("unexpected message"))),
            }
        }
    }
}

/// Sends one message on a fresh connection (worker 1's start-up report).
pub fn send_once(name: &str, message: &Message, deadline: Instant) -> Result<(), IpcError> {
    let mut stream = connect(name, deadline).map_err(IpcError::Connect)?;
    write_frame(&mut stream, &message.encode(), deadline)
}

/// A consumer worker's connection: deliveries in, acks out.
pub struct WorkerLink {
    stream: UnixStream,
}

impl WorkerLink {
    /// Connects and announces worker number `worker`.
    pub fn connect(name: &str, worker: u32) -> Result<WorkerLink, IpcError> {
        let deadline = Instant::now() + Duration::from_secs(2);
        let mut stream = connect(name, deadline).map_err(IpcError::Connect)?;
        write_frame(&mut stream, &Message::Hello { worker }.encode(), deadline)?;
        Ok(WorkerLink { stream })
    }

    /// The next work item, or `None` when nothing arrived within `wait`.
    pub fn next(&mut self, wait: Duration) -> Result<Option<Work>, IpcError> {
        match read_frame(&mut self.stream, Instant::now() + wait)? {
            None => Ok(None),
            Some(Message::Deliver(delivery)) => Ok(Some(Work::Deliver(delivery))),
            Some(Message::Resume(resume)) => Ok(Some(Work::Resume(resume))),
            Some(_) => Err(IpcError::Wire(WireError("unexpected message"))),
        }
    }

    /// Tells the AMQP process that the route for `delivery` has run.
    pub fn ack(&mut self, delivery: u64) -> Result<(), IpcError> {
        let deadline = Instant::now() + Duration::from_secs(2);
        write_frame(
            &mut self.stream,
            &Message::Ack { delivery }.encode(),
            deadline,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outgoing() -> Outgoing {
        Outgoing {
            request: 7,
            target: Target::Broker(2),
            exchange: b"callmgr".to_vec(),
            routing_key: b"a.b".to_vec(),
            headers: vec![
                (b"k".to_vec(), b"v".to_vec()),
                (b"k".to_vec(), b"w".to_vec()),
            ],
            before: b"{ \"a\": 1, \"Server-ID\": ".to_vec(),
            after: b" }".to_vec(),
            server_id_slot: true,
            msg_id: "id-1".into(),
            timeout_ms: 2000,
            mandatory: true,
        }
    }

    #[test]
    fn every_message_round_trips() {
        let messages = [
            Message::Publish(outgoing()),
            Message::Query(Outgoing {
                target: Target::Primary,
                ..outgoing()
            }),
            Message::Answer {
                request: 1,
                outcome: Outcome::Published,
            },
            Message::Answer {
                request: 2,
                outcome: Outcome::Reply(b"{ }".to_vec()),
            },
            Message::Answer {
                request: 3,
                outcome: Outcome::Timeout,
            },
            Message::Answer {
                request: 4,
                outcome: Outcome::Failed("no broker".into()),
            },
            Message::Hello { worker: 3 },
            Message::Deliver(Delivery {
                id: 9,
                routing_key: None,
                body: b"{}".to_vec(),
                event_key: Some("k".into()),
                event_subkey: None,
            }),
            Message::Ack { delivery: 9 },
            Message::Status { request: 5 },
            Message::AsyncQuery {
                outgoing: outgoing(),
                hash: 1234,
                label: 99,
                ok_route: "KZ_OK".into(),
                err_route: "KZ_ERR".into(),
            },
            Message::Resume(Resume {
                hash: 1234,
                label: 99,
                answered: true,
                route: "KZ_OK".into(),
                reply: Some(b"{ }".to_vec()),
            }),
            Message::StartupDone {
                subscriptions: vec![b"{'exchange':'x','type':'topic'}".to_vec(), Vec::new()],
                publishes: vec![outgoing()],
            },
        ];
        for message in messages {
            let frame = message.encode();
            let len = u32::from_le_bytes([frame[0], frame[1], frame[2], frame[3]]) as usize;
            assert_eq!(len, frame.len() - 4);
            assert_eq!(Message::decode(&frame[4..]), Ok(message));
        }
    }

    #[test]
    fn truncated_and_garbage_frames_are_errors() {
        let frame = Message::Publish(outgoing()).encode();
        for cut in 5..frame.len() {
            assert!(Message::decode(&frame[4..cut]).is_err(), "cut at {cut}");
        }
        assert!(Message::decode(&[99]).is_err());
        assert!(Message::decode(&[]).is_err());
    }

    #[test]
    fn a_request_gets_its_own_answer_and_skips_stale_ones() {
        let (name, listener) = bind(std::process::id()).unwrap();
        let server = std::thread::spawn(move || {
            let (mut conn, _) = listener.accept().unwrap();
            let deadline = Instant::now() + Duration::from_secs(5);
            let Some(Message::Publish(o)) = read_frame(&mut conn, deadline).unwrap() else {
                panic!("expected a publish");
            };
            // A stale answer first, then the real one.
            let stale = Message::Answer {
                request: o.request + 100,
                outcome: Outcome::Timeout,
            };
            conn.write_all(&stale.encode()).unwrap();
            let answer = Message::Answer {
                request: o.request,
                outcome: Outcome::Published,
            };
            conn.write_all(&answer.encode()).unwrap();
            // The second request is never answered.
            let _ = read_frame(&mut conn, deadline);
            std::thread::sleep(Duration::from_millis(300));
        });
        let mut requester = Requester::new(&name);
        let deadline = Instant::now() + Duration::from_secs(5);
        let outcome = requester
            .call(Message::Publish(outgoing()), deadline)
            .unwrap();
        assert_eq!(outcome, Outcome::Published);
        let started = Instant::now();
        let err = requester
            .call(
                Message::Publish(outgoing()),
                Instant::now() + Duration::from_millis(150),
            )
            .unwrap_err();
        assert!(matches!(err, IpcError::Timeout), "{err}");
        assert!(started.elapsed() < Duration::from_secs(1));
        server.join().unwrap();
    }

    #[test]
    fn an_unreachable_service_is_a_connect_error() {
        let mut requester = Requester::new("kazoo-test-nobody-listens-here");
        let err = requester
            .call(
                Message::Publish(outgoing()),
                Instant::now() + Duration::from_secs(1),
            )
            .unwrap_err();
        assert!(matches!(err, IpcError::Connect(_)), "{err}");
    }

    #[test]
    fn each_bind_gets_its_own_name_even_for_the_same_pid() {
        let (a, _la) = bind(4242).unwrap();
        let (b, _lb) = bind(4242).unwrap();
        assert_ne!(a, b);
        assert!(a.starts_with("kazoo-4242-") && b.starts_with("kazoo-4242-"));
    }

    #[test]
    fn connect_gives_up_at_its_deadline_when_nobody_accepts() {
        use socket2::{Domain, SockAddr, Socket, Type};
        use std::os::unix::ffi::OsStrExt;
        let name = format!("kazoo-test-backlog-{}", std::process::id());
        let mut path = vec![0u8];
        path.extend_from_slice(name.as_bytes());
        let listener = Socket::new(Domain::UNIX, Type::STREAM, None).unwrap();
        listener
            .bind(&SockAddr::unix(std::ffi::OsStr::from_bytes(&path)).unwrap())
            .unwrap();
        // A backlog of 0 queues one connection; nothing is ever accepted.
        listener.listen(0).unwrap();
        let mut kept = Vec::new();
        let started = Instant::now();
        let refused = loop {
            assert!(started.elapsed() < Duration::from_secs(5), "never refused");
            let attempt = Instant::now();
            match connect(&name, attempt + Duration::from_millis(200)) {
                Ok(stream) => kept.push(stream),
                Err(e) => break (e, attempt.elapsed()),
            }
        };
        assert_eq!(refused.0.kind(), io::ErrorKind::TimedOut, "{}", refused.0);
        assert!(refused.1 < Duration::from_secs(1), "{:?}", refused.1);
    }

    #[test]
    fn only_this_kamailios_processes_are_trusted() {
        let me = std::process::id();
        let uid = 1000;
        // The main process itself, and a child of it.
        assert!(trusted_peer(uid, Some(me as i32), uid, me).is_ok());
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .unwrap();
        let child_pid = Some(child.id() as i32);
        assert!(trusted_peer(uid, child_pid, uid, me).is_ok());
        // Another uid; a process whose parent is not the main process.
        assert!(trusted_peer(uid + 1, child_pid, uid, me).is_err());
        assert!(trusted_peer(uid, child_pid, uid, me + 1).is_err());
        assert!(trusted_peer(uid, None, uid, me).is_err());
        child.kill().unwrap();
        child.wait().unwrap();
    }
}
