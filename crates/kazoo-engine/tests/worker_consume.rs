//! A consumer worker's own consuming connections
//! (`kazoo_engine::worker_consume`) against the system RabbitMQ: what they
//! declare and consume, acks sent only when settled (in batches), what a
//! worker held going back to the broker when it goes, a broken
//! subscription retried without stopping the others (its failure reported
//! until it could be sent), a connection the
//! broker closes opened again, and heartbeats (an idle connection kept, a
//! frozen broker given up).
use crate::broker_support;

use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use broker_support::*;
use kamailio_test::{
    system_broker_url, system_queue_messages, system_rabbitmqctl, unique_name, AmqpProbe,
    RabbitNode,
};
use kazoo_engine::counters::{ScriptCounters, SubscriptionCounters};
use kazoo_engine::payload;
use kazoo_engine::subscription::{self, Subscription};
use kazoo_engine::worker_consume::{
    async_replies, consumed_in_workers, WorkerConsumeOptions, WorkerConsumer, WorkerDelivery,
    ASYNC_REPLIES,
};

fn consumer(name: &str, subscriptions: Vec<Subscription>) -> WorkerConsumer {
    consumer_of(name, subscriptions.into_iter().enumerate().collect())
}

/// [`consumer`] of subscriptions with their index.
fn consumer_of(name: &str, subscriptions: Vec<(usize, Subscription)>) -> WorkerConsumer {
    init_log();
    WorkerConsumer::new(
        &[broker(&system_broker_url(), 1, "local")],
        subscriptions,
        WorkerConsumeOptions {
            primary_zone: "local".into(),
            connect_timeout: Duration::from_millis(500),
            prefetch: 16,
            heartbeat: 0,
            connection_name: name.into(),
            counters: ScriptCounters::private(),
            per_subscription: SubscriptionCounters::private(),
        },
    )
}

/// A durable queue on a topic exchange, acked after the route.
fn durable(exchange: &str, queue: &str) -> Subscription {
    let mut sub = subscription::simple(exchange, "topic", queue, "#").unwrap();
    sub.queue_flags.durable = true;
    sub.queue_flags.auto_delete = false;
    sub.no_ack = false;
    sub
}

/// Waits (polling an idle IPC stand-in) until `count` deliveries were read.
fn take(consumer: &mut WorkerConsumer, count: usize) -> Vec<WorkerDelivery> {
    let (ipc, _peer) = UnixStream::pair().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut taken = Vec::new();
    while taken.len() < count {
        assert!(
            Instant::now() < deadline,
            "{} of {count} deliveries",
            taken.len()
        );
        match consumer.take() {
            Some(delivery) => taken.push(delivery),
            None => {
                assert!(!consumer.wait(ipc.as_fd(), Duration::from_millis(100)));
            }
        }
    }
    taken
}

fn counts(probe: &AmqpProbe, queue: &str) -> (u32, u32) {
    probe.queue_counts(queue).unwrap()
}

/// (ready, unacked) of `queue`, as the broker counts them.
fn messages(queue: &str) -> (u64, u64) {
    system_queue_messages(queue)
        .unwrap()
        .map_or((0, 0), |m| (m.ready, m.unacked))
}

fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(Instant::now() < deadline, "{what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn which_subscriptions_the_workers_consume() {
    let plain = subscription::simple("ex", "topic", "q", "#").unwrap();
    assert!(consumed_in_workers(&plain));
    let mut federated = plain.clone();
    federated.federate = true;
    assert!(
        consumed_in_workers(&federated),
        "on the primary zone's brokers"
    );
    let mut consistent = plain.clone();
    consistent.consistent_worker = true;
    let mut exclusive = plain.clone();
    exclusive.queue_flags.exclusive = true;
    let server_named = subscription::simple("ex", "topic", "", "#").unwrap();
    for sub in [consistent, exclusive, server_named] {
        assert!(!consumed_in_workers(&sub), "{sub:?}");
    }
}

