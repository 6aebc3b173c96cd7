//! A minimal SIP-over-UDP client: sends one request, waits for its final reply.
//!
//! Tests drive a Kamailio config by sending it a request and looking at the
//! reply the script builds. Only what that needs is here: a well-formed request
//! with fresh transaction identifiers, and matching the reply by Call-ID and
//! CSeq; MD5 digest authentication when the server challenges; and requests
//! the server sends to the client (NOTIFYs after a SUBSCRIBE), each answered
//! 200 at once and kept for [`SipClient::next_request`]. There is no
//! retransmission: a retransmitted request would run the
//! script a second time, and a test counting side effects (say, published AMQP
//! messages) would see double. Loopback UDP does not lose datagrams in practice.
//!
//! Nothing is ACKed. A final reply to an INVITE is not acknowledged, because the
//! ACK would run the test config's request route again; prefer non-INVITE
//! methods (OPTIONS, MESSAGE, NOTIFY) in tests.

use std::collections::VecDeque;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use md5::{Digest, Md5};

use crate::names::random_u64;
use crate::HarnessError;

/// A SIP message split into its first line, headers and body.
struct Parsed {
    first_line: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

/// Splits one datagram (headers folded, body cut at Content-Length).
fn parse_message(data: &[u8]) -> Result<Parsed, HarnessError> {
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
    let first_line = lines.next().unwrap_or_default().to_owned();
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
    let length = match find_header(&headers, "Content-Length").or(find_header(&headers, "l")) {
        Some(l) => l.parse::<usize>().map_err(|_| bad("bad Content-Length"))?,
        None => rest.len(),
    };
    let body = rest
        .get(..length)
        .ok_or_else(|| bad("body shorter than Content-Length"))?
        .to_vec();
    Ok(Parsed {
        first_line,
        headers,
        body,
    })
}

fn find_header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

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
        find_header(&self.headers, name)
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
        let message = parse_message(data)?;
        let mut parts = message.first_line.splitn(3, ' ');
        if parts.next() != Some("SIP/2.0") {
            return Err(bad("not a SIP/2.0 reply"));
        }
        let code = parts
            .next()
            .and_then(|c| c.parse::<u16>().ok())
            .filter(|c| (100..700).contains(c))
            .ok_or_else(|| bad("bad status code"))?;
        Ok(SipReply {
            code,
            reason: parts.next().unwrap_or_default().to_owned(),
            headers: message.headers,
            body: message.body,
        })
    }
}

/// A request the server sent to the client (e.g. a NOTIFY).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SipRequest {
    /// The method, e.g. `NOTIFY`.
    pub method: String,
    /// The request URI.
    pub uri: String,
    /// Headers in order of appearance, names as sent, values trimmed.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
}

impl SipRequest {
    /// The value of the first header called `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        find_header(&self.headers, name)
    }

    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    fn parse(data: &[u8]) -> Result<SipRequest, HarnessError> {
        let message = parse_message(data)?;
        let mut parts = message.first_line.split(' ');
        match (parts.next(), parts.next(), parts.next(), parts.next()) {
            (Some(method), Some(uri), Some("SIP/2.0"), None) if !method.is_empty() => {
                Ok(SipRequest {
                    method: method.to_owned(),
                    uri: uri.to_owned(),
                    headers: message.headers,
                    body: message.body,
                })
            }
            _ => Err(HarnessError::BadReply(format!(
                "not a SIP/2.0 request: {:?}",
                message.first_line
            ))),
        }
    }

    /// A `200 OK` answering this request (its Via, From, To, Call-ID, CSeq).
    fn ok(&self) -> Vec<u8> {
        let mut text = String::from("SIP/2.0 200 OK\r\n");
        for (name, value) in &self.headers {
            let copied = ["Via", "v", "From", "f", "To", "t", "Call-ID", "i", "CSeq"]
                .iter()
                .any(|h| name.eq_ignore_ascii_case(h));
            if copied {
                text.push_str(&format!("{name}: {value}\r\n"));
            }
        }
        text.push_str("Content-Length: 0\r\n\r\n");
        text.into_bytes()
    }
}

/// User name and password for digest authentication.
#[derive(Debug, Clone, Copy)]
pub struct DigestCredentials<'a> {
    pub user: &'a str,
    pub password: &'a str,
}

