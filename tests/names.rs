//! Names that differ only in case (`A.txt`, `a.txt`) or in Unicode normalization (`café`
//! as NFC, one code point, and as NFD, `e` plus a combining accent) are different files on
//! Linux, and two real nodes keep them apart: all four everywhere, an edit of one never
//! touching its twin. A receiver whose file system folds case (FAT, as on SD cards) can hold
//! only one of `A.txt` and `a.txt`: it keeps one intact, reports the other as not received,
//! never mixes them, and the sender loses nothing.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic in a test is a failed test

mod common;

use std::collections::BTreeMap;

use common::mount::Mount;
use common::{
    assert_exit, manifest, oneshot_within, pair_configs, show, Daemon, TestDir, PATIENCE,
};

const NFC: &str = "caf\u{e9}.txt";
const NFD: &str = "cafe\u{301}.txt";

/// The four twins with contents of different lengths, so no two can be taken for each other.
fn twins(dir: &TestDir, root: &str) {
    dir.write(&format!("{root}/A.txt"), b"upper case A\n");
    dir.write(&format!("{root}/a.txt"), b"lower case a, longer\n");
    dir.write(&format!("{root}/{NFC}"), b"composed e-acute\n");
    dir.write(
        &format!("{root}/{NFD}"),
        b"decomposed e plus combining acute\n",
    );
    dir.write(&format!("{root}/d/A.txt"), b"nested upper\n");
    dir.write(&format!("{root}/d/a.txt"), b"nested lower, longer\n");
}

#[test]
fn names_differing_in_case_or_normalization_stay_apart() {
    let dir = TestDir::new("names");
    let (a, b) = pair_configs(&dir, "names");
    twins(&dir, "a");
    let a_cfg = a.write(&dir.mkdir("cfg-a"));
    let daemon = Daemon::start(&b.write(&dir.mkdir("cfg-b")));

    let out = oneshot_within(&a_cfg, PATIENCE);
    assert_exit(&out, 0, &daemon);
    let a_first = manifest(&dir.join("a"));
    assert_eq!(a_first.len(), 7, "{a_first:?}");
    assert_eq!(manifest(&dir.join("b")), a_first, "{}", daemon.log());

    // One of each pair changes on a, the other of each pair on b.
    dir.write("a/A.txt", b"upper case A, edited on a\n");
    dir.write(&format!("a/{NFC}"), b"composed, edited on a\n");
    dir.write("b/d/a.txt", b"nested lower, edited on b\n");
    dir.write(&format!("b/{NFD}"), b"decomposed, edited on b\n");
    let out = oneshot_within(&a_cfg, PATIENCE);
    assert_exit(&out, 0, &daemon);
    let want: BTreeMap<&str, &[u8]> = BTreeMap::from([
        ("A.txt", &b"upper case A, edited on a\n"[..]),
        ("a.txt", b"lower case a, longer\n"),
        (NFC, b"composed, edited on a\n"),
        (NFD, b"decomposed, edited on b\n"),
        ("d/A.txt", b"nested upper\n"),
        ("d/a.txt", b"nested lower, edited on b\n"),
    ]);
    for root in ["a", "b"] {
        for (name, content) in &want {
            let got = std::fs::read(dir.join(&format!("{root}/{name}"))).unwrap();
            assert_eq!(
                got,
                *content,
                "{root}/{name} ({:?}):\n{}",
                name.as_bytes(),
                daemon.log()
            );
        }
        assert_eq!(manifest(&dir.join(root)).len(), 7, "{root} has other files");
    }
}

/// What happens today on a receiver that folds case: `A.txt` and `a.txt` are one name on
/// b's FAT storage. b must end with exactly one of them, holding one of a's two contents
/// whole; the other is reported as not received; a is never changed, in this run nor the
/// next, and other files arrive.
#[test]
fn a_case_folding_receiver_keeps_one_twin_whole_and_the_sender_loses_nothing() {
    let dir = TestDir::new("names-fat");
    let (a, b) = pair_configs(&dir, "names-fat");
    let b_root = dir.join("b");
    let _fat = match Mount::fat(&b_root, &dir.join("b.img")) {
        Ok(m) => m,
        Err(why) => {
            eprintln!("skipped: {why}");
            return;
        }
    };
    dir.write("a/A.txt", b"upper case A\n");
    dir.write("a/a.txt", b"lower case a, longer\n");
    dir.write("a/other.txt", b"other\n");
    dir.write(&format!("a/{NFC}"), b"composed e-acute\n");
    dir.write(&format!("a/{NFD}"), b"decomposed e plus combining acute\n");
    let a_before = manifest(&dir.join("a"));
    let a_cfg = a.write(&dir.mkdir("cfg-a"));
    let daemon = Daemon::start(&b.write(&dir.mkdir("cfg-b")));

    for run in ["first", "second", "third"] {
        let out = oneshot_within(&a_cfg, PATIENCE);
        let text = show(&out);
        eprintln!("{run} run:\n{text}");
        assert_eq!(
            manifest(&dir.join("a")),
            a_before,
            "the {run} run changed a"
        );
        let b_now = manifest(&b_root);
        assert_eq!(
            b_now.get("other.txt"),
            a_before.get("other.txt"),
            "{text}\n{}",
            daemon.log()
        );
        // The listing shows one of the two, with one of the two contents, whole.
        let twins: Vec<_> = b_now
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case("a.txt"))
            .collect();
        assert_eq!(twins.len(), 1, "{b_now:?}\n{}", daemon.log());
        // FAT does not normalize: both spellings of café may be there; each whole if so.
        for n in [NFC, NFD] {
            if let Some(c) = b_now.get(n) {
                assert_eq!(
                    Some(c),
                    a_before.get(n),
                    "b's {n:?} is not a's:\n{}",
                    daemon.log()
                );
            }
        }
        let (name, content) = twins[0];
        assert!(
            Some(content) == a_before.get("A.txt") || Some(content) == a_before.get("a.txt"),
            "b's {name} is neither of a's versions: {content}\n{}",
            daemon.log()
        );
        assert!(
            !b_now.keys().any(|k| k.contains(".iron-carrier.tmp")),
            "a temporary file was left behind: {b_now:?}"
        );
        // The twin that could not be stored is named in b's log as such, and the run
        // fails: the two sides differ, and the user should hear it.
        let refused = |l: &&str| l.contains("cannot store") && l.contains("(it folds case)");
        assert!(
            daemon.log().lines().filter(refused).count() >= 1,
            "b does not say the other twin cannot be stored:\n{}",
            daemon.log()
        );
        assert_eq!(out.status.code(), Some(1), "{text}");
        eprintln!(
            "{run} run: exit {:?}, {} bytes on the wire",
            out.status.code(),
            common::wire_total(&out)
        );
    }
    eprintln!("receiver's log:\n{}", daemon.log());
}
