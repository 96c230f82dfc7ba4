//! The default node id, with real daemons: two nodes on one host (one hostname) and no
//! `node_id` in their configs get ids of their own and synchronize, keep them across a
//! restart, and a database from before (when the default was the hostname) keeps the
//! hostname.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic in a test is a failed test

mod common;

use std::path::Path;

use common::{bin, free_port, show, wait_until, Daemon, TestDir, PATIENCE};
use serde_json::Value;

/// A config without `node_id`: storage "docs" at `root`, the peers' ports.
fn config(dir: &TestDir, name: &str, port: u16, peers: &[u16], root: &Path) -> std::path::PathBuf {
    let peers: Vec<String> = peers.iter().map(|p| format!("\"127.0.0.1:{p}\"")).collect();
    let text = format!(
        "port = {port}\nlisten_address = \"127.0.0.1\"\npeers = [{}]\n\
         enable_service_discovery = false\nlog_path = \"{name}.db\"\n\
         group = \"identity-{}\"\n[storages]\ndocs = \"{}\"\n",
        peers.join(", "),
        std::process::id(),
        root.display()
    );
    dir.write(&format!("{name}.toml"), text.as_bytes())
}

fn node_id(config: &Path) -> String {
    let out = bin()
        .args(["status", "--json", "--config"])
        .arg(config)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", show(&out));
    let s: Value = serde_json::from_slice(&out.stdout).unwrap();
    s["node"]["id"].as_str().unwrap().to_owned()
}

fn hostname() -> String {
    iron_carrier::config::hostname().unwrap()
}

#[test]
fn nodes_of_one_hostname_without_node_id_get_ids_of_their_own_and_keep_them() {
    let dir = TestDir::new("identity");
    let (a_root, b_root) = (dir.mkdir("a"), dir.mkdir("b"));
    std::fs::write(b_root.join("from-b.txt"), b"b").unwrap();
    let (pa, pb) = (free_port(), free_port());
    let a_cfg = config(&dir, "a", pa, &[pb], &a_root);
    let b_cfg = config(&dir, "b", pb, &[], &b_root);

    // check-config says what the default will be before anything is made.
    let out = bin()
        .args(["check-config", "--config"])
        .arg(&a_cfg)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!("# node_id: not set: {}-XXXXXX", hostname())),
        "{}",
        show(&out)
    );
    assert!(
        !dir.join("a.db.node-id").exists(),
        "check-config made nothing"
    );

    let b = Daemon::start(&b_cfg);
    let mut a = Daemon::start(&a_cfg);
    assert!(
        wait_until(PATIENCE, || a_root.join("from-b.txt").exists()),
        "two nodes of one hostname did not synchronize:\n{}\n-----\n{}",
        a.log(),
        b.log()
    );
    let (id_a, id_b) = (node_id(&a_cfg), node_id(&b_cfg));
    assert_ne!(id_a, id_b);
    for id in [&id_a, &id_b] {
        let suffix = id.strip_prefix(&format!("{}-", hostname())).unwrap_or("");
        assert!(
            suffix.len() == 6 && suffix.chars().all(|c| c.is_ascii_hexdigit()),
            "{id} is not the hostname and 6 hex digits"
        );
    }
    let kept = std::fs::read_to_string(dir.join("a.db.node-id")).unwrap();
    assert_eq!(kept.trim(), id_a);

    // A restart keeps it; check-config shows it.
    a.kill_in_place();
    let a = Daemon::start(&a_cfg);
    assert_eq!(node_id(&a_cfg), id_a);
    let out = bin()
        .args(["check-config", "--config"])
        .arg(&a_cfg)
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&format!("node_id = \"{id_a}\"")),
        "{}",
        show(&out)
    );
    drop((a, b));
}

#[test]
fn a_database_from_before_keeps_the_hostname() {
    let dir = TestDir::new("identity-old");
    let root = dir.mkdir("a");
    let cfg = config(&dir, "old", free_port(), &[], &root);
    // A database made by a version whose default node id was the hostname alone (an empty
    // file is an empty SQLite database).
    std::fs::write(dir.join("old.db"), b"").unwrap();
    let d = Daemon::start(&cfg);
    assert_eq!(node_id(&cfg), hostname());
    assert_eq!(
        std::fs::read_to_string(dir.join("old.db.node-id"))
            .unwrap()
            .trim(),
        hostname()
    );
    drop(d);
}
