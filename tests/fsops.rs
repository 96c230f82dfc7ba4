//! Integration tests of the storage file operations (`fsops`) on real temporary trees: atomic
//! replacement, the expected-version guard, temp-file cleanup, and that no path ever leads outside
//! the storage through a symlink.
//!
//! Every test creates its own storage (and, where needed, an "outside" directory that must
//! stay untouched) under the temp directory; none depends on another or on the order.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic in a test is a failed test

mod common;

use std::collections::BTreeMap;
use std::ffi::CString;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use common::TestDir;
use iron_carrier::fsops::{CommitError, Durability, Stat, StatKind, StorageDir};
use iron_carrier::ignore::IgnoreMatcher;
use iron_carrier::model::{RelPath, Version, INTERNAL_PREFIX};
use iron_carrier::scanner::{scan, ScanOptions};

fn rel(s: &str) -> RelPath {
    RelPath::new(s).expect("valid RelPath")
}

fn open(t: &TestDir) -> StorageDir {
    StorageDir::open(t.path()).expect("open storage")
}

/// Writes `data` to `path` through a temp file and commits it.
fn put(
    st: &StorageDir,
    path: &str,
    data: &[u8],
    mode: u32,
    mtime_ns: i64,
    expect: Option<Version>,
) -> Result<(), CommitError> {
    let mut tmp = st.begin_write(&rel(path)).expect("begin_write");
    tmp.write_all(data).expect("write");
    assert_eq!(tmp.written(), data.len() as u64);
    tmp.commit(mode, mtime_ns, expect)
}

fn mtime_ns(path: &Path) -> i64 {
    let m = std::fs::symlink_metadata(path).expect("stat");
    m.mtime() * 1_000_000_000 + m.mtime_nsec()
}

fn mode(path: &Path) -> u32 {
    std::fs::symlink_metadata(path).expect("stat").mode() & 0o7777
}

/// One file of a batch: name, contents, mode, mtime, and the version its target must hold.
type FileSpec = (String, Vec<u8>, u32, i64, Option<Version>);

/// The version of the file at `path` as it is now, as a scan would record it.
fn expect_now(path: &Path) -> Option<Version> {
    let m = std::fs::symlink_metadata(path).expect("stat");
    Some(Version {
        size: m.len(),
        mtime_ns: mtime_ns(path),
    })
}

fn set_mtime(path: &Path, t: SystemTime) {
    let f = std::fs::File::options()
        .write(true)
        .open(path)
        .expect("open fixture");
    f.set_modified(t).expect("set mtime");
}

/// Every internal (temp) name anywhere below `dir`, as paths relative to it.
fn internal_files(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).expect("list") {
            let entry = entry.expect("entry");
            let path = entry.path();
            if entry
                .file_name()
                .to_string_lossy()
                .starts_with(INTERNAL_PREFIX)
            {
                let shown = path.strip_prefix(dir).expect("below dir");
                out.push(shown.display().to_string());
            }
            if entry.file_type().expect("type").is_dir() {
                stack.push(path);
            }
        }
    }
    out.sort();
    out
}

/// Everything below `dir`: file contents, symlink targets, directories, with modes and
/// mtimes, so any change at all shows up as a difference.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).expect("list") {
            let path = entry.expect("entry").path();
            let m = std::fs::symlink_metadata(&path).expect("lstat");
            let what = if m.is_dir() {
                stack.push(path.clone());
                "dir".to_owned()
            } else if m.file_type().is_symlink() {
                format!("link {:?}", std::fs::read_link(&path).expect("readlink"))
            } else {
                format!("file {:?}", std::fs::read(&path).expect("read"))
            };
            let key = path.strip_prefix(dir).expect("below").to_path_buf();
            out.insert(
                key,
                format!("{what} mode {:o} mtime {}", m.mode(), mtime_ns(&path)),
            );
        }
    }
    out
}

/// A directory outside the storage holding a secret file, a subdirectory and a file named
/// like an internal one: the targets an escape would hit.
fn outside_dir() -> TestDir {
    let out = TestDir::new("fsops-outside");
    out.write("secret", b"outside secret");
    out.write("sub/inner", b"inner");
    out.write(".iron-carrier.tmp.victim", b"not ours");
    out
}

