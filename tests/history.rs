//! History between real processes on 127.0.0.1, each with its own SQLite database file:
//! deletions, renames and directory changes reach the other nodes (one-shot and daemon), a
//! rename moves no file data, a node that was offline or stopped catches up without bringing
//! anything back, an edit beats a concurrent deletion, concurrent edits keep every version as
//! conflict copies on every node, a storage root that is not the one synchronized before
//! costs the peers nothing, and a database that cannot be trusted stops the node before it
//! touches a file.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic in a test is a failed test

mod common;

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Output;

use common::*;

const MIB: u64 = 1024 * 1024;

/// `n` nodes `n0`, `n1`, … with storage "docs" in `<dir>/<id>`, a full mesh in a group of
/// their own, configs (and databases) in `<dir>`.
struct Net {
    dir: TestDir,
    nodes: Vec<NodeConfig>,
    configs: Vec<PathBuf>,
}

impl Net {
    fn new(tag: &str, n: usize) -> Net {
        let dir = TestDir::new(tag);
        let group = format!("{tag}-{}", std::process::id());
        let mut nodes: Vec<NodeConfig> = (0..n)
            .map(|i| {
                let id = format!("n{i}");
                NodeConfig::new(&id)
                    .group(&group)
                    .storage("docs", &dir.mkdir(&id))
            })
            .collect();
        mesh_peers(&mut nodes);
        let configs = nodes.iter().map(|c| c.write(dir.path())).collect();
        Net {
            dir,
            nodes,
            configs,
        }
    }

    fn root(&self, i: usize) -> PathBuf {
        self.dir.join(&format!("n{i}"))
    }

    fn file(&self, i: usize, rel: &str) -> PathBuf {
        self.root(i).join(rel)
    }

    fn write(&self, i: usize, rel: &str, content: &[u8]) {
        let p = self.file(i, rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, content).unwrap();
    }

    fn daemon(&self, i: usize) -> Daemon {
        Daemon::start(&self.configs[i])
    }

    /// A one-shot run of node `i`, which must succeed.
    fn run(&self, i: usize, logs: &[&Daemon]) -> Output {
        let out = oneshot(&self.configs[i]);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}\n{}",
            show(&out),
            all_logs(logs)
        );
        out
    }

    fn db(&self, i: usize) -> PathBuf {
        self.dir.join(&format!("n{i}.db"))
    }

    /// Waits until the replicas `which` agree (no temporary files), or fails with `logs`.
    fn wait_same(&self, which: &[usize], logs: &[&Daemon]) {
        let ok = wait_until(PATIENCE * 2, || {
            let first = manifest(&self.root(which[0]));
            !first.keys().any(|k| k.contains(".iron-carrier."))
                && which[1..].iter().all(|&i| manifest(&self.root(i)) == first)
        });
        assert!(
            ok,
            "replicas {which:?} never agreed: {:?}\n{}",
            which
                .iter()
                .map(|&i| manifest(&self.root(i)).into_keys().collect::<Vec<_>>())
                .collect::<Vec<_>>(),
            all_logs(logs)
        );
    }
}

fn all_logs(logs: &[&Daemon]) -> String {
    logs.iter()
        .map(|d| d.log())
        .collect::<Vec<_>>()
        .join("\n---\n")
}

fn names(root: &Path) -> Vec<String> {
    manifest(root).into_keys().collect()
}

fn conflict_copies(root: &Path) -> BTreeMap<String, String> {
    manifest(root)
        .into_iter()
        .filter(|(k, _)| k.contains(".sync-conflict-"))
        .collect()
}

