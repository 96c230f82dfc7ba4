//! The control socket: where it lives, its small versioned request/response format, binding
//! it (refusing when another daemon answers there), and the client side that `status` and
//! `sync` use. Serving it is `net`'s (its poll loop, no thread per client).
//!
//! A request is one line: `iron-carrier-control/1 VERB[ ARG]\n`, at most [`MAX_REQUEST`]
//! bytes. The answer is a first line — `ok`, `done CODE` (the exit code of a waited-for
//! sync) or `error MESSAGE` — then a body, then the daemon closes the connection.
//!
//! The socket is only for the daemon's own user: it is created with mode 0600 (under a
//! umask, so there is no moment at which it is open to others), in a directory of mode 0700
//! when it makes one.

use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, FileTypeExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::config::Config;

/// The first word of every request: the format and its version.
pub const MAGIC: &str = "iron-carrier-control/1";
/// Longest request line, newline included. Storage names are short; anything longer is
/// garbage.
pub const MAX_REQUEST: usize = 1024;

/// What a client asks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    Status {
        json: bool,
    },
    /// Synchronize `storage` (all: `None`) now; `wait`: answer when that is done.
    Sync {
        storage: Option<String>,
        wait: bool,
    },
}

impl Request {
    /// The request's line, newline included.
    pub fn encode(&self) -> String {
        match self {
            Request::Status { json: false } => format!("{MAGIC} status\n"),
            Request::Status { json: true } => format!("{MAGIC} status-json\n"),
            Request::Sync { storage, wait } => {
                let verb = if *wait { "sync-wait" } else { "sync" };
                match storage {
                    Some(s) => format!("{MAGIC} {verb} {s}\n"),
                    None => format!("{MAGIC} {verb}\n"),
                }
            }
        }
    }

    /// Parses a request line (without its newline).
    pub fn parse(line: &[u8]) -> Result<Request, String> {
        let line = std::str::from_utf8(line).map_err(|_| "the request is not UTF-8".to_owned())?;
        let rest = match line.strip_prefix(MAGIC) {
            Some(r) => r,
            None => {
                return Err(format!(
                    "not a control request (expected {MAGIC:?} first: another version?)"
                ))
            }
        };
        let rest = rest
            .strip_prefix(' ')
            .ok_or_else(|| "no command in the request".to_owned())?;
        let (verb, arg) = match rest.split_once(' ') {
            Some((v, a)) => (v, Some(a)),
            None => (rest, None),
        };
        if arg.is_some_and(|a| a.is_empty() || a.chars().any(char::is_control)) {
            return Err("bad argument in the request".into());
        }
        let storage = arg.map(str::to_owned);
        match (verb, &storage) {
            ("status", None) => Ok(Request::Status { json: false }),
            ("status-json", None) => Ok(Request::Status { json: true }),
            ("sync", _) => Ok(Request::Sync {
                storage,
                wait: false,
            }),
            ("sync-wait", _) => Ok(Request::Sync {
                storage,
                wait: true,
            }),
            _ => Err(format!("unknown command {verb:?}")),
        }
    }
}

/// Where the daemon of `config` puts its socket, in order of preference: the configured
/// `control_socket`; else `$XDG_RUNTIME_DIR/iron-carrier/`, `/run/iron-carrier/` (root),
/// then next to the database. Named by the port and the database (one daemon per database;
/// the port alone is not enough where network namespaces share one file system), so that
/// a client with the same config finds it and a daemon with another does not collide.
pub fn candidates(config: &Config) -> Vec<PathBuf> {
    if let Some(p) = &config.control_socket {
        return vec![p.clone()];
    }
    let name = format!(
        "iron-carrier-{}-{:08x}.sock",
        config.port,
        fnv1a(config.log_path.as_os_str().as_encoded_bytes())
    );
    let mut v = Vec::new();
    if let Some(dir) = std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
        v.push(PathBuf::from(dir).join("iron-carrier").join(&name));
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    // Only where /run exists: on a router without it, making it would write to flash.
    if unsafe { libc::geteuid() } == 0 && Path::new("/run").is_dir() {
        v.push(PathBuf::from("/run/iron-carrier").join(&name));
    }
    let beside = config
        .log_path
        .parent()
        .map_or_else(|| PathBuf::from(&name), |d| d.join(&name));
    v.push(beside);
    v
}

/// 32-bit FNV-1a: a short, stable name for a path (not a defence against anything).
fn fnv1a(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5, |h: u32, &b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}

/// Why the socket could not be bound.
#[derive(Debug)]
pub enum BindError {
    /// A daemon answers on it: this one must not start.
    Running(PathBuf),
    /// No candidate could be used (each with why).
    Unusable(Vec<String>),
}

impl std::fmt::Display for BindError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BindError::Running(p) => write!(
                f,
                "another iron-carrier daemon is running with this configuration (its control \
                 socket {} answers); stop it first, or ask it with `iron-carrier status`",
                p.display()
            ),
            BindError::Unusable(why) => write!(f, "no usable control socket: {}", why.join("; ")),
        }
    }
}

/// Binds the control socket at the first usable candidate. A socket file nobody answers on
/// (a daemon that was killed) is replaced; one a daemon answers on refuses the start.
pub fn bind(candidates: &[PathBuf]) -> Result<(UnixListener, PathBuf), BindError> {
    let mut why = Vec::new();
    for path in candidates {
        match bind_one(path) {
            Ok(l) => return Ok((l, path.clone())),
            Err(BindOne::Running) => return Err(BindError::Running(path.clone())),
            Err(BindOne::Other(e)) => why.push(format!("{}: {e}", path.display())),
        }
    }
    Err(BindError::Unusable(why))
}

