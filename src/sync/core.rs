//! The sans-I/O heart of the `sync` thread: leader election and sessions, for any number of
//! nodes.
//!
//! [`Core`] owns no socket, file or clock. It is driven by inputs (a peer came or went, a
//! message arrived, a trigger, a transfer finished, time passed — the current time is always
//! passed in) and acts through the small [`Io`] trait: send a message, scan a storage, create a
//! directory, queue a file for sending. The real `sync` thread implements [`Io`] with `net`,
//! the scanner and `fsops`; the simulator (`sim.rs`) implements it in memory with a virtual
//! clock, which is how thousands of random multi-node schedules are checked.
//!
//! # Election
//!
//! A node that wants to synchronize a storage (a trigger: one-shot start, a peer connecting,
//! cron) *claims* it: it sends `Claim{ticket}` to every connected node that has the storage.
//! A node grants at most one claim at a time and takes part in at most one session at a time;
//! a claimant leads only once every participant has granted. Two claimants therefore never
//! share a participant, so a session has exactly one leader even when every node triggers at
//! the same instant. Conflicts resolve by priority — a claimant that receives a claim from a
//! smaller node id withdraws its own and grants; from a larger one, it denies — and a denied
//! claimant releases its grants and retries after a back-off that grows with its rank, so the
//! smallest claimant wins within a few rounds. A trigger is satisfied ("absorbed") by any
//! session for that storage this node took part in whose scan came after the trigger.
//!
//! # Sessions
//!
//! The leader scans, starts the session, collects digests (and full indexes only where they
//! differ from its own), runs the pure diff, routes every copy over an existing connection
//! from a holder of the winning version (spreading the load over holders, one read per file
//! however many receive it), and sends each participant its part. Participants register what
//! they will receive and answer `PlanReady`; only when all are ready does the leader say `Go`,
//! so no file ever arrives before its receiver expects it. A lost participant or leader aborts
//! the session; the storage is then retried with back-off by those who remain.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::time::{Duration, Instant};

use crate::diff::{self, Op};
use crate::ignore::IgnoreMatcher;
use crate::model::{EntryKind, FileMeta, NodeId, RelPath};
use crate::proto::{self, Digest, Message, PartStats, PlanItem, SendTo, BATCH_BYTES};

/// Most index entries or plan items accepted from one peer in one session. Bounds memory
/// against a peer that never stops sending.
pub const MAX_ENTRIES: usize = 2_000_000;
/// A claim that has not been answered by everyone within this is withdrawn.
const CLAIM_TIMEOUT: Duration = Duration::from_secs(10);
/// A grant whose claimant does not start the session within this is void.
const GRANT_LEASE: Duration = Duration::from_secs(15);
/// A session with no sign of life for this long is abandoned: for a follower, nothing from
/// its leader; for the leader, no progress of its own and nothing from any participant.
pub const SESSION_IDLE_TIMEOUT: Duration = Duration::from_secs(120);
/// How often a leader tells its participants it is alive, and a participant that made
/// progress tells its leader, during a long session (files may move between followers for
/// minutes without a word to or from the leader).
pub const ALIVE_EVERY: Duration = Duration::from_secs(20);
/// How long a daemon waits after a peer connects before claiming, so that peers connecting
/// together end up in one session.
pub const CONNECT_SETTLE: Duration = Duration::from_millis(500);
/// How long a wanted storage must stay without any connected holder before the node
/// concludes that no peer has it.
const ALONE_GRACE: Duration = Duration::from_secs(2);
/// Aborted attempts at one trigger before it is given up (until the next trigger).
const MAX_ATTEMPTS: u32 = 8;

/// The side effects the core asks for. Implemented by the `sync` thread and the simulator.
pub trait Io {
    /// Sends a protocol message to a connected peer (dropped if it is gone).
    fn send(&mut self, to: &NodeId, msg: Message);
    /// Drops a peer that broke the protocol.
    fn disconnect(&mut self, node: &NodeId, reason: &str);
    /// Scans storage `storage` (removing leftover temporary files) with its `.ignore`.
    fn scan(&mut self, storage: usize) -> Result<(Vec<FileMeta>, IgnoreMatcher), String>;
    fn make_dir(&mut self, storage: usize, path: &RelPath, mode: u32) -> Result<(), String>;
    /// Queues each `(meta, to)` of `storage` for sending to every node in `to` (as a delta
    /// to those with a usable old version), in order; each outcome comes back through
    /// [`Core::on_sent`]. The whole list at once: the shell keeps it as it is and starts jobs
    /// from it as the sender makes room (10,000 ready jobs at once would cost megabytes).
    fn queue_sends(&mut self, storage: usize, sid: u64, sends: Vec<(FileMeta, Vec<SendTo>)>);
    /// Computes the block signature of this node's version `expect` of `path` and sends it
    /// to `to`, the node that will send the new version as a delta.
    fn queue_signature(
        &mut self,
        storage: usize,
        sid: u64,
        path: RelPath,
        expect: (u64, i64),
        to: NodeId,
    );
    /// Forgets every transfer (both ways) of session `sid`.
    fn cancel_session(&mut self, sid: u64);
    /// Free bytes in a storage, if known.
    fn free_space(&self, storage: usize) -> Option<u64>;
    /// A random number (tickets, back-off jitter).
    fn random(&mut self) -> u64;
}

/// What became of a storage's last session on this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StorageResult {
    Synced {
        peers: Vec<NodeId>,
        stats: PartStats,
    },
    NoPeer,
    Failed(String),
}

/// How a received file ended, reported by the shell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Received {
    Committed {
        bytes: u64,
    },
    /// The local copy changed since it was indexed: kept.
    KeptLocal,
    Failed,
    /// The sender gave up (its source changed); not a failure here.
    Aborted,
}

/// How a sent file ended, reported by the shell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sent {
    Done {
        /// File data put on the wire, over all receivers (literal bytes for a delta).
        bytes: u64,
        receivers: usize,
        /// Bytes read from disk for it (once, however many receivers).
        read: u64,
    },
    /// Nothing is wrong; the next sync handles it (source changed, receivers declined).
    Skipped,
    Failed,
}

/// Why an incoming file is not accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// Say no politely (`FileReject`).
    Reject(String),
    /// The peer broke the protocol: disconnect it.
    Violation(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Leader: waiting for digests and the indexes it asked for. Follower: for the plan.
    Collect,
    /// Plans distributed; waiting for every `PlanReady` (leader) or for `Go` (follower).
    Ready,
    /// Files are moving.
    Go,
}

struct Participant {
    node: NodeId,
    summary: Option<(u64, Digest)>,
    peers: Vec<NodeId>,
    index: Vec<FileMeta>,
    index_requested: bool,
    index_done: bool,
    ready: bool,
    done: Option<PartStats>,
}

