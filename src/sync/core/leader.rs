//! The leader's part of a session: start it, collect digests (and indexes only where they
//! differ), run the streamed diff and send each participant its part of the plan, say `Go`
//! once everyone is ready, and end the session when every part is done.

use std::collections::{BTreeSet, HashSet};
use std::time::Instant;

use super::plan::{send_plan_chunks, Planner, PLAN_FLUSH_ITEMS};
use super::session::{violated, Over, Participant, Phase, Role, Session};
use super::{Ctx, Io, Violation, MAX_ENTRIES};
use crate::diff;
use crate::model::{FileMeta, NodeId};
use crate::proto::{self, Digest, PartStats, PlanItem, SessionMsg};
use crate::run::SyncError;

impl Session {
    /// Scans `storage` and starts session `sid` with every node in `granted`.
    pub(super) fn lead(
        name: &str,
        sid: u64,
        storage: usize,
        granted: BTreeSet<NodeId>,
        now: Instant,
        io: &mut dyn Io,
    ) -> Result<Session, SyncError> {
        let (index, ignore) = io.scan(storage)?;
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
        let digest = proto::index_digest(&index);
        let participants = granted.into_iter().map(Participant::new).collect();
        Ok(Session::new(
            sid,
            storage,
            Role::Lead { participants },
            index,
            digest,
            ignore,
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
        count: u64,
        digest: Digest,
        peers: Vec<NodeId>,
        now: Instant,
        io: &mut dyn Io,
    ) -> Option<Over> {
        if !self.led(sid, now) {
            return None;
        }
        let local_digest = self.local_digest;
        let p = self.participant(from)?;
        if p.summary.is_some() {
            return violated(io, from, Violation::TwoSummaries);
        }
        p.summary = Some((count, digest));
        p.peers = peers;
        if digest != local_digest {
            if count > MAX_ENTRIES {
                return violated(io, from, Violation::IndexTooLarge);
            }
            p.index_requested = true;
            io.send(from, SessionMsg::IndexRequest { sid }.into());
        }
        self.leader_maybe_plan(cx, now, io)
    }

    pub(super) fn leader_on_index_chunk(
        &mut self,
        from: &NodeId,
        sid: u64,
        entries: Vec<FileMeta>,
        now: Instant,
        io: &mut dyn Io,
    ) {
        if !self.led(sid, now) {
            return;
        }
        let Some(p) = self.participant(from) else {
            return;
        };
        if !p.index_requested || p.index_done {
            return io.disconnect(from, Violation::UnrequestedIndex);
        }
        if (p.index.len() + entries.len()) as u64 > MAX_ENTRIES {
            return io.disconnect(from, Violation::IndexTooLarge);
        }
        for e in entries {
            // Strictly increasing paths: sorted and without duplicates, as the diff needs.
            if p.index.last().is_some_and(|last| last.path >= e.path) {
                return io.disconnect(from, Violation::IndexOutOfOrder);
            }
            p.index.push(e);
        }
    }

    pub(super) fn leader_on_index_end(
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
        let p = self.participant(from)?;
        if !p.index_requested || p.index_done {
            return violated(io, from, Violation::UnrequestedIndexEnd);
        }
        p.index_done = true;
        self.leader_maybe_plan(cx, now, io)
    }

    /// Once every digest (and every index asked for) is in: diff, route, distribute.
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
        if participants.iter().all(|p| !p.index_requested) {
            log::info!("{name}: already in sync (index digests match)");
            self.phase = Phase::Go;
            self.local_done = true;
            for p in participants.iter_mut() {
                p.ready = true;
                p.done = Some(PartStats::default());
            }
            return self.leader_maybe_end(cx, now, io);
        }
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
        // The diff is streamed: each operation becomes plan items at once, and a remote
        // node's items go out as soon as a message's worth has gathered, so the leader never
        // holds the whole plan of its peers. Its own part is kept and registered at the end.
        let sid = self.sid;
        let mut planner = Planner::new(&ids, &linked);
        let mut parts: Vec<Vec<PlanItem>> = vec![Vec::new(); nodes.len()];
        let mut planned = 0usize;
        let conflicts = {
            let indexes: Vec<&[FileMeta]> = nodes
                .iter()
                .map(|(_, k)| match k {
                    Some(k) if participants[*k].index_requested => {
                        participants[*k].index.as_slice()
                    }
                    _ => self.local_index.as_slice(),
                })
                .collect();
            diff::diff_each(&indexes, &mut |op| {
                planned += 1;
                planner.add(&op, &mut parts);
                for (pos, (node, k)) in nodes.iter().enumerate() {
                    if k.is_some() && parts[pos].len() >= PLAN_FLUSH_ITEMS {
                        send_plan_chunks(io, node, sid, std::mem::take(&mut parts[pos]));
                    }
                }
            })
        };
        self.local_index = Vec::new();
        for p in participants.iter_mut() {
            p.index = Vec::new();
        }
        for c in &conflicts {
            log::warn!("{name}: left {} alone: {}", c.path, c.reason);
        }
        log::info!("{name}: {planned} operation(s) planned");
        self.phase = Phase::Ready;
        let mut local = Vec::new();
        for (pos, (node, k)) in nodes.iter().enumerate() {
            let items = std::mem::take(&mut parts[pos]);
            match k {
                None => local = items,
                Some(_) => {
                    send_plan_chunks(io, node, sid, items);
                    io.send(node, SessionMsg::PlanEnd { sid }.into());
                }
            }
        }
        self.register_items(cx, local, io);
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
