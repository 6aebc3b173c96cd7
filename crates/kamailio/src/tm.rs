//! The tm module's suspend/continue API, for asynchronous script functions.
//!
//! tm exports its API as a struct of function pointers filled by `load_tm`
//! (reached with `find_export`, as tm's own `load_tm_api` inline does). The
//! offsets are those of Kamailio 5.6 (`kamailio-sys`); `load_tm` writes the
//! whole struct of its version, so it gets a buffer larger than any.
//!
//! A script function suspends the current transaction ([`suspend`]) and
//! returns [`Suspended`], which the export layer turns into 0 (the script
//! stops; tm keeps the transaction). Another process later resumes it
//! ([`resume`]) in an `onreply_route[...]` or `failure_route[...]` block, as
//! the C module does; tm runs it as a failure route, so it may reply. With a
//! KEMI engine (`cfgengine` other than native) the names are the script's
//! functions instead, which tm's `t_continue_cb` calls (also as a failure
//! route).
use std::ffi::{c_int, c_uint, c_void, CString};
use std::sync::OnceLock;

use crate::msg::SipMsg;
use crate::sys;

/// tm's functions, resolved once in `mod_init`.
struct Tm {
    gett: sys::t_gett_f,
    newtran: sys::t_newtran_f,
    suspend: sys::t_suspend_f,
    continue_: sys::t_continue_f,
    continue_cb: sys::t_continue_cb_f,
    cancel_suspend: sys::t_cancel_suspend_f,
}

static TM: OnceLock<Tm> = OnceLock::new();

/// Binds tm's API (call in `mod_init`; tm must be loaded before this module).
pub fn bind() -> Result<(), String> {
    // SAFETY: a plain lookup in the core's export tables with a static name.
    let load = unsafe { sys::find_export(c"load_tm".as_ptr() as *mut _, sys::NO_SCRIPT, 0) };
    if load.is_null() {
        return Err("the tm module is not loaded (loadmodule \"tm.so\" before kazoo.so)".into());
    }
    let load: sys::load_tm_f =
        // SAFETY: `load_tm` has this signature in every tm version.
        unsafe { std::mem::transmute::<*const c_void, sys::load_tm_f>(load) };
    // Larger than `struct tm_binds` of any version: load_tm fills its own.
    let mut binds = vec![0usize; 1024 / std::mem::size_of::<usize>()];
    // SAFETY: `binds` is writable, zeroed and large enough for the struct.
    if unsafe { load(binds.as_mut_ptr().cast()) } == -1 {
        return Err("tm's load_tm failed".into());
    }
    let at = |offset: usize| binds[offset / std::mem::size_of::<usize>()];
    let pointers = [
        sys::TM_T_GETT,
        sys::TM_T_NEWTRAN,
        sys::TM_T_SUSPEND,
        sys::TM_T_CONTINUE,
        sys::TM_T_CONTINUE_CB,
        sys::TM_T_CANCEL_SUSPEND,
    ];
    if pointers.iter().any(|&o| at(o) == 0) {
        return Err("tm's API is incomplete (not Kamailio 5.6?)".into());
    }
    // SAFETY: each offset holds the function of the named type in 5.6's `struct tm_binds` (checked non-null above); the build refuses other Kamailio versions.
    let tm = unsafe {
        Tm {
            gett: std::mem::transmute::<usize, sys::t_gett_f>(at(sys::TM_T_GETT)),
            newtran: std::mem::transmute::<usize, sys::t_newtran_f>(at(sys::TM_T_NEWTRAN)),
            suspend: std::mem::transmute::<usize, sys::t_suspend_f>(at(sys::TM_T_SUSPEND)),
            continue_: std::mem::transmute::<usize, sys::t_continue_f>(at(sys::TM_T_CONTINUE)),
            continue_cb: std::mem::transmute::<usize, sys::t_continue_cb_f>(at(
                sys::TM_T_CONTINUE_CB,
            )),
            cancel_suspend: std::mem::transmute::<usize, sys::t_cancel_suspend_f>(at(
                sys::TM_T_CANCEL_SUSPEND,
            )),
        }
    };
    let _ = TM.set(tm);
    Ok(())
}

fn tm() -> Result<&'static Tm, String> {
    TM.get()
        .ok_or_else(|| "the tm API is not bound (is tm.so loaded before kazoo.so?)".into())
}

/// A suspended transaction, named as tm names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TransactionId {
    pub hash: u32,
    pub label: u32,
}

