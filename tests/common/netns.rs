//! Hosts in network namespaces of their own (`ip netns`), joined by veth pairs to a bridge
//! in one more namespace, addresses from 198.18.0.0/15, and real node processes started in
//! them with `ip netns exec`. Nothing leaves the namespaces, and they are removed when a test
//! ends, failed or not. Where namespaces cannot be made (not root), `Segment::new` says
//! SKIPPED on the terminal and the test does nothing.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use super::Daemon;

/// A bridge and `n` hosts, each in a namespace of its own, host `i` (from 1) at
/// 198.18.0.`i`/24 on its `eth0`. Dropping it deletes the namespaces (and with them the
/// veth pairs and the bridge).
pub struct Segment {
    names: Vec<String>,
}

static SEGMENTS: AtomicU32 = AtomicU32::new(0);

pub fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip {}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl Segment {
    /// `None` (and a SKIPPED line straight to the terminal, past the test harness's
    /// capture) where namespaces cannot be made.
    pub fn new(test: &str, n: usize) -> Option<Segment> {
        let k = SEGMENTS.fetch_add(1, Ordering::SeqCst);
        let base = format!("icd{}x{k}", std::process::id());
        let mut seg = Segment { names: Vec::new() };
        match seg.build(&base, n) {
            Ok(()) => Some(seg),
            Err(e) => {
                let _ = writeln!(
                    std::io::stderr(),
                    "\n*** SKIPPED {test}: cannot create network namespaces ({e}); \
                     this test needs them (run as root with iproute2) ***\n"
                );
                None
            }
        }
    }

    pub fn build(&mut self, base: &str, n: usize) -> Result<(), String> {
        let br = format!("{base}b");
        ip(&["netns", "add", &br])?;
        self.names.push(br.clone());
        ip(&["-n", &br, "link", "add", "br0", "type", "bridge"])?;
        // No snooping: every multicast frame reaches every port, as on a plain switch.
        ip(&[
            "-n",
            &br,
            "link",
            "set",
            "br0",
            "type",
            "bridge",
            "mcast_snooping",
            "0",
        ])?;
        ip(&["-n", &br, "link", "set", "br0", "up"])?;
        for i in 1..=n {
            let ns = format!("{base}h{i}");
            ip(&["netns", "add", &ns])?;
            self.names.push(ns.clone());
            let port = format!("p{i}");
            ip(&[
                "link", "add", "eth0", "netns", &ns, "type", "veth", "peer", "name", &port,
                "netns", &br,
            ])?;
            ip(&["-n", &br, "link", "set", &port, "master", "br0"])?;
            ip(&["-n", &br, "link", "set", &port, "up"])?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
            self.set_addr(i, &format!("198.18.0.{i}"))?;
            ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
            if std::env::var_os("IC_TEST_RUNNER").is_some() {
                // qemu-user does not emulate IP_MULTICAST_IF, so under cross-test the node
                // cannot pin its packets to eth0 (it says so) and needs the route a machine
                // usually has. Natively, the namespaces have none: pinning is tested.
                ip(&["-n", &ns, "route", "add", "224.0.0.0/4", "dev", "eth0"])?;
            }
        }
        Ok(())
    }

    /// Host `i`'s namespace.
    /// Slows what host `i` sends to `rate` (tc's notation, e.g. "16mbit"), so that a file
    /// takes seconds to cross. False, with a SKIPPED line on the terminal, where tc cannot
    /// (no tbf): the test then does nothing.
    pub fn shape(&self, i: usize, rate: &str) -> bool {
        let shaped = Command::new("ip")
            .args([
                "netns",
                "exec",
                self.ns(i),
                "tc",
                "qdisc",
                "add",
                "dev",
                "eth0",
            ])
            .args([
                "root", "tbf", "rate", rate, "burst", "32kbit", "latency", "400ms",
            ])
            .status()
            .is_ok_and(|s| s.success());
        if !shaped {
            let _ = writeln!(
                std::io::stderr(),
                "\n*** SKIPPED: tc cannot shape the link here (no tbf) ***\n"
            );
        }
        shaped
    }

    pub fn ns(&self, i: usize) -> &str {
        &self.names[i]
    }

    /// Gives host `i` the address `addr`/24 instead of the one it had.
    pub fn set_addr(&self, i: usize, addr: &str) -> Result<(), String> {
        ip(&["-n", self.ns(i), "addr", "flush", "dev", "eth0"])?;
        ip(&[
            "-n",
            self.ns(i),
            "addr",
            "add",
            &format!("{addr}/24"),
            "dev",
            "eth0",
        ])
    }

    /// The command prefix that runs a program on host `i` (through the emulator under
    /// cross-test).
    pub fn wrapper(&self, i: usize) -> Vec<String> {
        let mut w: Vec<String> = ["ip", "netns", "exec", self.ns(i)]
            .iter()
            .map(|s| s.to_string())
            .collect();
        if let Ok(r) = std::env::var("IC_TEST_RUNNER") {
            w.extend(r.split_whitespace().map(str::to_owned));
        }
        w
    }

    pub fn daemon(&self, i: usize, config: &Path) -> Daemon {
        let w = self.wrapper(i);
        let w: Vec<&str> = w.iter().map(String::as_str).collect();
        Daemon::start_via(&w, config)
    }

    /// A one-shot run on host `i`, killed (and the test failed) after `limit`.
    pub fn oneshot(&self, i: usize, config: &Path, limit: Duration) -> Output {
        let w = self.wrapper(i);
        let child = Command::new(&w[0])
            .args(&w[1..])
            .arg(env!("CARGO_BIN_EXE_iron-carrier"))
            .args(["-vv", "--config"])
            .arg(config)
            .env_remove("RUST_LOG")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn one-shot");
        super::output_within(child, limit)
    }
}

impl Drop for Segment {
    fn drop(&mut self) {
        // Hosts first (their processes are gone by now: daemons are dropped before the
        // segment), the bridge last.
        for ns in self.names.iter().rev() {
            if let Err(e) = ip(&["netns", "del", ns]) {
                eprintln!("cleanup: {e}");
            }
        }
    }
}

/// A daemon's config for host `i` of a segment: the other host `peer` as its one peer, no
/// discovery, one storage "docs" at `root`, written into `dir` as `<id>.toml`.
pub fn host_config(dir: &super::TestDir, id: &str, peer: usize, root: &Path) -> std::path::PathBuf {
    let text = format!(
        "node_id = \"{id}\"\nport = 25230\nlog_path = \"{id}.db\"\n\
         enable_service_discovery = false\npeers = [\"198.18.0.{peer}:25230\"]\n\
         [storages]\ndocs = \"{}\"\n",
        root.display()
    );
    dir.write(&format!("{id}.toml"), text.as_bytes())
}
