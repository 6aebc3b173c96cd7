//! The module's statistics (`kamcmd stats.get_statistics kazoo:`, and
//! Prometheus through `xhttp_prom`): registered in `mod_init`, written by
//! the AMQP process, which owns what they count, on every tick of its
//! runtime (`ServiceConfig::on_tick`).
//!
//! Totals are added as the difference since the previous tick, so that
//! `stats.reset_statistics` resets them; gauges (connection states, depths)
//! are the AMQP process's current values and are not reset.
use std::ffi::{CStr, CString};
use std::sync::{Mutex, OnceLock};

use kamailio::stats::{Counter, Reset};
use kazoo_engine::config::Config;
use kazoo_engine::service::Stats;

const GROUP: &CStr = c"kazoo";

/// How to read a total from the service's [`Stats`].
type Read = fn(&Stats) -> u64;

/// A total: its name, its description and how to read it.
type Total = (&'static CStr, &'static CStr, Read);

const TOTALS: [Total; 11] = [
    (c"published", c"Publishes confirmed by the broker", |s| {
        s.published
    }),
    (
        c"publish_failed",
        c"Publishes that failed (refused, not confirmed, no broker)",
        |s| s.publish_failed,
    ),
    (c"query_answered", c"kazoo_query calls answered", |s| {
        s.query_answered
    }),
    (
        c"query_timed_out",
        c"kazoo_query calls without a reply in time",
        |s| s.query_timed_out,
    ),
    (
        c"query_failed",
        c"kazoo_query calls that could not be published",
        |s| s.query_failed,
    ),
    (
        c"async_query_answered",
        c"kazoo_async_query resumed with a reply",
        |s| s.async_answered,
    ),
    (
        c"async_query_not_answered",
        c"kazoo_async_query resumed without a reply",
        |s| s.async_not_answered,
    ),
    (
        c"consumed",
        c"Consumed messages handed to the event routes",
        |s| s.delivered,
    ),
    (
        c"consumed_dropped",
        c"Consumed messages dropped as unreadable",
        |s| s.dropped,
    ),
    (
        c"unmatched_replies",
        c"Replies nobody waited for (run as events)",
        |s| s.unmatched_replies,
    ),
    (
        c"requeued",
        c"Deliveries returned to the broker when their worker's link broke",
        |s| s.requeued,
    ),
];

/// The registered counters.
struct Registered {
    totals: Vec<(Counter, Read)>,
    query_pending: Counter,
    worker_queued: Counter,
    /// Per broker id: its publisher connection up (1/0), its consuming
    /// connections up.
    brokers: Vec<(u32, Counter, Counter)>,
}

static REGISTERED: OnceLock<Registered> = OnceLock::new();

/// The totals written at the previous tick (AMQP process only).
static LAST: Mutex<Option<Stats>> = Mutex::new(None);

/// Registers the statistics (in `mod_init`).
pub fn register(config: &Config) -> Result<(), String> {
    let totals = TOTALS
        .iter()
        .map(|(name, doc, read)| {
            Counter::register(GROUP, name, doc, Reset::Allowed).map(|c| (c, *read))
        })
        .collect::<Result<_, _>>()?;
    let gauge =
        |name: &'static CStr, doc: &'static CStr| Counter::register(GROUP, name, doc, Reset::Never);
    let mut brokers = Vec::new();
    for broker in &config.params.brokers {
        // Names live as long as the counters: for the life of the process.
        let name = |what: &str| -> &'static CStr {
            Box::leak(
                CString::new(format!("broker_{}_{what}", broker.id))
                    .unwrap_or_default()
                    .into_boxed_c_str(),
            )
        };
        brokers.push((
            broker.id,
            gauge(
                name("publisher_up"),
                c"1 while the broker's publisher connection is up",
            )?,
            gauge(
                name("consumers_up"),
                c"The broker's consuming connections that are up",
            )?,
        ));
    }
    let registered = Registered {
        totals,
        query_pending: gauge(
            c"query_pending",
            c"kazoo_query calls waiting for their reply",
        )?,
        worker_queued: gauge(
            c"worker_queued",
            c"Deliveries waiting for a consumer worker that is not connected",
        )?,
        brokers,
    };
    REGISTERED
        .set(registered)
        .map_err(|_| "the statistics were registered twice".to_string())
}

/// Writes the AMQP process's part of the statistics (every tick).
pub fn update(stats: &Stats) {
    let Some(registered) = REGISTERED.get() else {
        return;
    };
    let mut last = LAST.lock().unwrap_or_else(|e| e.into_inner());
    let previous = last.get_or_insert_with(Stats::default);
    for (counter, read) in &registered.totals {
        let delta = read(stats).saturating_sub(read(previous));
        if delta > 0 {
            counter.add(delta as i64);
        }
    }
    registered.query_pending.set_own(stats.query_pending as i64);
    registered.worker_queued.set_own(stats.worker_queued as i64);
    for (id, publisher_up, consumers_up) in &registered.brokers {
        let broker = stats.brokers.iter().find(|b| b.id == *id);
        let up = |role: &dyn Fn(&str) -> bool| {
            broker.map_or(0, |b| {
                b.connections
                    .iter()
                    .filter(|(r, up)| **up && role(r))
                    .count()
            })
        };
        publisher_up.set_own(up(&|r| r == "publisher") as i64);
        consumers_up.set_own(up(&|r| r.starts_with("consumer")) as i64);
    }
    *previous = stats.clone();
}
