//! The packaging around the binary. `buildroot/package/iron-carrier/S60iron-carrier` runs for
//! real, as an init system would: as root, through the system's `start-stop-daemon` (Debian's,
//! and BusyBox's when `busybox` is installed), against the binary under test, with a defaults
//! file that points config, pidfile and storage into a scratch directory. Start, status, reload
//! (same pid; a changed config applied; a bad one refused), stop, a refused start, and the
//! daemon's syslog lines (in a private mount namespace whose `/dev/log` is the test's socket).
//! Also: OpenWrt's procd script sourced with procd's functions stubbed (what it asks procd
//! for, and that it refuses a bad config), `shellcheck` on both init scripts, the packages'
//! default configs through `check-config`, the mechanical rules of Buildroot's
//! `check-package` on the external tree, one version in every package, and
//! `cross/package-dry-run.sh` (both packages' install steps) on the binary under test.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic in a test is a failed test

mod common;

use std::collections::BTreeSet;
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{free_port, show, wait_until, TestDir, PATIENCE};

const SCRIPT: &str = "buildroot/package/iron-carrier/S60iron-carrier";
const PROCD_SCRIPT: &str = "openwrt/iron-carrier/files/iron-carrier.init";
/// Where an init system finds its programs; the tests' own PATH is not used.
const SYSTEM_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

fn repo(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_iron-carrier"))
}

/// The binary under test as a command, through `IC_TEST_RUNNER` (e.g. qemu) when that is set.
fn bin_command() -> Command {
    let runner = std::env::var("IC_TEST_RUNNER").unwrap_or_default();
    let mut words = runner.split_whitespace();
    let mut c = match words.next() {
        Some(first) => {
            let mut c = Command::new(first);
            c.args(words).arg(bin());
            c
        }
        None => Command::new(bin()),
    };
    c.env_remove("RUST_LOG");
    c
}

/// The first `name` in the system's program directories.
fn find_program(name: &str) -> Option<PathBuf> {
    SYSTEM_PATH
        .split(':')
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
}

fn is_root() -> bool {
    // SAFETY: geteuid(2) has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

fn busybox_applets(busybox: &Path) -> BTreeSet<String> {
    Command::new(busybox)
        .arg("--list")
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

/// Which shell and `start-stop-daemon` run the script.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Flavor {
    /// `/bin/sh` (dash on Debian) and dpkg's `start-stop-daemon`.
    Debian,
    /// BusyBox for everything (`sh`, `start-stop-daemon`, `cat`, `sleep`…), as on a Buildroot
    /// image: the script runs with a PATH holding only BusyBox applets.
    BusyBox,
}

/// Why the init script cannot run here with `flavor`, if it cannot.
fn skip_reason(flavor: Flavor) -> Option<String> {
    if !is_root() {
        return Some("needs root, like an init script".to_owned());
    }
    if std::env::var_os("IC_TEST_RUNNER").is_some_and(|r| !r.is_empty()) {
        return Some("IC_TEST_RUNNER is set: the script cannot exec the binary itself".to_owned());
    }
    match flavor {
        Flavor::Debian => find_program("start-stop-daemon")
            .is_none()
            .then(|| "start-stop-daemon is not installed (Debian: dpkg)".to_owned()),
        Flavor::BusyBox => {
            let Some(busybox) = find_program("busybox") else {
                return Some("busybox is not installed (apt-get install busybox)".to_owned());
            };
            let applets = busybox_applets(&busybox);
            [
                "sh",
                "start-stop-daemon",
                "cat",
                "sleep",
                "mkdir",
                "rm",
                "logger",
            ]
            .iter()
            .find(|a| !applets.contains(**a))
            .map(|a| format!("this busybox has no `{a}` applet"))
        }
    }
}

/// Prints why `test` did not run, and tells the caller to return.
fn skipped(test: &str, flavor: Flavor) -> bool {
    match skip_reason(flavor) {
        Some(reason) => {
            eprintln!("skipped: {test}: {reason}");
            true
        }
        None => false,
    }
}

// ---------------------------------------------------------------------------------------
// The process under the script

/// The state letter of `/proc/PID/stat` ("R", "S", "Z"…), if the process exists.
fn proc_state(pid: i32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "PID (comm) STATE …": comm may hold spaces and parentheses, so look after the last ')'.
    stat.rsplit_once(')')?.1.trim_start().chars().next()
}

/// Alive: the process exists and has not exited. A zombie has: its parent (here, often an
/// init that does not reap orphans) just has not collected it yet.
fn alive(pid: i32) -> bool {
    matches!(proc_state(pid), Some(s) if s != 'Z' && s != 'X')
}

fn exe(pid: i32) -> Option<PathBuf> {
    std::fs::read_link(format!("/proc/{pid}/exe")).ok()
}

/// The thread ids of `pid`. A restart in place (exec) replaces all of them but the first.
fn threads(pid: i32) -> BTreeSet<u32> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|dir| {
            dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

fn accepts(port: u16) -> bool {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    TcpStream::connect_timeout(&addr, Duration::from_secs(2)).is_ok()
}

/// Live processes whose command line mentions `needle` (the test's own config path).
fn processes_mentioning(needle: &Path) -> Vec<i32> {
    let needle = needle.as_os_str().as_encoded_bytes();
    let Ok(proc_dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    proc_dir
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| alive(pid))
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| c.windows(needle.len()).any(|w| w == needle))
        })
        .collect()
}

