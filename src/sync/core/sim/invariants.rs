//! What the simulator checks after every event and at the end of a schedule: one leader
//! per node at a time, followers following real sessions, no protocol violation, no stall,
//! no deadline in the past; and at the end, every replica identical and holding the newest
//! version of everything that ever existed.

use std::collections::BTreeSet;

use super::replica::{view, SimIo};
use super::*;
use crate::proto::PlanItem;
use crate::sync::core::Io;

/// What a finished schedule saw.
#[derive(Default, Clone, Copy)]
pub(super) struct Figures {
    pub(super) sessions: usize,
    pub(super) max_concurrent: usize,
    pub(super) losses: usize,
    pub(super) drops: usize,
    pub(super) edits: usize,
    pub(super) virtual_ns: u64,
    pub(super) events: u64,
    pub(super) outcomes: [usize; 5],
    /// Longest settle phase and longest session, virtual ns.
    pub(super) settle_ns: u64,
    pub(super) session_ns: u64,
    /// One-shot runs: started, ended reporting success, ended reporting a failure, killed;
    /// runs started more than the connect window after a peer's run or daemon (late).
    pub(super) runs: [usize; 4],
    pub(super) late_runs: usize,
    /// Longest one-shot run, virtual ns.
    pub(super) run_ns: u64,
    /// User deletions, renames and directory renames and deletions.
    pub(super) deletes: usize,
    pub(super) renames: usize,
    /// Conflict copies in the final replicas; versions the oracle judged.
    pub(super) conflict_copies: usize,
    pub(super) checked: usize,
    /// `sync --wait` clients answered.
    pub(super) waits: usize,
}

/// A message for the trace, without the bulk of indexes and plans.
pub(super) fn describe(msg: &PeerMsg) -> String {
    match msg {
        PeerMsg::Session(SessionMsg::IndexChunk { sid, records }) => {
            format!("IndexChunk {{ sid: {sid}, {} records }}", records.len())
        }
        PeerMsg::Session(SessionMsg::PlanChunk { sid, items }) => {
            let items: Vec<String> = items.iter().map(describe_item).collect();
            format!("PlanChunk {{ sid: {sid}, [{}] }}", items.join(", "))
        }
        PeerMsg::Session(SessionMsg::IndexSummary {
            sid, count, peers, ..
        }) => format!("IndexSummary {{ sid: {sid}, count: {count}, peers: {peers:?} }}"),
        other => format!("{other:?}"),
    }
}

/// One plan item, in a few words: what it does to which path, with which version.
fn describe_item(item: &PlanItem) -> String {
    let v = |e: &crate::history::Entry| {
        format!(
            "{}{:?}",
            if e.deleted { "†" } else { "" },
            e.vv.pairs()
                .iter()
                .map(|(n, c)| format!("{n}:{}", c % 1000))
                .collect::<Vec<_>>()
        )
    };
    match item {
        PlanItem::Send { meta, to } => format!(
            "send {} to {:?}",
            meta.path,
            to.iter().map(|t| t.node.as_str()).collect::<Vec<_>>()
        ),
        PlanItem::Receive { entry, from, .. } => {
            format!("recv {} {} from {from}", entry.meta.path, v(entry))
        }
        PlanItem::MakeDir { entry } => format!("mkdir {} {}", entry.meta.path, v(entry)),
        PlanItem::Delete { entry, .. } => format!("del {} {}", entry.meta.path, v(entry)),
        PlanItem::SetVersion { entry, .. } => format!("set {} {}", entry.meta.path, v(entry)),
        PlanItem::Rename { from, entry, .. } => {
            format!("ren {from} -> {} {}", entry.meta.path, v(entry))
        }
        PlanItem::MoveDir {
            from,
            to,
            by,
            counter,
        } => {
            format!("movedir {from} -> {to} {by}:{}", counter % 1000)
        }
    }
}

impl Sim {
    // ------------------------------------------------------------------------------------
    // Failure reports