#[test]
fn new_file_gets_exact_bytes_mode_and_mtime_and_missing_parents_are_created() {
    let t = TestDir::new("fsops-new");
    let st = open(&t);
    let when = 1_700_000_000_123_456_789;
    put(&st, "a/b/new.txt", b"hello\0world", 0o640, when, None).expect("commit");

    let p = t.join("a/b/new.txt");
    assert_eq!(std::fs::read(&p).unwrap(), b"hello\0world");
    assert_eq!(mode(&p), 0o640);
    assert_eq!(mtime_ns(&p), when);
    assert!(t.join("a").is_dir() && t.join("a/b").is_dir());
    assert_eq!(mode(&t.join("a")), 0o755);
    assert_eq!(mode(&t.join("a/b")), 0o755);
    assert!(internal_files(t.path()).is_empty());
    let got = st.stat(&rel("a/b/new.txt")).unwrap().unwrap();
    assert_eq!(
        Some(got),
        Some(Stat {
            kind: StatKind::File,
            size: 11,
            mtime_ns: when,
            mode: 0o640,
            ..got
        })
    );
}

#[test]
fn setuid_setgid_and_sticky_bits_are_never_applied_and_umask_does_not_apply() {
    let t = TestDir::new("fsops-mode");
    let st = open(&t);
    put(&st, "suid", b"x", 0o4755, 0, None).unwrap();
    put(&st, "all", b"x", 0o7777, 0, None).unwrap();
    // 0o666 survives even under the usual umask 022: the mode is applied with fchmod.
    put(&st, "rw", b"x", 0o666, 0, None).unwrap();
    assert_eq!(mode(&t.join("suid")), 0o755);
    assert_eq!(mode(&t.join("all")), 0o777);
    assert_eq!(mode(&t.join("rw")), 0o666);
}

#[test]
fn mtimes_before_1970_and_with_nanoseconds_are_applied_exactly() {
    let t = TestDir::new("fsops-mtime");
    let st = open(&t);
    for (i, when) in [
        -1i64,
        -86_400_000_000_001,
        -1_000_000_000_000_000_000,
        0,
        1,
        999_999_999,
        1_500_000_000_987_654_321,
    ]
    .into_iter()
    .enumerate()
    {
        let name = format!("f{i}");
        put(&st, &name, b"t", 0o644, when, None).unwrap();
        assert_eq!(mtime_ns(&t.join(&name)), when, "mtime {when}");
        let seen = st.stat(&rel(&name)).unwrap().expect("exists");
        assert_eq!(seen.mtime_ns, when);
    }
}

#[test]
fn commit_with_matching_expect_replaces_the_file_and_leaves_no_temp() {
    let t = TestDir::new("fsops-replace");
    let p = t.write("dir/f.txt", b"old contents");
    let st = open(&t);
    let expect = expect_now(&p);
    put(&st, "dir/f.txt", b"new", 0o600, 42, expect).expect("commit");
    assert_eq!(std::fs::read(&p).unwrap(), b"new");
    assert_eq!(mode(&p), 0o600);
    assert_eq!(mtime_ns(&p), 42);
    assert!(internal_files(t.path()).is_empty());
}

#[test]
fn stale_expect_is_refused_and_keeps_the_old_file() {
    let t = TestDir::new("fsops-stale");
    let p = t.write("f.txt", b"scanned");
    let st = open(&t);
    let scanned = expect_now(&p);

    // Modified after the scan: different size.
    std::fs::write(&p, b"edited by the user").unwrap();
    let err = put(&st, "f.txt", b"from peer", 0o644, 1, scanned).unwrap_err();
    assert!(matches!(err, CommitError::Changed(_)), "{err:?}");
    assert_eq!(std::fs::read(&p).unwrap(), b"edited by the user");
    assert!(internal_files(t.path()).is_empty());

    // Same size, only the mtime differs.
    std::fs::write(&p, b"SCANNED").unwrap();
    set_mtime(&p, SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000));
    let err = put(&st, "f.txt", b"from peer", 0o644, 1, scanned).unwrap_err();
    let CommitError::Changed(found) = err else {
        panic!("expected Changed, got {err:?}");
    };
    assert!(found.contains("7 bytes"), "{found}");
    assert_eq!(std::fs::read(&p).unwrap(), b"SCANNED");
    assert!(internal_files(t.path()).is_empty());

    // Deleted after the scan.
    std::fs::remove_file(&p).unwrap();
    let err = put(&st, "f.txt", b"from peer", 0o644, 1, scanned).unwrap_err();
    assert!(matches!(err, CommitError::Changed(_)), "{err:?}");
    assert!(!p.exists());
    assert!(internal_files(t.path()).is_empty());
}

