//! The module as Kamailio sees it: it loads in place of the C module, every
//! parameter, function, pseudo-variable, transformation and event route of
//! the C module is accepted, bad parameters stop start-up with a message
//! naming them, `event_route[kazoo:mod-init]` (or the KEMI callback) runs
//! once and records subscriptions, and functions that cannot do their work
//! (no broker or database configured here) return -1 without stopping the
//! script.
use crate::common;

use std::time::Duration;

use common::{cfg, int, Proxy};
use kamailio_test::{check_config, unique_name, Kamailio};

/// Every parameter of the C module (both spellings of the timer interval).
const ALL_PARAMS: &str = r#"
modparam("kazoo", "node_hostname", "sipproxy.mydomain.com")
modparam("kazoo", "amqp_connection", "amqp://guest:guest@localhost:5672")
modparam("kazoo", "amqp_connection", "kazoo://guest:guest@otherhost:5672")
modparam("kazoo", "amqp_connection", "zone=remote;amqps://user:pass@broker.example.com/%2F")
modparam("kazoo", "amqp_max_channels", 100)
modparam("kazoo", "amqp_consumer_processes", 10)
modparam("kazoo", "amqp_consumer_workers", 4)
modparam("kazoo", "amqp_consumer_event_key", "My-JSON-Field-Name")
modparam("kazoo", "amqp_consumer_event_subkey", "My-JSON-SubField-Name")
modparam("kazoo", "amqp_query_timeout_sec", 1)
modparam("kazoo", "amqp_query_timeout_micro", 200000)
modparam("kazoo", "amqp_query_timeout_avp", "$var(kz_timeout)")
modparam("kazoo", "amqp_result_avp", "$avp(amqp_result)")
modparam("kazoo", "amqp_heartbeats", 10)
modparam("kazoo", "amqp_primary_zone", "local")
modparam("kazoo", "amqp_command_hashtable_size", 1024)
modparam("kazoo", "amqp_connect_timeout_sec", 1)
modparam("kazoo", "amqp_connect_timeout_micro", 0)
modparam("kazoo", "amqps_ca_cert", "/etc/ssl/certs/ca.pem")
modparam("kazoo", "amqps_cert", "/etc/ssl/certs/client.pem")
modparam("kazoo", "amqps_key", "/etc/ssl/private/client.key")
modparam("kazoo", "amqps_verify_peer", 1)
modparam("kazoo", "amqps_verify_hostname", 0)
modparam("kazoo", "app_name", "kamailio")
modparam("kazoo", "json_escape_char", "%")
modparam("kazoo", "event_callback", "ksr_kazoo_event")
modparam("kazoo", "db_url", "mysql://kamailio:kamailiorw@localhost/kamailio")
modparam("kazoo", "presentity_table", "my_presentity_table")
modparam("kazoo", "pua_mode", 0)
modparam("kazoo", "pua_include_entity", 1)
modparam("kazoo", "pua_lock_type", 1)
modparam("kazoo", "presence_use_full_entity", 0)
modparam("kazoo", "amqp_consumer_ack_timeout_sec", 1)
modparam("kazoo", "amqp_consumer_ack_timeout_micro", 200000)
modparam("kazoo", "amqp_interprocess_timeout_sec", 1)
modparam("kazoo", "amqp_interprocess_timeout_micro", 200000)
modparam("kazoo", "amqp_waitframe_timeout_sec", 1)
modparam("kazoo", "amqp_waitframe_timeout_micro", 200000)
modparam("kazoo", "amqp_internal_loop_count", 1)
modparam("kazoo", "amqp_consumer_loop_count", 3)
modparam("kazoo", "amqp_consumer_ack_loop_count", 5)
modparam("kazoo", "single_consumer_on_reconnect", 0)
modparam("kazoo", "consume_messages_on_reconnect", 0)
modparam("kazoo", "use_federated_exchange", 0)
modparam("kazoo", "federated_exchange", "federation")
modparam("kazoo", "amqp_timer_process_interval", 200)
modparam("kazoo", "amqp_timmer_process_interval", 200)
modparam("kazoo", "amqp_publish_timeout", 1500)
modparam("kazoo", "amqp_consumer_prefetch", 32)
modparam("kazoo", "amqp_direct", 1)
modparam("kazoo", "amqp_native_client", 1)
modparam("kazoo", "amqp_worker_consume", 1)
modparam("kazoo", "amqp_worker_replies", 1)
"#;

