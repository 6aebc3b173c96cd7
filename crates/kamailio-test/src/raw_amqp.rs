//! A minimal AMQP 0-9-1 publisher that writes the frames byte by byte, for
//! hostile-input tests: unlike any AMQP client library, it sends whatever
//! bytes it is given as the exchange, routing key, property or header names,
//! including invalid UTF-8, and any field-table encoding.
//!
//! Blocking, one connection and one channel in confirm mode: a publish
//! returns once the broker confirmed it (`basic.ack`), or with the broker's
//! reason when it refused it (a `basic.nack`, or the channel or connection
//! closed).
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use crate::HarnessError;

const FRAME_METHOD: u8 = 1;
const FRAME_HEADER: u8 = 2;
const FRAME_BODY: u8 = 3;
const FRAME_END: u8 = 0xCE;
const CHANNEL: u16 = 1;
/// How long the broker may take to answer one step.
const READ_TIMEOUT: Duration = Duration::from_secs(10);

fn err(what: &str, e: impl std::fmt::Display) -> HarnessError {
    HarnessError::Usage(format!("raw AMQP publisher: {what}: {e}"))
}

/// AMQP `shortstr`: the length as one byte, then the bytes (at most 255).
pub(crate) fn short_str(bytes: &[u8]) -> Vec<u8> {
    assert!(bytes.len() <= 255, "a shortstr holds at most 255 bytes");
    let mut out = vec![bytes.len() as u8];
    out.extend_from_slice(bytes);
    out
}

