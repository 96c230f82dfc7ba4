//! The command line: raw arguments (pico-args) → validated [`Args`] → a run → an exit code.
//!
//! This is the only place that prints to stdout for the user and that decides exit codes.
//! It never panics on bad input: every problem becomes a one-line message on stderr and a
//! documented exit code.

use std::ffi::OsString;
use std::path::PathBuf;

use std::time::Duration;

use crate::config::{self, Config};
use crate::control::{self, Request};
use crate::daemon;
use crate::logger;
use crate::model::NodeId;
use crate::run::{Mode, Outcome, RunProblem, StorageState};
use crate::status::{human_bytes, moved_phrase};

/// Exit codes, documented in `--help`.
pub mod exit {
    /// Everything asked for was done.
    pub const OK: i32 = 0;
    /// The sync did not complete: no peer reachable, a configured peer not reached, a storage
    /// not synchronized with a connected peer that has it, or files failed.
    pub const SYNC_FAILED: i32 = 1;
    /// Bad command line or bad configuration; nothing was done.
    pub const USAGE: i32 = 2;
    /// Could not start: the port cannot be bound, a thread cannot be spawned, and the like.
    pub const STARTUP: i32 = 3;
    /// `status` or `sync`: no daemon runs with this configuration.
    pub const NO_DAEMON: i32 = 4;
}

pub const HELP: &str = "\
iron-carrier — peer-to-peer file synchronization for small Linux machines

