//! Sending files on the `sync` thread: the core's released sends turned into jobs a few at
//! a time ([`Outbox`]), and the engine that moves them ([`Sender`]).
//!
//! Jobs wait in a queue; at most `max_parallel_transfers` are open at once. Each active
//! transfer reads one chunk at a time, hashes it, and hands it to `net` — to every receiver
//! at once for a whole-file transfer, or through the delta encoder for a receiver that has an
//! old version — but only while every receiver's outbound gauge is under `OUT_HIGH`; a whole
//! file is never in memory. A delta job waits (without taking a slot) until its receiver's
//! signature arrives. At the end the source is re-checked: a file that changed while it was
//! read is aborted, not sent as a mix of two versions.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::fs::File;
use std::io::{self, Read};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::delta::{self, DeltaEncoder, DeltaOp, Signature};
use crate::fsops::{self, StorageDir};
use crate::model::{FileMeta, NodeId, RelPath};
use crate::net::handle::{ConnId, NetHandle, OUT_HIGH};
use crate::proto::{self, Digest, SendTo, TransferMsg, CHUNK_SIZE, RESUME_MIN};

use super::core::{IntoSends, Sends, Sent};

/// Longest a whole-file stream to one receiver waits for its `FileResume` before sending
/// from the start anyway: an honest receiver answers at once; one that does not must not
/// hold a sending slot.
const OFFER_WAIT: Duration = Duration::from_secs(10);

/// Where a file goes: a connection and its outbound gauge.
#[derive(Clone)]
pub struct Dest {
    pub conn: ConnId,
    pub outbound: Arc<AtomicUsize>,
}

impl Dest {
    pub fn has_room(&self) -> bool {
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
    /// The receiver holds the bytes up to here (it resumes): they are read for the hash,
    /// not sent.
    skip_to: u64,
    /// A file of `RESUME_MIN` or more streamed to one receiver waits for its `FileResume`
    /// (what it kept of an interrupted transfer) until this: sending from the start at
    /// once would race past what it kept on a fast link.
    offer_due: Option<Instant>,
}

impl Active {
    fn ready(&self, now: Instant) -> bool {
        self.offer_due.is_none_or(|due| now >= due) && self.job.to.iter().all(Dest::has_room)
    }
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
    Failed {
        sid: u64,
        group: u64,
        why: SendError,
    },
}

/// Why a file was not sent.
#[derive(Debug)]
pub enum SendError {
    /// The source is gone or is no longer the version the plan named (it changed before or
    /// while it was read): nothing is wrong, the next sync sends the new version.
    Changed { path: RelPath, when: &'static str },
    /// Nobody is left to send it to (they declined or went away): nothing is wrong either.
    NoReceiver(&'static str),
    /// Reading the source failed: a real failure.
    Io {
        path: RelPath,
        doing: &'static str,
        error: io::Error,
    },
}

impl SendError {
    /// Whether the next sync simply handles it (no failure to count).
    pub fn benign(&self) -> bool {
        !matches!(self, SendError::Io { .. })
    }
}

impl fmt::Display for SendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SendError::Changed { path, when } => {
                write!(f, "{path} {when}; it will be sent by the next sync")
            }
            SendError::NoReceiver(why) => f.write_str(why),
            SendError::Io { path, doing, error } => write!(f, "cannot {doing} {path}: {error}"),
        }
    }
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
    /// Bytes read of the files being sent, as far as each got.
    pub fn in_flight(&self) -> u64 {
        self.active.iter().map(|a| a.read).sum()
    }

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

