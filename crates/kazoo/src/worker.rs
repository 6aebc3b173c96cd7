//! A consumer worker process: runs the event route for each delivery the
//! AMQP process hands it, then tells it which routes ran (the broker ack,
//! when the subscription waits for it, follows the route, not the receipt;
//! and the AMQP process hands a worker only a few deliveries ahead of its
//! reports, so a resume never waits behind a backlog); and resumes the
//! transactions of asynchronous queries. Reports are cumulative, every
//! `ipc::REPORT_EVERY` deliveries and whenever no more work is read.
//!
//! With `amqp_worker_consume` and `amqp_worker_replies` the worker also
//! consumes from the brokers itself (`kazoo_engine::worker_consume`): the
//! subscriptions any worker may take, and the queue of asynchronous
//! queries' replies, whose queries it takes from the shared table
//! (`kazoo_engine::async_queries`) to resume them; it also resumes, in
//! their error route, the queries past their deadline.
//!
//! The route is the first of the C module's five candidate names that the
//! configuration defines (`kazoo_engine::routes`); with `event_callback` set,
//! the KEMI function gets every delivery as `kazoo:consumer-event`.
use std::ffi::CString;
use std::time::Duration;

use kamailio::route::{self, KemiError, RouteOutcome};
use std::time::Instant;

use kamailio::tm::{self, ResumeRoute, TransactionId};
use kazoo_engine::async_queries;
use kazoo_engine::config::Config;
use kazoo_engine::counters::QueryOutcome;
use kazoo_engine::ipc::{self, Delivery, IpcError, Request, Resume, Work, WorkerLink};
use kazoo_engine::payload::{self, Annotated};
use kazoo_engine::routes;
use kazoo_engine::subscription::AckMode;
use kazoo_engine::worker_consume::{self, WorkerConsumeOptions, WorkerConsumer, WorkerDelivery};
use std::os::fd::AsFd;

use crate::params::config;
use crate::pvs::{EVENT_PAYLOAD, EVENT_ROUTING_KEY, QUERY_RESULT};
use crate::startup;

/// The worker's loop; never returns.
pub(crate) fn run(worker: u32, socket: &str) -> ! {
    crate::logger::install();
    // A large message (a 10 MB body) is freed after its route; without
    // this the process would keep its peak.
    kamailio::mem::return_memory_eagerly();
    if worker == 1 {
        if let Some(callback) = &config().params.event_callback {
            kamailio::guard::guarded("kazoo:mod-init", (), || kemi_mod_init(callback, socket));
        }
    }
    let mut consumer = own_consumer(worker);
    let mut backoff = Duration::from_millis(50);
    loop {
        let mut link = match WorkerLink::connect(socket, worker) {
            Ok(link) => {
                backoff = Duration::from_millis(50);
                link
            }
            Err(e) => {
                kamailio::process::refresh_config();
                kamailio::debug!("kazoo worker {worker}: {e}; retrying");
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_secs(2));
                continue;
            }
        };
        // The last delivery whose route ran and was not reported yet, and
        // how many such: reports are cumulative, sent every few deliveries
        // and before the worker waits for more.
        let mut unreported: (Option<u64>, usize) = (None, 0);
        // Deliveries of the worker's own connections taken in a row.
        let mut own_streak = 0;
        loop {
            expire_queries();
            // What the AMQP process sent first (resumes), then what this
            // worker's own broker connections brought; a link that has
            // something to read is looked at every few of those, so that a
            // resume does not wait behind a prefetch's worth of routes.
            let ipc_first =
                link.has_work() || (own_streak >= ipc::REPORT_EVERY && link.readable_now());
            if !ipc_first {
                if let Some(consumer) = consumer.as_mut() {
                    if let Some(delivery) = consumer.take() {
                        own_streak += 1;
                        // A reply to an asynchronous query goes first, once read.
                        if own_streak % ipc::REPORT_EVERY == 0 {
                            consumer.read_now();
                        }
                        kamailio::process::refresh_config();
                        // The route is guarded on its own (a panic there
                        // still acks, as a route that ran); this guards the
                        // rest.
                        kamailio::guard::guarded("kazoo consumed message", (), || {
                            consumed(consumer, delivery)
                        });
                        continue;
                    }
                }
            }
            own_streak = 0;
            if let (Some(last), _) = unreported {
                if !link.has_work() {
                    if let Err(e) = link.ack(last) {
                        kamailio::error!(
                            "kazoo worker {worker}: cannot report the routes it ran: {e}"
                        );
                        break;
                    }
                    unreported = (None, 0);
                }
            }
            let work = match consumer.as_mut() {
                Some(consumer) if !ipc_first => {
                    consumer.flush();
                    if let Err(e) = report_states(&mut link, consumer) {
                        kamailio::error!(
                            "kazoo worker {worker}: cannot report its subscriptions: {e}"
                        );
                        break;
                    }
                    if consumer.wait(link.as_fd(), wait_at_most(worker)) {
                        link.next(Duration::from_millis(10))
                    } else {
                        Ok(None)
                    }
                }
                _ if ipc_first => link.next(Duration::from_millis(10)),
                _ => link.next(IDLE_WAIT),
            };
            // Runtime cfg changes apply from the next route on.
            kamailio::process::refresh_config();
            match work {
                Ok(Some(Work::Deliver(delivery))) => {
                    let id = delivery.id;
                    kamailio::guard::guarded("kazoo consumer event", (), || handle(delivery));
                    #[cfg(feature = "test-hooks")]
                    if crate::test_hooks::take_break_link() {
                        kamailio::info!("kazoo worker {worker}: dropping the link (test hook)");
                        break;
                    }
                    unreported = (Some(id), unreported.1 + 1);
                    if unreported.1 >= ipc::REPORT_EVERY {
                        if let Err(e) = link.ack(id) {
                            kamailio::error!(
                                "kazoo worker {worker}: cannot report the routes it ran: {e}"
                            );
                            break;
                        }
                        unreported = (None, 0);
                    }
                }
                Ok(Some(Work::Resume(resume))) => {
                    kamailio::guard::guarded("kazoo asynchronous query", (), || {
                        resume_query(resume)
                    });
                }
                Ok(None) => {}
                Err(e) => {
                    kamailio::error!("kazoo worker {worker}: lost the AMQP process: {e}");
                    break;
                }
            }
        }
    }
}

