//! The session machine: one running session on this node, led here or joined, and the parts
//! both roles share — the plan this node registered, the files it expects and sends, its
//! statistics, its liveness. The leader's steps are in `leader.rs`, the follower's in
//! `follower.rs`. Every step that can end the session returns how it ended ([`Over`]);
//! [`Core`](super::Core) then drops the session and tells the election.

use std::collections::HashSet;
use std::time::Instant;

use super::expected::{Expected, Row, Twice, Wait};
use super::plan::check_plan;
use super::sends::Sends;
use super::{
    Accepted, Ctx, Deleted, Io, LocalIndex, Received, Refusal, Sent, StepError, Violation,
    ALIVE_EVERY, SENDER_LOST, SESSION_IDLE_TIMEOUT, SESSION_YIELD,
};
use crate::history::{Entry, Vv};
use crate::ignore::IgnoreMatcher;
use crate::model::{EntryKind, FileMeta, NodeId, RelPath, Version};
use crate::proto::{PartStats, PlanItem, SessionMsg};
use crate::run::SyncError;

/// How a session ended, for [`Core`](super::Core).
#[derive(Debug)]
pub(super) enum Over {
    /// It completed; `failed` files of this node's part (all parts, for the leader) did
    /// not move, and the storage is retried.
    Done {
        storage: usize,
        scanned_at: Instant,
        /// Whom it synchronized this node with.
        peers: Vec<NodeId>,
        stats: PartStats,
        failed: u32,
        /// No participant failed anything: the session synchronized this node with `peers`.
        clean: bool,
    },
    Aborted {
        storage: usize,
        why: SyncError,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Phase {
    /// Leader: waiting for digests and the indexes it asked for. Follower: for the plan.
    Collect,
    /// Plans distributed; waiting for every `PlanReady` (leader) or for `Go` (follower).
    Ready,
    /// Files are moving.
    Go,
}

/// How a session gives way to a node waiting for this one ([`Session::give_way`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum GiveWay {
    /// Abort it, telling the others.
    Abort,
    /// A follower leaves it: what is left of its part fails ([`Session::give_up_part`]),
    /// and the others' goes on.
    Leave,
    /// The leader gives up what is left of its own part and ends the session once its
    /// followers' parts are done (each gives way on its own).
    GiveUp,
}

/// A participant of a session this node leads.
pub(super) struct Participant {
    pub(super) node: NodeId,
    /// Its index as it announced it.
    pub(super) summary: Option<LocalIndex>,
    pub(super) peers: Vec<NodeId>,
    /// Records of its index received so far.
    pub(super) records: u64,
    pub(super) index_requested: bool,
    pub(super) index_done: bool,
    pub(super) ready: bool,
    pub(super) done: Option<PartStats>,
}

impl Participant {
    pub(super) fn new(node: NodeId) -> Participant {
        Participant {
            node,
            summary: None,
            peers: Vec::new(),
            records: 0,
            index_requested: false,
            index_done: false,
            ready: false,
            done: None,
        }
    }
}

pub(super) enum Role {
    Lead {
        participants: Vec<Participant>,
    },
    Follow {
        leader: NodeId,
        /// The other participants, as the leader announced them.
        members: Vec<NodeId>,
    },
}

pub(super) struct Session {
    pub(super) sid: u64,
    pub(super) storage: usize,
    pub(super) role: Role,
    pub(super) phase: Phase,
    pub(super) scanned_at: Instant,
    pub(super) local: LocalIndex,
    ignore: IgnoreMatcher,
    /// This node's local steps of the plan (directories, moves, versions, deletions), run
    /// together once the plan is complete, in the order they need. Receives and sends are
    /// registered as the plan's chunks arrive, so a plan of 100,000 files is never held.
    steps: Vec<PlanItem>,
    /// Items of this node's part taken so far (bounded by `MAX_ENTRIES`).
    pub(super) planned: u64,
    /// Sends held back until `Go`.
    held: Sends,
    sends_left: usize,
    expected: Expected,
    /// The node ids expected files refer to, each once.
    names: Vec<NodeId>,
    declined: HashSet<RelPath>,
    pub(super) stats: PartStats,
    read: u64,
    pub(super) local_done: bool,
    pub(super) last_activity: Instant,
    /// The last sign of progress: anything but a `SessionAlive`, which only says a peer is
    /// there (see [`Session::give_way`]).
    pub(super) last_progress: Instant,
    /// When this node last sent `SessionAlive`.
    alive_sent: Instant,
    /// Local progress (data moved) since the last `SessionAlive` sent.
    progressed: bool,
}

/// `from` broke the protocol: it is disconnected and the session goes on without a word.
pub(super) fn violated(io: &mut dyn Io, from: &NodeId, v: Violation) -> Option<Over> {
    io.disconnect(from, v);
    None
}

impl Session {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn new(
        sid: u64,
        storage: usize,
        role: Role,
        local: LocalIndex,
        ignore: IgnoreMatcher,
        scanned_at: Instant,
        now: Instant,
    ) -> Session {
        Session {
            sid,
            storage,
            role,
            phase: Phase::Collect,
            scanned_at,
            local,
            ignore,
            steps: Vec::new(),
            planned: 0,
            held: Sends::default(),
            sends_left: 0,
            expected: Expected::default(),
            names: Vec::new(),
            declined: HashSet::new(),
            stats: PartStats::default(),
            read: 0,
            local_done: false,
            last_activity: now,
            last_progress: now,
            alive_sent: now,
            progressed: false,
        }
    }

