//! The I/O shell around the core: the [`Io`] the core acts through, implemented with `net`
//! (through its handle), the scanner, `fsops` and the history store. It knows the connected
//! peers (connection, node, outbound gauge) and owns the storages' open roots, the store,
//! the sending side ([`Outbox`]) and the receiving side ([`Receiver`]); it decides nothing.
//!
//! Every change a plan makes on disk is durable before it is queued for the history, and
//! the history is written in one transaction per registration or commit batch
//! ([`Io::flush_history`]).

use std::collections::HashMap;
use std::io::Read;
use std::path::PathBuf;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;

use crate::config::StorageConfig;
use crate::fsops::{self, CommitError, StatKind, StorageDir};
use crate::history::{rebase, Digest, Entry, Record};
use crate::ignore::IgnoreMatcher;
use crate::model::{EntryKind, FileMeta, NodeId, RelPath, Version};
use crate::net::handle::{ConnId, NetCmd, NetHandle};
use crate::proto::{LinkMsg, Message, PeerMsg, RESUME_MIN};
use crate::run::SyncError;
use crate::scanner::{self, ScanOptions};
use crate::store::{Applied, DiffSource, Found, StorageId, Store, StoreError};

use super::core::{Deleted, EachPlanned, Io, LocalIndex, Send, Sends, StepError, Violation};
use super::receive::Receiver;
use super::send::{Dest, Outbox};

/// Tombstones are kept this long (and longer while a peer's copy shows the path alive).
pub const TOMBSTONE_RETENTION_SECS: u64 = 90 * 24 * 3600;

/// A connected peer, as announced by its handshake.
pub struct Peer {
    pub node: NodeId,
    pub outbound: Arc<AtomicUsize>,
    /// We asked `net` to close it; ignore what it still sends.
    pub closing: bool,
}

/// A storage: its configuration, its open root and its id in the store.
pub struct Storage {
    pub cfg: StorageConfig,
    /// The root, opened anew at every scan (a card mounted after start-up is seen, one
    /// unmounted is not held busy between sessions); `None` while it cannot be opened.
    pub dir: Option<StorageDir>,
    pub id: StorageId,
}

impl Storage {
    /// The open root: a session of this storage only runs after a scan opened it.
    pub fn dir(&self) -> std::io::Result<&StorageDir> {
        self.dir
            .as_ref()
            .ok_or_else(|| std::io::Error::other("the storage root is not open"))
    }
}

/// Everything the core's side effects need.
pub struct Shell {
    pub net: NetHandle,
    pub storages: Vec<Storage>,
    /// Database and side files, never indexed when they live inside a storage.
    pub exclude: Vec<PathBuf>,
    pub peers: HashMap<ConnId, Peer>,
    pub by_node: HashMap<NodeId, ConnId>,
    pub outbox: Outbox,
    pub receiver: Receiver,
    pub store: Store,
    /// History records queued per storage until the next [`Io::flush_history`].
    queued: Vec<Vec<Applied>>,
    rng: u64,
    /// A scan or a session used memory since it was last given back (see
    /// [`Shell::release_if_spent`]).
    spent: bool,
}

/// Seconds since the epoch (what version vector counters and tombstone dates are made of).
pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn history(e: StoreError) -> SyncError {
    SyncError::History(e.to_string())
}

fn step(e: CommitError) -> StepError {
    match e {
        CommitError::Changed(what) => StepError::Changed(format!("changed meanwhile: {what}")),
        e @ CommitError::Folded(_) => StepError::Io(e.to_string()),
        CommitError::Io(e) => StepError::Io(e.to_string()),
    }
}

fn io_step(e: std::io::Error) -> StepError {
    StepError::Io(e.to_string())
}

fn no_root(e: std::io::Error) -> SyncError {
    SyncError::Guard(e.to_string())
}

/// Sends `msg` to `node` if it is connected (a free function: it borrows only the maps).
fn send_via(
    net: &NetHandle,
    by_node: &HashMap<NodeId, ConnId>,
    peers: &HashMap<ConnId, Peer>,
    node: &NodeId,
    msg: impl Into<Message>,
) {
    if let Some(p) = by_node
        .get(node)
        .and_then(|c| peers.get(c).map(|p| (*c, p)))
    {
        net.send_msg(p.0, &p.1.outbound, msg);
    }
}

