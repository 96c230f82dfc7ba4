//! What a one-shot run shows a person, end to end with the real binary against a real
//! daemon: its progress on a terminal (a pseudo-terminal: live lines, redrawn in place and
//! erased before the summary), through a pipe (plain lines, not a single control character),
//! and its quiet default (no INFO lines unless `-v`; `-q` shows no progress; `-q -v` and
//! more than three v's are refused).

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic in a test is a failed test

mod common;

use common::*;
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Daemon B holding "photos" (`files` files, `total` bytes in all), and the config of A, a
/// one-shot node whose "photos" is empty, dialling B.
struct Setup {
    dir: TestDir,
    a_config: PathBuf,
    daemon: Daemon,
}

impl Setup {
    fn new(tag: &str, files: u64, total: u64) -> Setup {
        let dir = TestDir::new(tag);
        let group = format!("{tag}-{}", std::process::id());
        let b = NodeConfig::new("node-b")
            .group(&group)
            .storage("photos", &dir.mkdir("b"));
        for k in 0..files {
            write_random(
                &dir.join(&format!("b/img-{k:02}.jpg")),
                total / files,
                k + 1,
            );
        }
        let a = NodeConfig::new("node-a")
            .group(&group)
            .storage("photos", &dir.mkdir("a"))
            .peer(b.port);
        let daemon = Daemon::start(&b.write(dir.path()));
        let a_config = a.write(dir.path());
        Setup {
            dir,
            a_config,
            daemon,
        }
    }

    /// A one-shot run of A with `args`, its output piped.
    fn run(&self, args: &[&str]) -> Output {
        let child = bin()
            .args(args)
            .arg("--config")
            .arg(&self.a_config)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn one-shot");
        output_within(child, PATIENCE * 3)
    }

    fn assert_arrived(&self) {
        assert_eq!(
            manifest(&self.dir.join("a")),
            manifest(&self.dir.join("b")),
            "daemon log:\n{}",
            self.daemon.log()
        );
    }
}

fn set_cloexec(fd: &OwnedFd) {
    // SAFETY: fcntl on a descriptor we own.
    unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC) };
}

/// Runs the binary with `args` and its stderr on a pseudo-terminal (160 × 40); returns its
/// output (stdout piped) and every byte the terminal received.
fn run_on_pty(config: &Path, args: &[&str]) -> (Output, Vec<u8>) {
    let (mut master, mut slave) = (-1, -1);
    let size = libc::winsize {
        ws_row: 40,
        ws_col: 160,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: openpty writes two descriptors into the ints we pass; the size is read only.
    let r = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            &size,
        )
    };
    assert_eq!(r, 0, "openpty: {}", std::io::Error::last_os_error());
    // SAFETY: both descriptors were just opened for us, and are owned once each.
    let (master, slave) = unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) };
    // Processes other tests start meanwhile must not keep the terminal open.
    set_cloexec(&master);
    set_cloexec(&slave);
    let child = {
        let mut cmd = bin();
        cmd.args(args)
            .arg("--config")
            .arg(config)
            .env("TERM", "xterm")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(slave));
        cmd.spawn().expect("spawn one-shot on a pty")
        // The command, and with it our copy of the terminal's slave side, is dropped here.
    };
    // Read the master until the slave is closed (EIO), or, should a process started by
    // another test in the instant before close-on-exec was set still hold it, until the
    // child is gone and nothing more comes.
    let exited = Arc::new(AtomicBool::new(false));
    let done = exited.clone();
    let reader = std::thread::spawn(move || {
        let mut f = std::fs::File::from(master);
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            let mut pfd = libc::pollfd {
                fd: f.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one pollfd, valid for the call.
            let n = unsafe { libc::poll(&mut pfd, 1, 200) };
            if n == 0 {
                if done.load(Ordering::SeqCst) {
                    break;
                }
                continue;
            }
            match f.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(k) => got.extend_from_slice(&buf[..k]),
            }
        }
        got
    });
    let out = output_within(child, PATIENCE * 3);
    exited.store(true, Ordering::SeqCst);
    let tty = reader.join().unwrap();
    (out, tty)
}

/// The pieces of terminal output between line ends and control sequences' starts.
fn segments(bytes: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(bytes)
        .split(['\r', '\n', '\x1b'])
        .map(str::to_owned)
        .collect()
}

