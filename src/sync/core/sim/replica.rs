//! The simulator's replicas: seeded randomness, in-memory file trees, the [`Io`] a
//! simulated node's core acts through, and how a schedule writes files into the trees.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering as AtomicOrdering};

use super::oracle::{Oracle, View};
use super::{Event, Sim, DIRS, EDIT_MTIME_BASE, NAMES};
use crate::history::{is_below, rebase, Digest, Entry, Record};
use crate::ignore::IgnoreMatcher;
use crate::model::{EntryKind, FileMeta, NodeId, RelPath, Version};
use crate::proto::PeerMsg;
use crate::run::SyncError;
use crate::store::{Applied, DiffSource, Found, StorageId, Store};
use crate::sync::core::{Deleted, EachPlanned, Io, LocalIndex, Send, Sends, StepError, Violation};

/// splitmix64: tiny, seedable, good enough to drive schedules.
#[derive(Clone)]
pub(super) struct Rng(u64);

impl Rng {
    pub(super) fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub(super) fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub(super) fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next() % n
        }
    }

    /// Uniform in `lo..=hi`.
    pub(super) fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }

    pub(super) fn chance(&mut self, num: u64, den: u64) -> bool {
        self.below(den) < num
    }

    pub(super) fn index(&mut self, len: usize) -> usize {
        self.below(len as u64) as usize
    }
}

pub(super) fn rel(s: &str) -> RelPath {
    RelPath::new(s).unwrap()
}

/// Every file path a schedule may use.
pub(super) fn file_universe() -> Vec<RelPath> {
    let mut out = Vec::new();
    for name in NAMES {
        out.push(rel(name));
        for d in DIRS {
            out.push(rel(&format!("{d}/{name}")));
        }
    }
    out
}

/// A file or directory of a simulated tree. `ino` survives a rename, as on a real file
/// system; `ctime` changes whenever the entry does (both drawn from one counter, so every
/// change is seen by a scan).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct SimFile {
    pub(super) meta: FileMeta,
    pub(super) content: u64,
    pub(super) ino: u64,
    pub(super) ctime: i64,
}

/// A counter, not 64-bit atomics: 32-bit MIPS has none, and the tests build there too.
static STAMPS: AtomicUsize = AtomicUsize::new(1);

/// A fresh inode number or ctime.
pub(super) fn stamp() -> u64 {
    STAMPS.fetch_add(1, AtomicOrdering::Relaxed) as u64
}

impl SimFile {
    /// A new file (a new inode).
    pub(super) fn new(meta: FileMeta, content: u64) -> SimFile {
        SimFile {
            meta,
            content,
            ino: stamp(),
            ctime: stamp() as i64,
        }
    }
}

pub(super) type Tree = BTreeMap<RelPath, SimFile>;

pub(super) fn view(tree: &Tree) -> View {
    tree.iter()
        .map(|(p, f)| {
            (
                p.clone(),
                (f.meta.kind, f.meta.size, f.meta.mtime_ns, f.content),
            )
        })
        .collect()
}

/// The content hash a simulated file has: its content token.
pub(super) fn hash_of(content: u64) -> Digest {
    let mut h = [0u8; 32];
    for c in h.chunks_exact_mut(8) {
        c.copy_from_slice(&content.to_le_bytes());
    }
    h
}

/// Creates `path` and its missing ancestors as directories.
pub(super) fn make_dirs(tree: &mut Tree, path: &RelPath, mode: u32) -> Result<(), String> {
    let mut all: Vec<RelPath> = path.ancestors().map(rel).collect();
    all.push(path.clone());
    for p in all {
        match tree.get(&p) {
            Some(f) if f.meta.kind == EntryKind::Dir => {}
            Some(_) => return Err(format!("{p} is a file")),
            None => {
                let meta = FileMeta::dir(p.clone(), mode);
                tree.insert(p, SimFile::new(meta, 0));
            }
        }
    }
    Ok(())
}