/// Whether the consumer workers consume subscriptions themselves
/// (`amqp_worker_consume`): only when every worker knows the subscriptions
/// (recorded in `kazoo:mod-init` before the fork, not by a KEMI engine in
/// worker 1) and the primary zone's brokers are plain `amqp://`.
pub(crate) fn consume_subscriptions(config: &Config) -> bool {
    let p = &config.params;
    p.amqp_worker_consume
        && p.event_callback.is_none()
        && worker_consume::brokers_allow(&p.brokers, &p.amqp_primary_zone)
}

/// This worker's own consuming connections, when it consumes any
/// subscription itself or takes the replies of asynchronous queries.
fn own_consumer(worker: u32) -> Option<WorkerConsumer> {
    let config = config();
    let mut subscriptions: Vec<_> = if consume_subscriptions(config) {
        startup::subscriptions()
            .into_iter()
            .enumerate()
            .filter(|(_, sub)| worker_consume::consumed_in_workers(sub))
            .collect()
    } else {
        Vec::new()
    };
    if crate::direct::async_queries().is_some() {
        match worker_consume::async_replies(&config.node_hostname) {
            Ok(replies) => subscriptions.push((worker_consume::ASYNC_REPLIES, replies)),
            // Checked in mod_init (`direct::worker_replies`): cannot happen.
            Err(e) => kamailio::error!("kazoo worker {worker}: no reply queue: {e}"),
        }
    }
    if subscriptions.is_empty() {
        return None;
    }
    let p = &config.params;
    Some(WorkerConsumer::new(
        &p.brokers,
        subscriptions,
        WorkerConsumeOptions {
            primary_zone: p.amqp_primary_zone.clone(),
            connect_timeout: p.amqp_connect_timeout.duration(),
            prefetch: p.amqp_consumer_prefetch as u16,
            heartbeat: p.amqp_heartbeats.clamp(0, i32::from(u16::MAX)) as u16,
            connection_name: format!("{} consumer worker {worker}", config.node()),
            counters: crate::direct::counters(),
            per_subscription: crate::direct::subscription_counters(),
        },
    ))
}

/// Tells the AMQP process (for `kazoo.subscriptions`) which of the
/// subscriptions this worker consumes failed on a broker, or work again.
fn report_states(link: &mut WorkerLink, consumer: &mut WorkerConsumer) -> Result<(), IpcError> {
    consumer.send_reports(|report| {
        // Not a subscription of the script's: its failures are logged.
        if report.index == worker_consume::ASYNC_REPLIES {
            return Ok(());
        }
        link.tell(&Request::SubscriptionState {
            index: report.index as u32,
            broker_id: report.broker_id,
            failure: report.failure.clone(),
        })
    })
}

