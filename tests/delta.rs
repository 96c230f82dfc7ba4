//! Delta transfer between two real processes on 127.0.0.1: only the changed parts of a file
//! that exists on both sides cross the network. Each test first synchronizes the same big
//! file on both nodes (so they share its history; differing first-contact versions would be
//! a conflict), then changes A's copy in one way, syncs B (a daemon) from A (a one-shot run),
//! checks B ends with exactly A's bytes, and checks the bytes on the wire that A counted
//! (both ways) in that second run.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic in a test is a failed test

mod common;

use std::io::{Seek, SeekFrom, Write};
use std::path::Path;

use common::*;

const MIB: u64 = 1024 * 1024;

/// A and B hold the same `size`-byte file and synchronize once; then A's copy is changed by
/// `change`: sync again and return A's wire total of that second run.
fn sync_change(tag: &str, size: u64, change: impl FnOnce(&Path)) -> u64 {
    let dir = TestDir::new(tag);
    let (a, b) = pair_configs(&dir, tag);
    let old = dir.join("b/disk.img");
    write_random(&old, size, 11);
    set_mtime(&old, 1_600_000_000);
    let new = dir.join("a/disk.img");
    std::fs::copy(&old, &new).unwrap();
    set_mtime(&new, 1_600_000_000);

    let daemon = Daemon::start(&b.write(dir.path()));
    let a_cfg = a.write(dir.path());
    let first = oneshot(&a_cfg);
    assert_eq!(first.status.code(), Some(0), "{}", show(&first));
    assert!(
        wire_total(&first) < MIB,
        "the same file on both sides moved: {}",
        show(&first)
    );
    change(&new);
    set_mtime(&new, 1_700_000_000);
    let want = file_digest(&new);
    let out = oneshot(&a_cfg);
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
            .any(|k| k.contains(".iron-carrier.") || k.contains(".sync-conflict-")),
        "temp or conflict copy left behind"
    );
    let wire = wire_total(&out);
    eprintln!("{tag}: {wire} bytes on the wire");
    wire
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

/// B's copy is rewritten in the middle with its size and mtime put back, while A edits its
/// own: B's scan still sees its edit (the inode's ctime moved), so the two are concurrent.
/// A's version (the newer) keeps the name everywhere and B's bytes are kept beside it.
#[test]
fn an_edit_that_puts_size_and_mtime_back_is_seen_and_kept_as_a_conflict_copy() {
    let dir = TestDir::new("delta-stale-base");
    let (a, b) = pair_configs(&dir, "stale");
    let old = dir.join("b/f.bin");
    write_random(&old, 4 * MIB, 21);
    set_mtime(&old, 1_600_000_000);
    let new = dir.join("a/f.bin");
    std::fs::copy(&old, &new).unwrap();
    set_mtime(&new, 1_600_000_000);
    let daemon = Daemon::start(&b.write(dir.path()));
    let a_cfg = a.write(dir.path());
    let first = oneshot(&a_cfg);
    assert_eq!(first.status.code(), Some(0), "{}", show(&first));
    // B's daemon would notice its edit at once and sync it on its own: stop it meanwhile.
    let (_, _) = daemon.stop();
    overwrite(&new, MIB, 1000, 1);
    set_mtime(&new, 1_700_000_000);
    overwrite(&old, 2 * MIB, 5000, 2);
    set_mtime(&old, 1_600_000_000);
    let b_edit = file_digest(&old);
    let want = file_digest(&new);
    let daemon = Daemon::start(&b.write(dir.path()));
    let out = oneshot(&a_cfg);
    let (_, log) = daemon.stop();
    assert_eq!(out.status.code(), Some(0), "{log}\n{}", show(&out));
    assert_eq!(file_digest(&old), want, "{log}\n{}", show(&out));
    for side in ["a", "b"] {
        let copies: Vec<String> = manifest(&dir.join(side))
            .into_keys()
            .filter(|k| k.contains(".sync-conflict-"))
            .collect();
        assert_eq!(copies.len(), 1, "{side}: {copies:?}\n{log}");
        assert_eq!(
            file_digest(&dir.join(side).join(&copies[0])),
            b_edit,
            "{side}: the conflict copy is not B's edit"
        );
    }
}

#[test]
fn each_receiver_gets_its_own_delta_in_a_three_node_session() {
    // All three share a version; A changes it. One session, a delta to each daemon, and
    // everyone ends with A's bytes.
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
    for n in ["a", "c"] {
        std::fs::copy(&base, dir.join(n).join("f.img")).unwrap();
    }
    for n in ["a", "b", "c"] {
        set_mtime(&dir.join(n).join("f.img"), 1_600_000_000);
    }
    let daemons: Vec<Daemon> = nodes[1..]
        .iter()
        .map(|n| Daemon::start(&n.write(dir.path())))
        .collect();
    let a_cfg = nodes[0].write(dir.path());
    let first = oneshot(&a_cfg);
    assert_eq!(first.status.code(), Some(0), "{}", show(&first));
    overwrite(&dir.join("a/f.img"), 3 * MIB, 30_000, 3);
    set_mtime(&dir.join("a/f.img"), 1_700_000_000);
    let want = file_digest(&dir.join("a/f.img"));
    let out = oneshot(&a_cfg);
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
    let wire = wire_total(&out);
    // Two receivers, each needing the changed region: far less than 2 × 8 MiB.
    assert!(wire < 2 * MIB, "{wire} bytes on the wire");
}
