//! The frames between the module's processes and the AMQP process: `u32`
//! little-endian length of what follows, a tag byte, then the fields; byte
//! strings are a `u32` length and the bytes, options a flag byte. The only
//! code that knows the layout (both the blocking client and the AMQP
//! process's server read frames through [`body_len`]).
use super::{Answer, Delivery, Outcome, Outgoing, Request, Resume, ResumeAt, Work, MAX_FRAME};
use crate::payload::{PreparedPublish, PublishTarget};

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

// Request tags.
const REQUEST_PUBLISH: u8 = 1;
const REQUEST_QUERY: u8 = 2;
const REQUEST_ASYNC_QUERY: u8 = 3;
const REQUEST_STATUS: u8 = 4;
const REQUEST_HELLO: u8 = 5;
const REQUEST_ACK: u8 = 6;
const REQUEST_STARTUP_DONE: u8 = 7;
const REQUEST_LATE_REPLY: u8 = 8;
const REQUEST_SUBSCRIPTION_STATE: u8 = 9;

// Outcome tags (answers).
const OUTCOME_PUBLISHED: u8 = 0;
const OUTCOME_REPLY: u8 = 1;
const OUTCOME_TIMEOUT: u8 = 2;
const OUTCOME_FAILED: u8 = 3;

// Work tags.
const WORK_DELIVER: u8 = 1;
const WORK_RESUME: u8 = 2;

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

impl Writer {
    /// A frame with room for its length prefix.
    fn frame() -> Writer {
        Writer(vec![0; 4])
    }

    /// The frame, its length prefix written.
    fn finish(mut self) -> Vec<u8> {
        let len = (self.0.len() - 4) as u32;
        self.0[..4].copy_from_slice(&len.to_le_bytes());
        self.0
    }
}

impl Reader<'_> {
    /// Refuses what is left over after a whole message.
    fn end(&self) -> Result<(), WireError> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(WireError("trailing bytes"))
        }
    }
}