#[test]
fn deletions_renames_and_directory_changes_reach_the_other_node_and_stay() {
    // n1 is a daemon, n0 runs by hand: the one-shot side makes every change between runs.
    let net = Net::new("hist-oneshot", 2);
    net.write(0, "gone.txt", b"delete me\n");
    net.write(0, "keep.txt", b"keep me\n");
    write_random(&net.file(0, "big.bin"), 20 * MIB, 1);
    for i in 0..200 {
        net.write(
            0,
            &format!("album/p{i:03}.jpg"),
            format!("photo {i}").as_bytes(),
        );
    }
    for i in 0..20 {
        net.write(0, &format!("old/f{i}"), b"old stuff");
    }
    let d1 = net.daemon(1);
    net.run(0, &[&d1]);
    net.wait_same(&[0, 1], &[&d1]);
    let ino_before = std::fs::metadata(net.file(1, "big.bin")).unwrap().ino();

    std::fs::remove_file(net.file(0, "gone.txt")).unwrap();
    std::fs::create_dir(net.file(0, "videos")).unwrap();
    std::fs::rename(net.file(0, "big.bin"), net.file(0, "videos/big.bin")).unwrap();
    std::fs::rename(net.file(0, "album"), net.file(0, "photos-2026")).unwrap();
    std::fs::remove_dir_all(net.file(0, "old")).unwrap();
    let out = net.run(0, &[&d1]);
    net.wait_same(&[0, 1], &[&d1]);
    let got = names(&net.root(1));
    assert!(!got.contains(&"gone.txt".to_owned()), "{got:?}");
    assert!(!got
        .iter()
        .any(|k| k.starts_with("album") || k.starts_with("old")));
    assert!(got.contains(&"photos-2026/p199.jpg".to_owned()));
    // Renamed, not sent: the same inode under the new name, and almost nothing on the wire.
    assert_eq!(
        std::fs::metadata(net.file(1, "videos/big.bin"))
            .unwrap()
            .ino(),
        ino_before
    );
    let bytes = wire_total(&out);
    assert!(bytes < 64 * 1024, "{bytes} bytes on the wire for renames");

    // Nothing comes back, from either side.
    let again = net.run(0, &[&d1]);
    net.wait_same(&[0, 1], &[&d1]);
    assert_eq!(names(&net.root(0)), got, "{}", show(&again));

    // And the other way: the daemon's side deletes while the one-shot node is not running.
    std::fs::remove_file(net.file(1, "keep.txt")).unwrap();
    net.run(0, &[&d1]);
    assert!(!net.file(0, "keep.txt").exists());
    d1.stop();
}

#[test]
fn daemons_replay_deletions_and_a_renamed_directory_of_a_thousand_files() {
    let net = Net::new("hist-daemons", 2);
    for i in 0..1000 {
        net.write(
            0,
            &format!("photos/{:02}/img{i:04}.jpg", i % 10),
            format!("{i}").as_bytes(),
        );
    }
    net.write(0, "notes.txt", b"notes\n");
    let d0 = net.daemon(0);
    let d1 = net.daemon(1);
    net.wait_same(&[0, 1], &[&d0, &d1]);
    let ino = |p: &Path| std::fs::metadata(p).unwrap().ino();
    let before = ino(&net.file(1, "photos/07/img0007.jpg"));

    // There is no watcher yet: a daemon syncs when a peer connects, so n0 makes its
    // changes and restarts.
    d0.stop();
    std::fs::rename(net.file(0, "photos"), net.file(0, "pictures")).unwrap();
    std::fs::remove_file(net.file(0, "notes.txt")).unwrap();
    let d0 = net.daemon(0);
    net.wait_same(&[0, 1], &[&d0, &d1]);
    assert!(!net.file(1, "photos").exists());
    assert!(!net.file(1, "notes.txt").exists());
    assert_eq!(
        ino(&net.file(1, "pictures/07/img0007.jpg")),
        before,
        "renamed, not sent"
    );
    d0.stop();
    d1.stop();
}

#[test]
fn a_node_offline_during_a_deletion_deletes_it_too_when_it_returns() {
    let net = Net::new("hist-offline", 3);
    net.write(0, "x.txt", b"soon gone\n");
    net.write(0, "y.txt", b"stays\n");
    let d: Vec<Daemon> = (0..3).map(|i| net.daemon(i)).collect();
    net.wait_same(&[0, 1, 2], &d.iter().collect::<Vec<_>>());
    let mut d = d;
    let d2 = d.pop().unwrap();
    d2.stop();
    // n0 deletes x.txt and restarts (a daemon syncs when a peer connects).
    let d0 = d.remove(0);
    d0.stop();
    std::fs::remove_file(net.file(0, "x.txt")).unwrap();
    d.insert(0, net.daemon(0));
    let logs: Vec<&Daemon> = d.iter().collect();
    assert!(
        wait_until(PATIENCE, || !net.file(1, "x.txt").exists()),
        "{}",
        all_logs(&logs)
    );
    assert!(net.file(2, "x.txt").exists(), "n2 was off");
    let d2 = net.daemon(2);
    let logs: Vec<&Daemon> = d.iter().chain(std::iter::once(&d2)).collect();
    assert!(
        wait_until(PATIENCE, || !net.file(2, "x.txt").exists()),
        "{}",
        all_logs(&logs)
    );
    net.wait_same(&[0, 1, 2], &logs);
    assert_eq!(names(&net.root(0)), vec!["y.txt".to_owned()]);
    d2.stop();
    for x in d {
        x.stop();
    }
}

#[test]
fn a_deletion_made_while_the_daemon_was_stopped_propagates() {
    let net = Net::new("hist-stopped", 2);
    net.write(1, "old-report.pdf", b"%PDF old\n");
    net.write(1, "current.pdf", b"%PDF new\n");
    let d0 = net.daemon(0);
    let d1 = net.daemon(1);
    net.wait_same(&[0, 1], &[&d0, &d1]);
    d1.stop();
    std::fs::remove_file(net.file(1, "old-report.pdf")).unwrap();
    let d1 = net.daemon(1);
    assert!(
        wait_until(PATIENCE, || !net.file(0, "old-report.pdf").exists()),
        "{}",
        all_logs(&[&d0, &d1])
    );
    net.wait_same(&[0, 1], &[&d0, &d1]);
    assert!(net.file(0, "current.pdf").exists());
    d0.stop();
    d1.stop();
}

