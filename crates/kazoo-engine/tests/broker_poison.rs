//! Hostile deliveries against the system RabbitMQ (127.0.0.1:5672): messages
//! the broker accepts but that no AMQP client library would publish (invalid
//! UTF-8 in the routing key, a property or a header name; huge or deeply
//! nested header tables; a huge body) must never stop the consuming
//! connection: what the module cannot hand to the script faithfully is
//! rejected without requeue (acking subscriptions) or dropped, counted, and
//! the next message is delivered. A rejected message goes to the queue's
//! dead-letter exchange, when it has one.
use crate::broker_support;

use std::time::Duration;

use broker_support::*;
use kamailio_test::{
    system_broker_url, system_rabbitmqctl, table, unique_name, value_array, value_long_str,
    value_table, RawProperties, RawPublisher,
};
use kazoo_engine::broker::{Brokers, Event, Role, Source};
use kazoo_engine::subscription::QueueFlags;
use tokio::sync::mpsc::Receiver;

const WAIT: Duration = Duration::from_secs(15);

/// A hostile message: what it is, and how to publish it.
struct Hostile {
    what: &'static str,
    routing_key: Vec<u8>,
    properties: RawProperties,
    body: Vec<u8>,
}

fn hostile(what: &'static str, routing_key: &[u8], properties: RawProperties) -> Hostile {
    Hostile {
        what,
        routing_key: routing_key.to_vec(),
        properties,
        body: format!("{{\"Event-Name\": \"{what}\"}}").into_bytes(),
    }
}

/// Messages whose routing key is not UTF-8: the script would see another key.
fn bad_routing_keys() -> Vec<Hostile> {
    vec![
        hostile("rk-ff", b"poison.\xff", RawProperties::default()),
        hostile("rk-truncated", b"poison.\xe2\x82", RawProperties::default()),
        hostile(
            "rk-surrogate",
            b"poison.\xed\xa0\x80",
            RawProperties::default(),
        ),
        hostile("rk-long", &[0xfe; 255], RawProperties::default()),
    ]
}

/// Messages whose routing key and body are fine but whose properties are not.
fn bad_properties() -> Vec<Hostile> {
    vec![
        hostile(
            "content-type",
            b"poison.ct",
            RawProperties::default().content_type(b"application/\xffjson"),
        ),
        hostile(
            "message-id",
            b"poison.mid",
            RawProperties::default().message_id(b"\xc3\x28"),
        ),
        hostile(
            "reply-to",
            b"poison.rt",
            RawProperties::default().reply_to(b"\x80reply"),
        ),
        hostile(
            "correlation-id",
            b"poison.cid",
            RawProperties::default().correlation_id(b"\xf8\x88\x80\x80\x80"),
        ),
        hostile(
            "header-name",
            b"poison.hn",
            RawProperties::default().headers(table(&[(b"X-\xffName", value_long_str(b"v"))])),
        ),
        hostile(
            "header-value",
            b"poison.hv",
            RawProperties::default().headers(table(&[(b"X-Name", value_long_str(b"\xff\xfe"))])),
        ),
        hostile(
            "nested-header-name",
            b"poison.nhn",
            RawProperties::default().headers(table(&[(
                b"outer",
                value_table(&table(&[(b"in\xffner", value_long_str(b"v"))])),
            )])),
        ),
    ]
}

/// Large or deep, but valid: must be delivered.
fn big_ones() -> Vec<Hostile> {
    let many: Vec<(Vec<u8>, Vec<u8>)> = (0..10_000)
        .map(|n| (format!("h{n}").into_bytes(), value_long_str(b"v")))
        .collect();
    let many: Vec<(&[u8], Vec<u8>)> = many.iter().map(|(k, v)| (&k[..], v.clone())).collect();
    // Arrays nested as deep as a 128 KiB header frame allows.
    let mut deep = value_long_str(b"bottom");
    for _ in 0..20_000 {
        deep = value_array(&deep);
    }
    let mut nested_tables = value_long_str(b"bottom");
    for _ in 0..10_000 {
        nested_tables = value_table(&table(&[(b"t", nested_tables)]));
    }
    let mut body = vec![b' '; 10 * 1024 * 1024];
    body[..2].copy_from_slice(b"{}");
    vec![
        hostile(
            "10000-headers",
            b"big.headers",
            RawProperties::default().headers(table(&many)),
        ),
        hostile(
            "deep-arrays",
            b"big.arrays",
            RawProperties::default().headers(table(&[(b"deep", deep)])),
        ),
        hostile(
            "deep-tables",
            b"big.tables",
            RawProperties::default().headers(table(&[(b"deep", nested_tables)])),
        ),
        Hostile {
            what: "10MB-body",
            routing_key: b"big.body".to_vec(),
            properties: RawProperties::default(),
            body,
        },
        Hostile {
            what: "body-not-utf8",
            routing_key: b"big.latin1".to_vec(),
            properties: RawProperties::default(),
            body: b"{\"Name\": \"caf\xe9\"}".to_vec(),
        },
    ]
}