/// A delivery this worker consumed itself: annotated as the AMQP process
/// annotates what it consumes, acked when taken or after its route (as its
/// subscription says), then routed.
fn consumed(consumer: &mut WorkerConsumer, mut delivery: WorkerDelivery) {
    if delivery.subscription == worker_consume::ASYNC_REPLIES {
        return async_reply(consumer, delivery);
    }
    let Some(sub) = consumer.subscription(delivery.subscription) else {
        return;
    };
    let after_route = sub.ack_mode() == AckMode::AfterRoute;
    let (event_key, event_subkey) = (sub.event_key.clone(), sub.event_subkey.clone());
    let Some(annotated) = annotated(&delivery, "a message", " (rejected, not requeued)") else {
        consumer.reject(&delivery);
        return;
    };
    if !after_route {
        consumer.settle(&delivery);
    }
    let routed = Delivery {
        id: 0,
        // Moved, not copied: the ack needs only the delivery's tag.
        routing_key: Some(std::mem::take(&mut delivery.routing_key).into_bytes()),
        body: annotated.body,
        event_key,
        event_subkey,
    };
    kamailio::guard::guarded("kazoo consumer event", (), || handle(routed));
    if after_route {
        consumer.settle(&delivery);
    }
}

/// `delivery`'s payload annotated as the AMQP process annotates what it
/// consumes; `None` (logged, naming `what`, then `outcome`) when it is not
/// a JSON object.
fn annotated(delivery: &WorkerDelivery, what: &str, outcome: &str) -> Option<Annotated> {
    let received = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let zone = &config().params.amqp_primary_zone;
    payload::annotate_consumed(&delivery.body, zone, received, delivery.broker_id)
        .map_err(|e| {
            kamailio::error!(
                "dropping {what} from broker {} (routing key {:?}): {e}{outcome}",
                delivery.broker_id,
                delivery.routing_key
            )
        })
        .ok()
}

/// A reply on the queue of asynchronous queries' replies: resumes the query
/// waiting for it; one nobody waits for (late, duplicate, unknown
/// `Msg-ID`) runs the event routes, as the C module runs such replies.
fn async_reply(consumer: &mut WorkerConsumer, mut delivery: WorkerDelivery) {
    consumer.settle(&delivery);
    let Some(annotated) = annotated(&delivery, "a reply", "") else {
        return;
    };
    let waiting = match (crate::direct::async_queries(), annotated.msg_id.as_deref()) {
        (Some(queries), Some(msg_id)) => queries.take_reply(msg_id),
        _ => None,
    };
    let Some(query) = waiting else {
        let late = Delivery {
            id: 0,
            routing_key: Some(std::mem::take(&mut delivery.routing_key).into_bytes()),
            body: annotated.body,
            event_key: None,
            event_subkey: None,
        };
        return kamailio::guard::guarded("kazoo consumer event", (), || handle(late));
    };
    let counters = crate::direct::counters();
    counters.record_query(QueryOutcome::Answered);
    counters.record_async(true);
    resume_query(Resume {
        hash: query.hash,
        label: query.label,
        answered: true,
        route: query.ok_route,
        reply: Some(annotated.body),
    });
}

/// Resumes, in their error route, the asynchronous queries past their
/// deadline, when it is this worker's turn to look (one worker every
/// few milliseconds while queries wait).
fn expire_queries() {
    let Some(queries) = crate::direct::async_queries() else {
        return;
    };
    let now = async_queries::now_ms();
    if !queries.sweep_due(now) {
        return;
    }
    let counters = crate::direct::counters();
    for query in queries.take_expired(now) {
        kamailio::info!(
            "asynchronous query not answered (no reply within {} ms): resuming in \
             failure_route[{}]",
            query.timeout_ms,
            query.err_route
        );
        counters.record_query(QueryOutcome::TimedOut);
        counters.record_async(false);
        kamailio::guard::guarded("kazoo asynchronous query", (), || {
            resume_query(Resume {
                hash: query.hash,
                label: query.label,
                answered: false,
                route: query.err_route,
                reply: None,
            })
        });
    }
}