#[test]
fn an_edit_concurrent_with_a_deletion_survives_everywhere() {
    let net = Net::new("hist-edit-delete", 2);
    net.write(0, "plan.txt", b"v1\n");
    let d1 = net.daemon(1);
    net.run(0, &[&d1]);
    d1.stop();
    // Apart from each other: n0 edits, n1 deletes.
    net.write(
        0,
        "plan.txt",
        b"v2, edited while the other side deleted it\n",
    );
    std::fs::remove_file(net.file(1, "plan.txt")).unwrap();
    let d1 = net.daemon(1);
    net.run(0, &[&d1]);
    net.wait_same(&[0, 1], &[&d1]);
    assert_eq!(
        std::fs::read(net.file(1, "plan.txt")).unwrap(),
        b"v2, edited while the other side deleted it\n"
    );
    d1.stop();
}

#[test]
fn concurrent_edits_on_two_nodes_keep_both_versions_on_both() {
    let net = Net::new("hist-conflict-2", 2);
    net.write(0, "notes/todo.txt", b"v1\n");
    let d1 = net.daemon(1);
    net.run(0, &[&d1]);
    d1.stop();
    net.write(0, "notes/todo.txt", b"n0's edit\n");
    set_mtime(&net.file(0, "notes/todo.txt"), 1_800_000_200);
    net.write(1, "notes/todo.txt", b"n1's edit\n");
    set_mtime(&net.file(1, "notes/todo.txt"), 1_800_000_100);
    let d1 = net.daemon(1);
    net.run(0, &[&d1]);
    net.wait_same(&[0, 1], &[&d1]);
    for i in 0..2 {
        // The most recent modification keeps the name.
        assert_eq!(
            std::fs::read(net.file(i, "notes/todo.txt")).unwrap(),
            b"n0's edit\n"
        );
        let copies = conflict_copies(&net.root(i));
        // 1_800_000_100 is 2027-01-15 08:01:40 UTC.
        let name = "notes/todo.sync-conflict-20270115-080140-n1.txt";
        assert_eq!(copies.keys().collect::<Vec<_>>(), vec![name], "n{i}");
        assert_eq!(std::fs::read(net.file(i, name)).unwrap(), b"n1's edit\n");
    }
    d1.stop();
}

#[test]
fn concurrent_edits_on_three_nodes_keep_every_version_on_every_node() {
    let net = Net::new("hist-conflict-3", 3);
    net.write(0, "shared.txt", b"v1\n");
    let d1 = net.daemon(1);
    let d2 = net.daemon(2);
    net.run(0, &[&d1, &d2]);
    net.wait_same(&[0, 1, 2], &[&d1, &d2]);
    d1.stop();
    d2.stop();
    for i in 0..3 {
        net.write(i, "shared.txt", format!("edit by n{i}\n").as_bytes());
        set_mtime(&net.file(i, "shared.txt"), 1_800_000_000 + 100 * i as i64);
    }
    let d1 = net.daemon(1);
    let d2 = net.daemon(2);
    net.run(0, &[&d1, &d2]);
    net.wait_same(&[0, 1, 2], &[&d1, &d2]);
    for i in 0..3 {
        assert_eq!(
            std::fs::read(net.file(i, "shared.txt")).unwrap(),
            b"edit by n2\n"
        );
        let copies = conflict_copies(&net.root(i));
        assert_eq!(copies.len(), 2, "n{i}: {copies:?}");
        let mut contents: Vec<Vec<u8>> = copies
            .keys()
            .map(|k| std::fs::read(net.file(i, k)).unwrap())
            .collect();
        contents.sort();
        assert_eq!(
            contents,
            vec![b"edit by n0\n".to_vec(), b"edit by n1\n".to_vec()]
        );
    }
    d1.stop();
    d2.stop();
}

