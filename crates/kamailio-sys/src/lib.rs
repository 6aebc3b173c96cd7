//! Raw FFI for the Kamailio 5.6, 5.7, 5.8 and 6.0 cores, written by hand:
//! `#[repr(C)]` layouts, the core's exported functions and data, and the
//! version strings of the Kamailio this crate was built against. No logic
//! lives here.
//!
//! Every layout was measured for x86_64 Kamailio 5.6.3 … 6.0.7 (a C probe
//! over each release's core headers) and is pinned by the `const` size/offset
//! assertions at the end of the file. Across those releases only two things
//! the module uses change, both at 5.7: `pv_value_t.ri` widens from `int` to
//! `long` ([`pv_int_t`]) and `struct tm_binds` gains two members before
//! `t_suspend` (the `TM_T_*` offsets). The build script sets the
//! `kamailio_5_7` cfg for 5.7 and later; crates above this one see only
//! version-neutral names. Types that Rust code only passes back to the core
//! (`sip_msg`, `fparam_t`, `action`, ...) are opaque.
#![allow(non_camel_case_types)]

use std::ffi::{c_char, c_int, c_long, c_uint, c_ushort, c_void, CStr};

/// `SER_FULL_VERSION` of the target Kamailio, e.g. `kamailio 5.6.3 (x86_64/linux)`.
pub const MODULE_VERSION: &CStr =
    match CStr::from_bytes_with_nul(concat!(env!("KAMAILIO_MODULE_VERSION"), "\0").as_bytes()) {
        Ok(s) => s,
        Err(_) => panic!("KAMAILIO_MODULE_VERSION contains a NUL byte"),
    };

/// `SER_COMPILE_FLAGS` of the target Kamailio (the `flags:` line of `kamailio -v`).
pub const MODULE_FLAGS: &CStr =
    match CStr::from_bytes_with_nul(concat!(env!("KAMAILIO_MODULE_FLAGS"), "\0").as_bytes()) {
        Ok(s) => s,
        Err(_) => panic!("KAMAILIO_MODULE_FLAGS contains a NUL byte"),
    };

/// Kamailio's `str`: a pointer and a length, not NUL-terminated in general.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct str_ {
    pub s: *mut c_char,
    pub len: c_int,
}

impl str_ {
    pub const NULL: str_ = str_ {
        s: std::ptr::null_mut(),
        len: 0,
    };

    /// A `str` over a static NUL-terminated string, the terminator not
    /// counted. Export tables need the terminator: parts of the core print
    /// these names with `%s`.
    pub const fn from_static(text: &'static CStr) -> str_ {
        str_ {
            s: text.as_ptr() as *mut c_char,
            len: text.count_bytes() as c_int,
        }
    }

    /// A `str` over `bytes` (not NUL-terminated), for the core to read
    /// while `bytes` lives; `None` when longer than a C `int` can say.
    pub fn from_bytes(bytes: &[u8]) -> Option<str_> {
        Some(str_ {
            s: bytes.as_ptr() as *mut c_char,
            len: c_int::try_from(bytes.len()).ok()?,
        })
    }

    /// The bytes it points at (none for a null or empty `str`).
    ///
    /// # Safety
    /// A non-null `s` must point at `len` readable bytes that stay valid and
    /// unchanged for `'a`.
    pub unsafe fn as_bytes<'a>(&self) -> &'a [u8] {
        if self.s.is_null() || self.len <= 0 {
            &[]
        } else {
            // SAFETY: guaranteed by the caller.
            unsafe { std::slice::from_raw_parts(self.s as *const u8, self.len as usize) }
        }
    }
}

/// Opaque `struct sip_msg`.
#[repr(C)]
#[derive(Debug)]
pub struct sip_msg {
    _private: [u8; 0],
}

/// Opaque `struct action` (a compiled route body).
#[repr(C)]
#[derive(Debug)]
pub struct action {
    _private: [u8; 0],
}

/// `fparam_t` (the result of the core's fixups, 56 bytes): only `orig`, the
/// parameter's text as written in the configuration, is read.
#[repr(C)]
#[derive(Debug)]
pub struct fparam_t {
    pub orig: *mut c_char,
    _rest: [u8; 48],
}

/// Opaque `pv_elem_t` (a parsed format string).
#[repr(C)]
#[derive(Debug)]
pub struct pv_elem_t {
    _private: [u8; 0],
}

/// Opaque `struct run_act_ctx`; allocate [`RUN_ACT_CTX_SIZE`] zeroed bytes.
#[repr(C)]
#[derive(Debug)]
pub struct run_act_ctx {
    _private: [u8; 0],
}

/// Size of `struct run_act_ctx` (3 ints + padding + glibc `jmp_buf`).
pub const RUN_ACT_CTX_SIZE: usize = 216;
/// Offset of `run_flags` in `struct run_act_ctx`.
pub const RUN_ACT_CTX_RUN_FLAGS: usize = 4;
/// `run_flags` bit set by `drop`.
pub const DROP_R_F: c_int = 8;

