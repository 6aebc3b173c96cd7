//! What every process the module forks owes Kamailio, checked through a
//! running Kamailio: runtime configuration changes made with `kamcmd`
//! (`cfg.set_now_int`) reach the next event route of a consumer worker and
//! the AMQP process's logging; a custom cfg group read with
//! `$sel(cfg_get.kazoo.*)` in an event route (as Kazoo's edge configurations
//! do everywhere) works at all.
use crate::common;

use std::time::{Duration, Instant};

use common::{amqp_cfg, Proxy};
use kamailio_test::{system_broker_url, unique_name, AmqpProbe};

/// The value the event route read, from the message it published.
fn probe_value(probe: &AmqpProbe, exchange: &str, results: &str) -> String {
    probe
        .publish(
            exchange,
            "probe.read",
            br#"{"Event-Category":"probe","Event-Name":"read"}"#,
        )
        .unwrap();
    let message = probe
        .get(results, Duration::from_secs(10))
        .unwrap()
        .expect("the event route published nothing (did the worker die?)");
    let body: serde_json::Value = serde_json::from_str(&message.text()).unwrap();
    body["Value"].as_str().unwrap_or_default().to_string()
}

#[test]
fn cfg_changes_reach_the_next_event_route_and_the_amqp_process() {
    let probe = AmqpProbe::connect(&system_broker_url()).expect("probe");
    let exchange = unique_name("kzcfg");
    let queue = unique_name("kzcfg-q");
    probe.declare_exchange(&exchange, "topic").unwrap();
    let results = probe.capture(&exchange, "probe.result").unwrap();
    let params = r#"loadmodule "cfg_rpc.so"
kazoo.probe_value = 1 desc "read by the probe event route"
"#;
    let routes = format!(
        r#"
event_route[kazoo:mod-init] {{
    kazoo_subscribe("{{'exchange': '{exchange}', 'type': 'topic', 'queue': '{queue}', 'routing': 'probe.read'}}");
}}
event_route[kazoo:consumer-event-probe-read] {{
    kazoo_publish("{exchange}", "probe.result", "{{'Event-Category':'probe','Event-Name':'result','Value':'$sel(cfg_get.kazoo.probe_value)'}}");
}}
request_route {{
    sl_send_reply("200", "OK");
}}
"#
    );
    let (config, _node) = amqp_cfg(&system_broker_url(), params, &routes);
    let proxy = Proxy::start(&config);
    proxy.wait_connected(1, 1);

    assert_eq!(probe_value(&probe, &exchange, &results), "1");
    proxy.kamcmd(&["cfg.set_now_int", "kazoo", "probe_value", "7"]);
    assert_eq!(probe_value(&probe, &exchange, &results), "7");
    proxy.kamcmd(&["cfg.set_now_int", "kazoo", "probe_value", "42"]);
    assert_eq!(probe_value(&probe, &exchange, &results), "42");

    // The AMQP process logs the status request at debug level: nothing at
    // debug=2, then a line once `core debug` is 3.
    const STATUS_LINE: &str = "status requested (RPC)";
    proxy.kamcmd(&["kazoo.status"]);
    std::thread::sleep(Duration::from_millis(300));
    assert!(!proxy.kamailio.log().contains(STATUS_LINE));
    proxy.kamcmd(&["cfg.set_now_int", "core", "debug", "3"]);
    let deadline = Instant::now() + Duration::from_secs(5);
    while !proxy.kamailio.log().contains(STATUS_LINE) {
        assert!(
            Instant::now() < deadline,
            "the AMQP process never logged at debug level after core.debug 3"
        );
        proxy.kamcmd(&["kazoo.status"]);
        std::thread::sleep(Duration::from_millis(100));
    }
    proxy.assert_alive();
    probe.delete_exchange(&exchange);
    probe.delete_queue(&queue);
}
