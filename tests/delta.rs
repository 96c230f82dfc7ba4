//! Delta transfer between two real processes on 127.0.0.1: only the changed parts of a file
//! that exists on both sides cross the network. Each test changes A's copy of a big file in
//! one way, syncs B (a daemon with the old version) from A (a one-shot run), checks B ends
//! with exactly A's bytes, and checks the bytes on the wire that A counted (both ways).

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic in a test is a failed test

mod common;

use std::io::{Seek, SeekFrom, Write};
use std::path::Path;

use common::*;

const MIB: u64 = 1024 * 1024;

/// B holds `old` (an older mtime), A holds `new`: sync and return A's wire total.
fn sync_change(tag: &str, size: u64, change: impl FnOnce(&Path)) -> u64 {
    let dir = TestDir::new(tag);
    let (a, b) = pair_configs(&dir, tag);
    let old = dir.join("b/disk.img");
    write_random(&old, size, 11);
    set_mtime(&old, 1_600_000_000);
    let new = dir.join("a/disk.img");
    std::fs::copy(&old, &new).unwrap();
    change(&new);
    set_mtime(&new, 1_700_000_000);
    let want = file_digest(&new);

    let daemon = Daemon::start(&b.write(dir.path()));
    let out = oneshot(&a.write(dir.path()));
    let (_, log) = daemon.stop();
    assert_eq!(out.status.code(), Some(0), "{}\n{log}", show(&out));
    assert_eq!(
        file_digest(&old),
        want,
        "B does not hold A's version:\n{log}"
    );
    assert!(
        !manifest(&dir.join("b"))
            .keys()
            .any(|k| k.contains(".iron-carrier.")),
        "temp left behind"
    );
    let wire = wire_total(&String::from_utf8_lossy(&out.stdout));
    eprintln!("{tag}: {wire} bytes on the wire");
    wire
}

/// Sent + received bytes from the one-shot summary's "network:" line.
fn wire_total(stdout: &str) -> u64 {
    let line = stdout
        .lines()
        .find(|l| l.starts_with("network: "))
        .unwrap_or_else(|| panic!("no network line in {stdout}"));
    let nums: Vec<u64> = line
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    nums[0] + nums[1]
}

fn overwrite(p: &Path, at: u64, len: usize, seed: u8) {
    let mut f = std::fs::OpenOptions::new().write(true).open(p).unwrap();
    f.seek(SeekFrom::Start(at)).unwrap();
    let data: Vec<u8> = (0..len)
        .map(|i| (i as u8).wrapping_mul(31) ^ seed)
        .collect();
    f.write_all(&data).unwrap();
}

fn insert(p: &Path, at: u64, bytes: &[u8]) {
    let old = std::fs::read(p).unwrap();
    let mut new = Vec::with_capacity(old.len() + bytes.len());
    new.extend_from_slice(&old[..at as usize]);
    new.extend_from_slice(bytes);
    new.extend_from_slice(&old[at as usize..]);
    std::fs::write(p, new).unwrap();
}

#[test]
fn one_mib_overwritten_mid_file_of_256_mib_costs_at_most_1_15_mib() {
    let wire = sync_change("delta-overwrite", 256 * MIB, |p| {
        overwrite(p, 128 * MIB + 12_345, MIB as usize, 0x5A)
    });
    assert!(
        wire <= MIB + 15 * MIB / 100,
        "{wire} bytes on the wire for a 1 MiB change"
    );
}

#[test]
fn hundred_bytes_inserted_at_4096_of_64_mib_cost_at_most_0_10_mib() {
    let wire = sync_change("delta-insert", 64 * MIB, |p| insert(p, 4096, &[0xAB; 100]));
    assert!(
        wire <= MIB / 10,
        "{wire} bytes on the wire for a 100-byte insert"
    );
}

#[test]
fn truncation_sends_almost_nothing() {
    let wire = sync_change("delta-truncate", 16 * MIB, |p| {
        std::fs::OpenOptions::new()
            .write(true)
            .open(p)
            .unwrap()
            .set_len(10 * MIB + 777)
            .unwrap()
    });
    assert!(
        wire <= MIB / 10,
        "{wire} bytes on the wire for a truncation"
    );
}