    pub(super) fn state(&self) -> String {
        let mut out = String::new();
        for (i, n) in self.nodes.iter().enumerate() {
            let line = match &n.core {
                None => format!("{}: down", n.id),
                Some(c) => {
                    let wants: Vec<usize> =
                        (0..n.storages.len()).filter(|&s| c.has_want(s)).collect();
                    format!(
                        "{}: up, session {:?}, leads {:?}, idle {}, wants {:?}, results {:?}, next deadline {:?}",
                        n.id,
                        c.session_info(),
                        c.led_participants(),
                        c.is_idle(),
                        wants,
                        (0..n.storages.len()).map(|s| c.result(s).cloned()).collect::<Vec<_>>(),
                        c.next_deadline().map(|d| self.ns_of(d) as f64 / MS as f64),
                    )
                }
            };
            out.push_str(&line);
            out.push_str(&format!(
                " peers {:?}\n",
                (0..self.nodes.len())
                    .filter(|&j| self.believes[i][j].is_some())
                    .map(|j| self.name(j))
                    .collect::<Vec<_>>()
            ));
        }
        out
    }

    pub(super) fn fail(&self, msg: &str) -> ! {
        let trace: Vec<&str> = self.trace.iter().map(String::as_str).collect();
        panic!(
            "seed {}: {msg}\n--- last {} events (virtual time) ---\n{}\n--- state at {:.3} ms ---\n{}",
            self.seed,
            trace.len(),
            trace.join("\n"),
            self.now as f64 / MS as f64,
            self.state()
        );
    }

    // ------------------------------------------------------------------------------------
    // Checks

    pub(super) fn check_invariants(&mut self) {
        if let Some(v) = self.violations.first() {
            self.fail(&format!("protocol violation: {v}"));
        }
        let n = self.nodes.len();
        // Leader side, strictly: running led sessions have disjoint member sets.
        let mut owner: Vec<Option<usize>> = vec![None; n];
        let mut running: Vec<(usize, u64)> = Vec::new();
        for i in 0..n {
            let Some(core) = &self.nodes[i].core else {
                continue;
            };
            let Some(ps) = core.led_participants() else {
                continue;
            };
            let (sid, _, storage) = core.session_info().expect("a leader is in a session");
            let storage = self.nodes[i].storages[storage].clone();
            let mut members = vec![i];
            members.extend(ps.iter().map(|p| self.idx(p)));
            // A participant whose connection to the leader is gone is the leader's stale
            // view: the participant may already have noticed, dropped its grant and joined
            // another session, while the leader, which can no longer reach it, notices only
            // after its own detection delay and then aborts.
            let live: Vec<usize> = members
                .iter()
                .copied()
                .filter(|&m| m == i || self.live(i, m))
                .collect();
            for &m in &live {
                if let Some(other) = owner[m] {
                    self.fail(&format!(
                        "{} is in the sessions led by {} and by {} at once",
                        self.name(m),
                        self.name(other),
                        self.name(i)
                    ));
                }
                owner[m] = Some(i);
            }
            running.push((i, sid));
            if self.led.insert((i, sid)) {
                self.log(format!(
                    "{} leads session {sid} of {storage} with {:?}",
                    self.name(i),
                    members[1..]
                        .iter()
                        .map(|&m| self.name(m))
                        .collect::<Vec<_>>()
                ));
                self.sessions.push(SessionRecord {
                    leader: i,
                    sid,
                    storage,
                    members,
                    started: self.now,
                    ended: None,
                    ok: None,
                    clean: false,
                    peer_link_cut: false,
                });
            }
        }
        self.max_concurrent = self.max_concurrent.max(running.len());
        for k in 0..self.sessions.len() {
            let r = &self.sessions[k];
            if r.ended.is_some() || r.peer_link_cut {
                continue;
            }
            let followers = &r.members[1..];
            let cut = followers.iter().any(|&a| {
                followers
                    .iter()
                    .any(|&b| a != b && self.up(a) && self.up(b) && !self.link(a, b).connected)
            });
            self.sessions[k].peer_link_cut = cut;
        }
        // Liveness: with every loss noticed within 0.5 s and files moving in 50 ms, a
        // session has no reason to run for a minute; one that does waits for something
        // that will never come and only the idle timeout ends it.
        for r in &self.sessions {
            if r.ended.is_none() && self.now - r.started > self.cfg.stall {
                let msg = format!(
                    "session {} led by {} stalled: running for {:.1} s",
                    r.sid,
                    self.name(r.leader),
                    (self.now - r.started) as f64 / SEC as f64
                );
                self.fail(&msg);
            }
        }
        for r in &mut self.sessions {
            if r.ended.is_none() && !running.contains(&(r.leader, r.sid)) {
                r.ended = Some(self.now);
                let leader = &self.nodes[r.leader];
                let result = leader
                    .core
                    .as_ref()
                    .and_then(|c| c.result(leader.storage(&r.storage)?));
                r.ok = leader
                    .core
                    .as_ref()
                    .map(|_| matches!(result, Some(StorageResult::Synced { .. })));
                r.clean = matches!(
                    result,
                    Some(StorageResult::Synced { stats, .. }) if stats.failed == 0
                );
            }
        }
        // Follower side: a follower may lag behind its leader's end, but its session must
        // have been led by that leader, and a leader still running it must list it.
        for (f, node) in self.nodes.iter().enumerate() {
            let Some(core) = &node.core else {
                continue;
            };
            let Some((sid, Some(leader), _)) = core.session_info() else {
                continue;
            };
            let l = self.idx(leader);
            if !self.led.contains(&(l, sid)) && !self.started.contains(&(l, sid)) {
                self.fail(&format!(
                    "{} follows session {sid} of {leader}, which {leader} never led",
                    self.name(f)
                ));
            }
            if running.contains(&(l, sid)) && self.live(l, f) && owner[f] != Some(l) {
                self.fail(&format!(
                    "{} follows session {sid} of {leader}, which does not list it",
                    self.name(f)
                ));
            }
        }
    }

