//! Real faults under real processes: a receiver's disk that fills up (a small tmpfs) and a
//! storage it may not write. Each time the failed files fail with a clear reason, the rest
//! of the session goes on, the run ends at once instead of waiting out a timeout, the sender
//! is untouched, nothing is deleted, and the next session, once the fault is gone, finishes
//! the job.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic in a test is a failed test

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{
    manifest, oneshot_within, pair_configs, show, write_random, Daemon, TestDir, PATIENCE,
};

/// A tmpfs of `size` mounted on a directory, unmounted when dropped.
struct Mount(PathBuf);

impl Mount {
    fn tmpfs(at: &Path, size: &str) -> Mount {
        let st = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .status()
            .expect("run mount");
        assert!(st.success(), "mount a tmpfs at {}", at.display());
        Mount(at.to_path_buf())
    }

    fn remount(&self, opts: &str) {
        let st = Command::new("mount")
            .args(["-o", &format!("remount,{opts}")])
            .arg(&self.0)
            .status()
            .expect("run mount");
        assert!(st.success(), "remount {} with {opts}", self.0.display());
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Node a (a one-shot run) has three files too big for node b's 3 MiB disk and a few small
/// ones. The run must end well before any session timeout (120 s), report the failures,
/// deliver the small files, and change nothing on a. Once b has room, the next run moves
/// the rest.
#[test]
fn a_full_disk_fails_those_files_at_once_and_the_next_session_finishes() {
    let dir = TestDir::new("disk-full");
    let (a, b) = pair_configs(&dir, "disk-full");
    let b_root = dir.join("b");
    let _mount = Mount::tmpfs(&b_root, "3m");
    for i in 0..3 {
        write_random(&dir.join(&format!("a/big-{i}.bin")), 2 * 1024 * 1024, i);
    }
    for i in 0..20 {
        dir.write(
            &format!("a/small/{i:02}.txt"),
            format!("small {i}\n").as_bytes(),
        );
    }
    let a_before = manifest(&dir.join("a"));
    let a_cfg = a.write(&dir.mkdir("cfg-a"));
    let daemon = Daemon::start(&b.write(&dir.mkdir("cfg-b")));

    // Far below the session timeout: a refused file ends its part of the session at once.
    let out = oneshot_within(&a_cfg, Duration::from_secs(100));
    let text = show(&out);
    assert_eq!(out.status.code(), Some(1), "{text}\n{}", daemon.log());
    assert!(
        text.contains("No space left on device") || text.contains("not enough space"),
        "the summary does not say why:\n{text}"
    );
    assert_eq!(manifest(&dir.join("a")), a_before, "the sender changed");
    let b_now = manifest(&b_root);
    for i in 0..20 {
        assert!(
            b_now.contains_key(&format!("small/{i:02}.txt")),
            "small/{i:02}.txt did not arrive:\n{text}\n{}",
            daemon.log()
        );
    }
    let arrived = (0..3)
        .filter(|i| b_now.contains_key(&format!("big-{i}.bin")))
        .count();
    assert!(arrived < 3, "three 2 MiB files cannot fit in 3 MiB");
    assert!(
        !b_now.keys().any(|k| k.contains(".iron-carrier.tmp")),
        "a temporary file was left behind: {b_now:?}"
    );
    assert!(
        daemon.log().contains("No space left on device")
            || daemon.log().contains("not enough space"),
        "the receiver's log does not say why:\n{}",
        daemon.log()
    );

    // Room again: the next session moves what is missing.
    _mount.remount("size=16m");
    let out = oneshot_within(&a_cfg, PATIENCE);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}\n{}",
        show(&out),
        daemon.log()
    );
    let want: Vec<_> = a_before.iter().collect();
    let got = manifest(&b_root);
    for (k, v) in want {
        assert_eq!(got.get(k), Some(v), "{k} differs after the retry");
    }
    drop(daemon);
}
