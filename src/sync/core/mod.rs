//! The sans-I/O heart of the `sync` thread: leader election and sessions, for any number of
//! nodes.
//!
//! [`Core`] owns no socket, file or clock. It is driven by inputs (a peer came or went, a
//! message arrived, a trigger, a transfer finished, time passed — the current time is always
//! passed in) and acts through the small [`Io`] trait: send a message, scan a storage, create a
//! directory, queue files for sending. The real `sync` thread implements [`Io`] with `net`,
//! the scanner and `fsops`; the simulator (`sim/`) implements it in memory with a virtual
//! clock, which is how thousands of random multi-node schedules are checked.
//!
//! `Core` composes machines that each own one job and report back to it, as Nakamoto's
//! `fsm` composes its managers:
//! - [`election`]: claims, grants, denials and back-off — who leads, and when to try;
//! - `session` (with `leader` and `follower`): one running session, either role; it says
//!   when it is over and how, and `Core` tells the election and records the result;
//! - [`plan`]: the diff's operations turned into each node's part, routed over the
//!   connections that exist;
//! - [`oneshot`]: the policy of a one-shot run (when to stop waiting, what to trigger, when
//!   the run is over and what it achieved).
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

pub mod election;
mod expected;
mod follower;
mod leader;
pub mod oneshot;
pub mod plan;
mod sends;
mod session;
#[cfg(test)]
mod sim;
mod waits;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::time::{Duration, Instant};

use crate::history::{Digest, Entry, IndexView, Record, Vv};
use crate::ignore::IgnoreMatcher;
use crate::model::{FileMeta, NodeId, RelPath, Version};
use crate::proto::{ElectionMsg, PartStats, PeerMsg, SessionMsg};
use crate::run::{Moved, SyncError};

use election::{Election, ElectionEvent};
pub use expected::Incoming;
pub use sends::{IntoSends, Sends};
use session::{GiveWay, Over, Session};
pub use waits::WaitEnd;

/// Most index entries or plan items accepted from one peer in one session. Bounds memory
/// against a peer that never stops sending.
pub const MAX_ENTRIES: u64 = 2_000_000;
/// A session with no sign of life for this long is abandoned: for a follower, nothing from
/// its leader; for the leader, no progress of its own and nothing from any participant.
pub const SESSION_IDLE_TIMEOUT: Duration = Duration::from_secs(120);
/// A session that made no progress (a `SessionAlive` is none) for this long while another
/// node has waited as long for this one to be free is ended, so that one slow or hostile
/// peer cannot keep the others waiting: the session is retried later, and the next one only
/// moves what is missing. Checked when the session's heartbeat is due (every
/// [`ALIVE_EVERY`]), so it gives way 60 to 80 s after.
pub const SESSION_YIELD: Duration = Duration::from_secs(60);
/// How often a leader tells its participants it is alive, and a participant that made
/// progress tells its leader, during a long session (files may move between followers for
/// minutes without a word to or from the leader).
pub const ALIVE_EVERY: Duration = Duration::from_secs(20);
/// What a receiver says to a file it stopped expecting when the connection to its sender
/// dropped (the sender may have reconnected since and send it anyway).
pub const SENDER_LOST: &str = "no longer expected: the connection to its sender dropped";

/// How long a daemon waits after a peer connects before claiming, so that peers connecting
/// together end up in one session.
pub const CONNECT_SETTLE: Duration = Duration::from_millis(500);

/// This node's index of a storage right after a scan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocalIndex {
    pub index_id: u64,
    pub seq: u64,
    pub count: u64,
    pub digest: Digest,
}

/// Why a plan step was not carried out here. Either way the path is left as it is and the
/// step counts as failed (the storage is synchronized again).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StepError {
    /// The path no longer holds what the plan expected (edited meanwhile): kept.
    Changed(String),
    Io(String),
}

impl fmt::Display for StepError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StepError::Changed(what) | StepError::Io(what) => f.write_str(what),
        }
    }
}

/// How a planned deletion went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Deleted {
    Done,
    /// A directory that still holds entries its peers never knew: kept (and made a new
    /// version, so that its peers get it back with them).
    Kept,
}