#[test]
fn an_append_sends_the_new_tail() {
    let wire = sync_change("delta-append", 16 * MIB, |p| {
        let mut f = std::fs::OpenOptions::new().append(true).open(p).unwrap();
        f.write_all(&vec![7u8; 300_000]).unwrap();
    });
    assert!(
        wire <= 300_000 + MIB / 10,
        "{wire} bytes on the wire for a 300 kB append"
    );
}

#[test]
fn deltas_are_built_against_the_bytes_the_receiver_really_has() {
    // B's copy was rewritten in the middle with its size and mtime put back, so its index
    // says "unchanged" while its bytes differ from A's old ones. The signature is computed
    // from B's actual bytes, so the delta still rebuilds A's version exactly.
    let dir = TestDir::new("delta-stale-base");
    let (a, b) = pair_configs(&dir, "stale");
    let old = dir.join("b/f.bin");
    write_random(&old, 4 * MIB, 21);
    let new = dir.join("a/f.bin");
    std::fs::copy(&old, &new).unwrap();
    overwrite(&new, MIB, 1000, 1);
    set_mtime(&new, 1_700_000_000);
    // Same size and mtime as what B's index will say, different bytes in the middle.
    overwrite(&old, 2 * MIB, 5000, 2);
    set_mtime(&old, 1_600_000_000);
    let b_before = file_digest(&old);
    let want = file_digest(&new);
    let daemon = Daemon::start(&b.write(dir.path()));
    let out = oneshot(&a.write(dir.path()));
    let (_, log) = daemon.stop();
    let got = file_digest(&old);
    assert_ne!(got, b_before);
    assert_eq!(got, want, "{log}\n{}", show(&out));
}

#[test]
fn each_receiver_gets_its_own_delta_in_a_three_node_session() {
    // A has the newest version; B and C each hold a different older one. One session, two
    // deltas against two different bases, and everyone ends with A's bytes.
    let dir = TestDir::new("delta-three");
    let group = format!("three-{}", std::process::id());
    let mut nodes: Vec<NodeConfig> = ["node-a", "node-b", "node-c"]
        .iter()
        .map(|id| {
            NodeConfig::new(id)
                .group(&group)
                .storage("docs", &dir.mkdir(&id[5..]))
        })
        .collect();
    mesh_peers(&mut nodes);
    let base = dir.join("b/f.img");
    write_random(&base, 8 * MIB, 31);
    std::fs::copy(&base, dir.join("c/f.img")).unwrap();
    std::fs::copy(&base, dir.join("a/f.img")).unwrap();
    overwrite(&dir.join("b/f.img"), MIB, 50_000, 1);
    overwrite(&dir.join("c/f.img"), 5 * MIB, 70_000, 2);
    overwrite(&dir.join("a/f.img"), 3 * MIB, 30_000, 3);
    set_mtime(&dir.join("b/f.img"), 1_600_000_000);
    set_mtime(&dir.join("c/f.img"), 1_600_000_100);
    set_mtime(&dir.join("a/f.img"), 1_700_000_000);
    let want = file_digest(&dir.join("a/f.img"));
    let daemons: Vec<Daemon> = nodes[1..]
        .iter()
        .map(|n| Daemon::start(&n.write(dir.path())))
        .collect();
    let out = oneshot(&nodes[0].write(dir.path()));
    let logs: Vec<String> = daemons.into_iter().map(|d| d.stop().1).collect();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}\n{}",
        show(&out),
        logs.join("\n---\n")
    );
    assert_eq!(file_digest(&dir.join("b/f.img")), want);
    assert_eq!(file_digest(&dir.join("c/f.img")), want);
    let wire = wire_total(&String::from_utf8_lossy(&out.stdout));
    // Two receivers, each needing its own changed region and A's: far less than 2 × 8 MiB.
    assert!(wire < 2 * MIB, "{wire} bytes on the wire");
}
