//! The blocking side used by Kamailio's processes: a requester per process
//! (publishes, queries, status), a consumer worker's link, and one-off
//! messages. It never waits without a bound: every call takes a deadline,
//! and a connection on which a read timed out mid-frame is dropped (the next
//! call reconnects), so a stale answer can never be read as the answer to a
//! later request; answers also carry the request id.
use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use super::socket::connect;
use super::wire::{body_len, WireError};
use super::{Answer, IpcError, Outcome, Request, Work};

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

/// Reads one frame's body, giving up at `deadline`. `Ok(None)`: nothing arrived
/// (no byte of a frame was read, so the stream is still in sync).
fn read_frame(stream: &mut UnixStream, deadline: Instant) -> Result<Option<Vec<u8>>, IpcError> {
    let mut len = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return if got == 0 {
                Ok(None)
            } else {
                Err(IpcError::Timeout)
            };
        }
        stream.set_read_timeout(Some(left)).map_err(IpcError::Io)?;
        match stream.read(&mut len[got..]) {
            Ok(0) => {
                return Err(IpcError::Io(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "connection closed",
                )))
            }
            Ok(n) => got += n,
            Err(e) if is_timeout(&e) && got == 0 => return Ok(None),
            Err(e) if is_timeout(&e) => return Err(IpcError::Timeout),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(IpcError::Io(e)),
        }
    }
    let len = body_len(len).map_err(IpcError::Wire)?;
    let mut body = vec![0u8; len];
    let mut got = 0;
    while got < len {
        // Once a frame has started, finish it even past the deadline for a
        // little while: the peer writes whole frames at once.
        let left = deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(100));
        stream.set_read_timeout(Some(left)).map_err(IpcError::Io)?;
        match stream.read(&mut body[got..]) {
            Ok(0) => {
                return Err(IpcError::Io(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "connection closed",
                )))
            }
            Ok(n) => got += n,
            Err(e) if is_timeout(&e) => return Err(IpcError::Timeout),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(IpcError::Io(e)),
        }
    }
    Ok(Some(body))
}

fn write_frame(stream: &mut UnixStream, frame: &[u8], deadline: Instant) -> Result<(), IpcError> {
    let left = deadline
        .saturating_duration_since(Instant::now())
        .max(Duration::from_millis(1));
    stream.set_write_timeout(Some(left)).map_err(IpcError::Io)?;
    stream.write_all(frame).map_err(|e| {
        if is_timeout(&e) {
            IpcError::Timeout
        } else {
            IpcError::Io(e)
        }
    })
}

/// The request side of one process: publishes and queries, one at a time.
#[derive(Debug)]
pub struct Requester {
    name: String,
    stream: Option<UnixStream>,
    next_request: u64,
}

impl Requester {
    pub fn new(name: &str) -> Requester {
        Requester {
            name: name.to_string(),
            stream: None,
            next_request: 1,
        }
    }

    /// Sends a request the AMQP process answers (publish, query, status)
    /// with an id of its own and waits for its answer until `deadline`.
    pub fn call(&mut self, request: Request, deadline: Instant) -> Result<Outcome, IpcError> {
        let id = self.next_request;
        self.next_request += 1;
        let result = self.exchange(&request.encode(id), id, deadline);
        if result.is_err() {
            // Whatever state the stream is in, start afresh next time.
            self.stream = None;
        }
        result
    }

    /// Sends a request that gets no answer (an asynchronous query).
    pub fn send(&mut self, request: &Request, deadline: Instant) -> Result<(), IpcError> {
        let frame = request.encode(0);
        let result = self
            .connected(deadline)
            .and_then(|stream| write_frame(stream, &frame, deadline));
        if result.is_err() {
            self.stream = None;
        }
        result
    }

    fn connected(&mut self, deadline: Instant) -> Result<&mut UnixStream, IpcError> {
        if self.stream.is_none() {
            self.stream = Some(connect(&self.name, deadline).map_err(IpcError::Connect)?);
        }
        self.stream
            .as_mut()
            .ok_or(IpcError::Wire(WireError("no connection")))
    }

