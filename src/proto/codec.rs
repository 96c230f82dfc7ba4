//! The codec of protocol v2: frames, and every message encoded and decoded by hand (see
//! ARCHITECTURE.md for why not serde). Decoding never panics, checks every length and count
//! against the bytes actually present before using it, never allocates more than a small
//! constant times the frame it is decoding, and turns every path into a [`RelPath`] or
//! rejects the whole frame.

use super::*;
use crate::history::{Entry, Record, Vv};
use crate::model::{
    validate_name, validate_storage_name, EntryKind, FileMeta, NodeId, RelPath, Version, MODE_MASK,
};

pub(super) mod tag {
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
    pub const FILE_RESUME: u8 = 0x28;
    pub const FILE_SKIP: u8 = 0x29;
}

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
        Message::Peer(PeerMsg::Transfer(TransferMsg::FileData { data, .. })) => {
            FILE_DATA_HEAD + data.len()
        }
        other => {
            let mut v = Vec::new();
            encode_payload(other, &mut v);
            FRAME_HEADER + v.len()
        }
    }
}

// ---------------------------------------------------------------------------------------
// Encoding

pub(super) struct Enc<'a>(pub(super) &'a mut Vec<u8>);

impl Enc<'_> {
    pub(super) fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    pub(super) fn u16(&mut self, v: u16) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }
    pub(super) fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }
    pub(super) fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }
    pub(super) fn i64(&mut self, v: i64) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }
    pub(super) fn bool(&mut self, v: bool) {
        self.u8(u8::from(v));
    }
    /// Strings are short by construction (names ≤ 64 bytes, paths ≤ 4096, reasons are
    /// truncated here), so a u16 length always fits.
    pub(super) fn str(&mut self, s: &str) {
        let s = truncate_utf8(s, u16::MAX as usize);
        self.u16(s.len() as u16);
        self.0.extend_from_slice(s.as_bytes());
    }
    pub(super) fn bytes(&mut self, b: &[u8]) {
        self.u32(b.len() as u32);
        self.0.extend_from_slice(b);
    }
    pub(super) fn nodes(&mut self, nodes: &[NodeId]) {
        self.count(nodes.len());
        for n in nodes {
            self.str(n.as_str());
        }
    }
    pub(super) fn count(&mut self, n: usize) {
        self.u32(n as u32);
    }
    /// An optional version (a flag, then size and mtime).
    pub(super) fn version(&mut self, v: Option<Version>) {
        match v {
            None => self.u8(0),
            Some(v) => {
                self.u8(1);
                self.u64(v.size);
                self.i64(v.mtime_ns);
            }
        }
    }
    pub(super) fn plan_item(&mut self, item: &PlanItem) {
        match item {
            PlanItem::Send { meta, to } => {
                self.u8(0);
                self.meta(meta);
                self.count(to.len());
                for t in to {
                    self.str(t.node.as_str());
                    self.version(t.expect);
                }
            }
            PlanItem::Receive {
                entry,
                from,
                expect,
            } => {
                self.u8(1);
                self.entry(entry);
                self.str(from.as_str());
                self.version(*expect);
            }
            PlanItem::MakeDir { entry } => {
                self.u8(2);
                self.entry(entry);
            }
            PlanItem::Delete { entry, expect } => {
                self.u8(3);
                self.entry(entry);
                self.version(*expect);
            }
            PlanItem::SetVersion { entry, expect } => {
                self.u8(4);
                self.entry(entry);
                self.version(*expect);
            }
            PlanItem::Rename {
                from,
                expect,
                entry,
                gone,
            } => {
                self.u8(5);
                self.str(from.as_str());
                self.version(Some(*expect));
                self.entry(entry);
                self.entry(gone);
            }
            PlanItem::MoveDir {
                from,
                to,
                by,
                counter,
            } => {
                self.u8(6);
                self.str(from.as_str());
                self.str(to.as_str());
                self.str(by.as_str());
                self.u64(*counter);
            }
        }
    }
    pub(super) fn vv(&mut self, vv: &Vv) {
        self.u8(vv.pairs().len() as u8);
        for (n, c) in vv.pairs() {
            self.str(n.as_str());
            self.u64(*c);
        }
    }
    pub(super) fn entry(&mut self, e: &Entry) {
        self.meta(&e.meta);
        self.bool(e.deleted);
        match &e.hash {
            None => self.u8(0),
            Some(h) => {
                self.u8(1);
                self.0.extend_from_slice(h);
            }
        }
        self.vv(&e.vv);
        self.str(e.by.as_str());
        match &e.link {
            None => self.u8(0),
            Some(l) => {
                self.u8(1);
                self.str(l.as_str());
            }
        }
    }
    pub(super) fn record(&mut self, r: &Record) {
        match r {
            Record::Entry(e) => {
                self.u8(0);
                self.entry(e);
            }
            Record::MovePrefix {
                from,
                to,
                by,
                counter,
            } => {
                self.u8(1);
                self.str(from.as_str());
                self.str(to.as_str());
                self.str(by.as_str());
                self.u64(*counter);
            }
        }
    }
    pub(super) fn meta(&mut self, m: &FileMeta) {
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
        Message::Link(m) => encode_link(&mut e, m),
        Message::Peer(PeerMsg::Election(m)) => encode_election(&mut e, m),
        Message::Peer(PeerMsg::Session(m)) => encode_session(&mut e, m),
        Message::Peer(PeerMsg::Transfer(m)) => encode_transfer(&mut e, m),
    }
}

