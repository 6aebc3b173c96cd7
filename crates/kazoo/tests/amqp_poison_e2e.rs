//! Hostile deliveries through a running Kamailio and the system RabbitMQ:
//! messages the broker accepts but no AMQP client library would publish
//! (invalid UTF-8 in the routing key, a property or a header name; header
//! arrays nested 20 000 deep) never stop the module's consuming connection
//! nor Kamailio. A routing key that is not UTF-8 never reaches the script
//! and leaves the queue; the rest is delivered.
use crate::common;

use std::time::{Duration, Instant};

use common::{amqp_cfg, Proxy};
use kamailio_test::{
    system_broker_url, system_queue_messages, table, unique_name, value_array, value_long_str,
    AmqpProbe, RawProperties, RawPublisher,
};

/// (routing key, properties) of each hostile message, and whether the
/// script should see it.
fn hostile() -> Vec<(Vec<u8>, RawProperties, bool)> {
    let mut deep = value_long_str(b"bottom");
    for _ in 0..20_000 {
        deep = value_array(&deep);
    }
    vec![
        (b"poison.\xff".to_vec(), RawProperties::default(), false),
        (
            b"poison.\xc3\x28".to_vec(),
            RawProperties::default().message_id(b"ok"),
            false,
        ),
        (
            b"poison.ct".to_vec(),
            RawProperties::default().content_type(b"application/\xffjson"),
            true,
        ),
        (
            b"poison.hn".to_vec(),
            RawProperties::default().headers(table(&[(b"X-\xfe", value_long_str(b"v"))])),
            true,
        ),
        (
            b"poison.deep".to_vec(),
            RawProperties::default().headers(table(&[(b"deep", deep)])),
            true,
        ),
    ]
}

/// Messages a queue holds, ready or unacked.
fn messages(queue: &str) -> u64 {
    let held = system_queue_messages(queue).expect("rabbitmqctl");
    held.map_or(0, |m| m.ready + m.unacked)
}

#[test]
fn poison_messages_leave_the_queue_and_consuming_goes_on() {
    let exchanges = [unique_name("kzpoison1"), unique_name("kzpoison2")];
    let queues = [unique_name("kzpoison1-q"), unique_name("kzpoison2-q")];
    let [e1, e2] = &exchanges;
    let [q1, q2] = &queues;
    let routes = format!(
        r##"event_route[kazoo:mod-init]
{{
    kazoo_subscribe("{{'exchange': '{e1}', 'type': 'topic', 'queue': '{q1}', 'routing': '#'}}");
    kazoo_subscribe("{{'exchange': '{e2}', 'type': 'topic', 'queue': '{q2}', 'routing': '#', 'no_ack': 0, 'auto_delete': 0}}");
}}
event_route[kazoo:consumer-event]
{{
    xlog("L_INFO", "GOT $kzRK\n");
}}
request_route {{
    sl_send_reply("200", "OK");
}}
"##
    );
    let (config, _node) = amqp_cfg(&system_broker_url(), "", &routes);
    let proxy = Proxy::start(&config);
    proxy.wait_connected(1, 1);
    let probe = AmqpProbe::connect(&system_broker_url()).expect("probe");
    let deadline = Instant::now() + Duration::from_secs(10);
    while queues
        .iter()
        .any(|q| probe.queue_counts(q).map(|c| c.1).unwrap_or(0) == 0)
    {
        assert!(
            Instant::now() < deadline,
            "subscriptions not consumed:\n{}",
            proxy.kamailio.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    let mut publisher = RawPublisher::system().expect("raw publisher");
    for exchange in &exchanges {
        for (key, properties, _) in hostile() {
            let body = b"{\"Event-Category\": \"poison\", \"Event-Name\": \"test\"}";
            publisher
                .publish(exchange.as_bytes(), &key, &properties, body)
                .expect("the broker takes it");
        }
        publisher
            .publish(
                exchange.as_bytes(),
                b"good.after",
                &RawProperties::default(),
                b"{\"Event-Category\": \"good\", \"Event-Name\": \"after\"}",
            )
            .expect("published");
    }
    publisher.close();

    let deadline = Instant::now() + Duration::from_secs(10);
    while proxy.kamailio.log().matches("GOT good.after").count() < 2 {
        assert!(
            Instant::now() < deadline,
            "the good messages were not consumed:\n{}",
            proxy.kamailio.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let log = proxy.kamailio.log();
    for (key, _, delivered) in hostile() {
        let line = format!("GOT {}\n", String::from_utf8_lossy(&key));
        let expected = if delivered { 2 } else { 0 };
        assert_eq!(log.matches(&line).count(), expected, "{line:?}:\n{log}");
    }
    // Each unreadable routing key is logged once, escaped.
    let refused = log
        .lines()
        .filter(|l| l.contains("its routing key is not UTF-8"))
        .collect::<Vec<_>>();
    assert_eq!(refused.len(), 4, "{log}");
    let status: serde_json::Value =
        serde_json::from_str(proxy.kamcmd(&["kazoo.status"]).trim()).unwrap();
    assert_eq!(status["consumed"]["rejected"], 4, "{status}");
    assert!(refused
        .iter()
        .all(|l| l.contains("\"poison.\\u{fffd}") && l.contains("kzpoison")));
    // The consuming connection never dropped.
    assert_eq!(status["brokers"][0]["reconnects"], 0, "{status}");
    // Nothing stays in the queue consumed with acks.
    let deadline = Instant::now() + Duration::from_secs(5);
    while messages(q2) != 0 {
        assert!(Instant::now() < deadline, "{q2}: {} left", messages(q2));
        std::thread::sleep(Duration::from_millis(100));
    }
    proxy.assert_alive();

    for e in &exchanges {
        probe.delete_exchange(e);
    }
    probe.delete_queue(q2);
}
