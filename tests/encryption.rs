//! Encrypted links between real processes: every `encryption` setting synchronizes with
//! itself, every mismatched pair is refused on both sides with the reason, a recording relay
//! on 127.0.0.1 sees no file name and no content, a flood of strangers does not keep a good
//! peer out, and frames replayed, reflected or altered (by a crafted peer, or by a relay
//! between real nodes) close the link and change nothing.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic in a test is a failed test

mod common;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;

use common::peer::{connect_from, frame, Enc, RawPeer};
use common::*;
use iron_carrier::model::NodeId;
use iron_carrier::net::link::{HANDSHAKE_LEN, PREAMBLE_LEN};
use iron_carrier::proto::{Hello, LinkMsg, Message};

const PASS: &str = "\"correct horse battery staple\"";
const OTHER_PASS: &str = "\"incorrect horse battery staple\"";

/// The three settings, as TOML values, with a name for messages.
const MODES: [(&str, &str); 3] = [("plain", "false"), ("true", "true"), ("passphrase", PASS)];

/// B as a daemon with `enc_b`, A as a one-shot run against it with `enc_a`, each with one
/// file of its own. Returns A's output, B's log and the test dir.
fn run_pair(tag: &str, enc_a: &str, enc_b: &str) -> (std::process::Output, String, TestDir) {
    let dir = TestDir::new(tag);
    let (a, b) = pair_configs(&dir, tag);
    let a = a.encryption(enc_a);
    let b = b.encryption(enc_b);
    dir.write("a/from-a.txt", b"made on a\n");
    dir.write("b/from-b.txt", b"made on b\n");
    let daemon = Daemon::start(&b.write(dir.path()));
    let out = oneshot(&a.write(dir.path()));
    let (code, log) = daemon.stop();
    assert_eq!(code, Some(0), "daemon exit: {log}");
    (out, log, dir)
}

