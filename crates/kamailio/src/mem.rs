//! Kamailio's pkg allocator, for the few places where the core hands the
//! module memory it must free.
//!
//! Everything the module owns lives in Rust's allocator: pkg memory is a small
//! per-process pool (8 MB by default) that must not hold module data.
use std::ffi::c_void;

use crate::sys;

/// Frees a pkg block received from the core (e.g. a `PV_VAL_PKG` value).
///
/// # Safety
/// `ptr` must be a live pkg allocation of this process, not used afterwards;
/// call only on the host thread.
pub unsafe fn pkg_free(ptr: *mut c_void) {
    // SAFETY: `_pkg_root` is initialised by the core before any module code runs; its `xfree` takes the pool, the block and static location strings.
    unsafe {
        let root = &*std::ptr::addr_of!(sys::_pkg_root);
        if let Some(free) = root.xfree {
            free(
                root.mem_block,
                ptr,
                c"kamailio/mem.rs".as_ptr(),
                c"pkg_free".as_ptr(),
                0,
                crate::log::module_name().as_ptr(),
            );
        }
    }
}

/// Frees a shm block received from the core (e.g. a `PV_VAL_SHM` value).
///
/// # Safety
/// `ptr` must be a live shm allocation not used afterwards.
pub unsafe fn shm_free(ptr: *mut c_void) {
    // SAFETY: `_shm_root` is initialised by the core at start-up; its `xfree` takes the pool, the block and static location strings.
    unsafe {
        let root = &*std::ptr::addr_of!(sys::_shm_root);
        if let Some(free) = root.xfree {
            free(
                root.mem_block,
                ptr,
                c"kamailio/mem.rs".as_ptr(),
                c"shm_free".as_ptr(),
                0,
                crate::log::module_name().as_ptr(),
            );
        }
    }
}
