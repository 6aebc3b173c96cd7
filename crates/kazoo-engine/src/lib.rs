//! The kazoo engine: plain Rust that knows nothing of Kamailio.
//!
//! Layout:
//! - [`json`]: a json-c compatible reader and writer (lenient input, "spaced" output),
//!   the `kazoo_json` / `kz.json` path language and the script-level helpers built on it.
//! - [`encode`]: the routing-key encoder behind `kazoo_encode` and `{kz.encode}`.
//! - [`config`]: broker URLs (`amqp_connection`), zones and the validation of the
//!   module's parameters.
//! - [`counters`]: the publish and query totals every process adds to.
//! - [`payload`]: the wire rules for payloads: fields added on publish, the
//!   annotation of consumed messages, headers, `consumer://` targets.
//! - [`presence`]: the presentity rows and bodies (PIDF, MWI, dialog-info)
//!   that `kazoo_pua_publish*` writes.
//! - [`routes`]: the event-route names a consumed message may run.
//! - [`subscription`]: `kazoo_subscribe` descriptions.
//! - [`ipc`]: messages between Kamailio's processes and the AMQP process,
//!   their wire format and the blocking client side.
//! - [`amqp`]: a sans-I/O AMQP 0-9-1 publishing connection over `amq-protocol`'s codec.
//! - [`direct`]: a process's own blocking publish links over [`amqp`].
//! - [`broker`]: broker connections over lapin: topology, publisher confirms,
//!   consumers, reconnect and failover.
//! - [`service`]: the AMQP process: IPC server, query correlation, dispatch
//!   to the consumer workers.
//! - [`task`]: spawning on the AMQP runtime without losing a panic.
//! - [`worker_consume`]: a consumer worker's own consuming connections.
//! - [`async_queries`]: the asynchronous queries waiting for a reply that a
//!   consumer worker takes itself, in memory every process shares.
#![forbid(unsafe_code)]

pub mod amqp;
pub mod async_queries;
pub mod broker;
pub mod config;
pub mod counters;
pub mod direct;
pub mod encode;
pub mod ipc;
pub mod json;
pub mod payload;
pub mod presence;
pub mod routes;
pub mod service;
pub mod subscription;
pub mod task;
pub mod worker_consume;
