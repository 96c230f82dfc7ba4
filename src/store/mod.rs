//! The history store: one SQLite database at `log_path`, opened only by the `sync` thread.
//! It holds, per storage, this node's index with version vectors and tombstones (what lets
//! it tell "deleted here" from "never had it"), and the indexes its peers last reported.
//!
//! Opening is strict, because a silent reset would turn "unknown" into "deleted
//! everywhere": a database that is not SQLite or fails its integrity check, one written by a
//! newer version (`PRAGMA user_version` above ours), or one another process holds is an
//! error naming the file. The schema is an embedded, numbered list of migrations.
//!
//! WAL journal, `synchronous = NORMAL`, an exclusive lock held for the whole run (a second
//! process with the same `log_path` is refused), incremental auto-vacuum and a bounded WAL:
//! never a full `VACUUM`, which runs small boxes out of memory. Writes come in transactions
//! of a scan, a batch of commits or a session's registration, never one per file.
//!
//! The store follows the disk, never leads it: a change is recorded only after it is durable
//! on disk. A store that lags (a crash between the two) only makes the next scan see a local
//! change, whose version is then concurrent with the one the peers have, with the same
//! content: merged, never a lost file.

mod index;
mod scan;

pub use index::{Applied, DiffSource};
pub use scan::{Found, ScanChanges, ScanSummary};

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use rusqlite::{params, Connection, OpenFlags, OptionalExtension};

use crate::history::{Entry, Vv};
use crate::model::{EntryKind, FileMeta, NodeId, RelPath};

/// The migrations, in order: migration `i` brings `user_version` from `i` to `i + 1`.
const MIGRATIONS: [&str; 1] = [include_str!("migrations/0001_history.sql")];
/// The schema this build reads and writes.
pub const SCHEMA: u32 = MIGRATIONS.len() as u32;

/// A storage's row id in the store.
pub type StorageId = i64;

/// Why the store cannot be used. Every message names the database file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreError {
    /// It cannot be opened or created.
    Open { path: PathBuf, detail: String },
    /// Another process has it open (a second iron-carrier with the same `log_path`?).
    Locked { path: PathBuf },
    /// A newer build wrote it.
    Newer { path: PathBuf, found: u32 },
    /// Not a database, or damaged.
    Corrupt { path: PathBuf, detail: String },
    /// A statement failed while running.
    Sql { path: PathBuf, detail: String },
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreError::Open { path, detail } => {
                write!(f, "cannot open the database {}: {detail}", path.display())
            }
            StoreError::Locked { path } => write!(
                f,
                "the database {} is in use by another process (is another iron-carrier running \
                 with the same log_path?)",
                path.display()
            ),
            StoreError::Newer { path, found } => write!(
                f,
                "the database {} was written by a newer iron-carrier (schema {found}, this \
                 build knows {SCHEMA}): upgrade this node, or point log_path elsewhere",
                path.display()
            ),
            StoreError::Corrupt { path, detail } => write!(
                f,
                "the database {} is damaged ({detail}); it is left as it is: move it away to \
                 start without history (this node then deletes nothing and its files count \
                 as new)",
                path.display()
            ),
            StoreError::Sql { path, detail } => {
                write!(f, "database {}: {detail}", path.display())
            }
        }
    }
}

impl std::error::Error for StoreError {}

/// The history store of this node.
pub struct Store {
    conn: Connection,
    path: PathBuf,
    me: NodeId,
    /// Node ids and their row ids, both ways.
    ids: HashMap<NodeId, i64>,
    names: HashMap<i64, NodeId>,
    /// Write transactions committed since opening (flash wears with each: reported).
    transactions: u64,
}

impl Store {
    /// Opens (or creates) the database at `path` for node `me`.
    pub fn open(path: &Path, me: &NodeId) -> Result<Store, StoreError> {
        let open_err = |detail: String| StoreError::Open {
            path: path.to_owned(),
            detail,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            if !dir.exists() {
                std::fs::create_dir_all(dir)
                    .map_err(|e| open_err(format!("cannot create {}: {e}", dir.display())))?;
            }
        }
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags(path, flags).map_err(|e| open_err(e.to_string()))?;
        Store::setup(conn, path.to_owned(), me, true)
    }

