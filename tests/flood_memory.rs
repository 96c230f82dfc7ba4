//! The daemon's memory under each flood a hostile network can send it, for `make bench`
//! (ignored by `cargo test`): a real daemon over real TCP on 127.0.0.0/8, a fresh one per
//! flood, its `VmRSS` just before the flood and its `VmHWM` (reset to the RSS just before,
//! through `/proc/<pid>/clear_refs`) once the flood is over and the daemon idle again. Each
//! flood is a volume, not a duration, so a slow machine measures the same thing:
//!
//! - `ping`: 64 MiB of `Ping` frames from one linked peer that never reads;
//! - `handshake`: 4,096 connections from 1,024 sources (127.1.y.z), half silent, half sending
//!   a garbage preamble, all held until the daemon closed them;
//! - `crowd`: 140 idle linked strangers with distinct node ids (past the 128-peer limit);
//! - `claim`: one linked peer sharing the storage, sending 65,536 `Claim`s with fresh tickets
//!   as fast as it can while reading what it gets;
//! - `garbage`: one linked peer sending 64 MiB of random bytes after its `Hello` (the daemon
//!   refuses at once, then reads and drops what still comes for its 2 s close grace).
//!
//! After each, a legitimate node must still synchronize with the daemon, and the garbage
//! sender must be cut off at once (the daemon's FIN within 2 s of the first byte). Prints one
//! line per flood:
//! `flood <name>: rss_before_kib=N peak_kib=N disconnected=D sent_bytes=N secs=S`, where D
//! is `yes`/`no` for one flooding peer and `closed/connections` for many (the crowd: those
//! refused); the garbage line adds `shut_ms=N`, when the daemon's FIN came.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic in a test is a failed test

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::peer::{connect_from, frame, Enc};
use common::target::{hello, Target, STORAGE};
use common::{raise_own_nofile, status_kib, wait_until};
use iron_carrier::proto::{ElectionMsg, LinkMsg, Message, PeerMsg};

const MIB: usize = 1024 * 1024;

/// The daemon's user + system CPU in clock ticks.
fn cpu_ticks(pid: i32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The command name may hold spaces: fields are counted after its closing parenthesis.
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let f: Vec<u64> = after
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    f.get(11).copied().unwrap_or(0) + f.get(12).copied().unwrap_or(0)
}

/// Waits until the daemon has used no CPU for 300 ms (at most 10 s): what it still had to
/// handle once the flood stopped (queued input, closes) counts in its peak.
fn settle(pid: i32) {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut last = cpu_ticks(pid);
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(300));
        let now = cpu_ticks(pid);
        if now == last {
            return;
        }
        last = now;
    }
}

/// The daemon's memory around one flood: its RSS now, and its high-water mark from now on.
struct Meter {
    pid: i32,
    rss_before: u64,
    started: Instant,
}

impl Meter {
    fn start(t: &Target) -> Meter {
        let pid = t.daemon.pid();
        // Start-up (the first scan) may have peaked above the idle RSS: the flood's peak is
        // counted from here. Where /proc refuses, VmHWM is the life-long peak, still a bound.
        let _ = std::fs::write(format!("/proc/{pid}/clear_refs"), "5");
        Meter {
            pid,
            rss_before: status_kib(pid, "VmRSS"),
            started: Instant::now(),
        }
    }

    /// Prints the flood's line; `more` is appended as it is (" key=value ...").
    fn report(self, name: &str, disconnected: &str, sent: usize, more: &str) {
        let secs = self.started.elapsed().as_secs_f64();
        settle(self.pid);
        let peak = status_kib(self.pid, "VmHWM");
        println!(
            "flood {name}: rss_before_kib={} peak_kib={peak} disconnected={disconnected} \
             sent_bytes={sent} secs={secs:.2}{more}",
            self.rss_before
        );
    }
}

fn yes_no(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}

