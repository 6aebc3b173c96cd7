//! The module's life in Kamailio, in start-up order (`mod_register`, which
//! registers the transformations and KEMI functions, is `kamailio::module!`'s):
//! `mod_init` (the configuration
//! frozen, what script execution needs bound), `child_init` (the
//! `kazoo:mod-init` route and the IPC socket in the main process before any
//! fork; then the AMQP process and the consumer workers forked, by this file
//! only: see `docs/design.md`), `destroy`.
use std::os::unix::net::UnixListener;
use std::sync::Mutex;

use kamailio::process::{self, ProcessKind};
use kazoo_engine::config::Config;
use kazoo_engine::ipc;

use crate::params::{self, config};
use crate::{amqp_process, direct, ipc_client, pvs, startup, stats, worker};

/// The listening IPC socket, from `child_init(PROC_INIT)` until the AMQP
/// process is forked with it.
static LISTENER: Mutex<Option<UnixListener>> = Mutex::new(None);

/// `mod_init`: validates the parameters and prepares what script execution
/// needs.
pub(crate) fn mod_init() -> Result<(), String> {
    let config = params::take_collected()
        .finish()
        .map_err(|e| e.to_string())?;
    for name in &config.params.ignored {
        kamailio::info!("modparam \"{name}\" is accepted for compatibility and has no effect");
    }
    match (&config.params.db_url, config.params.pua_mode) {
        (Some(url), 1) => kamailio::db::bind(url)?,
        (None, 1) => kamailio::warn!(
            "pua_mode is 1 but db_url is not set: the kazoo_pua_* functions will return -1"
        ),
        _ => {}
    }
    if config.params.event_callback.is_some() && !kamailio::route::kemi_engine_present() {
        kamailio::warn!(
            "modparam \"event_callback\" is set but no KEMI engine is loaded (cfgengine): \
             kazoo events will not be delivered"
        );
    }
    kamailio::route::init_faked_msg()?;
    if let Err(e) = kamailio::tm::bind() {
        kamailio::warn!("{e}: kazoo_async_query and kazoo_query_async will return -1");
    }
    stats::register(&config)?;
    direct::init_shared(&config)?;
    kamailio::process::register(process_count(&config))?;
    // Before any fork, so every process (and `kazoo:mod-init`) has it.
    pvs::NODE_NAME.set(Some(config.node().into_bytes()));
    params::freeze(config)
}

/// `child_init`: runs `kazoo:mod-init` once and binds the IPC socket in the
/// main process before the fork of the SIP workers; forks the module's
/// processes once Kamailio's own are running.
pub(crate) fn child_init(rank: i32) -> Result<(), String> {
    #[cfg(feature = "test-hooks")]
    crate::test_hooks::child_init(rank)?;
    if rank == kamailio::sys::PROC_INIT {
        startup::run_mod_init();
        // kazoo:mod-init may have written presence: its connection must not
        // be inherited by the processes forked next.
        kamailio::db::close_connection();
        kamailio::info!(
            "{} subscription(s) recorded at start-up",
            startup::subscription_count()
        );
        bind()?;
    } else if rank == kamailio::sys::PROC_MAIN {
        fork_all()?;
    }
    Ok(())
}

/// How many processes the module forks (for `register_procs` in mod_init).
pub(crate) fn process_count(config: &Config) -> u32 {
    1 + config.params.amqp_consumer_workers as u32
}

/// Binds the IPC socket (main process, before the fork of any process).
pub(crate) fn bind() -> Result<(), String> {
    let (name, listener) =
        ipc::bind(std::process::id()).map_err(|e| format!("cannot bind the IPC socket: {e}"))?;
    *LISTENER.lock().unwrap_or_else(|e| e.into_inner()) = Some(listener);
    ipc_client::set_socket_name(name)
}

/// Forks the AMQP process and the consumer workers (child_init(PROC_MAIN)).
pub(crate) fn fork_all() -> Result<(), String> {
    let config = config();
    let listener = LISTENER.lock().unwrap_or_else(|e| e.into_inner()).take();
    let listener = listener.ok_or("the IPC socket is not bound")?;
    let pid = process::fork(ProcessKind::IoOnly, "kazoo AMQP", || {
        amqp_process::run(config, listener)
    })?;
    kamailio::info!("kazoo AMQP process started (pid {pid})");
    for worker in 1..=config.params.amqp_consumer_workers as u32 {
        process::fork(
            ProcessKind::ScriptWorker,
            &format!("kazoo worker {worker}"),
            || worker::run(worker, ipc_client::socket_name()),
        )?;
    }
    Ok(())
}

/// Nothing to release: the processes end with Kamailio.
pub(crate) fn destroy() {}
