//! A sans-I/O AMQP 0-9-1 client connection for publishing and querying:
//! bytes in, events and bytes out; no socket, no thread, no clock. The
//! frames are `amq-protocol`'s (the codec lapin uses), so what goes on the
//! wire is what lapin would send for the same publish.
//!
//! It covers what a publisher, a query's reply consumer and a consuming
//! connection need: the handshake (PLAIN login, tune, open), heartbeats,
//! channels, confirm mode, `basic.publish`, the broker's confirms and
//! returns, exchanges and queues with their bindings, `basic.qos`,
//! `basic.consume` with or without acks and the deliveries, acks and
//! rejects, the broker cancelling a consumer, channel and connection closes
//! (answered with close-ok), and `connection.blocked` / `unblocked`. Its
//! drivers: [`crate::direct`] (blocking, in the SIP workers) and the AMQP
//! process's consuming connections (`broker::native_consumer`, async).
use amq_protocol::frame::{
    gen_frame, parse_frame, AMQPContentHeader, AMQPFrame, ProtocolVersion, WriteContext,
};
use amq_protocol::protocol::{
    basic, channel, confirm, connection, exchange, queue, AMQPClass, BasicProperties,
};
use amq_protocol::types::{AMQPValue, FieldTable, LongString, ShortString};

use crate::subscription::{ExchangeFlags, QueueFlags};

/// The largest frame either side may send: the C module's (and lapin's
/// default) `frame_max`. A larger frame from the broker is a protocol error,
/// so the read buffer is bounded.
pub const FRAME_MAX: u32 = 131_072;

/// Frame header (type, channel, size) plus the end octet.
const FRAME_OVERHEAD: usize = 8;

/// Who logs in, where, and under which connection name (shown by
/// `rabbitmqctl list_connections name`).
#[derive(Clone)]
pub struct Login {
    pub user: String,
    pub password: String,
    pub vhost: String,
    pub connection_name: String,
}

impl std::fmt::Debug for Login {
    // The password never reaches a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Login {{ user: {:?}, vhost: {:?} }}",
            self.user, self.vhost
        )
    }
}

/// What the broker said, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// `connection.open-ok`: channels may be opened.
    Ready,
    /// `channel.open-ok`.
    ChannelOpened(u16),
    /// `confirm.select-ok`: publishes on the channel are confirmed, tags from 1.
    ConfirmSelected(u16),
    /// `basic.ack` (`ack`) or `basic.nack`, covering `tag` (and every
    /// earlier tag of the channel when `multiple`).
    Confirm {
        channel: u16,
        tag: u64,
        multiple: bool,
        ack: bool,
    },
    /// `basic.return` with its body: a `mandatory` publish no queue took
    /// (its confirm follows).
    Returned {
        channel: u16,
        reply_code: u16,
        reply_text: String,
        exchange: String,
        routing_key: String,
        body: Vec<u8>,
    },
    /// `basic.consume-ok`: deliveries follow on the channel.
    Consuming(u16),
    /// A message of a consumer; `tag` is what an ack or a reject names.
    Delivery {
        channel: u16,
        tag: u64,
        redelivered: bool,
        exchange: String,
        routing_key: String,
        body: Vec<u8>,
    },
    /// `queue.declare-ok`: the queue's name (the broker's choice when the
    /// declare named none).
    QueueDeclared { channel: u16, queue: String },
    /// The broker cancelled the channel's consumer (its queue was deleted,
    /// or its node went down): no more deliveries come on it.
    Cancelled(u16),
    /// The broker closed the channel (close-ok is already queued).
    ChannelClosed {
        channel: u16,
        code: u16,
        text: String,
    },
    /// The broker closed the connection, or confirmed our close (close-ok
    /// is already queued): nothing more can be sent.
    ConnectionClosed { code: u16, text: String },
    /// `connection.blocked`: the broker does not read publishes now.
    Blocked(String),
    /// `connection.unblocked`.
    Unblocked,
}

/// A queue declaration's arguments: `x-queue-type: quorum` for a quorum
/// queue, else none (the broker's default type).
pub fn queue_arguments(flags: QueueFlags) -> FieldTable {
    let mut arguments = FieldTable::default();
    if flags.quorum {
        arguments.insert(
            "x-queue-type".into(),
            AMQPValue::LongString(LongString::from("quorum")),
        );
    }
    arguments
}

/// The broker broke the protocol: the connection cannot go on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProtocolError(pub String);

impl std::fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AMQP protocol error: {}", self.0)
    }
}

impl std::error::Error for ProtocolError {}

/// A `basic.return` or `basic.deliver` whose header or body frames are
/// still to come.
struct Content {
    channel: u16,
    kind: ContentKind,
    size: Option<u64>,
    body: Vec<u8>,
}

enum ContentKind {
    Return {
        reply_code: u16,
        reply_text: String,
        exchange: String,
        routing_key: String,
    },
    Deliver {
        tag: u64,
        redelivered: bool,
        exchange: String,
        routing_key: String,
    },
}

