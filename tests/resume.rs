//! Resuming an interrupted transfer, against a real daemon, from a crafted sender: the
//! connection drops (or the daemon is killed and restarted) when two thirds of a file are
//! across; the daemon keeps what arrived; at the next session it offers to resume
//! (`FileResume`), takes the rest after a `FileSkip`, checks the whole file's hash and
//! commits it. A sender that skips what the daemon did not offer is disconnected with a
//! reason, and nothing is committed. (The link-cut test in `linkcut.rs` resumes between two
//! real daemons over a really cut link.)

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic in a test is a failed test

mod common;

use std::path::Path;

use common::peer::{Enc, RawPeer};
use common::target::{start_receive, Target};
use common::{manifest, random_bytes, wait_until, PATIENCE};
use iron_carrier::proto::{LinkMsg, Message, PeerMsg, TransferMsg, CHUNK_SIZE};

const SIZE: usize = 3 << 20;
const CUT_AT: usize = 2 << 20;

fn content() -> Vec<u8> {
    random_bytes(SIZE, 0x9E37_79B9_7F4A_7C15)
}

fn send_data(p: &mut RawPeer, data: &[u8]) {
    for c in data.chunks(CHUNK_SIZE) {
        p.send(&Message::Peer(PeerMsg::Transfer(TransferMsg::FileData {
            xid: 9,
            data: c.to_vec(),
        })));
    }
}

/// What the daemon kept of interrupted transfers in the storage's top directory.
fn partials(root: &Path) -> Vec<String> {
    manifest(root)
        .into_keys()
        .filter(|k| k.starts_with(".iron-carrier.part."))
        .collect()
}

/// Sends the first `CUT_AT` bytes of `big.bin`, then drops the connection; returns once the
/// daemon has kept them.
fn interrupted_transfer(t: &Target, data: &[u8]) {
    let (mut p, _) = start_receive(t, "big.bin", SIZE as u64, None);
    // Read first: a socket closed with unread data is reset, and a reset may lose what the
    // daemon had not read yet.
    assert_eq!(expect_offer(&mut p), 0, "nothing was kept yet");
    send_data(&mut p, &data[..CUT_AT]);
    // Everything sent is read before the close is: the daemon saw all of it.
    drop(p);
    t.wait_for_log(&format!("big.bin: kept the {CUT_AT} bytes received"));
    assert_eq!(partials(&t.store()).len(), 1, "{:?}", manifest(&t.store()));
    assert!(!t.store().join("big.bin").exists());
}

/// The daemon's answer to the `FileStart` of transfer 9: what it kept of it.
fn expect_offer(p: &mut RawPeer) -> u64 {
    loop {
        match p.expect("FileResume") {
            Message::Peer(PeerMsg::Transfer(TransferMsg::FileResume { xid: 9, offset })) => {
                return offset
            }
            Message::Peer(PeerMsg::Session(_)) => {}
            other => panic!("expected FileResume, got {other:?}"),
        }
    }
}

/// The next session sends `big.bin` again: the daemon must offer to resume it at `CUT_AT`;
/// the crafted sender then skips to `offset`.
fn resumed_transfer(t: &Target, offset: u64) -> RawPeer {
    let (mut p, _) = start_receive(t, "big.bin", SIZE as u64, None);
    assert_eq!(
        expect_offer(&mut p),
        CUT_AT as u64,
        "the offer is what was kept"
    );
    p.send(&Message::Peer(PeerMsg::Transfer(TransferMsg::FileSkip {
        xid: 9,
        offset,
    })));
    p
}

#[test]
fn an_interrupted_transfer_resumes_from_what_arrived_and_is_verified_whole() {
    let t = Target::start("resume", Enc::Plain);
    let data = content();
    interrupted_transfer(&t, &data);

    let mut p = resumed_transfer(&t, CUT_AT as u64);
    finish_resumed(&t, &mut p, &data);
    assert!(
        wait_until(PATIENCE, || partials(&t.store()).is_empty()),
        "what was kept outlived the transfer: {:?}",
        manifest(&t.store())
    );
    drop(p);
}