struct Expected {
    /// Index into the session's `senders`: a node id per expected file would cost a heap
    /// allocation each (10,000 files: 10,000 copies of the same few names).
    from: u32,
    size: u64,
    mtime_ns: i64,
    expect: Option<(u64, i64)>,
    started: bool,
}

struct Session {
    sid: u64,
    storage: usize,
    /// `None` when this node leads.
    leader: Option<NodeId>,
    participants: Vec<Participant>,
    /// Follower: the other participants, as the leader announced them.
    members: Vec<NodeId>,
    phase: Phase,
    scanned_at: Instant,
    local_index: Vec<FileMeta>,
    local_digest: Digest,
    ignore: IgnoreMatcher,
    /// Follower: plan items received so far.
    plan: Vec<PlanItem>,
    /// Sends held back until `Go`.
    held: Vec<(FileMeta, Vec<SendTo>)>,
    sends_left: usize,
    expected: HashMap<RelPath, Expected>,
    /// The nodes files are expected from.
    senders: Vec<NodeId>,
    declined: HashSet<RelPath>,
    stats: PartStats,
    read: u64,
    local_done: bool,
    last_activity: Instant,
    /// When this node last sent `SessionAlive`.
    alive_sent: Instant,
    /// Local progress (data moved) since the last `SessionAlive` sent.
    progressed: bool,
}

impl Session {
    fn involves(&self, node: &NodeId) -> bool {
        self.leader.as_ref() == Some(node) || self.participants.iter().any(|p| p.node == *node)
    }

    fn participant(&mut self, node: &NodeId) -> Option<&mut Participant> {
        self.participants.iter_mut().find(|p| p.node == *node)
    }
}

struct Want {
    since: Instant,
    attempts: u32,
    not_before: Instant,
    /// Since when no connected peer has the storage.
    alone_since: Option<Instant>,
}

struct Claim {
    ticket: u64,
    storage: usize,
    waiting: BTreeSet<NodeId>,
    granted: BTreeSet<NodeId>,
    started: Instant,
}

struct Granted {
    to: NodeId,
    ticket: u64,
    storage: usize,
    expires: Instant,
}

/// Election and sessions of one node.
pub struct Core {
    me: NodeId,
    storages: Vec<String>,
    /// Connected peers and the storages they have.
    peers: BTreeMap<NodeId, BTreeSet<String>>,
    /// Daemons sync a shared storage as soon as a peer with it connects.
    trigger_on_connect: bool,
    wants: BTreeMap<usize, Want>,
    claim: Option<Claim>,
    grant: Option<Granted>,
    session: Option<Session>,
    results: BTreeMap<usize, StorageResult>,
}

impl Core {
    pub fn new(me: NodeId, storages: Vec<String>, trigger_on_connect: bool) -> Core {
        Core {
            me,
            storages,
            peers: BTreeMap::new(),
            trigger_on_connect,
            wants: BTreeMap::new(),
            claim: None,
            grant: None,
            session: None,
            results: BTreeMap::new(),
        }
    }

    pub fn me(&self) -> &NodeId {
        &self.me
    }

    fn storage_index(&self, name: &str) -> Option<usize> {
        self.storages.iter().position(|s| s == name)
    }

    fn name(&self, storage: usize) -> &str {
        &self.storages[storage]
    }

    /// Connected peers that have storage `i`.
    fn holders(&self, i: usize) -> BTreeSet<NodeId> {
        let name = &self.storages[i];
        self.peers
            .iter()
            .filter(|(_, s)| s.contains(name))
            .map(|(n, _)| n.clone())
            .collect()
    }

    // -----------------------------------------------------------------------------------
    // Queries for the shell and for tests

    /// The storage of the running session, if any (the shell reads and writes files there).
    pub fn session_storage(&self) -> Option<usize> {
        self.session.as_ref().map(|s| s.storage)
    }

    /// The running session: its id and leader (`None` = this node).
    pub fn session_info(&self) -> Option<(u64, Option<&NodeId>, usize)> {
        self.session
            .as_ref()
            .map(|s| (s.sid, s.leader.as_ref(), s.storage))
    }

    /// Participants of the session this node leads.
    pub fn led_participants(&self) -> Option<Vec<NodeId>> {
        self.session
            .as_ref()
            .filter(|s| s.leader.is_none())
            .map(|s| s.participants.iter().map(|p| p.node.clone()).collect())
    }

    /// True when nothing is wanted or in flight.
    pub fn is_idle(&self) -> bool {
        self.wants.is_empty()
            && self.claim.is_none()
            && self.grant.is_none()
            && self.session.is_none()
    }

    /// True when a connected peer has storage `storage`.
    pub fn has_holders(&self, storage: usize) -> bool {
        !self.holders(storage).is_empty()
    }

    /// True when the last session of `storage` completed with every connected peer that has
    /// it (a session can leave out a peer that connected after it was claimed).
    pub fn synced_with_all(&self, storage: usize) -> bool {
        match self.results.get(&storage) {
            Some(StorageResult::Synced { peers, .. }) => {
                self.holders(storage).iter().all(|h| peers.contains(h))
            }
            _ => false,
        }
    }

    pub fn has_want(&self, storage: usize) -> bool {
        self.wants.contains_key(&storage)
    }

    pub fn result(&self, storage: usize) -> Option<&StorageResult> {
        self.results.get(&storage)
    }

    pub fn storages(&self) -> &[String] {
        &self.storages
    }

    /// When `tick` next has something to do.
    pub fn next_deadline(&self) -> Option<Instant> {
        let mut at: Option<Instant> = None;
        let mut min = |t: Instant| at = Some(at.map_or(t, |a: Instant| a.min(t)));
        if let Some(s) = &self.session {
            min(s.last_activity + SESSION_IDLE_TIMEOUT);
            min(s.alive_sent + ALIVE_EVERY);
        }
        if let Some(c) = &self.claim {
            min(c.started + CLAIM_TIMEOUT);
        }
        if let Some(g) = &self.grant {
            min(g.expires);
        }
        if self.session.is_none() && self.claim.is_none() && self.grant.is_none() {
            if let Some(w) = self.wants.values().map(|w| w.not_before).min() {
                min(w);
            }
        }
        at
    }

    // -----------------------------------------------------------------------------------
    // Inputs

    /// Something changed in storage `storage` (or a run wants it synchronized).
    pub fn trigger(&mut self, storage: usize, now: Instant) {
        self.trigger_after(storage, now, Duration::ZERO);
    }

    /// Like [`Core::trigger`], but claims no sooner than `delay` from now.
    pub fn trigger_after(&mut self, storage: usize, now: Instant, delay: Duration) {
        let due = now + delay;
        let w = self.wants.entry(storage).or_insert(Want {
            since: now,
            attempts: 0,
            not_before: due,
            alone_since: None,
        });
        // A newer trigger is not absorbed by a session whose scan came before it.
        w.since = w.since.max(now);
        w.not_before = w.not_before.min(due);
        w.attempts = 0;
    }

