//! Opening one AMQP connection (TCP or TLS, login), reconnect back-off, and
//! the reporting shared by the publisher and consumer tasks.

use std::os::fd::AsFd;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_rs::traits::Reactor;
use async_rs::{Runtime, Tokio};
use lapin::tcp::{AsyncTcpStream, RustlsConnector};
use lapin::uri::{
    AMQPAuthority, AMQPQueryString, AMQPScheme, AMQPUri, AMQPUserInfo, SASLMechanism,
};
use lapin::{Connection, ConnectionProperties, ErrorKind};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use super::{lock, tls, BrokerOptions, Event, Role, Slot, HANDSHAKE_TIMEOUT};
use crate::config::Scheme;

/// The largest frame these connections accept: the C module's, and the
/// broker's default. It cannot be smaller: the broker splits a body into
/// frames of the size agreed but sends a content header in one frame
/// whatever its size, so a message with many headers would close the
/// consuming connection (the poison tests publish one of 119 kB). lapin
/// keeps a receive and a send ring of 32 frames per connection, 8 MB in
/// all, whose pages are touched as traffic first wraps round them: a soak
/// sees that as growth during its first minutes, bounded by 8 MB a
/// connection.
const FRAME_MAX: u32 = 131_072;

/// What a connection task knows.
pub(crate) struct ConnCtx {
    pub(crate) slot: Arc<Slot>,
    pub(crate) role: Role,
    pub(crate) options: Arc<BrokerOptions>,
    pub(crate) runtime: Runtime<Tokio>,
    pub(crate) events: mpsc::Sender<Event>,
    /// The TLS set-up of an `amqps://` broker, made on its first connect.
    pub(crate) tls_cache: Mutex<Option<RustlsConnector>>,
}

/// What was last reported for a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Reported {
    Nothing,
    Up,
    Down,
}

impl ConnCtx {
    pub(crate) fn id(&self) -> u32 {
        self.slot.broker.id
    }

    /// `broker 1 (amqp://guest@host:5672/%2F (zone local)) publisher`
    pub(crate) fn name(&self) -> String {
        format!(
            "broker {} ({}) {}",
            self.slot.broker.id,
            self.slot.broker.redacted_url(),
            self.role
        )
    }

    pub(crate) async fn send(&self, event: Event) {
        // The receiver gone means the service is gone: nothing to tell.
        let _ = self.events.send(event).await;
    }

    pub(crate) async fn report_up(&self, reported: &mut Reported) {
        log::info!("{}: connected", self.name());
        if matches!(self.role, Role::Consumer(_)) && *reported != Reported::Up {
            self.slot.consumers_up.fetch_add(1, Ordering::Relaxed);
        }
        *reported = Reported::Up;
        self.send(Event::Connected {
            broker_id: self.id(),
            zone: self.slot.broker.zone.clone(),
            host: self.slot.broker.host.clone(),
            role: self.role,
        })
        .await;
    }

    /// Reports a connection lost or an attempt failed: an event for every
    /// failed attempt (as the C module fires `closed` on each), a log line
    /// at warning level once per change and at debug level on the retries.
    pub(crate) async fn report_down(&self, reported: &mut Reported, reason: &str) {
        match *reported {
            Reported::Down => log::debug!("{}: still not connected: {reason}", self.name()),
            Reported::Up => log::info!("{}: disconnected: {reason}", self.name()),
            Reported::Nothing => log::warn!("{}: cannot connect: {reason}", self.name()),
        }
        if matches!(self.role, Role::Consumer(_)) && *reported == Reported::Up {
            self.slot.consumers_up.fetch_sub(1, Ordering::Relaxed);
        }
        *reported = Reported::Down;
        self.send(Event::Disconnected {
            broker_id: self.id(),
            zone: self.slot.broker.zone.clone(),
            host: self.slot.broker.host.clone(),
            role: self.role,
            reason: reason.to_string(),
        })
        .await;
    }

