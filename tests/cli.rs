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
    // The default log_path is under $HOME: a scratch one, so the check of its directory
    // does not depend on the machine's.
    let home = TestDir::new("defaults-home");
    let out = bin()
        .args(["check-config", "--config", &fixture("valid_minimal.toml")])
        .env("HOME", home.path())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    // The default port listens on every address; a node running on this machine may hold
    // it, and check-config says so (the settings are printed all the same). Nothing else
    // may be wrong.
    let port_taken = "iron-carrier: check-config: port: port 25230 on 0.0.0.0 is in use";
    if out.status.code() != Some(0) {
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert!(err.lines().all(|l| l.starts_with(port_taken)), "{err}");
    }
    let text = String::from_utf8_lossy(&out.stdout);
    for needle in [
        // Not set: this device's id is made at the first start, and said so.
        "# node_id: not set: ",
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

/// A config in `dir` for check-config: storage `photos` at `dir/photos` (created), listening
/// on 127.0.0.1:`port`, and `extra` top-level lines (e.g. a `log_path`).
fn check_config_file(dir: &TestDir, port: u16, extra: &str) -> std::path::PathBuf {
    dir.mkdir("photos");
    let log_path = if extra.contains("log_path") {
        ""
    } else {
        "log_path = \"ic.db\"\n"
    };
    dir.write(
        "c.toml",
        format!(
            "node_id = \"check\"\nport = {port}\nlisten_address = \"127.0.0.1\"\n\
             enable_service_discovery = false\n{log_path}{extra}\n[storages]\nphotos = \"photos\"\n"
        )
        .as_bytes(),
    )
}

fn check_config(config: &std::path::Path) -> (Option<i32>, String, String) {
    let out = bin()
        .args(["check-config", "--config"])
        .arg(config)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn check_config_passes_a_config_a_sync_would_accept() {
    let dir = TestDir::new("check-ok");
    dir.write("photos/.ignore", b"# private\n*.tmp\n\\!literal\n");
    // Missing directories above the database are created by a sync: not a problem, and the
    // check creates nothing.
    let cfg = check_config_file(&dir, common::free_port(), "log_path = \"state/db/ic.db\"");
    let (code, stdout, stderr) = check_config(&cfg);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(!stderr.contains("check-config:"), "{stderr}");
    assert!(stdout.contains("\"photos\" = "), "{stdout}");
    assert!(!dir.join("state").exists());
}

#[test]
fn check_config_refuses_a_negation_in_ignore_naming_storage_file_and_line() {
    let dir = TestDir::new("check-ignore");
    dir.write("photos/.ignore", b"# private\n*.tmp\n!keep.txt\n");
    let cfg = check_config_file(&dir, common::free_port(), "");
    let (code, stdout, stderr) = check_config(&cfg);
    assert_eq!(code, Some(2), "{stderr}");
    // The settings are still printed; the problem goes to stderr, one line.
    assert!(stdout.contains("\"photos\" = "), "{stdout}");
    let ignore = std::fs::canonicalize(dir.join("photos"))
        .unwrap()
        .join(".ignore");
    let want = format!(
        "iron-carrier: check-config: storages.photos: {}:3: invalid pattern \"!keep.txt\": negation",
        ignore.display()
    );
    assert!(stderr.starts_with(&want), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
}

#[test]
fn check_config_refuses_a_log_path_that_cannot_be_created() {
    let dir = TestDir::new("check-logpath");
    dir.write("plain", b"a file, not a directory\n");
    let cfg = check_config_file(
        &dir,
        common::free_port(),
        "log_path = \"plain/state/ic.db\"",
    );
    let (code, _, stderr) = check_config(&cfg);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.starts_with("iron-carrier: check-config: log_path: directory ")
            && stderr.contains("plain/state cannot be created: ")
            && stderr.contains("plain is not a directory"),
        "{stderr}"
    );
}

#[test]
fn check_config_refuses_a_log_path_on_a_read_only_file_system() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: mounting a read-only tmpfs needs root");
        return;
    }
    let dir = TestDir::new("check-ro");
    let ro = dir.mkdir("ro");
    let mount = common::mount::Mount::tmpfs(&ro, "1m");
    std::fs::write(ro.join("ic.db"), b"").unwrap();
    mount.remount("ro");
    // Root may write anywhere the mode bits say no, but not on a read-only mount.
    let cfg = check_config_file(&dir, common::free_port(), "log_path = \"ro/ic.db\"");
    let (code, _, stderr) = check_config(&cfg);
    drop(mount);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.starts_with("iron-carrier: check-config: log_path: directory ")
            && stderr.contains("/ro is not writable: Read-only file system"),
        "{stderr}"
    );
}

