//! Two real nodes (processes of the real binary) synchronizing over TCP on 127.0.0.1:
//! new files both ways, newer-wins, nested and empty entries, odd names, big and many files,
//! `.ignore`, symlinks, groups, one-shot against daemon and against one-shot, and a receiver
//! killed in the middle of a transfer.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic in a test is a failed test

mod common;

use common::*;
use std::path::Path;
use std::time::Duration;

/// Two storages under one test dir, and a config for each node.
struct Pair {
    dir: TestDir,
    a: NodeConfig,
    b: NodeConfig,
}

impl Pair {
    fn new(tag: &str) -> Pair {
        let dir = TestDir::new(tag);
        let (a, b) = pair_configs(&dir, tag);
        // Both dial each other: the one-connection rule is exercised in every test.
        let b = b.peer(a.port);
        Pair { dir, a, b }
    }

    fn a(&self) -> std::path::PathBuf {
        self.dir.join("a")
    }

    fn b(&self) -> std::path::PathBuf {
        self.dir.join("b")
    }

    /// B as a daemon, A as a one-shot run against it. Returns A's output and B's log.
    fn sync_once(&self) -> (std::process::Output, String) {
        let cb = self.b.write(self.dir.path());
        let ca = self.a.write(self.dir.path());
        let daemon = Daemon::start(&cb);
        let out = oneshot(&ca);
        let (code, log) = daemon.stop();
        assert_eq!(code, Some(0), "daemon exit: {log}");
        (out, log)
    }
}

/// Waits until `dir` holds an internal temp file of at least `min_len` bytes (a transfer in
/// progress). Returns whether one appeared.
fn wait_for_temp_file(dir: &Path, min_len: u64) -> bool {
    wait_until(PATIENCE, || {
        std::fs::read_dir(dir)
            .unwrap()
            .filter_map(Result::ok)
            .any(|e| {
                e.file_name()
                    .to_string_lossy()
                    .starts_with(".iron-carrier.tmp")
                    && e.metadata().map(|m| m.len() >= min_len).unwrap_or(false)
            })
    })
}

/// Established TCP connections (IPv4, this namespace) with one end on port `x` and the
/// other on port `y` or an ephemeral port of a connection to `x`/`y`: each connection shows
/// up twice in /proc/net/tcp (once per end), so the count is halved.
fn established_between(x: u16, y: u16) -> usize {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    let port = |field: &str| u16::from_str_radix(field.rsplit(':').next().unwrap(), 16).unwrap();
    let ends = table
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            // State 01 is ESTABLISHED.
            (f.get(3) == Some(&"01")).then(|| (port(f[1]), port(f[2])))
        })
        .filter(|&(local, remote)| [x, y].contains(&local) || [x, y].contains(&remote))
        .count();
    ends / 2
}

fn assert_same_trees(a: &Path, b: &Path) {
    let ma = manifest(a);
    let mb = manifest(b);
    assert_eq!(ma, mb, "trees differ");
    assert!(
        !ma.keys().any(|k| k.contains(".iron-carrier.")),
        "temp files left behind: {ma:?}"
    );
}

#[test]
fn new_files_flow_both_ways_with_nested_dirs_empty_entries_and_odd_names() {
    let p = Pair::new("both-ways");
    p.dir.write("a/only-on-a.txt", b"from a");
    p.dir.write("a/deep/er/still/nested.txt", b"nested");
    p.dir.write("a/empty.txt", b"");
    p.dir.mkdir("a/empty-dir/inside-empty");
    p.dir.write("b/only-on-b.txt", b"from b");
    p.dir.write("b/ünïcödé ñame/日本語 file.txt", b"unicode");
    p.dir.write("b/with space/and  two  spaces.md", b"spaces");
    p.dir.write("b/.hidden", b"dot file");
    let (out, _) = p.sync_once();
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    assert_same_trees(&p.a(), &p.b());
    assert_eq!(
        std::fs::read(p.a().join("ünïcödé ñame/日本語 file.txt")).unwrap(),
        b"unicode"
    );
    assert_eq!(std::fs::read(p.b().join("empty.txt")).unwrap(), b"");
    assert!(p.b().join("empty-dir/inside-empty").is_dir());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("docs: synchronized with node-b"),
        "summary: {stdout}"
    );
}