/// Every function with every argument count, the pseudo-variables, the
/// transformations and the event routes, largely the seed README's examples.
const ALL_ROUTES: &str = r#"
event_route[kazoo:mod-init]
{
    kazoo_subscribe("dialoginfo", "direct", "BLF-QUEUE-MY_HOSTNAME", "BLF-MY_HOSTNAME");
    $var(payload) = "{ 'exchange' : 'dialoginfo' , 'type' : 'direct', 'queue' : 'BLF-QUEUE-MY_HOSTNAME', 'routing' : 'BLF-MY_HOSTNAME', 'auto_delete' : 0, 'durable' : 1, 'no_ack' : 0, 'wait_for_consumer_ack' : 1 }";
    kazoo_subscribe("$var(payload)");
}

event_route[kazoo:consumer-event-presence-update]
{
    xlog("L_INFO", "received $(kzE{kz.json,Event-Package}) update for $(kzE{kz.json,From})");
    kazoo_pua_publish($kzE);
    kazoo_pua_publish_mwi($kzE);
    kazoo_pua_publish_presence($kzE);
    kazoo_pua_publish_dialoginfo($kzE);
}

event_route[kazoo:consumer-event-presence]
{
    xlog("L_INFO", "received $(kzE{kz.json,Event-Package}) update for $(kzE{kz.json,From})");
}

event_route[kazoo:consumer-event-event-category-event-name]
{
    xlog("L_INFO", "$kzRK $kzE");
}

event_route[kazoo:consumer-event-event-category]
{
    xlog("L_INFO", "$kzE");
}

event_route[kazoo:consumer-event]
{
    xlog("L_INFO","Received json payload : $kzE");
}

onreply_route[KZ_OK]
{
    xlog("L_INFO", "async reply $kzR");
}

failure_route[KZ_ERR]
{
    xlog("L_INFO", "async error $kzR");
}

request_route
{
    if (is_method("OPTIONS")) { sl_send_reply("200", "OK"); exit; }
    $var(amqp_payload_request) = $_s({"Event-Category" : "directory", "Event-Name" : "reg_success", "Contact" : "$(ct{s.escape.common}{s.replace,\','}{s.replace,$$,})", "Call-ID" : "$ci", "Realm" : "$fd", "Username" : "$fU", "From-User" : "$fU", "From-Host" : "$fd", "To-User" : "$tU", "To-Host" : "$td", "User-Agent" : "$(ua{s.escape.common}{s.replace,\','}{s.replace,$$,})" });
    $var(amqp_routing_key) = "registration.success." + $(fd{kz.encode}) + "." + $fU;
    kazoo_publish("callmgr", $var(amqp_routing_key), $var(amqp_payload_request));
    kazoo_publish("callmgr", $var(amqp_routing_key), $var(amqp_payload_request), "k1=v1;k2=v2");

    $var(amqp_payload_request) = "{'Event-Category' : 'call_event' , 'Event-Name' : 'query_user_channels_req', 'Realm' : '" + $fd + "', 'Username' : '" + $fU + "', 'Active-Only' : false }";
    kazoo_encode("$ci", "$var(callid_encoded)");
    $var(amqp_routing_key) = "call.status_req.$var(callid_encoded)";
    if(kazoo_query("callevt", $var(amqp_routing_key), $var(amqp_payload_request), "$var(amqp_result)")) {
        kazoo_json("$var(amqp_result)", "Channels[0].switch_url", "$du");
        if($du != $null) {
            xlog("L_INFO", "$ci|log|user channels found redirecting call to $du");
        }
    }
    kazoo_query("callevt", $var(amqp_routing_key), $var(amqp_payload_request));
    kazoo_query("callevt", $var(amqp_routing_key), $var(amqp_payload_request), "$var(amqp_result)", "h=v");
    $du = $(kzR{kz.json,Channels[0].switch_url});
    $var(n) = $(kzR{kz.json.count,Channels});
    kazoo_json_keys("$kzR", "Channels", "$avp(keys)");
    $var(amqp_routing_key) = "call.status_req." + $(ci{kz.encode});
    if ($rU == "async") {
        # Each of these suspends the transaction and ends the script.
        kazoo_async_query("callevt", $var(amqp_routing_key), $var(amqp_payload_request), "KZ_OK", "KZ_ERR");
        kazoo_async_query("callevt", $var(amqp_routing_key), $var(amqp_payload_request), "KZ_OK", "KZ_ERR", "0");
        kazoo_query_async("callevt", $var(amqp_routing_key), $var(amqp_payload_request), "KZ_OK", "KZ_ERR");
        kazoo_query_async("callevt", $var(amqp_routing_key), $var(amqp_payload_request), "KZ_OK", "KZ_ERR", "0");
    }
    kazoo_subscribe("{'exchange':'x','type':'topic','queue':'q','routing':['a','b']}");
    kazoo_pua_publish($kzE);
    xlog("L_INFO", "$kzR $kzE $kzRK");
    sl_send_reply("200", "OK");
}
"#;

