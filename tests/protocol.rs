//! A crafted peer speaking the protocol from a raw socket attacks a real daemon with hostile
//! or malformed input: paths escaping the storage, files no plan announced, oversized and
//! truncated frames, garbage, foreign handshakes, sessions from a node that does not lead,
//! malformed version vectors, an index end that does not match its summary. (An index out
//! of path order is no attack: the leader keeps its copy of each index by path.)
//!
//! After every attack the same four things must hold: the daemon is still running, its log
//! names the reason it dropped the peer, nothing was created outside its storage (nor inside
//! it), and a legitimate node can still synchronize with it.
//!
//! Every attack runs twice: over a plain link and over an encrypted one whose passphrase
//! the attacker knows (`mod plain`, `mod sealed`, at the end): knowing the key makes a
//! peer no more trusted.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic in a test is a failed test

mod common;

use std::net::Shutdown;
use std::path::Path;

use common::peer::{frame, Enc, RawPeer};
use common::target::{
    expect_session_start, hello, lead_session, one, start_receive, Target, STORAGE,
};
use iron_carrier::history::{Entry, Record, Vv};
use iron_carrier::model::{FileMeta, NodeId, RelPath, Version};
use iron_carrier::net::link::{HANDSHAKE_LEN, HANDSHAKE_REFUSED, MAX_SEALED, PREAMBLE_LEN};
use iron_carrier::proto::{
    ElectionMsg, LinkMsg, Message, PeerMsg, PlanItem, SessionMsg, TransferMsg, FRAME_HEADER,
    MAX_FRAME, PROTOCOL_VERSION,
};

/// Tag byte of `FileStart` (the tag constants are private to `proto`).
const TAG_FILE_START: u8 = 0x20;

/// A `FileStart` frame built by hand, so its path can be anything a `RelPath` would refuse.
/// Layout: tag, sid u64, xid u32, path (u16 length + bytes), kind u8 (0 = file), size u64,
/// mtime i64, mode u32; all big-endian.
fn raw_file_start(sid: u64, xid: u32, path: &[u8], size: u64) -> Vec<u8> {
    let mut p = vec![TAG_FILE_START];
    p.extend_from_slice(&sid.to_be_bytes());
    p.extend_from_slice(&xid.to_be_bytes());
    p.extend_from_slice(&u16::try_from(path.len()).unwrap().to_be_bytes());
    p.extend_from_slice(path);
    p.push(0);
    p.extend_from_slice(&size.to_be_bytes());
    p.extend_from_slice(&1_600_000_000_000_000_000i64.to_be_bytes());
    p.extend_from_slice(&0o644u32.to_be_bytes());
    let mut f = u32::try_from(p.len()).unwrap().to_be_bytes().to_vec();
    f.extend_from_slice(&p);
    f
}

/// `FileData` and `FileEnd` (with the right hash) for `content` of transfer `xid`: what a
/// sender would follow a `FileStart` with, so the attack is a complete transfer.
fn data_and_end(xid: u32, content: &[u8]) -> Vec<u8> {
    let mut v = frame(&Message::Peer(PeerMsg::Transfer(TransferMsg::FileData {
        xid,
        data: content.to_vec(),
    })));
    v.extend(frame(&Message::Peer(PeerMsg::Transfer(
        TransferMsg::FileEnd {
            xid,
            hash: *blake3::hash(content).as_bytes(),
        },
    ))));
    v
}

/// Asserts the daemon said why it dropped us, if it got the chance to.
fn assert_refused(msgs: &[Message], want: &str) {
    let reasons: Vec<&str> = msgs
        .iter()
        .filter_map(|m| match m {
            Message::Link(LinkMsg::Refuse { reason }) => Some(reason.as_str()),
            _ => None,
        })
        .collect();
    assert!(
        reasons.iter().any(|r| r.contains(want)),
        "expected a Refuse mentioning {want:?} before the close, got {msgs:?}"
    );
}

// ---------------------------------------------------------------------------------------
// Paths that would escape the storage

