//! What a running node says about itself: the [`Status`] that `iron-carrier status` shows,
//! as text for a person and as JSON for scripts (its format is documented in the README and
//! stable: fields are only ever added), and the [`Board`] it is assembled from.
//!
//! The board is shared memory, not a channel: `sync` writes what it knows of each storage
//! (totals, state, the last sync, progress, recent errors) at most a few times a second,
//! and whoever answers a status request or draws a progress line reads it. A request is
//! answered from the board alone, so a status never waits for a busy sync thread. Peers are
//! `net`'s to report: it adds them when it renders. Pure: no I/O, the time is passed in.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use crate::model::NodeId;
use crate::run::{Moved, SyncError};

/// The version of the JSON format (`"format"`): raised only if a field changes meaning or
/// goes away, never for an added one.
pub const JSON_FORMAT: u32 = 1;

/// Recent errors kept per storage: what went wrong lately, not a log.
pub const ERRORS_KEPT: usize = 8;

/// How a storage stands with its peers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncState {
    /// Its last session synchronized it with every connected peer that has it, and nothing
    /// changed since.
    InSync,
    /// A session runs on it now.
    Syncing,
    /// A change waits for a session (or a session is due).
    Pending,
    /// Its last session did not complete, or files failed; see the errors.
    Failed,
    /// No connected peer has it.
    NotShared,
    /// Its root cannot be used (not mounted, not the storage synchronized before).
    Unavailable,
}

impl SyncState {
    pub fn as_str(self) -> &'static str {
        match self {
            SyncState::InSync => "in-sync",
            SyncState::Syncing => "syncing",
            SyncState::Pending => "pending",
            SyncState::Failed => "failed",
            SyncState::NotShared => "not-shared",
            SyncState::Unavailable => "unavailable",
        }
    }
}

/// The last session that completed on a storage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LastSync {
    pub at: SystemTime,
    pub with: Vec<NodeId>,
    pub moved: Moved,
    /// Every participant completed its part without a failed file.
    pub clean: bool,
}

/// This node's part of the session running on a storage: whole files, and bytes of the
/// files in flight as far as they got. Totals grow while the plan arrives.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Progress {
    pub files_done: u64,
    pub files_total: u64,
    pub bytes_done: u64,
    pub bytes_total: u64,
    /// Bytes per second, over the last few seconds.
    pub rate: u64,
    /// Seconds since the session started.
    pub elapsed: u64,
}

impl Progress {
    /// Seconds left at the current rate, if there is a rate.
    pub fn eta(&self) -> Option<u64> {
        let left = self.bytes_total.saturating_sub(self.bytes_done);
        if left == 0 {
            return Some(0);
        }
        (self.rate > 0).then(|| left.div_ceil(self.rate))
    }
}

/// One thing that went wrong, and when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub at: SystemTime,
    pub error: SyncError,
}

/// What `sync` knows of one storage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StorageStatus {
    pub name: String,
    pub path: PathBuf,
    /// Files and their bytes as last recorded (a scan or a session).
    pub files: u64,
    pub bytes: u64,
    pub state: SyncState,
    /// Connected peers that have this storage.
    pub peers: Vec<NodeId>,
    pub last_sync: Option<LastSync>,
    pub progress: Option<Progress>,
    /// Oldest first, at most [`ERRORS_KEPT`].
    pub errors: VecDeque<Failure>,
}

impl StorageStatus {
    pub fn new(name: String, path: PathBuf) -> StorageStatus {
        StorageStatus {
            name,
            path,
            files: 0,
            bytes: 0,
            state: SyncState::NotShared,
            peers: Vec::new(),
            last_sync: None,
            progress: None,
            errors: VecDeque::new(),
        }
    }

    /// Keeps `error` among the recent ones (a repeat of the newest only updates its time).
    pub fn note_error(&mut self, at: SystemTime, error: SyncError) {
        if let Some(last) = self.errors.back_mut() {
            if last.error == error {
                last.at = at;
                return;
            }
        }
        if self.errors.len() == ERRORS_KEPT {
            self.errors.pop_front();
        }
        self.errors.push_back(Failure { at, error });
    }
}

