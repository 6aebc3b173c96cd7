//! The IPC socket: its name, bound by the main process before Kamailio
//! forks (so the name is reserved at start-up and the AMQP process inherits
//! the listening socket), connecting to it with a bound, and which peers
//! the AMQP process accepts.
use std::io;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixListener, UnixStream};
use std::time::{Duration, Instant};

/// Binds the listening socket of the Kamailio instance whose main process
/// has pid `main_pid` (in the main process, before the fork) under a name
/// no other instance holds: `kazoo-<main pid>-<random>`. The random part
/// keeps apart instances with the same pid in one network namespace (each
/// container's Kamailio as PID 1); a name already taken is drawn again.
/// Returns the name and the listener.
pub fn bind(main_pid: u32) -> io::Result<(String, UnixListener)> {
    let mut attempts = 0;
    loop {
        let name = format!("kazoo-{main_pid}-{}", uuid::Uuid::new_v4().simple());
        let addr = SocketAddr::from_abstract_name(name.as_bytes())?;
        match UnixListener::bind_addr(&addr) {
            Ok(listener) => return Ok((name, listener)),
            Err(e) if e.kind() == io::ErrorKind::AddrInUse && attempts < 8 => attempts += 1,
            Err(e) => return Err(e),
        }
    }
}

/// Connects to the AMQP process, waiting at most until `deadline` (a full
/// listen backlog makes a blocking `connect` wait for ever).
pub(super) fn connect(name: &str, deadline: Instant) -> io::Result<UnixStream> {
    use socket2::{Domain, SockAddr, Socket, Type};
    use std::os::unix::ffi::OsStrExt;
    let mut abstract_path = vec![0u8];
    abstract_path.extend_from_slice(name.as_bytes());
    let addr = SockAddr::unix(std::ffi::OsStr::from_bytes(&abstract_path))?;
    loop {
        let socket = Socket::new(Domain::UNIX, Type::STREAM, None)?;
        socket.set_nonblocking(true)?;
        match socket.connect(&addr) {
            Ok(()) => {
                socket.set_nonblocking(false)?;
                return Ok(socket.into());
            }
            // A Unix stream connect either completes or finds the backlog
            // full (EAGAIN); try again until the deadline.
            Err(e) if e.kind() == io::ErrorKind::WouldBlock && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(2));
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the kazoo AMQP process accepts no connection",
                ));
            }
            Err(e) => return Err(e),
        }
    }
}

/// Whether a peer (its credentials as the kernel gives them) is one of this
/// Kamailio instance's processes: the effective uid of this process
/// (`own_uid`), and either the main process (`main_pid`) or one of its
/// children (Kamailio forks every process from the main one). Without
/// `/proc` only the uid is checked.
pub fn trusted_peer(
    peer_uid: u32,
    peer_pid: Option<i32>,
    own_uid: u32,
    main_pid: u32,
) -> Result<(), String> {
    if peer_uid != own_uid {
        return Err(format!("uid {peer_uid} is not this process's {own_uid}"));
    }
    let Some(pid) = peer_pid.and_then(|p| u32::try_from(p).ok()) else {
        return Err("the peer's pid is unknown".into());
    };
    if pid == main_pid {
        return Ok(());
    }
    match parent_pid(pid) {
        Some(parent) if parent == main_pid => Ok(()),
        Some(parent) => Err(format!(
            "pid {pid} (parent {parent}) is not a process of this Kamailio (main pid {main_pid})"
        )),
        None if !std::path::Path::new("/proc/self/stat").exists() => Ok(()),
        None => Err(format!("pid {pid} is gone")),
    }
}

/// The parent pid of `pid`, from `/proc/<pid>/stat`.
fn parent_pid(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // `pid (comm) state ppid ...`; comm may hold spaces and parentheses.
    let after_comm = &stat[stat.rfind(')')? + 1..];
    after_comm.split_whitespace().nth(1)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_bind_gets_its_own_name_even_for_the_same_pid() {
        let (a, _la) = bind(4242).unwrap();
        let (b, _lb) = bind(4242).unwrap();
        assert_ne!(a, b);
        assert!(a.starts_with("kazoo-4242-") && b.starts_with("kazoo-4242-"));
    }

    #[test]
    fn connect_gives_up_at_its_deadline_when_nobody_accepts() {
        use socket2::{Domain, SockAddr, Socket, Type};
        use std::os::unix::ffi::OsStrExt;
        let name = format!("kazoo-test-backlog-{}", std::process::id());
        let mut path = vec![0u8];
        path.extend_from_slice(name.as_bytes());
        let listener = Socket::new(Domain::UNIX, Type::STREAM, None).unwrap();
        listener
            .bind(&SockAddr::unix(std::ffi::OsStr::from_bytes(&path)).unwrap())
            .unwrap();
        // A backlog of 0 queues one connection; nothing is ever accepted.
        listener.listen(0).unwrap();
        let mut kept = Vec::new();
        let started = Instant::now();
        let refused = loop {
            assert!(started.elapsed() < Duration::from_secs(5), "never refused");
            let attempt = Instant::now();
            match connect(&name, attempt + Duration::from_millis(200)) {
                Ok(stream) => kept.push(stream),
                Err(e) => break (e, attempt.elapsed()),
            }
        };
        assert_eq!(refused.0.kind(), io::ErrorKind::TimedOut, "{}", refused.0);
        assert!(refused.1 < Duration::from_secs(1), "{:?}", refused.1);
    }

    #[test]
    fn only_this_kamailios_processes_are_trusted() {
        let me = std::process::id();
        let uid = 1000;
        // The main process itself, and a child of it.
        assert!(trusted_peer(uid, Some(me as i32), uid, me).is_ok());
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .unwrap();
        let child_pid = Some(child.id() as i32);
        assert!(trusted_peer(uid, child_pid, uid, me).is_ok());
        // Another uid; a process whose parent is not the main process.
        assert!(trusted_peer(uid + 1, child_pid, uid, me).is_err());
        assert!(trusted_peer(uid, child_pid, uid, me + 1).is_err());
        assert!(trusted_peer(uid, None, uid, me).is_err());
        child.kill().unwrap();
        child.wait().unwrap();
    }
}
