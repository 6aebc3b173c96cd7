//! RPC commands, each a JSON document from the AMQP process's status:
//! - `kazoo.status`: brokers with the state of their connections, and
//!   counters of publishes, queries, asynchronous queries and consumed
//!   messages since start-up (plus the two views below);
//! - `kazoo.brokers`: each broker, its zone, whether it is primary, each
//!   connection's state and since when, its last error;
//! - `kazoo.subscriptions`: each subscription, its queue and bindings, the
//!   messages it delivered, and per broker its consuming connections or why
//!   it fails there (quarantine).
use std::time::{Duration, Instant};

use kamailio::rpc::Rpc;
use kazoo_engine::ipc::{Outcome, Request};
use kazoo_engine::json::{self, Value};

use crate::ipc_client;

/// The AMQP process's status document.
fn status_document() -> Result<Vec<u8>, String> {
    let deadline = Instant::now() + Duration::from_secs(2);
    let outcome = ipc_client::with_requester(|r| r.call(Request::Status, deadline))?
        .map_err(|e| e.to_string())?;
    match outcome {
        Outcome::Reply(json) => Ok(json),
        Outcome::Failed(reason) => Err(reason),
        _ => Err("unexpected answer from the kazoo AMQP process".into()),
    }
}

/// One member of the status document, as JSON text.
fn status_member(name: &str) -> Result<String, String> {
    let document = status_document()?;
    let value = json::parse(&document).map_err(|e| e.to_string())?;
    let member = value
        .get(name.as_bytes())
        .cloned()
        .unwrap_or(Value::Array(Vec::new()));
    Ok(String::from_utf8_lossy(&json::to_json(&member)).into_owned())
}

/// `kamcmd kazoo.status`.
pub(crate) fn status(_rpc: &Rpc) -> Result<String, String> {
    status_document().map(|json| String::from_utf8_lossy(&json).into_owned())
}

/// `kamcmd kazoo.brokers`.
pub(crate) fn brokers(_rpc: &Rpc) -> Result<String, String> {
    status_member("brokers")
}

/// `kamcmd kazoo.subscriptions`.
pub(crate) fn subscriptions(_rpc: &Rpc) -> Result<String, String> {
    status_member("subscriptions")
}
