//! Wire protocol v2: frames and messages, encoded and decoded with no I/O.
//!
//! A frame is a 4-byte big-endian payload length followed by the payload; the payload is a
//! one-byte tag and the message's fields. The codec is hand-written (see ARCHITECTURE.md for
//! why): decoding never panics, checks every length and count against the bytes actually
//! present before using it, never allocates more than a small constant times the frame it
//! is decoding, and turns every path into a [`RelPath`] or rejects the whole frame.
//!
//! This module knows nothing of sockets, threads or files.

use std::fmt;

use crate::model::{
    validate_name, validate_storage_name, EntryKind, FileMeta, NameError, NodeId, PathError,
    RelPath, MODE_MASK,
};

/// First bytes of every `Hello`: lets a node tell a peer of another protocol (or a port
/// scanner) from a peer with another version.
pub const MAGIC: [u8; 8] = *b"IRONCARR";
/// Version of this protocol. Peers must match exactly. 2: `SessionStart` names the
/// session's participants.
pub const PROTOCOL_VERSION: u16 = 2;
/// Bytes of the length prefix.
pub const FRAME_HEADER: usize = 4;
/// Largest file-data chunk a sender puts in one frame.
pub const CHUNK_SIZE: usize = 256 * 1024;
/// Largest payload accepted: a full data chunk (or a batch of index entries) plus headroom.
/// Anything announcing more is a protocol violation and ends the connection.
pub const MAX_FRAME: usize = 1024 * 1024 + 4096;
/// Soft limit for batched messages (index and plan chunks), well under `MAX_FRAME`.
pub const BATCH_BYTES: usize = 256 * 1024;
/// Most storages one node may announce.
pub const MAX_STORAGES: usize = 1024;
/// Most receivers one `Send` plan item may name.
pub const MAX_TARGETS: usize = 256;

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
    /// Names of the storages this node has, sorted.
    pub storages: Vec<String>,
}

/// One step of a session plan, sent by the leader to a participant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PlanItem {
    /// Send this file, which must still match `meta`, to each node in `to`.
    Send { meta: FileMeta, to: Vec<SendTo> },
    /// Expect this file from `from`. Commit it only if the local path is still as it was
    /// indexed (`expect`: `None` = absent, `Some((size, mtime_ns))` = that file).
    Receive {
        meta: FileMeta,
        from: NodeId,
        expect: Option<(u64, i64)>,
    },
    /// Create this directory if it is missing.
    MakeDir { path: RelPath, mode: u32 },
}

/// One receiver of a `Send`, and the version it has now (a delta base), if any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendTo {
    pub node: NodeId,
    pub old: Option<(u64, i64)>,
}

/// What one participant did in a session, reported to the leader.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PartStats {
    pub files_sent: u32,
    pub bytes_sent: u64,
    pub files_received: u32,
    pub bytes_received: u64,
    pub failed: u32,
}

/// Every message of protocol v2.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    Hello(Hello),
    /// Sent just before closing a connection we refuse, so the peer can log why.
    Refuse {
        reason: String,
    },
    Ping,
    Pong,
    /// Election: "I want to lead a session for `storage`; grant me your participation."
    Claim {
        ticket: u64,
        storage: String,
    },
    /// Election: "I will take part in your session `ticket`, and in no other until it ends."
    Grant {
        ticket: u64,
    },
    /// Election: "not now" (busy, or a claimant with priority is in the way).
    Deny {
        ticket: u64,
    },
    /// Election: the claim `ticket` is withdrawn; a grant for it is void.
    Release {
        ticket: u64,
    },
    /// Leader → participants: the session granted under ticket `sid` starts, with
    /// `members` (every participant but the leader). A participant learns from it whom a
    /// finished session synchronized it with, not only its leader.
    SessionStart {
        sid: u64,
        storage: String,
        members: Vec<NodeId>,
    },
    /// Either side: this session cannot go on (a storage that cannot be scanned, a
    /// participant lost, a protocol violation).
    SessionAbort {
        sid: u64,
        reason: String,
    },
    /// Heartbeat of a long session: the leader is alive (to participants), or this
    /// participant is making progress (to the leader).
    SessionAlive {
        sid: u64,
    },
    /// A participant's index digest, and the nodes it is connected to (so the leader only
    /// routes transfers over connections that exist).
    IndexSummary {
        sid: u64,
        count: u64,
        digest: Digest,
        peers: Vec<NodeId>,
    },
    IndexRequest {
        sid: u64,
    },
    IndexChunk {
        sid: u64,
        entries: Vec<FileMeta>,
    },
    IndexEnd {
        sid: u64,
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
    SessionEnd {
        sid: u64,
        ok: bool,
    },
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
}

mod tag {
    pub const HELLO: u8 = 0x01;
    pub const REFUSE: u8 = 0x02;
    pub const PING: u8 = 0x03;
    pub const PONG: u8 = 0x04;
    pub const CLAIM: u8 = 0x10;
    pub const SESSION_START: u8 = 0x11;
    pub const GRANT: u8 = 0x12;
    pub const INDEX_SUMMARY: u8 = 0x13;
    pub const INDEX_REQUEST: u8 = 0x14;
    pub const INDEX_CHUNK: u8 = 0x15;
    pub const INDEX_END: u8 = 0x16;
    pub const PLAN_CHUNK: u8 = 0x17;
    pub const PLAN_END: u8 = 0x18;
    pub const PART_DONE: u8 = 0x19;
    pub const SESSION_END: u8 = 0x1A;
    pub const SESSION_ABORT: u8 = 0x1B;
    pub const DENY: u8 = 0x1C;
    pub const RELEASE: u8 = 0x1D;
    pub const PLAN_READY: u8 = 0x1E;
    pub const GO: u8 = 0x1F;
    pub const SESSION_ALIVE: u8 = 0x25;
    pub const FILE_START: u8 = 0x20;
    pub const FILE_DATA: u8 = 0x21;
    pub const FILE_END: u8 = 0x22;
    pub const FILE_ABORT: u8 = 0x23;
    pub const FILE_REJECT: u8 = 0x24;
    pub const SIGNATURE: u8 = 0x26;
    pub const FILE_COPY: u8 = 0x27;
}