    pub fn peer_up(&mut self, node: NodeId, storages: Vec<String>, now: Instant) {
        let shared: Vec<usize> = storages
            .iter()
            .filter_map(|s| self.storage_index(s))
            .collect();
        self.peers.insert(node, storages.into_iter().collect());
        if self.trigger_on_connect {
            // Peers tend to connect in bursts (a node starting up dials everyone): wait for
            // the burst to settle so one session includes them all.
            for i in shared {
                self.trigger_after(i, now, CONNECT_SETTLE);
            }
        }
    }

    pub fn peer_down(&mut self, node: &NodeId, now: Instant, io: &mut dyn Io) {
        self.peers.remove(node);
        if self.grant.as_ref().is_some_and(|g| g.to == *node) {
            self.grant = None;
        }
        if let Some(c) = &mut self.claim {
            c.waiting.remove(node);
            c.granted.remove(node);
        }
        self.claim_progress(now, io);
        if self.session.as_ref().is_some_and(|s| s.involves(node)) {
            return self.abort(&format!("{node} disconnected"), now, io);
        }
        // A participant we exchange files with directly (not the leader, who would have
        // aborted above): what it was to send us will not come, and what we still had to send
        // it is dropped by the shell. Failures, so the leader tries again.
        if let Some(s) = &mut self.session {
            let before = s.expected.len();
            if let Some(k) = s.senders.iter().position(|n| n == node) {
                s.expected.retain(|_, e| e.from != k as u32);
            }
            let lost = before - s.expected.len();
            if lost > 0 {
                s.stats.failed += lost as u32;
                self.maybe_part_done(now, io);
            }
        }
    }

    /// Timeouts, and starting a claim when idle.
    pub fn tick(&mut self, now: Instant, io: &mut dyn Io) {
        if self
            .session
            .as_ref()
            .is_some_and(|s| now >= s.last_activity + SESSION_IDLE_TIMEOUT)
        {
            self.abort("no progress for too long", now, io);
        }
        self.heartbeat(now, io);
        if self.grant.as_ref().is_some_and(|g| now >= g.expires) {
            log::debug!("grant expired without a session");
            self.grant = None;
        }
        if self
            .claim
            .as_ref()
            .is_some_and(|c| now >= c.started + CLAIM_TIMEOUT)
        {
            log::debug!("claim not answered in time; withdrawing it");
            self.withdraw_claim(now, io);
        }
        if self.session.is_some() || self.claim.is_some() || self.grant.is_some() {
            return;
        }
        let ready: Vec<usize> = self
            .wants
            .iter()
            .filter(|(_, w)| w.not_before <= now)
            .map(|(i, _)| *i)
            .collect();
        for i in ready {
            let holders = self.holders(i);
            if holders.is_empty() {
                // A connection being replaced looks like a peer leaving and coming back: only
                // a storage that stays without peers for a moment has none.
                let Some(w) = self.wants.get_mut(&i) else {
                    continue;
                };
                match w.alone_since {
                    None => {
                        w.alone_since = Some(now);
                        w.not_before = now + ALONE_GRACE;
                    }
                    Some(t) if now >= t + ALONE_GRACE => {
                        self.wants.remove(&i);
                        self.results.insert(i, StorageResult::NoPeer);
                    }
                    Some(t) => w.not_before = t + ALONE_GRACE,
                }
                continue;
            }
            if let Some(w) = self.wants.get_mut(&i) {
                w.alone_since = None;
            }
            let ticket = io.random().max(1);
            let name = self.name(i).to_owned();
            log::debug!("{name}: claiming the lead (ticket {ticket:016x})");
            for n in &holders {
                io.send(
                    n,
                    Message::Claim {
                        ticket,
                        storage: name.clone(),
                    },
                );
            }
            self.claim = Some(Claim {
                ticket,
                storage: i,
                waiting: holders,
                granted: BTreeSet::new(),
                started: now,
            });
            return;
        }
    }

    /// Sends `SessionAlive` when due: the leader always, a participant only if it moved data
    /// since its last one.
    fn heartbeat(&mut self, now: Instant, io: &mut dyn Io) {
        let Some(s) = &mut self.session else { return };
        if now < s.alive_sent + ALIVE_EVERY {
            return;
        }
        let sid = s.sid;
        match &s.leader {
            None => {
                for p in &s.participants {
                    io.send(&p.node, Message::SessionAlive { sid });
                }
            }
            Some(leader) if s.progressed => io.send(leader, Message::SessionAlive { sid }),
            Some(_) => {}
        }
        s.alive_sent = now;
        s.progressed = false;
    }

    /// A session or election message from a connected peer.
    pub fn on_message(&mut self, from: &NodeId, msg: Message, now: Instant, io: &mut dyn Io) {
        match msg {
            Message::Claim { ticket, storage } => self.on_claim(from, ticket, &storage, now, io),
            Message::Grant { ticket } => self.on_grant(from, ticket, now, io),
            Message::Deny { ticket } => self.on_deny(from, ticket, now, io),
            Message::Release { ticket }
                if self
                    .grant
                    .as_ref()
                    .is_some_and(|g| g.to == *from && g.ticket == ticket) =>
            {
                self.grant = None;
            }
            Message::SessionStart {
                sid,
                storage,
                members,
            } => self.follower_start(from, sid, &storage, members, now, io),
            Message::SessionAbort { sid, reason }
                if self
                    .session
                    .as_ref()
                    .is_some_and(|s| s.sid == sid && s.involves(from)) =>
            {
                self.abort(&format!("{from} aborted the session: {reason}"), now, io);
            }
            Message::IndexSummary {
                sid,
                count,
                digest,
                peers,
            } => self.leader_on_summary(from, sid, count, digest, peers, now, io),
            Message::IndexRequest { sid } => self.follower_send_index(from, sid, now, io),
            Message::IndexChunk { sid, entries } => {
                self.leader_on_index_chunk(from, sid, entries, now, io)
            }
            Message::IndexEnd { sid } => self.leader_on_index_end(from, sid, now, io),
            Message::PlanChunk { sid, items } => {
                self.follower_on_plan_chunk(from, sid, items, now, io)
            }
            Message::PlanEnd { sid } => self.follower_on_plan_end(from, sid, now, io),
            Message::PlanReady { sid } => self.leader_on_ready(from, sid, now, io),
            // Either role: `led` (else `joined`) notes the sign of life.
            Message::SessionAlive { sid } if self.led(sid, now).is_none() => {
                let _ = self.joined(from, sid, now);
            }
            Message::Go { sid } => self.follower_on_go(from, sid, now, io),
            Message::PartDone { sid, stats } => self.leader_on_part_done(from, sid, stats, now, io),
            Message::SessionEnd { sid, ok } => self.follower_on_end(from, sid, ok, now, io),
            // Connection-level and transfer messages are the shell's business.
            _ => {}
        }
    }