    /// The leader, or `None` when this node leads.
    pub(super) fn leader(&self) -> Option<&NodeId> {
        match &self.role {
            Role::Lead { .. } => None,
            Role::Follow { leader, .. } => Some(leader),
        }
    }

    pub(super) fn led_participants(&self) -> Option<Vec<NodeId>> {
        match &self.role {
            Role::Lead { participants } => {
                Some(participants.iter().map(|p| p.node.clone()).collect())
            }
            Role::Follow { .. } => None,
        }
    }

    pub(super) fn involves(&self, node: &NodeId) -> bool {
        match &self.role {
            Role::Lead { participants } => participants.iter().any(|p| p.node == *node),
            Role::Follow { leader, .. } => leader == node,
        }
    }

    pub(super) fn next_deadline(&self) -> Instant {
        (self.last_activity + SESSION_IDLE_TIMEOUT).min(self.alive_sent + ALIVE_EVERY)
    }

    pub(super) fn idle_too_long(&self, now: Instant) -> bool {
        now >= self.last_activity + SESSION_IDLE_TIMEOUT
    }

    /// Whether to give way to a node that has waited since `waited_since` for this one: no
    /// progress for [`SESSION_YIELD`] while it waited as long, so that a peer keeping a
    /// session alive without moving it (a leader that never plans, a participant that never
    /// answers) cannot hold every other peer off.
    ///
    /// Once files move, a follower leaves and a leader gives up its own part (see
    /// [`Session::give_up_part`]); the session goes on without them: files in flight
    /// between other nodes are no progress here, and must not be cut for a newcomer.
    pub(super) fn give_way(&self, waited_since: Instant, now: Instant) -> Option<GiveWay> {
        if now < self.last_progress.max(waited_since) + SESSION_YIELD {
            return None;
        }
        match (self.phase, &self.role) {
            (Phase::Collect | Phase::Ready, _) => Some(GiveWay::Abort),
            (Phase::Go, Role::Follow { .. }) => Some(GiveWay::Leave),
            (Phase::Go, Role::Lead { .. }) if !self.local_done => Some(GiveWay::GiveUp),
            (Phase::Go, Role::Lead { .. }) => None,
        }
    }

