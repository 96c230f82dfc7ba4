//! Delta throughput, for `make bench` (not a test of correctness: ignored by `cargo test`).
//! Reads the file named by `IC_DELTA_FILE` twice — a signature pass and a delta pass against
//! that signature, as a sender would for an unchanged file — and prints MiB/s for each and
//! for both together. Run in release: `cargo test --release --test delta_speed -- --ignored`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic in a test is a failed test

use std::io::Read;
use std::time::Instant;

use iron_carrier::delta::{block_size_for, DeltaEncoder, DeltaOp, SignatureBuilder};

fn read_chunks(path: &str, mut f: impl FnMut(&[u8])) -> u64 {
    let mut file = std::fs::File::open(path).expect("open the bench file");
    let mut buf = vec![0u8; 256 * 1024];
    let mut total = 0;
    loop {
        let n = file.read(&mut buf).expect("read the bench file");
        if n == 0 {
            return total;
        }
        total += n as u64;
        f(&buf[..n]);
    }
}

#[test]
#[ignore = "a benchmark: run by make bench"]
fn delta_throughput_on_an_unchanged_file() {
    let Ok(path) = std::env::var("IC_DELTA_FILE") else {
        eprintln!("IC_DELTA_FILE not set; nothing to measure");
        return;
    };
    let len = std::fs::metadata(&path).expect("stat").len();
    let t0 = Instant::now();
    let mut builder = SignatureBuilder::new(block_size_for(len));
    read_chunks(&path, |d| {
        assert!(builder.update(d));
    });
    let sig = builder.finish();
    let t1 = Instant::now();
    let blocks = sig.blocks.len();
    let mut enc = DeltaEncoder::new(sig, len);
    let mut ops = Vec::new();
    let mut literal = 0u64;
    let mut count = |ops: &mut Vec<DeltaOp>| {
        for op in ops.drain(..) {
            if let DeltaOp::Literal(b) = op {
                literal += b.len() as u64;
            }
        }
    };
    read_chunks(&path, |d| {
        enc.update(d, &mut ops);
        count(&mut ops);
    });
    enc.finish(&mut ops);
    count(&mut ops);
    let t2 = Instant::now();
    let mib = len as f64 / (1024.0 * 1024.0);
    let sig_s = (t1 - t0).as_secs_f64();
    let delta_s = (t2 - t1).as_secs_f64();
    println!(
        "delta-speed: {mib:.0} MiB, {blocks} blocks: signature {:.0} MiB/s, delta {:.0} MiB/s, both {:.0} MiB/s; {literal} literal bytes",
        mib / sig_s,
        mib / delta_s,
        mib / (sig_s + delta_s)
    );
    assert_eq!(literal, 0, "an unchanged file must be all copies");
}

#[test]
#[ignore = "a benchmark: run by make bench"]
fn delta_throughput_when_nothing_matches() {
    // The worst case for the sender: a base of the same size with entirely different
    // content, so the window slides one byte at a time over the whole file.
    let len: usize = std::env::var("IC_DELTA_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64)
        * 1024
        * 1024;
    let mut x: u64 = 0x1234_5678_9ABC_DEF1;
    let mut gen = |n: usize| -> Vec<u8> {
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    };
    let old = gen(len);
    let new = gen(len);
    let mut b = SignatureBuilder::new(block_size_for(len as u64));
    b.update(&old);
    let sig = b.finish();
    let t = Instant::now();
    let mut enc = DeltaEncoder::new(sig, len as u64);
    let mut ops = Vec::new();
    for chunk in new.chunks(256 * 1024) {
        enc.update(chunk, &mut ops);
        ops.clear();
    }
    enc.finish(&mut ops);
    let s = t.elapsed().as_secs_f64();
    println!(
        "delta-speed-nomatch: {} MiB, delta {:.0} MiB/s",
        len >> 20,
        (len >> 20) as f64 / s
    );
}