/// The `Authorization` value answering a `WWW-Authenticate` /
/// `Proxy-Authenticate` MD5 challenge (RFC 2617, with `qop=auth` when the
/// challenge offers it) for `method` on `uri`.
fn digest_authorization(
    challenge: &str,
    credentials: DigestCredentials,
    method: &str,
    uri: &str,
    cnonce: &str,
) -> Result<String, HarnessError> {
    let params = challenge
        .strip_prefix("Digest ")
        .map(challenge_params)
        .ok_or_else(|| HarnessError::BadReply(format!("not a digest challenge: {challenge}")))?;
    let param = |name: &str| {
        params
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    };
    let realm = param("realm").unwrap_or_default();
    let nonce = param("nonce")
        .ok_or_else(|| HarnessError::BadReply(format!("challenge without nonce: {challenge}")))?;
    let md5_hex = |text: String| crate::hex_encode(&Md5::digest(text.as_bytes()));
    let ha1 = md5_hex(format!(
        "{}:{realm}:{}",
        credentials.user, credentials.password
    ));
    let ha2 = md5_hex(format!("{method}:{uri}"));
    let qop_auth = param("qop").is_some_and(|q| q.split(',').any(|q| q.trim() == "auth"));
    let mut header = format!(
        "Digest username=\"{}\", realm=\"{realm}\", nonce=\"{nonce}\", uri=\"{uri}\", algorithm=MD5",
        credentials.user
    );
    let response = if qop_auth {
        header.push_str(&format!(", qop=auth, nc=00000001, cnonce=\"{cnonce}\""));
        md5_hex(format!("{ha1}:{nonce}:00000001:{cnonce}:auth:{ha2}"))
    } else {
        md5_hex(format!("{ha1}:{nonce}:{ha2}"))
    };
    header.push_str(&format!(", response=\"{response}\""));
    if let Some(opaque) = param("opaque") {
        header.push_str(&format!(", opaque=\"{opaque}\""));
    }
    Ok(header)
}