pub type cmd_function = unsafe extern "C" fn(*mut sip_msg, *mut c_char, *mut c_char) -> c_int;
pub type fixup_function = unsafe extern "C" fn(*mut *mut c_void, c_int) -> c_int;
pub type free_fixup_function = fixup_function;
pub type init_function = unsafe extern "C" fn() -> c_int;
pub type child_init_function = unsafe extern "C" fn(c_int) -> c_int;
pub type destroy_function = unsafe extern "C" fn();
pub type response_function = unsafe extern "C" fn(*mut sip_msg) -> c_int;
pub type param_func_t = unsafe extern "C" fn(modparam_t, *mut c_void) -> c_int;
pub type modparam_t = c_uint;

/// One script function (`cmd_export_t`, 48 bytes).
///
/// `function` is typed for two parameters, as in the C header; the core casts
/// it to the arity given by `param_no`, so functions of other arities are
/// stored here through a pointer cast.
#[repr(C)]
#[derive(Debug)]
pub struct cmd_export_t {
    pub name: *const c_char,
    pub function: *const c_void,
    pub param_no: c_int,
    pub fixup: Option<fixup_function>,
    pub free_fixup: Option<free_fixup_function>,
    pub flags: c_uint,
}

// SAFETY: export tables are immutable statics; the core only reads them.
unsafe impl Sync for cmd_export_t {}

impl cmd_export_t {
    /// The row that ends a table.
    pub const fn empty() -> cmd_export_t {
        cmd_export_t {
            name: std::ptr::null(),
            function: std::ptr::null(),
            param_no: 0,
            fixup: None,
            free_fixup: None,
            flags: 0,
        }
    }
}

/// One module parameter (`param_export_t`, 24 bytes).
#[repr(C)]
#[derive(Debug)]
pub struct param_export_t {
    pub name: *const c_char,
    pub type_: modparam_t,
    pub param_pointer: *mut c_void,
}

// SAFETY: export tables are immutable statics; the core only reads them.
unsafe impl Sync for param_export_t {}

impl param_export_t {
    /// The row that ends a table.
    pub const fn empty() -> param_export_t {
        param_export_t {
            name: std::ptr::null(),
            type_: 0,
            param_pointer: std::ptr::null_mut(),
        }
    }
}

pub const PARAM_STRING: modparam_t = 1;
pub const PARAM_INT: modparam_t = 2;
pub const PARAM_STR: modparam_t = 4;
pub const PARAM_USE_FUNC: modparam_t = 0x8000_0000;

/// Route masks for `cmd_export_t.flags`.
pub const REQUEST_ROUTE: c_int = 1;
pub const EVENT_ROUTE: c_int = 1 | 512;
/// `exec_pre_script_cb` / `exec_post_script_cb` type of request callbacks.
pub const REQUEST_CB_TYPE: c_int = 1;
pub const ANY_ROUTE: c_uint = 0xFFFF_FFFF;

/// Process ranks passed to `child_init` and `fork_process`.
pub const PROC_MAIN: c_int = 0;
pub const PROC_INIT: c_int = -127;
pub const PROC_NOCHLDINIT: c_int = -128;
pub const PROC_XWORKER: c_int = 127;

/// The integer of `pv_value_t`: `int` up to 5.6, `long` from 5.7.
#[cfg(not(kamailio_5_7))]
pub type pv_int_t = c_int;
/// The integer of `pv_value_t`: `int` up to 5.6, `long` from 5.7.
#[cfg(kamailio_5_7)]
pub type pv_int_t = std::ffi::c_long;

/// An `i32` as the integer of `pv_value_t` (lossless in every series).
pub const fn pv_int_from_i32(n: i32) -> pv_int_t {
    n as pv_int_t
}

/// The integer of `pv_value_t` as an `i64` (lossless in every series).
#[cfg(not(kamailio_5_7))]
pub const fn pv_int_to_i64(n: pv_int_t) -> i64 {
    n as i64
}
/// The integer of `pv_value_t` as an `i64` (lossless in every series).
#[cfg(kamailio_5_7)]
pub const fn pv_int_to_i64(n: pv_int_t) -> i64 {
    n
}

/// `pv_value_t` (24 bytes in 5.6; 32 from 5.7, where `ri` is a `long`).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct pv_value_t {
    pub rs: str_,
    pub ri: pv_int_t,
    pub flags: c_int,
}

impl pv_value_t {
    /// A value for the core to fill (`pv_get_spec_value`).
    pub const fn empty() -> pv_value_t {
        pv_value_t {
            rs: str_::NULL,
            ri: 0,
            flags: 0,
        }
    }

    /// `$null`.
    pub const fn null() -> pv_value_t {
        pv_value_t {
            flags: PV_VAL_NULL,
            ..pv_value_t::empty()
        }
    }

