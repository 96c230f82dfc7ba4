//! Receiving files on the `sync` thread: one place for everything a received file goes
//! through — the signature of the old version when a delta is coming, the transfer's bytes
//! (literal, or blocks copied from that old version), the length and hash checks, and the
//! batched commit — and one outcome for each file ([`Ended`]), which the thread hands to the
//! core once.
//!
//! A transfer is accepted only if the session's plan expects exactly that path, version and
//! sender (the core decides that before [`Receiver::start`]). Bytes go to a temporary file
//! (see `fsops`), the length and the whole-file BLAKE3 hash are checked, and only then is the
//! file committed — which itself refuses if the local file changed since it was indexed.
//! Verified files are committed in batches: one `syncfs` makes a batch durable before any of
//! it is renamed into place, one more after (see `fsops::commit_batch`). Any failure drops
//! the temp file.

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};

use crate::delta::{self, Signature, SignatureBuilder};
use crate::fsops::{self, CommitError, Prepared, StorageDir, TempFile};
use crate::model::{FileMeta, RelPath, Version};
use crate::net::handle::{ConnId, NetHandle};
use crate::proto::{Digest, TransferMsg, CHUNK_SIZE, RESUME_MIN};

use super::core::{Accepted, Violation};
use super::send::Dest;
use crate::history::{Entry, Vv};
use crate::model::NodeId;

/// Most files being received at once, from all senders together: each holds a temporary
/// file (and, for a delta, its base) open. Every sender keeps to its own
/// `max_parallel_transfers` (at most 64), but many senders, or a hostile one, could open
/// far more; past this a new file is refused and retried at the next session.
pub const MAX_INCOMING: usize = 64;
/// Most received files waiting for one batched commit (each holds two descriptors).
const MAX_COMMIT_BATCH: usize = 64;
/// Longest a received file waits for its batch while more data is still arriving.
const COMMIT_DELAY: Duration = Duration::from_millis(50);

/// A piece of a file being received.
pub enum Chunk<'a> {
    Literal(&'a [u8]),
    Copy(u32, u32),
    /// The stream skips to this offset: the bytes before it come from the partial offered.
    Skip(u64),
}

/// What became of a chunk.
pub enum ChunkOutcome {
    /// No such transfer (one we rejected or dropped; the sender stops soon).
    Unknown,
    Written,
    /// The transfer cannot go on here: tell the sender (`FileReject`) and the core.
    Ended(Ended),
    /// The peer broke the protocol: disconnect it.
    Violation(Violation),
}

/// Received, verified files not committed yet.
#[derive(Default)]
struct PendingCommits {
    /// With the index of their storage.
    files: Vec<(usize, Verified)>,
    /// When the oldest arrived.
    since: Option<Instant>,
}

/// The receiving side of the sync thread.
#[derive(Default)]
pub struct Receiver {
    /// Transfers in progress, by (connection, transfer id).
    incoming: HashMap<(ConnId, u32), Incoming>,
    /// Signatures this node sent for files it receives as deltas, by (session, path): what
    /// their block copies are checked against.
    bases: HashMap<(u64, RelPath), Signature>,
    signer: Signer,
    pending: PendingCommits,
    buf: Vec<u8>,
}

impl Receiver {
    /// Bytes of the files being received, as far as each got: the part of a session's
    /// progress between whole files.
    pub fn in_flight(&self) -> u64 {
        self.incoming.values().map(|t| t.received).sum()
    }

    /// A transfer of session `sid` in `storage` that the core accepted: what the local path
    /// must still hold, and the version to record.
    pub fn start(
        &mut self,
        conn: ConnId,
        xid: u32,
        (sid, storage): (u64, usize),
        meta: FileMeta,
        accepted: Accepted,
    ) -> Result<(), Violation> {
        if self.incoming.contains_key(&(conn, xid)) {
            return Err(Violation::ReusedTransferId);
        }
        let base = self.bases.remove(&(sid, meta.path.clone()));
        self.incoming.insert(
            (conn, xid),
            Incoming::new(sid, storage, meta, accepted, base),
        );
        Ok(())
    }

