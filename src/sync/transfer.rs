//! File transfers on the `sync` thread: the sending engine, signatures, and the receiving
//! side.
//!
//! Sending: jobs wait in a queue; at most `max_parallel_transfers` are open at once. Each
//! active transfer reads one chunk at a time, hashes it, and hands it to `net` — to every
//! receiver at once for a whole-file transfer, or through the delta encoder for a receiver
//! that has an old version — but only while every receiver's outbound gauge is under
//! `OUT_HIGH`; a whole file is never in memory. A delta job waits (without taking a slot)
//! until its receiver's signature arrives. At the end the source is re-checked: a file that
//! changed while it was read is aborted, not sent as a mix of two versions.
//!
//! Signatures: a receiver expecting a delta reads its old version in chunks, between other
//! work, and sends the signature to the sender; a base that changed or cannot be read gets an
//! empty signature, which means "send it whole".
//!
//! Receiving: a transfer is accepted only if the session's plan expects exactly that path,
//! version and sender. Bytes (literal, or blocks copied from the old version the signature
//! described) go to a temporary file (see `fsops`), the length and the whole-file BLAKE3 hash
//! are checked, and only then is it committed — which itself refuses if the local file
//! changed since it was indexed. Any failure drops the temp file.

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use crate::delta::{self, DeltaEncoder, DeltaOp, Signature, SignatureBuilder};
use crate::fsops::{self, CommitError, Expect, Prepared, StorageDir, TempFile};
use crate::model::{FileMeta, RelPath};
use crate::net::handle::{ConnId, NetHandle, OUT_HIGH};
use crate::proto::{self, Digest, Message, CHUNK_SIZE};

/// Where a file goes: a connection and its outbound gauge.
#[derive(Clone)]
pub struct Dest {
    pub conn: ConnId,
    pub outbound: Arc<AtomicUsize>,
}

impl Dest {
    fn has_room(&self) -> bool {
        self.outbound.load(Ordering::Acquire) < OUT_HIGH
    }
}

/// A file to send. `delta` jobs have exactly one receiver and need its signature.
pub struct OutJob {
    pub sid: u64,
    pub meta: FileMeta,
    pub to: Vec<Dest>,
    /// The core's send this job is part of (one send may become several jobs).
    pub group: u64,
    pub delta: bool,
}

enum Mode {
    Whole,
    Delta(Box<DeltaEncoder>),
}

struct Active {
    xid: u32,
    job: OutJob,
    file: File,
    hasher: blake3::Hasher,
    /// Bytes read from the source.
    read: u64,
    /// File data put on the wire, over all receivers.
    wire: u64,
    mode: Mode,
}

/// What happened to a job, for the session's accounting.
pub enum SendDone {
    Sent {
        sid: u64,
        group: u64,
        wire: u64,
        receivers: usize,
        read: u64,
    },
    /// `benign`: the source changed or every receiver declined — nothing is wrong, the
    /// next sync will pick it up. Otherwise a real failure (I/O error).
    Failed {
        sid: u64,
        group: u64,
        path: String,
        reason: String,
        benign: bool,
    },
}

/// The sending engine.
pub struct Sender {
    queue: VecDeque<OutJob>,
    /// Delta jobs whose signature has not arrived.
    waiting: Vec<OutJob>,
    /// Signatures that arrived, by (session, path, connection).
    sigs: HashMap<(u64, RelPath, ConnId), Signature>,
    active: Vec<Active>,
    next_xid: u32,
    max_parallel: usize,
    buf: Vec<u8>,
    /// Jobs finished outside `pump` (dropped receivers), reported by the next `pump`.
    finished: Vec<SendDone>,
}

impl Sender {
    pub fn new(max_parallel: usize) -> Sender {
        Sender {
            queue: VecDeque::new(),
            waiting: Vec::new(),
            sigs: HashMap::new(),
            active: Vec::new(),
            next_xid: 1,
            max_parallel: max_parallel.max(1),
            buf: Vec::new(),
            finished: Vec::new(),
        }
    }

