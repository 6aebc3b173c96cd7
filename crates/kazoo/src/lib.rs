//! Kamailio's `kazoo` module as a drop-in `kazoo.so`: the exported tables
//! (functions, parameters, pseudo-variables, the `kz` transformations, KEMI)
//! and the start-up hooks. Script concerns live one per file:
//! - [`params`]: `modparam` setters and the frozen configuration;
//! - [`json`]: `kazoo_json`, `kazoo_json_keys`, `kazoo_encode`;
//! - [`trans`]: `{kz.json,...}`, `{kz.json.count,...}`, `{kz.encode}`;
//! - [`events`]: `event_route[kazoo:mod-init]`, the KEMI event callback,
//!   `kazoo_subscribe` and the `$kzR` / `$kzE` / `$kzRK` / `$knode` values;
//! - [`amqp`]: `kazoo_publish`, `kazoo_query`, `kazoo_async_query`;
//! - [`pua`]: the `kazoo_pua_*` presence writes;
//! - [`processes`]: the module's own processes and the IPC socket;
//! - [`worker`]: a consumer worker's loop (event routes for deliveries);
//! - [`logger`]: the engine's `log` records into Kamailio's logger;
//! - [`rpc_commands`]: the `kazoo.status`, `kazoo.brokers` and
//!   `kazoo.subscriptions` RPC commands;
//! - [`stats`]: the statistics (`kamcmd stats.get_statistics kazoo:`);
//! - `test_hooks` (feature `test-hooks`, never in release builds): script
//!   functions that exist only to test the module's safety nets.
#![deny(unsafe_code)]

mod amqp;
mod amqp_process;
mod ipc_client;
mod json;
mod lifecycle;
mod logger;
mod params;
mod pua;
mod pvs;
mod rpc_commands;
mod startup;
mod stats;
mod subscribe;
#[cfg(feature = "test-hooks")]
mod test_hooks;
mod trans;
mod worker;

use kamailio::export::{CMD_END, KEMI_END, PARAM_END, PV_END, RPC_END, TRANS_END};
use kamailio::sys::{
    cmd_export_t, param_export_t, pv_export_t, rpc_export_t, sr_kemi_t, tr_export_t,
};
use kamailio::{cmd, kemi, param, pv, trans_class};

/// The script functions, with room for test-only ones in front.
macro_rules! command_table {
    ($($extra:expr,)*) => {
        [
            $($extra,)*
            cmd!("kazoo_publish", spve(exchange, routing_key, payload) => amqp::publish),
            cmd!("kazoo_publish", spve(exchange, routing_key, payload, headers) => amqp::publish),
            cmd!("kazoo_query", spve(exchange, routing_key, payload) => amqp::query),
            cmd!("kazoo_query", spve(exchange, routing_key, payload, target) => amqp::query),
            cmd!("kazoo_query", spve(exchange, routing_key, payload, target, headers) => amqp::query),
            cmd!("kazoo_async_query", spve(exchange, routing_key, payload, ok_route, err_route) => amqp::async_query),
            cmd!("kazoo_async_query", spve(exchange, routing_key, payload, ok_route, err_route, flags) => amqp::async_query),
            cmd!("kazoo_query_async", spve(exchange, routing_key, payload, ok_route, err_route) => amqp::async_query),
            cmd!("kazoo_query_async", spve(exchange, routing_key, payload, ok_route, err_route, flags) => amqp::async_query),
            cmd!("kazoo_subscribe", spve(description) => subscribe::subscribe_json),
            cmd!("kazoo_subscribe", spve(exchange, exchange_type, queue, routing_key) => subscribe::subscribe_simple),
            cmd!("kazoo_json", spve_pv<3>(json, path; target) => json::kazoo_json),
            cmd!("kazoo_json_keys", spve_pv<3>(json, path; target) => json::kazoo_json_keys),
            cmd!("kazoo_encode", spve_pv<2>(input; target) => json::kazoo_encode),
            cmd!("kazoo_pua_publish", raw(payload) => pua::publish_any),
            cmd!("kazoo_pua_publish_mwi", raw(payload) => pua::publish_mwi),
            cmd!("kazoo_pua_publish_presence", raw(payload) => pua::publish_presence),
            cmd!("kazoo_pua_publish_dialoginfo", raw(payload) => pua::publish_dialoginfo),
CMD_END,
        ]
    };
}

#[cfg(not(feature = "test-hooks"))]
static CMDS: [cmd_export_t; 19] = command_table!();

#[cfg(feature = "test-hooks")]
static CMDS: [cmd_export_t; 21] = command_table!(
    cmd!("kazoo_test_panic", spve(reason) => test_hooks::panic),
    cmd!("kazoo_test_break_link", spve(reason) => test_hooks::break_link),
);

