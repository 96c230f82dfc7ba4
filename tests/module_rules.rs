//! The layering rules of `src/`, checked from the source text (in the spirit of
//! `module_docs.rs`): thread modules never import each other except through a thread's
//! `handle`; modules below the threads import no thread, nor the wiring above them; the
//! top-level modules import each other without a circle; the history rules are pure; and
//! the sans-I/O core of `sync` touches no file, socket, thread or clock. Each failure names the file and the import.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic in a test is a failed test

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Modules that are a thread of their own, and the one submodule other threads may import
/// from each. (`control` is not one: the control socket is served by `net`, and the
/// top-level `control` module is its format and client, below the threads.)
const THREADS: [&str; 4] = ["net", "sync", "watch", "mdns"];
const HANDLE: &str = "handle";
/// Modules above the threads: the command line and the wiring.
const ABOVE: [&str; 3] = ["cli", "daemon", "main"];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read src") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The source without comments, string and char literals (so a doc that mentions
/// `crate::net` is no import).
fn code_only(text: &str) -> String {
    let b = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'/' if b.get(i + 1) == Some(&b'/') => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                i += 2;
                while i + 1 < b.len() && !(b[i] == b'*' && b[i + 1] == b'/') {
                    i += 1;
                }
                i += 2;
            }
            b'"' => {
                i += 1;
                while i < b.len() && b[i] != b'"' {
                    if b[i] == b'\\' {
                        i += 1;
                    }
                    i += 1;
                }
                i += 1;
                out.push_str("\"\"");
            }
            b'\'' if b.get(i + 2) == Some(&b'\'') || b.get(i + 1) == Some(&b'\\') => {
                // A char literal ('x' or '\n'); a lifetime has no closing quote.
                i += 1;
                while i < b.len() && b[i] != b'\'' {
                    if b[i] == b'\\' {
                        i += 1;
                    }
                    i += 1;
                }
                i += 1;
            }
            c => {
                out.push(c as char);
                i += 1;
            }
        }
    }
    out
}

/// Every `crate::` path the code names, as its segments: `use crate::{a::b, c}` gives
/// `[a, b]` and `[c]`.
fn crate_paths(code: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let mut rest = code;
    while let Some(at) = rest.find("crate::") {
        let before = rest[..at].chars().last();
        rest = &rest[at + "crate::".len()..];
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue;
        }
        expand(rest, Vec::new(), &mut out);
    }
    out
}

/// Reads one path (or a brace group of paths) at the start of `s`, prefixed by `prefix`.
fn expand(s: &str, prefix: Vec<String>, out: &mut Vec<Vec<String>>) {
    let s = s.trim_start();
    if let Some(inner) = s.strip_prefix('{') {
        let mut depth = 0;
        let mut start = 0;
        for (i, c) in inner.char_indices() {
            match c {
                '{' => depth += 1,
                '}' if depth == 0 => {
                    expand(&inner[start..i], prefix.clone(), out);
                    return;
                }
                '}' => depth -= 1,
                ',' if depth == 0 => {
                    expand(&inner[start..i], prefix.clone(), out);
                    start = i + 1;
                }
                _ => {}
            }
        }
        return;
    }
    let ident: String = s
        .chars()
        .take_while(|c| c.is_alphanumeric() || *c == '_')
        .collect();
    if ident.is_empty() {
        if !prefix.is_empty() {
            out.push(prefix);
        }
        return;
    }
    let mut path = prefix;
    path.push(ident.clone());
    match s[ident.len()..].strip_prefix("::") {
        Some(next) => expand(next, path, out),
        None => out.push(path),
    }
}

struct Source {
    /// Path below `src/`, e.g. `sync/core/election.rs`.
    rel: String,
    /// The top-level module it belongs to (`sync`), or the file stem for `main`/`lib`.
    top: String,
    code: String,
}

fn sources() -> Vec<Source> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&root, &mut files);
    assert!(files.len() > 10);
    files
        .into_iter()
        .map(|f| {
            let rel = f
                .strip_prefix(&root)
                .expect("under src")
                .to_string_lossy()
                .into_owned();
            let first = rel.split('/').next().unwrap_or("");
            let top = first.trim_end_matches(".rs").to_owned();
            let text = std::fs::read_to_string(&f).expect("read source");
            Source {
                rel,
                top,
                code: code_only(&text),
            }
        })
        .collect()
}