    pub fn push(&mut self, job: OutJob) {
        self.queue.push_back(job);
    }

    /// Whether the queue is short enough to take more jobs: enough to start a new file as
    /// soon as a slot frees, and no more (queued jobs are memory and nothing else).
    pub fn wants_jobs(&self) -> bool {
        self.queue.len() < 2 * self.max_parallel + 8
    }

    pub fn has_free_slot(&self) -> bool {
        self.active.len() < self.max_parallel
    }

    pub fn is_idle(&self) -> bool {
        self.queue.is_empty() && self.active.is_empty() && self.waiting.is_empty()
    }

    /// Gives back the capacity a big session left in the queues (a queue of 10,000 jobs
    /// keeps its 2 MiB after it drains); called when a session ends.
    pub fn shrink(&mut self) {
        self.queue.shrink_to_fit();
        self.waiting.shrink_to_fit();
        self.sigs.shrink_to_fit();
        self.active.shrink_to_fit();
        self.finished.shrink_to_fit();
        self.buf = Vec::new();
    }

    /// Signatures kept for delta jobs that have not started.
    pub fn pending_signatures(&self) -> usize {
        self.sigs.len()
    }

    /// A receiver's signature for a delta job (which may not exist yet).
    pub fn add_signature(&mut self, sid: u64, path: RelPath, conn: ConnId, sig: Signature) {
        if let Some(k) = self.waiting.iter().position(|j| {
            j.sid == sid && j.meta.path == path && j.to.first().is_some_and(|d| d.conn == conn)
        }) {
            // Signatures arrive in the order receivers computed them; serve them first.
            let job = self.waiting.swap_remove(k);
            self.sigs.insert((sid, path, conn), sig);
            self.queue.push_front(job);
        } else {
            self.sigs.insert((sid, path, conn), sig);
        }
    }

    /// Forgets everything of session `sid` (it was aborted). Receivers drop their side when
    /// they learn of the abort; streams in flight are told with `FileAbort`.
    pub fn cancel_session(&mut self, sid: u64, net: &NetHandle) {
        self.queue.retain(|j| j.sid != sid);
        self.waiting.retain(|j| j.sid != sid);
        self.sigs.retain(|(s, _, _), _| *s != sid);
        self.finished.retain(|d| match d {
            SendDone::Sent { sid: s, .. } | SendDone::Failed { sid: s, .. } => *s != sid,
        });
        let (gone, keep): (Vec<Active>, Vec<Active>) =
            self.active.drain(..).partition(|a| a.job.sid == sid);
        self.active = keep;
        for a in gone {
            abort_all(net, &a.job.to, a.xid, "session aborted");
        }
    }

    /// A receiver asked us to stop sending `xid`, or its connection is gone (`xid` None).
    pub fn drop_receiver(&mut self, conn: ConnId, xid: Option<u32>) {
        for a in &mut self.active {
            if xid.is_none_or(|x| x == a.xid) {
                a.job.to.retain(|d| d.conn != conn);
            }
        }
        if xid.is_none() {
            for j in &mut self.queue {
                j.to.retain(|d| d.conn != conn);
            }
            let (gone, keep): (Vec<OutJob>, Vec<OutJob>) = self
                .waiting
                .drain(..)
                .partition(|j| j.to.iter().any(|d| d.conn == conn));
            self.waiting = keep;
            for j in gone {
                self.finished.push(skipped(&j, "the receiver went away"));
            }
            self.sigs.retain(|(_, _, c), _| *c != conn);
        }
    }