    /// Files being received right now.
    pub fn incoming(&self) -> usize {
        self.incoming.len()
    }

    /// Right after [`Receiver::start`]: how much of this version a partial kept from an
    /// interrupted transfer holds (0: none), to offer the sender (`FileResume`), which
    /// waits for it. Only for files large enough to have been kept (`None` for the
    /// others), so a tree of small files costs no lookup and no message.
    pub fn offer_resume(&mut self, conn: ConnId, xid: u32, dir: &StorageDir) -> Option<u64> {
        let inc = self.incoming.get_mut(&(conn, xid))?;
        if inc.meta.size < RESUME_MIN {
            return None;
        }
        let (file, len) = match dir.open_partial(&inc.meta) {
            Ok(Some(found)) => found,
            Ok(None) => return Some(0),
            Err(e) => {
                log::debug!("cannot open the partial of {}: {e}", inc.meta.path);
                return Some(0);
            }
        };
        if len > inc.meta.size {
            // No prefix of this version: left to age out.
            return Some(0);
        }
        inc.partial = Some(Partial { file, len });
        Some(len)
    }

    /// Literal bytes or block copies for transfer `xid` on `conn`; `dir` is the root of
    /// the session's storage.
    pub fn chunk(
        &mut self,
        conn: ConnId,
        xid: u32,
        chunk: Chunk<'_>,
        dir: &StorageDir,
    ) -> ChunkOutcome {
        let Some(inc) = self.incoming.get_mut(&(conn, xid)) else {
            return ChunkOutcome::Unknown;
        };
        let r = match chunk {
            Chunk::Literal(data) => inc.write(dir, data),
            Chunk::Copy(first, count) => inc.copy(dir, first, count, &mut self.buf),
            Chunk::Skip(offset) => inc.skip(dir, offset, &mut self.buf),
        };
        let end = match r {
            Ok(()) => return ChunkOutcome::Written,
            Err(WriteError::Violation(reason)) => {
                self.incoming.remove(&(conn, xid));
                return ChunkOutcome::Violation(Violation::Transfer(reason));
            }
            Err(WriteError::BaseChanged(why)) => RecvEnd::KeptLocal(why),
            Err(WriteError::Io(why)) => RecvEnd::Failed(why),
        };
        let (storage, sid, path) = (inc.storage, inc.sid, inc.meta.path.clone());
        self.incoming.remove(&(conn, xid));
        ChunkOutcome::Ended(Ended {
            storage,
            sid,
            path,
            end,
        })
    }

    /// The sender's last word on `xid`: verifies the file and queues it for the batched
    /// commit. Returns the files that reached their end: this one if it failed its checks,
    /// or a whole batch if this one filled it.
    pub fn end(
        &mut self,
        conn: ConnId,
        xid: u32,
        hash: &Digest,
        dir: &StorageDir,
        now: Instant,
    ) -> Vec<Ended> {
        let Some(inc) = self.incoming.remove(&(conn, xid)) else {
            return Vec::new();
        };
        let (storage, sid, path) = (inc.storage, inc.sid, inc.meta.path.clone());
        match inc.finish(dir, hash) {
            Finished::Ready(v) => {
                self.pending.since.get_or_insert(now);
                self.pending.files.push((storage, v));
                if self.pending.files.len() >= MAX_COMMIT_BATCH {
                    return self.commit_all();
                }
                Vec::new()
            }
            Finished::Done(end) => vec![Ended {
                storage,
                sid,
                path,
                end,
            }],
        }
    }

    /// The sender gave up on `xid`: its temporary file is dropped.
    pub fn abort(&mut self, conn: ConnId, xid: u32, reason: String) -> Option<Ended> {
        let inc = self.incoming.remove(&(conn, xid))?;
        Some(Ended {
            storage: inc.storage,
            sid: inc.sid,
            path: inc.meta.path.clone(),
            end: RecvEnd::Aborted(reason),
        })
    }