/// Sends a message to a participant while the diff streams (the store is borrowed then).
pub type Send<'a> = dyn FnMut(&NodeId, PeerMsg) + 'a;

/// What a leader's diff calls for each path: every participant's entry, the view for
/// lookups, and a way to send plan chunks while the diff runs.
pub type EachPlanned<'a> = dyn FnMut(&[Option<&Entry>], &dyn IndexView, &mut Send<'_>) + 'a;

/// The side effects the core asks for. Implemented by the `sync` thread and the simulator.
pub trait Io {
    /// Sends a protocol message to a connected peer (dropped if it is gone).
    fn send(&mut self, to: &NodeId, msg: PeerMsg);
    /// Drops a peer that broke the protocol.
    fn disconnect(&mut self, node: &NodeId, why: Violation);
    /// Scans storage `storage` (removing leftover temporary files) with its `.ignore`, and
    /// records what changed in the history.
    fn scan(&mut self, storage: usize) -> Result<(LocalIndex, IgnoreMatcher), SyncError>;
    /// Where this node's index of `storage` stands: (index id, sequence number); `None` if
    /// the history cannot say.
    fn local_state(&mut self, storage: usize) -> Option<(u64, u64)>;
    /// This node's index of `storage` after sequence number `since`, page by page; returns
    /// the sequence number it leads to.
    fn index_since(
        &mut self,
        storage: usize,
        since: u64,
        each: &mut dyn FnMut(Vec<Record>, &mut Send<'_>),
    ) -> Result<u64, SyncError>;
    /// How far this node's copy of `node`'s index goes: (index id, sequence number).
    fn remote_state(&mut self, storage: usize, node: &NodeId) -> Option<(u64, u64)>;
    /// `node` is about to send its index (`full`: all of it, replacing the copy).
    fn remote_begin(&mut self, storage: usize, node: &NodeId, full: bool) -> Result<(), SyncError>;
    fn remote_apply(
        &mut self,
        storage: usize,
        node: &NodeId,
        records: &[Record],
    ) -> Result<(), SyncError>;
    fn remote_end(&mut self, storage: usize, node: &NodeId, index_id: u64, seq: u64);
    /// Streams the diff of this node's index and the copies of `peers`' (in `sources`
    /// order: `None` is this node): `each` gets every path's entries, a view for lookups,
    /// and a way to send.
    fn diff(
        &mut self,
        storage: usize,
        sources: &[Option<NodeId>],
        each: &mut EachPlanned<'_>,
    ) -> Result<(), SyncError>;
    /// Creates directory `entry` (and records it).
    fn make_dir(&mut self, storage: usize, entry: &Entry) -> Result<(), StepError>;
    /// Deletes the path of tombstone `entry` if it still holds `expect`, and records it.
    fn delete(
        &mut self,
        storage: usize,
        entry: &Entry,
        expect: Option<Version>,
    ) -> Result<Deleted, StepError>;
    /// Records `entry` for a path that holds `expect` (its content is already right).
    fn set_version(
        &mut self,
        storage: usize,
        entry: &Entry,
        expect: Option<Version>,
    ) -> Result<(), StepError>;
    /// Renames `from` (holding `expect`) to `entry`'s path and records it; `gone` is the
    /// tombstone to record at `from` (none: `from` is forgotten).
    fn rename(
        &mut self,
        storage: usize,
        from: &RelPath,
        expect: Version,
        entry: &Entry,
        gone: &Entry,
    ) -> Result<(), StepError>;
    /// Replays a directory move (see `PlanItem::MoveDir`).
    fn move_dir(
        &mut self,
        storage: usize,
        from: &RelPath,
        to: &RelPath,
        by: &NodeId,
        counter: u64,
    ) -> Result<(), StepError>;
    /// Writes what the steps above recorded, in one transaction. False if the store could
    /// not (a full disk under it): the disk is then ahead of the store until the next scan,
    /// and the steps count as failed, so the storage is synchronized again.
    fn flush_history(&mut self, storage: usize) -> bool;
    /// Queues each `(meta, to)` of `storage` for sending to every node in `to` (as a delta
    /// to those with a usable old version), in order; each outcome comes back through
    /// [`Core::on_sent`]. The whole list at once: the shell keeps it as it is and starts jobs
    /// from it as the sender makes room (10,000 ready jobs at once would cost megabytes).
    fn queue_sends(&mut self, storage: usize, sid: u64, sends: Sends);
    /// Computes the block signature of this node's version `base` of `path` and sends it
    /// to `to`, the node that will send the new version as a delta.
    fn queue_signature(
        &mut self,
        storage: usize,
        sid: u64,
        path: RelPath,
        base: Version,
        to: NodeId,
    );
    /// Forgets every transfer (both ways) of session `sid`.
    fn cancel_session(&mut self, sid: u64);
    /// Free bytes in a storage, if known.
    fn free_space(&self, storage: usize) -> Option<u64>;
    /// A random number (tickets, back-off jitter).
    fn random(&mut self) -> u64;
}

/// How a peer broke the protocol. Each one disconnects it, with this as the log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Violation {
    TwoSummaries,
    IndexTooLarge,
    UnrequestedIndex,
    UnrequestedIndexEnd,
    IndexOutOfOrder,
    PlanTooLarge,
    PlanAfterEnd,
    PlanEndedTwice,
    PlanSendToNobody,
    PlanPathTwice,
    ReadyBeforePlan,
    DoneBeforePlan,
    GoBeforePlan,
    /// A file the plan did not announce (or not from this sender, or in another version).
    Unannounced(RelPath),
    ReusedTransferId,
    TooManySignatures,
    /// The data of a transfer broke its announcement (more bytes, a bad block copy).
    Transfer(String),
    /// A summary with no index where the leader needs one, or an index end that does not
    /// match its summary.
    IndexMismatch,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            Violation::TwoSummaries => "sent two index summaries",
            Violation::IndexTooLarge => "sent an index larger than we accept",
            Violation::UnrequestedIndex => "sent an index nobody asked for",
            Violation::UnrequestedIndexEnd => "ended an index nobody asked for",
            Violation::IndexOutOfOrder => "sent an index out of order",
            Violation::PlanTooLarge => "sent a plan larger than we accept",
            Violation::PlanAfterEnd => "sent plan items after the plan ended",
            Violation::PlanEndedTwice => "ended the plan twice",
            Violation::PlanSendToNobody => "sent a plan with a send to nobody",
            Violation::PlanPathTwice => "sent a plan naming a path twice",
            Violation::ReadyBeforePlan => "said ready before it had a plan",
            Violation::DoneBeforePlan => "reported its part done before it had a plan",
            Violation::GoBeforePlan => "said go before the plan ended",
            Violation::Unannounced(path) => {
                return write!(f, "sent {path} which the plan did not announce")
            }
            Violation::ReusedTransferId => "reused a transfer id",
            Violation::TooManySignatures => "sent more signatures than we can keep",
            Violation::Transfer(what) => what,
            Violation::IndexMismatch => "sent an index that does not match its summary",
        };
        f.write_str(s)
    }
}

