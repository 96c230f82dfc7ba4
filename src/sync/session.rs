//! Sessions: one storage synchronized among the connected nodes that have it.
//!
//! The leader's side (start, collect digests and indexes, diff, distribute the plan, wait for
//! every part, end) and the follower's side (scan, answer, carry out its part) are methods of
//! the sync state, because both need the storages, the peers and the transfer engines. The
//! decisions themselves are pure and live elsewhere: `crate::diff` decides what moves,
//! [`plan_items`] turns that into each node's part.
//!
//! Everything a peer sends is checked against the session: a message for another session
//! is ignored, an index out of order, a plan naming unknown nodes or a file nobody announced
//! is a protocol violation that ends the connection.

use std::collections::{HashMap, HashSet};
use std::time::Instant;

use crate::diff::{self, Op};
use crate::ignore::IgnoreMatcher;
use crate::model::{EntryKind, FileMeta, NodeId, RelPath};
use crate::net::ConnId;
use crate::proto::{self, Digest, Message, PartStats, PlanItem, BATCH_BYTES};
use crate::scanner::{self, ScanOptions};

use super::transfer::{Dest, Incoming, OutJob, RecvDone, SendDone};
use super::{StorageResult, SyncState, BUSY_RETRY};

/// Most index entries or plan items accepted from one peer in one session. Bounds memory
/// against a peer that never stops sending.
pub const MAX_ENTRIES: usize = 2_000_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Leader: waiting for digests and the indexes it asked for. Follower: waiting for the
    /// plan.
    Summaries,
    /// Plans are known; files are moving.
    Executing,
}

pub struct Participant {
    pub conn: ConnId,
    pub node: NodeId,
    summary: Option<(u64, Digest)>,
    index: Vec<FileMeta>,
    index_requested: bool,
    index_done: bool,
    done: Option<PartStats>,
}

struct Expected {
    from: NodeId,
    meta: FileMeta,
    expect: Option<(u64, i64)>,
    started: bool,
}

pub struct Session {
    pub sid: u64,
    pub storage: usize,
    /// The leader's connection; `None` when this node leads.
    pub leader: Option<ConnId>,
    pub participants: Vec<Participant>,
    pub phase: Phase,
    local_index: Vec<FileMeta>,
    local_digest: Digest,
    ignore: IgnoreMatcher,
    /// Follower: plan items received so far.
    plan: Vec<PlanItem>,
    sends_left: usize,
    expected: HashMap<RelPath, Expected>,
    /// Paths this node's plan named but that it refuses (ignored here).
    declined: HashSet<RelPath>,
    stats: PartStats,
    local_done: bool,
    pub last_activity: Instant,
}

impl Session {
    fn new(
        sid: u64,
        storage: usize,
        leader: Option<ConnId>,
        participants: Vec<Participant>,
        local_index: Vec<FileMeta>,
        local_digest: Digest,
        ignore: IgnoreMatcher,
    ) -> Session {
        Session {
            sid,
            storage,
            leader,
            participants,
            phase: Phase::Summaries,
            local_index,
            local_digest,
            ignore,
            plan: Vec::new(),
            sends_left: 0,
            expected: HashMap::new(),
            declined: HashSet::new(),
            stats: PartStats::default(),
            local_done: false,
            last_activity: Instant::now(),
        }
    }

    pub fn involves(&self, conn: ConnId) -> bool {
        self.leader == Some(conn) || self.participants.iter().any(|p| p.conn == conn)
    }

    fn participant(&mut self, conn: ConnId) -> Option<&mut Participant> {
        self.participants.iter_mut().find(|p| p.conn == conn)
    }
}

