//! The file watcher with real inotify and real daemons on 127.0.0.1: changes made on one node
//! reach the others with nothing but the watcher to start a session (no cron; peers connect
//! once), bursts make few sessions, trees created at once arrive whole and stay watched, a full
//! event queue and an exhausted watch limit fall back to rescans, a root that disappears
//! deletes nothing, and two nodes that change files at once settle without a ping-pong.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic in a test is a failed test

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use common::*;

/// `delay_watcher_events` in these tests.
const DELAY: Duration = Duration::from_secs(1);
/// How long past the delay a change may take to arrive before the test fails: generous, as
/// tests must not depend on timing luck (the latency itself is measured by `make bench`).
const MARGIN: Duration = Duration::from_secs(30);

/// `n` daemons' configs with storage "docs" in `<dir>/<id>`, a full mesh in a group of their
/// own, watching with a one-second delay; `extra` goes into each config.
fn nodes(dir: &TestDir, tag: &str, n: usize, extra: &str) -> (Vec<NodeConfig>, Vec<PathBuf>) {
    let group = format!("{tag}-{}", std::process::id());
    let ids = ["wa", "wb", "wc"];
    let mut cfgs: Vec<NodeConfig> = ids[..n]
        .iter()
        .map(|id| {
            NodeConfig::new(id)
                .group(&group)
                .storage("docs", &dir.mkdir(id))
                .extra(&format!("delay_watcher_events = {}", DELAY.as_secs()))
                .extra(extra)
        })
        .collect();
    mesh_peers(&mut cfgs);
    let roots = ids[..n].iter().map(|id| dir.join(id)).collect();
    (cfgs, roots)
}

fn start_all(dir: &TestDir, cfgs: &[NodeConfig]) -> Vec<Daemon> {
    let daemons: Vec<Daemon> = cfgs
        .iter()
        .map(|c| Daemon::start(&c.write(dir.path())))
        .collect();
    for d in &daemons {
        assert!(
            d.wait_for_log("watch: watching", PATIENCE),
            "no watcher:\n{}",
            d.log()
        );
    }
    daemons
}

fn logs(daemons: &[Daemon]) -> String {
    daemons
        .iter()
        .map(|d| d.log())
        .collect::<Vec<_>>()
        .join("\n-----\n")
}

/// Sessions led so far, by all of them.
fn sessions(daemons: &[Daemon]) -> usize {
    daemons.iter().map(|d| d.count_log("leading session")).sum()
}

/// Waits until every replica holds what `roots[0]` holds (and no temporary file), within
/// `limit`.
fn follows(roots: &[PathBuf], limit: Duration, what: &str, daemons: &[Daemon]) {
    let ok = wait_until(limit, || {
        let first = manifest(&roots[0]);
        !first
            .keys()
            .any(|k| k.contains(".iron-carrier.") || k.contains("vanished"))
            && first.values().all(|v| v != "vanished")
            && roots[1..].iter().all(|r| manifest(r) == first)
    });
    if !ok {
        let all: Vec<String> = roots
            .iter()
            .map(|r| format!("{}: {:?}", r.display(), manifest(r)))
            .collect();
        panic!(
            "{what}: the others did not follow within {:?}:\n{}\n{}",
            limit,
            all.join("\n"),
            logs(daemons)
        );
    }
}

fn sh(script: &str) {
    let st = Command::new("sh").args(["-c", script]).status().unwrap();
    assert!(st.success(), "{script}: {st}");
}