    /// Commits the verified files now if nothing else is being received (the batch cannot
    /// grow) or the oldest has waited long enough.
    pub fn commit_if_due(&mut self, now: Instant) -> Vec<Ended> {
        match self.pending.since {
            Some(since) if self.incoming.is_empty() || now >= since + COMMIT_DELAY => {
                self.commit_all()
            }
            _ => Vec::new(),
        }
    }

    /// Puts every verified file in place in one batch. Files are committed even if their
    /// session has ended meanwhile: their contents are complete and verified.
    pub fn commit_all(&mut self) -> Vec<Ended> {
        self.pending.since = None;
        let files = std::mem::take(&mut self.pending.files);
        if files.is_empty() {
            return Vec::new();
        }
        let (storages, batch): (Vec<usize>, Vec<Verified>) = files.into_iter().unzip();
        storages
            .into_iter()
            .zip(commit_verified(batch))
            .map(|(storage, (sid, path, end))| Ended {
                storage,
                sid,
                path,
                end,
            })
            .collect()
    }

    /// When [`Receiver::commit_if_due`] must run next.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.pending.since.map(|s| s + COMMIT_DELAY)
    }

    /// Computes the signature this node's version `base` of `path` (session `sid`) and
    /// sends it to `to`, between other work ([`Receiver::pump_signatures`]).
    pub fn queue_signature(&mut self, sid: u64, path: RelPath, base: Version, to: Dest) {
        self.signer.push(SigJob::new(sid, path, base, to));
    }

    /// Reads old versions for signatures, up to `budget` bytes. Returns the bytes read and
    /// whether there is more to do now.
    pub fn pump_signatures(
        &mut self,
        dir: &StorageDir,
        net: &NetHandle,
        budget: usize,
    ) -> (usize, bool) {
        let (signed, read, more) = self.signer.pump(dir, net, budget, &mut self.buf);
        for d in signed {
            if let Some(sig) = d.sig {
                self.bases.insert((d.sid, d.path), sig);
            }
        }
        (read, more)
    }

    pub fn signing_idle(&self) -> bool {
        self.signer.is_idle()
    }

    /// A connection is gone: its transfers are interrupted (see [`Incoming::interrupted`]).
    pub fn drop_conn(&mut self, conn: ConnId) {
        self.signer.drop_receiver(conn);
        self.interrupt(|(c, _), _| *c == conn);
    }

    /// Forgets every transfer of session `sid` (verified files are still committed); they
    /// are interrupted (see [`Incoming::interrupted`]).
    pub fn cancel_session(&mut self, sid: u64) {
        self.signer.cancel_session(sid);
        self.interrupt(|_, inc| inc.sid == sid);
        self.bases.retain(|(s, _), _| *s != sid);
    }

    /// Drops every transfer in progress, as when the daemon stops: each is interrupted.
    pub fn drop_all(&mut self) {
        self.interrupt(|_, _| true);
    }

    fn interrupt(&mut self, which: impl Fn(&(ConnId, u32), &Incoming) -> bool) {
        let keys: Vec<(ConnId, u32)> = self
            .incoming
            .iter()
            .filter(|(k, inc)| which(k, inc))
            .map(|(k, _)| *k)
            .collect();
        for k in keys {
            if let Some(inc) = self.incoming.remove(&k) {
                inc.interrupted();
            }
        }
    }

    /// Gives back what a big session left behind.
    pub fn shrink(&mut self) {
        self.incoming.shrink_to_fit();
        self.bases.shrink_to_fit();
        self.buf = Vec::new();
    }
}

// ---------------------------------------------------------------------------------------
// Signatures of the versions this node has, for the senders of deltas

