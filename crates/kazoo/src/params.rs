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
pub(crate) fn set(name: &str, value: HostValue<'_>) -> Result<(), ParamError> {
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
pub(crate) fn config() -> &'static Config {
    CONFIG
        .get()
        .expect("kazoo configuration used before mod_init")
}

/// The values collected so far (taken once, by `mod_init`).
pub(crate) fn take_collected() -> Params {
    COLLECTING
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take()
        .unwrap_or_default()
}

/// Freezes the validated configuration, before any fork.
pub(crate) fn freeze(config: Config) -> Result<(), String> {
    CONFIG
        .set(config)
        .map_err(|_| "mod_init ran twice".to_string())
}
