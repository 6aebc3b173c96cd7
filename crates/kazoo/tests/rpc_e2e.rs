//! The `kazoo.status` RPC command through Kamailio's ctl module and
//! `kamcmd`: it shows each broker's connections and counts what the module
//! did (confirmed and failed publishes here).
use crate::common;

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
    let text = proxy.kamcmd(&["kazoo.status"]);
    serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("{e}: {text}"))
}

/// `kazoo:<name>` from `stats.get_statistics kazoo:`, once it equals
/// `want` (the AMQP process writes the statistics every 100 ms), else its
/// last value.
fn statistic(proxy: &Proxy, name: &str, want: i64) -> i64 {
    eventually(want, || {
        let text = proxy.kamcmd(&["stats.get_statistics", "kazoo:"]);
        text.lines()
            .find_map(|l| {
                l.trim()
                    .trim_matches('"')
                    .strip_prefix(&format!("kazoo:{name} = "))
                    .map(str::to_owned)
            })
            .unwrap_or_else(|| panic!("no kazoo:{name} in {text}"))
            .parse()
            .unwrap()
    })
}

/// What `read` gives once it equals `want`, or its last value after 3 s
/// (the AMQP process writes the statistics every 100 ms).
fn eventually(want: i64, read: impl Fn() -> i64) -> i64 {
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    loop {
        let value = read();
        if value == want || std::time::Instant::now() >= deadline {
            return value;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn kazoo_status_shows_brokers_and_counters() {
    let probe = AmqpProbe::connect(&system_broker_url()).expect("probe");
    let exchange = unique_name("kzrpc");
    probe.declare_exchange(&exchange, "topic").unwrap();
    let (config, _node) = amqp_cfg(&system_broker_url(), "loadmodule \"kex.so\"", ROUTES);
    let proxy = Proxy::start(&config);
    proxy.wait_connected(1, 1);
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

    // The same counts as Kamailio statistics, which reset.
    assert_eq!(statistic(&proxy, "published", 2), 2);
    assert_eq!(statistic(&proxy, "publish_failed", 1), 1);
    // The missing exchange: the broker closed the channel.
    assert_eq!(statistic(&proxy, "publish_failed_refused", 1), 1);
    assert_eq!(statistic(&proxy, "publish_failed_timeout", 0), 0);
    assert_eq!(statistic(&proxy, "broker_1_reconnects", 0), 0);
    assert_eq!(statistic(&proxy, "broker_1_publisher_up", 1), 1);
    assert_eq!(statistic(&proxy, "broker_1_consumers_up", 1), 1);
    proxy.kamcmd(&["stats.reset_statistics", "kazoo:"]);
    assert_eq!(statistic(&proxy, "published", 0), 0);
    assert_eq!(
        statistic(&proxy, "broker_1_publisher_up", 1),
        1,
        "gauges do not reset"
    );
    assert_eq!(int(&proxy.call("rpc", &[exchange.as_bytes()]), "X-RC"), 1);
    assert_eq!(statistic(&proxy, "published", 1), 1);
    probe.delete_exchange(&exchange);
}

/// `GET <path>` on 127.0.0.1:`port`; the response (read up to its
/// `Content-Length`: Kamailio keeps the connection open).
fn http_get(port: u16, path: &str) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).expect("HTTP connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    write!(stream, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").unwrap();
    let mut response = Vec::new();
    let mut chunk = [0u8; 16384];
    loop {
        let n = stream.read(&mut chunk).expect("HTTP response");
        assert!(
            n > 0,
            "connection closed: {}",
            String::from_utf8_lossy(&response)
        );
        response.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&response);
        let Some(end) = text.find("\r\n\r\n") else {
            continue;
        };
        let length: usize = text[..end]
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("content-length:")
                    .map(|v| v.trim().parse().unwrap())
            })
            .expect("Content-Length");
        if response.len() >= end + 4 + length {
            assert!(text.starts_with("HTTP/1.1 200"), "{text}");
            return text.into_owned();
        }
    }
}

/// The value of `metric` in a Prometheus scrape, once it equals `want`.
fn scraped(port: u16, metric: &str, want: i64) -> i64 {
    eventually(want, || {
        let body = http_get(port, "/metrics");
        body.lines()
            .find_map(|l| l.strip_prefix(&format!("{metric} ")))
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap_or_else(|| panic!("no {metric} in the scrape:\n{body}"))
            .parse()
            .unwrap()
    })
}