/// How long a worker that consumes itself may wait. While asynchronous
/// queries wait for their reply, worker 1 looks for expired ones every
/// [`async_queries::SWEEP_EVERY_MS`] and the others (who look whenever
/// they wake and it is due, so one busy with a long route is covered)
/// every [`SWEEP_BACKUP`]; while none waits, worker 1 wakes every
/// [`SWEEP_BACKUP`] to notice the first, the others every second. A
/// query's error route runs a few milliseconds after its deadline, or at
/// worst [`SWEEP_BACKUP`] after it (a query made while every worker
/// waits, or while worker 1 runs a long route).
fn wait_at_most(worker: u32) -> Duration {
    let waiting = match crate::direct::async_queries() {
        Some(queries) => queries.in_flight() > 0,
        None => return IDLE_WAIT,
    };
    match (worker == 1, waiting) {
        (true, true) => Duration::from_millis(async_queries::SWEEP_EVERY_MS),
        (true, false) | (false, true) => SWEEP_BACKUP,
        (false, false) => IDLE_WAIT,
    }
}

/// See [`wait_at_most`].
const SWEEP_BACKUP: Duration = Duration::from_millis(100);
/// The longest wait of a worker with nothing to look for.
const IDLE_WAIT: Duration = Duration::from_secs(1);

/// Resumes a transaction suspended by `kazoo_async_query`, with `$kzR` set
/// to the reply (or `$null`).
fn resume_query(resume: Resume) {
    QUERY_RESULT.set(resume.reply);
    let kind = if resume.answered {
        ResumeRoute::OnReply
    } else {
        ResumeRoute::Failure
    };
    let id = TransactionId {
        hash: resume.hash,
        label: resume.label,
    };
    if let Err(e) = tm::resume(id, kind, &resume.route) {
        kamailio::error!("kazoo_async_query: cannot resume the transaction: {e}");
    }
}

/// Runs the KEMI `kazoo:mod-init` here and reports what it declared and
/// published to the AMQP process, which waits for it before connecting.
fn kemi_mod_init(callback: &str, socket: &str) {
    startup::run_kemi_mod_init(callback);
    let report = Request::StartupDone {
        subscriptions: startup::subscription_descriptions(),
        publishes: startup::take_startup_publishes(),
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while let Err(e) = ipc::send_once(socket, &report, deadline) {
        if Instant::now() >= deadline {
            kamailio::error!("kazoo worker 1: cannot report kazoo:mod-init: {e}");
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Where a delivery goes.
enum Target {
    /// The `event_callback` KEMI function.
    Kemi(&'static str),
    /// An `event_route`.
    Route(CString),
}

fn handle(delivery: Delivery) {
    let Some(target) = target(&delivery) else {
        return;
    };
    EVENT_PAYLOAD.set(Some(delivery.body));
    EVENT_ROUTING_KEY.set(delivery.routing_key);
    match target {
        Target::Kemi(callback) => {
            if let Err(e) = route::run_kemi_event(callback.as_bytes(), b"kazoo:consumer-event") {
                let reason = match e {
                    KemiError::NoEngine => "no KEMI engine".to_string(),
                    KemiError::Failed(rc) => format!("rc {rc}"),
                };
                kamailio::error!("event_callback \"{callback}\" failed: {reason}");
            }
        }
        Target::Route(name) => {
            if route::run_event_route(&name) == RouteOutcome::Dropped {
                kamailio::debug!("{} dropped the event", name.to_string_lossy());
            }
        }
    }
    EVENT_PAYLOAD.set(None);
    EVENT_ROUTING_KEY.set(None);
}

/// The KEMI callback, or the first defined of the delivery's candidate
/// routes; `None` (logged) when there is none.
fn target(delivery: &Delivery) -> Option<Target> {
    let params = &config().params;
    if let Some(callback) = &params.event_callback {
        return Some(Target::Kemi(callback));
    }
    let names = match routes::candidates_for_text(
        &delivery.body,
        &params.amqp_consumer_event_key,
        &params.amqp_consumer_event_subkey,
        delivery.event_key.as_deref(),
        delivery.event_subkey.as_deref(),
    ) {
        Ok(names) => names,
        Err(e) => {
            kamailio::error!("dropping an event whose payload runs no route: {e}");
            return None;
        }
    };
    let defined =
        |name: &str| CString::new(name).is_ok_and(|name| route::event_route_exists(&name));
    match routes::first_defined(&names, defined).map(CString::new) {
        Some(Ok(name)) => Some(Target::Route(name)),
        // A configuration that consumes nothing defines no route for the
        // synthetic connection events: not an error then.
        _ if delivery.routing_key.is_none() => {
            kamailio::debug!("no event route for a connection event");
            None
        }
        _ => {
            kamailio::error!(
                "kazoo:consumer-event not found: no event route among {}",
                names.join(", ")
            );
            None
        }
    }
}