fn encode_link(e: &mut Enc<'_>, m: &LinkMsg) {
    match m {
        LinkMsg::Hello(h) => {
            e.u8(tag::HELLO);
            e.0.extend_from_slice(&MAGIC);
            e.u16(h.version);
            e.str(h.node_id.as_str());
            e.str(h.group.as_deref().unwrap_or(""));
            e.u16(h.listen_port);
            e.i64(h.clock_ms);
            e.count(h.storages.len());
            for s in &h.storages {
                e.str(s);
            }
        }
        LinkMsg::Refuse { reason } => {
            e.u8(tag::REFUSE);
            e.str(reason);
        }
        LinkMsg::Ping => e.u8(tag::PING),
        LinkMsg::Pong => e.u8(tag::PONG),
    }
}

fn encode_election(e: &mut Enc<'_>, m: &ElectionMsg) {
    let (t, ticket) = match m {
        ElectionMsg::Claim { ticket, storage } => {
            e.u8(tag::CLAIM);
            e.u64(*ticket);
            e.str(storage);
            return;
        }
        ElectionMsg::Grant { ticket } => (tag::GRANT, ticket),
        ElectionMsg::Deny { ticket } => (tag::DENY, ticket),
        ElectionMsg::Release { ticket } => (tag::RELEASE, ticket),
    };
    e.u8(t);
    e.u64(*ticket);
}

