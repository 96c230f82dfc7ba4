//! History: what a node knows of every path beyond what is on its disk now — version
//! vectors, tombstones, content hashes — and the pure rules that decide, from every
//! participant's history of a path, what a session must do. No I/O, no clock (times are
//! passed in).
//!
//! A path's *version* is a [`Vv`] (version vector): for every node that changed the path,
//! a counter. A node that changes a path (an edit, a new file, a deletion, a move) sets its
//! own counter to `max(its counter + 1, now in seconds)`: a counter only grows, and one made
//! after a node lost its database still exceeds the ones it made before. Of two versions,
//! one *dominates* the other when it is at least as large for every node: it was made by a
//! node that knew the other. Otherwise they are *concurrent*: two nodes changed the path
//! without knowing of each other's change. The rules (see [`decide`]):
//! - a version that dominates every other wins, whatever the clocks say, and it may be a
//!   deletion (a tombstone), which then propagates;
//! - of concurrent versions, an edit beats a deletion: the edited file survives everywhere;
//! - concurrent edits of different content are a conflict: the most recent modification
//!   keeps the name, every other version is kept beside it as a conflict copy
//!   ([`conflict_name`]); identical content is no conflict;
//! - a node without history for a path has no version: anything it has there is new.

mod decide;

pub use decide::{conflict_name, decide, Apply, Decision, Loser, Target};

use std::cmp::Ordering;
use std::fmt;

use crate::model::{EntryKind, FileMeta, NodeId, RelPath, Version};

/// Most nodes one version vector may name (bounds what a peer can make us store).
pub const MAX_VV: usize = 64;

pub type Digest = [u8; 32];

/// How two versions relate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    Equal,
    /// The first was made without the second's change, which came later.
    Before,
    After,
    Concurrent,
}

/// A version vector: the counter of every node that changed a path, sorted by node id,
/// with no zero counters.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Vv(Vec<(NodeId, u64)>);

/// Why a list of counters is not a version vector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VvError {
    NotSorted,
    Zero,
    TooLong,
}

impl fmt::Display for VvError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            VvError::NotSorted => "version vector not sorted by node id, or a node twice",
            VvError::Zero => "version vector with a zero counter",
            VvError::TooLong => "version vector naming too many nodes",
        })
    }
}

impl Vv {
    /// Checks `pairs` (sorted by node id, unique, no zero) and wraps them.
    pub fn from_pairs(pairs: Vec<(NodeId, u64)>) -> Result<Vv, VvError> {
        if pairs.len() > MAX_VV {
            return Err(VvError::TooLong);
        }
        if pairs.iter().any(|(_, c)| *c == 0) {
            return Err(VvError::Zero);
        }
        if pairs.windows(2).any(|w| w[0].0 >= w[1].0) {
            return Err(VvError::NotSorted);
        }
        Ok(Vv(pairs))
    }