#[test]
fn deliveries_are_acked_once_settled_and_what_a_worker_held_goes_back() {
    let probe = AmqpProbe::connect(&system_broker_url()).unwrap();
    let exchange = unique_name("wc-ex");
    let queue = unique_name("wc-q");
    let mut worker = consumer(&unique_name("wc"), vec![durable(&exchange, &queue)]);
    let (ipc, _peer) = UnixStream::pair().unwrap();
    // The first wait connects and declares.
    worker.wait(ipc.as_fd(), Duration::from_millis(10));
    assert_eq!(worker.connected(), 1);
    assert_eq!(counts(&probe, &queue).1, 1, "one consumer");
    for n in 0..10 {
        probe
            .publish(
                &exchange,
                &format!("rk.{n}"),
                format!("{{\"n\": {n}}}").as_bytes(),
            )
            .unwrap();
    }
    let taken = take(&mut worker, 10);
    let keys: Vec<&str> = taken.iter().map(|d| d.routing_key.as_str()).collect();
    assert_eq!(keys, (0..10).map(|n| format!("rk.{n}")).collect::<Vec<_>>());
    assert_eq!(taken[3].body, b"{\"n\": 3}");
    assert_eq!(taken[0].subscription, 0);
    assert_eq!(taken[0].broker_id, 1);
    // Nothing is acked before it is settled and flushed.
    wait_until("10 unacked", || messages(&queue) == (0, 10));
    for delivery in &taken[..6] {
        worker.settle(delivery);
    }
    wait_until("still 10 unacked before the flush", || {
        messages(&queue) == (0, 10)
    });
    worker.flush();
    wait_until("4 unacked after the flush", || messages(&queue) == (0, 4));
    // The worker goes: the broker requeues what it held.
    drop(worker);
    wait_until("4 requeued", || messages(&queue) == (4, 0));
    // Another worker gets them, flagged as redelivered.
    let mut next = consumer(&unique_name("wc"), vec![durable(&exchange, &queue)]);
    let again = take(&mut next, 4);
    assert!(again.iter().all(|d| d.redelivered));
    assert_eq!(again[0].routing_key, "rk.6");
    for delivery in &again {
        next.settle(delivery);
    }
    next.flush();
    wait_until("all acked", || messages(&queue) == (0, 0));
    drop(next);
    probe.delete_queue(&queue);
    probe.delete_exchange(&exchange);
}

#[test]
fn a_subscription_the_broker_refuses_does_not_stop_the_others() {
    let probe = AmqpProbe::connect(&system_broker_url()).unwrap();
    let exchange = unique_name("wc-ex");
    let (bad_queue, good_queue) = (unique_name("wc-bad"), unique_name("wc-good"));
    // The queue exists durable: declaring it transient is refused (406,
    // the channel is closed), again and again.
    probe.declare_exchange(&exchange, "topic").unwrap();
    probe.durable_queue(&bad_queue, &exchange, "#").unwrap();
    let mut transient = durable(&exchange, &bad_queue);
    transient.queue_flags.durable = false;
    let mut worker = consumer(
        &unique_name("wc"),
        vec![transient, durable(&exchange, &good_queue)],
    );
    let (ipc, _peer) = UnixStream::pair().unwrap();
    worker.wait(ipc.as_fd(), Duration::from_millis(10));
    assert_eq!(worker.connected(), 1, "the connection stays");
    probe.publish(&exchange, "rk", b"{}").unwrap();
    // Both queues are bound to the exchange; only the good one is consumed.
    let taken = take(&mut worker, 1);
    assert_eq!(taken[0].subscription, 1);
    assert_eq!(counts(&probe, &bad_queue).1, 0);
    worker.settle(&taken[0]);
    worker.flush();
    // Its failure is reported once, and kept until it could be sent (the
    // link to the AMQP process was lost meanwhile).
    let lost: Result<(), &str> = worker.send_reports(|_| Err("link lost"));
    assert_eq!(lost, Err("link lost"));
    let mut sent = Vec::new();
    worker
        .send_reports(|report| {
            sent.push(report.clone());
            Ok::<_, ()>(())
        })
        .unwrap();
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert_eq!((sent[0].index, sent[0].broker_id), (0, 1));
    assert!(sent[0].failure.is_some());
    worker
        .send_reports(|report| Err(format!("sent again: {report:?}")))
        .unwrap();
    drop(worker);
    for queue in [&bad_queue, &good_queue] {
        probe.delete_queue(queue);
    }
    probe.delete_exchange(&exchange);
}

/// The erlang pid of the connection named `name`, as `rabbitmqctl` on
/// `node` lists it (`list_connections pid client_properties`).
fn connection_pid(node: &RabbitNode, name: &str) -> Option<String> {
    let listed = node
        .rabbitmqctl(&["-q", "list_connections", "pid", "client_properties"])
        .ok()?;
    listed
        .lines()
        .find(|l| l.contains(name))
        .and_then(|l| l.split('\t').next())
        .map(str::to_string)
}

