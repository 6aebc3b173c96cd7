//! RPC commands: `kazoo.status` returns the AMQP process's view as a JSON
//! document: each broker with the state of its connections, and counters of
//! publishes, queries, asynchronous queries and consumed messages since
//! start-up.
use std::time::{Duration, Instant};

use kamailio::rpc::Rpc;
use kazoo_engine::ipc::{Message, Outcome};

use crate::processes;

/// `kamcmd kazoo.status`.
pub fn status(_rpc: &Rpc) -> Result<String, String> {
    let deadline = Instant::now() + Duration::from_secs(2);
    let outcome = processes::with_requester(|r| r.call(Message::Status { request: 0 }, deadline))?
        .map_err(|e| e.to_string())?;
    match outcome {
        Outcome::Reply(json) => Ok(String::from_utf8_lossy(&json).into_owned()),
        Outcome::Failed(reason) => Err(reason),
        _ => Err("unexpected answer from the kazoo AMQP process".into()),
    }
}
