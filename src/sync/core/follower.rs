//! A follower's part of a session: join it (scan, send the digest and whom this node sees),
//! send the index when asked, take the plan chunk by chunk and register it, start sending
//! on `Go`, and finish on `SessionEnd`.

use std::time::Instant;

use super::session::{violated, Over, Phase, Role, Session};
use super::{Ctx, Io, Violation, MAX_ENTRIES};
use crate::model::NodeId;
use crate::proto::{self, PlanItem, SessionMsg};
use crate::run::SyncError;

impl Session {
    /// Joins session `sid` of `storage` (index `storage_idx`) led by `leader`: scans and
    /// answers with this node's digest and the peers it is connected to.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn follow(
        me: &NodeId,
        storage: &str,
        sid: u64,
        storage_idx: usize,
        leader: &NodeId,
        members: Vec<NodeId>,
        peers: Vec<NodeId>,
        now: Instant,
        io: &mut dyn Io,
    ) -> Result<Session, SyncError> {
        let (local, ignore) = io.scan(storage_idx)?;
        log::info!("{storage}: joining session {sid:016x} led by {leader}");
        io.send(
            leader,
            SessionMsg::IndexSummary {
                sid,
                index_id: local.index_id,
                seq: local.seq,
                count: local.count,
                digest: local.digest,
                peers,
            }
            .into(),
        );
        let role = Role::Follow {
            leader: leader.clone(),
            members: members.into_iter().filter(|n| n != me).collect(),
        };
        Ok(Session::new(
            sid,
            storage_idx,
            role,
            local,
            ignore,
            now,
            now,
        ))
    }

    /// The leader asks for this node's index changes after `since`: they go out page by
    /// page, straight from the store.
    pub(super) fn follower_send_index(
        &mut self,
        cx: &Ctx<'_>,
        from: &NodeId,
        sid: u64,
        since: u64,
        now: Instant,
        io: &mut dyn Io,
    ) -> Option<Over> {
        if !self.joined(from, sid, now) {
            return None;
        }
        let leader = from.clone();
        let sent = io.index_since(self.storage, since, &mut |records, send| {
            for chunk in proto::batches(records, proto::record_len) {
                send(
                    &leader,
                    SessionMsg::IndexChunk {
                        sid,
                        records: chunk,
                    }
                    .into(),
                );
            }
        });
        match sent {
            Ok(seq) => {
                io.send(from, SessionMsg::IndexEnd { sid, seq }.into());
                None
            }
            Err(e) => Some(self.abort(&cx.storages[self.storage], e, io)),
        }
    }

    /// A chunk of this node's part of the plan: registered as it comes (see
    /// [`Session::take_items`]).
    pub(super) fn follower_on_plan_chunk(
        &mut self,
        cx: &Ctx<'_>,
        from: &NodeId,
        sid: u64,
        items: Vec<PlanItem>,
        now: Instant,
        io: &mut dyn Io,
    ) {
        if !self.joined(from, sid, now) {
            return;
        }
        if self.phase != Phase::Collect {
            return io.disconnect(from, Violation::PlanAfterEnd);
        }
        self.planned += items.len() as u64;
        if self.planned > MAX_ENTRIES {
            return io.disconnect(from, Violation::PlanTooLarge);
        }
        if let Err(v) = self.take_items(cx, items) {
            io.disconnect(from, v);
        }
    }

    pub(super) fn follower_on_plan_end(
        &mut self,
        cx: &Ctx<'_>,
        from: &NodeId,
        sid: u64,
        now: Instant,
        io: &mut dyn Io,
    ) -> Option<Over> {
        if !self.joined(from, sid, now) {
            return None;
        }
        if self.phase != Phase::Collect {
            return violated(io, from, Violation::PlanEndedTwice);
        }
        self.phase = Phase::Ready;
        if let Err(v) = self.register_steps(cx, io) {
            return violated(io, from, v);
        }
        io.send(from, SessionMsg::PlanReady { sid }.into());
        self.maybe_part_done(cx, now, io)
    }

    pub(super) fn follower_on_go(
        &mut self,
        cx: &Ctx<'_>,
        from: &NodeId,
        sid: u64,
        now: Instant,
        io: &mut dyn Io,
    ) -> Option<Over> {
        if !self.joined(from, sid, now) {
            return None;
        }
        if self.phase != Phase::Ready {
            return violated(io, from, Violation::GoBeforePlan);
        }
        self.phase = Phase::Go;
        self.release_held(io);
        self.maybe_part_done(cx, now, io)
    }

    pub(super) fn follower_on_end(
        &mut self,
        cx: &Ctx<'_>,
        from: &NodeId,
        sid: u64,
        ok: bool,
        now: Instant,
        io: &mut dyn Io,
    ) -> Option<Over> {
        if !self.joined(from, sid, now) {
            return None;
        }
        io.cancel_session(sid);
        if ok || self.local_done {
            let mut peers = vec![from.clone()];
            if let Role::Follow { members, .. } = &self.role {
                peers.extend(members.iter().cloned());
            }
            let failed = self.stats.failed;
            Some(self.done(cx, peers, failed, ok && failed == 0))
        } else {
            let name = &cx.storages[self.storage];
            log::warn!("{name}: session {sid:016x} ended early by {from}");
            Some(Over::Aborted {
                storage: self.storage,
                why: SyncError::EndedEarly(from.clone()),
            })
        }
    }
}
