//! The control socket from the outside, with real daemons: `status --json` against what the
//! nodes really did, progress that moves during a large transfer (a link slowed with `tc`
//! in a network namespace), `sync STORAGE --wait` and its exit code, a second daemon on the
//! same config, `status` with no daemon, and clients that send garbage, too much, nothing,
//! or never read, while the daemon keeps answering the others.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic in a test is a failed test

mod common;

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant, SystemTime};

use common::netns::Segment;
use common::{
    bin, pair_configs, show, wait_until, write_random, Daemon, NodeConfig, TestDir, PATIENCE,
};
use serde_json::Value;

fn ctl(config: &Path, args: &[&str]) -> Output {
    bin()
        .arg("--config")
        .arg(config)
        .args(args)
        .output()
        .expect("run iron-carrier")
}

/// `status --json`, parsed; panics unless it answered.
fn status(config: &Path) -> Value {
    let out = ctl(config, &["status", "--json"]);
    assert_eq!(out.status.code(), Some(0), "status --json: {}", show(&out));
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("status --json is not JSON ({e}): {}", show(&out)))
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[test]
fn status_json_matches_what_the_nodes_did() {
    let dir = TestDir::new("ctl-json");
    let (a, b) = pair_configs(&dir, "ctl-json");
    let (a_root, b_root) = (dir.join("a"), dir.join("b"));
    let sizes = [1000u64, 20_000, 300_000];
    for (k, n) in sizes.iter().enumerate() {
        write_random(&b_root.join(format!("f{k}.bin")), *n, k as u64);
    }
    let before = unix_now();
    let (a_cfg, b_cfg) = (a.write(dir.path()), b.write(dir.path()));
    let b_daemon = Daemon::start(&b_cfg);
    let a_daemon = Daemon::start(&a_cfg);
    assert!(
        wait_until(PATIENCE, || (0..3)
            .all(|k| a_root.join(format!("f{k}.bin")).exists())),
        "the files never arrived:\n{}",
        a_daemon.log()
    );
    let mut s = Value::Null;
    assert!(
        wait_until(PATIENCE, || {
            s = status(&a_cfg);
            s["storages"][0]["state"] == "in-sync" && s["storages"][0]["files"] == 3
        }),
        "A never said it is in sync with its 3 files: {s:#}"
    );
    assert_eq!(s["format"], 1);
    assert_eq!(s["node"]["id"], "node-a");
    assert_eq!(s["node"]["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(s["node"]["listen"], format!("127.0.0.1:{}", a.port));
    assert_eq!(s["node"]["encryption"], "ephemeral");
    assert!(s["node"]["uptime_secs"].as_u64().unwrap() <= unix_now() - before + 1);
    let peers = s["peers"].as_array().unwrap();
    assert_eq!(peers.len(), 1, "{s:#}");
    assert_eq!(peers[0]["id"], "node-b");
    assert_eq!(peers[0]["connected"], true);
    assert_eq!(peers[0]["configured"], true);
    assert_eq!(peers[0]["address"], format!("127.0.0.1:{}", b.port));
    let st = &s["storages"][0];
    assert_eq!(st["name"], "docs");
    assert_eq!(st["path"], a_root.to_str().unwrap());
    assert_eq!(st["bytes"], sizes.iter().sum::<u64>());
    assert_eq!(st["in_sync"], true);
    assert_eq!(st["peers"][0], "node-b");
    assert_eq!(st["progress"], Value::Null);
    let last = &st["last_sync"];
    let at = last["at"].as_u64().unwrap();
    assert!(at >= before && at <= unix_now(), "last sync at {at}: {s:#}");
    assert_eq!(last["with"][0], "node-b");
    assert_eq!(last["clean"], true);
    // The first session may have been started by either side; files and bytes are what A
    // received over every session, and one session moved them all.
    assert_eq!(last["files_received"], 3, "{s:#}");
    assert_eq!(last["bytes_received"], sizes.iter().sum::<u64>());

    let text = ctl(&a_cfg, &["status"]);
    assert_eq!(text.status.code(), Some(0), "{}", show(&text));
    let text = String::from_utf8_lossy(&text.stdout);
    for needle in [
        "node node-a",
        "node-b at 127.0.0.1:",
        "storage docs: in-sync (3 files",
    ] {
        assert!(text.contains(needle), "{needle:?} not in:\n{text}");
    }

    // The peer gone: A says so, and when it last heard of it.
    b_daemon.stop();
    assert!(
        wait_until(PATIENCE, || {
            s = status(&a_cfg);
            s["peers"][0]["connected"] == false && s["storages"][0]["state"] == "not-shared"
        }),
        "A never noticed B left: {s:#}"
    );
    assert!(
        s["peers"][0]["last_seen"].as_u64().unwrap() >= before,
        "{s:#}"
    );
    drop(a_daemon);
}

#[test]
fn status_shows_progress_that_moves_during_a_large_transfer() {
    let Some(seg) = Segment::new("ctl-progress", 2) else {
        return;
    };
    // The sender's packets leave at 32 Mbit/s: 24 MiB take about 6 s.
    if !seg.shape(2, "32mbit") {
        return;
    }
    let dir = TestDir::new("ctl-progress");
    let (a_root, b_root) = (dir.mkdir("a"), dir.mkdir("b"));
    let size = 24 * 1024 * 1024u64;
    write_random(&b_root.join("big.bin"), size, 7);
    let a_cfg = common::netns::host_config(&dir, "a", 2, &a_root);
    let a = seg.daemon(1, &a_cfg);
    let b = seg.daemon(2, &common::netns::host_config(&dir, "b", 1, &b_root));

    // Samples of A's progress while the file comes: it must be seen moving, mid-way.
    let mut seen: Vec<(u64, u64, u64)> = Vec::new();
    let mut text_seen = false;
    let moved = wait_until(PATIENCE, || {
        let s = status(&a_cfg);
        let p = &s["storages"][0]["progress"];
        if p.is_null() {
            return false;
        }
        assert_eq!(s["storages"][0]["state"], "syncing", "{s:#}");
        let done = p["bytes_done"].as_u64().unwrap();
        let total = p["bytes_total"].as_u64().unwrap();
        assert!(done <= total, "{s:#}");
        seen.push((done, total, p["files_total"].as_u64().unwrap()));
        if !text_seen {
            let out = ctl(&a_cfg, &["status"]);
            text_seen = String::from_utf8_lossy(&out.stdout).contains("in progress: 0/1 files");
        }
        let mid: Vec<&(u64, u64, u64)> = seen.iter().filter(|(d, t, _)| *d > 0 && d < t).collect();
        mid.len() >= 2 && mid.first().unwrap().0 < mid.last().unwrap().0
    });
    assert!(
        moved,
        "no progress seen moving: {seen:?}\n{}\n-----\n{}",
        a.log(),
        b.log()
    );
    // Before the plan arrives the totals are 0 (the session compares indexes first); once
    // known they are the file's.
    assert!(
        seen.iter()
            .filter(|(_, t, _)| *t > 0)
            .all(|(_, t, f)| *t == size && *f == 1),
        "{seen:?}"
    );
    assert!(text_seen, "the text status never showed the progress line");
    assert!(
        wait_until(PATIENCE, || status(&a_cfg)["storages"][0]["state"]
            == "in-sync"),
        "the transfer never completed:\n{}",
        a.log()
    );
    drop((a, b));
}

#[test]
fn sync_wait_brings_a_change_over_without_the_watcher_and_says_how_it_went() {
    let dir = TestDir::new("ctl-sync");
    let (a, b) = pair_configs(&dir, "ctl-sync");
    let a = a.extra("enable_file_watcher = false");
    let (a_root, b_root) = (dir.join("a"), dir.join("b"));
    let (a_cfg, b_cfg) = (a.write(dir.path()), b.write(dir.path()));
    let b_daemon = Daemon::start(&b_cfg);
    let a_daemon = Daemon::start(&a_cfg);
    assert!(
        wait_until(PATIENCE, || status(&a_cfg)["storages"][0]["state"]
            == "in-sync"),
        "the first sync never happened:\n{}",
        a_daemon.log()
    );

    std::fs::write(a_root.join("note.txt"), b"written on A").unwrap();
    let out = ctl(&a_cfg, &["sync", "docs", "--wait"]);
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("docs: synchronized with node-b"), "{said}");
    // --wait returns when the session is over: the file is there now, not eventually.
    assert_eq!(
        std::fs::read(b_root.join("note.txt")).ok().as_deref(),
        Some(&b"written on A"[..]),
        "sync --wait returned before the change arrived:\n{}",
        a_daemon.log()
    );

    let out = ctl(&a_cfg, &["sync"]);
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("synchronizing: docs"));
    let out = ctl(&a_cfg, &["sync", "nosuch", "--wait"]);
    assert_eq!(out.status.code(), Some(2), "{}", show(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no storage named \"nosuch\""));

    // Nobody to synchronize with: the exit code says it was not done.
    b_daemon.stop();
    assert!(wait_until(PATIENCE, || {
        status(&a_cfg)["storages"][0]["state"] == "not-shared"
    }));
    let out = ctl(&a_cfg, &["sync", "docs", "--wait"]);
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("docs: no connected peer has this storage"),
        "{}",
        show(&out)
    );
    drop(a_daemon);
}