/// BLAKE3 of a file's content, read through the storage root.
fn hash_file(dir: &StorageDir, path: &RelPath) -> std::io::Result<Digest> {
    let (mut file, _) = dir.open_read(path)?;
    let mut h = blake3::Hasher::new();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        h.update(&buf[..n]);
    }
    Ok(*h.finalize().as_bytes())
}

impl Shell {
    pub fn new(
        net: NetHandle,
        storages: Vec<Storage>,
        exclude: Vec<PathBuf>,
        max_parallel: usize,
        store: Store,
        seed: u64,
    ) -> Shell {
        let queued = storages.iter().map(|_| Vec::new()).collect();
        Shell {
            net,
            storages,
            exclude,
            peers: HashMap::new(),
            by_node: HashMap::new(),
            outbox: Outbox::new(max_parallel),
            receiver: Receiver::default(),
            store,
            queued,
            rng: seed | 1,
            spent: false,
        }
    }

    /// Where to send to `node`: its connection and outbound gauge, if it is connected.
    pub fn dest(&self, node: &NodeId) -> Option<Dest> {
        let conn = *self.by_node.get(node)?;
        let p = self.peers.get(&conn)?;
        Some(Dest {
            conn,
            outbound: p.outbound.clone(),
        })
    }

    /// Sends any message (a transfer message, say) to a connected node.
    pub fn send_to(&self, node: &NodeId, msg: impl Into<Message>) {
        send_via(&self.net, &self.by_node, &self.peers, node, msg);
    }

    /// A peer's connection is gone: everything in flight with it is dropped (temporary files
    /// of its transfers are removed). Returns its node if it was known.
    pub fn peer_gone(&mut self, conn: ConnId) -> Option<NodeId> {
        let peer = self.peers.remove(&conn)?;
        if self.by_node.get(&peer.node) == Some(&conn) {
            self.by_node.remove(&peer.node);
        }
        self.outbox.engine.drop_receiver(conn, None);
        self.receiver.drop_conn(conn);
        Some(peer.node)
    }

    /// A session ended: what it used is to be given back once the node is idle.
    pub fn note_spent(&mut self) {
        self.spent = true;
    }

    /// On an idle node that scanned or took part in a session since the last time, gives
    /// back what that left behind (queue and map capacity, read buffers, the history's page
    /// cache, which holds a storage's whole index after a scan: a MiB for 10,000 files) and
    /// returns freed heap to the kernel: an idle daemon's memory is what it uses now.
    pub fn release_if_spent(&mut self) {
        if !self.spent || !self.is_idle() {
            return;
        }
        self.spent = false;
        self.outbox.shrink();
        self.receiver.shrink();
        self.store.release_memory();
        crate::mem::release_free();
    }

    /// Nothing is being sent or signed.
    pub fn is_idle(&self) -> bool {
        self.outbox.is_idle() && self.receiver.signing_idle()
    }

    /// Queues a received file's new version for the history.
    pub fn record_received(&mut self, storage: usize, entry: Entry, ino: u64, ctime: i64) {
        self.queued[storage].push(Applied::Put { entry, ino, ctime });
    }

