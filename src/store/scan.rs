//! Recording a scan: what is on disk now, against what the store knows, becomes local
//! changes with new versions — a new or edited file, a deletion (also one made while the
//! node was off), a move (same inode at a new path, or the same content at a new path where
//! the old one is gone), a directory move (a whole subtree under a new name, recorded as one
//! move). Files whose size, mtime, inode and ctime did not
//! change are not read; others are hashed.
//!
//! A node whose store knows nothing of a storage (a first run, or a lost database) deletes
//! nothing: every file it has is new.

use std::collections::HashMap;

use rusqlite::params;

use super::{kind_code, RawEntry, StorageId, Store, StoreError};
use crate::history::{is_below, rebase, Digest, Entry, Vv};
use crate::model::{EntryKind, FileMeta, NodeId, RelPath};

/// One entry the scanner found, with what tells a changed file from an unchanged one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    pub meta: FileMeta,
    pub ino: u64,
    pub ctime_ns: i64,
}

/// What a scan changed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ScanChanges {
    pub new: u32,
    pub modified: u32,
    pub deleted: u32,
    pub moved: u32,
    /// Directory moves recorded as one move each.
    pub dir_moves: u32,
    /// Bytes read to hash new and changed files.
    pub hashed: u64,
}

/// The state of this node's index of a storage after a scan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScanSummary {
    pub index_id: u64,
    pub seq: u64,
    /// Live entries.
    pub count: u64,
    /// Of the live entries' paths, kinds and versions: equal digests, equal indexes.
    pub digest: Digest,
    pub changes: ScanChanges,
}

/// A stored row with what a scan compares.
struct Known {
    entry: Entry,
    ino: u64,
    ctime: i64,
    seq: u64,
}

/// A directory move a scan found: old name, new name, and each moved entry as found now
/// with the row it was.
type PrefixMove<'a> = (RelPath, RelPath, Vec<(Found, &'a Known)>);

/// What to write for one path.
enum Write {
    /// Same content, other metadata (a touch, a restore): new meta, same version.
    Meta(Found, Known),
    /// Same everything but inode or ctime: remember them, nothing else.
    Stat(Found),
    Version {
        found: Found,
        hash: Option<Digest>,
        vv: Vv,
        link: Option<RelPath>,
    },
    Tombstone {
        known: Known,
        vv: Vv,
        link: Option<RelPath>,
    },
}

impl Store {
    /// Records what `found` (the scanner's entries of `storage`, sorted by path) changed,
    /// at `now` (seconds). `hash` reads a file's content hash; a file it cannot read is left
    /// as the store knew it, for the next scan.
    pub fn record_scan(
        &mut self,
        storage: StorageId,
        found: Vec<Found>,
        now: u64,
        hash: &mut dyn FnMut(&RelPath) -> std::io::Result<Digest>,
    ) -> Result<ScanSummary, StoreError> {
        self.record_scan_with(storage, found, &[], now, hash)
    }

