//! Helpers shared by the broker tests (`tests/broker_*.rs`).
#![allow(dead_code)]

use std::time::Duration;

use kazoo_engine::broker::{BrokerOptions, Brokers, Event, Role};
use kazoo_engine::config::{parse_connection, Broker};
use kazoo_engine::subscription::{ExchangeFlags, QueueFlags, Subscription};
use lapin::options::{
    BasicPublishOptions, ExchangeDeleteOptions, QueueBindOptions, QueueDeclareOptions,
    QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use tokio::sync::mpsc::Receiver;
use tokio::time::Instant;

struct StderrLog;

impl log::Log for StderrLog {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }
    fn log(&self, record: &log::Record<'_>) {
        if record.target().starts_with("kazoo_engine") {
            eprintln!("[{} {}] {}", record.level(), record.target(), record.args());
        }
    }
    fn flush(&self) {}
}

/// Log lines of the engine on stderr when `KZ_TEST_LOG` is set (debug level).
pub(crate) fn init_log() {
    if std::env::var_os("KZ_TEST_LOG").is_some() && log::set_logger(&StderrLog).is_ok() {
        log::set_max_level(log::LevelFilter::Debug);
    }
}

/// A broker from a URL, numbered `id`, in zone `zone`.
pub(crate) fn broker(url: &str, id: u32, zone: &str) -> Broker {
    parse_connection(url, zone, id).expect("valid broker URL")
}

pub(crate) fn options(node: &str) -> BrokerOptions {
    init_log();
    BrokerOptions {
        node_hostname: node.to_string(),
        primary_zone: "local".into(),
        reply_queues: 3,
        consumer_connections: 1,
        prefetch: 0,
        heartbeat_secs: 0,
        connect_timeout: Duration::from_millis(500),
        ..BrokerOptions::default()
    }
}

/// A subscription with the C defaults: no_ack, auto_delete queue.
pub(crate) fn subscription(
    exchange: &str,
    exchange_type: &str,
    queue: &str,
    routing: &[&str],
) -> Subscription {
    Subscription {
        exchange: exchange.into(),
        exchange_type: exchange_type.into(),
        exchange_flags: ExchangeFlags::default(),
        queue: queue.into(),
        queue_flags: QueueFlags::default(),
        routing: routing.iter().map(|s| s.to_string()).collect(),
        exchange_bindings: Vec::new(),
        no_ack: true,
        wait_for_consumer_ack: false,
        event_key: None,
        event_subkey: None,
        federate: false,
        consistent_worker: false,
        consistent_worker_key: None,
        name: None,
    }
}

/// Waits for the first event `pick` accepts; other events are passed to
/// `seen` (for assertions on what came before) and dropped.
pub(crate) async fn wait_for<T>(
    events: &mut Receiver<Event>,
    within: Duration,
    what: &str,
    mut pick: impl FnMut(&Event) -> bool,
    mut seen: impl FnMut(Event) -> Option<T>,
) -> Event {
    let deadline = Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Err(_) => panic!("timed out after {within:?} waiting for {what}"),
            Ok(None) => panic!("event channel closed while waiting for {what}"),
            Ok(Some(event)) => {
                if pick(&event) {
                    return event;
                }
                let _ = seen(event);
            }
        }
    }
}

/// Waits for `Connected` of every listed (broker, role).
pub(crate) async fn wait_connected(
    events: &mut Receiver<Event>,
    wanted: &[(u32, Role)],
    within: Duration,
) {
    let mut missing: Vec<(u32, Role)> = wanted.to_vec();
    let deadline = Instant::now() + within;
    while !missing.is_empty() {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Err(_) => panic!("timed out waiting for Connected of {missing:?}"),
            Ok(None) => panic!("event channel closed"),
            Ok(Some(Event::Connected {
                broker_id, role, ..
            })) => {
                missing.retain(|&w| w != (broker_id, role));
            }
            Ok(Some(Event::Disconnected {
                broker_id,
                role,
                reason,
                ..
            })) => {
                eprintln!("(while waiting) broker {broker_id} {role} disconnected: {reason}");
            }
            Ok(Some(Event::SubscriptionFailed {
                index,
                broker_id,
                reason,
            })) => {
                panic!("unexpected SubscriptionFailed {index} on {broker_id}: {reason}")
            }
            Ok(Some(Event::SubscriptionWorking { .. })) => {}
            Ok(Some(Event::Consumed(d))) => panic!("unexpected delivery {d:?}"),
        }
    }
}

/// Starts the engine on one broker (zone `local`) with one subscription
/// and waits for its publisher and the subscription's consumer connection.
pub(crate) async fn start_subscribed(
    url: &str,
    sub: Subscription,
    opts: BrokerOptions,
) -> (Brokers, Receiver<Event>) {
    let (brokers, mut events) = Brokers::start(vec![broker(url, 1, "local")], vec![sub], opts);
    wait_connected(
        &mut events,
        &[(1, Role::Publisher), (1, Role::Consumer(0))],
        WAIT_CONNECTED,
    )
    .await;
    (brokers, events)
}

const WAIT_CONNECTED: Duration = Duration::from_secs(15);

/// `messages_ready messages_unacknowledged` of a queue on the system broker.
pub(crate) async fn queue_state(queue: &str) -> String {
    let queue = queue.to_string();
    blocking(move || {
        let out = kamailio_test::system_rabbitmqctl(&[
            "-q",
            "list_queues",
            "name",
            "messages_ready",
            "messages_unacknowledged",
        ])
        .expect("rabbitmqctl");
        out.lines()
            .map(|l| l.split('\t').collect::<Vec<_>>())
            .find(|r| r[0] == queue)
            .map(|r| r[1..].join(" "))
            .unwrap_or_else(|| "missing".into())
    })
    .await
}