    /// Every replica of every storage among `nodes` is identical; with `judge`, every node
    /// scans once more (so the oracle knows everything on disk) and the common state is
    /// judged against what the scans recorded (see [`super::oracle`]).
    pub(super) fn check_converged(&mut self, nodes: &[usize], judge: bool) {
        if judge {
            for &i in nodes {
                self.final_scan(i);
            }
        }
        for storage in STORAGES {
            let holders: Vec<usize> = nodes
                .iter()
                .copied()
                .filter(|&i| self.nodes[i].storage(storage).is_some())
                .collect();
            let Some(&first) = holders.first() else {
                continue;
            };
            let tree = |i: usize| {
                let n = &self.nodes[i];
                view(&n.fs[n.storage(storage).unwrap()])
            };
            let reference = tree(first);
            for &h in &holders[1..] {
                let other = tree(h);
                if other != reference {
                    let paths: BTreeSet<&RelPath> = reference.keys().chain(other.keys()).collect();
                    let diffs: Vec<String> = paths
                        .into_iter()
                        .filter(|p| reference.get(*p) != other.get(*p))
                        .take(5)
                        .map(|p| {
                            format!(
                                "{p}: {} has {:?}, {} has {:?}",
                                self.name(first),
                                reference.get(p),
                                self.name(h),
                                other.get(p)
                            )
                        })
                        .collect();
                    let first_diff = reference
                        .keys()
                        .chain(other.keys())
                        .find(|p| reference.get(*p) != other.get(*p))
                        .cloned();
                    let known =
                        first_diff.map_or_else(String::new, |p| self.histories(nodes, storage, &p));
                    self.fail(&format!(
                        "{storage}: replicas differ:\n  {}{known}",
                        diffs.join("\n  ")
                    ));
                }
            }
            if !judge {
                continue;
            }
            let n = &self.nodes[first];
            let tree = view(&n.fs[n.storage(storage).unwrap()]);
            if let Err((path, e)) = self.oracle.judge(storage, &tree) {
                let known = self.histories(nodes, storage, &path);
                let recorded = self.oracle.recorded_at(storage, &path);
                self.fail(&format!(
                    "{storage}: {e}\n  recorded at {path}: {recorded:?}{known}"
                ));
            }
            self.conflict_copies += tree
                .keys()
                .filter(|p| p.as_str().contains(".sync-conflict-"))
                .count();
        }
    }

    /// What every node's store says of `path`: its own entry and its copies of the others'.
    fn histories(&self, nodes: &[usize], storage: &str, path: &RelPath) -> String {
        let mut out = String::new();
        for &i in nodes {
            let n = &self.nodes[i];
            let Some(s) = n.storage(storage) else {
                continue;
            };
            let id = n.history.ids[s];
            let e = n.history.store.local(id, path);
            out.push_str(&format!("\n  {} has {path} as {e:?}", n.id));
            for &j in nodes {
                if j == i {
                    continue;
                }
                let other = self.nodes[j].id.clone();
                let state = n.history.store.remote_state(id, &other);
                let mut copy = None;
                let _ = n.history.store.diff(
                    id,
                    &[crate::store::DiffSource::Remote(other.clone())],
                    &mut |here, _| {
                        if let Some(e) = here[0].filter(|e| e.meta.path == *path) {
                            copy = Some((e.deleted, e.vv.clone()));
                        }
                    },
                );
                out.push_str(&format!(
                    "\n    its copy of {other} (state {state:?}): {copy:?}"
                ));
            }
        }
        out
    }

