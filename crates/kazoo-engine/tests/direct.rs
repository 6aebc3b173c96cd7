//! The direct publish link (`kazoo_engine::direct`): against the system
//! RabbitMQ for what reaches the queue, refusals and lost connections, and
//! against a scripted broker on loopback for what RabbitMQ cannot be made
//! to do on demand without stopping every other test's broker (blocking
//! publishers, not confirming).
use crate::broker_support;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use amq_protocol::frame::{gen_frame, parse_frame, AMQPFrame, WriteContext};
use amq_protocol::protocol::{basic, channel, confirm, connection, exchange, queue, AMQPClass};
use broker_support::*;
use kamailio_test::{msg_id_of, system_broker_url, system_rabbitmqctl, unique_name, AmqpProbe};
use kazoo_engine::broker::{PublishError, PublishProperties};
use kazoo_engine::direct::{DirectOptions, DirectPublisher};
use kazoo_engine::payload::{self, CommonFields};
use lapin::options::BasicGetOptions;
use lapin::types::FieldTable;
use lapin::BasicProperties;

fn body(id: u32, idx: u32) -> Vec<u8> {
    format!("{{ \"broker\": {id}, \"idx\": {idx} }}").into_bytes()
}

fn direct_options(name: &str) -> DirectOptions {
    DirectOptions {
        primary_zone: "local".into(),
        node_hostname: name.into(),
        reply_queues: 3,
        reply_idx: 7,
        connect_timeout: Duration::from_millis(500),
        connection_name: name.into(),
    }
}

fn plain() -> PublishProperties<'static> {
    PublishProperties::default()
}

fn soon() -> Instant {
    Instant::now() + Duration::from_secs(5)
}