/// One client connection's protocol state.
pub struct Conn {
    login: Login,
    /// What the client asks for: `None` off, `Some(0)` the broker's
    /// proposal, `Some(n)` every n seconds.
    heartbeat_wanted: Option<u16>,
    /// Negotiated in `connection.tune` (0: off).
    heartbeat: u16,
    /// Negotiated in `connection.tune`.
    frame_max: u32,
    out: Vec<u8>,
    content: Option<Content>,
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn")
            .field("login", &self.login)
            .field("frame_max", &self.frame_max)
            .field("heartbeat", &self.heartbeat)
            .finish_non_exhaustive()
    }
}

impl Conn {
    /// A connection about to start, heartbeats off: the protocol header is
    /// queued.
    pub fn new(login: Login) -> Conn {
        Conn::with_heartbeat(login, None)
    }

    /// A connection about to start that asks for heartbeats every
    /// `seconds` (`Some(0)`: as often as the broker proposes; `None`: off).
    pub fn with_heartbeat(login: Login, seconds: Option<u16>) -> Conn {
        let mut conn = Conn {
            login,
            heartbeat_wanted: seconds,
            heartbeat: 0,
            frame_max: FRAME_MAX,
            out: Vec::with_capacity(4096),
            content: None,
        };
        conn.send(&AMQPFrame::ProtocolHeader(ProtocolVersion::amqp_0_9_1()));
        conn
    }

    /// The bytes to write to the broker, in order; the caller writes them
    /// all and then [`Conn::clear_output`]s.
    pub fn output(&self) -> &[u8] {
        &self.out
    }

    pub fn clear_output(&mut self) {
        self.out.clear();
    }

    /// The heartbeat interval agreed in `connection.tune`, in seconds (0:
    /// none): the driver sends a heartbeat when it has been this quiet, and
    /// gives the broker up after twice this without a byte from it.
    pub fn heartbeat(&self) -> u16 {
        self.heartbeat
    }

    fn send(&mut self, frame: &AMQPFrame) {
        let out = std::mem::take(&mut self.out);
        // Writing into a Vec cannot fail short of memory; the frames built
        // here are within the protocol's limits (short strings checked by
        // their type).
        self.out = match gen_frame(frame)(WriteContext::from(out)) {
            Ok(context) => context.into_inner().0,
            Err(e) => {
                log::error!("AMQP frame not encoded: {e:?}");
                Vec::new()
            }
        };
    }

    fn method(&mut self, channel: u16, class: AMQPClass) {
        self.send(&AMQPFrame::Method(channel, class));
    }

    /// Reads every complete frame at the front of `input` (removing them)
    /// and appends what they mean to `events`; a partial frame stays for
    /// the next call.
    pub fn receive(
        &mut self,
        input: &mut Vec<u8>,
        events: &mut Vec<Event>,
    ) -> Result<(), ProtocolError> {
        let mut at = 0;
        while input.len() - at >= 7 {
            let size =
                u32::from_be_bytes([input[at + 3], input[at + 4], input[at + 5], input[at + 6]])
                    as usize;
            if size + FRAME_OVERHEAD > self.frame_max as usize {
                return Err(ProtocolError(format!(
                    "a frame of {size} bytes (frame_max {})",
                    self.frame_max
                )));
            }
            if input.len() - at < size + FRAME_OVERHEAD {
                break;
            }
            let frame = match parse_frame(&input[at..at + size + FRAME_OVERHEAD]) {
                Ok((_, frame)) => frame,
                Err(e) => return Err(ProtocolError(format!("unreadable frame: {e}"))),
            };
            at += size + FRAME_OVERHEAD;
            self.on_frame(frame, events)?;
        }
        input.drain(..at);
        Ok(())
    }

    fn on_frame(&mut self, frame: AMQPFrame, events: &mut Vec<Event>) -> Result<(), ProtocolError> {
        match frame {
            AMQPFrame::Method(channel, class) => self.on_method(channel, class, events),
            AMQPFrame::Header(channel, header) => {
                match &mut self.content {
                    Some(r) if r.channel == channel && r.size.is_none() => {
                        r.size = Some(header.body_size);
                    }
                    _ => return Err(ProtocolError("a content header out of place".into())),
                }
                self.finish_content(events);
                Ok(())
            }
            AMQPFrame::Body(channel, data) => {
                match &mut self.content {
                    // A body in one frame (the usual case) is kept as read.
                    Some(r) if r.channel == channel && r.size.is_some() && r.body.is_empty() => {
                        r.body = data;
                    }
                    Some(r) if r.channel == channel && r.size.is_some() => {
                        r.body.extend_from_slice(&data);
                    }
                    _ => return Err(ProtocolError("a content body out of place".into())),
                }
                self.finish_content(events);
                Ok(())
            }
            // Any byte read shows the broker alive (the driver's clock).
            AMQPFrame::Heartbeat => Ok(()),
            AMQPFrame::ProtocolHeader(version) => Err(ProtocolError(format!(
                "the broker speaks AMQP {}.{}.{}",
                version.major, version.minor, version.revision
            ))),
            AMQPFrame::InvalidHeartbeat(channel) => {
                Err(ProtocolError(format!("a heartbeat on channel {channel}")))
            }
        }
    }

