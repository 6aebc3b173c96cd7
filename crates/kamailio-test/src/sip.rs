//! A minimal SIP-over-UDP client: sends one request, waits for its final reply.
//!
//! Tests drive a Kamailio config by sending it a request and looking at the
//! reply the script builds. Only what that needs is here: a well-formed request
//! with fresh transaction identifiers, and matching the reply by Call-ID and
//! CSeq. There is no retransmission: a retransmitted request would run the
//! script a second time, and a test counting side effects (say, published AMQP
//! messages) would see double. Loopback UDP does not lose datagrams in practice.
//!
//! Nothing is ACKed. A final reply to an INVITE is not acknowledged, because the
//! ACK would run the test config's request route again; prefer non-INVITE
//! methods (OPTIONS, MESSAGE, NOTIFY) in tests.

use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::names::random_u64;
use crate::HarnessError;

/// A final SIP reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SipReply {
    /// Status code, e.g. 200.
    pub code: u16,
    /// Reason phrase, e.g. `OK`.
    pub reason: String,
    /// Headers in order of appearance, names as sent, values trimmed.
    pub headers: Vec<(String, String)>,
    /// The body (Content-Length bytes when the header is present).
    pub body: Vec<u8>,
}

impl SipReply {
    /// The value of the first header called `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The values of every header called `name` (case-insensitive), in order.
    pub fn headers_named(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// Parses one reply datagram.
    fn parse(data: &[u8]) -> Result<SipReply, HarnessError> {
        let bad = |what: &str| {
            HarnessError::BadReply(format!("{what} in {:?}", String::from_utf8_lossy(data)))
        };
        let split = data
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .ok_or_else(|| bad("no end of headers"))?;
        let head = String::from_utf8_lossy(&data[..split]);
        let rest = &data[split + 4..];
        let mut lines = head.split("\r\n");
        let status = lines.next().unwrap_or_default();
        let mut parts = status.splitn(3, ' ');
        if parts.next() != Some("SIP/2.0") {
            return Err(bad("not a SIP/2.0 reply"));
        }
        let code = parts
            .next()
            .and_then(|c| c.parse::<u16>().ok())
            .filter(|c| (100..700).contains(c))
            .ok_or_else(|| bad("bad status code"))?;
        let reason = parts.next().unwrap_or_default().to_owned();
        let mut headers: Vec<(String, String)> = Vec::new();
        for line in lines {
            if line.starts_with([' ', '\t']) {
                // A folded continuation line belongs to the previous header.
                let (_, value) = headers
                    .last_mut()
                    .ok_or_else(|| bad("folded first header"))?;
                value.push(' ');
                value.push_str(line.trim());
                continue;
            }
            let (name, value) = line
                .split_once(':')
                .ok_or_else(|| bad("header without ':'"))?;
            headers.push((name.trim().to_owned(), value.trim().to_owned()));
        }
        let mut reply = SipReply {
            code,
            reason,
            headers,
            body: Vec::new(),
        };
        let length = match reply.header("Content-Length").or(reply.header("l")) {
            Some(l) => l.parse::<usize>().map_err(|_| bad("bad Content-Length"))?,
            None => rest.len(),
        };
        reply.body = rest
            .get(..length)
            .ok_or_else(|| bad("body shorter than Content-Length"))?
            .to_vec();
        Ok(reply)
    }
}

/// A SIP UDP client bound to 127.0.0.1 on an ephemeral port.
///
/// Requests on one client are serialised (a reply for one call can only be
/// read by that call); use several clients for concurrent requests.
#[derive(Debug)]
pub struct SipClient {
    socket: UdpSocket,
    local_port: u16,
    busy: Mutex<()>,
}

impl SipClient {
    /// Binds a new client to `127.0.0.1:0`.
    pub fn new() -> Result<SipClient, HarnessError> {
        let socket = UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0))
            .map_err(|e| HarnessError::io("binding SIP client socket", e))?;
        let local_port = socket
            .local_addr()
            .map_err(|e| HarnessError::io("reading SIP client address", e))?
            .port();
        Ok(SipClient {
            socket,
            local_port,
            busy: Mutex::new(()),
        })
    }

    /// The local UDP port replies come back to.
    pub fn local_port(&self) -> u16 {
        self.local_port
    }

    /// Sends `method sip:<ruri_user>@127.0.0.1:<target_port>` and waits up to
    /// `timeout` for its final (>= 200) reply; provisional replies are skipped.
    ///
    /// The request carries Via (with a fresh `z9hG4bK` branch and `rport`),
    /// Max-Forwards, From (with a tag), To, a unique Call-ID, CSeq, a Contact,
    /// then `headers` verbatim, then Content-Type (`text/plain`, only when there
    /// is a body and `headers` has none) and Content-Length.
    ///
    /// [`HarnessError::Timeout`] means no final reply arrived: for a test config
    /// that is how "the script ended without replying" shows.
    pub fn send_request(
        &self,
        target_port: u16,
        method: &str,
        ruri_user: &str,
        headers: &[(&str, &str)],
        body: &[u8],
        timeout: Duration,
    ) -> Result<SipReply, HarnessError> {
        let _one_at_a_time = self.busy.lock().unwrap_or_else(|e| e.into_inner());
        let call_id = format!("{:016x}{:016x}@127.0.0.1", random_u64(), random_u64());
        let request = self.build_request(target_port, method, ruri_user, &call_id, headers, body);
        let target = SocketAddrV4::new(Ipv4Addr::LOCALHOST, target_port);
        self.socket
            .send_to(&request, target)
            .map_err(|e| HarnessError::io(format!("sending {method} to {target}"), e))?;

        let cseq = format!("1 {method}");
        let deadline = Instant::now() + timeout;
        let mut buf = vec![0u8; 65536];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(HarnessError::Timeout(format!(
                    "no final reply to {method} sip:{ruri_user}@{target} within {timeout:?}"
                )));
            }
            // A zero read timeout would mean "block forever".
            self.socket
                .set_read_timeout(Some(left.max(Duration::from_millis(1))))
                .map_err(|e| HarnessError::io("setting socket timeout", e))?;
            let len = match self.socket.recv(&mut buf) {
                Ok(len) => len,
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    continue
                }
                // An ICMP port-unreachable from an earlier send surfaces here on
                // Linux; the server may simply not be listening yet.
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                    std::thread::sleep(crate::process::POLL.min(left));
                    continue;
                }
                Err(e) => return Err(HarnessError::io("receiving SIP reply", e)),
            };
            let data = &buf[..len];
            if !data.starts_with(b"SIP/2.0 ") {
                // A request sent to us (not a reply): not what we wait for.
                continue;
            }
            let reply = SipReply::parse(data)?;
            let ours = reply.header("Call-ID").or(reply.header("i")) == Some(call_id.as_str())
                && reply.header("CSeq") == Some(cseq.as_str());
            if ours && reply.code >= 200 {
                return Ok(reply);
            }
        }
    }

    /// Sends `OPTIONS sip:ping@127.0.0.1:<target_port>` and returns its reply.
    pub fn ping(&self, target_port: u16, timeout: Duration) -> Result<SipReply, HarnessError> {
        self.send_request(target_port, "OPTIONS", "ping", &[], &[], timeout)
    }

    fn build_request(
        &self,
        target_port: u16,
        method: &str,
        ruri_user: &str,
        call_id: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Vec<u8> {
        let local = format!("127.0.0.1:{}", self.local_port);
        let mut text = format!(
            "{method} sip:{ruri_user}@127.0.0.1:{target_port} SIP/2.0\r\n\
             Via: SIP/2.0/UDP {local};branch=z9hG4bK{branch:016x};rport\r\n\
             Max-Forwards: 70\r\n\
             From: <sip:harness@{local}>;tag={tag:08x}\r\n\
             To: <sip:{ruri_user}@127.0.0.1:{target_port}>\r\n\
             Call-ID: {call_id}\r\n\
             CSeq: 1 {method}\r\n\
             Contact: <sip:harness@{local}>\r\n",
            branch = random_u64(),
            tag = random_u64() as u32,
        );
        for (name, value) in headers {
            text.push_str(&format!("{name}: {value}\r\n"));
        }
        let has_type = headers
            .iter()
            .any(|(n, _)| n.eq_ignore_ascii_case("Content-Type") || n.eq_ignore_ascii_case("c"));
        if !body.is_empty() && !has_type {
            text.push_str("Content-Type: text/plain\r\n");
        }
        text.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
        let mut request = text.into_bytes();
        request.extend_from_slice(body);
        request
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_reply_with_folding_and_body() {
        let data = b"SIP/2.0 404 Not Here\r\nVia: SIP/2.0/UDP x\r\nX-A: 1\r\nx-a:  2 \r\n\
                     X-Long: a\r\n b\r\nContent-Length: 3\r\n\r\nabcdef";
        let reply = SipReply::parse(data).unwrap();
        assert_eq!(reply.code, 404);
        assert_eq!(reply.reason, "Not Here");
        assert_eq!(reply.header("x-A"), Some("1"));
        assert_eq!(reply.headers_named("X-A"), vec!["1", "2"]);
        assert_eq!(reply.header("X-Long"), Some("a b"));
        assert_eq!(reply.header("Missing"), None);
        assert_eq!(reply.body, b"abc");
    }

    #[test]
    fn rejects_garbage() {
        assert!(SipReply::parse(b"HTTP/1.1 200 OK\r\n\r\n").is_err());
        assert!(SipReply::parse(b"SIP/2.0 abc OK\r\n\r\n").is_err());
        assert!(SipReply::parse(b"SIP/2.0 200 OK\r\nContent-Length: 9\r\n\r\nab").is_err());
    }

    #[test]
    fn request_has_required_headers() {
        let client = SipClient::new().unwrap();
        let request =
            client.build_request(5999, "MESSAGE", "bob", "cid@x", &[("X-In", "00ff")], b"hi");
        let text = String::from_utf8(request).unwrap();
        assert!(text.starts_with("MESSAGE sip:bob@127.0.0.1:5999 SIP/2.0\r\n"));
        for needle in [
            ";branch=z9hG4bK",
            ";rport\r\n",
            "From: <sip:harness@127.0.0.1:",
            ">;tag=",
            "To: <sip:bob@127.0.0.1:5999>\r\n",
            "Call-ID: cid@x\r\n",
            "CSeq: 1 MESSAGE\r\n",
            "Max-Forwards: 70\r\n",
            "X-In: 00ff\r\n",
            "Content-Type: text/plain\r\n",
        ] {
            assert!(text.contains(needle), "{needle:?} missing from {text}");
        }
        assert!(text.ends_with("Content-Length: 2\r\n\r\nhi"));
    }

    #[test]
    fn timeout_when_nobody_answers() {
        // A bound socket that never answers stands in for a silent server.
        let silent = UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = silent.local_addr().unwrap().port();
        let client = SipClient::new().unwrap();
        let started = Instant::now();
        let err = client.ping(port, Duration::from_millis(200)).unwrap_err();
        assert!(matches!(err, HarnessError::Timeout(_)), "{err}");
        assert!(started.elapsed() < Duration::from_secs(2));
    }
}