/// A signature to compute for the sender of a delta.
pub struct SigJob {
    pub sid: u64,
    pub path: RelPath,
    /// The version the plan says this node has: the base of the delta.
    pub base: Version,
    pub to: Dest,
    state: Option<(File, SignatureBuilder)>,
}

impl SigJob {
    pub fn new(sid: u64, path: RelPath, base: Version, to: Dest) -> SigJob {
        SigJob {
            sid,
            path,
            base,
            to,
            state: None,
        }
    }
}

/// Computes signatures one chunk at a time between other work.
#[derive(Default)]
struct Signer {
    jobs: VecDeque<SigJob>,
}

/// A finished signature: what was sent, so the receiving side can check copies against it.
struct SigDone {
    pub sid: u64,
    pub path: RelPath,
    /// `None` when an empty signature was sent (no usable base).
    pub sig: Option<Signature>,
}

impl Signer {
    fn push(&mut self, job: SigJob) {
        self.jobs.push_back(job);
    }

    fn is_idle(&self) -> bool {
        self.jobs.is_empty()
    }

    fn cancel_session(&mut self, sid: u64) {
        self.jobs.retain(|j| j.sid != sid);
    }

    fn drop_receiver(&mut self, conn: ConnId) {
        self.jobs.retain(|j| j.to.conn != conn);
    }

    /// Reads up to `budget` bytes of old versions; returns finished signatures (already
    /// sent), the bytes read, and whether there is more to do now.
    fn pump(
        &mut self,
        storage: &StorageDir,
        net: &NetHandle,
        budget: usize,
        buf: &mut Vec<u8>,
    ) -> (Vec<SigDone>, usize, bool) {
        let mut done = Vec::new();
        let mut spent = 0;
        while spent < budget {
            let Some(job) = self.jobs.front_mut() else {
                break;
            };
            if !job.to.has_room() {
                break;
            }
            match sign_step(job, storage, buf) {
                Ok(Some(n)) => spent += n,
                Ok(None) | Err(_) => {
                    let Some(job) = self.jobs.pop_front() else {
                        break;
                    };
                    let sig = sign_done(job.state, job.base);
                    net.send_msg(
                        job.to.conn,
                        &job.to.outbound,
                        TransferMsg::Signature {
                            sid: job.sid,
                            path: job.path.clone(),
                            sig: sig.clone().unwrap_or_else(Signature::empty),
                        },
                    );
                    done.push(SigDone {
                        sid: job.sid,
                        path: job.path,
                        sig,
                    });
                }
            }
        }
        let more = self.jobs.front().is_some_and(|j| j.to.has_room());
        (done, spent, more)
    }
}

/// One chunk of a signature: `Ok(Some(n))` read n bytes, `Ok(None)` finished, `Err` no
/// usable base (the state is cleared so an empty signature goes out).
fn sign_step(
    job: &mut SigJob,
    storage: &StorageDir,
    buf: &mut Vec<u8>,
) -> Result<Option<usize>, ()> {
    if job.state.is_none() {
        let (file, st) = storage.open_read(&job.path).map_err(|_| ())?;
        if st.version() != Some(job.base) {
            return Err(());
        }
        job.state = Some((file, SignatureBuilder::new(delta::block_size_for(st.size))));
    }
    let Some((file, builder)) = &mut job.state else {
        return Err(());
    };
    buf.resize(CHUNK_SIZE, 0);
    let n = loop {
        match file.read(buf) {
            Ok(n) => break n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => {
                job.state = None;
                return Err(());
            }
        }
    };
    if n == 0 {
        return Ok(None);
    }
    if !builder.update(&buf[..n]) {
        // Too large for a signature: the whole file it is.
        job.state = None;
        return Err(());
    }
    Ok(Some(n))
}

fn sign_done(state: Option<(File, SignatureBuilder)>, base: Version) -> Option<Signature> {
    let (file, builder) = state?;
    let sig = builder.finish();
    // The base must still be the version we promised and read whole; otherwise send
    // nothing usable.
    let st = fsops::stat_file(&file).ok()?;
    (st.version() == Some(base) && st.size == sig.file_size).then_some(sig)
}

