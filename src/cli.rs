//! The command line: raw arguments (pico-args) → validated [`Args`] → a run → an exit code.
//!
//! This is the only place that prints to stdout for the user and that decides exit codes.
//! It never panics on bad input: every problem becomes a one-line message on stderr and a
//! documented exit code.

use std::ffi::OsString;
use std::path::PathBuf;

use crate::config::{self, Config};
use crate::daemon;
use crate::logger;
use crate::model::NodeId;
use crate::run::{Mode, Outcome, RunProblem, StorageState};

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
}

pub const HELP: &str = "\
iron-carrier — peer-to-peer file synchronization for small Linux machines

USAGE:
    iron-carrier [OPTIONS]                 sync every storage once with reachable peers, then exit
    iron-carrier [OPTIONS] --daemon        keep running: serve peers and sync on changes and schedule
    iron-carrier [OPTIONS] check-config    validate the config and print the effective settings

OPTIONS:
    -c, --config PATH   config file (default: $HOME/.config/iron-carrier/config.toml)
    -d, --daemon        run as a daemon until SIGINT or SIGTERM; SIGHUP reloads the config
                        (a valid one restarts the daemon in place, same PID; an invalid one is
                        reported and ignored)
    -v, -vv             more log output (debug, trace)
    -q                  less log output (warnings and errors only)
        --syslog        log to syslog (/dev/log, facility daemon) instead of stderr
    -h, --help          print this help
    -V, --version       print the version

EXIT CODES:
    0   success
    1   the sync did not complete: no peer reachable (or none configured and none found by
        discovery), a configured peer not reached, a storage not synchronized with a
        connected peer that has it, or files failed
    2   bad command line or configuration (the message names the key and line); nothing done
    3   could not start (e.g. the port is in use)
";

/// What the user asked for.
#[derive(Debug, PartialEq, Eq)]
pub enum Command {
    Run,
    CheckConfig,
    Help,
    Version,
}

/// Validated command-line arguments.
#[derive(Debug, PartialEq, Eq)]
pub struct Args {
    pub command: Command,
    pub config: Option<PathBuf>,
    pub daemon: bool,
    /// -1 for `-q`, 0 by default, 1 for `-v`, 2 for `-vv`.
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
    let mut verbosity = 0;
    while pargs.contains("-vv") {
        verbosity += 2;
    }
    while pargs.contains(["-v", "--verbose"]) {
        verbosity += 1;
    }
    while pargs.contains(["-q", "--quiet"]) {
        verbosity -= 1;
    }
    let sub = pargs
        .subcommand()
        .map_err(|e| format!("bad argument: {e}"))?;
    let command = match sub.as_deref() {
        None => Command::Run,
        Some("check-config") => Command::CheckConfig,
        Some(other) => {
            return Err(format!(
                "unknown command or argument {other:?} (see --help)"
            ))
        }
    };
    let rest = pargs.finish();
    if let Some(extra) = rest.first() {
        return Err(format!(
            "unexpected argument {:?} (see --help)",
            extra.to_string_lossy()
        ));
    }
    if command == Command::CheckConfig && daemon {
        return Err("check-config does not take --daemon".into());
    }
    Ok(Args {
        command,
        config,
        daemon,
        verbosity,
        syslog,
    })
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
        Command::Run | Command::CheckConfig => {}
    }
    let sink = if args.syslog {
        logger::Sink::Syslog
    } else {
        logger::Sink::Stderr
    };
    logger::init(logger::level_from_verbosity(args.verbosity), sink);
    let config = match load_config(args.config.as_deref()) {
        Ok(c) => c,
        Err(msg) => {
            eprintln!("iron-carrier: {msg}");
            return exit::USAGE;
        }
    };
    if args.command == Command::CheckConfig {
        print!("{}", config.render());
        return exit::OK;
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
        let m = &s.moved;
        let moved = format!(
            "received {} file(s), {}; sent {} file(s), {}",
            m.files_received,
            human_bytes(m.bytes_received),
            m.files_sent,
            human_bytes(m.bytes_sent)
        );
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

/// "12.3 KiB" style sizes for the summary.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
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
