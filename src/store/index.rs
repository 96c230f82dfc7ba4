//! Indexes in the store: this node's changes since a sequence number (what it sends a
//! leader, with directory moves as one line), the copies of its peers' indexes (what it
//! diffs when it leads), the streamed diff input, and what a session changed here.

use std::collections::BTreeMap;

use rusqlite::{params, OptionalExtension};

use super::{kind_code, random_u63, RawEntry, StorageId, Store, StoreError};
use crate::history::{rebase, EachPath, Entry, IndexView, Record};
use crate::model::{NodeId, RelPath};

/// Rows read per page and per source while diffing: a page per source is held, so the
/// diff's memory is this times the participants, whatever the storage's size.
const PAGE: i64 = 256;

/// One of this node's rows as stored: the entry, its sequence number, its stat key.
struct Stored {
    entry: Entry,
    seq: i64,
    ino: u64,
    ctime: i64,
}

/// Whose index a diff reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DiffSource {
    Local,
    Remote(NodeId),
}

/// What a session did here, recorded after the disk has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    /// A file or directory is now at `entry.meta.path` with this version (received, made,
    /// moved there, renamed there as a conflict copy, or only given a new version).
    Put { entry: Entry, ino: u64, ctime: i64 },
    /// The path was deleted (or its content renamed away) as planned: this tombstone.
    Tombstone(Entry),
    /// A directory move was replayed: every live entry at or below `from` is now below
    /// `to`, with `by`'s counter at `counter` (recorded as one move, for compact reports).
    /// `stats` are the moved entries' new inode and ctime (a rename changes the ctime), so
    /// the next scan does not read them again.
    MovePrefix {
        from: RelPath,
        to: RelPath,
        by: NodeId,
        counter: u64,
        stats: std::collections::HashMap<RelPath, (u64, i64)>,
    },
}

fn raw(r: &rusqlite::Row<'_>) -> rusqlite::Result<RawEntry> {
    Ok(RawEntry {
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
    })
}

const COLUMNS: &str = "path, kind, deleted, size, mtime, mode, hash, vv, by, link";