    /// Gives up what is left of this node's part (its sender stalled, the leader kept the
    /// session alive without files): what it still expects and still had to send fails
    /// (the next session retries it) and its transfers are dropped. A follower tells the
    /// leader its part is done, so the others' session ends without waiting for it; a
    /// leader ends the session if its followers are done.
    pub(super) fn give_up_part(
        &mut self,
        cx: &Ctx<'_>,
        now: Instant,
        io: &mut dyn Io,
    ) -> Option<Over> {
        if self.local_done {
            return None;
        }
        io.cancel_session(self.sid);
        let expected: usize = (0..self.names.len())
            .map(|k| self.expected.abandon_from(k as u32))
            .sum();
        let failed = expected + self.sends_left;
        self.sends_left = 0;
        self.stats.failed += u32::try_from(failed).unwrap_or(u32::MAX);
        self.local_done = true;
        match &self.role {
            Role::Follow { leader, .. } => {
                let (sid, stats) = (self.sid, self.stats);
                io.send(leader, SessionMsg::PartDone { sid, stats }.into());
                None
            }
            Role::Lead { .. } => self.leader_maybe_end(cx, now, io),
        }
    }

    /// The storage this session synchronizes.
    pub(super) fn storage(&self) -> usize {
        self.storage
    }

    /// Sends `SessionAlive` when due: the leader always, a participant only if it moved data
    /// since its last one.
    pub(super) fn heartbeat(&mut self, now: Instant, io: &mut dyn Io) {
        if now < self.alive_sent + ALIVE_EVERY {
            return;
        }
        let sid = self.sid;
        match &self.role {
            Role::Lead { participants } => {
                for p in participants {
                    io.send(&p.node, SessionMsg::Alive { sid }.into());
                }
            }
            Role::Follow { leader, .. } if self.progressed => {
                io.send(leader, SessionMsg::Alive { sid }.into())
            }
            Role::Follow { .. } => {}
        }
        self.alive_sent = now;
        self.progressed = false;
    }

    /// True (and the session's activity noted) if this node leads session `sid`.
    pub(super) fn led(&mut self, sid: u64, now: Instant) -> bool {
        let ours = self.sid == sid && matches!(self.role, Role::Lead { .. });
        if ours {
            self.last_activity = now;
            self.last_progress = now;
        }
        ours
    }

    /// True (and the session's activity noted) if `from` leads session `sid` here.
    pub(super) fn joined(&mut self, from: &NodeId, sid: u64, now: Instant) -> bool {
        let ours = self.sid == sid && self.leader() == Some(from);
        if ours {
            self.last_activity = now;
            self.last_progress = now;
        }
        ours
    }

    /// A session message from `from` (other than `SessionStart`, which [`Core`] handles).
    ///
    /// [`Core`]: super::Core
    pub(super) fn on_message(
        &mut self,
        cx: &Ctx<'_>,
        from: &NodeId,
        msg: SessionMsg,
        now: Instant,
        io: &mut dyn Io,
    ) -> Option<Over> {
        match msg {
            // Core::follow handles a new session; one for a running session is refused there.
            SessionMsg::Start { .. } => None,
            SessionMsg::Abort { sid, reason } if sid == self.sid && self.involves(from) => {
                let why = SyncError::AbortedBy {
                    node: from.clone(),
                    reason,
                };
                Some(self.abort(&cx.storages[self.storage], why, io))
            }
            SessionMsg::Abort { .. } => None,
            SessionMsg::IndexSummary {
                sid,
                index_id,
                seq,
                count,
                digest,
                peers,
            } => {
                let summary = LocalIndex {
                    index_id,
                    seq,
                    count,
                    digest,
                };
                self.leader_on_summary(cx, from, sid, summary, peers, now, io)
            }
            SessionMsg::IndexRequest { sid, since } => {
                self.follower_send_index(cx, from, sid, since, now, io)
            }
            SessionMsg::IndexChunk { sid, records } => {
                self.leader_on_index_chunk(cx, from, sid, records, now, io)
            }
            SessionMsg::IndexEnd { sid, seq } => {
                self.leader_on_index_end(cx, from, sid, seq, now, io)
            }
            SessionMsg::PlanChunk { sid, items } => {
                self.follower_on_plan_chunk(cx, from, sid, items, now, io);
                None
            }
            SessionMsg::PlanEnd { sid } => self.follower_on_plan_end(cx, from, sid, now, io),
            SessionMsg::PlanReady { sid } => self.leader_on_ready(cx, from, sid, now, io),
            // Either role: a sign of life.
            SessionMsg::Alive { sid } => {
                // Life, not progress: it keeps the session from timing out, not a node
                // that waits for this one out for ever.
                let progress = self.last_progress;
                if !self.led(sid, now) {
                    self.joined(from, sid, now);
                }
                self.last_progress = progress;
                None
            }
            SessionMsg::Go { sid } => self.follower_on_go(cx, from, sid, now, io),
            SessionMsg::PartDone { sid, stats } => {
                self.leader_on_part_done(cx, from, sid, stats, now, io)
            }
            SessionMsg::End { sid, ok } => self.follower_on_end(cx, from, sid, ok, now, io),
        }
    }