/// Writes a file (and its missing parent directories), as an editor or a commit would.
pub(super) fn put_file(tree: &mut Tree, file: SimFile) -> Result<(), String> {
    if let Some(parent) = file.meta.path.parent() {
        make_dirs(tree, &parent, 0o755)?;
    }
    if tree
        .get(&file.meta.path)
        .is_some_and(|f| f.meta.kind == EntryKind::Dir)
    {
        return Err(format!("{} is a directory", file.meta.path));
    }
    tree.insert(file.meta.path.clone(), file);
    Ok(())
}

/// Whether anything is below `dir` in the tree.
pub(super) fn holds_any(tree: &Tree, dir: &RelPath) -> bool {
    tree.keys().any(|p| is_below(p, dir))
}

/// A side effect a core asked for, applied by the simulator once the core call returns (the
/// core holds `&mut` to its own state during the call, so the network cannot be touched then).
pub(super) enum Effect {
    Send(NodeId, PeerMsg),
    Disconnect(NodeId, String),
    QueueSend {
        storage: usize,
        sid: u64,
        meta: FileMeta,
        to: Vec<NodeId>,
    },
    Cancel(u64),
}

/// A node's history: its store (kept across restarts, as the database file would be) and
/// what its steps queued for the next flush.
pub(super) struct History {
    pub(super) store: Store,
    pub(super) ids: Vec<StorageId>,
    pub(super) queued: Vec<Vec<Applied>>,
}

impl History {
    pub(super) fn new(me: &NodeId, storages: &[String]) -> History {
        let mut store = Store::open_in_memory(me).expect("an in-memory store opens");
        let ids = storages
            .iter()
            .map(|s| store.storage(s).expect("a storage row"))
            .collect();
        History {
            store,
            ids,
            queued: storages.iter().map(|_| Vec::new()).collect(),
        }
    }
}

/// One node's [`Io`]: scans and plan steps act on its trees and its store at once;
/// everything that crosses the network is recorded as an [`Effect`].
pub(super) struct SimIo<'a> {
    pub(super) fs: &'a mut Vec<Tree>,
    pub(super) history: &'a mut History,
    pub(super) storages: &'a [String],
    pub(super) node: &'a str,
    pub(super) rng: &'a mut Rng,
    pub(super) out: &'a mut Vec<Effect>,
    pub(super) oracle: &'a mut Oracle,
    /// Virtual time in seconds (version counters, tombstone dates).
    pub(super) now: u64,
    /// Storages this node wrote in (its own writes, which its watcher sees like any other).
    pub(super) touched: Vec<usize>,
    /// Its disk is full: no room for any incoming file.
    pub(super) full: bool,
}

fn sim_err(e: impl std::fmt::Display) -> SyncError {
    SyncError::History(e.to_string())
}

fn changed(what: impl std::fmt::Display) -> StepError {
    StepError::Changed(what.to_string())
}

/// The content token a simulated hash stands for.
pub(super) fn content_of(hash: &Digest) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&hash[..8]);
    u64::from_le_bytes(b)
}

impl SimIo<'_> {
    /// Tells the oracle what the scan that moved the index past `seq` recorded.
    fn tell_oracle(&mut self, storage: usize, seq: u64) {
        let id = self.history.ids[storage];
        let store = &self.history.store;
        let name = &self.storages[storage];
        let mut records = Vec::new();
        store
            .local_since(id, seq, &mut |page| records.extend(page))
            .expect("the simulated store reads");
        let mut entries = Vec::new();
        for r in records {
            match r {
                Record::Entry(e) => entries.push(e),
                Record::MovePrefix { from, to, .. } => {
                    for dir in [from, to] {
                        let below = store.local_below(id, &dir).expect("the store reads");
                        entries.extend(below);
                    }
                }
            }
        }
        for e in entries {
            if e.deleted {
                let content = e.hash.as_ref().map(content_of);
                self.oracle.tomb(name, e.meta.path, content, e.vv);
            } else {
                let content = match e.meta.kind {
                    EntryKind::Dir => None,
                    EntryKind::File => Some(content_of(&e.hash.expect("a scan hashes files"))),
                };
                self.oracle
                    .live(name, self.node, e.meta.path, content, e.vv);
            }
        }
    }

    fn queue(&mut self, storage: usize, a: Applied) {
        self.touched.push(storage);
        self.history.queued[storage].push(a);
    }

    fn file_version(&self, storage: usize, path: &RelPath) -> Option<Version> {
        self.fs[storage].get(path).and_then(|f| f.meta.version())
    }
}

