//! The leader's part of a session: start it, collect every participant's summary, bring
//! its copies of their indexes up to date (only the changes since its copy), run the
//! streamed diff over its own index and those copies and send each participant its part of
//! the plan, say `Go` once everyone is ready, and end the session when every part is done.

use std::collections::{BTreeSet, HashSet};
use std::time::Instant;

use super::plan::Planner;
use super::session::{violated, Over, Participant, Phase, Role, Session};
use super::{Ctx, Fresh, Io, LocalIndex, Violation, MAX_ENTRIES};
use crate::history::Record;
use crate::model::NodeId;
use crate::proto::{self, PartStats, PlanItem, SessionMsg};
use crate::run::SyncError;

/// Plan items a leader gathers for one node before sending them (or, its own, taking
/// them). Decoded items are large (a few hundred bytes each) and one batch per node is
/// held at a time: 256 keeps five nodes' batches under half a MiB.
pub(super) const PLAN_FLUSH_ITEMS: usize = 256;

impl Session {
    /// Scans `storage` (unless `fresh` holds a scan of it that nothing has changed since)
    /// and starts session `sid` with every node in `granted`.
    pub(super) fn lead(
        name: &str,
        sid: u64,
        storage: usize,
        granted: BTreeSet<NodeId>,
        fresh: Option<Fresh>,
        now: Instant,
        io: &mut dyn Io,
    ) -> Result<Session, SyncError> {
        let (local, ignore, scanned_at) = match fresh {
            Some(f) => (f.local, f.ignore, f.at),
            None => {
                let (local, ignore) = io.scan(storage)?;
                (local, ignore, now)
            }
        };
        let names: Vec<&str> = granted.iter().map(NodeId::as_str).collect();
        log::info!(
            "{name}: leading session {sid:016x} with {}",
            names.join(", ")
        );
        let members: Vec<NodeId> = granted.iter().cloned().collect();
        for n in &granted {
            io.send(
                n,
                SessionMsg::Start {
                    sid,
                    storage: name.to_owned(),
                    members: members.clone(),
                }
                .into(),
            );
        }
        let participants = granted.into_iter().map(Participant::new).collect();
        Ok(Session::new(
            sid,
            storage,
            Role::Lead { participants },
            local,
            ignore,
            scanned_at,
            now,
        ))
    }