/// Regression: a storage holding only empty one-letter directories never synchronized (the
/// receiver refused the plan: "too many plan items: 3").
#[test]
fn empty_one_letter_directories_synchronize() {
    let p = Pair::new("one-letter-dirs");
    p.dir.mkdir("a/d");
    p.dir.mkdir("a/e/f");
    let (out, log) = p.sync_once();
    assert_eq!(out.status.code(), Some(0), "{}\n{log}", show(&out));
    assert!(!log.contains("invalid frame"), "{log}");
    for d in ["d", "e", "e/f"] {
        assert!(p.b().join(d).is_dir(), "{d} missing on b: {}", show(&out));
    }
}

#[test]
fn newer_mtime_wins_and_mtime_and_mode_travel_with_the_file() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let p = Pair::new("newer-wins");
    let fa = p.dir.write("a/report.txt", b"old version on a");
    let fb = p.dir.write("b/report.txt", b"NEW version on b, longer");
    set_mtime(&fa, 1_600_000_000);
    set_mtime(&fb, 1_700_000_000);
    std::fs::set_permissions(&fb, std::fs::Permissions::from_mode(0o640)).unwrap();
    // The other way round for a second file: A's copy is newer (and before 1970 for B).
    let ga = p.dir.write("a/notes.txt", b"newer on a");
    let gb = p.dir.write("b/notes.txt", b"older on b");
    set_mtime(&ga, 1_000);
    set_mtime(&gb, -1_000);
    let (out, _) = p.sync_once();
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    assert_eq!(
        std::fs::read(p.a().join("report.txt")).unwrap(),
        b"NEW version on b, longer"
    );
    assert_eq!(
        std::fs::read(p.b().join("notes.txt")).unwrap(),
        b"newer on a"
    );
    let m = std::fs::metadata(p.a().join("report.txt")).unwrap();
    assert_eq!(m.mtime(), 1_700_000_000);
    assert_eq!(m.mode() & 0o7777, 0o640);
    assert_same_trees(&p.a(), &p.b());
}

#[test]
fn a_200_mib_file_arrives_with_the_same_hash() {
    let p = Pair::new("big");
    write_random(&p.a().join("video/big.bin"), 200 * 1024 * 1024, 42);
    let (out, _) = p.sync_once();
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    assert_eq!(
        file_digest(&p.a().join("video/big.bin")),
        file_digest(&p.b().join("video/big.bin"))
    );
    assert_same_trees(&p.a(), &p.b());
}

#[test]
fn five_thousand_small_files_are_pipelined_into_an_empty_node() {
    let p = Pair::new("many");
    for i in 0..5000u64 {
        let path = p.b().join(format!("d{}/e{}/f{i}.txt", i % 17, i % 5));
        write_random(&path, 1 + (i * 37) % 3000, i);
    }
    let (out, log) = p.sync_once();
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    assert_same_trees(&p.a(), &p.b());
    assert!(
        log.contains("sent 5000 file(s)"),
        "B should report 5000 files sent: {log}"
    );
}

#[test]
fn ignored_files_stay_where_they_are() {
    let p = Pair::new("ignore");
    p.dir.write("a/.ignore", b"# build output\n*.log\ncache/\n");
    p.dir.write("a/keep.txt", b"keep");
    p.dir.write("a/debug.log", b"a's log");
    p.dir.write("a/cache/blob", b"cached");
    p.dir.write("b/.ignore", b"*.log\ncache/\n");
    p.dir.write("b/other.log", b"b's log");
    p.dir.write("b/cache/x", b"b cache");
    let (out, _) = p.sync_once();
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    assert_eq!(std::fs::read(p.b().join("keep.txt")).unwrap(), b"keep");
    assert!(!p.b().join("debug.log").exists());
    assert!(!p.b().join("cache/blob").exists());
    assert!(!p.a().join("other.log").exists());
    assert!(!p.a().join("cache/x").exists());
}

#[test]
fn a_receiver_refuses_what_its_own_ignore_excludes() {
    // A does not ignore *.tmp, B does: A offers notes.tmp, B must not take it.
    let p = Pair::new("ignore-recv");
    p.dir.write("a/notes.tmp", b"scratch");
    p.dir.write("a/real.txt", b"real");
    p.dir.write("b/.ignore", b"*.tmp\n");
    // B's .ignore is older than nothing on A, so it reaches A too; that is fine.
    let (out, _) = p.sync_once();
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    assert!(!p.b().join("notes.tmp").exists());
    assert_eq!(std::fs::read(p.b().join("real.txt")).unwrap(), b"real");
}