    // -----------------------------------------------------------------------------------
    // Election

    fn on_claim(
        &mut self,
        from: &NodeId,
        ticket: u64,
        storage: &str,
        now: Instant,
        io: &mut dyn Io,
    ) {
        let Some(i) = self.storage_index(storage) else {
            return io.send(from, Message::Deny { ticket });
        };
        if self.session.is_some() {
            return io.send(from, Message::Deny { ticket });
        }
        if let Some(g) = &self.grant {
            if g.to == *from && g.ticket == ticket {
                return io.send(from, Message::Grant { ticket });
            }
            return io.send(from, Message::Deny { ticket });
        }
        if self.claim.is_some() {
            if *from < self.me {
                // A claimant with priority: step aside for it.
                log::debug!("{storage}: yielding the lead to {from}");
                self.withdraw_claim(now, io);
            } else {
                return io.send(from, Message::Deny { ticket });
            }
        }
        self.grant = Some(Granted {
            to: from.clone(),
            ticket,
            storage: i,
            expires: now + GRANT_LEASE,
        });
        io.send(from, Message::Grant { ticket });
    }

    fn on_grant(&mut self, from: &NodeId, ticket: u64, now: Instant, io: &mut dyn Io) {
        let counted = match &mut self.claim {
            Some(c) if c.ticket == ticket && c.waiting.contains(from) => {
                c.waiting.remove(from);
                c.granted.insert(from.clone());
                true
            }
            _ => false,
        };
        if counted {
            self.claim_progress(now, io);
        } else {
            // A grant for a claim we no longer hold: free the granter at once.
            io.send(from, Message::Release { ticket });
        }
    }

    fn on_deny(&mut self, from: &NodeId, ticket: u64, now: Instant, io: &mut dyn Io) {
        if self.claim.as_ref().is_some_and(|c| {
            c.ticket == ticket && (c.waiting.contains(from) || c.granted.contains(from))
        }) {
            log::debug!("claim denied by {from}; retrying later");
            self.withdraw_claim(now, io);
        }
    }

    /// Gives up the current claim: releases everyone asked, backs off.
    fn withdraw_claim(&mut self, now: Instant, io: &mut dyn Io) {
        let Some(c) = self.claim.take() else { return };
        for n in c.waiting.iter().chain(c.granted.iter()) {
            io.send(n, Message::Release { ticket: c.ticket });
        }
        let rank = self.peers.keys().filter(|n| **n < self.me).count() as u32;
        let jitter = io.random() % 100;
        if let Some(w) = self.wants.get_mut(&c.storage) {
            w.attempts += 1;
            // Smaller ids come back sooner: the claimant with priority wins the next round.
            let base = 40 + 60 * u64::from(rank);
            let factor = 1u64 << w.attempts.min(5);
            w.not_before = now + Duration::from_millis(base * factor + jitter);
        }
    }

    /// Leads once every participant granted; ends a claim left without participants.
    fn claim_progress(&mut self, now: Instant, io: &mut dyn Io) {
        let Some(c) = &self.claim else { return };
        if !c.waiting.is_empty() {
            return;
        }
        let Some(c) = self.claim.take() else { return };
        if c.granted.is_empty() {
            // Everyone we asked went away; the want stays and is retried by tick.
            return;
        }
        self.lead(c.ticket, c.storage, c.granted, now, io);
    }

    // -----------------------------------------------------------------------------------
    // Leader

    fn lead(
        &mut self,
        sid: u64,
        i: usize,
        granted: BTreeSet<NodeId>,
        now: Instant,
        io: &mut dyn Io,
    ) {
        let name = self.name(i).to_owned();
        let (index, ignore) = match io.scan(i) {
            Ok(r) => r,
            Err(e) => {
                log::error!("{name}: cannot scan: {e}");
                for n in &granted {
                    io.send(n, Message::Release { ticket: sid });
                }
                self.wants.remove(&i);
                self.results.insert(i, StorageResult::Failed(e));
                return;
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
                Message::SessionStart {
                    sid,
                    storage: name.clone(),
                    members: members.clone(),
                },
            );
        }
        let digest = proto::index_digest(&index);
        let participants = granted
            .into_iter()
            .map(|node| Participant {
                node,
                summary: None,
                peers: Vec::new(),
                index: Vec::new(),
                index_requested: false,
                index_done: false,
                ready: false,
                done: None,
            })
            .collect();
        self.session = Some(new_session(
            sid,
            i,
            None,
            participants,
            index,
            digest,
            ignore,
            now,
        ));
    }

    /// The running session if this node leads it and it is `sid`.
    fn led(&mut self, sid: u64, now: Instant) -> Option<&mut Session> {
        let s = self
            .session
            .as_mut()
            .filter(|s| s.sid == sid && s.leader.is_none())?;
        s.last_activity = now;
        Some(s)
    }

    #[allow(clippy::too_many_arguments)]
    fn leader_on_summary(
        &mut self,
        from: &NodeId,
        sid: u64,
        count: u64,
        digest: Digest,
        peers: Vec<NodeId>,
        now: Instant,
        io: &mut dyn Io,
    ) {
        let Some(s) = self.led(sid, now) else { return };
        let local_digest = s.local_digest;
        let Some(p) = s.participant(from) else { return };
        if p.summary.is_some() {
            return io.disconnect(from, "sent two index summaries");
        }
        p.summary = Some((count, digest));
        p.peers = peers;
        if digest != local_digest {
            if count as usize > MAX_ENTRIES {
                return io.disconnect(from, "announced an index larger than we accept");
            }
            p.index_requested = true;
            io.send(from, Message::IndexRequest { sid });
        }
        self.leader_maybe_plan(now, io);
    }

    fn leader_on_index_chunk(
        &mut self,
        from: &NodeId,
        sid: u64,
        entries: Vec<FileMeta>,
        now: Instant,
        io: &mut dyn Io,
    ) {
        let Some(s) = self.led(sid, now) else { return };
        let Some(p) = s.participant(from) else { return };
        if !p.index_requested || p.index_done {
            return io.disconnect(from, "sent an index nobody asked for");
        }
        if p.index.len() + entries.len() > MAX_ENTRIES {
            return io.disconnect(from, "sent an index larger than we accept");
        }
        for e in entries {
            // Strictly increasing paths: sorted and without duplicates, as the diff needs.
            if p.index.last().is_some_and(|last| last.path >= e.path) {
                return io.disconnect(from, "sent an index out of order");
            }
            p.index.push(e);
        }
    }

    fn leader_on_index_end(&mut self, from: &NodeId, sid: u64, now: Instant, io: &mut dyn Io) {
        let Some(s) = self.led(sid, now) else { return };
        let Some(p) = s.participant(from) else { return };
        if !p.index_requested || p.index_done {
            return io.disconnect(from, "ended an index nobody asked for");
        }
        p.index_done = true;
        self.leader_maybe_plan(now, io);
    }