    /// A store that lives in memory only (the simulator's, and tests').
    pub fn open_in_memory(me: &NodeId) -> Result<Store, StoreError> {
        let path = PathBuf::from(":memory:");
        let conn = Connection::open_in_memory().map_err(|e| StoreError::Open {
            path: path.clone(),
            detail: e.to_string(),
        })?;
        Store::setup(conn, path, me, false)
    }

    fn setup(
        conn: Connection,
        path: PathBuf,
        me: &NodeId,
        file: bool,
    ) -> Result<Store, StoreError> {
        let mut store = Store {
            conn,
            path,
            me: me.clone(),
            ids: HashMap::new(),
            names: HashMap::new(),
            transactions: 0,
        };
        store.check_and_lock(file)?;
        store.migrate()?;
        store.load_nodes()?;
        Ok(store)
    }

    /// Write transactions committed since the store was opened.
    pub fn transactions(&self) -> u64 {
        self.transactions
    }

    /// Gives the page cache back between sessions: a daemon idles most of its life.
    pub fn release_memory(&self) {
        // SAFETY: sqlite3_memory_used only reads SQLite's own counter.
        let used = || unsafe { rusqlite::ffi::sqlite3_memory_used() };
        let before = used();
        // The statements a session prepared were allocated in the middle of its buffers:
        // freed, their pages can go back too (preparing them again costs microseconds).
        self.conn.flush_prepared_statement_cache();
        if let Err(e) = self.conn.release_memory() {
            log::debug!(
                "database {}: cannot release memory: {e}",
                self.path.display()
            );
        }
        log::debug!("SQLite memory: {before} bytes, {} after releasing", used());
    }

    /// This node's id.
    pub fn me(&self) -> &NodeId {
        &self.me
    }

    /// The database file, for messages.
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub(crate) fn sql_err(&self, e: rusqlite::Error) -> StoreError {
        StoreError::Sql {
            path: self.path.clone(),
            detail: e.to_string(),
        }
    }

    /// Classifies an error of the first statements: another process's lock, not a
    /// database, or damage.
    fn first_err(&self, e: rusqlite::Error) -> StoreError {
        use rusqlite::ErrorCode;
        let path = self.path.clone();
        match e.sqlite_error_code() {
            Some(ErrorCode::DatabaseBusy) | Some(ErrorCode::DatabaseLocked) => {
                StoreError::Locked { path }
            }
            Some(ErrorCode::NotADatabase) | Some(ErrorCode::DatabaseCorrupt) => {
                StoreError::Corrupt {
                    path,
                    detail: e.to_string(),
                }
            }
            _ => StoreError::Open {
                path,
                detail: e.to_string(),
            },
        }
    }