/// As the leader, starts a session, then sends a transfer whose path bytes are `path`.
fn send_file_with_raw_path(t: &Target, path: &[u8]) -> Vec<Message> {
    let sid = 0x0BAD_5E55_1011;
    let mut p = t.handshake(&hello("a-evil", None, &[STORAGE]));
    lead_session(&mut p, sid);
    let content = b"pwned\n";
    let mut attack = raw_file_start(sid, 1, path, content.len() as u64);
    attack.extend(data_and_end(1, content));
    p.send_frames(&attack);
    p.until_closed()
}

fn dotdot_path_in_file_start_disconnects_and_writes_nothing(enc: Enc) {
    let t = Target::start("proto-dotdot", enc);
    let msgs = send_file_with_raw_path(&t, b"../x");
    assert_refused(&msgs, "invalid path");
    assert!(!t.dir.join("x").exists(), "../x was written");
    t.assert_survived(r#"invalid frame: invalid path "../x""#);
}

fn absolute_path_in_file_start_disconnects_and_writes_nothing(enc: Enc) {
    let etc_x = Path::new("/etc/x");
    let existed = etc_x.symlink_metadata().is_ok();
    let t = Target::start("proto-absolute", enc);
    let msgs = send_file_with_raw_path(&t, b"/etc/x");
    assert_refused(&msgs, "invalid path");
    if !existed {
        assert!(etc_x.symlink_metadata().is_err(), "/etc/x was written");
    }
    t.assert_survived(r#"invalid frame: invalid path "/etc/x": absolute path"#);
}

fn empty_path_in_file_start_disconnects(enc: Enc) {
    let t = Target::start("proto-empty-path", enc);
    let msgs = send_file_with_raw_path(&t, b"");
    assert_refused(&msgs, "invalid path");
    t.assert_survived(r#"invalid frame: invalid path "": empty path"#);
}

fn file_no_plan_announced_disconnects_and_is_not_written(enc: Enc) {
    let t = Target::start("proto-unannounced", enc);
    let sid = 0x5E55_1011;
    let mut p = t.handshake(&hello("a-evil", None, &[STORAGE]));
    lead_session(&mut p, sid);
    // An empty plan: the daemon is ready at once, and has nothing to do.
    p.send(&Message::Peer(PeerMsg::Session(SessionMsg::PlanEnd {
        sid,
    })));
    match p.expect("PlanReady") {
        Message::Peer(PeerMsg::Session(SessionMsg::PlanReady { sid: s })) => assert_eq!(s, sid),
        other => panic!("expected PlanReady, got {other:?}"),
    }
    p.send(&Message::Peer(PeerMsg::Session(SessionMsg::Go { sid })));
    match p.expect("PartDone") {
        Message::Peer(PeerMsg::Session(SessionMsg::PartDone { sid: s, stats })) => {
            assert_eq!(s, sid);
            assert_eq!(stats, Default::default());
        }
        other => panic!("expected PartDone, got {other:?}"),
    }
    let content = b"pwned\n";
    let mut attack = frame(&Message::Peer(PeerMsg::Transfer(TransferMsg::FileStart {
        sid,
        xid: 7,
        meta: FileMeta::file(
            RelPath::new("pwned.txt").unwrap(),
            content.len() as u64,
            1_600_000_000_000_000_000,
            0o644,
        ),
    })));
    attack.extend(data_and_end(7, content));
    p.send_frames(&attack);
    let msgs = p.until_closed();
    assert_refused(&msgs, "did not announce");
    assert!(
        !t.store().join("pwned.txt").exists(),
        "pwned.txt was written"
    );
    t.assert_survived("sent pwned.txt which the plan did not announce");
}

// ---------------------------------------------------------------------------------------
// Framing

fn oversized_frame_header_disconnects_without_waiting_for_the_body(enc: Enc) {
    let t = Target::start("proto-oversized", enc);
    // A sealed frame's header counts its tag too: its limit is a tag larger.
    let (limit, what) = match enc {
        Enc::Plain => (MAX_FRAME, "frame of {} bytes announced"),
        _ => (MAX_SEALED, "sealed frame of {} bytes is out of bounds"),
    };
    // (The top bit of a sealed header is the rekey flag, not length.)
    let shown = |n: usize| {
        if enc == Enc::Plain {
            n
        } else {
            n & 0x7fff_ffff
        }
    };
    let said = |n: usize| what.replace("{}", &shown(n).to_string());
    for announced in [u32::MAX as usize, limit + 1] {
        let mut p = t.handshake(&hello("a-evil", None, &[STORAGE]));
        // Only the header: a daemon that waited for the body would never close.
        p.send_raw(&u32::try_from(announced).unwrap().to_be_bytes());
        let msgs = p.until_closed();
        assert_refused(&msgs, &said(announced));
        t.wait_for_log(&said(announced));
    }
    t.assert_survived(&said(limit + 1));
}

/// A refused connection lingers a moment to flush its `Refuse`. The same peer dialling again
/// meanwhile is a new connection, not a duplicate of the dying one. (CI once lost this race
/// when the client's close and its new Hello arrived in the same turn; holding the old socket
/// open makes the race certain.)
fn a_refused_peer_that_reconnects_at_once_is_accepted(enc: Enc) {
    let t = Target::start("proto-reconnect", enc);
    let mut first = t.handshake(&hello("a-evil", None, &[STORAGE]));
    first.send_raw(&u32::MAX.to_be_bytes());
    let msgs = first.until_closed();
    assert!(
        msgs.iter()
            .any(|m| matches!(m, Message::Link(LinkMsg::Refuse { .. }))),
        "no Refuse: {msgs:?}"
    );
    // `first` stays open: the daemon's side of it is still lingering.
    let second = t.handshake(&hello("a-evil", None, &[STORAGE]));
    drop(first);
    drop(second);
    t.assert_survived("disconnecting peer a-evil");
}

fn truncated_frame_then_eof_closes_cleanly(enc: Enc) {
    let t = Target::start("proto-truncated", enc);
    let mut p = t.handshake(&hello("a-evil", None, &[STORAGE]));
    let mut bytes = 100u32.to_be_bytes().to_vec();
    bytes.extend_from_slice(&[0x11; 10]);
    p.send_raw(&bytes);
    p.stream.shutdown(Shutdown::Write).expect("shutdown write");
    let msgs = p.until_closed();
    // The daemon may have claimed the shared storage when we connected; nothing else.
    assert!(
        msgs.iter().all(|m| matches!(
            m,
            Message::Peer(PeerMsg::Election(ElectionMsg::Claim { .. }))
                | Message::Peer(PeerMsg::Election(ElectionMsg::Release { .. }))
        )),
        "unexpected messages: {msgs:?}"
    );
    t.assert_survived("disconnected from a-evil: connection closed by peer");
}

/// Deterministic "random" bytes (xorshift).
fn garbage(n: usize) -> Vec<u8> {
    let mut x: u64 = 0x2545_F491_4F6C_DD1D;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// Garbage instead of a preamble is refused before any key or message; garbage after a good
/// preamble is an invalid frame (plain) or a failed handshake (encrypted). The daemon says
/// nothing of itself in either case but its preamble (and, plain, its `Hello`).
fn garbage_before_the_handshake_disconnects(enc: Enc) {
    let t = Target::start("proto-garbage", enc);
    let junk = garbage(64);
    let mut p = RawPeer::connect(t.port);
    p.send_raw(&junk);
    assert_eq!(
        p.read_raw(PREAMBLE_LEN),
        Some(t.preamble()),
        "the daemon's preamble"
    );
    let msgs = p.until_closed();
    match enc {
        Enc::Plain => assert!(
            matches!(msgs[..], [Message::Link(LinkMsg::Hello(_))]),
            "a plain daemon greets at once, then closes: {msgs:?}"
        ),
        _ => assert!(
            msgs.is_empty(),
            "an encrypted daemon says nothing: {msgs:?}"
        ),
    }
    t.wait_for_log("does not speak Iron Carrier's protocol");

    // A good preamble, then garbage.
    let mut p = RawPeer::connect(t.port);
    p.send_raw(&t.preamble());
    p.send_raw(&junk);
    assert_eq!(p.read_raw(PREAMBLE_LEN), Some(t.preamble()));
    match enc {
        Enc::Plain => {
            let announced = u32::from_be_bytes(junk[..FRAME_HEADER].try_into().unwrap());
            assert!(
                announced as usize > MAX_FRAME,
                "the seed announces an oversized frame"
            );
            assert_refused(&p.until_closed(), "invalid frame");
            t.assert_survived(&format!(
                "invalid frame: frame of {announced} bytes announced"
            ));
        }
        _ => {
            // The daemon cannot authenticate the first handshake message and says so,
            // with the one refusal a stranger can read, then closes.
            assert_eq!(p.read_raw(HANDSHAKE_LEN), Some(HANDSHAKE_REFUSED.to_vec()));
            assert_eq!(p.read_raw(1), None, "the daemon closes after its refusal");
            t.assert_survived("handshake failed: the peer does not know our passphrase");
        }
    }
}

// ---------------------------------------------------------------------------------------
// Handshake

fn hello_with_bad_magic_is_refused(enc: Enc) {
    let t = Target::start("proto-magic", enc);
    let mut bytes = frame(&hello("a-evil", None, &[STORAGE]));
    bytes[FRAME_HEADER + 1] = b'X'; // first byte of the magic, after the tag
    let mut p = t.link();
    p.send_frames(&bytes);
    let msgs = p.until_closed();
    assert_refused(&msgs, "bad magic");
    t.assert_survived("not an iron-carrier peer (bad magic)");
}

/// A peer of another protocol version is refused by its preamble, by both ends alike and
/// before any key is made; an older build, which opens with its `Hello`, is named by the
/// version in it; a `Hello` whose version contradicts a good preamble is refused too.
fn another_protocol_version_is_refused_with_a_reason(enc: Enc) {
    let t = Target::start("proto-version", enc);
    for version in [PROTOCOL_VERSION + 1, PROTOCOL_VERSION - 1] {
        let mut preamble = t.preamble();
        preamble[8..12].copy_from_slice(&u32::from(version).to_be_bytes());
        let mut p = RawPeer::connect(t.port);
        p.send_raw(&preamble);
        assert_eq!(p.read_raw(PREAMBLE_LEN), Some(t.preamble()));
        p.until_closed();
        t.wait_for_log(&format!(
            "protocol mismatch: the peer speaks version {version}, we speak {PROTOCOL_VERSION}"
        ));
    }
    // An older build: its Hello frame first (tag, magic, 16-bit version 3).
    let mut old = frame(&hello("a-evil", None, &[STORAGE]));
    old[FRAME_HEADER + 9..FRAME_HEADER + 11].copy_from_slice(&3u16.to_be_bytes());
    let mut p = RawPeer::connect(t.port);
    p.send_raw(&old);
    p.read_raw(PREAMBLE_LEN);
    p.until_closed();
    t.wait_for_log("protocol mismatch: the peer speaks version 3,");
    for (version, said) in [
        (PROTOCOL_VERSION + 1, "peer speaks a newer protocol version"),
        (
            PROTOCOL_VERSION - 1,
            "peer speaks an older protocol version",
        ),
    ] {
        let mut bytes = frame(&hello("a-evil", None, &[STORAGE]));
        // tag (1) + magic (8), then the version.
        let at = FRAME_HEADER + 1 + 8;
        bytes[at..at + 2].copy_from_slice(&version.to_be_bytes());
        let mut p = t.link();
        p.send_frames(&bytes);
        assert_refused(&p.until_closed(), "version");
        t.wait_for_log(said);
    }
    t.assert_survived("peer speaks an older protocol version");
}

/// Another group's preamble is refused before any key; a `Hello` naming another group than
/// its preamble's tag (a peer lying about its group) is refused too.
fn another_group_is_refused(enc: Enc) {
    let t = Target::start("proto-group", enc);
    let mut p = RawPeer::connect(t.port);
    let other = enc.link(Some("other"));
    let hs = p.start_link(&other);
    let refused = p.finish_link(&other, hs).unwrap_err();
    assert!(refused.contains("Group"), "{refused}");
    t.wait_for_log("group mismatch: we are in the default group, the peer in another group");
    let mut p = t.link();
    p.send(&hello("a-evil", Some("other"), &[STORAGE]));
    assert_refused(&p.until_closed(), "group");
    t.assert_survived(
        "group mismatch: we are in the default group, peer a-evil is in group \"other\"",
    );
}

// ---------------------------------------------------------------------------------------
// Sessions

fn session_start_from_a_node_that_does_not_lead_is_aborted(enc: Enc) {
    let t = Target::start("proto-not-leader", enc);
    let mut p = t.handshake(&hello("zz-follower", None, &[STORAGE]));
    // "node-b" leads "docs", and a daemon starts a session with every new peer: as a
    // follower may, decline it first.
    let daemon_sid = expect_session_start(&mut p);
    p.send(&Message::Peer(PeerMsg::Session(SessionMsg::Abort {
        sid: daemon_sid,
        reason: "not now".into(),
    })));
    t.wait_for_log("aborted");
    // Now try to lead it without a grant.
    let sid = 0x0D0E_5E55;
    p.send(&Message::Peer(PeerMsg::Session(SessionMsg::Start {
        sid,
        storage: STORAGE.into(),
        members: vec![],
    })));
    loop {
        match p.expect("SessionAbort") {
            Message::Peer(PeerMsg::Session(SessionMsg::Abort { sid: s, reason })) => {
                assert_eq!(s, sid);
                assert!(reason.contains("not the leader"), "reason: {reason}");
                break;
            }
            // The end of the session we declined, and the daemon's next claims (we never
            // answer them).
            Message::Peer(PeerMsg::Election(_))
            | Message::Peer(PeerMsg::Session(SessionMsg::End { .. })) => {}
            other => panic!("expected SessionAbort, got {other:?}"),
        }
    }
    t.wait_for_log("refusing a session from zz-follower: it was not granted the lead");
    // Leave, so the legitimate sync below is not a session with us too.
    p.stream.shutdown(Shutdown::Both).expect("shutdown");
    drop(p);
    t.wait_for_log("disconnected from zz-follower");
    t.assert_survived("not granted the lead");
}

/// Plays the follower of the daemon's first session up to its index request: a summary
/// claiming `count` entries of an index the daemon has never seen.
fn follow_until_index_request(t: &Target, tag: &str, count: u64) -> (RawPeer, u64) {
    let mut p = t.handshake(&hello(tag, None, &[STORAGE]));
    let sid = expect_session_start(&mut p);
    p.send(&Message::Peer(PeerMsg::Session(SessionMsg::IndexSummary {
        sid,
        index_id: 77,
        seq: count,
        count,
        digest: [0; 32],
        peers: vec![],
    })));
    match p.expect("IndexRequest") {
        Message::Peer(PeerMsg::Session(SessionMsg::IndexRequest { sid: s, since })) => {
            assert_eq!(s, sid);
            assert_eq!(since, 0, "an index never seen is asked for in full");
        }
        other => panic!("expected IndexRequest, got {other:?}"),
    }
    (p, sid)
}

fn index_entry(name: &str, vv: Vv) -> Record {
    Record::Entry(Entry {
        meta: FileMeta::file(RelPath::new(name).unwrap(), 1, 1_000_000_000, 0o644),
        deleted: false,
        hash: Some([1; 32]),
        vv,
        by: NodeId::new("zz-peer").unwrap(),
        link: None,
    })
}

/// A version vector naming a node twice (unsorted), with a zero counter, or naming more
/// nodes than any vector may: the frame is refused as malformed, nothing is recorded.
fn a_malformed_version_vector_disconnects_the_follower(enc: Enc) {
    let t = Target::start("proto-bad-vv", enc);
    let (mut p, sid) = follow_until_index_request(&t, "zz-peer", 1);
    let mut chunk = frame(&Message::Peer(PeerMsg::Session(SessionMsg::IndexChunk {
        sid,
        records: vec![index_entry(
            "x",
            Vv::from_pairs(vec![
                (NodeId::new("aa").unwrap(), 1),
                (NodeId::new("bb").unwrap(), 2),
            ])
            .unwrap(),
        )],
    })));
    // Swap the two node ids on the wire ("aa" and "bb" are the same length): unsorted.
    let at = chunk
        .windows(2)
        .position(|w| w == b"aa")
        .expect("the first node id");
    let bt = chunk
        .windows(2)
        .position(|w| w == b"bb")
        .expect("the second node id");
    chunk[at..at + 2].copy_from_slice(b"bb");
    chunk[bt..bt + 2].copy_from_slice(b"aa");
    p.send_frames(&chunk);
    let msgs = p.until_closed();
    assert_refused(&msgs, "malformed version vector");
    t.assert_survived("malformed version vector");
}

/// The index a follower sends must lead to the sequence number its summary claimed: an
/// end that says otherwise is a lie about what the leader now holds of it.
fn an_index_end_that_does_not_match_the_summary_disconnects_the_follower(enc: Enc) {
    let t = Target::start("proto-index-end", enc);
    let (mut p, sid) = follow_until_index_request(&t, "zz-peer", 5);
    let mut bytes = frame(&Message::Peer(PeerMsg::Session(SessionMsg::IndexChunk {
        sid,
        records: vec![index_entry("a", one("zz-peer", 1))],
    })));
    bytes.extend(frame(&Message::Peer(PeerMsg::Session(
        SessionMsg::IndexEnd { sid, seq: 4 },
    ))));
    p.send_frames(&bytes);
    let msgs = p.until_closed();
    assert_refused(&msgs, "does not match its summary");
    t.assert_survived("sent an index that does not match its summary");
}

// ---------------------------------------------------------------------------------------
// Delta instructions

fn a_block_copy_for_a_file_that_is_no_delta_disconnects(enc: Enc) {
    let t = Target::start("proto-copy-no-delta", enc);
    let (mut p, _) = start_receive(&t, "new.bin", 4096, None);
    p.send(&Message::Peer(PeerMsg::Transfer(TransferMsg::FileCopy {
        xid: 9,
        first: 0,
        count: 1,
    })));
    let msgs = p.until_closed();
    assert_refused(&msgs, "not a delta");
    assert!(!t.store().join("new.bin").exists());
    t.assert_survived("which is not a delta");
}

fn a_block_copy_outside_the_old_file_disconnects(enc: Enc) {
    let old = vec![0x42u8; 100 * 1024];
    let t = Target::start_with("proto-copy-range", enc, &[("base.bin", &old)]);
    let st = std::fs::metadata(t.store().join("base.bin")).unwrap();
    let mtime = {
        use std::os::unix::fs::MetadataExt;
        iron_carrier::model::mtime_ns_from_parts(st.mtime(), st.mtime_nsec())
    };
    let base = Version {
        size: st.len(),
        mtime_ns: mtime,
    };
    let (mut p, _) = start_receive(&t, "base.bin", 200 * 1024, Some(base));
    p.send(&Message::Peer(PeerMsg::Transfer(TransferMsg::FileCopy {
        xid: 9,
        first: 1_000_000,
        count: 5,
    })));
    let msgs = p.until_closed();
    assert_refused(&msgs, "outside the old file");
    assert_eq!(std::fs::read(t.store().join("base.bin")).unwrap(), old);
    t.assert_survived("copy of blocks outside the old file");
}

fn a_file_whose_hash_does_not_match_is_never_committed(enc: Enc) {
    let t = Target::start("proto-bad-hash", enc);
    let (mut p, _) = start_receive(&t, "new.bin", 5, None);
    p.send(&Message::Peer(PeerMsg::Transfer(TransferMsg::FileData {
        xid: 9,
        data: b"hello".to_vec(),
    })));
    p.send(&Message::Peer(PeerMsg::Transfer(TransferMsg::FileEnd {
        xid: 9,
        hash: [0u8; 32],
    })));
    t.wait_for_log("content hash mismatch; discarded");
    drop(p);
    assert!(!t.store().join("new.bin").exists());
    t.assert_survived("content hash mismatch");
}

/// A follower takes a plan chunk by chunk: a path it is told to receive in one chunk and
/// again in another is still found, when the plan ends, and breaks the plan.
fn a_path_to_receive_twice_in_two_chunks_disconnects_the_leader(enc: Enc) {
    let t = Target::start("proto-plan-twice", enc);
    let sid = 0x7717_CE00;
    let mut p = t.handshake(&hello("a-evil", None, &[STORAGE]));
    lead_session(&mut p, sid);
    let receive = |mtime: i64| {
        let meta = FileMeta::file(RelPath::new("twice.txt").unwrap(), 5, mtime, 0o644);
        PlanItem::Receive {
            entry: Entry {
                meta,
                deleted: false,
                hash: Some([5; 32]),
                vv: one("a-evil", 1_900_000_000),
                by: NodeId::new("a-evil").unwrap(),
                link: None,
            },
            from: NodeId::new("a-evil").unwrap(),
            expect: None,
        }
    };
    for mtime in [1_900_000_000_000_000_000, 1_900_000_001_000_000_000] {
        p.send(&Message::Peer(PeerMsg::Session(SessionMsg::PlanChunk {
            sid,
            items: vec![receive(mtime)],
        })));
    }
    p.send(&Message::Peer(PeerMsg::Session(SessionMsg::PlanEnd {
        sid,
    })));
    let msgs = p.until_closed();
    assert_refused(&msgs, "naming a path twice");
    assert!(
        !msgs.iter().any(|m| matches!(
            m,
            Message::Peer(PeerMsg::Session(SessionMsg::PlanReady { .. }))
        )),
        "a broken plan is never ready: {msgs:?}"
    );
    t.assert_survived("sent a plan naming a path twice");
}

// ---------------------------------------------------------------------------------------
// Every attack over each link

/// One `#[test]` per attack and link: `plain::name` and `sealed::name`.
macro_rules! over_each_link {
    ($($name:ident,)*) => {
        mod plain {
            $(
                #[test]
                fn $name() {
                    super::$name(super::Enc::Plain)
                }
            )*
        }
        mod sealed {
            $(
                #[test]
                fn $name() {
                    super::$name(super::Enc::Passphrase)
                }
            )*
        }
    };
}

over_each_link! {
            dotdot_path_in_file_start_disconnects_and_writes_nothing,
            absolute_path_in_file_start_disconnects_and_writes_nothing,
            empty_path_in_file_start_disconnects,
            file_no_plan_announced_disconnects_and_is_not_written,
            oversized_frame_header_disconnects_without_waiting_for_the_body,
            a_refused_peer_that_reconnects_at_once_is_accepted,
            truncated_frame_then_eof_closes_cleanly,
            garbage_before_the_handshake_disconnects,
            hello_with_bad_magic_is_refused,
            another_protocol_version_is_refused_with_a_reason,
            another_group_is_refused,
            session_start_from_a_node_that_does_not_lead_is_aborted,
            a_malformed_version_vector_disconnects_the_follower,
            an_index_end_that_does_not_match_the_summary_disconnects_the_follower,
            a_block_copy_for_a_file_that_is_no_delta_disconnects,
            a_block_copy_outside_the_old_file_disconnects,
            a_file_whose_hash_does_not_match_is_never_committed,
            a_path_to_receive_twice_in_two_chunks_disconnects_the_leader,
}