    /// [`Store::record_scan`] for a scan that could not look at `unreadable` (permissions,
    /// I/O errors): what the store knows at and below those paths stands. Taking them for
    /// deleted would delete them on every peer, for a `chmod`.
    pub fn record_scan_with(
        &mut self,
        storage: StorageId,
        found: Vec<Found>,
        unreadable: &[RelPath],
        now: u64,
        hash: &mut dyn FnMut(&RelPath) -> std::io::Result<Digest>,
    ) -> Result<ScanSummary, StoreError> {
        let unseen = |p: &RelPath| unreadable.iter().any(|u| p.is_within(u));
        let me = self.me.clone();
        let mut changes = ScanChanges::default();
        let mut writes: Vec<Write> = Vec::new();
        // The row a new path had (a tombstone, or an entry of the other kind) is boxed: on
        // a first scan every path is new and has none, and the list stays 90 bytes a path.
        let mut news: Vec<(Found, Option<Box<Known>>)> = Vec::new();
        let mut gone: Vec<Known> = Vec::new();
        // The known rows are read a page at a time, in path order, beside the sorted scan:
        // memory grows with the changes, not with the storage.
        let mut known = Pager::new(storage);
        let mut next = known.next(self)?;
        for f in found {
            // Known paths before this one are gone (if live).
            while let Some(row) = next.take() {
                if row.entry.meta.path >= f.meta.path {
                    next = Some(row);
                    break;
                }
                if row.entry.is_live() && !unseen(&row.entry.meta.path) {
                    gone.push(row);
                }
                next = known.next(self)?;
            }
            let row = match next.take() {
                Some(row) if row.entry.meta.path == f.meta.path => {
                    next = known.next(self)?;
                    Some(row)
                }
                other => {
                    next = other;
                    None
                }
            };
            match row {
                Some(row) if row.entry.is_live() && row.entry.meta.kind == f.meta.kind => {
                    let e = &row.entry;
                    let same_stat = f.meta.kind == EntryKind::Dir
                        || (e.meta.size == f.meta.size
                            && e.meta.mtime_ns == f.meta.mtime_ns
                            && row.ino == f.ino
                            && row.ctime == f.ctime_ns);
                    if same_stat {
                        continue;
                    }
                    let h = match hash(&f.meta.path) {
                        Ok(h) => h,
                        Err(err) => {
                            log::warn!("not hashing {}: {err}", f.meta.path);
                            continue;
                        }
                    };
                    changes.hashed += f.meta.size;
                    let same_meta =
                        e.meta.size == f.meta.size && e.meta.mtime_ns == f.meta.mtime_ns;
                    if e.hash == Some(h) {
                        writes.push(if same_meta {
                            Write::Stat(f)
                        } else {
                            Write::Meta(f, row)
                        });
                    } else {
                        changes.modified += 1;
                        let vv = e.vv.bump(&me, now);
                        writes.push(Write::Version {
                            found: f,
                            hash: Some(h),
                            vv,
                            link: None,
                        });
                    }
                }
                // A live entry of the other kind: the new one's version follows it.
                Some(row) if row.entry.is_live() => {
                    news.push((f, Some(Box::new(clone_known(&row)))));
                    gone.push(row);
                }
                // A tombstone: a path made again continues its history.
                Some(row) => news.push((f, Some(Box::new(row)))),
                None => news.push((f, None)),
            }
        }
        while let Some(row) = next.take() {
            if row.entry.is_live() && !unseen(&row.entry.meta.path) {
                gone.push(row);
            }
            next = known.next(self)?;
        }

        // Moves: a new path with the inode (and, for a file, the size and mtime) of a path
        // that is gone.
        let mut by_ino: HashMap<(u64, bool), usize> = HashMap::new();
        for (i, g) in gone.iter().enumerate() {
            if g.ino != 0 {
                by_ino.insert((g.ino, g.entry.meta.kind == EntryKind::Dir), i);
            }
        }
        let mut moved_from: Vec<Option<usize>> = vec![None; news.len()];
        let mut moved_to: Vec<Option<usize>> = vec![None; gone.len()];
        for (n, (f, prior)) in news.iter().enumerate() {
            if prior.as_ref().is_some_and(|p| p.entry.is_live()) {
                continue;
            }
            let is_dir = f.meta.kind == EntryKind::Dir;
            let Some(&g) = by_ino.get(&(f.ino, is_dir)) else {
                continue;
            };
            let old = &gone[g].entry;
            if moved_to[g].is_some()
                || (!is_dir
                    && (old.meta.size != f.meta.size || old.meta.mtime_ns != f.meta.mtime_ns))
            {
                continue;
            }
            moved_from[n] = Some(g);
            moved_to[g] = Some(n);
        }
        // A new file with the content of a file that is gone (copied, then the original
        // deleted; a move across file systems): a move too. New files are hashed anyway;
        // only those with the size of a gone file are hashed here, the rest below.
        let mut news_hash: Vec<Option<Digest>> = vec![None; news.len()];
        let mut by_hash: HashMap<(Digest, u64), Vec<usize>> = HashMap::new();
        for (g, row) in gone.iter().enumerate() {
            if let (None, EntryKind::File, Some(h)) =
                (moved_to[g], row.entry.meta.kind, row.entry.hash)
            {
                by_hash.entry((h, row.entry.meta.size)).or_default().push(g);
            }
        }
        let sizes: std::collections::HashSet<u64> = by_hash.keys().map(|(_, s)| *s).collect();
        for (n, (f, prior)) in news.iter().enumerate() {
            if moved_from[n].is_some()
                || f.meta.kind != EntryKind::File
                || !sizes.contains(&f.meta.size)
                || prior.as_ref().is_some_and(|p| p.entry.is_live())
            {
                continue;
            }
            let Ok(h) = hash(&f.meta.path) else { continue };
            changes.hashed += f.meta.size;
            news_hash[n] = Some(h);
            if let Some(g) = by_hash.get_mut(&(h, f.meta.size)).and_then(Vec::pop) {
                moved_from[n] = Some(g);
                moved_to[g] = Some(n);
            }
        }
        // A directory whose every live entry moved with it to the same place under its new
        // name is one move.
        let mut prefix_moves: Vec<(RelPath, RelPath)> = Vec::new();
        for (g, row) in gone.iter().enumerate() {
            let (Some(n), EntryKind::Dir) = (moved_to[g], row.entry.meta.kind) else {
                continue;
            };
            let from = &row.entry.meta.path;
            let to = &news[n].0.meta.path;
            if prefix_moves.iter().any(|(a, _)| is_below(from, a)) || is_below(to, from) {
                continue;
            }
            // Every entry below moved along, and onto fresh paths: a path with a history
            // (a tombstone) must carry it on, which the one-line form cannot say.
            let whole = news[n].1.is_none()
                && gone.iter().enumerate().all(|(h, other)| {
                    !is_below(&other.entry.meta.path, from)
                        || moved_to[h].is_some_and(|m| {
                            news[m].1.is_none()
                                && news[m].0.meta.path.as_str()
                                    == rebase(&other.entry.meta.path, from, to).as_str()
                        })
                });
            if whole {
                prefix_moves.push((from.clone(), to.clone()));
            }
        }
        // The gone entries a directory move stands for.
        let covered: Vec<bool> = gone
            .iter()
            .map(|r| {
                let p = &r.entry.meta.path;
                prefix_moves
                    .iter()
                    .any(|(from, _)| p == from || is_below(p, from))
            })
            .collect();
        for (g, row) in gone.iter().enumerate() {
            if covered[g] {
                continue;
            }
            let link = moved_to[g].map(|n| news[n].0.meta.path.clone());
            if link.is_some() {
                changes.moved += 1;
            } else {
                changes.deleted += 1;
            }
            let counter = (row.entry.vv.get(&me) + 1).max(now);
            writes.push(Write::Tombstone {
                known: clone_known(row),
                vv: row.entry.vv.with(&me, counter),
                link,
            });
        }
        let prefix: Vec<PrefixMove<'_>> = prefix_moves
            .iter()
            .map(|(from, to)| {
                let rows = gone
                    .iter()
                    .enumerate()
                    .filter(|(_, r)| {
                        r.entry.meta.path == *from || is_below(&r.entry.meta.path, from)
                    })
                    .filter_map(|(g, r)| moved_to[g].map(|n| (news[n].0.clone(), r)))
                    .collect();
                (from.clone(), to.clone(), rows)
            })
            .collect();
        changes.dir_moves = prefix_moves.len() as u32;
        if !(writes.is_empty() && news.is_empty() && prefix.is_empty()) {
            // Numbering a new node writes, and the transaction below holds the connection:
            // every node a row can name (the existing rows' and this one's) is numbered first.
            let mut named: Vec<NodeId> = vec![me.clone()];
            let mut name = |vv: &Vv| {
                for (n, _) in vv.pairs() {
                    if !named.contains(n) {
                        named.push(n.clone());
                    }
                }
            };
            for w in &writes {
                match w {
                    Write::Stat(_) => {}
                    // Its author too, which a row names apart from the vector.
                    Write::Meta(_, k) => name(&k.entry.vv.with(&k.entry.by, 1)),
                    Write::Version { vv, .. } | Write::Tombstone { vv, .. } => name(vv),
                }
            }
            gone.iter().for_each(|g| name(&g.entry.vv));
            news.iter()
                .filter_map(|(_, p)| p.as_ref())
                .for_each(|k| name(&k.entry.vv));
            for n in &named {
                self.node_id(n)?;
            }
            // The new entries become writes one at a time, as the transaction takes them: a
            // first scan of 100,000 files never holds them twice.
            let fresh = news.into_iter().enumerate().filter_map(|(n, (f, prior))| {
                if let Some(g) = moved_from[n] {
                    if covered[g] {
                        return None;
                    }
                    // The content's history, and the new path's own (a deletion there must
                    // not come back through the move).
                    let old = &gone[g].entry;
                    let base = prior
                        .as_ref()
                        .map_or_else(|| old.vv.clone(), |p| old.vv.merge(&p.entry.vv));
                    let counter = (base.get(&me) + 1).max(now);
                    return Some(Write::Version {
                        found: f,
                        hash: old.hash,
                        vv: base.with(&me, counter),
                        link: Some(old.meta.path.clone()),
                    });
                }
                let h = match f.meta.kind {
                    EntryKind::Dir => None,
                    EntryKind::File if news_hash[n].is_some() => news_hash[n],
                    EntryKind::File => match hash(&f.meta.path) {
                        Ok(h) => {
                            changes.hashed += f.meta.size;
                            Some(h)
                        }
                        Err(err) => {
                            log::warn!("not hashing {}: {err}", f.meta.path);
                            return None;
                        }
                    },
                };
                changes.new += 1;
                let base = prior
                    .as_ref()
                    .map_or_else(Vv::default, |p| p.entry.vv.clone());
                Some(Write::Version {
                    found: f,
                    hash: h,
                    vv: base.bump(&me, now),
                    link: None,
                })
            });
            self.write_scan(storage, now, writes.into_iter().chain(fresh), prefix)?;
        }
        let (index_id, seq) = self.local_state(storage)?;
        let (count, digest) = self.digest(storage)?;
        Ok(ScanSummary {
            index_id,
            seq,
            count,
            digest,
            changes,
        })
    }