#[test]
fn expect_absent_but_target_exists_is_refused_and_target_untouched() {
    let t = TestDir::new("fsops-absent");
    let p = t.write("f.txt", b"already here");
    t.mkdir("d");
    let st = open(&t);
    let before = snapshot(t.path());
    let err = put(&st, "f.txt", b"new", 0o644, 1, None).unwrap_err();
    assert!(matches!(err, CommitError::Changed(_)), "{err:?}");
    let err = put(&st, "d", b"new", 0o644, 1, None).unwrap_err();
    let CommitError::Changed(found) = err else {
        panic!("expected Changed, got {err:?}");
    };
    assert!(found.contains("directory"), "{found}");
    assert_eq!(std::fs::read(&p).unwrap(), b"already here");
    assert_eq!(snapshot(t.path()), before);
}

#[test]
fn target_created_after_the_check_is_not_clobbered() {
    // The window between the version check and the rename is too short to hit from a test;
    // this checks the same outcome for a file created after begin_write.
    let t = TestDir::new("fsops-race");
    let st = open(&t);
    let mut tmp = st.begin_write(&rel("f")).unwrap();
    tmp.write_all(b"ours").unwrap();
    t.write("f", b"theirs");
    let err = tmp.commit(0o644, 0, None).unwrap_err();
    assert!(matches!(err, CommitError::Changed(_)), "{err:?}");
    assert_eq!(std::fs::read(t.join("f")).unwrap(), b"theirs");
    assert!(internal_files(t.path()).is_empty());
}

#[test]
fn dropping_or_aborting_a_temp_file_removes_it_and_keeps_the_target() {
    let t = TestDir::new("fsops-drop");
    let p = t.write("sub/f.txt", b"old");
    let st = open(&t);

    let mut tmp = st.begin_write(&rel("sub/f.txt")).unwrap();
    tmp.write_all(b"partial").unwrap();
    let name = tmp.temp_name().to_owned();
    assert!(name.starts_with(INTERNAL_PREFIX), "{name}");
    assert!(t.join("sub").join(&name).exists());
    drop(tmp);
    assert!(internal_files(t.path()).is_empty());
    assert_eq!(std::fs::read(&p).unwrap(), b"old");

    let mut tmp = st.begin_write(&rel("sub/f.txt")).unwrap();
    tmp.write_all(b"partial").unwrap();
    tmp.abort();
    assert!(internal_files(t.path()).is_empty());
    assert_eq!(std::fs::read(&p).unwrap(), b"old");
}

#[test]
fn temp_names_are_internal_distinct_and_next_to_the_target() {
    let t = TestDir::new("fsops-names");
    let st = open(&t);
    let a = st.begin_write(&rel("x/a")).unwrap();
    let b = st.begin_write(&rel("x/a")).unwrap();
    let c = st.begin_write(&rel("top")).unwrap();
    assert_ne!(a.temp_name(), b.temp_name());
    for tmp in [&a, &b, &c] {
        let name = tmp.temp_name();
        assert!(
            name.starts_with(&format!("{INTERNAL_PREFIX}tmp.")),
            "{name}"
        );
        assert!(!name.contains('/'));
    }
    assert!(t.join("x").join(a.temp_name()).is_file());
    assert!(t.join(c.temp_name()).is_file());
    assert_eq!(mode(&t.join(c.temp_name())) & 0o077, 0, "temp is private");
}

