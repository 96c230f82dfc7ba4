//! The memory allocator's settings for a small, long-running daemon.
//!
//! glibc's malloc gives every thread that allocates its own arena (up to eight per core),
//! and each arena keeps the memory freed into it. Our threads hand buffers to each other
//! over channels (`net` allocates a frame, `sync` frees it), so each arena ends up holding
//! its own high-water mark. One arena is enough for a handful of threads that mostly wait,
//! and after a session the freed memory is handed back to the kernel, so an idle daemon's
//! resident size is what it uses, not what its busiest moment needed.
//!
//! On musl (and anything that is not glibc) these are no-ops: musl's allocator already
//! returns freed pages and has no arenas.

/// Called once at start-up, before any thread is spawned.
pub fn tune() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // M_ARENA_MAX is -8 in glibc's malloc.h; the libc crate does not export it.
        const M_ARENA_MAX: libc::c_int = -8;
        // SAFETY: mallopt only changes allocator parameters; no pointers are involved.
        unsafe {
            libc::mallopt(M_ARENA_MAX, 1);
        }
    }
}

/// Returns freed heap memory to the kernel: called when a sync session ends.
pub fn release_free() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: malloc_trim takes a size and only unmaps or advises away free memory.
        unsafe {
            libc::malloc_trim(0);
        }
    }
}
