//! `kazoo_publish` through a running Kamailio and a real RabbitMQ: what
//! reaches the broker is what the C module sent (captured in
//! `vectors/publish.jsonl`), byte for byte, with publisher confirms behind
//! the return code; the C module's silent losses are -1 here.
use crate::common;

use std::time::{Duration, Instant};

use common::{amqp_cfg, int, Proxy};
use kamailio_test::{system_broker_url, unique_name, AmqpProbe, ProbeMessage};

const ROUTES: &str = r#"
request_route {
    if (is_method("OPTIONS")) { sl_send_reply("200", "OK"); exit; }
    $var(ex) = $(hdr(X-A){s.decode.hexa});
    $var(rk) = "";
    if ($(hdr(X-B){s.len}) > 0) { $var(rk) = $(hdr(X-B){s.decode.hexa}); }
    $var(pl) = $(hdr(X-C){s.decode.hexa});
    if (is_present_hf("X-D")) {
        $var(h) = "";
        if ($(hdr(X-D){s.len}) > 0) { $var(h) = $(hdr(X-D){s.decode.hexa}); }
        kazoo_publish("$var(ex)", "$var(rk)", "$var(pl)", "$var(h)");
    } else {
        kazoo_publish("$var(ex)", "$var(rk)", "$var(pl)");
    }
    append_to_reply("X-RC: $rc\r\n");
    sl_send_reply("200", "OK");
}
"#;

struct Bed {
    proxy: Proxy,
    node: String,
    probe: AmqpProbe,
    exchange: String,
    queue: String,
}

impl Bed {
    fn start() -> Bed {
        Bed::start_with("")
    }

    /// A bed whose configuration also has `params`.
    fn start_with(params: &str) -> Bed {
        let probe = AmqpProbe::connect(&system_broker_url()).expect("probe");
        let exchange = unique_name("kzpub");
        probe.declare_exchange(&exchange, "topic").unwrap();
        let queue = probe.capture(&exchange, "#").unwrap();
        let (config, node) = amqp_cfg(
            &system_broker_url(),
            &format!("modparam(\"kazoo\", \"amqp_max_channels\", 4)\n{params}"),
            ROUTES,
        );
        let proxy = Proxy::start(&config);
        proxy.wait_connected(1, 1);
        Bed {
            proxy,
            node,
            probe,
            exchange,
            queue,
        }
    }

    fn publish(&self, routing_key: &str, payload: &str, headers: Option<&str>) -> i64 {
        let mut inputs: Vec<&[u8]> = vec![
            self.exchange.as_bytes(),
            routing_key.as_bytes(),
            payload.as_bytes(),
        ];
        if let Some(h) = headers {
            inputs.push(h.as_bytes());
        }
        int(&self.proxy.call("pub", &inputs), "X-RC")
    }

    fn captured(&self) -> Option<ProbeMessage> {
        self.probe
            .get(&self.queue, Duration::from_millis(300))
            .expect("basic.get")
    }
}

impl Drop for Bed {
    fn drop(&mut self) {
        self.probe.delete_exchange(&self.exchange);
    }
}

fn is_uuid_v4(text: &str) -> bool {
    let b = text.as_bytes();
    b.len() == 36
        && [8, 13, 18, 23].iter().all(|&i| b[i] == b'-')
        && b[14] == b'4'
        && b"89ab".contains(&b[19])
        && b.iter().enumerate().all(|(i, c)| {
            [8, 13, 18, 23].contains(&i) || c.is_ascii_hexdigit() && !c.is_ascii_uppercase()
        })
}

/// The broker connections of this bed's Kamailio that publish directly
/// from a SIP worker (named `kamailio@<node> direct (pid N)`).
fn direct_links(bed: &Bed) -> usize {
    let listed =
        kamailio_test::system_rabbitmqctl(&["-q", "list_connections", "client_properties"])
            .expect("rabbitmqctl list_connections");
    let name = format!("kamailio@{} direct (pid", bed.node);
    listed.lines().filter(|line| line.contains(&name)).count()
}

#[test]
fn publishes_match_the_c_module_row_for_row() {
    let bed = Bed::start();
    check_rows(&bed);
    // They went on the SIP workers' own links (amqp_direct, the default):
    // one per worker that took a request (the configuration has 2).
    let links = direct_links(&bed);
    assert!((1..=2).contains(&links), "{links} direct links");
}

#[test]
fn publishes_through_the_amqp_process_match_it_too() {
    let bed = Bed::start_with("modparam(\"kazoo\", \"amqp_direct\", 0)");
    check_rows(&bed);
    assert_eq!(direct_links(&bed), 0, "amqp_direct 0: no direct link");
}