    fn write_scan(
        &mut self,
        storage: StorageId,
        now: u64,
        writes: impl Iterator<Item = Write>,
        prefix: Vec<PrefixMove<'_>>,
    ) -> Result<(), StoreError> {
        let me = self.me.clone();
        // Every node a row names was numbered by the caller; each write is encoded and
        // stored as it is taken.
        let me_id = self.node_id(&me)?;
        let (_, mut seq) = self.local_state(storage)?;
        let ids = &self.ids;
        let path = &self.path;
        let encode = |vv: &Vv| super::encode_numbered(ids, path, vv);
        let by_id = |n: &NodeId| -> Result<i64, StoreError> {
            ids.get(n).copied().ok_or_else(|| StoreError::Corrupt {
                path: path.clone(),
                detail: format!("node {n} was not numbered"),
            })
        };
        let changed = now as i64;
        let tx = self.conn.transaction().map_err(|e| sql(path, e))?;
        {
            let mut put = tx
                .prepare_cached(
                    "INSERT OR REPLACE INTO entries
                     (storage, path, kind, deleted, size, mtime, mode, hash, vv, by, seq, ino,
                      ctime, changed, link)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)",
                )
                .map_err(|e| sql(path, e))?;
            let mut stat = tx
                .prepare_cached(
                    "UPDATE entries SET ino = ?3, ctime = ?4 WHERE storage = ?1 AND path = ?2",
                )
                .map_err(|e| sql(path, e))?;
            // One row: (meta, deleted, hash, vv, by, ino, ctime, link).
            let mut row = |m: &FileMeta,
                           deleted: bool,
                           hash: Option<Digest>,
                           vv: &[u8],
                           by: i64,
                           seq: u64,
                           (ino, ctime): (u64, i64),
                           link: Option<&str>|
             -> Result<(), StoreError> {
                put.execute(params![
                    storage,
                    m.path.as_str(),
                    kind_code(m.kind),
                    deleted,
                    m.size as i64,
                    m.mtime_ns,
                    i64::from(m.mode),
                    hash.as_ref().map(|h| &h[..]),
                    vv,
                    by,
                    seq as i64,
                    ino as i64,
                    ctime,
                    changed,
                    link
                ])
                .map(|_| ())
                .map_err(|e| sql(path, e))
            };
            for w in writes {
                match w {
                    Write::Stat(f) => {
                        stat.execute(params![
                            storage,
                            f.meta.path.as_str(),
                            f.ino as i64,
                            f.ctime_ns
                        ])
                        .map_err(|e| sql(path, e))?;
                    }
                    Write::Meta(f, k) => {
                        seq += 1;
                        let vv = encode(&k.entry.vv)?;
                        let by = by_id(&k.entry.by)?;
                        row(
                            &f.meta,
                            false,
                            k.entry.hash,
                            &vv,
                            by,
                            seq,
                            (f.ino, f.ctime_ns),
                            None,
                        )?;
                    }
                    Write::Version {
                        found,
                        hash,
                        vv,
                        link,
                    } => {
                        seq += 1;
                        row(
                            &found.meta,
                            false,
                            hash,
                            &encode(&vv)?,
                            me_id,
                            seq,
                            (found.ino, found.ctime_ns),
                            link.as_ref().map(|l| l.as_str()),
                        )?;
                    }
                    Write::Tombstone { known, vv, link } => {
                        seq += 1;
                        let e = &known.entry;
                        row(
                            &e.meta,
                            true,
                            e.hash,
                            &encode(&vv)?,
                            me_id,
                            seq,
                            (0, 0),
                            link.as_ref().map(|l| l.as_str()),
                        )?;
                    }
                }
            }
            let mut mv = tx
                .prepare_cached(
                    "INSERT OR REPLACE INTO moves (storage, seq, from_path, to_path, by, counter, before)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                )
                .map_err(|e| sql(path, e))?;
            for (from, to, moved) in prefix {
                seq += 1;
                // One counter for every entry of the move, above any this node gave them.
                let counter = moved
                    .iter()
                    .map(|(_, k)| k.entry.vv.get(&me) + 1)
                    .max()
                    .unwrap_or(1)
                    .max(now);
                let before = moved.iter().map(|(_, k)| k.seq).max().unwrap_or(0);
                for (f, k) in moved {
                    let e = &k.entry;
                    let vv = encode(&e.vv.with(&me, counter))?;
                    row(
                        &e.meta,
                        true,
                        e.hash,
                        &vv,
                        me_id,
                        seq,
                        (0, 0),
                        Some(f.meta.path.as_str()),
                    )?;
                    row(
                        &f.meta,
                        false,
                        e.hash,
                        &vv,
                        me_id,
                        seq,
                        (f.ino, f.ctime_ns),
                        Some(e.meta.path.as_str()),
                    )?;
                }
                mv.execute(params![
                    storage,
                    seq as i64,
                    from.as_str(),
                    to.as_str(),
                    me_id,
                    counter as i64,
                    before as i64
                ])
                .map_err(|e| sql(path, e))?;
            }
            tx.execute(
                "UPDATE storages SET seq = ?2 WHERE id = ?1",
                params![storage, seq as i64],
            )
            .map_err(|e| sql(path, e))?;
        }
        tx.commit().map_err(|e| sql(path, e))?;
        self.transactions += 1;
        Ok(())
    }