// ---------------------------------------------------------------------------------------
// Receiving

/// The old version a delta is built on.
struct Base {
    sig: Signature,
    file: Option<File>,
}

/// A partial of the version being received, kept from an interrupted transfer, and how
/// many of its bytes were offered to the sender.
struct Partial {
    file: File,
    len: u64,
}

/// A transfer being received.
struct Incoming {
    sid: u64,
    storage: usize,
    meta: FileMeta,
    /// What the local path must still hold for the commit.
    expect: Option<Version>,
    /// The version recorded once it is committed.
    vv: Vv,
    by: NodeId,
    base: Option<Base>,
    /// The partial offered to the sender, if any (see [`Receiver::offer_resume`]).
    partial: Option<Partial>,
    temp: Option<TempFile>,
    hasher: blake3::Hasher,
    received: u64,
}

/// How a received file ended: the one outcome the core hears of it.
#[derive(Debug)]
pub enum RecvEnd {
    /// In place: `entry` (with the content's hash and version) is what the history records;
    /// `ino` and `ctime` tell the next scan it need not read it.
    Committed {
        bytes: u64,
        entry: Entry,
        ino: u64,
        ctime: i64,
    },
    /// The local file changed since it was indexed: kept, not overwritten.
    KeptLocal(String),
    Failed(String),
    /// The sender gave up (its source changed); not a failure here.
    Aborted(String),
}

/// A received file that reached its end, in storage `storage`, session `sid`.
#[derive(Debug)]
pub struct Ended {
    pub storage: usize,
    pub sid: u64,
    pub path: RelPath,
    pub end: RecvEnd,
}

/// Why a chunk could not be taken.
enum WriteError {
    /// The peer broke the protocol (more bytes than announced, a copy outside the base).
    Violation(String),
    /// The local base changed: keep it, drop this transfer.
    BaseChanged(String),
    Io(String),
}

impl Incoming {
    /// `base` is the signature this node sent for the path, when it asked for a delta.
    fn new(
        sid: u64,
        storage: usize,
        meta: FileMeta,
        accepted: Accepted,
        base: Option<Signature>,
    ) -> Incoming {
        Incoming {
            sid,
            storage,
            meta,
            expect: accepted.expect,
            vv: accepted.vv,
            by: accepted.by,
            base: base.map(|sig| Base { sig, file: None }),
            partial: None,
            temp: None,
            hasher: blake3::Hasher::new(),
            received: 0,
        }
    }

    /// Appends literal bytes. The temp file is created on the first byte (or at the end for
    /// an empty file), so a transfer aborted before any data costs nothing on disk.
    fn write(&mut self, storage: &StorageDir, data: &[u8]) -> Result<(), WriteError> {
        let total = self.received + data.len() as u64;
        if total > self.meta.size {
            return Err(WriteError::Violation(format!(
                "sent more than the announced {} bytes for {}",
                self.meta.size, self.meta.path
            )));
        }
        let temp = self.temp(storage).map_err(WriteError::Io)?;
        temp.write_all(data)
            .map_err(|e| WriteError::Io(format!("cannot write {}: {e}", self.meta.path)))?;
        self.hasher.update(data);
        self.received = total;
        Ok(())
    }

