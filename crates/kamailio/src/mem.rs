//! Kamailio's pkg allocator, for the few places where the core hands the
//! module memory it must free; shm counters every process shares; and how a
//! module's own process gives the system's allocator's memory back.
//!
//! Everything the module owns lives in Rust's allocator: pkg memory is a small
//! per-process pool (8 MB by default) that must not hold module data.
use std::ffi::c_void;
use std::sync::atomic::AtomicU64;

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

/// `N` counters in Kamailio's shared memory, zero, for every process to
/// update and read without locks: call before the fork (in `mod_init`), so
/// that every child has them at the same address. They live as long as
/// Kamailio.
pub fn shm_counters<const N: usize>() -> Result<&'static [AtomicU64; N], crate::error::Error> {
    let size = std::mem::size_of::<[AtomicU64; N]>();
    // SAFETY: `_shm_root` is initialised by the core before mod_init; `xmallocxz` takes the pool, a size and static location strings, and returns a zero-filled block or null. shm blocks are at least 8-byte aligned, and all-zero bytes are valid `AtomicU64`s; the block is never freed, so the reference is 'static, and atomics on a shared mapping are sound across processes.
    let block = unsafe {
        let root = &*std::ptr::addr_of!(sys::_shm_root);
        match root.xmallocxz {
            Some(alloc) => alloc(
                root.mem_block,
                size,
                c"kamailio/mem.rs".as_ptr(),
                c"shm_counters".as_ptr(),
                0,
                crate::log::module_name().as_ptr(),
            ),
            None => std::ptr::null_mut(),
        }
    };
    if block.is_null() || block.align_offset(std::mem::align_of::<AtomicU64>()) != 0 {
        return Err(crate::error::registration(format!(
            "no shared memory for {N} counters"
        )));
    }
    // SAFETY: checked above: a live, aligned, zero-filled block of the right size.
    Ok(unsafe { &*(block as *const [AtomicU64; N]) })
}

/// Blocks this large or larger are mapped on their own, and unmapped when
/// freed.
const MMAP_THRESHOLD: i32 = 256 * 1024;

/// Makes this process (a module's own, after the fork) give memory back to
/// the system once it is freed, instead of keeping its peak for good
/// (Kamailio's own pkg and shm pools are not concerned):
/// blocks of [`MMAP_THRESHOLD`] or more are always mapped on their own
/// (glibc otherwise raises the threshold after the first large free, and
/// keeps later large blocks, such as 10 MB messages, in its heap), and
/// every thread shares two arenas (glibc otherwise gives each thread its
/// own, each keeping its peak).
pub fn return_memory_eagerly() {
    // SAFETY: plain glibc calls with documented parameters, before this process allocates much.
    unsafe {
        sys::mallopt(sys::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
        sys::mallopt(sys::M_ARENA_MAX, 2);
    }
}

/// Gives the free memory at the top and in the middle of the heap back to
/// the system (`malloc_trim`); call now and then, not per operation.
pub fn trim() {
    // SAFETY: a plain glibc call; it only releases free pages.
    unsafe {
        sys::malloc_trim(0);
    }
}
