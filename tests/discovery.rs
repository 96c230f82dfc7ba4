//! Service discovery for real: nodes in network namespaces of their own (`ip netns`), joined
//! by veth pairs to a bridge in one more namespace, addresses from 198.18.0.0/15, and real
//! node processes started in them with `ip netns exec`. No multicast route is added (but
//! under qemu, see `Segment::build`): the announcements must find their interface by
//! themselves, as on a machine whose only route is a default one elsewhere. Nothing leaves the namespaces, and they are removed when a
//! test ends, failed or not. Where namespaces cannot be made (not root), each test says
//! SKIPPED on the terminal and does nothing.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic in a test is a failed test

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::netns::{ip, Segment};
use common::{manifest, wait_until, Daemon, TestDir, PATIENCE};

/// A node's config: discovery on (the default, so not written), no `peers`, listening on
/// every address of its host, one storage "docs" at `root`.
fn config(dir: &TestDir, id: &str, group: &str, root: &Path, extra: &str) -> PathBuf {
    let text = format!(
        "node_id = \"{id}\"\ngroup = \"{group}\"\nport = 25230\nlog_path = \"{id}.db\"\n\
         {extra}\n[storages]\ndocs = \"{}\"\n",
        root.display()
    );
    dir.write(&format!("{id}.toml"), text.as_bytes())
}

/// Waits until every tree in `roots` holds the same files (markers aside) and `want` of
/// them, showing the daemons' logs if not.
fn converge(roots: &[PathBuf], want: &[&str], what: &str, daemons: &[&Daemon]) {
    let ok = wait_until(PATIENCE, || {
        let first = manifest(&roots[0]);
        want.iter().all(|f| first.contains_key(*f))
            && roots[1..].iter().all(|r| manifest(r) == first)
    });
    if !ok {
        let logs: Vec<String> = daemons.iter().map(|d| d.log()).collect();
        let trees: Vec<String> = roots.iter().map(|r| format!("{:?}", manifest(r))).collect();
        panic!(
            "{what}: no convergence\ntrees:\n{}\nlogs:\n{}",
            trees.join("\n"),
            logs.join("\n-----\n")
        );
    }
}

#[test]
fn three_nodes_of_a_group_find_each_other_and_a_fourth_group_stays_apart() {
    let Some(seg) = Segment::new("three_nodes_of_a_group…", 4) else {
        return;
    };
    let dir = TestDir::new("disc-three");
    let roots: Vec<PathBuf> = (1..=4).map(|i| dir.mkdir(&format!("r{i}"))).collect();
    for (i, r) in roots.iter().enumerate() {
        std::fs::write(r.join(format!("from-{}.txt", i + 1)), format!("{i}")).unwrap();
    }
    let group = "family";
    let mut daemons = Vec::new();
    for i in 1..=3 {
        let c = config(&dir, &format!("n{i}"), group, &roots[i - 1], "");
        daemons.push(seg.daemon(i, &c));
    }
    // A neighbour of another group, same service, same port, same segment.
    let c = config(&dir, "outsider-7", "neighbours", &roots[3], "");
    let stranger = seg.daemon(4, &c);
    let all: Vec<&Daemon> = daemons.iter().chain([&stranger]).collect();
    converge(
        &roots[..3],
        &["from-1.txt", "from-2.txt", "from-3.txt"],
        "the group",
        &all,
    );
    for (i, d) in daemons.iter().enumerate() {
        for j in (1..=3).filter(|j| *j != i + 1) {
            let seen = format!("discovered n{j} at 198.18.0.{j}:25230");
            let connected = format!("connected to n{j} at 198.18.0.{j}");
            assert!(
                d.log().contains(&seen) || d.log().contains(&connected),
                "n{} never found n{j}:\n{}",
                i + 1,
                d.log()
            );
        }
    }
    // A change after the first convergence travels too: by then every announcement of the
    // stranger has long been heard, so if it were taken for a peer, its file would be here.
    std::fs::write(roots[0].join("later.txt"), b"later").unwrap();
    converge(&roots[..3], &["later.txt"], "a later change", &all);
    for r in &roots[..3] {
        assert!(
            !r.join("from-4.txt").exists(),
            "the stranger's file arrived"
        );
    }
    assert_eq!(
        manifest(&roots[3]).keys().collect::<Vec<_>>(),
        ["from-4.txt"],
        "the stranger received something"
    );
    for d in &daemons {
        assert!(
            !d.log().contains("outsider-7"),
            "a node dialled the stranger:\n{}",
            d.log()
        );
    }
    assert!(
        !stranger.log().contains("connected to"),
        "the stranger connected:\n{}",
        stranger.log()
    );
    // The threads a discovering daemon runs, by name.
    let names = thread_names(daemons[0].pid());
    for t in ["net", "sync", "watch", "signals", "mdns"] {
        assert!(names.iter().any(|n| n == t), "no {t} thread: {names:?}");
    }
    drop(daemons);
    drop(stranger);
    drop(seg);
}