    /// Opens the connection: TCP connect within `connect_timeout`, then TLS
    /// and the AMQP login within [`HANDSHAKE_TIMEOUT`]. The error text never
    /// holds the password.
    /// The connection name the broker shows (`rabbitmqctl list_connections
    /// name`).
    pub(crate) fn connection_name(&self) -> String {
        format!(
            "kazoo {} broker {} {}",
            self.options.node_hostname, self.slot.broker.id, self.role
        )
    }

    pub(crate) async fn connect(&self) -> Result<Arc<Connection>, String> {
        let broker = &self.slot.broker;
        let tls = match broker.scheme {
            Scheme::Amqp => None,
            Scheme::Amqps => {
                let cached = lock(&self.tls_cache).clone();
                match cached {
                    Some(connector) => Some(connector),
                    None => {
                        let connector = tls::connector(&self.options.tls)?;
                        *lock(&self.tls_cache) = Some(connector.clone());
                        Some(connector)
                    }
                }
            }
        };
        let connect_timeout = self.options.connect_timeout.max(Duration::from_millis(1));
        let uri = AMQPUri {
            scheme: match broker.scheme {
                Scheme::Amqp => AMQPScheme::AMQP,
                Scheme::Amqps => AMQPScheme::AMQPS,
            },
            authority: AMQPAuthority {
                userinfo: AMQPUserInfo {
                    username: broker.user.clone(),
                    password: broker.password.clone(),
                },
                host: broker.host.clone(),
                port: broker.port,
            },
            vhost: broker.vhost.clone(),
            query: AMQPQueryString {
                frame_max: Some(FRAME_MAX),
                channel_max: None,
                heartbeat: Some(self.options.heartbeat_secs),
                connection_timeout: Some(connect_timeout.as_millis() as u64),
                auth_mechanism: Some(SASLMechanism::Plain),
            },
        };
        let properties =
            ConnectionProperties::default().with_connection_name(self.connection_name().into());
        // A duplicate of the socket, to shut it down if the login does not
        // finish in time: dropping lapin's connect future does not stop its
        // IO thread, which would wait on the silent socket for ever.
        let socket: Arc<Mutex<Option<std::net::TcpStream>>> = Arc::new(Mutex::new(None));
        let socket_slot = socket.clone();
        let host = broker.host.clone();
        let port = broker.port;
        let transport = async move |_uri: AMQPUri,
                                    runtime: Runtime<Tokio>|
                    -> lapin::Result<
            AsyncTcpStream<<Tokio as Reactor>::TcpStream>,
        > {
            let tcp = tokio::time::timeout(connect_timeout, async {
                let addrs: Vec<std::net::SocketAddr> =
                    tokio::net::lookup_host((host.as_str(), port))
                        .await?
                        .collect();
                runtime.tcp_connect(addrs).await
            })
            .await
            .map_err(|_| {
                std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("TCP connect to {host}:{port} timed out after {connect_timeout:?}"),
                )
            })?
            .map_err(|e| {
                std::io::Error::new(e.kind(), format!("TCP connect to {host}:{port}: {e}"))
            })?;
            if let Ok(fd) = tcp.get_ref().as_fd().try_clone_to_owned() {
                *lock(&socket_slot) = Some(std::net::TcpStream::from(fd));
            }
            let stream = AsyncTcpStream::Plain(tcp);
            match &tls {
                None => Ok(stream),
                Some(connector) => Ok(stream.into_rustls(connector, &host).await.map_err(|e| {
                    std::io::Error::new(
                        e.kind(),
                        format!("TLS handshake with {host}:{port} failed: {e}"),
                    )
                })?),
            }
        };
        let connecting = Connection::connector(uri, self.runtime.clone(), transport, properties);
        let limit = connect_timeout + HANDSHAKE_TIMEOUT;
        let outcome = match tokio::time::timeout(limit, connecting).await {
            Ok(Ok(connection)) => Ok(Arc::new(connection)),
            Ok(Err(e)) => Err(error_text(&e)),
            Err(_) => {
                if let Some(socket) = lock(&socket).as_ref() {
                    let _ = socket.shutdown(std::net::Shutdown::Both);
                }
                Err(format!("no AMQP login within {limit:?}"))
            }
        };
        // Closes the duplicate descriptor only; the connection keeps its own.
        lock(&socket).take();
        outcome
    }
}

