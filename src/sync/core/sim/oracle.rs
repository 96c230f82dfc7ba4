//! What the users did that the system saw, and the end-of-schedule judgement of the final
//! replicas against it — the history invariants.
//!
//! Every scan reports what it recorded: each live version (path, content token, version
//! vector) and each tombstone. Every user edit or deletion of a file whose content the
//! node's store knows *drops* that content, with the path and the version the store holds:
//! the drop covers that content at that path, and elsewhere exactly the versions that node
//! had seen (a copy moved away meanwhile by another node is not covered). At the end, with
//! every replica identical:
//!
//! - **nothing lost**: every recorded live file's content is still somewhere (at its path,
//!   where it moved, or as a conflict copy), unless a drop covers that version or a later
//!   recorded version at its path retired it (then where the content went, if anywhere,
//!   is a recorded version of its own and judged as such);
//! - **no deletion undone**: a live file at the end is not one whose every recorded version
//!   at that path a recorded deletion there supersedes; likewise a directory with nothing
//!   below it;
//! - **nothing from nowhere**: every final file is a recorded version at that path or a
//!   conflict copy of recorded content; every final directory was recorded or holds
//!   something;
//! - **no directory lost**: a recorded directory that no recorded deletion (or move)
//!   superseded exists.

use std::collections::{BTreeMap, HashMap};

use crate::history::{is_below, Order, Vv};
use crate::model::{EntryKind, RelPath};

/// What a replica holds, without modes (the diff never propagates mode-only changes): kind,
/// size, mtime and content token per path.
pub(super) type View = BTreeMap<RelPath, (EntryKind, u64, i64, u64)>;

/// A live version some scan recorded.
#[derive(Clone, Debug)]
struct Seen {
    node: String,
    path: RelPath,
    /// A file's content token; `None` for a directory.
    content: Option<u64>,
    vv: Vv,
}

/// Everything recorded, per storage.
#[derive(Default)]
pub(super) struct Oracle {
    live: BTreeMap<String, Vec<Seen>>,
    /// Tombstones, with the content they deleted.
    tombs: BTreeMap<String, Vec<(RelPath, Option<u64>, Vv)>>,
    drops: BTreeMap<String, Vec<(u64, RelPath, Vv)>>,
    /// Versions judged at the end, over all checks.
    pub(super) checked: usize,
}

/// A conflict copy's name (see `history::conflict_name`).
fn is_conflict_copy(p: &RelPath) -> bool {
    p.as_str().contains(".sync-conflict-")
}

/// `copy` is a conflict copy made of `original` (`history::conflict_name`: beside it, its
/// stem, then `.sync-conflict-`).
fn is_copy_of(copy: &RelPath, original: &RelPath) -> bool {
    let name = original.file_name();
    let stem = match name.rfind('.') {
        Some(0) | None => name,
        Some(i) => &name[..i],
    };
    copy.parent() == original.parent()
        && copy
            .file_name()
            .strip_prefix(stem)
            .is_some_and(|rest| rest.starts_with(".sync-conflict-"))
}

/// `a` is strictly newer than `b`: made by a node that knew `b`.
fn supersedes(a: &Vv, b: &Vv) -> bool {
    a.compare(b) == Order::After
}

impl Oracle {
    pub(super) fn live(
        &mut self,
        storage: &str,
        node: &str,
        path: RelPath,
        content: Option<u64>,
        vv: Vv,
    ) {
        self.live.entry(storage.to_owned()).or_default().push(Seen {
            node: node.to_owned(),
            path,
            content,
            vv,
        });
    }

    pub(super) fn tomb(&mut self, storage: &str, path: RelPath, content: Option<u64>, vv: Vv) {
        self.tombs
            .entry(storage.to_owned())
            .or_default()
            .push((path, content, vv));
    }

    pub(super) fn drop_content(&mut self, storage: &str, content: u64, path: RelPath, vv: Vv) {
        self.drops
            .entry(storage.to_owned())
            .or_default()
            .push((content, path, vv));
    }

    /// What the scans recorded at `path` of `storage`, for a failure report.
    pub(super) fn recorded_at(&self, storage: &str, path: &RelPath) -> Vec<String> {
        let live = self.live.get(storage).into_iter().flatten();
        let tombs = self.tombs.get(storage).into_iter().flatten();
        live.filter(|o| o.path == *path)
            .map(|o| {
                format!(
                    "{} {:?} {:?}",
                    o.node,
                    o.content.map(|c| format!("{c:x}")),
                    o.vv
                )
            })
            .chain(
                tombs.filter(|(t, _, _)| t == path).map(|(_, c, v)| {
                    format!("tombstone of {:?} {v:?}", c.map(|c| format!("{c:x}")))
                }),
            )
            .collect()
    }

