//! The decision for one path: from every participant's entry (or none), what the path is
//! from now on, who already has it, who must receive or delete it, and which concurrent
//! versions are kept as conflict copies. Pure; the leader calls it once per path while it
//! streams the indexes, and the planner turns decisions into plan items.

use super::{Entry, Vv};
use crate::model::{EntryKind, NodeId, RelPath, Version, MAX_COMPONENT_LEN};

/// A participant that must change its copy of the path, and what it has there now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub node: usize,
    /// Its live file at the path (what the change must still find), or `None`: nothing,
    /// a tombstone, or a directory.
    pub expect: Option<Version>,
}

/// The path's version from now on, and what each participant does about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Apply {
    /// The winning version; its `vv` dominates every participant's but the conflict
    /// losers' (see [`Decision::Conflict`]).
    pub entry: Entry,
    /// Participants that have its content (files: any of them can send it).
    pub holders: Vec<usize>,
    /// Participants that must receive it (a live entry) or delete their copy (a tombstone).
    pub targets: Vec<Target>,
    /// Participants that have the right content (or the tombstone) already and must only
    /// record `entry.vv`.
    pub set: Vec<usize>,
}

/// A concurrent version that lost the name: kept beside it as `name`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Loser {
    /// The losing version (its path is the contested one).
    pub entry: Entry,
    /// The conflict copy's path.
    pub name: RelPath,
    /// Participants holding this version: they rename it to `name` locally.
    pub holders: Vec<usize>,
    /// Everyone else: they receive it at `name` from a holder.
    pub targets: Vec<usize>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Everyone agrees, or nobody has anything.
    Nothing,
    Apply(Apply),
    /// Concurrent versions of different content (or a file against a directory): the
    /// winner takes the name, each loser becomes a conflict copy. Holders of a loser rename
    /// it before the winner arrives, so the winner's targets include them (expecting
    /// nothing at the path). The winner's version does not absorb the losers': a holder
    /// that fails to rename keeps a version still concurrent with the winner, and the next
    /// session makes its copy.
    Conflict {
        apply: Apply,
        losers: Vec<Loser>,
    },
}

