//! The memory allocator's settings for a small, long-running daemon.
//!
//! glibc's malloc gives every thread that allocates its own arena (up to eight per core),
//! and each arena keeps the memory freed into it. Our threads hand buffers to each other
//! over channels (`net` allocates a frame, `sync` frees it), so each arena ends up holding
//! its own high-water mark. One arena is enough for a handful of threads that mostly wait,
//! and after a session the freed memory is handed back to the kernel, so an idle daemon's
//! resident size is what it uses, not what its busiest moment needed.
//!
//! File data moves in 256 KiB chunks, each a fresh buffer. Above glibc's default mmap
//! threshold (128 KiB) every such buffer would be a new mapping whose pages fault in one by
//! one as they are filled (an eighth of a receiver's CPU for a large file, measured with
//! perf), and freed memory at the top of the heap is handed back at 128 KiB: the same pages
//! fault in again for the next chunk. With the thresholds raised, chunk buffers are reused
//! from the heap; what they leave behind is given back after the session.
//!
//! On musl (and anything that is not glibc) these are no-ops: musl's allocator already
//! returns freed pages and has no arenas.

/// Called once at start-up, before any thread is spawned.
pub fn tune() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // From glibc's malloc.h; the libc crate does not export all of them.
        const M_TRIM_THRESHOLD: libc::c_int = -1;
        const M_MMAP_THRESHOLD: libc::c_int = -3;
        const M_ARENA_MAX: libc::c_int = -8;
        // SAFETY: mallopt only changes allocator parameters; no pointers are involved.
        unsafe {
            libc::mallopt(M_ARENA_MAX, 1);
            // Above a whole frame (1 MiB + header): only rare big buffers get their own map.
            libc::mallopt(M_MMAP_THRESHOLD, 2 << 20);
            libc::mallopt(M_TRIM_THRESHOLD, 8 << 20);
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
