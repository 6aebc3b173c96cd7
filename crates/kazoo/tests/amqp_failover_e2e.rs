//! Broker failures through a running Kamailio, with private RabbitMQ nodes:
//! a broker-side close and a broker restart are noticed at once, the module
//! reconnects, replays its topology and works again; while no broker is
//! connected every publish and query fails fast with -1 (the C module
//! black-holes publishes and returns 1); with two brokers, traffic moves to
//! the second when the first stops.
use crate::common;

use std::time::{Duration, Instant};

use common::{amqp_cfg, int, Proxy};
use kamailio_test::{unique_name, AmqpProbe, RabbitNode};

const ROUTES: &str = r#"
event_route[kazoo:mod-init]
{
    kazoo_subscribe("{'exchange': 'kzfail.events', 'type': 'topic', 'queue': 'kzfail-events-q', 'routing': '#'}");
}

event_route[kazoo:consumer-event]
{
    xlog("L_INFO", "EVENT rk=$kzRK\n");
}

request_route {
    if (is_method("OPTIONS")) { sl_send_reply("200", "OK"); exit; }
    $var(ex) = $(hdr(X-A){s.decode.hexa});
    $var(rk) = $(hdr(X-B){s.decode.hexa});
    if ($rU == "query") {
        $var(kz_timeout) = 800;
        kazoo_query("$var(ex)", "$var(rk)", "{'Event-Category':'q','X-Test-Reply-Hex':'7b224d73672d4944223a227b7b4d534749447d7d227d'}");
    } else {
        kazoo_publish("$var(ex)", "$var(rk)", "{'Event-Category':'failover'}");
    }
    append_to_reply("X-RC: $rc\r\n");
    sl_send_reply("200", "OK");
}
"#;

const PARAMS: &str = "modparam(\"kazoo\", \"amqp_query_timeout_avp\", \"$var(kz_timeout)\")\n\
                      modparam(\"kazoo\", \"amqp_publish_timeout\", 1000)";

fn publish(proxy: &Proxy, exchange: &str, routing_key: &str) -> (i64, Duration) {
    let started = Instant::now();
    let reply = proxy.call("publish", &[exchange.as_bytes(), routing_key.as_bytes()]);
    (int(&reply, "X-RC"), started.elapsed())
}

/// A capture on `exchange` of a broker, declared afresh (a restarted node
/// has lost its non-durable exchanges).
fn capture(url: &str, exchange: &str) -> (AmqpProbe, String) {
    let probe = AmqpProbe::connect(url).expect("probe");
    probe.declare_exchange(exchange, "topic").unwrap();
    let queue = probe.capture(exchange, "#").unwrap();
    (probe, queue)
}

