//! Safe file system operations inside one storage: every read of file contents and every
//! write, directory creation and removal the daemon does in a storage goes through here.
//!
//! Two promises:
//! 1. **Nothing outside the storage root is ever read or written.** Paths are resolved one
//!    component at a time from an open descriptor of the root, with `openat(O_NOFOLLOW |
//!    O_DIRECTORY)` for directories and `O_NOFOLLOW` for the final file, so a symlink anywhere
//!    in a path (planted by a user or swapped in by a race) is an error (`ELOOP`/`ENOTDIR`),
//!    never an escape. Only the root itself may be a symlink: it is the user's choice.
//! 2. **A file holds either its old or its new complete contents, never a torn mix.** New
//!    contents go to a temporary file in the target's own directory, which is fsynced, given
//!    its mode and mtime, checked against what the caller expects to replace, renamed over the
//!    target, and then the directory is fsynced. A temporary file that is not committed is
//!    removed, so a failure at any step leaves the old file untouched.
//!
//! What this module must not do: decide anything (no policy: which file wins, whether to
//! delete, is the caller's business), touch the network, or log file contents or paths
//! beyond a `debug` line when a temporary file cannot be cleaned up.
//!
//! 32-bit targets (armv7): with libc 0.2 the plain `fstatat`/`stat`/`fstatvfs` bindings are
//! glibc's 32-bit-offset ones unless the unstable `gnu_file_offset_bits64` cfg is set, so a
//! file over 2 GiB would fail with `EOVERFLOW`. On glibc we therefore call the LFS64
//! variants (`fstatat64`, `stat64`, `fstatvfs64`), as std does; musl has only 64-bit offsets
//! and its plain names are right. Files are opened with `O_LARGEFILE` for the same reason
//! (it is 0 or implied on 64-bit). `time_t` is 32-bit in the `libc` crate on every 32-bit
//! target, so there mtimes are read with `statx` and applied with `utimensat_time64`
//! (`time64.rs`); only a kernel older than 5.1 limits them to 1901..2038 (applying one outside
//! is then `InvalidInput`).

mod edit;
mod partial;
mod time64;

pub use edit::MARKER;
pub use partial::{is_partial, PARTIAL_KEEP};
pub use time64::wide_mtime_ns;

use std::ffi::{CStr, CString};
use std::fmt;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

use crate::model::{
    mtime_ns_from_parts, mtime_ns_to_parts, RelPath, Version, INTERNAL_PREFIX, MODE_MASK,
};

/// Mode of the directories created on the way to a target: the usual, not the peer's choice.
const NEW_DIR_MODE: u32 = 0o755;
/// Temporary files are private until commit gives them their real mode.
const TEMP_FILE_MODE: libc::c_uint = 0o600;
/// How many fresh names `begin_write` tries before giving up on `EEXIST`.
const TEMP_NAME_ATTEMPTS: u32 = 8;

#[cfg(all(target_os = "linux", target_env = "gnu"))]
mod sys {
    pub use libc::{fstatat64 as fstatat, fstatvfs64 as fstatvfs};
    pub use libc::{stat64 as stat_t, statvfs64 as statvfs_t};
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
mod sys {
    pub use libc::{fstatat, fstatvfs};
    pub use libc::{stat as stat_t, statvfs as statvfs_t};
}

/// What a path currently is (from `fstatat` with `AT_SYMLINK_NOFOLLOW`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatKind {
    File,
    Dir,
    Symlink,
    Other,
}

/// What one `stat` saw. `mode` holds only the permission bits (`0o777`); `ino` and
/// `ctime_ns` tell a scan whether a file may have changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stat {
    pub kind: StatKind,
    pub size: u64,
    pub mtime_ns: i64,
    pub mode: u32,
    pub ino: u64,
    pub ctime_ns: i64,
}

impl Stat {
    /// The version of a regular file; `None` for anything else.
    pub fn version(&self) -> Option<Version> {
        (self.kind == StatKind::File).then_some(Version {
            size: self.size,
            mtime_ns: self.mtime_ns,
        })
    }
}

/// Why [`TempFile::commit`] did not put the new contents in place.
#[derive(Debug)]
pub enum CommitError {
    /// The target no longer holds the version the commit expected (`None`: nothing); holds
    /// what was found instead. The temp
    /// file has been removed and the target left as it is.
    Changed(String),
    /// The file system folds names (case on FAT and exFAT): the target's name reaches
    /// another entry of its directory, named here, which is kept as it is.
    Folded(String),
    Io(io::Error),
}

impl fmt::Display for CommitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CommitError::Changed(found) => write!(f, "target changed meanwhile: found {found}"),
            CommitError::Folded(other) => write!(
                f,
                "the file system does not tell its name from {other:?}, which exists (it folds \
                 case): both cannot be stored here"
            ),
            CommitError::Io(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for CommitError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            CommitError::Changed(_) | CommitError::Folded(_) => None,
            CommitError::Io(e) => Some(e),
        }
    }
}

