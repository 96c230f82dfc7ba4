//! File times that do not fit 32 bits, read and written on 32-bit targets.
//!
//! On ARMv6/ARMv7, MIPS and other 32-bit targets the `libc` crate binds the old ABI, where
//! `time_t` is 32 bits: musl's compatibility symbols and glibc's default names both cut an
//! mtime to 1901..2038. A file dated 2100 (or 1800) would then be read wrongly, or could not
//! be given its mtime at all, and would never synchronize exactly. The kernel's own interfaces
//! are 64-bit on every architecture: `statx` (Linux 4.11) reads, and `utimensat_time64`
//! (Linux 5.1) writes. This module calls them directly, and says "no" (`None`) when the kernel
//! lacks them, so the caller falls back to the libc call and its 32-bit range.
//!
//! The struct layout and conversion are compiled on every target, so the host's tests check
//! them; the system calls only on 32-bit targets, where they are needed.
#![cfg_attr(not(target_pointer_width = "32"), allow(dead_code))]

use std::io;

use super::{Stat, StatKind, MODE_MASK};
use crate::model::mtime_ns_from_parts;

/// `struct statx_timestamp` of `<linux/stat.h>`.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct StatxTimestamp {
    tv_sec: i64,
    tv_nsec: u32,
    reserved: i32,
}

/// `struct statx` of `<linux/stat.h>`: 256 bytes on every architecture.
#[repr(C)]
#[derive(Clone, Copy, Default)]
pub(super) struct Statx {
    mask: u32,
    blksize: u32,
    attributes: u64,
    nlink: u32,
    uid: u32,
    gid: u32,
    mode: u16,
    spare0: u16,
    ino: u64,
    size: u64,
    blocks: u64,
    attributes_mask: u64,
    atime: StatxTimestamp,
    btime: StatxTimestamp,
    ctime: StatxTimestamp,
    mtime: StatxTimestamp,
    rdev_major: u32,
    rdev_minor: u32,
    dev_major: u32,
    dev_minor: u32,
    spare: [u64; 14],
}

const _: () = assert!(std::mem::size_of::<Statx>() == 256);

/// `STATX_TYPE | STATX_MODE | STATX_INO | STATX_SIZE | STATX_MTIME | STATX_CTIME`.
const STATX_WANTED: u32 = 0x0001 | 0x0002 | 0x0100 | 0x0200 | 0x0040 | 0x0080;

impl Statx {
    /// What the rest of fsops knows about a path, with full 64-bit times.
    pub(super) fn to_stat(self) -> Stat {
        let mode = u32::from(self.mode);
        let kind = match mode & libc::S_IFMT {
            libc::S_IFREG => StatKind::File,
            libc::S_IFDIR => StatKind::Dir,
            libc::S_IFLNK => StatKind::Symlink,
            _ => StatKind::Other,
        };
        Stat {
            kind,
            size: self.size,
            mtime_ns: timestamp_ns(self.mtime),
            mode: mode & MODE_MASK,
            ino: self.ino,
            ctime_ns: timestamp_ns(self.ctime),
        }
    }
}

fn timestamp_ns(t: StatxTimestamp) -> i64 {
    mtime_ns_from_parts(t.tv_sec, i64::from(t.tv_nsec))
}

/// `struct __kernel_timespec`: 64-bit seconds whatever the target's `time_t`.
#[repr(C)]
struct KernelTimespec {
    tv_sec: i64,
    tv_nsec: i64,
}

/// Whether the kernel (or a seccomp filter in front of it) refused the call as unknown; the
/// caller then uses the old 32-bit interface.
fn unsupported(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOSYS) | Some(libc::EPERM))
}

#[cfg(target_pointer_width = "32")]
mod calls {
    use super::*;
    use std::ffi::CStr;
    use std::os::fd::RawFd;

    /// `utimensat_time64`: the same number on every 32-bit architecture since Linux 5.1,
    /// offset by 4000 in MIPS o32's table. The `libc` crate names it only for riscv32.
    #[cfg(target_arch = "mips")]
    const SYS_UTIMENSAT_TIME64: libc::c_long = 4000 + 412;
    #[cfg(not(target_arch = "mips"))]
    const SYS_UTIMENSAT_TIME64: libc::c_long = 412;

