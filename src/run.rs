//! What a run is and what it achieved: the types that the command line, the wiring in
//! `daemon.rs` and the threads share. It sits below every thread module and imports none,
//! so nothing imports upwards.
//!
//! A one-shot run ends with a [`RunReport`]: structured data per storage (whom it was
//! synchronized with, files and bytes each way, why not) and per configured peer that was
//! not reached (why). The CLI formats it; a status report can show the same data.

use std::fmt;

use crate::model::NodeId;

/// How the process was invoked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Sync every storage once with the reachable peers, then exit.
    OneShot,
    /// Keep running until SIGINT or SIGTERM.
    Daemon,
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A one-shot run reached its end.
    Run(RunReport),
    /// A one-shot run was interrupted by a signal before its end.
    Interrupted,
    /// A daemon stopped on SIGINT or SIGTERM.
    Stopped,
    /// A daemon stopped for a reload (SIGHUP with a valid config): the caller restarts it
    /// in place.
    Reload,
    /// The sync thread could not start (a storage cannot be opened).
    Failed(String),
}

/// What a one-shot run achieved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunReport {
    /// Why nothing could be done at all, if so.
    pub problem: Option<RunProblem>,
    /// One entry per storage, in config order.
    pub storages: Vec<StorageReport>,
    /// Configured peers that were never reached during the run, with the last reason.
    pub unreached: Vec<(String, DialError)>,
    /// Nodes that discovery found (id, address), and why one was never connected, if so.
    /// Not reaching one does not fail the run: discovery promises nobody.
    pub found: Vec<Found>,
    /// Bytes this node put on and took off the wire.
    pub sent: u64,
    pub received: u64,
}

impl RunReport {
    /// Everything asked for was done: every storage shared with a connected or configured
    /// peer was synchronized with each of them.
    pub fn ok(&self) -> bool {
        self.problem.is_none()
            && self.unreached.is_empty()
            && self
                .storages
                .iter()
                .all(|s| !matches!(s.state, StorageState::Failed { .. }))
    }
}

/// A node that announced itself during a one-shot run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    pub node: NodeId,
    pub addr: String,
    /// `None`: connected during the run; otherwise the last reason it was not.
    pub unreached: Option<DialError>,
}

/// Why a one-shot run could do nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunProblem {
    /// No `peers` are configured and nothing else can find one.
    NoPeerConfigured,
    /// No peer connected within the wait (the configured ones are listed in `unreached`).
    NoPeerConnected,
    /// No `peers` are configured and no node of our group announced itself (discovery on)
    /// within the wait, which lasted `secs`.
    NoPeerFound { secs: u64 },
}

/// What a run did to one storage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StorageReport {
    pub name: String,
    pub state: StorageState,
    /// Peers a completed session synchronized it with.
    pub with: Vec<NodeId>,
    pub moved: Moved,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StorageState {
    /// Synchronized with every connected peer that has it.
    Synced,
    /// No connected peer has it.
    NotShared,
    /// Not synchronized with `missing`, connected peers that have it; `why` is the last
    /// reason a session gave.
    Failed {
        missing: Vec<NodeId>,
        why: Option<SyncError>,
    },
}

/// Files and bytes moved both ways, and files deleted, by a session or over a run's sessions:
/// what a run's summary, `sync --wait` and `status` report.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Moved {
    pub files_received: u64,
    pub bytes_received: u64,
    pub files_sent: u64,
    pub bytes_sent: u64,
    /// Files and directories deleted as planned.
    pub deleted: u64,
    /// Files that did not move (and were retried).
    pub failed: u64,
}

/// Over a run's sessions.
impl std::ops::AddAssign for Moved {
    fn add_assign(&mut self, s: Moved) {
        self.files_received += s.files_received;
        self.bytes_received += s.bytes_received;
        self.files_sent += s.files_sent;
        self.bytes_sent += s.bytes_sent;
        self.deleted += s.deleted;
        self.failed += s.failed;
    }
}

impl From<crate::proto::PartStats> for Moved {
    fn from(s: crate::proto::PartStats) -> Moved {
        Moved {
            files_received: s.files_received.into(),
            bytes_received: s.bytes_received,
            files_sent: s.files_sent.into(),
            bytes_sent: s.bytes_sent,
            deleted: s.deleted.into(),
            failed: s.failed.into(),
        }
    }
}

/// Why a storage was not synchronized, or not entirely. Typed so that a summary or a status
/// report can say why; formatted only at the edge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SyncError {
    /// This node could not scan the storage (the root unreadable, a bad `.ignore`).
    Scan(String),
    /// A participant or the leader went away during the session.
    PeerLost(NodeId),
    /// A peer ended the session (its scan failed, it shut down, it saw a violation).
    AbortedBy { node: NodeId, reason: String },
    /// The leader ended the session before this node's part was done.
    EndedEarly(NodeId),
    /// Nothing happened in the session for too long.
    Stalled,
    /// No progress for `secs` while `to` waited for this node: ended to let it in.
    Yielded { to: NodeId, secs: u64 },
    /// This node is shutting down.
    ShuttingDown,
    /// Files that did not arrive or could not be sent (I/O errors, lost senders, no space).
    FilesFailed(u32),
    /// The storage root is not the one synchronized before (its marker is missing or
    /// another, or it is on another file system): an unmounted disk must never read as
    /// "every file was deleted". Nothing is synchronized until it is back.
    Guard(String),
    /// The history database failed.
    History(String),
}