    /// Appends blocks `first..first+count` of the old version.
    fn copy(
        &mut self,
        storage: &StorageDir,
        first: u32,
        count: u32,
        buf: &mut Vec<u8>,
    ) -> Result<(), WriteError> {
        let path = self.meta.path.clone();
        let Some(base) = &mut self.base else {
            return Err(WriteError::Violation(format!(
                "sent a block copy for {path}, which is not a delta"
            )));
        };
        let len = base
            .sig
            .check_copy(first, count)
            .map_err(|e| WriteError::Violation(format!("{e} ({path})")))?;
        if self.received + len > self.meta.size {
            return Err(WriteError::Violation(format!(
                "sent more than the announced {} bytes for {path}",
                self.meta.size
            )));
        }
        let mut offset = base.sig.block_offset(first);
        if base.file.is_none() {
            let (file, st) = storage
                .open_read(&path)
                .map_err(|e| WriteError::BaseChanged(format!("cannot open the old {path}: {e}")))?;
            if st.version() != self.expect || st.size != base.sig.file_size {
                return Err(WriteError::BaseChanged(format!(
                    "{path}: local copy changed during the sync; kept it"
                )));
            }
            base.file = Some(file);
        }
        let mut left = len;
        while left > 0 {
            let n = left.min(CHUNK_SIZE as u64) as usize;
            buf.resize(n, 0);
            let Some(file) = &self.base.as_ref().and_then(|b| b.file.as_ref()) else {
                return Err(WriteError::Io("old file vanished".into()));
            };
            file.read_exact_at(&mut buf[..n], offset)
                .map_err(|e| WriteError::BaseChanged(format!("cannot read the old {path}: {e}")))?;
            let data = std::mem::take(buf);
            let r = self.write(storage, &data[..n]);
            *buf = data;
            r?;
            offset += n as u64;
            left -= n as u64;
        }
        Ok(())
    }

    /// Takes the bytes from what was received so far up to `offset` from the partial: they
    /// are read for the hash, and the partial itself becomes the temporary file (cut at
    /// `offset`), so nothing is written twice.
    fn skip(
        &mut self,
        storage: &StorageDir,
        offset: u64,
        buf: &mut Vec<u8>,
    ) -> Result<(), WriteError> {
        let path = self.meta.path.clone();
        let Some(partial) = self.partial.take() else {
            return Err(WriteError::Violation(format!(
                "skipped ahead in {path}, which this node did not offer to resume"
            )));
        };
        if offset > partial.len || offset < self.received {
            return Err(WriteError::Violation(format!(
                "skipped to byte {offset} of {path}; {} were offered, {} received",
                partial.len, self.received
            )));
        }
        let mut at = self.received;
        while at < offset {
            let n = (offset - at).min(CHUNK_SIZE as u64) as usize;
            buf.resize(n, 0);
            partial
                .file
                .read_exact_at(&mut buf[..n], at)
                .map_err(|e| WriteError::Io(format!("cannot read what was kept of {path}: {e}")))?;
            self.hasher.update(&buf[..n]);
            at += n as u64;
        }
        let temp = storage
            .adopt_partial(&self.meta, offset)
            .map_err(|e| WriteError::Io(format!("cannot resume {path}: {e}")))?;
        // What the stream wrote before the skip is in the partial too.
        self.temp = Some(temp);
        self.received = offset;
        log::info!("{path}: resumed at byte {offset} of {}", self.meta.size);
        Ok(())
    }

    /// The transfer will not complete (its connection or session is gone, or the daemon
    /// stops): what arrived of a large file is kept to be resumed, else dropped.
    fn interrupted(mut self) {
        let Some(temp) = self.temp.take() else {
            return;
        };
        if self.received < RESUME_MIN {
            return;
        }
        // The partial it may have started from is superseded by the rename.
        self.partial = None;
        match temp.park(&self.meta) {
            Ok(()) => log::info!(
                "{}: kept the {} bytes received of {} to resume",
                self.meta.path,
                self.received,
                self.meta.size
            ),
            Err(e) => log::debug!("cannot keep what arrived of {}: {e}", self.meta.path),
        }
    }

    fn temp(&mut self, storage: &StorageDir) -> Result<&mut TempFile, String> {
        if self.temp.is_none() {
            let begun = if self.meta.size >= RESUME_MIN {
                storage.begin_resumable(&self.meta)
            } else {
                storage.begin_write(&self.meta.path)
            };
            let t = begun.map_err(|e| {
                format!("cannot create a temporary file for {}: {e}", self.meta.path)
            })?;
            self.temp = Some(t);
        }
        self.temp
            .as_mut()
            .ok_or_else(|| "temporary file vanished".to_owned())
    }