#[test]
fn each_setting_synchronizes_with_itself() {
    let handles: Vec<_> = MODES
        .iter()
        .map(|&(name, enc)| {
            thread::spawn(move || {
                let (out, log, dir) = run_pair(&format!("enc-same-{name}"), enc, enc);
                assert_eq!(
                    out.status.code(),
                    Some(0),
                    "{name}: {}\nB:\n{log}",
                    show(&out)
                );
                assert_eq!(
                    std::fs::read(dir.join("b/from-a.txt")).ok().as_deref(),
                    Some(&b"made on a\n"[..]),
                    "{name}"
                );
                assert_eq!(
                    std::fs::read(dir.join("a/from-b.txt")).ok().as_deref(),
                    Some(&b"made on b\n"[..]),
                    "{name}"
                );
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
}

#[test]
fn every_mismatched_pair_is_refused_on_both_sides_with_the_reason() {
    let plain = "no encryption (encryption = false)";
    let eph = "encryption without a passphrase (encryption = true)";
    let pass = "a passphrase";
    let mismatch = |ours: &str, theirs: &str| {
        format!("encryption mismatch: we use {ours}, the peer uses {theirs}")
    };
    // (name, A's setting, B's setting, what A says, what B says)
    let cases: Vec<(&str, &str, &str, String, String)> = vec![
        (
            "pt",
            "false",
            "true",
            mismatch(plain, eph),
            mismatch(eph, plain),
        ),
        (
            "tp",
            "true",
            "false",
            mismatch(eph, plain),
            mismatch(plain, eph),
        ),
        (
            "pp",
            "false",
            PASS,
            mismatch(plain, pass),
            mismatch(pass, plain),
        ),
        (
            "ppl",
            PASS,
            "false",
            mismatch(pass, plain),
            mismatch(plain, pass),
        ),
        (
            "tpa",
            "true",
            PASS,
            mismatch(eph, pass),
            mismatch(pass, eph),
        ),
        (
            "pat",
            PASS,
            "true",
            mismatch(pass, eph),
            mismatch(eph, pass),
        ),
        (
            "wrong",
            OTHER_PASS,
            PASS,
            "handshake refused by the peer: it does not know our passphrase".to_owned(),
            "handshake failed: the peer does not know our passphrase".to_owned(),
        ),
    ];
    let handles: Vec<_> = cases
        .into_iter()
        .map(|(name, enc_a, enc_b, says_a, says_b)| {
            thread::spawn(move || {
                let (out, log, dir) = run_pair(&format!("enc-mis-{name}"), enc_a, enc_b);
                let text = show(&out);
                assert_ne!(out.status.code(), Some(0), "{name}: {text}");
                assert!(
                    text.contains(&says_a),
                    "{name}: A should say {says_a:?}:\n{text}"
                );
                assert!(
                    log.contains(&format!(": {says_b}")) && log.contains("refusing"),
                    "{name}: B should log {says_b:?}:\n{log}"
                );
                // Nothing moved either way, and no session began.
                assert!(!dir.join("b/from-a.txt").exists(), "{name}");
                assert!(!dir.join("a/from-b.txt").exists(), "{name}");
                assert!(!log.contains("connected;"), "{name}: {log}");
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
}

#[test]
fn another_group_is_refused_by_its_tag_before_any_key() {
    let dir = TestDir::new("enc-group");
    let (a, b) = pair_configs(&dir, "enc-group");
    let a = a.group("the-other-family").encryption(PASS);
    let b = b.encryption(PASS);
    let daemon = Daemon::start(&b.write(dir.path()));
    let out = oneshot(&a.write(dir.path()));
    let (_, log) = daemon.stop();
    let text = show(&out);
    assert_ne!(out.status.code(), Some(0), "{text}");
    assert!(
        text.contains(
            "group mismatch: we are in group \"the-other-family\", the peer in another group"
        ),
        "{text}"
    );
    assert!(log.contains("group mismatch"), "{log}");
    assert!(
        !log.contains("the-other-family"),
        "the group's name crossed the wire: {log}"
    );
}

/// A relay on 127.0.0.1 that forwards each connection to `to` and records every byte of it,
/// per connection and direction; it may flip one bit of what the client sends.
struct Relay {
    port: u16,
    /// Per connection, in order: [client to server, server to client].
    conns: Arc<Mutex<Vec<[Vec<u8>; 2]>>>,
}

impl Relay {
    fn start(to: u16) -> Relay {
        Relay::tampering(to, None)
    }

    /// Like `start`; `flip = Some((at, bit))` flips that bit of byte `at` (counted from the
    /// start of each connection) of what the client sends.
    fn tampering(to: u16, flip: Option<(usize, u8)>) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let conns = Arc::new(Mutex::new(Vec::new()));
        let rec = conns.clone();
        thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { return };
                let Ok(server) = TcpStream::connect(("127.0.0.1", to)) else {
                    continue;
                };
                let n = {
                    let mut all = rec.lock().unwrap();
                    all.push([Vec::new(), Vec::new()]);
                    all.len() - 1
                };
                let pipes = [
                    (
                        client.try_clone().unwrap(),
                        server.try_clone().unwrap(),
                        flip,
                    ),
                    (server, client, None),
                ];
                for (dir, (mut from, mut into, flip)) in pipes.into_iter().enumerate() {
                    let rec = rec.clone();
                    thread::spawn(move || {
                        let mut buf = [0u8; 64 * 1024];
                        let mut at = 0;
                        loop {
                            match from.read(&mut buf) {
                                Ok(0) | Err(_) => break,
                                Ok(len) => {
                                    if let Some((pos, bit)) = flip {
                                        if (at..at + len).contains(&pos) {
                                            buf[pos - at] ^= 1 << bit;
                                        }
                                    }
                                    at += len;
                                    rec.lock().unwrap()[n][dir].extend_from_slice(&buf[..len]);
                                    if into.write_all(&buf[..len]).is_err() {
                                        break;
                                    }
                                }
                            }
                        }
                        let _ = into.shutdown(Shutdown::Write);
                    });
                }
            }
        });
        Relay { port, conns }
    }

    /// Everything recorded, both directions of every connection.
    fn seen(&self) -> Vec<u8> {
        let all = self.conns.lock().unwrap();
        all.iter()
            .flat_map(|[up, down]| [up, down])
            .flatten()
            .copied()
            .collect()
    }

    /// What the client sent on connection `n`.
    fn sent_by_client(&self, n: usize) -> Vec<u8> {
        self.conns.lock().unwrap()[n][0].clone()
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn a_recording_relay_sees_no_name_and_no_content_when_encrypted() {
    for (name, enc) in MODES {
        let dir = TestDir::new(&format!("enc-relay-{name}"));
        let (a, b) = pair_configs(&dir, &format!("enc-relay-{name}"));
        let b = b.encryption(enc);
        let relay = Relay::start(b.port);
        let mut a = a.encryption(enc);
        a.peers = vec![relay.port];
        let secret_name = "tax-return-2026-private.pdf";
        let secret = b"THE-SECRET-CONTENT-OF-THE-FILE ".repeat(100);
        dir.write(&format!("a/{secret_name}"), &secret);
        let daemon = Daemon::start(&b.write(dir.path()));
        let out = oneshot(&a.write(dir.path()));
        let (_, log) = daemon.stop();
        assert_eq!(out.status.code(), Some(0), "{name}: {}\n{log}", show(&out));
        assert_eq!(
            std::fs::read(dir.join(&format!("b/{secret_name}"))).unwrap(),
            secret
        );
        let seen = relay.seen();
        let leaks: Vec<&str> = [
            ("the file's name", secret_name.as_bytes()),
            ("the file's content", &b"THE-SECRET-CONTENT"[..]),
            ("a node id", b"node-a"),
            ("the storage's name", b"docs"),
            ("the group's name", b"enc-relay-"),
        ]
        .iter()
        .filter(|(_, n)| contains(&seen, n))
        .map(|(what, _)| *what)
        .collect();
        if name == "plain" {
            // The control: the relay does see what it is looking for in plain text, so the
            // search can fail.
            assert!(leaks.contains(&"the file's name"), "{leaks:?}");
            assert!(leaks.contains(&"the file's content"), "{leaks:?}");
        } else {
            assert!(
                leaks.is_empty(),
                "{name}: {leaks:?} crossed the wire in the clear"
            );
            assert!(
                seen.len() > secret.len(),
                "{name}: the relay saw the transfer"
            );
        }
    }
}

#[test]
fn a_flood_of_strangers_does_not_keep_a_good_peer_out() {
    let dir = TestDir::new("enc-flood");
    let (a, b) = pair_configs(&dir, "enc-flood");
    let a = a.encryption(PASS);
    let b = b.encryption(PASS);
    dir.write("a/from-a.txt", b"made on a\n");
    let daemon = Daemon::start(&b.write(dir.path()));
    let stop = Arc::new(AtomicBool::new(false));
    let opened = Arc::new(AtomicUsize::new(0));
    // Strangers: from one address, many connections that never finish a handshake (silent,
    // a preamble alone, a preamble and garbage), opened as fast as the daemon takes them;
    // and from a hundred addresses one silent connection each, more than the daemon keeps.
    let mut floods = Vec::new();
    for kind in 0..3u8 {
        let (stop, opened) = (stop.clone(), opened.clone());
        let port = b.port;
        floods.push(thread::spawn(move || {
            let mut held = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let Some(mut s) = connect_from(Ipv4Addr::new(127, 0, 0, 2), port) else {
                    // Out of ports or descriptors for a moment: no busy loop that would
                    // starve the nodes of CPU instead of testing them.
                    thread::sleep(std::time::Duration::from_millis(5));
                    continue;
                };
                opened.fetch_add(1, Ordering::Relaxed);
                let _ = match kind {
                    0 => Ok(()),
                    1 => s.write_all(b"IRONCARR\0\0\0\x04\x02\0\0\0................"),
                    _ => s.write_all(&[0x5a; 200]),
                };
                held.push(s);
                if held.len() > 300 {
                    held.remove(0);
                }
            }
        }));
    }
    let mut crowd = Vec::new();
    for host in 0..100u8 {
        if let Some(s) = connect_from(Ipv4Addr::new(127, 0, 1, host + 1), b.port) {
            crowd.push(s);
        }
    }
    assert!(
        daemon.wait_for_log("refusing connections from 127.0.0.2", PATIENCE),
        "the flood was not limited:\n{}",
        daemon.log()
    );
    // The good peer comes in while the flood is in full swing, however fast this machine.
    assert!(
        wait_until(PATIENCE, || opened.load(Ordering::Relaxed) > 100),
        "the flood opened only {} connections",
        opened.load(Ordering::Relaxed)
    );
    let out = oneshot(&a.write(dir.path()));
    stop.store(true, Ordering::Relaxed);
    for h in floods {
        h.join().unwrap();
    }
    let (code, log) = daemon.stop();
    assert_eq!(code, Some(0), "{log}");
    assert_eq!(
        out.status.code(),
        Some(0),
        "the good peer was kept out by {} strangers' connections:\n{}\n{log}",
        opened.load(Ordering::Relaxed),
        show(&out)
    );
    assert!(dir.join("b/from-a.txt").exists());
    drop(crowd);
}

// ---------------------------------------------------------------------------------------
// Replays, reflections, tampering

const FORGED: &str = "a frame failed authentication";

/// A daemon of group `group` with `enc`, sharing "docs".
fn daemon_with(dir: &TestDir, enc: Enc) -> (Daemon, u16, String) {
    let (_, b) = pair_configs(dir, "enc-crafted");
    let group = format!("enc-crafted-{}", std::process::id());
    let port = b.port;
    (
        Daemon::start(&b.encryption(&enc.toml()).write(dir.path())),
        port,
        group,
    )
}

fn hello_from(id: &str, group: &str) -> Message {
    Message::Link(LinkMsg::Hello(Hello {
        version: iron_carrier::proto::PROTOCOL_VERSION,
        node_id: NodeId::new(id).unwrap(),
        group: Some(group.to_owned()),
        listen_port: 0,
        clock_ms: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64),
        storages: vec!["docs".to_owned()],
    }))
}

/// Links to the daemon as `id`, and exchanges hellos. Returns the peer and our sealed Hello
/// exactly as it crossed the wire.
fn crafted_peer(daemon: &Daemon, port: u16, group: &str, enc: Enc, id: &str) -> (RawPeer, Vec<u8>) {
    let before = daemon.count_log(&format!("peer {id} connected"));
    let mut p = RawPeer::link(port, &enc.link(Some(group)));
    let sealed = p.seal(&frame(&hello_from(id, group)));
    p.send_raw(&sealed);
    assert!(matches!(
        p.expect("the daemon's Hello"),
        Message::Link(LinkMsg::Hello(_))
    ));
    assert!(
        wait_until(PATIENCE, || daemon
            .count_log(&format!("peer {id} connected"))
            > before),
        "{}",
        daemon.log()
    );
    (p, sealed)
}

/// The daemon dropped the connection: it closed, and its log says why.
fn assert_dropped(p: &mut RawPeer, daemon: &Daemon, why: &str, times: usize) {
    while p.recv_wire().is_some() {}
    assert!(
        wait_until(PATIENCE, || daemon.count_log(why) >= times),
        "the daemon should have logged {why:?} {times} time(s):\n{}",
        daemon.log()
    );
}

#[test]
fn a_frame_replayed_in_its_own_or_a_new_connection_is_rejected() {
    for enc in [Enc::Ephemeral, Enc::Passphrase] {
        let dir = TestDir::new(&format!("enc-replay-frame-{enc:?}"));
        let (daemon, port, group) = daemon_with(&dir, enc);
        // Once more in the same connection: its nonce is used up.
        let (mut p, hello) = crafted_peer(&daemon, port, &group, enc, "x-first");
        p.send_raw(&hello);
        assert_dropped(&mut p, &daemon, FORGED, 1);
        // In a new connection: other keys.
        let mut p = RawPeer::link(port, &enc.link(Some(&group)));
        p.send_raw(&hello);
        assert_dropped(&mut p, &daemon, FORGED, 2);
        assert_eq!(
            daemon.count_log("peer x-first connected"),
            1,
            "{}",
            daemon.log()
        );
        let (code, log) = daemon.stop();
        assert_eq!(code, Some(0), "{log}");
    }
}

#[test]
fn a_frame_reflected_back_to_its_sender_is_rejected() {
    for enc in [Enc::Ephemeral, Enc::Passphrase] {
        let dir = TestDir::new(&format!("enc-reflect-{enc:?}"));
        let (daemon, port, group) = daemon_with(&dir, enc);
        let mut p = RawPeer::link(port, &enc.link(Some(&group)));
        // The daemon's sealed Hello, sent straight back: sealed with the key of the other
        // direction.
        let theirs = p.recv_wire().expect("the daemon's Hello");
        p.send_raw(&theirs);
        assert_dropped(&mut p, &daemon, FORGED, 1);
        assert!(
            !daemon.log().contains("node-b connected"),
            "{}",
            daemon.log()
        );
        daemon.stop();
    }
}

#[test]
fn a_flipped_bit_anywhere_in_a_frame_closes_the_connection() {
    let enc = Enc::Ephemeral;
    let dir = TestDir::new("enc-flip-frame");
    let (daemon, port, group) = daemon_with(&dir, enc);
    let hello = frame(&hello_from("x-flip", &group));
    let sealed_len = hello.len() + 16;
    // The length header's high byte, every byte of the body's start and end, and the tag.
    let mut spots: Vec<usize> = vec![0];
    spots.extend(4..12);
    spots.extend(sealed_len - 20..sealed_len);
    for (n, &at) in spots.iter().enumerate() {
        // Each from its own address: one address may not start this many handshakes at once.
        let from = Ipv4Addr::new(127, 0, 2, n as u8 + 1);
        let mut p = RawPeer::link_from(from, port, &enc.link(Some(&group)));
        let mut bad = p.seal(&hello);
        // Byte 0: the length's bit 30 (bit 31 is the rekey flag, which the tag covers).
        bad[at] ^= if at == 0 { 0x40 } else { 0x80 };
        p.send_raw(&bad);
        let why = if at == 0 { "out of bounds" } else { FORGED };
        let times = spots[..=n]
            .iter()
            .filter(|&&s| (s == 0) == (at == 0))
            .count();
        assert_dropped(&mut p, &daemon, why, times);
    }
    assert!(
        !daemon.log().contains("x-flip connected"),
        "{}",
        daemon.log()
    );
    daemon.stop();
}

/// A recorded session between two real nodes, replayed byte for byte into a new connection:
/// the daemon answers with a fresh key, so the recorded frames do not open, and nothing is
/// accepted from them.
#[test]
fn a_captured_session_replayed_into_a_new_connection_is_refused() {
    for enc in [Enc::Ephemeral, Enc::Passphrase] {
        let tag = format!("enc-replay-session-{enc:?}");
        let dir = TestDir::new(&tag);
        let (a, b) = pair_configs(&dir, &tag);
        let b = b.encryption(&enc.toml());
        let relay = Relay::start(b.port);
        let mut a = a.encryption(&enc.toml());
        a.peers = vec![relay.port];
        dir.write("a/first.txt", b"first\n");
        let daemon = Daemon::start(&b.write(dir.path()));
        let out = oneshot(&a.write(dir.path()));
        assert_eq!(out.status.code(), Some(0), "{}", show(&out));
        std::fs::remove_file(dir.join("b/first.txt")).unwrap();
        let recorded = relay.sent_by_client(0);
        assert!(recorded.len() > 200, "the relay saw the session");
        let mut p = RawPeer::connect(b.port);
        p.send_raw(&recorded);
        // The daemon's preamble and its answer to the replayed first message, then frames.
        assert!(p.read_raw(PREAMBLE_LEN + HANDSHAKE_LEN).is_some());
        while p.recv_wire().is_some() {}
        let (_, log) = daemon.stop();
        assert!(log.contains(FORGED), "{log}");
        assert_eq!(
            log.matches("peer node-a connected").count(),
            1,
            "the replay was taken for node-a: {log}"
        );
        assert!(!dir.join("b/first.txt").exists(), "the replay wrote a file");
    }
}

/// Real nodes through a relay that flips one bit: in the first handshake message the
/// daemon refuses the handshake (and says so), in the first sealed frame it drops the link;
/// either way nothing is synchronized, and the one-shot run says why and fails.
#[test]
fn a_flipped_bit_between_real_nodes_fails_the_link_never_the_data() {
    let enc = Enc::Passphrase;
    let handshake_byte = 32 + 40;
    let first_frame_body = 32 + 48 + 4 + 3;
    for (at, daemon_says, oneshot_says) in [
        (
            handshake_byte,
            "handshake failed: the peer does not know our passphrase",
            "handshake refused by the peer",
        ),
        (first_frame_body, FORGED, FORGED),
    ] {
        let tag = format!("enc-flip-{at}");
        let dir = TestDir::new(&tag);
        let (a, b) = pair_configs(&dir, &tag);
        let b = b.encryption(&enc.toml());
        let relay = Relay::tampering(b.port, Some((at, 2)));
        let mut a = a.encryption(&enc.toml());
        a.peers = vec![relay.port];
        dir.write("a/first.txt", b"first\n");
        let daemon = Daemon::start(&b.write(dir.path()));
        let out = oneshot(&a.write(dir.path()));
        let (_, log) = daemon.stop();
        let text = show(&out);
        assert_ne!(out.status.code(), Some(0), "{text}");
        assert!(text.contains(oneshot_says), "{text}");
        assert!(log.contains(daemon_says), "{log}");
        assert!(!log.contains("peer node-a connected"), "{log}");
        assert!(!dir.join("b/first.txt").exists());
    }
}