#[test]
fn symlink_in_the_middle_of_a_path_never_reaches_outside() {
    let out = outside_dir();
    let t = TestDir::new("fsops-midlink");
    symlink(out.path(), t.join("link")).unwrap();
    t.mkdir("real");
    symlink(out.path(), t.join("real/deeper")).unwrap();
    let st = open(&t);
    let before = snapshot(out.path());

    for p in ["link/x", "link/sub/x", "real/deeper/x", "link/new/dir/x"] {
        assert!(st.begin_write(&rel(p)).is_err(), "begin_write {p}");
    }
    for p in ["link/secret", "link/sub/inner", "real/deeper/secret"] {
        assert!(st.open_read(&rel(p)).is_err(), "open_read {p}");
        // Either an error or "absent" is fine; never the outside file's metadata.
        assert!(!matches!(st.stat(&rel(p)), Ok(Some(_))), "stat {p}");
    }
    for p in ["link/d", "link/sub/d", "real/deeper/d", "link"] {
        assert!(st.create_dir_all(&rel(p), 0o755).is_err(), "mkdir {p}");
    }
    assert!(st.remove_internal("link/.iron-carrier.tmp.victim").is_err());

    assert_eq!(snapshot(out.path()), before, "outside changed");
    // The symlinks themselves are left alone too.
    assert!(std::fs::symlink_metadata(t.join("link"))
        .unwrap()
        .file_type()
        .is_symlink());
    assert!(internal_files(t.path()).is_empty());
}

#[test]
fn final_symlink_is_never_read_nor_written_through() {
    let out = outside_dir();
    let t = TestDir::new("fsops-finallink");
    let secret = out.join("secret");
    symlink(&secret, t.join("target.txt")).unwrap();
    let st = open(&t);
    let before = snapshot(out.path());

    assert!(st.open_read(&rel("target.txt")).is_err());
    assert_eq!(
        st.stat(&rel("target.txt")).unwrap().map(|s| s.kind),
        Some(StatKind::Symlink)
    );
    // What a confused caller might pass: the metadata of the file the link points to.
    let err = put(&st, "target.txt", b"evil", 0o644, 5, expect_now(&secret)).unwrap_err();
    assert!(
        matches!(err, CommitError::Changed(ref s) if s.contains("symlink")),
        "{err:?}"
    );
    let err = put(&st, "target.txt", b"evil", 0o644, 5, None).unwrap_err();
    assert!(matches!(err, CommitError::Changed(_)), "{err:?}");

    assert_eq!(snapshot(out.path()), before, "outside changed");
    assert_eq!(std::fs::read_link(t.join("target.txt")).unwrap(), secret);
    assert!(internal_files(t.path()).is_empty());
}

#[test]
fn parent_that_is_a_regular_file_fails_and_nothing_is_removed() {
    let t = TestDir::new("fsops-fileparent");
    t.write("a/file", b"keep me");
    let st = open(&t);
    let before = snapshot(t.path());
    let err = st.begin_write(&rel("a/file/x")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ENOTDIR), "{err}");
    assert!(st.begin_write(&rel("a/file/deeper/x")).is_err());
    assert!(st.create_dir_all(&rel("a/file/d"), 0o755).is_err());
    assert!(st.create_dir_all(&rel("a/file"), 0o755).is_err());
    assert!(st.open_read(&rel("a/file/x")).is_err());
    assert_eq!(st.stat(&rel("a/file/x")).unwrap(), None);
    assert_eq!(snapshot(t.path()), before);
}

#[test]
fn create_dir_all_creates_nested_dirs_with_mode_and_leaves_existing_ones_alone() {
    let t = TestDir::new("fsops-mkdir");
    let existing = t.mkdir("keep");
    std::fs::set_permissions(&existing, std::fs::Permissions::from_mode(0o700)).unwrap();
    let st = open(&t);

    // 0o777 would come out 0o755 under umask 022 if mkdir's mode were trusted.
    st.create_dir_all(&rel("keep/x/y/z"), 0o4777).unwrap();
    assert_eq!(mode(&existing), 0o700, "existing dir changed");
    assert_eq!(mode(&t.join("keep/x")), 0o755);
    assert_eq!(mode(&t.join("keep/x/y")), 0o755);
    assert_eq!(mode(&t.join("keep/x/y/z")), 0o777);

    // Existing all the way: nothing changes, not even the last one's mode.
    st.create_dir_all(&rel("keep/x/y/z"), 0o700).unwrap();
    assert_eq!(mode(&t.join("keep/x/y/z")), 0o777);
    st.create_dir_all(&rel("single"), 0o750).unwrap();
    assert_eq!(mode(&t.join("single")), 0o750);
    assert_eq!(
        st.stat(&rel("keep/x/y/z"))
            .unwrap()
            .map(|s| (s.kind, s.mode)),
        Some((StatKind::Dir, 0o777))
    );
}