#[test]
fn statistics_are_scraped_as_prometheus_metrics() {
    let probe = AmqpProbe::connect(&system_broker_url()).expect("probe");
    let exchange = unique_name("kzprom");
    probe.declare_exchange(&exchange, "topic").unwrap();
    let routes = format!(
        "{ROUTES}\nevent_route[xhttp:request] {{\n    if (prom_check_uri()) {{ prom_dispatch(); exit; }}\n    \
         xhttp_reply(\"404\", \"Not Found\", \"text/plain\", \"\");\n}}\n"
    );
    let (config, _node) = amqp_cfg(
        &system_broker_url(),
        "loadmodule \"xhttp.so\"\nloadmodule \"xhttp_prom.so\"\n\
         modparam(\"xhttp_prom\", \"xhttp_prom_stats\", \"all\")",
        &routes,
    );
    let config = config.replace(
        "disable_tcp=yes",
        "disable_tcp=no\nlisten=tcp:127.0.0.1:{{PORT}}\ntcp_accept_no_cl=yes",
    );
    let proxy = Proxy::start(&config);
    proxy.wait_connected(1, 1);
    let port = proxy.kamailio.port();
    for _ in 0..3 {
        assert_eq!(int(&proxy.call("rpc", &[exchange.as_bytes()]), "X-RC"), 1);
    }
    assert_eq!(scraped(port, "kamailio_kazoo_published", 3), 3);
    assert_eq!(scraped(port, "kamailio_kazoo_broker_1_publisher_up", 1), 1);
    assert_eq!(scraped(port, "kamailio_kazoo_publish_failed", 0), 0);
    probe.delete_exchange(&exchange);
}

/// A `kamcmd` command answering a JSON document.
fn json_rpc(proxy: &Proxy, command: &str) -> serde_json::Value {
    let text = proxy.kamcmd(&[command]);
    serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("{command}: {e}: {text}"))
}

#[test]
fn brokers_and_subscriptions_rpc_commands() {
    let probe = AmqpProbe::connect(&system_broker_url()).expect("probe");
    let good = unique_name("kzsubs");
    // Declared as fanout here; the subscription asks for topic, which the
    // broker refuses (PRECONDITION_FAILED) on every attempt.
    let clash = unique_name("kzsubs-clash");
    probe.declare_exchange(&clash, "fanout").unwrap();
    let started = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let routes = format!(
        r##"event_route[kazoo:mod-init]
{{
    kazoo_subscribe("{{'name':'good-listener','exchange':'{good}','type':'topic','queue':'{good}-q','routing':['a.#','b.#']}}");
    kazoo_subscribe("{{'exchange':'{clash}','type':'topic','queue':'{clash}-q','routing':'#'}}");
}}
event_route[kazoo:consumer-event]
{{
    xlog("L_INFO", "EVENT rk=$kzRK\n");
}}
{ROUTES}"##
    );
    let (config, _node) = amqp_cfg(&system_broker_url(), "", &routes);
    let proxy = Proxy::start(&config);
    proxy.wait_connected(1, 1);
    for key in ["a.one", "b.two"] {
        probe.publish(&good, key, b"{}").unwrap();
        assert!(proxy
            .kamailio
            .wait_for_log(&format!("EVENT rk={key}"), Duration::from_secs(5)));
    }

    let brokers = json_rpc(&proxy, "kazoo.brokers");
    let broker = &brokers[0];
    assert_eq!(broker["id"], 1, "{brokers}");
    assert_eq!(broker["primary"], true, "{brokers}");
    assert_eq!(broker["connections"]["publisher"], "up", "{brokers}");
    assert_eq!(broker["connections"]["consumer 0"], "up", "{brokers}");
    let since = broker["since"]["publisher"].as_u64().unwrap();
    assert!(since >= started && since <= started + 60, "{brokers}");
    assert!(broker["last_error"].is_null(), "{brokers}");

    let subscriptions = json_rpc(&proxy, "kazoo.subscriptions");
    let good_sub = &subscriptions[0];
    assert_eq!(good_sub["name"], "good-listener", "{subscriptions}");
    assert_eq!(good_sub["queue"], format!("{good}-q"), "{subscriptions}");
    assert_eq!(good_sub["routing"], serde_json::json!(["a.#", "b.#"]));
    assert_eq!(good_sub["consumed"], 2, "{subscriptions}");
    // A no_ack subscription is consumed with acks too (sent once a worker
    // has the message, so the prefetch bounds a flood); none redelivered.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let status = loop {
        let status = status(&proxy);
        if status["consumed"]["acked"] == 2 || std::time::Instant::now() > deadline {
            break status;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert_eq!(status["consumed"]["acked"], 2, "{status}");
    assert_eq!(status["consumed"]["redelivered"], 0, "{status}");
    assert_eq!(
        good_sub["brokers"][0]["state"], "consuming",
        "{subscriptions}"
    );
    // One consumer per kazoo worker (each consumes it over its own connection).
    assert_eq!(good_sub["brokers"][0]["consumers"], 8, "{subscriptions}");
    let clash_sub = &subscriptions[1];
    assert_eq!(clash_sub["consumed"], 0, "{subscriptions}");
    assert_eq!(
        clash_sub["brokers"][0]["state"], "failed",
        "{subscriptions}"
    );
    let reason = clash_sub["brokers"][0]["reason"]
        .as_str()
        .unwrap_or_default();
    assert!(reason.contains("PRECONDITION_FAILED"), "{subscriptions}");

    // Once the clashing exchange is gone, the subscription is declared on
    // its next attempt and consumed.
    probe.delete_exchange(&clash);
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let subscriptions = json_rpc(&proxy, "kazoo.subscriptions");
        if subscriptions[1]["brokers"][0]["state"] == "consuming" {
            assert!(subscriptions[1]["brokers"][0]["reason"].is_null());
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the subscription did not recover: {subscriptions}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    probe.delete_exchange(&good);
    probe.delete_exchange(&clash);
}