    /// Judges `tree`, the final state every replica of `storage` agrees on. `Err` says
    /// what went wrong.
    pub(super) fn judge(&mut self, storage: &str, tree: &View) -> Result<(), (RelPath, String)> {
        let none = Vec::new();
        let live = self.live.get(storage).unwrap_or(&none);
        let no_tombs = Vec::new();
        let tombs = self.tombs.get(storage).unwrap_or(&no_tombs);
        let no_drops = Vec::new();
        let drops = self.drops.get(storage).unwrap_or(&no_drops);
        let mut present: HashMap<u64, Vec<&RelPath>> = HashMap::new();
        for (p, f) in tree {
            if f.0 == EntryKind::File {
                present.entry(f.3).or_default().push(p);
            }
        }
        let superseded_at =
            |p: &RelPath, vv: &Vv| tombs.iter().any(|(t, _, tv)| t == p && supersedes(tv, vv));
        let mut checked = 0;
        for s in live {
            checked += 1;
            match s.content {
                Some(c) => {
                    if present.contains_key(&c) {
                        continue;
                    }
                    // Retired at its path (a later version there, made by a node that
                    // knew it: the content lives on where it moved, judged there), or
                    // dropped by a user who had it.
                    // The same bytes deleted or moved away at the same path count too,
                    // whatever the versions say (an identical copy made independently).
                    let retired = live
                        .iter()
                        .any(|o| o.path == s.path && supersedes(&o.vv, &s.vv))
                        || superseded_at(&s.path, &s.vv)
                        || tombs
                            .iter()
                            .any(|(t, tc, _)| *t == s.path && *tc == Some(c))
                        // Kept as a conflict copy, which a user then renamed or deleted
                        // (recorded: a tombstone of its content at the copy's name; where it
                        // went, if anywhere, is a recorded version of its own, judged as
                        // such), or edited (recorded live there).
                        || tombs
                            .iter()
                            .any(|(t, tc, _)| *tc == Some(c) && is_copy_of(t, &s.path))
                        || live
                            .iter()
                            .any(|o| o.content == Some(c) && is_copy_of(&o.path, &s.path));
                    // Dropped where it is (the same bytes at the same path, whatever the
                    // versions say), or elsewhere by a node that knew this version.
                    let covered = drops
                        .iter()
                        .any(|(d, p, v)| *d == c && (*p == s.path || v.dominates(&s.vv)));
                    if !retired && !covered {
                        let dropped: Vec<(&RelPath, &Vv)> = drops
                            .iter()
                            .filter(|(d, _, _)| *d == c)
                            .map(|(_, p, v)| (p, v))
                            .collect();

                        return Err((
                            s.path.clone(),
                            format!(
                            "lost: {} recorded {} (content {c:x}, {:?}); it is nowhere, and no \
                             node that had it edited it or deleted it (drops of it: {dropped:?})",
                            s.node, s.path, s.vv
                        ),
                        ));
                    }
                }
                None => {
                    if tree.get(&s.path).is_some_and(|f| f.0 == EntryKind::Dir) {
                        continue;
                    }
                    if !superseded_at(&s.path, &s.vv) {
                        return Err((
                            s.path.clone(),
                            format!(
                                "lost: directory {} that {} recorded ({:?}) is gone, and no \
                             deletion or move superseded it",
                                s.path, s.node, s.vv
                            ),
                        ));
                    }
                }
            }
        }
        for (p, f) in tree {
            checked += 1;
            match f.0 {
                EntryKind::File => {
                    let versions: Vec<&Seen> = live
                        .iter()
                        .filter(|s| s.path == *p && s.content == Some(f.3))
                        .collect();
                    if versions.is_empty() {
                        let copy =
                            is_conflict_copy(p) && live.iter().any(|s| s.content == Some(f.3));
                        if !copy {
                            return Err((
                                p.clone(),
                                format!("{p} (content {:x}) came from nowhere", f.3),
                            ));
                        }
                        continue;
                    }
                    let undone = versions.iter().all(|s| superseded_at(p, &s.vv));
                    if undone {
                        return Err((
                            p.clone(),
                            format!(
                            "deletion undone: {p} (content {:x}) is back, though every version \
                             of it was deleted by a node that had seen it",
                            f.3
                        ),
                        ));
                    }
                }
                EntryKind::Dir => {
                    let holds = tree.keys().any(|q| is_below(q, p));
                    if holds {
                        continue;
                    }
                    let versions: Vec<&Seen> = live
                        .iter()
                        .filter(|s| s.path == *p && s.content.is_none())
                        .collect();
                    if versions.is_empty() {
                        return Err((p.clone(), format!("empty directory {p} came from nowhere")));
                    }
                    let undone = versions.iter().all(|s| superseded_at(p, &s.vv));
                    if undone {
                        return Err((
                            p.clone(),
                            format!(
                                "deletion undone: empty directory {p} is back, though every \
                             version of it was deleted by a node that had seen it"
                            ),
                        ));
                    }
                }
            }
        }
        self.checked += checked;
        Ok(())
    }
}
