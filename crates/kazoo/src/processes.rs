//! The module's own processes and how Kamailio's processes reach them.
//!
//! - In `child_init(PROC_INIT)` (main process, before any fork) the IPC
//!   socket is bound, so every process inherits its name and the AMQP
//!   process inherits the listening socket.
//! - In `child_init(PROC_MAIN)` the AMQP process and the consumer workers
//!   are forked (see `docs/design.md`).
//! - Every process talks to the AMQP process through one lazily connected
//!   [`Requester`], kept for the life of the process.
use std::os::unix::net::UnixListener;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use kamailio::process::{self, ProcessKind};
use kazoo_engine::broker::{BrokerOptions, TlsOptions};
use kazoo_engine::config::Config;
use kazoo_engine::ipc::{self, Requester};
use kazoo_engine::service::{self, ServiceConfig};

use crate::params::config;

/// The IPC socket name of this Kamailio instance.
static SOCKET_NAME: OnceLock<String> = OnceLock::new();

/// The listening socket, until the AMQP process takes it.
static LISTENER: Mutex<Option<UnixListener>> = Mutex::new(None);

/// This process's connection to the AMQP process.
static REQUESTER: Mutex<Option<Requester>> = Mutex::new(None);

/// How many processes the module forks (for `register_procs` in mod_init).
pub fn process_count(config: &Config) -> u32 {
    1 + config.params.amqp_consumer_workers as u32
}

/// Binds the IPC socket (main process, before the fork of any process).
pub fn bind() -> Result<(), String> {
    let (name, listener) =
        ipc::bind(std::process::id()).map_err(|e| format!("cannot bind the IPC socket: {e}"))?;
    *LISTENER.lock().unwrap_or_else(|e| e.into_inner()) = Some(listener);
    SOCKET_NAME
        .set(name)
        .map_err(|_| "the IPC socket was bound twice".to_string())
}

/// Runs `f` with this process's requester.
pub fn with_requester<R>(f: impl FnOnce(&mut Requester) -> R) -> Result<R, String> {
    let name = SOCKET_NAME
        .get()
        .ok_or("the kazoo processes are not started (kazoo:mod-init or kamailio -c?)")?;
    let mut slot = REQUESTER.lock().unwrap_or_else(|e| e.into_inner());
    Ok(f(slot.get_or_insert_with(|| Requester::new(name))))
}

/// Forks the AMQP process and the consumer workers (child_init(PROC_MAIN)).
pub fn fork_all() -> Result<(), String> {
    let config = config();
    let pid = process::fork(ProcessKind::IoOnly, "kazoo AMQP", || {
        run_amqp_process(config)
    })?;
    kamailio::info!("kazoo AMQP process started (pid {pid})");
    for worker in 1..=config.params.amqp_consumer_workers as u32 {
        process::fork(
            ProcessKind::ScriptWorker,
            &format!("kazoo worker {worker}"),
            || crate::worker::run(worker, socket_name()),
        )?;
    }
    Ok(())
}

fn socket_name() -> &'static str {
    SOCKET_NAME.get().map(String::as_str).unwrap_or_default()
}

fn run_amqp_process(config: &'static Config) -> ! {
    let listener = LISTENER.lock().unwrap_or_else(|e| e.into_inner()).take();
    let Some(listener) = listener else {
        kamailio::crit!("kazoo AMQP process: the IPC socket is missing");
        process::exit(1);
    };
    let p = &config.params;
    let service_config = ServiceConfig {
        brokers: p.brokers.clone(),
        subscriptions: crate::events::subscriptions(),
        options: BrokerOptions {
            node_hostname: config.node_hostname.clone(),
            primary_zone: p.amqp_primary_zone.clone(),
            reply_queues: p.amqp_max_channels as u32,
            consumer_connections: p.amqp_consumer_processes as u32,
            prefetch: p.amqp_consumer_prefetch as u16,
            heartbeat_secs: p.amqp_heartbeats.min(u16::MAX as i32) as u16,
            connect_timeout: p.amqp_connect_timeout.duration(),
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
        startup_publishes: crate::amqp::take_startup_publishes(),
        await_startup: p
            .event_callback
            .is_some()
            .then_some(Duration::from_secs(30)),
        on_tick,
    };
    crate::logger::install();
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
}