/// A lapin error as a log/event text (lapin's texts hold no credentials).
pub(crate) fn error_text(e: &lapin::Error) -> String {
    match e.kind() {
        ErrorKind::IOError(io) => io.to_string(),
        ErrorKind::ProtocolError(amqp) => {
            format!("{} {}", amqp.get_id(), amqp.get_message())
        }
        _ => e.to_string(),
    }
}

/// Reconnect delays: 100 ms doubling to 5 s.
pub(crate) struct Backoff {
    next: Duration,
    min: Duration,
    max: Duration,
}

impl Backoff {
    pub(crate) fn new(min: Duration, max: Duration) -> Backoff {
        Backoff {
            next: min,
            min,
            max,
        }
    }

    pub(crate) fn reconnect() -> Backoff {
        Backoff::new(Duration::from_millis(100), Duration::from_secs(5))
    }

    pub(crate) fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = (self.next * 2).min(self.max);
        delay
    }

    pub(crate) fn reset(&mut self) {
        self.next = self.min;
    }
}

/// An open connection of one client (lapin's, or the module's own).
pub(crate) trait Link: Sized {
    /// Opens the connection (within the connect and handshake timeouts);
    /// the error text never holds the password.
    async fn open(ctx: &ConnCtx) -> Result<Self, String>;

    /// Closes it politely, without waiting long.
    async fn close(self, text: &str);
}

impl Link for Arc<Connection> {
    async fn open(ctx: &ConnCtx) -> Result<Self, String> {
        ctx.connect().await
    }

    async fn close(self, text: &str) {
        if self.status().connected() {
            let close = self.as_ref().close(200, text.into());
            if let Ok(Err(e)) = tokio::time::timeout(Duration::from_secs(2), close).await {
                log::debug!("closing a broker connection: {e}");
            }
        }
    }
}

/// What one kind of connection serves.
pub(crate) trait Serve {
    type Link: Link;

    /// Serves one open connection; returns why it ended, or `None` on
    /// shutdown.
    async fn serve(
        &mut self,
        link: &mut Self::Link,
        reported: &mut Reported,
        shutdown: &mut watch::Receiver<()>,
    ) -> Option<String>;
}

/// A connection's life: connect, serve, and on loss report it and reconnect
/// with back-off (reset after a stable session), until shutdown.
pub(crate) async fn connection_loop<S: Serve>(
    ctx: &ConnCtx,
    mut shutdown: watch::Receiver<()>,
    session: &mut S,
) {
    let mut backoff = Backoff::reconnect();
    let mut reported = Reported::Nothing;
    loop {
        let attempt = tokio::select! {
            attempt = S::Link::open(ctx) => attempt,
            _ = shutdown.changed() => return,
        };
        let reason = match attempt {
            Err(reason) => reason,
            Ok(mut link) => {
                let since = Instant::now();
                let outcome = session.serve(&mut link, &mut reported, &mut shutdown).await;
                match outcome {
                    None => {
                        link.close("shutting down").await;
                        return;
                    }
                    Some(reason) => {
                        link.close("reconnecting").await;
                        if since.elapsed() >= STABLE {
                            backoff.reset();
                        }
                        reason
                    }
                }
            }
        };
        ctx.report_down(&mut reported, &reason).await;
        tokio::select! {
            _ = tokio::time::sleep(backoff.next_delay()) => {}
            _ = shutdown.changed() => return,
        }
    }
}

/// A connection open this long resets the back-off.
pub(crate) const STABLE: Duration = Duration::from_secs(10);

/// How often a connection task checks lapin's view of its connection, on
/// top of lapin's error events.
pub(crate) const WATCH_INTERVAL: Duration = Duration::from_millis(500);

/// The next item of a stream.
pub(crate) async fn next<S: futures_core::Stream + Unpin>(stream: &mut S) -> Option<S::Item> {
    std::future::poll_fn(|cx| std::pin::Pin::new(&mut *stream).poll_next(cx)).await
}