#[test]
fn symlinks_are_neither_followed_nor_synchronized() {
    let p = Pair::new("symlink");
    let outside = p.dir.mkdir("outside");
    p.dir.write("outside/secret.txt", b"do not leak");
    std::os::unix::fs::symlink(&outside, p.a().join("link-to-outside")).unwrap();
    std::os::unix::fs::symlink("/nonexistent/target", p.a().join("dangling")).unwrap();
    p.dir.write("a/normal.txt", b"normal");
    let (out, _) = p.sync_once();
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    assert!(p.b().join("normal.txt").exists());
    assert!(!p.b().join("link-to-outside").exists());
    assert!(std::fs::symlink_metadata(p.b().join("dangling")).is_err());
    let leaked = manifest(&p.b()).keys().any(|k| k.contains("secret"));
    assert!(!leaked, "a file behind a symlink was synchronized");
}

#[test]
fn a_node_of_another_group_is_refused_and_nothing_changes() {
    let dir = TestDir::new("group");
    dir.write("a/a.txt", b"a");
    dir.write("b/b.txt", b"b");
    let b = NodeConfig::new("node-b")
        .storage("docs", &dir.join("b"))
        .group("family");
    let a = NodeConfig::new("node-a")
        .storage("docs", &dir.join("a"))
        .group("work")
        .peer(b.port);
    let daemon = Daemon::start(&b.write(dir.path()));
    let out = oneshot(&a.write(dir.path()));
    assert_ne!(out.status.code(), Some(0), "{}", show(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("group"),
        "one-shot should say why: {stderr}"
    );
    assert!(
        daemon.wait_for_log("group mismatch", PATIENCE),
        "daemon should log the refusal: {}",
        daemon.log()
    );
    let (_, _) = daemon.stop();
    assert!(!dir.join("a/b.txt").exists());
    assert!(!dir.join("b/a.txt").exists());
}

#[test]
fn a_daemon_keeps_serving_after_a_one_shot_peer_leaves() {
    let p = Pair::new("keeps-serving");
    p.dir.write("a/first.txt", b"1");
    let cb = p.b.write(p.dir.path());
    let ca = p.a.write(p.dir.path());
    let mut daemon = Daemon::start(&cb);
    let out = oneshot(&ca);
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    assert!(wait_until(PATIENCE, || daemon
        .log()
        .contains("disconnected from node-a")));
    assert!(daemon.is_running());
    p.dir.write("a/second.txt", b"2");
    p.dir.write("b/from-b.txt", b"3");
    let out = oneshot(&ca);
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    assert!(daemon.is_running());
    let (code, log) = daemon.stop();
    assert_eq!(code, Some(0), "{log}");
    assert_same_trees(&p.a(), &p.b());
    assert!(p.b().join("second.txt").exists());
}

#[test]
fn two_one_shot_nodes_started_together_sync_with_each_other() {
    let p = Pair::new("two-oneshots");
    p.dir.write("a/from-a.txt", b"a");
    p.dir.write("b/from-b.txt", b"b");
    let ca = p.a.write(p.dir.path());
    let cb = p.b.write(p.dir.path());
    let ta = std::thread::spawn(move || oneshot(&ca));
    let tb = std::thread::spawn(move || oneshot(&cb));
    let oa = ta.join().unwrap();
    let ob = tb.join().unwrap();
    assert_eq!(oa.status.code(), Some(0), "{}", show(&oa));
    assert_eq!(ob.status.code(), Some(0), "{}", show(&ob));
    assert_eq!(
        manifest(&p.a()),
        manifest(&p.b()),
        "A:\n{}\nB:\n{}",
        show(&oa),
        show(&ob)
    );
}

#[test]
fn one_shot_without_a_reachable_peer_exits_1_with_a_reason() {
    let dir = TestDir::new("unreachable");
    dir.mkdir("a");
    let a = NodeConfig::new("node-a")
        .storage("docs", &dir.join("a"))
        .peer(free_port());
    let out = oneshot(&a.write(dir.path()));
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("no peer reachable"),
        "{}",
        show(&out)
    );
}

