//! Storage scanner: walks one storage directory and produces its index, one [`FileMeta`] per
//! regular file and per directory below the root.
//!
//! The scanner only looks: it never reads file contents, never follows symlinks, never
//! writes, renames or deletes anything (leftover temporary files are *reported* in
//! [`ScanResult::temp_files`] for the caller to remove) and never touches the database. It
//! is a pure function of the tree on disk, the `.ignore` rules and the exclude list.
//!
//! What is indexed and what is not:
//! - regular files and directories (including empty ones) are indexed; the root is not;
//! - symlinks, sockets, FIFOs and devices are skipped with an `info` line and counted in
//!   [`ScanResult::skipped`];
//! - names that are not UTF-8 or that [`RelPath`] rejects are skipped with a `warn` line and
//!   counted;
//! - names starting with [`INTERNAL_PREFIX`] are the daemon's own temporary files: never
//!   indexed, never logged, listed in [`ScanResult::temp_files`];
//! - paths ignored by `.ignore` are silently left out, and ignored directories are not
//!   entered; the root `.ignore` file itself is indexed so the rules travel to peers;
//! - paths listed in [`ScanOptions::exclude`] (the database and its side files when they
//!   live inside the storage) are silently left out;
//! - files the process cannot read and directories it cannot list or enter are skipped with a
//!   `warn` line, counted, and listed in [`ScanResult::unreadable`] (a skipped directory
//!   takes its whole subtree with it): the caller keeps what it knew of them, as a path left
//!   out of the index would otherwise be taken for deleted;
//! - a listing of the root that fails part-way fails the scan.
//!
//! Limitation: each entry is classified by one `lstat`, then directories are opened by path.
//! A directory swapped for a symlink between those two steps would be followed; the scanner
//! protects against symlinks that exist in the tree, not against a concurrent attacker who
//! can already write to the storage.

use std::ffi::CStr;
use std::fmt;
use std::fs::{self, DirEntry, FileType, ReadDir};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use crate::ignore::IgnoreMatcher;
use crate::model::{mtime_ns_from_parts, FileMeta, RelPath, INTERNAL_PREFIX};

/// What to leave out of a scan besides the built-in rules.
#[derive(Debug, Clone, Copy)]
pub struct ScanOptions<'a> {
    /// The storage's `.ignore` rules.
    pub ignore: &'a IgnoreMatcher,
    /// Absolute paths never indexed (the database and its `-wal`/`-shm`/`-journal` files when
    /// they live inside the storage). Compared with `root` joined with each entry's path, so
    /// give `root` in the same form as these paths.
    pub exclude: &'a [PathBuf],
}

/// What tells a changed entry from an unchanged one besides size and mtime.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StatKey {
    pub ino: u64,
    pub ctime_ns: i64,
}

/// The index of one storage as found on disk.
#[derive(Debug, Default)]
pub struct ScanResult {
    /// Every indexed file and directory, sorted by path (byte order, `RelPath`'s `Ord`).
    pub entries: Vec<FileMeta>,
    /// The stat key of each entry, in the same order.
    pub keys: Vec<StatKey>,
    /// Entries left out because of their kind, name or permissions (not counting ignored,
    /// excluded or internal entries, which are left out on purpose).
    pub skipped: usize,
    /// Relative paths of leftover internal files (names starting with [`INTERNAL_PREFIX`]),
    /// sorted. Plain strings because a `RelPath` cannot name them.
    pub temp_files: Vec<String>,
    /// Paths that exist but could not be looked at (permissions, I/O errors): what is known
    /// of them and of everything below them stands. Left out of `entries`, they would look
    /// deleted, and their deletion would reach every peer.
    pub unreadable: Vec<RelPath>,
}

/// The storage root itself cannot be scanned (missing, not a directory, not readable).
#[derive(Debug)]
pub struct ScanError {
    pub path: PathBuf,
    pub source: io::Error,
}

impl fmt::Display for ScanError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cannot scan {}: {}", self.path.display(), self.source)
    }
}

impl std::error::Error for ScanError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

