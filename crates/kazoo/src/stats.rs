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

const TOTALS: [Total; 21] = [
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
        |s| s.delivered + s.consumed_by_workers,
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
        c"publish_failed_no_broker",
        c"Publishes that failed: no broker connected (or no such broker)",
        |s| s.publish_failed_no_broker,
    ),
    (
        c"publish_failed_refused",
        c"Publishes the broker refused (nack, channel closed, e.g. no exchange)",
        |s| s.publish_failed_refused,
    ),
    (
        c"publish_failed_timeout",
        c"Publishes not confirmed within amqp_publish_timeout",
        |s| s.publish_failed_timeout,
    ),
    (
        c"publish_failed_returned",
        c"Mandatory publishes the broker returned (no queue took them)",
        |s| s.publish_failed_returned,
    ),
    (
        c"publish_failed_invalid",
        c"Publishes that could not be sent (exchange, routing key or header too long)",
        |s| s.publish_failed_invalid,
    ),
    (c"acked", c"Deliveries acknowledged to the broker", |s| {
        s.acked
    }),
    (
        c"rejected",
        c"Deliveries rejected (dead-lettered) as unreadable (routing key)",
        |s| s.rejected,
    ),
    (
        c"redelivered",
        c"Deliveries the broker marked as redelivered",
        |s| s.redelivered,
    ),
    (
        c"requeued",
        c"Deliveries returned to the broker (worker link broke or worker queue full)",
        |s| s.requeued,
    ),
    (
        c"consumed_lost",
        c"Deliveries acked on handover whose worker's link broke before the route reported",
        |s| s.lost_with_worker,
    ),
    (
        c"ipc_refused",
        c"IPC connections refused (not a process of this Kamailio)",
        |s| s.ipc_refused,
    ),
];

/// A broker's statistics.
struct BrokerCounters {
    id: u32,
    /// 1 while its publisher connection is up.
    publisher_up: Counter,
    /// Its consuming connections up.
    consumers_up: Counter,
    /// Its connections that opened again after being lost (a total).
    reconnects: Counter,
}

/// The registered counters.
struct Registered {
    totals: Vec<(Counter, Read)>,
    query_pending: Counter,
    worker_queued: Counter,
    brokers: Vec<BrokerCounters>,
}

static REGISTERED: OnceLock<Registered> = OnceLock::new();

/// The totals written at the previous tick (AMQP process only).
static LAST: Mutex<Option<Stats>> = Mutex::new(None);

/// Registers the statistics (in `mod_init`).
pub(crate) fn register(config: &Config) -> Result<(), String> {
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
        brokers.push(BrokerCounters {
            id: broker.id,
            publisher_up: gauge(
                name("publisher_up"),
                c"1 while the broker's publisher connection is up",
            )?,
            consumers_up: gauge(
                name("consumers_up"),
                c"The broker's consuming connections that are up",
            )?,
            reconnects: Counter::register(
                GROUP,
                name("reconnects"),
                c"The broker's connections that opened again after being lost",
                Reset::Allowed,
            )?,
        });
    }
    let registered = Registered {
        totals,
        query_pending: gauge(
            c"query_pending",
            c"kazoo_query calls waiting for their reply",
        )?,
        worker_queued: gauge(
            c"worker_queued",
            c"Deliveries waiting to be written to their consumer worker",
        )?,
        brokers,
    };
    REGISTERED
        .set(registered)
        .map_err(|_| "the statistics were registered twice".to_string())
}

/// Writes the AMQP process's part of the statistics (every tick).
pub(crate) fn update(stats: &Stats) {
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
    for counters in &registered.brokers {
        let broker = stats.brokers.iter().find(|b| b.id == counters.id);
        let up = |role: &dyn Fn(&str) -> bool| {
            broker.map_or(0, |b| {
                b.connections
                    .iter()
                    .filter(|(r, up)| **up && role(r))
                    .count()
            })
        };
        counters
            .publisher_up
            .set_own(up(&|r| r == "publisher") as i64);
        counters
            .consumers_up
            .set_own(up(&|r| r.starts_with("consumer")) as i64);
        let reconnects = |s: &Stats| {
            s.brokers
                .iter()
                .find(|b| b.id == counters.id)
                .map_or(0, |b| b.reconnects)
        };
        let delta = reconnects(stats).saturating_sub(reconnects(previous));
        if delta > 0 {
            counters.reconnects.add(delta as i64);
        }
    }
    *previous = stats.clone();
}
