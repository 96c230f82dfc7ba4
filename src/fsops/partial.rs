//! Partial files: what arrived of a transfer that was interrupted (a connection lost, a
//! session abandoned, the daemon stopped), kept next to its target so that the next
//! transfer of that very version resumes instead of starting over.
//!
//! A partial is named after its target's name and the version it is a prefix of (size and
//! mtime), so it can only ever be offered for that version, and its name starts with
//! [`INTERNAL_PREFIX`]: the scanner never indexes it. The temporary file of a transfer that
//! may be resumed carries the same key at the end of its name, so that what a killed
//! receiver left behind becomes a partial at its next scan ([`StorageDir::promote_leftover`])
//! instead of being removed. Its contents are never trusted: they
//! go into a new temporary file whose whole-file hash is checked before anything is
//! committed, exactly as for bytes from the network. A partial the scan finds older than
//! [`PARTIAL_KEEP`] is removed like any leftover.

use std::fs::File;
use std::io;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::{
    cstring, is_absent, next_temp_name, open_at, rename_at, split_parent, stat_at, unlink_at,
    StatKind, StorageDir, TempFile,
};
use crate::model::{FileMeta, RelPath, INTERNAL_PREFIX};

/// A partial file the next transfer has not resumed within this is removed by a scan.
pub const PARTIAL_KEEP: Duration = Duration::from_secs(24 * 3600);

/// What every partial's name starts with (after [`INTERNAL_PREFIX`]).
const PART_TAG: &str = "part.";
/// Hex digits of a partial's key.
const KEY_LEN: usize = 20;

/// The name, within its target's directory, of the partial of `meta`'s version.
fn partial_name(meta: &FileMeta) -> String {
    format!("{INTERNAL_PREFIX}{PART_TAG}{}", key(meta))
}