/// What became of a storage's last session on this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StorageResult {
    Synced {
        peers: Vec<NodeId>,
        stats: PartStats,
    },
    NoPeer,
    Failed(SyncError),
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

/// An incoming file the plan announced: what the local path must still hold, and the version
/// to record once it is committed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    pub expect: Option<Version>,
    pub vv: Vv,
    pub by: NodeId,
}

/// Why an incoming file is not accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// Say no politely (`FileReject`).
    Reject(&'static str),
    /// The peer broke the protocol: disconnect it.
    Violation(Violation),
}

/// Everything a run did to one storage, summed over its sessions: what a summary or a
/// status report shows.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StorageRecord {
    /// Peers that had this storage while connected.
    pub seen: BTreeSet<NodeId>,
    /// Peers that a clean session included: one that completed without a failure on any
    /// participant.
    pub synced_with: BTreeSet<NodeId>,
    /// Files and bytes moved, over every session.
    pub moved: Moved,
    /// Why the last session that did not complete cleanly did not.
    pub last_error: Option<SyncError>,
}

/// Connected peers and the storages they have.
#[derive(Default)]
pub(crate) struct Peers(BTreeMap<NodeId, BTreeSet<String>>);

impl Peers {
    /// Connected peers that have storage `name`.
    fn holders(&self, name: &str) -> BTreeSet<NodeId> {
        self.0
            .iter()
            .filter(|(_, s)| s.contains(name))
            .map(|(n, _)| n.clone())
            .collect()
    }