/// The storages' side of the status, shared by `sync` (writes) and the readers.
#[derive(Clone, Default)]
pub struct Board(Arc<Mutex<Vec<StorageStatus>>>);

impl Board {
    pub fn new(storages: Vec<StorageStatus>) -> Board {
        Board(Arc::new(Mutex::new(storages)))
    }

    /// The storages, locked. A writer that panicked left them as they were: still worth
    /// showing.
    pub fn lock(&self) -> MutexGuard<'_, Vec<StorageStatus>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn snapshot(&self) -> Vec<StorageStatus> {
        self.lock().clone()
    }
}

/// What the node is, fixed at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeInfo {
    pub id: NodeId,
    pub group: Option<String>,
    pub version: &'static str,
    pub protocol: u16,
    pub started: SystemTime,
    /// `None`: this node does not listen.
    pub listen: Option<std::net::SocketAddr>,
    /// "off", "ephemeral" or "passphrase".
    pub encryption: &'static str,
    pub config: PathBuf,
}

/// A peer as `net` knows it: connected, configured, discovered, or any of these.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerStatus {
    /// `None`: a configured address never reached.
    pub node: Option<NodeId>,
    /// Where it is (connected) or where we dial it.
    pub address: Option<String>,
    pub connected: bool,
    pub configured: bool,
    pub discovered: bool,
    /// When a message from it last arrived.
    pub last_seen: Option<SystemTime>,
    /// Why the last attempt to reach it failed, while not connected.
    pub last_error: Option<String>,
}

/// Everything `status` shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    pub now: SystemTime,
    pub node: NodeInfo,
    pub peers: Vec<PeerStatus>,
    pub storages: Vec<StorageStatus>,
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// "3 min ago" style ages for the text form.
fn ago(now: SystemTime, t: SystemTime) -> String {
    let secs = now.duration_since(t).unwrap_or(Duration::ZERO).as_secs();
    format!("{} ago", duration(secs))
}

/// "1 h 02 min" style durations.
pub fn duration(secs: u64) -> String {
    match secs {
        0..=59 => format!("{secs} s"),
        60..=3599 => format!("{} min {:02} s", secs / 60, secs % 60),
        3600..=86_399 => format!("{} h {:02} min", secs / 3600, secs % 3600 / 60),
        _ => format!("{} d {:02} h", secs / 86_400, secs % 86_400 / 3600),
    }
}

/// "received N file(s), X; sent N file(s), X": how every summary (a run's, `sync`'s, the
/// status report's) says what a session moved, so that they read alike.
pub fn moved_phrase(m: &Moved) -> String {
    format!(
        "received {} file(s), {}; sent {} file(s), {}",
        m.files_received,
        human_bytes(m.bytes_received),
        m.files_sent,
        human_bytes(m.bytes_sent)
    )
}

/// "12.3 KiB" style sizes.
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

/// One line of progress: "12/40 files, 3.1 MiB of 10.0 MiB (31%), 2.0 MiB/s, 4 s left".
pub fn progress_line(p: &Progress) -> String {
    // By bytes; by files when they are all empty; 0 before anything is known.
    let pct = (p.bytes_done.min(p.bytes_total) * 100)
        .checked_div(p.bytes_total)
        .or_else(|| (p.files_done.min(p.files_total) * 100).checked_div(p.files_total))
        .unwrap_or(0);
    let mut s = format!(
        "{}/{} files, {} of {} ({pct}%)",
        p.files_done,
        p.files_total,
        human_bytes(p.bytes_done),
        human_bytes(p.bytes_total)
    );
    if p.rate > 0 {
        let _ = write!(s, ", {}/s", human_bytes(p.rate));
    }
    if let Some(eta) = p.eta().filter(|_| p.rate > 0) {
        let _ = write!(s, ", {} left", duration(eta));
    }
    s
}