    /// When a stream waiting for its receiver's `FileResume` gives up waiting.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.active.iter().filter_map(|a| a.offer_due).min()
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
            abort_all(
                net,
                &a.job.to,
                a.xid,
                &SendError::NoReceiver("session aborted"),
            );
        }
    }

    /// A receiver asked us to stop sending `xid`, or its connection is gone (`xid` None).
    /// Returns the path of transfer `xid`, if it was still going (for the log).
    pub fn drop_receiver(&mut self, conn: ConnId, xid: Option<u32>) -> Option<RelPath> {
        let mut path = None;
        for a in &mut self.active {
            if xid.is_none_or(|x| x == a.xid) {
                a.job.to.retain(|d| d.conn != conn);
                if xid.is_some() {
                    path = Some(a.job.meta.path.clone());
                }
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
                self.finished
                    .push(failed(&j, SendError::NoReceiver("the receiver went away")));
            }
            self.sigs.retain(|(_, _, c), _| *c != conn);
        }
        path
    }

    /// The receiver on `conn` holds the first `offset` bytes of transfer `xid` (it offered
    /// to resume). A whole-file stream to that receiver alone skips them, saying so in the
    /// stream (`FileSkip`); a stream shared by several receivers, or a delta, goes on.
    pub fn resume(&mut self, conn: ConnId, xid: u32, offset: u64, net: &NetHandle) {
        let Some(a) = self.active.iter_mut().find(|a| a.xid == xid) else {
            return;
        };
        let alone = matches!(&a.job.to[..], [d] if d.conn == conn);
        if !alone || !matches!(a.mode, Mode::Whole) {
            return;
        }
        a.offer_due = None;
        if offset <= a.read {
            return;
        }
        if offset > a.job.meta.size {
            log::debug!(
                "ignoring an offer to resume past the end of {}",
                a.job.meta.path
            );
            return;
        }
        let d = &a.job.to[0];
        net.send_msg(d.conn, &d.outbound, TransferMsg::FileSkip { xid, offset });
        a.skip_to = offset;
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
        let now = Instant::now();
        while self.active.len() < self.max_parallel {
            let Some(job) = self.queue.pop_front() else {
                break;
            };
            if job.to.is_empty() {
                done.push(failed(&job, SendError::NoReceiver("no receiver left")));
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
                    TransferMsg::FileStart {
                        sid: job.sid,
                        xid,
                        meta: job.meta.clone(),
                    },
                );
            }
            let waits =
                matches!(mode, Mode::Whole) && job.to.len() == 1 && job.meta.size >= RESUME_MIN;
            match open_source(storage, &job.meta) {
                Ok(file) => self.active.push(Active {
                    xid,
                    job,
                    file,
                    hasher: blake3::Hasher::new(),
                    read: 0,
                    wire: 0,
                    mode,
                    skip_to: 0,
                    offer_due: waits.then(|| Instant::now() + OFFER_WAIT),
                }),
                Err(why) => {
                    abort_all(net, &job.to, xid, &why);
                    done.push(failed(&job, why));
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
                    done.push(failed(
                        &a.job,
                        SendError::NoReceiver("every receiver declined"),
                    ));
                    continue;
                }
                if !a.ready(now) {
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
                    Err(why) => {
                        let a = self.active.swap_remove(i);
                        abort_all(net, &a.job.to, a.xid, &why);
                        done.push(failed(&a.job, why));
                    }
                }
            }
        }
        let can_continue = (!self.queue.is_empty() && self.active.len() < self.max_parallel)
            || self.active.iter().any(|a| a.ready(now));
        (done, spent, can_continue)
    }
}

fn failed(job: &OutJob, why: SendError) -> SendDone {
    SendDone::Failed {
        sid: job.sid,
        group: job.group,
        why,
    }
}

enum Step {
    Sent(usize),
    Finished,
}

fn abort_all(net: &NetHandle, to: &[Dest], xid: u32, why: &SendError) {
    for d in to {
        net.send_msg(
            d.conn,
            &d.outbound,
            TransferMsg::FileAbort {
                xid,
                reason: why.to_string(),
            },
        );
    }
}

/// Opens the source and checks it is still the version the plan promised.
fn open_source(storage: &StorageDir, meta: &FileMeta) -> Result<File, SendError> {
    let changed = || SendError::Changed {
        path: meta.path.clone(),
        when: "changed since it was indexed",
    };
    let (file, st) = storage.open_read(&meta.path).map_err(|error| {
        if error.kind() == io::ErrorKind::NotFound {
            changed()
        } else {
            SendError::Io {
                path: meta.path.clone(),
                doing: "open",
                error,
            }
        }
    })?;
    if st.size != meta.size || st.mtime_ns != meta.mtime_ns {
        return Err(changed());
    }
    Ok(file)
}

/// Reads the next chunk of `a` and sends it (or its delta), or sends the end.
fn step(a: &mut Active, net: &NetHandle, buf: &mut Vec<u8>) -> Result<Step, SendError> {
    let remaining = a.job.meta.size - a.read;
    if remaining == 0 {
        return finish(a, net);
    }
    let want = remaining.min(CHUNK_SIZE as u64) as usize;
    let path = &a.job.meta.path;
    if a.read < a.skip_to {
        // The receiver has these bytes: read for the hash only.
        let want = want.min((a.skip_to - a.read) as usize);
        buf.clear();
        read_chunk(&mut a.file, path, want, buf)?;
        a.hasher.update(buf);
        a.read += want as u64;
        if a.read == a.job.meta.size {
            finish(a, net)?;
            return Ok(Step::Finished);
        }
        return Ok(Step::Sent(want));
    }
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
) -> Result<(), SendError> {
    let got = file
        .take(want as u64)
        .read_to_end(out)
        .map_err(|error| SendError::Io {
            path: path.clone(),
            doing: "read",
            error,
        })?;
    if got < want {
        return Err(SendError::Changed {
            path: path.clone(),
            when: "shrank while it was being sent",
        });
    }
    Ok(())
}

