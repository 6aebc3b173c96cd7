//! Module processes: registering them in `mod_init`, forking them the
//! Kamailio way in `child_init(PROC_MAIN)`, and the duties every such process
//! has towards the core while it runs.
//!
//! `fork_process` gives the child a slot in the process table (so `kamcmd
//! core.ps` lists it) and, unless the rank is `PROC_NOCHLDINIT`, runs every
//! module's `child_init(rank)` in the child first, which is what lets a
//! process run script routes, `t_continue` or DB calls.
//!
//! What a forked module process owes the core, and where it is done here:
//! - it never returns into the main process's start-up code: [`fork`] runs
//!   the child's body, which never returns, and a child whose
//!   initialisation fails exits ([`exit`]), which makes Kamailio shut down
//!   as it does for its own children;
//! - it sees runtime configuration changes (`kamcmd cfg.set_now_*`,
//!   `cfg.seti`, `core.debug` through cfg): the child is set up for the cfg
//!   framework without per-child callbacks (`cfg_child_no_cb_init`, the main
//!   attendant's mode, so it is not counted in `cfg_register_child` and
//!   never holds back the core's list of pending callbacks), and calls
//!   [`refresh_config`] at the top of every iteration of its loop, as the
//!   core's timer processes call `cfg_update()` (a macro over inline code,
//!   not callable from Rust);
//! - it opens its own DB connections (`crate::db` checks the owner pid).
use std::ffi::{c_int, CString};

use crate::error::{process, registration, Error};
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

/// Reserves `count` process slots (call from `mod_init` only). They are not
/// registered with the cfg framework's per-child callbacks (see the module
/// comment).
pub fn register(count: u32) -> Result<(), Error> {
    let refused = || registration(format!("cannot register {count} processes"));
    let count = c_int::try_from(count).map_err(|_| refused())?;
    // SAFETY: plain core call, valid during mod_init.
    if unsafe { sys::register_procs(count) } < 0 {
        return Err(refused());
    }
    Ok(())
}

/// Forks one module process (call from `child_init(PROC_MAIN)` only) that
/// runs `body`, and returns the child's pid in the parent. The child never
/// comes back: it exits if `body` ever returns, and a child whose initialisation
/// (the modules' `child_init` for its rank) failed exits at once.
pub fn fork(kind: ProcessKind, description: &str, body: impl FnOnce()) -> Result<i32, Error> {
    let (rank, make_sock) = match kind {
        ProcessKind::ScriptWorker => (sys::PROC_XWORKER, 1),
        ProcessKind::IoOnly => (sys::PROC_NOCHLDINIT, 0),
    };
    let desc =
        CString::new(description).map_err(|_| process("a process description with a NUL byte"))?;
    let parent = std::process::id();
    // SAFETY: called from child_init(PROC_MAIN) in the main process; the core copies the description.
    let pid = unsafe { sys::fork_process(rank, desc.as_ptr() as *mut _, make_sock) };
    if pid < 0 && std::process::id() != parent {
        // fork_process returns -1 in the child when a module's child_init
        // failed there; returning would run the main process's start-up
        // code in this process.
        crate::crit!("{description}: a module's child_init failed in the new process; exiting");
        exit(1);
    }
    match pid {
        p if p < 0 => Err(process(format!("cannot fork {description}"))),
        0 => {
            // SAFETY: first call in the new child; the process is not counted in cfg_register_child (see `register`).
            unsafe { sys::cfg_child_no_cb_init() };
            refresh_config();
            body();
            crate::crit!("{description}: the process's loop ended; exiting");
            exit(1)
        }
        pid => Ok(pid),
    }
}

/// This process's index in Kamailio's process table (`process_no`): 0 in
/// the main process, unique among the running processes.
pub fn number() -> u32 {
    // SAFETY: `process_no` is set by the core before any module code runs in a process and not changed afterwards; read on the host thread.
    let number = unsafe { sys::process_no };
    number.max(0) as u32
}

/// Points this process's configuration handles at the current global
/// configuration, so that values changed at run time (`kamcmd cfg.*`) are
/// seen from here on. Call at the top of every iteration of a module
/// process's loop, on its main thread; cheap when nothing changed.
pub fn refresh_config() {
    // SAFETY: core call on the process's main thread, in a process set up with cfg_child_no_cb_init.
    unsafe { sys::cfg_main_set_local() };
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