/// `name=value` pairs of a challenge, values unquoted (commas inside quotes
/// are kept).
fn challenge_params(text: &str) -> Vec<(String, String)> {
    let mut items = Vec::new();
    let mut current = String::new();
    let mut quoted = false;
    for c in text.chars() {
        match c {
            '"' => quoted = !quoted,
            ',' if !quoted => items.push(std::mem::take(&mut current)),
            _ => current.push(c),
        }
    }
    items.push(current);
    items
        .iter()
        .filter_map(|item| item.split_once('='))
        .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
        .collect()
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
    // Requests the server sent (already answered), oldest first.
    received: Mutex<VecDeque<SipRequest>>,
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
            received: Mutex::new(VecDeque::new()),
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
        let call_id = new_call_id();
        let request = Outgoing {
            target_port,
            method,
            ruri_user,
            call_id: &call_id,
            cseq: 1,
            headers,
            body,
        };
        self.transact(&request, timeout)
    }

    /// Like [`SipClient::send_request`] without a body (REGISTER), for a
    /// server that challenges: the first reply must be a 401 or 407 with an
    /// MD5 digest challenge, which is answered by sending the request again
    /// (same Call-ID, CSeq 2) with `Authorization` / `Proxy-Authorization`.
    /// Returns the challenge and the final reply to the authenticated
    /// request.
    pub fn send_with_digest(
        &self,
        target_port: u16,
        method: &str,
        ruri_user: &str,
        headers: &[(&str, &str)],
        credentials: DigestCredentials,
        timeout: Duration,
    ) -> Result<(SipReply, SipReply), HarnessError> {
        let call_id = new_call_id();
        let mut request = Outgoing {
            target_port,
            method,
            ruri_user,
            call_id: &call_id,
            cseq: 1,
            headers,
            body: b"",
        };
        let challenge = self.transact(&request, timeout)?;
        let (asked, answer) = match challenge.code {
            401 => ("WWW-Authenticate", "Authorization"),
            407 => ("Proxy-Authenticate", "Proxy-Authorization"),
            _ => {
                return Err(HarnessError::BadReply(format!(
                    "{method} was not challenged: {challenge:?}"
                )))
            }
        };
        let offered = challenge
            .header(asked)
            .ok_or_else(|| HarnessError::BadReply(format!("{} without {asked}", challenge.code)))?;
        let uri = request.ruri();
        let cnonce = format!("{:016x}", random_u64());
        let authorization = digest_authorization(offered, credentials, method, &uri, &cnonce)?;
        let mut with_auth = headers.to_vec();
        with_auth.push((answer, &authorization));
        request.cseq = 2;
        request.headers = &with_auth;
        let reply = self.transact(&request, timeout)?;
        Ok((challenge, reply))
    }

    /// The next request the server sent to this client (answered 200 when it
    /// arrived), waiting up to `timeout`; replies arriving meanwhile are
    /// dropped.
    pub fn next_request(&self, timeout: Duration) -> Result<SipRequest, HarnessError> {
        let _one_at_a_time = self.busy.lock().unwrap_or_else(|e| e.into_inner());
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(request) = self.received_queue().pop_front() {
                return Ok(request);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(HarnessError::Timeout(format!(
                    "no request to 127.0.0.1:{} within {timeout:?}",
                    self.local_port
                )));
            }
            self.receive(left)?;
        }
    }

    fn received_queue(&self) -> std::sync::MutexGuard<'_, VecDeque<SipRequest>> {
        self.received.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Reads one datagram within `left`: a reply is returned; a request is
    /// answered 200 and queued. `None` when nothing (usable) arrived.
    fn receive(&self, left: Duration) -> Result<Option<SipReply>, HarnessError> {
        // A zero read timeout would mean "block forever".
        self.socket
            .set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .map_err(|e| HarnessError::io("setting socket timeout", e))?;
        let mut buf = vec![0u8; 65536];
        let (len, from) = match self.socket.recv_from(&mut buf) {
            Ok(got) => got,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return Ok(None)
            }
            // An ICMP port-unreachable from an earlier send surfaces here on
            // Linux; the server may simply not be listening yet.
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                std::thread::sleep(crate::process::POLL.min(left));
                return Ok(None);
            }
            Err(e) => return Err(HarnessError::io("receiving SIP message", e)),
        };
        let data = &buf[..len];
        if data.starts_with(b"SIP/2.0 ") {
            return SipReply::parse(data).map(Some);
        }
        let request = SipRequest::parse(data)?;
        self.answer(&request, from)?;
        self.received_queue().push_back(request);
        Ok(None)
    }

    fn answer(&self, request: &SipRequest, to: SocketAddr) -> Result<(), HarnessError> {
        self.socket
            .send_to(&request.ok(), to)
            .map(|_| ())
            .map_err(|e| HarnessError::io(format!("answering {} from {to}", request.method), e))
    }

    /// Sends `request` and waits up to `timeout` for its final reply.
    fn transact(&self, request: &Outgoing, timeout: Duration) -> Result<SipReply, HarnessError> {
        let _one_at_a_time = self.busy.lock().unwrap_or_else(|e| e.into_inner());
        let target = SocketAddrV4::new(Ipv4Addr::LOCALHOST, request.target_port);
        let method = request.method;
        self.socket
            .send_to(&self.build_request(request), target)
            .map_err(|e| HarnessError::io(format!("sending {method} to {target}"), e))?;

        let cseq = format!("{} {method}", request.cseq);
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(HarnessError::Timeout(format!(
                    "no final reply to {method} {} within {timeout:?}",
                    request.ruri()
                )));
            }
            let Some(reply) = self.receive(left)? else {
                continue;
            };
            let ours = reply.header("Call-ID").or(reply.header("i")) == Some(request.call_id)
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

    fn build_request(&self, request: &Outgoing) -> Vec<u8> {
        let local = format!("127.0.0.1:{}", self.local_port);
        let Outgoing {
            target_port,
            method,
            ruri_user,
            call_id,
            cseq,
            headers,
            body,
        } = request;
        let mut text = format!(
            "{method} {ruri} SIP/2.0\r\n\
             Via: SIP/2.0/UDP {local};branch=z9hG4bK{branch:016x};rport\r\n\
             Max-Forwards: 70\r\n\
             From: <sip:harness@{local}>;tag={tag:08x}\r\n\
             To: <sip:{ruri_user}@127.0.0.1:{target_port}>\r\n\
             Call-ID: {call_id}\r\n\
             CSeq: {cseq} {method}\r\n\
             Contact: <sip:harness@{local}>\r\n",
            ruri = request.ruri(),
            branch = random_u64(),
            tag = random_u64() as u32,
        );
        for (name, value) in headers.iter() {
            text.push_str(&format!("{name}: {value}\r\n"));
        }
        let has_type = headers
            .iter()
            .any(|(n, _)| n.eq_ignore_ascii_case("Content-Type") || n.eq_ignore_ascii_case("c"));
        if !body.is_empty() && !has_type {
            text.push_str("Content-Type: text/plain\r\n");
        }
        text.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
        let mut bytes = text.into_bytes();
        bytes.extend_from_slice(body);
        bytes
    }
}