    fn check_and_lock(&mut self, file: bool) -> Result<(), StoreError> {
        let c = &self.conn;
        // No waiting on a lock: another holder means another process, which is an error.
        c.busy_timeout(std::time::Duration::ZERO)
            .map_err(|e| self.first_err(e))?;
        let version: u32 = c
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(|e| self.first_err(e))?;
        if version > SCHEMA {
            return Err(StoreError::Newer {
                path: self.path.clone(),
                found: version,
            });
        }
        let empty: bool = c
            .query_row("SELECT count(*) = 0 FROM sqlite_master", [], |r| r.get(0))
            .map_err(|e| self.first_err(e))?;
        if empty {
            // Only possible before the first table exists.
            c.pragma_update(None, "auto_vacuum", "INCREMENTAL")
                .map_err(|e| self.first_err(e))?;
        }
        if file {
            c.pragma_update(None, "locking_mode", "EXCLUSIVE")
                .map_err(|e| self.first_err(e))?;
            let mode: String = c
                .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
                .map_err(|e| self.first_err(e))?;
            if !mode.eq_ignore_ascii_case("wal") {
                return Err(StoreError::Open {
                    path: self.path.clone(),
                    detail: format!("cannot use a write-ahead log (journal mode {mode})"),
                });
            }
        }
        c.pragma_update(None, "synchronous", "NORMAL")
            .map_err(|e| self.first_err(e))?;
        c.pragma_update(None, "journal_size_limit", 4 * 1024 * 1024)
            .map_err(|e| self.first_err(e))?;
        // 1 MiB of page cache (SQLite's default is 2): scans and index pages read in path
        // order, and a Pi Zero has 512 MiB for everything.
        c.pragma_update(None, "cache_size", -1024)
            .map_err(|e| self.first_err(e))?;
        c.pragma_update(None, "foreign_keys", "ON")
            .map_err(|e| self.first_err(e))?;
        // Takes the exclusive lock now (it is held until the process ends), and proves the
        // file is writable.
        c.execute_batch("BEGIN IMMEDIATE; COMMIT;")
            .map_err(|e| self.first_err(e))?;
        if !empty {
            let check: String = c
                .query_row("PRAGMA quick_check", [], |r| r.get(0))
                .map_err(|e| self.first_err(e))?;
            if check != "ok" {
                return Err(StoreError::Corrupt {
                    path: self.path.clone(),
                    detail: check,
                });
            }
        }
        Ok(())
    }