/// Turns diff operations into each node's part. `nodes[i]` is participant `i` of the diff.
/// Returns one list of items per node. Pure.
pub fn plan_items(ops: &[Op], nodes: &[NodeId]) -> Vec<Vec<PlanItem>> {
    let mut out: Vec<Vec<PlanItem>> = vec![Vec::new(); nodes.len()];
    for op in ops {
        match op {
            Op::MakeDir {
                path,
                mode,
                targets,
            } => {
                for &t in targets {
                    out[t].push(PlanItem::MakeDir {
                        path: path.clone(),
                        mode: *mode,
                    });
                }
            }
            Op::CopyFile {
                meta,
                sources,
                targets,
            } => {
                let Some(&source) = sources.first() else {
                    continue;
                };
                out[source].push(PlanItem::Send {
                    meta: meta.clone(),
                    to: targets.iter().map(|t| nodes[t.node].clone()).collect(),
                });
                for t in targets {
                    out[t.node].push(PlanItem::Receive {
                        meta: meta.clone(),
                        from: nodes[source].clone(),
                        expect: t
                            .current
                            .as_ref()
                            .filter(|c| c.kind == EntryKind::File)
                            .map(|c| (c.size, c.mtime_ns)),
                    });
                }
            }
        }
    }
    out
}