#[test]
fn thread_modules_import_each_other_only_through_a_handle() {
    let mut bad = Vec::new();
    for s in sources() {
        for p in crate_paths(&s.code) {
            let target = p[0].as_str();
            if target == s.top {
                continue;
            }
            let is_thread = THREADS.contains(&target);
            let through_handle = p.get(1).is_some_and(|x| x == HANDLE);
            let from_thread = THREADS.contains(&s.top.as_str());
            let from_above = ABOVE.contains(&s.top.as_str()) || s.top == "lib";
            if is_thread && from_thread && !through_handle {
                bad.push(format!(
                    "{}: a thread module imports crate::{}",
                    s.rel,
                    p.join("::")
                ));
            }
            if is_thread && !from_thread && !from_above && !through_handle {
                bad.push(format!(
                    "{}: a module below the threads imports crate::{}",
                    s.rel,
                    p.join("::")
                ));
            }
            if ABOVE.contains(&target) && !from_above {
                bad.push(format!(
                    "{}: imports crate::{}, which sits above it",
                    s.rel,
                    p.join("::")
                ));
            }
        }
    }
    assert!(bad.is_empty(), "layering broken:\n  {}", bad.join("\n  "));
}

#[test]
fn top_level_modules_import_each_other_without_a_circle() {
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for s in sources() {
        let from = edges.entry(s.top.clone()).or_default();
        for p in crate_paths(&s.code) {
            if p[0] != s.top {
                from.insert(p[0].clone());
            }
        }
    }
    // Depth-first search; a node met again while on the stack closes a circle.
    fn visit(
        n: &str,
        edges: &BTreeMap<String, BTreeSet<String>>,
        stack: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = stack.iter().position(|s| s == n) {
            let mut circle = stack[at..].to_vec();
            circle.push(n.to_owned());
            return Some(circle);
        }
        if done.contains(n) {
            return None;
        }
        stack.push(n.to_owned());
        for m in edges.get(n).into_iter().flatten() {
            if let Some(c) = visit(m, edges, stack, done) {
                return Some(c);
            }
        }
        stack.pop();
        done.insert(n.to_owned());
        None
    }
    let mut done = BTreeSet::new();
    for n in edges.keys() {
        if let Some(circle) = visit(n, &edges, &mut Vec::new(), &mut done) {
            panic!("import circle: {}", circle.join(" -> "));
        }
    }
}

#[test]
fn the_sync_core_does_no_io_and_reads_no_clock() {
    // The simulator (core/sim) is test code: it reads a clock for its epoch and its wall
    // time summary, never for the core.
    const FORBIDDEN: [&str; 11] = [
        "crate::fsops",
        "crate::store",
        "crate::scanner",
        "crate::net",
        "crate::mem",
        "std::fs",
        "std::net",
        "std::thread",
        "Instant::now",
        "SystemTime::now",
        "super::shell",
    ];
    let mut bad = Vec::new();
    for s in sources() {
        if !s.rel.starts_with("sync/core/") || s.rel.starts_with("sync/core/sim/") {
            continue;
        }
        // Unit tests may build an Instant to start from.
        let code = match s.code.find("#[cfg(test)]") {
            Some(at) => &s.code[..at],
            None => &s.code[..],
        };
        for f in FORBIDDEN {
            if code.contains(f) {
                bad.push(format!("{}: {f}", s.rel));
            }
        }
    }
    assert!(
        bad.is_empty(),
        "the core must stay sans-I/O:\n  {}",
        bad.join("\n  ")
    );
}

/// The history rules decide from entries alone: they import nothing but the model, and
/// touch no file, socket, thread or clock (the store, below them, is what remembers).
#[test]
fn history_is_pure() {
    const FORBIDDEN: [&str; 7] = [
        "std::fs",
        "std::net",
        "std::thread",
        "Instant::now",
        "SystemTime::now",
        "rusqlite",
        "std::io",
    ];
    let mut bad = Vec::new();
    for s in sources().into_iter().filter(|s| s.top == "history") {
        for path in crate_paths(&s.code) {
            if !matches!(path.first().map(String::as_str), Some("history" | "model")) {
                bad.push(format!("{}: crate::{}", s.rel, path.join("::")));
            }
        }
        for f in FORBIDDEN {
            if s.code.contains(f) {
                bad.push(format!("{}: {f}", s.rel));
            }
        }
    }
    assert!(
        bad.is_empty(),
        "history must stay pure:\n  {}",
        bad.join("\n  ")
    );
}

#[test]
fn the_rules_see_imports() {
    // The checks above would pass vacuously if the parser found nothing.
    let p = crate_paths(&code_only(
        "use crate::{net::handle::{A, B}, proto};\n// crate::sync\nlet x = crate::model::X;",
    ));
    assert_eq!(
        p,
        vec![
            vec!["net", "handle", "A"],
            vec!["net", "handle", "B"],
            vec!["proto"],
            vec!["model", "X"],
        ]
    );
    let all: usize = sources().iter().map(|s| crate_paths(&s.code).len()).sum();
    assert!(all > 100, "only {all} imports found");
}