    fn finish_content(&mut self, events: &mut Vec<Event>) {
        let complete = self
            .content
            .as_ref()
            .is_some_and(|r| r.size.is_some_and(|size| r.body.len() as u64 >= size));
        if !complete {
            return;
        }
        if let Some(content) = self.content.take() {
            events.push(match content.kind {
                ContentKind::Return {
                    reply_code,
                    reply_text,
                    exchange,
                    routing_key,
                } => Event::Returned {
                    channel: content.channel,
                    reply_code,
                    reply_text,
                    exchange,
                    routing_key,
                    body: content.body,
                },
                ContentKind::Deliver {
                    tag,
                    redelivered,
                    exchange,
                    routing_key,
                } => Event::Delivery {
                    channel: content.channel,
                    tag,
                    redelivered,
                    exchange,
                    routing_key,
                    body: content.body,
                },
            });
        }
    }

    fn start_content(&mut self, channel: u16, kind: ContentKind) -> Result<(), ProtocolError> {
        if self.content.is_some() {
            return Err(ProtocolError(
                "a method with content before the last content ended".into(),
            ));
        }
        self.content = Some(Content {
            channel,
            kind,
            size: None,
            body: Vec::new(),
        });
        Ok(())
    }

    fn on_method(
        &mut self,
        channel: u16,
        class: AMQPClass,
        events: &mut Vec<Event>,
    ) -> Result<(), ProtocolError> {
        use connection::AMQPMethod as C;
        match class {
            AMQPClass::Connection(C::Start(start)) => {
                if !start
                    .mechanisms
                    .to_string()
                    .split(' ')
                    .any(|m| m == "PLAIN")
                {
                    return Err(ProtocolError(format!(
                        "the broker offers no PLAIN login ({})",
                        start.mechanisms
                    )));
                }
                let response = format!("\0{}\0{}", self.login.user, self.login.password);
                self.method(
                    0,
                    AMQPClass::Connection(C::StartOk(connection::StartOk {
                        client_properties: self.client_properties(),
                        mechanism: "PLAIN".into(),
                        response: response.into(),
                        locale: "en_US".into(),
                    })),
                );
            }
            AMQPClass::Connection(C::Tune(tune)) => {
                self.frame_max = match tune.frame_max {
                    0 => FRAME_MAX,
                    n => n.min(FRAME_MAX),
                };
                self.heartbeat = match self.heartbeat_wanted {
                    None => 0,
                    Some(0) => tune.heartbeat,
                    Some(n) => n,
                };
                self.method(
                    0,
                    AMQPClass::Connection(C::TuneOk(connection::TuneOk {
                        channel_max: tune.channel_max,
                        frame_max: self.frame_max,
                        // Off for the direct links: an idle process cannot
                        // send heartbeats; a dead peer shows on the next
                        // operation's I/O (and TCP keepalive).
                        heartbeat: self.heartbeat,
                    })),
                );
                let virtual_host = ShortString::try_new(self.login.vhost.clone())
                    .map_err(|_| ProtocolError("the vhost is longer than 255 bytes".into()))?;
                self.method(
                    0,
                    AMQPClass::Connection(C::Open(connection::Open { virtual_host })),
                );
            }
            AMQPClass::Connection(C::OpenOk(_)) => events.push(Event::Ready),
            AMQPClass::Connection(C::Close(close)) => {
                self.method(0, AMQPClass::Connection(C::CloseOk(connection::CloseOk {})));
                events.push(Event::ConnectionClosed {
                    code: close.reply_code,
                    text: close.reply_text.to_string(),
                });
            }
            AMQPClass::Connection(C::CloseOk(_)) => events.push(Event::ConnectionClosed {
                code: 200,
                text: "closed".into(),
            }),
            AMQPClass::Connection(C::Blocked(blocked)) => {
                events.push(Event::Blocked(blocked.reason.to_string()));
            }
            AMQPClass::Connection(C::Unblocked(_)) => events.push(Event::Unblocked),
            AMQPClass::Channel(channel::AMQPMethod::OpenOk(_)) => {
                events.push(Event::ChannelOpened(channel));
            }
            AMQPClass::Channel(channel::AMQPMethod::Close(close)) => {
                self.method(
                    channel,
                    AMQPClass::Channel(channel::AMQPMethod::CloseOk(channel::CloseOk {})),
                );
                events.push(Event::ChannelClosed {
                    channel,
                    code: close.reply_code,
                    text: close.reply_text.to_string(),
                });
            }
            AMQPClass::Channel(channel::AMQPMethod::CloseOk(_)) => {}
            AMQPClass::Confirm(confirm::AMQPMethod::SelectOk(_)) => {
                events.push(Event::ConfirmSelected(channel));
            }
            AMQPClass::Basic(basic::AMQPMethod::Ack(ack)) => events.push(Event::Confirm {
                channel,
                tag: ack.delivery_tag,
                multiple: ack.multiple,
                ack: true,
            }),
            AMQPClass::Basic(basic::AMQPMethod::Nack(nack)) => events.push(Event::Confirm {
                channel,
                tag: nack.delivery_tag,
                multiple: nack.multiple,
                ack: false,
            }),
            AMQPClass::Basic(basic::AMQPMethod::Return(ret)) => self.start_content(
                channel,
                ContentKind::Return {
                    reply_code: ret.reply_code,
                    reply_text: ret.reply_text.to_string(),
                    exchange: ret.exchange.into(),
                    routing_key: ret.routing_key.into(),
                },
            )?,
            AMQPClass::Basic(basic::AMQPMethod::Deliver(deliver)) => self.start_content(
                channel,
                ContentKind::Deliver {
                    tag: deliver.delivery_tag,
                    redelivered: deliver.redelivered,
                    exchange: deliver.exchange.into(),
                    routing_key: deliver.routing_key.into(),
                },
            )?,
            AMQPClass::Basic(basic::AMQPMethod::ConsumeOk(_)) => {
                events.push(Event::Consuming(channel));
            }
            // RabbitMQ's cancel notification asks no reply (`nowait`).
            AMQPClass::Basic(basic::AMQPMethod::Cancel(_)) => {
                events.push(Event::Cancelled(channel))
            }
            AMQPClass::Queue(queue::AMQPMethod::DeclareOk(ok)) => {
                events.push(Event::QueueDeclared {
                    channel,
                    queue: ok.queue.to_string(),
                });
            }
            // Steps of a consumer's set-up; its consume-ok says it is done
            // (a failed step closes the channel instead).
            AMQPClass::Exchange(exchange::AMQPMethod::DeclareOk(_))
            | AMQPClass::Exchange(exchange::AMQPMethod::BindOk(_))
            | AMQPClass::Queue(queue::AMQPMethod::BindOk(_))
            | AMQPClass::Basic(basic::AMQPMethod::QosOk(_)) => {}
            other => {
                return Err(ProtocolError(format!(
                    "unexpected method {}.{} on channel {channel}",
                    other.get_amqp_class_id(),
                    other.get_amqp_method_id()
                )))
            }
        }
        Ok(())
    }