    /// Moves data: starts queued jobs up to the parallel limit and sends chunks while the
    /// receivers have room, up to `budget` bytes. Returns finished jobs, the bytes read, and
    /// whether more work could be done right now (so the caller should not sleep).
    pub fn pump(
        &mut self,
        storage: &StorageDir,
        net: &NetHandle,
        budget: usize,
    ) -> (Vec<SendDone>, usize, bool) {
        let mut done = std::mem::take(&mut self.finished);
        while self.active.len() < self.max_parallel {
            let Some(job) = self.queue.pop_front() else {
                break;
            };
            if job.to.is_empty() {
                done.push(skipped(&job, "no receiver left"));
                continue;
            }
            let mode = if job.delta {
                let key = (job.sid, job.meta.path.clone(), job.to[0].conn);
                match self.sigs.remove(&key) {
                    None => {
                        self.waiting.push(job);
                        continue;
                    }
                    // No usable base on the receiver: the whole file.
                    Some(sig) if sig.blocks.is_empty() => Mode::Whole,
                    Some(sig) => Mode::Delta(Box::new(DeltaEncoder::new(sig, job.meta.size))),
                }
            } else {
                Mode::Whole
            };
            let xid = self.next_xid;
            self.next_xid = self.next_xid.wrapping_add(1).max(1);
            for d in &job.to {
                net.send_msg(
                    d.conn,
                    &d.outbound,
                    Message::FileStart {
                        sid: job.sid,
                        xid,
                        meta: job.meta.clone(),
                    },
                );
            }
            match open_source(storage, &job.meta) {
                Ok(file) => self.active.push(Active {
                    xid,
                    job,
                    file,
                    hasher: blake3::Hasher::new(),
                    read: 0,
                    wire: 0,
                    mode,
                }),
                Err((reason, benign)) => {
                    abort_all(net, &job.to, xid, &reason);
                    done.push(SendDone::Failed {
                        sid: job.sid,
                        group: job.group,
                        path: job.meta.path.to_string(),
                        reason,
                        benign,
                    });
                }
            }
        }

        let mut spent = 0;
        let mut progressed = true;
        while spent < budget && progressed {
            progressed = false;
            let mut i = 0;
            while i < self.active.len() {
                let a = &mut self.active[i];
                if a.job.to.is_empty() {
                    let a = self.active.swap_remove(i);
                    done.push(skipped(&a.job, "every receiver declined"));
                    continue;
                }
                if !a.job.to.iter().all(Dest::has_room) {
                    i += 1;
                    continue;
                }
                match step(a, net, &mut self.buf) {
                    Ok(Step::Sent(n)) => {
                        spent += n;
                        progressed = true;
                        i += 1;
                    }
                    Ok(Step::Finished) => {
                        progressed = true;
                        let a = self.active.swap_remove(i);
                        done.push(SendDone::Sent {
                            sid: a.job.sid,
                            group: a.job.group,
                            wire: a.wire,
                            receivers: a.job.to.len(),
                            read: a.read,
                        });
                    }
                    Err((reason, benign)) => {
                        let a = self.active.swap_remove(i);
                        abort_all(net, &a.job.to, a.xid, &reason);
                        done.push(SendDone::Failed {
                            sid: a.job.sid,
                            group: a.job.group,
                            path: a.job.meta.path.to_string(),
                            reason,
                            benign,
                        });
                    }
                }
            }
        }
        let can_continue = (!self.queue.is_empty() && self.active.len() < self.max_parallel)
            || self
                .active
                .iter()
                .any(|a| a.job.to.iter().all(Dest::has_room));
        (done, spent, can_continue)
    }
}

fn skipped(job: &OutJob, reason: &str) -> SendDone {
    SendDone::Failed {
        sid: job.sid,
        group: job.group,
        path: job.meta.path.to_string(),
        reason: reason.to_owned(),
        benign: true,
    }
}

enum Step {
    Sent(usize),
    Finished,
}

fn abort_all(net: &NetHandle, to: &[Dest], xid: u32, reason: &str) {
    for d in to {
        net.send_msg(
            d.conn,
            &d.outbound,
            Message::FileAbort {
                xid,
                reason: reason.to_owned(),
            },
        );
    }
}