impl Message {
    /// Short name for log lines.
    pub fn name(&self) -> &'static str {
        match self {
            Message::Hello(_) => "Hello",
            Message::Refuse { .. } => "Refuse",
            Message::Ping => "Ping",
            Message::Pong => "Pong",
            Message::Claim { .. } => "Claim",
            Message::Grant { .. } => "Grant",
            Message::Deny { .. } => "Deny",
            Message::Release { .. } => "Release",
            Message::SessionStart { .. } => "SessionStart",
            Message::SessionAbort { .. } => "SessionAbort",
            Message::SessionAlive { .. } => "SessionAlive",
            Message::IndexSummary { .. } => "IndexSummary",
            Message::IndexRequest { .. } => "IndexRequest",
            Message::IndexChunk { .. } => "IndexChunk",
            Message::IndexEnd { .. } => "IndexEnd",
            Message::PlanChunk { .. } => "PlanChunk",
            Message::PlanEnd { .. } => "PlanEnd",
            Message::PlanReady { .. } => "PlanReady",
            Message::Go { .. } => "Go",
            Message::PartDone { .. } => "PartDone",
            Message::SessionEnd { .. } => "SessionEnd",
            Message::FileStart { .. } => "FileStart",
            Message::FileData { .. } => "FileData",
            Message::FileEnd { .. } => "FileEnd",
            Message::FileAbort { .. } => "FileAbort",
            Message::FileReject { .. } => "FileReject",
            Message::Signature { .. } => "Signature",
            Message::FileCopy { .. } => "FileCopy",
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
        }
    }
}

impl std::error::Error for DecodeError {}

// ---------------------------------------------------------------------------------------
// Framing

/// Looks for one complete frame at the start of `buf`. Returns the payload range and the
/// number of bytes the frame occupies, `Ok(None)` if more bytes are needed, or an error as
/// soon as the length prefix is out of bounds (before any of the body arrives).
pub fn split_frame(buf: &[u8]) -> Result<Option<(std::ops::Range<usize>, usize)>, DecodeError> {
    let Some(header) = buf.get(..FRAME_HEADER) else {
        return Ok(None);
    };
    let len = u32::from_be_bytes([header[0], header[1], header[2], header[3]]) as usize;
    if len > MAX_FRAME {
        return Err(DecodeError::FrameTooLarge(len));
    }
    if len == 0 {
        return Err(DecodeError::EmptyFrame);
    }
    let end = FRAME_HEADER + len;
    if buf.len() < end {
        return Ok(None);
    }
    Ok(Some((FRAME_HEADER..end, end)))
}

/// Appends `msg` as one frame to `out`.
pub fn encode_frame(msg: &Message, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&[0, 0, 0, 0]);
    encode_payload(msg, out);
    let len = (out.len() - start - FRAME_HEADER) as u32;
    out[start..start + FRAME_HEADER].copy_from_slice(&len.to_be_bytes());
}

/// Bytes before the data in a `FileData` frame: length prefix, tag, transfer id, data length.
pub const FILE_DATA_HEAD: usize = FRAME_HEADER + 1 + 4 + 4;

/// The first [`FILE_DATA_HEAD`] bytes of a `FileData { xid, data }` frame with `len` bytes of
/// data: a sender reads the data right after them into the same buffer and hands the whole
/// frame to `net`, which writes it as it is (no copy into a message, none into a write
/// buffer). The bytes are exactly what [`encode_frame`] would produce.
pub fn file_data_head(xid: u32, len: usize) -> [u8; FILE_DATA_HEAD] {
    let mut h = [0u8; FILE_DATA_HEAD];
    h[..4].copy_from_slice(&((FILE_DATA_HEAD - FRAME_HEADER + len) as u32).to_be_bytes());
    h[4] = tag::FILE_DATA;
    h[5..9].copy_from_slice(&xid.to_be_bytes());
    h[9..13].copy_from_slice(&(len as u32).to_be_bytes());
    h
}

/// Size of `msg` as a frame, without encoding it twice for the common big case.
pub fn frame_len(msg: &Message) -> usize {
    match msg {
        Message::FileData { data, .. } => FILE_DATA_HEAD + data.len(),
        other => {
            let mut v = Vec::new();
            encode_payload(other, &mut v);
            FRAME_HEADER + v.len()
        }
    }
}

// ---------------------------------------------------------------------------------------
// Encoding

struct Enc<'a>(&'a mut Vec<u8>);

impl Enc<'_> {
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn u16(&mut self, v: u16) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }
    fn i64(&mut self, v: i64) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }
    fn bool(&mut self, v: bool) {
        self.u8(u8::from(v));
    }
    /// Strings are short by construction (names ≤ 64 bytes, paths ≤ 4096, reasons are
    /// truncated here), so a u16 length always fits.
    fn str(&mut self, s: &str) {
        let s = truncate_utf8(s, u16::MAX as usize);
        self.u16(s.len() as u16);
        self.0.extend_from_slice(s.as_bytes());
    }
    fn bytes(&mut self, b: &[u8]) {
        self.u32(b.len() as u32);
        self.0.extend_from_slice(b);
    }
    fn nodes(&mut self, nodes: &[NodeId]) {
        self.count(nodes.len());
        for n in nodes {
            self.str(n.as_str());
        }
    }
    fn count(&mut self, n: usize) {
        self.u32(n as u32);
    }
    /// An optional (size, mtime) version.
    fn version(&mut self, v: Option<(u64, i64)>) {
        match v {
            None => self.u8(0),
            Some((size, mtime)) => {
                self.u8(1);
                self.u64(size);
                self.i64(mtime);
            }
        }
    }
    fn plan_item(&mut self, item: &PlanItem) {
        match item {
            PlanItem::Send { meta, to } => {
                self.u8(0);
                self.meta(meta);
                self.count(to.len());
                for t in to {
                    self.str(t.node.as_str());
                    self.version(t.old);
                }
            }
            PlanItem::Receive { meta, from, expect } => {
                self.u8(1);
                self.meta(meta);
                self.str(from.as_str());
                self.version(*expect);
            }
            PlanItem::MakeDir { path, mode } => {
                self.u8(2);
                self.str(path.as_str());
                self.u32(*mode & MODE_MASK);
            }
        }
    }
    fn meta(&mut self, m: &FileMeta) {
        self.str(m.path.as_str());
        self.u8(match m.kind {
            EntryKind::File => 0,
            EntryKind::Dir => 1,
        });
        self.u64(m.size);
        self.i64(m.mtime_ns);
        self.u32(m.mode & MODE_MASK);
    }
}

