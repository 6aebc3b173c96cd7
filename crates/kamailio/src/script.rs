//! Arguments of script functions: the fixups that prepare them at start-up
//! and the typed views used at call time.
//!
//! Kinds of argument:
//! - [`SpveArg`]: a string that may contain pseudo-variables, evaluated per call
//!   (the core's `fixup_spve_null`, applied to any position);
//! - [`PvDest`]: a pseudo-variable the function writes (the core's
//!   `fixup_pvar_null`, refused at start-up when it is read-only);
//! - raw: the literal text of the argument, or the evaluated text when the
//!   script passes a bare expression (no fixup at all).
use std::ffi::{c_char, c_int, c_void, CStr};

use crate::msg::SipMsg;
use crate::sys;

/// Why an argument could not be read or written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ArgError {
    /// The core could not evaluate the string (e.g. longer than `pv_buffer_size`).
    Evaluate,
    /// Writing the destination variable failed.
    Assign,
    /// The value is too large for a Kamailio string.
    TooLarge,
}

impl std::fmt::Display for ArgError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ArgError::Evaluate => {
                "cannot evaluate the parameter (check pv_buffer_size for long values)"
            }
            ArgError::Assign => "cannot assign the destination variable",
            ArgError::TooLarge => "value too large for a Kamailio string",
        })
    }
}

impl std::error::Error for ArgError {}

/// A string argument that may contain pseudo-variables.
#[derive(Debug)]
pub struct SpveArg {
    param: *mut sys::fparam_t,
}

impl SpveArg {
    /// # Safety
    /// `raw` must be an argument prepared by [`fixup_spve`] (or
    /// [`fixup_spve_pv_at`] at a string position).
    pub unsafe fn from_raw(raw: *mut c_char) -> SpveArg {
        SpveArg { param: raw.cast() }
    }

    /// The argument's text as written in the configuration, before any
    /// variable is expanded (for a parameter that names a variable rather
    /// than giving a value).
    pub fn literal(&self) -> Vec<u8> {
        // SAFETY: `param` is a live `fparam_t` made by the core's fixup; `orig` is its NUL-terminated original text (or null).
        unsafe {
            let orig = (*self.param).orig;
            if orig.is_null() {
                Vec::new()
            } else {
                CStr::from_ptr(orig).to_bytes().to_vec()
            }
        }
    }

    /// Evaluates the argument for `msg` and copies the result (the core's
    /// result lives in a static buffer that the next evaluation overwrites).
    pub fn value(&self, msg: &mut SipMsg) -> Result<Vec<u8>, ArgError> {
        let mut out = sys::str_::NULL;
        // SAFETY: `param` was produced by the core's spve fixup and `msg` is the current message.
        let rc = unsafe { sys::get_str_fparam(&mut out, msg.as_ptr(), self.param) };
        if rc != 0 {
            return Err(ArgError::Evaluate);
        }
        // SAFETY: on success the core returns a valid (s, len) pair.
        Ok(unsafe { out.as_bytes() }.to_vec())
    }
}

/// A pseudo-variable the function writes into.
#[derive(Debug)]
pub struct PvDest {
    spec: *mut sys::pv_spec_t,
}

impl PvDest {
    /// # Safety
    /// `raw` must be an argument prepared by [`fixup_spve_pv_at`] at the
    /// destination position.
    pub unsafe fn from_raw(raw: *mut c_char) -> PvDest {
        PvDest { spec: raw.cast() }
    }

    /// A destination over a spec the core keeps for the process lifetime.
    pub(crate) fn from_spec(spec: *mut sys::pv_spec_t) -> PvDest {
        PvDest { spec }
    }

    /// Whether the variable is an AVP (`$avp(...)`), which keeps a stack of
    /// values.
    pub fn is_avp(&self) -> bool {
        // SAFETY: `spec` is a parsed spec owned by the core for the process lifetime.
        unsafe { (*self.spec).type_ == sys::PVT_AVP }
    }

