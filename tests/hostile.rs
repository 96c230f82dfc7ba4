//! Crafted peers that play the election and the session unfairly, against a real daemon
//! over real TCP on 127.0.0.1, while a good node wants to synchronize with it: a peer that
//! claims the lead again and again and never starts its session, a leader that keeps its
//! session alive and never plans or never sends the file it started, a follower that grants and never answers, a crowd of
//! peers around a session of friends, and names and reasons made to forge log lines.
//!
//! Each time the good node must get its files across, and the daemon must say in its log
//! what it did about the bad one.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic in a test is a failed test

mod common;

use std::io::Write;
use std::net::{Shutdown, TcpStream};
use std::process::Output;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use common::peer::{frame, Enc, RawPeer};
use common::target::{
    expect_session_start, hello, lead_session, one, start_receive, Target, STORAGE,
};
use common::{oneshot_within, show, NodeConfig, TestDir};
use iron_carrier::history::Entry;
use iron_carrier::model::{FileMeta, NodeId, RelPath};
use iron_carrier::proto::{
    ElectionMsg, LinkMsg, Message, PeerMsg, PlanItem, SessionMsg, TransferMsg,
};

/// Longer than the daemon's `SESSION_YIELD` (60 s) plus a good node's back-off.
const YIELD_PATIENCE: Duration = Duration::from_secs(180);

/// A crafted peer on a plain link that keeps reading (and dropping) what the daemon sends in
/// a thread of its own, so the daemon never blocks on it, while the test writes to it.
struct Background {
    writer: TcpStream,
    reader: JoinHandle<()>,
}

impl Background {
    fn new(p: RawPeer) -> Background {
        let writer = p.stream.try_clone().expect("clone the stream");
        // A daemon that says nothing for a while is no failure here.
        p.stream
            .set_read_timeout(Some(Duration::from_secs(3600)))
            .expect("set read timeout");
        let reader = std::thread::spawn(move || {
            let mut p = p;
            while p.recv().is_some() {}
        });
        Background { writer, reader }
    }

    fn send(&mut self, msg: &Message) -> bool {
        self.writer.write_all(&frame(msg)).is_ok()
    }

    fn close(self) {
        let _ = self.writer.shutdown(Shutdown::Both);
        let _ = self.reader.join();
    }
}

/// Sends what `next` makes every `every` from a thread until the returned flag is set.
fn keep_sending(
    mut peer: Background,
    every: Duration,
    mut next: impl FnMut() -> Message + Send + 'static,
) -> (Arc<AtomicBool>, JoinHandle<()>) {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let handle = std::thread::spawn(move || {
        while !flag.load(Ordering::Relaxed) {
            if !peer.send(&next()) {
                break;
            }
            std::thread::sleep(every);
        }
        peer.close();
    });
    (stop, handle)
}

/// A good node, "c-good" (it sorts before the daemon, so it may lead), synchronizes one new
/// file with the daemon by a one-shot run, killed after `limit`.
fn good_sync(t: &Target, limit: Duration) -> (TestDir, Output) {
    let good = TestDir::new("hostile-good");
    good.write("store/from-c-good.txt", b"written by a well-behaved node\n");
    let cfg = NodeConfig::new("c-good")
        .encryption(&t.enc.toml())
        .peer(t.port)
        .storage(STORAGE, &good.join("store"))
        .write(good.path());
    let out = oneshot_within(&cfg, limit);
    (good, out)
}

fn assert_good_synced(t: &Target, out: &Output) {
    assert_eq!(
        out.status.code(),
        Some(0),
        "the good node's run failed:\n{}\ndaemon log:\n{}",
        show(out),
        t.daemon.log()
    );
    assert_eq!(
        std::fs::read(t.store().join("from-c-good.txt")).ok(),
        Some(b"written by a well-behaved node\n".to_vec()),
        "the good node's file did not arrive:\n{}",
        t.daemon.log()
    );
}

/// While `p` says only that session `sid` is alive, every 2 s, a good node synchronizes
/// with the daemon.
fn good_sync_while_alive(t: &Target, p: RawPeer, sid: u64) {
    let (stop, alive) = keep_sending(Background::new(p), Duration::from_secs(2), move || {
        Message::Peer(PeerMsg::Session(SessionMsg::Alive { sid }))
    });
    let (_good, out) = good_sync(t, YIELD_PATIENCE);
    stop.store(true, Ordering::Relaxed);
    alive.join().unwrap();
    assert_good_synced(t, &out);
}

// ---------------------------------------------------------------------------------------
// The election

