//! What history asks of a storage besides writing received files: deleting a file only if
//! it is still the version that was deleted elsewhere, removing a directory only if it is
//! empty, renaming a file only if it is still the expected version and only onto nothing
//! (a move replayed, a conflict copy), and the storage's marker file. Every step walks from
//! the root without following symlinks and is durable (its directories fsynced) before it
//! returns, so the history records it only once it cannot be lost.

use std::ffi::CString;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};

use super::{
    cstring, describe, fsync_fd, is_absent, open_at, retry, split_parent, stat_at, unlink_at,
    CommitError, Stat, StatKind, StorageDir, NEW_DIR_MODE,
};
use crate::model::{RelPath, Version, INTERNAL_PREFIX};

/// The marker at a storage's root: its presence (with the right id) proves the root is the
/// storage that was synchronized before, not an empty mount point.
pub const MARKER: &str = ".iron-carrier.storage";

impl StorageDir {
    /// Deletes the file at `path` if it still holds `expect`; a path already gone is fine.
    pub fn remove_file(&self, path: &RelPath, expect: Version) -> Result<(), CommitError> {
        let (parent, name) = split_parent(path.as_str());
        let dir = match self.walk(parent, None) {
            Ok(d) => d,
            Err(e) if is_absent(&e) => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        let name = cstring(name)?;
        match stat_at(&dir, &name) {
            Ok(st) if st.version() == Some(expect) => {}
            Ok(st) => return Err(CommitError::Changed(describe(Some(st)))),
            Err(e) if is_absent(&e) => return Ok(()),
            Err(e) => return Err(e.into()),
        }
        unlink_at(&dir, &name)?;
        fsync_fd(&dir)?;
        Ok(())
    }

    /// Removes the directory `path` if it is empty. `Ok(false)`: it still holds something
    /// (kept). A directory already gone is fine.
    pub fn remove_dir(&self, path: &RelPath) -> io::Result<bool> {
        let (parent, name) = split_parent(path.as_str());
        let dir = match self.walk(parent, None) {
            Ok(d) => d,
            Err(e) if is_absent(&e) => return Ok(true),
            Err(e) => return Err(e),
        };
        let name = cstring(name)?;
        match stat_at(&dir, &name) {
            Ok(st) if st.kind == StatKind::Dir => {}
            Ok(_) => return Ok(false),
            Err(e) if is_absent(&e) => return Ok(true),
            Err(e) => return Err(e),
        }
        // SAFETY: `dir` is open and `name` a valid NUL-terminated string; AT_REMOVEDIR
        // removes only an empty directory.
        match retry(|| unsafe {
            libc::unlinkat(dir.as_raw_fd(), name.as_ptr(), libc::AT_REMOVEDIR)
        }) {
            Ok(_) => {
                fsync_fd(&dir)?;
                Ok(true)
            }
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOTEMPTY | libc::EEXIST)) => Ok(false),
            Err(e) if is_absent(&e) => Ok(true),
            Err(e) => Err(e),
        }
    }

    /// Renames the file `from`, which must hold `expect`, to `to`, which must not exist
    /// (missing parents are created). Returns what is at `to` then.
    pub fn rename_file(
        &self,
        from: &RelPath,
        to: &RelPath,
        expect: Version,
    ) -> Result<Stat, CommitError> {
        let (fparent, fname) = split_parent(from.as_str());
        let (tparent, tname) = split_parent(to.as_str());
        let fdir = self.walk(fparent, None)?;
        let tdir = self.walk(tparent, Some(NEW_DIR_MODE))?;
        let (fname, tname) = (cstring(fname)?, cstring(tname)?);
        match stat_at(&fdir, &fname) {
            Ok(st) if st.version() == Some(expect) => {}
            Ok(st) => return Err(CommitError::Changed(describe(Some(st)))),
            Err(e) if is_absent(&e) => return Err(CommitError::Changed(describe(None))),
            Err(e) => return Err(e.into()),
        }
        rename_noreplace(&fdir, &fname, &tdir, &tname)?;
        fsync_fd(&tdir)?;
        if fparent != tparent {
            fsync_fd(&fdir)?;
        }
        Ok(stat_at(&tdir, &tname)?)
    }

    /// Creates directory `path` (and missing parents) and returns what it is then.
    pub fn make_dir(&self, path: &RelPath, mode: u32) -> io::Result<Stat> {
        self.create_dir_all(path, mode)?;
        self.stat(path)?
            .ok_or_else(|| io::Error::from_raw_os_error(libc::ENOENT))
    }

    /// The storage id in the root's marker, if there is a readable one.
    pub fn read_marker(&self) -> io::Result<Option<u64>> {
        let name = cstring(MARKER)?;
        let fd = match open_at(&self.fd, &name, libc::O_RDONLY | libc::O_NONBLOCK, 0) {
            Ok(fd) => fd,
            Err(e) if is_absent(&e) => return Ok(None),
            Err(e) => return Err(e),
        };
        let mut text = String::new();
        std::fs::File::from(fd)
            .take(256)
            .read_to_string(&mut text)?;
        // The first line names the id; comments follow it.
        Ok(text
            .lines()
            .next()
            .and_then(|l| l.trim().strip_prefix("iron-carrier storage "))
            .and_then(|id| u64::from_str_radix(id.trim(), 16).ok()))
    }

    /// Writes the root's marker with `id`, durably (temp, fsync, rename, fsync the root).
    pub fn write_marker(&self, id: u64) -> io::Result<()> {
        let temp = cstring(&format!("{INTERNAL_PREFIX}storage.new"))?;
        let fd: OwnedFd = open_at(
            &self.fd,
            &temp,
            libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC,
            0o644,
        )?;
        let mut f = std::fs::File::from(fd);
        writeln!(
            f,
            "iron-carrier storage {id:016x}\n# This file tells iron-carrier that this folder is the storage it synchronized\n# before (and not, say, an empty mount point). Do not delete it."
        )?;
        f.sync_all()?;
        let name: CString = cstring(MARKER)?;
        // SAFETY: the root is open and both names are valid NUL-terminated strings.
        retry(|| unsafe {
            libc::renameat(
                self.fd.as_raw_fd(),
                temp.as_ptr(),
                self.fd.as_raw_fd(),
                name.as_ptr(),
            )
        })?;
        fsync_fd(&self.fd)
    }

    /// The device of the storage root (a root on another file system than before is not
    /// the storage it was).
    pub fn root_dev(&self) -> io::Result<u64> {
        use std::os::unix::fs::MetadataExt;
        Ok(std::fs::File::from(self.fd.try_clone()?).metadata()?.dev())
    }
}