/// Regression: a peer refused for using our own node id was reported as "no peer reachable"
/// without the reason; the summary must say why and what to do.
#[test]
fn a_peer_with_our_own_node_id_fails_the_run_and_the_summary_says_why() {
    let dir = TestDir::new("own-id");
    dir.write("a/x.txt", b"x");
    dir.mkdir("b");
    let b = NodeConfig::new("vm").storage("docs", &dir.join("b"));
    let a = NodeConfig::new("vm")
        .storage("docs", &dir.join("a"))
        .peer(b.port);
    // Two machines: each its own config and database.
    let daemon = Daemon::start(&b.write(&dir.mkdir("b-conf")));
    let out = oneshot(&a.write(&dir.mkdir("a-conf")));
    daemon.stop();
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("own node id \"vm\"") && stdout.contains("set node_id"),
        "{}",
        show(&out)
    );
    assert!(!dir.join("b/x.txt").exists());
}

/// Regression: with no `peers` and discovery off a one-shot run waited 15 s before saying
/// there was nobody to synchronize with. It now says so at once (the old build needed 15 s;
/// the limit is generous).
#[test]
fn a_one_shot_with_no_peers_and_no_discovery_says_so_at_once() {
    let dir = TestDir::new("no-peers");
    dir.mkdir("a");
    // The test configs turn discovery off.
    let a = NodeConfig::new("node-a").storage("docs", &dir.join("a"));
    let out = oneshot_within(&a.write(dir.path()), Duration::from_secs(10));
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("no peers are configured"),
        "{}",
        show(&out)
    );
}

/// Regression: a one-shot run waiting for an unreachable peer slept 0 from 5 s to its 15 s
/// deadline (a deadline already past) and burned about 10 s of CPU. It must sleep.
#[test]
fn a_one_shot_waiting_for_an_unreachable_peer_does_not_spin() {
    let dir = TestDir::new("no-spin");
    dir.mkdir("a");
    let a = NodeConfig::new("node-a")
        .storage("docs", &dir.join("a"))
        .peer(free_port());
    let config = a.write(dir.path());
    let child = bin()
        .arg("--config")
        .arg(&config)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let (code, cpu) = wait_with_cpu(child);
    assert_eq!(code, Some(1));
    assert!(cpu < Duration::from_secs(2), "used {cpu:?} of CPU");
}

/// Waits for `child` and returns its exit code and the CPU time (user + system) it used.
fn wait_with_cpu(child: std::process::Child) -> (Option<i32>, Duration) {
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value for wait4 to fill.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: wait4 on our own child, with valid pointers to a status and a rusage; `child`
    // is not waited for elsewhere.
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    assert_eq!(r, pid, "wait4: {}", std::io::Error::last_os_error());
    std::mem::forget(child);
    let tv = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64)
    };
    let code = libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status));
    (code, tv(usage.ru_utime) + tv(usage.ru_stime))
}

#[test]
fn a_storage_the_peer_lacks_is_reported_not_failed() {
    let dir = TestDir::new("no-shared");
    dir.write("a/x.txt", b"x");
    dir.mkdir("b");
    let b = NodeConfig::new("node-b")
        .group("no-shared")
        .storage("music", &dir.join("b"));
    let a = NodeConfig::new("node-a")
        .group("no-shared")
        .storage("docs", &dir.join("a"))
        .peer(b.port);
    let daemon = Daemon::start(&b.write(dir.path()));
    let out = oneshot(&a.write(dir.path()));
    daemon.stop();
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("docs: no connected peer has this storage")
    );
    assert!(!dir.join("b/x.txt").exists());
}

