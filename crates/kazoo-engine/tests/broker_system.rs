//! Broker layer against the system RabbitMQ (127.0.0.1:5672): publish
//! properties and confirms, declared topology, deliveries and acks, replies,
//! and subscriptions the broker refuses.
use crate::broker_support;

use std::collections::BTreeMap;
use std::time::Duration;

use broker_support::*;
use kamailio_test::{system_broker_url, system_rabbitmqctl, unique_name};
use kazoo_engine::broker::{Brokers, Event, PublishError, PublishProperties, Role, Source};
use kazoo_engine::subscription::{ExchangeBinding, ExchangeFlags, QueueFlags};
use lapin::options::{BasicGetOptions, ExchangeDeclareOptions, QueueDeclareOptions};
use lapin::{BasicProperties, ExchangeKind};
use tokio::time::Instant;

const WAIT: Duration = Duration::from_secs(15);

fn body(id: u32, idx: u32) -> Vec<u8> {
    format!("{{ \"broker\": {id}, \"idx\": {idx} }}").into_bytes()
}

/// `rabbitmqctl -q <list> <columns>` rows, split on tabs.
fn rows(args: &[&str]) -> Vec<Vec<String>> {
    let mut full = vec!["-q"];
    full.extend_from_slice(args);
    let out = system_rabbitmqctl(&full).expect("rabbitmqctl");
    out.lines()
        .map(|l| l.split('\t').map(str::to_string).collect())
        .collect()
}