    /// Once every digest (and every index asked for) is in: diff, route, distribute.
    fn leader_maybe_plan(&mut self, now: Instant, io: &mut dyn Io) {
        let me = self.me.clone();
        let Some(s) = self.session.as_mut() else {
            return;
        };
        let collected = s
            .participants
            .iter()
            .all(|p| p.summary.is_some() && (!p.index_requested || p.index_done));
        if !collected || s.phase != Phase::Collect {
            return;
        }
        let name = self.storages[s.storage].clone();
        if s.participants.iter().all(|p| !p.index_requested) {
            log::info!("{name}: already in sync (index digests match)");
            s.phase = Phase::Go;
            s.local_done = true;
            for p in &mut s.participants {
                p.ready = true;
                p.done = Some(PartStats::default());
            }
            return self.leader_maybe_end(now, io);
        }
        // Participants in node-id order, this node included, so the diff's tie-breaks do not
        // depend on who leads.
        let mut nodes: Vec<(NodeId, Option<usize>)> = vec![(me.clone(), None)];
        for (k, p) in s.participants.iter().enumerate() {
            nodes.push((p.node.clone(), Some(k)));
        }
        nodes.sort_by(|a, b| a.0.cmp(&b.0));
        // Who can send to whom: the leader reaches everyone; participants said whom they see.
        let ids: Vec<NodeId> = nodes.iter().map(|(n, _)| n.clone()).collect();
        let mut links: HashSet<(NodeId, NodeId)> = HashSet::new();
        for p in &s.participants {
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
        let sid = s.sid;
        let mut planner = Planner::new(&ids, &linked);
        let mut parts: Vec<Vec<PlanItem>> = vec![Vec::new(); nodes.len()];
        let mut planned = 0usize;
        let conflicts = {
            let indexes: Vec<&[FileMeta]> = nodes
                .iter()
                .map(|(_, k)| match k {
                    Some(k) if s.participants[*k].index_requested => {
                        s.participants[*k].index.as_slice()
                    }
                    _ => s.local_index.as_slice(),
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
        s.local_index = Vec::new();
        for p in &mut s.participants {
            p.index = Vec::new();
        }
        for c in &conflicts {
            log::warn!("{name}: left {} alone: {}", c.path, c.reason);
        }
        log::info!("{name}: {planned} operation(s) planned");
        s.phase = Phase::Ready;
        let mut local = Vec::new();
        for (pos, (node, k)) in nodes.iter().enumerate() {
            let items = std::mem::take(&mut parts[pos]);
            match k {
                None => local = items,
                Some(_) => {
                    send_plan_chunks(io, node, sid, items);
                    io.send(node, Message::PlanEnd { sid });
                }
            }
        }
        self.register_items(local, io);
        self.leader_maybe_go(now, io);
    }

    fn leader_on_ready(&mut self, from: &NodeId, sid: u64, now: Instant, io: &mut dyn Io) {
        let Some(s) = self.led(sid, now) else { return };
        if s.phase == Phase::Collect {
            return io.disconnect(from, "said ready before it had a plan");
        }
        if let Some(p) = s.participant(from) {
            p.ready = true;
        }
        self.leader_maybe_go(now, io);
    }

    fn leader_maybe_go(&mut self, now: Instant, io: &mut dyn Io) {
        let Some(s) = self.session.as_mut() else {
            return;
        };
        if s.leader.is_some() || s.phase != Phase::Ready || s.participants.iter().any(|p| !p.ready)
        {
            return;
        }
        s.phase = Phase::Go;
        for p in &s.participants {
            io.send(&p.node, Message::Go { sid: s.sid });
        }
        self.release_held(io);
        self.maybe_part_done(now, io);
    }

    fn leader_on_part_done(
        &mut self,
        from: &NodeId,
        sid: u64,
        stats: PartStats,
        now: Instant,
        io: &mut dyn Io,
    ) {
        let Some(s) = self.led(sid, now) else { return };
        if s.phase == Phase::Collect {
            return io.disconnect(from, "reported its part done before it had a plan");
        }
        if let Some(p) = s.participant(from) {
            p.done = Some(stats);
        }
        self.leader_maybe_end(now, io);
    }

    fn leader_maybe_end(&mut self, now: Instant, io: &mut dyn Io) {
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
        for p in &s.participants {
            io.send(
                &p.node,
                Message::SessionEnd {
                    sid: s.sid,
                    ok: failed == 0,
                },
            );
        }
        let peers = s.participants.iter().map(|p| p.node.clone()).collect();
        self.finish(&s, peers, failed, now);
    }

    /// Records a completed session and lets it absorb the triggers it answers.
    fn finish(&mut self, s: &Session, peers: Vec<NodeId>, failed: u32, now: Instant) {
        let name = self.storages[s.storage].clone();
        log::info!(
            "{name}: session done: received {} file(s) ({} bytes), sent {} file(s) ({} bytes), read {} bytes{}",
            s.stats.files_received,
            s.stats.bytes_received,
            s.stats.files_sent,
            s.stats.bytes_sent,
            s.read,
            if failed > 0 {
                format!(", {failed} failed")
            } else {
                String::new()
            }
        );
        if failed > 0 {
            // Something did not arrive (a lost peer, an I/O error): try again later, with
            // back-off, up to the attempt limit — the next session only moves what is missing.
            if let Some(w) = self.wants.get_mut(&s.storage) {
                w.attempts += 1;
                if w.attempts > MAX_ATTEMPTS {
                    self.wants.remove(&s.storage);
                } else {
                    w.not_before = now + Duration::from_millis(250 << w.attempts.min(6));
                }
            }
        } else if self
            .wants
            .get(&s.storage)
            .is_some_and(|w| w.since <= s.scanned_at)
        {
            self.wants.remove(&s.storage);
        }
        let mut stats = s.stats;
        stats.failed = failed;
        self.results
            .insert(s.storage, StorageResult::Synced { peers, stats });
    }

    // -----------------------------------------------------------------------------------
    // Follower

    fn follower_start(
        &mut self,
        from: &NodeId,
        sid: u64,
        storage: &str,
        members: Vec<NodeId>,
        now: Instant,
        io: &mut dyn Io,
    ) {
        let granted = self.grant.as_ref().is_some_and(|g| {
            g.to == *from && g.ticket == sid && self.storages[g.storage] == storage
        });
        if !granted || self.session.is_some() {
            log::warn!("{storage}: refusing a session from {from}: it was not granted the lead");
            return io.send(
                from,
                Message::SessionAbort {
                    sid,
                    reason: "no grant for this session (not the leader here)".into(),
                },
            );
        }
        let Some(g) = self.grant.take() else { return };
        let i = g.storage;
        let (index, ignore) = match io.scan(i) {
            Ok(r) => r,
            Err(e) => {
                log::error!("{storage}: cannot scan: {e}");
                self.results.insert(i, StorageResult::Failed(e.clone()));
                return io.send(from, Message::SessionAbort { sid, reason: e });
            }
        };
        log::info!("{storage}: joining session {sid:016x} led by {from}");
        let digest = proto::index_digest(&index);
        io.send(
            from,
            Message::IndexSummary {
                sid,
                count: index.len() as u64,
                digest,
                peers: self.peers.keys().cloned().collect(),
            },
        );
        let mut session = new_session(
            sid,
            i,
            Some(from.clone()),
            Vec::new(),
            index,
            digest,
            ignore,
            now,
        );
        session.members = members.into_iter().filter(|n| *n != self.me).collect();
        self.session = Some(session);
    }

    /// The running session if `from` leads it and it is `sid`.
    fn joined(&mut self, from: &NodeId, sid: u64, now: Instant) -> Option<&mut Session> {
        let s = self
            .session
            .as_mut()
            .filter(|s| s.sid == sid && s.leader.as_ref() == Some(from))?;
        s.last_activity = now;
        Some(s)
    }

    fn follower_send_index(&mut self, from: &NodeId, sid: u64, now: Instant, io: &mut dyn Io) {
        let Some(s) = self.joined(from, sid, now) else {
            return;
        };
        let index = std::mem::take(&mut s.local_index);
        for chunk in batches(index, proto::meta_len) {
            io.send(
                from,
                Message::IndexChunk {
                    sid,
                    entries: chunk,
                },
            );
        }
        io.send(from, Message::IndexEnd { sid });
    }

    fn follower_on_plan_chunk(
        &mut self,
        from: &NodeId,
        sid: u64,
        items: Vec<PlanItem>,
        now: Instant,
        io: &mut dyn Io,
    ) {
        let Some(s) = self.joined(from, sid, now) else {
            return;
        };
        if s.phase != Phase::Collect {
            return io.disconnect(from, "sent plan items after the plan ended");
        }
        if s.plan.len() + items.len() > MAX_ENTRIES {
            return io.disconnect(from, "sent a plan larger than we accept");
        }
        s.plan.extend(items);
    }

    fn follower_on_plan_end(&mut self, from: &NodeId, sid: u64, now: Instant, io: &mut dyn Io) {
        let Some(s) = self.joined(from, sid, now) else {
            return;
        };
        if s.phase != Phase::Collect {
            return io.disconnect(from, "ended the plan twice");
        }
        s.phase = Phase::Ready;
        s.local_index = Vec::new();
        let items = std::mem::take(&mut s.plan);
        if let Err(reason) = check_plan(&items) {
            return io.disconnect(from, reason);
        }
        self.register_items(items, io);
        io.send(from, Message::PlanReady { sid });
        self.maybe_part_done(now, io);
    }

    fn follower_on_go(&mut self, from: &NodeId, sid: u64, now: Instant, io: &mut dyn Io) {
        let Some(s) = self.joined(from, sid, now) else {
            return;
        };
        if s.phase != Phase::Ready {
            return io.disconnect(from, "said go before the plan ended");
        }
        s.phase = Phase::Go;
        self.release_held(io);
        self.maybe_part_done(now, io);
    }

    fn follower_on_end(
        &mut self,
        from: &NodeId,
        sid: u64,
        ok: bool,
        now: Instant,
        io: &mut dyn Io,
    ) {
        if self.joined(from, sid, now).is_none() {
            return;
        }
        let Some(s) = self.session.take() else { return };
        io.cancel_session(sid);
        if ok || s.local_done {
            let failed = s.stats.failed;
            let mut peers = vec![from.clone()];
            peers.extend(s.members.iter().cloned());
            self.finish(&s, peers, failed, now);
        } else {
            let name = self.storages[s.storage].clone();
            log::warn!("{name}: session {sid:016x} ended early by {from}");
            self.after_abort(s.storage, format!("{from} ended the session early"), now);
        }
    }

    // -----------------------------------------------------------------------------------
    // Both roles

    /// Registers this node's part of a plan: directories now, receives expected, sends held
    /// until `Go`.
    fn register_items(&mut self, items: Vec<PlanItem>, io: &mut dyn Io) {
        let Some(s) = self.session.as_mut() else {
            return;
        };
        let name = &self.storages[s.storage];
        for item in items {
            match item {
                PlanItem::MakeDir { path, mode } => {
                    if s.ignore.is_ignored(&path, true) {
                        continue;
                    }
                    if let Err(e) = io.make_dir(s.storage, &path, mode) {
                        log::warn!("{name}: cannot create directory {path}: {e}");
                        s.stats.failed += 1;
                    }
                }
                PlanItem::Receive { meta, from, expect } => {
                    if from == self.me || !self.peers.contains_key(&from) {
                        // The sender is gone (or never was a peer): the file cannot come.
                        // Counted as failed so the leader tries again.
                        log::debug!(
                            "{name}: {} cannot come from {from}: not connected",
                            meta.path
                        );
                        s.stats.failed += 1;
                        continue;
                    }
                    if s.ignore.is_ignored(&meta.path, false) {
                        log::debug!("{name}: not accepting {}: ignored here", meta.path);
                        s.declined.insert(meta.path);
                        continue;
                    }
                    if let Some(old) = expect.filter(|_| crate::delta::wanted(meta.size, expect)) {
                        io.queue_signature(s.storage, s.sid, meta.path.clone(), old, from.clone());
                    }
                    let from = match s.senders.iter().position(|n| *n == from) {
                        Some(k) => k as u32,
                        None => {
                            s.senders.push(from);
                            (s.senders.len() - 1) as u32
                        }
                    };
                    s.expected.insert(
                        meta.path,
                        Expected {
                            from,
                            size: meta.size,
                            mtime_ns: meta.mtime_ns,
                            expect,
                            started: false,
                        },
                    );
                }
                PlanItem::Send { meta, mut to } => {
                    // Targets that went away meanwhile are left out; the leader retries.
                    let before = to.len();
                    to.retain(|t| t.node != self.me && self.peers.contains_key(&t.node));
                    if to.len() < before {
                        s.stats.failed += 1;
                    }
                    if !to.is_empty() {
                        s.sends_left += 1;
                        s.held.push((meta, to));
                    }
                }
            }
        }
    }

    fn release_held(&mut self, io: &mut dyn Io) {
        let Some(s) = self.session.as_mut() else {
            return;
        };
        let held = std::mem::take(&mut s.held);
        if !held.is_empty() {
            io.queue_sends(s.storage, s.sid, held);
        }
    }

    /// Reports this node's part as done once every send and receive is resolved.
    fn maybe_part_done(&mut self, now: Instant, io: &mut dyn Io) {
        let Some(s) = self.session.as_mut() else {
            return;
        };
        if s.phase == Phase::Collect || s.local_done || s.sends_left > 0 || !s.expected.is_empty() {
            return;
        }
        s.local_done = true;
        let (sid, stats) = (s.sid, s.stats);
        match s.leader.clone() {
            Some(leader) => io.send(&leader, Message::PartDone { sid, stats }),
            None => self.leader_maybe_end(now, io),
        }
    }

    /// Is this incoming file one the plan announced, from this sender, in this version?
    /// Returns what the local path must still be for the commit to go ahead.
    pub fn accept_file(
        &mut self,
        from: &NodeId,
        sid: u64,
        meta: &FileMeta,
        now: Instant,
        io: &dyn Io,
    ) -> Result<Option<(u64, i64)>, Refusal> {
        // A sender starts on the leader's `Go`, which may overtake this node's own `Go` on
        // another connection: a registered plan (`Ready`) is enough to accept.
        let Some(s) = self
            .session
            .as_mut()
            .filter(|s| s.sid == sid && s.phase != Phase::Collect)
        else {
            // Late traffic of an aborted session: harmless, say no.
            return Err(Refusal::Reject("no such session here".into()));
        };
        s.last_activity = now;
        if s.declined.contains(&meta.path) {
            return Err(Refusal::Reject("ignored by the receiver's .ignore".into()));
        }
        let Some(e) = s.expected.get_mut(&meta.path) else {
            return Err(Refusal::Violation(format!(
                "sent {} which the plan did not announce",
                meta.path
            )));
        };
        if e.started
            || s.senders[e.from as usize] != *from
            || e.size != meta.size
            || e.mtime_ns != meta.mtime_ns
        {
            return Err(Refusal::Violation(format!(
                "sent {} which the plan did not announce",
                meta.path
            )));
        }
        let expect = e.expect;
        if let Some(free) = io.free_space(s.storage) {
            if meta.size > free {
                s.expected.remove(&meta.path);
                s.stats.failed += 1;
                return Err(Refusal::Reject("not enough space on the receiver".into()));
            }
        }
        if let Some(e) = s.expected.get_mut(&meta.path) {
            e.started = true;
        }
        Ok(expect)
    }

    /// A received file reached its end (committed, kept local, failed, aborted).
    pub fn on_received(
        &mut self,
        sid: u64,
        path: &RelPath,
        outcome: Received,
        now: Instant,
        io: &mut dyn Io,
    ) {
        let Some(s) = self.session.as_mut().filter(|s| s.sid == sid) else {
            return;
        };
        s.last_activity = now;
        s.progressed = true;
        if s.expected.remove(path).is_none() {
            return;
        }
        match outcome {
            Received::Committed { bytes } => {
                s.stats.files_received += 1;
                s.stats.bytes_received += bytes;
            }
            Received::KeptLocal | Received::Aborted => {}
            Received::Failed => s.stats.failed += 1,
        }
        self.maybe_part_done(now, io);
    }

    /// A queued send reached its end.
    pub fn on_sent(&mut self, sid: u64, outcome: Sent, now: Instant, io: &mut dyn Io) {
        let Some(s) = self.session.as_mut().filter(|s| s.sid == sid) else {
            return;
        };
        s.last_activity = now;
        s.progressed = true;
        s.sends_left = s.sends_left.saturating_sub(1);
        match outcome {
            Sent::Done {
                bytes,
                receivers,
                read,
            } => {
                s.stats.files_sent += receivers as u32;
                s.stats.bytes_sent += bytes;
                s.read += read;
            }
            Sent::Skipped => {}
            Sent::Failed => s.stats.failed += 1,
        }
        self.maybe_part_done(now, io);
    }

    /// Transfer progress without a message (a long file): keeps the session alive.
    pub fn on_progress(&mut self, now: Instant) {
        if let Some(s) = &mut self.session {
            s.last_activity = now;
            s.progressed = true;
        }
    }

    /// Ends the current session early, telling the others.
    pub fn abort(&mut self, reason: &str, now: Instant, io: &mut dyn Io) {
        let Some(s) = self.session.take() else { return };
        let name = self.storages[s.storage].clone();
        log::warn!("{name}: session {:016x} aborted: {reason}", s.sid);
        io.cancel_session(s.sid);
        match &s.leader {
            None => {
                for p in &s.participants {
                    io.send(
                        &p.node,
                        Message::SessionEnd {
                            sid: s.sid,
                            ok: false,
                        },
                    );
                }
            }
            Some(leader) => io.send(
                leader,
                Message::SessionAbort {
                    sid: s.sid,
                    reason: reason.to_owned(),
                },
            ),
        }
        self.after_abort(s.storage, reason.to_owned(), now);
    }

    /// After an abort the storage is retried (with back-off) by whoever is left, so the
    /// remaining nodes converge without the one that went away.
    fn after_abort(&mut self, storage: usize, reason: String, now: Instant) {
        let w = self.wants.entry(storage).or_insert(Want {
            since: now,
            attempts: 0,
            not_before: now,
            alone_since: None,
        });
        w.attempts += 1;
        if w.attempts > MAX_ATTEMPTS {
            self.wants.remove(&storage);
            self.results.insert(storage, StorageResult::Failed(reason));
            return;
        }
        let factor = 1u64 << w.attempts.min(6);
        w.not_before = now + Duration::from_millis(250 * factor);
        self.results.insert(storage, StorageResult::Failed(reason));
    }
}

#[allow(clippy::too_many_arguments)]
fn new_session(
    sid: u64,
    storage: usize,
    leader: Option<NodeId>,
    participants: Vec<Participant>,
    local_index: Vec<FileMeta>,
    local_digest: Digest,
    ignore: IgnoreMatcher,
    now: Instant,
) -> Session {
    Session {
        sid,
        storage,
        leader,
        participants,
        members: Vec::new(),
        phase: Phase::Collect,
        scanned_at: now,
        local_index,
        local_digest,
        ignore,
        plan: Vec::new(),
        held: Vec::new(),
        sends_left: 0,
        expected: HashMap::new(),
        senders: Vec::new(),
        declined: HashSet::new(),
        stats: PartStats::default(),
        read: 0,
        local_done: false,
        last_activity: now,
        alive_sent: now,
        progressed: false,
    }
}

/// A follower's checks on the plan it received: every path at most once per kind of item.
/// A node the plan names but this node is not (or no longer) connected to is not a
/// violation: a connection may drop after the leader planned. [`Core::register_items`] deals
/// with such items.
fn check_plan(items: &[PlanItem]) -> Result<(), &'static str> {
    let mut seen = HashSet::new();
    for item in items {
        let (path, kind) = match item {
            PlanItem::Send { meta, to } => {
                if to.is_empty() {
                    return Err("sent a plan with a send to nobody");
                }
                (&meta.path, 0)
            }
            PlanItem::Receive { meta, .. } => (&meta.path, 1),
            PlanItem::MakeDir { path, .. } => (path, 2),
        };
        if !seen.insert((path, kind)) {
            return Err("sent a plan naming a path twice");
        }
    }
    Ok(())
}

/// [`Planner`] over a whole list of operations: what the tests compare.
#[cfg(test)]
pub fn plan_items(
    ops: &[Op],
    nodes: &[NodeId],
    linked: &dyn Fn(&NodeId, &NodeId) -> bool,
) -> Vec<Vec<PlanItem>> {
    let mut out: Vec<Vec<PlanItem>> = vec![Vec::new(); nodes.len()];
    let mut planner = Planner::new(nodes, linked);
    for op in ops {
        planner.add(op, &mut out);
    }
    out
}

/// Turns diff operations, one at a time, into each node's part, so a leader can send each
/// node's part in chunks while the diff is still running. `nodes[i]` is participant `i` of
/// the diff; `linked(a, b)` says whether `a` can send to `b`. For every copy, holders of the
/// winning version are tried in order of the bytes already assigned to them (spreading the
/// load, which carries over from one op to the next), each taking the targets it reaches; one
/// holder reads the file once for all its targets. Targets no holder reaches are left for a
/// later session. Pure.
pub struct Planner<'a> {
    nodes: &'a [NodeId],
    linked: &'a dyn Fn(&NodeId, &NodeId) -> bool,
    /// Bytes assigned to each node so far.
    load: Vec<u64>,
}

impl<'a> Planner<'a> {
    pub fn new(nodes: &'a [NodeId], linked: &'a dyn Fn(&NodeId, &NodeId) -> bool) -> Planner<'a> {
        Planner {
            nodes,
            linked,
            load: vec![0; nodes.len()],
        }
    }

    /// Appends what `op` asks of each node to `out[node]`.
    pub fn add(&mut self, op: &Op, out: &mut [Vec<PlanItem>]) {
        let (nodes, linked, load) = (self.nodes, self.linked, &mut self.load);
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
                let mut left: Vec<&diff::Target> = targets.iter().collect();
                let mut holders = sources.clone();
                // Least loaded first; ties keep the diff's order (node id).
                holders.sort_by_key(|&h| load[h]);
                while !left.is_empty() {
                    // The holder reaching the most of what is left, least loaded on ties.
                    let best = holders
                        .iter()
                        .copied()
                        .map(|h| {
                            let reach = left
                                .iter()
                                .filter(|t| linked(&nodes[h], &nodes[t.node]))
                                .count();
                            (h, reach)
                        })
                        .filter(|&(_, reach)| reach > 0)
                        .max_by_key(|&(h, reach)| (reach, std::cmp::Reverse(load[h])));
                    let Some((h, _)) = best else { break };
                    let (mine, rest): (Vec<&diff::Target>, Vec<&diff::Target>) = left
                        .into_iter()
                        .partition(|t| linked(&nodes[h], &nodes[t.node]));
                    left = rest;
                    holders.retain(|&x| x != h);
                    load[h] += meta.size;
                    let version = |t: &diff::Target| {
                        t.current
                            .as_ref()
                            .filter(|c| c.kind == EntryKind::File)
                            .map(|c| (c.size, c.mtime_ns))
                    };
                    out[h].push(PlanItem::Send {
                        meta: meta.clone(),
                        to: mine
                            .iter()
                            .map(|t| SendTo {
                                node: nodes[t.node].clone(),
                                old: version(t),
                            })
                            .collect(),
                    });
                    for t in mine {
                        out[t.node].push(PlanItem::Receive {
                            meta: meta.clone(),
                            from: nodes[h].clone(),
                            expect: version(t),
                        });
                    }
                }
            }
        }
    }
}