    fn exchange(
        &mut self,
        frame: &[u8],
        request: u64,
        deadline: Instant,
    ) -> Result<Outcome, IpcError> {
        let stream = self.connected(deadline)?;
        write_frame(stream, frame, deadline)?;
        loop {
            let Some(body) = read_frame(stream, deadline)? else {
                return Err(IpcError::Timeout);
            };
            let answer = Answer::decode(&body).map_err(IpcError::Wire)?;
            // Else an answer to an earlier request this process gave up on.
            if answer.request == request {
                return Ok(answer.outcome);
            }
        }
    }
}

/// Sends one unanswered request on a fresh connection (worker 1's start-up
/// report).
pub fn send_once(name: &str, request: &Request, deadline: Instant) -> Result<(), IpcError> {
    let mut stream = connect(name, deadline).map_err(IpcError::Connect)?;
    write_frame(&mut stream, &request.encode(0), deadline)
}

/// A consumer worker's connection: deliveries in, acks out. Reads are
/// buffered (every frame a read brings is kept, so a wait that ends
/// mid-frame leaves the stream in sync) into a buffer zeroed once, not per
/// read, and its socket timeouts are set only when they change: a delivery
/// costs no system call when it came in the same read as the one before.
#[derive(Debug)]
pub struct WorkerLink {
    stream: UnixStream,
    /// `input[start..end]` was read and not yet decoded.
    input: Vec<u8>,
    start: usize,
    end: usize,
    read_timeout: Option<Duration>,
}

/// A worker link's buffer, and what a read brings at most while the
/// frames it holds are small.
const LINK_READ: usize = 64 * 1024;

/// A link's buffer grown past this by a large frame is given back once
/// the frame is taken (one 10 MB message must not stay in every worker).
const LINK_KEEP: usize = 4 * LINK_READ;

/// The buffered frames move to the front of the buffer when less room
/// than this is left after them.
const LINK_MIN_READ: usize = 4096;

/// How long writing a report may take.
const LINK_WRITE_TIMEOUT: Duration = Duration::from_secs(2);

/// What a worker polls, with its broker connections, to know that work
/// came.
impl std::os::fd::AsFd for WorkerLink {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.stream.as_fd()
    }
}

impl WorkerLink {
    /// Connects and announces worker number `worker`.
    pub fn connect(name: &str, worker: u32) -> Result<WorkerLink, IpcError> {
        let deadline = Instant::now() + LINK_WRITE_TIMEOUT;
        let mut stream = connect(name, deadline).map_err(IpcError::Connect)?;
        write_frame(&mut stream, &Request::Hello { worker }.encode(0), deadline)?;
        stream
            .set_write_timeout(Some(LINK_WRITE_TIMEOUT))
            .map_err(IpcError::Io)?;
        Ok(WorkerLink {
            stream,
            input: vec![0; LINK_READ],
            start: 0,
            end: 0,
            read_timeout: None,
        })
    }

    /// Whether a whole frame is already read: the next [`next`](Self::next)
    /// returns it without a system call.
    pub fn has_work(&self) -> bool {
        matches!(self.buffered_frame_len(), Ok(Some(_)))
    }

    /// Whether the link has bytes to read now (a poll that does not wait).
    pub fn readable_now(&self) -> bool {
        let mut fds = [rustix::event::PollFd::new(
            &self.stream,
            rustix::event::PollFlags::IN,
        )];
        let now = rustix::event::Timespec::default();
        matches!(rustix::event::poll(&mut fds, Some(&now)), Ok(1..))
    }

