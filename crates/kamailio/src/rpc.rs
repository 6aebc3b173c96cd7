//! RPC commands (`kamcmd`, `kamctl rpc`, jsonrpcs): a command's handler
//! returns its reply as text, or an error that becomes an RPC fault.
use std::ffi::{c_void, CString};

use crate::sys;

/// The reply side of one RPC call.
#[derive(Debug)]
pub struct Rpc {
    api: *mut sys::rpc_t,
    ctx: *mut c_void,
}

impl Rpc {
    /// # Safety
    /// The arguments the core passed to an RPC function.
    pub unsafe fn from_raw(api: *mut sys::rpc_t, ctx: *mut c_void) -> Rpc {
        Rpc { api, ctx }
    }

    /// Adds a string to the reply.
    pub fn add_str(&self, text: &str) {
        let text = CString::new(text.replace('\0', " ")).unwrap_or_default();
        // SAFETY: the transport's `add` with the constant format "s" and one NUL-terminated string, during the call.
        unsafe {
            if let Some(add) = (*self.api).add {
                add(self.ctx, c"s".as_ptr(), text.as_ptr());
            }
        }
    }

    /// Fails the call with `code` and `reason`.
    pub fn fault(&self, code: i32, reason: &str) {
        let reason = CString::new(reason.replace('\0', " ")).unwrap_or_default();
        // SAFETY: the transport's `fault` with a constant "%s" format and one NUL-terminated string, during the call.
        unsafe {
            if let Some(fault) = (*self.api).fault {
                fault(self.ctx, code, c"%s".as_ptr(), reason.as_ptr());
            }
        }
    }
}
