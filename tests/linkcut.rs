//! A link cut mid-transfer, for real: two daemons in network namespaces of their own on a
//! bridge (198.18.0.0/24), the sender's side slowed to 16 Mbit/s so that a 24 MiB file takes
//! seconds, and the sender's port on the bridge taken down while the file is half across.
//! Neither end hears anything: the connection must be given up after `net`'s 60 s of
//! silence, the session with it, leaving nothing half-applied (no partial file where the
//! file goes, no temporary file left); once the port is up again the nodes reconnect and
//! the file arrives whole, resumed from what had arrived: the bytes received before the cut
//! are kept as a partial file and not sent again.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic in a test is a failed test

mod common;

use std::path::Path;

use common::netns::{ip, Segment};
use common::{file_digest, manifest, wait_until, write_random, TestDir, PATIENCE};

/// Bytes of the internal files named `.iron-carrier.{kind}.*` in `root`'s top directory:
/// temporary files (`tmp`), or what interrupted transfers kept (`part`).
fn internal_bytes(root: &Path, kind: &str) -> u64 {
    let prefix = format!(".iron-carrier.{kind}.");
    std::fs::read_dir(root)
        .map(|d| {
            d.filter_map(Result::ok)
                .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

fn temp_bytes(root: &Path) -> u64 {
    internal_bytes(root, "tmp")
}

/// The offset in the receiver's "big.bin: resumed at byte N of M" line, if it logged one.
fn resumed_at(log: &str) -> Option<u64> {
    let line = log
        .lines()
        .find(|l| l.contains("big.bin: resumed at byte "))?;
    let rest = line.split("resumed at byte ").nth(1)?;
    rest.split_whitespace().next()?.parse().ok()
}

#[test]
fn a_link_cut_mid_transfer_abandons_the_session_cleanly_and_converges_when_back() {
    let Some(seg) = Segment::new("linkcut", 2) else {
        return;
    };
    // The sender's packets leave at 16 Mbit/s: 24 MiB take about 12 s.
    if !seg.shape(1, "16mbit") {
        return;
    }
    let dir = TestDir::new("linkcut");
    let (a_root, b_root) = (dir.mkdir("a"), dir.mkdir("b"));
    write_random(&a_root.join("big.bin"), 24 * 1024 * 1024, 16);
    let want = file_digest(&a_root.join("big.bin"));
    let b = seg.daemon(2, &common::netns::host_config(&dir, "b", 1, &b_root));
    let a = seg.daemon(1, &common::netns::host_config(&dir, "a", 2, &a_root));

    // Cut the sender off the bridge once a quarter of the file is across.
    assert!(
        wait_until(PATIENCE, || temp_bytes(&b_root) >= 6 * 1024 * 1024),
        "the transfer never got going:\n{}\n-----\n{}",
        a.log(),
        b.log()
    );
    ip(&["-n", seg.ns(0), "link", "set", "p1", "down"]).unwrap();

    // Nothing arrives, nothing says goodbye: the receiver gives the connection up after
    // 60 s of silence, and the session with it.
    assert!(
        wait_until(PATIENCE * 2, || b.log().contains("disconnected from a")),
        "the receiver never gave up the silent connection:\n{}",
        b.log()
    );
    assert!(
        wait_until(PATIENCE, || temp_bytes(&b_root) == 0),
        "the abandoned transfer left a temporary file: {:?}",
        manifest(&b_root)
    );
    // What arrived is kept, under an internal name, to be resumed.
    let kept = internal_bytes(&b_root, "part");
    assert!(
        kept >= 6 * 1024 * 1024,
        "the receiver kept {kept} bytes of the interrupted transfer: {:?}\n{}",
        manifest(&b_root),
        b.log()
    );
    assert!(
        !b_root.join("big.bin").exists(),
        "a half-received file was put in place"
    );

    ip(&["-n", seg.ns(0), "link", "set", "p1", "up"]).unwrap();
    // Redials back off up to 60 s while the link is down; then the whole file, again.
    assert!(
        wait_until(PATIENCE * 3, || b_root.join("big.bin").exists()
            && file_digest(&b_root.join("big.bin")) == want),
        "no convergence once the link was back:\n{}\n-----\n{}",
        a.log(),
        b.log()
    );
    assert_eq!(temp_bytes(&b_root), 0, "{:?}", manifest(&b_root));
    // It went on from what was kept (the sender skipped those bytes), and what was kept is
    // gone once the file is in place.
    let at = resumed_at(&b.log());
    assert!(
        at.is_some_and(|at| at >= 6 * 1024 * 1024),
        "the transfer was not resumed from the {kept} bytes kept (resumed at {at:?}):\n{}",
        b.log()
    );
    assert_eq!(
        internal_bytes(&b_root, "part"),
        0,
        "the partial outlived the transfer: {:?}",
        manifest(&b_root)
    );
    eprintln!(
        "resumed at byte {} of {}",
        at.unwrap_or(0),
        24 * 1024 * 1024
    );
    drop(a);
    drop(b);
}
