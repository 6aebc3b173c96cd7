//! The protocol between the module's processes and the AMQP process (this
//! file), typed by direction: [`Request`] to it, [`Answer`] back to the
//! requester, [`Work`] to a consumer worker; their wire format ([`wire`]), the socket and who may connect
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

use crate::payload::{PreparedPublish, PublishTarget};

mod client;
mod socket;
pub mod wire;

pub use client::{send_once, Requester, WorkerLink};
pub use socket::{bind, trusted_peer};
pub use wire::WireError;

/// Deliveries the AMQP process writes to a worker's link ahead of the
/// worker's reports (a resume waits behind at most these).
pub const WORKER_WINDOW: usize = 32;

/// A worker reports the routes it ran at least every this many deliveries,
/// and before it waits for more ([`Request::Ack`] is cumulative).
pub const REPORT_EVERY: usize = WORKER_WINDOW / 2;

/// Largest frame accepted (payloads are JSON documents of a few KB; this is
/// a guard against a corrupted length, not a product limit).
pub const MAX_FRAME: usize = 64 * 1024 * 1024;

/// A publish or a query, with its body prepared by the caller except for
/// the `Server-ID` value, which only the AMQP process knows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outgoing {
    pub target: PublishTarget,
    pub exchange: Vec<u8>,
    pub routing_key: Vec<u8>,
    pub headers: Vec<(Vec<u8>, Vec<u8>)>,
    /// The body, with its `Msg-ID` (a query's correlation key).
    pub payload: PreparedPublish,
    /// How long the caller waits for the answer.
    pub timeout_ms: u32,
    /// Published `mandatory`: the broker returns it when no queue is bound
    /// for it (the `flags` argument's 2048 bit).
    pub mandatory: bool,
}

/// Where an asynchronous query's end resumes its suspended transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResumeAt {
    /// tm's transaction id.
    pub hash: u32,
    pub label: u32,
    /// `onreply_route` run with the reply, `failure_route` run without one.
    pub ok_route: String,
    pub err_route: String,
}

/// Process → AMQP process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    /// Publish; answered once the broker confirmed (or why not).
    Publish(Outgoing),
    /// Publish; answered with the correlated reply.
    Query(Outgoing),
    /// Publish a query whose end resumes a suspended transaction in a
    /// worker ([`Work::Resume`]); not answered.
    AsyncQuery {
        outgoing: Outgoing,
        resume: ResumeAt,
    },
    /// The service's state and counters; answered with [`Outcome::Reply`]
    /// holding a JSON document (the RPC commands).
    Status,
    /// This connection is consumer worker `worker`'s link: [`Work`] comes
    /// back on it.
    Hello { worker: u32 },
    /// On a worker's link: the routes of `delivery` and of every delivery
    /// written to the link before it have run (ids grow along a link).
    Ack { delivery: u64 },
    /// A reply to a direct query that no query waited for (late,
    /// duplicate), annotated: it runs through the event routes, as
    /// unmatched replies consumed by the AMQP process do; not answered.
    LateReply { routing_key: Vec<u8>, body: Vec<u8> },
    /// On a worker's link: a subscription the worker consumes itself
    /// (`amqp_worker_consume`) failed on a broker (`failure` says why), or
    /// is consumed there again (`None`); reported once per change, for
    /// `kazoo.subscriptions`. Not answered.
    SubscriptionState {
        index: u32,
        broker_id: u32,
        failure: Option<String>,
    },
    /// Worker 1: what the KEMI `kazoo:mod-init` callback declared
    /// (subscription descriptions as JSON text) and published; not answered
    /// (the AMQP process waits for it before connecting).
    StartupDone {
        subscriptions: Vec<Vec<u8>>,
        publishes: Vec<Outgoing>,
    },
}

/// AMQP process → the process that made request `request`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answer {
    pub request: u64,
    pub outcome: Outcome,
}

/// How a request ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The broker confirmed the publish.
    Published,
    /// The correlated reply of a query (annotated as consumed messages are),
    /// or the status document.
    Reply(Vec<u8>),
    /// No answer in time.
    Timeout,
    /// Why it failed.
    Failed(String),
}

/// AMQP process → a consumer worker.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Work {
    /// Run the event route for this.
    Deliver(Delivery),
    /// Resume a suspended transaction.
    Resume(Resume),
}

/// A message (or a synthetic connection event) for an event route.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delivery {
    /// Reported back in [`Request::Ack`] once the route ran.
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
