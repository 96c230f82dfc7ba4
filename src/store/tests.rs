//! The store's tests on in-memory and real database files: opening (new, damaged, newer,
//! locked), scans recording new, edited, deleted and moved entries, compact directory moves
//! in a node's changes and in a leader's copy of them, the streamed diff, what a session
//! records, and tombstone expiry.

use std::collections::HashMap;

use super::*;
use crate::history::Record;
use crate::model::FileMeta;

fn n(s: &str) -> NodeId {
    NodeId::new(s).unwrap()
}

fn p(s: &str) -> RelPath {
    RelPath::new(s).unwrap()
}

fn file(path: &str, size: u64, mtime: i64, ino: u64) -> Found {
    Found {
        meta: FileMeta::file(p(path), size, mtime, 0o644),
        ino,
        ctime_ns: mtime,
    }
}

fn dir(path: &str, ino: u64) -> Found {
    Found {
        meta: FileMeta::dir(p(path), 0o755),
        ino,
        ctime_ns: 0,
    }
}

/// A hasher whose content is the path's size-independent name plus a salt per call count.
fn hasher(content: &HashMap<String, u8>) -> impl FnMut(&RelPath) -> std::io::Result<[u8; 32]> + '_ {
    move |path: &RelPath| Ok([*content.get(path.as_str()).unwrap_or(&0); 32])
}

fn sorted(mut v: Vec<Found>) -> Vec<Found> {
    v.sort_by(|a, b| a.meta.path.cmp(&b.meta.path));
    v
}

fn live(store: &Store, s: StorageId) -> Vec<String> {
    let mut out = Vec::new();
    store
        .diff(s, &[DiffSource::Local], &mut |here, _| {
            if let Some(e) = here[0].filter(|e| e.is_live()) {
                out.push(e.meta.path.to_string());
            }
        })
        .unwrap();
    out
}