/// Plan items a leader gathers for one remote node before sending them.
const PLAN_FLUSH_ITEMS: usize = 1024;

/// Sends `items` to `node` as `PlanChunk` messages of at most [`BATCH_BYTES`] each.
fn send_plan_chunks(io: &mut dyn Io, node: &NodeId, sid: u64, items: Vec<PlanItem>) {
    if items.is_empty() {
        return;
    }
    for chunk in batches(items, plan_item_len) {
        io.send(node, Message::PlanChunk { sid, items: chunk });
    }
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
            1 + proto::meta_len(meta)
                + 4
                + to.iter()
                    .map(|t| 2 + t.node.as_str().len() + 17)
                    .sum::<usize>()
        }
        PlanItem::Receive { meta, from, .. } => {
            1 + proto::meta_len(meta) + 2 + from.as_str().len() + 17
        }
        PlanItem::MakeDir { path, .. } => 1 + 2 + path.as_str().len() + 4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diff::Target;

    fn n(s: &str) -> NodeId {
        NodeId::new(s).unwrap()
    }

    fn full(_: &NodeId, _: &NodeId) -> bool {
        true
    }

    #[test]
    fn plan_items_split_ops_per_node_and_read_once_for_many_targets() {
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
        let parts = plan_items(&ops, &[n("a"), n("b"), n("c")], &full);
        assert_eq!(
            parts[0],
            vec![PlanItem::Send {
                meta: meta.clone(),
                to: vec![
                    SendTo {
                        node: n("b"),
                        old: Some((1, 2))
                    },
                    SendTo {
                        node: n("c"),
                        old: None
                    }
                ]
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
    fn copies_are_spread_over_holders_and_routed_over_existing_links() {
        let f = |p: &str| FileMeta::file(RelPath::new(p).unwrap(), 100, 1, 0o644);
        let t = |node| Target {
            node,
            current: None,
        };
        // Nodes a, b hold both files; c lacks them. Two files: one each from a and b.
        let ops = vec![
            Op::CopyFile {
                meta: f("1"),
                sources: vec![0, 1],
                targets: vec![t(2)],
            },
            Op::CopyFile {
                meta: f("2"),
                sources: vec![0, 1],
                targets: vec![t(2)],
            },
        ];
        let nodes = [n("a"), n("b"), n("c")];
        let parts = plan_items(&ops, &nodes, &full);
        assert_eq!(parts[0].len(), 1, "{parts:?}");
        assert_eq!(parts[1].len(), 1, "{parts:?}");
        // b cannot reach c: everything comes from a.
        let no_bc = |x: &NodeId, y: &NodeId| {
            !((x.as_str() == "b" && y.as_str() == "c") || (x.as_str() == "c" && y.as_str() == "b"))
        };
        let parts = plan_items(&ops, &nodes, &no_bc);
        assert_eq!(parts[0].len(), 2, "{parts:?}");
        assert!(parts[1].is_empty());
        // Nobody reaches c: nothing is planned for it.
        let parts = plan_items(&ops, &nodes, &|x: &NodeId, y: &NodeId| {
            x.as_str() != "c" && y.as_str() != "c"
        });
        assert!(parts.iter().all(Vec::is_empty), "{parts:?}");
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
