//! The frames between the module's processes and the AMQP process: `u32`
//! little-endian length of what follows, a tag byte, then the fields; byte
//! strings are a `u32` length and the bytes, options a flag byte. The only
//! code that knows the layout (both the blocking client and the AMQP
//! process's server read frames through [`body_len`]).
use super::{Delivery, Message, Outcome, Outgoing, Resume, Target, MAX_FRAME};

/// A frame that cannot be decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WireError(pub &'static str);

impl std::fmt::Display for WireError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "malformed IPC frame: {}", self.0)
    }
}

impl std::error::Error for WireError {}

/// The length of a frame's body from its 4-byte prefix, refusing lengths
/// no peer sends (0, or over [`MAX_FRAME`]: a corrupted stream).
pub fn body_len(prefix: [u8; 4]) -> Result<usize, WireError> {
    let len = u32::from_le_bytes(prefix) as usize;
    if len == 0 || len > MAX_FRAME {
        return Err(WireError("bad frame length"));
    }
    Ok(len)
}

const TAG_PUBLISH: u8 = 1;
const TAG_QUERY: u8 = 2;
const TAG_ANSWER: u8 = 3;
const TAG_HELLO: u8 = 4;
const TAG_DELIVER: u8 = 5;
const TAG_ACK: u8 = 6;
const TAG_STARTUP_DONE: u8 = 7;
const TAG_ASYNC_QUERY: u8 = 8;
const TAG_RESUME: u8 = 9;
const TAG_STATUS: u8 = 10;

const OUTCOME_PUBLISHED: u8 = 0;
const OUTCOME_REPLY: u8 = 1;
const OUTCOME_TIMEOUT: u8 = 2;
const OUTCOME_FAILED: u8 = 3;

struct Writer(Vec<u8>);

impl Writer {
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn bytes(&mut self, v: &[u8]) {
        // Frames are capped far below 4 GiB (MAX_FRAME); a longer field
        // cannot be produced by the module's callers.
        self.u32(v.len() as u32);
        self.0.extend_from_slice(v);
    }
    fn opt_bytes(&mut self, v: Option<&[u8]>) {
        match v {
            Some(v) => {
                self.u8(1);
                self.bytes(v);
            }
            None => self.u8(0),
        }
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        if self.0.len() < n {
            return Err(WireError("truncated"));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
    fn u8(&mut self) -> Result<u8, WireError> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Result<u32, WireError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self) -> Result<u64, WireError> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }
    fn bytes(&mut self) -> Result<Vec<u8>, WireError> {
        let n = self.u32()? as usize;
        Ok(self.take(n)?.to_vec())
    }
    fn string(&mut self) -> Result<String, WireError> {
        String::from_utf8(self.bytes()?).map_err(|_| WireError("text is not UTF-8"))
    }
    fn opt_bytes(&mut self) -> Result<Option<Vec<u8>>, WireError> {
        match self.u8()? {
            0 => Ok(None),
            1 => Ok(Some(self.bytes()?)),
            _ => Err(WireError("bad option flag")),
        }
    }
    fn opt_string(&mut self) -> Result<Option<String>, WireError> {
        self.opt_bytes()?
            .map(|b| String::from_utf8(b).map_err(|_| WireError("text is not UTF-8")))
            .transpose()
    }
    fn bool(&mut self) -> Result<bool, WireError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(WireError("bad boolean")),
        }
    }
}

fn write_outgoing(w: &mut Writer, o: &Outgoing) {
    w.u64(o.request);
    match o.target {
        Target::Primary => w.u8(0),
        Target::Broker(id) => {
            w.u8(1);
            w.u32(id);
        }
    }
    w.bytes(&o.exchange);
    w.bytes(&o.routing_key);
    w.u32(o.headers.len() as u32);
    for (k, v) in &o.headers {
        w.bytes(k);
        w.bytes(v);
    }
    w.bytes(&o.before);
    w.bytes(&o.after);
    w.u8(o.server_id_slot as u8);
    w.bytes(o.msg_id.as_bytes());
    w.u32(o.timeout_ms);
    w.u8(o.mandatory as u8);
}