/// The names of a process's threads (its `comm`s); under cross-test, of the emulated
/// program, which is the process itself.
fn thread_names(pid: i32) -> Vec<String> {
    let mut out = Vec::new();
    // `ip netns exec` execs the program: the daemon's pid is the child's.
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for t in tasks.flatten() {
            if let Ok(c) = std::fs::read_to_string(t.path().join("comm")) {
                out.push(c.trim().to_owned());
            }
        }
    }
    out.sort();
    out
}

#[test]
fn a_node_restarted_at_a_new_address_is_found_again() {
    let Some(seg) = Segment::new("a_node_restarted…", 2) else {
        return;
    };
    let dir = TestDir::new("disc-moved");
    let roots = [dir.mkdir("a"), dir.mkdir("b")];
    std::fs::write(roots[0].join("one.txt"), b"one").unwrap();
    let ca = config(&dir, "node-a", "g", &roots[0], "");
    let cb = config(&dir, "node-b", "g", &roots[1], "");
    let a = seg.daemon(1, &ca);
    let b = seg.daemon(2, &cb);
    converge(&roots, &["one.txt"], "before the move", &[&a, &b]);
    let (_, log_b) = b.stop();
    assert!(log_b.contains("stopped"), "{log_b}");
    seg.set_addr(2, "198.18.0.22").unwrap();
    std::fs::write(roots[1].join("two.txt"), b"two").unwrap();
    let b = seg.daemon(2, &cb);
    converge(&roots, &["one.txt", "two.txt"], "after the move", &[&a, &b]);
    assert!(
        a.log().contains("discovered node-b at 198.18.0.22:25230")
            || b.log().contains("discovered node-a at 198.18.0.1:25230"),
        "not found again by discovery:\n{}\n-----\n{}",
        a.log(),
        b.log()
    );
    // And a change on A reaches B at its new address.
    std::fs::write(roots[0].join("three.txt"), b"three").unwrap();
    converge(&roots, &["three.txt"], "a change after the move", &[&a, &b]);
}

#[test]
fn a_one_shot_run_finds_daemons_says_whom_and_alone_says_nobody_came() {
    let Some(seg) = Segment::new("a_one_shot_run_finds…", 3) else {
        return;
    };
    let dir = TestDir::new("disc-oneshot");
    let roots = [dir.mkdir("a"), dir.mkdir("b"), dir.mkdir("c")];
    std::fs::write(roots[0].join("from-a.txt"), b"a").unwrap();
    let cb = config(&dir, "node-b", "g", &roots[1], "");
    let cc = config(&dir, "node-c", "g", &roots[2], "");
    let ca = config(&dir, "node-a", "g", &roots[0], "");
    let b = seg.daemon(2, &cb);
    let c = seg.daemon(3, &cc);
    let out = seg.oneshot(1, &ca, PATIENCE);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let shown = format!("{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{shown}");
    assert!(stdout.contains("node-b at 198.18.0.2:25230"), "{shown}");
    assert!(stdout.contains("node-c at 198.18.0.3:25230"), "{shown}");
    assert!(
        stdout.lines().any(|l| l.starts_with("discovered: ")),
        "{shown}"
    );
    assert!(roots[1].join("from-a.txt").exists() && roots[2].join("from-a.txt").exists());
    drop(b);
    drop(c);
    // Alone on the segment: nobody announces, nobody is configured.
    let out = seg.oneshot(1, &ca, PATIENCE);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("no peer found"), "{stdout}");
}

#[test]
fn without_discovery_static_peers_work_and_without_either_a_node_says_so() {
    let Some(seg) = Segment::new("without_discovery…", 2) else {
        return;
    };
    let dir = TestDir::new("disc-off");
    let roots = [dir.mkdir("a"), dir.mkdir("b")];
    std::fs::write(roots[0].join("static.txt"), b"s").unwrap();
    let off = "enable_service_discovery = false";
    let ca = config(
        &dir,
        "node-a",
        "g",
        &roots[0],
        &format!("{off}\npeers = [\"198.18.0.2:25230\"]"),
    );
    let cb = config(&dir, "node-b", "g", &roots[1], off);
    let b = seg.daemon(2, &cb);
    let a = seg.daemon(1, &ca);
    converge(&roots, &["static.txt"], "static peers", &[&a, &b]);
    assert!(!a.log().contains("discovery:"), "{}", a.log());
    assert_eq!(
        thread_names(a.pid())
            .iter()
            .filter(|n| *n == "mdns")
            .count(),
        0
    );
    assert!(
        b.log().contains("nobody to sync with"),
        "node-b has no peers and no discovery:\n{}",
        b.log()
    );
    drop(a);
    drop(b);
    let out = seg.oneshot(2, &cb, PATIENCE);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("no peers are configured"), "{stdout}");
}

