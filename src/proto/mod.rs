//! Wire protocol (version [`PROTOCOL_VERSION`]): the messages, grouped by who handles them, and their sizes on the wire.
//!
//! [`Message`] is layered by audience, so the compiler checks the routing:
//! - [`LinkMsg`] — the connection itself (handshake, keep-alive, refusal): `net`'s alone;
//! - [`PeerMsg`] — everything `net` hands up to `sync` once a handshake is done:
//!   - [`ElectionMsg`] — who leads a session (the core's election);
//!   - [`SessionMsg`] — a session's steps (the core's leader and follower);
//!   - [`TransferMsg`] — file data, signatures and their ends (the sync thread's sender and
//!     receiver).
//!
//! The layering is of the types only: every message keeps its own tag byte on the wire
//! ([`codec`]), so the protocol is unchanged. This module knows nothing of sockets, threads
//! or files.

mod codec;
#[cfg(test)]
mod tests;

pub use codec::{
    decode, decode_owned, encode_frame, file_data_head, frame_len, split_frame, FILE_DATA_HEAD,
};

use std::fmt;

use crate::history::{Entry, Record, Vv, MAX_VV};
use crate::model::{FileMeta, NameError, NodeId, PathError, RelPath, Version};

/// First bytes of every `Hello`: lets a node tell a peer of another protocol (or a port
/// scanner) from a peer with another version.
pub const MAGIC: [u8; 8] = *b"IRONCARR";
/// Version of this protocol. Peers must match exactly. 2: `SessionStart` names the
/// session's participants. 3: history — version vectors and tombstones in the index, which a
/// peer sends as its changes since the leader's copy; plans that delete, move, rename
/// conflict copies and record versions.
pub const PROTOCOL_VERSION: u16 = 6;
/// Bytes of the length prefix.
pub const FRAME_HEADER: usize = 4;
/// Largest file-data chunk a sender puts in one frame.
pub const CHUNK_SIZE: usize = 256 * 1024;
/// Files of this size or more are answered with `FileResume`, and what arrived of an
/// interrupted one is kept to be resumed; below it, sending again costs less.
pub const RESUME_MIN: u64 = 1 << 20;
/// Largest payload accepted: a full data chunk (or a batch of index entries) plus headroom.
/// Anything announcing more is a protocol violation and ends the connection.
pub const MAX_FRAME: usize = 1024 * 1024 + 4096;
/// Soft limit for batched messages (index and plan chunks), well under `MAX_FRAME`.
pub const BATCH_BYTES: usize = 256 * 1024;
/// Most storages one node may announce.
pub const MAX_STORAGES: usize = 1024;
/// Most receivers one `Send` plan item may name, and most node ids in one list.
pub const MAX_TARGETS: usize = 256;
/// Most nodes one version vector may name on the wire.
pub const MAX_VV_NODES: usize = MAX_VV;

pub type Digest = [u8; 32];

/// The first message on every connection, in both directions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    pub version: u16,
    pub node_id: NodeId,
    /// `None` is the default group.
    pub group: Option<String>,
    /// The port this node listens on (0 if it does not).
    pub listen_port: u16,
    /// The sender's clock when it said hello, in milliseconds since the Unix epoch: where
    /// no history decides (a first sync), the newer mtime keeps a path's name, so a clock
    /// far off is worth a warning.
    pub clock_ms: i64,
    /// Names of the storages this node has, sorted.
    pub storages: Vec<String>,
}