/// Deterministic noise (xorshift64*), so every run floods the same bytes.
fn noise(len: usize, mut seed: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        seed ^= seed >> 12;
        seed ^= seed << 25;
        seed ^= seed >> 27;
        out.extend_from_slice(&seed.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Writes `batch` until `total` bytes went out or a write fails (the daemon closed); returns
/// the bytes written and whether a write failed.
fn pour(stream: &mut TcpStream, batch: &[u8], total: usize) -> (usize, bool) {
    let mut sent = 0;
    while sent < total {
        if stream.write_all(batch).is_err() {
            return (sent, true);
        }
        sent += batch.len();
    }
    (sent, false)
}

// ---------------------------------------------------------------------------------------

fn ping_flood() {
    let t = Target::start("flood-ping", Enc::Plain);
    let mut p = t.handshake(&hello("zz-ping", None, &[]));
    let m = Meter::start(&t);
    let batch = frame(&Message::Link(LinkMsg::Ping)).repeat(64 * 1024);
    let (sent, cut) = pour(&mut p.stream, &batch, 64 * MIB);
    let closed = cut || t.daemon.count_log("disconnected from zz-ping") > 0;
    m.report("ping", yes_no(closed), sent, "");
    drop(p);
    t.assert_survived("disconnected from zz-ping");
}

fn handshake_flood() {
    const SOURCES: usize = 1024;
    const PER_SOURCE: usize = 4; // under admission's per-source caps: all reach accept
    const CONNS: usize = SOURCES * PER_SOURCE;
    assert!(
        raise_own_nofile(CONNS as u64 + 256) >= CONNS as u64 + 64,
        "cannot hold {CONNS} connections"
    );
    let t = Target::start("flood-handshake", Enc::Plain);
    let m = Meter::start(&t);
    let garbage = noise(64, 7);
    let mut conns = Vec::with_capacity(CONNS);
    let mut sent = 0;
    for k in 0..PER_SOURCE {
        for s in 0..SOURCES {
            let from = Ipv4Addr::new(127, 1, (s / 250) as u8, 1 + (s % 250) as u8);
            let Some(mut c) = connect_from(from, t.port) else {
                continue;
            };
            if (s + k) % 2 == 0 && c.write_all(&garbage).is_ok() {
                sent += garbage.len();
            }
            conns.push(c);
        }
    }
    let total = conns.len();
    assert!(total >= CONNS - 16, "only {total} connections were made");
    // Every connection is held until the daemon closes it: the silent ones at its handshake
    // timeout (10 s), the others at once.
    let mut open: Vec<TcpStream> = conns
        .into_iter()
        .inspect(|c| c.set_nonblocking(true).unwrap())
        .collect();
    let mut buf = [0u8; 4096];
    wait_until(Duration::from_secs(40), || {
        open.retain_mut(|c| loop {
            match c.read(&mut buf) {
                Ok(0) => return false,
                Ok(_) => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => return true,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => return false,
            }
        });
        open.is_empty()
    });
    let closed = total - open.len();
    m.report("handshake", &format!("{closed}/{total}"), sent, "");
    drop(open);
    t.assert_survived("does not speak Iron Carrier's protocol");
}

fn crowd() {
    const CROWD: usize = 140;
    let t = Target::start("flood-crowd", Enc::Plain);
    let m = Meter::start(&t);
    let mut linked = Vec::new();
    for i in 0..CROWD {
        // Ten per source: under admission's per-source burst, so each reaches its Hello.
        let from = Ipv4Addr::new(127, 3, 0, 1 + (i / 10) as u8);
        if let Some(p) = t.idle_peer(from, &format!("zz-crowd-{i:03}")) {
            linked.push(p);
        }
    }
    let refused = CROWD - linked.len();
    m.report("crowd", &format!("{refused}/{CROWD}"), 0, "");
    drop(linked);
    t.assert_survived("too many peers (128)");
}

fn claim_flood() {
    const CLAIMS: u64 = 64 * 1024;
    const BATCH: u64 = 1024;
    let t = Target::start("flood-claim", Enc::Plain);
    let mut p = t.handshake(&hello("a-claims", None, &[STORAGE]));
    let m = Meter::start(&t);
    // Reading everything the daemon answers, so its output never backs up: what grows is
    // what it keeps per claim, not a queue to a peer that does not read.
    let mut reader = p.stream.try_clone().unwrap();
    reader
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    // Not AtomicU64: 32-bit MIPS has none, and the answers read stay far below 4 GiB.
    let received = Arc::new(AtomicUsize::new(0));
    let eof = Arc::new(AtomicBool::new(false));
    let drain = {
        let (stop, received, eof) = (stop.clone(), received.clone(), eof.clone());
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 64 * 1024];
            while !stop.load(Ordering::Relaxed) {
                match reader.read(&mut buf) {
                    Ok(0) => {
                        eof.store(true, Ordering::Relaxed);
                        return;
                    }
                    Ok(n) => {
                        received.fetch_add(n, Ordering::Relaxed);
                    }
                    Err(e)
                        if matches!(
                            e.kind(),
                            ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
                        ) => {}
                    Err(_) => {
                        eof.store(true, Ordering::Relaxed);
                        return;
                    }
                }
            }
        })
    };
    let mut sent = 0;
    let mut cut = false;
    for first in (0..CLAIMS).step_by(BATCH as usize) {
        let mut batch = Vec::new();
        for ticket in first..first + BATCH {
            batch.extend(frame(&Message::Peer(PeerMsg::Election(
                ElectionMsg::Claim {
                    ticket: 0xC1A1_0000_0000 + ticket,
                    storage: STORAGE.into(),
                },
            ))));
        }
        if p.stream.write_all(&batch).is_err() {
            cut = true;
            break;
        }
        sent += batch.len();
    }
    // The answers to the last claims are read before the peak is taken.
    settle(t.daemon.pid());
    let closed =
        cut || eof.load(Ordering::Relaxed) || t.daemon.count_log("disconnected from a-claims") > 0;
    m.report("claim", yes_no(closed), sent, "");
    stop.store(true, Ordering::Relaxed);
    drain.join().unwrap();
    eprintln!(
        "claim flood: {} bytes of answers read",
        received.load(Ordering::Relaxed)
    );
    drop(p);
    t.assert_survived("disconnected from a-claims");
}