/// Walks the storage at `root` and returns its index.
///
/// Fails only when `root` itself cannot be listed; problems below the root are logged,
/// counted in [`ScanResult::skipped`] and do not stop the scan.
pub fn scan(root: &Path, opts: &ScanOptions<'_>) -> Result<ScanResult, ScanError> {
    let fail = |source: io::Error| ScanError {
        path: root.to_path_buf(),
        source,
    };
    // The root is followed if it is a symlink: it is chosen by the user in the config, and
    // pointing a storage at a symlinked mount is legitimate. Only entries inside are never
    // followed.
    let meta = fs::metadata(root).map_err(fail)?;
    if !meta.is_dir() {
        return Err(fail(io::Error::from_raw_os_error(libc::ENOTDIR)));
    }
    let mut walker = Walker {
        opts,
        abs: root.to_path_buf(),
        cpath: Vec::new(),
        stack: Vec::new(),
        out: ScanResult::default(),
        // SAFETY: geteuid cannot fail and touches no memory.
        euid: unsafe { libc::geteuid() },
    };
    // Without search permission every lstat below would fail one by one; report it once.
    walker.access(libc::R_OK | libc::X_OK).map_err(fail)?;
    let listing = fs::read_dir(root).map_err(fail)?;
    if !walker.list_dir(None, listing) {
        // What the root holds is not all known: nothing of this scan may stand for it.
        return Err(fail(io::Error::other(
            "listing the storage root stopped part-way",
        )));
    }

    // Explicit stack instead of recursion: a deep tree cannot overflow the thread stack.
    while let Some((rel, mode, key)) = walker.stack.pop() {
        walker.abs = root.join(rel.as_str());
        match fs::read_dir(&walker.abs) {
            Ok(listing) => {
                if !walker.list_dir(Some(&rel), listing) {
                    walker.out.unreadable.push(rel.clone());
                }
                // Indexed only once listed: a directory we cannot list must not look empty
                // to peers, which would then delete its content everywhere.
                walker.out.entries.push(FileMeta::dir(rel, mode));
                walker.out.keys.push(key);
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                log::debug!("{rel} vanished during the scan");
            }
            Err(e) => {
                log::warn!("skipping directory {rel} and everything below it: cannot list it: {e}");
                walker.out.skipped += 1;
                walker.out.unreadable.push(rel);
            }
        }
    }

    let mut out = walker.out;
    let mut pairs: Vec<(FileMeta, StatKey)> = std::mem::take(&mut out.entries)
        .into_iter()
        .zip(std::mem::take(&mut out.keys))
        .collect();
    pairs.sort_unstable_by(|a, b| a.0.path.cmp(&b.0.path));
    (out.entries, out.keys) = pairs.into_iter().unzip();
    out.temp_files.sort_unstable();
    Ok(out)
}

struct Walker<'o, 'a> {
    opts: &'o ScanOptions<'a>,
    /// Absolute path of the entry being looked at; reused so that entries cost no extra
    /// allocation beyond their `RelPath`.
    abs: PathBuf,
    /// NUL-terminated copy of `abs` for `faccessat`, reused for the same reason.
    cpath: Vec<u8>,
    /// Directories still to list, with their permission bits and stat key.
    stack: Vec<(RelPath, u32, StatKey)>,
    out: ScanResult,
    euid: u32,
}

impl Walker<'_, '_> {
    /// Looks at every entry of one directory. `self.abs` must be that directory's path.
    /// Returns false if the listing stopped part-way (the directory's content is not all
    /// known).
    fn list_dir(&mut self, parent: Option<&RelPath>, listing: ReadDir) -> bool {
        for item in listing {
            let entry = match item {
                Ok(entry) => entry,
                Err(e) => {
                    // A failing readdir (I/O error) may keep failing; stop rather than spin.
                    log::warn!(
                        "stopped listing {}: {e}; some entries were not scanned",
                        shown(parent, "")
                    );
                    self.out.skipped += 1;
                    return false;
                }
            };
            let os_name = entry.file_name();
            let Some(name) = os_name.to_str() else {
                log::warn!(
                    "skipping {}: name is not valid UTF-8",
                    shown(parent, &os_name.to_string_lossy())
                );
                self.out.skipped += 1;
                continue;
            };
            self.abs.push(name);
            self.visit(&entry, parent, name);
            self.abs.pop();
        }
        true
    }