/// One step of a session plan, sent by the leader to a participant. Every step that
/// changes the participant's copy of a path names the entry it then records (with its
/// version vector), and what the path must still hold for the step to go ahead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PlanItem {
    /// Send this file, which must still match `meta`, to each node in `to`.
    Send { meta: FileMeta, to: Vec<SendTo> },
    /// Expect `entry`'s file from `from`. Commit it only if the local path still holds
    /// `expect` (`None`: nothing), the version it had when it was indexed.
    Receive {
        entry: Entry,
        from: NodeId,
        expect: Option<Version>,
    },
    /// Create this directory if it is missing, and record it.
    MakeDir { entry: Entry },
    /// Delete the path if it still holds `expect` (a directory: if nothing it holds is
    /// unknown), and record the tombstone `entry`.
    Delete {
        entry: Entry,
        expect: Option<Version>,
    },
    /// The path already has the right content (or none, for a tombstone): record `entry`.
    SetVersion {
        entry: Entry,
        expect: Option<Version>,
    },
    /// Rename the local file `from` (which must hold `expect`) to `entry`'s path, record it
    /// there and record `gone` at `from`: a moved file (the mover's tombstone) or a conflict
    /// copy (a tombstone with an empty version, linked to the copy: `from` then holds
    /// nothing until its winner arrives, and peers' copies of this index learn so).
    Rename {
        from: RelPath,
        expect: Version,
        entry: Entry,
        gone: Entry,
    },
    /// Replay a directory move: every entry this node knows at or below `from` goes to the
    /// same place below `to`, with `by`'s counter at `counter`.
    MoveDir {
        from: RelPath,
        to: RelPath,
        by: NodeId,
        counter: u64,
    },
}

/// One receiver of a `Send`, and the version its path holds now (a delta base), if any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendTo {
    pub node: NodeId,
    pub expect: Option<Version>,
}

/// What one participant did in a session, reported to the leader.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PartStats {
    pub files_sent: u32,
    pub bytes_sent: u64,
    pub files_received: u32,
    pub bytes_received: u64,
    /// Files and directories deleted as planned.
    pub deleted: u32,
    pub failed: u32,
}

/// Every message of protocol v2, by audience.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    Link(LinkMsg),
    Peer(PeerMsg),
}

/// The connection itself: handled by `net`, never seen by `sync`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkMsg {
    Hello(Hello),
    /// Sent just before closing a connection we refuse, so the peer can log why.
    Refuse {
        reason: String,
    },
    Ping,
    Pong,
}

/// What `net` delivers to `sync` from a peer whose handshake is done.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerMsg {
    Election(ElectionMsg),
    Session(SessionMsg),
    Transfer(TransferMsg),
}

/// Who leads a session: the core's election.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ElectionMsg {
    /// "I want to lead a session for `storage`; grant me your participation."
    Claim { ticket: u64, storage: String },
    /// "I will take part in your session `ticket`, and in no other until it ends."
    Grant { ticket: u64 },
    /// "Not now" (busy, or a claimant with priority is in the way).
    Deny { ticket: u64 },
    /// The claim `ticket` is withdrawn; a grant for it is void.
    Release { ticket: u64 },
}

/// A session's steps, between its leader and each participant: the core's session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionMsg {
    /// Leader → participants: the session granted under ticket `sid` starts, with
    /// `members` (every participant but the leader). A participant learns from it whom a
    /// finished session synchronized it with, not only its leader.
    Start {
        sid: u64,
        storage: String,
        members: Vec<NodeId>,
    },
    /// Either side: this session cannot go on (a storage that cannot be scanned, a
    /// participant lost, a protocol violation).
    Abort {
        sid: u64,
        reason: String,
    },
    /// Heartbeat of a long session: the leader is alive (to participants), or this
    /// participant is making progress (to the leader).
    Alive {
        sid: u64,
    },
    /// A participant's index: its id and last sequence number (what a leader's copy of it
    /// is compared with), live entries, digest, and the nodes it is connected to (so the
    /// leader only routes transfers over connections that exist).
    IndexSummary {
        sid: u64,
        index_id: u64,
        seq: u64,
        count: u64,
        digest: Digest,
        peers: Vec<NodeId>,
    },
    /// Leader → participant: send your index's changes after `since` (0: all of it).
    IndexRequest {
        sid: u64,
        since: u64,
    },
    IndexChunk {
        sid: u64,
        records: Vec<Record>,
    },
    /// The changes sent lead to sequence number `seq`.
    IndexEnd {
        sid: u64,
        seq: u64,
    },
    PlanChunk {
        sid: u64,
        items: Vec<PlanItem>,
    },
    PlanEnd {
        sid: u64,
    },
    /// Participant → leader: my part of the plan is registered; I accept my files now.
    PlanReady {
        sid: u64,
    },
    /// Leader → participants: every participant is ready; start sending.
    Go {
        sid: u64,
    },
    PartDone {
        sid: u64,
        stats: PartStats,
    },
    End {
        sid: u64,
        ok: bool,
    },
}