fn garbage() {
    let t = Target::start("flood-garbage", Enc::Plain);
    let mut p = t.handshake(&hello("zz-garbage", None, &[]));
    let m = Meter::start(&t);
    // The daemon refuses at once but reads and drops what still comes for a grace (so its
    // Refuse arrives intact): its FIN, not a failed write, is when it cut us off.
    let mut reader = p.stream.try_clone().unwrap();
    reader
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let started = Instant::now();
    let shut = std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        loop {
            match reader.read(&mut buf) {
                Ok(0) => return Some(started.elapsed()),
                Ok(_) => {}
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    return None
                }
                Err(_) => return Some(started.elapsed()),
            }
        }
    });
    let batch = noise(MIB, 0x9A3B_A9E5);
    let (sent, _) = pour(&mut p.stream, &batch, 64 * MIB);
    let shut = shut.join().unwrap();
    let refused = t.daemon.count_log("disconnecting peer zz-garbage") > 0;
    let shut_ms = shut.map_or(-1, |d| d.as_millis() as i64);
    m.report(
        "garbage",
        yes_no(shut.is_some() && refused),
        sent,
        &format!(" shut_ms={shut_ms}"),
    );
    assert!(
        refused && shut.is_some_and(|d| d < Duration::from_secs(2)),
        "the daemon did not cut off a peer sending garbage at once ({shut_ms} ms):\n{}",
        t.daemon.log()
    );
    drop(p);
    t.assert_survived("disconnected from zz-garbage");
}

#[test]
#[ignore = "a benchmark: run by make bench"]
fn memory_under_floods() {
    ping_flood();
    handshake_flood();
    crowd();
    claim_flood();
    garbage();
}
