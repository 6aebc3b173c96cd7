//! The panic guard: no panic ever unwinds into Kamailio.
//!
//! Unwinding out of an `extern "C"` function aborts the process, and a dead
//! Kamailio child takes the whole server down. Every entry point the module
//! exports runs its body through [`guarded`], which turns a panic into a
//! critical log line and the entry point's failure value (-1 for script
//! functions, a failed start-up for init hooks).
use std::cell::RefCell;
use std::panic::{catch_unwind, AssertUnwindSafe};

thread_local! {
    /// The last panic's message and location, recorded by the hook so the
    /// guard can log it through Kamailio's logger.
    static LAST_PANIC: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Installs the panic hook (first thing in `mod_register`).
///
/// On the host thread the hook records the panic for the guard to log; on any
/// other thread, which must not call Kamailio's logger, it writes to stderr.
pub fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let text = info.to_string();
        if crate::thread::is_host_thread() {
            LAST_PANIC.with(|slot| *slot.borrow_mut() = Some(text));
        } else {
            let name = std::thread::current()
                .name()
                .unwrap_or("unnamed")
                .to_string();
            let module = crate::log::module_name().to_string_lossy();
            eprintln!("{module}: panic in thread {name}: {text}");
        }
    }));
}

/// Runs `body`; if it panics, logs the panic at L_CRIT naming `what` and
/// returns `on_panic`.
pub fn guarded<R>(what: &str, on_panic: R, body: impl FnOnce() -> R) -> R {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(value) => value,
        Err(payload) => {
            let detail = LAST_PANIC
                .with(|slot| slot.borrow_mut().take())
                .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".to_string());
            crate::crit!("internal error in {what} (caught, Kamailio keeps running): {detail}");
            on_panic
        }
    }
}