    /// The number of live entries of `storage` and the digest of its live index.
    pub fn digest(&self, storage: StorageId) -> Result<(u64, Digest), StoreError> {
        let mut h = blake3::Hasher::new();
        let mut count = 0u64;
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT path, kind, vv FROM entries WHERE storage = ?1 AND deleted = 0 ORDER BY path",
            )
            .map_err(|e| self.sql_err(e))?;
        let mut rows = stmt.query(params![storage]).map_err(|e| self.sql_err(e))?;
        while let Some(r) = rows.next().map_err(|e| self.sql_err(e))? {
            let path: String = r.get(0).map_err(|e| self.sql_err(e))?;
            let kind: i64 = r.get(1).map_err(|e| self.sql_err(e))?;
            let vv: Vec<u8> = r.get(2).map_err(|e| self.sql_err(e))?;
            let vv = self.decode_vv(&vv)?;
            h.update(&(path.len() as u32).to_le_bytes());
            h.update(path.as_bytes());
            h.update(&[kind as u8]);
            for (n, c) in vv.pairs() {
                h.update(&(n.as_str().len() as u8).to_le_bytes());
                h.update(n.as_str().as_bytes());
                h.update(&c.to_le_bytes());
            }
            h.update(&[0xff]);
            count += 1;
        }
        Ok((count, *h.finalize().as_bytes()))
    }
}