    /// A string value over `rs`.
    pub const fn string(rs: str_) -> pv_value_t {
        pv_value_t {
            rs,
            ri: 0,
            flags: PV_VAL_STR,
        }
    }
}

pub const PV_VAL_NONE: c_int = 0;
pub const PV_VAL_NULL: c_int = 1;
pub const PV_VAL_EMPTY: c_int = 2;
pub const PV_VAL_STR: c_int = 4;
pub const PV_VAL_INT: c_int = 8;
pub const PV_TYPE_INT: c_int = 16;
pub const PV_VAL_PKG: c_int = 32;
pub const PV_VAL_SHM: c_int = 64;

/// Assignment operator for `pv_set_spec_value` (`EQ_T`).
pub const EQ_T: c_int = 254;

/// `pv_type_t` values the module needs.
pub const PVT_AVP: c_int = 4;
pub const PVT_OTHER: c_int = 22;

/// Opaque `pv_param_t` (56 bytes).
#[repr(C)]
#[derive(Debug)]
pub struct pv_param_t {
    _private: [u8; 0],
}

pub type pv_getf_t = unsafe extern "C" fn(*mut sip_msg, *mut pv_param_t, *mut pv_value_t) -> c_int;
pub type pv_setf_t =
    unsafe extern "C" fn(*mut sip_msg, *mut pv_param_t, c_int, *mut pv_value_t) -> c_int;

/// `pv_spec_t` (88 bytes): only the head is named; `pvp` and `trans` are opaque.
#[repr(C)]
#[derive(Debug)]
pub struct pv_spec_t {
    pub type_: c_int,
    pub getf: Option<pv_getf_t>,
    pub setf: Option<pv_setf_t>,
    pub pvp: [u8; 56],
    pub trans: *mut c_void,
}

/// One pseudo-variable class (`pv_export_t`, 72 bytes).
#[repr(C)]
#[derive(Debug)]
pub struct pv_export_t {
    pub name: str_,
    pub type_: c_int,
    pub getf: Option<pv_getf_t>,
    pub setf: Option<pv_setf_t>,
    pub parse_name: *const c_void,
    pub parse_index: *const c_void,
    pub init_param: *const c_void,
    pub iparam: c_int,
}

// SAFETY: export tables are immutable statics; the core copies the entries.
unsafe impl Sync for pv_export_t {}

impl pv_export_t {
    /// The row that ends a table.
    pub const fn empty() -> pv_export_t {
        pv_export_t {
            name: str_::NULL,
            type_: 0,
            getf: None,
            setf: None,
            parse_name: std::ptr::null(),
            parse_index: std::ptr::null(),
            init_param: std::ptr::null(),
            iparam: 0,
        }
    }
}

/// `tr_param_t` (32 bytes). The module never hands the core any of these
/// (its transformations keep their parameters on the Rust side).
#[repr(C)]
#[derive(Debug)]
pub struct tr_param_t {
    _private: [u8; 0],
}

pub type tr_func_t =
    unsafe extern "C" fn(*mut sip_msg, *mut tr_param_t, c_int, *mut pv_value_t) -> c_int;

/// `trans_t` (48 bytes), allocated by the core and filled by `tparse`.
#[repr(C)]
#[derive(Debug)]
pub struct trans_t {
    pub name: str_,
    pub type_: c_int,
    pub subtype: c_int,
    pub trf: Option<tr_func_t>,
    pub params: *mut tr_param_t,
    pub next: *mut trans_t,
}

pub type tr_parsef_t = unsafe extern "C" fn(*mut str_, *mut trans_t) -> *mut c_char;

/// One transformation class (`tr_export_t`, 24 bytes).
#[repr(C)]
#[derive(Debug)]
pub struct tr_export_t {
    pub tclass: str_,
    pub tparse: Option<tr_parsef_t>,
}

// SAFETY: export tables are immutable statics; the core copies the entries.
unsafe impl Sync for tr_export_t {}

impl tr_export_t {
    /// The row that ends a table.
    pub const fn empty() -> tr_export_t {
        tr_export_t {
            tclass: str_::NULL,
            tparse: None,
        }
    }
}

/// One KEMI export (`sr_kemi_t`, 72 bytes).
#[repr(C)]
#[derive(Debug)]
pub struct sr_kemi_t {
    pub mname: str_,
    pub fname: str_,
    pub rtype: c_int,
    pub func: *const c_void,
    pub ptypes: [c_int; 6],
}

// SAFETY: export tables are immutable statics; the core only reads them.
unsafe impl Sync for sr_kemi_t {}

impl sr_kemi_t {
    /// The row that ends a table.
    pub const fn empty() -> sr_kemi_t {
        sr_kemi_t {
            mname: str_::NULL,
            fname: str_::NULL,
            rtype: 0,
            func: std::ptr::null(),
            ptypes: [0; 6],
        }
    }
}