    /// What the client tells the broker about itself: the capabilities the
    /// driver relies on (confirms with nacks, blocked notifications, a
    /// close with a reason on a failed login), and the connection name.
    fn client_properties(&self) -> FieldTable {
        let mut capabilities = FieldTable::default();
        for name in [
            "publisher_confirms",
            "basic.nack",
            "connection.blocked",
            "authentication_failure_close",
            "consumer_cancel_notify",
        ] {
            capabilities.insert(name.into(), AMQPValue::Boolean(true));
        }
        let mut properties = FieldTable::default();
        properties.insert(
            "product".into(),
            AMQPValue::LongString(LongString::from("kazoo.so")),
        );
        properties.insert(
            "connection_name".into(),
            AMQPValue::LongString(LongString::from(self.login.connection_name.as_str())),
        );
        properties.insert("capabilities".into(), AMQPValue::FieldTable(capabilities));
        properties
    }

    /// Queues `channel.open`.
    pub fn open_channel(&mut self, channel: u16) {
        self.method(
            channel,
            AMQPClass::Channel(channel::AMQPMethod::Open(channel::Open {})),
        );
    }

    /// Queues `confirm.select` (waiting for select-ok).
    pub fn confirm_select(&mut self, channel: u16) {
        self.method(
            channel,
            AMQPClass::Confirm(confirm::AMQPMethod::Select(confirm::Select {
                nowait: false,
            })),
        );
    }

    /// Queues a `basic.publish` with its content header and body frames.
    pub fn publish(
        &mut self,
        channel: u16,
        exchange: &ShortString,
        routing_key: &ShortString,
        mandatory: bool,
        properties: &BasicProperties,
        body: &[u8],
    ) {
        self.method(
            channel,
            AMQPClass::Basic(basic::AMQPMethod::Publish(basic::Publish {
                exchange: exchange.clone(),
                routing_key: routing_key.clone(),
                mandatory,
                immediate: false,
            })),
        );
        self.send(&AMQPFrame::Header(
            channel,
            AMQPContentHeader {
                class_id: 60,
                body_size: body.len() as u64,
                properties: properties.clone(),
            },
        ));
        let chunk = self.frame_max as usize - FRAME_OVERHEAD;
        for part in body.chunks(chunk) {
            self.send(&AMQPFrame::Body(channel, part.to_vec()));
        }
    }

    /// Queues `exchange.declare` (waiting for declare-ok).
    pub fn exchange_declare(
        &mut self,
        channel: u16,
        name: &ShortString,
        kind: &str,
        flags: ExchangeFlags,
    ) {
        self.method(
            channel,
            AMQPClass::Exchange(exchange::AMQPMethod::Declare(exchange::Declare {
                exchange: name.clone(),
                kind: kind.into(),
                passive: flags.passive,
                durable: flags.durable,
                auto_delete: flags.auto_delete,
                internal: flags.internal,
                nowait: false,
                arguments: FieldTable::default(),
            })),
        );
    }

    /// Queues `exchange.bind` of `destination` to `source`.
    pub fn exchange_bind(
        &mut self,
        channel: u16,
        destination: &ShortString,
        source: &ShortString,
        routing_key: &ShortString,
    ) {
        self.method(
            channel,
            AMQPClass::Exchange(exchange::AMQPMethod::Bind(exchange::Bind {
                destination: destination.clone(),
                source: source.clone(),
                routing_key: routing_key.clone(),
                nowait: false,
                arguments: FieldTable::default(),
            })),
        );
    }

