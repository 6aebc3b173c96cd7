//! One broker connection on the module's own AMQP core ([`crate::amqp`]),
//! driven by a tokio task on the AMQP process's runtime thread: TCP connect
//! and login within their timeouts, reads parsed into events, writes with a
//! bound, heartbeats and a polite close. The consuming connections
//! (`native_consumer`) and the publisher (`native_publisher`) run on it.
//!
//! Heartbeats are as agreed in `connection.tune` (`amqp_heartbeats`; 0 takes
//! the broker's proposal, as lapin does): one is sent when the connection
//! has written nothing for half the interval, and the broker is given up
//! after two intervals without a byte from it.
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::connect::{self, ConnCtx};
use super::HANDSHAKE_TIMEOUT;
use crate::amqp::{Conn, Event, Login};

/// What one `read` may take: many small deliveries at once.
pub(super) const READ_CHUNK: usize = 64 * 1024;

/// A write the broker does not take within this long ends the connection.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// Channel numbers are not reused on a connection; past this one (far more
/// than the units and their redeclarations need) it is reopened.
pub(crate) const LAST_CHANNEL: u16 = 2047;

/// A shutdown waits this long for the broker's `close-ok`.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// An open connection.
pub(super) struct Link {
    pub(super) stream: TcpStream,
    pub(super) conn: Conn,
    /// Read and not parsed yet (at most a partial frame between reads).
    pub(super) input: Vec<u8>,
    /// Parsed and not handled yet (kept for its capacity).
    pub(super) events: Vec<Event>,
    last_read: Instant,
    last_write: Instant,
    /// The socket failed, or the broker closed the connection: nothing
    /// more to say to it.
    gone: bool,
}

/// Why a connection ended.
pub(super) struct Ended {
    pub(super) reason: String,
    /// The broker closed it with a code a declaration causes.
    pub(super) blamed: bool,
}

impl Ended {
    pub(super) fn io(e: &std::io::Error) -> Ended {
        Ended {
            reason: e.to_string(),
            blamed: false,
        }
    }
}

impl Link {
    /// Connects and logs in.
    async fn connect(ctx: &ConnCtx) -> Result<Link, String> {
        let broker = &ctx.slot.broker;
        let (host, port) = (broker.host.as_str(), broker.port);
        let connect_timeout = ctx.options.connect_timeout.max(Duration::from_millis(1));
        let stream =
            match tokio::time::timeout(connect_timeout, TcpStream::connect((host, port))).await {
                Ok(Ok(stream)) => stream,
                Ok(Err(e)) => return Err(format!("TCP connect to {host}:{port}: {e}")),
                Err(_) => {
                    return Err(format!(
                        "TCP connect to {host}:{port} timed out after {connect_timeout:?}"
                    ))
                }
            };
        stream
            .set_nodelay(true)
            .map_err(|e| format!("cannot set up the socket: {e}"))?;
        let login = Login {
            user: broker.user.clone(),
            password: broker.password.clone(),
            vhost: broker.vhost.clone(),
            connection_name: ctx.connection_name(),
        };
        let now = Instant::now();
        let mut link = Link {
            stream,
            conn: Conn::with_heartbeat(login, Some(ctx.options.heartbeat_secs)),
            input: Vec::with_capacity(READ_CHUNK),
            events: Vec::new(),
            last_read: now,
            last_write: now,
            gone: false,
        };
        let login = async {
            loop {
                link.flush().await?;
                link.read().await?;
                for event in std::mem::take(&mut link.events) {
                    match event {
                        Event::Ready => return Ok(()),
                        Event::ConnectionClosed { code, text } => {
                            return Err(Ended {
                                reason: format!("{code} {text}"),
                                blamed: false,
                            })
                        }
                        _ => {}
                    }
                }
            }
        };
        match tokio::time::timeout(HANDSHAKE_TIMEOUT, login).await {
            Ok(Ok(())) => Ok(link),
            Ok(Err(ended)) => Err(ended.reason),
            Err(_) => Err(format!("no AMQP login within {HANDSHAKE_TIMEOUT:?}")),
        }
    }

