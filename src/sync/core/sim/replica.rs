//! The simulator's replicas: seeded randomness, in-memory file trees, the [`Io`] a
//! simulated node's core acts through, and how a schedule writes files into the trees.

use std::collections::BTreeMap;

use super::{Event, Sim, DIRS, EDIT_MTIME_BASE, NAMES};
use crate::ignore::IgnoreMatcher;
use crate::model::{EntryKind, FileMeta, NodeId, RelPath, Version};
use crate::proto::{PeerMsg, SendTo};
use crate::run::SyncError;
use crate::sync::core::{Io, Violation};

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

#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct SimFile {
    pub(super) meta: FileMeta,
    pub(super) content: u64,
}

pub(super) type Tree = BTreeMap<RelPath, SimFile>;

/// What a replica holds, without modes (the diff never propagates mode-only changes).
pub(super) type View = BTreeMap<RelPath, (EntryKind, u64, i64, u64)>;

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
                tree.insert(p, SimFile { meta, content: 0 });
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

/// One node's [`Io`]: scans and directories act on its files at once; everything that
/// crosses the network is recorded as an [`Effect`].
pub(super) struct SimIo<'a> {
    pub(super) fs: &'a mut Vec<Tree>,
    pub(super) rng: &'a mut Rng,
    pub(super) out: &'a mut Vec<Effect>,
}

impl Io for SimIo<'_> {
    fn send(&mut self, to: &NodeId, msg: PeerMsg) {
        self.out.push(Effect::Send(to.clone(), msg));
    }

    fn disconnect(&mut self, node: &NodeId, why: Violation) {
        self.out
            .push(Effect::Disconnect(node.clone(), why.to_string()));
    }

    fn scan(&mut self, storage: usize) -> Result<(Vec<FileMeta>, IgnoreMatcher), SyncError> {
        let index = self.fs[storage].values().map(|f| f.meta.clone()).collect();
        Ok((index, IgnoreMatcher::empty()))
    }

    fn make_dir(&mut self, storage: usize, path: &RelPath, mode: u32) -> std::io::Result<()> {
        make_dirs(&mut self.fs[storage], path, mode).map_err(std::io::Error::other)
    }

    fn queue_sends(&mut self, storage: usize, sid: u64, sends: Vec<(FileMeta, Vec<SendTo>)>) {
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
        None
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
        for a in file.meta.path.ancestors() {
            self.dirs.insert((storage.to_owned(), rel(a)));
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
                Some(&(mtime, size, content)) if self.rng.chance(1, 3) => SimFile {
                    meta: FileMeta::file(path, size, mtime, 0o644),
                    content,
                },
                _ => {
                    let mtime = self.fresh_mtime_initial();
                    let size = self.rng.below(10_000);
                    let content = self.rng.next();
                    SimFile {
                        meta: FileMeta::file(path, size, mtime, 0o644),
                        content,
                    }
                }
            };
            self.write(node, storage, file);
        }
        if self.rng.chance(1, 3) {
            let d = rel(DIRS[self.rng.index(DIRS.len())]);
            let s = self.nodes[node].storage(storage).unwrap();
            make_dirs(&mut self.nodes[node].fs[s], &d, 0o755).unwrap();
            self.dirs.insert((storage.to_owned(), d.clone()));
            for a in d.ancestors() {
                self.dirs.insert((storage.to_owned(), rel(a)));
            }
        }
    }

    /// Places a new version of `path` (initial content of a scenario; nothing triggers).
    pub(super) fn put(&mut self, node: usize, storage: &str, path: &str, size: u64) -> FileMeta {
        let mtime = self.fresh_mtime_initial();
        let content = self.rng.next();
        let meta = FileMeta::file(rel(path), size, mtime, 0o644);
        let file = SimFile {
            meta: meta.clone(),
            content,
        };
        self.write(node, storage, file);
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
    /// daemon runs).
    pub(super) fn edit(&mut self, node: usize, storage: &str, path: RelPath) {
        // The clock plus the node index keeps mtimes unique across nodes; the floor keeps
        // them unique on one node too. Equal mtimes with equal sizes would look identical
        // to the shallow diff and never converge, by design.
        let m = (EDIT_MTIME_BASE + self.now as i64 + node as i64).max(self.last_mtime + 1);
        self.last_mtime = m;
        let size = self.rng.below(10_000);
        let content = self.rng.next();
        self.edits += 1;
        self.log(format!(
            "{} edits {storage}/{path} -> {size}@{m}",
            self.name(node)
        ));
        self.write(
            node,
            storage,
            SimFile {
                meta: FileMeta::file(path, size, m, 0o644),
                content,
            },
        );
        if self.up(node) {
            self.trigger(node, storage);
        }
    }
}