// ---------------------------------------------------------------------------------------
// A scratch installation of the script

/// The init script with its defaults file, config, pidfile and storage in a `TestDir`.
struct Service {
    dir: TestDir,
    flavor: Flavor,
    script: PathBuf,
    defaults: PathBuf,
    config: PathBuf,
    pidfile: PathBuf,
    storage: PathBuf,
    /// BusyBox flavor: a directory of applet links, the script's whole PATH.
    path: String,
}

impl Service {
    fn new(tag: &str, flavor: Flavor, port: u16) -> Service {
        let dir = TestDir::new(tag);
        let script = dir.join("S60iron-carrier");
        std::fs::copy(repo(SCRIPT), &script).expect("copy the init script");
        let path = match flavor {
            Flavor::Debian => SYSTEM_PATH.to_owned(),
            Flavor::BusyBox => {
                let busybox = find_program("busybox").expect("busybox");
                let applets = dir.mkdir("busybox-bin");
                for applet in busybox_applets(&busybox) {
                    let _ = std::os::unix::fs::symlink(&busybox, applets.join(applet));
                }
                applets.display().to_string()
            }
        };
        let svc = Service {
            config: dir.join("config.toml"),
            pidfile: dir.join("run/iron-carrier.pid"),
            defaults: dir.join("default-iron-carrier"),
            // Not created here: the script makes it (IRON_CARRIER_DIRS) before check-config.
            storage: dir.join("storage/docs"),
            script,
            flavor,
            path,
            dir,
        };
        std::fs::create_dir_all(svc.pidfile.parent().unwrap()).unwrap();
        svc.write_config(port);
        let defaults = format!(
            "# written by tests/init_script.rs\n\
             IRON_CARRIER_BIN=\"{bin}\"\n\
             CONFIG=\"{config}\"\n\
             PIDFILE=\"{pidfile}\"\n\
             IRON_CARRIER_DIRS=\"{storage}\"\n\
             IRON_CARRIER_ARGS=\"-v\"\n\
             STOP_TIMEOUT={timeout}\n",
            bin = bin().display(),
            config = svc.config.display(),
            pidfile = svc.pidfile.display(),
            storage = svc.storage.display(),
            timeout = PATIENCE.as_secs(),
        );
        std::fs::write(&svc.defaults, defaults).unwrap();
        svc
    }

    /// A valid config listening on 127.0.0.1:`port`, in a group of its own.
    fn write_config(&self, port: u16) {
        let text = format!(
            "node_id = \"init-script\"\ngroup = \"init-{pid}\"\nport = {port}\n\
             listen_address = \"127.0.0.1\"\nenable_service_discovery = false\n\
             encryption = false\nlog_path = \"{db}\"\n[storages]\ndocs = \"{storage}\"\n",
            pid = std::process::id(),
            db = self.dir.join("ic.db").display(),
            storage = self.storage.display(),
        );
        std::fs::write(&self.config, text).unwrap();
    }

    /// A config check-config rejects: port 0.
    fn write_invalid_config(&self) {
        let text = format!(
            "port = 0\nlisten_address = \"127.0.0.1\"\n[storages]\ndocs = \"{}\"\n",
            self.storage.display()
        );
        std::fs::write(&self.config, text).unwrap();
    }

    /// Runs the script with `action`, in an init-like environment: only PATH and the
    /// defaults file's location.
    fn command(&self, action: &str) -> Command {
        let shell = match self.flavor {
            Flavor::Debian => PathBuf::from("/bin/sh"),
            Flavor::BusyBox => Path::new(&self.path).join("sh"),
        };
        let mut c = Command::new(shell);
        c.arg(&self.script)
            .arg(action)
            .env_clear()
            .env("PATH", &self.path)
            .env("DEFAULT_FILE", &self.defaults)
            .current_dir("/");
        c
    }

    fn run(&self, action: &str) -> Output {
        self.command(action).output().expect("run the init script")
    }

    /// The pid the pidfile holds.
    fn pid(&self) -> Option<i32> {
        std::fs::read_to_string(&self.pidfile)
            .ok()?
            .trim()
            .parse()
            .ok()
    }
}