fn write_outgoing(w: &mut Writer, o: &Outgoing) {
    match o.target {
        PublishTarget::Primary => w.u8(0),
        PublishTarget::Broker(id) => {
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
    let p = &o.payload;
    w.bytes(&p.before);
    w.bytes(&p.after);
    w.u8(p.slot as u8);
    w.bytes(p.msg_id.as_bytes());
    w.u32(o.timeout_ms);
    w.u8(o.mandatory as u8);
}

fn read_outgoing(r: &mut Reader<'_>) -> Result<Outgoing, WireError> {
    let target = match r.u8()? {
        0 => PublishTarget::Primary,
        1 => PublishTarget::Broker(r.u32()?),
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
        target,
        exchange,
        routing_key,
        headers,
        payload: PreparedPublish {
            before: r.bytes()?,
            after: r.bytes()?,
            slot: r.bool()?,
            msg_id: r.string()?,
        },
        timeout_ms: r.u32()?,
        mandatory: r.bool()?,
    })
}

impl Request {
    /// The frame for this request with the id its answer will carry (any
    /// value for requests that are not answered), length prefix included.
    pub fn encode(&self, id: u64) -> Vec<u8> {
        let mut w = Writer::frame();
        match self {
            Request::Publish(_) => w.u8(REQUEST_PUBLISH),
            Request::Query(_) => w.u8(REQUEST_QUERY),
            Request::AsyncQuery { .. } => w.u8(REQUEST_ASYNC_QUERY),
            Request::Status => w.u8(REQUEST_STATUS),
            Request::Hello { .. } => w.u8(REQUEST_HELLO),
            Request::Ack { .. } => w.u8(REQUEST_ACK),
            Request::StartupDone { .. } => w.u8(REQUEST_STARTUP_DONE),
            Request::LateReply { .. } => w.u8(REQUEST_LATE_REPLY),
            Request::SubscriptionState { .. } => w.u8(REQUEST_SUBSCRIPTION_STATE),
        }
        w.u64(id);
        match self {
            Request::Publish(o) | Request::Query(o) => write_outgoing(&mut w, o),
            Request::AsyncQuery { outgoing, resume } => {
                write_outgoing(&mut w, outgoing);
                w.u32(resume.hash);
                w.u32(resume.label);
                w.bytes(resume.ok_route.as_bytes());
                w.bytes(resume.err_route.as_bytes());
            }
            Request::Status => {}
            Request::Hello { worker } => w.u32(*worker),
            Request::Ack { delivery } => w.u64(*delivery),
            Request::SubscriptionState {
                index,
                broker_id,
                failure,
            } => {
                w.u32(*index);
                w.u32(*broker_id);
                w.opt_bytes(failure.as_deref().map(str::as_bytes));
            }
            Request::LateReply { routing_key, body } => {
                w.bytes(routing_key);
                w.bytes(body);
            }
            Request::StartupDone {
                subscriptions,
                publishes,
            } => {
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
        w.finish()
    }

    /// Decodes a request frame's body (without its length prefix): the
    /// request and its id.
    pub fn decode(body: &[u8]) -> Result<(u64, Request), WireError> {
        let mut r = Reader(body);
        let tag = r.u8()?;
        let id = r.u64()?;
        let request = match tag {
            REQUEST_PUBLISH => Request::Publish(read_outgoing(&mut r)?),
            REQUEST_QUERY => Request::Query(read_outgoing(&mut r)?),
            REQUEST_ASYNC_QUERY => Request::AsyncQuery {
                outgoing: read_outgoing(&mut r)?,
                resume: ResumeAt {
                    hash: r.u32()?,
                    label: r.u32()?,
                    ok_route: r.string()?,
                    err_route: r.string()?,
                },
            },
            REQUEST_STATUS => Request::Status,
            REQUEST_HELLO => Request::Hello { worker: r.u32()? },
            REQUEST_ACK => Request::Ack { delivery: r.u64()? },
            REQUEST_SUBSCRIPTION_STATE => Request::SubscriptionState {
                index: r.u32()?,
                broker_id: r.u32()?,
                failure: r
                    .opt_bytes()?
                    .map(|reason| String::from_utf8_lossy(&reason).into_owned()),
            },
            REQUEST_LATE_REPLY => Request::LateReply {
                routing_key: r.bytes()?,
                body: r.bytes()?,
            },
            REQUEST_STARTUP_DONE => {
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
                Request::StartupDone {
                    subscriptions,
                    publishes,
                }
            }
            _ => return Err(WireError("unknown request")),
        };
        r.end()?;
        Ok((id, request))
    }
}

impl Answer {
    /// The frame, length prefix included.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::frame();
        w.u64(self.request);
        match &self.outcome {
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
        w.finish()
    }

    /// Decodes an answer frame's body (without its length prefix).
    pub fn decode(body: &[u8]) -> Result<Answer, WireError> {
        let mut r = Reader(body);
        let request = r.u64()?;
        let outcome = match r.u8()? {
            OUTCOME_PUBLISHED => Outcome::Published,
            OUTCOME_REPLY => Outcome::Reply(r.bytes()?),
            OUTCOME_TIMEOUT => Outcome::Timeout,
            OUTCOME_FAILED => Outcome::Failed(r.string()?),
            _ => return Err(WireError("bad outcome")),
        };
        r.end()?;
        Ok(Answer { request, outcome })
    }
}

impl Work {
    /// The frame, length prefix included.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::frame();
        match self {
            Work::Deliver(d) => {
                w.u8(WORK_DELIVER);
                w.u64(d.id);
                w.opt_bytes(d.routing_key.as_deref());
                w.bytes(&d.body);
                w.opt_bytes(d.event_key.as_deref().map(str::as_bytes));
                w.opt_bytes(d.event_subkey.as_deref().map(str::as_bytes));
            }
            Work::Resume(resume) => {
                w.u8(WORK_RESUME);
                w.u32(resume.hash);
                w.u32(resume.label);
                w.u8(resume.answered as u8);
                w.bytes(resume.route.as_bytes());
                w.opt_bytes(resume.reply.as_deref());
            }
        }
        w.finish()
    }

    /// Decodes a work frame's body (without its length prefix).
    pub fn decode(body: &[u8]) -> Result<Work, WireError> {
        let mut r = Reader(body);
        let work = match r.u8()? {
            WORK_DELIVER => Work::Deliver(Delivery {
                id: r.u64()?,
                routing_key: r.opt_bytes()?,
                body: r.bytes()?,
                event_key: r.opt_string()?,
                event_subkey: r.opt_string()?,
            }),
            WORK_RESUME => Work::Resume(Resume {
                hash: r.u32()?,
                label: r.u32()?,
                answered: r.bool()?,
                route: r.string()?,
                reply: r.opt_bytes()?,
            }),
            _ => return Err(WireError("unknown work")),
        };
        r.end()?;
        Ok(work)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn outgoing() -> Outgoing {
        Outgoing {
            target: PublishTarget::Broker(2),
            exchange: b"callmgr".to_vec(),
            routing_key: b"a.b".to_vec(),
            headers: vec![
                (b"k".to_vec(), b"v".to_vec()),
                (b"k".to_vec(), b"w".to_vec()),
            ],
            payload: PreparedPublish {
                before: b"{ \"a\": 1, \"Server-ID\": ".to_vec(),
                after: b" }".to_vec(),
                slot: true,
                msg_id: "id-1".into(),
            },
            timeout_ms: 2000,
            mandatory: true,
        }
    }

    fn body(frame: &[u8]) -> &[u8] {
        let len = u32::from_le_bytes([frame[0], frame[1], frame[2], frame[3]]) as usize;
        assert_eq!(len, frame.len() - 4);
        &frame[4..]
    }

    #[test]
    fn every_request_answer_and_work_round_trips() {
        let requests = [
            Request::Publish(outgoing()),
            Request::Query(Outgoing {
                target: PublishTarget::Primary,
                ..outgoing()
            }),
            Request::AsyncQuery {
                outgoing: outgoing(),
                resume: ResumeAt {
                    hash: 1234,
                    label: 99,
                    ok_route: "KZ_OK".into(),
                    err_route: "KZ_ERR".into(),
                },
            },
            Request::Status,
            Request::Hello { worker: 3 },
            Request::Ack { delivery: 9 },
            Request::SubscriptionState {
                index: 2,
                broker_id: 1,
                failure: Some("406 PRECONDITION_FAILED".into()),
            },
            Request::SubscriptionState {
                index: 2,
                broker_id: 1,
                failure: None,
            },
            Request::LateReply {
                routing_key: b"kamailio@node-<1>-targeted-52".to_vec(),
                body: b"{ \"Msg-ID\": \"late\" }".to_vec(),
            },
            Request::StartupDone {
                subscriptions: vec![b"{'exchange':'x','type':'topic'}".to_vec(), Vec::new()],
                publishes: vec![outgoing()],
            },
        ];
        for (id, request) in requests.into_iter().enumerate() {
            let frame = request.encode(id as u64);
            assert_eq!(Request::decode(body(&frame)), Ok((id as u64, request)));
        }
        for outcome in [
            Outcome::Published,
            Outcome::Reply(b"{ }".to_vec()),
            Outcome::Timeout,
            Outcome::Failed("no broker".into()),
        ] {
            let answer = Answer {
                request: 4,
                outcome,
            };
            assert_eq!(Answer::decode(body(&answer.encode())), Ok(answer));
        }
        for work in [
            Work::Deliver(Delivery {
                id: 9,
                routing_key: None,
                body: b"{}".to_vec(),
                event_key: Some("k".into()),
                event_subkey: None,
            }),
            Work::Resume(Resume {
                hash: 1234,
                label: 99,
                answered: true,
                route: "KZ_OK".into(),
                reply: Some(b"{ }".to_vec()),
            }),
        ] {
            assert_eq!(Work::decode(body(&work.encode())), Ok(work));
        }
    }

    #[test]
    fn truncated_and_garbage_frames_are_errors() {
        let frame = Request::Publish(outgoing()).encode(7);
        for cut in 5..frame.len() {
            assert!(Request::decode(&frame[4..cut]).is_err(), "cut at {cut}");
        }
        let mut trailing = frame[4..].to_vec();
        trailing.push(0);
        assert!(Request::decode(&trailing).is_err());
        assert!(Request::decode(&[99, 0, 0, 0, 0, 0, 0, 0, 0]).is_err());
        assert!(Request::decode(&[]).is_err());
        assert!(Answer::decode(&[1, 0, 0, 0, 0, 0, 0, 0, 9]).is_err());
        assert!(Work::decode(&[7]).is_err());
    }
}