#[test]
fn a_second_daemon_on_the_same_config_refuses_and_status_needs_a_daemon() {
    let dir = TestDir::new("ctl-twice");
    let root = dir.mkdir("a");
    let cfg = NodeConfig::new("alone")
        .storage("docs", &root)
        .write(dir.path());

    let out = ctl(&cfg, &["status"]);
    assert_eq!(out.status.code(), Some(4), "{}", show(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no iron-carrier daemon is running"),
        "{}",
        show(&out)
    );
    let out = ctl(&cfg, &["sync", "--wait"]);
    assert_eq!(out.status.code(), Some(4), "{}", show(&out));

    let first = Daemon::start(&cfg);
    let second = bin()
        .args(["--daemon", "--config"])
        .arg(&cfg)
        .output()
        .expect("run a second daemon");
    assert_eq!(second.status.code(), Some(3), "{}", show(&second));
    assert!(
        String::from_utf8_lossy(&second.stderr).contains("another iron-carrier daemon is running"),
        "{}",
        show(&second)
    );
    // A one-shot run beside the daemon is pointed to `sync`.
    let oneshot = bin().arg("--config").arg(&cfg).output().unwrap();
    assert_eq!(oneshot.status.code(), Some(3), "{}", show(&oneshot));
    assert!(String::from_utf8_lossy(&oneshot.stderr).contains("iron-carrier sync"));
    // Another config (another port) with the same database: refused by the database.
    let text = std::fs::read_to_string(&cfg).unwrap();
    let port = common::free_port();
    let other = dir.write(
        "other.toml",
        text.replace("port = ", &format!("port = {port}\n#"))
            .as_bytes(),
    );
    let third = bin()
        .args(["--daemon", "--config"])
        .arg(&other)
        .output()
        .expect("run a third daemon");
    assert_eq!(third.status.code(), Some(3), "{}", show(&third));
    assert!(
        String::from_utf8_lossy(&third.stderr).contains("is in use by another process"),
        "{}",
        show(&third)
    );
    assert_eq!(ctl(&cfg, &["status"]).status.code(), Some(0));

    // Stopped, it leaves no socket behind: status says there is no daemon.
    let (code, log) = first.stop();
    assert_eq!(code, Some(0), "{log}");
    let out = ctl(&cfg, &["status"]);
    assert_eq!(out.status.code(), Some(4), "{}", show(&out));
}

/// Reads what the daemon sends until it closes (or 30 s pass).
fn read_answer(s: &mut UnixStream) -> String {
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut got = Vec::new();
    let _ = s.read_to_end(&mut got);
    String::from_utf8_lossy(&got).into_owned()
}

#[test]
fn bad_control_clients_are_closed_and_the_others_still_served() {
    let dir = TestDir::new("ctl-hostile");
    let root = dir.mkdir("a");
    let sock = dir.join("ctl.sock");
    let cfg = NodeConfig::new("target")
        .storage("docs", &root)
        .extra(&format!("control_socket = \"{}\"", sock.display()))
        .write(dir.path());
    let d = Daemon::start(&cfg);
    let mode = std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the socket is for the daemon's user alone");
    let served = |what: &str| {
        let t = Instant::now();
        let out = ctl(&cfg, &["status", "--json"]);
        assert_eq!(out.status.code(), Some(0), "{what}: {}", show(&out));
        let s: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(s["node"]["id"], "target", "{what}");
        t.elapsed()
    };

    // More silent clients than the daemon serves at once: a status still gets through.
    let silent: Vec<UnixStream> = (0..40)
        .map(|_| UnixStream::connect(&sock).unwrap())
        .collect();
    served("with 40 silent clients connected");

    // Garbage, and a request of another version: one error line, then closed.
    for junk in [
        &b"hello\n"[..],
        b"iron-carrier-control/9 status\n",
        b"\x00\xff\xfe\n",
    ] {
        let mut s = UnixStream::connect(&sock).unwrap();
        s.write_all(junk).unwrap();
        let answer = read_answer(&mut s);
        assert!(answer.starts_with("error "), "{junk:?}: {answer:?}");
    }
    // A request ended by the end of input instead of a newline, or by "\r\n": answered.
    let mut s = UnixStream::connect(&sock).unwrap();
    s.write_all(b"iron-carrier-control/1 status-json").unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let answer = read_answer(&mut s);
    assert!(answer.starts_with("ok\n{"), "{answer:?}");
    let mut s = UnixStream::connect(&sock).unwrap();
    s.write_all(b"iron-carrier-control/1 status\r\n").unwrap();
    assert!(read_answer(&mut s).starts_with("ok\nnode target"));
    // Too much: closed once the request passes its bound, however much more comes.
    let mut s = UnixStream::connect(&sock).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(30))).unwrap();
    let _ = s.write_all(&vec![b'x'; 1 << 20]);
    let answer = read_answer(&mut s);
    assert!(answer.contains("request too long"), "{answer:?}");
    // Clients that ask and never read their answers.
    let deaf: Vec<UnixStream> = (0..8)
        .map(|_| {
            let mut s = UnixStream::connect(&sock).unwrap();
            s.write_all(b"iron-carrier-control/1 status-json\n")
                .unwrap();
            s
        })
        .collect();
    served("with clients that never read");
    assert!(
        d.wait_for_log("control socket: client closed", PATIENCE),
        "{}",
        d.log()
    );
    drop((silent, deaf));
    served("after all that");
    let (code, log) = d.stop();
    assert_eq!(code, Some(0), "{log}");
    assert!(
        !sock.exists(),
        "the socket is removed when the daemon stops"
    );
}