    pub fn pairs(&self) -> &[(NodeId, u64)] {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The counter of `node` (0 if it never changed the path).
    pub fn get(&self, node: &NodeId) -> u64 {
        self.0
            .binary_search_by(|(n, _)| n.cmp(node))
            .map_or(0, |i| self.0[i].1)
    }

    /// This version changed by `me` at `now_secs`: `me`'s counter becomes
    /// `max(counter + 1, now_secs)`.
    pub fn bump(&self, me: &NodeId, now_secs: u64) -> Vv {
        let next = (self.get(me) + 1).max(now_secs);
        self.with(me, next)
    }

    /// The same version with `node`'s counter set to `counter` (which callers make larger
    /// than the old one).
    pub fn with(&self, node: &NodeId, counter: u64) -> Vv {
        let mut v = self.0.clone();
        match v.binary_search_by(|(n, _)| n.cmp(node)) {
            Ok(i) => v[i].1 = counter,
            Err(i) => v.insert(i, (node.clone(), counter)),
        }
        v.retain(|(_, c)| *c > 0);
        Vv(v)
    }

    /// The smallest version that dominates both.
    pub fn merge(&self, other: &Vv) -> Vv {
        let mut out = Vec::with_capacity(self.0.len().max(other.0.len()));
        let (mut a, mut b) = (self.0.iter().peekable(), other.0.iter().peekable());
        loop {
            match (a.peek(), b.peek()) {
                (Some((na, ca)), Some((nb, cb))) => match na.cmp(nb) {
                    Ordering::Less => {
                        out.push((na.clone(), *ca));
                        a.next();
                    }
                    Ordering::Greater => {
                        out.push((nb.clone(), *cb));
                        b.next();
                    }
                    Ordering::Equal => {
                        out.push((na.clone(), (*ca).max(*cb)));
                        a.next();
                        b.next();
                    }
                },
                (Some((n, c)), None) | (None, Some((n, c))) => {
                    out.push((n.clone(), *c));
                    a.next();
                    b.next();
                }
                (None, None) => break,
            }
        }
        Vv(out)
    }

    pub fn compare(&self, other: &Vv) -> Order {
        let (mut less, mut greater) = (false, false);
        let (mut a, mut b) = (self.0.iter().peekable(), other.0.iter().peekable());
        loop {
            match (a.peek(), b.peek()) {
                (Some((na, ca)), Some((nb, cb))) => match na.cmp(nb) {
                    Ordering::Less => {
                        greater = true;
                        a.next();
                    }
                    Ordering::Greater => {
                        less = true;
                        b.next();
                    }
                    Ordering::Equal => {
                        match ca.cmp(cb) {
                            Ordering::Less => less = true,
                            Ordering::Greater => greater = true,
                            Ordering::Equal => {}
                        }
                        a.next();
                        b.next();
                    }
                },
                (Some(_), None) => {
                    greater = true;
                    a.next();
                }
                (None, Some(_)) => {
                    less = true;
                    b.next();
                }
                (None, None) => break,
            }
        }
        match (less, greater) {
            (false, false) => Order::Equal,
            (true, false) => Order::Before,
            (false, true) => Order::After,
            (true, true) => Order::Concurrent,
        }
    }

    /// At least as new as `other` for every node.
    pub fn dominates(&self, other: &Vv) -> bool {
        matches!(self.compare(other), Order::Equal | Order::After)
    }
}

/// What a node knows of one path: the entry it has (or had: a tombstone), with its version.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// Path, kind, and for a live file its size, mtime and mode (a tombstone keeps those of
    /// the version it deleted).
    pub meta: FileMeta,
    /// A deletion: the path does not exist (any more) on this node.
    pub deleted: bool,
    /// BLAKE3 of a live file's content, when known.
    pub hash: Option<Digest>,
    pub vv: Vv,
    /// The node that made this version (names its conflict copy).
    pub by: NodeId,
    /// The other end of a move: where a tombstone's content went, or where a live entry's
    /// came from. Lets a node that has the old path replay the move instead of receiving
    /// the content again.
    pub link: Option<RelPath>,
}

/// Point lookups into the indexes a leader diffs (source `i` is participant `i`): what the
/// planner needs beside the path being decided — a free name for a conflict copy, the other
/// end of a move.
pub trait IndexView {
    /// Whether any of the indexes has an entry (live or not) at `path`.
    fn taken(&self, path: &RelPath) -> bool;
    /// Source `i`'s entry at `path`.
    fn entry(&self, i: usize, path: &RelPath) -> Option<Entry>;
    /// Source `i`'s entries at or below directory `dir`, in path order.
    fn below(&self, i: usize, dir: &RelPath) -> Vec<Entry>;
}

/// What a streamed diff calls for each path: every source's entry there (in source order),
/// and the view for lookups beside it.
pub type EachPath<'a> = dyn FnMut(&[Option<&Entry>], &dyn IndexView) + 'a;

/// One line of a node's index as it sends it to a leader.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Record {
    Entry(Entry),
    /// A directory move, standing for every entry it moved: every live entry at or below
    /// `from` moved to the same place below `to`. Each old path becomes a tombstone and each
    /// new one has the same content, both with `by`'s counter set to `counter`.
    MovePrefix {
        from: RelPath,
        to: RelPath,
        by: NodeId,
        counter: u64,
    },
}

