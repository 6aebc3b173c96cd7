//! The tm module's suspend/continue API, for asynchronous script functions.
//!
//! tm exports its API as a struct of function pointers filled by `load_tm`
//! (reached with `find_export`, as tm's own `load_tm_api` inline does). The
//! offsets are those of the Kamailio series the module was built for
//! (`kamailio-sys`); `load_tm` writes the whole struct of its version, so it
//! gets a buffer larger than any. Each pointer read is then compared with
//! the function tm.so exports under that name, so a wrong offset table is
//! refused with a log line instead of calling the wrong function.
//!
//! A script function suspends the current transaction ([`suspend`]) and
//! returns [`Suspended`], which the export layer turns into 0 (the script
//! stops; tm keeps the transaction). Another process later resumes it
//! ([`resume`]) in an `onreply_route[...]` or `failure_route[...]` block, as
//! the C module does; tm runs it as a failure route, so it may reply. With a
//! KEMI engine (`cfgengine` other than native) the names are the script's
//! functions instead, which tm's `t_continue_cb` calls (also as a failure
//! route).
use std::ffi::{c_int, c_uint, c_void, CStr, CString};

use crate::error::{module_missing, transaction, Error};
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

/// The buffer `load_tm` fills: larger than `struct tm_binds` of any version.
const TM_BINDS_BUFFER: usize = 1024;
const _: () = assert!(sys::TM_BINDS_SIZE <= TM_BINDS_BUFFER);