impl Io for SimIo<'_> {
    fn send(&mut self, to: &NodeId, msg: PeerMsg) {
        self.out.push(Effect::Send(to.clone(), msg));
    }

    fn disconnect(&mut self, node: &NodeId, why: Violation) {
        self.out
            .push(Effect::Disconnect(node.clone(), why.to_string()));
    }

    fn local_state(&mut self, storage: usize) -> Option<(u64, u64)> {
        let id = self.history.ids[storage];
        self.history.store.local_state(id).ok()
    }

    fn scan(&mut self, storage: usize) -> Result<(LocalIndex, IgnoreMatcher), SyncError> {
        let found: Vec<Found> = self.fs[storage]
            .values()
            .map(|f| Found {
                meta: f.meta.clone(),
                ino: f.ino,
                ctime_ns: f.ctime,
            })
            .collect();
        let id = self.history.ids[storage];
        let (_, seq) = self.history.store.local_state(id).map_err(sim_err)?;
        let tree = &self.fs[storage];
        let summary = self
            .history
            .store
            .record_scan(id, found, self.now, &mut |p| {
                tree.get(p)
                    .map(|f| hash_of(f.content))
                    .ok_or_else(|| std::io::Error::other("vanished"))
            })
            .map_err(sim_err)?;
        self.tell_oracle(storage, seq);
        Ok((
            LocalIndex {
                index_id: summary.index_id,
                seq: summary.seq,
                count: summary.count,
                digest: summary.digest,
            },
            IgnoreMatcher::empty(),
        ))
    }

    fn index_since(
        &mut self,
        storage: usize,
        since: u64,
        each: &mut dyn FnMut(Vec<Record>, &mut Send<'_>),
    ) -> Result<u64, SyncError> {
        let out = &mut *self.out;
        let mut send = |to: &NodeId, msg: PeerMsg| out.push(Effect::Send(to.clone(), msg));
        let id = self.history.ids[storage];
        self.history
            .store
            .local_since(id, since, &mut |page| each(page, &mut send))
            .map_err(sim_err)
    }

    fn remote_state(&mut self, storage: usize, node: &NodeId) -> Option<(u64, u64)> {
        let id = self.history.ids[storage];
        self.history.store.remote_state(id, node).ok().flatten()
    }

    fn remote_begin(&mut self, storage: usize, node: &NodeId, full: bool) -> Result<(), SyncError> {
        let id = self.history.ids[storage];
        self.history
            .store
            .remote_begin(id, node, full)
            .map_err(sim_err)
    }

    fn remote_apply(
        &mut self,
        storage: usize,
        node: &NodeId,
        records: &[Record],
    ) -> Result<(), SyncError> {
        let id = self.history.ids[storage];
        self.history
            .store
            .remote_apply(id, node, records)
            .map_err(sim_err)
    }

    fn remote_end(&mut self, storage: usize, node: &NodeId, index_id: u64, seq: u64) {
        let id = self.history.ids[storage];
        let _ = self.history.store.remote_end(id, node, index_id, seq);
    }

    fn diff(
        &mut self,
        storage: usize,
        sources: &[Option<NodeId>],
        each: &mut EachPlanned<'_>,
    ) -> Result<(), SyncError> {
        let out = &mut *self.out;
        let mut send = |to: &NodeId, msg: PeerMsg| out.push(Effect::Send(to.clone(), msg));
        let sources: Vec<DiffSource> = sources
            .iter()
            .map(|s| match s {
                None => DiffSource::Local,
                Some(n) => DiffSource::Remote(n.clone()),
            })
            .collect();
        let id = self.history.ids[storage];
        self.history
            .store
            .diff(id, &sources, &mut |here, view| each(here, view, &mut send))
            .map_err(sim_err)
    }

    fn make_dir(&mut self, storage: usize, entry: &Entry) -> Result<(), StepError> {
        make_dirs(&mut self.fs[storage], &entry.meta.path, entry.meta.mode)
            .map_err(StepError::Io)?;
        let f = &self.fs[storage][&entry.meta.path];
        let (ino, ctime) = (f.ino, f.ctime);
        self.queue(
            storage,
            Applied::Put {
                entry: entry.clone(),
                ino,
                ctime,
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
        let path = &entry.meta.path;
        let tree = &mut self.fs[storage];
        match tree.get(path) {
            None => {}
            Some(f) if f.meta.kind == EntryKind::Dir => {
                if entry.meta.kind != EntryKind::Dir {
                    return Err(changed(format!("{path} is a directory now")));
                }
                if holds_any(tree, path) {
                    let mut kept = entry.clone();
                    kept.deleted = false;
                    kept.vv = entry.vv.bump(self.history.store.me(), self.now);
                    kept.by = self.history.store.me().clone();
                    kept.link = None;
                    let (ino, ctime) = (f.ino, f.ctime);
                    // The disk refused the deletion (the directory holds what its peers do
                    // not know): a version of its own, as a scan would have made.
                    let name = &self.storages[storage];
                    self.oracle
                        .live(name, self.node, path.clone(), None, kept.vv.clone());
                    self.queue(
                        storage,
                        Applied::Put {
                            entry: kept,
                            ino,
                            ctime,
                        },
                    );
                    return Ok(Deleted::Kept);
                }
                tree.remove(path);
            }
            Some(f) => {
                if f.meta.version() != expect || expect.is_none() {
                    return Err(changed(format!("{path} changed meanwhile")));
                }
                tree.remove(path);
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
        let found = self.fs[storage].get(&entry.meta.path).cloned();
        let ok = match (entry.deleted, entry.meta.kind, &found) {
            (true, _, None) => true,
            (false, EntryKind::Dir, Some(f)) => f.meta.kind == EntryKind::Dir,
            (false, EntryKind::File, Some(f)) => expect.is_some() && f.meta.version() == expect,
            _ => false,
        };
        if !ok {
            return Err(changed(format!("{} changed meanwhile", entry.meta.path)));
        }
        let a = if entry.deleted {
            Applied::Tombstone(entry.clone())
        } else {
            Applied::Put {
                entry: entry.clone(),
                ino: found.as_ref().map_or(0, |f| f.ino),
                ctime: found.as_ref().map_or(0, |f| f.ctime),
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
        if self.file_version(storage, from) != Some(expect) {
            return Err(changed(format!("{from} changed meanwhile")));
        }
        let tree = &mut self.fs[storage];
        if tree.contains_key(&entry.meta.path) {
            return Err(changed(format!("{} exists", entry.meta.path)));
        }
        let Some(mut f) = tree.remove(from) else {
            return Err(changed(format!("{from} vanished")));
        };
        f.meta.path = entry.meta.path.clone();
        f.ctime = stamp() as i64;
        let (ino, ctime) = (f.ino, f.ctime);
        put_file(tree, f).map_err(StepError::Io)?;
        self.queue(
            storage,
            Applied::Put {
                entry: entry.clone(),
                ino,
                ctime,
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
        let id = self.history.ids[storage];
        let live: Vec<Entry> = self
            .history
            .store
            .local_below(id, from)
            .map_err(|e| StepError::Io(e.to_string()))?
            .into_iter()
            .filter(Entry::is_live)
            .collect();
        let tree = &mut self.fs[storage];
        if tree.contains_key(to) {
            return Err(changed(format!("{to} exists")));
        }
        // Every entry must still be what the store knows, or nothing moves.
        for e in &live {
            let ok = match tree.get(&e.meta.path) {
                Some(f) if e.meta.kind == EntryKind::Dir => f.meta.kind == EntryKind::Dir,
                Some(f) => f.meta.version() == e.version(),
                None => false,
            };
            if !ok {
                return Err(changed(format!("{} changed meanwhile", e.meta.path)));
            }
        }
        let mut stats = std::collections::HashMap::new();
        let moving: Vec<RelPath> = tree
            .keys()
            .filter(|p| *p == from || is_below(p, from))
            .cloned()
            .collect();
        for p in moving {
            if let Some(mut f) = tree.remove(&p) {
                let new = rebase(&p, from, to);
                f.meta.path = new.clone();
                f.ctime = stamp() as i64;
                stats.insert(new.clone(), (f.ino, f.ctime));
                tree.insert(new, f);
            }
        }
        self.queue(
            storage,
            Applied::MovePrefix {
                from: from.clone(),
                to: to.clone(),
                by: by.clone(),
                counter,
                stats,
            },
        );
        Ok(())
    }

    fn flush_history(&mut self, storage: usize) -> bool {
        let batch = std::mem::take(&mut self.history.queued[storage]);
        let id = self.history.ids[storage];
        if let Err(e) = self.history.store.record(id, batch, self.now) {
            panic!("the simulated store failed: {e}");
        }
        true
    }

    fn queue_sends(&mut self, storage: usize, sid: u64, sends: Sends) {
        for (meta, to) in sends {
            self.out.push(Effect::QueueSend {
                storage,
                sid,
                meta,
                to: to.into_iter().map(|t| t.node).collect(),
            });
        }
    }

    /// Deltas change how bytes move, not what a session decides: the simulator moves whole
    /// versions, so there is no signature to compute.
    fn queue_signature(&mut self, _: usize, _: u64, _: RelPath, _: Version, _: NodeId) {}

    fn cancel_session(&mut self, sid: u64) {
        self.out.push(Effect::Cancel(sid));
    }

    fn free_space(&self, _storage: usize) -> Option<u64> {
        self.full.then_some(0)
    }

    fn random(&mut self) -> u64 {
        self.rng.next()
    }
}

impl Sim {
    // ------------------------------------------------------------------------------------
    // Files

    pub(super) fn fresh_mtime_initial(&mut self) -> i64 {
        loop {
            // Before and after 1970: signed mtimes must compare right.
            let m = self.rng.below(2_000_000_000_000) as i64 - 1_000_000_000_000;
            if self.used_mtimes.insert(m) {
                return m;
            }
        }
    }

    pub(super) fn register(&mut self, storage: &str, file: &SimFile) {
        let key = (storage.to_owned(), file.meta.path.clone());
        let v = (file.meta.mtime_ns, file.meta.size, file.content);
        if self.newest.get(&key).is_none_or(|old| v.0 > old.0) {
            self.newest.insert(key, v);
        }
    }

    pub(super) fn write(&mut self, node: usize, storage: &str, file: SimFile) {
        let s = self.nodes[node].storage(storage).expect("node has storage");
        self.register(storage, &file);
        put_file(&mut self.nodes[node].fs[s], file).expect("file and directory paths are disjoint");
    }

    /// Random initial content of one storage of one node: files (sometimes an exact copy of
    /// another node's version, so several nodes hold the winner) and maybe an empty dir.
    pub(super) fn random_tree(&mut self, node: usize, storage: &str, universe: &[RelPath]) {
        let files = self.rng.below(31);
        for _ in 0..files {
            let path = universe[self.rng.index(universe.len())].clone();
            let s = self.nodes[node].storage(storage).unwrap();
            // Overwriting with an older initial version would make "the newest version
            // that ever existed" one that no longer exists anywhere.
            if self.nodes[node].fs[s].contains_key(&path) {
                continue;
            }
            let key = (storage.to_owned(), path.clone());
            let file = match self.newest.get(&key) {
                Some(&(mtime, size, content)) if self.rng.chance(1, 3) => {
                    SimFile::new(FileMeta::file(path, size, mtime, 0o644), content)
                }
                _ => {
                    let mtime = self.fresh_mtime_initial();
                    let size = self.rng.below(10_000);
                    let content = self.rng.next();
                    SimFile::new(FileMeta::file(path, size, mtime, 0o644), content)
                }
            };
            self.write(node, storage, file);
        }
        if self.rng.chance(1, 3) {
            let d = rel(DIRS[self.rng.index(DIRS.len())]);
            let s = self.nodes[node].storage(storage).unwrap();
            make_dirs(&mut self.nodes[node].fs[s], &d, 0o755).unwrap();
        }
    }

    /// Places a new version of `path` (initial content of a scenario; nothing triggers).
    pub(super) fn put(&mut self, node: usize, storage: &str, path: &str, size: u64) -> FileMeta {
        let mtime = self.fresh_mtime_initial();
        let content = self.rng.next();
        let meta = FileMeta::file(rel(path), size, mtime, 0o644);
        self.write(node, storage, SimFile::new(meta.clone(), content));
        meta
    }

    /// Is a message of this kind to `to` in flight?
    pub(super) fn in_flight(&self, to: usize, kind: &str) -> bool {
        self.queue.iter().any(|e| match &e.ev {
            Event::Deliver { to: t, msg, .. } => *t == to && msg.name() == kind,
            _ => false,
        })
    }

    /// A user writes a new version of `path` on `node` (the watcher then triggers, if the
    /// daemon runs): half the time in place (same inode), half as editors do, by writing a
    /// new file over it.
    pub(super) fn edit(&mut self, node: usize, storage: &str, path: RelPath) {
        // The clock plus the node index keeps mtimes unique across nodes; the floor keeps
        // them unique on one node too.
        let m = (EDIT_MTIME_BASE + self.now as i64 + node as i64).max(self.last_mtime + 1);
        self.last_mtime = m;
        let size = self.rng.below(10_000);
        let content = self.rng.next();
        self.edits += 1;
        self.log(format!(
            "{} edits {storage}/{path} -> {size}@{m}",
            self.name(node)
        ));
        let s = self.nodes[node].storage(storage).expect("node has storage");
        self.user_drops(node, s, &path);
        let mut file = SimFile::new(FileMeta::file(path.clone(), size, m, 0o644), content);
        if let Some(old) = self.nodes[node].fs[s].get(&path) {
            if self.rng.chance(1, 2) {
                file.ino = old.ino;
            }
        }
        self.write(node, storage, file);
        self.user_changed(node, storage);
    }

    /// The user is about to overwrite or delete the file at `path` on `node`: if its store
    /// knows that content (at that path, or at the one it had before a move not scanned
    /// yet), the user drops it knowing the version the store holds.
    fn user_drops(&mut self, node: usize, s: usize, path: &RelPath) {
        let n = &self.nodes[node];
        let Some(f) = n.fs[s].get(path).filter(|f| f.meta.kind == EntryKind::File) else {
            return;
        };
        let id = n.history.ids[s];
        let here = n
            .history
            .store
            .local(id, path)
            .expect("the simulated store reads");
        let mut known = Vec::new();
        match here.filter(|e| e.is_live() && e.hash.as_ref().map(content_of) == Some(f.content)) {
            Some(e) => known.push((e.meta.path, e.vv)),
            None => n
                .history
                .store
                .diff(id, &[DiffSource::Local], &mut |here, _| {
                    if let Some(e) = here[0].filter(|e| e.is_live()) {
                        if e.hash.as_ref().map(content_of) == Some(f.content) {
                            known.push((e.meta.path.clone(), e.vv.clone()));
                        }
                    }
                })
                .expect("the simulated store reads"),
        }
        for (at, vv) in known {
            self.oracle.drop_content(&n.storages[s], f.content, at, vv);
        }
    }

    fn user_changed(&mut self, node: usize, storage: &str) {
        if let Some(s) = self.nodes[node].storage(storage) {
            self.watch_event(node, s);
        }
    }

    /// A user deletes a file, or a directory with everything in it (`rm -r`).
    pub(super) fn delete(&mut self, node: usize, storage: &str, path: &RelPath) {
        let s = self.nodes[node].storage(storage).expect("node has storage");
        let gone: Vec<RelPath> = self.nodes[node].fs[s]
            .keys()
            .filter(|p| *p == path || is_below(p, path))
            .cloned()
            .collect();
        for p in &gone {
            self.user_drops(node, s, p);
            self.nodes[node].fs[s].remove(p);
        }
        self.deletes += 1;
        self.log(format!(
            "{} deletes {storage}/{path} ({} entries)",
            self.name(node),
            gone.len()
        ));
        self.user_changed(node, storage);
    }

    /// A user renames a file or a directory (`mv`): the same inodes under new names, new
    /// ctimes, nothing else changes. `to` must be free and not below `from`.
    pub(super) fn rename(&mut self, node: usize, storage: &str, from: &RelPath, to: &RelPath) {
        let s = self.nodes[node].storage(storage).expect("node has storage");
        let tree = &mut self.nodes[node].fs[s];
        let moving: Vec<RelPath> = tree
            .keys()
            .filter(|p| *p == from || is_below(p, from))
            .cloned()
            .collect();
        let mut moved = Vec::new();
        for p in &moving {
            if let Some(mut f) = tree.remove(p) {
                f.meta.path = rebase(p, from, to);
                f.ctime = stamp() as i64;
                moved.push(f);
            }
        }
        if let Some(parent) = to.parent() {
            make_dirs(tree, &parent, 0o755).expect("file and directory paths are disjoint");
        }
        for f in moved {
            tree.insert(f.meta.path.clone(), f);
        }
        self.renames += 1;
        self.log(format!(
            "{} renames {storage}/{from} to {to} ({} entries)",
            self.name(node),
            moving.len()
        ));
        self.user_changed(node, storage);
    }

    /// What a user does next on `node`: mostly edits, also deletions and renames of files
    /// and whole directories, and deletions of conflict copies.
    pub(super) fn random_user_op(&mut self, node: usize) {
        let st = self.nodes[node].storages.clone();
        let storage = st[self.rng.index(st.len())].clone();
        let s = self.nodes[node]
            .storage(&storage)
            .expect("node has storage");
        let tree = &self.nodes[node].fs[s];
        let files: Vec<RelPath> = tree
            .values()
            .filter(|f| f.meta.kind == EntryKind::File)
            .map(|f| f.meta.path.clone())
            .collect();
        let dirs: Vec<RelPath> = tree
            .values()
            .filter(|f| f.meta.kind == EntryKind::Dir)
            .map(|f| f.meta.path.clone())
            .collect();
        let roll = self.rng.below(100);
        if roll < 60 || files.is_empty() {
            let universe = file_universe();
            let p = universe[self.rng.index(universe.len())].clone();
            self.edit(node, &storage, p);
        } else if roll < 72 {
            let p = files[self.rng.index(files.len())].clone();
            self.delete(node, &storage, &p);
        } else if roll < 84 {
            // To a free file name of the universe (or beside itself, for conflict copies).
            let from = files[self.rng.index(files.len())].clone();
            let universe = file_universe();
            let to = universe[self.rng.index(universe.len())].clone();
            if !self.nodes[node].fs[s].contains_key(&to) {
                self.rename(node, &storage, &from, &to);
            }
        } else if dirs.is_empty() {
        } else if roll < 91 {
            let d = dirs[self.rng.index(dirs.len())].clone();
            self.delete(node, &storage, &d);
        } else {
            let from = dirs[self.rng.index(dirs.len())].clone();
            let to = rel(DIRS[self.rng.index(DIRS.len())]);
            let tree = &self.nodes[node].fs[s];
            let free = !tree.contains_key(&to)
                && to != from
                && !is_below(&to, &from)
                && to.ancestors().all(|a| {
                    tree.get(&rel(a))
                        .is_none_or(|f| f.meta.kind == EntryKind::Dir)
                });
            if free {
                self.rename(node, &storage, &from, &to);
            }
        }
    }
}