/// A reason, and whether it is benign (the source changed: the next sync handles it).
type StepError = (String, bool);

/// Opens the source and checks it is still the version the plan promised.
fn open_source(storage: &StorageDir, meta: &FileMeta) -> Result<File, StepError> {
    let (file, st) = storage.open_read(&meta.path).map_err(|e| {
        let gone = e.kind() == io::ErrorKind::NotFound;
        (format!("cannot open {}: {e}", meta.path), gone)
    })?;
    if st.size != meta.size || st.mtime_ns != meta.mtime_ns {
        return Err((
            format!(
                "{} changed since it was indexed; it will be sent by the next sync",
                meta.path
            ),
            true,
        ));
    }
    Ok(file)
}

/// Reads the next chunk of `a` and sends it (or its delta), or sends the end.
fn step(a: &mut Active, net: &NetHandle, buf: &mut Vec<u8>) -> Result<Step, StepError> {
    let remaining = a.job.meta.size - a.read;
    if remaining == 0 {
        return finish(a, net);
    }
    let want = remaining.min(CHUNK_SIZE as u64) as usize;
    let path = &a.job.meta.path;
    match &mut a.mode {
        Mode::Whole => {
            // The chunk is read straight into its frame, which every receiver's connection
            // then writes from: the data is copied once, by the kernel, on its way in.
            let mut frame = Vec::with_capacity(proto::FILE_DATA_HEAD + want);
            frame.extend_from_slice(&proto::file_data_head(a.xid, want));
            read_chunk(&mut a.file, path, want, &mut frame)?;
            a.hasher.update(&frame[proto::FILE_DATA_HEAD..]);
            let frame = Arc::new(frame);
            for d in &a.job.to {
                net.send_frame(d.conn, &d.outbound, frame.clone());
                a.wire += want as u64;
            }
        }
        Mode::Delta(enc) => {
            buf.clear();
            read_chunk(&mut a.file, path, want, buf)?;
            a.hasher.update(buf);
            let mut ops = Vec::new();
            enc.update(buf, &mut ops);
            send_ops(a.xid, &a.job.to, ops, &mut a.wire, net);
        }
    }
    a.read += want as u64;
    if a.read == a.job.meta.size {
        finish(a, net)?;
        return Ok(Step::Finished);
    }
    Ok(Step::Sent(want))
}

/// Appends the next `want` bytes of the source to `out` (`read_to_end` reads into the spare
/// capacity without zero-filling it first); a file that ends early changed under us.
fn read_chunk(
    file: &mut File,
    path: &RelPath,
    want: usize,
    out: &mut Vec<u8>,
) -> Result<(), StepError> {
    let got = file
        .take(want as u64)
        .read_to_end(out)
        .map_err(|e| (format!("cannot read {path}: {e}"), false))?;
    if got < want {
        return Err((
            format!("{path} shrank while it was being sent; it will be sent by the next sync"),
            true,
        ));
    }
    Ok(())
}

fn send_ops(xid: u32, to: &[Dest], ops: Vec<DeltaOp>, wire: &mut u64, net: &NetHandle) {
    for d in to {
        for op in &ops {
            let msg = match op {
                DeltaOp::Copy { first, count } => {
                    *wire += 12;
                    Message::FileCopy {
                        xid,
                        first: *first,
                        count: *count,
                    }
                }
                DeltaOp::Literal(bytes) => {
                    *wire += bytes.len() as u64;
                    Message::FileData {
                        xid,
                        data: bytes.clone(),
                    }
                }
            };
            net.send_msg(d.conn, &d.outbound, msg);
        }
    }
}

