-- Schema 1: the history of every storage of this node, and the indexes its peers reported.
-- Paths are TEXT compared as bytes (BINARY collation), the order of RelPath. Version vectors
-- are BLOBs of (node row id: u32 LE, counter: u64 LE) pairs sorted by node id (see
-- store/mod.rs). Nothing here is ever deleted in bulk: a lost row only makes the next scan
-- see a change, which the version vectors then resolve without losing a file.

-- Node ids named in version vectors, numbered once.
CREATE TABLE nodes (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE
) STRICT;

-- One row per storage: its index id (new whenever this database is new, so that peers'
-- copies of this node's index are started over), its last local sequence number, and the
-- guard against an unmounted or replaced root.
CREATE TABLE storages (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    index_id INTEGER NOT NULL,
    seq INTEGER NOT NULL DEFAULT 0,
    marker INTEGER,
    dev INTEGER
) STRICT;

-- This node's index: every path it has, and every path it had (a tombstone, deleted = 1),
-- with the version vector of that state. `seq` orders local changes (what a peer asks for
-- since its last copy); `ino` and `ctime` let a scan skip hashing a file that did not change;
-- `changed` (seconds) dates a tombstone for its expiry; `link` is the other end of a move.
CREATE TABLE entries (
    storage INTEGER NOT NULL REFERENCES storages(id),
    path TEXT NOT NULL,
    kind INTEGER NOT NULL,
    deleted INTEGER NOT NULL,
    size INTEGER NOT NULL,
    mtime INTEGER NOT NULL,
    mode INTEGER NOT NULL,
    hash BLOB,
    vv BLOB NOT NULL,
    by INTEGER NOT NULL REFERENCES nodes(id),
    seq INTEGER NOT NULL,
    ino INTEGER NOT NULL DEFAULT 0,
    ctime INTEGER NOT NULL DEFAULT 0,
    changed INTEGER NOT NULL,
    link TEXT,
    PRIMARY KEY (storage, path)
) STRICT, WITHOUT ROWID;
CREATE INDEX entries_by_seq ON entries (storage, seq);

-- Directory moves made (or replayed) here, so that a peer that asks for this node's changes
-- gets one line instead of every file below: the rows a move wrote all carry its `seq`;
-- `before` is the largest sequence number below `from` before the move (a peer whose copy
-- is older than that gets the rows themselves).
CREATE TABLE moves (
    storage INTEGER NOT NULL REFERENCES storages(id),
    seq INTEGER NOT NULL,
    from_path TEXT NOT NULL,
    to_path TEXT NOT NULL,
    by INTEGER NOT NULL REFERENCES nodes(id),
    counter INTEGER NOT NULL,
    before INTEGER NOT NULL,
    PRIMARY KEY (storage, seq)
) STRICT;

-- Peers' indexes as they last reported them (this node uses them when it leads), and how
-- far each copy goes: the peer's index id and sequence number.
CREATE TABLE remote (
    storage INTEGER NOT NULL REFERENCES storages(id),
    node INTEGER NOT NULL REFERENCES nodes(id),
    path TEXT NOT NULL,
    kind INTEGER NOT NULL,
    deleted INTEGER NOT NULL,
    size INTEGER NOT NULL,
    mtime INTEGER NOT NULL,
    mode INTEGER NOT NULL,
    hash BLOB,
    vv BLOB NOT NULL,
    by INTEGER NOT NULL REFERENCES nodes(id),
    link TEXT,
    PRIMARY KEY (storage, node, path)
) STRICT, WITHOUT ROWID;

CREATE TABLE remote_state (
    storage INTEGER NOT NULL REFERENCES storages(id),
    node INTEGER NOT NULL REFERENCES nodes(id),
    index_id INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    PRIMARY KEY (storage, node)
) STRICT;