    /// The mass-deletion guard: the root must be the storage synchronized before (its
    /// marker, its file system). A storage seen for the first time gets its marker.
    fn check_root(&mut self, i: usize) -> Result<(), SyncError> {
        let st = &mut self.storages[i];
        st.dir = None;
        let dir = StorageDir::open(&st.cfg.path).map_err(|e| {
            SyncError::Guard(format!(
                "the storage root {} cannot be opened ({e}): is its disk mounted? Nothing is \
                 synchronized until it is back",
                st.cfg.path.display()
            ))
        })?;
        st.dir = Some(dir);
        let st = &self.storages[i];
        let dir = st.dir().map_err(no_root)?;
        let guard = self.store.guard(st.id).map_err(history)?;
        let marker = dir
            .read_marker()
            .map_err(|e| SyncError::Guard(format!("cannot read the storage marker: {e}")))?;
        let dev = dir
            .root_dev()
            .map_err(|e| SyncError::Guard(format!("cannot stat the storage root: {e}")))?;
        let path = st.cfg.path.display();
        match (guard.marker, marker) {
            (Some(known), Some(found)) if known == found => {}
            (Some(_), found) => {
                return Err(SyncError::Guard(format!(
                    "the storage root {path} is not the folder synchronized before ({}): is its \
                     disk mounted? Nothing is synchronized until it is back (to start this \
                     storage over, move the database away)",
                    if found.is_some() {
                        "its marker file .iron-carrier.storage is another one"
                    } else {
                        "its marker file .iron-carrier.storage is missing"
                    }
                )));
            }
            (None, found) => {
                // First sight: adopt a marker already there (a copied storage, a lost
                // database), or write one.
                let id = match found {
                    Some(id) => id,
                    None => {
                        let id = crate::store::random_id();
                        dir.write_marker(id).map_err(|e| {
                            SyncError::Guard(format!("cannot write the storage marker: {e}"))
                        })?;
                        id
                    }
                };
                let sid = st.id;
                self.store.set_guard(sid, id, dev).map_err(history)?;
                return Ok(());
            }
        }
        if guard.dev.is_some_and(|d| d != dev) {
            return Err(SyncError::Guard(format!(
                "the storage root {path} is on another file system than before: is the right \
                 disk mounted? Nothing is synchronized until it is back"
            )));
        }
        Ok(())
    }

    fn queue(&mut self, storage: usize, a: Applied) {
        self.queued[storage].push(a);
    }
}

impl Io for Shell {
    fn send(&mut self, to: &NodeId, msg: PeerMsg) {
        self.send_to(to, msg);
    }

    fn disconnect(&mut self, node: &NodeId, why: Violation) {
        let Some(&conn) = self.by_node.get(node) else {
            return;
        };
        let reason = why.to_string();
        log::warn!("disconnecting {node}: {reason}");
        self.send_to(
            node,
            LinkMsg::Refuse {
                reason: reason.clone(),
            },
        );
        if let Some(p) = self.peers.get_mut(&conn) {
            p.closing = true;
        }
        self.net.send(NetCmd::Close { conn, reason });
    }

    fn scan(&mut self, i: usize) -> Result<(LocalIndex, IgnoreMatcher), SyncError> {
        let started = std::time::Instant::now();
        self.spent = true;
        // The root first: a scan of an empty mount point must never be recorded.
        self.check_root(i)?;
        let st = &self.storages[i];
        let ignore =
            IgnoreMatcher::load(&st.cfg.path).map_err(|e| SyncError::Scan(e.to_string()))?;
        let opts = ScanOptions {
            ignore: &ignore,
            exclude: &self.exclude,
        };
        let result =
            scanner::scan(&st.cfg.path, &opts).map_err(|e| SyncError::Scan(e.to_string()))?;
        // Called only when no session is active, so no temporary file can be in use.
        for t in &result.temp_files {
            // What an interrupted transfer left to be resumed stays a while.
            if fsops::is_partial(t)
                && st
                    .dir()
                    .and_then(|d| d.partial_age(t))
                    .is_ok_and(|age| age < fsops::PARTIAL_KEEP)
            {
                continue;
            }
            // What a transfer interrupted by a kill left becomes a partial, to be resumed.
            match st.dir().and_then(|d| d.promote_leftover(t, RESUME_MIN)) {
                Ok(true) => {
                    log::info!("{}: kept {t}, left by an interrupted transfer", st.cfg.name);
                    continue;
                }
                Ok(false) => {}
                Err(e) => log::debug!("{}: cannot keep {t}: {e}", st.cfg.name),
            }
            match st.dir().and_then(|d| d.remove_internal(t)) {
                Ok(()) => log::info!("{}: removed leftover temporary file {t}", st.cfg.name),
                Err(e) => log::warn!("{}: cannot remove leftover {t}: {e}", st.cfg.name),
            }
        }
        let found: Vec<Found> = result
            .entries
            .into_iter()
            .zip(result.keys)
            .map(|(meta, k)| Found {
                meta,
                ino: k.ino,
                ctime_ns: k.ctime_ns,
            })
            .collect();
        let st = &self.storages[i];
        let dir = st.dir().map_err(no_root)?;
        let now = now_secs();
        let entries = found.len();
        let summary = self
            .store
            .record_scan_with(st.id, found, &result.unreadable, now, &mut |p| {
                hash_file(dir, p)
            })
            .map_err(history)?;
        let c = summary.changes;
        if c != Default::default() {
            log::info!(
                "{}: {} new, {} changed, {} deleted, {} moved ({} directories), {} bytes read",
                st.cfg.name,
                c.new,
                c.modified,
                c.deleted,
                c.moved,
                c.dir_moves,
                c.hashed
            );
        }
        log::debug!(
            "{}: scanned {} entries ({} skipped) in {:.3} s",
            st.cfg.name,
            entries,
            result.skipped,
            started.elapsed().as_secs_f64()
        );
        match self
            .store
            .purge_tombstones(st.id, now, TOMBSTONE_RETENTION_SECS)
        {
            Ok(0) => {}
            Ok(n) => log::info!("{}: forgot {n} expired deletion(s)", st.cfg.name),
            Err(e) => log::warn!("{}: {e}", st.cfg.name),
        }
        Ok((
            LocalIndex {
                index_id: summary.index_id,
                seq: summary.seq,
                count: summary.count,
                digest: summary.digest,
            },
            ignore,
        ))
    }

