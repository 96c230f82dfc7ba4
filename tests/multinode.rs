//! Groups of real nodes (processes of the real binary) on 127.0.0.1: five nodes with two
//! storages (one present on only three of them), every node triggering at once, the leader or
//! a follower killed mid-session, and one read of a file fanned out to four receivers.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic in a test is a failed test

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::*;

/// `n` node configs, every node listing every other as a peer (a full mesh), all in one group.
fn mesh(dir: &TestDir, ids: &[&str], storages: &[(&str, &[usize])]) -> Vec<NodeConfig> {
    let group = format!(
        "{}-{}",
        dir.path().file_name().unwrap().to_string_lossy(),
        std::process::id()
    );
    let mut nodes: Vec<NodeConfig> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| {
            let mut n = NodeConfig::new(id).group(&group);
            for (name, holders) in storages {
                if holders.contains(&i) {
                    n = n.storage(name, &dir.mkdir(&format!("{id}/{name}")));
                }
            }
            n
        })
        .collect();
    mesh_peers(&mut nodes);
    nodes
}

fn store(dir: &TestDir, id: &str, storage: &str) -> PathBuf {
    dir.join(&format!("{id}/{storage}"))
}

/// Waits until every listed replica has the same manifest (no temp files), or panics with
/// the daemons' logs.
fn wait_converged(replicas: &[PathBuf], logs: &dyn Fn() -> String) {
    converged_with(replicas, false, logs);
}

/// [`wait_converged`]; with `partials`, what interrupted transfers kept to resume
/// (`.iron-carrier.part.*`) may remain: the only holder of the file is away.
fn converged_with(replicas: &[PathBuf], partials: bool, logs: &dyn Fn() -> String) {
    let view = |r: &PathBuf| {
        let mut m = manifest(r);
        if partials {
            m.retain(|k, _| {
                !k.rsplit('/')
                    .next()
                    .is_some_and(|n| n.starts_with(".iron-carrier.part."))
            });
        }
        m
    };
    // Generous: the fan-out test moves 400 MiB, which took 150 s under qemu-arm on CI's two
    // cores while the next target built beside it. A converged run returns at once.
    let ok = wait_until(PATIENCE * 8, || {
        // Names and sizes first: hashing every replica's 100 MiB 50 times a second would
        // take the CPU the daemons need (under qemu the test itself is emulated too).
        let sizes = |r: &PathBuf| -> Vec<(String, u64)> {
            let mut v: Vec<(String, u64)> = std::fs::read_dir(r)
                .map(|d| {
                    d.flatten()
                        .map(|e| {
                            // A directory's own size depends on its history, not its content.
                            let len = e.metadata().map_or(u64::MAX, |m| {
                                if m.is_file() {
                                    m.len()
                                } else {
                                    0
                                }
                            });
                            (e.file_name().to_string_lossy().into_owned(), len)
                        })
                        .filter(|(n, _)| n != ".iron-carrier.storage")
                        .collect()
                })
                .unwrap_or_default();
            v.sort();
            v
        };
        let top = sizes(&replicas[0]);
        if !replicas[1..].iter().all(|r| sizes(r) == top) {
            return false;
        }
        let first = view(&replicas[0]);
        !first.keys().any(|k| k.contains(".iron-carrier."))
            && replicas[1..].iter().all(|r| view(r) == first)
    });
    if !ok {
        let all: Vec<String> = replicas
            .iter()
            .map(|r| {
                format!(
                    "{}: {:?}",
                    r.display(),
                    manifest(r).keys().collect::<Vec<_>>()
                )
            })
            .collect();
        panic!("did not converge:\n{}\n{}", all.join("\n"), logs());
    }
}