    /// Verifies length and hash and gives the temp file its mode and mtime: the file is
    /// then [`Finished::Ready`] for [`commit_verified`], which puts a batch of them in place.
    fn finish(mut self, storage: &StorageDir, hash: &Digest) -> Finished {
        if self.received != self.meta.size {
            return Finished::Done(RecvEnd::Failed(format!(
                "{}: got {} of {} bytes",
                self.meta.path, self.received, self.meta.size
            )));
        }
        if self.hasher.finalize().as_bytes() != hash {
            // A partial that led to this must not be offered again.
            if self.partial.take().is_some() {
                let _ = storage.remove_partial(&self.meta);
            }
            return Finished::Done(RecvEnd::Failed(format!(
                "{}: content hash mismatch; discarded",
                self.meta.path
            )));
        }
        if let Err(e) = self.temp(storage) {
            return Finished::Done(RecvEnd::Failed(e));
        }
        let Some(temp) = self.temp.take() else {
            return Finished::Done(RecvEnd::Failed("temporary file vanished".into()));
        };
        // The base is read; release it before its path is replaced.
        self.base = None;
        // Its bytes are in the new file, or were not wanted: it is of no more use.
        if self.partial.take().is_some() {
            if let Err(e) = storage.remove_partial(&self.meta) {
                log::debug!("cannot remove the partial of {}: {e}", self.meta.path);
            }
        }
        match temp.prepare(self.meta.mode, self.meta.mtime_ns, self.expect) {
            Ok(prepared) => Finished::Ready(Verified {
                sid: self.sid,
                bytes: self.received,
                entry: Entry {
                    meta: self.meta,
                    deleted: false,
                    hash: Some(*hash),
                    vv: self.vv,
                    by: self.by,
                    link: None,
                },
                prepared,
            }),
            Err(e) => Finished::Done(RecvEnd::Failed(format!(
                "cannot commit {}: {e}",
                self.meta.path
            ))),
        }
    }
}

/// How [`Incoming::finish`] ended.
enum Finished {
    /// Complete and verified; to be committed.
    Ready(Verified),
    /// Nothing to commit (the transfer failed its checks).
    Done(RecvEnd),
}

/// A received file whose length and hash are right, waiting to be committed.
struct Verified {
    sid: u64,
    bytes: u64,
    /// What the history records once it is in place.
    entry: Entry,
    prepared: Prepared,
}

/// Commits verified files in one batch (see [`fsops::commit_batch`]); one outcome per file,
/// in order, with its session and path.
fn commit_verified(batch: Vec<Verified>) -> Vec<(u64, RelPath, RecvEnd)> {
    let mut heads = Vec::with_capacity(batch.len());
    let mut files = Vec::with_capacity(batch.len());
    for v in batch {
        heads.push((v.sid, v.entry, v.bytes));
        files.push(v.prepared);
    }
    let results = fsops::commit_batch(files);
    heads
        .into_iter()
        .zip(results)
        .map(|((sid, entry, bytes), r)| {
            let path = entry.meta.path.clone();
            let done = match r {
                Ok(st) => RecvEnd::Committed {
                    bytes,
                    entry,
                    ino: st.ino,
                    ctime: st.ctime_ns,
                },
                Err(CommitError::Changed(what)) => RecvEnd::KeptLocal(format!(
                    "{path}: local copy changed during the sync ({what}); kept it"
                )),
                Err(e @ CommitError::Folded(_)) => {
                    RecvEnd::Failed(format!("cannot store {path}: {e}"))
                }
                Err(CommitError::Io(e)) => RecvEnd::Failed(format!("cannot commit {path}: {e}")),
            };
            (sid, path, done)
        })
        .collect()
}