impl SyncError {
    /// A stable name for scripts (`status --json`).
    pub fn kind(&self) -> &'static str {
        match self {
            SyncError::Scan(_) => "scan",
            SyncError::PeerLost(_) => "peer-lost",
            SyncError::AbortedBy { .. } => "aborted-by-peer",
            SyncError::EndedEarly(_) => "ended-early",
            SyncError::Stalled => "stalled",
            SyncError::Yielded { .. } => "yielded",
            SyncError::ShuttingDown => "shutting-down",
            SyncError::FilesFailed(_) => "files-failed",
            SyncError::Guard(_) => "root-guard",
            SyncError::History(_) => "history",
        }
    }
}

impl fmt::Display for SyncError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SyncError::Scan(e) => write!(f, "cannot scan: {e}"),
            SyncError::PeerLost(n) => write!(f, "{n} disconnected"),
            SyncError::AbortedBy { node, reason } => {
                write!(f, "{node} aborted the session: {reason}")
            }
            SyncError::EndedEarly(n) => write!(f, "{n} ended the session early"),
            SyncError::Stalled => f.write_str("no progress for too long"),
            SyncError::Yielded { to, secs } => write!(
                f,
                "no progress for {secs} s while {to} waited: ended to let it synchronize"
            ),
            SyncError::ShuttingDown => f.write_str("shutting down"),
            SyncError::FilesFailed(n) => write!(f, "{n} file(s) failed"),
            SyncError::Guard(why) | SyncError::History(why) => f.write_str(why),
        }
    }
}

/// Why a peer could not be reached or was refused at the handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DialError {
    /// Name resolution, connect or the handshake's deadline failed.
    Unreachable(String),
    /// The peer uses this node's own node id.
    OwnNodeId(NodeId),
    /// The peer belongs to another group.
    OtherGroup {
        node: NodeId,
        ours: Option<String>,
        theirs: Option<String>,
    },
    /// The peer's handshake was not one we accept (another protocol or version).
    BadHandshake(String),
    /// The peer refused us, with its reason.
    RefusedByPeer(String),
    /// The peer speaks another protocol version (from its preamble).
    OtherVersion(u32),
    /// The peer's preamble is not Iron Carrier's (another program, or a version before 4).
    NotIronCarrier,
    /// The peer's group tag is not ours (its name is never sent in the clear).
    OtherGroupTag { ours: Option<String> },
    /// One side encrypts and the other does not, or one uses a passphrase and the other not.
    EncryptionMismatch {
        ours: &'static str,
        theirs: &'static str,
    },
    /// The handshake failed: another passphrase (or tampering). `by_peer`: the peer said so.
    WrongPassphrase { by_peer: bool },
}

fn group_name(g: &Option<String>) -> String {
    match g {
        Some(g) => format!("group {g:?}"),
        None => "the default group".to_owned(),
    }
}

impl fmt::Display for DialError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DialError::Unreachable(e) | DialError::BadHandshake(e) => f.write_str(e),
            DialError::OwnNodeId(n) => write!(
                f,
                "peer uses our own node id {:?} (node ids must be unique in a group: set node_id)",
                n.as_str()
            ),
            DialError::OtherGroup { node, ours, theirs } => write!(
                f,
                "group mismatch: we are in {}, peer {node} is in {}",
                group_name(ours),
                group_name(theirs)
            ),
            DialError::RefusedByPeer(r) => write!(f, "refused by the peer: {r}"),
            DialError::OtherVersion(v) => write!(
                f,
                "protocol mismatch: the peer speaks version {v}, we speak {} \
                 (every node of a group must run the same protocol, upgrade them together)",
                crate::proto::PROTOCOL_VERSION
            ),
            DialError::NotIronCarrier => f.write_str(
                "the peer does not speak Iron Carrier's protocol \
                 (another program, or a version before 4)",
            ),
            DialError::OtherGroupTag { ours } => write!(
                f,
                "group mismatch: we are in {}, the peer in another group",
                group_name(ours)
            ),
            DialError::EncryptionMismatch { ours, theirs } => write!(
                f,
                "encryption mismatch: we use {ours}, the peer uses {theirs} \
                 (set the same encryption on both)"
            ),
            DialError::WrongPassphrase { by_peer: false } => f.write_str(
                "handshake failed: the peer does not know our passphrase \
                 (or the handshake was altered on the way)",
            ),
            DialError::WrongPassphrase { by_peer: true } => f.write_str(
                "handshake refused by the peer: it does not know our passphrase \
                 (or the handshake was altered on the way)",
            ),
        }
    }
}

/// A failure to start (as opposed to a sync that did not complete).
#[derive(Debug)]
pub struct StartError(pub String);

impl fmt::Display for StartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for StartError {}