/// `renameat2(RENAME_NOREPLACE)`, or a check and a plain rename where the kernel or file
/// system lacks it.
fn rename_noreplace(
    fdir: &OwnedFd,
    from: &CString,
    tdir: &OwnedFd,
    to: &CString,
) -> Result<(), CommitError> {
    let flags: libc::c_uint = libc::RENAME_NOREPLACE;
    // SAFETY: both names are valid NUL-terminated strings that outlive the call, both
    // descriptors are open, and SYS_renameat2 takes exactly these five arguments.
    let res = retry(|| unsafe {
        libc::syscall(
            libc::SYS_renameat2,
            fdir.as_raw_fd(),
            from.as_ptr(),
            tdir.as_raw_fd(),
            to.as_ptr(),
            flags,
        )
    });
    match res {
        Ok(_) => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {
            Err(CommitError::Changed(describe(stat_at(tdir, to).ok())))
        }
        Err(e) if matches!(e.raw_os_error(), Some(libc::EINVAL | libc::ENOSYS)) => {
            if stat_at(tdir, to).is_ok() {
                return Err(CommitError::Changed(describe(stat_at(tdir, to).ok())));
            }
            // SAFETY: as above.
            retry(|| unsafe {
                libc::renameat(
                    fdir.as_raw_fd(),
                    from.as_ptr(),
                    tdir.as_raw_fd(),
                    to.as_ptr(),
                )
            })?;
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}