#[test]
fn create_modify_rename_delete_on_one_node_reach_the_others_within_the_delay() {
    let dir = TestDir::new("watch-ops");
    let (cfgs, roots) = nodes(&dir, "watch-ops", 3, "");
    let daemons = start_all(&dir, &cfgs);
    let limit = DELAY + MARGIN;
    let a = &roots[0];
    type Step<'a> = (&'a str, Box<dyn Fn() + 'a>);
    let steps: Vec<Step<'_>> = vec![
        (
            "create a file",
            Box::new(|| std::fs::write(a.join("f.txt"), b"one").unwrap()),
        ),
        (
            "modify it",
            Box::new(|| {
                use std::io::Write;
                let mut f = std::fs::OpenOptions::new()
                    .append(true)
                    .open(a.join("f.txt"))
                    .unwrap();
                f.write_all(b" and two").unwrap();
            }),
        ),
        (
            "rename it",
            Box::new(|| std::fs::rename(a.join("f.txt"), a.join("g.txt")).unwrap()),
        ),
        (
            "delete it",
            Box::new(|| std::fs::remove_file(a.join("g.txt")).unwrap()),
        ),
        (
            "create a directory with a file",
            Box::new(|| {
                std::fs::create_dir_all(a.join("d/e")).unwrap();
                std::fs::write(a.join("d/e/x"), b"x").unwrap();
            }),
        ),
        (
            "rename the directory",
            Box::new(|| std::fs::rename(a.join("d"), a.join("d2")).unwrap()),
        ),
        (
            "change a file inside the renamed directory (its watch follows the rename)",
            Box::new(|| std::fs::write(a.join("d2/e/y"), b"y").unwrap()),
        ),
        (
            "delete the directory",
            Box::new(|| std::fs::remove_dir_all(a.join("d2")).unwrap()),
        ),
    ];
    for (what, step) in steps {
        step();
        follows(&roots, limit, what, &daemons);
    }
    assert!(manifest(&roots[1]).is_empty(), "{:?}", manifest(&roots[1]));
    // Every session was led by the node where the user worked: the receivers' own writes
    // started none.
    for d in &daemons[1..] {
        assert_eq!(d.count_log("leading session"), 0, "{}", logs(&daemons));
    }
}

#[test]
fn a_burst_of_10000_files_makes_a_few_sessions_and_misses_none() {
    let dir = TestDir::new("watch-burst");
    let (cfgs, roots) = nodes(&dir, "watch-burst", 2, "");
    let daemons = start_all(&dir, &cfgs);
    let before = sessions(&daemons);
    for d in 0..100 {
        let sub = roots[0].join(format!("d{d:03}"));
        std::fs::create_dir(&sub).unwrap();
        for f in 0..100 {
            std::fs::write(sub.join(format!("f{f:03}")), format!("{d} {f}")).unwrap();
        }
    }
    follows(&roots, PATIENCE * 3, "10,000 new files", &daemons);
    let files = manifest(&roots[1])
        .values()
        .filter(|v| v.starts_with("file"))
        .count();
    assert_eq!(files, 10_000);
    let made = sessions(&daemons) - before;
    assert!(
        (1..=5).contains(&made),
        "{made} sessions for one burst:\n{}",
        logs(&daemons)
    );
}

#[test]
fn a_tree_created_at_once_arrives_whole_and_every_new_directory_is_watched() {
    let dir = TestDir::new("watch-tree");
    let (cfgs, roots) = nodes(&dir, "watch-tree", 2, "");
    // The tree to copy in, built outside the storages: five levels, files at each.
    let src = dir.mkdir("src/top");
    let mut deep = src.clone();
    for level in 0..5 {
        deep = deep.join(format!("l{level}"));
        std::fs::create_dir_all(deep.join("side")).unwrap();
        for f in 0..3 {
            std::fs::write(deep.join(format!("f{f}")), format!("{level}/{f}")).unwrap();
            std::fs::write(deep.join(format!("side/s{f}")), format!("s{level}/{f}")).unwrap();
        }
    }
    let daemons = start_all(&dir, &cfgs);
    let a = &roots[0];
    sh(&format!(
        "cp -r '{}' '{}/copied'",
        src.display(),
        a.display()
    ));
    follows(&roots, DELAY + MARGIN, "cp -r", &daemons);
    sh(&format!(
        "tar -C '{}' -cf '{}/t.tar' top && tar -C '{}' -xf '{}/t.tar' && mv '{}/top' '{}/untarred'",
        src.parent().unwrap().display(),
        dir.path().display(),
        a.display(),
        dir.path().display(),
        a.display(),
        a.display()
    ));
    follows(&roots, DELAY + MARGIN, "tar x", &daemons);
    // Every directory is watched: the root, and 1 + 5 × 2 in each copy.
    assert_eq!(watches(daemons[0].pid()), 1 + 2 * 11);
    // Nothing but the watches on the deepest directories can start these sessions.
    let rel_deep = deep.strip_prefix(&src).unwrap().to_owned();
    for copy in ["copied", "untarred"] {
        std::fs::write(a.join(copy).join(&rel_deep).join("later"), copy).unwrap();
        follows(
            &roots,
            DELAY + MARGIN,
            &format!("a new file deep in {copy}"),
            &daemons,
        );
    }
    assert_eq!(
        manifest(&roots[1])
            .values()
            .filter(|v| v.starts_with("file"))
            .count(),
        2 * 30 + 2
    );
}