    /// The next work item, or `None` when nothing (whole) arrived within
    /// `wait`.
    pub fn next(&mut self, wait: Duration) -> Result<Option<Work>, IpcError> {
        let deadline = Instant::now() + wait;
        loop {
            if let Some(len) = self.buffered_frame_len().map_err(IpcError::Wire)? {
                let work = Work::decode(&self.input[self.start + 4..self.start + 4 + len]);
                self.consumed(4 + len);
                return work.map(Some).map_err(IpcError::Wire);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            // Re-set only when it changes by more than a millisecond.
            if self
                .read_timeout
                .is_none_or(|set| set.abs_diff(left) > Duration::from_millis(1))
            {
                self.stream
                    .set_read_timeout(Some(left))
                    .map_err(IpcError::Io)?;
                self.read_timeout = Some(left);
            }
            self.make_room();
            match self.stream.read(&mut self.input[self.end..]) {
                Ok(0) => {
                    return Err(IpcError::Io(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "connection closed",
                    )))
                }
                Ok(read) => self.end += read,
                Err(e) if is_timeout(&e) => return Ok(None),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(IpcError::Io(e)),
            }
        }
    }

    /// The body length of the first frame buffered, when all of it is.
    fn buffered_frame_len(&self) -> Result<Option<usize>, WireError> {
        let Some(&[a, b, c, d]) = self.input.get(self.start..self.start + 4) else {
            return Ok(None);
        };
        if self.start + 4 > self.end {
            return Ok(None);
        }
        let len = body_len([a, b, c, d])?;
        Ok((self.start + 4 + len <= self.end).then_some(len))
    }

    /// Drops the first `taken` bytes buffered; an empty buffer starts over
    /// at its beginning, and one a large frame grew is given back.
    fn consumed(&mut self, taken: usize) {
        self.start += taken;
        if self.start == self.end {
            (self.start, self.end) = (0, 0);
            if self.input.len() > LINK_KEEP {
                self.input.truncate(LINK_READ);
                self.input.shrink_to_fit();
            }
        }
    }

    /// Space after `end` for the next read: what is buffered moves to the
    /// front when little room is left, and the buffer grows (only the new
    /// part zeroed) to hold a frame larger than it.
    fn make_room(&mut self) {
        if self.input.len() - self.end >= LINK_MIN_READ {
            return;
        }
        self.input.copy_within(self.start..self.end, 0);
        (self.start, self.end) = (0, self.end - self.start);
        let frame = match self.input.get(..4) {
            Some(&[a, b, c, d]) if self.end >= 4 => body_len([a, b, c, d]).map_or(0, |len| len + 4),
            _ => 0,
        };
        let needed = frame.max(self.end + LINK_MIN_READ);
        if needed > self.input.len() {
            self.input.resize(needed, 0);
        }
    }

    /// Tells the AMQP process that the routes of `delivery` and of every
    /// delivery before it on this link have run.
    pub fn ack(&mut self, delivery: u64) -> Result<(), IpcError> {
        self.tell(&Request::Ack { delivery })
    }

