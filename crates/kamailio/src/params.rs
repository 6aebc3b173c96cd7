//! Module parameters as the core delivers them to a setter.
//!
//! Every parameter of a Rust module is declared with `PARAM_USE_FUNC`, so the
//! core calls a setter for each `modparam` line. That keeps the module's
//! configuration in Rust types, lets a parameter be repeated
//! (`amqp_connection`) and lets a bad value fail start-up with a message that
//! names the parameter.
use std::ffi::{c_char, c_void, CStr};

use crate::sys;

/// The declared type of a parameter; the core matches quoted values to
/// `Str` and bare numbers to `Int`, and refuses anything else.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParamKind {
    Int,
    Str,
}

impl ParamKind {
    /// The `modparam_t` bits of a setter-based parameter of this kind.
    pub const fn type_bits(self) -> sys::modparam_t {
        match self {
            ParamKind::Int => sys::PARAM_INT | sys::PARAM_USE_FUNC,
            ParamKind::Str => sys::PARAM_STR | sys::PARAM_USE_FUNC,
        }
    }
}

/// One `modparam` value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParamValue<'a> {
    Int(i32),
    Str(&'a [u8]),
}

/// Decodes what the core passes to a setter.
///
/// # Safety
/// `ty` and `val` must be the arguments the core passed to a setter declared
/// with [`ParamKind::type_bits`]; the value is only valid during the call.
pub unsafe fn decode<'a>(ty: sys::modparam_t, val: *mut c_void) -> ParamValue<'a> {
    let base = ty & !sys::PARAM_USE_FUNC;
    if base & sys::PARAM_INT != 0 {
        // The core passes an int parameter as the pointer value itself.
        ParamValue::Int(val as usize as i64 as i32)
    } else if base & sys::PARAM_STR != 0 {
        let s = val as *const sys::str_;
        // SAFETY: for PARAM_STR setters the core passes a `str*` that is valid for the duration of the call.
        unsafe {
            if s.is_null() || (*s).s.is_null() || (*s).len <= 0 {
                ParamValue::Str(&[])
            } else {
                ParamValue::Str(std::slice::from_raw_parts(
                    (*s).s as *const u8,
                    (*s).len as usize,
                ))
            }
        }
    } else if val.is_null() {
        ParamValue::Str(&[])
    } else {
        // SAFETY: for PARAM_STRING setters the core passes a NUL-terminated string valid for the call.
        ParamValue::Str(unsafe { CStr::from_ptr(val as *const c_char) }.to_bytes())
    }
}