/// A string as a JSON string literal.
fn json_str(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

fn json_opt_str(out: &mut String, s: Option<&str>) {
    match s {
        Some(s) => json_str(out, s),
        None => out.push_str("null"),
    }
}

fn json_names(out: &mut String, names: &[NodeId]) {
    out.push('[');
    for (i, n) in names.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        json_str(out, n.as_str());
    }
    out.push(']');
}

fn json_opt_time(out: &mut String, t: Option<SystemTime>) {
    match t {
        Some(t) => {
            let _ = write!(out, "{}", unix(t));
        }
        None => out.push_str("null"),
    }
}

impl Status {
    /// The JSON form (one line), documented in the README.
    pub fn to_json(&self) -> String {
        let mut o = String::with_capacity(1024);
        let n = &self.node;
        let _ = write!(
            o,
            "{{\"format\":{JSON_FORMAT},\"now\":{},\"node\":{{\"id\":",
            unix(self.now)
        );
        json_str(&mut o, n.id.as_str());
        o.push_str(",\"group\":");
        json_opt_str(&mut o, n.group.as_deref());
        o.push_str(",\"version\":");
        json_str(&mut o, n.version);
        let uptime = self.now.duration_since(n.started).unwrap_or(Duration::ZERO);
        let _ = write!(
            o,
            ",\"protocol\":{},\"started\":{},\"uptime_secs\":{},\"listen\":",
            n.protocol,
            unix(n.started),
            uptime.as_secs()
        );
        json_opt_str(&mut o, n.listen.map(|a| a.to_string()).as_deref());
        o.push_str(",\"encryption\":");
        json_str(&mut o, n.encryption);
        o.push_str(",\"config\":");
        json_str(&mut o, &n.config.to_string_lossy());
        o.push_str("},\"peers\":[");
        for (i, p) in self.peers.iter().enumerate() {
            if i > 0 {
                o.push(',');
            }
            o.push_str("{\"id\":");
            json_opt_str(&mut o, p.node.as_ref().map(NodeId::as_str));
            o.push_str(",\"address\":");
            json_opt_str(&mut o, p.address.as_deref());
            let _ = write!(
                o,
                ",\"connected\":{},\"configured\":{},\"discovered\":{},\"last_seen\":",
                p.connected, p.configured, p.discovered
            );
            json_opt_time(&mut o, p.last_seen);
            o.push_str(",\"last_error\":");
            json_opt_str(&mut o, p.last_error.as_deref());
            o.push('}');
        }
        o.push_str("],\"storages\":[");
        for (i, s) in self.storages.iter().enumerate() {
            if i > 0 {
                o.push(',');
            }
            o.push_str("{\"name\":");
            json_str(&mut o, &s.name);
            o.push_str(",\"path\":");
            json_str(&mut o, &s.path.to_string_lossy());
            let _ = write!(
                o,
                ",\"files\":{},\"bytes\":{},\"state\":\"{}\",\"in_sync\":{},\"peers\":",
                s.files,
                s.bytes,
                s.state.as_str(),
                s.state == SyncState::InSync
            );
            json_names(&mut o, &s.peers);
            o.push_str(",\"last_sync\":");
            match &s.last_sync {
                None => o.push_str("null"),
                Some(l) => {
                    let _ = write!(o, "{{\"at\":{},\"with\":", unix(l.at));
                    json_names(&mut o, &l.with);
                    let m = &l.moved;
                    let _ = write!(
                        o,
                        ",\"files_received\":{},\"bytes_received\":{},\"files_sent\":{},\
                         \"bytes_sent\":{},\"deleted\":{},\"failed\":{},\"clean\":{}}}",
                        m.files_received,
                        m.bytes_received,
                        m.files_sent,
                        m.bytes_sent,
                        m.deleted,
                        m.failed,
                        l.clean
                    );
                }
            }
            o.push_str(",\"progress\":");
            match &s.progress {
                None => o.push_str("null"),
                Some(p) => {
                    let _ = write!(
                        o,
                        "{{\"files_done\":{},\"files_total\":{},\"bytes_done\":{},\
                         \"bytes_total\":{},\"rate\":{},\"elapsed_secs\":{},\"eta_secs\":",
                        p.files_done, p.files_total, p.bytes_done, p.bytes_total, p.rate, p.elapsed
                    );
                    match p.eta().filter(|_| p.rate > 0) {
                        Some(e) => {
                            let _ = write!(o, "{e}}}");
                        }
                        None => o.push_str("null}"),
                    }
                }
            }
            o.push_str(",\"errors\":[");
            for (k, e) in s.errors.iter().enumerate() {
                if k > 0 {
                    o.push(',');
                }
                let _ = write!(
                    o,
                    "{{\"at\":{},\"kind\":\"{}\",\"message\":",
                    unix(e.at),
                    e.error.kind()
                );
                json_str(&mut o, &e.error.to_string());
                o.push('}');
            }
            o.push_str("]}");
        }
        o.push_str("]}\n");
        o
    }

