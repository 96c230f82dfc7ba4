//! File transfers on the `sync` thread: the sending engine and the receiving side.
//!
//! Sending: jobs wait in a queue; at most `max_parallel_transfers` are open at once. Each
//! active transfer reads one chunk at a time, hashes it and hands it to `net` for every
//! receiver, but only while every receiver's outbound gauge is under `OUT_HIGH`; a whole
//! file is never in memory. At the end the source is re-checked: a file that changed while
//! it was read is aborted, not sent as a mix of two versions.
//!
//! Receiving: a transfer is accepted only if the session's plan expects exactly that path,
//! version and sender. Bytes go to a temporary file (see `fsops`), the length and the
//! whole-file BLAKE3 hash are checked, and only then is it committed — which itself refuses
//! if the local file changed since it was indexed. Any failure drops the temp file.

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::io::{self, Read};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use crate::fsops::{CommitError, Expect, StorageDir, TempFile};
use crate::model::FileMeta;
use crate::net::{ConnId, NetHandle, OUT_HIGH};
use crate::proto::{Digest, Message, CHUNK_SIZE};

/// Where a file goes: a connection and its outbound gauge.
#[derive(Clone)]
pub struct Dest {
    pub conn: ConnId,
    pub outbound: Arc<AtomicUsize>,
}

/// A file to send, as planned.
pub struct OutJob {
    pub sid: u64,
    pub meta: FileMeta,
    pub to: Vec<Dest>,
}

struct Active {
    xid: u32,
    job: OutJob,
    file: File,
    hasher: blake3::Hasher,
    sent: u64,
}

/// What happened to a job, for the session's accounting.
pub enum SendDone {
    Sent {
        sid: u64,
        bytes: u64,
        receivers: usize,
        /// Bytes read from the source (once for all receivers).
        read: u64,
    },
    /// `benign`: the source changed or every receiver declined — nothing is wrong, the
    /// next sync will pick it up. Otherwise a real failure (I/O error).
    Failed {
        sid: u64,
        path: String,
        reason: String,
        benign: bool,
    },
}

/// The sending engine.
pub struct Sender {
    queue: VecDeque<OutJob>,
    active: Vec<Active>,
    next_xid: u32,
    max_parallel: usize,
    buf: Vec<u8>,
}

impl Sender {
    pub fn new(max_parallel: usize) -> Sender {
        Sender {
            queue: VecDeque::new(),
            active: Vec::new(),
            next_xid: 1,
            max_parallel: max_parallel.max(1),
            buf: Vec::new(),
        }
    }

    pub fn push(&mut self, job: OutJob) {
        self.queue.push_back(job);
    }

    pub fn is_idle(&self) -> bool {
        self.queue.is_empty() && self.active.is_empty()
    }

    /// Forgets everything of session `sid` (it was aborted). Receivers drop their side when
    /// they learn of the abort; streams in flight are told with `FileAbort`.
    pub fn cancel_session(&mut self, sid: u64, net: &NetHandle) {
        self.queue.retain(|j| j.sid != sid);
        let (gone, keep): (Vec<Active>, Vec<Active>) =
            self.active.drain(..).partition(|a| a.job.sid == sid);
        self.active = keep;
        for a in gone {
            for d in &a.job.to {
                net.send_msg(
                    d.conn,
                    &d.outbound,
                    Message::FileAbort {
                        xid: a.xid,
                        reason: "session aborted".into(),
                    },
                );
            }
        }
    }

    /// A receiver asked us to stop sending `xid`, or its connection is gone.
    pub fn drop_receiver(&mut self, conn: ConnId, xid: Option<u32>) {
        for a in &mut self.active {
            if xid.is_none_or(|x| x == a.xid) {
                a.job.to.retain(|d| d.conn != conn);
            }
        }
        for j in &mut self.queue {
            if xid.is_none() {
                j.to.retain(|d| d.conn != conn);
            }
        }
    }

    /// Moves data: starts queued jobs up to the parallel limit and sends chunks while the
    /// receivers have room, up to `budget` bytes. Returns finished jobs, the bytes sent, and
    /// whether more work could be done right now (so the caller should not sleep).
    pub fn pump(
        &mut self,
        storage: &StorageDir,
        net: &NetHandle,
        budget: usize,
    ) -> (Vec<SendDone>, usize, bool) {
        let mut done = Vec::new();
        // Jobs whose receivers all went away are finished as failed without opening them.
        while self.active.len() < self.max_parallel {
            let Some(job) = self.queue.pop_front() else {
                break;
            };
            if job.to.is_empty() {
                done.push(SendDone::Failed {
                    sid: job.sid,
                    path: job.meta.path.to_string(),
                    reason: "no receiver left".into(),
                    benign: true,
                });
                continue;
            }
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
                    sent: 0,
                }),
                Err((reason, benign)) => {
                    abort_all(net, &job.to, xid, &reason);
                    done.push(SendDone::Failed {
                        sid: job.sid,
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
                    done.push(SendDone::Failed {
                        sid: a.job.sid,
                        path: a.job.meta.path.to_string(),
                        reason: "every receiver declined".into(),
                        benign: true,
                    });
                    continue;
                }
                if a.job
                    .to
                    .iter()
                    .any(|d| d.outbound.load(Ordering::Acquire) >= OUT_HIGH)
                {
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
                            bytes: a.sent,
                            receivers: a.job.to.len(),
                            read: a.sent,
                        });
                    }
                    Err((reason, benign)) => {
                        let a = self.active.swap_remove(i);
                        abort_all(net, &a.job.to, a.xid, &reason);
                        done.push(SendDone::Failed {
                            sid: a.job.sid,
                            path: a.job.meta.path.to_string(),
                            reason,
                            benign,
                        });
                    }
                }
            }
        }
        let can_continue = (!self.queue.is_empty() && self.active.len() < self.max_parallel)
            || self.active.iter().any(|a| {
                a.job
                    .to
                    .iter()
                    .all(|d| d.outbound.load(Ordering::Acquire) < OUT_HIGH)
            });
        (done, spent, can_continue)
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