    /// Takes a chunk of this node's part of the plan as it arrives: receives are expected
    /// and sends held until `Go` at once; the local steps wait for [`Self::register_steps`].
    /// Nothing here touches the disk, so the order of chunks does not matter.
    pub(super) fn take_items(
        &mut self,
        cx: &Ctx<'_>,
        items: Vec<PlanItem>,
    ) -> Result<(), Violation> {
        for item in items {
            match item {
                PlanItem::Receive {
                    entry,
                    from,
                    expect,
                } => self.expect_file(cx, entry, from, expect)?,
                PlanItem::Send { meta, mut to } => {
                    if to.is_empty() {
                        return Err(Violation::PlanSendToNobody);
                    }
                    // Targets that went away meanwhile are left out; the leader retries.
                    let before = to.len();
                    to.retain(|t| t.node != *cx.me && cx.peers.contains(&t.node));
                    if to.len() < before {
                        self.stats.failed += 1;
                    }
                    if !to.is_empty() {
                        self.sends_left += 1;
                        self.held.push(meta, to);
                    }
                }
                step => self.steps.push(step),
            }
        }
        Ok(())
    }

    /// The plan is complete: checks what could not be checked chunk by chunk (a path sent
    /// twice, a local step twice), then what changes paths here happens now (new
    /// directories, moves and conflict renames, new versions, then deletions, deepest
    /// first), and the delta signatures of the files expected are asked for (after the
    /// moves: they may bring the base). What the steps record goes to the history in one
    /// transaction.
    pub(super) fn register_steps(
        &mut self,
        cx: &Ctx<'_>,
        io: &mut dyn Io,
    ) -> Result<(), Violation> {
        if !self.held.seal() {
            return Err(Violation::PlanPathTwice);
        }
        self.expected
            .seal()
            .map_err(|Twice| Violation::PlanPathTwice)?;
        let items = std::mem::take(&mut self.steps);
        check_plan(&items)?;
        let name = &cx.storages[self.storage];
        let mut dirs = Vec::new();
        let mut moves = Vec::new();
        let mut versions = Vec::new();
        let mut deletes = Vec::new();
        for item in items {
            match item {
                PlanItem::MakeDir { entry } => dirs.push(entry),
                PlanItem::Rename { .. } | PlanItem::MoveDir { .. } => moves.push(item),
                PlanItem::SetVersion { entry, expect } => versions.push((entry, expect)),
                PlanItem::Delete { entry, expect } => deletes.push((entry, expect)),
                PlanItem::Receive { .. } | PlanItem::Send { .. } => {}
            }
        }
        let st = self.storage;
        let mut failed = 0u32;
        let fail = |failed: &mut u32, what: &str, path: &RelPath, e: StepError| {
            match e {
                StepError::Changed(why) => log::info!("{name}: not {what} {path}: {why}"),
                StepError::Io(why) => log::warn!("{name}: cannot {what} {path}: {why}"),
            }
            *failed += 1;
        };
        for e in dirs {
            if self.ignore.is_ignored(&e.meta.path, true) {
                continue;
            }
            if let Err(err) = io.make_dir(st, &e) {
                fail(&mut failed, "create", &e.meta.path, err);
            }
        }
        for m in moves {
            match m {
                PlanItem::Rename {
                    from,
                    expect,
                    entry,
                    gone,
                } => {
                    if let Err(err) = io.rename(st, &from, expect, &entry, &gone) {
                        fail(&mut failed, "rename", &from, err);
                    }
                }
                PlanItem::MoveDir {
                    from,
                    to,
                    by,
                    counter,
                } => {
                    if let Err(err) = io.move_dir(st, &from, &to, &by, counter) {
                        fail(&mut failed, "move", &from, err);
                    }
                }
                _ => {}
            }
        }
        for (e, expect) in versions {
            if let Err(err) = io.set_version(st, &e, expect) {
                fail(&mut failed, "update", &e.meta.path, err);
            }
        }
        // Deepest first: a directory goes after what it held.
        deletes.sort_by(|a, b| b.0.meta.path.cmp(&a.0.meta.path));
        for (e, expect) in deletes {
            if self
                .ignore
                .is_ignored(&e.meta.path, e.meta.kind == EntryKind::Dir)
            {
                continue;
            }
            match io.delete(st, &e, expect) {
                Ok(Deleted::Done) => self.stats.deleted += 1,
                Ok(Deleted::Kept) => {
                    log::info!(
                        "{name}: kept directory {}: it holds entries its peers do not know",
                        e.meta.path
                    );
                    // Not a failure, but not the plan either: synchronize again.
                    failed += 1;
                }
                Err(err) => fail(&mut failed, "delete", &e.meta.path, err),
            }
        }
        if !io.flush_history(st) {
            failed += 1;
        }
        self.stats.failed += failed;
        let bases = self.expected.rows().filter_map(|(path, e)| {
            e.expect
                .filter(|_| crate::delta::wanted(e.size, e.expect))
                .map(|base| (path, base, e.from))
        });
        for (path, base, from) in bases {
            io.queue_signature(
                st,
                self.sid,
                path.clone(),
                base,
                self.names[from as usize].clone(),
            );
        }
        Ok(())
    }

