//! Pseudo-variables exported by a module (`$kzR`, `$kzE`, ...).
//!
//! A getter must hand the core a string that stays valid after it returns;
//! the core copies it straight away (assignment, `pv_printf`, `xlog`). The
//! value therefore lives in a [`ByteSlot`]: per-process storage that is
//! replaced, never mutated in place, and touched only by the host thread.
use std::cell::UnsafeCell;
use std::ffi::{c_char, c_int};

use crate::script::{ArgError, PvDest};
use crate::sys;

/// Per-process bytes behind a read-only pseudo-variable; `None` reads as `$null`.
///
/// The bytes are kept with a trailing NUL that the value's length does not
/// count: some consumers in the core and in script engines read values as C
/// strings, as the C module's values (from `pv_get_strzval`) allow.
#[derive(Debug)]
pub struct ByteSlot {
    value: UnsafeCell<Option<Vec<u8>>>,
}

// SAFETY: every access checks that it runs on the host thread (see
// `crate::thread`), so the cell is never touched by two threads.
unsafe impl Sync for ByteSlot {}

impl ByteSlot {
    pub const fn new() -> ByteSlot {
        ByteSlot {
            value: UnsafeCell::new(None),
        }
    }

    fn check_thread() {
        assert!(
            crate::thread::is_host_thread(),
            "pseudo-variable storage used off the host thread"
        );
    }

    /// Replaces the value.
    pub fn set(&self, value: Option<Vec<u8>>) {
        Self::check_thread();
        let value = value.map(|mut bytes| {
            bytes.push(0);
            bytes
        });
        // SAFETY: host thread only (checked), and no reference into the cell outlives a call of this module.
        unsafe { *self.value.get() = value };
    }

    /// Reads the value (without its NUL) in place; `f` must not set this
    /// slot (only crate code that never does calls this).
    fn with<R>(&self, f: impl FnOnce(Option<&[u8]>) -> R) -> R {
        Self::check_thread();
        // SAFETY: host thread only (checked), and the closures in this file never call `set` while they hold the borrow.
        let stored = unsafe { (*self.value.get()).as_deref() };
        f(stored.map(|bytes| &bytes[..bytes.len().saturating_sub(1)]))
    }

    /// Fills a getter's result from the slot.
    ///
    /// # Safety
    /// Arguments must be those the core passed to a PV getter.
    pub unsafe fn fill(
        &self,
        msg: *mut sys::sip_msg,
        param: *mut sys::pv_param_t,
        res: *mut sys::pv_value_t,
    ) -> c_int {
        self.with(|value| match value {
            // SAFETY: arguments from the core.
            None => unsafe { sys::pv_get_null(msg, param, res) },
            Some(bytes) => {
                let Ok(len) = c_int::try_from(bytes.len()) else {
                    // SAFETY: arguments from the core.
                    return unsafe { sys::pv_get_null(msg, param, res) };
                };
                let mut s = sys::str_ {
                    s: bytes.as_ptr() as *mut c_char,
                    len,
                };
                // SAFETY: the bytes stay in the slot until it is next replaced, which happens only after the core has consumed this value.
                unsafe { sys::pv_get_strval(msg, param, res, &mut s) }
            }
        })
    }
}

/// A pseudo-variable named at run time (e.g. a function's target given
/// as text), parsed once per process by the core's PV cache.
#[derive(Debug)]
pub struct NamedPv {
    spec: *mut sys::pv_spec_t,
}

impl NamedPv {
    /// Looks the variable up; `None` when the name does not parse.
    pub fn lookup(name: &[u8]) -> Option<NamedPv> {
        let mut text = sys::str_ {
            s: name.as_ptr() as *mut c_char,
            len: c_int::try_from(name.len()).ok()?,
        };
        // SAFETY: `text` views `name` for the call; the cache copies it and keeps the parsed spec for the process lifetime.
        let spec = unsafe { sys::pv_cache_get(&mut text) };
        (!spec.is_null()).then_some(NamedPv { spec })
    }

    /// Whether the variable can be assigned (`$var(x)`, `$avp(x)`; not
    /// `$ci` or `$def(X)`).
    pub fn is_writable(&self) -> bool {
        // SAFETY: a spec owned by the core's cache for the process lifetime.
        unsafe { (*self.spec).setf.is_some() }
    }

    /// The variable as a destination; `None` when it is read-only.
    pub fn dest(&self) -> Option<PvDest> {
        self.is_writable().then(|| PvDest::from_spec(self.spec))
    }

    /// Assigns a string; [`ArgError::Assign`] when the variable is
    /// read-only or the assignment fails.
    pub fn set_str(&self, msg: &mut crate::SipMsg, value: &[u8]) -> Result<(), ArgError> {
        self.dest().ok_or(ArgError::Assign)?.set_str(msg, value)
    }

    /// The variable's value as an integer, when it holds one (a `long`
    /// from Kamailio 5.7, an `int` before).
    pub fn get_int(&self, msg: &mut crate::SipMsg) -> Option<i64> {
        let mut val = sys::pv_value_t::empty();
        // SAFETY: a parsed spec, the current message, an output value.
        let rc = unsafe { sys::pv_get_spec_value(msg.as_ptr(), self.spec, &mut val) };
        if rc != 0 || val.flags & sys::PV_VAL_NULL != 0 {
            return None;
        }
        if val.flags & sys::PV_VAL_INT != 0 {
            return Some(sys::pv_int_to_i64(val.ri));
        }
        // SAFETY: a string value returned by the core.
        let text = unsafe { val.rs.as_bytes() };
        std::str::from_utf8(text).ok()?.trim().parse().ok()
    }
}

impl Default for ByteSlot {
    fn default() -> Self {
        Self::new()
    }
}