fn read_outgoing(r: &mut Reader<'_>) -> Result<Outgoing, WireError> {
    let request = r.u64()?;
    let target = match r.u8()? {
        0 => Target::Primary,
        1 => Target::Broker(r.u32()?),
        _ => return Err(WireError("bad target")),
    };
    let exchange = r.bytes()?;
    let routing_key = r.bytes()?;
    let count = r.u32()? as usize;
    let mut headers = Vec::with_capacity(count.min(64));
    for _ in 0..count {
        headers.push((r.bytes()?, r.bytes()?));
    }
    Ok(Outgoing {
        request,
        target,
        exchange,
        routing_key,
        headers,
        before: r.bytes()?,
        after: r.bytes()?,
        server_id_slot: r.bool()?,
        msg_id: r.string()?,
        timeout_ms: r.u32()?,
        mandatory: r.bool()?,
    })
}

impl Message {
    /// The frame for this message, length prefix included.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer(vec![0; 4]);
        match self {
            Message::Publish(o) => {
                w.u8(TAG_PUBLISH);
                write_outgoing(&mut w, o);
            }
            Message::Query(o) => {
                w.u8(TAG_QUERY);
                write_outgoing(&mut w, o);
            }
            Message::Answer { request, outcome } => {
                w.u8(TAG_ANSWER);
                w.u64(*request);
                match outcome {
                    Outcome::Published => w.u8(OUTCOME_PUBLISHED),
                    Outcome::Reply(body) => {
                        w.u8(OUTCOME_REPLY);
                        w.bytes(body);
                    }
                    Outcome::Timeout => w.u8(OUTCOME_TIMEOUT),
                    Outcome::Failed(reason) => {
                        w.u8(OUTCOME_FAILED);
                        w.bytes(reason.as_bytes());
                    }
                }
            }
            Message::Hello { worker } => {
                w.u8(TAG_HELLO);
                w.u32(*worker);
            }
            Message::Deliver(d) => {
                w.u8(TAG_DELIVER);
                w.u64(d.id);
                w.opt_bytes(d.routing_key.as_deref());
                w.bytes(&d.body);
                w.opt_bytes(d.event_key.as_deref().map(str::as_bytes));
                w.opt_bytes(d.event_subkey.as_deref().map(str::as_bytes));
            }
            Message::Ack { delivery } => {
                w.u8(TAG_ACK);
                w.u64(*delivery);
            }
            Message::AsyncQuery {
                outgoing,
                hash,
                label,
                ok_route,
                err_route,
            } => {
                w.u8(TAG_ASYNC_QUERY);
                write_outgoing(&mut w, outgoing);
                w.u32(*hash);
                w.u32(*label);
                w.bytes(ok_route.as_bytes());
                w.bytes(err_route.as_bytes());
            }
            Message::Status { request } => {
                w.u8(TAG_STATUS);
                w.u64(*request);
            }
            Message::Resume(resume) => {
                w.u8(TAG_RESUME);
                w.u32(resume.hash);
                w.u32(resume.label);
                w.u8(resume.answered as u8);
                w.bytes(resume.route.as_bytes());
                w.opt_bytes(resume.reply.as_deref());
            }
            Message::StartupDone {
                subscriptions,
                publishes,
            } => {
                w.u8(TAG_STARTUP_DONE);
                w.u32(subscriptions.len() as u32);
                for description in subscriptions {
                    w.bytes(description);
                }
                w.u32(publishes.len() as u32);
                for outgoing in publishes {
                    write_outgoing(&mut w, outgoing);
                }
            }
        }
        let len = (w.0.len() - 4) as u32;
        w.0[..4].copy_from_slice(&len.to_le_bytes());
        w.0
    }

    /// Decodes a frame body (without its length prefix).
    pub fn decode(body: &[u8]) -> Result<Message, WireError> {
        let mut r = Reader(body);
        let message = match r.u8()? {
            TAG_PUBLISH => Message::Publish(read_outgoing(&mut r)?),
            TAG_QUERY => Message::Query(read_outgoing(&mut r)?),
            TAG_ANSWER => {
                let request = r.u64()?;
                let outcome = match r.u8()? {
                    OUTCOME_PUBLISHED => Outcome::Published,
                    OUTCOME_REPLY => Outcome::Reply(r.bytes()?),
                    OUTCOME_TIMEOUT => Outcome::Timeout,
                    OUTCOME_FAILED => Outcome::Failed(r.string()?),
                    _ => return Err(WireError("bad outcome")),
                };
                Message::Answer { request, outcome }
            }
            TAG_HELLO => Message::Hello { worker: r.u32()? },
            TAG_DELIVER => Message::Deliver(Delivery {
                id: r.u64()?,
                routing_key: r.opt_bytes()?,
                body: r.bytes()?,
                event_key: r.opt_string()?,
                event_subkey: r.opt_string()?,
            }),
            TAG_ACK => Message::Ack { delivery: r.u64()? },
            TAG_ASYNC_QUERY => Message::AsyncQuery {
                outgoing: read_outgoing(&mut r)?,
                hash: r.u32()?,
                label: r.u32()?,
                ok_route: r.string()?,
                err_route: r.string()?,
            },
            TAG_STATUS => Message::Status { request: r.u64()? },
            TAG_RESUME => Message::Resume(Resume {
                hash: r.u32()?,
                label: r.u32()?,
                answered: r.bool()?,
                route: r.string()?,
                reply: r.opt_bytes()?,
            }),
            TAG_STARTUP_DONE => {
                let count = r.u32()? as usize;
                let mut subscriptions = Vec::with_capacity(count.min(1024));
                for _ in 0..count {
                    subscriptions.push(r.bytes()?);
                }
                let count = r.u32()? as usize;
                let mut publishes = Vec::with_capacity(count.min(1024));
                for _ in 0..count {
                    publishes.push(read_outgoing(&mut r)?);
                }
                Message::StartupDone {
                    subscriptions,
                    publishes,
                }
            }
            _ => return Err(WireError("unknown message type")),
        };
        if !r.0.is_empty() {
            return Err(WireError("trailing bytes"));
        }
        Ok(message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outgoing() -> Outgoing {
        Outgoing {
            request: 7,
            target: Target::Broker(2),
            exchange: b"callmgr".to_vec(),
            routing_key: b"a.b".to_vec(),
            headers: vec![
                (b"k".to_vec(), b"v".to_vec()),
                (b"k".to_vec(), b"w".to_vec()),
            ],
            before: b"{ \"a\": 1, \"Server-ID\": ".to_vec(),
            after: b" }".to_vec(),
            server_id_slot: true,
            msg_id: "id-1".into(),
            timeout_ms: 2000,
            mandatory: true,
        }
    }

    #[test]
    fn every_message_round_trips() {
        let messages = [
            Message::Publish(outgoing()),
            Message::Query(Outgoing {
                target: Target::Primary,
                ..outgoing()
            }),
            Message::Answer {
                request: 1,
                outcome: Outcome::Published,
            },
            Message::Answer {
                request: 2,
                outcome: Outcome::Reply(b"{ }".to_vec()),
            },
            Message::Answer {
                request: 3,
                outcome: Outcome::Timeout,
            },
            Message::Answer {
                request: 4,
                outcome: Outcome::Failed("no broker".into()),
            },
            Message::Hello { worker: 3 },
            Message::Deliver(Delivery {
                id: 9,
                routing_key: None,
                body: b"{}".to_vec(),
                event_key: Some("k".into()),
                event_subkey: None,
            }),
            Message::Ack { delivery: 9 },
            Message::Status { request: 5 },
            Message::AsyncQuery {
                outgoing: outgoing(),
                hash: 1234,
                label: 99,
                ok_route: "KZ_OK".into(),
                err_route: "KZ_ERR".into(),
            },
            Message::Resume(Resume {
                hash: 1234,
                label: 99,
                answered: true,
                route: "KZ_OK".into(),
                reply: Some(b"{ }".to_vec()),
            }),
            Message::StartupDone {
                subscriptions: vec![b"{'exchange':'x','type':'topic'}".to_vec(), Vec::new()],
                publishes: vec![outgoing()],
            },
        ];
        for message in messages {
            let frame = message.encode();
            let len = u32::from_le_bytes([frame[0], frame[1], frame[2], frame[3]]) as usize;
            assert_eq!(len, frame.len() - 4);
            assert_eq!(Message::decode(&frame[4..]), Ok(message));
        }
    }

    #[test]
    fn truncated_and_garbage_frames_are_errors() {
        let frame = Message::Publish(outgoing()).encode();
        for cut in 5..frame.len() {
            assert!(Message::decode(&frame[4..cut]).is_err(), "cut at {cut}");
        }
        assert!(Message::decode(&[99]).is_err());
        assert!(Message::decode(&[]).is_err());
    }
}