#[test]
fn a_receiver_killed_mid_transfer_keeps_its_old_file_and_the_next_run_converges() {
    let p = Pair::new("kill-receiver");
    // B (the daemon, receiver) has an old version, which A gets first; then A (one-shot,
    // leader) makes a newer, big one.
    let old = p.b().join("disk.img");
    // Small enough to be sent whole (no delta): this test is about the commit, not deltas.
    write_random(&old, 10 * 1024, 1);
    set_mtime(&old, 1_500_000_000);
    let old_digest = file_digest(&old);
    let cb = p.b.write(p.dir.path());
    let ca = p.a.write(p.dir.path());
    let daemon = Daemon::start(&cb);
    let shared = oneshot(&ca);
    assert_eq!(shared.status.code(), Some(0), "{}", show(&shared));
    let (_, _) = daemon.stop();
    let new = p.a().join("disk.img");
    write_random(&new, 768 * 1024 * 1024, 2);
    let new_digest = file_digest(&new);

    let daemon = Daemon::start(&cb);
    let child = bin()
        .args(["--config"])
        .arg(&ca)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until B is writing its temporary file, then kill B without any chance to clean.
    let temp_growing = wait_for_temp_file(&p.b(), 1024 * 1024);
    assert!(temp_growing, "transfer never started: {}", daemon.log());
    daemon.kill();
    let first = child.wait_with_output().unwrap();
    // The old version is intact: never a torn file.
    assert_eq!(file_digest(&old), old_digest);
    // Regression: the run said "no connected peer has this storage" and exited 0.
    assert_eq!(first.status.code(), Some(1), "{}", show(&first));
    assert!(
        String::from_utf8_lossy(&first.stdout).contains("docs: not synchronized with node-b"),
        "{}",
        show(&first)
    );

    // Run again: B restarts (keeping what its temp file holds, to resume), A syncs again.
    let daemon = Daemon::start(&cb);
    let out = oneshot(&ca);
    let (_, log) = daemon.stop();
    assert_eq!(out.status.code(), Some(0), "{}\n{log}", show(&out));
    assert_eq!(file_digest(&p.b().join("disk.img")), new_digest);
    assert!(log.contains("left by an interrupted transfer"), "{log}");
    assert!(log.contains("disk.img: resumed at byte "), "{log}");
    assert_same_trees(&p.a(), &p.b());
}

#[test]
fn a_source_changed_while_being_sent_is_never_committed_as_a_mix() {
    let p = Pair::new("changed-source");
    let src = p.a().join("growing.bin");
    write_random(&src, 256 * 1024 * 1024, 7);
    let cb = p.b.write(p.dir.path());
    let ca = p.a.write(p.dir.path());
    let daemon = Daemon::start(&cb);
    let child = bin()
        .args(["-vv", "--config"])
        .arg(&ca)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // As soon as B receives data, append to A's source: A must notice and abort.
    let started = wait_for_temp_file(&p.b(), 0);
    assert!(started, "{}", daemon.log());
    {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new().append(true).open(&src).unwrap();
        f.write_all(b"appended while sending").unwrap();
    }
    let out = child.wait_with_output().unwrap();
    let (_, log) = daemon.stop();
    let stderr = String::from_utf8_lossy(&out.stderr);
    match std::fs::metadata(p.b().join("growing.bin")) {
        // The transfer finished before the append: B has the complete old version.
        Ok(m) => assert_eq!(m.len(), 256 * 1024 * 1024, "{stderr}\n{log}"),
        Err(_) => assert!(
            stderr.contains("changed while it was being sent"),
            "{stderr}"
        ),
    }
    assert!(
        !manifest(&p.b())
            .keys()
            .any(|k| k.contains(".iron-carrier.")),
        "temp left behind"
    );
}

#[test]
fn two_daemons_sync_on_connect_and_again_on_schedule() {
    let p = Pair::new("schedule");
    p.dir.write("a/at-start.txt", b"start");
    let cb = p.b.write(p.dir.path());
    let ca = p.a.write(p.dir.path());
    // Every minute: the first scheduled sync comes within 60 s of start. Without the
    // watcher, which would carry the change first, only the schedule can.
    let ca_text = std::fs::read_to_string(&ca).unwrap();
    std::fs::write(
        &ca,
        format!("schedule_sync = \"* * * * *\"\nenable_file_watcher = false\n{ca_text}"),
    )
    .unwrap();
    let da = Daemon::start(&ca);
    let db = Daemon::start(&cb);
    assert!(
        wait_until(PATIENCE, || p.b().join("at-start.txt").exists()),
        "no sync on connect:\n{}\n{}",
        da.log(),
        db.log()
    );
    p.dir.write("a/later.txt", b"later");
    assert!(
        wait_until(PATIENCE * 2, || p.b().join("later.txt").exists()),
        "no scheduled sync:\n{}",
        da.log()
    );
    assert!(da.log().contains("scheduled sync"), "{}", da.log());
    // Both daemons dial each other, yet exactly one TCP connection joins them.
    assert_eq!(
        established_between(p.a.port, p.b.port),
        1,
        "{}\n{}",
        da.log(),
        db.log()
    );
    let (ca_code, _) = da.stop();
    let (cb_code, _) = db.stop();
    assert_eq!((ca_code, cb_code), (Some(0), Some(0)));
    assert_same_trees(&p.a(), &p.b());
}