    fn contains(&self, node: &NodeId) -> bool {
        self.0.contains_key(node)
    }

    /// How many connected peers have priority over `me` (a smaller id).
    fn rank(&self, me: &NodeId) -> u32 {
        self.0.keys().filter(|n| *n < me).count() as u32
    }

    fn ids(&self) -> Vec<NodeId> {
        self.0.keys().cloned().collect()
    }
}

/// What every machine needs to know of the node: who it is, its storages, its peers.
pub(crate) struct Ctx<'a> {
    me: &'a NodeId,
    storages: &'a [String],
    peers: &'a Peers,
}

/// Election and sessions of one node.
pub struct Core {
    me: NodeId,
    storages: Vec<String>,
    peers: Peers,
    /// Daemons sync a shared storage as soon as a peer with it connects.
    trigger_on_connect: bool,
    election: Election,
    session: Option<Session>,
    results: BTreeMap<usize, StorageResult>,
    /// Per storage, how many results it has had (see [`Core::results_seen`]).
    result_count: Vec<u64>,
    /// Control clients waiting for syncs (see `waits.rs`).
    waits: Vec<waits::Waiter>,
    records: Vec<StorageRecord>,
    /// Storages whose watcher said "changed" while a session ran, and whether their rules
    /// changed: scanned when it is over.
    rescans: BTreeMap<usize, bool>,
    /// The scan a rescan just made and claimed for, by storage: the session it leads to
    /// starts from it instead of scanning again (see [`FRESH_FOR`]).
    fresh: BTreeMap<usize, Fresh>,
    /// Sessions over since the shell last asked ([`Core::take_ended`]): one can start and
    /// end between two of its looks, and what it left queued must still be dropped.
    ended: Vec<u64>,
    /// Since when another node has been denied a claim because a session runs here (the
    /// first such node since the session started).
    waited: Option<(Instant, NodeId)>,
}

/// Most ended sessions remembered for the shell; a few end between two ticks at most.
const MAX_ENDED: usize = 64;

/// How long a rescan's result may stand in for the scan of the session it claimed for. A
/// change made after the scan is in the next session either way (its events lead to one),
/// whether it came before this session's start or after; reusing the scan saves a second
/// pass over the storage on the path from a saved file to its peers (about 50 ms for 10,000
/// files here, seconds on a Pi), and it stands only while the index is where the scan left
/// it and the claim was won quickly.
pub const FRESH_FOR: Duration = Duration::from_secs(1);

/// A scan kept for the session a rescan claims.
pub(crate) struct Fresh {
    pub(crate) at: Instant,
    /// The index's (id, sequence number) after the scan.
    pub(crate) state: (u64, u64),
    pub(crate) local: LocalIndex,
    pub(crate) ignore: IgnoreMatcher,
}

impl Core {
    pub fn new(me: NodeId, storages: Vec<String>, trigger_on_connect: bool) -> Core {
        let records = vec![StorageRecord::default(); storages.len()];
        Core {
            me,
            storages,
            peers: Peers::default(),
            trigger_on_connect,
            election: if trigger_on_connect {
                Election::default()
            } else {
                Election::new(election::ONESHOT_MAX_ATTEMPTS)
            },
            session: None,
            results: BTreeMap::new(),
            result_count: vec![0; records.len()],
            waits: Vec::new(),
            records,
            rescans: BTreeMap::new(),
            fresh: BTreeMap::new(),
            ended: Vec::new(),
            waited: None,
        }
    }

    /// The sessions that ended since the last call, oldest first.
    pub fn take_ended(&mut self) -> Vec<u64> {
        std::mem::take(&mut self.ended)
    }

    /// A session ended that the shell has not taken yet.
    pub fn has_ended(&self) -> bool {
        !self.ended.is_empty()
    }

    fn note_ended(&mut self, sid: u64) {
        if self.ended.len() >= MAX_ENDED {
            self.ended.remove(0);
        }
        self.ended.push(sid);
    }