#[test]
fn every_parameter_function_pv_transformation_and_route_is_accepted() {
    let check = check_config(&cfg(ALL_PARAMS, ALL_ROUTES));
    assert!(
        check.success,
        "kamailio -c refused the config:\n{}",
        check.output
    );
}

#[test]
fn a_config_using_everything_starts_and_runs() {
    // Same as above but running: start-up, mod-init and a request through all
    // of the request route (event_callback removed: no KEMI engine here; the
    // brokers point at closed ports, so every AMQP call fails fast with -1).
    let params = ALL_PARAMS
        .replace(
            "modparam(\"kazoo\", \"event_callback\", \"ksr_kazoo_event\")",
            "",
        )
        .replace("localhost:5672", "127.0.0.1:1")
        .replace("otherhost:5672", "127.0.0.1:2");
    let proxy = Proxy::start(&cfg(&params, ALL_ROUTES));
    let reply = proxy.call("anyone", &[]);
    assert_eq!(reply.code, 200, "the script must run to its end");
    proxy.assert_alive();
    let log = proxy.kamailio.log();
    assert!(log.contains("subscription 2 recorded"), "{log}");
    assert!(!log.contains("internal error"), "{log}");
}

/// The engine's parameter list, the exported table and [`ALL_PARAMS`] agree:
/// each parameter is accepted with its type and refused with the other.
#[test]
fn every_engine_parameter_is_exported_with_its_type() {
    use kazoo_engine::config::{ParamType, PARAMS};
    let mut names: Vec<&str> = PARAMS.iter().map(|(name, _)| *name).collect();
    names.sort_unstable();
    let mut listed: Vec<&str> = ALL_PARAMS
        .lines()
        .filter_map(|l| l.strip_prefix("modparam(\"kazoo\", \""))
        .filter_map(|l| l.split('"').next())
        .collect();
    listed.sort_unstable();
    listed.dedup();
    assert_eq!(names, listed, "ALL_PARAMS must list every parameter");
    let route = "request_route { sl_send_reply(\"200\", \"OK\"); }";
    let value = |name: &str, ty: ParamType| match (name, ty) {
        ("amqp_connection", ParamType::Str) => "\"amqp://h\"".to_string(),
        ("json_escape_char", ParamType::Str) => "\"#\"".to_string(),
        (_, ParamType::Str) => "\"x\"".to_string(),
        (_, ParamType::Int) => "1".to_string(),
    };
    let right: String = PARAMS
        .iter()
        .map(|(name, ty)| format!("modparam(\"kazoo\", \"{name}\", {})\n", value(name, *ty)))
        .collect();
    let check = check_config(&cfg(&right, route));
    assert!(check.success, "{}", check.output);
    for (name, ty) in PARAMS {
        let other = match ty {
            ParamType::Int => ParamType::Str,
            ParamType::Str => ParamType::Int,
        };
        let line = format!("modparam(\"kazoo\", \"{name}\", {})", value(name, other));
        let check = check_config(&cfg(&line, route));
        assert!(!check.success, "{line} accepted with the wrong type");
    }
}