async fn get(raw: &Raw, queue: &str) -> Option<lapin::message::BasicGetMessage> {
    raw.channel
        .basic_get(queue.into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap()
}

/// The pid (`rabbitmqctl` form) of the connection named `name`.
fn connection_pid(name: &str) -> Option<String> {
    let out = system_rabbitmqctl(&["-q", "list_connections", "pid", "client_properties"])
        .expect("rabbitmqctl");
    out.lines()
        .find(|line| line.contains(name))
        .and_then(|line| line.split('\t').next())
        .map(str::to_string)
}

#[tokio::test]
async fn a_direct_publish_is_confirmed_and_arrives_as_the_amqp_process_sends_it() {
    let url = system_broker_url();
    let raw = Raw::connect(&url).await;
    let (exchange, queue) = direct_exchange(&raw, "kztest-direct").await;
    let name = unique_name("kztest-direct-link");
    let (published, idxs, large) = blocking({
        let (url, exchange) = (url.clone(), exchange.clone());
        move || {
            let mut direct =
                DirectPublisher::new(&[broker(&url, 1, "local")], direct_options(&name));
            let headers = awkward_headers();
            let how = PublishProperties {
                headers: &headers,
                ..PublishProperties::default()
            };
            let published = direct
                .publish(None, &exchange, "rk", how, body, soon())
                .expect("confirmed");
            assert_eq!(direct.connected(), 1);
            let idxs: Vec<u32> = (0..3)
                .map(|_| {
                    direct
                        .publish(Some(1), &exchange, "rk", plain(), body, soon())
                        .expect("confirmed")
                        .idx
                })
                .collect();
            // Larger than frame_max: split into body frames.
            let large: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
            let copy = large.clone();
            direct
                .publish(
                    None,
                    &exchange,
                    "rk",
                    plain(),
                    move |_, _| copy.clone(),
                    soon(),
                )
                .expect("a large body is confirmed");
            (published, idxs, large)
        }
    })
    .await;
    assert_eq!(published.broker_id, 1);
    assert_eq!(
        idxs,
        [
            (published.idx + 1) % 3,
            (published.idx + 2) % 3,
            published.idx
        ]
    );

    // The same properties as the AMQP process's publisher sends (see
    // broker_system): content type, and each header once as a long string.
    let got = get(&raw, &queue)
        .await
        .expect("the message is in the queue");
    assert_eq!(got.delivery.data, body(1, published.idx));
    assert_eq!(got.delivery.properties, awkward_headers_properties());
    for idx in idxs {
        let got = get(&raw, &queue).await.expect("message");
        assert_eq!(got.delivery.data, body(1, idx));
        assert_eq!(
            got.delivery.properties,
            BasicProperties::default().with_content_type("application/json".into())
        );
    }
    let got = get(&raw, &queue).await.expect("the large message");
    assert_eq!(got.delivery.data, large);
    assert!(get(&raw, &queue).await.is_none(), "nothing more");
    raw.delete(&[&exchange], &[&queue]).await;
    raw.close().await;
}

#[tokio::test]
async fn a_refused_publish_fails_with_the_reason_and_a_lost_link_reconnects_within_the_next() {
    let url = system_broker_url();
    let raw = Raw::connect(&url).await;
    let (exchange, queue) = direct_exchange(&raw, "kztest-direct-refused").await;
    let name = unique_name("kztest-direct-lost");
    blocking({
        let (url, exchange) = (url.clone(), exchange.clone());
        move || {
            let mut direct =
                DirectPublisher::new(&[broker(&url, 1, "local")], direct_options(&name));
            direct
                .publish(None, &exchange, "rk", plain(), body, soon())
                .expect("confirmed");
            // A missing exchange: the broker closes the channel; the reason
            // comes back at once, and the next publish reopens the channel.
            let started = Instant::now();
            match direct.publish(
                None,
                &unique_name("kztest-missing-x"),
                "rk",
                plain(),
                body,
                soon(),
            ) {
                Err(PublishError::Closed(reason)) => assert!(reason.contains("404"), "{reason}"),
                other => panic!("expected Closed(404 ...), got {other:?}"),
            }
            assert!(started.elapsed() < Duration::from_secs(2));
            direct
                .publish(None, &exchange, "rk", plain(), body, soon())
                .expect("confirmed on the reopened channel");

            // The broker closes the link while it is idle: the next publish
            // notices and publishes on a new connection.
            let pid = connection_pid(&name).expect("the direct link is listed by its name");
            system_rabbitmqctl(&["close_connection", &pid, "test: closed on purpose"])
                .expect("close_connection");
            // The broker sent connection.close and waits for close-ok,
            // which only the next publish reads.
            direct
                .publish(None, &exchange, "rk", plain(), body, soon())
                .expect("confirmed after reconnecting");
            let new_pid = connection_pid(&name).expect("a new link");
            assert_ne!(new_pid, pid);
        }
    })
    .await;
    for _ in 0..3 {
        assert!(get(&raw, &queue).await.is_some());
    }
    assert!(get(&raw, &queue).await.is_none(), "exactly three arrived");
    raw.delete(&[&exchange], &[&queue]).await;
    raw.close().await;
}

fn query_payload(msg_id: &str) -> payload::PreparedPublish {
    let common = CommonFields {
        app_name: "kamailio".into(),
        app_version: "5.6.3".into(),
        node: "kamailio@test".into(),
    };
    payload::prepare_publish(b"{'Event-Category':'q','Event-Name':'t'}", &common, || {
        msg_id.to_string()
    })
    .unwrap()
}

#[test]
fn a_direct_query_gets_its_reply_on_the_processs_own_queue_and_keeps_late_ones() {
    let url = system_broker_url();
    let probe = AmqpProbe::connect(&url).expect("probe");
    let exchange = unique_name("kztest-directq-x");
    probe.declare_exchange(&exchange, "topic").unwrap();
    // Each request is answered twice (a duplicate the query does not wait for).
    let responder = probe
        .responder(&exchange, "q.#", |request| {
            let reply = format!(
                "{{\"Msg-ID\":\"{}\",\"Answer\":true,\"Server-ID\":\"backend\"}}",
                msg_id_of(request)
            );
            vec![
                (Duration::ZERO, reply.clone().into_bytes()),
                (Duration::from_millis(50), reply.into_bytes()),
            ]
        })
        .unwrap();
    let node = unique_name("kztest-directq-node");
    let mut direct = DirectPublisher::new(&[broker(&url, 1, "local")], direct_options(&node));

    let started = Instant::now();
    let reply = direct
        .query(&exchange, "q.one", &[], &query_payload("query-1"), soon())
        .expect("answered");
    assert!(started.elapsed() < Duration::from_secs(2));
    let reply = String::from_utf8(reply).unwrap();
    // Annotated as consumed messages are: zone, receipt time, the backend's
    // Server-ID made a consumer:// address.
    assert!(reply.contains("\"Msg-ID\": \"query-1\""), "{reply}");
    assert!(reply.contains("\"AMQP-Broker-Zone\": \"local\""), "{reply}");
    assert!(reply.contains(r"consumer:\/\/1\/backend"), "{reply}");
    let requests = responder.requests();
    assert_eq!(requests.len(), 1);
    let expected_server_id = payload::server_id(&node, 1, 7);
    assert!(
        requests[0].text().contains(&expected_server_id),
        "the query names this process's own queue: {}",
        requests[0].text()
    );

    // The duplicate of the first reply is read during the next query and
    // kept for the event routes.
    std::thread::sleep(Duration::from_millis(200));
    direct
        .query(&exchange, "q.two", &[], &query_payload("query-2"), soon())
        .expect("answered");
    std::thread::sleep(Duration::from_millis(200));
    let late = direct.take_late_replies();
    assert!(!late.is_empty(), "the duplicate is kept");
    assert!(late.iter().all(|(rk, _)| *rk == expected_server_id));
    assert!(String::from_utf8_lossy(&late[0].1).contains("query-1"));

    // Nobody answers: a timeout within the deadline.
    let started = Instant::now();
    assert_eq!(
        direct.query(
            &exchange,
            "nobody.listens",
            &[],
            &query_payload("query-3"),
            Instant::now() + Duration::from_millis(300)
        ),
        Err(PublishError::Timeout)
    );
    assert!(started.elapsed() < Duration::from_millis(600));

    // A missing exchange closes the query channel: the reason at once, and
    // the next query sets the reply queue up again.
    match direct.query(
        &unique_name("kztest-missing-x"),
        "q.x",
        &[],
        &query_payload("query-4"),
        soon(),
    ) {
        Err(PublishError::Closed(reason)) => assert!(reason.contains("404"), "{reason}"),
        other => panic!("expected Closed(404 ...), got {other:?}"),
    }
    direct
        .query(&exchange, "q.five", &[], &query_payload("query-5"), soon())
        .expect("answered after the channel was reopened");
    drop(responder);
    probe.delete_exchange(&exchange);
}

#[test]
fn an_unreachable_broker_fails_at_once_and_is_not_tried_again_during_its_back_off() {
    // A port nobody listens on.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("amqp://guest:guest@127.0.0.1:{port}");
    let mut direct =
        DirectPublisher::new(&[broker(&url, 1, "local")], direct_options("unreachable"));
    let started = Instant::now();
    assert_eq!(
        direct.publish(None, "x", "rk", plain(), body, soon()),
        Err(PublishError::NoBrokerConnected)
    );
    assert_eq!(
        direct.publish(Some(1), "x", "rk", plain(), body, soon()),
        Err(PublishError::NoBrokerConnected)
    );
    assert!(started.elapsed() < Duration::from_millis(500));
    assert_eq!(
        direct.publish(Some(9), "x", "rk", plain(), body, soon()),
        Err(PublishError::UnknownBroker(9))
    );
    assert!(matches!(
        direct.publish(None, "x", &"k".repeat(256), plain(), body, soon()),
        Err(PublishError::Invalid(_))
    ));
}

/// One frame as bytes.
fn frame(frame: &AMQPFrame) -> Vec<u8> {
    gen_frame(frame)(WriteContext::from(Vec::new()))
        .unwrap()
        .into_inner()
        .0
}

fn method(channel: u16, class: AMQPClass) -> Vec<u8> {
    frame(&AMQPFrame::Method(channel, class))
}

/// Whether a method is the one expected.
type IsMethod = fn(&AMQPClass) -> bool;

/// A scripted broker's side of one connection: reads frames, answers the
/// login, and hands each publish's method frame to the test.
struct FakeBroker {
    stream: TcpStream,
    input: Vec<u8>,
}

impl FakeBroker {
    fn next_frame(&mut self) -> AMQPFrame {
        loop {
            if let Ok((rest, frame)) = parse_frame(self.input.as_slice()) {
                let used = self.input.len() - rest.len();
                self.input.drain(..used);
                return frame;
            }
            let mut buf = [0u8; 65536];
            let n = self.stream.read(&mut buf).expect("read from the client");
            assert!(n > 0, "the client closed the connection");
            self.input.extend_from_slice(&buf[..n]);
        }
    }

    fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).unwrap();
    }

    /// Accepts one client and logs it in, with channel 1 in confirm mode.
    fn accept(listener: &TcpListener) -> FakeBroker {
        let (stream, _) = listener.accept().unwrap();
        let mut fake = FakeBroker {
            stream,
            input: Vec::new(),
        };
        let mut header = [0u8; 8];
        fake.stream.read_exact(&mut header).unwrap();
        assert_eq!(&header, b"AMQP\x00\x00\x09\x01");
        fake.send(&method(
            0,
            AMQPClass::Connection(connection::AMQPMethod::Start(connection::Start {
                version_major: 0,
                version_minor: 9,
                server_properties: FieldTable::default(),
                mechanisms: "AMQPLAIN PLAIN".into(),
                locales: "en_US".into(),
            })),
        ));
        match fake.next_frame() {
            AMQPFrame::Method(0, AMQPClass::Connection(connection::AMQPMethod::StartOk(ok))) => {
                assert_eq!(ok.mechanism.as_str(), "PLAIN");
                assert_eq!(ok.response.as_bytes(), b"\0guest\0guest");
            }
            other => panic!("expected start-ok, got {other:?}"),
        }
        fake.send(&method(
            0,
            AMQPClass::Connection(connection::AMQPMethod::Tune(connection::Tune {
                channel_max: 2047,
                frame_max: 131_072,
                heartbeat: 60,
            })),
        ));
        match fake.next_frame() {
            AMQPFrame::Method(0, AMQPClass::Connection(connection::AMQPMethod::TuneOk(ok))) => {
                assert_eq!(ok.heartbeat, 0, "heartbeats off");
            }
            other => panic!("expected tune-ok, got {other:?}"),
        }
        assert!(matches!(
            fake.next_frame(),
            AMQPFrame::Method(0, AMQPClass::Connection(connection::AMQPMethod::Open(_)))
        ));
        fake.send(&method(
            0,
            AMQPClass::Connection(connection::AMQPMethod::OpenOk(connection::OpenOk {})),
        ));
        assert!(matches!(
            fake.next_frame(),
            AMQPFrame::Method(1, AMQPClass::Channel(channel::AMQPMethod::Open(_)))
        ));
        fake.send(&method(
            1,
            AMQPClass::Channel(channel::AMQPMethod::OpenOk(channel::OpenOk {})),
        ));
        assert!(matches!(
            fake.next_frame(),
            AMQPFrame::Method(1, AMQPClass::Confirm(confirm::AMQPMethod::Select(_)))
        ));
        fake.send(&method(
            1,
            AMQPClass::Confirm(confirm::AMQPMethod::SelectOk(confirm::SelectOk {})),
        ));
        fake
    }

    /// Reads one publish (method, header, body frames).
    /// Reads one publish (method, header, body frames) on channel 1.
    fn publish(&mut self) -> Vec<u8> {
        self.publish_on(1)
    }

    fn publish_on(&mut self, channel: u16) -> Vec<u8> {
        match self.next_frame() {
            AMQPFrame::Method(ch, AMQPClass::Basic(basic::AMQPMethod::Publish(_)))
                if ch == channel => {}
            other => panic!("expected a publish on channel {channel}, got {other:?}"),
        }
        let AMQPFrame::Header(_, header) = self.next_frame() else {
            panic!("expected a content header");
        };
        let mut body = Vec::new();
        while (body.len() as u64) < header.body_size {
            let AMQPFrame::Body(_, part) = self.next_frame() else {
                panic!("expected a body frame");
            };
            body.extend_from_slice(&part);
        }
        body
    }

    /// Answers the set-up of a reply queue on channel 2 (channel, exchange,
    /// queue, binding, consumer).
    fn reply_queue_setup(&mut self) {
        let frames: [(IsMethod, AMQPClass); 5] = [
            (
                |m| matches!(m, AMQPClass::Channel(channel::AMQPMethod::Open(_))),
                AMQPClass::Channel(channel::AMQPMethod::OpenOk(channel::OpenOk {})),
            ),
            (
                |m| matches!(m, AMQPClass::Exchange(exchange::AMQPMethod::Declare(_))),
                AMQPClass::Exchange(exchange::AMQPMethod::DeclareOk(exchange::DeclareOk {})),
            ),
            (
                |m| matches!(m, AMQPClass::Queue(queue::AMQPMethod::Declare(_))),
                AMQPClass::Queue(queue::AMQPMethod::DeclareOk(queue::DeclareOk {
                    queue: "replies".into(),
                    message_count: 0,
                    consumer_count: 0,
                })),
            ),
            (
                |m| matches!(m, AMQPClass::Queue(queue::AMQPMethod::Bind(_))),
                AMQPClass::Queue(queue::AMQPMethod::BindOk(queue::BindOk {})),
            ),
            (
                |m| matches!(m, AMQPClass::Basic(basic::AMQPMethod::Consume(_))),
                AMQPClass::Basic(basic::AMQPMethod::ConsumeOk(basic::ConsumeOk {
                    consumer_tag: "c".into(),
                })),
            ),
        ];
        for (expected, answer) in frames {
            match self.next_frame() {
                AMQPFrame::Method(2, m) if expected(&m) => self.send(&method(2, answer)),
                other => panic!("unexpected in the reply queue's set-up: {other:?}"),
            }
        }
    }

    /// Delivers `body` to the consumer on channel 2.
    fn deliver(&mut self, body: &[u8]) {
        self.send(&method(
            2,
            AMQPClass::Basic(basic::AMQPMethod::Deliver(basic::Deliver {
                consumer_tag: "c".into(),
                delivery_tag: 1,
                redelivered: false,
                exchange: "targeted".into(),
                routing_key: "rk".into(),
            })),
        ));
        self.send(&frame(&AMQPFrame::Header(
            2,
            amq_protocol::frame::AMQPContentHeader {
                class_id: 60,
                body_size: body.len() as u64,
                properties: BasicProperties::default(),
            },
        )));
        self.send(&frame(&AMQPFrame::Body(2, body.to_vec())));
    }

    fn ack(&mut self, tag: u64) {
        self.send(&method(
            1,
            AMQPClass::Basic(basic::AMQPMethod::Ack(basic::Ack {
                delivery_tag: tag,
                multiple: false,
            })),
        ));
    }
}