    /// The files coming to this node, as far as they got.
    pub(super) fn incoming(&self) -> super::expected::Incoming {
        self.expected.progress()
    }

    /// Registers a file this node will receive. A path expected twice breaks the plan.
    fn expect_file(
        &mut self,
        cx: &Ctx<'_>,
        entry: Entry,
        from: NodeId,
        expect: Option<Version>,
    ) -> Result<(), Violation> {
        let name = &cx.storages[self.storage];
        let meta = entry.meta;
        // A path twice among the expected is found when the plan is sealed.
        if self.declined.contains(&meta.path) {
            return Err(Violation::PlanPathTwice);
        }
        if from == *cx.me || !cx.peers.contains(&from) {
            // The sender is gone (or never was a peer): the file cannot come. Counted as
            // failed so the leader tries again.
            log::debug!(
                "{name}: {} cannot come from {from}: not connected",
                meta.path
            );
            self.stats.failed += 1;
            return Ok(());
        }
        if self.ignore.is_ignored(&meta.path, false) {
            log::debug!("{name}: not accepting {}: ignored here", meta.path);
            self.declined.insert(meta.path);
            return Ok(());
        }
        let from = self.name(&from);
        let vv = entry
            .vv
            .pairs()
            .iter()
            .map(|(n, c)| (self.name(n), *c))
            .collect();
        let by = self.name(&entry.by);
        self.expected.push(
            meta.path,
            Row {
                from,
                size: meta.size,
                mtime_ns: meta.mtime_ns,
                expect,
                vv,
                by,
                wait: Wait::Pending,
            },
        );
        Ok(())
    }

