//! The AMQP process: the engine's service (`kazoo_engine::service`) on the
//! module's configuration, with Kamailio's runtime configuration and the
//! statistics refreshed on its tick.
use std::os::unix::net::UnixListener;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use kamailio::process;
use kazoo_engine::broker::{BrokerOptions, TlsOptions};
use kazoo_engine::config::Config;
use kazoo_engine::service::{self, ServiceConfig};

/// The AMQP process's body: serves `listener` until the process ends.
pub(crate) fn run(config: &'static Config, listener: UnixListener) -> ! {
    let p = &config.params;
    let service_config = ServiceConfig {
        brokers: p.brokers.clone(),
        subscriptions: crate::startup::subscriptions(),
        options: BrokerOptions {
            node_hostname: config.node_hostname.clone(),
            primary_zone: p.amqp_primary_zone.clone(),
            reply_queues: p.amqp_max_channels as u32,
            consumer_connections: p.amqp_consumer_processes as u32,
            prefetch: p.amqp_consumer_prefetch as u16,
            heartbeat_secs: p.amqp_heartbeats.min(u16::MAX as i32) as u16,
            connect_timeout: p.amqp_connect_timeout.duration(),
            native_client: p.amqp_native_client,
            workers_consume: crate::worker::consume_subscriptions(config),
            tls: TlsOptions {
                ca_cert: p.amqps_ca_cert.clone().map(Into::into),
                cert: p.amqps_cert.clone().map(Into::into),
                key: p.amqps_key.clone().map(Into::into),
                verify_peer: p.amqps_verify_peer,
                verify_hostname: p.amqps_verify_hostname,
            },
        },
        workers: p.amqp_consumer_workers as u32,
        event_key: p.amqp_consumer_event_key.clone(),
        event_subkey: p.amqp_consumer_event_subkey.clone(),
        publish_timeout: Duration::from_millis(p.amqp_publish_timeout as u64),
        startup_publishes: crate::startup::take_startup_publishes(),
        script_counters: crate::direct::counters(),
        subscription_counters: crate::direct::subscription_counters(),
        async_queries: crate::direct::async_queries(),
        await_startup: p
            .event_callback
            .is_some()
            .then_some(Duration::from_secs(30)),
        on_tick,
    };
    crate::logger::install();
    kamailio::mem::return_memory_eagerly();
    let error = match service::run(listener, service_config) {
        Err(error) => error,
        Ok(never) => match never {},
    };
    kamailio::crit!("kazoo AMQP process cannot run: {error}");
    process::exit(1);
}

/// The AMQP process's tick: Kamailio's runtime configuration, then the
/// statistics.
fn on_tick(stats: &service::Stats) {
    process::refresh_config();
    crate::stats::update(stats);
    // Every 10 s: what a burst (a flood, large messages, a broker outage)
    // took and freed goes back to the system.
    static TICKS: AtomicU32 = AtomicU32::new(0);
    if TICKS
        .fetch_add(1, Ordering::Relaxed)
        .is_multiple_of(TRIM_EVERY_TICKS)
    {
        kamailio::mem::trim();
    }
}

/// How many ticks (of `service::TICK`, 100 ms) between two trims.
const TRIM_EVERY_TICKS: u32 = 100;