#[test]
fn a_broker_that_blocks_or_stops_confirming_fails_publishes_at_once_until_it_answers() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!(
        "amqp://guest:guest@127.0.0.1:{}",
        listener.local_addr().unwrap().port()
    );
    let script = std::thread::spawn(move || {
        let mut fake = FakeBroker::accept(&listener);
        // 1: confirmed.
        fake.publish();
        fake.ack(1);
        // 2: blocked (a memory alarm) instead of a confirm.
        fake.publish();
        fake.send(&method(
            0,
            AMQPClass::Connection(connection::AMQPMethod::Blocked(connection::Blocked {
                reason: "low on memory".into(),
            })),
        ));
        // The client must not publish while blocked; then unblock and
        // confirm 2.
        fake.stream
            .set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        let mut probe = [0u8; 1];
        assert!(
            fake.stream.read(&mut probe).is_err(),
            "nothing may be sent while blocked"
        );
        fake.stream.set_read_timeout(None).unwrap();
        fake.send(&method(
            0,
            AMQPClass::Connection(connection::AMQPMethod::Unblocked(connection::Unblocked {})),
        ));
        fake.ack(2);
        // 3: confirmed; 4: no confirm in time (a frozen broker).
        fake.publish();
        fake.ack(3);
        fake.publish();
        std::thread::sleep(Duration::from_millis(700));
        // The late confirm of 4: the broker answers again.
        fake.ack(4);
        fake.publish();
        fake.ack(5);
        fake
    });

    let mut direct = DirectPublisher::new(&[broker(&url, 1, "local")], direct_options("fake"));
    direct
        .publish(None, "x", "rk", plain(), body, soon())
        .expect("1 confirmed");
    let started = Instant::now();
    match direct.publish(None, "x", "rk", plain(), body, soon()) {
        Err(PublishError::Unavailable {
            broker_id: 1,
            reason,
        }) => {
            assert!(reason.contains("low on memory"), "{reason}")
        }
        other => panic!("expected Unavailable, got {other:?}"),
    }
    // Later publishes fail at once, without being sent.
    for _ in 0..3 {
        let at = Instant::now();
        assert!(matches!(
            direct.publish(None, "x", "rk", plain(), body, soon()),
            Err(PublishError::Unavailable { .. })
        ));
        assert!(at.elapsed() < Duration::from_millis(50));
    }
    assert!(started.elapsed() < Duration::from_millis(250));
    // Unblocked (and 2 confirmed late): publishes flow again.
    let until = Instant::now() + Duration::from_secs(5);
    loop {
        match direct.publish(None, "x", "rk", plain(), body, soon()) {
            Ok(_) => break,
            Err(PublishError::Unavailable { .. }) if Instant::now() < until => {
                std::thread::sleep(Duration::from_millis(20));
            }
            other => panic!("expected publishing to resume, got {other:?}"),
        }
    }
    // 4: not confirmed within its deadline.
    let at = Instant::now();
    assert_eq!(
        direct.publish(
            None,
            "x",
            "rk",
            plain(),
            body,
            Instant::now() + Duration::from_millis(200)
        ),
        Err(PublishError::Timeout)
    );
    assert!(at.elapsed() < Duration::from_millis(400));
    let at = Instant::now();
    assert!(matches!(
        direct.publish(None, "x", "rk", plain(), body, soon()),
        Err(PublishError::Unavailable { .. })
    ));
    assert!(at.elapsed() < Duration::from_millis(50));
    // The late confirm of 4 arrives: the next publish goes out.
    std::thread::sleep(Duration::from_millis(700));
    direct
        .publish(None, "x", "rk", plain(), body, soon())
        .expect("5 confirmed once the broker answers again");
    script
        .join()
        .expect("the scripted broker saw what it expected");
}