fn encode_session(e: &mut Enc<'_>, m: &SessionMsg) {
    match m {
        SessionMsg::Start {
            sid,
            storage,
            members,
        } => {
            e.u8(tag::SESSION_START);
            e.u64(*sid);
            e.str(storage);
            e.nodes(members);
        }
        SessionMsg::Abort { sid, reason } => {
            e.u8(tag::SESSION_ABORT);
            e.u64(*sid);
            e.str(reason);
        }
        SessionMsg::IndexSummary {
            sid,
            index_id,
            seq,
            count,
            digest,
            peers,
        } => {
            e.u8(tag::INDEX_SUMMARY);
            e.u64(*sid);
            e.u64(*index_id);
            e.u64(*seq);
            e.u64(*count);
            e.0.extend_from_slice(digest);
            e.nodes(peers);
        }
        SessionMsg::IndexChunk { sid, records } => {
            e.u8(tag::INDEX_CHUNK);
            e.u64(*sid);
            e.count(records.len());
            for r in records {
                e.record(r);
            }
        }
        SessionMsg::IndexRequest { sid, since } => {
            e.u8(tag::INDEX_REQUEST);
            e.u64(*sid);
            e.u64(*since);
        }
        SessionMsg::IndexEnd { sid, seq } => {
            e.u8(tag::INDEX_END);
            e.u64(*sid);
            e.u64(*seq);
        }
        SessionMsg::PlanChunk { sid, items } => {
            e.u8(tag::PLAN_CHUNK);
            e.u64(*sid);
            e.count(items.len());
            for item in items {
                e.plan_item(item);
            }
        }
        SessionMsg::PartDone { sid, stats } => {
            e.u8(tag::PART_DONE);
            e.u64(*sid);
            e.u32(stats.files_sent);
            e.u64(stats.bytes_sent);
            e.u32(stats.files_received);
            e.u64(stats.bytes_received);
            e.u32(stats.deleted);
            e.u32(stats.failed);
        }
        SessionMsg::End { sid, ok } => {
            e.u8(tag::SESSION_END);
            e.u64(*sid);
            e.bool(*ok);
        }
        // The messages that are a session id and nothing else.
        SessionMsg::Alive { sid }
        | SessionMsg::PlanEnd { sid }
        | SessionMsg::PlanReady { sid }
        | SessionMsg::Go { sid } => {
            e.u8(match m {
                SessionMsg::Alive { .. } => tag::SESSION_ALIVE,
                SessionMsg::PlanEnd { .. } => tag::PLAN_END,
                SessionMsg::PlanReady { .. } => tag::PLAN_READY,
                _ => tag::GO,
            });
            e.u64(*sid);
        }
    }
}

fn encode_transfer(e: &mut Enc<'_>, m: &TransferMsg) {
    match m {
        TransferMsg::FileStart { sid, xid, meta } => {
            e.u8(tag::FILE_START);
            e.u64(*sid);
            e.u32(*xid);
            e.meta(meta);
        }
        TransferMsg::FileData { xid, data } => {
            e.u8(tag::FILE_DATA);
            e.u32(*xid);
            e.bytes(data);
        }
        TransferMsg::FileEnd { xid, hash } => {
            e.u8(tag::FILE_END);
            e.u32(*xid);
            e.0.extend_from_slice(hash);
        }
        TransferMsg::FileAbort { xid, reason } => {
            e.u8(tag::FILE_ABORT);
            e.u32(*xid);
            e.str(reason);
        }
        TransferMsg::FileReject { xid, reason } => {
            e.u8(tag::FILE_REJECT);
            e.u32(*xid);
            e.str(reason);
        }
        TransferMsg::FileResume { xid, offset } => {
            e.u8(tag::FILE_RESUME);
            e.u32(*xid);
            e.u64(*offset);
        }
        TransferMsg::FileSkip { xid, offset } => {
            e.u8(tag::FILE_SKIP);
            e.u32(*xid);
            e.u64(*offset);
        }
        TransferMsg::Signature { sid, path, sig } => {
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
        TransferMsg::FileCopy { xid, first, count } => {
            e.u8(tag::FILE_COPY);
            e.u32(*xid);
            e.u32(*first);
            e.u32(*count);
        }
    }
}

// ---------------------------------------------------------------------------------------
// Decoding

pub(super) struct Dec<'a> {
    buf: &'a [u8],
}