    /// Assigns a string (for an AVP this adds a value on top of its stack).
    pub fn set_str(&self, msg: &mut SipMsg, value: &[u8]) -> Result<(), ArgError> {
        let rs = sys::str_::from_bytes(value).ok_or(ArgError::TooLarge)?;
        let mut val = sys::pv_value_t::string(rs);
        self.assign(msg, &mut val)
    }

    /// Assigns `$null` (for an AVP this removes its top value).
    pub fn set_null(&self, msg: &mut SipMsg) -> Result<(), ArgError> {
        let mut val = sys::pv_value_t::null();
        self.assign(msg, &mut val)
    }

    fn assign(&self, msg: &mut SipMsg, val: &mut sys::pv_value_t) -> Result<(), ArgError> {
        // SAFETY: a writable spec (checked at fixup), the current message and a value whose string the setter copies before returning.
        let rc = unsafe { sys::pv_set_spec_value(msg.as_ptr(), self.spec, sys::EQ_T, val) };
        if rc < 0 {
            Err(ArgError::Assign)
        } else {
            Ok(())
        }
    }
}

/// The literal argument of a function declared without fixup.
///
/// # Safety
/// `raw` must be the NUL-terminated string the core passed.
pub unsafe fn raw_arg(raw: *mut c_char) -> Vec<u8> {
    if raw.is_null() {
        return Vec::new();
    }
    // SAFETY: guaranteed by the caller.
    unsafe { CStr::from_ptr(raw) }.to_bytes().to_vec()
}

/// Fixup for string arguments at any position.
///
/// # Safety
/// Called by the core with a parameter slot of a function declared with it.
pub unsafe extern "C" fn fixup_spve(param: *mut *mut c_void, _param_no: c_int) -> c_int {
    // SAFETY: the core's fixup handles position 1; the position only selects which fixup applies, and every position of these functions is a string.
    unsafe { sys::fixup_spve_null(param, 1) }
}

/// Frees what [`fixup_spve`] made.
///
/// # Safety
/// Called by the core with a slot prepared by [`fixup_spve`].
pub unsafe extern "C" fn free_fixup_spve(param: *mut *mut c_void, _param_no: c_int) -> c_int {
    // SAFETY: mirrors `fixup_spve`.
    unsafe { sys::fixup_free_spve_null(param, 1) }
}

/// Fixup for functions whose argument `DEST` (1-based) is a writable
/// pseudo-variable and every other argument a string.
///
/// # Safety
/// Called by the core with a parameter slot of a function declared with it.
pub unsafe extern "C" fn fixup_spve_pv_at<const DEST: c_int>(
    param: *mut *mut c_void,
    param_no: c_int,
) -> c_int {
    crate::guard::guarded("fixup", -1, || {
        if param_no != DEST {
            // SAFETY: a string position, see `fixup_spve`.
            return unsafe { sys::fixup_spve_null(param, 1) };
        }
        // SAFETY: the core's pvar fixup parses the slot's text into a spec.
        let rc = unsafe { sys::fixup_pvar_null(param, 1) };
        if rc != 0 {
            return rc;
        }
        // SAFETY: on success the slot holds a parsed `pv_spec_t*`.
        let writable = unsafe { (*(*param as *mut sys::pv_spec_t)).setf.is_some() };
        if !writable {
            crate::error!("parameter {param_no} must be a writable variable");
            return -1;
        }
        0
    })
}

/// Frees what [`fixup_spve_pv_at`] made.
///
/// # Safety
/// Called by the core with a slot prepared by [`fixup_spve_pv_at`].
pub unsafe extern "C" fn free_fixup_spve_pv_at<const DEST: c_int>(
    param: *mut *mut c_void,
    param_no: c_int,
) -> c_int {
    if param_no == DEST {
        // SAFETY: mirrors the pvar branch of `fixup_spve_pv_at`.
        unsafe { sys::fixup_free_pvar_null(param, 1) }
    } else {
        // SAFETY: mirrors the string branch of `fixup_spve_pv_at`.
        unsafe { sys::fixup_free_spve_null(param, 1) }
    }
}