/// A progress line of "photos": its name, a count of files and a percentage.
fn is_progress_line(s: &str) -> bool {
    s.contains("photos: ") && s.contains(" files, ") && s.contains("%)")
}

#[test]
fn a_terminal_shows_live_progress_lines_and_erases_them_before_the_summary() {
    let s = Setup::new("progress-tty", 40, 64 << 20);
    let (out, tty) = run_on_pty(&s.a_config, &[]);
    let shown = String::from_utf8_lossy(&tty).into_owned();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}\nterminal:\n{shown:?}\ndaemon log:\n{}",
        show(&out),
        s.daemon.log()
    );
    s.assert_arrived();
    assert!(
        segments(&tty).iter().any(|l| is_progress_line(l)),
        "no progress line on the terminal: {shown:?}"
    );
    // Drawn in place and erased: the live block's clear-line sequence, and the cursor moved
    // back to the start of the line.
    assert!(shown.contains("\r\x1b[K"), "not drawn live: {shown:?}");
    // Nothing on the terminal after the erase but log lines (none at this level).
    let last_erase = shown.rfind("\x1b[K").unwrap();
    assert!(
        shown[last_erase + 3..].trim().is_empty(),
        "the live lines were not erased last: {shown:?}"
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("photos: synchronized with node-b"),
        "summary: {stdout}"
    );
    // No progress on stdout: the summary alone.
    assert!(!stdout.contains("%)"), "{stdout}");
}

#[test]
fn a_pipe_gets_plain_progress_lines_without_a_control_character() {
    let s = Setup::new("progress-pipe", 40, 64 << 20);
    let out = s.run(&[]);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}\ndaemon log:\n{}",
        show(&out),
        s.daemon.log()
    );
    s.assert_arrived();
    let control: Vec<u8> = out
        .stderr
        .iter()
        .copied()
        .filter(|&b| (b < 0x20 && b != b'\n') || b == 0x7f)
        .collect();
    assert!(
        control.is_empty(),
        "control bytes {control:?} in {stderr:?}"
    );
    assert!(
        stderr
            .lines()
            .any(|l| l.starts_with("photos: ") && is_progress_line(l)),
        "no plain progress line: {stderr}"
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("photos: synchronized with node-b") && stdout.contains("network: sent"),
        "summary: {stdout}"
    );
}

#[test]
fn a_one_shot_is_quiet_by_default_says_more_with_v_and_refuses_q_with_v() {
    let s = Setup::new("progress-quiet", 3, 3 << 20);
    // The log line format: "<time> INFO  [thread] target: message".
    let out = s.run(&[]);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    s.assert_arrived();
    assert!(
        !stderr.contains(" INFO "),
        "INFO lines by default: {stderr}"
    );
    assert!(!stderr.contains(" DEBUG "), "{stderr}");
    // Even a session too quick to be seen running is shown once, at its end.
    assert!(
        stderr.lines().any(is_progress_line),
        "no progress line: {stderr}"
    );

    let out = s.run(&["-v"]);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    assert!(stderr.contains(" INFO "), "no INFO lines with -v: {stderr}");
    assert!(
        !stderr.contains(" DEBUG "),
        "DEBUG lines with one -v: {stderr}"
    );

    let out = s.run(&["-vv"]);
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(" DEBUG "),
        "{}",
        show(&out)
    );

    // -q: warnings only, and no progress.
    write_random(&s.dir.join("b/late.jpg"), 2 << 20, 99);
    let out = s.run(&["-q"]);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    s.assert_arrived();
    assert!(
        !stderr.contains(" INFO ") && !stderr.contains(" files, "),
        "-q: {stderr}"
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("received 1 file(s)"),
        "{}",
        show(&out)
    );

    for (args, why) in [
        (&["-q", "-v"][..], "-q and -v"),
        (&["-vvv", "--quiet"], "-q and -v"),
        (&["-vvvv"], "at most 3"),
        (&["-v", "-v", "-v", "-v"], "at most 3"),
    ] {
        let out = s.run(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", show(&out));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(why), "{args:?}: {stderr}");
        assert!(out.stdout.is_empty(), "{args:?}: {}", show(&out));
    }
}