/// Smallest encoded size of each counted element, used to bound a count against the bytes
/// that are actually left before anything is allocated. Each must be the size of the
/// smallest element that really exists (a test encodes one of each): a bound larger than
/// that refuses valid messages, as `1 + MIN_META` for plan items once refused a plan of
/// three one-letter directories.
/// A name (node id, storage): a u16 length and at least one byte.
pub(super) const MIN_NAME: usize = 2 + 1;
/// File metadata: a one-byte path, kind, size, mtime, mode (only inside larger elements).
#[cfg(test)]
pub(super) const MIN_META: usize = MIN_NAME + 1 + 8 + 8 + 4;
/// A version: the "absent" flag alone.
pub(super) const MIN_VERSION: usize = 1;
/// A send target: a node id and a version.
pub(super) const MIN_TARGET: usize = MIN_NAME + MIN_VERSION;
/// A version vector pair: a node id and a counter.
pub(super) const MIN_VV_PAIR: usize = MIN_NAME + 8;
/// An entry with its history: metadata, deleted flag, hash flag, an empty vector, the
/// author, link flag (only inside records and plan items).
#[cfg(test)]
pub(super) const MIN_ENTRY: usize = MIN_META + 1 + 1 + 1 + MIN_NAME + 1;
/// A record: the smallest is a directory move (tag, two one-byte paths, author, counter).
pub(super) const MIN_RECORD: usize = 1 + MIN_NAME + MIN_NAME + MIN_NAME + 8;
/// A plan item: the smallest is `MoveDir` (kind, two one-byte paths, author, counter).
pub(super) const MIN_PLAN_ITEM: usize = 1 + MIN_NAME + MIN_NAME + MIN_NAME + 8;
/// A signature block: weak sum and strong hash.
pub(super) const MIN_BLOCK: usize = 4 + crate::delta::STRONG_LEN;

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
    fn version(&mut self, what: &'static str) -> Result<Option<Version>, DecodeError> {
        match self.u8(what)? {
            0 => Ok(None),
            1 => Ok(Some(Version {
                size: self.u64(what)?,
                mtime_ns: self.i64(what)?,
            })),
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
    fn vv(&mut self) -> Result<Vv, DecodeError> {
        let n = self.u8("version vector length")? as usize;
        if n > MAX_VV_NODES || n * MIN_VV_PAIR > self.buf.len() {
            return Err(DecodeError::TooMany("version vector nodes", n as u64));
        }
        let mut pairs = Vec::with_capacity(n);
        for _ in 0..n {
            pairs.push((self.node("version vector node")?, self.u64("counter")?));
        }
        Vv::from_pairs(pairs).map_err(|_| DecodeError::Invalid("malformed version vector"))
    }
    fn entry(&mut self) -> Result<Entry, DecodeError> {
        let meta = self.meta()?;
        let deleted = self.bool("deleted flag")?;
        let hash = match self.u8("hash flag")? {
            0 => None,
            1 => Some(self.array("hash")?),
            _ => return Err(DecodeError::Invalid("bad hash flag")),
        };
        if hash.is_some() && meta.kind == EntryKind::Dir {
            return Err(DecodeError::Invalid("a directory with a content hash"));
        }
        let vv = self.vv()?;
        let by = self.node("author node id")?;
        let link = match self.u8("link flag")? {
            0 => None,
            1 => Some(self.path()?),
            _ => return Err(DecodeError::Invalid("bad link flag")),
        };
        Ok(Entry {
            meta,
            deleted,
            hash,
            vv,
            by,
            link,
        })
    }
    /// An entry that must be a live file.
    fn live_file(&mut self) -> Result<Entry, DecodeError> {
        let e = self.entry()?;
        if e.deleted || e.meta.kind != EntryKind::File {
            return Err(DecodeError::Invalid("a file entry that is not a live file"));
        }
        Ok(e)
    }
    fn record(&mut self) -> Result<Record, DecodeError> {
        match self.u8("record kind")? {
            0 => Ok(Record::Entry(self.entry()?)),
            1 => {
                let from = self.path()?;
                let to = self.path()?;
                if to == from || to.as_str().starts_with(&format!("{from}/")) {
                    return Err(DecodeError::Invalid("a directory moved into itself"));
                }
                Ok(Record::MovePrefix {
                    from,
                    to,
                    by: self.node("author node id")?,
                    counter: self.u64("counter")?,
                })
            }
            k => Err(DecodeError::BadKind(k)),
        }
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

/// Like [`decode`], taking the payload's buffer: a `FileData` keeps it as its data (its
/// head shifted out) instead of copying the chunk into a new one. An encrypted link opens
/// each frame into a buffer of its own; this is how that buffer becomes the message.
pub fn decode_owned(mut payload: Vec<u8>) -> Result<Message, DecodeError> {
    // Tag, transfer id, data length: the `FileData` head without the frame's length.
    let head = FILE_DATA_HEAD - FRAME_HEADER;
    if payload.first() != Some(&tag::FILE_DATA) || payload.len() < head {
        return decode(&payload);
    }
    let xid = u32::from_be_bytes([payload[1], payload[2], payload[3], payload[4]]);
    let len = u32::from_be_bytes([payload[5], payload[6], payload[7], payload[8]]) as usize;
    if payload.len() > MAX_FRAME || len != payload.len() - head || len > CHUNK_SIZE {
        // Not a well-formed chunk: `decode` says what is wrong, in its words.
        return decode(&payload);
    }
    payload.drain(..head);
    Ok(TransferMsg::FileData { xid, data: payload }.into())
}

/// Decodes one frame payload (without the length prefix).
pub fn decode(payload: &[u8]) -> Result<Message, DecodeError> {
    if payload.len() > MAX_FRAME {
        return Err(DecodeError::FrameTooLarge(payload.len()));
    }
    let mut d = Dec { buf: payload };
    let t = d.u8("tag")?;
    let msg: Message = match t {
        tag::HELLO => LinkMsg::Hello(decode_hello(&mut d)?).into(),
        tag::REFUSE => LinkMsg::Refuse {
            reason: d.reason()?,
        }
        .into(),
        tag::PING => LinkMsg::Ping.into(),
        tag::PONG => LinkMsg::Pong.into(),
        tag::CLAIM => ElectionMsg::Claim {
            ticket: d.u64("ticket")?,
            storage: d.storage()?,
        }
        .into(),
        tag::GRANT => ElectionMsg::Grant {
            ticket: d.u64("ticket")?,
        }
        .into(),
        tag::DENY => ElectionMsg::Deny {
            ticket: d.u64("ticket")?,
        }
        .into(),
        tag::RELEASE => ElectionMsg::Release {
            ticket: d.u64("ticket")?,
        }
        .into(),
        tag::SESSION_START => {
            let sid = d.u64("sid")?;
            let storage = d.storage()?;
            SessionMsg::Start {
                sid,
                storage,
                members: d.nodes("members", "member node id")?,
            }
            .into()
        }
        tag::SESSION_ABORT => SessionMsg::Abort {
            sid: d.u64("sid")?,
            reason: d.reason()?,
        }
        .into(),
        tag::SESSION_ALIVE => SessionMsg::Alive { sid: d.u64("sid")? }.into(),
        tag::INDEX_SUMMARY => {
            let sid = d.u64("sid")?;
            let index_id = d.u64("index id")?;
            let seq = d.u64("sequence number")?;
            let count = d.u64("count")?;
            let digest = d.array("digest")?;
            SessionMsg::IndexSummary {
                sid,
                index_id,
                seq,
                count,
                digest,
                peers: d.nodes("peers", "peer node id")?,
            }
            .into()
        }
        tag::INDEX_REQUEST => SessionMsg::IndexRequest {
            sid: d.u64("sid")?,
            since: d.u64("since")?,
        }
        .into(),
        tag::INDEX_CHUNK => {
            let sid = d.u64("sid")?;
            let n = d.count("index records", MIN_RECORD)?;
            let mut records = Vec::new();
            for _ in 0..n {
                records.push(d.record()?);
            }
            SessionMsg::IndexChunk { sid, records }.into()
        }
        tag::INDEX_END => SessionMsg::IndexEnd {
            sid: d.u64("sid")?,
            seq: d.u64("sequence number")?,
        }
        .into(),
        tag::PLAN_CHUNK => {
            let sid = d.u64("sid")?;
            let n = d.count("plan items", MIN_PLAN_ITEM)?;
            let mut items = Vec::new();
            for _ in 0..n {
                items.push(decode_plan_item(&mut d)?);
            }
            SessionMsg::PlanChunk { sid, items }.into()
        }
        tag::PLAN_END => SessionMsg::PlanEnd { sid: d.u64("sid")? }.into(),
        tag::PLAN_READY => SessionMsg::PlanReady { sid: d.u64("sid")? }.into(),
        tag::GO => SessionMsg::Go { sid: d.u64("sid")? }.into(),
        tag::PART_DONE => SessionMsg::PartDone {
            sid: d.u64("sid")?,
            stats: PartStats {
                files_sent: d.u32("stats")?,
                bytes_sent: d.u64("stats")?,
                files_received: d.u32("stats")?,
                bytes_received: d.u64("stats")?,
                deleted: d.u32("stats")?,
                failed: d.u32("stats")?,
            },
        }
        .into(),
        tag::SESSION_END => SessionMsg::End {
            sid: d.u64("sid")?,
            ok: d.bool("ok")?,
        }
        .into(),
        tag::FILE_START => TransferMsg::FileStart {
            sid: d.u64("sid")?,
            xid: d.u32("xid")?,
            meta: d.file_meta()?,
        }
        .into(),
        tag::FILE_DATA => {
            let xid = d.u32("xid")?;
            let data = d.bytes("data")?;
            if data.len() > CHUNK_SIZE {
                return Err(DecodeError::TooMany(
                    "data bytes in one chunk",
                    data.len() as u64,
                ));
            }
            TransferMsg::FileData {
                xid,
                data: data.to_vec(),
            }
            .into()
        }
        tag::FILE_END => TransferMsg::FileEnd {
            xid: d.u32("xid")?,
            hash: d.array("hash")?,
        }
        .into(),
        tag::FILE_ABORT => TransferMsg::FileAbort {
            xid: d.u32("xid")?,
            reason: d.reason()?,
        }
        .into(),
        tag::FILE_REJECT => TransferMsg::FileReject {
            xid: d.u32("xid")?,
            reason: d.reason()?,
        }
        .into(),
        tag::FILE_RESUME => TransferMsg::FileResume {
            xid: d.u32("xid")?,
            offset: d.u64("offset")?,
        }
        .into(),
        tag::FILE_SKIP => TransferMsg::FileSkip {
            xid: d.u32("xid")?,
            offset: d.u64("offset")?,
        }
        .into(),
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
            TransferMsg::Signature { sid, path, sig }.into()
        }
        tag::FILE_COPY => TransferMsg::FileCopy {
            xid: d.u32("xid")?,
            first: d.u32("first block")?,
            count: d.u32("block count")?,
        }
        .into(),
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
        return Err(DecodeError::Version(version));
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
    let clock_ms = d.i64("clock")?;
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
        clock_ms,
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
                    expect: d.version("target's version")?,
                });
            }
            Ok(PlanItem::Send { meta, to })
        }
        1 => {
            let entry = d.live_file()?;
            let from = d.node("source node id")?;
            let expect = d.version("expected version")?;
            Ok(PlanItem::Receive {
                entry,
                from,
                expect,
            })
        }
        2 => {
            let entry = d.entry()?;
            if entry.deleted || entry.meta.kind != EntryKind::Dir {
                return Err(DecodeError::Invalid("a directory to make that is not one"));
            }
            Ok(PlanItem::MakeDir { entry })
        }
        3 => {
            let entry = d.entry()?;
            if !entry.deleted {
                return Err(DecodeError::Invalid("a deletion that is not a tombstone"));
            }
            let expect = d.version("expected version")?;
            Ok(PlanItem::Delete { entry, expect })
        }
        4 => Ok(PlanItem::SetVersion {
            entry: d.entry()?,
            expect: d.version("expected version")?,
        }),
        5 => {
            let from = d.path()?;
            let Some(expect) = d.version("expected version")? else {
                return Err(DecodeError::Invalid("a rename of nothing"));
            };
            let entry = d.live_file()?;
            let gone = d.entry()?;
            if !gone.deleted || gone.meta.path != from || entry.meta.path == from {
                return Err(DecodeError::Invalid("a rename that does not add up"));
            }
            Ok(PlanItem::Rename {
                from,
                expect,
                entry,
                gone,
            })
        }
        6 => {
            let from = d.path()?;
            let to = d.path()?;
            if to == from || to.as_str().starts_with(&format!("{from}/")) {
                return Err(DecodeError::Invalid("a directory moved into itself"));
            }
            Ok(PlanItem::MoveDir {
                from,
                to,
                by: d.node("author node id")?,
                counter: d.u64("counter")?,
            })
        }
        k => Err(DecodeError::BadKind(k)),
    }
}
