//! Kamailio's `kazoo` module as a drop-in `kazoo.so`: the exported tables
//! (functions, parameters, pseudo-variables, RPC commands, the `kz`
//! transformations, KEMI) and the hooks. One file per concern:
//! - [`lifecycle`]: mod_init, child_init and destroy in start-up order; the
//!   only file that forks;
//! - [`params`]: `modparam` setters and the frozen configuration;
//! - [`startup`]: what `kazoo:mod-init` recorded (subscriptions) and queued
//!   (publishes);
//! - [`pvs`]: the `$kzR` / `$kzE` / `$kzRK` / `$knode` values;
//! - [`ipc_client`]: how a process reaches the AMQP process;
//! - [`amqp_process`] and [`worker`]: the bodies of the forked processes;
//! - [`amqp`]: `kazoo_publish`, `kazoo_query`, `kazoo_async_query`;
//! - [`subscribe`]: the `kazoo_subscribe` functions;
//! - [`json`]: `kazoo_json`, `kazoo_json_keys`, `kazoo_encode`;
//! - [`trans`]: `{kz.json,...}`, `{kz.json.count,...}`, `{kz.encode}`;
//! - [`pua`]: the `kazoo_pua_*` presence writes;
//! - [`rpc_commands`]: the `kazoo.status`, `kazoo.brokers` and
//!   `kazoo.subscriptions` RPC commands;
//! - [`stats`]: the statistics (`kamcmd stats.get_statistics kazoo:`);
//! - [`logger`]: the engine's `log` records into Kamailio's logger;
//! - `test_hooks` (feature `test-hooks`, never in release builds): script
//!   functions that exist only to test the module's safety nets.
#![deny(unsafe_code)]

mod amqp;
mod amqp_process;
mod direct;
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

use kamailio::{cmd, kemi, param, pv, trans_class};

kamailio::module! {
    name: c"kazoo",
    cmds: [
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
        #[cfg(feature = "test-hooks")]
        cmd!("kazoo_test_panic", spve(reason) => test_hooks::panic),
        #[cfg(feature = "test-hooks")]
        cmd!("kazoo_test_break_link", spve(reason) => test_hooks::break_link),
    ],
    params: [
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
        param!("amqp_direct", Int, params::set),
        param!("amqp_native_client", Int, params::set),
        param!("amqp_worker_consume", Int, params::set),
        param!("amqp_worker_replies", Int, params::set),
    ],
    pvs: [
        pv!("kzR", pvs::QUERY_RESULT),
        pv!("kzE", pvs::EVENT_PAYLOAD),
        pv!("kzRK", pvs::EVENT_ROUTING_KEY),
        pv!("knode", pvs::NODE_NAME),
    ],
    rpc: [
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
    ],
    transformations: [trans_class!("kz", trans::KzTransformations)],
    // The KEMI functions (`KSR.kazoo.*`, see `docs/kazoo.md` section 8.1):
    // KEMI has no overloading, so the native forms with more arguments are
    // functions of their own.
    kemi: [
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
    ],
    init: lifecycle::mod_init,
    child_init: lifecycle::child_init,
    destroy: lifecycle::destroy,
}
