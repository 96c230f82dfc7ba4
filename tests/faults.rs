//! Real faults under real processes: a receiver's disk that fills up (a small tmpfs), a
//! storage remounted read-only, a directory it may not write, a full disk under its
//! database, and a FAT storage whose mtimes are rounded to 2 s. Each time the failed files
//! fail with a clear reason, the rest of the session goes on, the run ends at once instead
//! of waiting out a timeout, the sender is untouched, nothing is deleted, and the next
//! session, once the fault is gone, finishes the job.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic in a test is a failed test

mod common;

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::mount::Mount;
use common::{
    assert_exit, manifest, oneshot_within, pair_configs, set_mtime, show, wait_until, wire_total,
    write_random, Daemon, TestDir, PATIENCE,
};

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
        wait_until(PATIENCE, || {
            let log = daemon.log();
            log.contains("No space left on device") || log.contains("not enough space")
        }),
        "the receiver's log does not say why:\n{}",
        daemon.log()
    );

    // Room again: the next session moves what is missing.
    _mount.remount("size=16m");
    let out = oneshot_within(&a_cfg, PATIENCE);
    assert_exit(&out, 0, &daemon);
    let want: Vec<_> = a_before.iter().collect();
    let got = manifest(&b_root);
    for (k, v) in want {
        assert_eq!(got.get(k), Some(v), "{k} differs after the retry");
    }
    drop(daemon);
}

/// Asserts that every path of `before` is still in `now` with the same content: nothing was
/// deleted or changed (new paths may have arrived).
fn kept(before: &BTreeMap<String, String>, now: &BTreeMap<String, String>, what: &str) {
    for (k, v) in before {
        assert_eq!(now.get(k), Some(v), "{what}: {k} was deleted or changed");
    }
}

/// Asserts that `got` holds every entry of `want` (the receiver may have its own marker).
fn converged(want: &BTreeMap<String, String>, got: &BTreeMap<String, String>, log: &str) {
    for (k, v) in want {
        assert_eq!(got.get(k), Some(v), "{k} differs after the retry\n{log}");
    }
}

/// Node b's storage is remounted read-only after its first sync. Node a's next run (new
/// files, an edited one, a deleted one) fails at once with the reason, changes nothing on
/// either node, and the run after the remount read-write finishes the job.
#[test]
fn a_read_only_storage_fails_the_session_at_once_and_the_next_one_finishes() {
    let dir = TestDir::new("read-only");
    let (a, b) = pair_configs(&dir, "read-only");
    let b_root = dir.join("b");
    let mount = Mount::tmpfs(&b_root, "16m");
    for i in 0..5 {
        dir.write(&format!("a/old/{i}.txt"), format!("old {i}\n").as_bytes());
    }
    let a_cfg = a.write(&dir.mkdir("cfg-a"));
    let daemon = Daemon::start(&b.write(&dir.mkdir("cfg-b")));
    let out = oneshot_within(&a_cfg, PATIENCE);
    assert_exit(&out, 0, &daemon);

    mount.remount("ro");
    for i in 0..5 {
        dir.write(&format!("a/new/{i}.txt"), format!("new {i}\n").as_bytes());
    }
    write_random(&dir.join("a/new/big.bin"), 1024 * 1024, 7);
    dir.write("a/old/0.txt", b"edited on a, longer than before\n");
    std::fs::remove_file(dir.join("a/old/1.txt")).unwrap();
    let a_before = manifest(&dir.join("a"));
    let b_before = manifest(&b_root);

    let out = oneshot_within(&a_cfg, Duration::from_secs(100));
    let text = show(&out);
    assert_ne!(out.status.code(), Some(0), "{text}\n{}", daemon.log());
    let both = format!("{text}\n{}", daemon.log());
    assert!(
        both.contains("Read-only file system"),
        "neither the summary nor the receiver's log says why:\n{both}"
    );
    assert_eq!(manifest(&dir.join("a")), a_before, "the sender changed");
    assert_eq!(
        manifest(&b_root),
        b_before,
        "the read-only receiver changed"
    );

    mount.remount("rw");
    let out = oneshot_within(&a_cfg, PATIENCE);
    assert_exit(&out, 0, &daemon);
    let got = manifest(&b_root);
    converged(&a_before, &got, &daemon.log());
    assert!(
        !got.contains_key("old/1.txt"),
        "the deletion did not arrive"
    );
    assert_eq!(manifest(&dir.join("a")), a_before, "the sender changed");
}

const NOBODY: [&str; 6] = [
    "setpriv",
    "--reuid",
    "65534",
    "--regid",
    "65534",
    "--clear-groups",
];