/// Decides one path. `here[i]` is participant `i`'s entry for the path (participants in
/// node-id order, so that every leader decides alike; ties are broken by index). `taken(p)`
/// says whether a path is in use in any participant's index (a conflict copy never lands
/// on one).
pub fn decide(here: &[Option<&Entry>], taken: &dyn Fn(&RelPath) -> bool) -> Decision {
    let present: Vec<(usize, &Entry)> = here
        .iter()
        .enumerate()
        .filter_map(|(i, e)| e.map(|e| (i, e)))
        .collect();
    let Some(&(_, first_present)) = present.first() else {
        return Decision::Nothing;
    };
    // The versions no other participant's version strictly dominates.
    let maximal: Vec<(usize, &Entry)> = present
        .iter()
        .copied()
        .filter(|(_, e)| {
            present
                .iter()
                .all(|(_, o)| o.vv.compare(&e.vv) != super::Order::After)
        })
        .collect();
    let merged = |set: &[(usize, &Entry)]| {
        set.iter()
            .fold(Vv::default(), |acc, (_, e)| acc.merge(&e.vv))
    };
    let live_of = |kind: EntryKind| -> Vec<(usize, &Entry)> {
        present
            .iter()
            .copied()
            .filter(|(_, e)| e.is_live() && e.meta.kind == kind)
            .collect()
    };
    let (files, dirs) = (live_of(EntryKind::File), live_of(EntryKind::Dir));
    if let (false, Some(&(_, dir))) = (files.is_empty(), dirs.first()) {
        // A file against a directory: the directory keeps the name (it may hold files of
        // its own), each file version is kept as a conflict copy.
        let mut winner = dir.clone();
        winner.vv = conflict_vv(&present, &files);
        return conflict(apply(here, winner), losers(here, &files, None, taken));
    }

    let first = maximal.first().map_or(first_present, |&(_, e)| e);
    if maximal.iter().all(|(_, e)| e.vv == first.vv) {
        // One version dominates: it wins, a deletion included.
        let winner = maximal
            .iter()
            .map(|&(_, e)| e)
            .find(|e| e.is_live())
            .unwrap_or(first)
            .clone();
        return finish(apply(here, winner));
    }

    // A deletion by a node that had seen the very version the others hold — same content,
    // same author and counter: the live copies differ from what it deleted only in what
    // their nodes learnt since (a conflict resolved elsewhere), not in what the file holds.
    // The deletion wins. Anything edited or moved there since has a counter the deleting
    // node never saw, and is no such copy.
    let deletions: Vec<&Entry> = maximal
        .iter()
        .map(|&(_, e)| e)
        .filter(|e| e.deleted)
        .collect();
    let seen_by_a_deletion = |e: &Entry| {
        let made = e.vv.get(&e.by);
        e.meta.kind == EntryKind::File
            && e.hash.is_some()
            && made > 0
            && deletions.iter().any(|t| {
                t.meta.kind == EntryKind::File && t.hash == e.hash && t.vv.get(&e.by) >= made
            })
    };
    if let Some(&t) = deletions.first() {
        if maximal
            .iter()
            .all(|(_, e)| e.deleted || seen_by_a_deletion(e))
        {
            let mut winner = t.clone();
            winner.vv = merged(&maximal);
            return finish(apply(here, winner));
        }
    }

    // Concurrent versions. An edit beats a deletion; of edits, different content is a
    // conflict, and the most recent modification keeps the name.
    let live: Vec<(usize, &Entry)> = maximal
        .iter()
        .copied()
        .filter(|(_, e)| e.is_live())
        .collect();
    let newest = live.iter().copied().max_by(|(a, ea), (b, eb)| {
        ea.meta
            .mtime_ns
            .cmp(&eb.meta.mtime_ns)
            .then_with(|| ea.by.cmp(&eb.by))
            .then_with(|| a.cmp(b))
    });
    let Some((_, newest)) = newest else {
        let mut winner = first.clone();
        winner.vv = merged(&maximal);
        return finish(apply(here, winner));
    };
    let losing: Vec<(usize, &Entry)> = live
        .iter()
        .copied()
        .filter(|(_, e)| !e.same_content(newest))
        .collect();
    let mut winner = newest.clone();
    winner.vv = conflict_vv(&present, &losing);
    let apply = apply(here, winner);
    if losing.is_empty() {
        return finish(apply);
    }
    conflict(apply, losers(here, &losing, Some(newest), taken))
}

/// The winner's version in a conflict: everything the participants knew, except what
/// each loser's author added. Only the rename to a conflict copy, done by a loser's holder,
/// retires a losing version; a holder that could not rename it (it was down, the file
/// changed) still has that version, concurrent with the winner, and the next session makes
/// the copy — had the winner absorbed it, the loser would look old and be overwritten. The
/// rest of a loser's history (a deletion it had seen, say) is kept, so a node still holding
/// a version deleted long ago does not look new against the winner. Leaving out the
/// author's whole counter may make an old version of the author's look new once more: at
/// worst an extra conflict copy, never a loss.
fn conflict_vv(all: &[(usize, &Entry)], losers: &[(usize, &Entry)]) -> Vv {
    all.iter().fold(Vv::default(), |acc, &(i, e)| {
        if losers.iter().any(|&(l, _)| l == i) {
            acc.merge(&e.vv.with(&e.by, 0))
        } else {
            acc.merge(&e.vv)
        }
    })
}

/// The holders of a losing version rename it before the winner arrives: for them the
/// winner's path is empty by then.
fn conflict(mut apply: Apply, losers: Vec<Loser>) -> Decision {
    for t in &mut apply.targets {
        if losers.iter().any(|l| l.holders.contains(&t.node)) {
            t.expect = None;
        }
    }
    Decision::Conflict { apply, losers }
}

fn finish(apply: Apply) -> Decision {
    if apply.targets.is_empty() && apply.set.is_empty() {
        Decision::Nothing
    } else {
        Decision::Apply(apply)
    }
}

