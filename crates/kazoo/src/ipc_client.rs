//! How a Kamailio process reaches the AMQP process: the IPC socket's name,
//! set in the main process before any fork, and one lazily connected
//! [`Requester`] per process, kept for the life of the process.
use std::sync::{Mutex, OnceLock};

use kazoo_engine::ipc::Requester;

/// The IPC socket name of this Kamailio instance.
static SOCKET_NAME: OnceLock<String> = OnceLock::new();

/// This process's connection to the AMQP process.
static REQUESTER: Mutex<Option<Requester>> = Mutex::new(None);

/// Records the socket's name (once, when it is bound).
pub(crate) fn set_socket_name(name: String) -> Result<(), String> {
    SOCKET_NAME
        .set(name)
        .map_err(|_| "the IPC socket was bound twice".to_string())
}

/// The socket's name (empty before it is bound).
pub(crate) fn socket_name() -> &'static str {
    SOCKET_NAME.get().map(String::as_str).unwrap_or_default()
}

/// Runs `f` with this process's requester.
pub(crate) fn with_requester<R>(f: impl FnOnce(&mut Requester) -> R) -> Result<R, String> {
    let name = SOCKET_NAME
        .get()
        .ok_or("the kazoo processes are not started (kazoo:mod-init or kamailio -c?)")?;
    let mut slot = REQUESTER.lock().unwrap_or_else(|e| e.into_inner());
    Ok(f(slot.get_or_insert_with(|| Requester::new(name))))
}