/// Re-checks the source after the last byte and sends the rest of a delta and the hash.
fn finish(a: &mut Active, net: &NetHandle) -> Result<Step, StepError> {
    let st = fsops::stat_file(&a.file)
        .map_err(|e| (format!("cannot re-check {}: {e}", a.job.meta.path), false))?;
    if st.size != a.job.meta.size || st.mtime_ns != a.job.meta.mtime_ns {
        return Err((
            format!(
                "{} changed while it was being sent; it will be sent by the next sync",
                a.job.meta.path
            ),
            true,
        ));
    }
    if let Mode::Delta(enc) = std::mem::replace(&mut a.mode, Mode::Whole) {
        let mut ops = Vec::new();
        enc.finish(&mut ops);
        send_ops(a.xid, &a.job.to, ops, &mut a.wire, net);
    }
    let hash: Digest = *a.hasher.finalize().as_bytes();
    for d in &a.job.to {
        net.send_msg(d.conn, &d.outbound, Message::FileEnd { xid: a.xid, hash });
    }
    Ok(Step::Finished)
}

// ---------------------------------------------------------------------------------------
// Signatures

/// A signature to compute for the sender of a delta.
pub struct SigJob {
    pub sid: u64,
    pub path: RelPath,
    /// The version the plan says this node has.
    pub expect: (u64, i64),
    pub to: Dest,
    state: Option<(File, SignatureBuilder)>,
}

impl SigJob {
    pub fn new(sid: u64, path: RelPath, expect: (u64, i64), to: Dest) -> SigJob {
        SigJob {
            sid,
            path,
            expect,
            to,
            state: None,
        }
    }
}

/// Computes signatures one chunk at a time between other work.
#[derive(Default)]
pub struct Signer {
    jobs: VecDeque<SigJob>,
}

/// A finished signature: what was sent, so the receiving side can check copies against it.
pub struct SigDone {
    pub sid: u64,
    pub path: RelPath,
    /// `None` when an empty signature was sent (no usable base).
    pub sig: Option<Signature>,
}

impl Signer {
    pub fn push(&mut self, job: SigJob) {
        self.jobs.push_back(job);
    }

    pub fn is_idle(&self) -> bool {
        self.jobs.is_empty()
    }

    pub fn cancel_session(&mut self, sid: u64) {
        self.jobs.retain(|j| j.sid != sid);
    }

    pub fn drop_receiver(&mut self, conn: ConnId) {
        self.jobs.retain(|j| j.to.conn != conn);
    }

