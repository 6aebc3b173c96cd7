//! Messages between the module's processes and the AMQP process (this
//! file), their wire format ([`wire`]), the socket and who may connect
//! ([`socket`]), and the blocking client side used by Kamailio's processes
//! ([`client`]).
//!
//! Transport: a Unix stream socket in the abstract namespace, bound by the
//! main process before Kamailio forks (so the name is reserved at start-up
//! and the AMQP process inherits the listening socket). Every other process
//! connects lazily, one connection per process and role, and keeps it.
//!
//! The format is private to one Kamailio instance (both ends are the same
//! `kazoo.so`), so it carries no version.

use std::io;

mod client;
mod socket;
pub mod wire;

pub use client::{send_once, Requester, WorkerLink};
pub use socket::{bind, trusted_peer};
pub use wire::WireError;

/// Largest frame accepted (payloads are JSON documents of a few KB; this is
/// a guard against a corrupted length, not a product limit).
pub const MAX_FRAME: usize = 64 * 1024 * 1024;

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