/// Who holds `winner`'s content, who must receive (or delete), who must only record it.
fn apply(here: &[Option<&Entry>], winner: Entry) -> Apply {
    let mut holders = Vec::new();
    let mut targets = Vec::new();
    let mut set = Vec::new();
    for (i, e) in here.iter().enumerate() {
        match (winner.deleted, e) {
            (false, Some(e)) if e.same_content(&winner) => {
                holders.push(i);
                if e.vv != winner.vv {
                    set.push(i);
                }
            }
            (false, Some(e)) => targets.push(Target {
                node: i,
                expect: e.version(),
            }),
            (false, None) => targets.push(Target {
                node: i,
                expect: None,
            }),
            (true, Some(e)) if e.is_live() => targets.push(Target {
                node: i,
                expect: e.version(),
            }),
            (true, Some(e)) if e.vv != winner.vv => set.push(i),
            (true, _) => {}
        }
    }
    Apply {
        entry: winner,
        holders,
        targets,
        set,
    }
}

/// One [`Loser`] per distinct content among `losing` (participants' live files), each
/// with a conflict name that no index uses.
fn losers(
    here: &[Option<&Entry>],
    losing: &[(usize, &Entry)],
    winner: Option<&Entry>,
    taken: &dyn Fn(&RelPath) -> bool,
) -> Vec<Loser> {
    let mut out: Vec<Loser> = Vec::new();
    for &(i, e) in losing {
        if winner.is_some_and(|w| w.same_content(e)) {
            continue;
        }
        if let Some(l) = out.iter_mut().find(|l| l.entry.same_content(e)) {
            if !l.holders.contains(&i) {
                l.holders.push(i);
            }
            l.entry.vv = l.entry.vv.merge(&e.vv);
            continue;
        }
        let name = conflict_name(&e.meta.path, e.meta.mtime_ns, &e.by, &|p: &RelPath| {
            taken(p) || out.iter().any(|l| l.name == *p)
        });
        out.push(Loser {
            entry: e.clone(),
            name,
            holders: vec![i],
            targets: Vec::new(),
        });
    }
    // Every participant holding the same content as a loser (even an older version of it)
    // renames its copy too; everyone else receives the conflict copy.
    for l in &mut out {
        for (i, e) in here.iter().enumerate() {
            if let Some(e) = e {
                if e.is_live() && e.same_content(&l.entry) && !l.holders.contains(&i) {
                    l.holders.push(i);
                }
            }
        }
        l.holders.sort_unstable();
        l.targets = (0..here.len()).filter(|i| !l.holders.contains(i)).collect();
    }
    out
}

/// `name.sync-conflict-YYYYMMDD-HHMMSS-<node>.ext` beside `path`: the losing version's
/// modification time (UTC) and the node that made it; the extension (after the last dot,
/// not a leading one) is kept so the copy still opens with the same program. If that name
/// is `taken`, `-2`, `-3`, ... is added before the extension.
pub fn conflict_name(
    path: &RelPath,
    mtime_ns: i64,
    by: &NodeId,
    taken: &dyn Fn(&RelPath) -> bool,
) -> RelPath {
    let file = path.file_name();
    let (stem, ext) = match file.rfind('.') {
        Some(0) | None => (file, ""),
        Some(i) => (&file[..i], &file[i..]),
    };
    let when = civil_utc(mtime_ns.div_euclid(1_000_000_000));
    // A node id may hold a '/' (it is printable): never a path separator here.
    let node: String = by
        .as_str()
        .chars()
        .map(|c| if c == '/' { '_' } else { c })
        .collect();
    for n in 1u32.. {
        let counter = if n == 1 {
            String::new()
        } else {
            format!("-{n}")
        };
        let suffix = format!(".sync-conflict-{when}-{node}{counter}{ext}");
        let mut stem = stem.to_owned();
        while stem.len() + suffix.len() > MAX_COMPONENT_LEN && !stem.is_empty() {
            stem.pop();
        }
        let name = format!("{stem}{suffix}");
        let candidate = match path.parent() {
            Some(p) => p.join(&name),
            None => RelPath::new(&name),
        };
        if let Ok(c) = candidate {
            if !taken(&c) {
                return c;
            }
        }
    }
    path.clone()
}

