//! Direct links (`amqp_direct`, on by default): `kazoo_publish` and
//! `kazoo_query` from the calling process's own broker connections
//! (`kazoo_engine::direct`), and the publish and query counters every
//! process adds to (with those of what the consumer workers consume
//! themselves).
//!
//! The counters live in shared memory (allocated in `mod_init`, before the
//! fork), so that the AMQP process's statistics and `kazoo.status` count
//! the publishes and queries of every process. The links are opened by each
//! process on its first use, on its host thread only. A reply a query read
//! but did not wait for goes to the AMQP process, which runs it through the
//! event routes.
//!
//! With `amqp_worker_replies`, a `kazoo_async_query` is published here too,
//! with the `Server-ID` of the queue the consumer workers take replies
//! from, after it was put in the table of waiting queries
//! (`kazoo_engine::async_queries`, also in shared memory): the worker that
//! reads the reply, or finds the query past its deadline, resumes it.
use std::cell::RefCell;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use kazoo_engine::async_queries::{self, AsyncQueries, NotInserted, Waiting};
use kazoo_engine::broker::{PublishError, PublishProperties};
use kazoo_engine::config::Config;
use kazoo_engine::counters::{QueryOutcome, ScriptCounters, SubscriptionCounters};
use kazoo_engine::direct::{DirectOptions, DirectPublisher};
use kazoo_engine::ipc::{Outgoing, Request};
use kazoo_engine::payload::{self, PublishTarget};
use kazoo_engine::worker_consume;

use crate::ipc_client;
use crate::params::config;

/// How long handing a late reply to the AMQP process may take.
const LATE_REPLY_SEND: Duration = Duration::from_millis(100);

static COUNTERS: OnceLock<ScriptCounters> = OnceLock::new();
static SUBSCRIPTION_COUNTERS: OnceLock<SubscriptionCounters> = OnceLock::new();
static ASYNC_QUERIES: OnceLock<AsyncQueries> = OnceLock::new();

thread_local! {
    /// This process's links (created on first use, after the fork).
    static PUBLISHER: RefCell<Option<DirectPublisher>> = const { RefCell::new(None) };
}

/// Allocates the shared counters and, when the workers take the replies of
/// asynchronous queries, the table of those waiting (`mod_init`).
pub(crate) fn init_shared(config: &Config) -> Result<(), String> {
    let slots = kamailio::mem::shm_counters::<{ ScriptCounters::SLOTS }>()?;
    let per_subscription = kamailio::mem::shm_counters::<{ SubscriptionCounters::SLOTS }>()?;
    // A second mod_init cannot happen; keep the first.
    let _ = COUNTERS.set(ScriptCounters::new(slots));
    let _ = SUBSCRIPTION_COUNTERS.set(SubscriptionCounters::new(per_subscription));
    if worker_replies(config) {
        let table = kamailio::mem::shm_counters::<{ async_queries::WORDS }>()?;
        let _ = ASYNC_QUERIES.set(AsyncQueries::new(table));
    }
    Ok(())
}

/// Whether the consumer workers take the replies of asynchronous queries
/// published here (`amqp_worker_replies`): with the direct links, when
/// the workers can consume from every primary-zone broker (plain
/// `amqp://`), and when the node's name leaves their queue's name within
/// AMQP's 255 bytes.
pub(crate) fn worker_replies(config: &Config) -> bool {
    let p = &config.params;
    p.amqp_worker_replies
        && p.amqp_direct
        && worker_consume::brokers_allow(&p.brokers, &p.amqp_primary_zone)
        && worker_consume::async_replies(&config.node_hostname).is_ok()
}

/// The table of asynchronous queries the workers resume, when they do.
pub(crate) fn async_queries() -> Option<AsyncQueries> {
    ASYNC_QUERIES.get().copied()
}

/// The publish (and workers' consume) counters of all processes.
pub(crate) fn counters() -> ScriptCounters {
    *COUNTERS.get_or_init(ScriptCounters::private)
}

/// What the consumer workers consumed themselves, per subscription.
pub(crate) fn subscription_counters() -> SubscriptionCounters {
    *SUBSCRIPTION_COUNTERS.get_or_init(SubscriptionCounters::private)
}

fn target_id(target: PublishTarget) -> Option<u32> {
    match target {
        PublishTarget::Primary => None,
        PublishTarget::Broker(id) => Some(id),
    }
}

/// Runs `operation` on this process's publisher when `outgoing` can go
/// on a direct link (see `DirectPublisher::covers`); `None`: it must go
/// through the AMQP process.
fn with_publisher<T>(
    outgoing: &Outgoing,
    operation: impl FnOnce(&mut DirectPublisher) -> T,
) -> Option<T> {
    let config = config();
    if !config.params.amqp_direct {
        return None;
    }
    let how = PublishProperties {
        headers: &outgoing.headers,
        mandatory: outgoing.mandatory,
        needs_replies: false,
    };
    PUBLISHER.with(|cell| {
        let mut publisher = cell.borrow_mut();
        let publisher = publisher.get_or_insert_with(|| {
            crate::logger::install();
            let p = &config.params;
            DirectPublisher::new(
                &p.brokers,
                DirectOptions {
                    primary_zone: p.amqp_primary_zone.clone(),
                    node_hostname: config.node_hostname.clone(),
                    reply_queues: p.amqp_max_channels as u32,
                    reply_idx: p.amqp_max_channels as u32 + kamailio::process::number(),
                    connect_timeout: p.amqp_connect_timeout.duration(),
                    connection_name: format!(
                        "{} direct (pid {})",
                        config.node(),
                        std::process::id()
                    ),
                },
            )
        });
        if !publisher.covers(target_id(outgoing.target), &how) {
            return None;
        }
        let result = operation(publisher);
        forward_late_replies(publisher);
        Some(result)
    })
}