fn sh(cmd: &str) {
    let st = Command::new("sh").args(["-c", cmd]).status().expect("sh");
    assert!(st.success(), "{cmd}");
}

/// Node b runs as nobody (root would write anywhere, whatever the mode bits say) and one of
/// its directories is made unwritable. Files into it fail with the reason; the files
/// elsewhere arrive; nothing is changed on a nor deleted on b; after a chmod back the next
/// run finishes the job.
#[test]
fn an_unwritable_directory_fails_its_files_and_the_others_arrive() {
    let dir = TestDir::new("denied");
    let (a, b) = pair_configs(&dir, "denied");
    for i in 0..3 {
        dir.write(
            &format!("a/locked/{i}.txt"),
            format!("old {i}\n").as_bytes(),
        );
    }
    dir.write("a/open/seed.txt", b"seed\n");
    let a_cfg = a.write(&dir.mkdir("cfg-a"));
    let b_cfg = b.write(&dir.mkdir("cfg-b"));
    for anc in dir.path().ancestors().skip(1) {
        let mode = std::fs::metadata(anc).unwrap().permissions().mode();
        if mode & 0o001 == 0 {
            eprintln!("skipped: {} is not searchable by nobody", anc.display());
            return;
        }
    }
    sh(&format!("chown -R 65534:65534 '{}'", dir.path().display()));
    let daemon = Daemon::start_via(&NOBODY, &b_cfg);
    let out = oneshot_within(&a_cfg, PATIENCE);
    assert_exit(&out, 0, &daemon);

    let b_root = dir.join("b");
    sh(&format!("chmod 0555 '{}'", b_root.join("locked").display()));
    dir.write("a/locked/new.txt", b"new in locked\n");
    dir.write("a/locked/0.txt", b"edited on a, longer than before\n");
    for i in 0..5 {
        dir.write(&format!("a/open/{i}.txt"), format!("open {i}\n").as_bytes());
    }
    let a_before = manifest(&dir.join("a"));
    let b_before = manifest(&b_root);

    let out = oneshot_within(&a_cfg, Duration::from_secs(100));
    let text = show(&out);
    assert_eq!(out.status.code(), Some(1), "{text}\n{}", daemon.log());
    assert!(
        daemon.wait_for_log("Permission denied", PATIENCE),
        "the receiver's log does not say why:\n{}",
        daemon.log()
    );
    assert_eq!(manifest(&dir.join("a")), a_before, "the sender changed");
    let b_now = manifest(&b_root);
    kept(&b_before, &b_now, "the receiver");
    assert!(!b_now.contains_key("locked/new.txt"));
    for i in 0..5 {
        assert_eq!(
            b_now.get(&format!("open/{i}.txt")),
            a_before.get(&format!("open/{i}.txt")),
            "open/{i}.txt did not arrive:\n{text}\n{}",
            daemon.log()
        );
    }

    sh(&format!("chmod 0755 '{}'", b_root.join("locked").display()));
    let out = oneshot_within(&a_cfg, PATIENCE);
    assert_exit(&out, 0, &daemon);
    converged(&a_before, &manifest(&b_root), &daemon.log());
}