pub const SR_KEMIP_NONE: c_int = 0;
pub const SR_KEMIP_INT: c_int = 1;
pub const SR_KEMIP_STR: c_int = 2;

/// Opaque KEMI engine (`sr_kemi_eng_t`).
#[repr(C)]
#[derive(Debug)]
pub struct sr_kemi_eng_t {
    _private: [u8; 0],
}

/// `struct route_list` (32 bytes): only `rlist` is read.
#[repr(C)]
#[derive(Debug)]
pub struct route_list {
    pub rlist: *mut *mut action,
    pub idx: c_int,
    pub entries: c_int,
    pub names: [u8; 16],
}

/// `struct module_exports` (80 bytes).
#[repr(C)]
#[derive(Debug)]
pub struct module_exports {
    pub name: *const c_char,
    pub dlflags: c_uint,
    pub cmds: *const cmd_export_t,
    pub params: *const param_export_t,
    pub rpc_methods: *const rpc_export_t,
    pub pv_items: *const pv_export_t,
    pub response_f: Option<response_function>,
    pub init_mod_f: Option<init_function>,
    pub init_child_f: Option<child_init_function>,
    pub destroy_mod_f: Option<destroy_function>,
}

// SAFETY: the exports table is an immutable static; the core only reads it.
unsafe impl Sync for module_exports {}

/// Head of `sr_pkg_api_t` / `sr_shm_api_t` as far as the module uses it.
///
/// With `DBG_SR_MEMORY` (present in Debian's build) the allocators take the
/// caller's file, function, line and module name after their own arguments.
#[repr(C)]
#[derive(Debug)]
pub struct sr_pkg_api_t {
    pub mname: *mut c_char,
    pub mem_pool: *mut c_void,
    pub mem_block: *mut c_void,
    pub xmalloc: Option<
        unsafe extern "C" fn(
            *mut c_void,
            usize,
            *const c_char,
            *const c_char,
            c_uint,
            *const c_char,
        ) -> *mut c_void,
    >,
    pub xmallocxz: *const c_void,
    pub xrealloc: *const c_void,
    pub xreallocxf: *const c_void,
    pub xfree: Option<
        unsafe extern "C" fn(
            *mut c_void,
            *mut c_void,
            *const c_char,
            *const c_char,
            c_uint,
            *const c_char,
        ),
    >,
}

/// Head of `sr_shm_api_t` (free is at offset 72 here, unlike pkg).
#[repr(C)]
#[derive(Debug)]
pub struct sr_shm_api_t {
    pub mname: *mut c_char,
    pub mem_pool: *mut c_void,
    pub mem_block: *mut c_void,
    pub xmalloc: *const c_void,
    /// Zero-filled allocation (with DBG_SR_MEMORY: block, size, file,
    /// func, line, module name).
    pub xmallocxz: Option<
        unsafe extern "C" fn(
            *mut c_void,
            usize,
            *const c_char,
            *const c_char,
            c_uint,
            *const c_char,
        ) -> *mut c_void,
    >,
    pub xmalloc_unsafe: *const c_void,
    pub xrealloc: *const c_void,
    pub xreallocxf: *const c_void,
    pub xresize: *const c_void,
    pub xfree: Option<
        unsafe extern "C" fn(
            *mut c_void,
            *mut c_void,
            *const c_char,
            *const c_char,
            c_uint,
            *const c_char,
        ),
    >,
}

/// One row of the core's `log_level_info` table (16 bytes).
#[repr(C)]
#[derive(Debug)]
pub struct log_level_info_t {
    pub name: *const c_char,
    pub syslog_level: c_int,
}

/// `ksr_logdata_t` (64 bytes), handed to the structured logger.
#[repr(C)]
#[derive(Debug)]
pub struct ksr_logdata_t {
    pub v_facility: c_int,
    pub v_level: c_int,
    pub v_lname: *const c_char,
    pub v_fname: *const c_char,
    pub v_fline: c_int,
    pub v_mname: *const c_char,
    pub v_func: *const c_char,
    pub v_locinfo: *const c_char,
    pub v_pid: c_int,
    pub v_pidx: c_int,
}

/// Opaque tm `struct cell` (a transaction).
#[repr(C)]
#[derive(Debug)]
pub struct tm_cell {
    _private: [u8; 0],
}

/// `NO_SCRIPT`: the `param_no` that finds functions exported for modules.
pub const NO_SCRIPT: c_int = -1;

/// `T_UNDEFINED`: what `t_gett` returns before the transaction is looked up.
pub const T_UNDEFINED: *mut tm_cell = usize::MAX as *mut tm_cell;

