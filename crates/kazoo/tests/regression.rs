//! One test per bug fixed in this module, each named after what broke, run
//! through a real Kamailio and RabbitMQ:
//! - hostile deliveries (invalid UTF-8 in the routing key, a property or a
//!   header name; header arrays nested 20 000 deep) dropped the consuming
//!   connection: now a routing key that is not UTF-8 never reaches the
//!   script and leaves the queue, the rest is delivered;
//! - a worker whose link to the AMQP process broke lost the deliveries it
//!   had not reported: now they go back to the broker;
//! - a flood of deliveries piled up in the AMQP process and made resumes of
//!   asynchronous queries wait behind it: now it waits on the broker.
use crate::common;

use std::time::{Duration, Instant};

use common::{amqp_cfg, Proxy};
use kamailio_test::{
    system_broker_url, system_queue_messages, table, unique_name, value_array, value_long_str,
    AmqpProbe, QueueMessages, RawProperties, RawPublisher,
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
fn hostile_deliveries_dropped_the_consuming_connection() {
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
    proxy.wait_consumed(&probe, &queues);

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

    // Several workers route these at once, in any order: wait for every
    // message that is to be delivered (twice: one per subscription).
    let expected_lines: Vec<String> = hostile()
        .into_iter()
        .filter(|(_, _, delivered)| *delivered)
        .map(|(key, _, _)| format!("GOT {}\n", String::from_utf8_lossy(&key)))
        .chain(["GOT good.after\n".to_string()])
        .collect();
    let deadline = Instant::now() + Duration::from_secs(10);
    while expected_lines
        .iter()
        .any(|line| proxy.kamailio.log().matches(line.as_str()).count() < 2)
    {
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

#[test]
fn a_broken_worker_link_lost_its_unreported_deliveries() {
    let module = crate::guard_e2e::hooks_module();
    let probe = AmqpProbe::connect(&system_broker_url()).expect("probe");
    let exchange = unique_name("kzlink");
    let queue = unique_name("kzlink-q");
    probe.declare_exchange(&exchange, "topic").unwrap();
    let routes = format!(
        r#"event_route[kazoo:mod-init] {{
    kazoo_subscribe("{{'exchange':'{exchange}','type':'topic','queue':'{queue}','routing':'#','no_ack':0,'auto_delete':0}}");
}}
event_route[kazoo:consumer-event-link-test] {{
    $shv(runs) = $shv(runs) + 1;
    xlog("L_INFO", "LINK-ROUTE run=$shv(runs)\n");
    if ($shv(runs) == 1) {{
        kazoo_test_break_link("first run");
    }}
}}
request_route {{
    sl_send_reply("200", "OK");
}}
"#
    );
    let (config, _node) = amqp_cfg(
        &system_broker_url(),
        // The link between a worker and the AMQP process: the AMQP process
        // consumes.
        "modparam(\"pv\", \"shvset\", \"runs=i:0\")\nmodparam(\"kazoo\", \"amqp_consumer_workers\", 1)\n\
         modparam(\"kazoo\", \"amqp_worker_consume\", 0)",
        &routes,
    );
    let config = config.replace("{{MODULE}}", module.to_str().unwrap());
    let proxy = Proxy::start(&config);
    proxy.wait_connected(1, 1);
    probe
        .publish(
            &exchange,
            "link.one",
            br#"{"Event-Category":"link","Event-Name":"test"}"#,
        )
        .unwrap();
    assert!(proxy
        .kamailio
        .wait_for_log("dropping the link (test hook)", Duration::from_secs(10)));
    // Returned to the broker, delivered again, acked after the second run.
    assert!(
        proxy
            .kamailio
            .wait_for_log("LINK-ROUTE run=2", Duration::from_secs(10)),
        "{}",
        proxy.kamailio.log()
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    let empty = Some(QueueMessages {
        ready: 0,
        unacked: 0,
    });
    loop {
        let held = system_queue_messages(&queue).unwrap();
        if held == empty {
            break;
        }
        assert!(Instant::now() < deadline, "left on the broker: {held:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(!proxy.kamailio.log().contains("LINK-ROUTE run=3"));
    let status: serde_json::Value =
        serde_json::from_str(proxy.kamcmd(&["kazoo.status"]).trim()).unwrap();
    let consumed = &status["consumed"];
    assert_eq!(consumed["requeued"], 1, "{status}");
    assert_eq!(consumed["redelivered"], 1, "{status}");
    assert_eq!(consumed["acked"], 1, "{status}");
    proxy.assert_alive();
    drop(proxy);
    probe.delete_queue(&queue);
    probe.delete_exchange(&exchange);
}

/// Backpressure: events published faster than their route runs wait on the
/// broker (the module holds no more than the prefetch), every one is routed
/// in the end, and an asynchronous query made meanwhile is resumed ahead of
/// the backlog, long before its timeout.
#[test]
fn a_flood_piled_up_in_the_amqp_process_and_delayed_resumes() {
    a_flood_waits_on_the_broker(false);
}

/// The same with the workers consuming the flood themselves: each holds
/// at most the prefetch, and the resume still goes ahead of the backlog.
#[test]
fn a_flood_the_workers_consume_waits_on_the_broker_and_resumes_go_ahead() {
    a_flood_waits_on_the_broker(true);
}

fn a_flood_waits_on_the_broker(workers_consume: bool) {
    const EVENTS: usize = 1000;
    const PREFETCH: u64 = 16;
    const WORKERS: u64 = 2;
    // What the module may hold unacked: the AMQP process's one consumer's
    // prefetch, or each worker's.
    let held_at_most = if workers_consume {
        PREFETCH * WORKERS
    } else {
        PREFETCH
    };
    let bed = crate::amqp_query_e2e::Bed::start_with(|exchange| {
        let params = format!(
            "loadmodule \"cfgutils.so\"\n\
             modparam(\"kazoo\", \"amqp_consumer_workers\", {WORKERS})\n\
             modparam(\"kazoo\", \"amqp_consumer_prefetch\", {PREFETCH})\n\
             modparam(\"kazoo\", \"amqp_worker_consume\", {})",
            u8::from(workers_consume)
        );
        let routes = format!(
            "event_route[kazoo:mod-init]\n{{\n    kazoo_subscribe(\"{{'exchange': '{exchange}', \
             'type': 'topic', 'queue': '{exchange}-flood', 'routing': 'flood.#'}}\");\n}}\n\
             event_route[kazoo:consumer-event-flood-slow]\n{{\n    usleep(20000);\n}}\n"
        );
        (params, routes)
    });
    let queue = format!("{}-flood", bed.exchange);
    // 1000 routes of 20 ms on 2 workers: 10 s of work.
    for n in 0..EVENTS {
        let body = format!("{{\"Event-Category\":\"flood\",\"Event-Name\":\"slow\",\"N\":{n}}}");
        bed.probe
            .publish(&bed.exchange, &format!("flood.{n}"), body.as_bytes())
            .unwrap();
    }
    let held = kamailio_test::system_queue_messages(&queue)
        .unwrap()
        .expect("the flood queue");
    assert!(held.ready > 0, "the backlog waits on the broker: {held:?}");
    assert!(
        held.unacked <= held_at_most,
        "beyond the prefetch: {held:?}"
    );

    let reply_hex = kamailio_test::hex_encode(br#"{"Msg-ID":"{{MSGID}}","Answer":"ahead"}"#);
    let payload = format!("{{'Event-Category':'q','X-Test-Reply-Hex':'{reply_hex}'}}");
    let started = Instant::now();
    let reply = bed.query("async", "q.ahead", &payload, "", Some(4000));
    let elapsed = started.elapsed();
    assert_eq!((reply.code, reply.reason.as_str()), (200, "ASYNC OK"));
    assert!(
        elapsed < Duration::from_millis(1500),
        "resumed after {elapsed:?}, behind the backlog"
    );

    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let left = kamailio_test::system_queue_messages(&queue)
            .unwrap()
            .expect("the flood queue");
        if left.ready + left.unacked == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "not drained: {left:?}");
        std::thread::sleep(Duration::from_millis(500));
    }
    let text = bed.proxy.kamcmd(&["kazoo.subscriptions"]);
    let subscriptions: serde_json::Value = serde_json::from_str(text.trim()).unwrap();
    assert_eq!(subscriptions[0]["consumed"], EVENTS, "{subscriptions}");
    bed.proxy.assert_alive();
}