    pub fn me(&self) -> &NodeId {
        &self.me
    }

    fn storage_index(&self, name: &str) -> Option<usize> {
        self.storages.iter().position(|s| s == name)
    }

    /// The context machines are called with, borrowed apart from `election`, `session`
    /// and the results so that those can be borrowed mutably at the same time.
    fn parts(&mut self) -> (Ctx<'_>, &mut Election, &mut Option<Session>) {
        (
            Ctx {
                me: &self.me,
                storages: &self.storages,
                peers: &self.peers,
            },
            &mut self.election,
            &mut self.session,
        )
    }

    // -----------------------------------------------------------------------------------
    // Queries for the shell, the one-shot policy and tests

    /// The storage of the running session, if any (the shell reads and writes files there).
    pub fn session_storage(&self) -> Option<usize> {
        self.session.as_ref().map(|s| s.storage)
    }

    /// The running session: its id, leader (`None` = this node) and storage.
    pub fn session_info(&self) -> Option<(u64, Option<&NodeId>, usize)> {
        self.session
            .as_ref()
            .map(|s| (s.sid, s.leader(), s.storage))
    }

    /// Participants of the session this node leads.
    pub fn led_participants(&self) -> Option<Vec<NodeId>> {
        self.session.as_ref().and_then(Session::led_participants)
    }

    /// True when nothing is wanted or in flight.
    pub fn is_idle(&self) -> bool {
        self.election.is_idle() && self.session.is_none()
    }

    /// True when a connected peer has storage `storage`.
    /// Connected peers that have `storage`.
    pub fn holders(&self, storage: usize) -> Vec<NodeId> {
        self.peers
            .holders(&self.storages[storage])
            .into_iter()
            .collect()
    }

    pub fn has_holders(&self, storage: usize) -> bool {
        !self.peers.holders(&self.storages[storage]).is_empty()
    }

    /// Connected peers that have `storage` and that no clean session has synchronized it
    /// with yet (a session can leave out a peer that connected after it was claimed).
    pub fn unsynced_holders(&self, storage: usize) -> Vec<NodeId> {
        let synced = &self.records[storage].synced_with;
        self.peers
            .holders(&self.storages[storage])
            .into_iter()
            .filter(|h| !synced.contains(h))
            .collect()
    }

    pub fn has_want(&self, storage: usize) -> bool {
        self.election.has_want(storage)
    }

    pub fn result(&self, storage: usize) -> Option<&StorageResult> {
        self.results.get(&storage)
    }

    /// What this core did to `storage` since it was created.
    /// The files coming to this node in the running session, with its storage.
    pub fn incoming(&self) -> Option<(usize, Incoming)> {
        let s = self.session.as_ref()?;
        Some((s.storage, s.incoming()))
    }

    /// How many results `storage` has had: a new one (a session over, a failure) raises it.
    pub fn results_seen(&self, storage: usize) -> u64 {
        self.result_count.get(storage).copied().unwrap_or(0)
    }

    pub fn record(&self, storage: usize) -> &StorageRecord {
        &self.records[storage]
    }

    pub fn storages(&self) -> &[String] {
        &self.storages
    }