fn send_ops(xid: u32, to: &[Dest], ops: Vec<DeltaOp>, wire: &mut u64, net: &NetHandle) {
    for d in to {
        for op in &ops {
            let msg = match op {
                DeltaOp::Copy { first, count } => {
                    *wire += 12;
                    TransferMsg::FileCopy {
                        xid,
                        first: *first,
                        count: *count,
                    }
                }
                DeltaOp::Literal(bytes) => {
                    *wire += bytes.len() as u64;
                    TransferMsg::FileData {
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
fn finish(a: &mut Active, net: &NetHandle) -> Result<Step, SendError> {
    let path = &a.job.meta.path;
    let st = fsops::stat_file(&a.file).map_err(|error| SendError::Io {
        path: path.clone(),
        doing: "re-check",
        error,
    })?;
    if st.size != a.job.meta.size || st.mtime_ns != a.job.meta.mtime_ns {
        return Err(SendError::Changed {
            path: path.clone(),
            when: "changed while it was being sent",
        });
    }
    if let Mode::Delta(enc) = std::mem::replace(&mut a.mode, Mode::Whole) {
        let mut ops = Vec::new();
        enc.finish(&mut ops);
        send_ops(a.xid, &a.job.to, ops, &mut a.wire, net);
    }
    let hash: Digest = *a.hasher.finalize().as_bytes();
    for d in &a.job.to {
        net.send_msg(
            d.conn,
            &d.outbound,
            TransferMsg::FileEnd { xid: a.xid, hash },
        );
    }
    Ok(Step::Finished)
}

/// A session's released sends, turned into sender jobs a few at a time: each job resolves
/// its receivers' connections, clones its metadata and gets a group entry, which for 10,000
/// files at once cost the sending node more than a megabyte for nothing.
struct PendingSends {
    sid: u64,
    sends: IntoSends,
}

/// The jobs one core send was split into (one whole-file stream, one job per delta).
struct Group {
    sid: u64,
    /// The file's size, for the session's progress.
    size: u64,
    left: usize,
    wire: u64,
    receivers: usize,
    read: u64,
    failed: bool,
}

/// The sending side of the sync thread: sends the core released, the engine that moves
/// them, and the accounting that reports each core send once.
pub struct Outbox {
    pub engine: Sender,
    /// Sends the core released and the sender has no job for yet, oldest batch first.
    pending: VecDeque<PendingSends>,
    /// Jobs of one core send, counted down so the core hears of each send once.
    groups: HashMap<u64, Group>,
    next_group: u64,
    /// The sends of the latest session, as far as they are over: its progress.
    pub progress: Sending,
}

/// A session's sends as far as they are over (sent or not), whole files; each file once
/// however many receive it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sending {
    pub sid: u64,
    pub files_total: u64,
    pub files_done: u64,
    pub bytes_total: u64,
    pub bytes_done: u64,
}

impl Outbox {
    pub fn new(max_parallel: usize) -> Outbox {
        Outbox {
            engine: Sender::new(max_parallel),
            pending: VecDeque::new(),
            groups: HashMap::new(),
            next_group: 1,
            progress: Sending::default(),
        }
    }

    /// The core's sends of session `sid`, released at `Go`.
    pub fn queue(&mut self, sid: u64, sends: Sends) {
        if self.progress.sid != sid {
            self.progress = Sending {
                sid,
                ..Sending::default()
            };
        }
        self.progress.files_total += sends.len() as u64;
        self.progress.bytes_total += sends.bytes();
        let sends = sends.into_iter();
        if !sends.is_empty() {
            self.pending.push_back(PendingSends { sid, sends });
        }
    }

    pub fn is_idle(&self) -> bool {
        self.engine.is_idle() && self.pending.is_empty()
    }

    pub fn cancel_session(&mut self, sid: u64, net: &NetHandle) {
        self.pending.retain(|b| b.sid != sid);
        self.engine.cancel_session(sid, net);
        self.groups.retain(|_, g| g.sid != sid);
    }

    /// Turns one core send into sender jobs: one stream for everyone who gets the whole
    /// file (read once for all of them), and one job per receiver that gets a delta against
    /// its own old version. Receivers no longer connected (`dest` says where each is) are
    /// left out.
    fn start_send(
        &mut self,
        sid: u64,
        meta: FileMeta,
        to: Vec<SendTo>,
        dest: &dyn Fn(&NodeId) -> Option<Dest>,
    ) {
        let group = self.next_group;
        self.next_group += 1;
        let meta_size = meta.size;
        let mut whole = Vec::new();
        let mut jobs = Vec::new();
        for t in &to {
            let Some(d) = dest(&t.node) else { continue };
            if delta::wanted(meta.size, t.expect) {
                jobs.push(OutJob {
                    sid,
                    meta: meta.clone(),
                    to: vec![d],
                    group,
                    delta: true,
                });
            } else {
                whole.push(d);
            }
        }
        // A job with no receiver at all still reports back (as skipped) through `pump`.
        if !whole.is_empty() || jobs.is_empty() {
            jobs.push(OutJob {
                sid,
                meta,
                to: whole,
                group,
                delta: false,
            });
        }
        self.groups.insert(
            group,
            Group {
                sid,
                size: meta_size,
                left: jobs.len(),
                wire: 0,
                receivers: 0,
                read: 0,
                failed: false,
            },
        );
        for j in jobs {
            self.engine.push(j);
        }
    }

    /// Turns released sends into jobs while the sender wants more.
    fn refill(&mut self, dest: &dyn Fn(&NodeId) -> Option<Dest>) {
        while self.engine.wants_jobs() {
            let Some(batch) = self.pending.front_mut() else {
                return;
            };
            let sid = batch.sid;
            let next = batch.sends.next();
            // A batch is dropped as soon as its last send is taken, not at the next call:
            // an exhausted batch left queued would count as work for ever.
            if batch.sends.is_empty() {
                self.pending.pop_front();
            }
            if let Some((meta, to)) = next {
                self.start_send(sid, meta, to, dest);
            }
        }
    }

    /// Moves file data of `storage` (named `name` in logs) while receivers have room, up to
    /// `budget` bytes. Returns each core send that ended (with its session), the bytes read,
    /// and whether more can be sent right now.
    pub fn pump(
        &mut self,
        name: &str,
        storage: &StorageDir,
        net: &NetHandle,
        budget: usize,
        dest: &dyn Fn(&NodeId) -> Option<Dest>,
    ) -> (Vec<(u64, Sent)>, usize, bool) {
        self.refill(dest);
        let (finished, sent, more) = self.engine.pump(storage, net, budget);
        // The queue ran dry with a slot free: the next turn refills it and starts a file.
        let more = more || (!self.pending.is_empty() && self.engine.has_free_slot());
        let mut ended = Vec::new();
        for d in finished {
            let group = match &d {
                SendDone::Sent { group, .. } | SendDone::Failed { group, .. } => *group,
            };
            let Some(g) = self.groups.get_mut(&group) else {
                continue;
            };
            match d {
                SendDone::Sent {
                    wire,
                    receivers,
                    read,
                    ..
                } => {
                    g.wire += wire;
                    g.receivers += receivers;
                    g.read += read;
                }
                SendDone::Failed { why, .. } => {
                    if why.benign() {
                        log::info!("{name}: not sending: {why}");
                    } else {
                        log::warn!("{name}: failed to send: {why}");
                        g.failed = true;
                    }
                }
            }
            g.left -= 1;
            if g.left > 0 {
                continue;
            }
            let Some(g) = self.groups.remove(&group) else {
                continue;
            };
            if g.sid == self.progress.sid {
                self.progress.files_done += 1;
                self.progress.bytes_done += g.size;
            }
            let outcome = if g.failed {
                Sent::Failed
            } else if g.receivers == 0 {
                Sent::Skipped
            } else {
                Sent::Done {
                    bytes: g.wire,
                    receivers: g.receivers,
                    read: g.read,
                }
            };
            ended.push((g.sid, outcome));
        }
        (ended, sent, more)
    }

    /// Gives back what a big session left behind (queue and map capacity).
    pub fn shrink(&mut self) {
        self.engine.shrink();
        self.pending.shrink_to_fit();
        self.groups.shrink_to_fit();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::RelPath;

    /// Regression: a batch whose last send filled the sender's queue stayed queued, spent,
    /// until the next refill; after the session ended nothing refills, and the outbox
    /// counted as busy for ever (a one-shot run never ended).
    #[test]
    fn a_batch_is_gone_once_its_last_send_is_taken() {
        let mut out = Outbox::new(1);
        let mut sends = Sends::default();
        let mut n = 0;
        while out.engine.queue.len() + n < 2 + 8 {
            let meta = FileMeta::file(RelPath::new(&format!("f{n}")).unwrap(), 1, 0, 0o644);
            sends.push(meta, Vec::new());
            n += 1;
        }
        out.queue(7, sends);
        out.refill(&|_| None);
        assert!(!out.engine.wants_jobs(), "the last send filled the queue");
        assert!(out.pending.is_empty());
        out.queue(8, Sends::default());
        assert!(out.pending.is_empty(), "an empty batch is not work");
        out.engine.queue.clear();
        assert!(out.is_idle());
    }
}
