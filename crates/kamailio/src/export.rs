//! The macros that emit a module's exported symbols and tables.
//!
//! A module crate writes its tables with these macros and no `unsafe` of its
//! own: each generated `extern "C"` entry point runs the module's plain-Rust
//! handler inside the panic guard and maps its `Result` to what the core
//! expects (script functions: the handler's code or -1; init hooks: 0 or -1).
//! The tables are immutable statics; the core never writes into them.
use std::ffi::{c_char, c_int, CStr};
use std::fmt::Display;

use crate::sys;

/// A `char *` variable for the core to read (`module_version`, `module_flags`).
#[derive(Debug)]
#[repr(transparent)]
pub struct CStrPtr(pub *const c_char);

// SAFETY: points at an immutable static string.
unsafe impl Sync for CStrPtr {}

/// Terminator of a script-function table.
pub const CMD_END: sys::cmd_export_t = sys::cmd_export_t {
    name: std::ptr::null(),
    function: std::ptr::null(),
    param_no: 0,
    fixup: None,
    free_fixup: None,
    flags: 0,
};

/// Terminator of a parameter table.
pub const PARAM_END: sys::param_export_t = sys::param_export_t {
    name: std::ptr::null(),
    type_: 0,
    param_pointer: std::ptr::null_mut(),
};

/// Terminator of a pseudo-variable table.
pub const PV_END: sys::pv_export_t = sys::pv_export_t {
    name: sys::str_::NULL,
    type_: 0,
    getf: None,
    setf: None,
    parse_name: std::ptr::null(),
    parse_index: std::ptr::null(),
    init_param: std::ptr::null(),
    iparam: 0,
};

/// Terminator of a transformation-class table.
pub const TRANS_END: sys::tr_export_t = sys::tr_export_t {
    tclass: sys::str_::NULL,
    tparse: None,
};

/// Terminator of an RPC table.
pub const RPC_END: sys::rpc_export_t = sys::rpc_export_t {
    name: std::ptr::null(),
    function: None,
    doc_str: std::ptr::null(),
    flags: 0,
};

/// Terminator of a KEMI table.
pub const KEMI_END: sys::sr_kemi_t = sys::sr_kemi_t {
    mname: sys::str_::NULL,
    fname: sys::str_::NULL,
    rtype: 0,
    func: std::ptr::null(),
    ptypes: [0; 6],
};

/// What a script handler may return on success.
pub trait ScriptReturn {
    /// The function's return code.
    fn code(self, function: &str) -> c_int;
}

/// A plain return code. A handler never returns 0 by accident: 0 makes
/// Kamailio stop the script silently, so an `Ok(0)` is logged as a bug and
/// turned into -1.
impl ScriptReturn for i32 {
    fn code(self, function: &str) -> c_int {
        if self == 0 {
            crate::log::plain(
                crate::log::Level::Err,
                format_args!("{function}: internal error, return code 0 refused"),
            );
            return -1;
        }
        self
    }
}

/// The transaction was suspended: 0 ends the script, as asynchronous
/// functions must.
impl ScriptReturn for crate::tm::Suspended {
    fn code(self, _function: &str) -> c_int {
        0
    }
}

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
/// registration calls such as [`crate::trans::register_class`] need).
#[derive(Debug)]
pub struct ModulePath(*mut c_char);

impl ModulePath {
    pub(crate) fn as_ptr(&self) -> *mut c_char {
        self.0
    }
}