impl From<io::Error> for CommitError {
    fn from(e: io::Error) -> CommitError {
        CommitError::Io(e)
    }
}

/// An open storage root. Every path is resolved from this descriptor, so renaming or
/// replacing the root's path after `open` does not redirect later operations.
#[derive(Debug)]
pub struct StorageDir {
    path: PathBuf,
    fd: OwnedFd,
}

impl StorageDir {
    /// Opens the storage root, which must be a directory. The root itself is followed if it
    /// is a symlink (pointing a storage at a symlinked mount is legitimate).
    pub fn open(path: &Path) -> io::Result<StorageDir> {
        let file = File::options()
            .read(true)
            .custom_flags(libc::O_DIRECTORY)
            .open(path)?;
        Ok(StorageDir {
            path: path.to_path_buf(),
            fd: OwnedFd::from(file),
        })
    }

    /// The root path as given to [`StorageDir::open`].
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// What `path` is now, without following a final symlink. `None` when nothing is there:
    /// a component is missing or is not a directory. That includes a parent that is a
    /// symlink (the kernel answers `ENOTDIR` to `O_NOFOLLOW | O_DIRECTORY`), which matches
    /// the scanner: nothing behind a symlink is ever indexed.
    pub fn stat(&self, path: &RelPath) -> io::Result<Option<Stat>> {
        let (parent, name) = split_parent(path.as_str());
        let dir = match self.walk(parent, None) {
            Ok(dir) => dir,
            Err(e) if is_absent(&e) => return Ok(None),
            Err(e) => return Err(e),
        };
        match stat_at(&dir, &cstring(name)?) {
            Ok(st) => Ok(Some(st)),
            Err(e) if is_absent(&e) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Opens a regular file for reading. The [`Stat`] describes the opened file itself, so it
    /// matches the contents read even if the path is replaced meanwhile.
    pub fn open_read(&self, path: &RelPath) -> io::Result<(File, Stat)> {
        let (parent, name) = split_parent(path.as_str());
        let dir = self.walk(parent, None)?;
        // O_NONBLOCK: opening a FIFO planted at this path would otherwise block until a
        // writer shows up, hanging the sync thread. O_NOCTTY: a terminal must not become
        // our controlling tty. Both are dropped below once we know it is a regular file.
        let fd = open_at(
            &dir,
            &cstring(name)?,
            libc::O_RDONLY | libc::O_NONBLOCK | libc::O_NOCTTY,
            0,
        )?;
        let file = File::from(fd);
        let st = stat_file(&file)?;
        if st.kind != StatKind::File {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "not a regular file",
            ));
        }
        clear_nonblock(&file)?;
        Ok((file, st))
    }

    /// Creates `path` and any missing parent. Directories created on the way get `0o755`, the
    /// last one `mode & 0o777`, whatever the umask. Existing directories are left as they are;
    /// an existing component that is not a directory (file, symlink) is an error and is never
    /// removed.
    pub fn create_dir_all(&self, path: &RelPath, mode: u32) -> io::Result<()> {
        self.walk(Some(path.as_str()), Some(mode & MODE_MASK))
            .map(drop)
    }

    /// Starts writing new contents for `path`: creates missing parent directories (`0o755`),
    /// then an empty temporary file next to the target. Nothing is visible at `path` until
    /// [`TempFile::commit`].
    pub fn begin_write(&self, path: &RelPath) -> io::Result<TempFile> {
        self.begin_write_tagged(path, "")
    }