/// Splits `items` into messages of at most [`BATCH_BYTES`] each (at least one item each).
fn batches<T>(items: Vec<T>, size: impl Fn(&T) -> usize) -> Vec<Vec<T>> {
    let mut out = Vec::new();
    let mut cur = Vec::new();
    let mut bytes = 0;
    for item in items {
        let n = size(&item);
        if !cur.is_empty() && bytes + n > BATCH_BYTES {
            out.push(std::mem::take(&mut cur));
            bytes = 0;
        }
        bytes += n;
        cur.push(item);
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

fn plan_item_len(item: &PlanItem) -> usize {
    match item {
        PlanItem::Send { meta, to } => {
            1 + proto::meta_len(meta) + 4 + to.iter().map(|n| 2 + n.as_str().len()).sum::<usize>()
        }
        PlanItem::Receive { meta, from, .. } => {
            1 + proto::meta_len(meta) + 2 + from.as_str().len() + 17
        }
        PlanItem::MakeDir { path, .. } => 1 + 2 + path.as_str().len() + 4,
    }
}

impl SyncState {
    /// Scans storage `i` with its current `.ignore` rules and removes leftover temp files.
    /// Called only when no session is active, so no temp file can be in use.
    fn scan_storage(&self, i: usize) -> Result<(Vec<FileMeta>, IgnoreMatcher), String> {
        let st = &self.storages[i];
        let ignore = IgnoreMatcher::load(&st.cfg.path).map_err(|e| e.to_string())?;
        let opts = ScanOptions {
            ignore: &ignore,
            exclude: &self.exclude,
        };
        let result = scanner::scan(&st.cfg.path, &opts).map_err(|e| e.to_string())?;
        for t in &result.temp_files {
            match st.dir.remove_internal(t) {
                Ok(()) => log::info!("{}: removed leftover temporary file {t}", st.cfg.name),
                Err(e) => log::warn!("{}: cannot remove leftover {t}: {e}", st.cfg.name),
            }
        }
        log::debug!(
            "{}: scanned {} entries ({} skipped)",
            st.cfg.name,
            result.entries.len(),
            result.skipped
        );
        Ok((result.entries, ignore))
    }

    fn record(&mut self, i: usize, result: StorageResult) {
        let name = self.storages[i].cfg.name.clone();
        self.completed.insert(name, result);
    }

    // -----------------------------------------------------------------------------------
    // Leader

    /// Starts leading a session for storage `i`. Returns false if there was nothing to
    /// start (no participant, or the storage cannot be scanned).
    pub(super) fn leader_start(&mut self, i: usize) -> bool {
        let name = self.storages[i].cfg.name.clone();
        if self.leader_for(&name).is_some() {
            return false;
        }
        let conns = self.peers_with(&name);
        if conns.is_empty() {
            return false;
        }
        let (index, ignore) = match self.scan_storage(i) {
            Ok(r) => r,
            Err(e) => {
                log::error!("{name}: cannot scan: {e}");
                self.record(i, StorageResult::Failed(e));
                return false;
            }
        };
        let sid = self.new_sid();
        let participants: Vec<Participant> = conns
            .iter()
            .filter_map(|c| self.peers.get(c))
            .map(|p| Participant {
                conn: p.conn,
                node: p.node.clone(),
                summary: None,
                index: Vec::new(),
                index_requested: false,
                index_done: false,
                done: None,
            })
            .collect();
        let names: Vec<&str> = participants.iter().map(|p| p.node.as_str()).collect();
        log::info!(
            "{name}: leading session {sid:016x} with {}",
            names.join(", ")
        );
        for c in &conns {
            self.send(
                *c,
                Message::SessionStart {
                    sid,
                    storage: name.clone(),
                },
            );
        }
        let digest = proto::index_digest(&index);
        self.session = Some(Session::new(
            sid,
            i,
            None,
            participants,
            index,
            digest,
            ignore,
        ));
        true
    }

    /// The current session if this node leads it and it is `sid`.
    fn led_session(&mut self, sid: u64) -> Option<&mut Session> {
        self.session
            .as_mut()
            .filter(|s| s.sid == sid && s.leader.is_none())
    }

    pub(super) fn leader_on_summary(&mut self, conn: ConnId, sid: u64, count: u64, digest: Digest) {
        let Some(s) = self.led_session(sid) else {
            return;
        };
        s.last_activity = Instant::now();
        let local_digest = s.local_digest;
        let Some(p) = s.participant(conn) else {
            return;
        };
        if p.summary.is_some() {
            return self.disconnect(conn, "sent two index summaries");
        }
        p.summary = Some((count, digest));
        if digest != local_digest {
            if count as usize > MAX_ENTRIES {
                return self.disconnect(conn, "announced an index larger than we accept");
            }
            p.index_requested = true;
            self.send(conn, Message::IndexRequest { sid });
        }
        self.leader_maybe_plan();
    }

    pub(super) fn leader_on_index_chunk(&mut self, conn: ConnId, sid: u64, entries: Vec<FileMeta>) {
        let Some(s) = self.led_session(sid) else {
            return;
        };
        s.last_activity = Instant::now();
        let Some(p) = s.participant(conn) else {
            return;
        };
        if !p.index_requested || p.index_done {
            return self.disconnect(conn, "sent an index nobody asked for");
        }
        if p.index.len() + entries.len() > MAX_ENTRIES {
            return self.disconnect(conn, "sent an index larger than we accept");
        }
        for e in entries {
            // Strictly increasing paths: sorted and without duplicates, as the diff needs.
            if p.index.last().is_some_and(|last| last.path >= e.path) {
                return self.disconnect(conn, "sent an index out of order");
            }
            p.index.push(e);
        }
    }

    pub(super) fn leader_on_index_end(&mut self, conn: ConnId, sid: u64) {
        let Some(s) = self.led_session(sid) else {
            return;
        };
        s.last_activity = Instant::now();
        let Some(p) = s.participant(conn) else {
            return;
        };
        if !p.index_requested || p.index_done {
            return self.disconnect(conn, "ended an index nobody asked for");
        }
        p.index_done = true;
        self.leader_maybe_plan();
    }

    /// Once every digest (and every index asked for) is in: diff, distribute, execute.
    fn leader_maybe_plan(&mut self) {
        let Some(s) = self.session.as_mut() else {
            return;
        };
        let ready = s
            .participants
            .iter()
            .all(|p| p.summary.is_some() && (!p.index_requested || p.index_done));
        if !ready || s.phase == Phase::Executing {
            return;
        }
        if s.participants.iter().all(|p| !p.index_requested) {
            let name = self.storages[s.storage].cfg.name.clone();
            log::info!("{name}: already in sync (index digests match)");
            s.phase = Phase::Executing;
            s.local_done = true;
            for p in &mut s.participants {
                p.done = Some(PartStats::default());
            }
            self.leader_maybe_end();
            return;
        }
        // Participants in node-id order, this node included, so the diff's tie-breaks are
        // the same whoever computes them.
        let mut nodes: Vec<(NodeId, Option<usize>)> = vec![(self.config.node_id.clone(), None)];
        for (k, p) in s.participants.iter().enumerate() {
            nodes.push((p.node.clone(), Some(k)));
        }
        nodes.sort_by(|a, b| a.0.cmp(&b.0));
        let indexes: Vec<&[FileMeta]> = nodes
            .iter()
            .map(|(_, k)| match k {
                None => s.local_index.as_slice(),
                Some(k) => {
                    let p = &s.participants[*k];
                    if p.index_requested {
                        p.index.as_slice()
                    } else {
                        s.local_index.as_slice()
                    }
                }
            })
            .collect();
        let plan = diff::diff(&indexes);
        let name = self.storages[s.storage].cfg.name.clone();
        for c in &plan.conflicts {
            log::warn!("{name}: left {} alone: {}", c.path, c.reason);
        }
        let ids: Vec<NodeId> = nodes.iter().map(|(n, _)| n.clone()).collect();
        let mut parts = plan_items(&plan.ops, &ids);
        log::info!("{name}: {} operation(s) planned", plan.ops.len());
        // The indexes are no longer needed; free them before files start moving.
        s.local_index = Vec::new();
        for p in &mut s.participants {
            p.index = Vec::new();
        }
        s.phase = Phase::Executing;
        let sid = s.sid;
        let mut local_items = Vec::new();
        let mut sends = Vec::new();
        for (pos, (_, k)) in nodes.iter().enumerate() {
            let items = std::mem::take(&mut parts[pos]);
            match k {
                None => local_items = items,
                Some(k) => sends.push((s.participants[*k].conn, items)),
            }
        }
        // Local receives are registered before any peer can learn of its plan and start
        // sending to us.
        self.execute_items(local_items);
        for (conn, items) in sends {
            for chunk in batches(items, plan_item_len) {
                self.send(conn, Message::PlanChunk { sid, items: chunk });
            }
            self.send(conn, Message::PlanEnd { sid });
        }
        self.maybe_part_done();
    }

    pub(super) fn leader_on_part_done(&mut self, conn: ConnId, sid: u64, stats: PartStats) {
        let Some(s) = self.led_session(sid) else {
            return;
        };
        s.last_activity = Instant::now();
        if s.phase != Phase::Executing {
            return self.disconnect(conn, "reported its part done before it had a plan");
        }
        let Some(p) = s.participant(conn) else {
            return;
        };
        p.done = Some(stats);
        self.leader_maybe_end();
    }

    fn leader_maybe_end(&mut self) {
        let Some(s) = &self.session else { return };
        if s.leader.is_some() || !s.local_done || s.participants.iter().any(|p| p.done.is_none()) {
            return;
        }
        let Some(s) = self.session.take() else { return };
        let failed = s.stats.failed
            + s.participants
                .iter()
                .map(|p| p.done.map_or(0, |d| d.failed))
                .sum::<u32>();
        let ok = failed == 0;
        for p in &s.participants {
            self.send(p.conn, Message::SessionEnd { sid: s.sid, ok });
        }
        let name = self.storages[s.storage].cfg.name.clone();
        log_session_end(&name, &s.stats, failed);
        let mut stats = s.stats;
        stats.failed = failed;
        self.record(
            s.storage,
            StorageResult::Synced {
                peers: s.participants.iter().map(|p| p.node.clone()).collect(),
                stats,
            },
        );
    }

    pub(super) fn on_busy(&mut self, conn: ConnId, sid: u64) {
        let Some(s) = self.led_session(sid) else {
            return;
        };
        if !s.involves(conn) {
            return;
        }
        let i = s.storage;
        log::debug!("{} is busy; retrying shortly", self.node_name(conn));
        self.abort_session("a participant is busy", false);
        // The busy storage goes first again, after a short pause.
        self.completed.remove(&self.storages[i].cfg.name);
        self.queue.retain(|&q| q != i);
        self.queue.push_front(i);
        self.retry_at = Some(Instant::now() + BUSY_RETRY);
    }

    // -----------------------------------------------------------------------------------
    // Follower

    pub(super) fn follower_start(&mut self, conn: ConnId, sid: u64, storage: &str) {
        if self.session.is_some() {
            return self.send(conn, Message::SessionBusy { sid });
        }
        let Some(i) = self.storage_index(storage) else {
            return self.send(
                conn,
                Message::SessionAbort {
                    sid,
                    reason: format!("no storage named {storage:?} here"),
                },
            );
        };
        // Only the node this node itself considers the leader may lead it.
        if self.leader_for(storage) != Some(conn) {
            let who = self.node_name(conn);
            log::warn!("{storage}: refusing a session from {who}: it is not the leader here");
            return self.send(
                conn,
                Message::SessionAbort {
                    sid,
                    reason: "you are not the leader for this storage here".into(),
                },
            );
        }
        let (index, ignore) = match self.scan_storage(i) {
            Ok(r) => r,
            Err(e) => {
                log::error!("{storage}: cannot scan: {e}");
                self.record(i, StorageResult::Failed(e.clone()));
                return self.send(conn, Message::SessionAbort { sid, reason: e });
            }
        };
        let who = self.node_name(conn);
        log::info!("{storage}: joining session {sid:016x} led by {who}");
        let digest = proto::index_digest(&index);
        self.send(
            conn,
            Message::IndexSummary {
                sid,
                count: index.len() as u64,
                digest,
            },
        );
        self.session = Some(Session::new(
            sid,
            i,
            Some(conn),
            Vec::new(),
            index,
            digest,
            ignore,
        ));
    }

    /// The current session if `conn` leads it and it is `sid`.
    fn joined_session(&mut self, conn: ConnId, sid: u64) -> Option<&mut Session> {
        self.session
            .as_mut()
            .filter(|s| s.sid == sid && s.leader == Some(conn))
    }

    pub(super) fn follower_send_index(&mut self, conn: ConnId, sid: u64) {
        let Some(s) = self.joined_session(conn, sid) else {
            return;
        };
        s.last_activity = Instant::now();
        let index = std::mem::take(&mut s.local_index);
        for chunk in batches(index, proto::meta_len) {
            self.send(
                conn,
                Message::IndexChunk {
                    sid,
                    entries: chunk,
                },
            );
        }
        self.send(conn, Message::IndexEnd { sid });
    }

    pub(super) fn follower_on_plan_chunk(&mut self, conn: ConnId, sid: u64, items: Vec<PlanItem>) {
        let Some(s) = self.joined_session(conn, sid) else {
            return;
        };
        s.last_activity = Instant::now();
        if s.phase == Phase::Executing {
            return self.disconnect(conn, "sent plan items after the plan ended");
        }
        if s.plan.len() + items.len() > MAX_ENTRIES {
            return self.disconnect(conn, "sent a plan larger than we accept");
        }
        s.plan.extend(items);
    }

    pub(super) fn follower_on_plan_end(&mut self, conn: ConnId, sid: u64) {
        let Some(s) = self.joined_session(conn, sid) else {
            return;
        };
        s.last_activity = Instant::now();
        if s.phase == Phase::Executing {
            return self.disconnect(conn, "ended the plan twice");
        }
        s.phase = Phase::Executing;
        s.local_index = Vec::new();
        let items = std::mem::take(&mut s.plan);
        // Every node named in the plan must be one we are connected to; duplicates of a
        // path would let one transfer be counted twice.
        let mut seen = HashSet::new();
        for item in &items {
            let (path, node) = match item {
                PlanItem::Send { meta, to } => (&meta.path, to.first()),
                PlanItem::Receive { meta, from, .. } => (&meta.path, Some(from)),
                PlanItem::MakeDir { path, .. } => (path, None),
            };
            if !seen.insert((path.clone(), matches!(item, PlanItem::Send { .. }))) {
                return self.disconnect(conn, "sent a plan naming a path twice");
            }
            if let Some(n) = node {
                if !self.by_node.contains_key(n) {
                    return self.disconnect(conn, "sent a plan naming a node we do not know");
                }
            }
            if let PlanItem::Send { to, .. } = item {
                if to.iter().any(|n| !self.by_node.contains_key(n)) {
                    return self.disconnect(conn, "sent a plan naming a node we do not know");
                }
            }
        }
        self.execute_items(items);
        self.maybe_part_done();
    }

    pub(super) fn follower_on_end(&mut self, conn: ConnId, sid: u64, ok: bool) {
        if self.joined_session(conn, sid).is_none() {
            return;
        }
        let Some(s) = self.session.take() else { return };
        let name = self.storages[s.storage].cfg.name.clone();
        self.sender.cancel_session(sid, &self.net);
        self.incoming.retain(|_, inc| inc.sid != sid);
        let leader = self.node_name(conn);
        if ok || s.local_done {
            log_session_end(&name, &s.stats, s.stats.failed);
            let mut peers = vec![];
            if let Some(p) = self.peers.get(&conn) {
                peers.push(p.node.clone());
            }
            self.record(
                s.storage,
                StorageResult::Synced {
                    peers,
                    stats: s.stats,
                },
            );
        } else {
            log::warn!("{name}: session {sid:016x} ended early by {leader}");
            self.record(
                s.storage,
                StorageResult::Failed(format!("{leader} ended the session early")),
            );
        }
    }

    // -----------------------------------------------------------------------------------
    // Both roles

    /// Carries out this node's part of a plan: directories now, receives registered, sends
    /// queued.
    fn execute_items(&mut self, items: Vec<PlanItem>) {
        let Some(s) = self.session.as_mut() else {
            return;
        };
        let storage = &self.storages[s.storage];
        for item in items {
            match item {
                PlanItem::MakeDir { path, mode } => {
                    if s.ignore.is_ignored(&path, true) {
                        continue;
                    }
                    if let Err(e) = storage.dir.create_dir_all(&path, mode) {
                        log::warn!("{}: cannot create directory {path}: {e}", storage.cfg.name);
                        s.stats.failed += 1;
                    }
                }
                PlanItem::Receive { meta, from, expect } => {
                    if s.ignore.is_ignored(&meta.path, false) {
                        log::debug!(
                            "{}: not accepting {}: ignored here",
                            storage.cfg.name,
                            meta.path
                        );
                        s.declined.insert(meta.path);
                        continue;
                    }
                    s.expected.insert(
                        meta.path.clone(),
                        Expected {
                            from,
                            meta,
                            expect,
                            started: false,
                        },
                    );
                }
                PlanItem::Send { meta, to } => {
                    let dests: Vec<Dest> = to
                        .iter()
                        .filter_map(|n| self.by_node.get(n))
                        .filter_map(|c| self.peers.get(c))
                        .map(|p| Dest {
                            conn: p.conn,
                            outbound: p.outbound.clone(),
                        })
                        .collect();
                    s.sends_left += 1;
                    self.sender.push(OutJob {
                        sid: s.sid,
                        meta,
                        to: dests,
                    });
                }
            }
        }
    }

    /// Reports this node's part as done once every send and receive is resolved.
    fn maybe_part_done(&mut self) {
        let Some(s) = self.session.as_mut() else {
            return;
        };
        if s.phase != Phase::Executing || s.local_done || s.sends_left > 0 || !s.expected.is_empty()
        {
            return;
        }
        s.local_done = true;
        let (sid, stats) = (s.sid, s.stats);
        match s.leader {
            Some(conn) => self.send(conn, Message::PartDone { sid, stats }),
            None => self.leader_maybe_end(),
        }
    }

    pub(super) fn on_send_done(&mut self, done: SendDone) {
        let Some(s) = self.session.as_mut() else {
            return;
        };
        let sid = match &done {
            SendDone::Sent { sid, .. } | SendDone::Failed { sid, .. } => *sid,
        };
        if s.sid != sid {
            return;
        }
        s.last_activity = Instant::now();
        s.sends_left = s.sends_left.saturating_sub(1);
        let name = &self.storages[s.storage].cfg.name;
        match done {
            SendDone::Sent {
                bytes, receivers, ..
            } => {
                s.stats.files_sent += receivers as u32;
                s.stats.bytes_sent += bytes * receivers as u64;
            }
            SendDone::Failed {
                path,
                reason,
                benign,
                ..
            } => {
                if benign {
                    log::info!("{name}: not sending {path}: {reason}");
                } else {
                    log::warn!("{name}: failed to send {path}: {reason}");
                    s.stats.failed += 1;
                }
            }
        }
        self.maybe_part_done();
    }

    pub(super) fn on_file_start(&mut self, conn: ConnId, sid: u64, xid: u32, meta: FileMeta) {
        let reject = |this: &mut SyncState, reason: &str| {
            this.send(
                conn,
                Message::FileReject {
                    xid,
                    reason: reason.to_owned(),
                },
            );
        };
        let Some(from) = self.peers.get(&conn).map(|p| p.node.clone()) else {
            return;
        };
        let Some(s) = self
            .session
            .as_mut()
            .filter(|s| s.sid == sid && s.phase == Phase::Executing)
        else {
            // Late traffic of an aborted session: harmless, say no.
            return reject(self, "no such session here");
        };
        s.last_activity = Instant::now();
        if s.declined.contains(&meta.path) {
            return reject(self, "ignored by the receiver's .ignore");
        }
        let matches = s.expected.get(&meta.path).is_some_and(|e| {
            !e.started
                && e.from == from
                && e.meta.size == meta.size
                && e.meta.mtime_ns == meta.mtime_ns
        });
        if !matches || self.incoming.contains_key(&(conn, xid)) {
            return self.disconnect(
                conn,
                &format!("sent {} which the plan did not announce", meta.path),
            );
        }
        let Some(e) = s.expected.get_mut(&meta.path) else {
            return;
        };
        e.started = true;
        let expect = e.expect;
        let storage = &self.storages[s.storage];
        if let Ok(free) = storage.dir.free_space() {
            if meta.size > free {
                log::warn!(
                    "{}: not enough space for {} ({} needed, {} free)",
                    storage.cfg.name,
                    meta.path,
                    meta.size,
                    free
                );
                s.expected.remove(&meta.path);
                s.stats.failed += 1;
                reject(self, "not enough space on the receiver");
                return self.maybe_part_done();
            }
        }
        self.incoming
            .insert((conn, xid), Incoming::new(sid, meta, expect));
    }

    pub(super) fn on_file_data(&mut self, conn: ConnId, xid: u32, data: &[u8]) {
        let Some(s) = self.session.as_mut() else {
            return;
        };
        let Some(inc) = self.incoming.get_mut(&(conn, xid)) else {
            // Data for a transfer we rejected or dropped; the sender stops soon.
            return;
        };
        s.last_activity = Instant::now();
        let storage = &self.storages[s.storage];
        if inc.meta.size < data.len() as u64 + inc.received() {
            let path = inc.meta.path.clone();
            self.incoming.remove(&(conn, xid));
            return self.disconnect(conn, &format!("sent more bytes than announced for {path}"));
        }
        if let Err(e) = inc.write(&storage.dir, data) {
            let path = inc.meta.path.clone();
            log::warn!("{}: {e}", storage.cfg.name);
            self.incoming.remove(&(conn, xid));
            s.expected.remove(&path);
            s.stats.failed += 1;
            self.send(
                conn,
                Message::FileReject {
                    xid,
                    reason: "write failed on the receiver".into(),
                },
            );
            self.maybe_part_done();
        }
    }

    pub(super) fn on_file_end(&mut self, conn: ConnId, xid: u32, hash: &Digest) {
        let Some(inc) = self.incoming.remove(&(conn, xid)) else {
            return;
        };
        let Some(s) = self.session.as_mut().filter(|s| s.sid == inc.sid) else {
            return;
        };
        s.last_activity = Instant::now();
        let storage = &self.storages[s.storage];
        let path = inc.meta.path.clone();
        match inc.finish(&storage.dir, hash) {
            RecvDone::Committed { bytes } => {
                log::debug!("{}: received {path}", storage.cfg.name);
                s.stats.files_received += 1;
                s.stats.bytes_received += bytes;
            }
            RecvDone::KeptLocal(why) => log::info!("{}: {why}", storage.cfg.name),
            RecvDone::Failed(why) => {
                log::warn!("{}: {why}", storage.cfg.name);
                s.stats.failed += 1;
            }
        }
        s.expected.remove(&path);
        self.maybe_part_done();
    }

    pub(super) fn on_file_abort(&mut self, conn: ConnId, xid: u32, reason: &str) {
        let Some(inc) = self.incoming.remove(&(conn, xid)) else {
            return;
        };
        let Some(s) = self.session.as_mut().filter(|s| s.sid == inc.sid) else {
            return;
        };
        // The sender counts its own failures; a source that changed is not one.
        log::info!(
            "{}: {} not received: {reason}",
            self.storages[s.storage].cfg.name,
            inc.meta.path
        );
        s.expected.remove(&inc.meta.path);
        drop(inc);
        self.maybe_part_done();
    }

    /// Ends the current session early. `timed_out` only changes the log line.
    pub(super) fn abort_session(&mut self, reason: &str, timed_out: bool) {
        let Some(s) = self.session.take() else { return };
        let name = self.storages[s.storage].cfg.name.clone();
        if timed_out {
            log::warn!("{name}: session {:016x} abandoned: {reason}", s.sid);
        } else {
            log::warn!("{name}: session {:016x} aborted: {reason}", s.sid);
        }
        self.sender.cancel_session(s.sid, &self.net);
        // Dropping an incoming transfer removes its temporary file.
        self.incoming.retain(|_, inc| inc.sid != s.sid);
        match s.leader {
            None => {
                for p in &s.participants {
                    self.send(
                        p.conn,
                        Message::SessionEnd {
                            sid: s.sid,
                            ok: false,
                        },
                    );
                }
            }
            Some(conn) => self.send(
                conn,
                Message::SessionAbort {
                    sid: s.sid,
                    reason: reason.to_owned(),
                },
            ),
        }
        if reason != "a participant is busy" {
            self.record(s.storage, StorageResult::Failed(reason.to_owned()));
        }
    }
}

fn log_session_end(name: &str, stats: &PartStats, failed: u32) {
    log::info!(
        "{name}: session done: received {} file(s) ({} bytes), sent {} file(s) ({} bytes){}",
        stats.files_received,
        stats.bytes_received,
        stats.files_sent,
        stats.bytes_sent,
        if failed > 0 {
            format!(", {failed} failed")
        } else {
            String::new()
        }
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diff::Target;

    fn n(s: &str) -> NodeId {
        NodeId::new(s).unwrap()
    }

    #[test]
    fn plan_items_split_ops_per_node() {
        let meta = FileMeta::file(RelPath::new("f").unwrap(), 3, 9, 0o644);
        let old = FileMeta::file(RelPath::new("f").unwrap(), 1, 2, 0o644);
        let ops = vec![
            Op::MakeDir {
                path: RelPath::new("d").unwrap(),
                mode: 0o700,
                targets: vec![1],
            },
            Op::CopyFile {
                meta: meta.clone(),
                sources: vec![0],
                targets: vec![
                    Target {
                        node: 1,
                        current: Some(old),
                    },
                    Target {
                        node: 2,
                        current: None,
                    },
                ],
            },
        ];
        let parts = plan_items(&ops, &[n("a"), n("b"), n("c")]);
        assert_eq!(
            parts[0],
            vec![PlanItem::Send {
                meta: meta.clone(),
                to: vec![n("b"), n("c")]
            }]
        );
        assert_eq!(
            parts[1],
            vec![
                PlanItem::MakeDir {
                    path: RelPath::new("d").unwrap(),
                    mode: 0o700
                },
                PlanItem::Receive {
                    meta: meta.clone(),
                    from: n("a"),
                    expect: Some((1, 2))
                }
            ]
        );
        assert_eq!(
            parts[2],
            vec![PlanItem::Receive {
                meta,
                from: n("a"),
                expect: None
            }]
        );
    }

    #[test]
    fn batches_respect_the_byte_budget() {
        let items: Vec<usize> = vec![100_000; 10];
        let b = batches(items, |&n| n);
        assert!(b.iter().all(|c| c.iter().sum::<usize>() <= BATCH_BYTES));
        assert_eq!(b.iter().map(Vec::len).sum::<usize>(), 10);
        let huge = batches(vec![BATCH_BYTES * 2], |&n| n);
        assert_eq!(huge, vec![vec![BATCH_BYTES * 2]]);
    }
}
