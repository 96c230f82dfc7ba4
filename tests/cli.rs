//! The real binary from the outside: help, version, check-config, exit codes, signals.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic in a test is a failed test

mod common;

use std::process::Output;

use common::{bin, TestDir};

fn run(args: &[&str]) -> Output {
    bin().args(args).output().expect("run iron-carrier")
}

fn fixture(name: &str) -> String {
    format!("{}/tests/data/config/{name}", env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn help_documents_usage_and_exit_codes() {
    let out = run(&["--help"]);
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "--daemon",
        "--config",
        "check-config",
        "EXIT CODES",
        "-vv",
        "-q",
    ] {
        assert!(text.contains(needle), "help lacks {needle}: {text}");
    }
}

#[test]
fn version_prints_the_package_version() {
    let out = run(&["--version"]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("iron-carrier {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn check_config_prints_effective_settings_with_defaults() {
    let out = run(&["check-config", "--config", &fixture("valid_minimal.toml")]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "node_id = ",
        "port = 25230",
        "peers = []",
        "enable_file_watcher = true",
        "delay_watcher_events = 4",
        "enable_service_discovery = true",
        "log_path = ",
        "encryption = true",
        "max_parallel_transfers = 4",
        "\"docs\" = { path = ",
    ] {
        assert!(text.contains(needle), "output lacks {needle:?}:\n{text}");
    }
}

#[test]
fn check_config_on_a_bad_config_exits_2_naming_key_and_line() {
    let out = run(&["check-config", "--config", &fixture("err_port_zero.toml")]);
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stdout.is_empty());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("err_port_zero.toml:2: key `port`"), "{err}");
    assert_eq!(err.lines().count(), 1, "one-line reason: {err}");
}

#[test]
fn bad_config_stops_a_run_before_anything_starts() {
    let out = run(&[
        "--config",
        &fixture("err_storage_not_a_dir.toml"),
        "--daemon",
    ]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("storages.docs"), "{err}");
    assert!(!err.contains("started"), "nothing may start: {err}");
}

#[test]
fn missing_config_file_and_bad_arguments_exit_2() {
    let out = run(&["check-config", "--config", "/nonexistent/iron-carrier.toml"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("does not exist"));
    for args in [&["--frobnicate"][..], &["sync-now"], &["--config"]] {
        let out = run(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(!out.stderr.is_empty());
    }
}

#[test]
fn default_config_path_is_under_home() {
    let home = TestDir::new("home");
    let out = bin()
        .arg("check-config")
        .env("HOME", home.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    let want = home.join(".config/iron-carrier/config.toml");
    assert!(err.contains(&want.display().to_string()), "{err}");
}

#[test]
fn daemon_runs_until_sigterm_then_stops_in_order_and_exits_0() {
    use std::io::{BufRead, BufReader};
    use std::time::{Duration, Instant};

    let dir = TestDir::new("daemon");
    dir.mkdir("docs");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let cfg = dir.write(
        "c.toml",
        format!(
            "node_id = \"d1\"\nport = {port}\nenable_service_discovery = false\nlog_path = \"ic.db\"\n[storages]\ndocs = \"docs\"\n"
        )
        .as_bytes(),
    );
    let mut child = bin()
        .args(["--daemon", "--config"])
        .arg(&cfg)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut seen = String::new();
    for line in lines.by_ref() {
        let line = line.unwrap();
        seen.push_str(&line);
        seen.push('\n');
        if line.contains("started") {
            break;
        }
        assert!(Instant::now() < deadline, "daemon did not start: {seen}");
    }
    assert!(seen.contains("started"), "{seen}");
    // Still running: a daemon does not exit on its own.
    assert!(child.try_wait().unwrap().is_none(), "{seen}");
    // SAFETY: plain kill(2) on our own child's pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0), "{seen}{}", rest.join("\n"));
    assert!(rest.iter().any(|l| l.contains("stopped")), "{rest:?}");
}