/// Rows of a storage in path order, a page at a time.
struct Pager {
    storage: StorageId,
    page: std::vec::IntoIter<Known>,
    after: Option<String>,
    done: bool,
}

/// Rows read per page.
const PAGE: i64 = 2048;

impl Pager {
    fn new(storage: StorageId) -> Pager {
        Pager {
            storage,
            page: Vec::new().into_iter(),
            after: None,
            done: false,
        }
    }

    fn next(&mut self, store: &Store) -> Result<Option<Known>, StoreError> {
        if let Some(k) = self.page.next() {
            return Ok(Some(k));
        }
        if self.done {
            return Ok(None);
        }
        let mut stmt = store
            .conn
            .prepare_cached(
                "SELECT path, kind, deleted, size, mtime, mode, hash, vv, by, link, ino, ctime, seq
                 FROM entries WHERE storage = ?1 AND path > ?2 ORDER BY path LIMIT ?3",
            )
            .map_err(|e| store.sql_err(e))?;
        let after = self.after.clone().unwrap_or_default();
        let rows = stmt
            .query_map(params![self.storage, after, PAGE], |r| {
                Ok((
                    RawEntry {
                        path: r.get(0)?,
                        kind: r.get(1)?,
                        deleted: r.get(2)?,
                        size: r.get(3)?,
                        mtime: r.get(4)?,
                        mode: r.get(5)?,
                        hash: r.get(6)?,
                        vv: r.get(7)?,
                        by: r.get(8)?,
                        link: r.get(9)?,
                    },
                    r.get::<_, i64>(10)?,
                    r.get::<_, i64>(11)?,
                    r.get::<_, i64>(12)?,
                ))
            })
            .map_err(|e| store.sql_err(e))?;
        let mut page = Vec::new();
        for row in rows {
            let (raw, ino, ctime, seq) = row.map_err(|e| store.sql_err(e))?;
            self.after = Some(raw.path.clone());
            page.push(Known {
                entry: store.entry_of(raw)?,
                ino: ino as u64,
                ctime,
                seq: seq as u64,
            });
        }
        if (page.len() as i64) < PAGE {
            self.done = true;
        }
        self.page = page.into_iter();
        Ok(self.page.next())
    }
}

fn sql(path: &std::path::Path, e: rusqlite::Error) -> StoreError {
    StoreError::Sql {
        path: path.to_owned(),
        detail: e.to_string(),
    }
}

fn clone_known(k: &Known) -> Known {
    Known {
        entry: k.entry.clone(),
        ino: k.ino,
        ctime: k.ctime,
        seq: k.seq,
    }
}