    /// The index of `node` in `names`, added if new.
    fn name(&mut self, node: &NodeId) -> u32 {
        super::sends::intern(&mut self.names, node)
    }

    /// `Go`: the sends held until now are handed to the shell.
    pub(super) fn release_held(&mut self, io: &mut dyn Io) {
        let held = std::mem::take(&mut self.held);
        if !held.is_empty() {
            io.queue_sends(self.storage, self.sid, held);
        }
    }

    /// Reports this node's part as done once every send and receive is resolved; for the
    /// leader that may end the session.
    pub(super) fn maybe_part_done(
        &mut self,
        cx: &Ctx<'_>,
        now: Instant,
        io: &mut dyn Io,
    ) -> Option<Over> {
        if self.phase == Phase::Collect
            || self.local_done
            || self.sends_left > 0
            || self.expected.left() > 0
        {
            return None;
        }
        self.local_done = true;
        let (sid, stats) = (self.sid, self.stats);
        match &self.role {
            Role::Follow { leader, .. } => {
                io.send(leader, SessionMsg::PartDone { sid, stats }.into());
                None
            }
            Role::Lead { .. } => self.leader_maybe_end(cx, now, io),
        }
    }

    /// Is this incoming file one the plan announced, from this sender, in this version?
    /// Returns what the local path must still hold for the commit to go ahead.
    pub(super) fn accept_file(
        &mut self,
        from: &NodeId,
        meta: &FileMeta,
        now: Instant,
        io: &dyn Io,
    ) -> Result<Accepted, Refusal> {
        // A sender starts on the leader's `Go`, which may overtake this node's own `Go` on
        // another connection: a registered plan (`Ready`) is enough to accept.
        if self.phase == Phase::Collect {
            return Err(Refusal::Reject("no such session here"));
        }
        self.last_activity = now;
        self.last_progress = now;
        if self.declined.contains(&meta.path) {
            return Err(Refusal::Reject("ignored by the receiver's .ignore"));
        }
        let unannounced = || Refusal::Violation(Violation::Unannounced(meta.path.clone()));
        let Some(e) = self.expected.get_mut(&meta.path) else {
            return Err(unannounced());
        };
        match e.wait {
            Wait::Pending => {}
            Wait::Abandoned => return Err(Refusal::Reject(SENDER_LOST)),
            Wait::Started | Wait::Over => return Err(unannounced()),
        }
        if self.names[e.from as usize] != *from
            || e.size != meta.size
            || e.mtime_ns != meta.mtime_ns
        {
            return Err(unannounced());
        }
        let pairs =
            e.vv.iter()
                .map(|(k, c)| (self.names[*k as usize].clone(), *c))
                .collect();
        // The pairs came from a checked vector, in its order: this cannot fail.
        let vv = Vv::from_pairs(pairs).map_err(|_| unannounced())?;
        let accepted = Accepted {
            expect: e.expect,
            vv,
            by: self.names[e.by as usize].clone(),
        };
        if let Some(free) = io.free_space(self.storage) {
            if meta.size > free {
                log::warn!(
                    "{} not received: it needs {} bytes and the storage has {free} free",
                    meta.path,
                    meta.size
                );
                self.expected.finish(&meta.path);
                self.stats.failed += 1;
                return Err(Refusal::Reject("not enough space on the receiver"));
            }
        }
        if let Some(e) = self.expected.get_mut(&meta.path) {
            e.wait = Wait::Started;
        }
        Ok(accepted)
    }