    /// [`StorageDir::begin_write`], with `tag` appended to the temporary file's name.
    fn begin_write_tagged(&self, path: &RelPath, tag: &str) -> io::Result<TempFile> {
        let (parent, name) = split_parent(path.as_str());
        let dir = self.walk(parent, Some(NEW_DIR_MODE))?;
        let target = cstring(name)?;
        let mut attempt = 0;
        loop {
            let temp_name = next_temp_name() + tag;
            let temp_c = cstring(&temp_name)?;
            let flags = libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL;
            match open_at(&dir, &temp_c, flags, TEMP_FILE_MODE) {
                Ok(fd) => {
                    return Ok(TempFile {
                        dir,
                        file: File::from(fd),
                        temp_name,
                        temp_c,
                        target,
                        written: 0,
                        writeback_from: 0,
                        live: true,
                        opened: std::time::Instant::now(),
                    })
                }
                // A leftover of an earlier process that had our pid: pick another name.
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    attempt += 1;
                    if attempt >= TEMP_NAME_ATTEMPTS {
                        return Err(e);
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Removes a leftover internal file reported by the scanner. `rel` is `/`-separated; its
    /// last component must start with [`INTERNAL_PREFIX`] and its parent (if any) must be a
    /// valid [`RelPath`]; anything else is refused with `InvalidInput`, so this can never be
    /// turned into deleting user data. Directories are not removed.
    pub fn remove_internal(&self, rel: &str) -> io::Result<()> {
        let (parent, name) = split_parent(rel);
        let refuse = || {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                "not the path of an internal file",
            )
        };
        if !name.starts_with(INTERNAL_PREFIX) || name.len() > crate::model::MAX_COMPONENT_LEN {
            return Err(refuse());
        }
        if let Some(p) = parent {
            RelPath::new(p).map_err(|_| refuse())?;
        }
        let name = cstring(name).map_err(|_| refuse())?;
        let dir = self.walk(parent, None)?;
        unlink_at(&dir, &name)
    }

    /// Bytes available to unprivileged users on the storage's file system (`f_bavail`, not
    /// the root-reserved blocks). Saturates rather than failing on an absurd product.
    pub fn free_space(&self) -> io::Result<u64> {
        // SAFETY: all-zero bytes are a valid value of this plain C struct.
        let mut st: sys::statvfs_t = unsafe { std::mem::zeroed() };
        // SAFETY: `self.fd` is an open descriptor and `st` is a valid, writable statvfs.
        retry(|| unsafe { sys::fstatvfs(self.fd.as_raw_fd(), &mut st) })?;
        // Field widths differ between targets (32-bit `c_ulong`); widening is lossless.
        Ok(widen_u64(st.f_bavail).saturating_mul(widen_u64(st.f_frsize)))
    }

    /// Opens the directory `dirs` (a `/`-separated valid relative path, or the root for
    /// `None`) without following any symlink. With `create = Some(mode)`, missing components
    /// are created: `0o755` on the way, `mode` for the last one.
    fn walk(&self, dirs: Option<&str>, create: Option<u32>) -> io::Result<OwnedFd> {
        let mut cur = self.fd.try_clone()?;
        let Some(dirs) = dirs else {
            return Ok(cur);
        };
        let mut comps = dirs.split('/').peekable();
        while let Some(comp) = comps.next() {
            let name = cstring(comp)?;
            cur = match create {
                None => open_dir_at(&cur, &name)?,
                Some(last_mode) => {
                    let mode = if comps.peek().is_none() {
                        last_mode
                    } else {
                        NEW_DIR_MODE
                    };
                    open_or_create_dir_at(&cur, &name, mode)?
                }
            };
        }
        Ok(cur)
    }
}

/// A file being received. Dropping it without [`TempFile::commit`] removes the temp file.
#[derive(Debug)]
pub struct TempFile {
    /// The target's directory. Commit and cleanup work relative to it, so whatever happens to
    /// the parent's path meanwhile (renamed, swapped for a symlink) cannot redirect them.
    dir: OwnedFd,
    file: File,
    temp_name: String,
    temp_c: CString,
    target: CString,
    written: u64,
    /// Where the data not yet handed to write-back starts.
    writeback_from: u64,
    /// The temp file still exists under `temp_name` and is ours to remove.
    live: bool,
    /// When it was opened: a `syncfs` through the earliest-opened file of a batch reports
    /// every write-back error since any of them was opened.
    opened: std::time::Instant,
}

/// When `name` was found in `dir` although the plan expected it absent: the entry it
/// reached under another name, if the directory holds no entry of exactly this name (a
/// case-folding file system found `A.txt` for `a.txt`). `None`: the name is really there,
/// or the directory cannot be listed (through `/proc`), and the usual "changed" applies.
fn folded_onto(dir: &OwnedFd, name: &CStr) -> Option<String> {
    let name = name.to_bytes();
    let folded = String::from_utf8_lossy(name).to_lowercase();
    let listing = std::fs::read_dir(format!("/proc/self/fd/{}", dir.as_raw_fd())).ok()?;
    let mut similar = None;
    for entry in listing {
        let entry = entry.ok()?;
        let other = entry.file_name();
        let other = other.as_bytes();
        if other == name {
            return None;
        }
        if similar.is_none() && String::from_utf8_lossy(other).to_lowercase() == folded {
            similar = Some(String::from_utf8_lossy(other).into_owned());
        }
    }
    Some(similar.unwrap_or_else(|| "another entry".to_owned()))
}

impl TempFile {
    pub fn write_all(&mut self, data: &[u8]) -> io::Result<()> {
        self.file.write_all(data)?;
        self.written = self.written.saturating_add(data.len() as u64);
        if self.written - self.writeback_from >= WRITEBACK_STEP {
            start_writeback(&self.file, self.writeback_from, self.written);
            self.writeback_from = self.written;
        }
        Ok(())
    }

    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// The temp file's name within the target's directory.
    pub fn temp_name(&self) -> &str {
        &self.temp_name
    }

    /// Puts the new contents in place: applies `mode & 0o777` (never setuid, setgid or
    /// sticky) and `mtime_ns`, makes data and metadata durable, checks that the target still
    /// is what `expect` says, renames over it and fsyncs the directory.
    ///
    /// On `Changed` or an error before the rename, the temp file is removed and the target is
    /// untouched. An `Io` error from the final directory fsync means the new contents are in
    /// place but may not survive a power cut.
    ///
    /// `expect` is what the target must still hold: `None`, nothing (the rename then never
    /// replaces anything), or that version of a file.
    ///
    /// Limitation: when a version is expected, a change to the target between the check and
    /// the rename is overwritten; no system call can rename only if the target is unchanged.
    pub fn commit(
        self,
        mode: u32,
        mtime_ns: i64,
        expect: Option<Version>,
    ) -> Result<(), CommitError> {
        let prepared = self.prepare(mode, mtime_ns, expect)?;
        commit_batch_with(vec![prepared], Durability::Fsync)
            .pop()
            .map_or(Ok(()), |r| r.map(drop))
    }

    /// Applies `mode & 0o777` and `mtime_ns` to the temp file.
    fn set_meta(&self, mode: u32, mtime_ns: i64) -> io::Result<()> {
        let fd = self.file.as_raw_fd();
        let mode = mode & MODE_MASK;
        // SAFETY: `fd` is the open temp file.
        chmod_best_effort(retry(|| unsafe { libc::fchmod(fd, mode) }))?;
        #[cfg(target_pointer_width = "32")]
        {
            let (secs, nsec) = mtime_ns_to_parts(mtime_ns);
            if time64::set_mtime(fd, secs, nsec)? {
                return Ok(());
            }
        }
        let times = [
            timespec(0, widen_i64(libc::UTIME_OMIT))?,
            mtime_timespec(mtime_ns)?,
        ];
        // SAFETY: `fd` is open and `times` points to the two timespecs futimens reads.
        retry(|| unsafe { libc::futimens(fd, times.as_ptr()) })?;
        Ok(())
    }

    /// Checks the target against `expect` and renames the (durable) temp file over it.
    fn place(&mut self, expect: Option<Version>) -> Result<(), CommitError> {
        let found = match stat_at(&self.dir, &self.target) {
            Ok(st) => Some(st),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => None,
            Err(e) => return Err(e.into()),
        };
        let matches = match (expect, found) {
            (None, None) => true,
            (Some(v), Some(st)) => st.version() == Some(v),
            _ => false,
        };
        if !matches {
            if expect.is_none() {
                if let Some(other) = folded_onto(&self.dir, &self.target) {
                    return Err(CommitError::Folded(other));
                }
            }
            return Err(CommitError::Changed(describe(found)));
        }
        match expect {
            None => self.rename_noreplace(),
            Some(_) => {
                rename_at(&self.dir, &self.temp_c, &self.target)?;
                self.live = false;
                Ok(())
            }
        }
    }

    /// Gives the temp file its mode and mtime and queues it for [`commit_batch`], which
    /// makes many files durable with a few file system syncs instead of two fsyncs each.
    pub fn prepare(
        self,
        mode: u32,
        mtime_ns: i64,
        expect: Option<Version>,
    ) -> io::Result<Prepared> {
        self.set_meta(mode, mtime_ns)?;
        let dev = self.file.metadata()?.dev();
        Ok(Prepared {
            temp: self,
            expect,
            dev,
        })
    }

    /// Removes the temp file now, leaving the target untouched.
    pub fn abort(self) {
        drop(self);
    }

    /// Renames the temp file to the target only if the target does not exist, so a file
    /// created there after our check is never clobbered.
    fn rename_noreplace(&mut self) -> Result<(), CommitError> {
        let dir = self.dir.as_raw_fd();
        let flags: libc::c_uint = libc::RENAME_NOREPLACE;
        // SAFETY: both names are valid NUL-terminated strings that outlive the call, `dir` is
        // open, and SYS_renameat2 takes exactly these five arguments.
        let res = retry(|| unsafe {
            libc::syscall(
                libc::SYS_renameat2,
                dir,
                self.temp_c.as_ptr(),
                dir,
                self.target.as_ptr(),
                flags,
            )
        });
        match res {
            Ok(_) => {
                self.live = false;
                Ok(())
            }
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {
                let found = stat_at(&self.dir, &self.target).ok();
                Err(CommitError::Changed(describe(found)))
            }
            // Old kernel (ENOSYS) or a file system without RENAME_NOREPLACE (EINVAL): the
            // check just done in commit is the best protection left.
            Err(e) if matches!(e.raw_os_error(), Some(libc::EINVAL | libc::ENOSYS)) => {
                rename_at(&self.dir, &self.temp_c, &self.target)?;
                self.live = false;
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if self.live {
            if let Err(e) = unlink_at(&self.dir, &self.temp_c) {
                log::debug!("cannot remove temporary file {}: {e}", self.temp_name);
            }
        }
    }
}

/// Bytes of a file being received after which the kernel is asked to start writing them out.
const WRITEBACK_STEP: u64 = 8 << 20;

/// Starts (does not wait for) write-back of `from..to` of `file`. Without it, a large file
/// sits in the page cache until the commit's sync, which then writes all of it while the
/// receiver waits; with it, the disk works while the network does. Advisory: an error only
/// means the final sync does the work.
fn start_writeback(file: &File, from: u64, to: u64) {
    let (Ok(offset), Ok(len)) = (i64::try_from(from), i64::try_from(to - from)) else {
        return;
    };
    // SAFETY: the descriptor is open; the call only schedules write-back of that range.
    let r = unsafe {
        libc::sync_file_range(file.as_raw_fd(), offset, len, libc::SYNC_FILE_RANGE_WRITE)
    };
    if r != 0 {
        log::trace!("sync_file_range: {}", io::Error::last_os_error());
    }
}

/// A verified temp file with its mode and mtime applied, waiting for [`commit_batch`].
/// Dropping it removes the temp file, as for [`TempFile`].
#[derive(Debug)]
pub struct Prepared {
    temp: TempFile,
    expect: Option<Version>,
    /// The file system it is on (one `syncfs` per file system).
    dev: u64,
}

impl Prepared {
    /// The temp file's name within the target's directory.
    pub fn temp_name(&self) -> &str {
        self.temp.temp_name()
    }
}

/// Commits many files at once, with the promise of [`TempFile::commit`] for each: a target
/// is replaced only by contents that are durable, and holds its old or its new contents.
///
/// Per file, `commit` costs two fsyncs, each a journal commit and a device cache flush:
/// about half a millisecond on an SSD, far more on an SD card, the floor of a small-file
/// sync. Here one `syncfs` per file system makes every file of the batch durable before any
/// rename; then the renames; then one more `syncfs` makes them durable. `syncfs` reports
/// write-back errors only since Linux 5.8, and only those since the descriptor it is given
/// was opened, so it is called through the earliest-opened file of the batch; on an older
/// kernel, or when it fails, every file is fsynced on its own (each fsync reports that
/// file's own errors), and after the renames every directory. A batch of fewer than
/// [`SYNCFS_MIN_BATCH`] files (a large file, typically) is fsynced file by file without
/// `syncfs`, which would also write other programs' dirty data. Results are in batch order.
pub fn commit_batch(batch: Vec<Prepared>) -> Vec<Result<Stat, CommitError>> {
    let how = if batch.len() < SYNCFS_MIN_BATCH {
        Durability::Fsync
    } else if syncfs_reports_errors() {
        Durability::Syncfs
    } else {
        Durability::SyncfsThenFsync
    };
    commit_batch_with(batch, how)
}

/// Fewer files than this are fsynced one by one: `syncfs` also writes whatever else is dirty
/// on the file system, which only pays off when it replaces many fsyncs.
const SYNCFS_MIN_BATCH: usize = 4;

/// How [`commit_batch_with`] makes files durable.
#[doc(hidden)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// `syncfs`, trusted for write-back errors (Linux 5.8+).
    Syncfs,
    /// `syncfs` to write, then an fsync per file and directory for their errors.
    SyncfsThenFsync,
    /// An fsync per file and directory, no `syncfs`.
    Fsync,
}

/// [`commit_batch`] with the way to durability chosen by the caller (public for the tests of
/// every way).
#[doc(hidden)]
pub fn commit_batch_with(batch: Vec<Prepared>, how: Durability) -> Vec<Result<Stat, CommitError>> {
    let use_syncfs = how != Durability::Fsync;
    let trust_syncfs = how == Durability::Syncfs;
    let synced = use_syncfs && syncfs_all(batch.iter()) && trust_syncfs;
    let mut results: Vec<Result<(), CommitError>> = Vec::with_capacity(batch.len());
    // Files renamed into place, with their index in `results`.
    let mut placed: Vec<(usize, Prepared)> = Vec::with_capacity(batch.len());
    for mut p in batch {
        // After chmod and futimens, so the fsync makes the mode and mtime durable too.
        let durable = if synced {
            Ok(())
        } else {
            p.temp.file.sync_all().map_err(CommitError::from)
        };
        match durable.and_then(|()| p.temp.place(p.expect)) {
            Ok(()) => {
                placed.push((results.len(), p));
                results.push(Ok(()));
            }
            Err(e) => results.push(Err(e)),
        }
    }
    // A rename is only durable once its directory entry is.
    if !(use_syncfs && syncfs_all(placed.iter().map(|(_, p)| p)) && trust_syncfs) {
        for (i, p) in &placed {
            if let Err(e) = fsync_fd(&p.temp.dir) {
                results[*i] = Err(e.into());
            }
        }
    }
    // What each file is now (its inode, and the ctime the rename gave it), for the
    // history: the next scan need not read it again.
    let mut stats: Vec<Option<Stat>> = vec![None; results.len()];
    for (i, p) in &placed {
        stats[*i] = stat_file(&p.temp.file).ok();
    }
    results
        .into_iter()
        .zip(stats)
        .map(|(r, st)| {
            r.and_then(|()| st.ok_or_else(|| CommitError::Io(io::Error::other("cannot stat"))))
        })
        .collect()
}

/// `syncfs` once per file system of `files`, through the earliest-opened file on each.
/// True if every call succeeded.
fn syncfs_all<'a>(files: impl Iterator<Item = &'a Prepared>) -> bool {
    // (device, earliest-opened file on it)
    let mut first: Vec<&Prepared> = Vec::new();
    for p in files {
        match first.iter_mut().find(|f| f.dev == p.dev) {
            Some(f) if p.temp.opened < f.temp.opened => *f = p,
            Some(_) => {}
            None => first.push(p),
        }
    }
    let mut ok = true;
    for p in first {
        // SAFETY: the temp file's descriptor is open.
        if let Err(e) = retry(|| unsafe { libc::syncfs(p.temp.file.as_raw_fd()) }) {
            log::warn!("syncfs failed ({e}); fsyncing file by file");
            ok = false;
        }
    }
    ok
}

/// Whether this kernel's `syncfs` returns write-back errors (Linux 5.8 and later).
fn syncfs_reports_errors() -> bool {
    static ANSWER: OnceLock<bool> = OnceLock::new();
    *ANSWER.get_or_init(|| {
        // SAFETY: all-zero bytes are a valid utsname; uname fills it.
        let mut u: libc::utsname = unsafe { std::mem::zeroed() };
        // SAFETY: `u` is a writable utsname.
        if unsafe { libc::uname(&mut u) } != 0 {
            return false;
        }
        let release: String = u
            .release
            .iter()
            .take_while(|&&c| c != 0)
            .map(|&c| c as u8 as char)
            .collect();
        kernel_at_least(&release, (5, 8))
    })
}

/// Whether a kernel release string such as `6.1.0-18-arm64` is at least `want`.
fn kernel_at_least(release: &str, want: (u32, u32)) -> bool {
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    let major = parts.next().and_then(|p| p.parse::<u32>().ok());
    let minor = parts.next().and_then(|p| p.parse::<u32>().ok());
    match (major, minor) {
        (Some(major), Some(minor)) => (major, minor) >= want,
        _ => false,
    }
}

/// Splits `a/b/c` into (`Some("a/b")`, `c`) and `c` into (`None`, `c`).
fn split_parent(path: &str) -> (Option<&str>, &str) {
    match path.rfind('/') {
        Some(i) => (Some(&path[..i]), &path[i + 1..]),
        None => (None, path),
    }
}

fn cstring(name: &str) -> io::Result<CString> {
    CString::new(name).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in path"))
}

/// `ENOENT`, or `ENOTDIR` because a component on the way is a file or a symlink: either way
/// nothing the scanner would index exists at the path.
fn is_absent(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOENT | libc::ENOTDIR))
}

/// Runs a libc call until it stops failing with `EINTR`. `-1` means failure with `errno`.
fn retry<T: Copy + PartialEq + From<i8>>(mut call: impl FnMut() -> T) -> io::Result<T> {
    loop {
        let rc = call();
        if rc != T::from(-1) {
            return Ok(rc);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// `openat` that never follows a final symlink and never leaks the fd into children.
fn open_at(
    dir: &OwnedFd,
    name: &CString,
    flags: libc::c_int,
    mode: libc::c_uint,
) -> io::Result<OwnedFd> {
    let flags = flags | libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_LARGEFILE;
    // SAFETY: `dir` is open and `name` is a valid NUL-terminated string that outlives the
    // call; the mode argument is read only with O_CREAT, as an unsigned int.
    let fd = retry(|| unsafe { libc::openat(dir.as_raw_fd(), name.as_ptr(), flags, mode) })?;
    // SAFETY: openat just returned this descriptor and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Opens a subdirectory. A symlink or a file there is an error: `ENOTDIR` (some kernels
/// answer `ELOOP` for the symlink).
fn open_dir_at(dir: &OwnedFd, name: &CString) -> io::Result<OwnedFd> {
    open_at(dir, name, libc::O_RDONLY | libc::O_DIRECTORY, 0)
}

fn open_or_create_dir_at(dir: &OwnedFd, name: &CString, mode: u32) -> io::Result<OwnedFd> {
    match open_dir_at(dir, name) {
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
        other => return other,
    }
    // Created private, then opened without following and chmodded through the fd: the umask
    // cannot interfere, and the directory is never briefly open to others.
    // SAFETY: `dir` is open and `name` is a valid NUL-terminated string that outlives the call.
    match retry(|| unsafe { libc::mkdirat(dir.as_raw_fd(), name.as_ptr(), 0o700) }) {
        Ok(_) => {
            let sub = open_dir_at(dir, name)?;
            // SAFETY: `sub` is an open directory descriptor.
            chmod_best_effort(retry(|| unsafe { libc::fchmod(sub.as_raw_fd(), mode) }))?;
            Ok(sub)
        }
        // Someone else created it between our open and mkdir: it exists, so leave it as is.
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => open_dir_at(dir, name),
        Err(e) => Err(e),
    }
}

/// A mode change that the file system cannot make (FUSE and network mounts without
/// permissions: ENOSYS, EOPNOTSUPP, EPERM) is no reason to refuse a file: the bits are
/// best effort, and the length and hash checks are what protect the data.
fn chmod_best_effort(r: io::Result<libc::c_int>) -> io::Result<()> {
    match r {
        Ok(_) => Ok(()),
        Err(e)
            if matches!(
                e.raw_os_error(),
                Some(libc::ENOSYS | libc::EOPNOTSUPP | libc::EPERM)
            ) =>
        {
            log::debug!("mode not set: {e}");
            Ok(())
        }
        Err(e) => Err(e),
    }
}

fn stat_at(dir: &OwnedFd, name: &CString) -> io::Result<Stat> {
    #[cfg(target_pointer_width = "32")]
    if let Some(st) = time64::statx(dir.as_raw_fd(), name, libc::AT_SYMLINK_NOFOLLOW)? {
        return Ok(st);
    }
    // SAFETY: all-zero bytes are a valid value of this plain C struct.
    let mut st: sys::stat_t = unsafe { std::mem::zeroed() };
    // SAFETY: `dir` is open, `name` is a valid NUL-terminated string and `st` a writable stat
    // buffer, all outliving the call.
    retry(|| unsafe {
        sys::fstatat(
            dir.as_raw_fd(),
            name.as_ptr(),
            &mut st,
            libc::AT_SYMLINK_NOFOLLOW,
        )
    })?;
    let kind = match st.st_mode & libc::S_IFMT {
        libc::S_IFREG => StatKind::File,
        libc::S_IFDIR => StatKind::Dir,
        libc::S_IFLNK => StatKind::Symlink,
        _ => StatKind::Other,
    };
    Ok(Stat {
        kind,
        // The kernel never reports a negative size.
        size: u64::try_from(st.st_size).unwrap_or(0),
        mtime_ns: mtime_ns_from_parts(widen_i64(st.st_mtime), widen_i64(st.st_mtime_nsec)),
        mode: st.st_mode & MODE_MASK,
        ino: widen_u64(st.st_ino),
        ctime_ns: mtime_ns_from_parts(widen_i64(st.st_ctime), widen_i64(st.st_ctime_nsec)),
    })
}

/// The kind, size, mtime and mode of an open file.
pub fn stat_file(file: &File) -> io::Result<Stat> {
    #[cfg(target_pointer_width = "32")]
    if let Some(st) = time64::statx(file.as_raw_fd(), c"", libc::AT_EMPTY_PATH)? {
        return Ok(st);
    }
    Ok(stat_from_metadata(&file.metadata()?))
}

fn stat_from_metadata(meta: &std::fs::Metadata) -> Stat {
    let ft = meta.file_type();
    let kind = if ft.is_file() {
        StatKind::File
    } else if ft.is_dir() {
        StatKind::Dir
    } else if ft.is_symlink() {
        StatKind::Symlink
    } else {
        StatKind::Other
    };
    Stat {
        kind,
        size: meta.len(),
        mtime_ns: mtime_ns_from_parts(meta.mtime(), meta.mtime_nsec()),
        mode: meta.mode() & MODE_MASK,
        ino: meta.ino(),
        ctime_ns: mtime_ns_from_parts(meta.ctime(), meta.ctime_nsec()),
    }
}

/// For regular files `O_NONBLOCK` is meaningless on local file systems, but some network
/// file systems honour it; reads must block normally.
fn clear_nonblock(file: &File) -> io::Result<()> {
    let fd = file.as_raw_fd();
    // SAFETY: `fd` is open; F_GETFL takes no argument.
    let flags = retry(|| unsafe { libc::fcntl(fd, libc::F_GETFL) })?;
    // SAFETY: `fd` is open; F_SETFL takes an int.
    retry(|| unsafe { libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_NONBLOCK) })?;
    Ok(())
}

fn unlink_at(dir: &OwnedFd, name: &CString) -> io::Result<()> {
    // SAFETY: `dir` is open and `name` is a valid NUL-terminated string; flags 0 means the
    // entry is unlinked only if it is not a directory.
    retry(|| unsafe { libc::unlinkat(dir.as_raw_fd(), name.as_ptr(), 0) })?;
    Ok(())
}

fn rename_at(dir: &OwnedFd, from: &CString, to: &CString) -> io::Result<()> {
    let fd = dir.as_raw_fd();
    // SAFETY: `fd` is open and both names are valid NUL-terminated strings.
    retry(|| unsafe { libc::renameat(fd, from.as_ptr(), fd, to.as_ptr()) })?;
    Ok(())
}

fn fsync_fd(fd: &OwnedFd) -> io::Result<()> {
    // SAFETY: `fd` is an open descriptor.
    retry(|| unsafe { libc::fsync(fd.as_raw_fd()) })?;
    Ok(())
}

/// A `timespec` for futimens; fails if the seconds do not fit this target's `time_t`.
fn timespec(secs: i64, nsec: i64) -> io::Result<libc::timespec> {
    let out_of_range = || {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "mtime out of range for this platform",
        )
    };
    // SAFETY: all-zero bytes are a valid timespec. Built field by field because 32-bit musl
    // adds private padding fields, which rule out a struct literal.
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    ts.tv_sec = narrow(secs).ok_or_else(out_of_range)?;
    ts.tv_nsec = narrow(nsec).ok_or_else(out_of_range)?;
    Ok(ts)
}

fn mtime_timespec(mtime_ns: i64) -> io::Result<libc::timespec> {
    let (secs, nsec) = mtime_ns_to_parts(mtime_ns);
    timespec(secs, nsec)
}

// Generic on purpose: the libc field types are i32 on some targets and i64 on others, and a
// concrete `i64::from`/`as i64` is a no-op that clippy flags on 64-bit.
fn widen_i64<T: Into<i64>>(v: T) -> i64 {
    v.into()
}

fn widen_u64<T: Into<u64>>(v: T) -> u64 {
    v.into()
}

fn narrow<T: TryFrom<i64>>(v: i64) -> Option<T> {
    T::try_from(v).ok()
}

/// What `commit` found at the target, for [`CommitError::Changed`].
fn describe(found: Option<Stat>) -> String {
    match found {
        None => "nothing (the target does not exist)".to_owned(),
        Some(st) => match st.kind {
            StatKind::File => format!("a file of {} bytes with mtime {} ns", st.size, st.mtime_ns),
            StatKind::Dir => "a directory".to_owned(),
            StatKind::Symlink => "a symlink".to_owned(),
            StatKind::Other => "a special file".to_owned(),
        },
    }
}

/// `INTERNAL_PREFIX` + `tmp.<pid>.<counter>.<random hex>`. The pid and counter make names
/// unique within this boot's processes; the random part avoids colliding with a leftover of
/// an earlier process that had the same pid.
fn next_temp_name() -> String {
    // usize, not u64: 32-bit MIPS and PowerPC have no 64-bit atomics. A wrap after 4 billion
    // temp files only repeats the counter; the random part still tells names apart.
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed) as u64;
    let r = splitmix64(random_seed() ^ n) & 0xff_ffff;
    format!("{INTERNAL_PREFIX}tmp.{}.{n}.{r:06x}", std::process::id())
}

/// Read once from the kernel; if that fails, the clock and pid still make collisions with
/// leftovers unlikely, and `begin_write` retries on `EEXIST` anyway.
fn random_seed() -> u64 {
    static SEED: OnceLock<u64> = OnceLock::new();
    *SEED.get_or_init(|| {
        let mut buf = [0u8; 8];
        match File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut buf)) {
            Ok(()) => u64::from_ne_bytes(buf),
            Err(_) => {
                let nanos = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos() as u64);
                nanos ^ (u64::from(std::process::id()) << 32)
            }
        }
    })
}

/// A tiny bijective mixer, so consecutive counters give unrelated-looking suffixes.
fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::kernel_at_least;

    #[test]
    fn kernel_release_strings_compare_by_major_and_minor() {
        for (release, want) in [
            ("5.8.0", true),
            ("5.10.0-28-arm64", true),
            ("6.1.21-v7+", true),
            ("6.18.44-fc-v669", true),
            ("5.7.19", false),
            ("4.19.0-6-armmp", false),
            ("4.14.180", false),
            ("3.10.0-1160.el7.x86_64", false),
            ("", false),
            ("garbage", false),
            ("5", false),
        ] {
            assert_eq!(kernel_at_least(release, (5, 8)), want, "{release}");
        }
    }
}