pub type load_tm_f = unsafe extern "C" fn(*mut c_void) -> c_int;
pub type t_gett_f = unsafe extern "C" fn() -> *mut tm_cell;
pub type t_newtran_f = unsafe extern "C" fn(*mut sip_msg) -> c_int;
pub type t_suspend_f = unsafe extern "C" fn(*mut sip_msg, *mut c_uint, *mut c_uint) -> c_int;
pub type t_continue_f = unsafe extern "C" fn(c_uint, c_uint, *mut action) -> c_int;
pub type t_continue_cb_f = unsafe extern "C" fn(c_uint, c_uint, *mut str_, *mut str_) -> c_int;
pub type t_cancel_suspend_f = unsafe extern "C" fn(c_uint, c_uint) -> c_int;

/// Offsets in `struct tm_binds` (every member is a pointer). 5.7 inserts
/// `t_find` and `t_unset` after `t_gett`, moving the later members by 16.
pub const TM_T_NEWTRAN: usize = 40;
pub const TM_T_GETT: usize = 208;
#[cfg(not(kamailio_5_7))]
mod tm_offsets {
    /// `sizeof(struct tm_binds)`: 560 in 5.6.
    pub const TM_BINDS_SIZE: usize = 560;
    pub const TM_T_SUSPEND: usize = 352;
    pub const TM_T_CONTINUE: usize = 360;
    pub const TM_T_CONTINUE_CB: usize = 376;
    pub const TM_T_CANCEL_SUSPEND: usize = 384;
}
#[cfg(kamailio_5_7)]
mod tm_offsets {
    /// `sizeof(struct tm_binds)`: the largest of the series (576 in 5.7,
    /// 584 in 5.8.0 to 5.8.4, 600 from 5.8.5 and in 6.0): it grows at its end.
    pub const TM_BINDS_SIZE: usize = 600;
    pub const TM_T_SUSPEND: usize = 368;
    pub const TM_T_CONTINUE: usize = 376;
    pub const TM_T_CONTINUE_CB: usize = 392;
    pub const TM_T_CANCEL_SUSPEND: usize = 400;
}
pub use tm_offsets::*;

/// `rpc_t` (96 bytes): the RPC transport's reply API. Most members are
/// C-variadic; only those the module calls are typed.
#[repr(C)]
#[derive(Debug)]
pub struct rpc_t {
    pub fault: Option<unsafe extern "C" fn(*mut c_void, c_int, *const c_char, ...)>,
    pub send: *const c_void,
    pub add: Option<unsafe extern "C" fn(*mut c_void, *const c_char, ...) -> c_int>,
    pub scan: *const c_void,
    pub rpl_printf: *const c_void,
    pub struct_add: *const c_void,
    pub array_add: *const c_void,
    pub struct_scan: *const c_void,
    pub struct_printf: *const c_void,
    pub capabilities: *const c_void,
    pub delayed_ctx_new: *const c_void,
    pub delayed_ctx_close: *const c_void,
}

pub type rpc_function_t = unsafe extern "C" fn(*mut rpc_t, *mut c_void);

/// One RPC command (`rpc_export_t`, 32 bytes).
#[repr(C)]
#[derive(Debug)]
pub struct rpc_export_t {
    pub name: *const c_char,
    pub function: Option<rpc_function_t>,
    pub doc_str: *const *const c_char,
    pub flags: c_uint,
}

// SAFETY: export tables are immutable statics; the core only reads them.
unsafe impl Sync for rpc_export_t {}

impl rpc_export_t {
    /// The row that ends a table.
    pub const fn empty() -> rpc_export_t {
        rpc_export_t {
            name: std::ptr::null(),
            function: None,
            doc_str: std::ptr::null(),
            flags: 0,
        }
    }
}

/// Opaque `db1_con_t` (a database connection of one process).
#[repr(C)]
#[derive(Debug)]
pub struct db1_con_t {
    _private: [u8; 0],
}

/// Opaque `db1_res_t`.
#[repr(C)]
#[derive(Debug)]
pub struct db1_res_t {
    _private: [u8; 0],
}

/// `db_key_t`: a column name.
pub type db_key_t = *const str_;
/// `db_op_t`: a comparison operator (`"="`).
pub type db_op_t = *const c_char;

/// `db_type_t` values.
pub const DB1_INT: c_int = 0;
pub const DB1_STR: c_int = 4;
pub const DB1_BLOB: c_int = 6;

/// `db_val_t` (32 bytes): the value union at 16 holds an int or a `str`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct db_val_t {
    pub type_: c_int,
    pub nul: c_int,
    pub free: c_int,
    pub val: db_val_union,
}

/// The value part of `db_val_t` (16 bytes).
#[repr(C)]
#[derive(Clone, Copy)]
pub union db_val_union {
    pub int_val: c_int,
    pub str_val: str_,
}

impl core::fmt::Debug for db_val_union {
    /// Which member is live is known only from `db_val_t::type_`.
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("db_val_union { .. }")
    }
}