    /// Queues `queue.declare` (waiting for declare-ok, which names it); a
    /// quorum queue gets `x-queue-type: quorum`.
    pub fn queue_declare(&mut self, channel: u16, name: &ShortString, flags: QueueFlags) {
        self.method(
            channel,
            AMQPClass::Queue(queue::AMQPMethod::Declare(queue::Declare {
                queue: name.clone(),
                passive: flags.passive,
                durable: flags.durable,
                exclusive: flags.exclusive,
                auto_delete: flags.auto_delete,
                nowait: false,
                arguments: queue_arguments(flags),
            })),
        );
    }

    /// Queues `queue.bind`.
    pub fn queue_bind(
        &mut self,
        channel: u16,
        queue: &ShortString,
        exchange: &ShortString,
        routing_key: &ShortString,
    ) {
        self.method(
            channel,
            AMQPClass::Queue(queue::AMQPMethod::Bind(queue::Bind {
                queue: queue.clone(),
                exchange: exchange.clone(),
                routing_key: routing_key.clone(),
                nowait: false,
                arguments: FieldTable::default(),
            })),
        );
    }

    /// Queues `basic.qos`: at most `prefetch` deliveries unacked on the
    /// channel.
    pub fn qos(&mut self, channel: u16, prefetch: u16) {
        self.method(
            channel,
            AMQPClass::Basic(basic::AMQPMethod::Qos(basic::Qos {
                prefetch_count: prefetch,
                global: false,
            })),
        );
    }

    /// Queues `basic.consume` (waiting for consume-ok); the broker names
    /// the consumer. An empty `queue` is the last one declared on the
    /// channel.
    pub fn consume(&mut self, channel: u16, queue: &ShortString, no_ack: bool, exclusive: bool) {
        self.method(
            channel,
            AMQPClass::Basic(basic::AMQPMethod::Consume(basic::Consume {
                queue: queue.clone(),
                consumer_tag: ShortString::default(),
                no_local: false,
                no_ack,
                exclusive,
                nowait: false,
                arguments: FieldTable::default(),
            })),
        );
    }

    /// Queues `basic.ack` of delivery `tag` (and every earlier one of the
    /// channel when `multiple`).
    pub fn ack(&mut self, channel: u16, tag: u64, multiple: bool) {
        self.method(
            channel,
            AMQPClass::Basic(basic::AMQPMethod::Ack(basic::Ack {
                delivery_tag: tag,
                multiple,
            })),
        );
    }

    /// Queues `basic.reject` of delivery `tag`.
    pub fn reject(&mut self, channel: u16, tag: u64, requeue: bool) {
        self.method(
            channel,
            AMQPClass::Basic(basic::AMQPMethod::Reject(basic::Reject {
                delivery_tag: tag,
                requeue,
            })),
        );
    }

    /// Queues a heartbeat frame.
    pub fn send_heartbeat(&mut self) {
        self.send(&AMQPFrame::Heartbeat);
    }

    /// Queues `channel.close` (normal): the broker requeues what the
    /// channel's consumer held unacked.
    pub fn close_channel(&mut self, channel: u16) {
        self.method(
            channel,
            AMQPClass::Channel(channel::AMQPMethod::Close(channel::Close {
                reply_code: 200,
                reply_text: "closing".into(),
                class_id: 0,
                method_id: 0,
            })),
        );
    }