/// Publishes each message with the raw publisher; panics if the broker
/// refuses one (the test would then prove nothing).
async fn publish_raw(exchange: &str, messages: Vec<Hostile>) {
    let exchange = exchange.to_string();
    blocking(move || {
        let mut publisher = RawPublisher::system().expect("raw publisher");
        for m in &messages {
            publisher
                .publish(exchange.as_bytes(), &m.routing_key, &m.properties, &m.body)
                .unwrap_or_else(|e| panic!("the broker refused {}: {e}", m.what));
        }
        publisher.close();
    })
    .await;
}

/// Collects deliveries until one with `body`; fails on a consumer
/// disconnection or a subscription failure on the way.
async fn deliveries_until(
    events: &mut Receiver<Event>,
    body: &[u8],
) -> Vec<kazoo_engine::broker::Consumed> {
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let event = tokio::time::timeout_at(deadline, events.recv())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "no delivery of {:?} within {WAIT:?}; got {:?}",
                    String::from_utf8_lossy(body),
                    got.iter()
                        .map(|d: &kazoo_engine::broker::Consumed| d.routing_key.clone())
                        .collect::<Vec<_>>()
                )
            })
            .expect("events");
        match event {
            Event::Consumed(d) => {
                let done = d.body == body;
                got.push(d);
                if done {
                    return got;
                }
            }
            Event::Disconnected { role, reason, .. } => {
                panic!("the {role} connection dropped: {reason}")
            }
            Event::SubscriptionFailed { reason, .. } => panic!("subscription failed: {reason}"),
            Event::Connected { role, .. } => panic!("the {role} connection reconnected"),
            Event::SubscriptionWorking { .. } => {}
        }
    }
}

async fn poison_is_rejected_and_consumption_goes_on(no_ack: bool, native_client: bool) {
    let url = system_broker_url();
    let raw = Raw::connect(&url).await;
    let node = unique_name("kztest");
    let exchange = unique_name("kztest-poison-x");
    let queue = unique_name("kztest-poison-q");
    let mut sub = subscription(&exchange, "topic", &queue, &["#"]);
    sub.queue_flags = QueueFlags::default();
    sub.no_ack = no_ack;
    let mut opts = options(&node);
    opts.prefetch = 10;
    opts.native_client = native_client;
    let (brokers, mut events) = start_subscribed(&url, sub, opts).await;

    // Unreadable routing keys: never handed to the script, gone from the queue.
    let rejected = bad_routing_keys().len() as u64;
    publish_raw(&exchange, bad_routing_keys()).await;
    raw.publish(&exchange, "good.one", b"{\"good\": 1}").await;
    let got = deliveries_until(&mut events, b"{\"good\": 1}").await;
    let keys: Vec<&str> = got.iter().map(|d| d.routing_key.as_str()).collect();
    assert_eq!(keys, ["good.one"]);
    for d in got {
        d.ack.ack();
    }
    assert_eq!(brokers.rejected(), rejected);

    // Unreadable properties or header names: the script sees neither, so the
    // messages are delivered as they are (routing key and body intact).
    let expected: Vec<(String, Vec<u8>)> = bad_properties()
        .into_iter()
        .map(|m| (String::from_utf8(m.routing_key).unwrap(), m.body))
        .collect();
    publish_raw(&exchange, bad_properties()).await;
    raw.publish(&exchange, "good.two", b"{\"good\": 2}").await;
    let got = deliveries_until(&mut events, b"{\"good\": 2}").await;
    let seen: Vec<(String, Vec<u8>)> = got
        .iter()
        .map(|d| (d.routing_key.clone(), d.body.clone()))
        .collect();
    let mut want = expected;
    want.push(("good.two".into(), b"{\"good\": 2}".to_vec()));
    assert_eq!(seen, want);
    for d in got {
        assert_eq!(d.ack.requeues_on_drop(), !no_ack);
        d.ack.ack();
    }

    // Huge and deep but valid messages are delivered whole.
    let expected: Vec<(String, usize)> = big_ones()
        .into_iter()
        .map(|m| (String::from_utf8(m.routing_key).unwrap(), m.body.len()))
        .collect();
    publish_raw(&exchange, big_ones()).await;
    raw.publish(&exchange, "good.three", b"{\"good\": 3}").await;
    let got = deliveries_until(&mut events, b"{\"good\": 3}").await;
    let seen: Vec<(String, usize)> = got
        .iter()
        .map(|d| (d.routing_key.clone(), d.body.len()))
        .collect();
    let mut want = expected;
    want.push(("good.three".into(), 11));
    assert_eq!(seen, want);
    for d in got {
        d.ack.ack();
    }
    assert_eq!(brokers.rejected(), rejected);

    // The reply queues, on the same connection, still work.
    raw.publish(
        "targeted",
        &format!("kamailio@{node}-<1>-targeted-1"),
        b"{\"reply\": 1}",
    )
    .await;
    let d = next_delivery(&mut events, WAIT).await;
    assert_eq!(
        (d.source, &d.body[..]),
        (Source::Reply { idx: 1 }, &b"{\"reply\": 1}"[..])
    );

    // A reply with bad bytes in a property arrives (a bad routing key cannot
    // match the reply queue's exact binding).
    let key = format!("kamailio@{node}-<1>-targeted-1");
    blocking(move || {
        let mut publisher = RawPublisher::system().expect("raw publisher");
        publisher
            .publish(
                b"targeted",
                key.as_bytes(),
                &RawProperties::default().reply_to(b"\xff"),
                b"{\"reply\": 2}",
            )
            .expect("published");
        publisher.close();
    })
    .await;
    let d = next_delivery(&mut events, WAIT).await;
    assert_eq!(
        (d.source, &d.body[..]),
        (Source::Reply { idx: 1 }, &b"{\"reply\": 2}"[..])
    );

    assert_queue_empty(&queue).await;
    brokers.close().await;
    raw.delete(&[&exchange], &[&queue]).await;
    raw.close().await;
}

