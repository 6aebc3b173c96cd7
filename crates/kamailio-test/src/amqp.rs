//! An independent AMQP client for end-to-end tests: it looks at what the
//! module put on the broker and plays the other side (publishes messages to
//! subscriptions, answers queries the way a Kazoo responder does).
//!
//! It is deliberately not the module's own broker layer: a test that checked
//! the module with its own code could not catch a shared mistake. Every call
//! is blocking with a bound, on a private tokio runtime.
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use async_rs::Runtime as AsyncRuntime;
use futures_lite::StreamExt;
use lapin::options::{
    BasicConsumeOptions, BasicGetOptions, BasicPublishOptions, ExchangeDeclareOptions,
    ExchangeDeleteOptions, QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};

use crate::HarnessError;

/// How long one probe operation may take.
const OP_TIMEOUT: Duration = Duration::from_secs(10);

/// A message as the broker holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeMessage {
    pub exchange: String,
    pub routing_key: String,
    pub body: Vec<u8>,
    pub content_type: Option<String>,
    /// Headers as (name, AMQP field type, value), sorted by name.
    pub headers: Option<Vec<(String, char, String)>>,
    /// Names of the basic properties set besides `content_type` and
    /// `headers` (the module sets none).
    pub other_properties: Vec<&'static str>,
}

impl ProbeMessage {
    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

fn err(what: &str, e: impl std::fmt::Display) -> HarnessError {
    HarnessError::Usage(format!("AMQP probe: {what}: {e}"))
}

/// A connection to a broker with one channel.
#[derive(Debug)]
pub struct AmqpProbe {
    runtime: tokio::runtime::Runtime,
    connection: Connection,
    channel: Channel,
}

impl AmqpProbe {
    /// Connects to `url` (e.g. [`crate::system_broker_url`]).
    pub fn connect(url: &str) -> Result<AmqpProbe, HarnessError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map_err(|e| err("runtime", e))?;
        let (connection, channel) = runtime.block_on(async {
            let connect = Connection::connect_with_runtime(
                url,
                ConnectionProperties::default(),
                AsyncRuntime::tokio_current(),
            );
            let connection = tokio::time::timeout(OP_TIMEOUT, connect)
                .await
                .map_err(|e| err("connect", e))?
                .map_err(|e| err("connect", e))?;
            let channel = connection
                .create_channel()
                .await
                .map_err(|e| err("channel", e))?;
            Ok::<_, HarnessError>((connection, channel))
        })?;
        Ok(AmqpProbe {
            runtime,
            connection,
            channel,
        })
    }

    fn run<T>(
        &self,
        what: &str,
        f: impl std::future::Future<Output = lapin::Result<T>>,
    ) -> Result<T, HarnessError> {
        self.runtime.block_on(async {
            tokio::time::timeout(OP_TIMEOUT, f)
                .await
                .map_err(|e| err(what, e))?
                .map_err(|e| err(what, e))
        })
    }

    /// Declares a non-durable exchange of `kind` (`topic`, `direct`, ...).
    pub fn declare_exchange(&self, name: &str, kind: &str) -> Result<(), HarnessError> {
        self.run(
            "exchange.declare",
            self.channel.exchange_declare(
                name.into(),
                ExchangeKind::Custom(kind.to_string()),
                ExchangeDeclareOptions::default(),
                FieldTable::default(),
            ),
        )
    }

    /// Deletes an exchange (ignoring whether it existed).
    pub fn delete_exchange(&self, name: &str) {
        let _ = self.run(
            "exchange.delete",
            self.channel
                .exchange_delete(name.into(), ExchangeDeleteOptions::default()),
        );
    }

    /// Deletes a queue (ignoring whether it existed).
    pub fn delete_queue(&self, name: &str) {
        let _ = self.run(
            "queue.delete",
            self.channel
                .queue_delete(name.into(), QueueDeleteOptions::default()),
        );
    }