pub type db_use_table_f = unsafe extern "C" fn(*mut db1_con_t, *const str_) -> c_int;
pub type db_init_f = unsafe extern "C" fn(*const str_) -> *mut db1_con_t;
pub type db_close_f = unsafe extern "C" fn(*mut db1_con_t);
pub type db_insert_f =
    unsafe extern "C" fn(*const db1_con_t, *const db_key_t, *const db_val_t, c_int) -> c_int;
pub type db_delete_f = unsafe extern "C" fn(
    *const db1_con_t,
    *const db_key_t,
    *const db_op_t,
    *const db_val_t,
    c_int,
) -> c_int;
pub type db_replace_f = unsafe extern "C" fn(
    *const db1_con_t,
    *const db_key_t,
    *const db_val_t,
    c_int,
    c_int,
    c_int,
) -> c_int;
pub type db_start_transaction_f = unsafe extern "C" fn(*mut db1_con_t, c_int) -> c_int;
pub type db_end_transaction_f = unsafe extern "C" fn(*mut db1_con_t) -> c_int;

/// `db_func_t` (184 bytes): a DB module's API. Only the members the module
/// calls are typed; any may be NULL when the driver lacks it.
#[repr(C)]
#[derive(Debug)]
pub struct db_func_t {
    pub cap: c_uint,
    pub use_table: Option<db_use_table_f>,
    pub init: Option<db_init_f>,
    pub init2: *const c_void,
    pub close: Option<db_close_f>,
    pub query: *const c_void,
    pub fetch_result: *const c_void,
    pub raw_query: *const c_void,
    pub free_result: *const c_void,
    pub insert: Option<db_insert_f>,
    pub delete: Option<db_delete_f>,
    pub update: *const c_void,
    pub replace: Option<db_replace_f>,
    pub last_inserted_id: *const c_void,
    pub insert_update: *const c_void,
    pub insert_delayed: *const c_void,
    pub insert_async: *const c_void,
    pub affected_rows: *const c_void,
    pub start_transaction: Option<db_start_transaction_f>,
    pub end_transaction: Option<db_end_transaction_f>,
    pub abort_transaction: Option<db_end_transaction_f>,
    pub query_lock: *const c_void,
    pub raw_query_async: *const c_void,
}

/// `DB_CAP_ALL`: query, insert, delete and update (what the C module requires).
pub const DB_CAP_ALL: c_uint = 1 | 4 | 8 | 16;

/// `int db_bind_mod(const str *url, db_func_t *dbf)`, which is not linked
/// in: it is looked up with `dlsym`, first in the running process (from 6.0
/// the core binary holds the DB API), then in the libsrdb1 the DB modules
/// loaded (up to 5.8).
pub type db_bind_mod_f = unsafe extern "C" fn(*const str_, *mut db_func_t) -> c_int;

/// `dlopen` flags.
/// `mallopt` parameters (glibc `malloc.h`).
pub const M_MMAP_THRESHOLD: c_int = -3;
pub const M_ARENA_MAX: c_int = -8;

pub const RTLD_NOW: c_int = 2;
pub const RTLD_NOLOAD: c_int = 4;
/// glibc's pseudo-handle for `dlsym`: the global scope of the process.
pub const RTLD_DEFAULT: *mut c_void = std::ptr::null_mut();

/// `Dl_info`, filled by `dladdr`.
#[repr(C)]
#[derive(Debug)]
pub struct Dl_info {
    pub dli_fname: *const c_char,
    pub dli_fbase: *mut c_void,
    pub dli_sname: *const c_char,
    pub dli_saddr: *mut c_void,
}

/// Log levels (`L_*`).
pub const L_ALERT: c_int = -5;
pub const L_BUG: c_int = -4;
pub const L_CRIT: c_int = -2;
pub const L_ERR: c_int = -1;
pub const L_WARN: c_int = 0;
pub const L_NOTICE: c_int = 1;
pub const L_INFO: c_int = 2;
pub const L_DBG: c_int = 3;

pub type km_log_func_t = unsafe extern "C" fn(c_int, *const c_char, ...);
pub type ksr_slog_func_t = unsafe extern "C" fn(*mut ksr_logdata_t, *const c_char, ...);