impl Drop for Service {
    /// Whatever happened, no daemon of this test outlives it.
    fn drop(&mut self) {
        for pid in processes_mentioning(&self.config) {
            // SAFETY: kill(2) on a process started for this test (its argv holds our config).
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Asserts the script's exit code and that its output holds `line`.
fn expect(out: &Output, code: i32, line: &str) {
    assert_eq!(out.status.code(), Some(code), "{}", show(out));
    assert!(stdout(out).contains(line), "wanted {line:?}: {}", show(out));
}

/// Waits until `pid` has been replaced in place by an exec (every thread but the first is
/// new) and listens on `port` again.
fn wait_for_restart_in_place(pid: i32, before: &BTreeSet<u32>, port: u16) -> bool {
    let old: BTreeSet<u32> = before
        .iter()
        .copied()
        .filter(|&t| t != pid as u32)
        .collect();
    wait_until(PATIENCE, || {
        threads(pid).is_disjoint(&old) && alive(pid) && accepts(port)
    })
}

/// Fails with `what` if `pid` was restarted in place since its threads were `before`: an exec
/// replaces every thread but the first. Threads may have been added since: the daemon listens
/// (and logs so) before its last thread, sync, is spawned, and under load `before` can
/// predate it.
fn assert_not_restarted(pid: i32, before: &BTreeSet<u32>, what: &str) {
    assert!(
        before.len() > 1,
        "only the main thread of {pid}: {before:?}"
    );
    let after = threads(pid);
    assert!(
        before.is_subset(&after),
        "{what}: threads {before:?} → {after:?}"
    );
}

/// start → status → reload (same config, then a new port, then a bad config) → stop, with
/// every step's effect checked on the real process.
fn lifecycle(flavor: Flavor) {
    let port = free_port();
    let svc = Service::new("init-life", flavor, port);

    // Nothing yet; a pidfile left by a crash (a pid that has exited) is reported as stale.
    expect(&svc.run("status"), 3, "is not running");
    let mut gone = Command::new("true").spawn().unwrap();
    gone.wait().unwrap();
    std::fs::write(&svc.pidfile, format!("{}\n", gone.id())).unwrap();
    expect(&svc.run("status"), 1, "stale pidfile");
    expect(&svc.run("reload"), 7, "not running");

    // start: OK, a pidfile naming our binary, listening.
    let out = svc.run("start");
    expect(&out, 0, "Starting iron-carrier: OK");
    assert!(svc.storage.is_dir(), "IRON_CARRIER_DIRS was created");
    let pid = svc.pid().expect("pidfile after start");
    assert!(alive(pid), "pid {pid} from the pidfile is not running");
    assert_eq!(
        exe(pid).map(|p| p.canonicalize().unwrap_or(p)),
        Some(bin().canonicalize().unwrap()),
        "pid {pid} is not the binary under test"
    );
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
    for arg in ["--daemon", "--syslog", "--config", "-v"] {
        assert!(cmdline.contains(arg), "{arg} not in {cmdline:?}");
    }
    assert!(
        wait_until(PATIENCE, || accepts(port)),
        "the daemon does not accept connections on {port}"
    );
    expect(&svc.run("status"), 0, &format!("is running (pid {pid})"));
    expect(&svc.run("start"), 0, "already running");
    assert_eq!(
        svc.pid(),
        Some(pid),
        "a second start keeps the first daemon"
    );

    // reload, config unchanged: restarted in place (exec), same pid, listening again.
    let before = threads(pid);
    expect(&svc.run("reload"), 0, "Reloading iron-carrier: OK");
    assert!(
        wait_for_restart_in_place(pid, &before, port),
        "no restart in place of pid {pid} after reload (threads {:?} → {:?})",
        before,
        threads(pid)
    );
    assert_eq!(svc.pid(), Some(pid));

    // reload with a changed, valid config: the same process now listens on the new port.
    let new_port = free_port();
    svc.write_config(new_port);
    let before = threads(pid);
    expect(&svc.run("reload"), 0, "Reloading iron-carrier: OK");
    assert!(
        wait_for_restart_in_place(pid, &before, new_port),
        "pid {pid} does not listen on the new port {new_port} after reload"
    );
    assert!(!accepts(port), "still listening on the old port {port}");
    assert_eq!(svc.pid(), Some(pid));

    // reload with an invalid config: refused with the reason, the daemon left as it was.
    svc.write_invalid_config();
    let before = threads(pid);
    let out = svc.run("reload");
    expect(&out, 1, "Reloading iron-carrier: FAIL");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("key `port`"),
        "the reason is shown: {}",
        show(&out)
    );
    assert_not_restarted(pid, &before, "the daemon was signalled anyway");
    assert!(
        alive(pid) && accepts(new_port),
        "the running config is kept"
    );

    // stop: OK, the process is gone (not merely signalled), and so is the pidfile.
    expect(&svc.run("stop"), 0, "Stopping iron-carrier: OK");
    assert!(!alive(pid), "pid {pid} still running after stop");
    assert!(!svc.pidfile.exists(), "pidfile left behind");
    assert!(!accepts(new_port));
    expect(&svc.run("status"), 3, "is not running");
    expect(&svc.run("stop"), 0, "not running");
}

#[test]
fn start_status_reload_stop_with_debian_start_stop_daemon() {
    if skipped("debian lifecycle", Flavor::Debian) {
        return;
    }
    lifecycle(Flavor::Debian);
}

#[test]
fn start_status_reload_stop_with_busybox() {
    if skipped("busybox lifecycle", Flavor::BusyBox) {
        return;
    }
    lifecycle(Flavor::BusyBox);
}

#[test]
fn start_refuses_an_invalid_config_and_leaves_nothing_running() {
    if skipped("invalid config", Flavor::Debian) {
        return;
    }
    let svc = Service::new("init-bad", Flavor::Debian, free_port());
    svc.write_invalid_config();
    let out = svc.run("start");
    expect(&out, 1, "Starting iron-carrier: FAIL");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("config.toml") && err.contains("key `port`"),
        "the message names file and key: {}",
        show(&out)
    );
    assert!(!svc.pidfile.exists(), "pidfile written for a refused start");
    assert_eq!(processes_mentioning(&svc.config), Vec::<i32>::new());
    expect(&svc.run("status"), 3, "is not running");

    // A storage that is missing (and not among IRON_CARRIER_DIRS) — a disk not mounted at
    // boot — does not stop the node: it starts, and that storage waits for its root.
    svc.write_config(free_port());
    std::fs::remove_dir(&svc.storage).expect("the first start created the storage");
    std::fs::write(
        &svc.defaults,
        std::fs::read_to_string(&svc.defaults)
            .unwrap()
            .replace("IRON_CARRIER_DIRS=", "IRON_CARRIER_DIRS=\"\" #"),
    )
    .unwrap();
    let out = svc.run("start");
    expect(&out, 0, "Starting iron-carrier: OK");
    assert!(!svc.storage.exists(), "the missing root was not created");
    expect(&svc.run("stop"), 0, "Stopping iron-carrier: OK");
}

/// A stand-in syslog: a datagram socket whose messages a thread collects.
struct Syslog {
    lines: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Syslog {
    fn bind(path: &Path) -> Syslog {
        let sock = UnixDatagram::bind(path).expect("bind the syslog socket");
        sock.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (sink, done) = (lines.clone(), stop.clone());
        let reader = std::thread::spawn(move || {
            let mut buf = vec![0u8; 64 * 1024];
            while !done.load(Ordering::Relaxed) {
                if let Ok(n) = sock.recv(&mut buf) {
                    let line = String::from_utf8_lossy(&buf[..n]).into_owned();
                    sink.lock().unwrap().push(line);
                }
            }
        });
        Syslog {
            lines,
            stop,
            reader: Some(reader),
        }
    }

    fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    /// Waits for a line that starts with `prefix` and contains `needle`.
    fn wait_for(&self, prefix: &str, needle: &str) -> bool {
        wait_until(PATIENCE, || {
            self.lines()
                .iter()
                .any(|l| l.starts_with(prefix) && l.contains(needle))
        })
    }
}

impl Drop for Syslog {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
    }
}

#[test]
fn the_daemon_logs_to_syslog_and_a_bad_sighup_keeps_the_running_config() {
    if skipped("syslog", Flavor::Debian) {
        return;
    }
    let Some(unshare) = find_program("unshare") else {
        eprintln!("skipped: syslog: unshare(1) is not installed (util-linux)");
        return;
    };
    let private_mounts = Command::new(&unshare)
        .args(["--mount", "--propagation", "private", "--"])
        .args(["/bin/sh", "-c", "mount -t tmpfs ic-test-probe /mnt"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !private_mounts {
        eprintln!("skipped: syslog: cannot mount in a private mount namespace here");
        return;
    }
    let port = free_port();
    let svc = Service::new("init-syslog", Flavor::Debian, port);
    let sock = svc.dir.join("syslog.sock");
    let syslog = Syslog::bind(&sock);

    // The host's /dev stays untouched: the script (and so the daemon) runs in a private mount
    // namespace on a tmpfs /dev holding the few nodes it needs and /dev/log → our socket.
    let setup = "mount -t tmpfs -o mode=0755 ic-test-dev /dev && \
                 mknod -m 666 /dev/null c 1 3 && mknod -m 666 /dev/zero c 1 5 && \
                 mknod -m 666 /dev/random c 1 8 && mknod -m 666 /dev/urandom c 1 9 && \
                 ln -s \"$0\" /dev/log && exec /bin/sh \"$1\" start";
    let out = Command::new(unshare)
        .args([
            "--mount",
            "--propagation",
            "private",
            "--",
            "/bin/sh",
            "-c",
            setup,
        ])
        .arg(&sock)
        .arg(&svc.script)
        .env_clear()
        .env("PATH", &svc.path)
        .env("DEFAULT_FILE", &svc.defaults)
        .current_dir("/")
        .output()
        .expect("run unshare");
    expect(&out, 0, "Starting iron-carrier: OK");
    let pid = svc.pid().expect("pidfile");
    let info = format!("<30>iron-carrier[{pid}]: ");
    let error = format!("<27>iron-carrier[{pid}]: ");
    assert!(
        syslog.wait_for(&info, "listening on port"),
        "no daemon.info line from pid {pid}: {:#?}",
        syslog.lines()
    );
    assert!(accepts(port));

    // SIGHUP with an invalid config, straight to the daemon (the script would refuse): the
    // reason is logged as an error and the daemon goes on as it was.
    svc.write_invalid_config();
    let before = threads(pid);
    // SAFETY: kill(2) on the daemon this test started (its pidfile, its config).
    unsafe { libc::kill(pid, libc::SIGHUP) };
    assert!(
        syslog.wait_for(&error, "key `port`"),
        "no daemon.err line with the reason: {:#?}",
        syslog.lines()
    );
    assert!(alive(pid) && accepts(port), "the running config is kept");
    assert_not_restarted(pid, &before, "the daemon restarted on a bad config");

    // A valid change through the script: the restarted process logs to syslog again (the
    // exec kept --syslog), with the same pid, on the new port.
    let new_port = free_port();
    svc.write_config(new_port);
    expect(&svc.run("reload"), 0, "Reloading iron-carrier: OK");
    assert!(
        syslog.wait_for(&info, &format!("listening on port {new_port}")),
        "no line from the reloaded daemon: {:#?}",
        syslog.lines()
    );
    assert!(wait_until(PATIENCE, || accepts(new_port)));

    expect(&svc.run("stop"), 0, "Stopping iron-carrier: OK");
    assert!(
        syslog.wait_for(&info, "stopped"),
        "no final line: {:#?}",
        syslog.lines()
    );
    assert!(!alive(pid));
}

// ---------------------------------------------------------------------------------------
// The procd script with stubbed procd, lint and shipped files (no root needed)

/// Runs `action` (a function) of the procd init script, sourced by a shell with the procd
/// and rc.common functions replaced by stubs that print their arguments.
fn procd_call(dir: &TestDir, config: &Path, action: &str) -> Output {
    let script = std::fs::read_to_string(repo(PROCD_SCRIPT)).unwrap();
    let script = script
        .replace(
            "PROG=/usr/bin/iron-carrier",
            &format!("PROG=\"{}\"", bin().display()),
        )
        .replace(
            "CONFIG=/etc/iron-carrier/config.toml",
            &format!("CONFIG=\"{}\"", config.display()),
        );
    let copy = dir.write("iron-carrier.init", script.as_bytes());
    let harness = "procd_open_instance() { echo \"open_instance $*\"; }
procd_set_param() { echo \"set_param $*\"; }
procd_close_instance() { echo close_instance; }
procd_send_signal() { echo \"send_signal $*\"; }
logger() { echo \"logger $*\" >&2; }
. \"$1\"
\"$2\"";
    // BusyBox ash is OpenWrt's /bin/sh; dash stands in where BusyBox is missing.
    let shell = find_program("busybox").map_or_else(
        || vec!["/bin/sh".to_owned()],
        |b| vec![b.display().to_string(), "sh".to_owned()],
    );
    Command::new(&shell[0])
        .args(&shell[1..])
        .args(["-c", harness, "procd-harness"])
        .arg(copy)
        .arg(action)
        .env_remove("IC_TEST_RUNNER")
        .output()
        .expect("run the procd harness")
}

#[test]
fn procd_script_checks_the_config_then_asks_procd_for_a_respawned_syslog_daemon() {
    if std::env::var_os("IC_TEST_RUNNER").is_some_and(|r| !r.is_empty()) {
        eprintln!("skipped: procd script: IC_TEST_RUNNER is set");
        return;
    }
    let dir = TestDir::new("init-procd");
    let storage = dir.mkdir("docs");
    let config = dir.write(
        "config.toml",
        format!(
            "listen_address = \"127.0.0.1\"\nenable_service_discovery = false\n\
             log_path = \"{}\"\n[storages]\ndocs = \"{}\"\n",
            dir.join("ic.db").display(),
            storage.display()
        )
        .as_bytes(),
    );

    let out = procd_call(&dir, &config, "start_service");
    assert!(out.status.success(), "{}", show(&out));
    let calls = stdout(&out);
    let command = format!(
        "set_param command {} --daemon --syslog --config {}",
        bin().display(),
        config.display()
    );
    for want in [
        "open_instance",
        &command,
        "set_param respawn 3600 5 5",
        &format!("set_param file {}", config.display()),
        "set_param reload_signal HUP",
        "close_instance",
    ] {
        assert!(
            calls.lines().any(|l| l.trim_end() == want),
            "no {want:?} in:\n{calls}"
        );
    }

    let out = procd_call(&dir, &config, "reload_service");
    assert!(out.status.success(), "{}", show(&out));
    assert_eq!(stdout(&out).trim(), "send_signal iron-carrier * HUP");

    // A bad config: no instance, no signal, the reason on stderr and in the log.
    dir.write("config.toml", b"port = 0\n[storages]\n");
    for action in ["start_service", "reload_service"] {
        let out = procd_call(&dir, &config, action);
        assert!(!out.status.success(), "{action}: {}", show(&out));
        assert_eq!(stdout(&out), "", "{action} went on: {}", show(&out));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("key `port`") && err.contains("logger -t iron-carrier -p daemon.err"),
            "{action}: {}",
            show(&out)
        );
    }
}

#[test]
fn init_scripts_are_shellcheck_clean() {
    let Some(shellcheck) = find_program("shellcheck") else {
        eprintln!("skipped: shellcheck is not installed (apt-get install shellcheck)");
        return;
    };
    let checks: [(&str, &[&str]); 3] = [
        // Plain POSIX sh for dash, BusyBox ash and the rest: no exclusion.
        (SCRIPT, &["-s", "sh"]),
        (
            "buildroot/package/iron-carrier/iron-carrier.default",
            &["-s", "sh"],
        ),
        // An rc.common script (sourced by /etc/rc.common, run by BusyBox ash on OpenWrt):
        // SC2034: START, STOP and USE_PROCD look unused, but rc.common reads them.
        // SC3043: `local` is not POSIX, but BusyBox ash has it and rc.common scripts use it.
        (PROCD_SCRIPT, &["-s", "sh", "-e", "SC2034,SC3043"]),
    ];
    for (file, opts) in checks {
        let out = Command::new(&shellcheck)
            .args(opts)
            .arg(repo(file))
            .output()
            .expect("run shellcheck");
        assert!(out.status.success(), "shellcheck {file}:\n{}", show(&out));
    }
}

/// Copies a shipped config into `dir` with its absolute paths moved under `dir` (the
/// directories created), optionally with every commented-out example key enabled.
fn shipped_config(dir: &TestDir, file: &str, examples: bool) -> PathBuf {
    let mut text = std::fs::read_to_string(repo(file)).unwrap();
    if examples {
        text = text
            .lines()
            .map(|l| match l.strip_prefix("# ") {
                Some(rest)
                    if rest.split_once(" = ").is_some_and(|(k, _)| {
                        k.chars().all(|c| c.is_ascii_lowercase() || c == '_')
                            || (k.starts_with('"') && k.ends_with('"'))
                    }) =>
                {
                    rest
                }
                _ => l,
            })
            .collect::<Vec<_>>()
            .join("\n");
    }
    let root = dir.path().display().to_string();
    for prefix in [
        "/var/lib/iron-carrier",
        "/srv/iron-carrier",
        "/mnt/photos",
        "/srv/music",
    ] {
        text = text.replace(prefix, &format!("{root}{prefix}"));
    }
    for sub in [
        "var/lib/iron-carrier/data",
        "srv/iron-carrier/data",
        "mnt/photos",
        "srv/music",
    ] {
        dir.mkdir(sub);
    }
    dir.write(&format!("{}.toml", file.replace('/', "_")), text.as_bytes())
}

#[test]
fn shipped_default_configs_and_their_examples_pass_check_config() {
    let dir = TestDir::new("init-configs");
    for file in [
        "buildroot/package/iron-carrier/config.toml",
        "openwrt/iron-carrier/files/config.toml",
    ] {
        for examples in [false, true] {
            let config = shipped_config(&dir, file, examples);
            // check-config also checks that the port is free: the shipped 25230 may be held
            // by another test's daemon at this moment.
            let text = std::fs::read_to_string(&config).unwrap();
            let port = format!("port = {}", common::free_port());
            let text = if text.contains("\nport = 25230") {
                text.replace("\nport = 25230", &format!("\n{port}"))
            } else {
                format!("{port}\n{text}")
            };
            std::fs::write(&config, text).unwrap();
            let out = bin_command()
                .arg("check-config")
                .arg("--config")
                .arg(&config)
                .output()
                .expect("run check-config");
            assert!(
                out.status.success(),
                "{file} (examples enabled: {examples}):\n{}",
                show(&out)
            );
            let text = stdout(&out);
            if examples {
                assert!(
                    text.contains("\"my music\""),
                    "examples not enabled:\n{text}"
                );
            }
        }
    }
}

/// The mechanical rules of Buildroot's `utils/check-package` (run with `-b` on this tree),
/// so that edits keep to them: the full tool also needs a Buildroot checkout.
#[test]
fn buildroot_tree_follows_check_package_rules() {
    let pkg = "buildroot/package/iron-carrier";
    let mut files: Vec<String> = [
        "Config.in",
        "external.mk",
        "external.desc",
        "configs/raspberrypi0w_defconfig.fragment",
    ]
    .iter()
    .map(|f| format!("buildroot/{f}"))
    .collect();
    for f in [
        "Config.in",
        "iron-carrier.mk",
        "iron-carrier.hash",
        "S60iron-carrier",
        "iron-carrier.default",
        "iron-carrier.service",
        "config.toml",
    ] {
        files.push(format!("{pkg}/{f}"));
    }
    let mut problems = Vec::new();
    for file in &files {
        let path = repo(file);
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        if !text.ends_with('\n') || text.ends_with("\n\n") {
            problems.push(format!("{file}: must end with exactly one newline"));
        }
        if path.metadata().unwrap().permissions().mode() & 0o111 != 0 {
            problems.push(format!(
                "{file}: must not be executable (installed with -m 0755)"
            ));
        }
        for (i, l) in lines.iter().enumerate() {
            let n = i + 1;
            if l.trim_end() != *l {
                problems.push(format!("{file}:{n}: trailing whitespace"));
            }
            if i > 0 && l.is_empty() && lines[i - 1].is_empty() {
                problems.push(format!("{file}:{n}: consecutive empty lines"));
            }
            if !l.is_ascii() && (file.ends_with(".mk") || file.ends_with("Config.in")) {
                problems.push(format!("{file}:{n}: non-ASCII character"));
            }
        }
    }

    // .mk: the header, tabs only where make wants them.
    let mk_file = format!("{pkg}/iron-carrier.mk");
    let mk = std::fs::read_to_string(repo(&mk_file)).unwrap();
    let header: Vec<&str> = mk.lines().take(6).collect();
    let hashes = "#".repeat(80);
    if header != [&hashes[..], "#", "# iron-carrier", "#", &hashes[..], ""] {
        problems.push(format!(
            "{mk_file}: header must be 80 #, #, # name, #, 80 #, blank"
        ));
    }
    let mut continued = false;
    let mut in_define = false;
    for (i, l) in mk.lines().enumerate() {
        let recipe = in_define || continued;
        if l.starts_with("define ") {
            in_define = true;
        } else if l == "endef" {
            in_define = false;
        } else if recipe && !l.is_empty() && !l.starts_with('\t') && !l.starts_with('#') {
            problems.push(format!("{mk_file}:{}: expected a tab indent", i + 1));
        } else if !recipe && l.starts_with('\t') {
            problems.push(format!("{mk_file}:{}: unexpected tab indent", i + 1));
        }
        if l.ends_with(" \\") && (l.ends_with("  \\") || l.ends_with("\t \\")) {
            problems.push(format!("{mk_file}:{}: one space before a backslash", i + 1));
        }
        continued = !l.starts_with('#') && l.ends_with('\\');
        let var = l.split([' ', '+', ':', '?', '=']).next().unwrap_or("");
        if var.contains('_')
            && var.chars().all(|c| c.is_ascii_uppercase() || c == '_')
            && !var.starts_with("IRON_CARRIER_")
        {
            problems.push(format!(
                "{mk_file}:{}: variable {var} lacks the package prefix",
                i + 1
            ));
        }
    }

    // Config.in: one-tab attributes, help text as tab + 2 spaces + at most 62 characters.
    let cfg_file = format!("{pkg}/Config.in");
    let cfg = std::fs::read_to_string(repo(&cfg_file)).unwrap();
    let mut in_help = false;
    for (i, l) in cfg.lines().enumerate() {
        let n = i + 1;
        if !l.is_empty() && !l.starts_with('\t') {
            in_help = false; // config, comment, if, menu…
        }
        if l.trim() == "help" {
            in_help = true;
            if l != "\thelp" {
                problems.push(format!(
                    "{cfg_file}:{n}: help must be indented with one tab"
                ));
            }
        } else if in_help && !l.is_empty() {
            let ok = l
                .strip_prefix("\t  ")
                .is_some_and(|t| t.chars().count() <= 62);
            if !ok {
                problems.push(format!(
                    "{cfg_file}:{n}: help text: <tab><2 spaces><62 chars>"
                ));
            }
        } else if !in_help {
            let word = l.split_whitespace().next().unwrap_or("");
            let attribute = ["bool", "default", "depends", "select", "string", "prompt"];
            if attribute.contains(&word) && !l.starts_with(&format!("\t{word}")) {
                problems.push(format!(
                    "{cfg_file}:{n}: attribute must be indented by one tab"
                ));
            }
        }
    }

    // .hash: "type  hash  file", two spaces apart, 64 hex digits for sha256.
    let hash_file = format!("{pkg}/iron-carrier.hash");
    let hash = std::fs::read_to_string(repo(&hash_file)).unwrap();
    for (i, l) in hash.lines().enumerate() {
        if l.is_empty() || l.starts_with('#') {
            continue;
        }
        let fields: Vec<&str> = l.split_whitespace().collect();
        let ok = fields.len() == 3
            && l == fields.join("  ")
            && fields[0] == "sha256"
            && fields[1].len() == 64
            && fields[1].chars().all(|c| c.is_ascii_hexdigit());
        if !ok {
            problems.push(format!(
                "{hash_file}:{}: expected \"sha256  <64 hex>  <file>\"",
                i + 1
            ));
            continue;
        }
        // A file of this repository (LICENSE): the hash is its own, not a placeholder.
        if let Ok(out) = std::process::Command::new("sha256sum")
            .arg(repo(fields[2]))
            .output()
        {
            let real = String::from_utf8_lossy(&out.stdout);
            if out.status.success() && !real.starts_with(fields[1]) {
                problems.push(format!(
                    "{hash_file}:{}: {} is not the sha256 of {}",
                    i + 1,
                    fields[1],
                    fields[2]
                ));
            }
        }
    }

    // The init script: DAEMON without a path, the standard PIDFILE, tabs only.
    let script = std::fs::read_to_string(repo(SCRIPT)).unwrap();
    for want in [
        "DAEMON=\"iron-carrier\"",
        "PIDFILE=\"/var/run/$DAEMON.pid\"",
    ] {
        if !script.lines().any(|l| l == want) {
            problems.push(format!("{SCRIPT}: needs the line {want}"));
        }
    }
    for (i, l) in script.lines().enumerate() {
        if l.trim_start_matches('\t').starts_with(' ') {
            problems.push(format!("{SCRIPT}:{}: should be indented with tabs", i + 1));
        }
    }

    assert!(
        problems.is_empty(),
        "check-package rules:\n{}",
        problems.join("\n")
    );
}

/// One version everywhere a package names it, and the release archive's hash line (if any)
/// for that version's archive, so a version bump cannot leave a package behind. Whether the
/// recorded hash is that of the current commit's archive is a release step
/// (`cross/dist-src.sh --check`), not a test: every commit to the code changes the archive.
#[test]
fn package_versions_agree_with_cargo_toml() {
    let value_after = |file: &str, prefix: &str| -> String {
        let text = std::fs::read_to_string(repo(file)).unwrap();
        let value = text
            .lines()
            .find_map(|l| l.strip_prefix(prefix))
            .unwrap_or_else(|| panic!("{file}: no line starting with {prefix:?}"));
        value.trim().trim_matches('"').to_owned()
    };
    // The first `version =` of Cargo.toml is the package's (its first table is [package]).
    let version = value_after("Cargo.toml", "version = ");
    let buildroot = value_after(
        "buildroot/package/iron-carrier/iron-carrier.mk",
        "IRON_CARRIER_VERSION = ",
    );
    let openwrt = value_after("openwrt/iron-carrier/Makefile", "PKG_VERSION:=");
    assert_eq!(buildroot, version, "IRON_CARRIER_VERSION vs Cargo.toml");
    assert_eq!(openwrt, version, "OpenWrt PKG_VERSION vs Cargo.toml");
    let hash =
        std::fs::read_to_string(repo("buildroot/package/iron-carrier/iron-carrier.hash")).unwrap();
    let archive = format!("iron-carrier-{version}.tar.gz");
    for line in hash.lines().filter(|l| l.ends_with(".tar.gz")) {
        assert!(
            line.ends_with(&format!("  {archive}")),
            "iron-carrier.hash: {line:?} is not for {archive}: refresh it with \
             cross/dist-src.sh --update-hash"
        );
    }
}

/// `cross/package-dry-run.sh` on the binary under test: the install steps of both packages
/// (run from iron-carrier.mk and the OpenWrt Makefile themselves) give the expected files and
/// modes, and the shipped configs pass check-config in the staged trees.
#[test]
fn package_dry_run_passes_with_the_binary_under_test() {
    if std::env::var_os("IC_TEST_RUNNER").is_some() {
        eprintln!("skipped: the binary is for another architecture (cross/package-dry-run.sh runs it under qemu itself)");
        return;
    }
    for tool in ["make", "install", "od"] {
        if find_program(tool).is_none() {
            eprintln!("skipped: {tool} is not installed");
            return;
        }
    }
    let out = Command::new("bash")
        .arg(repo("cross/package-dry-run.sh"))
        .arg(bin())
        .output()
        .expect("run cross/package-dry-run.sh");
    assert!(out.status.success(), "package-dry-run:\n{}", show(&out));
    assert!(
        stdout(&out).contains("all checks passed"),
        "package-dry-run:\n{}",
        show(&out)
    );
}

/// The SQLite build flags of `.cargo/config.toml`, as the word list `LIBSQLITE3_FLAGS` holds.
fn sqlite_flags_of(rel: &str, prefix: &str) -> Vec<String> {
    let text = std::fs::read_to_string(repo(rel)).unwrap();
    let line = text
        .lines()
        .map(str::trim)
        .find_map(|l| l.strip_prefix(prefix))
        .unwrap_or_else(|| panic!("{rel}: no line starting with {prefix:?}"));
    let quoted = line.trim().trim_matches('"');
    quoted.split_whitespace().map(str::to_owned).collect()
}

/// Buildroot and OpenWrt do not read `.cargo/config.toml`, so they repeat its SQLite flags: a
/// package built with fewer would carry 350 KB of SQLite nobody uses, and one built with
/// other omissions would run code the tests never ran.
#[test]
fn every_build_gives_sqlite_the_same_flags() {
    let ours = sqlite_flags_of(".cargo/config.toml", "LIBSQLITE3_FLAGS = ");
    assert!(ours.len() > 10, "{ours:?}");
    let buildroot = sqlite_flags_of(
        "buildroot/package/iron-carrier/iron-carrier.mk",
        "IRON_CARRIER_CARGO_ENV += LIBSQLITE3_FLAGS=",
    );
    assert_eq!(buildroot, ours, "iron-carrier.mk vs .cargo/config.toml");
    let openwrt = sqlite_flags_of("openwrt/iron-carrier/Makefile", "LIBSQLITE3_FLAGS=");
    assert_eq!(openwrt, ours, "the OpenWrt Makefile vs .cargo/config.toml");
}

/// The flags reached the SQLite this build links (the tests' and the binary's are one build
/// of libsqlite3-sys): each `-D` option is compiled in and each `-U` one is not.
#[test]
fn the_linked_sqlite_is_built_with_those_flags() {
    let db = rusqlite::Connection::open_in_memory().unwrap();
    let used = |name: &str| -> bool {
        db.query_row("SELECT sqlite_compileoption_used(?1)", [name], |r| r.get(0))
            .unwrap()
    };
    for flag in sqlite_flags_of(".cargo/config.toml", "LIBSQLITE3_FLAGS = ") {
        let (wanted, name) = match flag.split_at(2) {
            ("-D", name) => (true, name),
            ("-U", name) => (false, name),
            _ => panic!("unexpected flag {flag}"),
        };
        let name = name.split('=').next().unwrap();
        assert_eq!(used(name), wanted, "{flag}: SQLite was built without it");
    }
    // And what the store relies on is still there.
    let mode: String = db
        .query_row("PRAGMA quick_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "ok");
}