/// File data and its control, between any two participants: the sync thread's sender and
/// receiver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TransferMsg {
    FileStart {
        sid: u64,
        xid: u32,
        meta: FileMeta,
    },
    FileData {
        xid: u32,
        data: Vec<u8>,
    },
    FileEnd {
        xid: u32,
        hash: Digest,
    },
    /// Receiver → sender: the block signature of this receiver's current version of
    /// `path` (empty: no usable base, send the whole file).
    Signature {
        sid: u64,
        path: RelPath,
        sig: crate::delta::Signature,
    },
    /// Sender → receiver: append blocks `first..first+count` of your current version.
    FileCopy {
        xid: u32,
        first: u32,
        count: u32,
    },
    /// Sender → receiver: this transfer will not complete; drop what you have.
    FileAbort {
        xid: u32,
        reason: String,
    },
    /// Receiver → sender: stop sending this transfer; I will not commit it.
    FileReject {
        xid: u32,
        reason: String,
    },
    /// Receiver → sender, right after the `FileStart` of a file of 1 MiB or more: I kept the
    /// first `offset` bytes of this very version from an interrupted transfer (0: nothing);
    /// you may skip them. A sender streaming the file to this receiver alone waits for it
    /// (10 s at most); one that cannot skip (a stream shared by several receivers, a delta)
    /// sends everything.
    FileResume {
        xid: u32,
        offset: u64,
    },
    /// Sender → receiver, in the stream: the data that follows starts at `offset`; take
    /// the bytes before it from what you kept. Only after a `FileResume` offering at least
    /// `offset`.
    FileSkip {
        xid: u32,
        offset: u64,
    },
}

impl From<LinkMsg> for Message {
    fn from(m: LinkMsg) -> Message {
        Message::Link(m)
    }
}

impl From<PeerMsg> for Message {
    fn from(m: PeerMsg) -> Message {
        Message::Peer(m)
    }
}

impl From<ElectionMsg> for PeerMsg {
    fn from(m: ElectionMsg) -> PeerMsg {
        PeerMsg::Election(m)
    }
}

impl From<SessionMsg> for PeerMsg {
    fn from(m: SessionMsg) -> PeerMsg {
        PeerMsg::Session(m)
    }
}

impl From<TransferMsg> for PeerMsg {
    fn from(m: TransferMsg) -> PeerMsg {
        PeerMsg::Transfer(m)
    }
}

impl From<ElectionMsg> for Message {
    fn from(m: ElectionMsg) -> Message {
        Message::Peer(m.into())
    }
}

impl From<SessionMsg> for Message {
    fn from(m: SessionMsg) -> Message {
        Message::Peer(m.into())
    }
}

impl From<TransferMsg> for Message {
    fn from(m: TransferMsg) -> Message {
        Message::Peer(m.into())
    }
}

impl Message {
    /// The message's name on the wire, for log lines.
    pub fn name(&self) -> &'static str {
        match self {
            Message::Link(m) => m.name(),
            Message::Peer(m) => m.name(),
        }
    }
}