#[tokio::test]
async fn poison_with_acks_is_rejected_and_consumption_goes_on() {
    poison_is_rejected_and_consumption_goes_on(false, true).await;
}

#[tokio::test]
async fn poison_without_acks_is_dropped_and_consumption_goes_on() {
    poison_is_rejected_and_consumption_goes_on(true, true).await;
}

/// The escape hatch (`amqp_native_client 0`) refuses the same poison.
#[tokio::test]
async fn poison_over_lapin_is_rejected_and_consumption_goes_on() {
    poison_is_rejected_and_consumption_goes_on(false, false).await;
}

#[tokio::test]
async fn rejected_poison_goes_to_the_queues_dead_letter_exchange() {
    let url = system_broker_url();
    let raw = Raw::connect(&url).await;
    let node = unique_name("kztest");
    let exchange = unique_name("kztest-poison-x");
    let queue = unique_name("kztest-poison-q");
    let dlx = unique_name("kztest-poison-dlx");
    let dead = unique_name("kztest-poison-dead");
    raw.channel
        .exchange_declare(
            dlx.as_str().into(),
            lapin::ExchangeKind::Fanout,
            lapin::options::ExchangeDeclareOptions::default(),
            no_args(),
        )
        .await
        .unwrap();
    raw.bound_queue(&dead, &dlx, "").await;
    // A policy, not a queue argument: the subscription declares the queue
    // with none.
    let policy = queue.clone();
    let definition = format!("{{\"dead-letter-exchange\": \"{dlx}\"}}");
    blocking(move || {
        system_rabbitmqctl(&[
            "-q",
            "set_policy",
            "--apply-to",
            "queues",
            &policy,
            &format!("^{policy}$"),
            &definition,
        ])
        .expect("set_policy")
    })
    .await;

    let mut sub = subscription(&exchange, "topic", &queue, &["#"]);
    sub.queue_flags = QueueFlags::default();
    sub.no_ack = false;
    let (brokers, mut events) =
        Brokers::start(vec![broker(&url, 1, "local")], vec![sub], options(&node));
    wait_connected(
        &mut events,
        &[(1, Role::Publisher), (1, Role::Consumer(0))],
        WAIT,
    )
    .await;
    publish_raw(&exchange, bad_routing_keys()).await;
    raw.publish(&exchange, "good", b"{}").await;
    let got = deliveries_until(&mut events, b"{}").await;
    assert_eq!(got.len(), 1);
    got.into_iter().for_each(|d| d.ack.ack());
    assert_eq!(brokers.rejected(), bad_routing_keys().len() as u64);
    assert_queue_empty(&queue).await;

    // Every poison message is in the dead-letter queue, as published.
    let mut keys = Vec::new();
    while let Some(m) = raw
        .channel
        .basic_get(
            dead.as_str().into(),
            lapin::options::BasicGetOptions { no_ack: true },
        )
        .await
        .unwrap()
    {
        keys.push(m.delivery.routing_key.to_string());
    }
    // (read lossily, as the AMQP client reads them)
    let expected: Vec<String> = bad_routing_keys()
        .into_iter()
        .map(|m| lapin::types::ShortString::from_utf8_lossy(m.routing_key).to_string())
        .collect();
    assert_eq!(keys, expected);

    brokers.close().await;
    let policy = queue.clone();
    blocking(move || system_rabbitmqctl(&["-q", "clear_policy", &policy]).expect("clear_policy"))
        .await;
    raw.delete(&[&exchange, &dlx], &[&queue, &dead]).await;
    raw.close().await;
}
