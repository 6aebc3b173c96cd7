//! Direct publishing (`amqp_direct`, on by default): `kazoo_publish` from
//! the calling process's own broker connections
//! (`kazoo_engine::direct`), and the publish counters every process adds to.
//!
//! The counters live in shared memory (allocated in `mod_init`, before the
//! fork), so that the AMQP process's statistics and `kazoo.status` count
//! the publishes of every process. The links are opened by each process on
//! its first publish, on its host thread only.
use std::cell::RefCell;
use std::sync::OnceLock;
use std::time::Instant;

use kazoo_engine::broker::{PublishCounters, PublishError, PublishProperties};
use kazoo_engine::direct::{DirectOptions, DirectPublisher};
use kazoo_engine::ipc::Outgoing;
use kazoo_engine::payload::{self, PublishTarget};

use crate::params::config;

static COUNTERS: OnceLock<PublishCounters> = OnceLock::new();

thread_local! {
    /// This process's links (created on first use, after the fork).
    static PUBLISHER: RefCell<Option<DirectPublisher>> = const { RefCell::new(None) };
}

/// Allocates the shared counters (`mod_init`).
pub(crate) fn init_counters() -> Result<(), String> {
    let slots = kamailio::mem::shm_counters::<{ PublishCounters::SLOTS }>()?;
    // A second mod_init cannot happen; keep the first.
    let _ = COUNTERS.set(PublishCounters::new(slots));
    Ok(())
}

/// The publish counters of all processes.
pub(crate) fn counters() -> PublishCounters {
    *COUNTERS.get_or_init(PublishCounters::private)
}

fn target_id(target: PublishTarget) -> Option<u32> {
    match target {
        PublishTarget::Primary => None,
        PublishTarget::Broker(id) => Some(id),
    }
}

/// Publishes `outgoing` on this process's own link when it can go there
/// (see `DirectPublisher::covers`), counted; `None`: it must go through
/// the AMQP process.
pub(crate) fn publish(outgoing: &Outgoing, deadline: Instant) -> Option<Result<(), PublishError>> {
    let config = config();
    if !config.params.amqp_direct {
        return None;
    }
    let how = PublishProperties {
        headers: &outgoing.headers,
        mandatory: outgoing.mandatory,
        needs_replies: false,
    };
    let target = target_id(outgoing.target);
    let result = PUBLISHER.with(|cell| {
        let mut publisher = cell.borrow_mut();
        let publisher = publisher.get_or_insert_with(|| {
            crate::logger::install();
            let p = &config.params;
            DirectPublisher::new(
                &p.brokers,
                DirectOptions {
                    primary_zone: p.amqp_primary_zone.clone(),
                    reply_queues: p.amqp_max_channels as u32,
                    connect_timeout: p.amqp_connect_timeout.duration(),
                    connection_name: format!(
                        "{} direct (pid {})",
                        config.node(),
                        std::process::id()
                    ),
                },
            )
        });
        if !publisher.covers(target, &how) {
            return None;
        }
        let exchange = String::from_utf8_lossy(&outgoing.exchange);
        let routing_key = String::from_utf8_lossy(&outgoing.routing_key);
        let body_for = |broker_id, idx| {
            outgoing
                .payload
                .body(&payload::server_id(&config.node_hostname, broker_id, idx))
        };
        Some(
            publisher
                .publish(target, &exchange, &routing_key, how, body_for, deadline)
                .map(|_| ()),
        )
    })?;
    counters().record(result.as_ref().map(|_| ()).map_err(Some));
    Some(result)
}