enum BindOne {
    Running,
    Other(String),
}

fn bind_one(path: &Path) -> Result<UnixListener, BindOne> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if !dir.is_dir() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|e| BindOne::Other(format!("cannot create its directory: {e}")))?;
        }
    }
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => {
            if UnixStream::connect(path).is_ok() {
                return Err(BindOne::Running);
            }
            std::fs::remove_file(path)
                .map_err(|e| BindOne::Other(format!("cannot remove the stale socket: {e}")))?;
        }
        Ok(_) => {
            return Err(BindOne::Other(
                "exists and is not a socket (not removed)".into(),
            ))
        }
        Err(_) => {}
    }
    // SAFETY: umask only swaps the process's file creation mask; no other thread creates
    // files at start-up, and the old mask is restored at once.
    let old = unsafe { libc::umask(0o177) };
    let bound = UnixListener::bind(path);
    // SAFETY: as above.
    unsafe { libc::umask(old) };
    let l = bound.map_err(|e| {
        if e.kind() == io::ErrorKind::AddrInUse {
            BindOne::Running
        } else {
            BindOne::Other(e.to_string())
        }
    })?;
    l.set_nonblocking(true)
        .map_err(|e| BindOne::Other(e.to_string()))?;
    Ok(l)
}

/// Why a client got no answer.
#[derive(Debug)]
pub enum AskError {
    /// No daemon answers at any candidate.
    NoDaemon(Vec<PathBuf>),
    /// The connection failed midway, or the answer was not one.
    Failed(String),
}

impl std::fmt::Display for AskError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AskError::NoDaemon(paths) => {
                let p: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
                write!(
                    f,
                    "no iron-carrier daemon is running with this configuration (no control \
                     socket answers at {}); start one with `iron-carrier --daemon`",
                    p.join(", ")
                )
            }
            AskError::Failed(e) => f.write_str(e),
        }
    }
}

/// The daemon's answer: its first line and the body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub head: String,
    pub body: String,
}

/// Connects to the first candidate a daemon answers on.
pub fn connect(candidates: &[PathBuf]) -> Result<UnixStream, AskError> {
    for p in candidates {
        match UnixStream::connect(p) {
            Ok(s) => return Ok(s),
            // A daemon of another user (root's, say): saying "none runs" would mislead.
            Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
                return Err(AskError::Failed(format!(
                    "the control socket {} is not yours ({e}): the daemon runs as another \
                     user; ask as that user (e.g. with sudo)",
                    p.display()
                )))
            }
            Err(_) => {}
        }
    }
    Err(AskError::NoDaemon(candidates.to_vec()))
}

/// Sends `req` and reads the whole answer. `timeout`: for the answer (`None`: wait as
/// long as it takes, for a waited-for sync).
pub fn ask(
    candidates: &[PathBuf],
    req: &Request,
    timeout: Option<Duration>,
) -> Result<Answer, AskError> {
    let mut s = connect(candidates)?;
    let failed = |e: io::Error| AskError::Failed(format!("control socket: {e}"));
    s.set_read_timeout(timeout).map_err(failed)?;
    s.set_write_timeout(Some(Duration::from_secs(10)))
        .map_err(failed)?;
    s.write_all(req.encode().as_bytes()).map_err(failed)?;
    let mut text = String::new();
    s.read_to_string(&mut text).map_err(|e| {
        if matches!(
            e.kind(),
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
        ) {
            AskError::Failed("the daemon did not answer in time".into())
        } else {
            failed(e)
        }
    })?;
    let (head, body) = match text.split_once('\n') {
        Some((h, b)) => (h.to_owned(), b.to_owned()),
        None => (text, String::new()),
    };
    if head.is_empty() {
        return Err(AskError::Failed(
            "the daemon closed the connection without an answer".into(),
        ));
    }
    Ok(Answer { head, body })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip() {
        for r in [
            Request::Status { json: false },
            Request::Status { json: true },
            Request::Sync {
                storage: None,
                wait: false,
            },
            Request::Sync {
                storage: Some("my photos".into()),
                wait: true,
            },
        ] {
            let line = r.encode();
            assert!(line.ends_with('\n'));
            assert_eq!(
                Request::parse(line.trim_end_matches('\n').as_bytes()),
                Ok(r)
            );
        }
    }

    #[test]
    fn names_are_stable() {
        // Clients of an older build must find a newer daemon's socket: the name is fixed.
        assert_eq!(fnv1a(b""), 0x811c_9dc5);
        assert_eq!(fnv1a(b"/var/lib/iron-carrier/iron-carrier.db"), 0x435f_0b91);
    }

    #[test]
    fn garbage_is_refused() {
        for bad in [
            &b""[..],
            b"status",
            b"iron-carrier-control/2 status",
            b"iron-carrier-control/1",
            b"iron-carrier-control/1 ",
            b"iron-carrier-control/1 status extra",
            b"iron-carrier-control/1 reboot",
            b"iron-carrier-control/1 sync ",
            b"iron-carrier-control/1 sync a\tb",
            b"\xff\xfe",
        ] {
            assert!(Request::parse(bad).is_err(), "{bad:?}");
        }
    }
}