#[test]
fn stat_reports_absence_for_missing_paths_and_kinds_for_others() {
    let t = TestDir::new("fsops-stat");
    t.write("f", b"abc");
    t.mkdir("d");
    symlink("f", t.join("l")).unwrap();
    let fifo = CString::new(t.join("p").as_os_str().as_bytes()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0, "mkfifo");
    let st = open(&t);
    let kind = |p: &str| st.stat(&rel(p)).unwrap().map(|s| s.kind);
    assert_eq!(kind("f"), Some(StatKind::File));
    assert_eq!(kind("d"), Some(StatKind::Dir));
    assert_eq!(kind("l"), Some(StatKind::Symlink));
    assert_eq!(kind("p"), Some(StatKind::Other));
    assert_eq!(kind("missing"), None);
    assert_eq!(kind("missing/deeper/x"), None);
    assert_eq!(kind("f/x"), None);
    assert_eq!(st.stat(&rel("f")).unwrap().unwrap().size, 3);
}

#[test]
fn open_read_reads_regular_files_and_refuses_dirs_and_fifos_without_blocking() {
    let t = TestDir::new("fsops-read");
    let p = t.write("d/f", b"contents");
    set_mtime(&p, SystemTime::UNIX_EPOCH + Duration::new(1_234_567, 890));
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o4640)).unwrap();
    let fifo = CString::new(t.join("fifo").as_os_str().as_bytes()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0, "mkfifo");
    let st = open(&t);

    let (mut f, meta) = st.open_read(&rel("d/f")).unwrap();
    let mut buf = Vec::new();
    f.read_to_end(&mut buf).unwrap();
    assert_eq!(buf, b"contents");
    assert_eq!(
        meta,
        Stat {
            kind: StatKind::File,
            size: 8,
            mtime_ns: 1_234_567_000_000_890,
            mode: 0o640,
            ..meta
        }
    );
    assert!(st.open_read(&rel("d")).is_err());
    // Would hang forever without O_NONBLOCK, since nobody writes to the FIFO.
    assert!(st.open_read(&rel("fifo")).is_err());
    assert_eq!(
        st.open_read(&rel("missing")).unwrap_err().kind(),
        std::io::ErrorKind::NotFound
    );
}

#[test]
fn remove_internal_removes_only_internal_files_reached_without_symlinks() {
    let out = outside_dir();
    let t = TestDir::new("fsops-rmint");
    t.write("a/b/.iron-carrier.tmp.x", b"leftover");
    t.write(".iron-carrier.tmp.top", b"leftover");
    t.write("a/normal.txt", b"user data");
    t.mkdir("a/.iron-carrier.dir");
    symlink(out.path(), t.join("link")).unwrap();
    let st = open(&t);
    let outside_before = snapshot(out.path());

    st.remove_internal("a/b/.iron-carrier.tmp.x").unwrap();
    st.remove_internal(".iron-carrier.tmp.top").unwrap();
    assert!(!t.join("a/b/.iron-carrier.tmp.x").exists());
    assert!(!t.join(".iron-carrier.tmp.top").exists());

    for bad in [
        "a/normal.txt",
        "normal.txt",
        "../x",
        "../.iron-carrier.tmp.x",
        "/etc/x",
        "/.iron-carrier.tmp.x",
        "a//.iron-carrier.tmp.x",
        "a/../.iron-carrier.tmp.x",
        "",
        "a/",
    ] {
        let err = st.remove_internal(bad).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput, "{bad:?}");
    }
    // Well formed, but the walk meets a symlink: refused by the kernel, not followed.
    assert!(st.remove_internal("link/.iron-carrier.tmp.victim").is_err());
    // Directories are never removed.
    assert!(st.remove_internal("a/.iron-carrier.dir").is_err());
    assert!(t.join("a/.iron-carrier.dir").is_dir());
    assert!(t.join("a/normal.txt").is_file());
    assert_eq!(snapshot(out.path()), outside_before);
}

#[test]
fn free_space_is_reported() {
    let t = TestDir::new("fsops-free");
    assert!(open(&t).free_space().unwrap() > 0);
}