    /// Node `i` scans every storage, as a session would, outside any session.
    fn final_scan(&mut self, i: usize) {
        let now = EPOCH_SECS + self.now / SEC;
        let node = &mut self.nodes[i];
        let mut out = Vec::new();
        let mut io = SimIo {
            fs: &mut node.fs,
            history: &mut node.history,
            storages: &node.storages,
            node: node.id.as_str(),
            rng: &mut node.rng,
            out: &mut out,
            oracle: &mut self.oracle,
            now,
            touched: Vec::new(),
            full: false,
        };
        let watched = node.watch.is_some();
        let mut unrecorded = Vec::new();
        for s in 0..node.storages.len() {
            let before = io.local_state(s);
            match io.scan(s) {
                Ok((idx, _)) if before != Some((idx.index_id, idx.seq)) => unrecorded.push(s),
                Ok(_) => {}
                Err(e) => panic!("seed {}: the final scan failed: {e}", self.seed),
            }
        }
        // A watching daemon has scanned every change it saw, its own writes included; a
        // scan that still finds one means a write of its own is missing from its history,
        // and that write's events would start a session after every session (a ping-pong).
        if watched && !unrecorded.is_empty() {
            let msg = format!(
                "{}'s scan after convergence recorded changes in storages {unrecorded:?}",
                self.name(i)
            );
            self.fail(&msg);
        }
    }

    pub(super) fn figures(&self) -> Figures {
        Figures {
            sessions: self.sessions.len(),
            max_concurrent: self.max_concurrent,
            losses: self.losses,
            drops: self.drops,
            edits: self.edits,
            virtual_ns: self.now,
            events: self.events,
            outcomes: self.outcomes,
            settle_ns: self.settle_ns,
            session_ns: self
                .sessions
                .iter()
                .map(|r| r.ended.unwrap_or(self.now) - r.started)
                .max()
                .unwrap_or(0),
            runs: [
                self.runs_started,
                self.runs
                    .iter()
                    .filter(|r| r.report.as_ref().is_some_and(RunReport::ok))
                    .count(),
                self.runs
                    .iter()
                    .filter(|r| r.report.as_ref().is_some_and(|r| !r.ok()))
                    .count(),
                self.runs.iter().filter(|r| r.report.is_none()).count(),
            ],
            late_runs: self.late_runs,
            deletes: self.deletes,
            renames: self.renames,
            conflict_copies: self.conflict_copies,
            checked: self.oracle.checked,
            waits: self.waits_answered(),
            run_ns: self
                .runs
                .iter()
                .map(|r| r.ended - r.started)
                .max()
                .unwrap_or(0),
        }
    }

    /// Times `node` read this version of `path` as a transfer source.
    pub(super) fn reads(&self, storage: &str, path: &RelPath, size: u64, mtime: i64) -> u32 {
        let key = (storage.to_owned(), path.clone(), size, mtime);
        self.nodes
            .iter()
            .map(|n| n.reads.get(&key).copied().unwrap_or(0))
            .sum()
    }

    /// A one-shot run ended with `report`. A run that reports success was synchronized with
    /// every peer it was connected to, for every storage they share: a clean session of that
    /// storage, started during the run, included both. And its report's view of its peers
    /// is the network's: what it says it was synchronized with, it was connected to.
    pub(super) fn check_run(&self, node: usize, run: &Run, report: &RunReport) {
        for s in &report.storages {
            for peer in &s.with {
                let p = self.idx(peer);
                if !run.seen.contains(&(p, s.name.clone())) {
                    self.fail(&format!(
                        "{} reports {} synchronized with {peer}, which it never saw",
                        self.name(node),
                        s.name
                    ));
                }
            }
        }
        if !report.ok() {
            return;
        }
        for (p, storage) in &run.seen {
            let covered = self.sessions.iter().any(|r| {
                r.clean
                    && r.storage == *storage
                    && r.started >= run.started
                    && r.members.contains(&node)
                    && r.members.contains(p)
            });
            if !covered {
                self.fail(&format!(
                    "{}'s one-shot run reports success, but no clean session of {storage} \
                     included it and {}, which it was connected to",
                    self.name(node),
                    self.name(*p)
                ));
            }
        }
    }
}