/// Publishes every row of `vectors/publish.jsonl` and compares what reaches
/// the broker with what the C module sent.
fn check_rows(bed: &Bed) {
    let rows: Vec<serde_json::Value> = kamailio_test::jsonl("publish.jsonl");
    let mut checked = 0;
    for row in &rows {
        let id = row["id"].as_str().unwrap();
        let routing_key = row["routing_key"].as_str().unwrap();
        let headers = row["headers"].as_str();
        let rc = bed.publish(routing_key, row["payload"].as_str().unwrap(), headers);
        let expected_rc = row["rc"].as_i64().unwrap();
        let messages = row["messages"].as_array().unwrap();
        if messages.is_empty() {
            // The C module's rc 1 without a message (bad consumer:// key)
            // and rc 0 (no such broker) are silent losses: ours says -1.
            assert_eq!(rc, -1, "{id}: C rc {expected_rc}, nothing published");
            assert!(bed.captured().is_none(), "{id}: nothing may be published");
            continue;
        }
        assert_eq!(rc, expected_rc, "{id}: rc");
        let expected = &messages[0];
        let got = bed
            .captured()
            .unwrap_or_else(|| panic!("{id}: nothing reached the broker"));
        assert_eq!(
            got.routing_key,
            expected["routing_key"].as_str().unwrap(),
            "{id}"
        );
        assert_eq!(
            got.content_type.as_deref(),
            Some("application/json"),
            "{id}"
        );
        assert!(
            got.other_properties.is_empty(),
            "{id}: {:?}",
            got.other_properties
        );
        let body = got.text();
        assert_eq!(
            body,
            common::fill_placeholders(
                expected["body"].as_str().unwrap(),
                &body,
                &kamailio_test::msg_id_of(body.as_bytes()),
                &bed.node
            ),
            "{id}: body"
        );
        let node_growth = (bed.node.len() as i64 - "kzvec.local".len() as i64)
            * expected["body"]
                .as_str()
                .unwrap()
                .matches("kzvec.local")
                .count() as i64;
        assert_eq!(
            body.len() as i64,
            expected["body_bytes"].as_i64().unwrap() + node_growth,
            "{id}: length"
        );
        if row["payload"].as_str().unwrap().contains("Msg-ID") {
            // the script's own Msg-ID is kept
        } else {
            assert!(
                is_uuid_v4(&kamailio_test::msg_id_of(body.as_bytes())),
                "{id}: {body}"
            );
        }
        // Headers: RabbitMQ field tables are maps, so a repeated name is
        // sent once (the first value) where the C module sent both; names
        // come out sorted.
        let want: Option<Vec<(String, char, String)>> = expected["properties"]["headers_table"]
            .as_array()
            .map(|table| {
                let mut out: Vec<(String, char, String)> = Vec::new();
                for entry in table {
                    let key = entry[0].as_str().unwrap().to_string();
                    if out.iter().all(|(k, _, _)| *k != key) {
                        out.push((key, 'S', entry[2].as_str().unwrap().to_string()));
                    }
                }
                out.sort();
                out
            });
        assert_eq!(got.headers, want, "{id}: headers");
        checked += 1;
    }
    println!("{checked} publishes checked against the C module");
    assert!(checked > 30);
    bed.proxy.assert_alive();
}

#[test]
fn hostile_payloads_are_refused_and_kamailio_survives() {
    let bed = Bed::start();
    // These abort the C module (vectors/crashers.txt).
    for payload in ["[1,2]", "\"str\"", "42", "true", "null", "", "{"] {
        assert_eq!(bed.publish("x", payload, None), -1, "{payload}");
        bed.proxy.assert_alive();
    }
    assert!(bed.captured().is_none());
    let log = bed.proxy.kamailio.log();
    assert!(log.contains("kazoo_publish: "), "{log}");
    // This configuration consumes nothing: its connection events find no
    // route, which is not an error.
    assert!(!log.contains("consumer-event not found"), "{log}");
}

#[test]
fn a_publish_to_a_missing_exchange_is_reported_not_lost_silently() {
    let bed = Bed::start();
    let started = Instant::now();
    let missing = unique_name("kz-no-such-exchange");
    let inputs: Vec<&[u8]> = vec![missing.as_bytes(), b"rk", b"{}"];
    let rc = int(&bed.proxy.call("pub", &inputs), "X-RC");
    assert_eq!(rc, -1, "the broker refused it: the script must know");
    assert!(started.elapsed() < Duration::from_secs(3));
    // The publisher recovers (it reopens the channel the broker closed):
    // publishes are confirmed again within a moment.
    let deadline = Instant::now() + Duration::from_secs(3);
    while bed.publish("after", "{'a': 1}", None) != 1 {
        assert!(Instant::now() < deadline, "the publisher did not recover");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(bed.captured().is_some());
}

#[test]
fn consumer_addressing_goes_to_that_broker() {
    let bed = Bed::start();
    assert_eq!(bed.publish("consumer://1/direct.one", "{}", None), 1);
    assert_eq!(bed.captured().unwrap().routing_key, "direct.one");
    assert_eq!(bed.publish("consumer://7/x", "{}", None), -1, "no broker 7");
    let log = bed.proxy.kamailio.log();
    assert!(log.contains("kazoo_publish: "), "{log}");
}