    /// A fresh exclusive queue bound to `exchange` with `binding_key`; returns
    /// its name, for [`AmqpProbe::get`].
    pub fn capture(&self, exchange: &str, binding_key: &str) -> Result<String, HarnessError> {
        let queue = self.run(
            "queue.declare",
            self.channel.queue_declare(
                ShortString::default(),
                QueueDeclareOptions {
                    exclusive: true,
                    auto_delete: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            ),
        )?;
        let name = queue.name().to_string();
        self.run(
            "queue.bind",
            self.channel.queue_bind(
                name.as_str().into(),
                exchange.into(),
                binding_key.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            ),
        )?;
        Ok(name)
    }

    /// A durable quorum queue `name` bound to `exchange` with `binding_key`
    /// (declared if missing). The broker writes every message of a quorum
    /// queue to disk before confirming it, whatever its delivery mode, so
    /// what it holds survives closed connections and `stop_app`/`start_app`:
    /// a capture for fault runs. Use a durable exchange (`amq.topic`).
    pub fn durable_capture(
        &self,
        name: &str,
        exchange: &str,
        binding_key: &str,
    ) -> Result<(), HarnessError> {
        let mut args = FieldTable::default();
        args.insert(
            "x-queue-type".into(),
            AMQPValue::LongString("quorum".into()),
        );
        self.durable_bound(name, args, exchange, binding_key)
    }

    /// A durable classic queue `name` (no arguments, not auto-delete) bound
    /// to `exchange` with `binding_key`: what a subscription with
    /// `durable` 1 and `auto_delete` 0 declares, so that it can be filled
    /// before its consumer starts.
    pub fn durable_queue(
        &self,
        name: &str,
        exchange: &str,
        binding_key: &str,
    ) -> Result<(), HarnessError> {
        self.durable_bound(name, FieldTable::default(), exchange, binding_key)
    }

    /// Declares the durable queue `name` with `args` and binds it.
    fn durable_bound(
        &self,
        name: &str,
        args: FieldTable,
        exchange: &str,
        binding_key: &str,
    ) -> Result<(), HarnessError> {
        self.run(
            "queue.declare",
            self.channel.queue_declare(
                name.into(),
                QueueDeclareOptions {
                    durable: true,
                    ..QueueDeclareOptions::default()
                },
                args,
            ),
        )?;
        self.run(
            "queue.bind",
            self.channel.queue_bind(
                name.into(),
                exchange.into(),
                binding_key.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            ),
        )
    }

    /// Takes every message of `queue` (consumed without acks) until none has
    /// come for `idle`, or `limit` has passed; returns their bodies in order.
    pub fn drain(
        &self,
        queue: &str,
        idle: Duration,
        limit: Duration,
    ) -> Result<Vec<Vec<u8>>, HarnessError> {
        let channel = self.run("channel", self.connection.create_channel())?;
        let mut consumer = self.run(
            "basic.consume",
            channel.basic_consume(
                queue.into(),
                ShortString::default(),
                BasicConsumeOptions {
                    no_ack: true,
                    ..BasicConsumeOptions::default()
                },
                FieldTable::default(),
            ),
        )?;
        let deadline = Instant::now() + limit;
        let bodies = self.runtime.block_on(async {
            let mut bodies = Vec::new();
            while Instant::now() < deadline {
                match tokio::time::timeout(idle, consumer.next()).await {
                    Ok(Some(Ok(delivery))) => bodies.push(delivery.data),
                    _ => break,
                }
            }
            bodies
        });
        let _ = self.run("channel.close", channel.close(200, "drained".into()));
        Ok(bodies)
    }

    /// The next message of `queue`, waiting up to `timeout`.
    pub fn get(
        &self,
        queue: &str,
        timeout: Duration,
    ) -> Result<Option<ProbeMessage>, HarnessError> {
        let deadline = Instant::now() + timeout;
        loop {
            let got = self.run(
                "basic.get",
                self.channel
                    .basic_get(queue.into(), BasicGetOptions { no_ack: true }),
            )?;
            if let Some(message) = got {
                return Ok(Some(probe_message(&message.delivery)));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// `(messages ready, consumers)` of an existing queue. Asked on a
    /// channel of its own: the broker closes the channel of a passive
    /// declare for a queue that does not exist.
    pub fn queue_counts(&self, queue: &str) -> Result<(u32, u32), HarnessError> {
        let channel = self.run("channel", self.connection.create_channel())?;
        let q = self.run(
            "queue.declare passive",
            channel.queue_declare(
                queue.into(),
                QueueDeclareOptions {
                    passive: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            ),
        );
        let _ = self.run("channel.close", channel.close(200, "done".into()));
        let q = q?;
        Ok((q.message_count(), q.consumer_count()))
    }

    /// Publishes `body` with no properties (as Kazoo's tests and the vectors do).
    pub fn publish(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
    ) -> Result<(), HarnessError> {
        publish_on(&self.runtime, &self.channel, exchange, routing_key, body)
    }

    /// Plays a Kazoo application asking a Kamailio node: publishes `request`
    /// (a JSON object; given a fresh `Msg-ID` when it has none) with a
    /// `Server-ID` naming a fresh queue bound to the `targeted` exchange, and
    /// returns the first reply that arrives there within `timeout` (`None` if
    /// none did). The module must be running: it declares `targeted`.
    pub fn request(
        &self,
        exchange: &str,
        routing_key: &str,
        mut request: serde_json::Value,
        timeout: Duration,
    ) -> Result<Option<ProbeMessage>, HarnessError> {
        let server_id = crate::unique_name("probe-reply");
        let queue = self.capture("targeted", &server_id)?;
        request["Server-ID"] = server_id.into();
        if request.get("Msg-ID").is_none() {
            request["Msg-ID"] = crate::unique_name("probe-msg").into();
        }
        self.publish(exchange, routing_key, request.to_string().as_bytes())?;
        let reply = self.get(&queue, timeout);
        self.delete_queue(&queue);
        reply
    }

    /// Starts a Kazoo-style responder on a fresh queue bound to `exchange`
    /// with `binding_key`: for each request, `answer` gets the request body
    /// and returns the reply bodies to send (none, one, several), each
    /// published to the `targeted` exchange with the request's `Server-ID`
    /// as routing key. The requests seen are kept in order.
    pub fn responder(
        &self,
        exchange: &str,
        binding_key: &str,
        answer: impl Fn(&[u8]) -> Vec<(Duration, Vec<u8>)> + Send + 'static,
    ) -> Result<Responder, HarnessError> {
        let queue = self.capture(exchange, binding_key)?;
        let channel = self
            .runtime
            .block_on(self.connection.create_channel())
            .map_err(|e| err("channel", e))?;
        let mut consumer = self.run(
            "basic.consume",
            channel.basic_consume(
                queue.as_str().into(),
                ShortString::default(),
                BasicConsumeOptions {
                    no_ack: true,
                    ..BasicConsumeOptions::default()
                },
                FieldTable::default(),
            ),
        )?;
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let handle = self.runtime.handle().clone();
        let (seen2, stop2) = (seen.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            handle.block_on(async {
                while !stop2.load(Ordering::Relaxed) {
                    let next =
                        tokio::time::timeout(Duration::from_millis(100), consumer.next()).await;
                    let Ok(Some(Ok(delivery))) = next else {
                        continue;
                    };
                    let request = delivery.data.clone();
                    seen2.lock().unwrap().push(probe_message(&delivery));
                    let server_id = server_id_of(&request);
                    // Each request's replies on their own task: a slow or
                    // delayed reply holds up no other request.
                    let channel = channel.clone();
                    let replies = answer(&request);
                    tokio::spawn(async move {
                        for (delay, reply) in replies {
                            tokio::time::sleep(delay).await;
                            let _ = channel
                                .basic_publish(
                                    "targeted".into(),
                                    server_id.as_str().into(),
                                    BasicPublishOptions::default(),
                                    &reply,
                                    BasicProperties::default(),
                                )
                                .await;
                        }
                    });
                }
            });
        });
        Ok(Responder {
            seen,
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for AmqpProbe {
    fn drop(&mut self) {
        let _ = self.runtime.block_on(async {
            tokio::time::timeout(
                Duration::from_secs(2),
                self.connection.close(200, "bye".into()),
            )
            .await
        });
    }
}

fn publish_on(
    runtime: &tokio::runtime::Runtime,
    channel: &Channel,
    exchange: &str,
    routing_key: &str,
    body: &[u8],
) -> Result<(), HarnessError> {
    runtime.block_on(async {
        tokio::time::timeout(
            OP_TIMEOUT,
            channel.basic_publish(
                exchange.into(),
                routing_key.into(),
                BasicPublishOptions::default(),
                body,
                BasicProperties::default(),
            ),
        )
        .await
        .map_err(|e| err("basic.publish", e))?
        .map_err(|e| err("basic.publish", e))?;
        Ok(())
    })
}

/// The `Server-ID` string of a JSON request.
fn server_id_of(request: &[u8]) -> String {
    string_member(request, "Server-ID")
}

/// The `Msg-ID` of a JSON request, as a string.
pub fn msg_id_of(request: &[u8]) -> String {
    string_member(request, "Msg-ID")
}

/// A top-level string member of a JSON object. A JSON reader is tried
/// first; json-c output that strict readers refuse (e.g. `1e400`) falls back
/// to a scan for `"name": "` (json-c's spacing), undoing `\/`.
fn string_member(json: &[u8], name: &str) -> String {
    if let Ok(value) = serde_json::from_slice::<serde_json::Value>(json) {
        return value
            .get(name)
            .and_then(|v| v.as_str())
            .unwrap_or_default()
            .to_string();
    }
    let text = String::from_utf8_lossy(json);
    let needle = format!("\"{name}\": \"");
    text.find(&needle)
        .map(|start| &text[start + needle.len()..])
        .and_then(|rest| rest.find('"').map(|end| rest[..end].replace("\\/", "/")))
        .unwrap_or_default()
}

fn probe_message(delivery: &lapin::message::Delivery) -> ProbeMessage {
    let p = &delivery.properties;
    let mut other = Vec::new();
    macro_rules! check {
        ($($field:ident),*) => {$(
            if p.$field().is_some() { other.push(stringify!($field)); }
        )*};
    }
    check!(
        content_encoding,
        delivery_mode,
        priority,
        correlation_id,
        reply_to,
        expiration,
        message_id,
        timestamp,
        kind,
        user_id,
        app_id,
        cluster_id
    );
    let headers = p.headers().as_ref().map(|table| {
        table
            .inner()
            .iter()
            .map(|(k, v)| {
                let (kind, text) = match v {
                    AMQPValue::LongString(s) => {
                        ('S', String::from_utf8_lossy(s.as_bytes()).into_owned())
                    }
                    other => ('?', format!("{other:?}")),
                };
                (k.to_string(), kind, text)
            })
            .collect()
    });
    ProbeMessage {
        exchange: delivery.exchange.to_string(),
        routing_key: delivery.routing_key.to_string(),
        body: delivery.data.clone(),
        content_type: p.content_type().as_ref().map(|s| s.to_string()),
        headers,
        other_properties: other,
    }
}

/// A running responder (see [`AmqpProbe::responder`]); stops on drop.
#[derive(Debug)]
pub struct Responder {
    seen: Arc<std::sync::Mutex<Vec<ProbeMessage>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Responder {
    /// The requests received so far.
    pub fn requests(&self) -> Vec<ProbeMessage> {
        self.seen.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl Drop for Responder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
