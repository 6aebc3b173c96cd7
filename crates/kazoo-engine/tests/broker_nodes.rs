//! Broker layer against private RabbitMQ nodes: the broker closing
//! connections, a broker restart, failover to the next broker, and TLS.
//! Each test starts one node (5-7 s), so they run in parallel.
use crate::broker_support;

use std::collections::HashSet;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use broker_support::*;
use kamailio_test::{system_broker_url, unique_name, RabbitNode};
use kazoo_engine::broker::{Brokers, Consumed, Event, PublishError, Role, TlsOptions};
use lapin::options::BasicGetOptions;
use tokio::sync::mpsc::Receiver;
use tokio::time::Instant;

const WAIT: Duration = Duration::from_secs(20);

fn soon() -> Instant {
    Instant::now() + Duration::from_secs(10)
}

/// Waits until every listed (broker, role, connected?) event was seen,
/// keeping the deliveries that arrive meanwhile.
async fn wait_states(
    events: &mut Receiver<Event>,
    wanted: &[(u32, Role, bool)],
    deliveries: &mut Vec<Consumed>,
    reasons: &mut Vec<String>,
) {
    let mut missing = wanted.to_vec();
    let deadline = Instant::now() + WAIT;
    while !missing.is_empty() {
        let event = tokio::time::timeout_at(deadline, events.recv())
            .await
            .unwrap_or_else(|_| panic!("timed out waiting for {missing:?}"))
            .expect("events");
        match event {
            Event::Connected {
                broker_id, role, ..
            } => {
                missing.retain(|&w| w != (broker_id, role, true));
            }
            Event::Disconnected {
                broker_id,
                role,
                reason,
                ..
            } => {
                assert!(!reason.contains("guest:"), "credentials in {reason}");
                reasons.push(reason);
                missing.retain(|&w| w != (broker_id, role, false));
            }
            Event::Consumed(d) => deliveries.push(d),
            Event::SubscriptionFailed { index, reason, .. } => {
                panic!("unexpected SubscriptionFailed {index}: {reason}")
            }
            Event::SubscriptionWorking { .. } => {}
        }
    }
}