/// Session ids a node led for `storage`, from its log.
fn led_sessions(log: &str, storage: &str) -> Vec<String> {
    log.lines()
        .filter_map(|l| l.split(&format!("{storage}: leading session ")).nth(1))
        .filter_map(|rest| rest.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

/// Start and end timestamps of the sessions a node led for `storage`. Log timestamps are
/// UTC ISO-8601 from one clock, so they compare as strings across processes. A node is in one
/// session at a time, so a led session ends at the next end-of-session line.
fn led_intervals(log: &str, storage: &str) -> Vec<(String, String)> {
    let mut open: Option<String> = None;
    let mut out = Vec::new();
    for l in log.lines() {
        let ts = l.split_whitespace().next().unwrap_or("").to_owned();
        if l.contains(&format!("{storage}: leading session ")) {
            open = Some(ts);
        } else if l.contains(&format!("{storage}: session "))
            && (l.contains("session done") || l.contains("aborted"))
        {
            if let Some(start) = open.take() {
                out.push((start, ts));
            }
        }
    }
    out
}

#[test]
fn five_nodes_with_two_storages_one_on_only_three_converge() {
    let dir = TestDir::new("five");
    let ids = ["n1", "n2", "n3", "n4", "n5"];
    let nodes = mesh(
        &dir,
        &ids,
        &[("docs", &[0, 1, 2, 3, 4]), ("pics", &[0, 2, 4])],
    );
    for (i, id) in ids.iter().enumerate() {
        dir.write(&format!("{id}/docs/from-{id}.txt"), id.as_bytes());
        dir.write(
            &format!("{id}/docs/shared/sub-{i}/f.txt"),
            format!("{i}").as_bytes(),
        );
        if [0, 2, 4].contains(&i) {
            write_random(
                &store(&dir, id, "pics").join(format!("{id}.jpg")),
                300_000,
                i as u64,
            );
        }
    }
    // Everyone has "common.txt"; n3's copy is the newest and must win everywhere.
    for (i, id) in ids.iter().enumerate() {
        let p = dir.write(
            &format!("{id}/docs/common.txt"),
            format!("version {i}").as_bytes(),
        );
        set_mtime(
            &p,
            if i == 2 {
                1_800_000_000
            } else {
                1_700_000_000 + i as i64
            },
        );
    }
    let daemons: Vec<Daemon> = nodes
        .iter()
        .map(|n| Daemon::start(&n.write(dir.path())))
        .collect();
    let logs = || {
        daemons
            .iter()
            .map(Daemon::log)
            .collect::<Vec<_>>()
            .join("\n---\n")
    };
    let docs: Vec<PathBuf> = ids.iter().map(|id| store(&dir, id, "docs")).collect();
    let pics: Vec<PathBuf> = [0, 2, 4]
        .iter()
        .map(|&i| store(&dir, ids[i], "pics"))
        .collect();
    wait_converged(&docs, &logs);
    wait_converged(&pics, &logs);
    assert_eq!(
        std::fs::read_to_string(docs[0].join("common.txt")).unwrap(),
        "version 2"
    );
    assert_eq!(
        manifest(&docs[0])
            .keys()
            .filter(|k| k.starts_with("from-"))
            .count(),
        5
    );
    assert!(
        !dir.join("n2/pics").exists(),
        "pics must not appear on nodes without it"
    );
    for d in daemons {
        let (code, log) = d.stop();
        assert_eq!(code, Some(0), "{log}");
    }
}

#[test]
fn every_node_triggering_at_once_gets_one_leader_at_a_time_and_converges() {
    let dir = TestDir::new("all-at-once");
    let ids = ["m1", "m2", "m3", "m4", "m5"];
    let nodes = mesh(&dir, &ids, &[("docs", &[0, 1, 2, 3, 4])]);
    for (i, id) in ids.iter().enumerate() {
        for k in 0..20 {
            write_random(
                &store(&dir, id, "docs").join(format!("{id}/f{k}.bin")),
                10_000 + k * 100,
                (i * 100 + k as usize) as u64,
            );
        }
    }
    let configs: Vec<PathBuf> = nodes.iter().map(|n| n.write(dir.path())).collect();
    // Five one-shot runs started together: each triggers every storage as soon as it has
    // connected to all its peers.
    let runs: Vec<_> = configs
        .into_iter()
        .map(|c| std::thread::spawn(move || oneshot(&c)))
        .collect();
    let outs: Vec<_> = runs.into_iter().map(|t| t.join().unwrap()).collect();
    let all_logs: String = outs
        .iter()
        .map(|o| String::from_utf8_lossy(&o.stderr).into_owned())
        .collect::<Vec<_>>()
        .join("\n---\n");
    for o in &outs {
        assert_eq!(o.status.code(), Some(0), "{}\n{all_logs}", show(o));
    }
    let docs: Vec<PathBuf> = ids.iter().map(|id| store(&dir, id, "docs")).collect();
    for d in &docs {
        let m = manifest(d);
        let missing: Vec<String> = ids
            .iter()
            .flat_map(|id| (0..20).map(move |k| format!("{id}/f{k}.bin")))
            .filter(|p| !m.contains_key(p))
            .collect();
        assert!(
            m.len() == 5 + 100 && missing.is_empty(),
            "{} lacks {missing:?}\n{all_logs}",
            d.display()
        );
    }
    let first = manifest(&docs[0]);
    for d in &docs[1..] {
        assert_eq!(manifest(d), first, "{}\n{all_logs}", d.display());
    }
    // At most one leader at a time: no two led sessions overlap, and no session id is led
    // by two nodes.
    let mut all_ids = Vec::new();
    let mut intervals = Vec::new();
    for o in &outs {
        let log = String::from_utf8_lossy(&o.stderr);
        all_ids.extend(led_sessions(&log, "docs"));
        intervals.extend(led_intervals(&log, "docs"));
    }
    assert!(!all_ids.is_empty(), "nobody led:\n{all_logs}");
    let unique: std::collections::BTreeSet<_> = all_ids.iter().collect();
    assert_eq!(
        unique.len(),
        all_ids.len(),
        "a session id was led twice:\n{all_logs}"
    );
    intervals.sort();
    for w in intervals.windows(2) {
        assert!(w[0].1 <= w[1].0, "sessions overlap: {w:?}\n{all_logs}");
    }
}

/// Four daemons that already share small files, then a fifth one holding a big file and the
/// smallest id: it leads, and the test kills someone while the big file is on the wire.
struct KillScenario {
    dir: TestDir,
    ids: [&'static str; 5],
    configs: Vec<PathBuf>,
}

impl KillScenario {
    fn new(tag: &str) -> KillScenario {
        let dir = TestDir::new(tag);
        let ids = ["k1", "k2", "k3", "k4", "k5"];
        let nodes = mesh(&dir, &ids, &[("docs", &[0, 1, 2, 3, 4])]);
        for id in &ids {
            dir.write(&format!("{id}/docs/small-{id}.txt"), id.as_bytes());
        }
        write_random(
            &store(&dir, "k1", "docs").join("big.bin"),
            512 * 1024 * 1024,
            99,
        );
        let configs = nodes.iter().map(|n| n.write(dir.path())).collect();
        KillScenario { dir, ids, configs }
    }

    fn docs(&self, i: usize) -> PathBuf {
        store(&self.dir, self.ids[i], "docs")
    }

    fn has_temp(&self, i: usize) -> bool {
        std::fs::read_dir(self.docs(i))
            .map(|rd| {
                rd.filter_map(Result::ok).any(|e| {
                    e.file_name()
                        .to_string_lossy()
                        .starts_with(".iron-carrier.tmp")
                        && e.metadata().map(|m| m.len() > 1024 * 1024).unwrap_or(false)
                })
            })
            .unwrap_or(false)
    }
}

/// The daemon leading the session in progress: its last "leading session" line is not
/// followed by the end of that session.
fn current_leader(daemons: &[Option<Daemon>]) -> Option<usize> {
    daemons.iter().position(|d| {
        let Some(d) = d else { return false };
        let log = d.log();
        let Some(start) = log.rfind("docs: leading session ") else {
            return false;
        };
        let after = &log[start..];
        !after.contains("docs: session done") && !after.contains("aborted")
    })
}

fn kill_mid_session(kill_leader: bool) {
    let s = KillScenario::new(if kill_leader {
        "kill-leader"
    } else {
        "kill-follower"
    });
    let mut daemons: Vec<Option<Daemon>> =
        (1..5).map(|i| Some(Daemon::start(&s.configs[i]))).collect();
    daemons.insert(0, None);
    // k2..k5 first, so they settle among themselves; then k1 with the big file.
    let others: Vec<PathBuf> = (1..5).map(|i| s.docs(i)).collect();
    let logs_of = |ds: &[Option<Daemon>]| {
        ds.iter()
            .flatten()
            .map(Daemon::log)
            .collect::<Vec<_>>()
            .join("\n---\n")
    };
    wait_converged(&others, &|| logs_of(&daemons));
    daemons[0] = Some(Daemon::start(&s.configs[0]));
    // While some follower is receiving the big file, kill the victim.
    let receiving = wait_until(PATIENCE, || (1..5).any(|i| s.has_temp(i)));
    assert!(
        receiving,
        "the big file never started moving:\n{}",
        logs_of(&daemons)
    );
    // Whoever won the election leads; k1 (the only holder of the big file) sends it.
    let leader = current_leader(&daemons)
        .unwrap_or_else(|| panic!("no session in progress:\n{}", logs_of(&daemons)));
    let victim = if kill_leader {
        leader
    } else {
        // A follower that is receiving, other than the sender k1.
        (1..5)
            .find(|&i| i != leader && s.has_temp(i))
            .or_else(|| (1..5).find(|&i| i != leader))
            .expect("a follower")
    };
    daemons[victim].take().expect("victim running").kill();
    // The others do not hang: they end or abandon the session and the rest converge.
    let rest: Vec<PathBuf> = (0..5).filter(|&i| i != victim).map(|i| s.docs(i)).collect();
    // With the sender k1 gone, the others keep what they got of its file, to resume.
    converged_with(&rest, victim == 0, &|| logs_of(&daemons));
    if victim != 0 {
        // The sender is alive, so the big file reaches every remaining node.
        assert!(rest.iter().all(|r| r.join("big.bin").exists()));
    }
    for d in daemons.iter_mut().flatten() {
        assert!(d.is_running(), "a node died:\n{}", d.log());
    }
    // Restart the victim: everyone converges, big file included.
    daemons[victim] = Some(Daemon::start(&s.configs[victim]));
    let all: Vec<PathBuf> = (0..5).map(|i| s.docs(i)).collect();
    wait_converged(&all, &|| logs_of(&daemons));
    let want = file_digest(&s.docs(0).join("big.bin"));
    for r in &all {
        assert_eq!(file_digest(&r.join("big.bin")), want);
    }
    for d in daemons.into_iter().flatten() {
        let (code, log) = d.stop();
        assert_eq!(code, Some(0), "{log}");
    }
}

#[test]
fn leader_killed_mid_session_the_others_carry_on_and_converge_after_restart() {
    kill_mid_session(true);
}

#[test]
fn follower_killed_mid_session_the_others_carry_on_and_converge_after_restart() {
    kill_mid_session(false);
}

#[test]
fn a_file_four_nodes_lack_is_read_once_and_fanned_out() {
    let dir = TestDir::new("fan-out");
    let ids = ["a0", "b1", "b2", "b3", "b4"];
    let nodes = mesh(&dir, &ids, &[("docs", &[0, 1, 2, 3, 4])]);
    const SIZE: u64 = 100 * 1024 * 1024;
    write_random(&store(&dir, "a0", "docs").join("movie.bin"), SIZE, 5);
    let configs: Vec<PathBuf> = nodes.iter().map(|n| n.write(dir.path())).collect();
    let receivers: Vec<Daemon> = configs[1..].iter().map(|c| Daemon::start(c)).collect();
    let replicas: Vec<PathBuf> = ids.iter().map(|id| store(&dir, id, "docs")).collect();
    // The receivers connect to each other; they hold nothing, so they have nothing to do.
    // Whichever of them leads the fan-out names only the peers it has met, so the holder
    // starts once they all have: under qemu (mipsel) their mesh took seconds to form, and a
    // receiver left out of the session got the file from another receiver afterwards.
    for (i, r) in receivers.iter().enumerate() {
        for (j, id) in ids[1..].iter().enumerate() {
            let met = format!("sync: peer {id} connected");
            assert!(
                i == j || r.wait_for_log(&met, Duration::from_secs(120)),
                "{} never met {id}:\n{}",
                ids[i + 1],
                r.log()
            );
        }
    }
    let holder = Daemon::start(&configs[0]);
    let logs = || {
        std::iter::once(&holder)
            .chain(receivers.iter())
            .map(Daemon::log)
            .collect::<Vec<_>>()
            .join("\n---\n")
    };
    wait_converged(&replicas, &logs);
    let io = std::fs::read_to_string(format!("/proc/{}/io", holder.pid())).unwrap();
    let rchar: u64 = io
        .lines()
        .find_map(|l| l.strip_prefix("rchar: "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap();
    let log = holder.log();
    let reported: u64 = log
        .lines()
        .filter(|l| l.contains("docs: session done"))
        .filter_map(|l| l.split(", read ").nth(1))
        .filter_map(|r| r.split(' ').next())
        .filter_map(|n| n.parse::<u64>().ok())
        .sum();
    assert_eq!(
        reported,
        SIZE,
        "the holder must read the file exactly once:\n{}",
        logs()
    );
    // The kernel agrees: everything it read is one read to hash the new file for its
    // history, one to send it to all four, and little else (sockets, config, database).
    assert!(
        rchar < 2 * SIZE + SIZE / 2,
        "rchar {rchar} for a {SIZE}-byte file"
    );
    assert!(
        log.contains("sent 4 file(s)"),
        "one session must send it to all four:\n{}",
        logs()
    );
    holder.stop();
    for d in receivers {
        d.stop();
    }
}