    fn participant(&mut self, node: &NodeId) -> Option<&mut Participant> {
        match &mut self.role {
            Role::Lead { participants } => participants.iter_mut().find(|p| p.node == *node),
            Role::Follow { .. } => None,
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn leader_on_summary(
        &mut self,
        cx: &Ctx<'_>,
        from: &NodeId,
        sid: u64,
        summary: LocalIndex,
        peers: Vec<NodeId>,
        now: Instant,
        io: &mut dyn Io,
    ) -> Option<Over> {
        if !self.led(sid, now) {
            return None;
        }
        let p = self.participant(from)?;
        if p.summary.is_some() {
            return violated(io, from, Violation::TwoSummaries);
        }
        if summary.count > MAX_ENTRIES {
            return violated(io, from, Violation::IndexTooLarge);
        }
        p.summary = Some(summary);
        p.peers = peers;
        self.leader_collect(cx, now, io)
    }

    /// Once every summary is in: done if every index equals this node's; otherwise each
    /// participant whose index this node's copy does not have up to its summary is asked
    /// for what changed since that copy (all of it without a copy).
    fn leader_collect(&mut self, cx: &Ctx<'_>, now: Instant, io: &mut dyn Io) -> Option<Over> {
        let storage = self.storage;
        let sid = self.sid;
        let local_digest = self.local.digest;
        let Role::Lead { participants } = &mut self.role else {
            return None;
        };
        if participants.iter().any(|p| p.summary.is_none()) || self.phase != Phase::Collect {
            return None;
        }
        if participants
            .iter()
            .any(|p| p.index_requested || p.index_done)
        {
            return self.leader_maybe_plan(cx, now, io);
        }
        if participants
            .iter()
            .all(|p| p.summary.is_some_and(|s| s.digest == local_digest))
        {
            let name = &cx.storages[storage];
            log::info!("{name}: already in sync (index digests match)");
            self.phase = Phase::Go;
            self.local_done = true;
            for p in participants.iter_mut() {
                p.ready = true;
                p.done = Some(PartStats::default());
            }
            return self.leader_maybe_end(cx, now, io);
        }
        let mut failure = None;
        for p in participants.iter_mut() {
            let Some(s) = p.summary else { continue };
            let copy = io.remote_state(storage, &p.node);
            if copy == Some((s.index_id, s.seq)) {
                p.index_done = true;
                continue;
            }
            let since = match copy {
                Some((id, seq)) if id == s.index_id && seq <= s.seq => seq,
                _ => 0,
            };
            if let Err(e) = io.remote_begin(storage, &p.node, since == 0) {
                failure = Some(e);
                break;
            }
            p.index_requested = true;
            io.send(&p.node, SessionMsg::IndexRequest { sid, since }.into());
        }
        if let Some(e) = failure {
            return Some(self.abort(&cx.storages[storage], e, io));
        }
        self.leader_maybe_plan(cx, now, io)
    }

    pub(super) fn leader_on_index_chunk(
        &mut self,
        cx: &Ctx<'_>,
        from: &NodeId,
        sid: u64,
        records: Vec<Record>,
        now: Instant,
        io: &mut dyn Io,
    ) -> Option<Over> {
        if !self.led(sid, now) {
            return None;
        }
        let storage = self.storage;
        let p = self.participant(from)?;
        if !p.index_requested || p.index_done {
            return violated(io, from, Violation::UnrequestedIndex);
        }
        p.records += records.len() as u64;
        if p.records > MAX_ENTRIES.saturating_mul(2) {
            return violated(io, from, Violation::IndexTooLarge);
        }
        if let Err(e) = io.remote_apply(storage, from, &records) {
            let name = &cx.storages[storage];
            return Some(self.abort(name, e, io));
        }
        None
    }

    pub(super) fn leader_on_index_end(
        &mut self,
        cx: &Ctx<'_>,
        from: &NodeId,
        sid: u64,
        seq: u64,
        now: Instant,
        io: &mut dyn Io,
    ) -> Option<Over> {
        if !self.led(sid, now) {
            return None;
        }
        let storage = self.storage;
        let p = self.participant(from)?;
        if !p.index_requested || p.index_done {
            return violated(io, from, Violation::UnrequestedIndexEnd);
        }
        let Some(summary) = p.summary else {
            return violated(io, from, Violation::IndexMismatch);
        };
        if seq < summary.seq {
            return violated(io, from, Violation::IndexMismatch);
        }
        p.index_done = true;
        io.remote_end(storage, from, summary.index_id, seq);
        self.leader_maybe_plan(cx, now, io)
    }

    /// Once every index asked for is in: diff, route, distribute.
    fn leader_maybe_plan(&mut self, cx: &Ctx<'_>, now: Instant, io: &mut dyn Io) -> Option<Over> {
        let Role::Lead { participants } = &mut self.role else {
            return None;
        };
        let collected = participants
            .iter()
            .all(|p| p.summary.is_some() && (!p.index_requested || p.index_done));
        if !collected || self.phase != Phase::Collect {
            return None;
        }
        let name = &cx.storages[self.storage];
        let me = cx.me.clone();
        // Participants in node-id order, this node included, so the diff's tie-breaks do not
        // depend on who leads.
        let mut nodes: Vec<(NodeId, Option<usize>)> = vec![(me.clone(), None)];
        for (k, p) in participants.iter().enumerate() {
            nodes.push((p.node.clone(), Some(k)));
        }
        nodes.sort_by(|a, b| a.0.cmp(&b.0));
        // Who can send to whom: the leader reaches everyone; participants said whom they see.
        let ids: Vec<NodeId> = nodes.iter().map(|(n, _)| n.clone()).collect();
        let mut links: HashSet<(NodeId, NodeId)> = HashSet::new();
        for p in participants.iter() {
            links.insert((me.clone(), p.node.clone()));
            links.insert((p.node.clone(), me.clone()));
            for q in &p.peers {
                links.insert((p.node.clone(), q.clone()));
            }
        }
        let linked = |a: &NodeId, b: &NodeId| {
            links.contains(&(a.clone(), b.clone())) && links.contains(&(b.clone(), a.clone()))
        };
        let sources: Vec<Option<NodeId>> =
            nodes.iter().map(|(n, k)| k.map(|_| n.clone())).collect();
        // The diff is streamed from the store: each path's decision becomes plan items at
        // once, and a node's items go out (or, this node's own, are taken) as soon as a
        // message's worth has gathered, so no node's plan is ever held whole.
        let sid = self.sid;
        let mut planner = Planner::new(&ids, &linked);
        let mut parts: Vec<Vec<PlanItem>> = vec![Vec::new(); nodes.len()];
        let mut paths = 0usize;
        let mut planned = 0usize;
        let mut own: Result<(), Violation> = Ok(());
        let result = io.diff(self.storage, &sources, &mut |here, view, send| {
            paths += 1;
            let before: usize = parts.iter().map(Vec::len).sum();
            planner.add(here, view, &mut parts);
            planned += parts.iter().map(Vec::len).sum::<usize>() - before;
            for (pos, (node, k)) in nodes.iter().enumerate() {
                if parts[pos].len() >= PLAN_FLUSH_ITEMS {
                    let items = std::mem::take(&mut parts[pos]);
                    match k {
                        Some(_) => flush(send, node, sid, items),
                        None if own.is_ok() => own = self.take_items(cx, items),
                        None => {}
                    }
                }
            }
        });
        if let Err(e) = result {
            return Some(self.abort(name, e, io));
        }
        planner.finish(&mut parts);
        log::info!("{name}: {paths} path(s) compared, {planned} step(s) planned");
        self.phase = Phase::Ready;
        for (pos, (node, k)) in nodes.iter().enumerate() {
            let items = std::mem::take(&mut parts[pos]);
            match k {
                None if own.is_ok() => own = self.take_items(cx, items),
                None => {}
                Some(_) => {
                    let mut send = |to: &NodeId, msg| io.send(to, msg);
                    flush(&mut send, node, sid, items);
                    io.send(node, SessionMsg::PlanEnd { sid }.into());
                }
            }
        }
        if let Err(v) = own.and_then(|()| self.register_steps(cx, io)) {
            // The planner broke a rule it is the one to keep: a bug, never a peer's doing.
            let why = SyncError::History(format!("this node's own plan is invalid: {v}"));
            return Some(self.abort(name, why, io));
        }
        self.leader_maybe_go(cx, now, io)
    }

    pub(super) fn leader_on_ready(
        &mut self,
        cx: &Ctx<'_>,
        from: &NodeId,
        sid: u64,
        now: Instant,
        io: &mut dyn Io,
    ) -> Option<Over> {
        if !self.led(sid, now) {
            return None;
        }
        if self.phase == Phase::Collect {
            return violated(io, from, Violation::ReadyBeforePlan);
        }
        if let Some(p) = self.participant(from) {
            p.ready = true;
        }
        self.leader_maybe_go(cx, now, io)
    }

    fn leader_maybe_go(&mut self, cx: &Ctx<'_>, now: Instant, io: &mut dyn Io) -> Option<Over> {
        let Role::Lead { participants } = &self.role else {
            return None;
        };
        if self.phase != Phase::Ready || participants.iter().any(|p| !p.ready) {
            return None;
        }
        self.phase = Phase::Go;
        for p in participants {
            io.send(&p.node, SessionMsg::Go { sid: self.sid }.into());
        }
        self.release_held(io);
        self.maybe_part_done(cx, now, io)
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn leader_on_part_done(
        &mut self,
        cx: &Ctx<'_>,
        from: &NodeId,
        sid: u64,
        stats: PartStats,
        now: Instant,
        io: &mut dyn Io,
    ) -> Option<Over> {
        if !self.led(sid, now) {
            return None;
        }
        if self.phase == Phase::Collect {
            return violated(io, from, Violation::DoneBeforePlan);
        }
        if let Some(p) = self.participant(from) {
            p.done = Some(stats);
        }
        self.leader_maybe_end(cx, now, io)
    }

    /// Ends the session once every part, this node's included, is done.
    pub(super) fn leader_maybe_end(
        &mut self,
        cx: &Ctx<'_>,
        _now: Instant,
        io: &mut dyn Io,
    ) -> Option<Over> {
        let Role::Lead { participants } = &self.role else {
            return None;
        };
        if !self.local_done || participants.iter().any(|p| p.done.is_none()) {
            return None;
        }
        let failed = self.stats.failed
            + participants
                .iter()
                .map(|p| p.done.map_or(0, |d| d.failed))
                .sum::<u32>();
        for p in participants {
            io.send(
                &p.node,
                SessionMsg::End {
                    sid: self.sid,
                    ok: failed == 0,
                }
                .into(),
            );
        }
        let peers = participants.iter().map(|p| p.node.clone()).collect();
        Some(self.done(cx, peers, failed, failed == 0))
    }
}

/// Sends `items` to `node` as `PlanChunk` messages of at most `BATCH_BYTES` each.
fn flush(send: &mut super::Send<'_>, node: &NodeId, sid: u64, items: Vec<PlanItem>) {
    if items.is_empty() {
        return;
    }
    for chunk in proto::batches(items, proto::plan_item_len) {
        send(node, SessionMsg::PlanChunk { sid, items: chunk }.into());
    }
}