    /// The text form, for a person.
    pub fn to_text(&self) -> String {
        let mut o = String::with_capacity(1024);
        let n = &self.node;
        let uptime = self.now.duration_since(n.started).unwrap_or(Duration::ZERO);
        let _ = writeln!(
            o,
            "node {} ({}), iron-carrier {} (protocol {}), up {}",
            n.id,
            n.group
                .as_deref()
                .map_or("default group".to_owned(), |g| format!("group {g}")),
            n.version,
            n.protocol,
            duration(uptime.as_secs())
        );
        let _ = writeln!(
            o,
            "listening on {}, encryption: {}",
            n.listen
                .map_or("nothing (dials only)".to_owned(), |a| a.to_string()),
            n.encryption
        );
        let _ = writeln!(o, "config: {}", n.config.display());
        let _ = writeln!(o);
        if self.peers.is_empty() {
            let _ = writeln!(o, "peers: none configured, connected or discovered");
        } else {
            let _ = writeln!(o, "peers:");
        }
        for p in &self.peers {
            let name = p.node.as_ref().map_or("?", NodeId::as_str);
            let mut how = Vec::new();
            if p.configured {
                how.push("configured");
            }
            if p.discovered {
                how.push("discovered");
            }
            let state = if p.connected {
                "connected"
            } else {
                "not connected"
            };
            let mut line = format!(
                "  {name} at {}: {state}",
                p.address.as_deref().unwrap_or("?")
            );
            if !how.is_empty() {
                let _ = write!(line, " ({})", how.join(", "));
            }
            if let Some(t) = p.last_seen {
                let _ = write!(line, ", last seen {}", ago(self.now, t));
            }
            if let (false, Some(e)) = (p.connected, &p.last_error) {
                let _ = write!(line, ", last error: {e}");
            }
            let _ = writeln!(o, "{line}");
        }
        for s in &self.storages {
            let _ = writeln!(o);
            let _ = writeln!(
                o,
                "storage {}: {} ({} files, {})",
                s.name,
                s.state.as_str(),
                s.files,
                human_bytes(s.bytes)
            );
            let _ = writeln!(o, "  path: {}", s.path.display());
            if !s.peers.is_empty() {
                let names: Vec<&str> = s.peers.iter().map(NodeId::as_str).collect();
                let _ = writeln!(o, "  shared with connected: {}", names.join(", "));
            }
            match &s.last_sync {
                Some(l) => {
                    let names: Vec<&str> = l.with.iter().map(NodeId::as_str).collect();
                    let m = &l.moved;
                    let _ = writeln!(
                        o,
                        "  last sync: {} with {}: {}; deleted {}{}",
                        ago(self.now, l.at),
                        names.join(", "),
                        moved_phrase(m),
                        m.deleted,
                        if m.failed > 0 {
                            format!("; {} failed", m.failed)
                        } else {
                            String::new()
                        }
                    );
                }
                None => {
                    let _ = writeln!(o, "  last sync: never since start");
                }
            }
            if let Some(p) = &s.progress {
                let _ = writeln!(o, "  in progress: {}", progress_line(p));
            }
            for e in s.errors.iter().rev() {
                let _ = writeln!(o, "  error {}: {}", ago(self.now, e.at), e.error);
            }
        }
        o
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: &str) -> NodeId {
        NodeId::new(id).unwrap()
    }