static PARAMS: [param_export_t; 48] = [
    param!("node_hostname", Str, params::set),
    param!("amqp_connection", Str, params::set),
    param!("amqp_max_channels", Int, params::set),
    param!("amqp_consumer_processes", Int, params::set),
    param!("amqp_consumer_workers", Int, params::set),
    param!("amqp_consumer_event_key", Str, params::set),
    param!("amqp_consumer_event_subkey", Str, params::set),
    param!("amqp_query_timeout_sec", Int, params::set),
    param!("amqp_query_timeout_micro", Int, params::set),
    param!("amqp_query_timeout_avp", Str, params::set),
    param!("amqp_result_avp", Str, params::set),
    param!("amqp_heartbeats", Int, params::set),
    param!("amqp_primary_zone", Str, params::set),
    param!("amqp_command_hashtable_size", Int, params::set),
    param!("amqp_connect_timeout_sec", Int, params::set),
    param!("amqp_connect_timeout_micro", Int, params::set),
    param!("amqps_ca_cert", Str, params::set),
    param!("amqps_cert", Str, params::set),
    param!("amqps_key", Str, params::set),
    param!("amqps_verify_peer", Int, params::set),
    param!("amqps_verify_hostname", Int, params::set),
    param!("app_name", Str, params::set),
    param!("json_escape_char", Str, params::set),
    param!("event_callback", Str, params::set),
    param!("db_url", Str, params::set),
    param!("presentity_table", Str, params::set),
    param!("pua_mode", Int, params::set),
    param!("pua_include_entity", Int, params::set),
    param!("pua_lock_type", Int, params::set),
    param!("presence_use_full_entity", Int, params::set),
    param!("amqp_consumer_ack_timeout_sec", Int, params::set),
    param!("amqp_consumer_ack_timeout_micro", Int, params::set),
    param!("amqp_interprocess_timeout_sec", Int, params::set),
    param!("amqp_interprocess_timeout_micro", Int, params::set),
    param!("amqp_waitframe_timeout_sec", Int, params::set),
    param!("amqp_waitframe_timeout_micro", Int, params::set),
    param!("amqp_internal_loop_count", Int, params::set),
    param!("amqp_consumer_loop_count", Int, params::set),
    param!("amqp_consumer_ack_loop_count", Int, params::set),
    param!("single_consumer_on_reconnect", Int, params::set),
    param!("consume_messages_on_reconnect", Int, params::set),
    param!("use_federated_exchange", Int, params::set),
    param!("federated_exchange", Str, params::set),
    param!("amqp_timer_process_interval", Int, params::set),
    param!("amqp_timmer_process_interval", Int, params::set),
    param!("amqp_publish_timeout", Int, params::set),
    param!("amqp_consumer_prefetch", Int, params::set),
    PARAM_END,
];

static PVS: [pv_export_t; 5] = [
    pv!("kzR", pvs::QUERY_RESULT),
    pv!("kzE", pvs::EVENT_PAYLOAD),
    pv!("kzRK", pvs::EVENT_ROUTING_KEY),
    pv!("knode", pvs::NODE_NAME),
    PV_END,
];

static RPCS: [rpc_export_t; 4] = [
    kamailio::rpc!(
        "kazoo.status",
        "Broker connections and counters of the kazoo module, as JSON.",
        rpc_commands::status
    ),
    kamailio::rpc!(
        "kazoo.brokers",
        "Each broker: zone, primary, connection states and since when, last error (JSON).",
        rpc_commands::brokers
    ),
    kamailio::rpc!(
        "kazoo.subscriptions",
        "Each subscription: queue, bindings, messages consumed, consumers or failure per broker (JSON).",
        rpc_commands::subscriptions
    ),
    RPC_END,
];

static TRANSFORMATIONS: [tr_export_t; 2] =
    [trans_class!("kz", trans::KzTransformations), TRANS_END];

/// The KEMI functions (`KSR.kazoo.*`, see `docs/kazoo.md` section 8.1):
/// KEMI has no overloading, so the native forms with more arguments are
/// functions of their own.
static KEMI: [sr_kemi_t; 17] = [
    kemi!("kazoo", "kazoo_publish", str(exchange, routing_key, payload) => amqp::publish_kemi),
    kemi!("kazoo", "kazoo_publish_hdrs", str(exchange, routing_key, payload, headers) => amqp::publish_hdrs_kemi),
    kemi!("kazoo", "kazoo_query", str(exchange, routing_key, payload) => amqp::query_kemi),
    kemi!("kazoo", "kazoo_query_var", str(exchange, routing_key, payload, target) => amqp::query_var_kemi),
    kemi!("kazoo", "kazoo_query_hdrs", str(exchange, routing_key, payload, target, headers) => amqp::query_hdrs_kemi),
    kemi!("kazoo", "kazoo_async_query", str(exchange, routing_key, payload, ok_function, err_function) => amqp::async_query_kemi),
    kemi!("kazoo", "kazoo_query_async", str(exchange, routing_key, payload, ok_function, err_function) => amqp::async_query_kemi),
    kemi!("kazoo", "kazoo_subscribe", str(description) => subscribe::subscribe_kemi),
    kemi!("kazoo", "kazoo_subscribe_simple", str(exchange, exchange_type, queue, routing_key) => subscribe::subscribe_simple_kemi),
    kemi!("kazoo", "kazoo_json", str(json, path, target) => json::kazoo_json_kemi),
    kemi!("kazoo", "kazoo_json_keys", str(json, path, target) => json::kazoo_json_keys_kemi),
    kemi!("kazoo", "kazoo_encode", str(input, target) => json::kazoo_encode_kemi),
    kemi!("kazoo", "kazoo_pua_publish", str(payload) => pua::publish_any_kemi),
    kemi!("kazoo", "kazoo_pua_publish_mwi", str(payload) => pua::publish_mwi_kemi),
    kemi!("kazoo", "kazoo_pua_publish_presence", str(payload) => pua::publish_presence_kemi),
    kemi!("kazoo", "kazoo_pua_publish_dialoginfo", str(payload) => pua::publish_dialoginfo_kemi),
    KEMI_END,
];

kamailio::module! {
    name: c"kazoo",
    cmds: CMDS,
    params: PARAMS,
    pvs: PVS,
    rpc: RPCS,
    register: register,
    init: lifecycle::mod_init,
    child_init: lifecycle::child_init,
    destroy: lifecycle::destroy,
}

/// `mod_register`: see [`lifecycle::register`].
fn register(path: &kamailio::export::ModulePath) -> Result<(), String> {
    lifecycle::register(path, &TRANSFORMATIONS, &KEMI)
}
