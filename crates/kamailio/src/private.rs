//! What the macros of [`crate::export`] expand to and nothing else uses:
//! hidden from the documentation (`kamailio::__private`), not an API.
use std::ffi::{c_char, c_int, CStr};
use std::fmt::Display;

use crate::export::ScriptReturn;
use crate::sys;

/// A `char *` variable for the core to read (`module_version`, `module_flags`).
#[derive(Debug)]
#[repr(transparent)]
pub struct CStrPtr(pub *const c_char);

// SAFETY: points at an immutable static string.
unsafe impl Sync for CStrPtr {}

/// Maps a script handler's result to the function's return code; errors are
/// logged with the function's name and give -1.
pub fn script_result<R: ScriptReturn, E: Display>(function: &str, result: Result<R, E>) -> c_int {
    match result {
        Ok(value) => value.code(function),
        Err(err) => {
            crate::log::plain(crate::log::Level::Err, format_args!("{function}: {err}"));
            -1
        }
    }
}

/// Maps a parameter setter's result; errors name the parameter.
pub fn param_result<E: Display>(name: &str, result: Result<(), E>) -> c_int {
    match result {
        Ok(()) => 0,
        Err(err) => {
            crate::log::plain(
                crate::log::Level::Err,
                format_args!("modparam \"{name}\": {err}"),
            );
            -1
        }
    }
}

/// The module's path as the core passed it to `mod_register` (what
/// registering transformation classes needs).
#[derive(Debug)]
pub(crate) struct ModulePath(*mut c_char);

impl ModulePath {
    pub(crate) fn as_ptr(&self) -> *mut c_char {
        self.0
    }
}

/// A module's `mod_register`: claims the host thread, installs the panic
/// hook and names the logger before anything else, then registers the
/// module's transformation classes and KEMI functions (tables ending with
/// their empty row; just that row: none).
pub fn run_register(
    name: &'static CStr,
    path: *mut c_char,
    transformations: &'static [sys::tr_export_t],
    kemi: &'static [sys::sr_kemi_t],
) -> c_int {
    crate::thread::mark_host_thread();
    crate::guard::install_panic_hook();
    crate::log::set_module_name(name);
    let path = ModulePath(path);
    crate::guard::guarded("mod_register", -1, || {
        if transformations.len() > 1 && !crate::trans::register_class(&path, transformations) {
            crate::error!("module registration failed: cannot register the transformations");
            return -1;
        }
        if kemi.len() > 1 && !register_kemi(kemi) {
            crate::error!("module registration failed: cannot register the KEMI functions");
            return -1;
        }
        0
    })
}

/// Runs an init-type hook (`mod_init`, `child_init`).
pub fn run_hook<E: Display>(what: &str, hook: impl FnOnce() -> Result<(), E>) -> c_int {
    crate::guard::guarded(what, -1, || match hook() {
        Ok(()) => 0,
        Err(err) => {
            crate::log::plain(crate::log::Level::Err, format_args!("{what}: {err}"));
            -1
        }
    })
}

/// A NUL-terminated literal as a `CStr`, at compile time.
pub const fn cstr(text: &'static str) -> &'static CStr {
    match CStr::from_bytes_with_nul(text.as_bytes()) {
        Ok(s) => s,
        Err(_) => panic!("export names must not contain NUL"),
    }
}

/// `ptypes` of a KEMI function taking `n` strings.
pub const fn kemi_str_params(n: i32) -> [c_int; 6] {
    let mut ptypes = [sys::SR_KEMIP_NONE; 6];
    let mut i = 0;
    while i < n as usize && i < 6 {
        ptypes[i] = sys::SR_KEMIP_STR;
        i += 1;
    }
    ptypes
}

/// Registers a KEMI table (from `mod_register`); it must end with an empty
/// row.
fn register_kemi(table: &'static [sys::sr_kemi_t]) -> bool {
    if table.last().is_none_or(|last| !last.func.is_null()) {
        return false;
    }
    // SAFETY: the table is static and ends with an all-zero entry; the core keeps the pointer.
    unsafe { sys::sr_kemi_modules_add(table.as_ptr()) == 0 }
}

/// A `const char*` documentation array for an RPC command (text, then NULL).
#[derive(Debug)]
#[repr(transparent)]
pub struct RpcDoc(pub [*const std::ffi::c_char; 2]);

// SAFETY: immutable pointers to static strings.
unsafe impl Sync for RpcDoc {}