/// "a-evil" has priority over everyone and claims the lead every 100 ms with a new ticket,
/// never starting a session: before, the daemon granted it again the moment a grant lapsed
/// and denied the good node for as long as it went on.
#[test]
fn a_peer_that_claims_and_never_starts_does_not_keep_a_good_peer_out() {
    let t = Target::start("hostile-squat", Enc::Plain);
    let p = t.handshake(&hello("a-evil", None, &[STORAGE]));
    let mut ticket = 0u64;
    let (stop, squatter) =
        keep_sending(Background::new(p), Duration::from_millis(100), move || {
            ticket += 1;
            Message::Peer(PeerMsg::Election(ElectionMsg::Claim {
                ticket,
                storage: STORAGE.into(),
            }))
        });
    // The squatter holds a grant before the good node comes.
    t.wait_for_log("peer a-evil connected");
    let (_good, out) = good_sync(&t, YIELD_PATIENCE);
    stop.store(true, Ordering::Relaxed);
    squatter.join().unwrap();
    assert_good_synced(&t, &out);
    t.wait_for_log("a-evil held the lead of a storage without starting its session");
}

// ---------------------------------------------------------------------------------------
// Sessions kept alive without progress

/// "a-evil" leads a session with the daemon, then only ever says it is alive: no index
/// request, no plan. Before, each `SessionAlive` kept the session open for ever and the
/// daemon denied the good node's claims all along.
#[test]
fn a_leader_that_keeps_its_session_alive_and_never_plans_gives_way() {
    let t = Target::start("hostile-alive-leader", Enc::Plain);
    let mut p = t.handshake(&hello("a-evil", None, &[STORAGE]));
    let sid = 0x57A1_1ED0;
    lead_session(&mut p, sid);
    good_sync_while_alive(&t, p, sid);
    t.wait_for_log("while c-good waited: ended to let it synchronize");
}

/// "zz-mute" grants the daemon's claim, so the daemon leads a session with it, and then
/// never sends its index summary, only `SessionAlive`s.
#[test]
fn a_follower_that_never_answers_gives_way_to_a_good_peer() {
    let t = Target::start("hostile-mute-follower", Enc::Plain);
    let mut p = t.handshake(&hello("zz-mute", None, &[STORAGE]));
    let sid = expect_session_start(&mut p);
    good_sync_while_alive(&t, p, sid);
    t.wait_for_log("while c-good waited: ended to let it synchronize");
}

/// "a-evil" leads a session whose plan makes the daemon receive a file from it, says Go,
/// starts the file and never sends a byte, only `SessionAlive`s. Before, the daemon's part
/// was never done and only the 120 s idle timeout (which the `SessionAlive`s reset) could
/// end it: the good node waited for ever.
#[test]
fn a_leader_that_starts_a_file_and_never_sends_it_gives_way() {
    let t = Target::start("hostile-stalled-file", Enc::Plain);
    let (p, sid) = start_receive(&t, "never.bin", 1 << 20, None);
    good_sync_while_alive(&t, p, sid);
    t.wait_for_log("leaving session");
    assert!(!t.store().join("never.bin").exists());
}

// ---------------------------------------------------------------------------------------
// A crowd around a session

/// A follower names in its summary only the session's members it is connected to. Before,
/// it named every connected peer, and past 256 of them its leader refused the summary.
#[test]
fn a_follower_reports_only_the_members_of_its_session() {
    let t = Target::start("hostile-crowd", Enc::Plain);
    let strangers: Vec<Background> = (0..3)
        .map(|i| Background::new(t.handshake(&hello(&format!("zz-idle-{i}"), None, &[]))))
        .collect();
    let mut p = t.handshake(&hello("a-evil", None, &[STORAGE]));
    let sid = 0xC0_4D;
    let peers = lead_session(&mut p, sid);
    assert!(
        peers.is_empty(),
        "the summary names peers outside the session: {peers:?}"
    );
    p.send(&Message::Peer(PeerMsg::Session(SessionMsg::Abort {
        sid,
        reason: "done looking".into(),
    })));
    drop(p);
    for s in strangers {
        s.close();
    }
    t.assert_survived("disconnected from a-evil");
}

// ---------------------------------------------------------------------------------------
// Forged log lines

