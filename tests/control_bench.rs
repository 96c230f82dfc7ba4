//! What the control socket costs, for `make bench` (ignored by `cargo test`), with the
//! release binary over real sockets:
//!
//! - `status` while a 10,000-file session runs: two daemons, B holding 10,000 files of 1 KiB
//!   in 100 directories, A empty; A is asked for `status --json` over its socket again and
//!   again while its status shows the session's progress. Each answer is timed from the
//!   connect to the daemon's close (the daemon's part), and every tenth also as a whole
//!   `iron-carrier status --json` process (what a person waits for, start-up included).
//! - the memory it adds: a lone daemon, idle, its `VmHWM` reset to its RSS
//!   (`/proc/PID/clear_refs`), then 1,000 status requests one after the other, 16 clients
//!   that never send a request and 16 that never read their answers, all at once; the peak
//!   above the RSS before.
//!
//! Prints one line: `control: status_p50_ms=… status_p99_ms=… status_max_ms=… samples=N
//! cli_p50_ms=… cli_max_ms=… files=N rss_before_kib=… peak_kib=… added_kib=…`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic in a test is a failed test

mod common;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use common::{bin, status_kib, wait_until, Daemon, NodeConfig, TestDir, PATIENCE};

const FILES: usize = 10_000;

/// One status over the socket: the answer and how long it took, connect to close.
fn ask(sock: &Path) -> (String, Duration) {
    let t = Instant::now();
    let mut s = UnixStream::connect(sock).unwrap();
    s.write_all(b"iron-carrier-control/1 status-json\n")
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    (out, t.elapsed())
}

fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1000.0)
}

fn percentile(sorted: &[Duration], p: usize) -> Duration {
    sorted[(sorted.len() * p / 100).min(sorted.len() - 1)]
}

#[test]
#[ignore = "a measurement for make bench"]
fn control_socket_costs() {
    let dir = TestDir::new("ctl-bench");
    let (a_root, b_root) = (dir.mkdir("a"), dir.mkdir("b"));
    for k in 0..FILES {
        let d = b_root.join(format!("d{:03}", k % 100));
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(
            d.join(format!("f{k:05}.txt")),
            vec![b'a' + (k % 26) as u8; 1024],
        )
        .unwrap();
    }
    let group = format!("ctl-bench-{}", std::process::id());
    let a_sock = dir.join("a.sock");
    let b = NodeConfig::new("bench-b")
        .group(&group)
        .storage("docs", &b_root);
    let a = NodeConfig::new("bench-a")
        .group(&group)
        .storage("docs", &a_root)
        .peer(b.port)
        .extra(&format!("control_socket = \"{}\"", a_sock.display()));
    let b_daemon = Daemon::start(&b.write(dir.path()));
    let a_cfg = a.write(dir.path());
    let a_daemon = Daemon::start(&a_cfg);

    let mut during = Vec::new();
    let mut cli = Vec::new();
    let over = wait_until(PATIENCE * 5, || {
        let (answer, took) = ask(&a_sock);
        let running = answer.contains("\"progress\":{");
        if running {
            during.push(took);
            if during.len() % 10 == 1 {
                let t = Instant::now();
                let out = bin()
                    .args(["status", "--json", "--config"])
                    .arg(&a_cfg)
                    .output()
                    .unwrap();
                assert!(out.status.success());
                cli.push(t.elapsed());
            }
        }
        !running && answer.contains(&format!("\"files\":{FILES}"))
    });
    assert!(over, "the session never completed:\n{}", a_daemon.log());
    assert!(
        during.len() >= 5,
        "only {} status answers during the session: too fast to measure",
        during.len()
    );
    during.sort();
    cli.sort();
    drop((a_daemon, b_daemon));

    // The memory: a lone daemon, its peak while serving.
    let lone_sock = dir.join("lone.sock");
    let lone = NodeConfig::new("bench-lone")
        .storage("docs", &dir.mkdir("lone"))
        .extra(&format!("control_socket = \"{}\"", lone_sock.display()))
        .write(dir.path());
    let d = Daemon::start(&lone);
    let pid = d.pid();
    ask(&lone_sock);
    std::thread::sleep(Duration::from_millis(500));
    let before = status_kib(pid, "VmRSS");
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").unwrap();
    let silent: Vec<UnixStream> = (0..16)
        .map(|_| UnixStream::connect(&lone_sock).unwrap())
        .collect();
    let deaf: Vec<UnixStream> = (0..16)
        .map(|_| {
            let mut s = UnixStream::connect(&lone_sock).unwrap();
            s.write_all(b"iron-carrier-control/1 status\n").unwrap();
            s
        })
        .collect();
    for _ in 0..1000 {
        ask(&lone_sock);
    }
    drop((silent, deaf));
    std::thread::sleep(Duration::from_millis(500));
    let peak = status_kib(pid, "VmHWM");
    drop(d);

    println!(
        "control: status_p50_ms={} status_p99_ms={} status_max_ms={} samples={} cli_p50_ms={} \
         cli_max_ms={} files={FILES} rss_before_kib={before} peak_kib={peak} added_kib={}",
        ms(percentile(&during, 50)),
        ms(percentile(&during, 99)),
        ms(*during.last().unwrap()),
        during.len(),
        ms(percentile(&cli, 50)),
        ms(*cli.last().unwrap()),
        peak.saturating_sub(before)
    );
}
