//! The shallow N-way diff: given every participant's index of one storage, decide per path
//! who holds the winning version and who must receive it. Pure: no I/O, no clock.
//!
//! Rules (the session leader applies them; see ARCHITECTURE.md):
//! - Entries are compared by kind, size and mtime only; contents are never read here.
//!   Identical entries cost nothing.
//! - For a file, the most recent mtime wins; equal mtimes with different sizes are broken
//!   by the larger size, then by the lower participant index (callers order participants by
//!   node id, so every node would compute the same result).
//! - A directory missing on some participants is created there.
//! - A path that is a file on one node and a directory on another is a conflict: it is left
//!   alone everywhere, and so is everything below it. Nothing is ever deleted or replaced by
//!   a different kind of entry.
//! - Mode-only differences are not propagated: without history nobody can tell which chmod
//!   is newer. A transferred file carries its winner's mode.

use std::collections::HashSet;

use crate::model::{EntryKind, FileMeta, RelPath};

/// A participant that must receive a file, and what it has at that path now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub node: usize,
    /// The receiver's current entry at this path (an older file), or `None` if absent.
    /// The receiver commits only if its path is still in this state.
    pub current: Option<FileMeta>,
}

/// One thing to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Copy the winning version `meta` to every target. `sources` are the participants that
    /// hold exactly that version, lowest index first; any of them can send it.
    CopyFile {
        meta: FileMeta,
        sources: Vec<usize>,
        targets: Vec<Target>,
    },
    /// Create a directory on the targets.
    MakeDir {
        path: RelPath,
        mode: u32,
        targets: Vec<usize>,
    },
}

impl Op {
    pub fn path(&self) -> &RelPath {
        match self {
            Op::CopyFile { meta, .. } => &meta.path,
            Op::MakeDir { path, .. } => path,
        }
    }
}

/// A path the diff refuses to touch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    pub path: RelPath,
    pub reason: &'static str,
}

/// The result of a diff collected whole: what the tests compare.
#[cfg(test)]
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    pub ops: Vec<Op>,
    pub conflicts: Vec<Conflict>,
}

/// [`diff_each`] with the operations collected.
#[cfg(test)]
pub fn diff(indexes: &[&[FileMeta]]) -> Plan {
    let mut ops = Vec::new();
    let conflicts = diff_each(indexes, &mut |op| ops.push(op));
    Plan { ops, conflicts }
}

/// Diffs the indexes of all participants. Each index must be sorted by path with unique
/// paths (the scanner's output, or a peer's index after validation). Hands each operation to
/// `on_op` as soon as it is decided, in path order (a directory before its content), and
/// returns the conflicts that were left alone. Nothing holds the whole plan: a leader turns
/// operations into messages as they come, so its memory does not grow with the number of
/// differences.
pub fn diff_each(indexes: &[&[FileMeta]], on_op: &mut dyn FnMut(Op)) -> Vec<Conflict> {
    let mut cursors = vec![0usize; indexes.len()];
    let mut conflicts = Vec::new();
    // Paths where kinds disagree: their subtrees are left alone.
    let mut blocked: HashSet<&str> = HashSet::new();
    let mut here: Vec<Option<&FileMeta>> = vec![None; indexes.len()];

    loop {
        // The smallest path under any cursor is the next one to decide.
        let mut next: Option<&RelPath> = None;
        for (i, idx) in indexes.iter().enumerate() {
            if let Some(m) = idx.get(cursors[i]) {
                if next.is_none_or(|n| m.path < *n) {
                    next = Some(&m.path);
                }
            }
        }
        let Some(path) = next else { break };
        for (i, idx) in indexes.iter().enumerate() {
            here[i] = match idx.get(cursors[i]) {
                Some(m) if m.path == *path => {
                    cursors[i] += 1;
                    Some(m)
                }
                _ => None,
            };
        }

        if path.ancestors().any(|a| blocked.contains(a)) {
            continue;
        }
        let mut kinds = here.iter().flatten().map(|m| m.kind);
        let first_kind = kinds.next();
        if kinds.any(|k| Some(k) != first_kind) {
            blocked.insert(path.as_str());
            conflicts.push(Conflict {
                path: path.clone(),
                reason: "a file on some nodes and a directory on others",
            });
            continue;
        }
        match first_kind {
            Some(EntryKind::Dir) => {
                let mut targets: Vec<usize> =
                    (0..here.len()).filter(|&i| here[i].is_none()).collect();
                targets.shrink_to_fit();
                if !targets.is_empty() {
                    let mode = here.iter().flatten().next().map_or(0o755, |m| m.mode);
                    on_op(Op::MakeDir {
                        path: path.clone(),
                        mode,
                        targets,
                    });
                }
            }
            Some(EntryKind::File) => {
                if let Some(op) = file_op(&here) {
                    on_op(op);
                }
            }
            None => {}
        }
    }
    conflicts
}

