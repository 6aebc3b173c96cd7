//! The `kazoo.status` RPC command through Kamailio's ctl module and
//! `kamcmd`: it shows each broker's connections and counts what the module
//! did (confirmed and failed publishes here).
mod common;

use std::time::Duration;

use common::{amqp_cfg, int, Proxy};
use kamailio_test::{system_broker_url, unique_name, AmqpProbe};

const ROUTES: &str = r#"
request_route {
    if (is_method("OPTIONS")) { sl_send_reply("200", "OK"); exit; }
    kazoo_publish("$(hdr(X-A){s.decode.hexa})", "rpc.test", "{'Event-Category':'rpc'}");
    append_to_reply("X-RC: $rc\r\n");
    sl_send_reply("200", "OK");
}
"#;

fn status(proxy: &Proxy) -> serde_json::Value {
    let text = proxy
        .kamailio
        .kamcmd(&["kazoo.status"])
        .unwrap_or_else(|e| panic!("kamcmd kazoo.status: {e}"));
    serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("{e}: {text}"))
}

#[test]
fn kazoo_status_shows_brokers_and_counters() {
    let probe = AmqpProbe::connect(&system_broker_url()).expect("probe");
    let exchange = unique_name("kzrpc");
    probe.declare_exchange(&exchange, "topic").unwrap();
    let (config, _node) = amqp_cfg(
        &system_broker_url(),
        "loadmodule \"ctl.so\"\nmodparam(\"ctl\", \"binrpc\", \"{{CTL}}\")",
        ROUTES,
    );
    let proxy = Proxy::start(&config);
    proxy.wait_connected(1, 1);
    assert!(proxy
        .kamailio
        .wait_for_log("consumer 0: connected", Duration::from_secs(10)));
    for _ in 0..2 {
        assert_eq!(int(&proxy.call("rpc", &[exchange.as_bytes()]), "X-RC"), 1);
    }
    let missing = unique_name("kzrpc-missing");
    assert_eq!(int(&proxy.call("rpc", &[missing.as_bytes()]), "X-RC"), -1);

    let status = status(&proxy);
    assert_eq!(status["publish"]["confirmed"], 2, "{status}");
    assert_eq!(status["publish"]["failed"], 1, "{status}");
    let broker = &status["brokers"][0];
    assert_eq!(broker["id"], 1, "{status}");
    assert_eq!(broker["zone"], "local", "{status}");
    assert_eq!(broker["connections"]["publisher"], "up", "{status}");
    assert_eq!(broker["connections"]["consumer 0"], "up", "{status}");
    assert_eq!(status["query"]["pending"], 0, "{status}");
    probe.delete_exchange(&exchange);
}
