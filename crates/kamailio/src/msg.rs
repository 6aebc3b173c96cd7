//! The SIP message handle passed to script functions and routes.
use crate::sys;

/// A SIP message owned by the core for the duration of one call (a real
/// request, or the faked message of an event route).
#[derive(Debug)]
pub struct SipMsg {
    raw: *mut sys::sip_msg,
}

impl SipMsg {
    /// # Safety
    /// `raw` must be the message the core passed to the current entry point
    /// (or a faked message), valid for as long as the handle is used.
    pub unsafe fn from_raw(raw: *mut sys::sip_msg) -> SipMsg {
        SipMsg { raw }
    }

    pub(crate) fn as_ptr(&mut self) -> *mut sys::sip_msg {
        self.raw
    }
}