    fn sample() -> Status {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let mut s = StorageStatus::new("docs \"x\"".into(), PathBuf::from("/srv/docs"));
        s.files = 3;
        s.bytes = 4096;
        s.state = SyncState::Syncing;
        s.peers = vec![node("b")];
        s.last_sync = Some(LastSync {
            at: t0,
            with: vec![node("b")],
            moved: Moved {
                files_received: 2,
                ..Moved::default()
            },
            clean: true,
        });
        s.progress = Some(Progress {
            files_done: 1,
            files_total: 4,
            bytes_done: 1024,
            bytes_total: 4096,
            rate: 1024,
            elapsed: 1,
        });
        s.note_error(t0, SyncError::PeerLost(node("c")));
        s.note_error(t0 + Duration::from_secs(5), SyncError::PeerLost(node("c")));
        Status {
            now: t0 + Duration::from_secs(90),
            node: NodeInfo {
                id: node("a"),
                group: None,
                version: "1.0.0",
                protocol: 6,
                started: t0,
                listen: Some("127.0.0.1:25230".parse().unwrap()),
                encryption: "off",
                config: PathBuf::from("/etc/ic.toml"),
            },
            peers: vec![PeerStatus {
                node: Some(node("b")),
                address: Some("127.0.0.1:1".into()),
                connected: true,
                configured: true,
                discovered: false,
                last_seen: Some(t0),
                last_error: Some("line\nbreak".into()),
            }],
            storages: vec![s],
        }
    }

    #[test]
    fn json_escapes_and_keeps_its_fields() {
        let j = sample().to_json();
        assert!(
            j.ends_with("}\n") && !j[..j.len() - 1].contains('\n'),
            "{j}"
        );
        assert!(j.contains(r#""name":"docs \"x\"""#), "{j}");
        assert!(j.contains(r#""last_error":"line\nbreak""#), "{j}");
        assert!(j.contains(r#""uptime_secs":90"#), "{j}");
        assert!(j.contains(r#""eta_secs":3}"#), "{j}");
        assert!(j.contains(r#""state":"syncing","in_sync":false"#), "{j}");
        // A repeated error is one entry with the later time.
        assert_eq!(j.matches(r#""kind":"peer-lost""#).count(), 1, "{j}");
        assert!(j.contains(r#""at":1800000005,"kind""#), "{j}");
    }

    #[test]
    fn text_names_what_matters() {
        let t = sample().to_text();
        for needle in [
            "node a (default group)",
            "up 1 min 30 s",
            "b at 127.0.0.1:1: connected (configured)",
            "storage docs \"x\": syncing (3 files, 4.0 KiB)",
            "in progress: 1/4 files, 1.0 KiB of 4.0 KiB (25%), 1.0 KiB/s, 3 s left",
            "error 1 min 25 s ago: c disconnected",
        ] {
            assert!(t.contains(needle), "{needle:?} not in:\n{t}");
        }
    }

    #[test]
    fn errors_are_bounded() {
        let mut s = StorageStatus::new("x".into(), PathBuf::from("/x"));
        for k in 0..100 {
            s.note_error(SystemTime::UNIX_EPOCH, SyncError::FilesFailed(k));
        }
        assert_eq!(s.errors.len(), ERRORS_KEPT);
        assert_eq!(s.errors.back().unwrap().error, SyncError::FilesFailed(99));
    }
}