#[test]
fn a_reload_during_a_session_abandons_it_says_so_and_the_file_still_arrives() {
    let Some(seg) = Segment::new("ctl-reload", 2) else {
        return;
    };
    // 32 Mbit/s from the sender: 24 MiB take about 6 s, time to reload in the middle.
    if !seg.shape(2, "32mbit") {
        return;
    }
    let dir = TestDir::new("ctl-reload");
    let (a_root, b_root) = (dir.mkdir("a"), dir.mkdir("b"));
    write_random(&b_root.join("big.bin"), 24 * 1024 * 1024, 9);
    let want = common::file_digest(&b_root.join("big.bin"));
    let a_cfg = common::netns::host_config(&dir, "a", 2, &a_root);
    let mut a = seg.daemon(1, &a_cfg);
    let b = seg.daemon(2, &common::netns::host_config(&dir, "b", 1, &b_root));
    assert!(
        wait_until(PATIENCE, || {
            status(&a_cfg)["storages"][0]["progress"]["bytes_done"]
                .as_u64()
                .is_some_and(|d| d > 2 * 1024 * 1024)
        }),
        "the transfer never got going:\n{}",
        a.log()
    );
    let pid = a.pid();
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(pid, libc::SIGHUP) };
    assert!(
        a.wait_for_log("stopping during a session: it is abandoned", PATIENCE),
        "the reload did not say what became of the session:\n{}",
        a.log()
    );
    assert!(
        wait_until(PATIENCE, || {
            let f = a_root.join("big.bin");
            f.exists() && common::file_digest(&f) == want
        }),
        "the file never arrived after the reload:\n{}\n-----\n{}",
        a.log(),
        b.log()
    );
    assert!(a.is_running(), "the same process runs on: {}", a.log());
    assert_eq!(a.pid(), pid);
    // The restarted daemon answers on its control socket again.
    assert!(wait_until(PATIENCE, || {
        ctl(&a_cfg, &["status"]).status.code() == Some(0)
    }));
    drop(b);
}

#[test]
fn status_of_another_users_daemon_says_whose_it_is() {
    let dir = TestDir::new("ctl-other-user");
    let root = dir.mkdir("a");
    let sock = dir.join("ctl.sock");
    let cfg = NodeConfig::new("roots")
        .storage("docs", &root)
        .extra(&format!("control_socket = \"{}\"", sock.display()))
        .write(dir.path());
    // Readable by the other user, so that it gets as far as the socket.
    for p in [dir.path(), cfg.as_path()] {
        let mode = if p.is_dir() { 0o755 } else { 0o644 };
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
    }
    let d = Daemon::start(&cfg);
    let out = std::process::Command::new("setpriv")
        .args(["--reuid", "65534", "--regid", "65534", "--clear-groups"])
        .arg(env!("CARGO_BIN_EXE_iron-carrier"))
        .args(["status", "--config"])
        .arg(&cfg)
        .env("HOME", dir.path())
        .output()
        .expect("run setpriv");
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("the daemon runs as another user"),
        "{}",
        show(&out)
    );
    drop(d);
}
