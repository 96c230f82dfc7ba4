//! File times outside a 32-bit `time_t` (after 2038, before 1970) synchronize to the
//! nanosecond, both ways, and a second sync finds nothing to do. Run under qemu by
//! `make cross-test` on every 32-bit target, where the `libc` crate's `time_t` is 32 bits.
//!
//! The test sets and reads the times with the host's `touch` and `stat` (coreutils, 64-bit),
//! never through this crate or `std`, so a 32-bit cut in the binary under test cannot hide
//! behind the same cut in the test.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic in a test is a failed test

mod common;

use std::path::Path;
use std::process::Command;

use common::*;

/// (file, mtime as `seconds.nanoseconds`). ext4 keeps 1901-12-14 .. 2446, tmpfs everything;
/// Iron Carrier keeps signed 64-bit nanoseconds, 1677-09-21 .. 2262-04-11 (README, limits).
const FAR_TIMES: [(&str, &str); 5] = [
    ("y2039.txt", "2177452800.000000001"), // 2039-01-01, 1 ns past the second
    ("y2100.txt", "4102444800.123456789"), // 2100-01-01
    ("y2200.txt", "7258118400.5"),         // 2200-01-01, past 32 bits even unsigned
    ("y1960.txt", "-315619200.25"),        // 1960-01-01
    ("before_epoch.txt", "-0.999999999"),  // 1969-12-31T23:59:59.000000001
];

fn touch(p: &Path, stamp: &str) {
    let st = Command::new("touch")
        .arg("-m")
        .arg("-d")
        .arg(format!("@{stamp}"))
        .arg(p)
        .status()
        .expect("run touch");
    assert!(st.success(), "touch {} @{stamp}", p.display());
}

/// The mtime as (seconds, nanoseconds), read by the host's `stat`.
fn mtime(p: &Path) -> (i64, i64) {
    let out = Command::new("stat")
        .args(["-c", "%.9Y"])
        .arg(p)
        .output()
        .expect("run stat");
    assert!(out.status.success(), "stat {}: {}", p.display(), show(&out));
    parse(String::from_utf8_lossy(&out.stdout).trim())
}

/// "-0.5" → (-1, 500000000): the instant, as a `timespec` holds it.
fn parse(stamp: &str) -> (i64, i64) {
    let (int, frac) = stamp.split_once('.').unwrap_or((stamp, "0"));
    let neg = int.starts_with('-');
    let secs: i64 = int.parse().expect("seconds");
    let nsec: i64 = format!("{frac:0<9}")[..9].parse().expect("nanoseconds");
    let total = i128::from(secs) * 1_000_000_000 + if neg { -1 } else { 1 } * i128::from(nsec);
    (
        total.div_euclid(1_000_000_000) as i64,
        total.rem_euclid(1_000_000_000) as i64,
    )
}

#[test]
fn stamp_parsing_is_exact() {
    assert_eq!(parse("-0.999999999"), (-1, 1));
    assert_eq!(parse("-315619200.25"), (-315_619_201, 750_000_000));
    assert_eq!(parse("4102444800.123456789"), (4_102_444_800, 123_456_789));
    assert_eq!(parse("7"), (7, 0));
}

#[test]
fn mtimes_beyond_32_bits_synchronize_exactly_both_ways() {
    let dir = TestDir::new("time-range");
    let (a, b) = pair_configs(&dir, "time-range");
    let ca = a.write(dir.path());
    let cb = b.write(dir.path());
    let (ra, rb) = (dir.join("a"), dir.join("b"));

    // Four files go from a to b, one from b to a, and one the two have with different
    // contents, dated 2100 on b and 2039 on a: the later one (b's) wins on both.
    for (name, stamp) in FAR_TIMES.iter().take(4) {
        let p = dir.write(&format!("a/{name}"), format!("a: {name}\n").as_bytes());
        touch(&p, stamp);
    }
    let (name, stamp) = FAR_TIMES[4];
    touch(
        &dir.write(&format!("b/{name}"), b"b: before the epoch\n"),
        stamp,
    );
    touch(&dir.write("a/both.txt", b"a's, dated 2039\n"), "2177452800");
    touch(
        &dir.write("b/both.txt", b"b's, dated 2100\n"),
        "4102444800.5",
    );
    // The host itself must keep these times, or the test proves nothing.
    for (name, stamp) in FAR_TIMES.iter().take(4) {
        assert_eq!(
            mtime(&ra.join(name)),
            parse(stamp),
            "the host's own file system"
        );
    }

    let daemon = Daemon::start(&cb);
    let out = oneshot(&ca);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}\n{}",
        show(&out),
        daemon.log()
    );

    for (name, stamp) in FAR_TIMES {
        for root in [&ra, &rb] {
            let p = root.join(name);
            assert!(p.is_file(), "{} missing\n{}", p.display(), show(&out));
            assert_eq!(mtime(&p), parse(stamp), "mtime of {}", p.display());
        }
    }
    for root in [&ra, &rb] {
        let p = root.join("both.txt");
        assert_eq!(std::fs::read(&p).unwrap(), b"b's, dated 2100\n");
        assert_eq!(mtime(&p), (4_102_444_800, 500_000_000), "{}", p.display());
    }

    // Nothing left to do: a time read back wrongly would look like an edit and travel again.
    let again = oneshot(&ca);
    assert_eq!(again.status.code(), Some(0), "{}", show(&again));
    let text = String::from_utf8_lossy(&again.stdout);
    assert!(
        text.contains("received 0 file(s)") && text.contains("sent 0 file(s)"),
        "a second sync moved files:\n{}",
        show(&again)
    );
    let (code, log) = daemon.stop();
    assert_eq!(code, Some(0), "{log}");
}
