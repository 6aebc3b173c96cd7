//! `modparam` setters and the configuration frozen at `mod_init`.
//!
//! Setters run in the main process while Kamailio parses its configuration;
//! `mod_init` validates the whole set once, and every process forked later
//! inherits the frozen [`Config`].
use std::sync::{Mutex, OnceLock};

use kamailio::params::ParamValue as HostValue;
use kazoo_engine::config::{Config, ParamError, ParamValue, Params};

/// Values collected while the configuration is parsed.
static COLLECTING: Mutex<Option<Params>> = Mutex::new(None);

/// The validated configuration (set by `mod_init`).
static CONFIG: OnceLock<Config> = OnceLock::new();

/// The setter behind every exported parameter.
pub fn set(name: &str, value: HostValue<'_>) -> Result<(), ParamError> {
    let value = match value {
        HostValue::Int(v) => ParamValue::Int(v),
        HostValue::Str(v) => ParamValue::Str(v),
    };
    let mut collecting = COLLECTING.lock().unwrap_or_else(|e| e.into_inner());
    collecting
        .get_or_insert_with(Params::default)
        .set(name, value)
}

/// The configuration; a script function can only run after `mod_init`.
pub fn config() -> &'static Config {
    CONFIG
        .get()
        .expect("kazoo configuration used before mod_init")
}

/// `mod_init`: validates the parameters and prepares what script execution
/// needs.
pub fn mod_init() -> Result<(), String> {
    let params = COLLECTING
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take()
        .unwrap_or_default();
    let config = params.finish().map_err(|e| e.to_string())?;
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
    if !kamailio::route::init_faked_msg() {
        return Err("cannot initialise the faked message for event routes".into());
    }
    if let Err(e) = kamailio::tm::bind() {
        kamailio::warn!("{e}: kazoo_async_query and kazoo_query_async will return -1");
    }
    crate::stats::register(&config)?;
    if !kamailio::process::register(crate::processes::process_count(&config)) {
        return Err("cannot register the kazoo processes".into());
    }
    // Before any fork, so every process (and `kazoo:mod-init`) has it.
    crate::events::NODE_NAME.set(Some(config.node().into_bytes()));
    CONFIG
        .set(config)
        .map_err(|_| "mod_init ran twice".to_string())
}