impl Store {
    /// This node's changes to `storage` after sequence number `since`, in order, handed to
    /// `each` a page at a time. A directory move whose entries had not changed since then
    /// goes as one [`Record::MovePrefix`]. Returns the sequence number they lead to.
    pub fn local_since(
        &self,
        storage: StorageId,
        since: u64,
        each: &mut dyn FnMut(Vec<Record>),
    ) -> Result<u64, StoreError> {
        let (_, seq) = self.local_state(storage)?;
        let mut moves: BTreeMap<i64, Record> = BTreeMap::new();
        {
            let mut stmt = self
                .conn
                .prepare_cached(
                    "SELECT seq, from_path, to_path, by, counter FROM moves
                     WHERE storage = ?1 AND seq > ?2 AND before <= ?2",
                )
                .map_err(|e| self.sql_err(e))?;
            let rows = stmt
                .query_map(params![storage, since as i64], |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, String>(2)?,
                        r.get::<_, i64>(3)?,
                        r.get::<_, i64>(4)?,
                    ))
                })
                .map_err(|e| self.sql_err(e))?;
            for row in rows {
                let (s, from, to, by, counter) = row.map_err(|e| self.sql_err(e))?;
                let (Ok(from), Ok(to)) = (RelPath::from_string(from), RelPath::from_string(to))
                else {
                    continue;
                };
                moves.insert(
                    s,
                    Record::MovePrefix {
                        from,
                        to,
                        by: self.node_name(by)?,
                        counter: counter as u64,
                    },
                );
            }
        }
        // The rows a compact move stands for all carry its sequence number.
        let compact: std::collections::HashSet<i64> = moves.keys().copied().collect();
        // Pages by (seq, path): a move writes many rows with one sequence number.
        let mut after = (since as i64, String::from("\u{10FFFF}"));
        loop {
            let mut stmt = self
                .conn
                .prepare_cached(&format!(
                    "SELECT {COLUMNS}, seq FROM entries WHERE storage = ?1
                     AND (seq > ?2 OR (seq = ?2 AND path > ?3)) ORDER BY seq, path LIMIT ?4"
                ))
                .map_err(|e| self.sql_err(e))?;
            let rows = stmt
                .query_map(params![storage, after.0, after.1, PAGE], |r| {
                    Ok((raw(r)?, r.get::<_, i64>(10)?))
                })
                .map_err(|e| self.sql_err(e))?;
            let mut page = Vec::new();
            for row in rows {
                page.push(row.map_err(|e| self.sql_err(e))?);
            }
            drop(stmt);
            let full = page.len() as i64 == PAGE;
            let mut out = Vec::with_capacity(page.len());
            for (r, s) in page {
                after = (s, r.path.clone());
                // The move's own line goes before the first row it stands for.
                let due: Vec<i64> = moves.range(..=s).map(|(k, _)| *k).collect();
                for k in due {
                    if let Some(m) = moves.remove(&k) {
                        out.push(m);
                    }
                }
                if compact.contains(&s) {
                    continue;
                }
                out.push(Record::Entry(self.entry_of(r)?));
            }
            if !out.is_empty() {
                each(out);
            }
            if !full {
                break;
            }
        }
        let rest: Vec<Record> = std::mem::take(&mut moves).into_values().collect();
        if !rest.is_empty() {
            each(rest);
        }
        Ok(seq)
    }

    /// How far this node's copy of `node`'s index of `storage` goes: its index id and
    /// sequence number.
    pub fn remote_state(
        &self,
        storage: StorageId,
        node: &NodeId,
    ) -> Result<Option<(u64, u64)>, StoreError> {
        let Some(&id) = self.ids.get(node) else {
            return Ok(None);
        };
        self.conn
            .query_row(
                "SELECT index_id, seq FROM remote_state WHERE storage = ?1 AND node = ?2",
                params![storage, id],
                |r| Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64)),
            )
            .optional()
            .map_err(|e| self.sql_err(e))
    }

    /// A copy of `node`'s index is about to be updated; `full`: it is replaced, so the old
    /// copy goes. Until [`Store::remote_end`] the copy is not trusted (a session that dies in
    /// the middle leaves it to be asked for whole next time).
    pub fn remote_begin(
        &mut self,
        storage: StorageId,
        node: &NodeId,
        full: bool,
    ) -> Result<(), StoreError> {
        let id = self.node_id(node)?;
        let tx = self.conn.transaction().map_err(|e| sql(&self.path, e))?;
        if full {
            tx.execute(
                "DELETE FROM remote WHERE storage = ?1 AND node = ?2",
                params![storage, id],
            )
            .map_err(|e| sql(&self.path, e))?;
            tx.execute(
                "DELETE FROM remote_state WHERE storage = ?1 AND node = ?2",
                params![storage, id],
            )
            .map_err(|e| sql(&self.path, e))?;
        }
        tx.commit().map_err(|e| sql(&self.path, e))?;
        self.transactions += 1;
        Ok(())
    }

    /// Applies records `node` sent to this node's copy of its index, in one transaction.
    pub fn remote_apply(
        &mut self,
        storage: StorageId,
        node: &NodeId,
        records: &[Record],
    ) -> Result<(), StoreError> {
        let id = self.node_id(node)?;
        let mut rows: Vec<(Entry, Vec<u8>, i64)> = Vec::new();
        for r in records {
            match r {
                Record::Entry(e) => {
                    let vv = self.encode_vv(&e.vv)?;
                    let by = self.node_id(&e.by)?;
                    rows.push((e.clone(), vv, by));
                }
                Record::MovePrefix {
                    from,
                    to,
                    by,
                    counter,
                } => {
                    // Flush what came before: the move applies to the copy as it is then.
                    self.put_remote(storage, id, std::mem::take(&mut rows))?;
                    let moved = self.remote_below(storage, id, from)?;
                    let mut writes = Vec::new();
                    for e in moved.into_iter().filter(|e| e.is_live()) {
                        let vv = e.vv.with(by, *counter);
                        let new_path = rebase(&e.meta.path, from, to);
                        let mut gone = e.clone();
                        gone.deleted = true;
                        gone.vv = vv.clone();
                        gone.by = by.clone();
                        gone.link = Some(new_path.clone());
                        let mut moved = e.clone();
                        moved.meta.path = new_path;
                        moved.vv = vv;
                        moved.by = by.clone();
                        moved.link = Some(e.meta.path.clone());
                        for x in [gone, moved] {
                            let vv = self.encode_vv(&x.vv)?;
                            let b = self.node_id(&x.by)?;
                            writes.push((x, vv, b));
                        }
                    }
                    self.put_remote(storage, id, writes)?;
                }
            }
        }
        self.put_remote(storage, id, rows)
    }

    fn put_remote(
        &mut self,
        storage: StorageId,
        node: i64,
        rows: Vec<(Entry, Vec<u8>, i64)>,
    ) -> Result<(), StoreError> {
        if rows.is_empty() {
            return Ok(());
        }
        let tx = self.conn.transaction().map_err(|e| sql(&self.path, e))?;
        {
            let mut put = tx
                .prepare_cached(
                    "INSERT OR REPLACE INTO remote
                     (storage, node, path, kind, deleted, size, mtime, mode, hash, vv, by, link)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
                )
                .map_err(|e| sql(&self.path, e))?;
            for (e, vv, by) in &rows {
                put.execute(params![
                    storage,
                    node,
                    e.meta.path.as_str(),
                    kind_code(e.meta.kind),
                    e.deleted,
                    e.meta.size as i64,
                    e.meta.mtime_ns,
                    i64::from(e.meta.mode),
                    e.hash.map(|h| h.to_vec()),
                    vv,
                    by,
                    e.link.as_ref().map(RelPath::as_str),
                ])
                .map_err(|e| sql(&self.path, e))?;
            }
        }
        tx.commit().map_err(|e| sql(&self.path, e))?;
        self.transactions += 1;
        Ok(())
    }

    fn remote_below(
        &self,
        storage: StorageId,
        node: i64,
        dir: &RelPath,
    ) -> Result<Vec<Entry>, StoreError> {
        let (lo, hi) = super::below(dir);
        let mut stmt = self
            .conn
            .prepare_cached(&format!(
                "SELECT {COLUMNS} FROM remote WHERE storage = ?1 AND node = ?2
                 AND (path = ?3 OR (path > ?4 AND path < ?5)) ORDER BY path"
            ))
            .map_err(|e| self.sql_err(e))?;
        let rows = stmt
            .query_map(params![storage, node, dir.as_str(), lo, hi], raw)
            .map_err(|e| self.sql_err(e))?;
        let mut out = Vec::new();
        for r in rows {
            out.push(self.entry_of(r.map_err(|e| self.sql_err(e))?)?);
        }
        Ok(out)
    }

    /// The copy of `node`'s index is complete up to its `seq` of index `index_id`.
    pub fn remote_end(
        &mut self,
        storage: StorageId,
        node: &NodeId,
        index_id: u64,
        seq: u64,
    ) -> Result<(), StoreError> {
        let id = self.node_id(node)?;
        self.conn
            .execute(
                "INSERT OR REPLACE INTO remote_state (storage, node, index_id, seq)
                 VALUES (?1, ?2, ?3, ?4)",
                params![storage, id, index_id as i64, seq as i64],
            )
            .map_err(|e| self.sql_err(e))?;
        self.transactions += 1;
        Ok(())
    }

    /// Stops trusting the copy of `node`'s index (its part of a session failed: what it
    /// really did is asked for whole next time).
    pub fn remote_forget(&mut self, storage: StorageId, node: &NodeId) -> Result<(), StoreError> {
        let Some(&id) = self.ids.get(node) else {
            return Ok(());
        };
        self.conn
            .execute(
                "DELETE FROM remote_state WHERE storage = ?1 AND node = ?2",
                params![storage, id],
            )
            .map_err(|e| self.sql_err(e))?;
        self.transactions += 1;
        Ok(())
    }

    /// Streams the indexes of `sources` merged by path: `each` gets, for every path that any
    /// of them has, each source's entry (in `sources` order) and a view for lookups.
    pub fn diff(
        &self,
        storage: StorageId,
        sources: &[DiffSource],
        each: &mut EachPath<'_>,
    ) -> Result<(), StoreError> {
        let ids: Vec<Option<i64>> = sources
            .iter()
            .map(|s| match s {
                DiffSource::Local => None,
                DiffSource::Remote(n) => Some(self.ids.get(n).copied().unwrap_or(-1)),
            })
            .collect();
        let view = View {
            store: self,
            storage,
            ids: &ids,
        };
        let mut pages: Vec<std::collections::VecDeque<Entry>> =
            vec![Default::default(); sources.len()];
        let mut after: Vec<Option<String>> = vec![Some(String::new()); sources.len()];
        loop {
            for (i, page) in pages.iter_mut().enumerate() {
                if page.is_empty() {
                    if let Some(a) = after[i].take() {
                        let got = view.page(i, &a)?;
                        if got.len() as i64 == PAGE {
                            after[i] = got.last().map(|e| e.meta.path.to_string());
                        }
                        page.extend(got);
                    }
                }
            }
            let next = pages
                .iter()
                .filter_map(|p| p.front().map(|e| e.meta.path.clone()))
                .min();
            let Some(path) = next else {
                return Ok(());
            };
            let here: Vec<Option<Entry>> = pages
                .iter_mut()
                .map(|p| {
                    if p.front().is_some_and(|e| e.meta.path == path) {
                        p.pop_front()
                    } else {
                        None
                    }
                })
                .collect();
            let refs: Vec<Option<&Entry>> = here.iter().map(Option::as_ref).collect();
            each(&refs, &view);
        }
    }

    /// Records what a session did to `storage` here, in one transaction, at `now`.
    pub fn record(
        &mut self,
        storage: StorageId,
        applied: Vec<Applied>,
        now: u64,
    ) -> Result<(), StoreError> {
        if applied.is_empty() {
            return Ok(());
        }
        let (_, mut seq) = self.local_state(storage)?;
        struct Put {
            e: Entry,
            vv: Vec<u8>,
            by: i64,
            ino: i64,
            ctime: i64,
            seq: i64,
        }
        let mut puts: Vec<Put> = Vec::new();
        let mut moves: Vec<(i64, String, String, i64, u64, i64)> = Vec::new();
        for a in applied {
            match a {
                Applied::Put { entry, ino, ctime } => {
                    seq += 1;
                    let vv = self.encode_vv(&entry.vv)?;
                    let by = self.node_id(&entry.by)?;
                    puts.push(Put {
                        e: entry,
                        vv,
                        by,
                        ino: ino as i64,
                        ctime,
                        seq: seq as i64,
                    });
                }
                Applied::Tombstone(entry) => {
                    seq += 1;
                    let vv = self.encode_vv(&entry.vv)?;
                    let by = self.node_id(&entry.by)?;
                    puts.push(Put {
                        e: Entry {
                            deleted: true,
                            ..entry
                        },
                        vv,
                        by,
                        ino: 0,
                        ctime: 0,
                        seq: seq as i64,
                    });
                }
                Applied::MovePrefix {
                    from,
                    to,
                    by,
                    counter,
                    stats,
                } => {
                    seq += 1;
                    let by_id = self.node_id(&by)?;
                    let rows = self.rows_below(storage, &from)?;
                    let before = rows.iter().map(|r| r.seq).max().unwrap_or(0);
                    for r in rows.into_iter().filter(|r| r.entry.is_live()) {
                        let (e, old_stat) = (r.entry, (r.ino, r.ctime));
                        let vv = e.vv.with(&by, counter);
                        let new_path = rebase(&e.meta.path, &from, &to);
                        let (ino, ctime) = stats.get(&new_path).copied().unwrap_or(old_stat);
                        let enc = self.encode_vv(&vv)?;
                        let mut gone = e.clone();
                        gone.deleted = true;
                        gone.vv = vv.clone();
                        gone.by = by.clone();
                        gone.link = Some(new_path.clone());
                        let mut moved = e.clone();
                        moved.meta.path = new_path;
                        moved.vv = vv;
                        moved.by = by.clone();
                        moved.link = Some(e.meta.path.clone());
                        puts.push(Put {
                            e: gone,
                            vv: enc.clone(),
                            by: by_id,
                            ino: 0,
                            ctime: 0,
                            seq: seq as i64,
                        });
                        puts.push(Put {
                            e: moved,
                            vv: enc,
                            by: by_id,
                            ino: ino as i64,
                            ctime,
                            seq: seq as i64,
                        });
                    }
                    moves.push((
                        seq as i64,
                        from.to_string(),
                        to.to_string(),
                        by_id,
                        counter,
                        before,
                    ));
                }
            }
        }
        let now = now as i64;
        let tx = self.conn.transaction().map_err(|e| sql(&self.path, e))?;
        {
            let mut put = tx
                .prepare_cached(
                    "INSERT OR REPLACE INTO entries
                     (storage, path, kind, deleted, size, mtime, mode, hash, vv, by, seq, ino,
                      ctime, changed, link)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)",
                )
                .map_err(|e| sql(&self.path, e))?;
            for p in &puts {
                let e = &p.e;
                put.execute(params![
                    storage,
                    e.meta.path.as_str(),
                    kind_code(e.meta.kind),
                    e.deleted,
                    e.meta.size as i64,
                    e.meta.mtime_ns,
                    i64::from(e.meta.mode),
                    e.hash.map(|h| h.to_vec()),
                    p.vv,
                    p.by,
                    p.seq,
                    p.ino,
                    p.ctime,
                    now,
                    e.link.as_ref().map(RelPath::as_str),
                ])
                .map_err(|e| sql(&self.path, e))?;
            }
            for (s, from, to, by, counter, before) in &moves {
                tx.execute(
                    "INSERT OR REPLACE INTO moves (storage, seq, from_path, to_path, by, counter, before)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                    params![storage, s, from, to, by, *counter as i64, before],
                )
                .map_err(|e| sql(&self.path, e))?;
            }
            tx.execute(
                "UPDATE storages SET seq = ?2 WHERE id = ?1",
                params![storage, seq as i64],
            )
            .map_err(|e| sql(&self.path, e))?;
        }
        tx.commit().map_err(|e| sql(&self.path, e))?;
        self.transactions += 1;
        Ok(())
    }

    /// This node's entry at `path`, if it has one.
    pub fn local(&self, storage: StorageId, path: &RelPath) -> Result<Option<Entry>, StoreError> {
        let r = self
            .conn
            .query_row(
                &format!("SELECT {COLUMNS} FROM entries WHERE storage = ?1 AND path = ?2"),
                params![storage, path.as_str()],
                raw,
            )
            .optional()
            .map_err(|e| self.sql_err(e))?;
        r.map(|r| self.entry_of(r)).transpose()
    }

    /// This node's entries at or below `dir`, in path order.
    pub fn local_below(&self, storage: StorageId, dir: &RelPath) -> Result<Vec<Entry>, StoreError> {
        Ok(self
            .rows_below(storage, dir)?
            .into_iter()
            .map(|r| r.entry)
            .collect())
    }

    /// This node's rows at or below `dir`, with their sequence numbers and stat keys.
    fn rows_below(&self, storage: StorageId, dir: &RelPath) -> Result<Vec<Stored>, StoreError> {
        let (lo, hi) = super::below(dir);
        let mut stmt = self
            .conn
            .prepare_cached(&format!(
                "SELECT {COLUMNS}, seq, ino, ctime FROM entries WHERE storage = ?1
                 AND (path = ?2 OR (path > ?3 AND path < ?4)) ORDER BY path"
            ))
            .map_err(|e| self.sql_err(e))?;
        let rows = stmt
            .query_map(params![storage, dir.as_str(), lo, hi], |r| {
                Ok((
                    raw(r)?,
                    r.get::<_, i64>(10)?,
                    (r.get::<_, i64>(11)? as u64, r.get::<_, i64>(12)?),
                ))
            })
            .map_err(|e| self.sql_err(e))?;
        let mut raws = Vec::new();
        for r in rows {
            raws.push(r.map_err(|e| self.sql_err(e))?);
        }
        drop(stmt);
        raws.into_iter()
            .map(|(r, seq, (ino, ctime))| {
                Ok(Stored {
                    entry: self.entry_of(r)?,
                    seq,
                    ino,
                    ctime,
                })
            })
            .collect()
    }

    /// Forgets tombstones of `storage` older than `retention` seconds at `now`, except those
    /// of paths a peer's copy still shows alive (that peer has not seen the deletion yet).
    /// Returns how many went.
    pub fn purge_tombstones(
        &mut self,
        storage: StorageId,
        now: u64,
        retention: u64,
    ) -> Result<usize, StoreError> {
        let cutoff = now.saturating_sub(retention) as i64;
        let n = self
            .conn
            .execute(
                "DELETE FROM entries WHERE storage = ?1 AND deleted = 1 AND changed < ?2
                 AND NOT EXISTS (SELECT 1 FROM remote r WHERE r.storage = ?1
                                 AND r.path = entries.path AND r.deleted = 0)",
                params![storage, cutoff],
            )
            .map_err(|e| self.sql_err(e))?;
        if n > 0 {
            self.transactions += 1;
            self.trim();
        }
        Ok(n)
    }

    /// A new index id for `storage`: peers' copies of this node's index start over.
    pub fn renew_index(&mut self, storage: StorageId) -> Result<(), StoreError> {
        self.conn
            .execute(
                "UPDATE storages SET index_id = ?2 WHERE id = ?1",
                params![storage, random_u63()],
            )
            .map_err(|e| self.sql_err(e))?;
        Ok(())
    }
}