    /// Sends a request that is not answered (a report).
    pub fn tell(&mut self, request: &Request) -> Result<(), IpcError> {
        self.stream.write_all(&request.encode(0)).map_err(|e| {
            if is_timeout(&e) {
                IpcError::Timeout
            } else {
                IpcError::Io(e)
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ipc::bind;
    use crate::ipc::wire::tests::outgoing;

    #[test]
    fn a_request_gets_its_own_answer_and_skips_stale_ones() {
        let (name, listener) = bind(std::process::id()).unwrap();
        let server = std::thread::spawn(move || {
            let (mut conn, _) = listener.accept().unwrap();
            let deadline = Instant::now() + Duration::from_secs(5);
            let body = read_frame(&mut conn, deadline).unwrap().unwrap();
            let Ok((id, Request::Publish(_))) = Request::decode(&body) else {
                panic!("expected a publish");
            };
            // A stale answer first, then the real one.
            let stale = Answer {
                request: id + 100,
                outcome: Outcome::Timeout,
            };
            conn.write_all(&stale.encode()).unwrap();
            let answer = Answer {
                request: id,
                outcome: Outcome::Published,
            };
            conn.write_all(&answer.encode()).unwrap();
            // The second request is never answered.
            let _ = read_frame(&mut conn, deadline);
            std::thread::sleep(Duration::from_millis(300));
        });
        let mut requester = Requester::new(&name);
        let deadline = Instant::now() + Duration::from_secs(5);
        let outcome = requester
            .call(Request::Publish(outgoing()), deadline)
            .unwrap();
        assert_eq!(outcome, Outcome::Published);
        let started = Instant::now();
        let err = requester
            .call(
                Request::Publish(outgoing()),
                Instant::now() + Duration::from_millis(150),
            )
            .unwrap_err();
        assert!(matches!(err, IpcError::Timeout), "{err}");
        assert!(started.elapsed() < Duration::from_secs(1));
        server.join().unwrap();
    }

    #[test]
    fn a_worker_link_reads_frames_that_came_together_and_keeps_a_partial_one() {
        use crate::ipc::{Delivery, Work};
        let delivery = |id: u64| {
            Work::Deliver(Delivery {
                id,
                routing_key: Some(b"rk".to_vec()),
                body: format!("{{ \"n\": {id} }}").into_bytes(),
                event_key: None,
                event_subkey: None,
            })
        };
        let (name, listener) = bind(std::process::id()).unwrap();
        let (cut_tx, cut_rx) = std::sync::mpsc::channel::<()>();
        let server = std::thread::spawn(move || {
            let (mut conn, _) = listener.accept().unwrap();
            let deadline = Instant::now() + Duration::from_secs(5);
            let hello = read_frame(&mut conn, deadline).unwrap().unwrap();
            assert!(matches!(
                Request::decode(&hello),
                Ok((_, Request::Hello { worker: 2 }))
            ));
            // Three whole frames and the first half of a fourth, in one write.
            let mut bytes: Vec<u8> = (1..=3).flat_map(|id| delivery(id).encode()).collect();
            let fourth = delivery(4).encode();
            let half = fourth.len() / 2;
            bytes.extend_from_slice(&fourth[..half]);
            conn.write_all(&bytes).unwrap();
            cut_rx.recv().unwrap();
            conn.write_all(&fourth[half..]).unwrap();
            let report = read_frame(&mut conn, deadline).unwrap().unwrap();
            assert!(matches!(
                Request::decode(&report),
                Ok((_, Request::Ack { delivery: 4 }))
            ));
        });
        let mut link = WorkerLink::connect(&name, 2).unwrap();
        for id in 1..=3 {
            let work = link.next(Duration::from_secs(5)).unwrap();
            assert_eq!(work, Some(delivery(id)));
        }
        // Half a frame: nothing yet, and the link stays in sync.
        assert_eq!(link.next(Duration::from_millis(100)).unwrap(), None);
        cut_tx.send(()).unwrap();
        assert_eq!(
            link.next(Duration::from_secs(5)).unwrap(),
            Some(delivery(4))
        );
        link.ack(4).unwrap();
        server.join().unwrap();
    }

    #[test]
    fn a_worker_link_gives_back_the_buffer_a_large_frame_took() {
        use crate::ipc::{Delivery, Work};
        let large = Work::Deliver(Delivery {
            id: 1,
            routing_key: None,
            body: vec![b'x'; 4 * 1024 * 1024],
            event_key: None,
            event_subkey: None,
        });
        let frame = large.encode();
        let (name, listener) = bind(std::process::id()).unwrap();
        let server = std::thread::spawn(move || {
            let (mut conn, _) = listener.accept().unwrap();
            let deadline = Instant::now() + Duration::from_secs(5);
            read_frame(&mut conn, deadline).unwrap().unwrap();
            conn.write_all(&frame).unwrap();
        });
        let mut link = WorkerLink::connect(&name, 1).unwrap();
        assert_eq!(link.next(Duration::from_secs(5)).unwrap(), Some(large));
        assert!(
            link.input.capacity() <= LINK_KEEP,
            "the link keeps {} bytes",
            link.input.capacity()
        );
        assert!(!link.has_work());
        server.join().unwrap();
    }

    #[test]
    fn an_unreachable_service_is_a_connect_error() {
        let mut requester = Requester::new("kazoo-test-nobody-listens-here");
        let err = requester
            .call(
                Request::Publish(outgoing()),
                Instant::now() + Duration::from_secs(1),
            )
            .unwrap_err();
        assert!(matches!(err, IpcError::Connect(_)), "{err}");
    }
}