    /// When `tick` next has something to do.
    pub fn next_deadline(&self) -> Option<Instant> {
        let session = self.session.as_ref().map(Session::next_deadline);
        let election = self.election.next_deadline(self.session.is_some());
        match (session, election) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    // -----------------------------------------------------------------------------------
    // Inputs

    /// Something changed in storage `storage` (or a run wants it synchronized).
    pub fn trigger(&mut self, storage: usize, now: Instant) {
        self.election.trigger_after(storage, now, Duration::ZERO);
    }

    /// Like [`Core::trigger`], but claims no sooner than `delay` from now.
    pub fn trigger_after(&mut self, storage: usize, now: Instant, delay: Duration) {
        self.election.trigger_after(storage, now, delay);
    }

    /// The watcher says `storage` changed (or its periodic rescan is due): scan it, and claim
    /// it only if the scan recorded a change. Events are hints, the history decides: this
    /// node's own writes (files received, deletions and renames applied) are already in the
    /// history, so they find nothing and start no session — no ping-pong between nodes. While
    /// a session runs the scan waits for it to end, as a scan then would meet its temporary
    /// files and a half-applied plan. `rules`: the storage's `.ignore` changed, which calls
    /// for a session even if no file did (what the old rules declined can come now).
    pub fn rescan(&mut self, storage: usize, rules: bool, now: Instant, io: &mut dyn Io) {
        if storage >= self.storages.len() {
            return;
        }
        if self.session.is_some() {
            *self.rescans.entry(storage).or_default() |= rules;
            return;
        }
        let rules = self.rescans.remove(&storage).unwrap_or(false) || rules;
        let before = io.local_state(storage);
        match io.scan(storage) {
            Ok((local, ignore)) if rules || before != Some((local.index_id, local.seq)) => {
                let state = (local.index_id, local.seq);
                self.fresh.insert(
                    storage,
                    Fresh {
                        at: now,
                        state,
                        local,
                        ignore,
                    },
                );
                self.trigger(storage, now);
            }
            Ok(_) => {}
            // The next change, the periodic rescan or a peer's session tries again.
            Err(e) => {
                log::warn!("{}: not scanned: {e}", self.storages[storage]);
                self.fail(storage, e);
            }
        }
    }

    pub fn peer_up(&mut self, node: NodeId, storages: Vec<String>, now: Instant) {
        let shared: Vec<usize> = storages
            .iter()
            .filter_map(|s| self.storage_index(s))
            .collect();
        for &i in &shared {
            self.records[i].seen.insert(node.clone());
        }
        self.peers.0.insert(node, storages.into_iter().collect());
        if self.trigger_on_connect {
            // Peers tend to connect in bursts (a node starting up dials everyone): wait for
            // the burst to settle so one session includes them all.
            for i in shared {
                self.election.trigger_after(i, now, CONNECT_SETTLE);
            }
        }
    }

    pub fn peer_down(&mut self, node: &NodeId, now: Instant, io: &mut dyn Io) {
        self.peers.0.remove(node);
        if let Some(ev) = self.election.peer_down(node) {
            self.on_election_event(ev, now, io);
        }
        if self.session.as_ref().is_some_and(|s| s.involves(node)) {
            return self.abort_with(SyncError::PeerLost(node.clone()), now, io);
        }
        // A participant we exchange files with directly (not the leader, who would have
        // aborted above): what it was to send us will not come, and what we still had to send
        // it is dropped by the shell. Failures, so the leader tries again.
        let (cx, _, session) = self.parts();
        let over = session
            .as_mut()
            .and_then(|s| s.sender_lost(&cx, node, now, io));
        self.conclude(over, now);
    }

    /// Timeouts, and starting a claim when idle.
    pub fn tick(&mut self, now: Instant, io: &mut dyn Io) {
        if self.session.as_ref().is_some_and(|s| s.idle_too_long(now)) {
            self.abort_with(SyncError::Stalled, now, io);
        }
        if let (Some(s), Some((since, node))) = (&self.session, &self.waited) {
            let why = SyncError::Yielded {
                to: node.clone(),
                secs: SESSION_YIELD.as_secs(),
            };
            match s.give_way(*since, now) {
                Some(GiveWay::Abort) => self.abort_with(why, now, io),
                Some(GiveWay::Leave) => {
                    let (storage, sid) = (s.storage(), s.sid);
                    log::warn!(
                        "{}: leaving session {sid:016x}: {why}",
                        self.storages[storage]
                    );
                    let (cx, _, session) = self.parts();
                    if let Some(s) = session {
                        s.give_up_part(&cx, now, io);
                    }
                    io.cancel_session(sid);
                    self.conclude(Some(Over::Aborted { storage, why }), now);
                }
                Some(GiveWay::GiveUp) => {
                    log::warn!(
                        "{}: giving up the rest of this node's part of session {:016x}: {why}",
                        self.storages[s.storage()],
                        s.sid
                    );
                    let (cx, _, session) = self.parts();
                    let over = session.as_mut().and_then(|s| s.give_up_part(&cx, now, io));
                    self.conclude(over, now);
                }
                None => {}
            }
        }
        if let Some(s) = &mut self.session {
            s.heartbeat(now, io);
        }
        if self.session.is_none() {
            while let Some((storage, rules)) = self.rescans.pop_first() {
                self.rescan(storage, rules, now, io);
            }
        }
        let busy = self.session.is_some();
        let (cx, election, _) = self.parts();
        for ev in election.tick(&cx, busy, now, io) {
            self.on_election_event(ev, now, io);
        }
    }

    /// An election message from a connected peer.
    pub fn on_election(&mut self, from: &NodeId, msg: ElectionMsg, now: Instant, io: &mut dyn Io) {
        let busy = self.session.is_some();
        let (cx, election, _) = self.parts();
        let event = match msg {
            ElectionMsg::Claim { ticket, storage } => {
                election.on_claim(&cx, from, ticket, &storage, busy, now, io);
                let shared = cx.storages.contains(&storage);
                if busy && shared && self.waited.is_none() {
                    self.waited = Some((now, from.clone()));
                }
                None
            }
            ElectionMsg::Grant { ticket } => election.on_grant(from, ticket, io),
            ElectionMsg::Deny { ticket } => {
                election.on_deny(&cx, from, ticket, now, io);
                None
            }
            ElectionMsg::Release { ticket } => {
                election.on_release(from, ticket);
                None
            }
        };
        if let Some(ev) = event {
            self.on_election_event(ev, now, io);
        }
    }

    /// A session message from a connected peer.
    pub fn on_session(&mut self, from: &NodeId, msg: SessionMsg, now: Instant, io: &mut dyn Io) {
        if let SessionMsg::Start {
            sid,
            storage,
            members,
        } = msg
        {
            return self.follow(from, sid, &storage, members, now, io);
        }
        let (cx, _, session) = self.parts();
        let over = session
            .as_mut()
            .and_then(|s| s.on_message(&cx, from, msg, now, io));
        self.conclude(over, now);
    }

    /// What the election decided.
    fn on_election_event(&mut self, ev: ElectionEvent, now: Instant, io: &mut dyn Io) {
        match ev {
            ElectionEvent::Lead {
                ticket,
                storage,
                granted,
            } => self.lead(ticket, storage, granted, now, io),
            ElectionEvent::NoPeer(storage) => {
                // A storage whose last session failed keeps its reason: nobody being left to
                // try again with does not make that failure a success.
                if !matches!(self.results.get(&storage), Some(StorageResult::Failed(_))) {
                    self.results.insert(storage, StorageResult::NoPeer);
                }
            }
        }
    }

    fn lead(
        &mut self,
        sid: u64,
        storage: usize,
        granted: BTreeSet<NodeId>,
        now: Instant,
        io: &mut dyn Io,
    ) {
        let name = self.storages[storage].clone();
        let fresh = self.fresh.remove(&storage).filter(|f| {
            now.saturating_duration_since(f.at) <= FRESH_FOR
                && io.local_state(storage) == Some(f.state)
        });
        match Session::lead(&name, sid, storage, granted.clone(), fresh, now, io) {
            Ok(s) => self.session = Some(s),
            Err(e) => {
                log::error!("{name}: {e}");
                for n in &granted {
                    io.send(n, ElectionMsg::Release { ticket: sid }.into());
                }
                self.election.drop_want(storage);
                self.fail(storage, e);
            }
        }
    }

    fn follow(
        &mut self,
        from: &NodeId,
        sid: u64,
        storage: &str,
        members: Vec<NodeId>,
        now: Instant,
        io: &mut dyn Io,
    ) {
        let granted = self
            .election
            .grant_for(from, sid)
            .filter(|&i| self.storages[i] == storage && self.session.is_none());
        let Some(i) = granted else {
            log::warn!("{storage}: refusing a session from {from}: it was not granted the lead");
            return io.send(
                from,
                SessionMsg::Abort {
                    sid,
                    reason: "no grant for this session (not the leader here)".into(),
                }
                .into(),
            );
        };
        self.election.take_grant();
        // Only the session's members: the leader routes copies between them and no one else,
        // and a crowd of other connections (strangers sharing nothing, idle peers) must not
        // swell the summary past what a leader decodes and break a session of friends.
        let peers = self
            .peers
            .ids()
            .into_iter()
            .filter(|n| members.contains(n))
            .collect();
        match Session::follow(&self.me, storage, sid, i, from, members, peers, now, io) {
            Ok(s) => self.session = Some(s),
            Err(e) => {
                log::error!("{storage}: {e}");
                io.send(
                    from,
                    SessionMsg::Abort {
                        sid,
                        reason: e.to_string(),
                    }
                    .into(),
                );
                self.fail(i, e);
            }
        }
    }

    /// Is this incoming file one the plan announced, from this sender, in this version?
    /// Returns what the local path must still hold for the commit to go ahead.
    pub fn accept_file(
        &mut self,
        from: &NodeId,
        sid: u64,
        meta: &FileMeta,
        now: Instant,
        io: &mut dyn Io,
    ) -> Result<Accepted, Refusal> {
        let (cx, _, session) = self.parts();
        let Some(s) = session.as_mut().filter(|s| s.sid == sid) else {
            // Late traffic of an aborted session: harmless, say no.
            return Err(Refusal::Reject("no such session here"));
        };
        let verdict = s.accept_file(from, meta, now, &*io);
        if verdict.is_err() {
            // A refusal may have settled the last file this node waited for (no room for
            // it): its part is done now, not when the session times out.
            let over = s.maybe_part_done(&cx, now, io);
            self.conclude(over, now);
        }
        verdict
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
        let (cx, _, session) = self.parts();
        let over = session
            .as_mut()
            .filter(|s| s.sid == sid)
            .and_then(|s| s.on_received(&cx, path, outcome, now, io));
        self.conclude(over, now);
    }

    /// A queued send reached its end.
    pub fn on_sent(&mut self, sid: u64, outcome: Sent, now: Instant, io: &mut dyn Io) {
        let (cx, _, session) = self.parts();
        let over = session
            .as_mut()
            .filter(|s| s.sid == sid)
            .and_then(|s| s.on_sent(&cx, outcome, now, io));
        self.conclude(over, now);
    }

    /// Transfer progress without a message (a long file): keeps the session alive.
    pub fn on_progress(&mut self, now: Instant) {
        if let Some(s) = &mut self.session {
            s.on_progress(now);
        }
    }

    /// Ends the current session early (the node shuts down), telling the others.
    pub fn shut_down(&mut self, now: Instant, io: &mut dyn Io) {
        self.abort_with(SyncError::ShuttingDown, now, io);
    }

    fn abort_with(&mut self, why: SyncError, now: Instant, io: &mut dyn Io) {
        let Some(mut s) = self.session.take() else {
            return;
        };
        self.note_ended(s.sid);
        let name = &self.storages[s.storage];
        let over = s.abort(name, why, io);
        self.conclude(Some(over), now);
    }

    /// A session is over: the election learns whether its trigger is satisfied, and the
    /// result is recorded.
    fn conclude(&mut self, over: Option<Over>, now: Instant) {
        let Some(over) = over else { return };
        if let Some(s) = self.session.take() {
            self.note_ended(s.sid);
        }
        self.waited = None;
        match over {
            Over::Done {
                storage,
                scanned_at,
                peers,
                stats,
                failed,
                clean,
            } => {
                self.election
                    .session_finished(storage, scanned_at, failed > 0, now);
                let mut stats = stats;
                stats.failed = failed;
                let rec = &mut self.records[storage];
                rec.moved += Moved::from(stats);
                if clean {
                    rec.synced_with.extend(peers.iter().cloned());
                } else if failed > 0 {
                    rec.last_error = Some(SyncError::FilesFailed(failed));
                }
                self.results
                    .insert(storage, StorageResult::Synced { peers, stats });
                self.result_count[storage] += 1;
            }
            Over::Aborted { storage, why } => {
                self.election.session_aborted(storage, now);
                self.fail(storage, why);
            }
        }
    }

    fn fail(&mut self, storage: usize, why: SyncError) {
        self.records[storage].last_error = Some(why.clone());
        self.results.insert(storage, StorageResult::Failed(why));
        self.result_count[storage] += 1;
    }
}