/// A file name with a newline and a terminal escape (legal on Linux), planned by a leader
/// for a file larger than the disk: the daemon's log names it escaped, on one line, and no
/// line of the log is the forged one. (Strings in messages are sanitized by the decoder;
/// paths cannot be, as they must arrive exactly.)
#[test]
fn a_file_name_with_control_characters_cannot_forge_a_log_line() {
    let t = Target::start("hostile-forge", Enc::Plain);
    let forged = "2026-01-01T00:00:00.000Z ERROR [sync] sync: all files deleted";
    let name = format!("evil\n{forged}\u{1b}[2K");
    let (mut p, _) = start_receive(&t, &name, 1 << 60, None);
    // The refusal settles the daemon's part at once: its PartDone may come first.
    loop {
        match p.expect("FileReject") {
            Message::Peer(PeerMsg::Transfer(TransferMsg::FileReject { reason, .. })) => {
                assert!(reason.contains("not enough space"), "{reason}");
                break;
            }
            Message::Peer(PeerMsg::Session(SessionMsg::PartDone { .. })) => {}
            other => panic!("expected FileReject, got {other:?}"),
        }
    }
    t.wait_for_log("evil\\n2026-01-01T00:00:00.000Z ERROR [sync] sync: all files deleted\\u{1b}[2K not received");
    let log = t.daemon.log();
    assert!(
        !log.lines().any(|l| l.starts_with(forged)),
        "a forged line made it into the log:\n{log}"
    );
    assert!(
        !log.contains('\u{1b}'),
        "a raw escape reached the log:\n{log}"
    );
    drop(p);
    t.assert_survived("not received");
}

// ---------------------------------------------------------------------------------------
// Clocks

/// A peer whose clock reads 2100: the daemon names it, and by how much it is off.
#[test]
fn a_peer_with_a_clock_far_off_is_named_at_the_handshake() {
    let t = Target::start("hostile-clock", Enc::Plain);
    let Message::Link(LinkMsg::Hello(mut h)) = hello("zz-future", None, &[STORAGE]) else {
        unreachable!("hello() makes a Hello")
    };
    h.clock_ms = 4_102_444_800_000; // 2100-01-01
    let p = t.handshake(&Message::Link(LinkMsg::Hello(h)));
    t.wait_for_log("the clock of zz-future is ");
    t.wait_for_log("ahead of ours");
    drop(p);
    t.assert_survived("disconnected from zz-future");
}

// ---------------------------------------------------------------------------------------
// Incoming transfers

/// A leader plans 70 files for the daemon and starts them all at once, sending no data:
/// the daemon takes 64 (`MAX_INCOMING`) and refuses the rest, naming the limit.
#[test]
fn files_started_past_the_incoming_limit_are_refused() {
    let t = Target::start("hostile-incoming", Enc::Plain);
    let sid = 0x1_4C0;
    let mut p = t.handshake(&hello("a-evil", None, &[STORAGE]));
    lead_session(&mut p, sid);
    let evil = NodeId::new("a-evil").unwrap();
    let metas: Vec<FileMeta> = (0..70)
        .map(|i| {
            let path = RelPath::new(&format!("many/{i:02}.bin")).unwrap();
            FileMeta::file(path, 1000, 1_900_000_000_000_000_000, 0o644)
        })
        .collect();
    let items = metas
        .iter()
        .map(|meta| PlanItem::Receive {
            entry: Entry {
                meta: meta.clone(),
                deleted: false,
                hash: Some([7; 32]),
                vv: one("a-evil", 1_900_000_000),
                by: evil.clone(),
                link: None,
            },
            from: evil.clone(),
            expect: None,
        })
        .collect();
    p.send(&Message::Peer(PeerMsg::Session(SessionMsg::PlanChunk {
        sid,
        items,
    })));
    p.send(&Message::Peer(PeerMsg::Session(SessionMsg::PlanEnd {
        sid,
    })));
    match p.expect("PlanReady") {
        Message::Peer(PeerMsg::Session(SessionMsg::PlanReady { .. })) => {}
        other => panic!("expected PlanReady, got {other:?}"),
    }
    p.send(&Message::Peer(PeerMsg::Session(SessionMsg::Go { sid })));
    for (xid, meta) in metas.into_iter().enumerate() {
        p.send(&Message::Peer(PeerMsg::Transfer(TransferMsg::FileStart {
            sid,
            xid: xid as u32,
            meta,
        })));
    }
    let mut refused = Vec::new();
    while refused.len() < 6 {
        match p.expect("FileReject") {
            Message::Peer(PeerMsg::Transfer(TransferMsg::FileReject { xid, reason })) => {
                assert!(
                    reason.contains("64 files are being received already"),
                    "{reason}"
                );
                refused.push(xid);
            }
            other => panic!("expected FileReject, got {other:?}"),
        }
    }
    assert_eq!(refused, (64..70).collect::<Vec<u32>>());
    p.send(&Message::Peer(PeerMsg::Session(SessionMsg::Abort {
        sid,
        reason: "enough".into(),
    })));
    drop(p);
    t.assert_survived("64 files are being received already");
}
