//! Pseudo-variables exported by a module (`$kzR`, `$kzE`, ...).
//!
//! A getter must hand the core a string that stays valid after it returns;
//! the core copies it straight away (assignment, `pv_printf`, `xlog`). The
//! value therefore lives in a [`ByteSlot`]: per-process storage that is
//! replaced, never mutated in place, and touched only by the host thread.
use std::cell::UnsafeCell;
use std::ffi::{c_char, c_int};

use crate::sys;

/// Per-process bytes behind a read-only pseudo-variable; `None` reads as `$null`.
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
        // SAFETY: host thread only (checked), and no reference into the cell
        // outlives a call of this module.
        unsafe { *self.value.get() = value };
    }

    /// A copy of the value.
    pub fn get(&self) -> Option<Vec<u8>> {
        self.with(|value| value.map(<[u8]>::to_vec))
    }

    /// Reads the value in place; `f` must not set this slot (only crate code
    /// that never does calls this).
    fn with<R>(&self, f: impl FnOnce(Option<&[u8]>) -> R) -> R {
        Self::check_thread();
        // SAFETY: host thread only (checked), and the closures in this file
        // never call `set` while they hold the borrow.
        f(unsafe { (*self.value.get()).as_deref() })
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
                // SAFETY: the bytes stay in the slot until it is next replaced,
                // which happens only after the core has consumed this value.
                unsafe { sys::pv_get_strval(msg, param, res, &mut s) }
            }
        })
    }
}

impl Default for ByteSlot {
    fn default() -> Self {
        Self::new()
    }
}