/// Sends the next chunk of `a`, or its end.
fn step(a: &mut Active, net: &NetHandle, buf: &mut Vec<u8>) -> Result<Step, StepError> {
    let remaining = a.job.meta.size - a.sent;
    if remaining == 0 {
        return finish(a, net);
    }
    let want = remaining.min(CHUNK_SIZE as u64) as usize;
    buf.resize(want, 0);
    let mut filled = 0;
    while filled < want {
        match a.file.read(&mut buf[filled..want]) {
            Ok(0) => {
                return Err((
                    format!(
                        "{} shrank while it was being sent; it will be sent by the next sync",
                        a.job.meta.path
                    ),
                    true,
                ))
            }
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err((format!("cannot read {}: {e}", a.job.meta.path), false)),
        }
    }
    a.hasher.update(&buf[..want]);
    a.sent += want as u64;
    for d in &a.job.to {
        net.send_msg(
            d.conn,
            &d.outbound,
            Message::FileData {
                xid: a.xid,
                data: buf[..want].to_vec(),
            },
        );
    }
    if a.sent == a.job.meta.size {
        finish(a, net)?;
        return Ok(Step::Finished);
    }
    Ok(Step::Sent(want))
}

/// Re-checks the source after the last byte and sends the hash.
fn finish(a: &mut Active, net: &NetHandle) -> Result<Step, StepError> {
    let st = a
        .file
        .metadata()
        .map_err(|e| (format!("cannot re-check {}: {e}", a.job.meta.path), false))?;
    let mtime_ns = {
        use std::os::unix::fs::MetadataExt;
        crate::model::mtime_ns_from_parts(st.mtime(), st.mtime_nsec())
    };
    if st.len() != a.job.meta.size || mtime_ns != a.job.meta.mtime_ns {
        return Err((
            format!(
                "{} changed while it was being sent; it will be sent by the next sync",
                a.job.meta.path
            ),
            true,
        ));
    }
    let hash: Digest = *a.hasher.finalize().as_bytes();
    for d in &a.job.to {
        net.send_msg(d.conn, &d.outbound, Message::FileEnd { xid: a.xid, hash });
    }
    Ok(Step::Finished)
}

// ---------------------------------------------------------------------------------------
// Receiving

/// A transfer being received.
pub struct Incoming {
    pub sid: u64,
    pub meta: FileMeta,
    pub expect: Option<(u64, i64)>,
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

impl Incoming {
    pub fn new(sid: u64, meta: FileMeta, expect: Option<(u64, i64)>) -> Incoming {
        Incoming {
            sid,
            meta,
            expect,
            temp: None,
            hasher: blake3::Hasher::new(),
            received: 0,
        }
    }

    pub fn received(&self) -> u64 {
        self.received
    }

    /// Appends a chunk. The temp file is created on the first byte (or at the end for an
    /// empty file), so a transfer aborted before any data costs nothing on disk.
    pub fn write(&mut self, storage: &StorageDir, data: &[u8]) -> Result<(), String> {
        let total = self.received + data.len() as u64;
        if total > self.meta.size {
            return Err(format!(
                "peer sent more than the announced {} bytes for {}",
                self.meta.size, self.meta.path
            ));
        }
        let temp = self.temp(storage)?;
        temp.write_all(data)
            .map_err(|e| format!("cannot write {}: {e}", self.meta.path))?;
        self.hasher.update(data);
        self.received = total;
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

    /// Verifies length and hash, then commits over the target.
    pub fn finish(mut self, storage: &StorageDir, hash: &Digest) -> RecvDone {
        if self.received != self.meta.size {
            return RecvDone::Failed(format!(
                "{}: got {} of {} bytes",
                self.meta.path, self.received, self.meta.size
            ));
        }
        if self.hasher.finalize().as_bytes() != hash {
            return RecvDone::Failed(format!(
                "{}: content hash mismatch; discarded",
                self.meta.path
            ));
        }
        if let Err(e) = self.temp(storage) {
            return RecvDone::Failed(e);
        }
        let Some(temp) = self.temp.take() else {
            return RecvDone::Failed("temporary file vanished".into());
        };
        let expect = match self.expect {
            None => Expect::Absent,
            Some((size, mtime_ns)) => Expect::File { size, mtime_ns },
        };
        match temp.commit(self.meta.mode, self.meta.mtime_ns, expect) {
            Ok(()) => RecvDone::Committed {
                bytes: self.received,
            },
            Err(CommitError::Changed(what)) => RecvDone::KeptLocal(format!(
                "{}: local copy changed during the sync ({what}); kept it",
                self.meta.path
            )),
            Err(CommitError::Io(e)) => {
                RecvDone::Failed(format!("cannot commit {}: {e}", self.meta.path))
            }
        }
    }
}

/// Receives keyed by (connection, transfer id).
pub type IncomingMap = HashMap<(ConnId, u32), Incoming>;