fn truncate_utf8(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

fn encode_payload(msg: &Message, out: &mut Vec<u8>) {
    let mut e = Enc(out);
    match msg {
        Message::Hello(h) => {
            e.u8(tag::HELLO);
            e.0.extend_from_slice(&MAGIC);
            e.u16(h.version);
            e.str(h.node_id.as_str());
            e.str(h.group.as_deref().unwrap_or(""));
            e.u16(h.listen_port);
            e.count(h.storages.len());
            for s in &h.storages {
                e.str(s);
            }
        }
        Message::Refuse { reason } => {
            e.u8(tag::REFUSE);
            e.str(reason);
        }
        Message::Ping => e.u8(tag::PING),
        Message::Pong => e.u8(tag::PONG),
        Message::Claim { ticket, storage } => {
            e.u8(tag::CLAIM);
            e.u64(*ticket);
            e.str(storage);
        }
        Message::Grant { ticket } => {
            e.u8(tag::GRANT);
            e.u64(*ticket);
        }
        Message::Deny { ticket } => {
            e.u8(tag::DENY);
            e.u64(*ticket);
        }
        Message::Release { ticket } => {
            e.u8(tag::RELEASE);
            e.u64(*ticket);
        }
        Message::SessionStart {
            sid,
            storage,
            members,
        } => {
            e.u8(tag::SESSION_START);
            e.u64(*sid);
            e.str(storage);
            e.nodes(members);
        }
        Message::SessionAbort { sid, reason } => {
            e.u8(tag::SESSION_ABORT);
            e.u64(*sid);
            e.str(reason);
        }
        Message::SessionAlive { sid } => {
            e.u8(tag::SESSION_ALIVE);
            e.u64(*sid);
        }
        Message::IndexSummary {
            sid,
            count,
            digest,
            peers,
        } => {
            e.u8(tag::INDEX_SUMMARY);
            e.u64(*sid);
            e.u64(*count);
            e.0.extend_from_slice(digest);
            e.nodes(peers);
        }
        Message::IndexRequest { sid } => {
            e.u8(tag::INDEX_REQUEST);
            e.u64(*sid);
        }
        Message::IndexChunk { sid, entries } => {
            e.u8(tag::INDEX_CHUNK);
            e.u64(*sid);
            e.count(entries.len());
            for m in entries {
                e.meta(m);
            }
        }
        Message::IndexEnd { sid } => {
            e.u8(tag::INDEX_END);
            e.u64(*sid);
        }
        Message::PlanChunk { sid, items } => {
            e.u8(tag::PLAN_CHUNK);
            e.u64(*sid);
            e.count(items.len());
            for item in items {
                e.plan_item(item);
            }
        }
        Message::PlanEnd { sid } => {
            e.u8(tag::PLAN_END);
            e.u64(*sid);
        }
        Message::PlanReady { sid } => {
            e.u8(tag::PLAN_READY);
            e.u64(*sid);
        }
        Message::Go { sid } => {
            e.u8(tag::GO);
            e.u64(*sid);
        }
        Message::PartDone { sid, stats } => {
            e.u8(tag::PART_DONE);
            e.u64(*sid);
            e.u32(stats.files_sent);
            e.u64(stats.bytes_sent);
            e.u32(stats.files_received);
            e.u64(stats.bytes_received);
            e.u32(stats.failed);
        }
        Message::SessionEnd { sid, ok } => {
            e.u8(tag::SESSION_END);
            e.u64(*sid);
            e.bool(*ok);
        }
        Message::FileStart { sid, xid, meta } => {
            e.u8(tag::FILE_START);
            e.u64(*sid);
            e.u32(*xid);
            e.meta(meta);
        }
        Message::FileData { xid, data } => {
            e.u8(tag::FILE_DATA);
            e.u32(*xid);
            e.bytes(data);
        }
        Message::FileEnd { xid, hash } => {
            e.u8(tag::FILE_END);
            e.u32(*xid);
            e.0.extend_from_slice(hash);
        }
        Message::FileAbort { xid, reason } => {
            e.u8(tag::FILE_ABORT);
            e.u32(*xid);
            e.str(reason);
        }
        Message::FileReject { xid, reason } => {
            e.u8(tag::FILE_REJECT);
            e.u32(*xid);
            e.str(reason);
        }
        Message::Signature { sid, path, sig } => {
            e.u8(tag::SIGNATURE);
            e.u64(*sid);
            e.str(path.as_str());
            e.u32(sig.block_size);
            e.u64(sig.file_size);
            e.count(sig.blocks.len());
            for b in &sig.blocks {
                e.u32(b.weak);
                e.0.extend_from_slice(&b.strong);
            }
        }
        Message::FileCopy { xid, first, count } => {
            e.u8(tag::FILE_COPY);
            e.u32(*xid);
            e.u32(*first);
            e.u32(*count);
        }
    }
}

// ---------------------------------------------------------------------------------------
// Decoding

struct Dec<'a> {
    buf: &'a [u8],
}

/// Smallest encoded size of each counted element, used to bound a count against the bytes
/// that are actually left before anything is allocated. Each must be the size of the
/// smallest element that really exists (a test encodes one of each): a bound larger than
/// that refuses valid messages, as `1 + MIN_META` for plan items once refused a plan of
/// three one-letter directories.
/// A name (node id, storage): a u16 length and at least one byte.
const MIN_NAME: usize = 2 + 1;
/// An index entry: a one-byte path, kind, size, mtime, mode.
const MIN_META: usize = MIN_NAME + 1 + 8 + 8 + 4;
/// A version: the "absent" flag alone.
const MIN_VERSION: usize = 1;
/// A send target: a node id and a version.
const MIN_TARGET: usize = MIN_NAME + MIN_VERSION;
/// A plan item: the smallest kind is `MakeDir` (kind, a one-byte path, mode).
const MIN_PLAN_ITEM: usize = 1 + MIN_NAME + 4;
/// A signature block: weak sum and strong hash.
const MIN_BLOCK: usize = 4 + crate::delta::STRONG_LEN;