#[tokio::test]
async fn publish_sets_only_content_type_and_headers_and_waits_for_confirms() {
    let url = system_broker_url();
    let raw = Raw::connect(&url).await;
    let (exchange, queue) = direct_exchange(&raw, "kztest-pub").await;

    let mut opts = options(&unique_name("kztest"));
    opts.consumer_connections = 0;
    let (brokers, mut events) = Brokers::start(vec![broker(&url, 1, "local")], vec![], opts);
    wait_connected(&mut events, &[(1, Role::Publisher)], WAIT).await;
    assert!(brokers.is_connected(1));
    assert!(!brokers.is_connected(2));

    let headers = awkward_headers();
    let deadline = Instant::now() + Duration::from_secs(5);
    let published = brokers
        .publish(None, &exchange, "rk", &headers, body, deadline)
        .await
        .expect("confirmed");
    assert_eq!(published.broker_id, 1);
    assert!(published.idx < 3);

    let got = raw
        .channel
        .basic_get(queue.as_str().into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap()
        .expect("the published message is in the queue");
    assert_eq!(got.delivery.data, body(1, published.idx));
    assert_eq!(got.delivery.routing_key.as_str(), "rk");
    let expected = awkward_headers_properties();
    assert_eq!(got.delivery.properties, expected);
    let names: Vec<&str> = got
        .delivery
        .properties
        .headers()
        .as_ref()
        .unwrap()
        .inner()
        .keys()
        .map(|k| k.as_str())
        .collect();
    assert_eq!(names, ["alpha", "zeta"]);

    // Without headers: content_type only. The Server-ID index goes round-robin.
    let mut idxs = vec![published.idx];
    for _ in 0..3 {
        let p = brokers
            .publish(Some(1), &exchange, "rk", &[], body, deadline)
            .await
            .expect("confirmed");
        assert_eq!(p.broker_id, 1);
        idxs.push(p.idx);
        let got = raw
            .channel
            .basic_get(queue.as_str().into(), BasicGetOptions { no_ack: true })
            .await
            .unwrap()
            .expect("message");
        assert_eq!(got.delivery.data, body(1, p.idx));
        assert_eq!(
            got.delivery.properties,
            BasicProperties::default().with_content_type("application/json".into())
        );
    }
    let first = idxs[0];
    assert_eq!(idxs, [first, (first + 1) % 3, (first + 2) % 3, first]);

    // A publish to a missing exchange fails with the broker's reason (the C
    // module reported success and lost that channel for good); the next
    // publish works on a fresh channel.
    let missing = unique_name("kztest-missing-x");
    let started = Instant::now();
    let err = brokers
        .publish(None, &missing, "rk", &[], body, deadline)
        .await
        .unwrap_err();
    match &err {
        PublishError::Closed(reason) => assert!(reason.contains("404"), "{reason}"),
        other => panic!("expected Closed(404 ...), got {other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(3));
    brokers
        .publish(
            None,
            &exchange,
            "rk",
            &[],
            body,
            Instant::now() + Duration::from_secs(5),
        )
        .await
        .expect("publishing works again after the channel error");

    assert_eq!(
        brokers
            .publish(Some(7), &exchange, "rk", &[], body, deadline)
            .await,
        Err(PublishError::UnknownBroker(7))
    );
    let long = "k".repeat(256);
    assert!(matches!(
        brokers
            .publish(None, &exchange, &long, &[], body, deadline)
            .await,
        Err(PublishError::Invalid(_))
    ));
    let bad_header = vec![(b"\xff".to_vec(), b"v".to_vec())];
    assert!(matches!(
        brokers
            .publish(None, &exchange, "rk", &bad_header, body, deadline)
            .await,
        Err(PublishError::Invalid(_))
    ));

    brokers.close().await;
    raw.delete(&[&exchange], &[&queue]).await;
    raw.close().await;
}

#[tokio::test]
async fn topology_deliveries_acks_and_replies() {
    topology_deliveries_acks_and_replies_on(true).await;
}

/// The escape hatch (`amqp_native_client 0`) behaves the same.
#[tokio::test]
async fn topology_deliveries_acks_and_replies_over_lapin() {
    topology_deliveries_acks_and_replies_on(false).await;
}

async fn topology_deliveries_acks_and_replies_on(native_client: bool) {
    let url = system_broker_url();
    let raw = Raw::connect(&url).await;
    let node = unique_name("kztest");
    let exchange = unique_name("kztest-sub-x");
    let source1 = unique_name("kztest-src1-x");
    let source2 = unique_name("kztest-src2-x");
    let queue = unique_name("kztest-sub-q");
    let mut sub = subscription(&exchange, "topic", &queue, &["a.b", "c.*"]);
    sub.exchange_flags = ExchangeFlags {
        auto_delete: true,
        ..ExchangeFlags::default()
    };
    sub.queue_flags = QueueFlags {
        passive: false,
        durable: false,
        exclusive: false,
        auto_delete: false,
        quorum: false,
    };
    sub.exchange_bindings = vec![
        ExchangeBinding {
            source: source1.clone(),
            exchange_type: "direct".into(),
            flags: ExchangeFlags::default(),
            routing: vec!["a.b".into()],
        },
        ExchangeBinding {
            source: source2.clone(),
            exchange_type: "topic".into(),
            flags: ExchangeFlags::default(),
            routing: vec!["s2.#".into(), "c.*".into()],
        },
    ];
    sub.no_ack = false;
    let mut opts = options(&node);
    opts.consumer_connections = 2;
    opts.prefetch = 10;
    opts.native_client = native_client;
    let (brokers, mut events) = Brokers::start(vec![broker(&url, 1, "local")], vec![sub], opts);
    wait_connected(
        &mut events,
        &[
            (1, Role::Publisher),
            (1, Role::Consumer(0)),
            (1, Role::Consumer(1)),
        ],
        WAIT,
    )
    .await;

    // A message stays unacked until its Acker acks it.
    raw.publish(&exchange, "a.b", b"one").await;
    let d = next_delivery(&mut events, WAIT).await;
    assert_eq!(d.source, Source::Subscription { index: 0 });
    assert_eq!((d.broker_id, d.zone.as_str()), (1, "local"));
    assert_eq!((d.routing_key.as_str(), &d.body[..]), ("a.b", &b"one"[..]));
    assert!(!d.redelivered);
    assert!(
        d.ack.requeues_on_drop(),
        "no_ack false: requeued if dropped"
    );
    let held = d.ack;

    let (queue_rows, exchange_rows, binding_rows) = tokio::join!(
        blocking(|| rows(&[
            "list_queues",
            "name",
            "durable",
            "auto_delete",
            "exclusive",
            "messages_unacknowledged"
        ])),
        blocking(|| rows(&[
            "list_exchanges",
            "name",
            "type",
            "durable",
            "auto_delete",
            "internal"
        ])),
        blocking(|| rows(&[
            "list_bindings",
            "source_name",
            "destination_name",
            "destination_kind",
            "routing_key"
        ])),
    );
    let find = |rows: &[Vec<String>], name: &str| -> Vec<String> {
        rows.iter()
            .find(|r| r[0] == name)
            .unwrap_or_else(|| panic!("{name} not listed"))[1..]
            .to_vec()
    };
    for idx in 0..3 {
        let name = format!("kamailio@{node}-<1-{idx}>");
        assert_eq!(
            find(&queue_rows, &name),
            ["true", "true", "false", "0"],
            "{name}"
        );
    }
    assert!(!queue_rows
        .iter()
        .any(|r| r[0] == format!("kamailio@{node}-<1-3>")));
    assert_eq!(find(&queue_rows, &queue), ["false", "false", "false", "1"]);
    assert_eq!(
        find(&exchange_rows, "targeted"),
        ["direct", "false", "false", "false"]
    );
    assert_eq!(
        find(&exchange_rows, &exchange),
        ["topic", "false", "true", "false"]
    );
    assert_eq!(
        find(&exchange_rows, &source1),
        ["direct", "false", "false", "false"]
    );
    assert_eq!(
        find(&exchange_rows, &source2),
        ["topic", "false", "false", "false"]
    );
    let mut bindings: Vec<Vec<String>> = binding_rows
        .into_iter()
        .filter(|r| r.len() == 4 && (r[1].contains(&node) || [&exchange, &queue].contains(&&r[1])))
        .collect();
    bindings.sort();
    let row = |s: &str, d: &str, k: &str, rk: &str| {
        vec![s.to_string(), d.to_string(), k.to_string(), rk.to_string()]
    };
    let mut expected = vec![
        // the default exchange's implicit bindings
        row("", &queue, "queue", &queue),
        row(&exchange, &queue, "queue", "a.b"),
        row(&exchange, &queue, "queue", "c.*"),
        row(&source1, &exchange, "exchange", "a.b"),
        row(&source2, &exchange, "exchange", "c.*"),
        row(&source2, &exchange, "exchange", "s2.#"),
    ];
    for idx in 0..3 {
        let q = format!("kamailio@{node}-<1-{idx}>");
        expected.push(row("", &q, "queue", &q));
        expected.push(row(
            "targeted",
            &q,
            "queue",
            &format!("kamailio@{node}-<1>-targeted-{idx}"),
        ));
    }
    expected.sort();
    assert_eq!(bindings, expected);

    // reject(requeue) redelivers; then ack.
    held.reject(true);
    let d = next_delivery(&mut events, WAIT).await;
    assert_eq!((&d.body[..], d.redelivered), (&b"one"[..], true));
    d.ack.ack();
    // Through the exchange-bindings (the routing key must match at both
    // hops) and the second routing key.
    raw.publish(&source2, "c.two", b"two").await;
    raw.publish(&source2, "s2.x", b"never").await;
    raw.publish(&source1, "a.b", b"three").await;
    raw.publish(&exchange, "c.d", b"four").await;
    raw.publish(&exchange, "unbound", b"never").await;
    let mut got = Vec::new();
    for _ in 0..3 {
        let d = next_delivery(&mut events, WAIT).await;
        assert_eq!(d.source, Source::Subscription { index: 0 });
        got.push((
            d.routing_key.clone(),
            String::from_utf8(d.body.clone()).unwrap(),
        ));
        d.ack.ack();
    }
    got.sort();
    assert_eq!(
        got,
        [
            ("a.b".to_string(), "three".to_string()),
            ("c.d".to_string(), "four".to_string()),
            ("c.two".to_string(), "two".to_string())
        ]
    );
    // A dropped Acker does not leave the message unacked: it is requeued.
    raw.publish(&exchange, "a.b", b"dropped").await;
    let d = next_delivery(&mut events, WAIT).await;
    assert_eq!(&d.body[..], b"dropped");
    drop(d);
    let d = next_delivery(&mut events, WAIT).await;
    assert_eq!((&d.body[..], d.redelivered), (&b"dropped"[..], true));
    d.ack.ack();

    // A reply to a Server-ID arrives from its reply queue, without an Acker.
    raw.publish(
        "targeted",
        &format!("kamailio@{node}-<1>-targeted-2"),
        b"{ \"reply\": 1 }",
    )
    .await;
    let d = next_delivery(&mut events, WAIT).await;
    assert_eq!(d.source, Source::Reply { idx: 2 });
    assert_eq!(d.routing_key, format!("kamailio@{node}-<1>-targeted-2"));
    assert_eq!(&d.body[..], b"{ \"reply\": 1 }");
    // Replies are consumed with acks too (the prefetch bounds them), and
    // acked when dropped unused.
    assert!(!d.ack.requeues_on_drop());
    d.ack.ack();

    // Every ack reached the broker.
    let q = queue.clone();
    let mut unacked = String::new();
    for _ in 0..5 {
        let r = blocking(|| rows(&["list_queues", "name", "messages_unacknowledged", "messages"]))
            .await;
        unacked = r
            .iter()
            .find(|r| r[0] == q)
            .map(|r| r[1..].join(" "))
            .unwrap_or_default();
        if unacked == "0 0" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(unacked, "0 0");

    brokers.close().await;
    raw.delete(&[&exchange, &source1, &source2], &[&queue])
        .await;
    // The reply queues went with their consumers (auto_delete).
    let r = blocking(|| rows(&["list_queues", "name"])).await;
    assert!(
        !r.iter().any(|r| r[0].contains(&node)),
        "reply queues left: {r:?}"
    );
    raw.close().await;
}

#[tokio::test]
async fn refused_subscriptions_do_not_stop_the_others_or_the_replies() {
    let url = system_broker_url();
    let raw = Raw::connect(&url).await;
    let node = unique_name("kztest");
    let (xa, qa) = (unique_name("kztest-a-x"), unique_name("kztest-a-q"));
    let (xb, qb) = (unique_name("kztest-b-x"), unique_name("kztest-b-q"));
    let (xc, qc) = (unique_name("kztest-c-x"), unique_name("kztest-c-q"));
    // qb exists durable: declaring it transient is a 406 (channel level).
    raw.channel
        .queue_declare(
            qb.as_str().into(),
            QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            },
            no_args(),
        )
        .await
        .unwrap();
    let subs = vec![
        subscription(&xa, "direct", &qa, &["a"]),
        subscription(&xb, "direct", &qb, &["b"]),
        // An exchange type the broker does not know: a connection-level 503.
        subscription(&xc, "x-no-such-type", &qc, &["c"]),
        subscription(&xa, "direct", "", &["late"]),
    ];
    let (brokers, mut events) =
        Brokers::start(vec![broker(&url, 1, "local")], subs, options(&node));

    let mut failed: BTreeMap<usize, Vec<String>> = BTreeMap::new();
    let mut disconnects = Vec::new();
    let mut connected = false;
    let deadline = Instant::now() + WAIT;
    while !(connected && failed.len() == 2) {
        let event = tokio::time::timeout_at(deadline, events.recv())
            .await
            .unwrap_or_else(|_| panic!("timeout; failed {failed:?}, disconnects {disconnects:?}"))
            .unwrap();
        match event {
            Event::SubscriptionFailed {
                index,
                broker_id,
                reason,
            } => {
                assert_eq!(broker_id, 1);
                failed.entry(index).or_default().push(reason);
            }
            Event::Disconnected { role, reason, .. } => {
                assert_eq!(role, Role::Consumer(0));
                disconnects.push(reason);
            }
            Event::Connected {
                role: Role::Consumer(0),
                ..
            } => connected = true,
            Event::Connected { .. } => {}
            Event::SubscriptionWorking { index, .. } => {
                panic!("subscription {index} cannot work here")
            }
            Event::Consumed(d) => panic!("unexpected {d:?}"),
        }
    }
    assert!(failed[&1][0].contains("406"), "{:?}", failed[&1]);
    assert!(failed[&2][0].contains("503"), "{:?}", failed[&2]);
    assert!(
        failed[&2][0].contains("no longer declared"),
        "{:?}",
        failed[&2]
    );
    assert_eq!(disconnects.len(), 1, "{disconnects:?}");
    assert!(disconnects[0].contains("503"), "{disconnects:?}");

    // The rest works: the good subscriptions (including the one declared
    // after the refused one) and the replies.
    raw.publish(&xa, "a", b"for a").await;
    raw.publish(&xa, "late", b"for late").await;
    raw.publish(
        "targeted",
        &format!("kamailio@{node}-<1>-targeted-0"),
        b"reply",
    )
    .await;
    let mut got = Vec::new();
    for _ in 0..3 {
        let d = next_delivery(&mut events, WAIT).await;
        got.push((d.source, String::from_utf8(d.body).unwrap()));
    }
    got.sort_by_key(|(s, _)| format!("{s:?}"));
    assert_eq!(
        got,
        [
            (Source::Reply { idx: 0 }, "reply".to_string()),
            (Source::Subscription { index: 0 }, "for a".to_string()),
            (Source::Subscription { index: 3 }, "for late".to_string()),
        ]
    );
    // Each failure was reported once, not again on the reconnect or retries.
    let quiet = tokio::time::timeout(Duration::from_millis(1500), events.recv()).await;
    assert!(quiet.is_err(), "unexpected event {quiet:?}");
    assert_eq!(failed[&1].len(), 1);
    assert_eq!(failed[&2].len(), 1);

    brokers.close().await;
    raw.delete(&[&xa, &xb, &xc], &[&qa, &qb, &qc]).await;
    raw.close().await;
}

#[tokio::test]
async fn unreachable_and_refused_brokers_are_reported_on_every_attempt_and_fail_fast() {
    let password = "not-the-password-8231";
    let config = vec![
        broker("amqp://guest:guest@127.0.0.1:1", 1, "local"),
        broker(
            &format!("amqp://guest:{password}@127.0.0.1:5672"),
            2,
            "local",
        ),
    ];
    let (brokers, mut events) = Brokers::start(config, vec![], options(&unique_name("kztest")));
    let mut reasons: BTreeMap<(u32, String), Vec<String>> = BTreeMap::new();
    // Several reconnect attempts happen in this time (100, 200, 400, 800 ms):
    // each failed one is reported (the C module fires `closed` on each).
    let until = Instant::now() + Duration::from_millis(2500);
    while let Ok(Some(event)) = tokio::time::timeout_at(until, events.recv()).await {
        match event {
            Event::Disconnected {
                broker_id,
                role,
                reason,
                ..
            } => reasons
                .entry((broker_id, role.to_string()))
                .or_default()
                .push(reason),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(reasons.len(), 4, "{reasons:?}");
    for ((id, role), reported) in &reasons {
        assert!(
            (3..=6).contains(&reported.len()),
            "broker {id} {role}: {} reports in 2.5 s: {reported:?}",
            reported.len()
        );
        for reason in reported {
            assert!(!reason.contains(password), "{reason}");
            match id {
                1 => assert!(reason.contains("refused"), "{reason}"),
                _ => assert!(reason.contains("403 ACCESS_REFUSED"), "{reason}"),
            }
        }
    }
    assert!(!brokers.is_connected(1) && !brokers.is_connected(2));
    let started = Instant::now();
    let far = Instant::now() + Duration::from_secs(10);
    assert_eq!(
        brokers
            .publish(None, "amq.direct", "rk", &[], body, far)
            .await,
        Err(PublishError::NoBrokerConnected)
    );
    assert_eq!(
        brokers
            .publish(Some(2), "amq.direct", "rk", &[], body, far)
            .await,
        Err(PublishError::NoBrokerConnected)
    );
    assert!(started.elapsed() < Duration::from_millis(100));
    brokers.close().await;
}

#[tokio::test]
async fn secondary_zone_gets_federated_subscriptions_only_and_no_reply_queues() {
    let url = system_broker_url();
    let raw = Raw::connect(&url).await;
    let node = unique_name("kztest");
    let (xa, qa) = (unique_name("kztest-local-x"), unique_name("kztest-local-q"));
    let xb = unique_name("kztest-fed-x");
    let mut federated = subscription(&xb, "fanout", "", &[""]);
    federated.federate = true;
    let subs = vec![subscription(&xa, "direct", &qa, &["a"]), federated];
    let mut opts = options(&node);
    opts.heartbeat_secs = 7;
    let config = vec![broker(&url, 1, "local"), broker(&url, 2, "remote")];
    let (brokers, mut events) = Brokers::start(config, subs, opts);
    wait_connected(
        &mut events,
        &[
            (1, Role::Publisher),
            (1, Role::Consumer(0)),
            (2, Role::Publisher),
            (2, Role::Consumer(0)),
        ],
        WAIT,
    )
    .await;

    // Reply queues on the primary broker only.
    let passive = QueueDeclareOptions {
        passive: true,
        ..QueueDeclareOptions::default()
    };
    for (id, exists) in [(1, true), (2, false)] {
        let channel = raw.connection.create_channel().await.unwrap();
        let name = format!("kamailio@{node}-<{id}-0>");
        let found = channel
            .queue_declare(name.as_str().into(), passive, no_args())
            .await;
        assert_eq!(found.is_ok(), exists, "{name}: {found:?}");
    }
    // Heartbeats as configured (the broker proposed 60 s).
    let connections =
        blocking(|| rows(&["list_connections", "timeout", "client_properties"])).await;
    let ours: Vec<_> = connections
        .iter()
        .filter(|r| r.last().is_some_and(|p| p.contains(&node)))
        .collect();
    assert_eq!(ours.len(), 4, "{connections:?}");
    assert!(ours.iter().all(|r| r[0] == "7"), "{ours:?}");

    // The federated subscription is consumed through both brokers, the
    // other one through the primary broker only.
    raw.publish(&xb, "", b"federated").await;
    raw.publish(&xa, "a", b"local").await;
    let mut got = Vec::new();
    for _ in 0..3 {
        let d = next_delivery(&mut events, WAIT).await;
        got.push((d.broker_id, d.source, String::from_utf8(d.body).unwrap()));
    }
    got.sort_by_key(|g| format!("{g:?}"));
    assert_eq!(
        got,
        [
            (1, Source::Subscription { index: 0 }, "local".to_string()),
            (
                1,
                Source::Subscription { index: 1 },
                "federated".to_string()
            ),
            (
                2,
                Source::Subscription { index: 1 },
                "federated".to_string()
            ),
        ]
    );
    let quiet = tokio::time::timeout(Duration::from_millis(300), events.recv()).await;
    assert!(quiet.is_err(), "unexpected {quiet:?}");

    // Publishes without a target use the primary zone only.
    for _ in 0..2 {
        let p = brokers
            .publish(None, &xa, "nowhere", &[], body, Instant::now() + WAIT)
            .await
            .unwrap();
        assert_eq!(p.broker_id, 1);
    }
    let p = brokers
        .publish(Some(2), &xa, "nowhere", &[], body, Instant::now() + WAIT)
        .await
        .unwrap();
    assert_eq!(p.broker_id, 2);

    brokers.close().await;
    raw.delete(&[&xa, &xb], &[&qa]).await;
    raw.close().await;
}

/// A peer that accepts TCP but never speaks AMQP: the attempt ends after the
/// login timeout and its socket is closed (lapin alone would keep its IO
/// thread and the socket for ever, one more per attempt).
#[tokio::test]
async fn a_silent_peer_is_given_up_and_its_socket_closed() {
    use std::io::Read;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let peer = tokio::task::spawn_blocking(move || {
        let (mut socket, _) = listener.accept().unwrap();
        let started = std::time::Instant::now();
        socket
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let mut received = Vec::new();
        let mut buf = [0u8; 64];
        loop {
            match socket.read(&mut buf) {
                Ok(0) => return (received, started.elapsed()),
                Ok(n) => received.extend_from_slice(&buf[..n]),
                Err(e) => panic!("the client kept the socket open: {e}"),
            }
        }
    });
    let mut opts = options(&unique_name("kztest"));
    opts.consumer_connections = 0;
    let url = format!("amqp://guest:guest@127.0.0.1:{port}");
    let (brokers, mut events) = Brokers::start(vec![broker(&url, 1, "local")], vec![], opts);
    let (received, elapsed) = peer.await.unwrap();
    assert_eq!(received, b"AMQP\x00\x00\x09\x01");
    assert!(
        elapsed >= Duration::from_secs(10) && elapsed < Duration::from_secs(13),
        "{elapsed:?}"
    );
    match tokio::time::timeout(WAIT, events.recv()).await {
        Ok(Some(Event::Disconnected { reason, .. })) => {
            assert!(reason.contains("no AMQP login within"), "{reason}")
        }
        other => panic!("unexpected {other:?}"),
    }
    brokers.close().await;
}

/// A broker that logs in with heartbeats every second, then says nothing:
/// the module's own client sends its heartbeats meanwhile, and gives the
/// broker up after two intervals of silence, not at the next operation's
/// timeout.
#[tokio::test]
async fn a_broker_silent_after_login_is_given_up_after_two_heartbeats() {
    use amq_protocol::frame::{gen_frame, AMQPFrame, WriteContext};
    use amq_protocol::protocol::{connection, AMQPClass};
    use std::io::{Read, Write};
    let frame = |class| {
        gen_frame(&AMQPFrame::Method(0, AMQPClass::Connection(class)))(WriteContext::from(
            Vec::new(),
        ))
        .unwrap()
        .into_inner()
        .0
    };
    let mut login = frame(connection::AMQPMethod::Start(connection::Start {
        version_major: 0,
        version_minor: 9,
        server_properties: Default::default(),
        mechanisms: "PLAIN".into(),
        locales: "en_US".into(),
    }));
    login.extend(frame(connection::AMQPMethod::Tune(connection::Tune {
        channel_max: 2047,
        frame_max: 131_072,
        heartbeat: 1,
    })));
    login.extend(frame(connection::AMQPMethod::OpenOk(connection::OpenOk {})));
    let heartbeat: &[u8] = &[8, 0, 0, 0, 0, 0, 0, 0xCE];
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    // Every connection (publisher, consumer, their retries): the login at
    // once, then silence; whether the client sent a heartbeat.
    let heard = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let peer_heard = heard.clone();
    std::thread::spawn(move || {
        for socket in listener.incoming() {
            let Ok(mut socket) = socket else { return };
            let (login, heard) = (login.clone(), peer_heard.clone());
            std::thread::spawn(move || {
                let mut header = [0u8; 8];
                if socket.read_exact(&mut header).is_err() || socket.write_all(&login).is_err() {
                    return;
                }
                let mut received = Vec::new();
                let mut buf = [0u8; 512];
                while let Ok(n @ 1..) = socket.read(&mut buf) {
                    received.extend_from_slice(&buf[..n]);
                    if received.windows(8).any(|w| w == heartbeat) {
                        heard.store(true, std::sync::atomic::Ordering::Relaxed);
                    }
                }
            });
        }
    });
    let mut opts = options(&unique_name("kztest"));
    opts.reply_queues = 0;
    opts.heartbeat_secs = 0; // the broker's proposal: 1 s
    let url = format!("amqp://guest:guest@127.0.0.1:{port}");
    let (brokers, mut events) = Brokers::start(vec![broker(&url, 1, "local")], vec![], opts);
    let started = Instant::now();
    let mut connected = false;
    let reason = loop {
        match tokio::time::timeout(Duration::from_secs(10), events.recv()).await {
            Ok(Some(Event::Connected {
                role: Role::Consumer(0),
                ..
            })) => connected = true,
            Ok(Some(Event::Disconnected {
                role: Role::Consumer(0),
                reason,
                ..
            })) => break reason,
            Ok(Some(_)) => {}
            other => panic!("the silent broker was not given up: {other:?}"),
        }
    };
    assert!(connected, "the login went through first");
    assert!(reason.contains("no heartbeat from the broker"), "{reason}");
    let elapsed = started.elapsed();
    assert!(elapsed < Duration::from_secs(5), "{elapsed:?}");
    assert!(
        heard.load(std::sync::atomic::Ordering::Relaxed),
        "the client sent no heartbeat while the broker was silent"
    );
    brokers.close().await;
}

/// A subscription that fails at channel level, then on its retry makes the
/// broker close the connection: quarantined from the retry as well.
#[tokio::test]
async fn a_subscription_breaking_the_connection_on_a_retry_is_quarantined() {
    let url = system_broker_url();
    let raw = Raw::connect(&url).await;
    let node = unique_name("kztest");
    let exchange = unique_name("kztest-late-x");
    let source = unique_name("kztest-bad-src-x");
    // Passive: 404 until the test declares the exchange; then its
    // exchange-binding source has a type the broker does not know (503).
    let mut sub = subscription(&exchange, "direct", "", &["k"]);
    sub.exchange_flags.passive = true;
    sub.exchange_bindings = vec![ExchangeBinding {
        source: source.clone(),
        exchange_type: "x-no-such-type".into(),
        flags: ExchangeFlags::default(),
        routing: vec!["k".into()],
    }];
    let (brokers, mut events) =
        Brokers::start(vec![broker(&url, 1, "local")], vec![sub], options(&node));
    let first = wait_for(
        &mut events,
        WAIT,
        "the first failure",
        |e| matches!(e, Event::SubscriptionFailed { .. }),
        |_| None::<()>,
    )
    .await;
    match first {
        Event::SubscriptionFailed {
            index: 0, reason, ..
        } => assert!(reason.contains("404"), "{reason}"),
        other => panic!("unexpected {other:?}"),
    }
    raw.channel
        .exchange_declare(
            exchange.as_str().into(),
            ExchangeKind::Direct,
            ExchangeDeclareOptions::default(),
            no_args(),
        )
        .await
        .unwrap();
    let mut seen = Vec::new();
    let second = wait_for(
        &mut events,
        WAIT,
        "the quarantine",
        |e| matches!(e, Event::SubscriptionFailed { .. }),
        |e| {
            seen.push(format!("{e:?}"));
            None::<()>
        },
    )
    .await;
    match second {
        Event::SubscriptionFailed {
            index: 0, reason, ..
        } => {
            assert!(
                reason.contains("503") && reason.contains("no longer declared"),
                "{reason}"
            )
        }
        other => panic!("unexpected {other:?}"),
    }
    // The connection comes back without it, and replies flow.
    wait_for(
        &mut events,
        WAIT,
        "the reconnect",
        |e| {
            matches!(
                e,
                Event::Connected {
                    role: Role::Consumer(0),
                    ..
                }
            )
        },
        |_| None::<()>,
    )
    .await;
    raw.publish(
        "targeted",
        &format!("kamailio@{node}-<1>-targeted-1"),
        b"reply",
    )
    .await;
    let d = next_delivery(&mut events, WAIT).await;
    assert_eq!(
        (d.source, &d.body[..]),
        (Source::Reply { idx: 1 }, &b"reply"[..])
    );
    let quiet = tokio::time::timeout(Duration::from_millis(1500), events.recv()).await;
    assert!(quiet.is_err(), "unexpected {quiet:?}");

    brokers.close().await;
    raw.delete(&[&exchange, &source], &[]).await;
    raw.close().await;
}

#[tokio::test]
async fn a_mandatory_publish_nobody_takes_comes_back_with_the_brokers_reason() {
    let url = system_broker_url();
    let raw = Raw::connect(&url).await;
    let queue = unique_name("kztest-mandatory-q");
    let bound = unique_name("kztest-bound");
    raw.bound_queue(&queue, "amq.direct", &bound).await;
    let mut opts = options(&unique_name("kztest"));
    opts.consumer_connections = 0;
    let (brokers, mut events) = Brokers::start(vec![broker(&url, 1, "local")], vec![], opts);
    wait_connected(&mut events, &[(1, Role::Publisher)], WAIT).await;
    let mandatory = PublishProperties {
        headers: &[],
        mandatory: true,
        needs_replies: false,
    };
    let deadline = || Instant::now() + Duration::from_secs(5);
    let nowhere = unique_name("kztest-nowhere");

    // Nobody is bound for it: the broker returns it, with its reason.
    let returned = brokers
        .publish_with(None, "amq.direct", &nowhere, mandatory, body, deadline())
        .await;
    match returned {
        Err(PublishError::Returned {
            broker_id,
            reply_code,
            reply_text,
            body: returned_body,
        }) => {
            assert_eq!((broker_id, reply_code), (1, 312));
            assert_eq!(reply_text, "NO_ROUTE");
            assert!(returned_body.starts_with(b"{ \"broker\": 1, \"idx\": "));
        }
        other => panic!("expected a returned message, got {other:?}"),
    }
    // Without mandatory the broker drops it and confirms, as before.
    brokers
        .publish(None, "amq.direct", &nowhere, &[], body, deadline())
        .await
        .expect("a plain publish is confirmed even when nobody takes it");
    // Mandatory and bound: delivered and confirmed; the channel still works.
    brokers
        .publish_with(None, "amq.direct", &bound, mandatory, body, deadline())
        .await
        .expect("a mandatory publish that reaches a queue");
    let got = raw
        .channel
        .basic_get(queue.as_str().into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap()
        .expect("the mandatory message is in its queue");
    assert!(got.delivery.data.starts_with(b"{ \"broker\": 1"));

    // Many at once, bound and not, with the same bodies: each caller gets
    // its own outcome (a return goes to a publish it could be, not to
    // whichever confirm comes next).
    let brokers = std::sync::Arc::new(brokers);
    let mut tasks = tokio::task::JoinSet::new();
    for n in 0..40u32 {
        let delivered = n % 2 == 0;
        let key = if delivered { &bound } else { &nowhere }.clone();
        let brokers = brokers.clone();
        tasks.spawn(async move {
            let outcome = brokers
                .publish_with(None, "amq.direct", &key, mandatory, body, deadline())
                .await;
            (delivered, outcome)
        });
    }
    while let Some(joined) = tasks.join_next().await {
        match joined.unwrap() {
            (true, Ok(_)) | (false, Err(PublishError::Returned { .. })) => {}
            other => panic!("a mandatory publish got another's outcome: {other:?}"),
        }
    }
    if let Ok(brokers) = std::sync::Arc::try_unwrap(brokers) {
        brokers.close().await;
    }
    raw.delete(&[], &[&queue]).await;
    raw.close().await;
}

/// The broker closes the confirm channel over a publish to a missing
/// exchange; the publishes that were in flight on it with it are innocent
/// and are published again, however many such closes come in between.
#[tokio::test]
async fn publishes_next_to_ones_the_broker_refuses_still_succeed() {
    let url = system_broker_url();
    let raw = Raw::connect(&url).await;
    let (exchange, queue) = direct_exchange(&raw, "kztest-mix").await;
    let mut opts = options(&unique_name("kztest"));
    opts.consumer_connections = 0;
    let (brokers, mut events) = Brokers::start(vec![broker(&url, 1, "local")], vec![], opts);
    wait_connected(&mut events, &[(1, Role::Publisher)], WAIT).await;
    let brokers = std::sync::Arc::new(brokers);
    let missing = unique_name("kztest-mix-missing");
    let mut tasks = tokio::task::JoinSet::new();
    for n in 0..60u32 {
        let (brokers, exchange, missing) = (brokers.clone(), exchange.clone(), missing.clone());
        tasks.spawn(async move {
            let bad = n % 6 == 5;
            let target = if bad { &missing } else { &exchange };
            let deadline = Instant::now() + Duration::from_secs(10);
            let result = brokers
                .publish(None, target, "rk", &[], body, deadline)
                .await;
            (bad, result)
        });
    }
    let (mut good, mut refused) = (0, 0);
    while let Some(joined) = tasks.join_next().await {
        match joined.unwrap() {
            (false, Ok(_)) => good += 1,
            (false, Err(e)) => panic!("an innocent publish failed: {e}"),
            (true, Err(PublishError::Closed(reason))) => {
                assert!(reason.contains("404"), "{reason}");
                refused += 1;
            }
            (true, other) => panic!("a publish to a missing exchange: {other:?}"),
        }
    }
    assert_eq!((good, refused), (50, 10));

    // A publish whose caller gave it no time fails, and says nothing about
    // the broker: the next one goes through.
    let passed = Instant::now() - Duration::from_millis(10);
    let too_late = brokers
        .publish(None, &exchange, "rk", &[], body, passed)
        .await;
    assert_eq!(too_late, Err(PublishError::Timeout));
    brokers
        .publish(
            None,
            &exchange,
            "rk",
            &[],
            body,
            Instant::now() + Duration::from_secs(5),
        )
        .await
        .expect("the broker is not taken as unresponsive after a caller's short deadline");
    raw.delete(&[&exchange], &[&queue]).await;
}

/// A query goes only to a broker whose reply queues are consumed: with no
/// consuming connection up it fails at once instead of waiting for a reply
/// that cannot come back; once one is up, it is published.
#[tokio::test]
async fn a_query_needs_a_broker_that_consumes_its_replies() {
    let url = system_broker_url();
    let raw = Raw::connect(&url).await;
    let (exchange, queue) = direct_exchange(&raw, "kztest-q").await;
    let query = PublishProperties {
        headers: &[],
        mandatory: false,
        needs_replies: true,
    };
    let deadline = || Instant::now() + Duration::from_secs(5);

    let mut opts = options(&unique_name("kztest"));
    opts.consumer_connections = 0;
    let (publisher_only, mut events) = Brokers::start(vec![broker(&url, 1, "local")], vec![], opts);
    wait_connected(&mut events, &[(1, Role::Publisher)], WAIT).await;
    let started = Instant::now();
    let refused = publisher_only
        .publish_with(None, &exchange, "rk", query, body, deadline())
        .await;
    assert_eq!(refused, Err(PublishError::NoReplyConsumer));
    assert!(started.elapsed() < Duration::from_millis(100));
    // A plain publish still goes.
    publisher_only
        .publish(None, &exchange, "rk", &[], body, deadline())
        .await
        .expect("a publish needs no reply queue");
    publisher_only.close().await;

    let (both, mut events) = Brokers::start(
        vec![broker(&url, 1, "local")],
        vec![],
        options(&unique_name("kztest")),
    );
    wait_connected(
        &mut events,
        &[(1, Role::Publisher), (1, Role::Consumer(0))],
        WAIT,
    )
    .await;
    both.publish_with(None, &exchange, "rk", query, body, deadline())
        .await
        .expect("published once the reply queues are consumed");
    both.close().await;
    raw.delete(&[&exchange], &[&queue]).await;
}

#[tokio::test]
async fn a_quorum_subscription_declares_a_quorum_queue() {
    let url = system_broker_url();
    let raw = Raw::connect(&url).await;
    let exchange = unique_name("kztest-quorum-x");
    let queue = unique_name("kztest-quorum-q");
    let mut sub = subscription(&exchange, "direct", &queue, &["rk"]);
    sub.queue_flags = QueueFlags {
        passive: false,
        durable: true,
        exclusive: false,
        auto_delete: false,
        quorum: true,
    };
    sub.no_ack = false;
    let mut opts = options(&unique_name("kztest"));
    opts.reply_queues = 0;
    let (brokers, mut events) = start_subscribed(&url, sub, opts).await;

    let q = queue.clone();
    let queues = blocking(move || rows(&["list_queues", "name", "type", "durable"])).await;
    let row = queues.iter().find(|r| r[0] == q).expect("queue declared");
    assert_eq!(row[1..], ["quorum", "true"]);
    raw.publish(&exchange, "rk", b"quorum").await;
    let d = next_delivery(&mut events, WAIT).await;
    assert_eq!(&d.body[..], b"quorum");
    d.ack.ack();

    brokers.close().await;
    raw.delete(&[&exchange], &[&queue]).await;
    raw.close().await;
}

/// Backpressure: a `no_ack` subscription and the reply queues are consumed
/// with acks too, so the broker sends a consumer no more than the prefetch
/// before the service acks (once a worker has the delivery): a flood waits
/// in the broker's queue, not in the module. A `no_ack` delivery dropped
/// unused is acked (at-most-once, what `no_ack` asks for).
#[tokio::test]
async fn the_prefetch_holds_a_flood_on_the_broker_for_no_ack_subscriptions_too() {
    let url = system_broker_url();
    let raw = Raw::connect(&url).await;
    let exchange = unique_name("kztest-flood-x");
    let queue = unique_name("kztest-flood-q");
    let sub = subscription(&exchange, "direct", &queue, &["rk"]);
    assert!(sub.no_ack);
    let mut opts = options(&unique_name("kztest"));
    opts.reply_queues = 0;
    opts.prefetch = 5;
    let (brokers, mut events) = start_subscribed(&url, sub, opts).await;
    for i in 0..100 {
        raw.publish(&exchange, "rk", format!("{{\"n\": {i}}}").as_bytes())
            .await;
    }
    let mut held = Vec::new();
    for _ in 0..5 {
        held.push(next_delivery(&mut events, WAIT).await);
    }
    // No sixth delivery while five are unacked.
    let more = tokio::time::timeout(Duration::from_millis(700), async {
        loop {
            if let Some(Event::Consumed(d)) = events.recv().await {
                return d;
            }
        }
    })
    .await;
    assert!(more.is_err(), "a delivery beyond the prefetch: {more:?}");
    let q = queue.clone();
    let counts = blocking(move || {
        rows(&[
            "list_queues",
            "name",
            "messages_ready",
            "messages_unacknowledged",
        ])
    })
    .await;
    let row = counts.iter().find(|r| r[0] == q).expect("queue declared");
    assert_eq!(row[1..], ["95", "5"]);
    // Settled (one acked, the others dropped: acked too), the rest flows.
    let first = held.remove(0);
    assert!(!first.ack.requeues_on_drop());
    first.ack.ack();
    drop(held);
    let mut bodies = std::collections::BTreeSet::new();
    for _ in 5..100 {
        let d = next_delivery(&mut events, WAIT).await;
        assert!(!d.redelivered, "settled deliveries are not redelivered");
        bodies.insert(d.body.clone());
    }
    assert_eq!(bodies.len(), 95);

    brokers.close().await;
    raw.delete(&[&exchange], &[&queue]).await;
    raw.close().await;
}

/// Acks are coalesced (`basic.ack` with `multiple`): settled out of order,
/// from several threads, mixed with rejects, every delivery is settled
/// exactly once. A `multiple` ack covering a tag another batch still sends
/// alone makes the broker close the channel ("unknown delivery tag") and
/// redeliver what was not settled yet.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acks_settled_out_of_order_from_several_threads_are_each_sent_once() {
    const MESSAGES: usize = 3000;
    let url = system_broker_url();
    let raw = Raw::connect(&url).await;
    let exchange = unique_name("kztest-acks-x");
    let queue = unique_name("kztest-acks-q");
    let mut sub = subscription(&exchange, "direct", &queue, &["rk"]);
    sub.no_ack = false;
    let mut opts = options(&unique_name("kztest"));
    opts.reply_queues = 0;
    opts.prefetch = 64;
    let (brokers, mut events) = start_subscribed(&url, sub, opts).await;
    for i in 0..MESSAGES {
        raw.publish(&exchange, "rk", format!("{{\"n\": {i}}}").as_bytes())
            .await;
    }
    let mut seen = std::collections::BTreeSet::new();
    let mut rejected = 0;
    while seen.len() < MESSAGES {
        // What the broker sent so far: up to the prefetch.
        let mut batch = Vec::new();
        let mut within = WAIT;
        while batch.len() < 64 {
            match tokio::time::timeout(within, events.recv()).await {
                Ok(Some(Event::Consumed(d))) => {
                    assert!(!d.redelivered, "redelivered after {} settled", seen.len());
                    assert!(seen.insert(d.body.clone()), "delivered twice");
                    batch.push(d);
                }
                Ok(Some(Event::SubscriptionWorking { .. })) => {}
                Ok(other) => panic!("after {} deliveries: {other:?}", seen.len()),
                Err(_) if batch.is_empty() => panic!("stalled after {}", seen.len()),
                Err(_) => break,
            }
            within = Duration::from_millis(20);
        }
        // Settled newest first, alternately by two threads, every tenth
        // rejected: each batch leaves older deliveries held while newer
        // ones are settled.
        batch.reverse();
        let (mut first, mut second) = (Vec::new(), Vec::new());
        for (i, d) in batch.into_iter().enumerate() {
            let reject = d.body.ends_with(b"0}");
            rejected += usize::from(reject);
            if i % 2 == 0 {
                first.push((d, reject));
            } else {
                second.push((d, reject));
            }
        }
        let settle = |part: Vec<(kazoo_engine::broker::Consumed, bool)>| {
            std::thread::spawn(move || {
                for (d, reject) in part {
                    if reject {
                        d.ack.reject(false);
                    } else {
                        d.ack.ack();
                    }
                }
            })
        };
        let (a, b) = (settle(first), settle(second));
        a.join().unwrap();
        b.join().unwrap();
    }
    assert_eq!(rejected, MESSAGES / 10);
    assert_queue_empty(&queue).await;
    // Nothing broke meanwhile.
    while let Ok(event) = events.try_recv() {
        assert!(
            matches!(event, Event::SubscriptionWorking { .. }),
            "{event:?}"
        );
    }

    brokers.close().await;
    raw.delete(&[&exchange], &[&queue]).await;
    raw.close().await;
}

/// Messages waiting in a queue before its consumer starts come right behind
/// the broker's `consume-ok`, often in the same read: every one is handed
/// over once (none acked unseen by a later `multiple` ack), over either
/// client.
#[tokio::test]
async fn a_backlog_waiting_before_the_consumer_starts_is_delivered_whole() {
    const BACKLOG: usize = 3000;
    for native_client in [true, false] {
        let url = system_broker_url();
        let raw = Raw::connect(&url).await;
        let (exchange, queue) = direct_exchange(&raw, "kztest-backlog").await;
        for n in 0..BACKLOG {
            raw.publish(&exchange, "rk", n.to_string().as_bytes()).await;
        }
        let filled = format!("{BACKLOG} 0");
        let deadline = Instant::now() + Duration::from_secs(20);
        while queue_state(&queue).await != filled {
            assert!(Instant::now() < deadline, "the backlog never filled");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // The queue as the test declared it: plain, kept.
        let mut sub = subscription(&exchange, "direct", &queue, &["rk"]);
        sub.queue_flags = QueueFlags {
            auto_delete: false,
            ..QueueFlags::default()
        };
        let mut opts = options(&unique_name("kztest"));
        opts.prefetch = 64;
        opts.native_client = native_client;
        // Deliveries may come before the connection reports itself up.
        let (brokers, mut events) = Brokers::start(vec![broker(&url, 1, "local")], vec![sub], opts);
        let mut seen = vec![false; BACKLOG];
        for _ in 0..BACKLOG {
            let d = next_delivery(&mut events, WAIT).await;
            let n: usize = std::str::from_utf8(&d.body).unwrap().parse().unwrap();
            assert!(
                !std::mem::replace(&mut seen[n], true),
                "{n} delivered twice"
            );
            d.ack.ack();
        }
        assert_queue_empty(&queue).await;
        brokers.close().await;
        raw.delete(&[&exchange], &[&queue]).await;
        raw.close().await;
    }
}

/// Deleting a consumed queue cancels its consumer (the broker's
/// `basic.cancel`): the subscription is declared again after its back-off
/// and consumed as before, over either client, on the same connection.
#[tokio::test]
async fn a_deleted_queue_is_declared_again_and_consumed() {
    for native_client in [true, false] {
        let url = system_broker_url();
        let raw = Raw::connect(&url).await;
        let exchange = unique_name("kztest-cancel-x");
        let queue = unique_name("kztest-cancel-q");
        let sub = subscription(&exchange, "direct", &queue, &["rk"]);
        let mut opts = options(&unique_name("kztest"));
        opts.native_client = native_client;
        let (brokers, mut events) = start_subscribed(&url, sub, opts).await;
        raw.publish(&exchange, "rk", b"before").await;
        let d = next_delivery(&mut events, WAIT).await;
        assert_eq!(&d.body[..], b"before");
        d.ack.ack();

        raw.delete(&[], &[&queue]).await;
        // Declared again within the first back-off (1 s) and its retry.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            raw.publish(&exchange, "rk", b"after").await;
            let got = tokio::time::timeout(Duration::from_millis(500), events.recv()).await;
            match got {
                Ok(Some(Event::Consumed(d))) => {
                    assert_eq!(&d.body[..], b"after");
                    d.ack.ack();
                    break;
                }
                Ok(Some(Event::Disconnected { reason, .. })) => {
                    panic!("the connection dropped: {reason}")
                }
                Ok(Some(_)) | Err(_) => {
                    assert!(Instant::now() < deadline, "never consumed again")
                }
                Ok(None) => panic!("event channel closed"),
            }
        }
        brokers.close().await;
        raw.delete(&[&exchange], &[&queue]).await;
        raw.close().await;
    }
}