/// One request to send.
struct Outgoing<'a> {
    target_port: u16,
    method: &'a str,
    ruri_user: &'a str,
    call_id: &'a str,
    cseq: u32,
    headers: &'a [(&'a str, &'a str)],
    body: &'a [u8],
}

impl Outgoing<'_> {
    fn ruri(&self) -> String {
        format!("sip:{}@127.0.0.1:{}", self.ruri_user, self.target_port)
    }
}

fn new_call_id() -> String {
    format!("{:016x}{:016x}@127.0.0.1", random_u64(), random_u64())
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
        let request = client.build_request(&Outgoing {
            target_port: 5999,
            method: "MESSAGE",
            ruri_user: "bob",
            call_id: "cid@x",
            cseq: 1,
            headers: &[("X-In", "00ff")],
            body: b"hi",
        });
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
    fn digest_response_matches_rfc_2617() {
        let challenge = "Digest realm=\"testrealm@host.com\", qop=\"auth,auth-int\", \
                         nonce=\"dcd98b7102dd2f0e8b11d0f600bfb0c093\", \
                         opaque=\"5ccc069c403ebaf9f0171e9517f40e41\"";
        let credentials = DigestCredentials {
            user: "Mufasa",
            password: "Circle Of Life",
        };
        let header =
            digest_authorization(challenge, credentials, "GET", "/dir/index.html", "0a4f113b")
                .unwrap();
        assert!(
            header.contains("response=\"6629fae49393a05397450978507c4ef1\""),
            "{header}"
        );
        assert!(header.contains("opaque=\"5ccc069c403ebaf9f0171e9517f40e41\""));
        assert!(header.contains("qop=auth, nc=00000001, cnonce=\"0a4f113b\""));
        let plain = digest_authorization(
            "Digest realm=\"r\", nonce=\"n\"",
            credentials,
            "GET",
            "/",
            "c",
        )
        .unwrap();
        assert!(!plain.contains("qop"), "{plain}");
        assert!(digest_authorization("Basic realm=\"r\"", credentials, "GET", "/", "c").is_err());
    }

    #[test]
    fn parses_request_and_answers_it() {
        let data = b"NOTIFY sip:harness@127.0.0.1:5 SIP/2.0\r\nVia: SIP/2.0/UDP a;branch=z9\r\n\
                     From: <sip:x@y>;tag=1\r\nTo: <sip:harness@z>;tag=2\r\nCall-ID: c\r\n\
                     CSeq: 7 NOTIFY\r\nEvent: dialog\r\nContent-Length: 4\r\n\r\nbody";
        let request = SipRequest::parse(data).unwrap();
        assert_eq!(request.method, "NOTIFY");
        assert_eq!(request.uri, "sip:harness@127.0.0.1:5");
        assert_eq!(request.header("event"), Some("dialog"));
        assert_eq!(request.text(), "body");
        let ok = String::from_utf8(request.ok()).unwrap();
        assert!(ok.starts_with("SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP a;branch=z9\r\n"));
        for needle in [
            "To: <sip:harness@z>;tag=2\r\n",
            "CSeq: 7 NOTIFY\r\n",
            "Call-ID: c\r\n",
        ] {
            assert!(ok.contains(needle), "{needle:?} missing from {ok}");
        }
        assert!(!ok.contains("Event"));
        assert!(SipRequest::parse(b"SIP/2.0 200 OK\r\n\r\n").is_err());
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
