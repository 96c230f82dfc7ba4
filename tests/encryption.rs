//! Encrypted links between real processes: every `encryption` setting synchronizes with
//! itself, every mismatched pair is refused on both sides with the reason, a recording relay
//! on 127.0.0.1 sees no file name and no content, and a flood of strangers does not keep a
//! good peer out.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic in a test is a failed test

mod common;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;

use common::*;

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

/// A relay on 127.0.0.1 that forwards one connection at a time to `to` and records every
/// byte in both directions.
struct Relay {
    port: u16,
    seen: Arc<Mutex<Vec<u8>>>,
}

impl Relay {
    fn start(to: u16) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let rec = seen.clone();
        thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { return };
                let Ok(server) = TcpStream::connect(("127.0.0.1", to)) else {
                    continue;
                };
                for (mut from, mut into) in [
                    (client.try_clone().unwrap(), server.try_clone().unwrap()),
                    (server, client),
                ] {
                    let rec = rec.clone();
                    thread::spawn(move || {
                        let mut buf = [0u8; 64 * 1024];
                        loop {
                            match from.read(&mut buf) {
                                Ok(0) | Err(_) => break,
                                Ok(n) => {
                                    rec.lock().unwrap().extend_from_slice(&buf[..n]);
                                    if into.write_all(&buf[..n]).is_err() {
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
        Relay { port, seen }
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
        let seen = relay.seen.lock().unwrap().clone();
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
    // Strangers: from one address, many connections that never finish a handshake (silent,
    // a preamble alone, a preamble and garbage), opened as fast as the daemon takes them;
    // and from a hundred addresses one silent connection each, more than the daemon keeps.
    let mut floods = Vec::new();
    for kind in 0..3u8 {
        let stop = stop.clone();
        let port = b.port;
        floods.push(thread::spawn(move || {
            let mut held = Vec::new();
            let mut opened = 0usize;
            while !stop.load(Ordering::Relaxed) {
                let Some(mut s) = connect_bound(Ipv4Addr::new(127, 0, 0, 2), port) else {
                    continue;
                };
                opened += 1;
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
            opened
        }));
    }
    let mut crowd = Vec::new();
    for host in 0..100u8 {
        if let Some(s) = connect_bound(Ipv4Addr::new(127, 0, 1, host + 1), b.port) {
            crowd.push(s);
        }
    }
    assert!(
        daemon.wait_for_log("refusing connections from 127.0.0.2", PATIENCE),
        "the flood was not limited:\n{}",
        daemon.log()
    );
    let out = oneshot(&a.write(dir.path()));
    stop.store(true, Ordering::Relaxed);
    let opened: usize = floods.into_iter().map(|h| h.join().unwrap()).sum();
    let (code, log) = daemon.stop();
    assert_eq!(code, Some(0), "{log}");
    assert_eq!(
        out.status.code(),
        Some(0),
        "the good peer was kept out by {opened} strangers' connections:\n{}\n{log}",
        show(&out)
    );
    assert!(dir.join("b/from-a.txt").exists());
    assert!(opened > 100, "the flood opened only {opened} connections");
    drop(crowd);
}

/// A TCP connection from a chosen loopback source address.
fn connect_bound(from: Ipv4Addr, port: u16) -> Option<TcpStream> {
    // SAFETY: plain socket calls on a descriptor this function owns until it is wrapped.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return None;
        }
        let sa = |ip: Ipv4Addr, port: u16| libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: port.to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from(ip).to_be(),
            },
            sin_zero: [0; 8],
        };
        let local = sa(from, 0);
        let remote = sa(Ipv4Addr::LOCALHOST, port);
        let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        let ok = libc::bind(fd, (&local as *const libc::sockaddr_in).cast(), len) == 0
            && libc::connect(fd, (&remote as *const libc::sockaddr_in).cast(), len) == 0;
        if !ok {
            libc::close(fd);
            return None;
        }
        use std::os::fd::FromRawFd;
        Some(TcpStream::from_raw_fd(fd))
    }
}