/// Bytes of the transfer's temporary file in the storage's top directory (0: none yet).
fn temp_len(root: &Path) -> u64 {
    std::fs::read_dir(root)
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with(".iron-carrier.tmp.")
        })
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len())
        .sum()
}

/// The receiver itself is killed mid-transfer: what its temporary file holds becomes a
/// partial at its next scan, and the transfer resumes from there after the restart.
#[test]
fn a_receiver_killed_mid_transfer_resumes_after_its_restart() {
    let mut t = Target::start("resume-kill", Enc::Plain);
    let data = content();
    let (mut p, _) = start_receive(&t, "big.bin", SIZE as u64, None);
    assert_eq!(expect_offer(&mut p), 0, "nothing was kept yet");
    send_data(&mut p, &data[..CUT_AT]);
    assert!(
        wait_until(PATIENCE, || temp_len(&t.store()) == CUT_AT as u64),
        "the first bytes never reached the disk:\n{}",
        t.daemon.log()
    );
    t.kill_and_restart();
    drop(p);

    let mut p = resumed_transfer(&t, CUT_AT as u64);
    t.wait_for_log("left by an interrupted transfer");
    finish_resumed(&t, &mut p, &data);
    assert!(
        wait_until(PATIENCE, || partials(&t.store()).is_empty()
            && temp_len(&t.store()) == 0),
        "internal files outlived the transfer: {:?}",
        manifest(&t.store())
    );
}

/// Sends the rest of `big.bin` after the skip to `CUT_AT`, and its hash: the file must
/// arrive whole, resumed.
fn finish_resumed(t: &Target, p: &mut RawPeer, data: &[u8]) {
    send_data(p, &data[CUT_AT..]);
    p.send(&Message::Peer(PeerMsg::Transfer(TransferMsg::FileEnd {
        xid: 9,
        hash: *blake3::hash(data).as_bytes(),
    })));
    let target = t.store().join("big.bin");
    assert!(
        wait_until(PATIENCE, || std::fs::read(&target).ok().as_deref()
            == Some(data)),
        "the resumed file never arrived whole:\n{}",
        t.daemon.log()
    );
    t.wait_for_log(&format!("big.bin: resumed at byte {CUT_AT} of {SIZE}"));
}

/// The expected refusal of a skip, before the daemon closes the connection.
fn assert_refused(p: &mut RawPeer, want: &str) {
    let msgs = p.until_closed();
    assert!(
        msgs.iter().any(|m| matches!(
            m,
            Message::Link(LinkMsg::Refuse { reason }) if reason.contains(want)
        )),
        "expected a Refuse mentioning {want:?}, got {msgs:?}"
    );
}

#[test]
fn a_skip_the_receiver_did_not_offer_disconnects_and_commits_nothing() {
    let t = Target::start("resume-unoffered", Enc::Plain);
    let data = content();
    let (mut p, _) = start_receive(&t, "big.bin", SIZE as u64, None);
    assert_eq!(expect_offer(&mut p), 0, "nothing was kept");
    p.send(&Message::Peer(PeerMsg::Transfer(TransferMsg::FileSkip {
        xid: 9,
        offset: CUT_AT as u64,
    })));
    send_data(&mut p, &data[CUT_AT..]);
    assert_refused(&mut p, "did not offer to resume");
    assert!(!t.store().join("big.bin").exists());
    t.assert_survived("did not offer to resume");
}

#[test]
fn a_skip_past_what_was_offered_disconnects_and_commits_nothing() {
    let t = Target::start("resume-past", Enc::Plain);
    let data = content();
    interrupted_transfer(&t, &data);
    let mut p = resumed_transfer(&t, CUT_AT as u64 + 4096);
    assert_refused(&mut p, "were offered");
    assert!(!t.store().join("big.bin").exists());
    // What was kept is this node's own, from the earlier transfer: a lying sender does not
    // cost it. It is removed here only so that the storage compares equal to the start.
    let kept = partials(&t.store());
    assert_eq!(kept.len(), 1, "{:?}", manifest(&t.store()));
    assert_eq!(
        std::fs::read(t.store().join(&kept[0])).unwrap(),
        &data[..CUT_AT],
        "what was kept changed"
    );
    std::fs::remove_file(t.store().join(&kept[0])).unwrap();
    t.assert_survived("were offered");
}