USAGE:
    iron-carrier [OPTIONS]
        Sync every storage once with the reachable peers, then exit. Prints a summary, plus
        warnings and a progress line per storage (live on a terminal, plain lines otherwise).
    iron-carrier [OPTIONS] --daemon
        Keep running: serve peers, sync when files change, on schedule_sync and when asked.
    iron-carrier [OPTIONS] check-config
        Validate the config and what a sync would refuse (each storage's .ignore, that
        log_path's folder is writable, that the port is free); print the effective settings.
    iron-carrier [OPTIONS] status [--json]
        Ask the running daemon what it is doing: node, peers, and per storage its state
        (in-sync, syncing, pending, failed, not-shared, unavailable), last sync, progress, errors.
    iron-carrier [OPTIONS] sync [STORAGE] [--wait]
        Ask the running daemon to synchronize every storage (or STORAGE) now. Returns at once
        (exit 0: the daemon accepted), or with --wait when that sync is done.

OPTIONS:
    -c, --config PATH   config file (default: $HOME/.config/iron-carrier/config.toml)
    -d, --daemon        run as a daemon until SIGINT or SIGTERM
    -v, -vv, -vvv       one-shot: info, debug, trace log lines (default: the summary, warnings
                        and progress); daemon: debug, trace (default: info)
    -q                  warnings and errors only (one-shot: no progress); not with -v
        --syslog        log to syslog (/dev/log, facility daemon) instead of stderr
        --json          status: one JSON object for scripts (fields: README, man iron-carrier)
        --wait          sync: return when done, print its summary; exit 0 synchronized, 1 not
    -h, --help          print this help
    -V, --version       print the version

CONFIG (TOML; only [storages] is required. Paths may start with ~ or $HOME; relative paths
are relative to the config file's folder. Defaults shown):
    node_id = \"<hostname>-XXXXXX\"     unique id of this node in its group (≤ 64 bytes, no spaces);
                                      unset: the hostname and 6 hex digits made at the first
                                      start, kept in <log_path>.node-id
    group = \"NAME\"                    nodes talk only within their group (unset: the default group)
    port = 25230                      TCP port to listen on (1-65535)
    listen_address = \"0.0.0.0\"        IP address to listen on (\"::\", \"127.0.0.1\", ...)
    peers = []                        \"host:port\" or \"[ipv6]:port\" addresses to connect to
    enable_file_watcher = true        daemon: watch storages for changes (inotify)
    delay_watcher_events = 4          seconds of quiet after a change before syncing (0-86400)
    rescan_interval = 3600            seconds between full rescans of watched storages (0: never;
                                      at most 604800)
    schedule_sync = \"0 */6 * * *\"     5-field cron (local time) for a periodic sync (unset: none)
    enable_service_discovery = true   find peers of the group with mDNS (UDP 5353)
    discovery_interfaces = [\"eth0\"]   interfaces for discovery (unset: every one that is up, has
                                      multicast and IPv4, but loopback)
    log_path = \"$HOME/.config/iron-carrier/iron-carrier.db\"
                                      this node's history (SQLite); its folder must be writable
    control_socket = \"PATH\"           the daemon's control socket (unset: see CONTROL SOCKET)
    encryption = true                 true: encrypted; \"a passphrase\" (≥ 12 characters): encrypted
                                      and only nodes knowing it connect; false: plain text
    max_parallel_transfers = 4        file transfers at once (1-64)
    [storages]                        NAME = \"PATH\", or NAME = { path = \"PATH\", ... } with:
        path = \"PATH\"                 required: the storage's directory
        enable_watcher = true         default: enable_file_watcher
        delay_watcher_events = 4      default: the top-level delay_watcher_events
    A .ignore file at a storage's root lists glob patterns (one a line) to leave out.

CONTROL SOCKET (how status and sync reach the daemon; mode 0600: only the daemon's user):
    control_socket if set; else the first of these the daemon can create (clients try the same):
    $XDG_RUNTIME_DIR/iron-carrier/NAME (when XDG_RUNTIME_DIR is set), /run/iron-carrier/NAME
    (root), NAME in log_path's folder. NAME is iron-carrier-PORT-HASH.sock: the port, and 8 hex
    digits computed from log_path (one daemon per database).

SIGNALS (daemon):
    SIGINT, SIGTERM     stop cleanly: a running session is abandoned and the peers told;
                        complete received files are kept
    SIGHUP              reload: read the config again; if it is valid, restart in place (same
                        PID, every setting applies; a running session is abandoned cleanly and
                        retried after the restart); if not, log the error and keep running

EXIT CODES:
    0   success
    1   the sync did not complete: no peer reachable (or none configured and none found by
        discovery), a configured peer not reached, a storage not synchronized with a
        connected peer that has it, or files failed (sync --wait: not synchronized)
    2   bad command line or configuration (the message names the key and line), or an
        unknown STORAGE; nothing done
    3   could not start: the port is in use, a daemon already runs with this config or database, ...
    4   no daemon running (status, sync)
";

/// What the user asked for.
#[derive(Debug, PartialEq, Eq)]
pub enum Command {
    Run,
    CheckConfig,
    /// Ask the running daemon what it is doing.
    Status {
        json: bool,
    },
    /// Ask the running daemon to synchronize now.
    Sync {
        storage: Option<String>,
        wait: bool,
    },
    Help,
    Version,
}

/// Validated command-line arguments.
#[derive(Debug, PartialEq, Eq)]
pub struct Args {
    pub command: Command,
    pub config: Option<PathBuf>,
    pub daemon: bool,
    /// -1 for `-q`, 0 by default, 1 to 3 for `-v`, `-vv`, `-vvv` (the level per mode:
    /// `logger::level_from_verbosity`).
    pub verbosity: i32,
    pub syslog: bool,
}

impl Args {
    /// A command that takes no options (help, version).
    fn bare(command: Command) -> Args {
        Args {
            command,
            config: None,
            daemon: false,
            verbosity: 0,
            syslog: false,
        }
    }
}

/// Parses `argv` (without the program name).
pub fn parse_args(argv: Vec<OsString>) -> Result<Args, String> {
    let mut pargs = pico_args::Arguments::from_vec(split_eq(argv));
    if pargs.contains(["-h", "--help"]) {
        return Ok(Args::bare(Command::Help));
    }
    if pargs.contains(["-V", "--version"]) {
        return Ok(Args::bare(Command::Version));
    }
    let config: Option<PathBuf> = pargs
        .opt_value_from_os_str(["-c", "--config"], |s| -> Result<PathBuf, String> {
            if s.is_empty() {
                Err("empty path".into())
            } else {
                Ok(PathBuf::from(s))
            }
        })
        .map_err(|e| format!("--config: {e}"))?;
    let daemon = pargs.contains(["-d", "--daemon"]);
    let syslog = pargs.contains("--syslog");
    // -v, -vv and -vvv, also repeated (-v -v), count their v's; -q is quiet.
    let mut vs = 0;
    for (flag, n) in VERBOSE_FLAGS {
        while pargs.contains(flag) {
            vs += n;
        }
    }
    let mut quiet = false;
    while pargs.contains(["-q", "--quiet"]) {
        quiet = true;
    }
    let verbosity = check_verbosity(vs, quiet)?;
    let json = pargs.contains("--json");
    let wait = pargs.contains("--wait");
    let sub = pargs
        .subcommand()
        .map_err(|e| format!("bad argument: {e}"))?;
    let command = match sub.as_deref() {
        None => Command::Run,
        Some("check-config") => Command::CheckConfig,
        Some("status") => Command::Status { json },
        Some("sync") => Command::Sync {
            storage: pargs
                .opt_free_from_str::<String>()
                .map_err(|e| format!("sync: bad STORAGE: {e}"))?,
            wait,
        },
        Some(other) => {
            return Err(format!(
                "unknown command or argument {other:?} (see --help)"
            ))
        }
    };
    if json && !matches!(command, Command::Status { .. }) {
        return Err("--json goes with status only".into());
    }
    if wait && !matches!(command, Command::Sync { .. }) {
        return Err("--wait goes with sync only".into());
    }
    let rest = pargs.finish();
    if let Some(extra) = rest.first() {
        return Err(format!(
            "unexpected argument {:?} (see --help)",
            extra.to_string_lossy()
        ));
    }
    if daemon && command != Command::Run {
        return Err("--daemon starts a daemon; it does not go with a command".into());
    }
    Ok(Args {
        command,
        config,
        daemon,
        verbosity,
        syslog,
    })
}

/// The verbose flags and how many v's each counts. Those past `-vvv` are here to be refused
/// with the reason (a longer run of v's is an unknown argument).
const VERBOSE_FLAGS: [(&str, i32); 9] = [
    ("-v", 1),
    ("--verbose", 1),
    ("-vv", 2),
    ("-vvv", 3),
    ("-vvvv", 4),
    ("-vvvvv", 5),
    ("-vvvvvv", 6),
    ("-vvvvvvv", 7),
    ("-vvvvvvvv", 8),
];

/// The verbosity (-1 for `-q`, 0 by default, 1 to 3) from the v's counted and `-q`.
fn check_verbosity(vs: i32, quiet: bool) -> Result<i32, String> {
    if quiet && vs > 0 {
        return Err(
            "-q and -v contradict each other: -q asks for warnings and errors only, -v for \
             more log lines; give one or the other"
                .into(),
        );
    }
    if vs > 3 {
        return Err(format!(
            "too many -v: {vs} given, at most 3 (-vvv: every trace line)"
        ));
    }
    Ok(if quiet { -1 } else { vs })
}

/// Turns `--config=PATH` into `--config PATH`. pico-args only splits on `=` for UTF-8
/// values, and a path need not be UTF-8.
fn split_eq(argv: Vec<OsString>) -> Vec<OsString> {
    use std::os::unix::ffi::{OsStrExt, OsStringExt};
    let mut out = Vec::with_capacity(argv.len() + 1);
    for arg in argv {
        let bytes = arg.as_bytes();
        match bytes.iter().position(|&b| b == b'=') {
            Some(i) if bytes.starts_with(b"--") => {
                out.push(OsString::from_vec(bytes[..i].to_vec()));
                out.push(OsString::from_vec(bytes[i + 1..].to_vec()));
            }
            _ => out.push(arg),
        }
    }
    out
}

/// Runs the program for `argv` (without the program name) and returns the exit code.
pub fn run(argv: Vec<OsString>) -> i32 {
    set_process_name();
    crate::mem::tune();
    let again = argv.clone();
    let args = match parse_args(argv) {
        Ok(a) => a,
        Err(msg) => {
            eprintln!("iron-carrier: {msg}");
            return exit::USAGE;
        }
    };
    match args.command {
        Command::Help => {
            print!("{HELP}");
            return exit::OK;
        }
        Command::Version => {
            println!("iron-carrier {}", env!("CARGO_PKG_VERSION"));
            return exit::OK;
        }
        Command::Run | Command::CheckConfig | Command::Status { .. } | Command::Sync { .. } => {}
    }
    let sink = if args.syslog {
        logger::Sink::Syslog
    } else {
        logger::Sink::Stderr
    };
    // A one-shot run has a person watching: quiet by default, with its progress shown
    // (unless -q; daemons never draw it).
    let one_shot = args.command == Command::Run && !args.daemon;
    logger::init(logger::level_from_verbosity(args.verbosity, one_shot), sink);
    crate::progress::enable(args.verbosity >= 0);
    let config = match load_config(args.config.as_deref()) {
        Ok(c) => c,
        Err(msg) => {
            eprintln!("iron-carrier: {msg}");
            return exit::USAGE;
        }
    };
    match &args.command {
        Command::Status { json } => return ask_daemon(&config, Request::Status { json: *json }),
        Command::Sync { storage, wait } => {
            if let Some(name) = storage {
                if !config.storages.iter().any(|s| &s.name == name) {
                    let known: Vec<&str> =
                        config.storages.iter().map(|s| s.name.as_str()).collect();
                    eprintln!(
                        "iron-carrier: no storage named {name:?} in {} (it has: {})",
                        config.source.display(),
                        known.join(", ")
                    );
                    return exit::USAGE;
                }
            }
            return ask_daemon(
                &config,
                Request::Sync {
                    storage: storage.clone(),
                    wait: *wait,
                },
            );
        }
        _ => {}
    }
    if args.command == Command::CheckConfig {
        let kept = crate::identity::kept(&config.log_path)
            .map(|id| (id, crate::identity::id_file(&config.log_path)));
        print!("{}", config.render(kept));
        // What a sync would refuse that parsing cannot see (.ignore files, log_path, port).
        let problems = crate::preflight::check(&config);
        for problem in &problems {
            eprintln!("iron-carrier: check-config: {problem}");
        }
        return if problems.is_empty() {
            exit::OK
        } else {
            exit::USAGE
        };
    }
    let mode = if args.daemon {
        Mode::Daemon
    } else {
        Mode::OneShot
    };
    match daemon::run(config, mode) {
        Ok(Outcome::Reload) => reexec(again),
        Ok(outcome) => {
            for line in summary(&outcome) {
                // Reasons and names in it come from peers: one line stays one line.
                println!("{}", logger::escape(&line));
            }
            exit_code(&outcome)
        }
        Err(e) => {
            eprintln!("iron-carrier: {e}");
            exit::STARTUP
        }
    }
}

/// `status` and `sync`: asks the daemon of `config` over its control socket, prints the
/// answer, and turns it into an exit code.
fn ask_daemon(config: &Config, req: Request) -> i32 {
    // A status is answered at once; a waited-for sync takes as long as its session.
    let timeout = match req {
        Request::Sync { wait: true, .. } => None,
        _ => Some(Duration::from_secs(30)),
    };
    let answer = match control::ask(&control::candidates(config), &req, timeout) {
        Ok(a) => a,
        Err(e @ control::AskError::NoDaemon(_)) => {
            eprintln!("iron-carrier: {e}");
            return exit::NO_DAEMON;
        }
        Err(e) => {
            eprintln!("iron-carrier: {e}");
            return exit::SYNC_FAILED;
        }
    };
    print!("{}", answer.body);
    if answer.head == "ok" {
        return exit::OK;
    }
    if let Some(code) = answer.head.strip_prefix("done ") {
        return match code.trim() {
            "0" => exit::OK,
            _ => exit::SYNC_FAILED,
        };
    }
    let why = answer.head.strip_prefix("error ").unwrap_or(&answer.head);
    eprintln!("iron-carrier: the daemon refused: {why}");
    exit::USAGE
}

fn exit_code(outcome: &Outcome) -> i32 {
    let ok = match outcome {
        Outcome::Run(report) => report.ok(),
        Outcome::Stopped | Outcome::Reload => true,
        Outcome::Interrupted | Outcome::Failed(_) => false,
    };
    if ok {
        exit::OK
    } else {
        exit::SYNC_FAILED
    }
}

/// The lines a one-shot run prints: one per storage, one per configured peer that was not
/// reached, and the bytes on the wire.
pub fn summary(outcome: &Outcome) -> Vec<String> {
    let report = match outcome {
        Outcome::Run(r) => r,
        Outcome::Failed(why) => return vec![why.clone()],
        Outcome::Interrupted | Outcome::Stopped | Outcome::Reload => return Vec::new(),
    };
    let mut lines = Vec::new();
    let reasons = |lines: &mut Vec<String>, lead: &str| {
        for (addr, why) in &report.unreached {
            lines.push(format!("{lead}{addr}: {why}"));
        }
    };
    match &report.problem {
        Some(RunProblem::NoPeerConfigured) => {
            lines.push(
                "no peer connected (no peers are configured: set `peers` in the config)".into(),
            );
            return lines;
        }
        Some(RunProblem::NoPeerFound { secs }) => {
            lines.push(format!(
                "no peer found: none are configured and no node of this group announced itself \
                 on the network within {secs} s (service discovery)"
            ));
            return lines;
        }
        Some(RunProblem::NoPeerConnected) => {
            let tried: Vec<&str> = report
                .unreached
                .iter()
                .map(|(a, _)| a.as_str())
                .chain(report.found.iter().map(|f| f.addr.as_str()))
                .collect();
            lines.push(format!("no peer reachable (tried {})", tried.join(", ")));
            reasons(&mut lines, "  ");
            for f in &report.found {
                if let Some(why) = &f.unreached {
                    lines.push(format!("  {} (discovered {}): {why}", f.addr, f.node));
                }
            }
            return lines;
        }
        None => {}
    }
    for s in &report.storages {
        let moved = moved_phrase(&s.moved);
        let names = |nodes: &[NodeId]| {
            nodes
                .iter()
                .map(NodeId::as_str)
                .collect::<Vec<_>>()
                .join(", ")
        };
        lines.push(match &s.state {
            StorageState::Synced => {
                format!("{}: synchronized with {} — {moved}", s.name, names(&s.with))
            }
            StorageState::NotShared => format!("{}: no connected peer has this storage", s.name),
            StorageState::Failed { missing, why } => {
                let why = why.as_ref().map(|w| format!(": {w}")).unwrap_or_default();
                let partly = if s.with.is_empty() {
                    String::new()
                } else {
                    format!(" (synchronized with {} — {moved})", names(&s.with))
                };
                format!(
                    "{}: not synchronized with {}{why}{partly}",
                    s.name,
                    names(missing)
                )
            }
        });
    }
    reasons(&mut lines, "not reached: ");
    if !report.found.is_empty() {
        let found: Vec<String> = report
            .found
            .iter()
            .map(|f| format!("{} at {}", f.node, f.addr))
            .collect();
        lines.push(format!("discovered: {}", found.join(", ")));
    }
    for f in report.found.iter() {
        if let Some(why) = &f.unreached {
            lines.push(format!(
                "discovered but not reached: {} at {}: {why}",
                f.node, f.addr
            ));
        }
    }
    lines.push(format!(
        "network: sent {} bytes, received {} bytes ({} / {})",
        report.sent,
        report.received,
        human_bytes(report.sent),
        human_bytes(report.received)
    ));
    lines
}

/// Names the process "iron-carrier" for ps, top, pgrep and start-stop-daemon: after a reload
/// the process runs from `/proc/self/exe`, which would otherwise make its name "exe".
fn set_process_name() {
    let name = b"iron-carrier\0";
    // SAFETY: PR_SET_NAME reads a NUL-terminated string of at most 16 bytes from the pointer;
    // `name` is 13 bytes including the NUL and lives for the call.
    unsafe { libc::prctl(libc::PR_SET_NAME, name.as_ptr()) };
}

/// Replaces this process with a fresh run of the same binary and arguments: a reload that
/// applies every setting, keeping the PID (init scripts and pidfiles stay right).
/// `/proc/self/exe` still works when the binary on disk was replaced by an upgrade.
fn reexec(argv: Vec<OsString>) -> i32 {
    use std::os::unix::process::CommandExt;
    let arg0 = std::env::args_os()
        .next()
        .unwrap_or_else(|| OsString::from("iron-carrier"));
    log::info!("reloading: restarting with the new configuration");
    let err = std::process::Command::new("/proc/self/exe")
        .arg0(arg0)
        .args(argv)
        .exec();
    eprintln!("iron-carrier: cannot restart for the reload: {err}");
    exit::STARTUP
}

fn load_config(path: Option<&std::path::Path>) -> Result<Config, String> {
    let path = match path {
        Some(p) => p.to_owned(),
        None => config::default_config_path().ok_or_else(|| {
            "no --config given and $HOME is not set, so the default config path is unknown"
                .to_owned()
        })?,
    };
    if !path.exists() {
        return Err(format!(
            "config file {} does not exist (create it, or pass --config PATH; see README)",
            path.display()
        ));
    }
    config::load(&path).map_err(|e| format!("config error: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(v: &[&str]) -> Result<Args, String> {
        parse_args(v.iter().map(OsString::from).collect())
    }

    #[test]
    fn parses_flags_and_commands() {
        let a = args(&["--config", "/x.toml", "--daemon", "-vv"]).unwrap();
        assert_eq!(a.command, Command::Run);
        assert_eq!(a.config, Some(PathBuf::from("/x.toml")));
        assert!(a.daemon);
        assert_eq!(a.verbosity, 2);
        let a = args(&["-q", "check-config", "--config=/y.toml"]).unwrap();
        assert_eq!(a.command, Command::CheckConfig);
        assert_eq!(a.verbosity, -1);
        assert_eq!(a.config, Some(PathBuf::from("/y.toml")));
        assert_eq!(args(&["-v", "-v"]).unwrap().verbosity, 2);
        assert_eq!(args(&["--version"]).unwrap().command, Command::Version);
        assert_eq!(args(&["-h"]).unwrap().command, Command::Help);
        assert!(args(&["--daemon", "--syslog"]).unwrap().syslog);
        assert!(!args(&["--daemon"]).unwrap().syslog);
    }

    #[test]
    fn verbosity_counts_vs_up_to_three_and_q_excludes_v() {
        let v = |a: &[&str]| args(a).map(|a| a.verbosity);
        assert_eq!(v(&[]), Ok(0));
        assert_eq!(v(&["-v"]), Ok(1));
        assert_eq!(v(&["--verbose"]), Ok(1));
        assert_eq!(v(&["-vv"]), Ok(2));
        assert_eq!(v(&["-vvv"]), Ok(3));
        assert_eq!(v(&["-v", "-vv"]), Ok(3));
        assert_eq!(v(&["-v", "-v", "-v"]), Ok(3));
        assert_eq!(v(&["-q"]), Ok(-1));
        assert_eq!(v(&["-q", "--quiet"]), Ok(-1));
        // A config file named like a flag is still the config file.
        assert_eq!(v(&["--config", "-v"]), Ok(0));
        for too_many in [
            &["-vvvv"][..],
            &["-v", "-v", "-v", "-v"],
            &["-vv", "-vv"],
            &["-vvvvvvvv"],
        ] {
            let e = v(too_many).unwrap_err();
            assert!(e.contains("at most 3"), "{too_many:?}: {e}");
        }
        for both in [&["-q", "-v"][..], &["-vvv", "--quiet"], &["-q", "-vvvv"]] {
            let e = v(both).unwrap_err();
            assert!(e.contains("-q and -v contradict"), "{both:?}: {e}");
        }
        // Longer runs of v's are not a flag at all.
        assert!(v(&["-vvvvvvvvv"]).is_err());
    }

    #[test]
    fn human_sizes() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(200 * 1024 * 1024), "200.0 MiB");
    }

    #[test]
    fn rejects_bad_arguments() {
        assert!(args(&["frobnicate"]).is_err());
        assert!(args(&["--config"]).is_err());
        assert!(args(&["--no-such-flag"]).is_err());
        assert!(args(&["check-config", "extra"]).is_err());
        assert!(args(&["check-config", "--daemon"]).is_err());
    }
}