#[test]
fn heartbeats_keep_an_idle_connection_and_give_up_a_frozen_broker() {
    // A private node: it is frozen (SIGSTOP) below.
    let node = RabbitNode::start().expect("private node");
    init_log();
    let name = unique_name("wc-heartbeat");
    let sub =
        subscription::simple(&unique_name("wc-ex"), "topic", &unique_name("wc-q"), "#").unwrap();
    let mut worker = WorkerConsumer::new(
        &[broker(&node.url(), 1, "local")],
        vec![(0, sub)],
        WorkerConsumeOptions {
            primary_zone: "local".into(),
            connect_timeout: Duration::from_millis(500),
            prefetch: 16,
            heartbeat: 1,
            connection_name: name.clone(),
            counters: ScriptCounters::private(),
            per_subscription: SubscriptionCounters::private(),
        },
    );
    let (ipc, _peer) = UnixStream::pair().unwrap();
    let mut wait_for = |what: &str, limit: Duration, done: &dyn Fn(&WorkerConsumer) -> bool| {
        let deadline = Instant::now() + limit;
        while !done(&worker) {
            assert!(Instant::now() < deadline, "{what} within {limit:?}");
            worker.wait(ipc.as_fd(), Duration::from_millis(100));
        }
    };
    wait_for("connected", Duration::from_secs(10), &|w| {
        w.connected() == 1
    });
    let pid = connection_pid(&node, &name).expect("the worker's connection is listed");
    // Idle for three times what the broker waits for a heartbeat (two
    // intervals): the same connection is still open.
    let idle_until = Instant::now() + Duration::from_secs(6);
    wait_for("idle", Duration::from_secs(7), &|w| {
        assert_eq!(w.connected(), 1, "the idle connection went down");
        Instant::now() >= idle_until
    });
    assert_eq!(
        connection_pid(&node, &name),
        Some(pid),
        "it was opened again"
    );
    // Frozen, the broker's sockets stay open but nothing comes: given up
    // after two intervals of silence.
    node.freeze().unwrap();
    let frozen = Instant::now();
    wait_for("the silent broker given up", Duration::from_secs(5), &|w| {
        w.connected() == 0
    });
    assert!(
        frozen.elapsed() >= Duration::from_millis(900),
        "{:?}",
        frozen.elapsed()
    );
    node.thaw().unwrap();
    wait_for("connected again", Duration::from_secs(30), &|w| {
        w.connected() == 1
    });
}

#[test]
fn a_connection_the_broker_closes_is_opened_again() {
    let probe = AmqpProbe::connect(&system_broker_url()).unwrap();
    let exchange = unique_name("wc-ex");
    let queue = unique_name("wc-q");
    let name = unique_name("wc-closed");
    let mut worker = consumer(&name, vec![durable(&exchange, &queue)]);
    let (ipc, _peer) = UnixStream::pair().unwrap();
    worker.wait(ipc.as_fd(), Duration::from_millis(10));
    assert_eq!(worker.connected(), 1);
    let listed =
        system_rabbitmqctl(&["-q", "list_connections", "pid", "client_properties"]).unwrap();
    let pid = listed
        .lines()
        .find(|l| l.contains(&name))
        .and_then(|l| l.split('\t').next())
        .expect("the worker's connection is listed by its name")
        .to_string();
    probe.publish(&exchange, "before", b"{}").unwrap();
    let held = take(&mut worker, 1);
    system_rabbitmqctl(&["close_connection", &pid, "test: closed on purpose"]).unwrap();
    // The close is read, the connection is opened again after the
    // back-off, and the unacked delivery comes again.
    let again = take(&mut worker, 1);
    assert_eq!(again[0].routing_key, "before");
    assert!(again[0].redelivered);
    // The old delivery's ack is not sent on the new connection.
    worker.settle(&held[0]);
    worker.flush();
    wait_until("still unacked", || messages(&queue) == (0, 1));
    worker.settle(&again[0]);
    worker.flush();
    wait_until("acked", || messages(&queue) == (0, 0));
    drop(worker);
    probe.delete_queue(&queue);
    probe.delete_exchange(&exchange);
}

#[test]
fn a_reply_to_an_async_query_goes_ahead_of_the_events_read() {
    // 16 events are read (the prefetch) before the reply is published;
    // once the worker reads again (every few routes), the reply is taken
    // next, ahead of the 12 events left.
    let probe = AmqpProbe::connect(&system_broker_url()).unwrap();
    let exchange = unique_name("wc-ex");
    let queue = unique_name("wc-q");
    let node = unique_name("wc-node");
    let mut worker = consumer_of(
        &unique_name("wc"),
        vec![
            (0, durable(&exchange, &queue)),
            (ASYNC_REPLIES, async_replies(&node).unwrap()),
        ],
    );
    let (ipc, _peer) = UnixStream::pair().unwrap();
    worker.wait(ipc.as_fd(), Duration::from_millis(10));
    let replies = payload::async_server_id(&node);
    assert_eq!(counts(&probe, &replies).1, 1, "the reply queue is consumed");
    for n in 0..40 {
        probe
            .publish(&exchange, &format!("ev.{n}"), br#"{"E":1}"#)
            .unwrap();
    }
    // The broker sent the prefetch's worth (16); the worker reads them.
    wait_until("the prefetch sent", || messages(&queue).1 == 16);
    let first = take(&mut worker, 4);
    assert!(first.iter().all(|d| d.subscription == 0));
    probe
        .publish(payload::TARGETED_EXCHANGE, &replies, br#"{"Msg-ID":"m"}"#)
        .unwrap();
    wait_until("the reply sent to the worker", || {
        messages(&replies) == (0, 1)
    });
    worker.read_now();
    let reply = worker.take().unwrap();
    assert_eq!(reply.subscription, ASYNC_REPLIES, "{reply:?}");
    assert_eq!(reply.body, br#"{"Msg-ID":"m"}"#);
    worker.settle(&reply);
    // The 12 events read before it are still there, after it (nothing
    // was acked, so the broker sends no more).
    let rest = take(&mut worker, 12);
    assert!(rest.iter().all(|d| d.subscription == 0));
    probe.delete_queue(&queue);
}