/// n1's storage root is replaced while it is stopped — by an empty folder (a card not
/// mounted), by nothing, or (as root) by a copy on another file system: n1 refuses to
/// synchronize that storage, says why, and n0 loses nothing.
#[test]
fn a_root_that_is_not_the_one_synchronized_before_costs_the_peers_nothing() {
    let mut cases = vec!["empty", "missing"];
    if unsafe { libc::geteuid() } == 0 {
        cases.push("other file system");
    }
    for case in cases {
        let net = Net::new(&format!("hist-root-{}", case.replace(' ', "-")), 2);
        for i in 0..20 {
            net.write(0, &format!("pics/{i}.jpg"), b"precious");
        }
        let d1 = net.daemon(1);
        net.run(0, &[&d1]);
        net.wait_same(&[0, 1], &[&d1]);
        d1.stop();
        let before = manifest(&net.root(0));
        let root = net.root(1);
        let aside = net.dir.join("n1-aside");
        let mut mounted = false;
        match case {
            "empty" => {
                std::fs::rename(&root, &aside).unwrap();
                std::fs::create_dir(&root).unwrap();
            }
            "missing" => std::fs::rename(&root, &aside).unwrap(),
            _ => {
                // The same files and marker, on a tmpfs: only the device tells.
                std::fs::rename(&root, &aside).unwrap();
                std::fs::create_dir(&root).unwrap();
                let st = std::process::Command::new("mount")
                    .args(["-t", "tmpfs", "tmpfs"])
                    .arg(&root)
                    .status()
                    .unwrap();
                assert!(st.success(), "mount tmpfs");
                mounted = true;
                let st = std::process::Command::new("cp")
                    .arg("-a")
                    .arg(format!("{}/.", aside.display()))
                    .arg(&root)
                    .status()
                    .unwrap();
                assert!(st.success());
            }
        }
        let mut d1 = net.daemon(1);
        let out = oneshot(&net.configs[0]);
        let log = d1.log();
        let running = d1.is_running();
        if mounted {
            d1.stop();
            let _ = std::process::Command::new("umount").arg(&root).status();
        } else {
            d1.stop();
        }
        assert_eq!(
            manifest(&net.root(0)),
            before,
            "{case}: n0 lost files\n{log}"
        );
        assert_ne!(out.status.code(), Some(0), "{case}: {}", show(&out));
        if running {
            assert!(
                log.contains("not the folder synchronized before")
                    || log.contains("another file system")
                    || log.contains("storage root"),
                "{case}: {log}"
            );
        }
        let _ = &net.nodes;
    }
}

/// A database n0 cannot trust — damaged, written by a newer version, in use by another
/// process: a clear error naming the file, exit code 3, and no file touched on either node.
#[test]
fn a_database_that_cannot_be_trusted_stops_the_node_before_it_touches_a_file() {
    let net = Net::new("hist-db", 2);
    net.write(0, "a.txt", b"a\n");
    let d1 = net.daemon(1);
    net.run(0, &[&d1]);
    std::fs::remove_file(net.file(0, "a.txt")).unwrap();
    let before = (manifest(&net.root(0)), manifest(&net.root(1)));
    let db = net.db(0);
    let pristine = std::fs::read(&db).unwrap();

    // Damaged: the header overwritten.
    let mut damaged = pristine.clone();
    damaged[..16].copy_from_slice(b"not a database!!");
    std::fs::write(&db, &damaged).unwrap();
    let out = oneshot(&net.configs[0]);
    assert_eq!(out.status.code(), Some(3), "{}", show(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&db.display().to_string()), "{err}");
    assert_eq!(std::fs::read(&db).unwrap(), damaged, "left as it was");
    assert_eq!((manifest(&net.root(0)), manifest(&net.root(1))), before);

    // Newer: a schema version this build does not know.
    std::fs::write(&db, &pristine).unwrap();
    {
        let conn = rusqlite::Connection::open(&db).unwrap();
        conn.pragma_update(None, "user_version", 99).unwrap();
    }
    let out = oneshot(&net.configs[0]);
    assert_eq!(out.status.code(), Some(3), "{}", show(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("newer"),
        "{}",
        show(&out)
    );
    assert_eq!((manifest(&net.root(0)), manifest(&net.root(1))), before);

    // Locked: a daemon of n0 holds it; a one-shot run on another port with the same
    // database is refused.
    std::fs::write(&db, &pristine).unwrap();
    let _ = std::fs::remove_file(db.with_extension("db-wal"));
    let _ = std::fs::remove_file(db.with_extension("db-shm"));
    let holder = net.daemon(0);
    assert!(holder.wait_for_log("started", PATIENCE), "{}", holder.log());
    let text = std::fs::read_to_string(&net.configs[0]).unwrap();
    let other_port = free_port();
    let text = text
        .replace(
            &format!("port = {}", net.nodes[0].port),
            &format!("port = {other_port}"),
        )
        .replace(
            "log_path = \"n0.db\"",
            &format!("log_path = \"{}\"", db.display()),
        );
    let second = net.dir.mkdir("second");
    std::fs::write(second.join("n0.toml"), text).unwrap();
    let out = oneshot(&second.join("n0.toml"));
    assert_eq!(out.status.code(), Some(3), "{}", show(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("in use"),
        "{}",
        show(&out)
    );
    holder.stop();
    d1.stop();
}
