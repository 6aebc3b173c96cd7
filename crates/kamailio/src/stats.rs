//! Statistics through Kamailio's counters (`kamcmd stats.get_statistics`,
//! `stats.reset_statistics`, and every exporter built on them, such as
//! `xhttp_prom`).
//!
//! A counter is registered in `mod_init` (before the fork) under a group
//! (`<group>:<name>` in `stats.*`). Each process adds to its own slot of the
//! core's shm array, without locks; the value read is the sum over all
//! processes. A process that owns a state (a gauge, such as a connection's
//! state) sets its own slot to the current value.
use std::ffi::CStr;

use crate::error::{registration, Error};
use crate::sys;

/// A registered counter.
#[derive(Clone, Copy, Debug)]
pub struct Counter(sys::counter_handle_t);

/// Whether `stats.reset_statistics` may reset a counter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reset {
    /// Totals since start-up or the last reset.
    Allowed,
    /// Gauges (states, depths): a reset would only show a wrong value.
    Never,
}

impl Counter {
    /// Registers `group:name` with its description (call in `mod_init`).
    pub fn register(
        group: &'static CStr,
        name: &'static CStr,
        doc: &'static CStr,
        reset: Reset,
    ) -> Result<Counter, Error> {
        let mut handle = sys::counter_handle_t { id: 0 };
        let flags = match reset {
            Reset::Allowed => 0,
            Reset::Never => sys::CNT_F_NO_RESET,
        };
        // SAFETY: mod_init time in the main process; the strings are 'static, as the core may keep them.
        let rc = unsafe {
            sys::counter_register(
                &mut handle,
                group.as_ptr(),
                name.as_ptr(),
                flags,
                None,
                std::ptr::null_mut(),
                doc.as_ptr(),
                0,
            )
        };
        if rc < 0 {
            return Err(registration(format!(
                "cannot register the statistic {}:{}",
                group.to_string_lossy(),
                name.to_string_lossy()
            )));
        }
        Ok(Counter(handle))
    }

    /// This process's slot.
    fn own_slot(&self) -> *mut sys::counter_val_t {
        // SAFETY: `_cnts_vals` has `_cnts_row_len` counters per process row (one temporary row before the fork, when `process_no` is 0); the handle's id was given by the core for this array.
        unsafe {
            let row = sys::process_no as usize * sys::_cnts_row_len as usize;
            sys::_cnts_vals.add(row + usize::from(self.0.id))
        }
    }

    /// Adds `n` to the counter (from this process's main thread).
    pub fn add(&self, n: i64) {
        let slot = self.own_slot();
        // SAFETY: only this process writes its own slot, from its main thread; readers in other processes tolerate a torn-free aligned long store.
        unsafe { *slot = (*slot).wrapping_add(n as sys::counter_val_t) };
    }

    /// Sets this process's part of the counter to `value` (for a gauge that
    /// only this process changes).
    pub fn set_own(&self, value: i64) {
        // SAFETY: as in `add`.
        unsafe { *self.own_slot() = value as sys::counter_val_t };
    }
}