impl LinkMsg {
    pub fn name(&self) -> &'static str {
        match self {
            LinkMsg::Hello(_) => "Hello",
            LinkMsg::Refuse { .. } => "Refuse",
            LinkMsg::Ping => "Ping",
            LinkMsg::Pong => "Pong",
        }
    }
}

impl PeerMsg {
    pub fn name(&self) -> &'static str {
        match self {
            PeerMsg::Election(m) => m.name(),
            PeerMsg::Session(m) => m.name(),
            PeerMsg::Transfer(m) => m.name(),
        }
    }
}

impl ElectionMsg {
    pub fn name(&self) -> &'static str {
        match self {
            ElectionMsg::Claim { .. } => "Claim",
            ElectionMsg::Grant { .. } => "Grant",
            ElectionMsg::Deny { .. } => "Deny",
            ElectionMsg::Release { .. } => "Release",
        }
    }
}

impl SessionMsg {
    pub fn name(&self) -> &'static str {
        match self {
            SessionMsg::Start { .. } => "SessionStart",
            SessionMsg::Abort { .. } => "SessionAbort",
            SessionMsg::Alive { .. } => "SessionAlive",
            SessionMsg::IndexSummary { .. } => "IndexSummary",
            SessionMsg::IndexRequest { .. } => "IndexRequest",
            SessionMsg::IndexChunk { .. } => "IndexChunk",
            SessionMsg::IndexEnd { .. } => "IndexEnd",
            SessionMsg::PlanChunk { .. } => "PlanChunk",
            SessionMsg::PlanEnd { .. } => "PlanEnd",
            SessionMsg::PlanReady { .. } => "PlanReady",
            SessionMsg::Go { .. } => "Go",
            SessionMsg::PartDone { .. } => "PartDone",
            SessionMsg::End { .. } => "SessionEnd",
        }
    }
}

impl TransferMsg {
    pub fn name(&self) -> &'static str {
        match self {
            TransferMsg::FileStart { .. } => "FileStart",
            TransferMsg::FileData { .. } => "FileData",
            TransferMsg::FileEnd { .. } => "FileEnd",
            TransferMsg::Signature { .. } => "Signature",
            TransferMsg::FileCopy { .. } => "FileCopy",
            TransferMsg::FileAbort { .. } => "FileAbort",
            TransferMsg::FileReject { .. } => "FileReject",
            TransferMsg::FileResume { .. } => "FileResume",
            TransferMsg::FileSkip { .. } => "FileSkip",
        }
    }
}