    /// Queues `connection.close` (normal shutdown).
    pub fn close(&mut self) {
        self.method(
            0,
            AMQPClass::Connection(connection::AMQPMethod::Close(connection::Close {
                reply_code: 200,
                reply_text: "closing".into(),
                class_id: 0,
                method_id: 0,
            })),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use amq_protocol::protocol::BasicProperties;

    fn bytes(frame: &AMQPFrame) -> Vec<u8> {
        gen_frame(frame)(WriteContext::from(Vec::new()))
            .unwrap()
            .into_inner()
            .0
    }

    fn method(channel: u16, class: AMQPClass) -> Vec<u8> {
        bytes(&AMQPFrame::Method(channel, class))
    }

    /// Every frame in `out`.
    fn frames(mut out: &[u8]) -> Vec<AMQPFrame> {
        let mut all = Vec::new();
        while !out.is_empty() {
            let (rest, frame) = parse_frame(out).expect("a whole frame");
            all.push(frame);
            out = rest;
        }
        all
    }

    fn login() -> Login {
        Login {
            user: "guest".into(),
            password: "secret".into(),
            vhost: "/kazoo".into(),
            connection_name: "test".into(),
        }
    }

    /// Feeds `input` one byte at a time: partial frames must wait.
    fn feed(conn: &mut Conn, input: &[u8]) -> Vec<Event> {
        let mut buffer = Vec::new();
        let mut events = Vec::new();
        for byte in input {
            buffer.push(*byte);
            conn.receive(&mut buffer, &mut events).expect("valid input");
        }
        assert!(buffer.is_empty(), "every frame consumed");
        events
    }

    fn start(mechanisms: &str) -> Vec<u8> {
        method(
            0,
            AMQPClass::Connection(connection::AMQPMethod::Start(connection::Start {
                version_major: 0,
                version_minor: 9,
                server_properties: FieldTable::default(),
                mechanisms: mechanisms.into(),
                locales: "en_US".into(),
            })),
        )
    }

    /// A connection through the handshake with the broker's `frame_max`.
    fn ready(frame_max: u32) -> Conn {
        let mut conn = Conn::new(login());
        assert_eq!(conn.output(), b"AMQP\x00\x00\x09\x01");
        conn.clear_output();
        assert!(feed(&mut conn, &start("AMQPLAIN PLAIN")).is_empty());
        match frames(conn.output()).as_slice() {
            [AMQPFrame::Method(0, AMQPClass::Connection(connection::AMQPMethod::StartOk(ok)))] => {
                assert_eq!(ok.mechanism.as_str(), "PLAIN");
                assert_eq!(ok.response.as_bytes(), b"\0guest\0secret");
                assert!(ok.client_properties.contains_key("capabilities"));
            }
            other => panic!("expected start-ok, got {other:?}"),
        }
        conn.clear_output();
        let tune = method(
            0,
            AMQPClass::Connection(connection::AMQPMethod::Tune(connection::Tune {
                channel_max: 2047,
                frame_max,
                heartbeat: 60,
            })),
        );
        assert!(feed(&mut conn, &tune).is_empty());
        match frames(conn.output()).as_slice() {
            [AMQPFrame::Method(0, AMQPClass::Connection(connection::AMQPMethod::TuneOk(ok))), AMQPFrame::Method(0, AMQPClass::Connection(connection::AMQPMethod::Open(open)))] =>
            {
                assert_eq!(ok.heartbeat, 0);
                assert_eq!(ok.frame_max, frame_max.min(FRAME_MAX));
                assert_eq!(open.virtual_host.as_str(), "/kazoo");
            }
            other => panic!("expected tune-ok and open, got {other:?}"),
        }
        conn.clear_output();
        let open_ok = method(
            0,
            AMQPClass::Connection(connection::AMQPMethod::OpenOk(connection::OpenOk {})),
        );
        assert_eq!(feed(&mut conn, &open_ok), [Event::Ready]);
        conn
    }

    #[test]
    fn the_login_answers_start_and_tune_and_reports_ready() {
        ready(131_072);
    }

    #[test]
    fn a_broker_without_plain_login_is_refused() {
        let mut conn = Conn::new(login());
        let mut input = start("EXTERNAL");
        assert!(conn.receive(&mut input, &mut Vec::new()).is_err());
    }

    #[test]
    fn a_body_larger_than_frame_max_goes_in_frames_of_at_most_frame_max() {
        let mut conn = ready(4096);
        conn.clear_output();
        let body: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        let properties = BasicProperties::default().with_content_type("application/json".into());
        conn.publish(1, &"x".into(), &"rk".into(), false, &properties, &body);
        let all = frames(conn.output());
        let mut sent = Vec::new();
        for frame in &all[2..] {
            match frame {
                AMQPFrame::Body(1, part) => {
                    assert!(part.len() + FRAME_OVERHEAD <= 4096);
                    sent.extend_from_slice(part);
                }
                other => panic!("expected a body frame, got {other:?}"),
            }
        }
        assert_eq!(sent, body);
        match &all[..2] {
            [AMQPFrame::Method(1, AMQPClass::Basic(basic::AMQPMethod::Publish(p))), AMQPFrame::Header(1, h)] =>
            {
                assert_eq!((p.exchange.as_str(), p.routing_key.as_str()), ("x", "rk"));
                assert_eq!(h.body_size, 10_000);
                assert_eq!(h.properties, properties);
            }
            other => panic!("expected publish and header, got {other:?}"),
        }
    }

    #[test]
    fn a_frame_larger_than_frame_max_is_refused_before_it_is_read() {
        let mut conn = ready(4096);
        // The header of a 1 MB body frame: no need to wait for the rest.
        let mut input = vec![3, 0, 1, 0, 0x10, 0, 0];
        assert!(conn.receive(&mut input, &mut Vec::new()).is_err());
    }

    #[test]
    fn a_return_is_assembled_then_confirmed_and_closes_are_answered() {
        let mut conn = ready(131_072);
        conn.clear_output();
        let mut input = method(
            1,
            AMQPClass::Basic(basic::AMQPMethod::Return(basic::Return {
                reply_code: 312,
                reply_text: "NO_ROUTE".into(),
                exchange: "x".into(),
                routing_key: "rk".into(),
            })),
        );
        input.extend(bytes(&AMQPFrame::Header(
            1,
            AMQPContentHeader {
                class_id: 60,
                body_size: 5,
                properties: BasicProperties::default(),
            },
        )));
        input.extend(bytes(&AMQPFrame::Body(1, b"he".to_vec())));
        input.extend(bytes(&AMQPFrame::Body(1, b"llo".to_vec())));
        input.extend(method(
            1,
            AMQPClass::Basic(basic::AMQPMethod::Ack(basic::Ack {
                delivery_tag: 3,
                multiple: true,
            })),
        ));
        input.extend(method(
            1,
            AMQPClass::Channel(channel::AMQPMethod::Close(channel::Close {
                reply_code: 404,
                reply_text: "NOT_FOUND".into(),
                class_id: 60,
                method_id: 40,
            })),
        ));
        input.extend(method(
            0,
            AMQPClass::Connection(connection::AMQPMethod::Blocked(connection::Blocked {
                reason: "low on memory".into(),
            })),
        ));
        input.extend(method(
            0,
            AMQPClass::Connection(connection::AMQPMethod::Close(connection::Close {
                reply_code: 320,
                reply_text: "CONNECTION_FORCED".into(),
                class_id: 0,
                method_id: 0,
            })),
        ));
        assert_eq!(
            feed(&mut conn, &input),
            [
                Event::Returned {
                    channel: 1,
                    reply_code: 312,
                    reply_text: "NO_ROUTE".into(),
                    exchange: "x".into(),
                    routing_key: "rk".into(),
                    body: b"hello".to_vec(),
                },
                Event::Confirm {
                    channel: 1,
                    tag: 3,
                    multiple: true,
                    ack: true,
                },
                Event::ChannelClosed {
                    channel: 1,
                    code: 404,
                    text: "NOT_FOUND".into(),
                },
                Event::Blocked("low on memory".into()),
                Event::ConnectionClosed {
                    code: 320,
                    text: "CONNECTION_FORCED".into(),
                },
            ]
        );
        assert!(matches!(
            frames(conn.output()).as_slice(),
            [
                AMQPFrame::Method(1, AMQPClass::Channel(channel::AMQPMethod::CloseOk(_))),
                AMQPFrame::Method(0, AMQPClass::Connection(connection::AMQPMethod::CloseOk(_)))
            ]
        ));
    }

    #[test]
    fn a_delivery_is_assembled_from_its_frames() {
        let mut conn = ready(131_072);
        let mut input = method(
            2,
            AMQPClass::Basic(basic::AMQPMethod::ConsumeOk(basic::ConsumeOk {
                consumer_tag: "c".into(),
            })),
        );
        input.extend(method(
            2,
            AMQPClass::Basic(basic::AMQPMethod::Deliver(basic::Deliver {
                consumer_tag: "c".into(),
                delivery_tag: 1,
                redelivered: false,
                exchange: "targeted".into(),
                routing_key: "rk".into(),
            })),
        ));
        input.extend(bytes(&AMQPFrame::Header(
            2,
            AMQPContentHeader {
                class_id: 60,
                body_size: 0,
                properties: BasicProperties::default(),
            },
        )));
        assert_eq!(
            feed(&mut conn, &input),
            [
                Event::Consuming(2),
                Event::Delivery {
                    channel: 2,
                    tag: 1,
                    redelivered: false,
                    exchange: "targeted".into(),
                    routing_key: "rk".into(),
                    body: Vec::new(),
                },
            ]
        );
    }

    /// The heartbeat a connection answers `connection.tune` (proposing 60 s)
    /// with, for what it asked.
    fn agreed_heartbeat(wanted: Option<u16>) -> (u16, u16) {
        let mut conn = Conn::with_heartbeat(login(), wanted);
        feed(&mut conn, &start("PLAIN"));
        conn.clear_output();
        let tune = method(
            0,
            AMQPClass::Connection(connection::AMQPMethod::Tune(connection::Tune {
                channel_max: 2047,
                frame_max: 131_072,
                heartbeat: 60,
            })),
        );
        feed(&mut conn, &tune);
        match frames(conn.output()).first() {
            Some(AMQPFrame::Method(
                0,
                AMQPClass::Connection(connection::AMQPMethod::TuneOk(ok)),
            )) => (ok.heartbeat, conn.heartbeat()),
            other => panic!("expected tune-ok, got {other:?}"),
        }
    }

    #[test]
    fn heartbeats_are_off_by_default_the_brokers_for_zero_or_as_asked() {
        assert_eq!(agreed_heartbeat(None), (0, 0));
        assert_eq!(agreed_heartbeat(Some(0)), (60, 60));
        assert_eq!(agreed_heartbeat(Some(10)), (10, 10));
    }

    #[test]
    fn consumer_methods_are_encoded_as_amq_protocol_encodes_them() {
        let mut conn = ready(131_072);
        let flags = QueueFlags {
            durable: true,
            quorum: true,
            ..QueueFlags::default()
        };
        let exchange_flags = ExchangeFlags {
            durable: true,
            ..ExchangeFlags::default()
        };
        conn.qos(3, 64);
        conn.exchange_declare(3, &"x".into(), "topic", exchange_flags);
        conn.exchange_bind(3, &"x".into(), &"src".into(), &"a.#".into());
        conn.queue_declare(3, &"q".into(), flags);
        conn.queue_bind(3, &"q".into(), &"x".into(), &"a.b".into());
        conn.consume(3, &"q".into(), false, false);
        conn.ack(3, 7, true);
        conn.reject(3, 9, false);
        conn.send_heartbeat();
        conn.close_channel(3);
        let mut expected = method(
            3,
            AMQPClass::Basic(basic::AMQPMethod::Qos(basic::Qos {
                prefetch_count: 64,
                global: false,
            })),
        );
        expected.extend(method(
            3,
            AMQPClass::Exchange(exchange::AMQPMethod::Declare(exchange::Declare {
                exchange: "x".into(),
                kind: "topic".into(),
                passive: false,
                durable: true,
                auto_delete: false,
                internal: false,
                nowait: false,
                arguments: FieldTable::default(),
            })),
        ));
        expected.extend(method(
            3,
            AMQPClass::Exchange(exchange::AMQPMethod::Bind(exchange::Bind {
                destination: "x".into(),
                source: "src".into(),
                routing_key: "a.#".into(),
                nowait: false,
                arguments: FieldTable::default(),
            })),
        ));
        let mut quorum = FieldTable::default();
        quorum.insert(
            "x-queue-type".into(),
            AMQPValue::LongString(LongString::from("quorum")),
        );
        expected.extend(method(
            3,
            AMQPClass::Queue(queue::AMQPMethod::Declare(queue::Declare {
                queue: "q".into(),
                passive: false,
                durable: true,
                exclusive: false,
                auto_delete: true,
                nowait: false,
                arguments: quorum,
            })),
        ));
        expected.extend(method(
            3,
            AMQPClass::Queue(queue::AMQPMethod::Bind(queue::Bind {
                queue: "q".into(),
                exchange: "x".into(),
                routing_key: "a.b".into(),
                nowait: false,
                arguments: FieldTable::default(),
            })),
        ));
        expected.extend(method(
            3,
            AMQPClass::Basic(basic::AMQPMethod::Consume(basic::Consume {
                queue: "q".into(),
                consumer_tag: "".into(),
                no_local: false,
                no_ack: false,
                exclusive: false,
                nowait: false,
                arguments: FieldTable::default(),
            })),
        ));
        expected.extend(method(
            3,
            AMQPClass::Basic(basic::AMQPMethod::Ack(basic::Ack {
                delivery_tag: 7,
                multiple: true,
            })),
        ));
        expected.extend(method(
            3,
            AMQPClass::Basic(basic::AMQPMethod::Reject(basic::Reject {
                delivery_tag: 9,
                requeue: false,
            })),
        ));
        expected.extend(bytes(&AMQPFrame::Heartbeat));
        expected.extend(method(
            3,
            AMQPClass::Channel(channel::AMQPMethod::Close(channel::Close {
                reply_code: 200,
                reply_text: "closing".into(),
                class_id: 0,
                method_id: 0,
            })),
        ));
        assert_eq!(conn.output(), &expected[..]);
    }

    #[test]
    fn a_declared_queue_a_cancelled_consumer_and_a_redelivery_are_reported() {
        let mut conn = ready(131_072);
        let mut input = method(
            4,
            AMQPClass::Queue(queue::AMQPMethod::DeclareOk(queue::DeclareOk {
                queue: "amq.gen-1".into(),
                message_count: 0,
                consumer_count: 0,
            })),
        );
        for ok in [
            AMQPClass::Basic(basic::AMQPMethod::QosOk(basic::QosOk {})),
            AMQPClass::Exchange(exchange::AMQPMethod::DeclareOk(exchange::DeclareOk {})),
            AMQPClass::Exchange(exchange::AMQPMethod::BindOk(exchange::BindOk {})),
            AMQPClass::Queue(queue::AMQPMethod::BindOk(queue::BindOk {})),
        ] {
            input.extend(method(4, ok));
        }
        input.extend(method(
            4,
            AMQPClass::Basic(basic::AMQPMethod::Deliver(basic::Deliver {
                consumer_tag: "c".into(),
                delivery_tag: 12,
                redelivered: true,
                exchange: "x".into(),
                routing_key: "a.b".into(),
            })),
        ));
        input.extend(bytes(&AMQPFrame::Header(
            4,
            AMQPContentHeader {
                class_id: 60,
                body_size: 2,
                properties: BasicProperties::default(),
            },
        )));
        input.extend(bytes(&AMQPFrame::Body(4, b"{}".to_vec())));
        input.extend(method(
            4,
            AMQPClass::Basic(basic::AMQPMethod::Cancel(basic::Cancel {
                consumer_tag: "c".into(),
                nowait: true,
            })),
        ));
        assert_eq!(
            feed(&mut conn, &input),
            [
                Event::QueueDeclared {
                    channel: 4,
                    queue: "amq.gen-1".into(),
                },
                Event::Delivery {
                    channel: 4,
                    tag: 12,
                    redelivered: true,
                    exchange: "x".into(),
                    routing_key: "a.b".into(),
                    body: b"{}".to_vec(),
                },
                Event::Cancelled(4),
            ]
        );
        assert!(conn.output().is_empty(), "a cancel asks no reply");
    }

    #[test]
    fn an_unexpected_method_is_a_protocol_error() {
        let mut conn = ready(131_072);
        let mut input = method(
            1,
            AMQPClass::Basic(basic::AMQPMethod::GetEmpty(basic::GetEmpty {})),
        );
        assert!(conn.receive(&mut input, &mut Vec::new()).is_err());
    }
}