    fn migrate(&mut self) -> Result<(), StoreError> {
        let version: u32 = self
            .conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(|e| self.sql_err(e))?;
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
            let next = i as u32 + 1;
            // The migration and the version bump commit together: a crash between two
            // migrations re-runs only the one that did not finish.
            let batch = format!("BEGIN; {sql}\nPRAGMA user_version = {next}; COMMIT;");
            if let Err(e) = self.conn.execute_batch(&batch) {
                let _ = self.conn.execute_batch("ROLLBACK");
                return Err(self.sql_err(e));
            }
            log::info!("database {}: schema {} applied", self.path.display(), next);
        }
        Ok(())
    }

    fn load_nodes(&mut self) -> Result<(), StoreError> {
        let mut stmt = self
            .conn
            .prepare("SELECT id, name FROM nodes")
            .map_err(|e| self.sql_err(e))?;
        let rows = stmt
            .query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?)))
            .map_err(|e| self.sql_err(e))?;
        let mut pairs = Vec::new();
        for row in rows {
            let (id, name) = row.map_err(|e| self.sql_err(e))?;
            // A name this build would not accept is left out of the maps: rows naming it
            // then fail to decode, which reports the damage.
            if let Ok(n) = NodeId::new(&name) {
                pairs.push((id, n));
            }
        }
        drop(stmt);
        for (id, n) in pairs {
            self.ids.insert(n.clone(), id);
            self.names.insert(id, n);
        }
        Ok(())
    }

    /// The row id of node `n`, numbering it on first use.
    pub(crate) fn node_id(&mut self, n: &NodeId) -> Result<i64, StoreError> {
        if let Some(&id) = self.ids.get(n) {
            return Ok(id);
        }
        self.conn
            .execute("INSERT INTO nodes (name) VALUES (?1)", params![n.as_str()])
            .map_err(|e| self.sql_err(e))?;
        let id = self.conn.last_insert_rowid();
        self.ids.insert(n.clone(), id);
        self.names.insert(id, n.clone());
        Ok(id)
    }

    pub(crate) fn node_name(&self, id: i64) -> Result<NodeId, StoreError> {
        self.names
            .get(&id)
            .cloned()
            .ok_or_else(|| StoreError::Corrupt {
                path: self.path.clone(),
                detail: format!("unknown node {id}"),
            })
    }

    /// A version vector as stored: (node row id u32 LE, counter u64 LE) pairs. Numbers the
    /// nodes it names that have no row id yet.
    pub(crate) fn encode_vv(&mut self, vv: &Vv) -> Result<Vec<u8>, StoreError> {
        for (n, _) in vv.pairs() {
            self.node_id(n)?;
        }
        encode_numbered(&self.ids, &self.path, vv)
    }

    pub(crate) fn decode_vv(&self, blob: &[u8]) -> Result<Vv, StoreError> {
        let corrupt = |detail: String| StoreError::Corrupt {
            path: self.path.clone(),
            detail,
        };
        if blob.len() % 12 != 0 {
            return Err(corrupt("a version vector of the wrong length".into()));
        }
        let mut pairs = Vec::with_capacity(blob.len() / 12);
        for c in blob.chunks_exact(12) {
            let id = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            let mut counter = [0u8; 8];
            counter.copy_from_slice(&c[4..]);
            pairs.push((self.node_name(i64::from(id))?, u64::from_le_bytes(counter)));
        }
        Vv::from_pairs(pairs).map_err(|e| corrupt(e.to_string()))
    }

    /// The id of storage `name`, created (with a fresh index id) on first use.
    pub fn storage(&mut self, name: &str) -> Result<StorageId, StoreError> {
        let found: Option<i64> = self
            .conn
            .query_row(
                "SELECT id FROM storages WHERE name = ?1",
                params![name],
                |r| r.get(0),
            )
            .optional()
            .map_err(|e| self.sql_err(e))?;
        if let Some(id) = found {
            return Ok(id);
        }
        let index_id = random_u63();
        self.conn
            .execute(
                "INSERT INTO storages (name, index_id) VALUES (?1, ?2)",
                params![name, index_id],
            )
            .map_err(|e| self.sql_err(e))?;
        Ok(self.conn.last_insert_rowid())
    }

    /// The guard of a storage: its marker id and the device of its root, as last seen, and
    /// whether the store holds any entry of it.
    pub fn guard(&self, storage: StorageId) -> Result<Guard, StoreError> {
        let (marker, dev): (Option<i64>, Option<i64>) = self
            .conn
            .query_row(
                "SELECT marker, dev FROM storages WHERE id = ?1",
                params![storage],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .map_err(|e| self.sql_err(e))?;
        let has_history: bool = self
            .conn
            .query_row(
                "SELECT EXISTS (SELECT 1 FROM entries WHERE storage = ?1 AND deleted = 0)",
                params![storage],
                |r| r.get(0),
            )
            .map_err(|e| self.sql_err(e))?;
        Ok(Guard {
            marker: marker.map(|m| m as u64),
            dev: dev.map(|d| d as u64),
            has_history,
        })
    }

    pub fn set_guard(
        &mut self,
        storage: StorageId,
        marker: u64,
        dev: u64,
    ) -> Result<(), StoreError> {
        self.conn
            .execute(
                "UPDATE storages SET marker = ?2, dev = ?3 WHERE id = ?1",
                params![storage, marker as i64, dev as i64],
            )
            .map_err(|e| self.sql_err(e))?;
        Ok(())
    }

    /// The index id and last sequence number of this node's index of `storage`.
    pub fn local_state(&self, storage: StorageId) -> Result<(u64, u64), StoreError> {
        self.conn
            .query_row(
                "SELECT index_id, seq FROM storages WHERE id = ?1",
                params![storage],
                |r| Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64)),
            )
            .map_err(|e| self.sql_err(e))
    }

    /// The files this node has in `storage` and their bytes, as its last scan or session
    /// recorded them (what `status` shows).
    pub fn totals(&self, storage: StorageId) -> Result<(u64, u64), StoreError> {
        self.conn
            .query_row(
                "SELECT count(*), coalesce(sum(size), 0) FROM entries \
                 WHERE storage = ?1 AND deleted = 0 AND kind = ?2",
                params![storage, kind_code(EntryKind::File)],
                |r| Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64)),
            )
            .map_err(|e| self.sql_err(e))
    }

    /// Size of the database file and its log, in bytes (for reports).
    pub fn size_on_disk(&self) -> u64 {
        let mut total = 0;
        for suffix in ["", "-wal"] {
            let mut p = self.path.clone().into_os_string();
            p.push(suffix);
            total += std::fs::metadata(&p).map_or(0, |m| m.len());
        }
        total
    }

    /// Gives free pages back to the file system a little at a time (never a full VACUUM).
    pub fn trim(&self) {
        let _ = self.conn.execute_batch("PRAGMA incremental_vacuum(256)");
    }
}

