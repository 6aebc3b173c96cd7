//! Logging through Kamailio's logger, honouring its levels and targets.
//!
//! `LM_ERR` and friends are C macros, so this re-does what they expand to:
//! skip when the level is off for the module (`get_debug_level`, which also
//! sees per-module levels and runtime `core.debug` changes) or when the logger
//! is re-entered (`dprint_crit`); then write to the structured logger, to
//! stderr (`log_stderror=yes`) or to syslog. The message is formatted in Rust
//! and always passed through a constant `%s` format, never as a format.
//! Only the host thread may log (see [`crate::thread`]).
use std::ffi::{c_char, c_int, CStr, CString};
use std::io::Write;
use std::sync::OnceLock;

use crate::sys;

static MODULE_NAME: OnceLock<&'static CStr> = OnceLock::new();

/// Log levels, as Kamailio numbers them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(i32)]
pub enum Level {
    Alert = sys::L_ALERT,
    Bug = sys::L_BUG,
    Crit = sys::L_CRIT,
    Err = sys::L_ERR,
    Warn = sys::L_WARN,
    Notice = sys::L_NOTICE,
    Info = sys::L_INFO,
    Dbg = sys::L_DBG,
}

/// Sets the module name used for per-module levels and in every line.
pub fn set_module_name(name: &'static CStr) {
    let _ = MODULE_NAME.set(name);
}

/// The module's name, as set by [`set_module_name`] (`rust` before).
pub fn module_name() -> &'static CStr {
    MODULE_NAME.get().copied().unwrap_or(c"rust")
}

/// Whether a message at `level` would be written now.
pub fn enabled(level: Level) -> bool {
    if !crate::thread::is_host_thread() {
        return false;
    }
    let name = module_name();
    // SAFETY: `dprint_crit` is a plain int of the core, read on the host thread.
    let reentered = unsafe { std::ptr::read_volatile(std::ptr::addr_of!(sys::dprint_crit)) } != 0;
    // SAFETY: the name is a valid NUL-terminated string and its length is given.
    let max = unsafe { sys::get_debug_level(name.as_ptr(), name.count_bytes() as c_int) };
    !reentered && max >= level as c_int
}

/// Writes one log line (callers check [`enabled`] first; the macros do).
/// `location` is the Rust source position, shown as `[file:line]` like the
/// C modules' lines; messages about a script function pass `None` because
/// they already name the function.
pub fn emit(level: Level, location: Option<(&str, u32)>, message: &str) {
    if !crate::thread::is_host_thread() {
        return;
    }
    let name = module_name();
    let idx = (level as i32 - sys::L_ALERT) as usize;
    // SAFETY: `log_level_info` has 9 entries, one per level L_ALERT..L_DBG, and `idx` is in 0..=8 because `Level` only holds those values.
    let info = unsafe { &*std::ptr::addr_of!(sys::log_level_info[idx]) };
    // SAFETY: entry names are NUL-terminated string constants of the core.
    let lname = unsafe { CStr::from_ptr(info.name) }.to_string_lossy();
    let location = match location {
        Some((file, line)) => format!(" [{}:{line}]", file.rsplit('/').next().unwrap_or(file)),
        None => String::new(),
    };
    let body = format!(
        "{}{location}: {}",
        name.to_string_lossy(),
        message.replace('\0', "\\0")
    );
    // SAFETY: plain ints of the core, updated on the host thread only; the increment marks the logger as busy exactly as the C macros do.
    unsafe { sys::dprint_crit += 1 };
    // SAFETY: reading function-pointer and int globals of the core.
    let (slog, to_stderr) = unsafe {
        (
            std::ptr::read_volatile(std::ptr::addr_of!(sys::_ksr_slog_func)),
            std::ptr::read_volatile(std::ptr::addr_of!(sys::log_stderr)) != 0,
        )
    };
    // SAFETY: the name is a valid NUL-terminated string and its length is given.
    let facility = unsafe { sys::get_debug_facility(name.as_ptr(), name.count_bytes() as c_int) };
    let text = CString::new(body.as_bytes()).unwrap_or_default();
    if let Some(slog) = slog {
        let mut data = sys::ksr_logdata_t {
            v_facility: info.syslog_level | facility,
            v_level: level as c_int,
            v_lname: info.name,
            v_fname: c"rust".as_ptr(),
            v_fline: 0,
            v_mname: name.as_ptr(),
            v_func: c"".as_ptr(),
            v_locinfo: c"".as_ptr(),
            v_pid: 0,
            v_pidx: 0,
        };
        // SAFETY: a valid logdata struct, a constant "%s\n" format and a NUL-terminated argument.
        unsafe { slog(&mut data, c"%s\n".as_ptr(), text.as_ptr()) };
    } else if to_stderr {
        // SAFETY: plain core getters/ints, read on the host thread.
        let (pno, pid) = unsafe { (sys::process_no, sys::my_pid()) };
        let line = format!("{pno:2}({pid}) {lname}: {body}\n");
        let _ = std::io::stderr().write_all(line.as_bytes());
    } else {
        // SAFETY: reading the core's syslog function pointer.
        let log_fn = unsafe { std::ptr::read_volatile(std::ptr::addr_of!(sys::_km_log_func)) };
        if let Some(log_fn) = log_fn {
            let lname = CString::new(lname.as_bytes()).unwrap_or_default();
            // SAFETY: constant format with two NUL-terminated string arguments.
            unsafe {
                log_fn(
                    info.syslog_level | facility,
                    c"%s: %s\n".as_ptr() as *const c_char,
                    lname.as_ptr(),
                    text.as_ptr(),
                )
            };
        }
    }
    // SAFETY: see the increment above.
    unsafe { sys::dprint_crit -= 1 };
}

/// Logs at an explicit level: `log!(Level::Info, "x = {}", x)`.
#[macro_export]
macro_rules! log {
    ($level:expr, $($arg:tt)+) => {{
        let level = $level;
        if $crate::log::enabled(level) {
            $crate::log::emit(level, Some((file!(), line!())), &format!($($arg)+));
        }
    }};
}

/// Logs at an explicit level without a source location (for messages that
/// name the script function they are about).
pub fn plain(level: Level, message: std::fmt::Arguments<'_>) {
    if enabled(level) {
        emit(level, None, &message.to_string());
    }
}

#[macro_export]
macro_rules! crit {
    ($($arg:tt)+) => { $crate::log!($crate::log::Level::Crit, $($arg)+) };
}

#[macro_export]
macro_rules! error {
    ($($arg:tt)+) => { $crate::log!($crate::log::Level::Err, $($arg)+) };
}

#[macro_export]
macro_rules! warn {
    ($($arg:tt)+) => { $crate::log!($crate::log::Level::Warn, $($arg)+) };
}

#[macro_export]
macro_rules! notice {
    ($($arg:tt)+) => { $crate::log!($crate::log::Level::Notice, $($arg)+) };
}

#[macro_export]
macro_rules! info {
    ($($arg:tt)+) => { $crate::log!($crate::log::Level::Info, $($arg)+) };
}

#[macro_export]
macro_rules! debug {
    ($($arg:tt)+) => { $crate::log!($crate::log::Level::Dbg, $($arg)+) };
}