/// Runs a module's `mod_register` hook: claims the host thread, installs
/// the panic hook and names the logger before anything else.
pub fn run_register<E: Display>(
    name: &'static CStr,
    path: *mut c_char,
    hook: impl FnOnce(&ModulePath) -> Result<(), E>,
) -> c_int {
    crate::thread::mark_host_thread();
    crate::guard::install_panic_hook();
    crate::log::set_module_name(name);
    let path = ModulePath(path);
    crate::guard::guarded("mod_register", -1, || match hook(&path) {
        Ok(()) => 0,
        Err(err) => {
            crate::error!("module registration failed: {err}");
            -1
        }
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

/// Emits the symbols the core looks up in a module: `module_version`,
/// `module_flags`, `module_interface_ver`, `exports` and `mod_register`.
///
/// ```ignore
/// kamailio::module! {
///     name: c"example",
///     cmds: CMDS, params: PARAMS, pvs: PVS,
///     register: register, init: init, child_init: child_init, destroy: destroy,
/// }
/// ```
/// `register` takes the module path ([`ModulePath`], for registering
/// transformations) and the hooks return `Result<(), impl Display>`.
#[macro_export]
macro_rules! module {
    (
        name: $name:expr,
        cmds: $cmds:path,
        params: $params:path,
        pvs: $pvs:path,
        rpc: $rpc:path,
        register: $register:path,
        init: $init:path,
        child_init: $child_init:path,
        destroy: $destroy:path $(,)?
    ) => {
        #[allow(unsafe_code, non_upper_case_globals)]
        #[no_mangle]
        pub static module_version: $crate::export::CStrPtr =
            $crate::export::CStrPtr($crate::sys::MODULE_VERSION.as_ptr());

        #[allow(unsafe_code, non_upper_case_globals)]
        #[no_mangle]
        pub static module_flags: $crate::export::CStrPtr =
            $crate::export::CStrPtr($crate::sys::MODULE_FLAGS.as_ptr());

        #[allow(unsafe_code, non_upper_case_globals)]
        #[no_mangle]
        pub static module_interface_ver: ::std::ffi::c_uint = 4;

        #[allow(unsafe_code, non_upper_case_globals)]
        #[no_mangle]
        pub static exports: $crate::sys::module_exports = $crate::sys::module_exports {
            name: $name.as_ptr(),
            dlflags: 0,
            cmds: $cmds.as_ptr(),
            params: $params.as_ptr(),
            rpc_methods: $rpc.as_ptr(),
            pv_items: $pvs.as_ptr(),
            response_f: None,
            init_mod_f: Some(__kamailio_mod_init),
            init_child_f: Some(__kamailio_child_init),
            destroy_mod_f: Some(__kamailio_destroy),
        };

        #[allow(unsafe_code)]
        #[no_mangle]
        pub extern "C" fn mod_register(
            path: *mut ::std::ffi::c_char,
            _dlflags: *mut ::std::ffi::c_int,
            _reserved1: *mut ::std::ffi::c_void,
            _reserved2: *mut ::std::ffi::c_void,
        ) -> ::std::ffi::c_int {
            $crate::export::run_register($name, path, $register)
        }

        extern "C" fn __kamailio_mod_init() -> ::std::ffi::c_int {
            $crate::export::run_hook("mod_init", $init)
        }

        extern "C" fn __kamailio_child_init(rank: ::std::ffi::c_int) -> ::std::ffi::c_int {
            $crate::export::run_hook("child_init", || $child_init(rank))
        }

        extern "C" fn __kamailio_destroy() {
            $crate::guard::guarded("mod_destroy", (), $destroy)
        }
    };
}

/// One row of a script-function table, with its generated entry point.
///
/// Argument kinds:
/// - `spve(a, b, ...)`: strings with variables; the handler is
///   `fn(&mut SipMsg, &[SpveArg; N]) -> Result<i32, E>`;
/// - `spve_pv<P>(a, ...; dst)`: strings plus a writable variable at 1-based
///   position `P` (the last); the handler is
///   `fn(&mut SipMsg, &[SpveArg; N], &PvDest) -> Result<i32, E>`;
/// - `raw(a)`: one literal argument without fixup; the handler is
///   `fn(&mut SipMsg, Vec<u8>) -> Result<i32, E>`.
#[macro_export]
macro_rules! cmd {
    ($name:literal, spve($($arg:ident),+) => $handler:path) => {{
        #[allow(unsafe_code)]
        unsafe extern "C" fn entry(
            msg: *mut $crate::sys::sip_msg,
            $($arg: *mut ::std::ffi::c_char),+
        ) -> ::std::ffi::c_int {
            $crate::guard::guarded($name, -1, || {
                // SAFETY: the core passes the current message and the slots our `fixup_spve` prepared for every position.
                let (mut msg, args) = unsafe {
                    (
                        $crate::SipMsg::from_raw(msg),
                        [$($crate::script::SpveArg::from_raw($arg)),+],
                    )
                };
                $crate::export::script_result($name, $handler(&mut msg, &args))
            })
        }
        $crate::sys::cmd_export_t {
            name: concat!($name, "\0").as_ptr() as *const ::std::ffi::c_char,
            function: entry as *const ::std::ffi::c_void,
            param_no: $crate::cmd!(@count $($arg),+),
            fixup: Some($crate::script::fixup_spve),
            free_fixup: Some($crate::script::free_fixup_spve),
            flags: $crate::sys::ANY_ROUTE,
        }
    }};
    ($name:literal, spve_pv<$pos:literal>($($arg:ident),+ ; $dst:ident) => $handler:path) => {{
        #[allow(unsafe_code)]
        unsafe extern "C" fn entry(
            msg: *mut $crate::sys::sip_msg,
            $($arg: *mut ::std::ffi::c_char,)+
            $dst: *mut ::std::ffi::c_char,
        ) -> ::std::ffi::c_int {
            $crate::guard::guarded($name, -1, || {
                // SAFETY: the core passes the current message and the slots our `fixup_spve_pv_at` prepared (strings, then the variable).
                let (mut msg, args, dst) = unsafe {
                    (
                        $crate::SipMsg::from_raw(msg),
                        [$($crate::script::SpveArg::from_raw($arg)),+],
                        $crate::script::PvDest::from_raw($dst),
                    )
                };
                $crate::export::script_result($name, $handler(&mut msg, &args, &dst))
            })
        }
        $crate::sys::cmd_export_t {
            name: concat!($name, "\0").as_ptr() as *const ::std::ffi::c_char,
            function: entry as *const ::std::ffi::c_void,
            param_no: $pos,
            fixup: Some($crate::script::fixup_spve_pv_at::<$pos>),
            free_fixup: Some($crate::script::free_fixup_spve_pv_at::<$pos>),
            flags: $crate::sys::ANY_ROUTE,
        }
    }};
    ($name:literal, raw($arg:ident) => $handler:path) => {{
        #[allow(unsafe_code)]
        unsafe extern "C" fn entry(
            msg: *mut $crate::sys::sip_msg,
            $arg: *mut ::std::ffi::c_char,
        ) -> ::std::ffi::c_int {
            $crate::guard::guarded($name, -1, || {
                let (mut msg, arg) =
                    // SAFETY: the core passes the current message and the argument's NUL-terminated text (no fixup).
                    unsafe { ($crate::SipMsg::from_raw(msg), $crate::script::raw_arg($arg)) };
                $crate::export::script_result($name, $handler(&mut msg, arg))
            })
        }
        $crate::sys::cmd_export_t {
            name: concat!($name, "\0").as_ptr() as *const ::std::ffi::c_char,
            function: entry as *const ::std::ffi::c_void,
            param_no: 1,
            fixup: None,
            free_fixup: None,
            flags: $crate::sys::ANY_ROUTE,
        }
    }};
    (@count $head:ident $(, $tail:ident)*) => { 1 $(+ $crate::cmd!(@one $tail))* };
    (@one $x:ident) => { 1 };
}

/// One row of a parameter table: the parameter's setter calls
/// `$setter(name, value) -> Result<(), E>`.
#[macro_export]
macro_rules! param {
    ($name:literal, $kind:ident, $setter:path) => {{
        #[allow(unsafe_code)]
        unsafe extern "C" fn set(
            ty: $crate::sys::modparam_t,
            val: *mut ::std::ffi::c_void,
        ) -> ::std::ffi::c_int {
            $crate::guard::guarded("modparam", -1, || {
                // SAFETY: the core calls the setter with the declared type and a value valid for this call.
                let value = unsafe { $crate::params::decode(ty, val) };
                $crate::export::param_result($name, $setter($name, value))
            })
        }
        $crate::sys::param_export_t {
            name: concat!($name, "\0").as_ptr() as *const ::std::ffi::c_char,
            type_: $crate::params::ParamKind::$kind.type_bits(),
            param_pointer: set as *mut ::std::ffi::c_void,
        }
    }};
}

/// One row of a pseudo-variable table: a read-only class whose value is a
/// [`crate::pv::ByteSlot`].
#[macro_export]
macro_rules! pv {
    ($name:literal, $slot:path) => {{
        #[allow(unsafe_code)]
        unsafe extern "C" fn get(
            msg: *mut $crate::sys::sip_msg,
            param: *mut $crate::sys::pv_param_t,
            res: *mut $crate::sys::pv_value_t,
        ) -> ::std::ffi::c_int {
            $crate::guard::guarded($name, -1, || {
                // SAFETY: the arguments the core passed to this getter.
                unsafe { $slot.fill(msg, param, res) }
            })
        }
        $crate::sys::pv_export_t {
            name: $crate::sys::str_::from_static($crate::export::cstr(concat!($name, "\0"))),
            type_: $crate::sys::PVT_OTHER,
            getf: Some(get),
            setf: None,
            parse_name: ::std::ptr::null(),
            parse_index: ::std::ptr::null(),
            init_param: ::std::ptr::null(),
            iparam: 0,
        }
    }};
}

/// One row of a transformation-class table for a [`crate::trans::TransClass`].
#[macro_export]
macro_rules! trans_class {
    ($class:literal, $ty:ty) => {
        $crate::sys::tr_export_t {
            tclass: $crate::sys::str_::from_static($crate::export::cstr(concat!($class, "\0"))),
            tparse: Some($crate::trans::parse_entry::<$ty>),
        }
    };
}

/// One row of an RPC table: `$handler(&Rpc) -> Result<String, E>`; the text
/// is the reply, an error becomes fault 500.
#[macro_export]
macro_rules! rpc {
    ($name:literal, $doc:literal, $handler:path) => {{
        static DOC: $crate::rpc::RpcDoc = $crate::rpc::RpcDoc([
            concat!($doc, "\0").as_ptr() as *const ::std::ffi::c_char,
            ::std::ptr::null(),
        ]);
        #[allow(unsafe_code)]
        unsafe extern "C" fn entry(api: *mut $crate::sys::rpc_t, ctx: *mut ::std::ffi::c_void) {
            $crate::guard::guarded($name, (), || {
                // SAFETY: the arguments the core passed to this RPC function.
                let rpc = unsafe { $crate::rpc::Rpc::from_raw(api, ctx) };
                match $handler(&rpc) {
                    Ok(text) => rpc.add_str(&text),
                    Err(err) => rpc.fault(500, &err.to_string()),
                }
            })
        }
        $crate::sys::rpc_export_t {
            name: concat!($name, "\0").as_ptr() as *const ::std::ffi::c_char,
            function: Some(entry),
            doc_str: DOC.0.as_ptr(),
            flags: 0,
        }
    }};
}

/// One row of a KEMI table: `KSR.<module>.<name>(str, ...)` returning int;
/// the handler is `fn(&mut SipMsg, [&[u8]; N]) -> Result<R, E>` with `R` a
/// [`ScriptReturn`] (a code, or [`crate::tm::Suspended`] for 0), mapped as
/// for native functions ([`script_result`]).
#[macro_export]
macro_rules! kemi {
    ($module:literal, $name:literal, str($($arg:ident),+) => $handler:path) => {{
        #[allow(unsafe_code)]
        unsafe extern "C" fn entry(
            msg: *mut $crate::sys::sip_msg,
            $($arg: *mut $crate::sys::str_),+
        ) -> ::std::ffi::c_int {
            $crate::guard::guarded($name, -1, || {
                // SAFETY: the KEMI engine passes the current message and valid `str` arguments for the duration of the call.
                let (mut msg, args) = unsafe {
                    (
                        $crate::SipMsg::from_raw(msg),
                        [$($crate::script::str_bytes(&*$arg)),+],
                    )
                };
                $crate::export::script_result($name, $handler(&mut msg, args))
            })
        }
        $crate::sys::sr_kemi_t {
            mname: $crate::sys::str_::from_static($crate::export::cstr(concat!($module, "\0"))),
            fname: $crate::sys::str_::from_static($crate::export::cstr(concat!($name, "\0"))),
            rtype: $crate::sys::SR_KEMIP_INT,
            func: entry as *const ::std::ffi::c_void,
            ptypes: $crate::export::kemi_str_params($crate::cmd!(@count $($arg),+)),
        }
    }};
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

/// Registers a KEMI table (call from `mod_register`); it must end with
/// [`KEMI_END`].
pub fn register_kemi(table: &'static [sys::sr_kemi_t]) -> bool {
    if table.last().is_none_or(|last| !last.func.is_null()) {
        return false;
    }
    // SAFETY: the table is static and ends with an all-zero entry; the core keeps the pointer.
    unsafe { sys::sr_kemi_modules_add(table.as_ptr()) == 0 }
}
