//! Helpers shared by the integration tests: temporary directories and file fixtures.
#![allow(dead_code)]

pub mod mount;
pub mod netns;
pub mod peer;
pub mod target;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A directory under the system temp dir, removed (recursively) when dropped.
pub struct TestDir {
    path: PathBuf,
}

impl TestDir {
    /// Creates a fresh, empty directory whose name contains `tag`, the pid and a counter,
    /// so parallel tests and parallel test binaries never collide.
    pub fn new(tag: &str) -> TestDir {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("ic-test-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("create test dir");
        TestDir { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Joins a relative path onto the test directory.
    pub fn join(&self, rel: &str) -> PathBuf {
        self.path.join(rel)
    }

    /// Writes `contents` to `rel`, creating parent directories.
    pub fn write(&self, rel: &str, contents: &[u8]) -> PathBuf {
        let p = self.path.join(rel);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).expect("create parent");
        }
        std::fs::write(&p, contents).expect("write fixture");
        p
    }

    /// Creates the directory `rel` and its parents.
    pub fn mkdir(&self, rel: &str) -> PathBuf {
        let p = self.path.join(rel);
        std::fs::create_dir_all(&p).expect("mkdir fixture");
        p
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        // Make everything writable again first: tests chmod things to 000.
        let _ = std::process::Command::new("chmod")
            .args(["-R", "u+rwx"])
            .arg(&self.path)
            .status();
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

// ---------------------------------------------------------------------------------------
// Running real nodes

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The binary under test, started through `IC_TEST_RUNNER` when that is set.
pub fn bin() -> Command {
    let mut c = runner_command(env!("CARGO_BIN_EXE_iron-carrier"));
    c.env_remove("RUST_LOG");
    c
}

/// A command running `program`; when the environment variable `IC_TEST_RUNNER` is set (e.g.
/// `qemu-arm-static`, by `make cross-test`), it runs `$IC_TEST_RUNNER program` instead. Tests
/// that run under qemu without binfmt_misc cannot exec a foreign binary directly, and this is
/// how they start the binary under test (or themselves). The variable is split on
/// whitespace, so it may carry options (`qemu-arm-static -cpu cortex-a7`).
pub fn runner_command(program: impl AsRef<std::ffi::OsStr>) -> Command {
    let runner = std::env::var("IC_TEST_RUNNER").unwrap_or_default();
    let mut words = runner.split_whitespace();
    match words.next() {
        Some(first) => {
            let mut c = Command::new(first);
            c.args(words).arg(program);
            c
        }
        None => Command::new(program),
    }
}

/// A TCP port that was free a moment ago on 127.0.0.1.
///
/// Ports come from a per-process sequence below the kernel's ephemeral range (which starts
/// at 32768), so they never collide with each other within a test binary nor with the
/// source ports of the tests' own outgoing connections, as `bind(0)` ports could.
pub fn free_port() -> u16 {
    use std::sync::atomic::AtomicU16;
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let _ = NEXT.compare_exchange(
        0,
        20_000 + (std::process::id() % 500) as u16 * 20,
        Ordering::SeqCst,
        Ordering::SeqCst,
    );
    loop {
        let p = NEXT.fetch_add(1, Ordering::SeqCst);
        let p = if p >= 32_000 { 20_000 + p % 12_000 } else { p };
        if std::net::TcpListener::bind(("127.0.0.1", p)).is_ok() {
            return p;
        }
    }
}

/// The port of a "cannot listen on 127.0.0.1:PORT: Address already in use" in `log`.
fn port_in_use(log: &str) -> Option<u16> {
    let line = log.lines().find(|l| {
        l.contains("cannot listen on 127.0.0.1:") && l.contains("Address already in use")
    })?;
    let rest = line.split("cannot listen on 127.0.0.1:").nth(1)?;
    rest.split(':').next()?.parse().ok()
}

/// Polls `cond` every 20 ms until it holds or `timeout` passes. Returns whether it held.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Generous deadline for anything a test waits on: never a reason for a test to pass.
pub const PATIENCE: Duration = Duration::from_secs(60);

/// A node's configuration, written as TOML into its own folder.
pub struct NodeConfig {
    pub id: String,
    /// Tests give each pair its own group, so nodes of concurrent tests can never talk.
    pub group: Option<String>,
    pub port: u16,
    pub peers: Vec<u16>,
    pub storages: Vec<(String, PathBuf)>,
    /// Extra top-level TOML lines (e.g. `group = "x"`).
    pub extra: String,
    pub encryption: String,
}

impl NodeConfig {
    pub fn new(id: &str) -> NodeConfig {
        NodeConfig {
            id: id.to_owned(),
            group: None,
            port: free_port(),
            peers: Vec::new(),
            storages: Vec::new(),
            extra: String::new(),
            encryption: "true".to_owned(),
        }
    }

    /// The `encryption` value as TOML (`true`, `false` or a quoted passphrase). Tests run
    /// with the product's default, `true`, unless they say otherwise: the suite exercises
    /// the links users run.
    pub fn encryption(mut self, toml_value: &str) -> NodeConfig {
        self.encryption = toml_value.to_owned();
        self
    }

    pub fn storage(mut self, name: &str, path: &Path) -> NodeConfig {
        self.storages.push((name.to_owned(), path.to_owned()));
        self
    }

    pub fn group(mut self, group: &str) -> NodeConfig {
        self.group = Some(group.to_owned());
        self
    }

    pub fn peer(mut self, port: u16) -> NodeConfig {
        self.peers.push(port);
        self
    }

    pub fn extra(mut self, line: &str) -> NodeConfig {
        self.extra.push_str(line);
        self.extra.push('\n');
        self
    }

    /// Writes `<dir>/<id>.toml` and returns its path.
    pub fn write(&self, dir: &Path) -> PathBuf {
        let peers: Vec<String> = self
            .peers
            .iter()
            .map(|p| format!("\"127.0.0.1:{p}\""))
            .collect();
        let mut s = format!(
            "node_id = \"{}\"\nport = {}\nlisten_address = \"127.0.0.1\"\npeers = [{}]\n\
             enable_service_discovery = false\nencryption = {}\nlog_path = \"{}.db\"\n{}\n[storages]\n",
            self.id,
            self.port,
            peers.join(", "),
            self.encryption,
            self.id,
            self.extra
        );
        if let Some(g) = &self.group {
            s = format!("group = \"{g}\"\n{s}");
        }
        for (name, path) in &self.storages {
            s.push_str(&format!("\"{name}\" = \"{}\"\n", path.display()));
        }
        let p = dir.join(format!("{}.toml", self.id));
        std::fs::write(&p, s).expect("write node config");
        p
    }
}

/// Makes every node list every other as a peer (a full mesh).
pub fn mesh_peers(nodes: &mut [NodeConfig]) {
    let ports: Vec<u16> = nodes.iter().map(|n| n.port).collect();
    for (i, n) in nodes.iter_mut().enumerate() {
        n.peers = ports
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .map(|(_, p)| *p)
            .collect();
    }
}

/// Configs of "node-a" and "node-b", with storage "docs" in `<dir>/a` and `<dir>/b`, in a group
/// of their own (so concurrent tests never talk to each other), A dialling B.
pub fn pair_configs(dir: &TestDir, tag: &str) -> (NodeConfig, NodeConfig) {
    let group = format!("{tag}-{}", std::process::id());
    let b = NodeConfig::new("node-b")
        .group(&group)
        .storage("docs", &dir.mkdir("b"));
    let a = NodeConfig::new("node-a")
        .group(&group)
        .storage("docs", &dir.mkdir("a"))
        .peer(b.port);
    (a, b)
}

/// A running daemon whose stderr is collected in the background.
pub struct Daemon {
    pub child: Child,
    log: Arc<Mutex<String>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Daemon {
    /// Starts `iron-carrier --daemon --config <config>` and waits until it listens.
    pub fn start(config: &Path) -> Daemon {
        Daemon::start_via(&[], config)
    }

    /// Like [`Daemon::start`], with the binary started by `wrapper` (e.g. `unshare ...`):
    /// `wrapper[0] wrapper[1..] <binary> --daemon -v --config <config>`. Not through
    /// `IC_TEST_RUNNER`: tests that use it are host-only.
    pub fn start_via(wrapper: &[&str], config: &Path) -> Daemon {
        let emulated = std::env::var_os("IC_TEST_RUNNER").is_some();
        let mut d = Daemon::spawn(wrapper, config);
        if emulated && !d.shows_life_within(EMULATOR_STALL) {
            // Under qemu-user, a daemon started from the (itself emulated) test process has,
            // rarely, neither printed a line nor exited for a minute, while its starts take
            // well under a second even fourteen at a time: the emulator stalled, not the
            // daemon (natively nothing is retried). It is noted where cross-test shows it,
            // with the threads' states, and started once more.
            note_emulator_stall(&format!(
                "daemon for {} stalled silently in its start: {}",
                config.display(),
                process_state(d.pid())
            ));
            drop(d);
            d = Daemon::spawn(wrapper, config);
        }
        // A daemon that exits while starting says so at once, with its status, instead of
        // after the whole wait.
        let mut exited = None;
        let mut listening = wait_until(PATIENCE, || {
            exited = d.child.try_wait().ok().flatten();
            exited.is_some() || d.log().contains("listening on port")
        }) && exited.is_none();
        if let Some(port) = exited.and_then(|_| port_in_use(&d.log())) {
            // The port was free when the test picked it; another process took it since (a
            // daemon of an earlier suite still shutting down). Once it is free: again.
            eprintln!("port {port} was taken meanwhile; starting the daemon again once free");
            let free = wait_until(PATIENCE, || {
                std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()
            });
            if free {
                d = Daemon::spawn(wrapper, config);
                exited = None;
                listening = wait_until(PATIENCE, || {
                    exited = d.child.try_wait().ok().flatten();
                    exited.is_some() || d.log().contains("listening on port")
                }) && exited.is_none();
            }
        }
        assert!(
            listening,
            "daemon did not start listening ({}):\n{}",
            match exited {
                Some(status) => format!("it exited: {status}"),
                None => format!("still running: {}", process_state(d.pid())),
            },
            d.log()
        );
        d
    }

    fn spawn(wrapper: &[&str], config: &Path) -> Daemon {
        let mut cmd = match wrapper.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(env!("CARGO_BIN_EXE_iron-carrier"));
                c.env_remove("RUST_LOG");
                c
            }
            None => bin(),
        };
        let mut child = cmd
            .args(["--daemon", "-v", "--config"])
            .arg(config)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn daemon");
        let stderr = child.stderr.take().expect("stderr");
        let log = Arc::new(Mutex::new(String::new()));
        let sink = log.clone();
        let reader = std::thread::spawn(move || {
            // Byte lines, not `lines()`: that stops at the first line that is not UTF-8.
            let mut r = BufReader::new(stderr);
            let mut line = Vec::new();
            while matches!(r.read_until(b'\n', &mut line), Ok(n) if n > 0) {
                let mut l = sink.lock().unwrap();
                l.push_str(String::from_utf8_lossy(&line).trim_end_matches('\n'));
                l.push('\n');
                line.clear();
            }
        });
        Daemon {
            child,
            log,
            reader: Some(reader),
        }
    }

    /// Whether the daemon printed anything or exited within `limit`.
    fn shows_life_within(&mut self, limit: Duration) -> bool {
        wait_until(limit, || {
            !self.log().is_empty() || self.child.try_wait().ok().flatten().is_some()
        })
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    pub fn wait_for_log(&self, needle: &str, timeout: Duration) -> bool {
        wait_until(timeout, || self.log().contains(needle))
    }

    /// Counts lines containing `needle`.
    pub fn count_log(&self, needle: &str) -> usize {
        self.log().lines().filter(|l| l.contains(needle)).count()
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().ok().flatten().is_none()
    }

    /// SIGTERM, then waits; returns the exit code.
    pub fn stop(mut self) -> (Option<i32>, String) {
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(self.pid(), libc::SIGTERM) };
        let status = self.child.wait().expect("wait daemon");
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
        (status.code(), self.log())
    }

    /// SIGKILL: no clean-up at all, as in a crash or power loss of the process.
    pub fn kill(mut self) -> String {
        self.kill_in_place()
    }

    /// `kill -9`, and waits until it is gone; returns its log.
    pub fn kill_in_place(&mut self) -> String {
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(self.pid(), libc::SIGKILL) };
        let _ = self.child.wait();
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
        self.log()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// How long a daemon under an emulator may show no sign of life before its start is taken
/// for an emulator stall (see `Daemon::start`).
const EMULATOR_STALL: Duration = Duration::from_secs(20);

/// Appends `what` to the file named by `IC_EMULATOR_STALLS` (cross-test prints it), or to
/// stderr.
fn note_emulator_stall(what: &str) {
    use std::io::Write;
    let line = format!("emulator stall: {what}\n");
    match std::env::var_os("IC_EMULATOR_STALLS") {
        Some(path) => {
            if let Ok(mut f) = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
            {
                let _ = f.write_all(line.as_bytes());
            }
        }
        None => eprint!("{line}"),
    }
}

/// What the kernel says a process and each of its threads are doing (state and wait
/// channel), for a failure message about a process that hangs.
pub fn process_state(pid: i32) -> String {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return "no such process".into();
    };
    let mut out = Vec::new();
    for t in tasks.flatten() {
        let dir = t.path();
        let read = |f: &str| {
            std::fs::read_to_string(dir.join(f))
                .unwrap_or_default()
                .trim()
                .to_owned()
        };
        let stat = read("stat");
        // The state is the field after the parenthesized command name.
        let state = stat
            .rsplit_once(") ")
            .and_then(|(_, rest)| rest.split(' ').next())
            .unwrap_or("?")
            .to_owned();
        out.push(format!("{}[{} {}]", read("comm"), state, read("wchan")));
    }
    // Whether it got as far as exec'ing the program it was started for.
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .unwrap_or_default();
    format!("{} (command line: {})", out.join(" "), cmdline.trim_end())
}

/// Whether `child` exec'd the program it was started for (its command line carries our
/// `--config`) or exited within `limit`.
fn execs_within(child: &Child, limit: Duration) -> bool {
    let cmdline = format!("/proc/{}/cmdline", child.id());
    wait_until(limit, || match std::fs::read(&cmdline) {
        Ok(c) => c.is_empty() || c.windows(8).any(|w| w == b"--config"),
        Err(_) => true,
    })
}

/// Runs a one-shot sync with `config` (killed after `PATIENCE`).
pub fn oneshot(config: &Path) -> Output {
    oneshot_within(config, PATIENCE * 3)
}

/// Runs a one-shot sync with `config`, killed (and the test failed) after `limit`.
pub fn oneshot_within(config: &Path, limit: Duration) -> Output {
    let spawn = || {
        bin()
            .args(["-vv", "--config"])
            .arg(config)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn one-shot")
    };
    let mut child = spawn();
    if std::env::var_os("IC_TEST_RUNNER").is_some() && !execs_within(&child, EMULATOR_STALL) {
        // The emulator stall `Daemon::start` retries: the child of the (emulated) test
        // process never got as far as exec'ing the emulator with the binary.
        note_emulator_stall(&format!(
            "one-shot run for {} stalled before its exec: {}",
            config.display(),
            process_state(child.id() as i32)
        ));
        let _ = child.kill();
        let _ = child.wait();
        child = spawn();
    }
    output_within(child, limit)
}

/// Waits for a one-shot run's `child` with piped output; kills it (and fails the test,
/// showing what it printed) after `limit`.
pub fn output_within(child: std::process::Child, limit: Duration) -> Output {
    let pid = child.id() as i32;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(limit) {
        Ok(out) => out.expect("one-shot output"),
        Err(_) => {
            // SAFETY: kill(2) on our own child that outlived its deadline.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            // What it logged until then is the only clue to why it hung: show it.
            let seen = match rx.recv_timeout(PATIENCE) {
                Ok(Ok(out)) => show(&out),
                _ => "(no output)".to_string(),
            };
            panic!("one-shot run did not finish within {limit:?}; killed\n{seen}");
        }
    }
}

/// Asserts that a one-shot run exited with `code`, showing its output and the log of
/// `daemon`, the node it ran against.
pub fn assert_exit(out: &Output, code: i32, daemon: &Daemon) {
    assert_eq!(
        out.status.code(),
        Some(code),
        "{}\ndaemon log:\n{}",
        show(out),
        daemon.log()
    );
}

/// Raises this process's descriptor limit to `want` (or its hard limit); returns the limit.
/// Tests that hold hundreds of sockets need it.
// `rlim_t` is u32 on 32-bit glibc (armv7) and u64 elsewhere: conversions that are needed
// there are no-ops here.
#[allow(clippy::useless_conversion, clippy::unnecessary_fallible_conversions)]
pub fn raise_own_nofile(want: u64) -> u64 {
    let want = libc::rlim_t::try_from(want).unwrap_or(libc::rlim_t::MAX);
    // SAFETY: getrlimit/setrlimit on this process with a valid struct.
    unsafe {
        let mut r = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) != 0 {
            return 0;
        }
        if r.rlim_cur < want {
            r.rlim_cur = want.min(r.rlim_max);
            libc::setrlimit(libc::RLIMIT_NOFILE, &r);
        }
        u64::from(r.rlim_cur)
    }
}

/// A field of `/proc/<pid>/status` in KiB (`VmRSS`, `VmHWM`).
pub fn status_kib(pid: i32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no {field} in {status}"))
}

/// Describes an output for assertion messages.
pub fn show(out: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// What a tree holds: relative path → "dir" or "file <size> <blake3 hex>". Internal
/// temp files are included, so a test sees any that were left behind.
pub fn manifest(root: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        // A directory renamed or removed while we looked: this tree is not settled.
        let Ok(entries) = std::fs::read_dir(&dir) else {
            out.insert(dir.to_string_lossy().into_owned(), "vanished".to_owned());
            continue;
        };
        for e in entries {
            let Ok(e) = e else {
                out.insert(dir.to_string_lossy().into_owned(), "vanished".to_owned());
                continue;
            };
            let p = e.path();
            let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            // Each node's own storage marker (never synchronized; its id differs per node).
            if rel == ".iron-carrier.storage" {
                continue;
            }
            let Ok(ft) = e.file_type() else {
                out.insert(rel, "vanished".to_owned());
                continue;
            };
            if ft.is_dir() {
                out.insert(rel, "dir".to_owned());
                stack.push(p);
            } else if ft.is_symlink() {
                out.insert(rel, "symlink".to_owned());
            } else {
                // A temporary file renamed or removed while we looked means a transfer is in
                // progress: this tree is not settled. An opened file stays readable.
                let v = match std::fs::File::open(&p) {
                    Ok(f) => format!("file {}", digest_of(f)),
                    Err(_) => "vanished".to_owned(),
                };
                out.insert(rel, v);
            }
        }
    }
    out
}

/// "<size> <blake3 hex>" of a file, streamed.
pub fn file_digest(p: &Path) -> String {
    digest_of(std::fs::File::open(p).expect("open for digest"))
}

/// "<size> <blake3 hex>" of an open file, streamed.
pub fn digest_of(mut f: std::fs::File) -> String {
    use std::io::Read;
    let mut h = blake3::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut n = 0u64;
    loop {
        let k = f.read(&mut buf).expect("read for digest");
        if k == 0 {
            break;
        }
        n += k as u64;
        h.update(&buf[..k]);
    }
    format!("{n} {}", h.finalize().to_hex())
}

/// Sets a file's mtime to `secs` seconds after the epoch (negative: before). Through the
/// host's `touch`, not `std`: a test binary built for a 32-bit musl target (run under qemu)
/// has a 32-bit `time_t` in `std` and could not set a time past 2038.
pub fn set_mtime(p: &Path, secs: i64) {
    let st = Command::new("touch")
        .args(["-m", "-d", &format!("@{secs}")])
        .arg(p)
        .status()
        .expect("run touch");
    assert!(st.success(), "touch -m -d @{secs} {}", p.display());
}

/// Writes `len` bytes of deterministic pseudo-random data (xorshift, seeded) to `p`.
pub fn write_random(p: &Path, len: u64, seed: u64) {
    use std::io::Write;
    if let Some(parent) = p.parent() {
        std::fs::create_dir_all(parent).expect("parent");
    }
    let mut f = std::io::BufWriter::new(std::fs::File::create(p).expect("create"));
    let mut x = seed | 1;
    let mut left = len;
    let mut block = vec![0u8; 1 << 16];
    while left > 0 {
        fill_random(&mut block, &mut x);
        let n = left.min(block.len() as u64) as usize;
        f.write_all(&block[..n]).expect("write");
        left -= n as u64;
    }
    f.flush().expect("flush");
}

/// `len` bytes of the data [`write_random`] writes for `seed`, in memory.
#[allow(dead_code)] // not every test crate needs data in memory
pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut v = vec![0u8; len];
    fill_random(&mut v, &mut (seed | 1));
    v
}

/// Fills `buf` from the xorshift state `x`, 8 bytes per step.
fn fill_random(buf: &mut [u8], x: &mut u64) {
    for chunk in buf.chunks_mut(8) {
        *x ^= *x << 13;
        *x ^= *x >> 7;
        *x ^= *x << 17;
        let b = x.to_le_bytes();
        chunk.copy_from_slice(&b[..chunk.len()]);
    }
}

/// Sent + received bytes from a one-shot run's summary ("network: sent N bytes, received M
/// bytes").
#[allow(dead_code)] // not every test crate counts bytes
pub fn wire_total(out: &Output) -> u64 {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .find(|l| l.starts_with("network: "))
        .unwrap_or_else(|| panic!("no network line in {stdout}"));
    let nums: Vec<u64> = line
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    nums[0] + nums[1]
}