#[test]
fn a_new_database_is_created_and_reopened() {
    let dir = std::env::temp_dir().join(format!("ic-store-new-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let path = dir.join("sub/ic.db");
    {
        let mut st = Store::open(&path, &n("a")).unwrap();
        let s = st.storage("docs").unwrap();
        let c = HashMap::new();
        st.record_scan(s, vec![file("x", 1, 1, 1)], 100, &mut hasher(&c))
            .unwrap();
    }
    let mut st = Store::open(&path, &n("a")).unwrap();
    let s = st.storage("docs").unwrap();
    assert_eq!(live(&st, s), vec!["x"]);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_damaged_newer_or_busy_database_is_an_error_naming_the_file() {
    let dir = std::env::temp_dir().join(format!("ic-store-bad-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let garbage = dir.join("garbage.db");
    std::fs::write(&garbage, vec![0x5a; 8192]).unwrap();
    let e = Store::open(&garbage, &n("a")).err().unwrap();
    assert!(matches!(e, StoreError::Corrupt { .. }), "{e:?}");
    assert!(e.to_string().contains("garbage.db"), "{e}");
    assert_eq!(
        std::fs::read(&garbage).unwrap(),
        vec![0x5a; 8192],
        "left as it was"
    );

    let newer = dir.join("newer.db");
    {
        let c = rusqlite::Connection::open(&newer).unwrap();
        c.execute_batch("CREATE TABLE t (x); PRAGMA user_version = 99;")
            .unwrap();
    }
    let e = Store::open(&newer, &n("a")).err().unwrap();
    assert_eq!(
        e,
        StoreError::Newer {
            path: newer.clone(),
            found: 99
        }
    );

    let busy = dir.join("busy.db");
    let first = Store::open(&busy, &n("a")).unwrap();
    let e = Store::open(&busy, &n("a")).err().unwrap();
    assert!(matches!(e, StoreError::Locked { .. }), "{e:?}");
    assert!(e.to_string().contains("busy.db"));
    drop(first);
    Store::open(&busy, &n("a")).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn scans_record_new_edited_and_deleted_entries_with_new_versions() {
    let me = n("a");
    let mut st = Store::open_in_memory(&me).unwrap();
    let s = st.storage("docs").unwrap();
    let mut c = HashMap::new();
    c.insert("f".to_owned(), 1);
    let first = st
        .record_scan(
            s,
            vec![file("f", 3, 10, 7), file("g", 1, 1, 8)],
            100,
            &mut hasher(&c),
        )
        .unwrap();
    assert_eq!((first.changes.new, first.count), (2, 2));
    let v1 = st.local(s, &p("f")).unwrap().unwrap();
    assert_eq!(v1.vv.get(&me), 100);
    // Unchanged: nothing is read, nothing is recorded.
    let mut calls = 0;
    let again = st
        .record_scan(
            s,
            vec![file("f", 3, 10, 7), file("g", 1, 1, 8)],
            200,
            &mut |_| {
                calls += 1;
                Ok([0; 32])
            },
        )
        .unwrap();
    assert_eq!(calls, 0);
    assert_eq!(again.changes, ScanChanges::default());
    assert_eq!(again.seq, first.seq);
    assert_eq!(again.digest, first.digest);
    // An edit of f and the deletion of g (made while the node was off).
    c.insert("f".to_owned(), 2);
    let third = st
        .record_scan(s, vec![file("f", 4, 20, 7)], 300, &mut hasher(&c))
        .unwrap();
    assert_eq!((third.changes.modified, third.changes.deleted), (1, 1));
    let v2 = st.local(s, &p("f")).unwrap().unwrap();
    assert!(v2.vv.dominates(&v1.vv) && v2.vv != v1.vv);
    let g = st.local(s, &p("g")).unwrap().unwrap();
    assert!(g.deleted);
    assert_ne!(third.digest, first.digest);
    // A touch with the same content: a new mtime, the same version.
    st.record_scan(s, vec![file("f", 4, 25, 7)], 400, &mut hasher(&c))
        .unwrap();
    let v3 = st.local(s, &p("f")).unwrap().unwrap();
    assert_eq!(v3.vv, v2.vv);
    assert_eq!(v3.meta.mtime_ns, 25);
    // Made again after its deletion: the new version follows the tombstone.
    st.record_scan(
        s,
        vec![file("f", 4, 25, 7), file("g", 9, 9, 9)],
        500,
        &mut hasher(&c),
    )
    .unwrap();
    let g2 = st.local(s, &p("g")).unwrap().unwrap();
    assert!(g2.is_live() && g2.vv.dominates(&g.vv) && g2.vv != g.vv);
}

#[test]
fn what_a_scan_could_not_look_at_is_not_deleted() {
    let me = n("a");
    let mut st = Store::open_in_memory(&me).unwrap();
    let s = st.storage("docs").unwrap();
    let mut c = HashMap::new();
    for f in ["d/f", "d/e/g", "dx", "top"] {
        c.insert(f.to_owned(), 1);
    }
    let all = sorted(vec![
        dir("d", 1),
        file("d/f", 1, 1, 2),
        dir("d/e", 3),
        file("d/e/g", 1, 1, 4),
        file("dx", 1, 1, 5),
        file("top", 1, 1, 6),
    ]);
    st.record_scan(s, all, 100, &mut hasher(&c)).unwrap();
    // `d` cannot be listed (chmod 000) and `top` cannot be read: left out of the scan.
    let r = st
        .record_scan_with(
            s,
            vec![file("dx", 1, 1, 5)],
            &[p("d"), p("top")],
            200,
            &mut hasher(&c),
        )
        .unwrap();
    assert_eq!(r.changes.deleted, 0, "{:?}", r.changes);
    assert_eq!(live(&st, s), ["d", "d/e", "d/e/g", "d/f", "dx", "top"]);
    // Readable again and really gone: deleted then.
    let r = st
        .record_scan(s, vec![file("dx", 1, 1, 5)], 300, &mut hasher(&c))
        .unwrap();
    assert_eq!(r.changes.deleted, 5);
    assert_eq!(live(&st, s), ["dx"]);
}

#[test]
fn a_renamed_file_is_a_move_and_is_not_read() {
    let me = n("a");
    let mut st = Store::open_in_memory(&me).unwrap();
    let s = st.storage("docs").unwrap();
    let c = HashMap::new();
    st.record_scan(s, vec![file("old", 5, 50, 42)], 100, &mut hasher(&c))
        .unwrap();
    let mut calls = 0;
    let r = st
        .record_scan(s, vec![file("new", 5, 50, 42)], 200, &mut |_| {
            calls += 1;
            Ok([0; 32])
        })
        .unwrap();
    assert_eq!(calls, 0, "a move is known by its inode");
    assert_eq!(
        (r.changes.moved, r.changes.new, r.changes.deleted),
        (1, 0, 0)
    );
    let old = st.local(s, &p("old")).unwrap().unwrap();
    let new = st.local(s, &p("new")).unwrap().unwrap();
    assert!(old.deleted && new.is_live());
    assert_eq!(old.link, Some(p("new")));
    assert_eq!(new.link, Some(p("old")));
    assert_eq!(old.vv, new.vv);
}

/// Copied to a new name (new inode, new mtime), then the original deleted: the content is
/// what tells it is a move, and only the file of a matching size is read.
#[test]
fn a_copy_then_delete_is_a_move_by_content() {
    let me = n("a");
    let mut st = Store::open_in_memory(&me).unwrap();
    let s = st.storage("docs").unwrap();
    let c: HashMap<String, u8> = [
        ("old".to_owned(), 7),
        ("new".to_owned(), 7),
        ("other".to_owned(), 9),
    ]
    .into_iter()
    .collect();
    st.record_scan(s, vec![file("old", 5, 50, 42)], 100, &mut hasher(&c))
        .unwrap();
    let r = st
        .record_scan(
            s,
            vec![file("new", 5, 60, 43), file("other", 6, 60, 44)],
            200,
            &mut hasher(&c),
        )
        .unwrap();
    assert_eq!(
        (r.changes.moved, r.changes.new, r.changes.deleted),
        (1, 1, 0),
        "{:?}",
        r.changes
    );
    assert_eq!(r.changes.hashed, 5 + 6, "each new file read once");
    let old = st.local(s, &p("old")).unwrap().unwrap();
    let new = st.local(s, &p("new")).unwrap().unwrap();
    assert!(old.deleted && new.is_live());
    assert_eq!(old.link, Some(p("new")));
    assert_eq!(new.link, Some(p("old")));
}

fn tree(root: &str, files: usize, base_ino: u64) -> Vec<Found> {
    let mut v = vec![dir(root, base_ino)];
    for i in 0..files {
        v.push(file(
            &format!("{root}/f{i:04}"),
            10,
            i as i64,
            base_ino + 1 + i as u64,
        ));
    }
    v
}

#[test]
fn a_renamed_directory_is_one_move_in_the_changes_a_leader_gets() {
    let me = n("a");
    let mut st = Store::open_in_memory(&me).unwrap();
    let s = st.storage("docs").unwrap();
    let c = HashMap::new();
    let before = st
        .record_scan(s, sorted(tree("photos", 1000, 1000)), 100, &mut hasher(&c))
        .unwrap();
    let mut moved = tree("pictures", 1000, 1000);
    moved.push(file("other", 1, 1, 9));
    let after = st
        .record_scan(s, sorted(moved), 200, &mut hasher(&c))
        .unwrap();
    assert_eq!(after.changes.dir_moves, 1);
    assert_eq!(after.changes.new, 1);
    // A leader whose copy is at `before` gets one move and the new file.
    let mut got = Vec::new();
    let seq = st
        .local_since(s, before.seq, &mut |page| got.extend(page))
        .unwrap();
    assert_eq!(seq, after.seq);
    assert_eq!(got.len(), 2, "{got:?}");
    let moves: Vec<&Record> = got
        .iter()
        .filter(|r| matches!(r, Record::MovePrefix { from, to, .. } if from.as_str() == "photos" && to.as_str() == "pictures"))
        .collect();
    assert_eq!(moves.len(), 1, "{got:?}");
    // A leader with an older copy (or none) gets every row.
    let mut all = Vec::new();
    st.local_since(s, 0, &mut |page| all.extend(page)).unwrap();
    assert_eq!(all.len(), 2003, "1001 tombstones, 1001 moved, 1 new");

    // The leader applies both to its copies: they agree with the node's own index.
    let mut leader = Store::open_in_memory(&n("b")).unwrap();
    let ls = leader.storage("docs").unwrap();
    let mut first = Vec::new();
    st.local_since(s, 0, &mut |_| {}).unwrap();
    let mut st0 = Store::open_in_memory(&me).unwrap();
    let s0 = st0.storage("docs").unwrap();
    st0.record_scan(s0, sorted(tree("photos", 1000, 1000)), 100, &mut hasher(&c))
        .unwrap();
    st0.local_since(s0, 0, &mut |page| first.extend(page))
        .unwrap();
    leader.remote_begin(ls, &me, true).unwrap();
    leader.remote_apply(ls, &me, &first).unwrap();
    leader.remote_end(ls, &me, 1, before.seq).unwrap();
    leader.remote_begin(ls, &me, false).unwrap();
    leader.remote_apply(ls, &me, &got).unwrap();
    leader.remote_end(ls, &me, 1, after.seq).unwrap();
    let mut theirs = Vec::new();
    leader
        .diff(ls, &[DiffSource::Remote(me.clone())], &mut |here, _| {
            theirs.push(here[0].cloned())
        })
        .unwrap();
    let mut ours = Vec::new();
    st.diff(s, &[DiffSource::Local], &mut |here, _| {
        ours.push(here[0].cloned())
    })
    .unwrap();
    // Hashes and stat-derived fields aside, the copy is the index.
    let key = |v: &Vec<Option<Entry>>| -> Vec<(String, bool, Vv)> {
        v.iter()
            .flatten()
            .map(|e| (e.meta.path.to_string(), e.deleted, e.vv.clone()))
            .collect()
    };
    assert_eq!(key(&theirs), key(&ours));
}

#[test]
fn a_replayed_directory_move_is_recorded_as_one_move_too() {
    let me = n("x");
    let mut st = Store::open_in_memory(&me).unwrap();
    let s = st.storage("docs").unwrap();
    let c = HashMap::new();
    let before = st
        .record_scan(s, sorted(tree("a", 20, 100)), 100, &mut hasher(&c))
        .unwrap();
    st.record(
        s,
        vec![Applied::MovePrefix {
            from: p("a"),
            to: p("b"),
            by: n("r"),
            counter: 500,
            stats: HashMap::new(),
        }],
        600,
    )
    .unwrap();
    let b0 = st.local(s, &p("b/f0000")).unwrap().unwrap();
    assert_eq!(b0.vv.get(&n("r")), 500);
    assert!(st.local(s, &p("a/f0000")).unwrap().unwrap().deleted);
    let mut got = Vec::new();
    st.local_since(s, before.seq, &mut |page| got.extend(page))
        .unwrap();
    assert_eq!(got.len(), 1, "{got:?}");
}

#[test]
fn the_diff_merges_indexes_by_path_and_looks_things_up() {
    let mut st = Store::open_in_memory(&n("a")).unwrap();
    let s = st.storage("docs").unwrap();
    let c = HashMap::new();
    st.record_scan(
        s,
        vec![file("a", 1, 1, 1), file("c", 1, 1, 2)],
        10,
        &mut hasher(&c),
    )
    .unwrap();
    let mut b = Store::open_in_memory(&n("b")).unwrap();
    let bs = b.storage("docs").unwrap();
    b.record_scan(
        bs,
        vec![file("b", 1, 1, 1), file("c", 2, 2, 2)],
        10,
        &mut hasher(&c),
    )
    .unwrap();
    let mut recs = Vec::new();
    b.local_since(bs, 0, &mut |p| recs.extend(p)).unwrap();
    st.remote_begin(s, &n("b"), true).unwrap();
    st.remote_apply(s, &n("b"), &recs).unwrap();
    st.remote_end(s, &n("b"), 1, 2).unwrap();
    let mut seen = Vec::new();
    st.diff(
        s,
        &[DiffSource::Local, DiffSource::Remote(n("b"))],
        &mut |here, view| {
            let path = here.iter().flatten().next().unwrap().meta.path.clone();
            seen.push((
                path.to_string(),
                here[0].is_some(),
                here[1].is_some(),
                view.taken(&p("c")),
                view.entry(1, &p("b")).is_some(),
            ));
        },
    )
    .unwrap();
    assert_eq!(
        seen,
        vec![
            ("a".into(), true, false, true, true),
            ("b".into(), false, true, true, true),
            ("c".into(), true, true, true, true),
        ]
    );
    assert_eq!(st.remote_state(s, &n("b")).unwrap(), Some((1, 2)));
    st.remote_forget(s, &n("b")).unwrap();
    assert_eq!(st.remote_state(s, &n("b")).unwrap(), None);
}

#[test]
fn tombstones_expire_only_after_the_retention_and_once_peers_saw_the_deletion() {
    let me = n("a");
    let mut st = Store::open_in_memory(&me).unwrap();
    let s = st.storage("docs").unwrap();
    let c = HashMap::new();
    st.record_scan(
        s,
        vec![file("x", 1, 1, 1), file("y", 1, 1, 2)],
        10,
        &mut hasher(&c),
    )
    .unwrap();
    // Deleted at "now" 100 (the changed column is the record time, 100).
    st.record_scan(s, vec![], 100, &mut hasher(&c)).unwrap();
    // A peer's copy still shows y alive.
    let y = Entry {
        meta: FileMeta::file(p("y"), 1, 1, 0o644),
        deleted: false,
        hash: None,
        vv: Vv::default().bump(&n("b"), 5),
        by: n("b"),
        link: None,
    };
    st.remote_apply(s, &n("b"), &[Record::Entry(y)]).unwrap();
    assert_eq!(st.purge_tombstones(s, 150, 100).unwrap(), 0, "too young");
    assert_eq!(st.purge_tombstones(s, 1_000, 100).unwrap(), 1, "x only");
    assert!(st.local(s, &p("x")).unwrap().is_none());
    assert!(st.local(s, &p("y")).unwrap().unwrap().deleted);
}

#[test]
fn an_emptied_scan_without_history_deletes_nothing() {
    let mut st = Store::open_in_memory(&n("a")).unwrap();
    let s = st.storage("docs").unwrap();
    let c = HashMap::new();
    let r = st.record_scan(s, vec![], 10, &mut hasher(&c)).unwrap();
    assert_eq!(r.changes, ScanChanges::default());
    assert!(!st.guard(s).unwrap().has_history);
}
