//! Data-driven config tests: every `tests/data/config/*.toml` fixture states on its first
//! line what loading it must give (`# expect: ok` or `# expect: error line=N key=K "text"`),
//! and this test checks each one. Adding a case means adding a fixture file.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic in a test is a failed test

use std::path::{Path, PathBuf};
use std::time::Duration;

use iron_carrier::config::{self, Encryption};

struct Expect {
    ok: bool,
    line: Option<usize>,
    key: Option<String>,
    text: Option<String>,
}

fn parse_expect(first_line: &str, file: &Path) -> Expect {
    let spec = first_line
        .strip_prefix("# expect: ")
        .unwrap_or_else(|| panic!("{}: first line must be '# expect: ...'", file.display()));
    if spec.trim() == "ok" {
        return Expect {
            ok: true,
            line: None,
            key: None,
            text: None,
        };
    }
    let rest = spec.strip_prefix("error").expect("expect: ok | error ...");
    let (words, text) = match rest.find('"') {
        Some(i) => (
            &rest[..i],
            Some(rest[i + 1..].trim_end_matches('"').to_owned()),
        ),
        None => (rest, None),
    };
    let mut e = Expect {
        ok: false,
        line: None,
        key: None,
        text,
    };
    for w in words.split_whitespace() {
        if let Some(v) = w.strip_prefix("line=") {
            e.line = Some(v.parse().expect("line number"));
        } else if let Some(v) = w.strip_prefix("key=") {
            e.key = Some(v.to_owned());
        } else {
            panic!("{}: bad expect word {w}", file.display());
        }
    }
    e
}

fn fixtures() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/config");
    let mut v: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("fixture dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    v.sort();
    v
}

#[test]
fn every_fixture_loads_or_fails_as_its_header_says() {
    let files = fixtures();
    assert!(files.len() >= 20, "fixtures missing: {}", files.len());
    let mut failures = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        let expect = parse_expect(text.lines().next().unwrap_or(""), file);
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        match (config::load(file), expect.ok) {
            (Ok(_), true) => {}
            (Ok(_), false) => failures.push(format!("{name}: loaded, but an error was expected")),
            (Err(e), true) => failures.push(format!("{name}: unexpected error: {e}")),
            (Err(e), false) => {
                let shown = e.to_string();
                if !shown.starts_with(&file.display().to_string()) {
                    failures.push(format!("{name}: message does not name the file: {shown}"));
                }
                if let Some(line) = expect.line {
                    if e.line != Some(line) || !shown.contains(&format!(":{line}:")) {
                        failures.push(format!(
                            "{name}: want line {line}, got {:?}: {shown}",
                            e.line
                        ));
                    }
                }
                if let Some(key) = &expect.key {
                    if e.key.as_deref() != Some(key.as_str())
                        || !shown.contains(&format!("`{key}`"))
                    {
                        failures.push(format!("{name}: want key {key}, got {:?}: {shown}", e.key));
                    }
                }
                if let Some(t) = &expect.text {
                    if !shown.contains(t.as_str()) {
                        failures.push(format!("{name}: message lacks {t:?}: {shown}"));
                    }
                }
            }
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

#[test]
fn full_config_has_every_value_and_minimal_config_every_default() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/config");
    let full = config::load(&dir.join("valid_full.toml")).unwrap();
    assert_eq!(full.node_id.as_str(), "pi-zero");
    assert_eq!(full.group.as_deref(), Some("family"));
    assert_eq!(full.port, 25999);
    assert_eq!(full.listen_address.to_string(), "127.0.0.1");
    assert_eq!(full.peers.len(), 3);
    assert!(!full.enable_file_watcher);
    assert_eq!(full.delay_watcher_events, Duration::from_secs(10));
    assert_eq!(full.rescan_interval, Some(Duration::from_secs(600)));
    assert_eq!(
        full.schedule_sync.as_ref().unwrap().expr,
        "*/30 8-20 * * mon-fri"
    );
    assert!(!full.enable_service_discovery);
    assert_eq!(full.discovery_interfaces, ["eth0", "wlan0"]);
    assert_eq!(full.log_path, dir.join("state/ic.db"));
    assert_eq!(
        full.encryption,
        Encryption::Passphrase(String::from("correct horse battery staple").into())
    );
    assert_eq!(full.max_parallel_transfers, 2);
    let names: Vec<&str> = full.storages.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["docs", "my music", "photos"]);
    let photos = full.storage("photos").unwrap();
    assert!(
        photos.enable_watcher,
        "per-storage override wins over the global key"
    );
    assert_eq!(photos.delay_watcher_events, Duration::from_secs(1));
    assert!(!full.storage("docs").unwrap().enable_watcher);
    assert_eq!(
        full.storage("docs").unwrap().path,
        std::fs::canonicalize(dir.join("dirs/a")).unwrap()
    );
    assert!(
        !full.render(None).contains("correct horse"),
        "the passphrase must never be printed"
    );

    let min = config::load(&dir.join("valid_minimal.toml")).unwrap();
    assert_eq!(min.port, 25230);
    assert!(min.peers.is_empty());
    assert!(min.enable_file_watcher);
    assert_eq!(min.delay_watcher_events, Duration::from_secs(4));
    assert_eq!(min.rescan_interval, Some(Duration::from_secs(3600)));
    assert!(min.schedule_sync.is_none());
    assert!(min.enable_service_discovery);
    assert!(min.discovery_interfaces.is_empty());
    assert_eq!(min.encryption, Encryption::Ephemeral);
    assert_eq!(min.max_parallel_transfers, 4);
    assert!(min.group.is_none());
    assert_eq!(min.node_id.as_str(), config::hostname().unwrap());
    if let Some(home) = std::env::var_os("HOME") {
        assert_eq!(
            min.log_path,
            Path::new(&home).join(".config/iron-carrier/iron-carrier.db")
        );
    }
}

#[test]
fn home_expansion_in_paths() {
    let home = std::env::var("HOME").expect("HOME set in tests");
    let t = "[storages]\nhome = \"~\"\nalso = { path = \"$HOME\" }\n";
    // Two storages on the same directory overlap: that error proves both expanded to $HOME.
    let err = config::parse(t, Path::new("/nonexistent/config.toml")).unwrap_err();
    assert!(err.message.contains("overlaps"), "{err}");
    let ok = config::parse("[storages]\nhome = \"~/\"\n", Path::new("/x/c.toml")).unwrap();
    assert_eq!(ok.storages[0].path, std::fs::canonicalize(home).unwrap());
}