/// Node b's database lives on a 1 MiB tmpfs that is filled up after its first sync. What a
/// session then receives is on b's disk but cannot be recorded: nothing may be lost or
/// deleted on either node, the failure must be logged, the daemon must live on, and once
/// there is room again the next run must converge (the store lagging the disk is what a
/// scan repairs).
#[test]
fn a_full_disk_under_the_database_loses_nothing_and_recovers() {
    let dir = TestDir::new("db-full");
    let (a, b) = pair_configs(&dir, "db-full");
    for i in 0..5 {
        dir.write(&format!("a/old/{i}.txt"), format!("old {i}\n").as_bytes());
    }
    let a_cfg = a.write(&dir.mkdir("cfg-a"));
    let cfg_b = dir.mkdir("cfg-b");
    let _mount = Mount::tmpfs(&cfg_b, "1m");
    let b_cfg = b.write(&cfg_b);
    let mut daemon = Daemon::start(&b_cfg);
    let out = oneshot_within(&a_cfg, PATIENCE);
    assert_exit(&out, 0, &daemon);

    // Fill what is left of the database's file system.
    let filler = cfg_b.join("filler");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&filler).unwrap();
        let block = vec![0x5au8; 4096];
        while f.write_all(&block).is_ok() {}
        let _ = f.sync_all();
    }
    for i in 0..20 {
        dir.write(
            &format!("a/new/{i:02}.txt"),
            format!("new {i}\n").as_bytes(),
        );
    }
    dir.write("a/old/0.txt", b"edited on a, longer than before\n");
    std::fs::remove_file(dir.join("a/old/1.txt")).unwrap();
    let a_before = manifest(&dir.join("a"));
    let b_before = manifest(&dir.join("b"));

    let out = oneshot_within(&a_cfg, Duration::from_secs(100));
    let text = show(&out);
    assert!(daemon.is_running(), "the daemon stopped:\n{}", daemon.log());
    // b could not record what it received: that run did not synchronize, and says so.
    assert_eq!(out.status.code(), Some(1), "{text}\n{}", daemon.log());
    assert_eq!(
        manifest(&dir.join("a")),
        a_before,
        "the sender changed:\n{text}"
    );
    let b_now = manifest(&dir.join("b"));
    for (k, v) in &b_before {
        // The one deletion a asked for may have happened; nothing else may go.
        if k != "old/1.txt" && k != "old/0.txt" {
            assert_eq!(
                b_now.get(k),
                Some(v),
                "{k} was lost on b:\n{text}\n{}",
                daemon.log()
            );
        }
    }
    let log = daemon.log();
    assert!(
        log.contains("database or disk is full") || log.contains("No space left on device"),
        "the receiver's log does not say why:\n{log}\n{text}"
    );
    eprintln!(
        "with the database's disk full, the run ended:\n{text}\nb said:\n{}",
        log.lines()
            .filter(|l| l.contains("WARN") || l.contains("ERROR") || l.contains("full"))
            .collect::<Vec<_>>()
            .join("\n")
    );

    std::fs::remove_file(&filler).unwrap();
    // The next run converges, perhaps after one that only repairs the store.
    let mut last = String::new();
    let done = wait_until(PATIENCE * 2, || {
        let out = oneshot_within(&a_cfg, PATIENCE);
        last = show(&out);
        out.status.code() == Some(0) && {
            let got = manifest(&dir.join("b"));
            a_before.iter().all(|(k, v)| got.get(k) == Some(v)) && !got.contains_key("old/1.txt")
        }
    });
    assert!(
        done,
        "no convergence once there was room:\n{last}\n{}",
        daemon.log()
    );
    assert!(daemon.is_running(), "{}", daemon.log());
    assert_eq!(manifest(&dir.join("a")), a_before, "the sender changed");
}

/// Sets a file's mtime to `ns` nanoseconds after the epoch.
fn set_mtime_ns(p: &Path, ns: u64) {
    std::fs::File::options()
        .write(true)
        .open(p)
        .unwrap()
        .set_times(
            std::fs::FileTimes::new()
                .set_modified(std::time::UNIX_EPOCH + Duration::from_nanos(ns)),
        )
        .unwrap();
}