#[test]
fn check_config_refuses_a_port_in_use_naming_it() {
    let dir = TestDir::new("check-port");
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = held.local_addr().unwrap().port();
    let cfg = check_config_file(&dir, port, "");
    let (code, _, stderr) = check_config(&cfg);
    drop(held);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.starts_with(&format!(
            "iron-carrier: check-config: port: port {port} on 127.0.0.1 is in use (is a daemon \
             already running with this config?"
        )),
        "{stderr}"
    );
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
}

/// What an init script's `reload` does: check-config on the config of the running daemon.
/// Its port is taken by that daemon, which holds the database: not a problem.
#[test]
fn check_config_accepts_the_port_of_the_running_daemon_of_this_config() {
    use std::time::Duration;

    let dir = TestDir::new("check-running");
    let cfg = check_config_file(&dir, common::free_port(), "");
    let daemon = common::Daemon::start(&cfg);
    assert!(
        daemon.wait_for_log("started", Duration::from_secs(30)),
        "{}",
        daemon.log()
    );
    let (code, _, stderr) = check_config(&cfg);
    let (stopped, log) = daemon.stop();
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        stderr.contains("in use by the running node of this config"),
        "{stderr}"
    );
    assert_eq!(stopped, Some(0), "{log}");
}

/// The keys of a `const NAME: &[&str] = &[...]` array in src/config.rs.
fn config_keys(config_rs: &str, name: &str) -> Vec<String> {
    let decl = format!("const {name}: &[&str] = &[");
    let start = config_rs
        .find(&decl)
        .unwrap_or_else(|| panic!("`{decl}` not found in src/config.rs"))
        + decl.len();
    let end = start + config_rs[start..].find("];").unwrap();
    config_rs[start..end]
        .split('"')
        .skip(1)
        .step_by(2)
        .map(str::to_owned)
        .collect()
}

/// `--help` and the man page are enough to use the program: both name every config key (as
/// src/config.rs accepts them), every command and flag, the control socket's variable, the
/// reload signal and every exit code.
#[test]
fn help_and_man_page_name_every_config_key_and_command() {
    let root = env!("CARGO_MANIFEST_DIR");
    let config_rs = std::fs::read_to_string(format!("{root}/src/config.rs")).unwrap();
    let top = config_keys(&config_rs, "TOP_KEYS");
    let storage = config_keys(&config_rs, "STORAGE_KEYS");
    assert!(
        top.len() >= 15 && top.iter().any(|k| k == "control_socket"),
        "{top:?}"
    );
    assert!(storage.iter().any(|k| k == "path"), "{storage:?}");

    let out = run(&["--help"]);
    assert_eq!(out.status.code(), Some(0));
    let help = String::from_utf8(out.stdout).unwrap();
    // The man page's source, with roff's escapes for hyphens and word breaks undone.
    let man = std::fs::read_to_string(format!("{root}/doc/iron-carrier.1"))
        .unwrap()
        .replace("\\-", "-")
        .replace("\\%", "")
        .replace("\\&", "");

    let mut wanted: Vec<String> = top.iter().chain(&storage).cloned().collect();
    for w in [
        "status",
        "sync",
        "--json",
        "--wait",
        "--daemon",
        "--config",
        "--syslog",
        "check-config",
        "SIGHUP",
        "SIGTERM",
        "XDG_RUNTIME_DIR",
        "$HOME/.config/iron-carrier/config.toml",
    ] {
        wanted.push(w.to_owned());
    }
    for (name, text) in [("--help", &help), ("doc/iron-carrier.1", &man)] {
        let missing: Vec<&String> = wanted.iter().filter(|w| !text.contains(*w)).collect();
        assert!(missing.is_empty(), "{name} does not mention {missing:?}");
    }

    // Every exit code has its line: in --help under EXIT CODES, in the man page under
    // EXIT STATUS.
    let codes = &help[help.find("EXIT CODES:").expect("EXIT CODES in --help")..];
    let status = &man[man
        .find(".SH EXIT STATUS")
        .expect("EXIT STATUS in the man page")..];
    let status = &status[..status[1..].find(".SH ").map_or(status.len(), |i| i + 1)];
    for code in 0..=4 {
        assert!(
            codes.contains(&format!("\n    {code}   ")),
            "--help lacks exit code {code}: {codes}"
        );
        assert!(
            status.contains(&format!("\n.B {code}\n")),
            "the man page lacks exit code {code}: {status}"
        );
    }
}