/// Waits until the queue holds nothing, ready or unacked.
pub(crate) async fn assert_queue_empty(queue: &str) {
    let mut state = String::new();
    for _ in 0..25 {
        state = queue_state(queue).await;
        if state == "0 0" {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("queue {queue} is not empty (ready, unacked): {state}");
}

/// Waits for the next delivery, failing on anything but connection events.
pub(crate) async fn next_delivery(
    events: &mut Receiver<Event>,
    within: Duration,
) -> kazoo_engine::broker::Consumed {
    match wait_for(
        events,
        within,
        "a delivery",
        |e| matches!(e, Event::Consumed(_)),
        |e| match e {
            Event::SubscriptionFailed { index, reason, .. } => {
                panic!("unexpected SubscriptionFailed {index}: {reason}")
            }
            _ => None::<()>,
        },
    )
    .await
    {
        Event::Consumed(d) => d,
        _ => unreachable!(),
    }
}

/// A plain lapin connection for the test's own declarations and publishes.
pub(crate) struct Raw {
    pub connection: Connection,
    pub channel: Channel,
}

impl Raw {
    pub(crate) async fn connect(url: &str) -> Raw {
        let connection = Connection::connect_with_runtime(
            &format!("{url}/%2f"),
            ConnectionProperties::default(),
            async_rs::Runtime::tokio_current(),
        )
        .await
        .expect("test connection");
        let channel = connection.create_channel().await.expect("test channel");
        Raw {
            connection,
            channel,
        }
    }

    /// Declares a plain queue and binds it to `exchange` with `key`.
    pub(crate) async fn bound_queue(&self, queue: &str, exchange: &str, key: &str) {
        self.channel
            .queue_declare(queue.into(), QueueDeclareOptions::default(), no_args())
            .await
            .expect("test queue.declare");
        self.channel
            .queue_bind(
                queue.into(),
                exchange.into(),
                key.into(),
                QueueBindOptions::default(),
                no_args(),
            )
            .await
            .expect("test queue.bind");
    }

    /// Publishes (without confirms) a plain message.
    pub(crate) async fn publish(&self, exchange: &str, routing_key: &str, body: &[u8]) {
        let confirm = self
            .channel
            .basic_publish(
                exchange.into(),
                routing_key.into(),
                BasicPublishOptions::default(),
                body,
                BasicProperties::default(),
            )
            .await
            .expect("test publish");
        // Not in confirm mode: resolves once the frame is sent.
        confirm.await.expect("test publish sent");
    }

    /// Deletes exchanges and queues, ignoring errors (on fresh channels).
    pub(crate) async fn delete(&self, exchanges: &[&str], queues: &[&str]) {
        for name in exchanges {
            if let Ok(ch) = self.connection.create_channel().await {
                let _ = ch
                    .exchange_delete((*name).into(), ExchangeDeleteOptions::default())
                    .await;
            }
        }
        for name in queues {
            if let Ok(ch) = self.connection.create_channel().await {
                let _ = ch
                    .queue_delete((*name).into(), QueueDeleteOptions::default())
                    .await;
            }
        }
    }

    pub(crate) async fn close(self) {
        let _ = self.connection.close(200, "OK".into()).await;
    }
}

/// `FieldTable::default()`, for brevity.
pub(crate) fn no_args() -> FieldTable {
    FieldTable::default()
}

/// Runs a blocking harness call without stalling the test's runtime.
pub(crate) async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.expect("blocking task")
}

/// A fresh direct exchange named after `prefix`, with a queue bound to it
/// with the key `rk`; their names.
pub(crate) async fn direct_exchange(raw: &Raw, prefix: &str) -> (String, String) {
    let exchange = kamailio_test::unique_name(&format!("{prefix}-x"));
    let queue = kamailio_test::unique_name(&format!("{prefix}-q"));
    raw.channel
        .exchange_declare(
            exchange.as_str().into(),
            lapin::ExchangeKind::Direct,
            lapin::options::ExchangeDeclareOptions::default(),
            no_args(),
        )
        .await
        .unwrap();
    raw.bound_queue(&queue, &exchange, "rk").await;
    (exchange, queue)
}

/// Publish headers with a repeated name and a value that is not UTF-8.
pub(crate) fn awkward_headers() -> Vec<(Vec<u8>, Vec<u8>)> {
    vec![
        (b"zeta".to_vec(), b"last".to_vec()),
        (b"alpha".to_vec(), b"first\0binary \xff".to_vec()),
        (b"alpha".to_vec(), b"duplicate".to_vec()),
    ]
}

/// What a publish with [`awkward_headers`] carries: exactly the content
/// type and the headers as long strings ('S': the parsed table would hold
/// another variant for any other field type), sorted by name (lapin's table
/// order on the wire), the first value of a repeated name (what RabbitMQ
/// reads).
pub(crate) fn awkward_headers_properties() -> lapin::BasicProperties {
    use lapin::types::{AMQPValue, LongString};
    let mut table = FieldTable::default();
    table.insert(
        "alpha".into(),
        AMQPValue::LongString(LongString::from(b"first\0binary \xff".to_vec())),
    );
    table.insert(
        "zeta".into(),
        AMQPValue::LongString(LongString::from(b"last".to_vec())),
    );
    lapin::BasicProperties::default()
        .with_content_type("application/json".into())
        .with_headers(table)
}
