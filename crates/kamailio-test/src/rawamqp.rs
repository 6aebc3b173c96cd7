//! A minimal AMQP 0-9-1 publisher written on a plain TCP socket, for what
//! no client library sends: bytes that are not UTF-8 in a routing key, a
//! header name or value, or the content type. The broker carries those
//! fields as binary strings, so a consumer receives them as they are.
//!
//! One connection per message (PLAIN login, channel 1, no confirms), closed
//! cleanly; every read and write is bounded.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpStream};
use std::time::Duration;

use crate::HarnessError;

const IO_TIMEOUT: Duration = Duration::from_secs(10);
const FRAME_METHOD: u8 = 1;
const FRAME_HEADER: u8 = 2;
const FRAME_BODY: u8 = 3;
const FRAME_END: u8 = 0xCE;

/// A message with raw (possibly non-UTF-8) fields; see [`raw_publish`].
#[derive(Debug, Clone, Default)]
pub struct RawMessage<'a> {
    pub exchange: &'a [u8],
    pub routing_key: &'a [u8],
    pub content_type: Option<&'a [u8]>,
    /// Headers with long-string values.
    pub headers: Vec<(&'a [u8], &'a [u8])>,
    pub body: &'a [u8],
}

fn err(what: &str, e: impl std::fmt::Display) -> HarnessError {
    HarnessError::Usage(format!("raw AMQP publisher: {what}: {e}"))
}

/// Publishes `message` to the broker on `127.0.0.1:port` as `guest`/`guest`
/// on vhost `/`, then closes the connection.
pub fn raw_publish(port: u16, message: &RawMessage<'_>) -> Result<(), HarnessError> {
    let addr = SocketAddrV4::new(Ipv4Addr::LOCALHOST, port);
    let mut socket =
        TcpStream::connect_timeout(&addr.into(), IO_TIMEOUT).map_err(|e| err("connect", e))?;
    socket
        .set_read_timeout(Some(IO_TIMEOUT))
        .and_then(|()| socket.set_write_timeout(Some(IO_TIMEOUT)))
        .map_err(|e| err("socket", e))?;
    socket
        .write_all(b"AMQP\x00\x00\x09\x01")
        .map_err(|e| err("protocol header", e))?;
    expect_method(&mut socket, 10, 10)?; // connection.start
    let mut start_ok = method(10, 11);
    start_ok.extend_from_slice(&0u32.to_be_bytes()); // client properties: empty table
    short(&mut start_ok, b"PLAIN");
    long(&mut start_ok, b"\0guest\0guest");
    short(&mut start_ok, b"en_US");
    send(&mut socket, FRAME_METHOD, 0, &start_ok)?;
    let tune = expect_method(&mut socket, 10, 30)?;
    let mut tune_ok = method(10, 31);
    tune_ok.extend_from_slice(tune.get(4..10).ok_or_else(|| err("tune", "short"))?);
    tune_ok.extend_from_slice(&0u16.to_be_bytes()); // no heartbeats
    send(&mut socket, FRAME_METHOD, 0, &tune_ok)?;
    let mut open = method(10, 40);
    short(&mut open, b"/");
    short(&mut open, b"");
    open.push(0);
    send(&mut socket, FRAME_METHOD, 0, &open)?;
    expect_method(&mut socket, 10, 41)?;
    let mut channel_open = method(20, 10);
    short(&mut channel_open, b"");
    send(&mut socket, FRAME_METHOD, 1, &channel_open)?;
    expect_method(&mut socket, 20, 11)?;

    let mut publish = method(60, 40);
    publish.extend_from_slice(&0u16.to_be_bytes());
    short(&mut publish, message.exchange);
    short(&mut publish, message.routing_key);
    publish.push(0);
    send(&mut socket, FRAME_METHOD, 1, &publish)?;
    send(&mut socket, FRAME_HEADER, 1, &content_header(message))?;
    if !message.body.is_empty() {
        // Frames of at most 128 KiB: below any broker's frame_max.
        for chunk in message.body.chunks(128 * 1024) {
            send(&mut socket, FRAME_BODY, 1, chunk)?;
        }
    }

    let mut close = method(10, 50);
    close.extend_from_slice(&200u16.to_be_bytes());
    short(&mut close, b"done");
    close.extend_from_slice(&[0, 0, 0, 0]);
    send(&mut socket, FRAME_METHOD, 0, &close)?;
    // connection.close-ok (or the broker's own close, if it refused the message).
    let (code, reply) = read_method(&mut socket)?;
    match code {
        (10, 51) => Ok(()),
        other => Err(err(
            "close",
            format!("got method {other:?}: {}", text(&reply)),
        )),
    }
}