/// Hands the replies no query waited for to the AMQP process (one-way).
fn forward_late_replies(publisher: &mut DirectPublisher) {
    for (routing_key, body) in publisher.take_late_replies() {
        let request = Request::LateReply {
            routing_key: routing_key.into_bytes(),
            body,
        };
        let sent = ipc_client::with_requester(|requester| {
            requester.send(&request, Instant::now() + LATE_REPLY_SEND)
        });
        if !matches!(sent, Ok(Ok(()))) {
            kamailio::warn!("a late reply could not be handed to the event routes");
        }
    }
}

/// Publishes `outgoing` on this process's own link when it can go there,
/// counted; `None`: it must go through the AMQP process.
pub(crate) fn publish(outgoing: &Outgoing, deadline: Instant) -> Option<Result<(), PublishError>> {
    let config = config();
    let result = with_publisher(outgoing, |publisher| {
        let how = PublishProperties {
            headers: &outgoing.headers,
            mandatory: outgoing.mandatory,
            needs_replies: false,
        };
        let exchange = String::from_utf8_lossy(&outgoing.exchange);
        let routing_key = String::from_utf8_lossy(&outgoing.routing_key);
        let body_for = |broker_id, idx| {
            outgoing
                .payload
                .body(&payload::server_id(&config.node_hostname, broker_id, idx))
        };
        let target = target_id(outgoing.target);
        publisher
            .publish(target, &exchange, &routing_key, how, body_for, deadline)
            .map(|_| ())
    })?;
    counters().record(result.as_ref().map(|_| ()).map_err(Some));
    Some(result)
}

/// Queries on this process's own link when it can go there, counted: the
/// annotated reply, or why not ([`PublishError::Timeout`]: no reply in
/// time); `None`: it must go through the AMQP process.
pub(crate) fn query(
    outgoing: &Outgoing,
    deadline: Instant,
) -> Option<Result<Vec<u8>, PublishError>> {
    let result = with_publisher(outgoing, |publisher| {
        let exchange = String::from_utf8_lossy(&outgoing.exchange);
        let routing_key = String::from_utf8_lossy(&outgoing.routing_key);
        publisher.query(
            &exchange,
            &routing_key,
            &outgoing.headers,
            &outgoing.payload,
            deadline,
        )
    })?;
    counters().record_query(match &result {
        Ok(_) => QueryOutcome::Answered,
        Err(PublishError::Timeout) => QueryOutcome::TimedOut,
        Err(_) => QueryOutcome::Failed,
    });
    Some(result)
}

/// What an asynchronous query resumes.
pub(crate) struct Resumption<'a> {
    pub(crate) hash: u32,
    pub(crate) label: u32,
    pub(crate) ok_route: &'a str,
    pub(crate) err_route: &'a str,
}

/// What became of an asynchronous query handed to [`async_query`].
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum AsyncSent {
    /// Written to the broker (without waiting for a confirm: the reply is
    /// one, and without a reply in time the query resumes in its error
    /// route), or a worker took it already.
    Sent,
    /// It must go through the AMQP process: the workers do not take
    /// replies, the link does not cover it, the table has no room for it,
    /// or it could not be written here (the AMQP process tries, and resumes
    /// it in the error route if it cannot either).
    NotHere,
    /// Refused: a query with its `Msg-ID` already waits for its reply.
    Duplicate,
}

/// Publishes an asynchronous query here for a consumer worker to resume
/// (see the module's comment).
pub(crate) fn async_query(
    outgoing: &Outgoing,
    resumption: Resumption<'_>,
    timeout: Duration,
) -> AsyncSent {
    let Some(queries) = async_queries() else {
        return AsyncSent::NotHere;
    };
    let config = config();
    let now = Instant::now();
    let waiting = Waiting {
        msg_id: outgoing.payload.msg_id(),
        hash: resumption.hash,
        label: resumption.label,
        ok_route: resumption.ok_route,
        err_route: resumption.err_route,
        deadline_ms: async_queries::now_ms() + timeout.as_millis() as u64,
        timeout_ms: outgoing.timeout_ms,
    };
    // Connecting takes no longer than a publish may.
    let publish_wait = timeout.min(Duration::from_millis(
        config.params.amqp_publish_timeout.max(0) as u64,
    ));
    let published = with_publisher(outgoing, |publisher| {
        // Put in before it is published: the reply may come at once.
        let ticket = match queries.insert(&waiting) {
            Ok(ticket) => ticket,
            Err(NotInserted::Duplicate) => return Some(Err(AsyncSent::Duplicate)),
            Err(NotInserted::DoesNotFit) => return None,
        };
        let exchange = String::from_utf8_lossy(&outgoing.exchange);
        let routing_key = String::from_utf8_lossy(&outgoing.routing_key);
        let server_id = payload::async_server_id(&config.node_hostname);
        let sent = publisher.send_query(
            &exchange,
            &routing_key,
            &outgoing.headers,
            |_| outgoing.payload.body(&server_id),
            now + publish_wait,
        );
        Some(Ok((ticket, sent)))
    })
    .flatten();
    match published {
        Some(Ok((_, Ok(_)))) => AsyncSent::Sent,
        Some(Ok((ticket, Err(e)))) => {
            if !queries.cancel(ticket) {
                // A worker took it meanwhile (a reply, or its deadline).
                return AsyncSent::Sent;
            }
            kamailio::debug!("asynchronous query not published on this process's link: {e}");
            AsyncSent::NotHere
        }
        Some(Err(refused)) => refused,
        None => AsyncSent::NotHere,
    }
}
