//! A consumer worker process: runs the event route for each delivery the
//! AMQP process hands it, then tells it which routes ran (the broker ack,
//! when the subscription waits for it, follows the route, not the receipt;
//! and the AMQP process hands a worker only a few deliveries ahead of its
//! reports, so a resume never waits behind a backlog); and resumes the
//! transactions of asynchronous queries. Reports are cumulative, every
//! `ipc::REPORT_EVERY` deliveries and whenever no more work is waiting.
//!
//! The route is the first of the C module's five candidate names that the
//! configuration defines (`kazoo_engine::routes`); with `event_callback` set,
//! the KEMI function gets every delivery as `kazoo:consumer-event`.
use std::ffi::CString;
use std::time::Duration;

use kamailio::route::{self, KemiError, RouteOutcome};
use std::time::Instant;

use kamailio::tm::{self, ResumeRoute, TransactionId};
use kazoo_engine::ipc::{self, Delivery, Request, Resume, Work, WorkerLink};
use kazoo_engine::routes;

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
        // and whenever no more work is waiting.
        let mut unreported: (Option<u64>, usize) = (None, 0);
        loop {
            let work = match unreported {
                // Anything already written to the link first, briefly.
                (Some(last), _) => match link.next(Duration::from_millis(1)) {
                    Ok(None) => {
                        if let Err(e) = link.ack(last) {
                            kamailio::error!(
                                "kazoo worker {worker}: cannot report the routes it ran: {e}"
                            );
                            break;
                        }
                        unreported = (None, 0);
                        continue;
                    }
                    other => other,
                },
                (None, _) => link.next(Duration::from_secs(1)),
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