/// The key of `meta`'s version: hex of BLAKE3 over the target's name, size and mtime.
fn key(meta: &FileMeta) -> String {
    let (_, name) = split_parent(meta.path.as_str());
    let mut h = blake3::Hasher::new();
    h.update(name.as_bytes());
    h.update(&meta.size.to_le_bytes());
    h.update(&meta.mtime_ns.to_le_bytes());
    let key = h.finalize();
    key.as_bytes()[..KEY_LEN / 2]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The key a leftover temporary file's name ends with (`.<key>`), if it was a transfer that
/// may be resumed. Plain temporary names end with 6 hex digits, never 20.
fn leftover_key(name: &str) -> Option<&str> {
    let rest = name.strip_prefix(INTERNAL_PREFIX)?.strip_prefix("tmp.")?;
    let (_, key) = rest.rsplit_once('.')?;
    (key.len() == KEY_LEN && key.bytes().all(|b| b.is_ascii_hexdigit())).then_some(key)
}

/// Whether a leftover internal file (a `/`-separated path from the scanner) is a partial.
pub fn is_partial(rel: &str) -> bool {
    let (_, name) = split_parent(rel);
    name.strip_prefix(INTERNAL_PREFIX)
        .is_some_and(|n| n.starts_with(PART_TAG))
}

impl StorageDir {
    /// Starts writing `meta`'s version as [`StorageDir::begin_write`] does, in a temporary
    /// file whose name carries the version's key (see the module doc).
    pub fn begin_resumable(&self, meta: &FileMeta) -> io::Result<TempFile> {
        self.begin_write_tagged(&meta.path, &format!(".{}", key(meta)))
    }

    /// A leftover internal file at `rel` (from the scanner) that was a transfer which may be
    /// resumed, of at least `min` bytes, becomes the partial of its version (replacing an
    /// older one): true. False if it is no such file (the caller removes it as usual).
    pub fn promote_leftover(&self, rel: &str, min: u64) -> io::Result<bool> {
        let (parent, name) = split_parent(rel);
        let Some(key) = leftover_key(name) else {
            return Ok(false);
        };
        if let Some(p) = parent {
            RelPath::new(p).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        }
        let dir = self.walk(parent, None)?;
        let from = cstring(name)?;
        let st = stat_at(&dir, &from)?;
        if st.kind != StatKind::File || st.size < min {
            return Ok(false);
        }
        let to = cstring(&format!("{INTERNAL_PREFIX}{PART_TAG}{key}"))?;
        // An older partial that holds more is worth more.
        if stat_at(&dir, &to).is_ok_and(|old| old.size >= st.size) {
            return Ok(false);
        }
        rename_at(&dir, &from, &to)?;
        Ok(true)
    }

    /// The partial kept for `meta`'s version, opened for reading, with its length; `None`
    /// if there is none (or its directory does not exist yet).
    pub fn open_partial(&self, meta: &FileMeta) -> io::Result<Option<(File, u64)>> {
        let (parent, _) = split_parent(meta.path.as_str());
        let dir = match self.walk(parent, None) {
            Ok(d) => d,
            Err(e) if is_absent(&e) => return Ok(None),
            Err(e) => return Err(e),
        };
        let name = cstring(&partial_name(meta))?;
        let fd = match open_at(&dir, &name, libc::O_RDONLY | libc::O_NONBLOCK, 0) {
            Ok(fd) => fd,
            Err(e) if is_absent(&e) => return Ok(None),
            Err(e) => return Err(e),
        };
        let file = File::from(fd);
        let st = super::stat_file(&file)?;
        if st.kind != StatKind::File {
            return Ok(None);
        }
        Ok(Some((file, st.size)))
    }

    /// Makes the partial of `meta`'s version the temporary file of its transfer, cut to its
    /// first `len` bytes and open to append the rest: what was kept is not written again (a
    /// partial of gigabytes on an SD card would cost minutes and their wear), and the disk
    /// holds it once.
    pub fn adopt_partial(&self, meta: &FileMeta, len: u64) -> io::Result<TempFile> {
        use std::io::{Seek, SeekFrom};
        let (parent, name) = split_parent(meta.path.as_str());
        let dir = self.walk(parent, None)?;
        let part = cstring(&partial_name(meta))?;
        let temp_name = next_temp_name();
        let temp_c = cstring(&temp_name)?;
        // The name is this process's own (pid and counter): nothing of anyone's is there.
        rename_at(&dir, &part, &temp_c)?;
        let mut t = TempFile {
            file: File::from(open_at(&dir, &temp_c, libc::O_WRONLY, 0)?),
            dir,
            temp_name,
            temp_c,
            target: cstring(name)?,
            written: len,
            writeback_from: len,
            live: true,
            opened: std::time::Instant::now(),
        };
        // From here on, dropping `t` removes it, as any temporary file.
        t.file.set_len(len)?;
        t.file.seek(SeekFrom::Start(len))?;
        Ok(t)
    }

    /// Removes the partial of `meta`'s version, if there is one.
    pub fn remove_partial(&self, meta: &FileMeta) -> io::Result<()> {
        let (parent, _) = split_parent(meta.path.as_str());
        let dir = match self.walk(parent, None) {
            Ok(d) => d,
            Err(e) if is_absent(&e) => return Ok(()),
            Err(e) => return Err(e),
        };
        match unlink_at(&dir, &cstring(&partial_name(meta))?) {
            Err(e) if !is_absent(&e) => Err(e),
            _ => Ok(()),
        }
    }

    /// How long ago the partial at `rel` (a path [`is_partial`] accepted) was last written.
    pub fn partial_age(&self, rel: &str) -> io::Result<Duration> {
        let (parent, name) = split_parent(rel);
        if let Some(p) = parent {
            RelPath::new(p).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        }
        let dir = self.walk(parent, None)?;
        let st = stat_at(&dir, &cstring(name)?)?;
        let mtime = UNIX_EPOCH + Duration::from_nanos(st.mtime_ns.max(0) as u64);
        Ok(SystemTime::now()
            .duration_since(mtime)
            .unwrap_or(Duration::ZERO))
    }
}

impl TempFile {
    /// Keeps what was written as the partial of `meta`'s version (replacing an older one),
    /// made durable first so that a partial never holds bytes that did not reach the disk.
    pub fn park(mut self, meta: &FileMeta) -> io::Result<()> {
        self.file.sync_data()?;
        let part = cstring(&partial_name(meta))?;
        rename_at(&self.dir, &self.temp_c, &part)?;
        self.live = false;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn meta(path: &str, size: u64, mtime_ns: i64) -> FileMeta {
        FileMeta {
            path: RelPath::new(path).unwrap(),
            kind: crate::model::EntryKind::File,
            size,
            mtime_ns,
            mode: 0o644,
        }
    }

    #[test]
    fn a_parked_temp_file_is_found_again_only_for_its_own_version() {
        let root = std::env::temp_dir().join(format!("ic-partial-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).unwrap();
        let dir = StorageDir::open(&root).unwrap();
        let m = meta("a/b/big.bin", 1 << 20, 1_700_000_000_000_000_000);
        assert!(dir.open_partial(&m).unwrap().is_none(), "no directory yet");
        let mut t = dir.begin_write(&m.path).unwrap();
        t.write_all(b"first part").unwrap();
        t.park(&m).unwrap();
        let (mut f, len) = dir.open_partial(&m).unwrap().expect("the partial is there");
        assert_eq!(len, 10);
        let mut got = String::new();
        f.read_to_string(&mut got).unwrap();
        assert_eq!(got, "first part");
        // Another version of the same path, or another name, never sees it.
        assert!(dir
            .open_partial(&meta("a/b/big.bin", 1 << 20, 1))
            .unwrap()
            .is_none());
        assert!(dir
            .open_partial(&meta("a/b/other.bin", 1 << 20, m.mtime_ns))
            .unwrap()
            .is_none());
        // The scanner reports it as internal, and it is recognised as a partial, young.
        let listed: Vec<String> = std::fs::read_dir(root.join("a/b"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(listed.len(), 1, "only the partial: {listed:?}");
        assert!(listed[0].starts_with(INTERNAL_PREFIX));
        let rel = format!("a/b/{}", listed[0]);
        assert!(is_partial(&rel));
        assert!(!is_partial("a/b/.iron-carrier.tmp.1.2.abc"));
        assert!(dir.partial_age(&rel).unwrap() < PARTIAL_KEEP);
        dir.remove_partial(&m).unwrap();
        assert!(dir.open_partial(&m).unwrap().is_none());
        dir.remove_partial(&m).unwrap();

        // Adopted: the first bytes kept, the rest appended, committed as the target.
        let mut t = dir.begin_write(&m.path).unwrap();
        t.write_all(b"0123456789").unwrap();
        t.park(&m).unwrap();
        let mut t = dir.adopt_partial(&m, 4).unwrap();
        assert!(
            dir.open_partial(&m).unwrap().is_none(),
            "renamed, not copied"
        );
        t.write_all(b"abc").unwrap();
        assert_eq!(t.written(), 7);
        t.commit(m.mode, m.mtime_ns, None).unwrap();
        assert_eq!(std::fs::read(root.join("a/b/big.bin")).unwrap(), b"0123abc");
        // An adopted file dropped before its commit is removed like any temporary file.
        let mut t = dir.begin_write(&m.path).unwrap();
        t.write_all(b"xyz").unwrap();
        t.park(&m).unwrap();
        drop(dir.adopt_partial(&m, 3).unwrap());
        let left: Vec<_> = std::fs::read_dir(root.join("a/b")).unwrap().collect();
        assert_eq!(left.len(), 1, "only big.bin: {left:?}");

        // What a killed receiver left: promoted to the partial of its version if large
        // enough, and only a resumable temporary file ever is.
        let mut t = dir.begin_resumable(&m).unwrap();
        t.write_all(b"kept after a kill").unwrap();
        let leftover = format!("a/b/{}", t.temp_name());
        std::mem::forget(t);
        assert!(
            !dir.promote_leftover(&leftover, 1 << 20).unwrap(),
            "too small"
        );
        assert!(dir.promote_leftover(&leftover, 4).unwrap());
        let (_, len) = dir.open_partial(&m).unwrap().expect("promoted");
        assert_eq!(len, 17);
        let plain = dir.begin_write(&m.path).unwrap();
        let plain_name = format!("a/b/{}", plain.temp_name());
        assert!(!dir.promote_leftover(&plain_name, 0).unwrap());
        drop(plain);
        std::fs::remove_dir_all(&root).unwrap();
    }
}