#[test]
fn a_host_without_a_usable_interface_warns_once_and_syncs_with_its_peers() {
    let Some(seg) = Segment::new("a_host_without…", 1) else {
        return;
    };
    // Host 1 loses its only interface but loopback: two nodes on it, configured peers on
    // 127.0.0.1, discovery on.
    ip(&["-n", seg.ns(1), "link", "set", "eth0", "down"]).unwrap();
    let dir = TestDir::new("disc-none");
    let roots = [dir.mkdir("a"), dir.mkdir("b")];
    std::fs::write(roots[0].join("lo.txt"), b"lo").unwrap();
    let ca = config(
        &dir,
        "node-a",
        "g",
        &roots[0],
        "peers = [\"127.0.0.1:25231\"]",
    );
    let cb = dir.write(
        "node-b.toml",
        format!(
            "node_id = \"node-b\"\ngroup = \"g\"\nport = 25231\nlog_path = \"node-b.db\"\n\
             [storages]\ndocs = \"{}\"\n",
            roots[1].display()
        )
        .as_bytes(),
    );
    let b = seg.daemon(1, &cb);
    let a = seg.daemon(1, &ca);
    converge(&roots, &["lo.txt"], "over loopback", &[&a, &b]);
    for d in [&a, &b] {
        assert_eq!(d.count_log("no usable network interface"), 1, "{}", d.log());
    }
}

/// Sends `packets` mDNS answers of `per` A records each, every record a new name under our
/// service, from host `i` (names numbered from `first`): what a host announcing ever new
/// names sends.
fn flood(seg: &Segment, i: usize, first: u64, packets: u64, per: u64) {
    const SCRIPT: &str = r#"
import socket, struct, sys
src, n, packets, per = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(src))
def name(k):
    out = b""
    for label in ("junk%d" % k, "_ironcarrier", "_tcp", "local"):
        out += bytes([len(label)]) + label.encode()
    return out + b"\0"
for _ in range(packets):
    body = b""
    for _ in range(per):
        body += name(n) + struct.pack(">HHIHI", 1, 1, 120, 4, 0x0a000000 + n % 0xffffff)
        n += 1
    s.sendto(struct.pack(">HHHHHH", 0, 0x8400, 0, per, 0, 0) + body, ("224.0.0.251", 5353))
"#;
    let status = Command::new("ip")
        .args(["netns", "exec", seg.ns(i), "python3", "-c", SCRIPT])
        .arg(format!("198.18.0.{i}"))
        .args([first.to_string(), packets.to_string(), per.to_string()])
        .status()
        .expect("run python3");
    assert!(status.success(), "the flood script failed");
}

fn rss_kib(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// The mDNS crate keeps every record it hears, without a bound. A host announcing ever new
/// names makes discovery pause (said once in the log) with its memory frozen, while the
/// configured peer keeps synchronizing.
#[test]
fn a_flood_of_announcements_pauses_discovery_and_memory_stops_growing() {
    let Some(seg) = Segment::new("a_flood_of_announcements…", 2) else {
        return;
    };
    let dir = TestDir::new("disc-flood");
    let roots = [dir.mkdir("a"), dir.mkdir("b")];
    std::fs::write(roots[0].join("before.txt"), b"before").unwrap();
    let ca = config(
        &dir,
        "node-a",
        "g",
        &roots[0],
        "peers = [\"198.18.0.2:25230\"]\ndelay_watcher_events = 0",
    );
    let cb = config(
        &dir,
        "node-b",
        "g",
        &roots[1],
        "enable_service_discovery = false\ndelay_watcher_events = 0",
    );
    let b = seg.daemon(2, &cb);
    let a = seg.daemon(1, &ca);
    converge(&roots, &["before.txt"], "before the flood", &[&a, &b]);
    // Rounds of 300 packets until the pause is said: a receive buffer that overflows drops
    // some of them, so how many it takes is not fixed.
    let mut first = 0;
    let tripped = wait_until(PATIENCE, || {
        flood(&seg, 2, first, 300, 10);
        first += 3000;
        a.log().contains("(a flood?)")
    });
    assert!(tripped, "no pause after {first} records:\n{}", a.log());
    let before = rss_kib(a.pid());
    flood(&seg, 2, first, 3000, 10);
    // A change on B reaches A: the configured peer is unaffected, and by then the 30,000
    // records above would long have been taken in if the instances still listened.
    std::fs::write(roots[1].join("after.txt"), b"after").unwrap();
    converge(&roots, &["after.txt"], "during the flood", &[&a, &b]);
    let after = rss_kib(a.pid());
    // Under cross-test the process is qemu, whose RSS grows with the code it translates
    // (the session above runs paths not run before): natively only. The pause itself, and
    // the peer unaffected by it, are checked everywhere.
    if std::env::var_os("IC_TEST_RUNNER").is_none() {
        assert!(
            after < before + 1024,
            "memory grew from {before} to {after} KiB during a paused flood"
        );
    }
    assert_eq!(a.count_log("(a flood?)"), 1, "{}", a.log());
}