#[tokio::test]
async fn broker_closes_restarts_and_failover() {
    let node = blocking(RabbitNode::start).await.expect("private node");
    let private_url = node.url();
    let system_url = system_broker_url();
    let node_name = unique_name("kztest");
    let exchange = unique_name("kztest-rec-x");
    let queue = unique_name("kztest-rec-q");
    let counted = unique_name("kztest-count-q");
    let mut sub = subscription(&exchange, "direct", &queue, &["rk"]);
    sub.queue_flags.auto_delete = false;
    sub.no_ack = false;
    let config = vec![
        broker(&private_url, 1, "local"),
        broker(&system_url, 2, "local"),
    ];
    let (brokers, mut events) = Brokers::start(config, vec![sub], options(&node_name));
    let all = [
        (1, Role::Publisher, true),
        (1, Role::Consumer(0), true),
        (2, Role::Publisher, true),
        (2, Role::Consumer(0), true),
    ];
    let mut deliveries = Vec::new();
    let mut reasons = Vec::new();
    wait_states(&mut events, &all, &mut deliveries, &mut reasons).await;
    assert!(
        deliveries.is_empty() && reasons.is_empty(),
        "{deliveries:?} {reasons:?}"
    );

    // A delivery held unacked when the connections go.
    let p = brokers
        .publish(
            Some(1),
            &exchange,
            "rk",
            &[],
            |_, _| b"held".to_vec(),
            soon(),
        )
        .await
        .expect("published to broker 1");
    assert_eq!(p.broker_id, 1);
    let held = next_delivery(&mut events, WAIT).await;
    assert_eq!((held.broker_id, &held.body[..]), (1, &b"held"[..]));

    // -- The broker closes every connection while publishes keep flowing:
    // each one confirmed must be in its queue; they work again afterwards.
    let raw = Raw::connect(&private_url).await;
    raw.bound_queue(&counted, "amq.direct", "count").await;
    let stop = AtomicBool::new(false);
    let publishing = async {
        let mut confirmed = Vec::new();
        let mut failed = Vec::new();
        let mut i = 0;
        while !stop.load(Ordering::Relaxed) {
            let body = format!("m-{i}");
            i += 1;
            let started = Instant::now();
            match brokers
                .publish(
                    Some(1),
                    "amq.direct",
                    "count",
                    &[],
                    |_, _| body.clone().into_bytes(),
                    soon(),
                )
                .await
            {
                Ok(p) => {
                    assert_eq!(p.broker_id, 1);
                    confirmed.push(body);
                }
                Err(e) => {
                    if e == PublishError::NoBrokerConnected {
                        assert!(started.elapsed() < Duration::from_millis(100));
                    }
                    failed.push(e);
                }
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        (confirmed, failed)
    };
    let closing = async {
        let node = blocking(move || {
            node.rabbitmqctl(&["close_all_connections", "kazoo test"])
                .expect("close_all_connections");
            node
        })
        .await;
        let down_up = [
            (1, Role::Publisher, false),
            (1, Role::Consumer(0), false),
            (1, Role::Publisher, true),
            (1, Role::Consumer(0), true),
        ];
        wait_states(&mut events, &down_up, &mut deliveries, &mut reasons).await;
        // Some more publishes on the new connection.
        tokio::time::sleep(Duration::from_millis(300)).await;
        stop.store(true, Ordering::Relaxed);
        node
    };
    let ((confirmed, failed), mut node) = tokio::join!(publishing, closing);
    eprintln!(
        "{} confirmed, {} failed ({:?}), reasons {reasons:?}",
        confirmed.len(),
        failed.len(),
        failed.iter().collect::<HashSet<_>>()
    );
    assert!(reasons.iter().any(|r| r.contains("320")), "{reasons:?}");
    let raw = Raw::connect(&private_url).await;
    let mut queued = HashSet::new();
    while let Some(m) = raw
        .channel
        .basic_get(counted.as_str().into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap()
    {
        queued.insert(String::from_utf8(m.delivery.data).unwrap());
    }
    for body in &confirmed {
        assert!(queued.contains(body), "{body} confirmed but not queued");
    }
    assert!(
        confirmed.len() >= 10,
        "publishes did not resume: {failed:?}"
    );
    assert!(confirmed.last().is_some_and(|b| b.starts_with("m-")));
    raw.close().await;

    // The held message comes again (redelivered), on the replayed topology.
    let redelivered = match deliveries.iter().position(|d| d.body == b"held") {
        Some(i) => deliveries.remove(i),
        None => next_delivery(&mut events, WAIT).await,
    };
    assert_eq!(
        (redelivered.broker_id, &redelivered.body[..]),
        (1, &b"held"[..])
    );
    assert!(redelivered.redelivered);
    held.ack.ack(); // on the dead channel: ignored
    redelivered.ack.ack();
    assert!(deliveries.is_empty(), "{deliveries:?}");
    brokers
        .publish(
            Some(1),
            &exchange,
            "rk",
            &[],
            |_, _| b"after close".to_vec(),
            soon(),
        )
        .await
        .expect("publishing works after the close");
    let d = next_delivery(&mut events, WAIT).await;
    assert_eq!((d.broker_id, &d.body[..]), (1, &b"after close"[..]));
    d.ack.ack();

    // -- Broker 1 stops: its publishes fail fast, primary publishes go to 2.
    node = blocking(move || {
        node.stop().expect("stop");
        node
    })
    .await;
    let down = [(1, Role::Publisher, false), (1, Role::Consumer(0), false)];
    wait_states(&mut events, &down, &mut deliveries, &mut reasons).await;
    assert!(!brokers.is_connected(1));
    let started = Instant::now();
    assert_eq!(
        brokers
            .publish(
                Some(1),
                &exchange,
                "rk",
                &[],
                |_, _| b"lost".to_vec(),
                soon()
            )
            .await,
        Err(PublishError::NoBrokerConnected)
    );
    assert!(started.elapsed() < Duration::from_millis(100));
    let p = brokers
        .publish(
            None,
            &exchange,
            "rk",
            &[],
            |id, idx| format!("failover {id} {idx}").into_bytes(),
            soon(),
        )
        .await
        .expect("failover to broker 2");
    assert_eq!(p.broker_id, 2);
    let d = next_delivery(&mut events, WAIT).await;
    assert_eq!(d.broker_id, 2);
    assert_eq!(d.body, format!("failover 2 {}", p.idx).into_bytes());
    d.ack.ack();

    // -- Broker 1 back: reconnected, topology declared again (its
    // non-durable exchange was lost with the restart), first in order again.
    node = blocking(move || {
        node.start_again().expect("start again");
        node
    })
    .await;
    let up = [(1, Role::Publisher, true), (1, Role::Consumer(0), true)];
    wait_states(&mut events, &up, &mut deliveries, &mut reasons).await;
    let p = brokers
        .publish(
            None,
            &exchange,
            "rk",
            &[],
            |_, _| b"after restart".to_vec(),
            soon(),
        )
        .await
        .expect("published after the restart");
    assert_eq!(p.broker_id, 1);
    let d = next_delivery(&mut events, WAIT).await;
    assert_eq!((d.broker_id, &d.body[..]), (1, &b"after restart"[..]));
    d.ack.ack();

    brokers.close().await;
    let raw = Raw::connect(&system_url).await;
    raw.delete(&[&exchange], &[&queue]).await;
    raw.close().await;
    drop(node);
}

/// Starts a publisher-only connection and returns how its first attempt ended.
async fn first_attempt(host: &str, port: u16, tls: TlsOptions) -> Result<(), String> {
    let mut opts = options(&unique_name("kztest"));
    opts.consumer_connections = 0;
    opts.tls = tls;
    let url = format!("amqps://guest:guest@{host}:{port}");
    let (brokers, mut events) = Brokers::start(vec![broker(&url, 1, "local")], vec![], opts);
    let outcome = match tokio::time::timeout(WAIT, events.recv()).await {
        Ok(Some(Event::Connected {
            role: Role::Publisher,
            ..
        })) => {
            // And it carries messages.
            brokers
                .publish(
                    None,
                    "amq.direct",
                    "nobody",
                    &[],
                    |_, _| b"{}".to_vec(),
                    soon(),
                )
                .await
                .map(|_| ())
                .map_err(|e| format!("connected but publish failed: {e}"))
        }
        Ok(Some(Event::Disconnected { reason, .. })) => Err(reason),
        other => panic!("unexpected {other:?}"),
    };
    brokers.close().await;
    outcome
}

fn tls(ca: Option<&Path>) -> TlsOptions {
    TlsOptions {
        ca_cert: ca.map(Path::to_path_buf),
        ..TlsOptions::default()
    }
}

#[tokio::test]
async fn tls_verification_switches() {
    let files = kamailio_test::TestPki::generate();
    let (ca1, ca2) = (files.path("ca1.pem"), files.path("ca2.pem"));
    let (cert, key) = (files.path("server.pem"), files.path("server.key"));
    let node = blocking({
        let ca1 = ca1.clone();
        move || RabbitNode::start_with_tls(&ca1, &cert, &key)
    })
    .await
    .expect("private node with TLS");
    let port = node.amqps_port().expect("TLS port");

    // The right CA, the right name.
    first_attempt("localhost", port, tls(Some(&ca1)))
        .await
        .expect("TLS with the right CA");
    // With a client certificate too.
    let with_client = TlsOptions {
        cert: Some(files.path("client.pem")),
        key: Some(files.path("client.key")),
        ..tls(Some(&ca1))
    };
    first_attempt("localhost", port, with_client)
        .await
        .expect("TLS with a client certificate");

    // Another CA: refused, and the reason says why.
    let reason = first_attempt("localhost", port, tls(Some(&ca2)))
        .await
        .expect_err("a certificate from an unknown CA");
    assert!(
        reason.contains("certificate") && reason.contains("UnknownIssuer"),
        "{reason}"
    );
    // ... unless the peer is not verified.
    first_attempt(
        "localhost",
        port,
        TlsOptions {
            verify_peer: false,
            ..tls(Some(&ca2))
        },
    )
    .await
    .expect("verify_peer = 0 accepts any certificate");

    // The certificate names localhost, not 127.0.0.1.
    let reason = first_attempt("127.0.0.1", port, tls(Some(&ca1)))
        .await
        .expect_err("a certificate for another name");
    assert!(
        reason.contains("certificate not valid for name"),
        "{reason}"
    );
    first_attempt(
        "127.0.0.1",
        port,
        TlsOptions {
            verify_hostname: false,
            ..tls(Some(&ca1))
        },
    )
    .await
    .expect("verify_hostname = 0 skips the name");
    // ... but still checks the chain.
    let reason = first_attempt(
        "127.0.0.1",
        port,
        TlsOptions {
            verify_hostname: false,
            ..tls(Some(&ca2))
        },
    )
    .await
    .expect_err("verify_hostname = 0 still checks the chain");
    assert!(reason.contains("UnknownIssuer"), "{reason}");

    // A CA file that does not exist: named in the reason.
    let missing = files.path("missing.pem");
    let reason = first_attempt("localhost", port, tls(Some(&missing)))
        .await
        .expect_err("missing CA file");
    assert!(reason.contains("missing.pem"), "{reason}");
    drop(node);
}

/// While the broker blocks publishers (a memory alarm), publishes fail at
/// once instead of each waiting for its deadline; once the alarm clears they
/// go through again.
#[tokio::test]
async fn a_broker_that_blocks_publishers_fails_them_at_once() {
    let node = blocking(RabbitNode::start).await.expect("private node");
    let url = node.url();
    let mut opts = options(&unique_name("kztest"));
    opts.consumer_connections = 0;
    let (brokers, mut events) = Brokers::start(vec![broker(&url, 1, "local")], vec![], opts);
    wait_connected(
        &mut events,
        &[(1, Role::Publisher)],
        Duration::from_secs(20),
    )
    .await;
    publish_nowhere(&brokers)
        .await
        .expect("published before the alarm");

    node.rabbitmqctl(&["set_vm_memory_high_watermark", "0.000001"])
        .expect("rabbitmqctl");
    // The first publish may be the one that finds out (it waits for its
    // deadline); from then on each fails at once.
    let _ = publish_nowhere(&brokers).await;
    for n in 0..20 {
        let started = Instant::now();
        let result = publish_nowhere(&brokers).await;
        assert!(
            matches!(result, Err(PublishError::Unavailable { broker_id: 1, .. })),
            "publish {n} during the alarm: {result:?}"
        );
        assert!(
            started.elapsed() < Duration::from_millis(50),
            "publish {n} waited {:?}",
            started.elapsed()
        );
    }
    node.rabbitmqctl(&["set_vm_memory_high_watermark", "0.4"])
        .expect("rabbitmqctl");
    let deadline = Instant::now() + Duration::from_secs(15);
    while publish_nowhere(&brokers).await.is_err() {
        assert!(
            Instant::now() < deadline,
            "publishes never went through again"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    brokers.close().await;
}

/// A publish to `amq.direct` that no queue takes (the broker confirms it).
async fn publish_nowhere(
    brokers: &Brokers,
) -> Result<kazoo_engine::broker::Published, PublishError> {
    let body = |_, _| b"{}".to_vec();
    let deadline = Instant::now() + Duration::from_secs(2);
    brokers
        .publish(None, "amq.direct", "nowhere", &[], body, deadline)
        .await
}