extern "C" {
    // --- script parameters and fixups
    pub fn fixup_spve_null(param: *mut *mut c_void, param_no: c_int) -> c_int;
    pub fn fixup_free_spve_null(param: *mut *mut c_void, param_no: c_int) -> c_int;
    pub fn fixup_pvar_null(param: *mut *mut c_void, param_no: c_int) -> c_int;
    pub fn fixup_free_pvar_null(param: *mut *mut c_void, param_no: c_int) -> c_int;
    pub fn get_str_fparam(dst: *mut str_, msg: *mut sip_msg, param: *mut fparam_t) -> c_int;

    // --- processes
    pub fn register_procs(no: c_int) -> c_int;
    pub fn cfg_register_child(num: c_int);
    /// Marks this process as one that runs no per-child cfg callbacks (the
    /// main attendant's mode); must not be counted in `cfg_register_child`.
    pub fn cfg_child_no_cb_init() -> c_int;
    /// Points this process's cfg handles at the current global block
    /// (`cfg_update_no_cbs`, exported where `cfg_update` is a macro).
    pub fn cfg_main_set_local();
    pub fn fork_process(child_id: c_int, desc: *mut c_char, make_sock: c_int) -> c_int;

    // --- pseudo-variables and transformations
    pub fn pv_cache_get(name: *mut str_) -> *mut pv_spec_t;
    pub fn pv_get_spec_value(
        msg: *mut sip_msg,
        sp: *mut pv_spec_t,
        value: *mut pv_value_t,
    ) -> c_int;
    pub fn pv_set_spec_value(
        msg: *mut sip_msg,
        sp: *mut pv_spec_t,
        op: c_int,
        value: *mut pv_value_t,
    ) -> c_int;
    pub fn pv_get_null(msg: *mut sip_msg, param: *mut pv_param_t, res: *mut pv_value_t) -> c_int;
    pub fn pv_get_strval(
        msg: *mut sip_msg,
        param: *mut pv_param_t,
        res: *mut pv_value_t,
        sval: *mut str_,
    ) -> c_int;
    pub fn pv_parse_spec2(input: *mut str_, sp: *mut pv_spec_t, silent: c_int) -> *mut c_char;
    pub fn pv_parse_format(input: *mut str_, el: *mut *mut pv_elem_t) -> c_int;
    pub fn pv_printf_s(msg: *mut sip_msg, list: *mut pv_elem_t, s: *mut str_) -> c_int;
    pub fn register_trans_mod(mod_name: *mut c_char, items: *const tr_export_t) -> c_int;

    // --- module exports (tm's API is reached through `load_tm`)
    pub fn find_export(name: *mut c_char, param_no: c_int, flags: c_int) -> *const c_void;

    // --- routes
    pub static mut event_rt: route_list;
    pub static mut onreply_rt: route_list;
    pub static mut failure_rt: route_list;
    pub static mut route_type: c_int;
    pub fn route_lookup(rt: *mut route_list, name: *mut c_char) -> c_int;
    pub fn run_top_route(a: *mut action, msg: *mut sip_msg, c: *mut run_act_ctx) -> c_int;
    pub fn faked_msg_init() -> c_int;
    pub fn faked_msg_next() -> *mut sip_msg;
    pub fn exec_pre_script_cb(msg: *mut sip_msg, type_: c_int) -> c_int;
    pub fn exec_post_script_cb(msg: *mut sip_msg, type_: c_int) -> c_int;
    pub fn ksr_msg_env_reset();

    // --- KEMI
    pub fn sr_kemi_modules_add(klist: *const sr_kemi_t) -> c_int;
    pub fn sr_kemi_eng_get() -> *mut sr_kemi_eng_t;
    pub fn sr_kemi_route(
        keng: *mut sr_kemi_eng_t,
        msg: *mut sip_msg,
        rtype: c_int,
        ename: *mut str_,
        edata: *mut str_,
    ) -> c_int;

    // --- memory
    pub static mut _pkg_root: sr_pkg_api_t;
    pub static mut _shm_root: sr_shm_api_t;

    // --- logging
    pub static mut dprint_crit: c_int;
    pub static mut log_stderr: c_int;
    pub static mut process_no: c_int;
    pub static log_level_info: [log_level_info_t; 9];
    pub static mut _km_log_func: Option<km_log_func_t>;
    pub static mut _ksr_slog_func: Option<ksr_slog_func_t>;
    pub fn get_debug_level(mname: *const c_char, mnlen: c_int) -> c_int;
    pub fn get_debug_facility(mname: *const c_char, mnlen: c_int) -> c_int;
    pub fn my_pid() -> c_int;

    // --- the dynamic loader (libc)
    pub fn dlopen(filename: *const c_char, flags: c_int) -> *mut c_void;
    pub fn dlsym(handle: *mut c_void, symbol: *const c_char) -> *mut c_void;
    /// glibc's allocator tuning (`malloc.h`).
    pub fn mallopt(param: c_int, value: c_int) -> c_int;
    /// glibc: gives free heap memory back to the system.
    pub fn malloc_trim(pad: usize) -> c_int;
    pub fn dladdr(addr: *const c_void, info: *mut Dl_info) -> c_int;
    pub fn dlclose(handle: *mut c_void) -> c_int;

    // --- version data of the running core
    pub static ver_version: [c_char; 0];
}