impl Entry {
    pub fn is_live(&self) -> bool {
        !self.deleted
    }

    /// The version a transfer checks for (a live file's size and mtime).
    pub fn version(&self) -> Option<Version> {
        if self.deleted {
            None
        } else {
            self.meta.version()
        }
    }

    /// Same content: both live and either directories, or files with equal hashes (equal
    /// size and mtime when a hash is missing on either side: a node that has not hashed a
    /// file cannot prove it differs, and two copies with the same size and nanosecond
    /// mtime are the same file in practice).
    pub fn same_content(&self, other: &Entry) -> bool {
        if self.deleted || other.deleted || self.meta.kind != other.meta.kind {
            return false;
        }
        match self.meta.kind {
            EntryKind::Dir => true,
            EntryKind::File => match (&self.hash, &other.hash) {
                (Some(a), Some(b)) => a == b,
                _ => self.meta.size == other.meta.size && self.meta.mtime_ns == other.meta.mtime_ns,
            },
        }
    }
}

/// `p` is strictly below directory `dir`.
pub fn is_below(p: &RelPath, dir: &RelPath) -> bool {
    let (p, d) = (p.as_str(), dir.as_str());
    p.len() > d.len() && p.starts_with(d) && p.as_bytes()[d.len()] == b'/'
}

/// `p` (at or below `from`) moved to the same place below `to`.
pub fn rebase(p: &RelPath, from: &RelPath, to: &RelPath) -> RelPath {
    if p == from {
        return to.clone();
    }
    match p
        .as_str()
        .strip_prefix(from.as_str())
        .and_then(|r| r.strip_prefix('/'))
    {
        Some(rest) => to.join_path(rest).unwrap_or_else(|_| p.clone()),
        None => p.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> NodeId {
        NodeId::new(s).unwrap()
    }

    fn vv(pairs: &[(&str, u64)]) -> Vv {
        Vv::from_pairs(pairs.iter().map(|(a, c)| (n(a), *c)).collect()).unwrap()
    }

    #[test]
    fn versions_compare_per_node() {
        let a = vv(&[("a", 1)]);
        let ab = vv(&[("a", 1), ("b", 1)]);
        let b = vv(&[("b", 1)]);
        assert_eq!(a.compare(&a), Order::Equal);
        assert_eq!(a.compare(&ab), Order::Before);
        assert_eq!(ab.compare(&a), Order::After);
        assert_eq!(a.compare(&b), Order::Concurrent);
        assert_eq!(Vv::default().compare(&a), Order::Before);
        assert!(ab.dominates(&a) && ab.dominates(&b) && !a.dominates(&b));
        assert_eq!(a.merge(&b), ab);
        assert_eq!(
            vv(&[("a", 5)]).merge(&vv(&[("a", 2), ("c", 1)])),
            vv(&[("a", 5), ("c", 1)])
        );
    }

    #[test]
    fn a_bump_outgrows_the_clock_and_the_old_counter() {
        let me = n("me");
        let v = Vv::default().bump(&me, 1_000);
        assert_eq!(v.get(&me), 1_000);
        // A clock that went back does not make the counter go back.
        assert_eq!(v.bump(&me, 10).get(&me), 1_001);
        assert!(v.bump(&me, 10).dominates(&v));
        assert_eq!(v.with(&n("x"), 3).pairs().len(), 2);
    }

    #[test]
    fn malformed_vectors_are_refused() {
        assert_eq!(
            Vv::from_pairs(vec![(n("b"), 1), (n("a"), 1)]),
            Err(VvError::NotSorted)
        );
        assert_eq!(Vv::from_pairs(vec![(n("a"), 0)]), Err(VvError::Zero));
        assert_eq!(
            Vv::from_pairs(vec![(n("a"), 1), (n("a"), 2)]),
            Err(VvError::NotSorted)
        );
        let long = (0..=MAX_VV).map(|i| (n(&format!("n{i:03}")), 1)).collect();
        assert_eq!(Vv::from_pairs(long), Err(VvError::TooLong));
    }
}