/// The kernel's event queue limit for new inotify instances.
fn max_queued_events() -> usize {
    std::fs::read_to_string("/proc/sys/fs/inotify/max_queued_events")
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

fn signal(d: &Daemon, sig: i32) {
    // SAFETY: kill(2) on a child process we own.
    let r = unsafe { libc::kill(d.pid(), sig) };
    assert_eq!(r, 0, "kill {sig}");
}

#[test]
fn an_overflowed_event_queue_rescans_says_so_once_and_watches_what_it_missed() {
    let dir = TestDir::new("watch-overflow");
    let (cfgs, roots) = nodes(&dir, "watch-overflow", 2, "");
    dir.mkdir("wa/old");
    let daemons = start_all(&dir, &cfgs);
    // A stopped daemon reads nothing: every file below, in a watched directory, makes a
    // create, a modify and a close, half as many files again as the queue holds, so it
    // overflows for certain. The directories made meanwhile have no watch yet.
    let files = max_queued_events() / 2 + 100;
    assert!(
        files < 200_000,
        "max_queued_events is too large for this test"
    );
    signal(&daemons[0], libc::SIGSTOP);
    for i in 0..files {
        std::fs::write(roots[0].join(format!("old/f{i}")), i.to_string()).unwrap();
    }
    for d in 0..3 {
        std::fs::create_dir_all(roots[0].join(format!("new{d}/deeper"))).unwrap();
        std::fs::write(roots[0].join(format!("new{d}/deeper/f")), b"f").unwrap();
    }
    signal(&daemons[0], libc::SIGCONT);
    follows(
        &roots,
        PATIENCE * 3,
        "files made during the overflow",
        &daemons,
    );
    assert_eq!(
        daemons[0].count_log("overflowed"),
        1,
        "{}",
        daemons[0].log()
    );
    // The directories made while events were lost are watched (the rescan walks them).
    std::fs::write(roots[0].join("new2/deeper/after"), b"after").unwrap();
    follows(
        &roots,
        DELAY + MARGIN,
        "a file in a directory made during the overflow",
        &daemons,
    );
}

#[test]
fn an_exhausted_watch_limit_is_said_once_and_changes_still_arrive_by_rescan() {
    let dir = TestDir::new("watch-limit");
    let (cfgs, roots) = nodes(&dir, "watch-limit", 2, "rescan_interval = 3");
    for d in 0..10 {
        dir.write(&format!("wa/d{d}/f"), format!("{d}").as_bytes());
    }
    let b = Daemon::start(&cfgs[1].write(dir.path()));
    // Node A in a user namespace of its own whose inotify watch limit is 3 (the root and
    // two of its ten directories): the limit is per user namespace, so nothing else on the
    // machine is touched.
    let a = Daemon::start_via(
        &[
            "unshare",
            "--user",
            "--map-root-user",
            "sh",
            "-c",
            "echo 3 > /proc/sys/user/max_inotify_watches && exec \"$0\" \"$@\"",
        ],
        &cfgs[0].write(dir.path()),
    );
    let daemons = [a, b];
    follows(&roots, DELAY + MARGIN, "the first sync", &daemons);
    assert!(
        daemons[0].wait_for_log("inotify watch limit is reached", PATIENCE),
        "{}",
        daemons[0].log()
    );
    assert!(daemons[0].log().contains("fs.inotify.max_user_watches"));
    // Unwatched directories, old and new: the periodic rescan finds their changes.
    for d in 0..10 {
        std::fs::write(roots[0].join(format!("d{d}/g")), b"g").unwrap();
    }
    std::fs::create_dir(roots[0].join("fresh")).unwrap();
    std::fs::write(roots[0].join("fresh/h"), b"h").unwrap();
    follows(
        &roots,
        Duration::from_secs(3) + MARGIN,
        "changes in unwatched directories",
        &daemons,
    );
    assert_eq!(
        daemons[0].count_log("watch limit is reached"),
        1,
        "{}",
        daemons[0].log()
    );
}

#[test]
fn a_root_that_disappears_deletes_nothing_and_is_watched_again_when_it_returns() {
    let dir = TestDir::new("watch-root");
    let (cfgs, roots) = nodes(&dir, "watch-root", 2, "");
    dir.write("wa/keep", b"keep");
    let daemons = start_all(&dir, &cfgs);
    follows(&roots, DELAY + MARGIN, "the first sync", &daemons);
    let away = dir.join("away");
    std::fs::rename(&roots[0], &away).unwrap();
    assert!(
        daemons[0].wait_for_log("disappeared", PATIENCE),
        "{}",
        daemons[0].log()
    );
    // The scan the disappearance leads to refuses the missing root (it would otherwise
    // record every file as deleted).
    assert!(
        daemons[0].wait_for_log("docs: not scanned", PATIENCE),
        "{}",
        daemons[0].log()
    );
    std::fs::rename(&away, &roots[0]).unwrap();
    // Looked for again every 30 s; once watched, a change travels.
    assert!(
        daemons[0].wait_for_log("is back; watching", PATIENCE),
        "{}",
        daemons[0].log()
    );
    std::fs::write(roots[0].join("back"), b"back").unwrap();
    follows(
        &roots,
        DELAY + MARGIN,
        "a change after the root returned",
        &daemons,
    );
    assert!(
        roots[1].join("keep").exists(),
        "a vanished root deleted files"
    );
}

#[test]
fn a_disk_mounted_after_start_is_watched_once_it_is_there() {
    let dir = TestDir::new("watch-mount");
    let (cfgs, roots) = nodes(&dir, "watch-mount", 2, "");
    let disk = dir.mkdir("disk");
    std::fs::write(disk.join("old"), b"old").unwrap();
    let config_a = cfgs[0].write(dir.path());
    let b = Daemon::start(&cfgs[1].write(dir.path()));
    // A in a mount namespace of its own, so the mounts touch nothing else on the machine.
    let mounted = format!(
        "mount --bind '{}' '{}' && exec \"$0\" \"$@\"",
        disk.display(),
        roots[0].display()
    );
    let a = Daemon::start_via(
        &[
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            &mounted,
        ],
        &config_a,
    );
    let converged = wait_until(DELAY + MARGIN, || roots[1].join("old").exists());
    assert!(converged, "{}\n{}", a.log(), b.log());
    a.stop();
    // Started again before the disk is mounted: the storage's root is an empty mount point,
    // which the scan refuses (no storage marker), and the watch is on that empty directory.
    let a = Daemon::start_via(
        &[
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            "exec \"$0\" \"$@\"",
        ],
        &config_a,
    );
    assert!(a.wait_for_log("docs: not scanned", PATIENCE), "{}", a.log());
    let st = Command::new("nsenter")
        .args(["-t", &a.pid().to_string(), "-m", "mount", "--bind"])
        .arg(&disk)
        .arg(&roots[0])
        .status()
        .unwrap();
    assert!(st.success(), "nsenter mount: {st}");
    // The watcher looks at a root without its marker every 30 s and finds the disk. (The
    // peers' retries of the refused session may carry the first change too; later ones
    // need the watch on the disk.)
    assert!(
        a.wait_for_log("another directory is at", Duration::from_secs(30) + MARGIN),
        "{}",
        a.log()
    );
    std::fs::write(disk.join("new"), b"new").unwrap();
    let arrived = wait_until(DELAY + MARGIN, || roots[1].join("new").exists());
    assert!(arrived, "{}\n{}", a.log(), b.log());
    assert!(
        roots[1].join("old").exists(),
        "the unmounted disk deleted files"
    );
}

#[test]
fn what_a_daemon_cannot_read_is_kept_and_never_deleted_on_its_peers() {
    let dir = TestDir::new("watch-unreadable");
    let (cfgs, roots) = nodes(&dir, "watch-unreadable", 2, "");
    dir.write("wa/d/f", b"f");
    dir.write("wa/d/e/g", b"g");
    dir.write("wa/top", b"top");
    // The daemons run as nobody: root reads everything, whatever the mode bits say.
    sh(&format!("chown -R 65534:65534 '{}'", dir.path().display()));
    let nobody = [
        "setpriv",
        "--reuid",
        "65534",
        "--regid",
        "65534",
        "--clear-groups",
    ];
    let b = Daemon::start_via(&nobody, &cfgs[1].write(dir.path()));
    let a = Daemon::start_via(&nobody, &cfgs[0].write(dir.path()));
    let daemons = [a, b];
    follows(&roots, DELAY + MARGIN, "the first sync", &daemons);
    // A chmod is a change the watcher reports at once; the scan it leads to cannot look at
    // these any more, which is no deletion.
    sh(&format!(
        "chmod 000 '{}' '{}'",
        roots[0].join("d").display(),
        roots[0].join("top").display()
    ));
    assert!(
        daemons[0].wait_for_log("what is known of it stands", PATIENCE),
        "{}",
        daemons[0].log()
    );
    // A later change travels: its session has come and gone.
    std::fs::write(roots[0].join("later"), b"later").unwrap();
    sh(&format!(
        "chown 65534:65534 '{}'",
        roots[0].join("later").display()
    ));
    assert!(
        wait_until(DELAY + MARGIN, || roots[1].join("later").exists()),
        "{}",
        logs(&daemons)
    );
    for kept in ["d/f", "d/e/g", "top"] {
        assert!(
            roots[1].join(kept).exists(),
            "{kept} was deleted on the peer:\n{}",
            logs(&daemons)
        );
    }
    sh(&format!(
        "chmod 755 '{}' && chmod 644 '{}'",
        roots[0].join("d").display(),
        roots[0].join("top").display()
    ));
}

#[test]
fn two_nodes_changing_files_at_once_both_arrive_and_the_nodes_settle() {
    let dir = TestDir::new("watch-both");
    let (cfgs, roots) = nodes(&dir, "watch-both", 2, "");
    let daemons = start_all(&dir, &cfgs);
    let (ra, rb) = (roots[0].clone(), roots[1].clone());
    let ta = std::thread::spawn(move || {
        for i in 0..20 {
            std::fs::write(ra.join(format!("a{i}")), b"a").unwrap();
        }
    });
    let tb = std::thread::spawn(move || {
        for i in 0..20 {
            std::fs::write(rb.join(format!("b{i}")), b"b").unwrap();
        }
    });
    ta.join().unwrap();
    tb.join().unwrap();
    follows(&roots, PATIENCE, "changes on both nodes", &daemons);
    assert_eq!(manifest(&roots[0]).len(), 40);
    // Three markers, one after another: each needs one session. Were the nodes' own writes
    // starting sessions, each marker would bring more, and the count would show it.
    let settled = sessions(&daemons);
    for i in 0..3 {
        std::fs::write(roots[i % 2].join(format!("marker{i}")), b"m").unwrap();
        follows(&roots, DELAY + MARGIN, "a marker", &daemons);
    }
    let made = sessions(&daemons) - settled;
    assert!(
        made <= 4,
        "{made} sessions for three changes:\n{}",
        logs(&daemons)
    );
}

/// How many inotify watches a process holds, as the kernel lists them.
fn watches(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fdinfo"))
        .unwrap()
        .flatten()
        .filter_map(|f| std::fs::read_to_string(f.path()).ok())
        .map(|t| t.lines().filter(|l| l.starts_with("inotify wd:")).count())
        .sum()
}

#[test]
fn ignored_directories_are_not_watched_until_the_rules_change() {
    let dir = TestDir::new("watch-ignore");
    let (cfgs, roots) = nodes(&dir, "watch-ignore", 2, "");
    dir.write("wa/.ignore", b"skipped/\n");
    for d in ["skipped/x/y", "skipped/z", "kept/k"] {
        dir.mkdir(&format!("wa/{d}"));
    }
    let daemons = start_all(&dir, &cfgs);
    // The root, kept and kept/k.
    assert!(
        wait_until(PATIENCE, || watches(daemons[0].pid()) == 3),
        "{} watches\n{}",
        watches(daemons[0].pid()),
        daemons[0].log()
    );
    // The first sync leaves the ignored directories out.
    assert!(
        wait_until(DELAY + MARGIN, || roots[1].join("kept/k").is_dir()),
        "{}",
        logs(&daemons)
    );
    assert!(!roots[1].join("skipped").exists());
    // New rules and a file they admit, at once: the peer still applies its old rules
    // in the session that brings the new ones, and declines the file; the new rules
    // arriving make it synchronize again, and the file follows.
    std::fs::write(roots[0].join(".ignore"), b"# nothing ignored now\n").unwrap();
    std::fs::write(roots[0].join("skipped/x/y/now"), b"now").unwrap();
    assert!(
        wait_until(PATIENCE, || watches(daemons[0].pid()) == 7),
        "{} watches after the rules changed\n{}",
        watches(daemons[0].pid()),
        daemons[0].log()
    );
    follows(
        &roots,
        DELAY + MARGIN,
        "what the old rules ignored",
        &daemons,
    );
}

/// The names of a process's threads.
fn threads(pid: i32) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("comm")).ok())
        .map(|s| s.trim().to_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn the_watcher_runs_only_where_it_is_enabled() {
    let dir = TestDir::new("watch-switch");
    let write = |id: &str, global: bool, docs: bool| -> PathBuf {
        let text = format!(
            "node_id = \"{id}\"\nport = {}\nlisten_address = \"127.0.0.1\"\n\
             enable_service_discovery = false\nlog_path = \"{id}.db\"\n\
             enable_file_watcher = {global}\n[storages]\n\
             docs = {{ path = \"{}\", enable_watcher = {docs} }}\n\
             notes = {{ path = \"{}\", enable_watcher = false }}\n",
            free_port(),
            dir.mkdir(&format!("{id}/docs")).display(),
            dir.mkdir(&format!("{id}/notes")).display(),
        );
        let p = dir.join(&format!("{id}.toml"));
        std::fs::write(&p, text).unwrap();
        p
    };
    // One storage watched of two.
    let on = Daemon::start(&write("on", false, true));
    assert!(
        on.wait_for_log("watching 1 directory in 1 storage(s)", PATIENCE),
        "{}",
        on.log()
    );
    assert!(threads(on.pid()).contains(&"watch".to_owned()));
    // None watched: no watch thread at all.
    let off = Daemon::start(&write("off", true, false));
    assert!(off.wait_for_log("started (daemon)", PATIENCE));
    let names = threads(off.pid());
    assert!(!names.contains(&"watch".to_owned()), "{names:?}");
    assert!(!off.log().contains("watching"), "{}", off.log());
}