    /// `statx(dir, name, flags)`; `Ok(None)` when the kernel has no `statx`.
    pub(in crate::fsops) fn statx(
        dir: RawFd,
        name: &CStr,
        flags: libc::c_int,
    ) -> io::Result<Option<Stat>> {
        let mut buf = Statx::default();
        loop {
            // SAFETY: `name` is NUL-terminated and `buf` is a writable `struct statx`, both
            // outliving the call; the kernel writes at most its 256 bytes.
            let rc = unsafe {
                libc::syscall(
                    libc::SYS_statx,
                    dir,
                    name.as_ptr(),
                    flags,
                    STATX_WANTED,
                    &mut buf as *mut Statx,
                )
            };
            if rc == 0 {
                return Ok(Some(buf.to_stat()));
            }
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return if unsupported(&e) { Ok(None) } else { Err(e) };
        }
    }

    /// Sets the mtime of the open file `fd`, leaving its atime; `Ok(false)` when the kernel
    /// has no `utimensat_time64`.
    pub(in crate::fsops) fn set_mtime(fd: RawFd, secs: i64, nsec: i64) -> io::Result<bool> {
        let times = [
            KernelTimespec {
                tv_sec: 0,
                tv_nsec: i64::from(libc::UTIME_OMIT),
            },
            KernelTimespec {
                tv_sec: secs,
                tv_nsec: nsec,
            },
        ];
        loop {
            // SAFETY: `fd` is open; a null path with flags 0 means `fd` itself (futimens), and
            // `times` is two kernel timespecs that outlive the call.
            let rc = unsafe {
                libc::syscall(
                    SYS_UTIMENSAT_TIME64,
                    fd,
                    std::ptr::null::<libc::c_char>(),
                    times.as_ptr(),
                    0,
                )
            };
            if rc == 0 {
                return Ok(true);
            }
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return if unsupported(&e) { Ok(false) } else { Err(e) };
        }
    }
}

#[cfg(target_pointer_width = "32")]
pub(super) use calls::{set_mtime, statx};

/// The mtime of the directory entry (not following a symlink) when `statx` can tell it with
/// all 64 bits; `None` on 64-bit targets, where `std`'s metadata already has them.
pub fn wide_mtime_ns(entry: &std::fs::DirEntry) -> Option<i64> {
    #[cfg(target_pointer_width = "32")]
    {
        use std::os::unix::ffi::OsStrExt;
        let name = std::ffi::CString::new(entry.path().as_os_str().as_bytes()).ok()?;
        statx(libc::AT_FDCWD, &name, libc::AT_SYMLINK_NOFOLLOW)
            .ok()
            .flatten()
            .map(|st| st.mtime_ns)
    }
    #[cfg(not(target_pointer_width = "32"))]
    {
        let _ = entry;
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statx_layout_matches_the_kernel() {
        // Offsets from <linux/stat.h>: a wrong one would read another field as the mtime.
        assert_eq!(std::mem::offset_of!(Statx, mode), 28);
        assert_eq!(std::mem::offset_of!(Statx, ino), 32);
        assert_eq!(std::mem::offset_of!(Statx, size), 40);
        assert_eq!(std::mem::offset_of!(Statx, ctime), 96);
        assert_eq!(std::mem::offset_of!(Statx, mtime), 112);
        assert_eq!(std::mem::size_of::<KernelTimespec>(), 16);
    }

    #[test]
    fn times_beyond_32_bits_convert_exactly() {
        let mut st = Statx {
            mode: (libc::S_IFREG | 0o640) as u16,
            size: 7,
            ..Statx::default()
        };
        st.mtime = StatxTimestamp {
            tv_sec: 4_102_444_800, // 2100-01-01
            tv_nsec: 123_456_789,
            reserved: 0,
        };
        st.ctime.tv_sec = -2_208_988_800; // 1900-01-01
        let s = st.to_stat();
        assert_eq!(s.kind, StatKind::File);
        assert_eq!(s.mode, 0o640);
        assert_eq!(s.mtime_ns, 4_102_444_800_123_456_789);
        assert_eq!(s.ctime_ns, -2_208_988_800_000_000_000);
    }
}
