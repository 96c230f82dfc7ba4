//! SIGHUP on a daemon: a valid new config restarts it in place (same PID) with the new
//! settings; an invalid one is reported and the daemon keeps running as it was. And
//! `--syslog` sends the log to the local syslog socket.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic in a test is a failed test

mod common;

use common::*;

fn listening(port: u16) -> bool {
    std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
}

#[test]
fn sighup_applies_a_valid_config_in_place_and_ignores_an_invalid_one() {
    let dir = TestDir::new("reload");
    dir.mkdir("docs");
    let old_port = free_port();
    let new_port = free_port();
    let config = |port: u16| {
        format!(
            "node_id = \"r1\"\nport = {port}\nlisten_address = \"127.0.0.1\"\n\
             enable_service_discovery = false\nencryption = false\nlog_path = \"ic.db\"\n\
             [storages]\ndocs = \"docs\"\n"
        )
    };
    let path = dir.write("c.toml", config(old_port).as_bytes());
    let mut d = Daemon::start(&path);
    let pid = d.pid();
    assert!(listening(old_port));

    // A valid change: the same process comes back listening on the new port.
    dir.write("c.toml", config(new_port).as_bytes());
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(pid, libc::SIGHUP) };
    assert!(
        wait_until(PATIENCE, || listening(new_port)),
        "not listening on the new port after SIGHUP:\n{}",
        d.log()
    );
    assert!(d.is_running(), "{}", d.log());
    assert!(!listening(old_port), "still listening on the old port");
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap();
    assert_eq!(
        comm.trim(),
        "iron-carrier",
        "the process keeps its name after a reload"
    );
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    assert!(
        String::from_utf8_lossy(&cmdline).contains("--daemon"),
        "PID {pid} is no longer the daemon"
    );

    // An invalid change: reported, and nothing else happens.
    dir.write("c.toml", b"port = 0\n[storages]\ndocs = \"docs\"\n");
    let errors_before = d.count_log("not reloading");
    // SAFETY: as above.
    unsafe { libc::kill(pid, libc::SIGHUP) };
    assert!(
        wait_until(PATIENCE, || d.count_log("not reloading") > errors_before),
        "{}",
        d.log()
    );
    assert!(
        d.log().contains("key `port`"),
        "the reason is logged:\n{}",
        d.log()
    );
    assert!(d.is_running());
    assert!(listening(new_port));
    let (code, log) = d.stop();
    assert_eq!(code, Some(0), "{log}");
}

#[test]
fn syslog_flag_sends_lines_to_dev_log() {
    // Our own socket plays syslog: in a private mount namespace it is bind-mounted over
    // /dev/log (on a tmpfs /dev, so the host's /dev is untouched) and the daemon runs there.
    if unsafe { libc::geteuid() } != 0
        || std::process::Command::new("unshare")
            .arg("--version")
            .output()
            .is_err()
    {
        eprintln!("skipped: needs root and unshare(1)");
        return;
    }
    let dir = TestDir::new("syslog");
    dir.mkdir("docs");
    let sock_path = dir.join("log");
    let sock = std::os::unix::net::UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(PATIENCE)).unwrap();
    let cfg = dir.write(
        "c.toml",
        format!(
            "node_id = \"s1\"\nport = {}\nlisten_address = \"127.0.0.1\"\n\
             enable_service_discovery = false\nencryption = false\nlog_path = \"ic.db\"\n\
             [storages]\ndocs = \"docs\"\n",
            free_port()
        )
        .as_bytes(),
    );
    let script = format!(
        "mount -t tmpfs tmpfs /dev && touch /dev/log && mount --bind {sock} /dev/log && \
         exec {bin} --daemon --syslog --config {cfg}",
        sock = sock_path.display(),
        bin = env!("CARGO_BIN_EXE_iron-carrier"),
        cfg = cfg.display()
    );
    let mut child = std::process::Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", &script])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut got = String::new();
    let mut buf = [0u8; 4096];
    while !got.contains("started (daemon)") {
        match sock.recv(&mut buf) {
            Ok(n) => {
                got.push_str(&String::from_utf8_lossy(&buf[..n]));
                got.push('\n');
            }
            Err(e) => {
                let _ = child.kill();
                panic!("no syslog line ({e}); got so far: {got:?}");
            }
        }
    }
    // SAFETY: kill(2) on our own child (exec keeps the PID through unshare and sh).
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let out = child.wait_with_output().unwrap();
    assert!(
        got.contains("<30>iron-carrier["),
        "priority daemon.info: {got:?}"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("started"),
        "with --syslog, log lines do not go to stderr: {stderr}"
    );
}
