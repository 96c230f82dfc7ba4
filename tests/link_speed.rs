//! The link's costs, for `make bench` (not a test of correctness: ignored by `cargo test`):
//! the passphrase's key derivation (once per process), a whole handshake (both ends, as
//! two nodes pay it together on one machine), and sealing and opening 256 KiB frames. Run in
//! release, natively and under qemu: `cargo test --release --test link_speed -- --ignored`.
//! Prints `link-speed: kdf_ms=… handshake_ms=… seal_mib_s=… open_mib_s=…`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic in a test is a failed test

use std::time::{Duration, Instant};

use iron_carrier::net::link::{Handshake, LinkConfig, Mode, Transport};

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn handshake(cfg: &LinkConfig) -> (Transport, Transport) {
    let (initiator, first) = Handshake::initiate(cfg).unwrap();
    let (second, responder) = Handshake::respond(cfg).unwrap().accept(&first).unwrap();
    (initiator.finish(&second).unwrap(), responder)
}

#[test]
#[ignore = "a benchmark: run by make bench"]
fn link_costs() {
    // The daemon's allocator settings: 256 KiB buffers come from the heap, not fresh maps.
    iron_carrier::mem::tune();
    let kdf = median(
        (0..3)
            .map(|_| {
                let t = Instant::now();
                LinkConfig::new(
                    Mode::Passphrase,
                    Some("home"),
                    Some("correct horse battery"),
                )
                .unwrap();
                t.elapsed()
            })
            .collect(),
    );
    let cfg = LinkConfig::new(
        Mode::Passphrase,
        Some("home"),
        Some("correct horse battery"),
    )
    .unwrap();
    let hs = median(
        (0..21)
            .map(|_| {
                let t = Instant::now();
                handshake(&cfg);
                t.elapsed()
            })
            .collect(),
    );
    // 64 MiB through one direction, in the frames file data travels in. Each sealed frame
    // is dropped before the next, as `net` frees it once written, so the allocator reuses
    // its memory; opening is timed on frames sealed beforehand.
    let chunk = 256 * 1024;
    let frames = 256;
    let mut plain = (chunk as u32).to_be_bytes().to_vec();
    plain.resize(4 + chunk, 0x5a);
    let (mut tx, _) = handshake(&cfg);
    let t = Instant::now();
    let mut check = 0u8;
    for _ in 0..frames {
        let mut f = Vec::with_capacity(plain.len() + 16);
        tx.seal_into(&plain, &mut f, Instant::now()).unwrap();
        check ^= f[f.len() - 1];
    }
    let seal = t.elapsed();
    let (mut tx, mut rx) = handshake(&cfg);
    let sealed: Vec<Vec<u8>> = (0..frames)
        .map(|_| {
            let mut f = Vec::new();
            tx.seal_into(&plain, &mut f, Instant::now()).unwrap();
            f
        })
        .collect();
    let mut opened = Vec::new();
    let t = Instant::now();
    for f in &sealed {
        rx.open(f, &mut opened).unwrap();
    }
    let open = t.elapsed();
    assert_eq!(opened, plain[4..], "{check}");
    let mib = (chunk * frames) as f64 / (1024.0 * 1024.0);
    println!(
        "link-speed: kdf_ms={:.1} handshake_ms={:.2} seal_mib_s={:.0} open_mib_s={:.0}",
        ms(kdf),
        ms(hs),
        mib / seal.as_secs_f64(),
        mib / open.as_secs_f64()
    );
}
