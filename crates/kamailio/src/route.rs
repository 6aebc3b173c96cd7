//! Running `event_route[...]` blocks and KEMI event callbacks from module
//! code, on the faked SIP message the core keeps for that purpose.
use std::ffi::{c_int, CStr, CString};

use crate::error::{registration, Error};
use crate::sys;

/// What happened when an event route was asked to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RouteOutcome {
    /// No such route in the configuration.
    Missing,
    /// The route ran to its end (or `exit`/`return`).
    Ran,
    /// The route executed `drop`.
    Dropped,
}

/// Prepares the faked message of event routes (call once in `mod_init`).
pub fn init_faked_msg() -> Result<(), Error> {
    // SAFETY: plain core call, made on the host thread during start-up.
    if unsafe { sys::faked_msg_init() } != 0 {
        return Err(registration(
            "cannot initialise the faked message for event routes",
        ));
    }
    Ok(())
}

/// Whether `event_route[name]` exists in the configuration.
pub fn event_route_exists(name: &CStr) -> bool {
    lookup(name).is_some()
}

fn lookup(name: &CStr) -> Option<*mut sys::action> {
    // SAFETY: `event_rt` is the core's route table; `route_lookup` only reads it and never creates entries (unlike `route_get`).
    unsafe {
        let table = std::ptr::addr_of_mut!(sys::event_rt);
        let idx = sys::route_lookup(table, name.as_ptr() as *mut _);
        if idx < 0 || (*table).rlist.is_null() {
            return None;
        }
        let actions = *(*table).rlist.add(idx as usize);
        (!actions.is_null()).then_some(actions)
    }
}

/// Runs `event_route[name]` as a request route on a fresh faked message
/// (see [`on_faked_msg`]).
pub fn run_event_route(name: &CStr) -> RouteOutcome {
    let Some(actions) = lookup(name) else {
        return RouteOutcome::Missing;
    };
    let mut ctx = RunActCtx([0; sys::RUN_ACT_CTX_SIZE / 4]);
    let ctx_ptr = std::ptr::addr_of_mut!(ctx) as *mut sys::run_act_ctx;
    on_faked_msg(sys::REQUEST_ROUTE, |msg| {
        // SAFETY: `actions` is a route of the core's table, `msg` the faked message, and the context zeroed storage of the core's size (what `init_run_actions_ctx` does).
        unsafe { sys::run_top_route(actions, msg, ctx_ptr) };
    });
    if ctx.0[sys::RUN_ACT_CTX_RUN_FLAGS / 4] & sys::DROP_R_F != 0 {
        RouteOutcome::Dropped
    } else {
        RouteOutcome::Ran
    }
}

/// Runs `script` on a fresh faked message the way the core runs a request:
/// `route_type` set for the run and restored after, the pre-script
/// callbacks first (one of them may skip the run, returning `None`), the
/// post-script callbacks after, and the per-message state (AVPs, XAVPs)
/// reset at the end. Native event routes and KEMI event callbacks both go
/// through here, so modules that hook script execution (statistics, dialog,
/// debugger) see both alike.
fn on_faked_msg<R>(route_type: c_int, script: impl FnOnce(*mut sys::sip_msg) -> R) -> Option<R> {
    // SAFETY: the faked message was initialised in mod_init; route_type is a plain int of the core, saved and restored around the run, on the process's main thread.
    unsafe {
        let msg = sys::faked_msg_next();
        let saved = sys::route_type;
        sys::route_type = route_type;
        let result = if sys::exec_pre_script_cb(msg, sys::REQUEST_CB_TYPE) != 0 {
            let result = script(msg);
            sys::exec_post_script_cb(msg, sys::REQUEST_CB_TYPE);
            Some(result)
        } else {
            None
        };
        sys::ksr_msg_env_reset();
        sys::route_type = saved;
        result
    }
}

/// Storage for the core's `struct run_act_ctx` (its `jmp_buf` wants 8-byte
/// alignment).
#[repr(C, align(8))]
struct RunActCtx([c_int; sys::RUN_ACT_CTX_SIZE / 4]);

/// Whether a KEMI scripting engine (`cfgengine` other than native) runs.
pub fn kemi_engine_present() -> bool {
    // SAFETY: plain core getter.
    !unsafe { sys::sr_kemi_eng_get() }.is_null()
}

/// Why a KEMI event callback did not run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KemiError {
    /// No KEMI engine is configured (`cfgengine` is native).
    NoEngine,
    /// The engine refused or failed the call (its own log says why; engines
    /// initialise their interpreter per process after the fork, so a call
    /// from the main process before it fails).
    Failed(c_int),
}

/// Calls the KEMI function `callback` with `event` as its argument, on a
/// faked message, as an event route.
pub fn run_kemi_event(callback: &[u8], event: &[u8]) -> Result<(), KemiError> {
    // SAFETY: plain core getter.
    let engine = unsafe { sys::sr_kemi_eng_get() };
    if engine.is_null() {
        return Err(KemiError::NoEngine);
    }
    // Engines read these as C strings (e.g. app_jsdt pushes them with
    // `duk_push_string`), so they must be NUL-terminated as well as counted.
    let (Ok(callback), Ok(event)) = (CString::new(callback), CString::new(event)) else {
        return Err(KemiError::Failed(-1));
    };
    let mut name = sys::str_ {
        s: callback.as_ptr() as *mut _,
        len: callback.as_bytes().len() as c_int,
    };
    let mut data = sys::str_ {
        s: event.as_ptr() as *mut _,
        len: event.as_bytes().len() as c_int,
    };
    let rc = on_faked_msg(sys::EVENT_ROUTE, |msg| {
        // SAFETY: the engine is live and the strs view buffers that outlive the call.
        unsafe { sys::sr_kemi_route(engine, msg, sys::EVENT_ROUTE, &mut name, &mut data) }
    })
    // A pre-script callback that skips the run is not the callback failing.
    .unwrap_or(1);
    if rc < 0 {
        Err(KemiError::Failed(rc))
    } else {
        Ok(())
    }
}