/// The diff's view of the store.
struct View<'a> {
    store: &'a Store,
    storage: StorageId,
    /// Per source: `None` for this node's index, else the peer's node row id.
    ids: &'a [Option<i64>],
}

impl View<'_> {
    fn page(&self, i: usize, after: &str) -> Result<Vec<Entry>, StoreError> {
        let s = self.store;
        let rows: Vec<RawEntry> = match self.ids[i] {
            None => {
                let mut stmt = s
                    .conn
                    .prepare_cached(&format!(
                        "SELECT {COLUMNS} FROM entries WHERE storage = ?1 AND path > ?2
                         ORDER BY path LIMIT ?3"
                    ))
                    .map_err(|e| s.sql_err(e))?;
                let rows = stmt
                    .query_map(params![self.storage, after, PAGE], raw)
                    .map_err(|e| s.sql_err(e))?;
                rows.collect::<rusqlite::Result<_>>()
                    .map_err(|e| s.sql_err(e))?
            }
            Some(node) => {
                let mut stmt = s
                    .conn
                    .prepare_cached(&format!(
                        "SELECT {COLUMNS} FROM remote WHERE storage = ?1 AND node = ?2
                         AND path > ?3 ORDER BY path LIMIT ?4"
                    ))
                    .map_err(|e| s.sql_err(e))?;
                let rows = stmt
                    .query_map(params![self.storage, node, after, PAGE], raw)
                    .map_err(|e| s.sql_err(e))?;
                rows.collect::<rusqlite::Result<_>>()
                    .map_err(|e| s.sql_err(e))?
            }
        };
        rows.into_iter().map(|r| s.entry_of(r)).collect()
    }

    fn point(&self, i: usize, path: &RelPath) -> Result<Option<Entry>, StoreError> {
        let s = self.store;
        let r = match self.ids[i] {
            None => s
                .conn
                .query_row(
                    &format!("SELECT {COLUMNS} FROM entries WHERE storage = ?1 AND path = ?2"),
                    params![self.storage, path.as_str()],
                    raw,
                )
                .optional(),
            Some(node) => s
                .conn
                .query_row(
                    &format!(
                        "SELECT {COLUMNS} FROM remote WHERE storage = ?1 AND node = ?2 AND path = ?3"
                    ),
                    params![self.storage, node, path.as_str()],
                    raw,
                )
                .optional(),
        }
        .map_err(|e| s.sql_err(e))?;
        r.map(|r| s.entry_of(r)).transpose()
    }
}

impl IndexView for View<'_> {
    fn taken(&self, path: &RelPath) -> bool {
        (0..self.ids.len()).any(|i| !matches!(self.point(i, path), Ok(None)))
    }

    fn entry(&self, i: usize, path: &RelPath) -> Option<Entry> {
        self.point(i, path).ok().flatten()
    }

    fn below(&self, i: usize, dir: &RelPath) -> Vec<Entry> {
        let s = self.store;
        let got = match self.ids[i] {
            None => s.local_below(self.storage, dir),
            Some(node) => s.remote_below(self.storage, node, dir),
        };
        got.unwrap_or_default()
    }
}

fn sql(path: &std::path::Path, e: rusqlite::Error) -> StoreError {
    StoreError::Sql {
        path: path.to_owned(),
        detail: e.to_string(),
    }
}
