//! The files a session expects here: one compact row per file, taken from the plan as it
//! arrives, sealed (sorted by path, checked for a path named twice) when the plan is
//! complete, then looked up by path as files arrive. Rows are never removed mid-session,
//! only marked, so a file that comes twice is still known for what it is.
//!
//! Compact because a first sync of 100,000 files expects 100,000 rows on a node that may
//! have 512 MiB and other work: node ids are indexes into the session's names, and a
//! sorted vector costs a third of a hash map's half-empty table.

use crate::model::{RelPath, Version};

/// Where an expected file stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Wait {
    /// Not begun.
    Pending,
    /// Its data is coming.
    Started,
    /// Committed, kept, failed or refused: it is not expected any more.
    Over,
    /// Its sender was lost: it will not come, and if the sender reconnects and sends it
    /// anyway it is told no, politely (it planned in good faith).
    Abandoned,
}

/// One expected file. Node ids are indexes into the session's names.
#[derive(Debug)]
pub(super) struct Row {
    pub(super) from: u32,
    pub(super) size: u64,
    pub(super) mtime_ns: i64,
    /// What the local path must still hold for the commit.
    pub(super) expect: Option<Version>,
    /// The version it is recorded with once committed: (name, counter) pairs in the
    /// version vector's order, and its author.
    pub(super) vv: Box<[(u32, u64)]>,
    pub(super) by: u32,
    pub(super) wait: Wait,
}

#[derive(Debug, Default)]
pub(super) struct Expected {
    rows: Vec<(RelPath, Row)>,
    sealed: bool,
    /// Rows still `Pending` or `Started`.
    left: usize,
    /// What the session's progress counts: rows that were to come, their bytes, and the
    /// bytes of those still to come.
    total: usize,
    bytes_total: u64,
    bytes_left: u64,
}

/// Files coming to this node in a session, as far as they are over (arrived or not):
/// what its progress shows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Incoming {
    pub files_total: u64,
    pub files_done: u64,
    pub bytes_total: u64,
    pub bytes_done: u64,
}

/// A plan named a path twice.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Twice;

impl Expected {
    /// Adds a row while the plan comes in.
    pub(super) fn push(&mut self, path: RelPath, row: Row) {
        debug_assert!(!self.sealed, "rows are added before the plan is sealed");
        if matches!(row.wait, Wait::Pending | Wait::Started) {
            self.left += 1;
            self.total += 1;
            self.bytes_total += row.size;
            self.bytes_left += row.size;
        }
        // Growth by half, not double: the rows are most of a first sync's memory, and a
        // doubled vector would be up to half empty.
        if self.rows.len() == self.rows.capacity() {
            self.rows.reserve_exact((self.rows.len() / 2).max(64));
        }
        self.rows.push((path, row));
    }

    /// The plan is complete: sorts the rows for lookups and refuses a path named twice.
    pub(super) fn seal(&mut self) -> Result<(), Twice> {
        self.rows.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        self.rows.shrink_to_fit();
        self.sealed = true;
        if self.rows.windows(2).any(|w| w[0].0 == w[1].0) {
            return Err(Twice);
        }
        Ok(())
    }

    /// The row of `path`, once sealed.
    pub(super) fn get_mut(&mut self, path: &RelPath) -> Option<&mut Row> {
        if !self.sealed {
            return None;
        }
        let k = self.rows.binary_search_by(|r| r.0.cmp(path)).ok()?;
        Some(&mut self.rows[k].1)
    }

    /// Marks `path` no longer expected; false if it was not (any more).
    pub(super) fn finish(&mut self, path: &RelPath) -> bool {
        match self.get_mut(path) {
            Some(r) if matches!(r.wait, Wait::Pending | Wait::Started) => {
                r.wait = Wait::Over;
                let size = r.size;
                self.left -= 1;
                self.bytes_left = self.bytes_left.saturating_sub(size);
                true
            }
            _ => false,
        }
    }

    /// Abandons every row still expected from name `from`; returns how many.
    pub(super) fn abandon_from(&mut self, from: u32) -> usize {
        let mut n = 0;
        for (_, r) in &mut self.rows {
            if r.from == from && matches!(r.wait, Wait::Pending | Wait::Started) {
                r.wait = Wait::Abandoned;
                n += 1;
                self.bytes_left = self.bytes_left.saturating_sub(r.size);
            }
        }
        self.left -= n;
        n
    }

    /// Files still to come.
    pub(super) fn left(&self) -> usize {
        self.left
    }

    pub(super) fn progress(&self) -> Incoming {
        Incoming {
            files_total: self.total as u64,
            files_done: (self.total - self.left) as u64,
            bytes_total: self.bytes_total,
            bytes_done: self.bytes_total - self.bytes_left,
        }
    }

    /// Every row, in path order once sealed.
    pub(super) fn rows(&self) -> impl Iterator<Item = (&RelPath, &Row)> {
        self.rows.iter().map(|(p, r)| (p, r))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(from: u32) -> Row {
        Row {
            from,
            size: 1,
            mtime_ns: 0,
            expect: None,
            vv: Box::new([(from, 1)]),
            by: from,
            wait: Wait::Pending,
        }
    }

    fn p(s: &str) -> RelPath {
        RelPath::new(s).unwrap()
    }

    #[test]
    fn rows_are_found_once_sealed_and_finish_once() {
        let mut e = Expected::default();
        e.push(p("b"), row(0));
        e.push(p("a/c"), row(1));
        e.push(p("a"), row(0));
        assert!(
            e.get_mut(&p("a")).is_none(),
            "no lookups before the plan is complete"
        );
        e.seal().unwrap();
        assert_eq!(e.left(), 3);
        let order: Vec<&str> = e.rows().map(|(p, _)| p.as_str()).collect();
        assert_eq!(order, ["a", "a/c", "b"]);
        assert!(e.finish(&p("a/c")));
        assert!(!e.finish(&p("a/c")), "a row finishes once");
        assert!(!e.finish(&p("zz")));
        assert_eq!(e.get_mut(&p("a/c")).unwrap().wait, Wait::Over);
        assert_eq!(e.left(), 2);
        let done = e.progress();
        assert_eq!((done.files_done, done.files_total), (1, 3));
        assert_eq!((done.bytes_done, done.bytes_total), (1, 3));
    }

    #[test]
    fn a_path_named_twice_is_refused() {
        let mut e = Expected::default();
        e.push(p("x"), row(0));
        e.push(p("y"), row(0));
        e.push(p("x"), row(1));
        assert_eq!(e.seal(), Err(Twice));
    }

    #[test]
    fn abandoning_a_sender_leaves_the_others() {
        let mut e = Expected::default();
        e.push(p("a"), row(0));
        e.push(p("b"), row(1));
        e.push(p("c"), row(1));
        e.seal().unwrap();
        assert!(e.finish(&p("c")));
        assert_eq!(e.abandon_from(1), 1, "a finished row is not abandoned");
        assert_eq!(e.get_mut(&p("b")).unwrap().wait, Wait::Abandoned);
        assert_eq!(e.left(), 1);
        assert!(!e.finish(&p("b")));
    }
}