    fn local_state(&mut self, i: usize) -> Option<(u64, u64)> {
        self.store.local_state(self.storages[i].id).ok()
    }

    fn index_since(
        &mut self,
        storage: usize,
        since: u64,
        each: &mut dyn FnMut(Vec<Record>, &mut Send<'_>),
    ) -> Result<u64, SyncError> {
        let Shell {
            store,
            net,
            by_node,
            peers,
            storages,
            ..
        } = self;
        let mut send = |to: &NodeId, msg: PeerMsg| send_via(net, by_node, peers, to, msg);
        store
            .local_since(storages[storage].id, since, &mut |page| {
                each(page, &mut send)
            })
            .map_err(history)
    }

    fn remote_state(&mut self, storage: usize, node: &NodeId) -> Option<(u64, u64)> {
        self.store
            .remote_state(self.storages[storage].id, node)
            .ok()
            .flatten()
    }

    fn remote_begin(&mut self, storage: usize, node: &NodeId, full: bool) -> Result<(), SyncError> {
        let id = self.storages[storage].id;
        self.store.remote_begin(id, node, full).map_err(history)
    }

    fn remote_apply(
        &mut self,
        storage: usize,
        node: &NodeId,
        records: &[Record],
    ) -> Result<(), SyncError> {
        let id = self.storages[storage].id;
        self.store.remote_apply(id, node, records).map_err(history)
    }

    fn remote_end(&mut self, storage: usize, node: &NodeId, index_id: u64, seq: u64) {
        let id = self.storages[storage].id;
        if let Err(e) = self.store.remote_end(id, node, index_id, seq) {
            log::warn!("{e}");
        }
    }

    fn diff(
        &mut self,
        storage: usize,
        sources: &[Option<NodeId>],
        each: &mut EachPlanned<'_>,
    ) -> Result<(), SyncError> {
        let Shell {
            store,
            net,
            by_node,
            peers,
            storages,
            ..
        } = self;
        let sources: Vec<DiffSource> = sources
            .iter()
            .map(|s| match s {
                None => DiffSource::Local,
                Some(n) => DiffSource::Remote(n.clone()),
            })
            .collect();
        let mut send = |to: &NodeId, msg: PeerMsg| send_via(net, by_node, peers, to, msg);
        store
            .diff(storages[storage].id, &sources, &mut |here, view| {
                each(here, view, &mut send)
            })
            .map_err(history)
    }

    fn make_dir(&mut self, storage: usize, entry: &Entry) -> Result<(), StepError> {
        let st = self.storages[storage]
            .dir()
            .and_then(|d| d.make_dir(&entry.meta.path, entry.meta.mode))
            .map_err(|e| StepError::Io(e.to_string()))?;
        self.queue(
            storage,
            Applied::Put {
                entry: entry.clone(),
                ino: st.ino,
                ctime: st.ctime_ns,
            },
        );
        Ok(())
    }

    fn delete(
        &mut self,
        storage: usize,
        entry: &Entry,
        expect: Option<Version>,
    ) -> Result<Deleted, StepError> {
        let dir = self.storages[storage].dir().map_err(io_step)?;
        let path = &entry.meta.path;
        if entry.meta.kind == EntryKind::Dir {
            let removed = dir
                .remove_dir(path)
                .map_err(|e| StepError::Io(e.to_string()))?;
            if !removed {
                // It holds what its peers never knew: it stays, as a new version of the
                // directory, so that they get it back with its content.
                let mut kept = entry.clone();
                kept.deleted = false;
                kept.vv = entry.vv.bump(self.store.me(), now_secs());
                kept.by = self.store.me().clone();
                kept.link = None;
                let st = dir.stat(path).ok().flatten();
                self.queue(
                    storage,
                    Applied::Put {
                        entry: kept,
                        ino: st.map_or(0, |s| s.ino),
                        ctime: st.map_or(0, |s| s.ctime_ns),
                    },
                );
                return Ok(Deleted::Kept);
            }
        } else {
            match expect {
                Some(v) => dir.remove_file(path, v).map_err(step)?,
                None => {
                    if dir
                        .stat(path)
                        .ok()
                        .flatten()
                        .is_some_and(|s| s.kind != StatKind::Dir)
                    {
                        return Err(StepError::Changed(format!("{path} exists again")));
                    }
                }
            }
        }
        self.queue(storage, Applied::Tombstone(entry.clone()));
        Ok(Deleted::Done)
    }

    fn set_version(
        &mut self,
        storage: usize,
        entry: &Entry,
        expect: Option<Version>,
    ) -> Result<(), StepError> {
        let dir = self.storages[storage].dir().map_err(io_step)?;
        let found = dir
            .stat(&entry.meta.path)
            .map_err(|e| StepError::Io(e.to_string()))?;
        let matches = match (entry.deleted, entry.meta.kind, found) {
            (true, _, None) => true,
            (false, EntryKind::Dir, Some(st)) => st.kind == StatKind::Dir,
            (false, EntryKind::File, Some(st)) => expect.is_some() && st.version() == expect,
            _ => false,
        };
        if !matches {
            return Err(StepError::Changed(format!(
                "{} changed meanwhile",
                entry.meta.path
            )));
        }
        let a = if entry.deleted {
            Applied::Tombstone(entry.clone())
        } else {
            Applied::Put {
                entry: entry.clone(),
                ino: found.map_or(0, |s| s.ino),
                ctime: found.map_or(0, |s| s.ctime_ns),
            }
        };
        self.queue(storage, a);
        Ok(())
    }

    fn rename(
        &mut self,
        storage: usize,
        from: &RelPath,
        expect: Version,
        entry: &Entry,
        gone: &Entry,
    ) -> Result<(), StepError> {
        let st = self.storages[storage]
            .dir()
            .map_err(io_step)?
            .rename_file(from, &entry.meta.path, expect)
            .map_err(step)?;
        self.queue(
            storage,
            Applied::Put {
                entry: entry.clone(),
                ino: st.ino,
                ctime: st.ctime_ns,
            },
        );
        self.queue(storage, Applied::Tombstone(gone.clone()));
        Ok(())
    }

    fn move_dir(
        &mut self,
        storage: usize,
        from: &RelPath,
        to: &RelPath,
        by: &NodeId,
        counter: u64,
    ) -> Result<(), StepError> {
        let st = &self.storages[storage];
        let dir = st.dir().map_err(io_step)?;
        let rows = self
            .store
            .local_below(st.id, from)
            .map_err(|e| StepError::Io(e.to_string()))?;
        let live: Vec<Entry> = rows.into_iter().filter(Entry::is_live).collect();
        let mut stats = HashMap::new();
        let mut moved: Vec<&Entry> = Vec::new();
        let mut failed = None;
        for e in &live {
            let new = rebase(&e.meta.path, from, to);
            let r = match (e.meta.kind, e.version()) {
                (EntryKind::Dir, _) => dir
                    .make_dir(&new, e.meta.mode)
                    .map_err(|err| StepError::Io(err.to_string())),
                (EntryKind::File, Some(v)) => dir.rename_file(&e.meta.path, &new, v).map_err(step),
                (EntryKind::File, None) => continue,
            };
            match r {
                Ok(s) => {
                    stats.insert(new, (s.ino, s.ctime_ns));
                    moved.push(e);
                }
                Err(err) => failed = Some(err),
            }
        }
        // The old directories go once emptied, deepest first; one that still holds
        // something unknown stays.
        let mut dirs: Vec<&Entry> = live
            .iter()
            .filter(|e| e.meta.kind == EntryKind::Dir)
            .collect();
        dirs.sort_by(|a, b| b.meta.path.cmp(&a.meta.path));
        let mut kept_dirs = false;
        for d in dirs {
            if !dir.remove_dir(&d.meta.path).unwrap_or(false) {
                kept_dirs = true;
            }
        }
        if failed.is_none() && !kept_dirs {
            let a = Applied::MovePrefix {
                from: from.clone(),
                to: to.clone(),
                by: by.clone(),
                counter,
                stats,
            };
            self.queue(storage, a);
            return Ok(());
        }
        // Partly: record what moved, entry by entry.
        let mut records = Vec::new();
        for e in moved {
            let vv = e.vv.with(by, counter);
            let new = rebase(&e.meta.path, from, to);
            let (ino, ctime) = stats.get(&new).copied().unwrap_or((0, 0));
            let keep_old =
                e.meta.kind == EntryKind::Dir && dir.stat(&e.meta.path).ok().flatten().is_some();
            if !keep_old {
                records.push(Applied::Tombstone(Entry {
                    deleted: true,
                    vv: vv.clone(),
                    by: by.clone(),
                    link: Some(new.clone()),
                    ..e.clone()
                }));
            }
            records.push(Applied::Put {
                entry: Entry {
                    meta: FileMeta {
                        path: new,
                        ..e.meta.clone()
                    },
                    vv,
                    by: by.clone(),
                    link: Some(e.meta.path.clone()),
                    ..e.clone()
                },
                ino,
                ctime,
            });
        }
        self.queued[storage].extend(records);
        Err(failed.unwrap_or_else(|| {
            StepError::Changed(format!("{from} still holds entries its peers do not know"))
        }))
    }

    fn flush_history(&mut self, storage: usize) -> bool {
        let batch = std::mem::take(&mut self.queued[storage]);
        if batch.is_empty() {
            return true;
        }
        let id = self.storages[storage].id;
        if let Err(e) = self.store.record(id, batch, now_secs()) {
            // The disk has the changes; the next scan sees them as local ones, whose
            // versions then merge with the peers': nothing is lost.
            log::warn!("{}: {e}", self.storages[storage].cfg.name);
            return false;
        }
        true
    }

    fn queue_sends(&mut self, _storage: usize, sid: u64, sends: Sends) {
        self.outbox.queue(sid, sends);
    }

    fn queue_signature(
        &mut self,
        _storage: usize,
        sid: u64,
        path: RelPath,
        base: Version,
        to: NodeId,
    ) {
        if let Some(dest) = self.dest(&to) {
            self.receiver.queue_signature(sid, path, base, dest);
        }
    }

    fn cancel_session(&mut self, sid: u64) {
        self.outbox.cancel_session(sid, &self.net);
        self.receiver.cancel_session(sid);
    }

    fn free_space(&self, storage: usize) -> Option<u64> {
        self.storages[storage].dir().ok()?.free_space().ok()
    }

    fn random(&mut self) -> u64 {
        // xorshift64*: tickets and jitter need to differ between nodes, not to be secret.
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        self.rng.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}