#[test]
fn large_file_written_in_chunks_commits_with_the_right_size_and_bytes() {
    let t = TestDir::new("fsops-large");
    let st = open(&t);
    let mut tmp = st.begin_write(&rel("big.bin")).unwrap();
    let mut chunk = vec![0u8; 64 * 1024];
    for i in 0..128u32 {
        chunk.fill((i % 251) as u8);
        chunk[..4].copy_from_slice(&i.to_le_bytes());
        tmp.write_all(&chunk).unwrap();
    }
    assert_eq!(tmp.written(), 8 * 1024 * 1024);
    tmp.commit(0o644, 7, None).unwrap();

    let (mut f, meta) = st.open_read(&rel("big.bin")).unwrap();
    assert_eq!(meta.size, 8 * 1024 * 1024);
    let mut all = Vec::new();
    f.read_to_end(&mut all).unwrap();
    for (i, c) in all.chunks(64 * 1024).enumerate() {
        assert_eq!(&c[..4], &(i as u32).to_le_bytes());
        assert!(c[4..].iter().all(|&b| b == (i % 251) as u8), "chunk {i}");
    }
}

#[test]
fn killed_writer_leaves_old_contents_and_a_temp_the_scanner_reports_for_removal() {
    let t = TestDir::new("fsops-crash");
    let p = t.write("docs/report.txt", b"old complete contents");
    let st = open(&t);

    let mut tmp = st.begin_write(&rel("docs/report.txt")).unwrap();
    tmp.write_all(b"new contents, first ha").unwrap();
    let leftover = format!("docs/{}", tmp.temp_name());
    // A kill: no Drop, no cleanup.
    std::mem::forget(tmp);

    assert_eq!(std::fs::read(&p).unwrap(), b"old complete contents");
    assert_eq!(internal_files(t.path()), vec![leftover.clone()]);

    let ignore = IgnoreMatcher::empty();
    let opts = ScanOptions {
        ignore: &ignore,
        exclude: &[],
    };
    let res = scan(t.path(), &opts).expect("scan");
    assert_eq!(res.temp_files, vec![leftover.clone()]);
    assert!(res
        .entries
        .iter()
        .all(|e| !e.path.as_str().contains(INTERNAL_PREFIX)));

    for temp in &res.temp_files {
        st.remove_internal(temp).unwrap();
    }
    assert!(internal_files(t.path()).is_empty());
    assert_eq!(std::fs::read(&p).unwrap(), b"old complete contents");
    assert!(scan(t.path(), &opts).unwrap().temp_files.is_empty());
}

#[test]
fn storage_root_must_be_a_directory_but_may_be_a_symlink() {
    let t = TestDir::new("fsops-root");
    let file = t.write("plain", b"x");
    assert!(StorageDir::open(&file).is_err());
    assert!(StorageDir::open(&t.join("missing")).is_err());
    let real = t.mkdir("real");
    symlink(&real, t.join("via-link")).unwrap();
    let st = StorageDir::open(&t.join("via-link")).unwrap();
    assert_eq!(st.path(), t.join("via-link"));
    put(&st, "f", b"through the root link", 0o644, 0, None).unwrap();
    assert_eq!(
        std::fs::read(real.join("f")).unwrap(),
        b"through the root link"
    );
}

#[test]
fn commit_error_displays_what_was_found() {
    let e = CommitError::Changed("a directory".to_owned());
    assert!(e.to_string().contains("a directory"));
    let io = CommitError::from(std::io::Error::from_raw_os_error(libc::ENOSPC));
    assert!(matches!(io, CommitError::Io(_)));
    assert!(std::error::Error::source(&io).is_some());
}

#[test]
fn a_batch_commits_each_file_like_commit_and_refuses_only_the_stale_one() {
    // With syncfs trusted (Linux 5.8+), syncfs then fsyncs for the errors (older kernels),
    // and fsyncs alone (small batches).
    batch_commit_case(Durability::Syncfs);
    batch_commit_case(Durability::SyncfsThenFsync);
    batch_commit_case(Durability::Fsync);
}

