//! Which thread of this process may call into Kamailio.
//!
//! Kamailio's APIs (pkg memory, logging, static buffers, route execution) are
//! single-threaded per process. The thread that loaded the module is the host
//! thread; `fork` keeps the calling thread, so the main thread of every forked
//! child inherits that identity. Threads started later (the AMQP runtime in
//! the module's own processes) are not host threads.
use std::sync::OnceLock;
use std::thread::ThreadId;

static HOST_THREAD: OnceLock<ThreadId> = OnceLock::new();

/// Records the calling thread as the host thread (done in `mod_register`).
pub fn mark_host_thread() {
    let _ = HOST_THREAD.set(std::thread::current().id());
}

/// Whether the calling thread may call into Kamailio.
pub fn is_host_thread() -> bool {
    HOST_THREAD
        .get()
        .is_some_and(|id| *id == std::thread::current().id())
}