impl<'a> Dec<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], DecodeError> {
        if self.buf.len() < n {
            return Err(DecodeError::Truncated(what));
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }
    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], DecodeError> {
        let b = self.take(N, what)?;
        let mut a = [0u8; N];
        a.copy_from_slice(b);
        Ok(a)
    }
    fn u8(&mut self, what: &'static str) -> Result<u8, DecodeError> {
        Ok(self.array::<1>(what)?[0])
    }
    fn u16(&mut self, what: &'static str) -> Result<u16, DecodeError> {
        Ok(u16::from_be_bytes(self.array(what)?))
    }
    fn u32(&mut self, what: &'static str) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.array(what)?))
    }
    fn u64(&mut self, what: &'static str) -> Result<u64, DecodeError> {
        Ok(u64::from_be_bytes(self.array(what)?))
    }
    fn i64(&mut self, what: &'static str) -> Result<i64, DecodeError> {
        Ok(i64::from_be_bytes(self.array(what)?))
    }
    fn bool(&mut self, what: &'static str) -> Result<bool, DecodeError> {
        match self.u8(what)? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(DecodeError::Invalid("boolean that is neither 0 nor 1")),
        }
    }
    fn str(&mut self, what: &'static str) -> Result<&'a str, DecodeError> {
        let len = self.u16(what)? as usize;
        let b = self.take(len, what)?;
        std::str::from_utf8(b).map_err(|_| DecodeError::BadUtf8(what))
    }
    fn bytes(&mut self, what: &'static str) -> Result<&'a [u8], DecodeError> {
        let len = self.u32(what)? as usize;
        self.take(len, what)
    }
    /// A count, refused if even the smallest elements could not fit in what is left.
    fn count(&mut self, what: &'static str, min_elem: usize) -> Result<usize, DecodeError> {
        let n = self.u32(what)?;
        // In u64: `n * min_elem` overflows a 32-bit usize long before it is refused.
        if u64::from(n) * min_elem as u64 > self.buf.len() as u64 {
            return Err(DecodeError::TooMany(what, u64::from(n)));
        }
        Ok(n as usize)
    }
    fn path(&mut self) -> Result<RelPath, DecodeError> {
        let s = self.str("path")?;
        RelPath::new(s).map_err(|e| DecodeError::BadPath(e, truncate_utf8(s, 200).to_owned()))
    }
    fn node(&mut self, what: &'static str) -> Result<NodeId, DecodeError> {
        let s = self.str(what)?;
        NodeId::new(s).map_err(|e| DecodeError::BadName(what, e))
    }
    /// A counted list of node ids, at most [`MAX_TARGETS`].
    fn nodes(
        &mut self,
        what: &'static str,
        each: &'static str,
    ) -> Result<Vec<NodeId>, DecodeError> {
        let n = self.count(what, MIN_NAME)?;
        if n > MAX_TARGETS {
            return Err(DecodeError::TooMany(what, n as u64));
        }
        (0..n).map(|_| self.node(each)).collect()
    }
    fn storage(&mut self) -> Result<String, DecodeError> {
        let s = self.str("storage name")?;
        validate_storage_name(s).map_err(|e| DecodeError::BadName("storage name", e))?;
        Ok(s.to_owned())
    }
    fn reason(&mut self) -> Result<String, DecodeError> {
        // Reasons end up in our logs: keep them printable and short.
        let s = self.str("reason")?;
        Ok(truncate_utf8(s, 512)
            .chars()
            .map(|c| if c.is_control() { '?' } else { c })
            .collect())
    }
    fn version(&mut self, what: &'static str) -> Result<Option<(u64, i64)>, DecodeError> {
        match self.u8(what)? {
            0 => Ok(None),
            1 => Ok(Some((self.u64(what)?, self.i64(what)?))),
            _ => Err(DecodeError::Invalid("bad version flag")),
        }
    }
    fn meta(&mut self) -> Result<FileMeta, DecodeError> {
        let path = self.path()?;
        let kind = match self.u8("entry kind")? {
            0 => EntryKind::File,
            1 => EntryKind::Dir,
            k => return Err(DecodeError::BadKind(k)),
        };
        let size = self.u64("size")?;
        let mtime_ns = self.i64("mtime")?;
        let mode = self.u32("mode")? & MODE_MASK;
        Ok(match kind {
            EntryKind::File => FileMeta::file(path, size, mtime_ns, mode),
            EntryKind::Dir => FileMeta::dir(path, mode),
        })
    }
    fn file_meta(&mut self) -> Result<FileMeta, DecodeError> {
        let m = self.meta()?;
        if m.kind != EntryKind::File {
            return Err(DecodeError::Invalid(
                "a directory where a file was expected",
            ));
        }
        Ok(m)
    }
}

/// Decodes one frame payload (without the length prefix).
pub fn decode(payload: &[u8]) -> Result<Message, DecodeError> {
    if payload.len() > MAX_FRAME {
        return Err(DecodeError::FrameTooLarge(payload.len()));
    }
    let mut d = Dec { buf: payload };
    let t = d.u8("tag")?;
    let msg = match t {
        tag::HELLO => Message::Hello(decode_hello(&mut d)?),
        tag::REFUSE => Message::Refuse {
            reason: d.reason()?,
        },
        tag::PING => Message::Ping,
        tag::PONG => Message::Pong,
        tag::CLAIM => Message::Claim {
            ticket: d.u64("ticket")?,
            storage: d.storage()?,
        },
        tag::GRANT => Message::Grant {
            ticket: d.u64("ticket")?,
        },
        tag::DENY => Message::Deny {
            ticket: d.u64("ticket")?,
        },
        tag::RELEASE => Message::Release {
            ticket: d.u64("ticket")?,
        },
        tag::SESSION_START => {
            let sid = d.u64("sid")?;
            let storage = d.storage()?;
            Message::SessionStart {
                sid,
                storage,
                members: d.nodes("members", "member node id")?,
            }
        }
        tag::SESSION_ABORT => Message::SessionAbort {
            sid: d.u64("sid")?,
            reason: d.reason()?,
        },
        tag::SESSION_ALIVE => Message::SessionAlive { sid: d.u64("sid")? },
        tag::INDEX_SUMMARY => {
            let sid = d.u64("sid")?;
            let count = d.u64("count")?;
            let digest = d.array("digest")?;
            Message::IndexSummary {
                sid,
                count,
                digest,
                peers: d.nodes("peers", "peer node id")?,
            }
        }
        tag::INDEX_REQUEST => Message::IndexRequest { sid: d.u64("sid")? },
        tag::INDEX_CHUNK => {
            let sid = d.u64("sid")?;
            let n = d.count("index entries", MIN_META)?;
            let mut entries = Vec::new();
            for _ in 0..n {
                entries.push(d.meta()?);
            }
            Message::IndexChunk { sid, entries }
        }
        tag::INDEX_END => Message::IndexEnd { sid: d.u64("sid")? },
        tag::PLAN_CHUNK => {
            let sid = d.u64("sid")?;
            let n = d.count("plan items", MIN_PLAN_ITEM)?;
            let mut items = Vec::new();
            for _ in 0..n {
                items.push(decode_plan_item(&mut d)?);
            }
            Message::PlanChunk { sid, items }
        }
        tag::PLAN_END => Message::PlanEnd { sid: d.u64("sid")? },
        tag::PLAN_READY => Message::PlanReady { sid: d.u64("sid")? },
        tag::GO => Message::Go { sid: d.u64("sid")? },
        tag::PART_DONE => Message::PartDone {
            sid: d.u64("sid")?,
            stats: PartStats {
                files_sent: d.u32("stats")?,
                bytes_sent: d.u64("stats")?,
                files_received: d.u32("stats")?,
                bytes_received: d.u64("stats")?,
                failed: d.u32("stats")?,
            },
        },
        tag::SESSION_END => Message::SessionEnd {
            sid: d.u64("sid")?,
            ok: d.bool("ok")?,
        },
        tag::FILE_START => Message::FileStart {
            sid: d.u64("sid")?,
            xid: d.u32("xid")?,
            meta: d.file_meta()?,
        },
        tag::FILE_DATA => {
            let xid = d.u32("xid")?;
            let data = d.bytes("data")?;
            if data.len() > CHUNK_SIZE {
                return Err(DecodeError::TooMany(
                    "data bytes in one chunk",
                    data.len() as u64,
                ));
            }
            Message::FileData {
                xid,
                data: data.to_vec(),
            }
        }
        tag::FILE_END => Message::FileEnd {
            xid: d.u32("xid")?,
            hash: d.array("hash")?,
        },
        tag::FILE_ABORT => Message::FileAbort {
            xid: d.u32("xid")?,
            reason: d.reason()?,
        },
        tag::FILE_REJECT => Message::FileReject {
            xid: d.u32("xid")?,
            reason: d.reason()?,
        },
        tag::SIGNATURE => {
            let sid = d.u64("sid")?;
            let path = d.path()?;
            let block_size = d.u32("block size")?;
            let file_size = d.u64("file size")?;
            let n = d.count("signature blocks", MIN_BLOCK)?;
            if n > crate::delta::MAX_BLOCKS {
                return Err(DecodeError::TooMany("signature blocks", n as u64));
            }
            let mut blocks = Vec::new();
            for _ in 0..n {
                blocks.push(crate::delta::BlockSig {
                    weak: d.u32("weak sum")?,
                    strong: d.array("strong hash")?,
                });
            }
            let sig = crate::delta::Signature {
                block_size,
                file_size,
                blocks,
            };
            sig.validate().map_err(DecodeError::Invalid)?;
            Message::Signature { sid, path, sig }
        }
        tag::FILE_COPY => Message::FileCopy {
            xid: d.u32("xid")?,
            first: d.u32("first block")?,
            count: d.u32("block count")?,
        },
        other => return Err(DecodeError::UnknownTag(other)),
    };
    if !d.buf.is_empty() {
        return Err(DecodeError::TrailingBytes(d.buf.len()));
    }
    Ok(msg)
}

/// The magic and version come first so that a peer of another version is told apart from
/// garbage even though the rest of its hello may be laid out differently.
fn decode_hello(d: &mut Dec<'_>) -> Result<Hello, DecodeError> {
    let magic: [u8; 8] = d.array("magic")?;
    if magic != MAGIC {
        return Err(DecodeError::BadMagic);
    }
    let version = d.u16("version")?;
    if version != PROTOCOL_VERSION {
        // Nothing after the version can be trusted to have our layout.
        return Err(DecodeError::Invalid(if version > PROTOCOL_VERSION {
            "peer speaks a newer protocol version"
        } else {
            "peer speaks an older protocol version"
        }));
    }
    let node_id = d.node("node id")?;
    let group = d.str("group")?;
    let group = if group.is_empty() {
        None
    } else {
        validate_name(group).map_err(|e| DecodeError::BadName("group", e))?;
        Some(group.to_owned())
    };
    let listen_port = d.u16("listen port")?;
    let n = d.count("storages", MIN_NAME)?;
    if n > MAX_STORAGES {
        return Err(DecodeError::TooMany("storages", n as u64));
    }
    let mut storages = Vec::new();
    for _ in 0..n {
        storages.push(d.storage()?);
    }
    Ok(Hello {
        version,
        node_id,
        group,
        listen_port,
        storages,
    })
}

fn decode_plan_item(d: &mut Dec<'_>) -> Result<PlanItem, DecodeError> {
    match d.u8("plan item kind")? {
        0 => {
            let meta = d.file_meta()?;
            let n = d.count("send targets", MIN_TARGET)?;
            if n == 0 || n > MAX_TARGETS {
                return Err(DecodeError::TooMany("send targets", n as u64));
            }
            let mut to = Vec::new();
            for _ in 0..n {
                to.push(SendTo {
                    node: d.node("target node id")?,
                    old: d.version("target's version")?,
                });
            }
            Ok(PlanItem::Send { meta, to })
        }
        1 => {
            let meta = d.file_meta()?;
            let from = d.node("source node id")?;
            let expect = d.version("expected version")?;
            Ok(PlanItem::Receive { meta, from, expect })
        }
        2 => Ok(PlanItem::MakeDir {
            path: d.path()?,
            mode: d.u32("mode")? & MODE_MASK,
        }),
        k => Err(DecodeError::BadKind(k)),
    }
}

/// The digest of an index: equal digests mean equal indexes (paths, kinds, sizes, mtimes),
/// so a session can skip the per-file exchange. Modes are left out, as in the diff.
pub fn index_digest(entries: &[FileMeta]) -> Digest {
    let mut h = blake3::Hasher::new();
    let mut buf = Vec::with_capacity(256);
    for m in entries {
        buf.clear();
        let mut e = Enc(&mut buf);
        e.str(m.path.as_str());
        match m.kind {
            EntryKind::File => {
                e.u8(0);
                e.u64(m.size);
                e.i64(m.mtime_ns);
            }
            EntryKind::Dir => e.u8(1),
        }
        h.update(&buf);
    }
    *h.finalize().as_bytes()
}

/// Encoded size of one index entry, for batching.
pub fn meta_len(m: &FileMeta) -> usize {
    MIN_META - 1 + m.path.as_str().len()
}

/// Encoded size of a version (absent, or size and mtime).
fn version_len(v: Option<(u64, i64)>) -> usize {
    MIN_VERSION + if v.is_some() { 16 } else { 0 }
}

/// Encoded size of one plan item, for batching.
pub fn plan_item_len(item: &PlanItem) -> usize {
    match item {
        PlanItem::Send { meta, to } => {
            1 + meta_len(meta)
                + 4
                + to.iter()
                    .map(|t| 2 + t.node.as_str().len() + version_len(t.old))
                    .sum::<usize>()
        }
        PlanItem::Receive { meta, from, expect } => {
            1 + meta_len(meta) + 2 + from.as_str().len() + version_len(*expect)
        }
        PlanItem::MakeDir { path, .. } => 1 + 2 + path.as_str().len() + 4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> RelPath {
        RelPath::new(s).unwrap()
    }

    fn n(s: &str) -> NodeId {
        NodeId::new(s).unwrap()
    }

    fn samples() -> Vec<Message> {
        vec![
            Message::Hello(Hello {
                version: PROTOCOL_VERSION,
                node_id: n("pi"),
                group: Some("family".into()),
                listen_port: 25230,
                storages: vec!["docs".into(), "my photos".into()],
            }),
            Message::Hello(Hello {
                version: PROTOCOL_VERSION,
                node_id: n("b"),
                group: None,
                listen_port: 0,
                storages: vec![],
            }),
            Message::Refuse {
                reason: "wrong group".into(),
            },
            Message::Ping,
            Message::Pong,
            Message::Claim {
                ticket: 9,
                storage: "docs".into(),
            },
            Message::Grant { ticket: 9 },
            Message::Deny { ticket: 9 },
            Message::Release { ticket: 9 },
            Message::SessionStart {
                sid: u64::MAX,
                storage: "docs".into(),
                members: vec![n("b"), n("c")],
            },
            Message::SessionAbort {
                sid: 7,
                reason: "cannot scan".into(),
            },
            Message::SessionAlive { sid: 7 },
            Message::IndexSummary {
                sid: 1,
                count: 3,
                digest: [9; 32],
                peers: vec![n("a"), n("c")],
            },
            Message::IndexRequest { sid: 1 },
            Message::IndexChunk {
                sid: 1,
                entries: vec![
                    FileMeta::dir(p("a"), 0o755),
                    FileMeta::file(p("a/ü b.txt"), 12, -5_000_000_001, 0o644),
                    FileMeta::file(p("empty"), 0, 0, 0o600),
                ],
            },
            Message::IndexEnd { sid: 1 },
            Message::PlanChunk {
                sid: 2,
                items: vec![
                    PlanItem::Send {
                        meta: FileMeta::file(p("x"), u64::MAX, i64::MAX, 0o777),
                        to: vec![
                            SendTo {
                                node: n("a"),
                                old: Some((1, -1)),
                            },
                            SendTo {
                                node: n("c"),
                                old: None,
                            },
                        ],
                    },
                    PlanItem::Receive {
                        meta: FileMeta::file(p("y/z"), 1, 2, 0o640),
                        from: n("a"),
                        expect: Some((5, -6)),
                    },
                    PlanItem::Receive {
                        meta: FileMeta::file(p("w"), 1, 2, 0o640),
                        from: n("a"),
                        expect: None,
                    },
                    PlanItem::MakeDir {
                        path: p("d/e"),
                        mode: 0o700,
                    },
                ],
            },
            Message::PlanEnd { sid: 2 },
            Message::PlanReady { sid: 2 },
            Message::Go { sid: 2 },
            Message::PartDone {
                sid: 2,
                stats: PartStats {
                    files_sent: 1,
                    bytes_sent: 2,
                    files_received: 3,
                    bytes_received: 4,
                    failed: 5,
                },
            },
            Message::SessionEnd { sid: 2, ok: true },
            Message::FileStart {
                sid: 2,
                xid: 3,
                meta: FileMeta::file(p("big.bin"), 5 << 32, 1, 0o644),
            },
            Message::FileData {
                xid: 3,
                data: vec![1, 2, 3],
            },
            Message::FileData {
                xid: 3,
                data: vec![0xAB; CHUNK_SIZE],
            },
            Message::FileEnd {
                xid: 3,
                hash: [1; 32],
            },
            Message::FileAbort {
                xid: 3,
                reason: "source changed".into(),
            },
            Message::FileReject {
                xid: 3,
                reason: "ignored here".into(),
            },
            Message::Signature {
                sid: 2,
                path: p("big.bin"),
                sig: crate::delta::Signature {
                    block_size: 1024,
                    file_size: 1025,
                    blocks: vec![
                        crate::delta::BlockSig {
                            weak: 7,
                            strong: [1; 8],
                        };
                        2
                    ],
                },
            },
            Message::Signature {
                sid: 2,
                path: p("gone"),
                sig: crate::delta::Signature::empty(),
            },
            Message::FileCopy {
                xid: 3,
                first: 0,
                count: 2,
            },
        ]
    }

    #[test]
    fn every_message_round_trips_through_a_frame() {
        let mut stream = Vec::new();
        for m in samples() {
            let before = stream.len();
            encode_frame(&m, &mut stream);
            assert_eq!(stream.len() - before, frame_len(&m), "{}", m.name());
        }
        let mut rest = &stream[..];
        let mut decoded = Vec::new();
        while !rest.is_empty() {
            let (range, used) = split_frame(rest).unwrap().expect("complete frame");
            decoded.push(decode(&rest[range]).unwrap());
            rest = &rest[used..];
        }
        assert_eq!(decoded, samples());
    }

    #[test]
    fn a_file_data_frame_built_in_place_is_the_encoded_frame() {
        for len in [0, 1, 4096, CHUNK_SIZE] {
            let data: Vec<u8> = (0..len).map(|i| (i * 7 + 3) as u8).collect();
            let mut in_place = file_data_head(0xA1B2_C3D4, len).to_vec();
            in_place.extend_from_slice(&data);
            let msg = Message::FileData {
                xid: 0xA1B2_C3D4,
                data,
            };
            let mut encoded = Vec::new();
            encode_frame(&msg, &mut encoded);
            assert_eq!(in_place, encoded, "{len} bytes");
            assert_eq!(in_place.len(), frame_len(&msg));
        }
    }

    #[test]
    fn incomplete_frames_wait_for_more_bytes() {
        let mut buf = Vec::new();
        encode_frame(&Message::Ping, &mut buf);
        for cut in 0..buf.len() {
            assert_eq!(split_frame(&buf[..cut]), Ok(None), "cut at {cut}");
        }
        assert!(split_frame(&buf).unwrap().is_some());
    }

    #[test]
    fn oversized_length_is_rejected_from_the_header_alone() {
        let header = ((MAX_FRAME + 1) as u32).to_be_bytes();
        assert_eq!(
            split_frame(&header),
            Err(DecodeError::FrameTooLarge(MAX_FRAME + 1))
        );
        assert_eq!(
            split_frame(&u32::MAX.to_be_bytes()),
            Err(DecodeError::FrameTooLarge(u32::MAX as usize))
        );
        assert_eq!(split_frame(&[0, 0, 0, 0]), Err(DecodeError::EmptyFrame));
    }

    fn payload(m: &Message) -> Vec<u8> {
        let mut v = Vec::new();
        encode_frame(m, &mut v);
        v.split_off(FRAME_HEADER)
    }

    /// Raw payload for a FileStart with an arbitrary path string, bypassing RelPath.
    fn file_start_with_path(path: &[u8]) -> Vec<u8> {
        let mut v = vec![tag::FILE_START];
        v.extend_from_slice(&1u64.to_be_bytes());
        v.extend_from_slice(&1u32.to_be_bytes());
        v.extend_from_slice(&(path.len() as u16).to_be_bytes());
        v.extend_from_slice(path);
        v.push(0);
        v.extend_from_slice(&5u64.to_be_bytes());
        v.extend_from_slice(&0i64.to_be_bytes());
        v.extend_from_slice(&0o644u32.to_be_bytes());
        v
    }

    /// A raw Signature payload with `count` blocks (all zero) after the given header.
    fn signature(block_size: u32, file_size: u64, count: u32) -> Vec<u8> {
        let mut v = vec![tag::SIGNATURE];
        v.extend_from_slice(&1u64.to_be_bytes());
        v.extend_from_slice(&1u16.to_be_bytes());
        v.push(b'f');
        v.extend_from_slice(&block_size.to_be_bytes());
        v.extend_from_slice(&file_size.to_be_bytes());
        v.extend_from_slice(&count.to_be_bytes());
        let n = (count as usize).min(80_000);
        v.extend(std::iter::repeat_n(0u8, n * 12));
        v
    }

    #[test]
    fn malformed_payloads_are_rejected_with_a_reason() {
        let ok = file_start_with_path(b"fine/name");
        assert!(decode(&ok).is_ok());

        let mut trailing = payload(&Message::Ping);
        trailing.push(0);
        let mut count_bomb = vec![tag::INDEX_CHUNK];
        count_bomb.extend_from_slice(&1u64.to_be_bytes());
        count_bomb.extend_from_slice(&u32::MAX.to_be_bytes());
        let mut bad_hello = payload(&samples()[0]);
        bad_hello[1] = b'X';
        let mut newer = payload(&samples()[0]);
        newer[9..11].copy_from_slice(&(PROTOCOL_VERSION + 1).to_be_bytes());
        let mut bad_bool = payload(&Message::SessionEnd { sid: 1, ok: true });
        *bad_bool.last_mut().unwrap() = 7;
        let mut big_chunk = vec![tag::FILE_DATA];
        big_chunk.extend_from_slice(&1u32.to_be_bytes());
        big_chunk.extend_from_slice(&((CHUNK_SIZE + 1) as u32).to_be_bytes());
        big_chunk.extend(std::iter::repeat_n(0u8, CHUNK_SIZE + 1));
        let mut data_len_lie = vec![tag::FILE_DATA];
        data_len_lie.extend_from_slice(&1u32.to_be_bytes());
        data_len_lie.extend_from_slice(&1000u32.to_be_bytes());
        data_len_lie.extend_from_slice(&[0; 10]);
        let mut dir_start = file_start_with_path(b"d");
        let kind_at = dir_start.len() - 21;
        dir_start[kind_at] = 1;

        let cases: Vec<(&str, Vec<u8>, &str)> = vec![
            ("dotdot", file_start_with_path(b"../x"), "invalid path"),
            (
                "inner dotdot",
                file_start_with_path(b"a/../../x"),
                "invalid path",
            ),
            ("absolute", file_start_with_path(b"/etc/x"), "invalid path"),
            ("empty path", file_start_with_path(b""), "invalid path"),
            (
                "double slash",
                file_start_with_path(b"a//b"),
                "invalid path",
            ),
            ("nul", file_start_with_path(b"a\0b"), "invalid path"),
            (
                "internal name",
                file_start_with_path(b".iron-carrier.tmp.1"),
                "invalid path",
            ),
            ("bad utf8", file_start_with_path(&[0xff, 0xfe]), "not UTF-8"),
            ("directory as file", dir_start, "directory"),
            ("unknown tag", vec![0xEE], "unknown message tag"),
            ("empty", vec![], "truncated"),
            ("truncated", ok[..ok.len() - 1].to_vec(), "truncated"),
            ("trailing", trailing, "unexpected bytes"),
            ("count bomb", count_bomb, "too many"),
            ("bad magic", bad_hello, "bad magic"),
            ("newer version", newer, "newer protocol"),
            ("bad bool", bad_bool, "neither 0 nor 1"),
            ("oversized chunk", big_chunk, "too many"),
            (
                "signature block size 0",
                signature(0, 0, 0),
                "block size out of range",
            ),
            (
                "signature block size huge",
                signature(1 << 30, 1 << 30, 1),
                "block size out of range",
            ),
            (
                "signature count lie",
                signature(1024, 4096, 3),
                "does not match",
            ),
            (
                "signature too many blocks",
                signature(1024, 70_000 * 1024, 70_000),
                "too many",
            ),
            (
                "signature count bomb",
                signature(1024, 1 << 40, u32::MAX),
                "too many",
            ),
            ("data length lie", data_len_lie, "truncated"),
        ];
        for (name, bytes, want) in cases {
            match decode(&bytes) {
                Ok(m) => panic!("{name}: decoded {m:?}"),
                Err(e) => assert!(e.to_string().contains(want), "{name}: {e}"),
            }
        }
    }

    #[test]
    fn decoding_random_bytes_never_panics() {
        // A tiny xorshift keeps this deterministic and dependency-free.
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let seeds: Vec<Vec<u8>> = samples().iter().map(payload).collect();
        for i in 0..20_000 {
            let mut buf = seeds[i % seeds.len()].clone();
            // Flip, truncate or extend a seed so most inputs are almost valid.
            match next() % 3 {
                0 if !buf.is_empty() => {
                    let at = (next() as usize) % buf.len();
                    buf[at] = next() as u8;
                }
                1 => {
                    let keep = (next() as usize) % (buf.len() + 1);
                    buf.truncate(keep);
                }
                _ => buf.extend((0..next() % 8).map(|_| next() as u8)),
            }
            let _ = decode(&buf);
            let _ = split_frame(&buf);
        }
    }

    #[test]
    fn digest_depends_on_content_not_mode() {
        let a = vec![FileMeta::file(p("a"), 1, 2, 0o644)];
        let b = vec![FileMeta::file(p("a"), 1, 2, 0o600)];
        let c = vec![FileMeta::file(p("a"), 1, 3, 0o644)];
        let d = vec![FileMeta::dir(p("a"), 0o755)];
        assert_eq!(index_digest(&a), index_digest(&b));
        assert_ne!(index_digest(&a), index_digest(&c));
        assert_ne!(index_digest(&a), index_digest(&d));
        assert_ne!(index_digest(&a), index_digest(&[]));
    }

    fn one_byte_name(c: &str) -> NodeId {
        n(c)
    }

    /// The smallest element of every kind that is counted on the wire.
    fn smallest_plan_items() -> Vec<PlanItem> {
        let f = FileMeta::file(p("f"), 0, 0, 0);
        vec![
            PlanItem::MakeDir {
                path: p("d"),
                mode: 0,
            },
            PlanItem::Receive {
                meta: f.clone(),
                from: one_byte_name("a"),
                expect: None,
            },
            PlanItem::Send {
                meta: f,
                to: vec![SendTo {
                    node: one_byte_name("a"),
                    old: None,
                }],
            },
        ]
    }

    #[test]
    fn minimum_element_sizes_are_the_real_smallest_encodings() {
        let enc = |f: &dyn Fn(&mut Enc)| {
            let mut v = Vec::new();
            f(&mut Enc(&mut v));
            v.len()
        };
        assert_eq!(MIN_NAME, enc(&|e| e.str("a")));
        assert_eq!(MIN_VERSION, enc(&|e| e.version(None)));
        assert_eq!(
            MIN_TARGET,
            enc(&|e| {
                e.str("a");
                e.version(None)
            })
        );
        assert_eq!(MIN_META, enc(&|e| e.meta(&FileMeta::dir(p("d"), 0))));
        assert_eq!(MIN_META, enc(&|e| e.meta(&FileMeta::file(p("f"), 0, 0, 0))));
        let smallest_item = smallest_plan_items()
            .iter()
            .map(|i| enc(&|e| e.plan_item(i)))
            .min();
        assert_eq!(Some(MIN_PLAN_ITEM), smallest_item);
        for item in smallest_plan_items() {
            assert_eq!(
                plan_item_len(&item),
                enc(&|e| e.plan_item(&item)),
                "{item:?}"
            );
        }
        let block = crate::delta::BlockSig {
            weak: 0,
            strong: [0; crate::delta::STRONG_LEN],
        };
        assert_eq!(
            MIN_BLOCK,
            enc(&|e| {
                e.u32(block.weak);
                e.0.extend_from_slice(&block.strong)
            })
        );
    }

    /// Regression: a storage holding only empty one-letter directories (`d`, `e`, `e/f`)
    /// never synchronized: the receiver refused the plan with "too many plan items: 3"
    /// because the decoder assumed every item was at least as large as a file entry.
    #[test]
    fn a_plan_of_one_letter_directories_decodes() {
        let items: Vec<PlanItem> = ["d", "e", "e/f"]
            .iter()
            .map(|d| PlanItem::MakeDir {
                path: p(d),
                mode: 0o755,
            })
            .collect();
        let msg = Message::PlanChunk { sid: 1, items };
        assert_eq!(decode(&payload(&msg)), Ok(msg));
    }

    /// Every counted list, filled with its smallest elements, decodes; one element more
    /// than the bytes hold is refused before anything is allocated.
    #[test]
    fn every_counted_list_of_smallest_elements_decodes() {
        let names = |k: usize| -> Vec<NodeId> {
            (0..k)
                .map(|i| one_byte_name(&((b'a' + i as u8) as char).to_string()))
                .collect()
        };
        let mut cases: Vec<Message> = Vec::new();
        for k in [1, 3, 20] {
            cases.push(Message::Hello(Hello {
                version: PROTOCOL_VERSION,
                node_id: one_byte_name("x"),
                group: None,
                listen_port: 0,
                storages: names(k).iter().map(|n| n.as_str().to_owned()).collect(),
            }));
            cases.push(Message::SessionStart {
                sid: 1,
                storage: "s".into(),
                members: names(k),
            });
            cases.push(Message::IndexSummary {
                sid: 1,
                count: 0,
                digest: [0; 32],
                peers: names(k),
            });
            cases.push(Message::IndexChunk {
                sid: 1,
                entries: names(k)
                    .iter()
                    .map(|n| FileMeta::dir(p(n.as_str()), 0))
                    .collect(),
            });
            for item in smallest_plan_items() {
                cases.push(Message::PlanChunk {
                    sid: 1,
                    items: vec![item; k],
                });
            }
            cases.push(Message::PlanChunk {
                sid: 1,
                items: vec![PlanItem::Send {
                    meta: FileMeta::file(p("f"), 0, 0, 0),
                    to: names(k)
                        .into_iter()
                        .map(|node| SendTo { node, old: None })
                        .collect(),
                }],
            });
            let size = 1024u64 * k as u64;
            cases.push(Message::Signature {
                sid: 1,
                path: p("f"),
                sig: crate::delta::Signature {
                    block_size: 1024,
                    file_size: size,
                    blocks: vec![
                        crate::delta::BlockSig {
                            weak: 0,
                            strong: [0; crate::delta::STRONG_LEN],
                        };
                        k
                    ],
                },
            });
        }
        for msg in cases {
            let bytes = payload(&msg);
            assert_eq!(decode(&bytes).as_ref(), Ok(&msg), "{}", msg.name());
        }
    }

    /// The count of a list of smallest elements raised by one: refused as too many or
    /// truncated, never decoded and never a panic.
    #[test]
    fn a_count_one_above_what_the_bytes_hold_is_refused() {
        let mut bytes = payload(&Message::PlanChunk {
            sid: 1,
            items: vec![
                PlanItem::MakeDir {
                    path: p("d"),
                    mode: 0
                };
                3
            ],
        });
        // tag, sid, then the count.
        bytes[9..13].copy_from_slice(&4u32.to_be_bytes());
        let err = decode(&bytes).unwrap_err().to_string();
        assert!(err.contains("too many plan items: 4"), "{err}");
    }

    #[test]
    fn meta_len_matches_encoding() {
        let m = FileMeta::file(p("some/path.txt"), 1, 2, 3);
        let mut v = Vec::new();
        Enc(&mut v).meta(&m);
        assert_eq!(meta_len(&m), v.len());
    }
}