fn batch_commit_case(how: Durability) {
    let t = TestDir::new("fsops-batch");
    let st = open(&t);
    std::fs::write(t.path().join("old.txt"), b"old").unwrap();
    let old_expect = expect_now(&t.path().join("old.txt"));
    std::fs::write(t.path().join("stale.txt"), b"theirs").unwrap();
    let stale_expect = Some(Version {
        size: 6,
        mtime_ns: 1,
    });
    std::fs::write(t.path().join("taken.txt"), b"someone else's").unwrap();

    // (path, new contents, mode, mtime, what the caller believes is there)
    let files: Vec<FileSpec> = (0..100)
        .map(|i| {
            (
                format!("d{}/f{i}.bin", i % 7),
                vec![i as u8; 100 + i * 37],
                0o600 + (i as u32 % 2) * 0o044,
                1_600_000_000_000_000_000 + i as i64 * 1_000_000_007,
                None,
            )
        })
        .chain([
            ("old.txt".into(), b"new".to_vec(), 0o644, 7, old_expect),
            ("stale.txt".into(), b"ours".to_vec(), 0o644, 7, stale_expect),
            ("taken.txt".into(), b"ours".to_vec(), 0o644, 7, None),
        ])
        .collect();
    let batch: Vec<_> = files
        .iter()
        .map(|(path, data, mode, mtime, expect)| {
            let mut tmp = st.begin_write(&rel(path)).expect("begin_write");
            tmp.write_all(data).expect("write");
            tmp.prepare(*mode, *mtime, *expect).expect("prepare")
        })
        .collect();
    // Nothing is in place before the commit.
    assert!(!t.path().join("d0/f0.bin").exists());
    assert_eq!(std::fs::read(t.path().join("old.txt")).unwrap(), b"old");

    let results = iron_carrier::fsops::commit_batch_with(batch, how);
    assert_eq!(results.len(), files.len());
    for ((path, data, m, mtime, _), r) in files.iter().zip(&results) {
        let p = t.path().join(path);
        match path.as_str() {
            "stale.txt" | "taken.txt" => {
                assert!(matches!(r, Err(CommitError::Changed(_))), "{path}: {r:?}");
            }
            _ => {
                assert!(r.is_ok(), "{path}: {r:?}");
                assert_eq!(&std::fs::read(&p).unwrap(), data, "{path}");
                assert_eq!(mode(&p), *m, "{path}");
                assert_eq!(mtime_ns(&p), *mtime, "{path}");
            }
        }
    }
    // The refused ones keep what was there; no temp file is left anywhere.
    assert_eq!(
        std::fs::read(t.path().join("stale.txt")).unwrap(),
        b"theirs"
    );
    assert_eq!(
        std::fs::read(t.path().join("taken.txt")).unwrap(),
        b"someone else's"
    );
    assert_eq!(internal_files(t.path()), Vec::<String>::new());
}

#[test]
fn dropping_a_prepared_file_removes_its_temp_and_keeps_the_target() {
    let t = TestDir::new("fsops-prepared-drop");
    let st = open(&t);
    std::fs::write(t.path().join("a.txt"), b"old").unwrap();
    let expect = expect_now(&t.path().join("a.txt"));
    let mut tmp = st.begin_write(&rel("a.txt")).expect("begin_write");
    tmp.write_all(b"new").unwrap();
    let prepared = tmp.prepare(0o644, 5, expect).expect("prepare");
    assert_eq!(
        internal_files(t.path()),
        vec![prepared.temp_name().to_owned()]
    );
    drop(prepared);
    assert_eq!(internal_files(t.path()), Vec::<String>::new());
    assert_eq!(std::fs::read(t.path().join("a.txt")).unwrap(), b"old");
}

/// Regression: the marker's comment lines made its id unreadable, so the second run of
/// every storage refused to synchronize ("marker file is missing").
#[test]
fn the_storage_marker_reads_back_and_is_neither_indexed_nor_a_leftover() {
    let t = TestDir::new("fsops-marker");
    let st = open(&t);
    assert_eq!(st.read_marker().unwrap(), None);
    st.write_marker(0x0123_4567_89ab_cdef).unwrap();
    assert_eq!(st.read_marker().unwrap(), Some(0x0123_4567_89ab_cdef));
    st.write_marker(7).unwrap();
    assert_eq!(st.read_marker().unwrap(), Some(7));
    let ignore = IgnoreMatcher::empty();
    let scanned = scan(
        t.path(),
        &ScanOptions {
            ignore: &ignore,
            exclude: &[],
        },
    )
    .unwrap();
    assert!(scanned.entries.is_empty(), "{:?}", scanned.entries);
    assert!(scanned.temp_files.is_empty(), "{:?}", scanned.temp_files);
}