    /// Writes what the connection has queued.
    pub(super) async fn flush(&mut self) -> Result<(), Ended> {
        if self.conn.output().is_empty() {
            return Ok(());
        }
        let written =
            tokio::time::timeout(WRITE_TIMEOUT, self.stream.write_all(self.conn.output())).await;
        match written {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                self.gone = true;
                return Err(Ended::io(&e));
            }
            Err(_) => {
                self.gone = true;
                return Err(Ended {
                    reason: format!("the broker took no data for {WRITE_TIMEOUT:?}"),
                    blamed: false,
                });
            }
        }
        self.conn.clear_output();
        self.last_write = Instant::now();
        Ok(())
    }

    /// Reads once and parses what came into [`Link::events`].
    pub(super) async fn read(&mut self) -> Result<(), Ended> {
        let read = self.read_some().await;
        self.parse(read)
    }

    /// Reads once, unparsed (then [`Link::parse`]). Cancel-safe: a read
    /// that loses a `select!` race read nothing.
    pub(super) async fn read_some(&mut self) -> std::io::Result<usize> {
        self.input.reserve(READ_CHUNK);
        self.stream.read_buf(&mut self.input).await
    }

    /// What a read returned, parsed.
    pub(super) fn parse(&mut self, read: std::io::Result<usize>) -> Result<(), Ended> {
        let parsed = match read {
            Ok(0) => Err(Ended {
                reason: "connection closed by the broker".into(),
                blamed: false,
            }),
            Ok(_) => {
                self.last_read = Instant::now();
                self.conn
                    .receive(&mut self.input, &mut self.events)
                    .map_err(|e| Ended {
                        reason: e.to_string(),
                        blamed: false,
                    })
            }
            Err(e) => Err(Ended::io(&e)),
        };
        // The broker's close (answered by the parser) ends it too.
        self.gone |= parsed.is_err()
            || self
                .events
                .iter()
                .any(|e| matches!(e, Event::ConnectionClosed { .. }));
        parsed
    }

    /// When the heartbeat timer must look again: the next heartbeat to
    /// send, or the moment the broker has been silent too long.
    pub(super) fn heartbeat_at(&self) -> Option<Instant> {
        let interval = Duration::from_secs(self.conn.heartbeat().into());
        (!interval.is_zero())
            .then(|| (self.last_write + interval / 2).min(self.last_read + interval * 2))
    }

    /// The heartbeat timer fired: sends a heartbeat if due; fails if the
    /// broker has been silent for two intervals.
    pub(super) fn heartbeat(&mut self) -> Result<(), Ended> {
        let interval = Duration::from_secs(self.conn.heartbeat().into());
        let now = Instant::now();
        if now >= self.last_read + interval * 2 {
            return Err(Ended {
                reason: format!("no heartbeat from the broker for {:?}", interval * 2),
                blamed: false,
            });
        }
        if now >= self.last_write + interval / 2 {
            self.conn.send_heartbeat();
        }
        Ok(())
    }

    /// Closes the connection politely, without waiting long.
    async fn shut(mut self) {
        if self.gone {
            // At most the close-ok of the broker's close is left to send.
            let _ = self.flush().await;
            return;
        }
        self.conn.close();
        let closed = async {
            self.flush().await?;
            loop {
                self.read().await?;
                if std::mem::take(&mut self.events)
                    .iter()
                    .any(|e| matches!(e, Event::ConnectionClosed { .. }))
                {
                    return Ok::<(), Ended>(());
                }
            }
        };
        if let Ok(Err(ended)) = tokio::time::timeout(CLOSE_TIMEOUT, closed).await {
            log::debug!("closing a broker connection: {}", ended.reason);
        }
    }
}

/// Sleeps until `at`; for ever without one (a `select!` branch that is off).
pub(super) async fn sleep_until(at: Option<Instant>) {
    if let Some(at) = at {
        tokio::time::sleep_until(at).await;
    } else {
        std::future::pending::<()>().await;
    }
}

impl connect::Link for Link {
    async fn open(ctx: &ConnCtx) -> Result<Link, String> {
        Link::connect(ctx).await
    }

    async fn close(self, _text: &str) {
        self.shut().await;
    }
}