/// The return value of a script function that suspended its transaction:
/// the export layer turns it into 0, which ends the script (and only it
/// may).
#[derive(Debug)]
pub struct Suspended(TransactionId);

impl Suspended {
    pub fn id(&self) -> TransactionId {
        self.0
    }
}

/// Suspends the transaction of `msg` (creating it first if needed).
pub fn suspend(msg: &mut SipMsg) -> Result<Suspended, String> {
    let tm = tm()?;
    // SAFETY: tm's functions, called on the current message in a SIP worker.
    unsafe {
        let current = (tm.gett)();
        if (current.is_null() || current == sys::T_UNDEFINED) && (tm.newtran)(msg.as_ptr()) < 0 {
            return Err("cannot create the transaction (t_newtran failed)".into());
        }
        let (mut hash, mut label): (c_uint, c_uint) = (0, 0);
        if (tm.suspend)(msg.as_ptr(), &mut hash, &mut label) < 0 {
            return Err("cannot suspend the transaction (t_suspend failed)".into());
        }
        Ok(Suspended(TransactionId { hash, label }))
    }
}

/// Undoes [`suspend`] when what should resume the transaction could not be
/// set up (only in the process that suspended it).
pub fn cancel_suspend(suspended: Suspended) {
    if let Ok(tm) = tm() {
        let id = suspended.0;
        // SAFETY: tm's function, in the process that suspended `id`.
        unsafe { (tm.cancel_suspend)(id.hash, id.label) };
    }
}

/// Which block a suspended transaction resumes in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResumeRoute {
    /// `onreply_route[name]` (the C module's success callback).
    OnReply,
    /// `failure_route[name]` (the C module's error callback).
    Failure,
}

impl ResumeRoute {
    /// The configuration's name for this kind of block.
    pub fn block(self) -> &'static str {
        match self {
            ResumeRoute::OnReply => "onreply_route",
            ResumeRoute::Failure => "failure_route",
        }
    }
}

fn route_actions(kind: ResumeRoute, name: &str) -> Option<*mut sys::action> {
    let name = CString::new(name).ok()?;
    // SAFETY: the core's route tables; `route_lookup` only reads them.
    unsafe {
        let table = match kind {
            ResumeRoute::OnReply => std::ptr::addr_of_mut!(sys::onreply_rt),
            ResumeRoute::Failure => std::ptr::addr_of_mut!(sys::failure_rt),
        };
        let idx = sys::route_lookup(table, name.as_ptr() as *mut _);
        if idx < 0 || (*table).rlist.is_null() {
            return None;
        }
        let actions = *(*table).rlist.add(idx as usize);
        (!actions.is_null()).then_some(actions)
    }
}

/// Whether the block exists in the configuration.
pub fn route_exists(kind: ResumeRoute, name: &str) -> bool {
    route_actions(kind, name).is_some()
}

/// Resumes a suspended transaction in the named block (from a process
/// forked with `PROC_XWORKER`, as tm requires); with a KEMI engine, `name`
/// is the script function to call instead (a KEMI engine runs the script,
/// so the configuration's route blocks are not used).
pub fn resume(id: TransactionId, kind: ResumeRoute, name: &str) -> Result<(), String> {
    let tm = tm()?;
    let rc: c_int = if crate::route::kemi_engine_present() {
        let name = CString::new(name).map_err(|_| "a function name with a NUL byte".to_string())?;
        let mut cbname = sys::str_ {
            s: name.as_ptr() as *mut _,
            len: name.as_bytes().len() as c_int,
        };
        // SAFETY: tm's function with a transaction id from `suspend` and a NUL-terminated name that outlives the call (tm passes it to the engine, which reads it during the call only); no parameter (tm then passes its default).
        unsafe { (tm.continue_cb)(id.hash, id.label, &mut cbname, std::ptr::null_mut()) }
    } else {
        let actions = route_actions(kind, name)
            .ok_or_else(|| format!("{}[{name}] does not exist", kind.block()))?;
        // SAFETY: tm's function with a transaction id from `suspend` and a route body of the configuration.
        unsafe { (tm.continue_)(id.hash, id.label, actions) }
    };
    // SAFETY: plain core call after a route ran; the core's message environment is reset as after any route.
    unsafe { sys::ksr_msg_env_reset() };
    if rc < 0 {
        return Err(format!(
            "t_continue failed (rc {rc}): the transaction may be gone"
        ));
    }
    Ok(())
}