/// AMQP `longstr`: the length as four bytes, then the bytes.
pub(crate) fn long_str(bytes: &[u8]) -> Vec<u8> {
    let mut out = (bytes.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(bytes);
    out
}

/// A field value of type `S` (long string).
pub fn value_long_str(bytes: &[u8]) -> Vec<u8> {
    let mut out = vec![b'S'];
    out.extend(long_str(bytes));
    out
}

/// A field value of type `F` (nested table) holding the encoded `table`.
pub fn value_table(table: &[u8]) -> Vec<u8> {
    let mut out = vec![b'F'];
    out.extend_from_slice(table);
    out
}

/// A field value of type `A` (array) of encoded values.
pub fn value_array(values: &[u8]) -> Vec<u8> {
    let mut out = vec![b'A'];
    out.extend(long_str(values));
    out
}

/// A field table (with its length) from entries of a name and an encoded value.
pub fn table(entries: &[(&[u8], Vec<u8>)]) -> Vec<u8> {
    let mut body = Vec::new();
    for (name, value) in entries {
        body.extend(short_str(name));
        body.extend_from_slice(value);
    }
    long_str(&body)
}

/// The basic properties of a message, each already encoded (shortstr,
/// table...), written in the order of their flag bits.
#[derive(Clone, Debug, Default)]
pub struct RawProperties {
    /// (flag bit 15..2, encoded value)
    fields: Vec<(u8, Vec<u8>)>,
}

impl RawProperties {
    fn with(mut self, bit: u8, value: Vec<u8>) -> RawProperties {
        self.fields.retain(|(b, _)| *b != bit);
        self.fields.push((bit, value));
        self
    }

    pub fn content_type(self, value: &[u8]) -> RawProperties {
        self.with(15, short_str(value))
    }

    /// `headers`: an encoded table (see [`table`]).
    pub fn headers(self, table: Vec<u8>) -> RawProperties {
        self.with(13, table)
    }

    pub fn correlation_id(self, value: &[u8]) -> RawProperties {
        self.with(10, short_str(value))
    }

    pub fn reply_to(self, value: &[u8]) -> RawProperties {
        self.with(9, short_str(value))
    }

    pub fn message_id(self, value: &[u8]) -> RawProperties {
        self.with(7, short_str(value))
    }

    fn encode(&self) -> Vec<u8> {
        let mut fields = self.fields.clone();
        fields.sort_by_key(|f| std::cmp::Reverse(f.0));
        let flags: u16 = fields.iter().map(|(bit, _)| 1u16 << bit).sum();
        let mut out = flags.to_be_bytes().to_vec();
        for (_, value) in fields {
            out.extend(value);
        }
        out
    }
}

/// One connection with one channel in confirm mode.
#[derive(Debug)]
pub struct RawPublisher {
    stream: TcpStream,
    frame_max: u32,
    delivery_tag: u64,
}

impl RawPublisher {
    /// Connects to `host:port` and logs in with PLAIN on vhost `/`.
    pub fn connect(addr: &str, user: &str, password: &str) -> Result<RawPublisher, HarnessError> {
        let stream = TcpStream::connect(addr).map_err(|e| err("connect", e))?;
        stream
            .set_read_timeout(Some(READ_TIMEOUT))
            .map_err(|e| err("socket", e))?;
        let mut publisher = RawPublisher {
            stream,
            frame_max: 4096,
            delivery_tag: 0,
        };
        publisher.write(b"AMQP\x00\x00\x09\x01")?;
        publisher.expect(0, 10, 10)?;
        let mut start_ok = (10u16, 11u16).pack();
        start_ok.extend(table(&[]));
        start_ok.extend(short_str(b"PLAIN"));
        start_ok.extend(long_str(format!("\0{user}\0{password}").as_bytes()));
        start_ok.extend(short_str(b"en_US"));
        publisher.send_method(0, &start_ok)?;
        let tune = publisher.expect(0, 10, 30)?;
        let channel_max = u16::from_be_bytes([tune[0], tune[1]]);
        let frame_max = u32::from_be_bytes([tune[2], tune[3], tune[4], tune[5]]);
        publisher.frame_max = if frame_max == 0 { 131_072 } else { frame_max };
        let mut tune_ok = (10u16, 31u16).pack();
        tune_ok.extend(channel_max.to_be_bytes());
        tune_ok.extend(publisher.frame_max.to_be_bytes());
        tune_ok.extend(0u16.to_be_bytes());
        publisher.send_method(0, &tune_ok)?;
        let mut open = (10u16, 40u16).pack();
        open.extend(short_str(b"/"));
        open.extend(short_str(b""));
        open.push(0);
        publisher.send_method(0, &open)?;
        publisher.expect(0, 10, 41)?;
        let mut channel_open = (20u16, 10u16).pack();
        channel_open.extend(short_str(b""));
        publisher.send_method(CHANNEL, &channel_open)?;
        publisher.expect(CHANNEL, 20, 11)?;
        let mut select = (85u16, 10u16).pack();
        select.push(0);
        publisher.send_method(CHANNEL, &select)?;
        publisher.expect(CHANNEL, 85, 11)?;
        Ok(publisher)
    }

    /// Connects to the system broker ([`crate::system_broker_url`], an
    /// `amqp://user:password@host:port` URL).
    pub fn system() -> Result<RawPublisher, HarnessError> {
        let url = crate::system_broker_url();
        let rest = url
            .strip_prefix("amqp://")
            .ok_or_else(|| err("URL", format!("not amqp://: {url}")))?;
        let (userinfo, host) = rest
            .split_once('@')
            .ok_or_else(|| err("URL", "no user@ part"))?;
        let (user, password) = userinfo
            .split_once(':')
            .ok_or_else(|| err("URL", "no user:password"))?;
        let host = host.split('/').next().unwrap_or(host);
        RawPublisher::connect(host, user, password)
    }

    /// Publishes and waits for the broker's confirm; `Err` holds the broker's
    /// reason when it refused the message (the publisher is then unusable).
    pub fn publish(
        &mut self,
        exchange: &[u8],
        routing_key: &[u8],
        properties: &RawProperties,
        body: &[u8],
    ) -> Result<(), HarnessError> {
        let mut publish = (60u16, 40u16).pack();
        publish.extend(0u16.to_be_bytes());
        publish.extend(short_str(exchange));
        publish.extend(short_str(routing_key));
        publish.push(0);
        self.send_method(CHANNEL, &publish)?;
        let mut header = 60u16.to_be_bytes().to_vec();
        header.extend(0u16.to_be_bytes());
        header.extend((body.len() as u64).to_be_bytes());
        header.extend(properties.encode());
        self.send_frame(FRAME_HEADER, CHANNEL, &header)?;
        let chunk = (self.frame_max as usize - 8).max(1);
        for part in body.chunks(chunk) {
            self.send_frame(FRAME_BODY, CHANNEL, part)?;
        }
        self.delivery_tag += 1;
        let ack = self.expect(CHANNEL, 60, 80)?;
        let tag = u64::from_be_bytes(
            ack.get(..8)
                .and_then(|b| b.try_into().ok())
                .ok_or_else(|| err("confirm", "a short basic.ack"))?,
        );
        if tag != self.delivery_tag {
            return Err(err(
                "confirm",
                format!("ack of {tag}, not {}", self.delivery_tag),
            ));
        }
        Ok(())
    }

    /// Closes the connection politely.
    pub fn close(mut self) {
        let mut close = (10u16, 50u16).pack();
        close.extend(200u16.to_be_bytes());
        close.extend(short_str(b"bye"));
        close.extend(0u32.to_be_bytes());
        if self.send_method(0, &close).is_ok() {
            let _ = self.expect(0, 10, 51);
        }
    }

    fn write(&mut self, bytes: &[u8]) -> Result<(), HarnessError> {
        self.stream.write_all(bytes).map_err(|e| err("write", e))
    }

    fn send_frame(&mut self, kind: u8, channel: u16, payload: &[u8]) -> Result<(), HarnessError> {
        let mut frame = vec![kind];
        frame.extend(channel.to_be_bytes());
        frame.extend((payload.len() as u32).to_be_bytes());
        frame.extend_from_slice(payload);
        frame.push(FRAME_END);
        self.write(&frame)
    }

    fn send_method(&mut self, channel: u16, payload: &[u8]) -> Result<(), HarnessError> {
        self.send_frame(FRAME_METHOD, channel, payload)
    }

    fn read_frame(&mut self) -> Result<(u8, u16, Vec<u8>), HarnessError> {
        let mut head = [0u8; 7];
        self.stream
            .read_exact(&mut head)
            .map_err(|e| err("read", e))?;
        if &head[..4] == b"AMQP" {
            return Err(err("handshake", "the broker refused the protocol version"));
        }
        let size = u32::from_be_bytes([head[3], head[4], head[5], head[6]]) as usize;
        let mut payload = vec![0u8; size + 1];
        self.stream
            .read_exact(&mut payload)
            .map_err(|e| err("read", e))?;
        if payload.pop() != Some(FRAME_END) {
            return Err(err("read", "bad frame end"));
        }
        Ok((head[0], u16::from_be_bytes([head[1], head[2]]), payload))
    }

    /// Reads frames until the method `class.method` on `channel`; returns its
    /// arguments. A close from the broker is an error with its reason.
    fn expect(&mut self, channel: u16, class: u16, method: u16) -> Result<Vec<u8>, HarnessError> {
        loop {
            let (kind, on, payload) = self.read_frame()?;
            if kind != FRAME_METHOD || payload.len() < 4 {
                continue;
            }
            let got = (
                u16::from_be_bytes([payload[0], payload[1]]),
                u16::from_be_bytes([payload[2], payload[3]]),
            );
            let args = payload[4..].to_vec();
            if got == (class, method) && on == channel {
                return Ok(args);
            }
            match got {
                (10, 50) | (20, 40) => {
                    let code = u16::from_be_bytes([args[0], args[1]]);
                    let len = args[2] as usize;
                    let text = String::from_utf8_lossy(&args[3..3 + len]);
                    return Err(err("closed by the broker", format!("{code} {text}")));
                }
                (60, 120) => return Err(err("publish", "the broker nacked the message")),
                _ => {}
            }
        }
    }
}

/// The class and method ids at the start of a method frame.
trait Pack {
    fn pack(self) -> Vec<u8>;
}

impl Pack for (u16, u16) {
    fn pack(self) -> Vec<u8> {
        let mut out = self.0.to_be_bytes().to_vec();
        out.extend(self.1.to_be_bytes());
        out
    }
}