    /// Classifies one entry whose absolute path is in `self.abs`.
    fn visit(&mut self, entry: &DirEntry, parent: Option<&RelPath>, name: &str) {
        // Before the internal-name check: an excluded database named like an internal file
        // must never be handed to the caller for deletion.
        if self.opts.exclude.contains(&self.abs) {
            return;
        }
        if name.starts_with(INTERNAL_PREFIX) {
            // The storage's marker is neither indexed nor a leftover.
            if parent.is_none() && name == crate::fsops::MARKER {
                return;
            }
            let rel = match parent {
                Some(p) => format!("{p}/{name}"),
                None => name.to_owned(),
            };
            self.out.temp_files.push(rel);
            return;
        }
        let rel = match parent {
            Some(p) => p.join(name),
            None => RelPath::new(name),
        };
        let rel = match rel {
            Ok(rel) => rel,
            Err(e) => {
                log::warn!("skipping {}: {e}", shown(parent, name));
                self.out.skipped += 1;
                return;
            }
        };
        // DirEntry::metadata is an lstat (fstatat with AT_SYMLINK_NOFOLLOW relative to the
        // open directory): it describes a symlink itself, never its target.
        let meta = match entry.metadata() {
            Ok(meta) => meta,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                log::debug!("{rel} vanished during the scan");
                return;
            }
            Err(e) => {
                log::warn!("skipping {rel}: cannot stat it: {e}");
                self.out.skipped += 1;
                self.out.unreadable.push(rel);
                return;
            }
        };
        let ft = meta.file_type();
        let is_dir = ft.is_dir();
        let key = StatKey {
            ino: meta.ino(),
            ctime_ns: mtime_ns_from_parts(meta.ctime(), meta.ctime_nsec()),
        };
        if self.opts.ignore.matches_entry(&rel, is_dir) {
            return;
        }
        // Root, or the owner with the owner's bits, may: the kernel is asked only when the
        // mode bits cannot tell (half the system calls of a scan otherwise). Were it wrong
        // (an LSM, a network file system's server), reading fails later, which keeps what
        // was known of the path just as a refusal here does.
        let may =
            |need: u32| self.euid == 0 || (meta.uid() == self.euid && meta.mode() & need == need);
        if is_dir {
            // Checked now rather than when listing it, so a directory we could list but not
            // enter (r without x) is reported once instead of once per child.
            let ok = if may(0o500) {
                Ok(())
            } else {
                self.access(libc::R_OK | libc::X_OK)
            };
            match ok {
                Ok(()) => self.stack.push((rel, meta.mode(), key)),
                Err(e) => self.unreadable(rel, "directory", e),
            }
        } else if ft.is_file() {
            let ok = if may(0o400) {
                Ok(())
            } else {
                self.access(libc::R_OK)
            };
            match ok {
                Ok(()) => {
                    // On 32-bit targets std's metadata cuts times to 32 bits (musl).
                    let mtime_ns = crate::fsops::wide_mtime_ns(entry)
                        .unwrap_or_else(|| mtime_ns_from_parts(meta.mtime(), meta.mtime_nsec()));
                    self.out
                        .entries
                        .push(FileMeta::file(rel, meta.len(), mtime_ns, meta.mode()));
                    self.out.keys.push(key);
                }
                Err(e) => self.unreadable(rel, "file", e),
            }
        } else {
            log::info!("skipping {} {rel}", kind_name(ft));
            self.out.skipped += 1;
        }
    }

    fn unreadable(&mut self, rel: RelPath, what: &str, e: io::Error) {
        if e.kind() == io::ErrorKind::NotFound {
            log::debug!("{rel} vanished during the scan");
        } else {
            log::warn!("skipping {what} {rel}: {e}; what is known of it stands");
            self.out.skipped += 1;
            self.out.unreadable.push(rel);
        }
    }

    /// Whether this process may access `self.abs` with `mode`, by its effective ids. Mode
    /// bits alone cannot tell (root, ACLs, supplementary groups), so ask the kernel.
    fn access(&mut self, mode: libc::c_int) -> io::Result<()> {
        self.cpath.clear();
        self.cpath
            .extend_from_slice(self.abs.as_os_str().as_bytes());
        self.cpath.push(0);
        let c = CStr::from_bytes_with_nul(&self.cpath)
            .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        access(c, mode)
    }
}

/// Whether this process may access `path` with `mode` (`libc::R_OK` …), by its effective
/// ids: `faccessat` with `AT_EACCESS`.
pub fn access(path: &CStr, mode: libc::c_int) -> io::Result<()> {
    // SAFETY: `path` is a valid NUL-terminated string that outlives the call.
    let rc = unsafe { libc::faccessat(libc::AT_FDCWD, path.as_ptr(), mode, libc::AT_EACCESS) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn kind_name(ft: FileType) -> &'static str {
    if ft.is_symlink() {
        "symlink"
    } else if ft.is_socket() {
        "socket"
    } else if ft.is_fifo() {
        "FIFO"
    } else if ft.is_block_device() {
        "block device"
    } else if ft.is_char_device() {
        "character device"
    } else {
        "special file"
    }
}

/// A child path for log lines only (allocates, so never on the normal path).
fn shown(parent: Option<&RelPath>, name: &str) -> String {
    match (parent, name.is_empty()) {
        (Some(p), true) => p.to_string(),
        (Some(p), false) => format!("{p}/{name}"),
        (None, true) => "the storage root".to_owned(),
        (None, false) => name.to_owned(),
    }
}