/// `YYYYMMDD-HHMMSS` of a Unix time in UTC (the proleptic Gregorian calendar).
fn civil_utc(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Howard Hinnant's days-from-civil, inverted.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}{m:02}{d:02}-{:02}{:02}{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::FileMeta;

    fn n(s: &str) -> NodeId {
        NodeId::new(s).unwrap()
    }

    fn p(s: &str) -> RelPath {
        RelPath::new(s).unwrap()
    }

    fn vv(pairs: &[(&str, u64)]) -> Vv {
        Vv::from_pairs(pairs.iter().map(|(a, c)| (n(a), *c)).collect()).unwrap()
    }

    fn file(content: u8, mtime: i64, v: &[(&str, u64)], by: &str) -> Entry {
        Entry {
            meta: FileMeta::file(p("f.txt"), 10, mtime, 0o644),
            deleted: false,
            hash: Some([content; 32]),
            vv: vv(v),
            by: n(by),
            link: None,
        }
    }

    fn gone(v: &[(&str, u64)], by: &str) -> Entry {
        Entry {
            deleted: true,
            ..file(0, 0, v, by)
        }
    }

    fn free(_: &RelPath) -> bool {
        false
    }

    #[test]
    fn a_dominating_version_wins_whatever_the_clocks_say() {
        // n1 edited after seeing n0's version, with an older clock.
        let old = file(1, 2_000, &[("n0", 5)], "n0");
        let new = file(2, 1_000, &[("n0", 5), ("n1", 6)], "n1");
        let d = decide(&[Some(&old), Some(&new)], &free);
        let Decision::Apply(a) = d else {
            panic!("{d:?}")
        };
        assert_eq!(a.entry.hash, Some([2; 32]));
        assert_eq!(a.holders, vec![1]);
        assert_eq!(a.targets.len(), 1);
        assert_eq!(a.targets[0].node, 0);
    }

    #[test]
    fn a_deletion_made_after_a_version_propagates() {
        let f = file(1, 1, &[("n0", 1)], "n0");
        let t = gone(&[("n0", 1), ("n1", 2)], "n1");
        let d = decide(&[Some(&f), Some(&t), None], &free);
        let Decision::Apply(a) = d else {
            panic!("{d:?}")
        };
        assert!(a.entry.deleted);
        assert_eq!(
            a.targets,
            vec![Target {
                node: 0,
                expect: f.version()
            }]
        );
        assert!(a.set.is_empty(), "a node that never had it records nothing");
    }

    #[test]
    fn an_edit_concurrent_with_a_deletion_survives() {
        let edit = file(2, 5, &[("n0", 1), ("n0x", 3)], "n0x");
        let del = gone(&[("n0", 1), ("n1", 2)], "n1");
        let d = decide(&[Some(&edit), Some(&del)], &free);
        let Decision::Apply(a) = d else {
            panic!("{d:?}")
        };
        assert!(!a.entry.deleted);
        assert!(a.entry.vv.dominates(&edit.vv) && a.entry.vv.dominates(&del.vv));
        assert_eq!(
            a.targets,
            vec![Target {
                node: 1,
                expect: None
            }]
        );
        assert_eq!(a.set, vec![0], "the survivor records the merged version");
    }

    /// n0 deleted the version n2 made; meanwhile n1 resolved a conflict on it elsewhere
    /// (its copy knows n1's lost version too): same content, same making, so the deletion
    /// wins and nothing comes back. A copy n1 moved there itself is another matter.
    #[test]
    fn a_deletion_of_the_very_version_others_hold_wins() {
        let made = file(7, 5, &[("n2", 4)], "n2");
        let mut del = gone(&[("n0", 9), ("n2", 4)], "n0");
        del.hash = made.hash;
        let mut resolved = made.clone();
        resolved.vv = vv(&[("n1", 3), ("n2", 4)]);
        let d = decide(&[Some(&del), Some(&resolved)], &free);
        let Decision::Apply(a) = d else {
            panic!("{d:?}")
        };
        assert!(a.entry.deleted, "{a:?}");
        assert!(a.entry.vv.dominates(&del.vv) && a.entry.vv.dominates(&resolved.vv));
        assert_eq!(
            a.targets,
            vec![Target {
                node: 1,
                expect: resolved.version()
            }]
        );
        let mut moved = resolved.clone();
        moved.vv = vv(&[("n1", 10), ("n2", 4)]);
        moved.by = n("n1");
        moved.link = Some(p("elsewhere"));
        let d = decide(&[Some(&del), Some(&moved)], &free);
        let Decision::Apply(a) = d else {
            panic!("{d:?}")
        };
        assert!(!a.entry.deleted, "a move there beats the deletion: {a:?}");
    }

    #[test]
    fn concurrent_edits_keep_the_newest_under_the_name_and_the_others_beside_it() {
        let a = file(1, 100, &[("n0", 7)], "n0");
        let b = file(2, 300, &[("n1", 7)], "n1");
        let c = file(3, 200, &[("n2", 7)], "n2");
        let d = decide(&[Some(&a), Some(&b), Some(&c), None], &free);
        let Decision::Conflict { apply, losers } = d else {
            panic!("{d:?}")
        };
        assert_eq!(
            apply.entry.hash,
            Some([2; 32]),
            "the most recent mtime wins"
        );
        assert_eq!(apply.holders, vec![1]);
        let t: Vec<usize> = apply.targets.iter().map(|t| t.node).collect();
        assert_eq!(t, vec![0, 2, 3]);
        assert_eq!(losers.len(), 2);
        for l in &losers {
            assert_eq!(l.holders.len(), 1);
            assert_eq!(l.targets.len(), 3);
            assert!(l.name.as_str().contains(".sync-conflict-19700101-000000-n"));
            assert!(l.name.as_str().ends_with(".txt"));
        }
    }

    #[test]
    fn identical_content_is_no_conflict() {
        let a = file(1, 100, &[("n0", 7)], "n0");
        let b = file(1, 200, &[("n1", 7)], "n1");
        let d = decide(&[Some(&a), Some(&b)], &free);
        let Decision::Apply(ap) = d else {
            panic!("{d:?}")
        };
        assert!(ap.targets.is_empty());
        assert_eq!(ap.set, vec![0, 1]);
    }

    #[test]
    fn a_file_against_a_directory_keeps_both() {
        let f = file(1, 100, &[("n0", 7)], "n0");
        let dir = Entry {
            meta: FileMeta::dir(p("f.txt"), 0o755),
            deleted: false,
            hash: None,
            vv: vv(&[("n1", 7)]),
            by: n("n1"),
            link: None,
        };
        let d = decide(&[Some(&f), Some(&dir)], &free);
        let Decision::Conflict { apply, losers } = d else {
            panic!("{d:?}")
        };
        assert_eq!(apply.entry.meta.kind, EntryKind::Dir);
        assert_eq!(losers.len(), 1);
        assert_eq!(losers[0].holders, vec![0]);
        assert_eq!(
            apply.targets,
            vec![Target {
                node: 0,
                expect: None
            }]
        );
    }

    #[test]
    fn nothing_to_do_when_everyone_agrees() {
        let a = file(1, 1, &[("n0", 1)], "n0");
        assert_eq!(decide(&[Some(&a), Some(&a)], &free), Decision::Nothing);
        let t = gone(&[("n0", 2)], "n0");
        assert_eq!(decide(&[Some(&t), None], &free), Decision::Nothing);
    }

    #[test]
    fn conflict_names_keep_the_extension_and_avoid_taken_names() {
        let t = 1_764_771_300_000_000_000; // 2025-12-03 14:15:00 UTC
        let by = n("lap/top");
        let name = conflict_name(&p("docs/report.txt"), t, &by, &free);
        assert_eq!(
            name.as_str(),
            "docs/report.sync-conflict-20251203-141500-lap_top.txt"
        );
        assert_eq!(
            conflict_name(&p(".bashrc"), t, &by, &free).as_str(),
            ".bashrc.sync-conflict-20251203-141500-lap_top"
        );
        assert_eq!(
            conflict_name(&p("a.tar.gz"), t, &by, &free).as_str(),
            "a.tar.sync-conflict-20251203-141500-lap_top.gz"
        );
        let first = conflict_name(&p("x.txt"), t, &by, &free);
        let second = conflict_name(&p("x.txt"), t, &by, &|q: &RelPath| *q == first);
        assert!(second.as_str().ends_with("-lap_top-2.txt"), "{second}");
        let long = "l".repeat(250) + ".txt";
        assert!(conflict_name(&p(&long), t, &by, &free).file_name().len() <= 255);
        assert!(civil_utc(-1).starts_with("19691231-235959"));
        assert_eq!(civil_utc(951_782_400), "20000229-000000");
    }
}