// Layout pins (x86_64; the same for 5.6.3 … 6.0.7 unless under a cfg
// below). A change here is an ABI break.
const _: () = {
    use std::mem::{offset_of, size_of};
    assert!(size_of::<str_>() == 16);
    assert!(size_of::<fparam_t>() == 56);
    assert!(size_of::<cmd_export_t>() == 48);
    assert!(offset_of!(cmd_export_t, param_no) == 16);
    assert!(offset_of!(cmd_export_t, flags) == 40);
    assert!(size_of::<param_export_t>() == 24);
    assert!(size_of::<module_exports>() == 80);
    assert!(offset_of!(module_exports, pv_items) == 40);
    assert!(offset_of!(module_exports, destroy_mod_f) == 72);
    assert!(offset_of!(pv_value_t, ri) == 16);
    assert!(size_of::<pv_spec_t>() == 88);
    assert!(offset_of!(pv_spec_t, setf) == 16);
    assert!(size_of::<pv_export_t>() == 72);
    assert!(offset_of!(pv_export_t, iparam) == 64);
    assert!(size_of::<trans_t>() == 48);
    assert!(offset_of!(trans_t, trf) == 24);
    assert!(size_of::<tr_export_t>() == 24);
    assert!(size_of::<sr_kemi_t>() == 72);
    assert!(offset_of!(sr_kemi_t, ptypes) == 48);
    assert!(size_of::<route_list>() == 32);
    assert!(offset_of!(sr_pkg_api_t, xfree) == 56);
    assert!(offset_of!(sr_shm_api_t, xmallocxz) == 32);
    assert!(offset_of!(sr_shm_api_t, xfree) == 72);
    assert!(size_of::<log_level_info_t>() == 16);
    assert!(size_of::<ksr_logdata_t>() == 64);
    assert!(size_of::<db_val_t>() == 32);
    assert!(size_of::<rpc_t>() == 96);
    assert!(size_of::<rpc_export_t>() == 32);
    assert!(offset_of!(db_val_t, val) == 16);
    assert!(size_of::<db_func_t>() == 184);
    assert!(offset_of!(db_func_t, insert) == 72);
    assert!(offset_of!(db_func_t, replace) == 96);
    assert!(offset_of!(db_func_t, start_transaction) == 144);
    assert!(size_of::<Dl_info>() == 32);
    // tm's API: a pointer per member, the ones used in the struct's bounds.
    assert!(TM_T_GETT < TM_T_SUSPEND);
    assert!(TM_T_SUSPEND + 8 == TM_T_CONTINUE);
    assert!(TM_T_CANCEL_SUSPEND + 8 <= TM_BINDS_SIZE);
    // t_continue_cb sits right before t_cancel_suspend in both families.
    assert!(TM_T_CONTINUE_CB + 8 == TM_T_CANCEL_SUSPEND);
};

// Kamailio 5.6.
#[cfg(not(kamailio_5_7))]
const _: () = {
    use std::mem::{offset_of, size_of};
    assert!(size_of::<pv_int_t>() == 4);
    assert!(size_of::<pv_value_t>() == 24);
    assert!(offset_of!(pv_value_t, flags) == 20);
    assert!(TM_BINDS_SIZE == 560);
    assert!(TM_T_SUSPEND == 352 && TM_T_CONTINUE == 360 && TM_T_CANCEL_SUSPEND == 384);
};

// Kamailio 5.7, 5.8 and 6.0.
#[cfg(kamailio_5_7)]
const _: () = {
    use std::mem::{offset_of, size_of};
    assert!(size_of::<pv_int_t>() == 8);
    assert!(size_of::<pv_value_t>() == 32);
    assert!(offset_of!(pv_value_t, flags) == 24);
    assert!(TM_BINDS_SIZE == 600);
    assert!(TM_T_SUSPEND == 368 && TM_T_CONTINUE == 376 && TM_T_CANCEL_SUSPEND == 400);
};

// --- statistics (core/counters.h): a counter is one `long` per process in a
// shm array of `_cnts_row_len` counters per process row; its value is the
// sum of the rows. `counter_inc`/`counter_add` are inline: a process adds to
// its own row, `_cnts_vals[process_no * _cnts_row_len + id]`.

/// A registered counter (`struct counter_handle_s`).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct counter_handle_t {
    pub id: c_ushort,
}

pub type counter_val_t = c_long;
pub type counter_cbk_f =
    Option<unsafe extern "C" fn(handle: counter_handle_t, param: *mut c_void) -> counter_val_t>;

/// Counter flag: `stats.reset_statistics` leaves it alone.
pub const CNT_F_NO_RESET: c_int = 1;

extern "C" {
    pub fn counter_register(
        handle: *mut counter_handle_t,
        group: *const c_char,
        name: *const c_char,
        flags: c_int,
        cbk: counter_cbk_f,
        cbk_param: *mut c_void,
        doc: *const c_char,
        reg_flags: c_int,
    ) -> c_int;
    /// `counter_array_t *`: rows of `struct counter_val_s { long v; }`.
    pub static mut _cnts_vals: *mut counter_val_t;
    pub static mut _cnts_row_len: c_int;
}

const _: () = {
    assert!(size_of::<counter_handle_t>() == 2);
    assert!(size_of::<counter_val_t>() == 8);
};