#[test]
fn a_link_lost_while_its_reply_queue_is_set_up_is_reconnected_within_the_query() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!(
        "amqp://guest:guest@127.0.0.1:{}",
        listener.local_addr().unwrap().port()
    );
    let script = std::thread::spawn(move || {
        // The first connection goes away while the reply queue is declared.
        let mut first = FakeBroker::accept(&listener);
        assert!(matches!(
            first.next_frame(),
            AMQPFrame::Method(2, AMQPClass::Channel(channel::AMQPMethod::Open(_)))
        ));
        drop(first);
        // The second one works: the same query is published there.
        let mut second = FakeBroker::accept(&listener);
        second.reply_queue_setup();
        let request = second.publish_on(2);
        assert!(String::from_utf8_lossy(&request).contains("query-reset"));
        second.deliver(br#"{"Msg-ID": "query-reset", "Answer": 1}"#);
        second
    });
    let mut direct = DirectPublisher::new(&[broker(&url, 1, "local")], direct_options("reset"));
    let reply = direct
        .query("x", "rk", &[], &query_payload("query-reset"), soon())
        .expect("answered on a new connection");
    assert!(String::from_utf8_lossy(&reply).contains("\"Answer\": 1"));
    script
        .join()
        .expect("the scripted broker saw what it expected");
}