/// Why a frame was rejected. Every variant ends the connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    FrameTooLarge(usize),
    EmptyFrame,
    Truncated(&'static str),
    TrailingBytes(usize),
    UnknownTag(u8),
    BadUtf8(&'static str),
    BadPath(PathError, String),
    BadName(&'static str, NameError),
    BadKind(u8),
    BadMagic,
    TooMany(&'static str, u64),
    Invalid(&'static str),
    /// A peer of another protocol version (in its hello).
    Version(u16),
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::FrameTooLarge(n) => {
                write!(f, "frame of {n} bytes announced (limit {MAX_FRAME})")
            }
            DecodeError::EmptyFrame => f.write_str("empty frame"),
            DecodeError::Truncated(what) => write!(f, "truncated frame while reading {what}"),
            DecodeError::TrailingBytes(n) => write!(f, "{n} unexpected bytes after the message"),
            DecodeError::UnknownTag(t) => write!(f, "unknown message tag 0x{t:02x}"),
            DecodeError::BadUtf8(what) => write!(f, "{what} is not UTF-8"),
            DecodeError::BadPath(e, p) => write!(f, "invalid path {p:?}: {e}"),
            DecodeError::BadName(what, e) => write!(f, "invalid {what}: {e}"),
            DecodeError::BadKind(k) => write!(f, "invalid entry kind {k}"),
            DecodeError::BadMagic => f.write_str("not an iron-carrier peer (bad magic)"),
            DecodeError::TooMany(what, n) => write!(f, "too many {what}: {n}"),
            DecodeError::Invalid(what) => f.write_str(what),
            DecodeError::Version(v) => write!(
                f,
                "peer speaks {} protocol version ({v}; this node speaks {PROTOCOL_VERSION}: \
                 every node of a group must run the same protocol, upgrade them together)",
                if *v > PROTOCOL_VERSION {
                    "a newer"
                } else {
                    "an older"
                }
            ),
        }
    }
}

impl std::error::Error for DecodeError {}

// ---------------------------------------------------------------------------------------
// Sizes on the wire: the core batches by them, so they live here, next to the encoding
// they must match (the tests compare them with real encodings).

/// Encoded size of a name (node id, storage name) or path: a u16 length and the bytes.
fn str_len(s: &str) -> usize {
    2 + s.len()
}

/// Encoded size of a version (absent, or size and mtime).
fn version_len(v: Option<Version>) -> usize {
    1 + if v.is_some() { 16 } else { 0 }
}

/// Encoded size of one index entry's metadata.
pub fn meta_len(m: &FileMeta) -> usize {
    str_len(m.path.as_str()) + 1 + 8 + 8 + 4
}

/// Encoded size of a version vector.
pub fn vv_len(vv: &Vv) -> usize {
    1 + vv
        .pairs()
        .iter()
        .map(|(n, _)| str_len(n.as_str()) + 8)
        .sum::<usize>()
}

/// Encoded size of an entry with its history.
pub fn entry_len(e: &Entry) -> usize {
    meta_len(&e.meta)
        + 1
        + 1
        + if e.hash.is_some() { 32 } else { 0 }
        + vv_len(&e.vv)
        + str_len(e.by.as_str())
        + 1
        + e.link.as_ref().map_or(0, |l| str_len(l.as_str()))
}

/// Encoded size of one record of an index.
pub fn record_len(r: &Record) -> usize {
    match r {
        Record::Entry(e) => 1 + entry_len(e),
        Record::MovePrefix { from, to, by, .. } => {
            1 + str_len(from.as_str()) + str_len(to.as_str()) + str_len(by.as_str()) + 8
        }
    }
}

/// Encoded size of one plan item.
pub fn plan_item_len(item: &PlanItem) -> usize {
    1 + match item {
        PlanItem::Send { meta, to } => {
            meta_len(meta)
                + 4
                + to.iter()
                    .map(|t| str_len(t.node.as_str()) + version_len(t.expect))
                    .sum::<usize>()
        }
        PlanItem::Receive {
            entry,
            from,
            expect,
        } => entry_len(entry) + str_len(from.as_str()) + version_len(*expect),
        PlanItem::MakeDir { entry } => entry_len(entry),
        PlanItem::Delete { entry, expect } | PlanItem::SetVersion { entry, expect } => {
            entry_len(entry) + version_len(*expect)
        }
        PlanItem::Rename {
            from,
            expect,
            entry,
            gone,
        } => {
            str_len(from.as_str()) + version_len(Some(*expect)) + entry_len(entry) + entry_len(gone)
        }
        PlanItem::MoveDir { from, to, by, .. } => {
            str_len(from.as_str()) + str_len(to.as_str()) + str_len(by.as_str()) + 8
        }
    }
}

/// Splits `items` into messages of at most [`BATCH_BYTES`] each by `size` (at least one
/// item each, so an item larger than the budget still goes out alone).
pub fn batches<T>(items: Vec<T>, size: impl Fn(&T) -> usize) -> Vec<Vec<T>> {
    let mut out = Vec::new();
    let mut cur = Vec::new();
    let mut bytes = 0;
    for item in items {
        let n = size(&item);
        if !cur.is_empty() && bytes + n > BATCH_BYTES {
            out.push(std::mem::take(&mut cur));
            bytes = 0;
        }
        bytes += n;
        cur.push(item);
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}