    /// A received file reached its end (committed, kept local, failed, aborted).
    pub(super) fn on_received(
        &mut self,
        cx: &Ctx<'_>,
        path: &RelPath,
        outcome: Received,
        now: Instant,
        io: &mut dyn Io,
    ) -> Option<Over> {
        self.last_activity = now;
        self.last_progress = now;
        self.progressed = true;
        if !self.expected.finish(path) {
            return None;
        }
        match outcome {
            Received::Committed { bytes } => {
                self.stats.files_received += 1;
                self.stats.bytes_received += bytes;
            }
            Received::KeptLocal | Received::Aborted => {}
            Received::Failed => self.stats.failed += 1,
        }
        self.maybe_part_done(cx, now, io)
    }

    /// A queued send reached its end.
    pub(super) fn on_sent(
        &mut self,
        cx: &Ctx<'_>,
        outcome: Sent,
        now: Instant,
        io: &mut dyn Io,
    ) -> Option<Over> {
        self.last_activity = now;
        self.last_progress = now;
        self.progressed = true;
        self.sends_left = self.sends_left.saturating_sub(1);
        match outcome {
            Sent::Done {
                bytes,
                receivers,
                read,
            } => {
                self.stats.files_sent += receivers as u32;
                self.stats.bytes_sent += bytes;
                self.read += read;
            }
            Sent::Skipped => {}
            Sent::Failed => self.stats.failed += 1,
        }
        self.maybe_part_done(cx, now, io)
    }

    /// Transfer progress without a message (a long file): keeps the session alive.
    pub(super) fn on_progress(&mut self, now: Instant) {
        self.last_activity = now;
        self.last_progress = now;
        self.progressed = true;
    }

    /// A peer this node expects files from (not the leader) went away: those files will not
    /// come. Failures, so the leader tries again.
    pub(super) fn sender_lost(
        &mut self,
        cx: &Ctx<'_>,
        node: &NodeId,
        now: Instant,
        io: &mut dyn Io,
    ) -> Option<Over> {
        // Sends not yet handed to the shell (before `Go`) leave the lost node out.
        let before = self.held.len();
        let mut lost = self.held.drop_node(node);
        self.sends_left -= before - self.held.len();
        if let Some(k) = self.names.iter().position(|n| n == node) {
            lost += self.expected.abandon_from(k as u32);
        }
        if lost == 0 {
            return None;
        }
        self.stats.failed += lost as u32;
        self.maybe_part_done(cx, now, io)
    }

    /// Ends the session early, telling the others.
    pub(super) fn abort(&mut self, name: &str, why: SyncError, io: &mut dyn Io) -> Over {
        log::warn!("{name}: session {:016x} aborted: {why}", self.sid);
        io.cancel_session(self.sid);
        match &self.role {
            Role::Lead { participants } => {
                for p in participants {
                    io.send(
                        &p.node,
                        SessionMsg::End {
                            sid: self.sid,
                            ok: false,
                        }
                        .into(),
                    );
                }
            }
            Role::Follow { leader, .. } => io.send(
                leader,
                SessionMsg::Abort {
                    sid: self.sid,
                    reason: why.to_string(),
                }
                .into(),
            ),
        }
        Over::Aborted {
            storage: self.storage,
            why,
        }
    }

    /// The session completed with `peers` (`clean`: nobody failed anything): logs what it
    /// did.
    pub(super) fn done(&self, cx: &Ctx<'_>, peers: Vec<NodeId>, failed: u32, clean: bool) -> Over {
        let s = &self.stats;
        log::info!(
            "{}: session done: received {} file(s) ({} bytes), sent {} file(s) ({} bytes), read {} bytes{}",
            cx.storages[self.storage],
            s.files_received,
            s.bytes_received,
            s.files_sent,
            s.bytes_sent,
            self.read,
            if failed > 0 {
                format!(", {failed} failed")
            } else {
                String::new()
            }
        );
        Over::Done {
            storage: self.storage,
            scanned_at: self.scanned_at,
            peers,
            stats: self.stats,
            failed,
            clean,
        }
    }
}
