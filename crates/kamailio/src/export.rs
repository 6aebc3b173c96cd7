//! The macros that emit a module's exported symbols and tables.
//!
//! A module crate writes its tables with these macros and no `unsafe` of its
//! own: each generated `extern "C"` entry point runs the module's plain-Rust
//! handler inside the panic guard and maps its `Result` to what the core
//! expects (script functions: the handler's code or -1; init hooks: 0 or -1).
//! The tables are immutable statics; the core never writes into them.
use std::ffi::c_int;

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

/// Emits the symbols the core looks up in a module (`module_version`,
/// `module_flags`, `module_interface_ver`, `exports`, `mod_register`) from
/// its tables, rows written inline (the terminating rows are added), and
/// its hooks. Everything but `name` is optional; what is given comes in
/// this order:
///
/// ```ignore
/// kamailio::module! {
///     name: c"example",
///     cmds: [cmd!("greet", spve_pv<2>(name; target) => greet)],
///     params: [param!("greeting", Str, set_greeting)],
///     pvs: [],
///     rpc: [],
///     transformations: [],
///     kemi: [],
///     init: init,
///     child_init: child_init,
///     destroy: destroy,
/// }
/// ```
///
/// A row may carry `#[cfg(...)]`. `mod_register` registers the
/// transformation classes and the KEMI functions; `init` and `child_init`
/// return `Result<(), impl Display>` (an error is logged and stops
/// Kamailio), `destroy` returns nothing.
#[macro_export]
macro_rules! module {
    (
        name: $name:expr
        $(, cmds: [$($cmd:expr),* $(,)?])?
        $(, params: [$($param:expr),* $(,)?])?
        $(, pvs: [$($pv:expr),* $(,)?])?
        $(, rpc: [$($rpc:expr),* $(,)?])?
        $(, transformations: [$($tr:expr),* $(,)?])?
        $(, kemi: [$($kemi:expr),* $(,)?])?
        $(, init: $init:path)?
        $(, child_init: $child_init:path)?
        $(, destroy: $destroy:path)?
        $(,)?
    ) => {
        static __KAMAILIO_CMDS: &[$crate::sys::cmd_export_t] = &[
            $($($cmd,)*)?
            $crate::sys::cmd_export_t::empty(),
        ];
        static __KAMAILIO_PARAMS: &[$crate::sys::param_export_t] = &[
            $($($param,)*)?
            $crate::sys::param_export_t::empty(),
        ];
        static __KAMAILIO_PVS: &[$crate::sys::pv_export_t] = &[
            $($($pv,)*)?
            $crate::sys::pv_export_t::empty(),
        ];
        static __KAMAILIO_RPC: &[$crate::sys::rpc_export_t] = &[
            $($($rpc,)*)?
            $crate::sys::rpc_export_t::empty(),
        ];
        static __KAMAILIO_TRANSFORMATIONS: &[$crate::sys::tr_export_t] = &[
            $($($tr,)*)?
            $crate::sys::tr_export_t::empty(),
        ];
        static __KAMAILIO_KEMI: &[$crate::sys::sr_kemi_t] = &[
            $($($kemi,)*)?
            $crate::sys::sr_kemi_t::empty(),
        ];

        #[allow(unsafe_code, non_upper_case_globals)]
        #[no_mangle]
        pub static module_version: $crate::__private::CStrPtr =
            $crate::__private::CStrPtr($crate::sys::MODULE_VERSION.as_ptr());

        #[allow(unsafe_code, non_upper_case_globals)]
        #[no_mangle]
        pub static module_flags: $crate::__private::CStrPtr =
            $crate::__private::CStrPtr($crate::sys::MODULE_FLAGS.as_ptr());

        #[allow(unsafe_code, non_upper_case_globals)]
        #[no_mangle]
        pub static module_interface_ver: ::std::ffi::c_uint = 4;

        #[allow(unsafe_code, non_upper_case_globals)]
        #[no_mangle]
        pub static exports: $crate::sys::module_exports = $crate::sys::module_exports {
            name: $name.as_ptr(),
            dlflags: 0,
            cmds: __KAMAILIO_CMDS.as_ptr(),
            params: __KAMAILIO_PARAMS.as_ptr(),
            rpc_methods: __KAMAILIO_RPC.as_ptr(),
            pv_items: __KAMAILIO_PVS.as_ptr(),
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
            $crate::__private::run_register(
                $name,
                path,
                __KAMAILIO_TRANSFORMATIONS,
                __KAMAILIO_KEMI,
            )
        }

        extern "C" fn __kamailio_mod_init() -> ::std::ffi::c_int {
            $crate::__private::run_hook("mod_init", $crate::__hook!(init $($init)?))
        }

        extern "C" fn __kamailio_child_init(rank: ::std::ffi::c_int) -> ::std::ffi::c_int {
            let hook = $crate::__hook!(child_init $($child_init)?);
            $crate::__private::run_hook("child_init", || hook(rank))
        }

        extern "C" fn __kamailio_destroy() {
            $crate::guard::guarded("mod_destroy", (), $crate::__hook!(destroy $($destroy)?))
        }
    };
}

/// A [`module!`] hook, or what stands for a missing one.
#[doc(hidden)]
#[macro_export]
macro_rules! __hook {
    (init) => {
        || ::core::result::Result::<(), ::core::convert::Infallible>::Ok(())
    };
    (child_init) => {
        |_rank: ::std::ffi::c_int| ::core::result::Result::<(), ::core::convert::Infallible>::Ok(())
    };
    (destroy) => {
        || ()
    };
    ($hook:ident $path:path) => {
        $path
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
                $crate::__private::script_result($name, $handler(&mut msg, &args))
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
                $crate::__private::script_result($name, $handler(&mut msg, &args, &dst))
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
                $crate::__private::script_result($name, $handler(&mut msg, arg))
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
                $crate::__private::param_result($name, $setter($name, value))
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
            name: $crate::sys::str_::from_static($crate::__private::cstr(concat!($name, "\0"))),
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
            tclass: $crate::sys::str_::from_static($crate::__private::cstr(concat!($class, "\0"))),
            tparse: Some($crate::trans::parse_entry::<$ty>),
        }
    };
}

/// One row of an RPC table: `$handler(&Rpc) -> Result<String, E>`; the text
/// is the reply, an error becomes fault 500.
#[macro_export]
macro_rules! rpc {
    ($name:literal, $doc:literal, $handler:path) => {{
        static DOC: $crate::__private::RpcDoc = $crate::__private::RpcDoc([
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
/// for native functions.
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
                        [$((*$arg).as_bytes()),+],
                    )
                };
                $crate::__private::script_result($name, $handler(&mut msg, args))
            })
        }
        $crate::sys::sr_kemi_t {
            mname: $crate::sys::str_::from_static($crate::__private::cstr(concat!($module, "\0"))),
            fname: $crate::sys::str_::from_static($crate::__private::cstr(concat!($name, "\0"))),
            rtype: $crate::sys::SR_KEMIP_INT,
            func: entry as *const ::std::ffi::c_void,
            ptypes: $crate::__private::kemi_str_params($crate::cmd!(@count $($arg),+)),
        }
    }};
}