fn file_op(here: &[Option<&FileMeta>]) -> Option<Op> {
    let mut winner: Option<&FileMeta> = None;
    for m in here.iter().flatten() {
        let better = match winner {
            None => true,
            Some(w) => (m.mtime_ns, m.size) > (w.mtime_ns, w.size),
        };
        if better {
            winner = Some(m);
        }
    }
    let winner = winner?;
    // Exact capacities: a plan has one op per differing path, and a growing Vec's first
    // allocation (four elements) would be most of each op's memory.
    let holders = here
        .iter()
        .filter(|e| e.is_some_and(|m| m.same_content(winner)))
        .count();
    if holders == here.len() {
        return None;
    }
    let mut sources = Vec::with_capacity(holders);
    let mut targets = Vec::with_capacity(here.len() - holders);
    for (i, entry) in here.iter().enumerate() {
        match entry {
            Some(m) if m.same_content(winner) => sources.push(i),
            other => targets.push(Target {
                node: i,
                current: other.cloned(),
            }),
        }
    }
    if targets.is_empty() {
        return None;
    }
    Some(Op::CopyFile {
        meta: winner.clone(),
        sources,
        targets,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(path: &str, size: u64, mtime: i64) -> FileMeta {
        FileMeta::file(RelPath::new(path).unwrap(), size, mtime, 0o644)
    }

    fn d(path: &str) -> FileMeta {
        FileMeta::dir(RelPath::new(path).unwrap(), 0o755)
    }

    /// Renders a plan compactly: `copy PATH from [sources] to [targets]`, `mkdir PATH on
    /// [targets]`, `conflict PATH`.
    fn render(plan: &Plan) -> Vec<String> {
        let mut out: Vec<String> = plan
            .ops
            .iter()
            .map(|op| match op {
                Op::CopyFile {
                    meta,
                    sources,
                    targets,
                } => {
                    let t: Vec<String> = targets
                        .iter()
                        .map(|t| match &t.current {
                            None => format!("{}", t.node),
                            Some(c) => format!("{}(had {}@{})", t.node, c.size, c.mtime_ns),
                        })
                        .collect();
                    format!(
                        "copy {} {}@{} from {:?} to [{}]",
                        meta.path,
                        meta.size,
                        meta.mtime_ns,
                        sources,
                        t.join(",")
                    )
                }
                Op::MakeDir { path, targets, .. } => format!("mkdir {path} on {targets:?}"),
            })
            .collect();
        out.extend(
            plan.conflicts
                .iter()
                .map(|c| format!("conflict {}", c.path)),
        );
        out
    }

    #[test]
    fn diff_table() {
        type Case = (&'static str, Vec<Vec<FileMeta>>, Vec<&'static str>);
        let cases: Vec<Case> = vec![
            ("two empty indexes", vec![vec![], vec![]], vec![]),
            (
                "identical entries cost nothing",
                vec![
                    vec![d("a"), f("a/x", 3, 10), f("e", 0, 5)],
                    vec![d("a"), f("a/x", 3, 10), f("e", 0, 5)],
                ],
                vec![],
            ),
            (
                "new files both ways",
                vec![vec![f("only0", 1, 1)], vec![f("only1", 2, 2)]],
                vec![
                    "copy only0 1@1 from [0] to [1]",
                    "copy only1 2@2 from [1] to [0]",
                ],
            ),
            (
                "newer mtime wins, older side receives with its current state",
                vec![vec![f("doc", 5, 100)], vec![f("doc", 7, 200)]],
                vec!["copy doc 7@200 from [1] to [0(had 5@100)]"],
            ),
            (
                "newer mtime wins even when smaller",
                vec![vec![f("doc", 500, 300)], vec![f("doc", 7, 200)]],
                vec!["copy doc 500@300 from [0] to [1(had 7@200)]"],
            ),
            (
                "equal mtime, different size: larger wins",
                vec![vec![f("doc", 5, 100)], vec![f("doc", 9, 100)]],
                vec!["copy doc 9@100 from [1] to [0(had 5@100)]"],
            ),
            (
                "files before 1970 compare correctly",
                vec![vec![f("old", 1, -500)], vec![f("old", 1, -100)]],
                vec!["copy old 1@-100 from [1] to [0(had 1@-500)]"],
            ),
            (
                "empty file is a file",
                vec![vec![f("e", 0, 1)], vec![]],
                vec!["copy e 0@1 from [0] to [1]"],
            ),
            (
                "nested directories are created, parents first",
                vec![vec![d("a"), d("a/b"), f("a/b/c", 1, 1), d("z")], vec![]],
                vec![
                    "mkdir a on [1]",
                    "mkdir a/b on [1]",
                    "copy a/b/c 1@1 from [0] to [1]",
                    "mkdir z on [1]",
                ],
            ),
            (
                "file versus directory is a conflict and its subtree is left alone",
                vec![
                    vec![f("x", 1, 1), f("y", 1, 1)],
                    vec![d("x"), f("x/inner", 1, 1), f("x-y", 2, 2)],
                ],
                vec![
                    "copy x-y 2@2 from [1] to [0]",
                    "copy y 1@1 from [0] to [1]",
                    "conflict x",
                ],
            ),
            (
                "three nodes: one read, two receivers; holders of the winner all listed",
                vec![
                    vec![f("p", 1, 50)],
                    vec![f("p", 2, 90)],
                    vec![f("p", 2, 90)],
                    vec![],
                ],
                vec!["copy p 2@90 from [1, 2] to [0(had 1@50),3]"],
            ),
            (
                "mode-only difference is not a change",
                vec![
                    vec![FileMeta::file(RelPath::new("m").unwrap(), 1, 1, 0o600)],
                    vec![FileMeta::file(RelPath::new("m").unwrap(), 1, 1, 0o644)],
                ],
                vec![],
            ),
            (
                "unicode and spaces sort and diff like any path",
                vec![
                    vec![f("ü b/ç d", 1, 1), f("日本", 2, 2)],
                    vec![f("日本", 2, 2)],
                ],
                vec!["copy ü b/ç d 1@1 from [0] to [1]"],
            ),
        ];
        for (name, indexes, want) in cases {
            let refs: Vec<&[FileMeta]> = indexes.iter().map(Vec::as_slice).collect();
            assert_eq!(render(&diff(&refs)), want, "case: {name}");
        }
    }

    #[test]
    fn diff_is_symmetric_in_outcome() {
        // Swapping participants must produce the same winners.
        let a = vec![f("1", 1, 5), f("2", 2, 1), f("3", 3, 3)];
        let b = vec![f("1", 1, 1), f("2", 2, 5), f("4", 4, 4)];
        let ab = diff(&[&a, &b]);
        let ba = diff(&[&b, &a]);
        let winners = |p: &Plan| -> Vec<(String, i64)> {
            p.ops
                .iter()
                .filter_map(|op| match op {
                    Op::CopyFile { meta, .. } => Some((meta.path.to_string(), meta.mtime_ns)),
                    _ => None,
                })
                .collect()
        };
        assert_eq!(winners(&ab), winners(&ba));
    }
}