/// Waits until the module consumes its subscription queue again (it is
/// auto-deleted when the consumer's connection goes).
fn wait_subscribed(probe: &AmqpProbe) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while probe
        .queue_counts("kzfail-events-q")
        .map(|c| c.1)
        .unwrap_or(0)
        == 0
    {
        assert!(
            Instant::now() < deadline,
            "the subscription was not replayed"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Publishes until one is confirmed (the module may still be replaying its
/// topology), each bounded, and returns how many tries it took.
fn publish_until_confirmed(proxy: &Proxy, exchange: &str) -> usize {
    for attempt in 1..=100 {
        let (rc, took) = publish(proxy, exchange, "again");
        assert!(
            took < Duration::from_millis(1800),
            "a publish took {took:?}"
        );
        if rc == 1 {
            return attempt;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("publishing never recovered:\n{}", proxy.kamailio.log());
}

#[test]
fn close_and_restart_are_survived_with_bounded_calls() {
    let mut node = RabbitNode::start().expect("private RabbitMQ node");
    let exchange = unique_name("kzfail");
    let (config, _node_name) = amqp_cfg(&node.url(), PARAMS, ROUTES);
    let proxy = Proxy::start(&config);
    proxy.wait_connected(1, 1);
    let (probe, queue) = capture(&node.url(), &exchange);
    assert_eq!(publish(&proxy, &exchange, "first").0, 1);
    assert!(probe.get(&queue, Duration::from_secs(2)).unwrap().is_some());

    // 1. The broker closes every connection.
    node.rabbitmqctl(&["close_all_connections", "kazoo test"])
        .unwrap();
    drop(probe);
    proxy.wait_connected(1, 2);
    let (probe, queue) = capture(&node.url(), &exchange);
    publish_until_confirmed(&proxy, &exchange);
    assert!(probe.get(&queue, Duration::from_secs(2)).unwrap().is_some());
    // The subscription was declared again and consumes.
    wait_subscribed(&probe);
    probe
        .publish("kzfail.events", "after.close", b"{}")
        .unwrap();
    assert!(proxy
        .kamailio
        .wait_for_log("EVENT rk=after.close", Duration::from_secs(10)));
    drop(probe);

    // 2. The broker stops: calls fail fast, nothing hangs.
    node.stop().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let (rc, took) = publish(&proxy, &exchange, "down");
    assert_eq!(rc, -1, "no broker: the script must know");
    assert!(
        took < Duration::from_millis(1500),
        "publish while down took {took:?}"
    );
    let started = Instant::now();
    let reply = proxy.call("query", &[exchange.as_bytes(), b"q.down"]);
    assert_eq!(int(&reply, "X-RC"), -1);
    assert!(started.elapsed() < Duration::from_millis(1500));

    // 3. It comes back: reconnect, topology replay, publish and consume.
    node.start_again().unwrap();
    proxy.wait_connected(1, 3);
    let (probe, queue) = capture(&node.url(), &exchange);
    publish_until_confirmed(&proxy, &exchange);
    assert!(probe.get(&queue, Duration::from_secs(2)).unwrap().is_some());
    wait_subscribed(&probe);
    probe
        .publish("kzfail.events", "after.restart", b"{}")
        .unwrap();
    assert!(proxy
        .kamailio
        .wait_for_log("EVENT rk=after.restart", Duration::from_secs(10)));
    // A query is answered again (reply queues replayed).
    let responder = probe
        .responder(&exchange, "q.#", |request| {
            let id = kamailio_test::msg_id_of(request);
            vec![(
                Duration::ZERO,
                format!("{{\"Msg-ID\":\"{id}\",\"Back\":true}}").into_bytes(),
            )]
        })
        .unwrap();
    let reply = proxy.call("query", &[exchange.as_bytes(), b"q.back"]);
    assert_eq!(int(&reply, "X-RC"), 1, "{}", proxy.kamailio.log());
    drop(responder);
    proxy.assert_alive();
    let log = proxy.kamailio.log();
    assert!(
        log.contains("connection closed") || log.contains("disconnected"),
        "{log}"
    );
}

#[test]
fn with_two_brokers_traffic_moves_to_the_second() {
    let mut first = RabbitNode::start().expect("first node");
    let second = RabbitNode::start().expect("second node");
    let exchange = unique_name("kzfailover");
    let params = format!(
        "{PARAMS}\nmodparam(\"kazoo\", \"amqp_connection\", \"{}\")",
        second.url()
    );
    let (config, _node_name) = amqp_cfg(&first.url(), &params, ROUTES);
    let proxy = Proxy::start(&config);
    proxy.wait_connected(1, 1);
    proxy.wait_connected(2, 1);
    let (probe1, queue1) = capture(&first.url(), &exchange);
    let (probe2, queue2) = capture(&second.url(), &exchange);
    assert_eq!(publish(&proxy, &exchange, "to.first").0, 1);
    assert!(probe1
        .get(&queue1, Duration::from_secs(2))
        .unwrap()
        .is_some());
    assert!(probe2
        .get(&queue2, Duration::from_millis(200))
        .unwrap()
        .is_none());
    // consumer://2/ addresses the second broker directly.
    assert_eq!(publish(&proxy, &exchange, "consumer://2/direct").0, 1);
    let direct = probe2
        .get(&queue2, Duration::from_secs(2))
        .unwrap()
        .unwrap();
    assert_eq!(direct.routing_key, "direct");

    drop(probe1);
    first.stop().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let (rc, took) = publish(&proxy, &exchange, "to.second");
    assert_eq!(rc, 1, "failover to the second broker");
    assert!(took < Duration::from_millis(1500));
    let moved = probe2
        .get(&queue2, Duration::from_secs(2))
        .unwrap()
        .unwrap();
    assert_eq!(moved.routing_key, "to.second");
    assert!(
        moved.text().contains("-<2>-targeted-"),
        "Server-ID names broker 2: {}",
        moved.text()
    );
    // consumer://1/ has no failover: it fails fast.
    let (rc, took) = publish(&proxy, &exchange, "consumer://1/nowhere");
    assert_eq!(rc, -1);
    assert!(took < Duration::from_millis(1500));
    proxy.assert_alive();
}
