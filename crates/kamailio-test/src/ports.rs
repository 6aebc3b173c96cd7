//! Reserving free loopback ports for servers the harness starts.
//!
//! Kamailio binds UDP with `SO_REUSEADDR`, so a second Kamailio on a busy port
//! does not fail: the two silently share the traffic. Checking that a port is
//! free is therefore not enough when tests start servers in parallel threads or
//! processes; between the check and the server's bind another test could pick
//! the same port. Each reservation also holds an exclusive `flock` on a per-port
//! file in a shared directory for its whole life, so no other harness user, in
//! this process or another, hands out the same port. The kernel drops the lock
//! when the holder exits, even after a crash, so stale reservations cannot
//! accumulate.
//!
//! Ports come from 20000..32000: below Linux's ephemeral range (32768..60999),
//! so an outgoing connection cannot be given the port between the check and the
//! server's bind, and clear of the usual well-known service ports.

use std::fs::{self, File, OpenOptions};
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, UdpSocket};
use std::os::fd::AsRawFd;
use std::path::PathBuf;

use crate::names::random_u64;
use crate::HarnessError;

const FIRST_PORT: u16 = 20000;
const PORT_COUNT: u16 = 12000;
const ATTEMPTS: usize = 500;

/// A port that is free on 127.0.0.1 (TCP and UDP) and reserved for its holder.
#[derive(Debug)]
pub(crate) struct PortLease {
    port: u16,
    // Holding the open file keeps the flock; dropping it releases the port.
    _lock: File,
}

impl PortLease {
    pub(crate) fn port(&self) -> u16 {
        self.port
    }
}

/// Reserves a random free port, free for both TCP and UDP on 127.0.0.1.
pub(crate) fn reserve_port() -> Result<PortLease, HarnessError> {
    let dir = lock_dir();
    fs::create_dir_all(&dir)
        .map_err(|e| HarnessError::io(format!("creating {}", dir.display()), e))?;
    for _ in 0..ATTEMPTS {
        let port = FIRST_PORT + (random_u64() % u64::from(PORT_COUNT)) as u16;
        let path = dir.join(format!("{port}.lock"));
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| HarnessError::io(format!("opening {}", path.display()), e))?;
        // SAFETY: flock on a file descriptor we own and keep open; no memory is involved.
        let locked = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0;
        if locked && is_free(port) {
            return Ok(PortLease { port, _lock: file });
        }
    }
    Err(HarnessError::NoFreePort(format!(
        "{ATTEMPTS} random ports in {FIRST_PORT}..{} were all reserved or busy",
        FIRST_PORT + PORT_COUNT
    )))
}

/// Shared by every user of the harness on this machine, whatever the process.
fn lock_dir() -> PathBuf {
    std::env::temp_dir().join("kamailio-test-ports")
}

/// True when nothing is bound to `port` on 127.0.0.1, for UDP and for TCP.
///
/// The probe sockets do not set `SO_REUSEADDR`, so the UDP bind fails even when
/// the current holder (Kamailio) did set it.
fn is_free(port: u16) -> bool {
    let addr = SocketAddrV4::new(Ipv4Addr::LOCALHOST, port);
    UdpSocket::bind(addr).is_ok() && TcpListener::bind(addr).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leases_are_distinct_and_in_range() {
        let leases: Vec<PortLease> = (0..20).map(|_| reserve_port().unwrap()).collect();
        let mut ports: Vec<u16> = leases.iter().map(PortLease::port).collect();
        ports.sort_unstable();
        ports.dedup();
        assert_eq!(ports.len(), leases.len());
        assert!(ports
            .iter()
            .all(|&p| (FIRST_PORT..FIRST_PORT + PORT_COUNT).contains(&p)));
    }

    #[test]
    fn a_held_port_is_not_bound_by_the_probe() {
        let lease = reserve_port().unwrap();
        // The lease only reserves; the port must still be bindable by the server.
        assert!(is_free(lease.port()));
    }
}