    /// Reads up to `budget` bytes of old versions; returns finished signatures (already
    /// sent), the bytes read, and whether there is more to do now.
    pub fn pump(
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
                    let sig = sign_done(job.state, job.expect);
                    net.send_msg(
                        job.to.conn,
                        &job.to.outbound,
                        Message::Signature {
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
        if (st.size, st.mtime_ns) != job.expect {
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

fn sign_done(state: Option<(File, SignatureBuilder)>, expect: (u64, i64)) -> Option<Signature> {
    let (file, builder) = state?;
    let sig = builder.finish();
    // The base must still be the version we promised and read whole; otherwise send
    // nothing usable.
    let st = fsops::stat_file(&file).ok()?;
    ((st.size, st.mtime_ns) == expect && st.size == sig.file_size).then_some(sig)
}

// ---------------------------------------------------------------------------------------
// Receiving

/// The old version a delta is built on.
struct Base {
    sig: Signature,
    file: Option<File>,
}

/// A transfer being received.
pub struct Incoming {
    pub sid: u64,
    pub meta: FileMeta,
    pub expect: Option<(u64, i64)>,
    base: Option<Base>,
    temp: Option<TempFile>,
    hasher: blake3::Hasher,
    received: u64,
}

/// How a received transfer ended.
pub enum RecvDone {
    Committed {
        bytes: u64,
    },
    /// The local file changed since it was indexed: kept, not overwritten.
    KeptLocal(String),
    Failed(String),
}

/// Why a chunk could not be taken.
pub enum WriteError {
    /// The peer broke the protocol (more bytes than announced, a copy outside the base).
    Violation(String),
    /// The local base changed: keep it, drop this transfer.
    BaseChanged(String),
    Io(String),
}

impl Incoming {
    /// `base` is the signature this node sent for the path, when it asked for a delta.
    pub fn new(
        sid: u64,
        meta: FileMeta,
        expect: Option<(u64, i64)>,
        base: Option<Signature>,
    ) -> Incoming {
        Incoming {
            sid,
            meta,
            expect,
            base: base.map(|sig| Base { sig, file: None }),
            temp: None,
            hasher: blake3::Hasher::new(),
            received: 0,
        }
    }

    /// Appends literal bytes. The temp file is created on the first byte (or at the end for
    /// an empty file), so a transfer aborted before any data costs nothing on disk.
    pub fn write(&mut self, storage: &StorageDir, data: &[u8]) -> Result<(), WriteError> {
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
    pub fn copy(
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
            if Some((st.size, st.mtime_ns)) != self.expect || st.size != base.sig.file_size {
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

    fn temp(&mut self, storage: &StorageDir) -> Result<&mut TempFile, String> {
        if self.temp.is_none() {
            let t = storage.begin_write(&self.meta.path).map_err(|e| {
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
    pub fn finish(mut self, storage: &StorageDir, hash: &Digest) -> Finished {
        if self.received != self.meta.size {
            return Finished::Done(RecvDone::Failed(format!(
                "{}: got {} of {} bytes",
                self.meta.path, self.received, self.meta.size
            )));
        }
        if self.hasher.finalize().as_bytes() != hash {
            return Finished::Done(RecvDone::Failed(format!(
                "{}: content hash mismatch; discarded",
                self.meta.path
            )));
        }
        if let Err(e) = self.temp(storage) {
            return Finished::Done(RecvDone::Failed(e));
        }
        let Some(temp) = self.temp.take() else {
            return Finished::Done(RecvDone::Failed("temporary file vanished".into()));
        };
        // The base is read; release it before its path is replaced.
        self.base = None;
        let expect = match self.expect {
            None => Expect::Absent,
            Some((size, mtime_ns)) => Expect::File { size, mtime_ns },
        };
        match temp.prepare(self.meta.mode, self.meta.mtime_ns, expect) {
            Ok(prepared) => Finished::Ready(Verified {
                sid: self.sid,
                path: self.meta.path,
                bytes: self.received,
                prepared,
            }),
            Err(e) => Finished::Done(RecvDone::Failed(format!(
                "cannot commit {}: {e}",
                self.meta.path
            ))),
        }
    }
}

/// How [`Incoming::finish`] ended.
pub enum Finished {
    /// Complete and verified; to be committed.
    Ready(Verified),
    /// Nothing to commit (the transfer failed its checks).
    Done(RecvDone),
}

/// A received file whose length and hash are right, waiting to be committed.
pub struct Verified {
    pub sid: u64,
    pub path: RelPath,
    pub bytes: u64,
    prepared: Prepared,
}

/// Commits verified files in one batch (see [`fsops::commit_batch`]); one outcome per file,
/// in order, with its session and path.
pub fn commit_verified(batch: Vec<Verified>) -> Vec<(u64, RelPath, RecvDone)> {
    let mut heads = Vec::with_capacity(batch.len());
    let mut files = Vec::with_capacity(batch.len());
    for v in batch {
        heads.push((v.sid, v.path, v.bytes));
        files.push(v.prepared);
    }
    let results = fsops::commit_batch(files);
    heads
        .into_iter()
        .zip(results)
        .map(|((sid, path, bytes), r)| {
            let done = match r {
                Ok(()) => RecvDone::Committed { bytes },
                Err(CommitError::Changed(what)) => RecvDone::KeptLocal(format!(
                    "{path}: local copy changed during the sync ({what}); kept it"
                )),
                Err(CommitError::Io(e)) => RecvDone::Failed(format!("cannot commit {path}: {e}")),
            };
            (sid, path, done)
        })
        .collect()
}

/// Receives keyed by (connection, transfer id).
pub type IncomingMap = HashMap<(ConnId, u32), Incoming>;