/// What the store remembers of a storage's root (the mass-deletion guard).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Guard {
    pub marker: Option<u64>,
    pub dev: Option<u64>,
    /// The store knows live entries of this storage: an empty root would delete them.
    pub has_history: bool,
}

/// A row of `entries` or `remote`, read back into an [`Entry`].
pub(crate) struct RawEntry {
    pub path: String,
    pub kind: i64,
    pub deleted: bool,
    pub size: i64,
    pub mtime: i64,
    pub mode: i64,
    pub hash: Option<Vec<u8>>,
    pub vv: Vec<u8>,
    pub by: i64,
    pub link: Option<String>,
}

impl Store {
    pub(crate) fn entry_of(&self, r: RawEntry) -> Result<Entry, StoreError> {
        let corrupt = |detail: String| StoreError::Corrupt {
            path: self.path.clone(),
            detail,
        };
        let path =
            RelPath::from_string(r.path).map_err(|e| corrupt(format!("a stored path: {e}")))?;
        let kind = match r.kind {
            0 => EntryKind::File,
            1 => EntryKind::Dir,
            k => return Err(corrupt(format!("entry kind {k}"))),
        };
        let meta = match kind {
            EntryKind::File => FileMeta::file(path, r.size as u64, r.mtime, r.mode as u32),
            EntryKind::Dir => FileMeta::dir(path, r.mode as u32),
        };
        let hash = match r.hash {
            Some(h) => Some(
                <[u8; 32]>::try_from(h.as_slice()).map_err(|_| corrupt("a stored hash".into()))?,
            ),
            None => None,
        };
        let link = match r.link {
            Some(l) => Some(RelPath::from_string(l).map_err(|e| corrupt(format!("a link: {e}")))?),
            None => None,
        };
        Ok(Entry {
            meta,
            deleted: r.deleted,
            hash,
            vv: self.decode_vv(&r.vv)?,
            by: self.node_name(r.by)?,
            link,
        })
    }
}

/// A kind as stored.
pub(crate) fn kind_code(k: EntryKind) -> i64 {
    match k {
        EntryKind::File => 0,
        EntryKind::Dir => 1,
    }
}

/// A random id (a storage's marker).
pub fn random_id() -> u64 {
    random_u63() as u64
}

/// A random index id that fits SQLite's signed integers: from the kernel, so two databases
/// made at the same moment differ.
pub(crate) fn random_u63() -> i64 {
    let mut b = [0u8; 8];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        use std::io::Read;
        let _ = f.read_exact(&mut b);
    }
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    ((u64::from_le_bytes(b) ^ t) >> 1) as i64 | 1
}

/// The end of the range of paths below `dir`: every `dir/...` is `> dir/` and `< dir0`
/// ('0' follows '/' in byte order).
pub(crate) fn below(dir: &RelPath) -> (String, String) {
    (format!("{dir}/"), format!("{dir}0"))
}

#[cfg(test)]
mod tests;

/// The stored form of `vv` ([`Store::encode_vv`]) when every node it names is numbered in
/// `ids` already: for callers that hold the connection in a transaction.
pub(crate) fn encode_numbered(
    ids: &HashMap<NodeId, i64>,
    path: &Path,
    vv: &Vv,
) -> Result<Vec<u8>, StoreError> {
    let mut out = Vec::with_capacity(vv.pairs().len() * 12);
    for (n, c) in vv.pairs() {
        let id = *ids.get(n).ok_or_else(|| StoreError::Corrupt {
            path: path.to_owned(),
            detail: format!("node {n} was not numbered"),
        })?;
        out.extend_from_slice(&(id as u32).to_le_bytes());
        out.extend_from_slice(&c.to_le_bytes());
    }
    Ok(out)
}
