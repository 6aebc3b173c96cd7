//! Module processes: registering them in `mod_init` and forking them the
//! Kamailio way in `child_init(PROC_MAIN)`.
//!
//! `fork_process` gives the child a slot in the process table (so `kamcmd
//! core.ps` lists it) and, unless the rank is `PROC_NOCHLDINIT`, runs every
//! module's `child_init(rank)` in the child first, which is what lets a
//! process run script routes, `t_continue` or DB calls. A forked child must
//! never return into the main process's start-up code: its entry point
//! loops forever.
use std::ffi::{c_int, CString};

use crate::sys;

/// What a process of the module is for, which decides its rank.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProcessKind {
    /// Runs script routes (event routes, transaction resumption, DB):
    /// `PROC_XWORKER` with a socket to TCP main, like the C module's workers.
    ScriptWorker,
    /// Network I/O only: `PROC_NOCHLDINIT`, no module `child_init`.
    IoOnly,
}

/// Reserves `count` process slots (call from `mod_init` only).
pub fn register(count: u32) -> bool {
    let Ok(count) = c_int::try_from(count) else {
        return false;
    };
    // SAFETY: plain core calls, valid during mod_init.
    unsafe {
        if sys::register_procs(count) < 0 {
            return false;
        }
        sys::cfg_register_child(count);
    }
    true
}

/// Which side of a fork this is.
pub enum Forked {
    Parent { pid: i32 },
    Child,
}

/// Forks one module process (call from `child_init(PROC_MAIN)` only). In the
/// child, the configuration framework is initialised before returning.
pub fn fork(kind: ProcessKind, description: &str) -> Result<Forked, String> {
    let (rank, make_sock) = match kind {
        ProcessKind::ScriptWorker => (sys::PROC_XWORKER, 1),
        ProcessKind::IoOnly => (sys::PROC_NOCHLDINIT, 0),
    };
    let desc = CString::new(description).map_err(|_| "description has a NUL byte")?;
    // SAFETY: called from child_init(PROC_MAIN) in the main process; the core copies the description.
    let pid = unsafe { sys::fork_process(rank, desc.as_ptr() as *mut _, make_sock) };
    match pid {
        p if p < 0 => Err(format!("cannot fork {description}")),
        0 => {
            // SAFETY: first call in the new child, as the core requires for processes counted by cfg_register_child.
            if unsafe { sys::cfg_child_init() } != 0 {
                return Err(format!("{description}: cfg_child_init failed"));
            }
            Ok(Forked::Child)
        }
        pid => Ok(Forked::Parent { pid }),
    }
}

/// Ends a module process that cannot go on (never returns into start-up
/// code). Kamailio's main process sees the exit and shuts the server down,
/// so callers use it only when the process's job is impossible.
pub fn exit(code: i32) -> ! {
    // SAFETY: `_exit` ends the process without running atexit handlers, as Kamailio's own children do.
    unsafe { libc_exit(code) }
}

extern "C" {
    #[link_name = "_exit"]
    fn libc_exit(code: c_int) -> !;
}