/// Node b's storage is FAT (an SD card), which keeps mtimes to 2 s: a file received with
/// mtime 1001.3 s reads back as 1000 s. That must not look like an edit on b nor make a
/// resend a file at every sync; and real edits on either side still travel.
#[test]
fn fat_two_second_mtimes_do_not_make_files_resend() {
    let dir = TestDir::new("fat-mtime");
    let (a, b) = pair_configs(&dir, "fat-mtime");
    let b_root = dir.join("b");
    let _mount = match Mount::fat(&b_root, &dir.join("b.img")) {
        Ok(m) => m,
        Err(why) => {
            eprintln!("skipped: {why}");
            return;
        }
    };
    // Odd seconds, sub-second parts, even seconds, and a file large enough for a delta.
    let base: u64 = 1_700_000_001;
    for i in 0..12u64 {
        let p = dir.write(&format!("a/f{i:02}.txt"), format!("file {i}\n").as_bytes());
        set_mtime_ns(
            &p,
            (base + i) * 1_000_000_000 + i * 123_456_789 % 1_000_000_000,
        );
    }
    write_random(&dir.join("a/big.bin"), 256 * 1024, 3);
    set_mtime_ns(&dir.join("a/big.bin"), base * 1_000_000_000 + 999_999_999);
    dir.write("a/sub/x", b"x\n");
    set_mtime(&dir.join("a/sub/x"), 1_600_000_003);
    let a_before = manifest(&dir.join("a"));
    let a_cfg = a.write(&dir.mkdir("cfg-a"));
    let daemon = Daemon::start(&b.write(&dir.mkdir("cfg-b")));

    let out = oneshot_within(&a_cfg, PATIENCE);
    assert_exit(&out, 0, &daemon);
    converged(&a_before, &manifest(&b_root), &daemon.log());
    let first = wire_total(&out);

    for run in ["second", "third"] {
        let out = oneshot_within(&a_cfg, PATIENCE);
        let text = show(&out);
        assert_eq!(out.status.code(), Some(0), "{text}\n{}", daemon.log());
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            stdout.contains("received 0 file(s)") && stdout.contains("sent 0 file(s)"),
            "the {run} run moved files again:\n{text}\n{}",
            daemon.log()
        );
        let wire = wire_total(&out);
        assert!(
            wire < 64 * 1024 && wire < first,
            "the {run} run put {wire} bytes on the wire (the first {first}):\n{text}"
        );
        assert_eq!(
            manifest(&dir.join("a")),
            a_before,
            "the {run} run changed a"
        );
    }

    // Real edits still travel, both ways.
    let p = dir.write("a/f03.txt", b"edited on a, longer than before\n");
    set_mtime_ns(&p, (base + 1001) * 1_000_000_000 + 500_000_000);
    // A delta too: b reads its old version, which must still count as the indexed one.
    let mut big = std::fs::read(dir.join("a/big.bin")).unwrap();
    big[100_000..100_016].copy_from_slice(b"edited in place!");
    std::fs::write(dir.join("a/big.bin"), &big).unwrap();
    set_mtime_ns(&dir.join("a/big.bin"), (base + 2001) * 1_000_000_000 + 1);
    let out = oneshot_within(&a_cfg, PATIENCE);
    assert_exit(&out, 0, &daemon);
    assert_eq!(
        std::fs::read(b_root.join("f03.txt")).unwrap(),
        b"edited on a, longer than before\n",
        "{}\n{}",
        show(&out),
        daemon.log()
    );
    assert_eq!(
        std::fs::read(b_root.join("big.bin")).unwrap(),
        big,
        "{}\n{}",
        show(&out),
        daemon.log()
    );
    std::fs::write(b_root.join("f05.txt"), b"edited on b, longer than before\n").unwrap();
    let out = oneshot_within(&a_cfg, PATIENCE);
    assert_exit(&out, 0, &daemon);
    assert_eq!(
        std::fs::read(dir.join("a/f05.txt")).unwrap(),
        b"edited on b, longer than before\n",
        "{}\n{}",
        show(&out),
        daemon.log()
    );
    let out = oneshot_within(&a_cfg, PATIENCE);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("received 0 file(s)") && stdout.contains("sent 0 file(s)"),
        "a run after the edits moved files again:\n{}\n{}",
        show(&out),
        daemon.log()
    );
}

/// A file dated 2100 (a clock far ahead) never beats a real edit: after it reached b, b's
/// edit (dated now) wins, as the history says it came after; and two concurrent edits, one
/// dated 2100, keep both contents (one under a conflict copy's name) on both nodes.
#[test]
fn a_file_dated_2100_never_beats_a_real_edit() {
    const Y2100: i64 = 4_102_444_800;
    let dir = TestDir::new("future-mtime");
    let (a, b) = pair_configs(&dir, "future-mtime");
    let a_cfg = a.write(&dir.mkdir("cfg-a"));
    let daemon = Daemon::start(&b.write(&dir.mkdir("cfg-b")));
    let run = |what: &str| {
        let out = oneshot_within(&a_cfg, PATIENCE);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{what}: {}\n{}",
            show(&out),
            daemon.log()
        );
    };
    let f_a = dir.write("a/f.txt", b"from the future\n");
    set_mtime(&f_a, Y2100);
    run("first sync");
    assert_eq!(
        std::fs::read(dir.join("b/f.txt")).unwrap(),
        b"from the future\n"
    );

    // b edits it now: an mtime 75 years older than the version it replaces.
    std::fs::write(dir.join("b/f.txt"), b"a real edit\n").unwrap();
    run("after b's edit");
    for side in ["a", "b"] {
        assert_eq!(
            std::fs::read(dir.join(&format!("{side}/f.txt"))).unwrap(),
            b"a real edit\n",
            "{side}: the file dated 2100 beat the real edit\n{}",
            daemon.log()
        );
    }

    // Both edit it at once, a dated 2100 again: neither content is lost.
    let f_a = dir.write("a/f.txt", b"a's edit, dated 2100\n");
    set_mtime(&f_a, Y2100);
    std::fs::write(dir.join("b/f.txt"), b"b's edit, dated now\n").unwrap();
    run("after the concurrent edits");
    for side in ["a", "b"] {
        let contents: Vec<Vec<u8>> = std::fs::read_dir(dir.join(side))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.is_file())
            .map(|p| std::fs::read(p).unwrap())
            .collect();
        for want in [
            &b"a's edit, dated 2100\n"[..],
            &b"b's edit, dated now\n"[..],
        ] {
            assert!(
                contents.iter().any(|c| c == want),
                "{side} lost {:?}: {:?}\n{}",
                String::from_utf8_lossy(want),
                manifest(&dir.join(side)),
                daemon.log()
            );
        }
    }
    drop(daemon);
}