/// Where `load_tm` takes a `struct tm_binds` member from.
#[derive(Clone, Copy)]
enum Source {
    /// The C function tm.so exports under this name.
    Symbol(&'static CStr),
    /// The script function of this name without parameters (`find_export`).
    ScriptFunction(&'static CStr),
}

/// The `struct tm_binds` members used and where `load_tm` takes them from.
const MEMBERS: [(usize, Source); 6] = [
    (sys::TM_T_GETT, Source::Symbol(c"get_t")),
    (sys::TM_T_NEWTRAN, Source::ScriptFunction(c"t_newtran")),
    (sys::TM_T_SUSPEND, Source::Symbol(c"t_suspend")),
    (sys::TM_T_CONTINUE, Source::Symbol(c"t_continue")),
    (sys::TM_T_CONTINUE_CB, Source::Symbol(c"t_continue_cb")),
    (
        sys::TM_T_CANCEL_SUSPEND,
        Source::Symbol(c"t_cancel_suspend"),
    ),
];

/// Checks that each member read at its offset is the function `load_tm`
/// stores there: the one tm.so exports under its name (tm.so is found from
/// the address of its `load_tm`), or the script function it looks up.
fn check_members(load_tm: *const c_void, at: impl Fn(usize) -> usize) -> Result<(), Error> {
    // SAFETY: `Dl_info` is plain pointers: all-zero is valid.
    let mut info: sys::Dl_info = unsafe { std::mem::zeroed() };
    // SAFETY: `dladdr` only reads the loader's tables and fills `info`.
    if unsafe { sys::dladdr(load_tm, &mut info) } == 0 || info.dli_fname.is_null() {
        return Err(module_missing("cannot find the file of tm's load_tm"));
    }
    // SAFETY: `dli_fname` is the loader's NUL-terminated path of a loaded object.
    let path = unsafe { CStr::from_ptr(info.dli_fname) };
    // SAFETY: RTLD_NOLOAD returns tm.so, already loaded, without loading anything.
    let handle = unsafe { sys::dlopen(path.as_ptr(), sys::RTLD_NOW | sys::RTLD_NOLOAD) };
    if handle.is_null() {
        return Err(module_missing(format!(
            "cannot open {}",
            path.to_string_lossy()
        )));
    }
    let result = MEMBERS.iter().try_for_each(|&(offset, source)| {
        let (exported, name) = match source {
            // SAFETY: a symbol lookup in the handle just opened.
            Source::Symbol(name) => (unsafe { sys::dlsym(handle, name.as_ptr()) } as usize, name),
            Source::ScriptFunction(name) => {
                // SAFETY: a plain lookup in the core's export tables with a static name.
                let found = unsafe { sys::find_export(name.as_ptr() as *mut _, 0, 0) };
                (found as usize, name)
            }
        };
        if exported != 0 && exported == at(offset) {
            Ok(())
        } else {
            Err(module_missing(format!(
                "tm's API does not match this build (struct tm_binds at offset {offset} is not \
                 {}): this module was built for {}",
                name.to_string_lossy(),
                sys::MODULE_VERSION.to_string_lossy()
            )))
        }
    });
    // SAFETY: balances the dlopen above; tm.so stays loaded by the core.
    unsafe { sys::dlclose(handle) };
    result
}

/// Binds tm's API (call in `mod_init`; tm must be loaded before this module).
pub fn bind() -> Result<(), Error> {
    // SAFETY: a plain lookup in the core's export tables with a static name.
    let load_ptr = unsafe { sys::find_export(c"load_tm".as_ptr() as *mut _, sys::NO_SCRIPT, 0) };
    if load_ptr.is_null() {
        return Err(module_missing(
            "the tm module is not loaded (load tm.so before this module)",
        ));
    }
    let load: sys::load_tm_f =
        // SAFETY: `load_tm` has this signature in every tm version.
        unsafe { std::mem::transmute::<*const c_void, sys::load_tm_f>(load_ptr) };
    let mut binds = vec![0usize; TM_BINDS_BUFFER / std::mem::size_of::<usize>()];
    // SAFETY: `binds` is writable, zeroed and large enough for the struct.
    if unsafe { load(binds.as_mut_ptr().cast()) } == -1 {
        return Err(module_missing("tm's load_tm failed"));
    }
    let at = |offset: usize| binds[offset / std::mem::size_of::<usize>()];
    check_members(load_ptr, at)?;
    // SAFETY: each offset holds the tm function of the named type (checked above against tm.so's exports by name).
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

fn tm() -> Result<&'static Tm, Error> {
    TM.get().ok_or_else(|| {
        module_missing("the tm API is not bound (is tm.so loaded before this module?)")
    })
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
pub fn suspend(msg: &mut SipMsg) -> Result<Suspended, Error> {
    let tm = tm()?;
    // SAFETY: tm's functions, called on the current message in a SIP worker.
    unsafe {
        let current = (tm.gett)();
        if (current.is_null() || current == sys::T_UNDEFINED) && (tm.newtran)(msg.as_ptr()) < 0 {
            return Err(transaction(
                "cannot create the transaction (t_newtran failed)",
            ));
        }
        let (mut hash, mut label): (c_uint, c_uint) = (0, 0);
        if (tm.suspend)(msg.as_ptr(), &mut hash, &mut label) < 0 {
            return Err(transaction(
                "cannot suspend the transaction (t_suspend failed)",
            ));
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
pub fn resume(id: TransactionId, kind: ResumeRoute, name: &str) -> Result<(), Error> {
    let tm = tm()?;
    let rc: c_int = if crate::route::kemi_engine_present() {
        let name =
            CString::new(name).map_err(|_| transaction("a function name with a NUL byte"))?;
        let mut cbname = sys::str_ {
            s: name.as_ptr() as *mut _,
            len: name.as_bytes().len() as c_int,
        };
        // SAFETY: tm's function with a transaction id from `suspend` and a NUL-terminated name that outlives the call (tm passes it to the engine, which reads it during the call only); no parameter (tm then passes its default).
        unsafe { (tm.continue_cb)(id.hash, id.label, &mut cbname, std::ptr::null_mut()) }
    } else {
        let actions = route_actions(kind, name)
            .ok_or_else(|| transaction(format!("{}[{name}] does not exist", kind.block())))?;
        // SAFETY: tm's function with a transaction id from `suspend` and a route body of the configuration.
        unsafe { (tm.continue_)(id.hash, id.label, actions) }
    };
    // SAFETY: plain core call after a route ran; the core's message environment is reset as after any route.
    unsafe { sys::ksr_msg_env_reset() };
    if rc < 0 {
        return Err(transaction(format!(
            "t_continue failed (rc {rc}): the transaction may be gone"
        )));
    }
    Ok(())
}
