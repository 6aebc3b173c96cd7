//! Safe host API over the Kamailio core for Rust modules.
//!
//! This is the only layer (with `kamailio-sys` below it) that contains
//! `unsafe`; everything above it is plain Rust. Layout:
//! - [`guard`]: the panic guard every entry point runs in, and the panic hook.
//! - [`log`]: logging through Kamailio's own logger (`error!`, `info!`, ...).
//! - [`thread`]: which thread is the process's host thread.
//! - [`msg`]: the SIP message handle passed to script functions.
//! - [`params`]: module parameters (`modparam`) delivered to setters.
//! - [`script`]: script-function arguments (fixups, strings, destination PVs).
//! - [`pv`]: pseudo-variable values exported by the module.
//! - [`trans`]: transformation classes (`{class.name,param}`).
//! - [`route`]: running `event_route[...]` blocks and KEMI event callbacks.
//! - [`rpc`]: RPC commands.
//! - [`tm`]: suspending and resuming transactions (asynchronous functions).
//! - [`db`]: the generic DB API (presentity writes).
//! - [`mem`]: the few places where Kamailio's pkg allocator must be used.
//! - [`process`]: registering and forking module processes, and their duties.
//! - [`stats`]: statistics (Kamailio's counters).
//! - [`export`]: the macros that emit a module's exported symbols and tables
//!   (what they expand to is in the hidden `__private` module).

#[doc(hidden)]
#[path = "private.rs"]
pub mod __private;
pub mod db;
pub mod error;
pub mod export;
pub mod guard;
pub mod log;
pub mod mem;
pub mod msg;
pub mod params;
pub mod process;
pub mod pv;
pub mod route;
pub mod rpc;
pub mod script;
pub mod stats;
pub mod thread;
pub mod tm;
pub mod trans;

pub use kamailio_sys as sys;
pub use msg::SipMsg;

/// Release of the running Kamailio core, e.g. `5.6.3` (the C module's
/// `App-Version`).
pub fn core_release() -> String {
    // SAFETY: `ver_version` is a NUL-terminated string constant of the core, alive for the whole process.
    let version = unsafe { std::ffi::CStr::from_ptr(std::ptr::addr_of!(sys::ver_version).cast()) };
    version.to_string_lossy().into_owned()
}