#[test]
fn bad_parameters_are_refused_with_their_name() {
    for (line, needle) in [
        (
            r#"modparam("kazoo", "amqp_connection", "http://h")"#,
            "amqp_connection",
        ),
        (
            r#"modparam("kazoo", "amqp_connection", "zone=z;amqp://h/")"#,
            "empty vhost",
        ),
        (
            r#"modparam("kazoo", "amqp_query_timeout_micro", 1000000)"#,
            "amqp_query_timeout_micro",
        ),
        (
            r#"modparam("kazoo", "amqp_consumer_workers", -1)"#,
            "amqp_consumer_workers",
        ),
        (
            r#"modparam("kazoo", "json_escape_char", "ab")"#,
            "json_escape_char",
        ),
        (
            r#"modparam("kazoo", "amqp_max_channels", "50")"#,
            "amqp_max_channels",
        ),
        (
            r#"modparam("kazoo", "no_such_parameter", 1)"#,
            "no_such_parameter",
        ),
    ] {
        let check = check_config(&cfg(
            line,
            "request_route { sl_send_reply(\"200\", \"OK\"); }",
        ));
        assert!(!check.success, "{line} was accepted");
        assert!(check.output.contains(needle), "{line}: {}", check.output);
    }
}

#[test]
fn start_up_fails_clearly_without_node_hostname() {
    let config = cfg("", "request_route { sl_send_reply(\"200\", \"OK\"); }").replace(
        "modparam(\"kazoo\", \"node_hostname\", \"kztest.local\")",
        "",
    );
    let check = check_config(&config);
    assert!(
        check.success,
        "kamailio -c does not run mod_init: {}",
        check.output
    );
    let err = match Kamailio::start(&config) {
        Ok(_) => panic!("Kamailio must not start without node_hostname"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("node_hostname\" is required"), "{err}");
}

const SURFACE_ROUTES: &str = r#"
event_route[kazoo:mod-init]
{
    xlog("L_INFO", "mod-init ran in $pp\n");
    kazoo_subscribe("dialoginfo", "direct", "BLF-QUEUE-MY_HOSTNAME", "BLF-MY_HOSTNAME");
    $var(payload) = "{ 'exchange' : 'dialoginfo' , 'type' : 'direct', 'queue' : 'BLF-QUEUE-MY_HOSTNAME', 'routing' : 'BLF-MY_HOSTNAME', 'auto_delete' : 0, 'durable' : 1, 'no_ack' : 0, 'wait_for_consumer_ack' : 1 }";
    kazoo_subscribe("$var(payload)");
    kazoo_subscribe("[1, 2]");
    xlog("L_INFO", "bad subscription rc=$rc\n");
}

request_route
{
    if (is_method("OPTIONS")) { sl_send_reply("200", "OK"); exit; }
    kazoo_subscribe("{'exchange':'x','type':'topic','queue':'q','routing':'r'}");
    append_to_reply("X-Subscribe: $rc\r\n");
    kazoo_publish("ex", "rk", "{'a': 1}");
    append_to_reply("X-Publish: $rc\r\n");
    kazoo_query("ex", "rk", "{'a': 1}");
    append_to_reply("X-Query: $rc\r\n");
    kazoo_async_query("ex", "rk", "{'a': 1}", "OK", "ERR");
    append_to_reply("X-Async: $rc\r\n");
    kazoo_pua_publish("{'Event-Name': 'update'}");
    append_to_reply("X-Pua: $rc\r\n");
    if ($kzR == $null && $kzE == $null && $kzRK == $null) {
        append_to_reply("X-PVs: null\r\n");
    }
    sl_send_reply("200", "OK");
}
"#;

#[test]
fn mod_init_runs_once_and_records_subscriptions() {
    let proxy = Proxy::start(&cfg("", SURFACE_ROUTES));
    let reply = proxy.call("surface", &[]);
    assert_eq!(reply.code, 200, "no function may stop the script");
    for header in ["X-Subscribe", "X-Publish", "X-Query", "X-Async", "X-Pua"] {
        assert_eq!(int(&reply, header), -1, "{header}");
    }
    assert_eq!(reply.header("X-PVs"), Some("null"));
    let log = proxy.kamailio.log();
    assert_eq!(log.matches("mod-init ran in").count(), 1, "{log}");
    assert!(
        log.contains(
            "subscription 1 recorded: { \"exchange\": \"dialoginfo\", \"type\": \"direct\", \"queue\": \"BLF-QUEUE-MY_HOSTNAME\", \"routing\": \"BLF-MY_HOSTNAME\" }"
        ),
        "{log}"
    );
    assert!(
        log.contains("subscription 2 recorded: { \"exchange\": \"dialoginfo\""),
        "{log}"
    );
    assert!(log.contains("bad subscription rc=-1"), "{log}");
    assert!(
        log.contains("the description must be a JSON object"),
        "{log}"
    );
    assert!(
        log.contains("2 subscription(s) recorded at start-up"),
        "{log}"
    );
    assert!(
        log.contains("kazoo_subscribe: subscriptions must be made in event_route[kazoo:mod-init]"),
        "{log}"
    );
    assert!(log.contains("kazoo_publish: no broker connected"), "{log}");
    assert!(
        log.contains("kazoo_async_query: onreply_route[OK] does not exist"),
        "{log}"
    );
    // pua_mode is 0 in these tests.
    assert!(
        log.contains("kazoo_pua_publish: presence writes are off"),
        "{log}"
    );
}

/// The KEMI exports are callable from a script engine (JavaScript here), and
/// the start-up event is handed to the `event_callback` function.
#[test]
fn kemi_exports_work_from_a_script_engine() {
    let dir = std::env::temp_dir().join(unique_name("kazoo-kemi"));
    std::fs::create_dir_all(&dir).unwrap();
    let script = dir.join("kazoo.js");
    std::fs::write(
        &script,
        r#"
function ksr_kazoo_event(evname) {
    KSR.info("kemi event " + evname + "\n");
}
function ksr_request_route() {
    var publish = KSR.kazoo.kazoo_publish("ex", "rk", "{}");
    var subscribe = KSR.kazoo.kazoo_subscribe("{'exchange':'kx','type':'topic','queue':'kq','routing':'#'}");
    KSR.hdr.append_to_reply("X-Publish: " + publish + "\r\n");
    KSR.hdr.append_to_reply("X-Subscribe: " + subscribe + "\r\n");
    KSR.sl.sl_send_reply(200, "OK");
}
"#,
    )
    .unwrap();
    let config = cfg(
        r#"loadmodule "app_jsdt.so"
modparam("app_jsdt", "load", "{{SCRIPT}}")
modparam("kazoo", "event_callback", "ksr_kazoo_event")
cfgengine "jsdt"
"#,
        "",
    )
    .replace("{{SCRIPT}}", script.to_str().unwrap());
    let proxy = Proxy::start(&config);
    let reply = proxy.call("kemi", &[]);
    assert_eq!(int(&reply, "X-Publish"), -1);
    assert_eq!(
        int(&reply, "X-Subscribe"),
        -1,
        "subscribing after start-up is refused"
    );
    let log = proxy.kamailio.log();
    assert!(log.contains("kazoo_publish: no broker connected"), "{log}");
    assert!(
        log.contains("subscriptions must be made in event_route[kazoo:mod-init]"),
        "{log}"
    );
    // The start-up event reached the KEMI function (from kazoo worker 1,
    // where the engine is set up).
    assert!(
        proxy
            .kamailio
            .wait_for_log("kemi event kazoo:mod-init", Duration::from_secs(5)),
        "{log}"
    );
    drop(proxy);
    let _ = std::fs::remove_dir_all(&dir);
}