fn content_header(message: &RawMessage<'_>) -> Vec<u8> {
    let mut header = Vec::new();
    header.extend_from_slice(&60u16.to_be_bytes());
    header.extend_from_slice(&0u16.to_be_bytes());
    header.extend_from_slice(&(message.body.len() as u64).to_be_bytes());
    let mut flags = 0u16;
    let mut properties = Vec::new();
    if let Some(content_type) = message.content_type {
        flags |= 1 << 15;
        short(&mut properties, content_type);
    }
    if !message.headers.is_empty() {
        flags |= 1 << 13;
        let mut table = Vec::new();
        for (name, value) in &message.headers {
            short(&mut table, name);
            table.push(b'S');
            long(&mut table, value);
        }
        long(&mut properties, &table);
    }
    header.extend_from_slice(&flags.to_be_bytes());
    header.extend_from_slice(&properties);
    header
}

fn method(class: u16, id: u16) -> Vec<u8> {
    let mut payload = class.to_be_bytes().to_vec();
    payload.extend_from_slice(&id.to_be_bytes());
    payload
}

fn short(out: &mut Vec<u8>, value: &[u8]) {
    let len = value.len().min(255);
    out.push(len as u8);
    out.extend_from_slice(&value[..len]);
}

fn long(out: &mut Vec<u8>, value: &[u8]) {
    out.extend_from_slice(&(value.len() as u32).to_be_bytes());
    out.extend_from_slice(value);
}

fn text(payload: &[u8]) -> String {
    String::from_utf8_lossy(payload).into_owned()
}

fn send(
    socket: &mut TcpStream,
    kind: u8,
    channel: u16,
    payload: &[u8],
) -> Result<(), HarnessError> {
    let mut frame = vec![kind];
    frame.extend_from_slice(&channel.to_be_bytes());
    frame.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    frame.extend_from_slice(payload);
    frame.push(FRAME_END);
    socket.write_all(&frame).map_err(|e| err("write", e))
}

/// The next method frame (skipping heartbeats): `((class, method), payload)`.
fn read_method(socket: &mut TcpStream) -> Result<((u16, u16), Vec<u8>), HarnessError> {
    loop {
        let mut head = [0u8; 7];
        socket
            .read_exact(&mut head)
            .map_err(|e| err("read frame", e))?;
        let size = u32::from_be_bytes([head[3], head[4], head[5], head[6]]) as usize;
        let mut payload = vec![0u8; size + 1];
        socket
            .read_exact(&mut payload)
            .map_err(|e| err("read frame", e))?;
        if payload.pop() != Some(FRAME_END) {
            return Err(err("read frame", "bad frame end"));
        }
        if head[0] != FRAME_METHOD {
            continue;
        }
        if payload.len() < 4 {
            return Err(err("read frame", "short method frame"));
        }
        let class = u16::from_be_bytes([payload[0], payload[1]]);
        let id = u16::from_be_bytes([payload[2], payload[3]]);
        return Ok(((class, id), payload));
    }
}

fn expect_method(socket: &mut TcpStream, class: u16, id: u16) -> Result<Vec<u8>, HarnessError> {
    let (code, payload) = read_method(socket)?;
    if code != (class, id) {
        return Err(err(
            "handshake",
            format!("expected {class}.{id}, got {code:?}: {}", text(&payload)),
        ));
    }
    Ok(payload)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_header_carries_raw_properties() {
        let message = RawMessage {
            content_type: Some(b"a\xff"),
            headers: vec![(b"k\xfe", b"v\xc0")],
            body: b"xyz",
            ..RawMessage::default()
        };
        let header = content_header(&message);
        assert_eq!(&header[..4], &[0, 60, 0, 0]);
        assert_eq!(&header[4..12], &3u64.to_be_bytes());
        assert_eq!(&header[12..14], &0xA000u16.to_be_bytes());
        // content type "a\xff", then a 10-byte table: "k\xfe" 'S' "v\xc0".
        assert_eq!(&header[14..17], b"\x02a\xff");
        assert_eq!(
            &header[17..],
            b"\x00\x00\x00\x0a\x02k\xfeS\x00\x00\x00\x02v\xc0"
        );
    }
}
