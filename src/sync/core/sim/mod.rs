//! A deterministic simulator for the sans-I/O sync [`Core`]: 3–7 nodes' real cores in one
//! process, no sockets, no real clock, every choice drawn from one seed.
//!
//! Each node has a `Core`, an in-memory file system per storage (a sorted map of path → file
//! meta and a content token), and a [`SimIo`] that implements the core's [`Io`] by recording
//! effects; the simulator applies them to a virtual network:
//!
//! - **Clock and queue.** Time is virtual nanoseconds since one `Instant` captured at start.
//!   Events wait in a binary heap ordered by (time, sequence number), so equal times keep the
//!   order they were scheduled in and every run of a seed is identical.
//! - **Links** behave like TCP: per direction, deliveries are FIFO (messages and file
//!   transfers share the order, as they share a connection), and a link that drops loses what
//!   was in flight. Each connection has a generation; traffic of an older one is never
//!   delivered on a newer one.
//! - **Transfers** are one event per queued send: at its time the sender's file is checked
//!   against the planned version (a changed source is skipped and accepted receivers get an
//!   abort), every connected receiver's core accepts or refuses it, and a commit happens only
//!   if the receiver's path is still what it indexed — as `fsops` does.
//! - **Failures**: a node crashes (its links drop at once) or stops gracefully (it aborts its
//!   session first, and its last messages drain), and single connections drop while both ends
//!   stay up (`net` redials them); each side notices after a detection delay. A restart is a
//!   fresh `Core` on the same files (commits are atomic, so the files are always consistent)
//!   that connects to every node that is up.
//!
//! After every event the invariants are checked: sessions led at the same time have pairwise
//! disjoint sets of members the leader can still reach (a node is never claimed by two
//! leaders); every follower follows a session its leader really led, and a leader still
//! running it lists it; nobody ever saw a protocol violation; a receiver never refuses a file
//! of its own session; a commit never replaces a newer version; among connected nodes a file
//! is sent by one holder, read once; no session stalls; a tick never leaves a deadline in the
//! past. At the end of a schedule all nodes are brought up and the run must settle: every
//! core idle, every replica of a storage identical and holding the newest version of every
//! file and every directory that ever existed, and nothing else.

mod control;
mod invariants;
mod lifecycle;
mod oracle;
mod replica;
mod scenarios;

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use super::oneshot::OneShot;
use super::{Accepted, Core, Received, Refusal, Sent, StorageResult};
use crate::debounce::Debouncer;
use crate::history::Entry;
use crate::model::{EntryKind, FileMeta, NodeId, RelPath};
use crate::proto::{ElectionMsg, PeerMsg, SessionMsg};
use crate::run::{DialError, RunReport};
use crate::store::Applied;

use invariants::describe;
use oracle::Oracle;
use replica::*;

const MS: u64 = 1_000_000;
const SEC: u64 = 1_000 * MS;
/// A node's core is ticked at least this often, besides at its own deadlines (the real loop
/// also ticks after every event; this is the coarse safety net).
const TICK_EVERY: u64 = 200 * MS;
/// Mtimes of edits start here, above every initial file, so an edit is always the newest
/// version of its path.
const EDIT_MTIME_BASE: i64 = 1 << 50;
/// Virtual wall-clock seconds at the start of every schedule (version counters, tombstone
/// dates, conflict copies' names): 2027-01-15.
const EPOCH_SECS: u64 = 1_800_000_000;
/// Lines of the event trace kept for a failure report.
const TRACE_LEN: usize = 400;

/// A session running longer than this is stalled: with every loss noticed within 0.5 s and
/// every file moved within 50 ms, it waits for something that will never come, and only
/// `SESSION_IDLE_TIMEOUT` (120 s) ends it. (The simulator found two such waits — a file from
/// a peer lost mid-session, and a plan naming a peer lost after planning — both fixed in
/// `core.rs` and pinned by tests below.)
const STALL: u64 = 60 * SEC;
/// How often a transfer in flight reports progress to its ends.
const PROGRESS_EVERY: u64 = SEC;
/// The one-shot policy's connect window, in virtual ns (what makes a run's start late).
/// How long `net` lets a stopping process's connections drain (its `CLOSE_GRACE`).
const CLOSE_GRACE_NS: u64 = 2 * SEC;
const CONNECT_WINDOW_NS: u64 = super::oneshot::CONNECT_WINDOW.as_nanos() as u64;

const STORAGES: [&str; 2] = ["docs", "pics"];
/// Directories and file names are disjoint, so no path is ever a file on one node and a
/// directory on another: such a conflict is left alone by design and would never converge.
/// `a-b` sorts between `a` and `a/b`, which exercises the merge order of the diff.
const DIRS: [&str; 6] = ["a", "a-b", "a/b", "a/b/c", "d", "d/e e"];
const NAMES: [&str; 5] = ["f0", "f1", "g-1", "ü b", "z"];

/// Network and timing parameters, in virtual nanoseconds.
#[derive(Clone)]
struct Config {
    /// One-way message latency, uniform in this range.
    latency: (u64, u64),
    /// Time to move one file, uniform in this range.
    transfer: (u64, u64),
    /// How long a node takes to notice that a peer went away.
    detect: (u64, u64),
    /// A session running longer than this counts as stalled (see [`STALL`]).
    stall: u64,
    /// Watchers now and then report a changed `.ignore` (a session even when nothing
    /// changed): off where a scenario counts its sessions.
    rules_changes: bool,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            latency: (MS, 30 * MS),
            transfer: (MS, 50 * MS),
            detect: (0, 500 * MS),
            stall: STALL,
            rules_changes: true,
        }
    }
}

impl Config {
    /// No skew at all: every message takes `latency`, every file `transfer`.
    fn fixed(latency: u64, transfer: u64) -> Config {
        Config {
            latency: (latency, latency),
            transfer: (transfer, transfer),
            rules_changes: false,
            ..Config::default()
        }
    }
}

/// How a node runs: a daemon, or one-shot runs (a person or cron invoking it by hand; each
/// start is a new run that ends by itself).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Daemon,
    OneShot,
}

/// A one-shot run in progress on a node.
struct Run {
    policy: OneShot,
    started: u64,
    /// (peer, storage): the peers that were connected during the run with a storage this
    /// node has — what a successful run must have been synchronized with.
    seen: BTreeSet<(usize, String)>,
}

/// How a one-shot run ended.
#[derive(Clone, Debug)]
struct RunRecord {
    node: usize,
    started: u64,
    ended: u64,
    /// `None`: the run was killed before its end.
    report: Option<RunReport>,
}

struct Node {
    id: NodeId,
    kind: Kind,
    /// The one-shot run in progress (one-shot nodes that are up).
    run: Option<Run>,
    storages: Vec<String>,
    fs: Vec<Tree>,
    /// Its store, kept across restarts as the database file is.
    history: History,
    /// `None` while the node is down (or stopping).
    core: Option<Core>,
    /// Bumped whenever the core is discarded, so events of a former life do nothing.
    inc: u32,
    rng: Rng,
    /// The earliest tick scheduled for this incarnation.
    tick_at: Option<u64>,
    /// Its watcher's debouncer (daemons that are up), fed by every change in its trees —
    /// the user's and its own writes, as inotify reports both.
    watch: Option<Debouncer>,
    /// Its settings: each storage's delay and periodic rescan, drawn once per node.
    watch_settings: Vec<(Duration, Option<Duration>)>,
    /// The earliest watcher wake-up scheduled for this incarnation.
    watch_at: Option<u64>,
    /// (storage, path, size, mtime) → times this node read that version as a source.
    reads: HashMap<(String, RelPath, u64, i64), u32>,
    /// Its disk is full until this virtual time: it refuses every incoming file for lack
    /// of space (as the real receiver does when `free_space` is too small).
    full_until: u64,
    /// Its sends never move a byte (a peer that starts files and stalls): queued, never
    /// delivered, no progress.
    stalls_sends: bool,
    /// A crafted peer: its core is never called (it answers nothing, or only `Deny`s with
    /// `denies`); what it sends is forged by [`Event::Squat`].
    hostile: bool,
    denies: bool,
}

impl Node {
    fn storage(&self, name: &str) -> Option<usize> {
        self.storages.iter().position(|s| s == name)
    }
}

#[derive(Clone, Copy, Default)]
struct Link {
    connected: bool,
    gen: u64,
}

struct Transfer {
    from: usize,
    inc: u32,
    storage: usize,
    sid: u64,
    meta: FileMeta,
    /// Receivers connected when it was queued, with that connection's generation.
    to: Vec<(usize, u64)>,
    cancelled: bool,
}

enum Event {
    Deliver {
        from: usize,
        to: usize,
        gen: u64,
        msg: PeerMsg,
    },
    Transfer(u64),
    /// A long transfer moves data: its sender and receivers see progress, as the real shell
    /// reports every chunk.
    Progress(u64),
    Tick {
        node: usize,
        inc: u32,
    },
    /// A node's watcher wakes: a debounced change or a periodic rescan is due.
    Watch {
        node: usize,
        inc: u32,
    },
    /// `obs` notices that its connection `gen` to `subj` is gone.
    PeerDown {
        obs: usize,
        subj: usize,
        gen: u64,
    },
    /// A gracefully stopped node's connections close once its last messages drained.
    DropLinks {
        node: usize,
    },
    Restart {
        node: usize,
    },
    /// A node leaves: crashes, is killed, or stops (`graceful`).
    Leave {
        node: usize,
        graceful: bool,
    },
    /// `net` redials a connection that was closed while both nodes stayed up.
    Reconnect {
        a: usize,
        b: usize,
    },
    /// The next random action of the chaos phase.
    Chaos,
    /// Hostile `node` claims the lead of `storage` from every node it is connected to,
    /// with a new ticket each time, never answering and never starting a session; again
    /// `every` later.
    Squat {
        node: usize,
        storage: &'static str,
        ticket: u64,
        every: u64,
    },
}

struct Scheduled {
    at: u64,
    seq: u64,
    ev: Event,
}

impl PartialEq for Scheduled {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}

impl Eq for Scheduled {}

impl PartialOrd for Scheduled {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Scheduled {
    /// Reversed: `BinaryHeap` is a max-heap and we want the earliest event first.
    fn cmp(&self, other: &Self) -> Ordering {
        (other.at, other.seq).cmp(&(self.at, self.seq))
    }
}

/// One session as observed from its leader.
#[derive(Clone, Debug)]
struct SessionRecord {
    leader: usize,
    sid: u64,
    storage: String,
    /// Leader first, then the participants.
    members: Vec<usize>,
    started: u64,
    ended: Option<u64>,
    /// How the leader recorded it: `Some(true)` synced, `Some(false)` failed or aborted,
    /// `None` while running or if the leader went down.
    ok: Option<bool>,
    /// Synced with no failed file on any participant: it synchronized all its members.
    clean: bool,
    /// Two participants other than the leader, both up, were not connected while it ran:
    /// the plan may then route one file from two holders (targets split by reachability).
    peer_link_cut: bool,
}

struct Sim {
    seed: u64,
    cfg: Config,
    epoch: Instant,
    now: u64,
    rng: Rng,
    seq: u64,
    queue: BinaryHeap<Scheduled>,
    /// Queued events other than ticks: zero means nothing is in flight.
    busy_events: usize,
    nodes: Vec<Node>,
    by_id: HashMap<NodeId, usize>,
    /// Symmetric: always accessed through [`Sim::link`].
    links: Vec<Vec<Link>>,
    next_gen: u64,
    /// `believes[a][b]`: the generation of the connection to `b` that `a`'s core was told
    /// about with `peer_up` and not yet with `peer_down`.
    believes: Vec<Vec<Option<u64>>>,
    /// Per direction: the time of the last delivery scheduled (FIFO, like TCP).
    fifo: Vec<Vec<u64>>,
    transfers: HashMap<u64, Transfer>,
    next_transfer: u64,
    /// Sends queued so far: (time, node, sid). Scenarios use it to find the transfer phase.
    queued: Vec<(u64, usize, u64)>,
    /// (sid, path) → sends queued for it.
    copies: HashMap<(u64, RelPath), u32>,
    violations: Vec<String>,
    sessions: Vec<SessionRecord>,
    runs: Vec<RunRecord>,
    runs_started: usize,
    late_runs: usize,
    /// When each node that is up came up.
    up_since: Vec<Option<u64>>,
    /// (leader, sid) of every session ever led.
    led: HashSet<(usize, u64)>,
    /// (leader, sid) of every session whose `Start` a leader sent.
    started: HashSet<(usize, u64)>,
    max_concurrent: usize,
    /// The latest version written of every (storage, path) at the start: (mtime, size,
    /// content), for initial trees that share versions.
    newest: BTreeMap<(String, RelPath), (i64, u64, u64)>,
    /// What the scans recorded: what the final replicas are judged against.
    oracle: Oracle,
    used_mtimes: HashSet<i64>,
    last_mtime: i64,
    chaos_until: u64,
    losses: usize,
    drops: usize,
    edits: usize,
    deletes: usize,
    renames: usize,
    conflict_copies: usize,
    events: u64,
    settle_ns: u64,
    /// Received files: committed, kept local, aborted (source changed), failed, lost.
    outcomes: [usize; 5],
    trace: VecDeque<String>,
    /// Control clients' `sync --wait` requests (see `control.rs`).
    waits: Vec<control::Wait>,
}

impl Sim {
    /// Nodes `n0`, `n1`, … with the given storages, all down and empty.
    fn new(seed: u64, cfg: Config, storages: Vec<Vec<&str>>) -> Sim {
        let n = storages.len();
        let mut rng = Rng::new(seed);
        let nodes: Vec<Node> = storages
            .into_iter()
            .enumerate()
            .map(|(i, st)| {
                let id = NodeId::new(&format!("n{i}")).unwrap();
                let storages: Vec<String> = st.iter().map(|s| s.to_string()).collect();
                Node {
                    history: History::new(&id, &storages),
                    id,
                    kind: Kind::Daemon,
                    run: None,
                    storages,
                    fs: vec![Tree::new(); st.len()],
                    core: None,
                    inc: 0,
                    rng: Rng::new(rng.next()),
                    tick_at: None,
                    full_until: 0,
                    hostile: false,
                    denies: false,
                    stalls_sends: false,
                    watch: None,
                    watch_settings: st
                        .iter()
                        .map(|_| {
                            let delay = [0, 300, 1_000, 2_000][rng.below(4) as usize];
                            let rescan = [None, Some(5), Some(30)][rng.below(3) as usize];
                            (
                                Duration::from_millis(delay),
                                rescan.map(Duration::from_secs),
                            )
                        })
                        .collect(),
                    watch_at: None,
                    reads: HashMap::new(),
                }
            })
            .collect();
        let by_id = nodes
            .iter()
            .enumerate()
            .map(|(i, n)| (n.id.clone(), i))
            .collect();
        Sim {
            seed,
            cfg,
            epoch: Instant::now(),
            now: 0,
            rng,
            seq: 0,
            queue: BinaryHeap::new(),
            busy_events: 0,
            nodes,
            by_id,
            links: vec![vec![Link::default(); n]; n],
            next_gen: 0,
            believes: vec![vec![None; n]; n],
            fifo: vec![vec![0; n]; n],
            transfers: HashMap::new(),
            next_transfer: 0,
            queued: Vec::new(),
            copies: HashMap::new(),
            violations: Vec::new(),
            sessions: Vec::new(),
            runs: Vec::new(),
            runs_started: 0,
            late_runs: 0,
            up_since: vec![None; n],
            led: HashSet::new(),
            started: HashSet::new(),
            max_concurrent: 0,
            newest: BTreeMap::new(),
            oracle: Oracle::default(),
            used_mtimes: HashSet::new(),
            last_mtime: EDIT_MTIME_BASE,
            chaos_until: 0,
            losses: 0,
            drops: 0,
            edits: 0,
            deletes: 0,
            renames: 0,
            conflict_copies: 0,
            events: 0,
            settle_ns: 0,
            outcomes: [0; 5],
            trace: VecDeque::new(),
            waits: Vec::new(),
        }
    }

    fn instant(&self) -> Instant {
        self.epoch + Duration::from_nanos(self.now)
    }

    fn ns_of(&self, t: Instant) -> u64 {
        t.saturating_duration_since(self.epoch).as_nanos() as u64
    }

    fn up(&self, i: usize) -> bool {
        self.nodes[i].core.is_some()
    }

    fn link(&self, a: usize, b: usize) -> Link {
        self.links[a.min(b)][a.max(b)]
    }

    fn link_mut(&mut self, a: usize, b: usize) -> &mut Link {
        &mut self.links[a.min(b)][a.max(b)]
    }

    /// `a` believes in the connection to `b` that really exists.
    fn live(&self, a: usize, b: usize) -> bool {
        let l = self.link(a, b);
        l.connected && self.believes[a][b] == Some(l.gen)
    }

    fn idx(&self, id: &NodeId) -> usize {
        self.by_id[id]
    }

    fn name(&self, i: usize) -> &str {
        self.nodes[i].id.as_str()
    }

    fn log(&mut self, line: String) {
        if self.trace.len() == TRACE_LEN {
            self.trace.pop_front();
        }
        let t = self.now;
        self.trace
            .push_back(format!("{:>10.3} ms  {line}", t as f64 / MS as f64));
    }

    fn push(&mut self, at: u64, ev: Event) {
        if !matches!(ev, Event::Tick { .. } | Event::Watch { .. }) {
            self.busy_events += 1;
        }
        self.seq += 1;
        self.queue.push(Scheduled {
            at,
            seq: self.seq,
            ev,
        });
    }

    fn draw(&mut self, range: (u64, u64)) -> u64 {
        self.rng.range(range.0, range.1)
    }

    // ------------------------------------------------------------------------------------
    // Driving the cores

    /// Runs `f` on node `i`'s core with its [`SimIo`], then applies the effects and
    /// reschedules its tick. `None` if the node is down.
    fn call<R>(
        &mut self,
        i: usize,
        after_tick: bool,
        f: impl FnOnce(&mut Core, &mut SimIo<'_>, Instant) -> R,
    ) -> Option<R> {
        if self.nodes[i].hostile {
            return None;
        }
        let now = self.instant();
        let inc = self.nodes[i].inc;
        // What the real shell calls busy: files still being sent.
        let busy = self
            .transfers
            .values()
            .any(|t| t.from == i && t.inc == inc && !t.cancelled);
        let mut effects = Vec::new();
        let node = &mut self.nodes[i];
        let core = node.core.as_mut()?;
        let mut io = SimIo {
            fs: &mut node.fs,
            history: &mut node.history,
            storages: &node.storages,
            node: node.id.as_str(),
            rng: &mut node.rng,
            out: &mut effects,
            oracle: &mut self.oracle,
            now: EPOCH_SECS + self.now / SEC,
            touched: Vec::new(),
            full: self.now < node.full_until,
        };
        // The real loop runs the one-shot policy after every event, before and after the
        // core's tick (what the policy claims is claimed at once, and a run the tick
        // settled ends at once).
        if after_tick {
            if let Some(run) = &mut node.run {
                run.policy.step(now, core, busy);
            }
        }
        let r = f(core, &mut io, now);
        let touched = std::mem::take(&mut io.touched);
        let mut past = None;
        if let Some(run) = &mut node.run {
            run.policy.step(now, core, busy);
            past = run.policy.next_wakeup().filter(|&w| w <= now);
        }
        if let Some(w) = past {
            let msg = format!(
                "{}'s one-shot policy asks to be woken at {:.3} ms, already past",
                self.name(i),
                self.ns_of(w) as f64 / MS as f64
            );
            self.fail(&msg);
        }
        self.apply(i, effects);
        self.schedule_tick(i, after_tick);
        for s in touched {
            self.watch_event(i, s);
        }
        Some(r)
    }

    /// Node `i`'s watcher sees a change in storage `s` (daemons only: a one-shot run has
    /// no watcher).
    pub(super) fn watch_event(&mut self, i: usize, s: usize) {
        let now = self.instant();
        if let Some(w) = &mut self.nodes[i].watch {
            w.changed(s, now);
            self.schedule_watch(i);
        }
    }

    pub(super) fn schedule_watch(&mut self, i: usize) {
        let Some(d) = self.nodes[i]
            .watch
            .as_ref()
            .and_then(Debouncer::next_deadline)
        else {
            return;
        };
        let at = self.ns_of(d).max(self.now);
        if self.nodes[i].watch_at.is_none_or(|t| at < t) {
            self.nodes[i].watch_at = Some(at);
            let inc = self.nodes[i].inc;
            self.push(at, Event::Watch { node: i, inc });
        }
    }

    /// Does any watcher hold changes it has not handed over yet?
    pub(super) fn watchers_pending(&self) -> bool {
        self.nodes
            .iter()
            .any(|n| n.watch.as_ref().is_some_and(Debouncer::pending))
    }

    fn schedule_tick(&mut self, i: usize, after_tick: bool) {
        let Some(core) = &self.nodes[i].core else {
            return;
        };
        let mut at = self.now + TICK_EVERY;
        if let Some(w) = self.nodes[i]
            .run
            .as_ref()
            .and_then(|r| r.policy.next_wakeup())
        {
            at = at.min(self.ns_of(w).max(self.now));
        }
        if let Some(d) = core.next_deadline() {
            let d = self.ns_of(d);
            if after_tick && d <= self.now {
                // The real loop sleeps until the deadline: it would spin.
                let msg = format!(
                    "{} still names a deadline at or before now after a tick",
                    self.name(i)
                );
                self.fail(&msg);
            }
            at = at.min(d.max(self.now));
        }
        if self.nodes[i].tick_at.is_none_or(|t| at < t) {
            self.nodes[i].tick_at = Some(at);
            let inc = self.nodes[i].inc;
            self.push(at, Event::Tick { node: i, inc });
        }
    }

    fn apply(&mut self, i: usize, effects: Vec<Effect>) {
        for e in effects {
            match e {
                Effect::Send(to, msg) => {
                    // A session may start and abort within one event, before any check
                    // sees it led: its `Start` is what followers know it by.
                    if let PeerMsg::Session(SessionMsg::Start { sid, .. }) = &msg {
                        self.started.insert((i, *sid));
                    }
                    let j = self.idx(&to);
                    self.send(i, j, msg);
                }
                Effect::Disconnect(node, reason) => {
                    let v = format!("{} disconnected {node}: {reason}", self.name(i));
                    self.log(format!("VIOLATION {v}"));
                    self.violations.push(v);
                }
                Effect::QueueSend {
                    storage,
                    sid,
                    meta,
                    to,
                } => self.queue_transfer(i, storage, sid, meta, to),
                Effect::Cancel(sid) => {
                    let inc = self.nodes[i].inc;
                    for t in self.transfers.values_mut() {
                        if t.from == i && t.inc == inc && t.sid == sid {
                            t.cancelled = true;
                        }
                    }
                }
            }
        }
    }

    fn send(&mut self, from: usize, to: usize, msg: PeerMsg) {
        if !self.up(to) || !self.link(from, to).connected {
            self.log(format!(
                "{} -> {} {}: no connection, dropped",
                self.name(from),
                self.name(to),
                describe(&msg)
            ));
            return;
        }
        let lat = self.draw(self.cfg.latency);
        let at = (self.now + lat).max(self.fifo[from][to]);
        self.fifo[from][to] = at;
        let gen = self.link(from, to).gen;
        self.push(at, Event::Deliver { from, to, gen, msg });
    }

    fn queue_transfer(
        &mut self,
        from: usize,
        storage: usize,
        sid: u64,
        meta: FileMeta,
        to: Vec<NodeId>,
    ) {
        self.queued.push((self.now, from, sid));
        // One read per file however many receive it: with every participant connected to
        // every other, a version is sent by exactly one holder.
        let copies = self.copies.entry((sid, meta.path.clone())).or_insert(0);
        *copies += 1;
        if *copies > 1 {
            let connected = self
                .sessions
                .iter()
                .find(|r| r.sid == sid)
                .is_some_and(|r| !r.peer_link_cut);
            if connected {
                self.fail(&format!(
                    "{} queued for sending twice in session {sid} among connected nodes",
                    meta.path
                ));
            }
        }
        let mut receivers = Vec::new();
        let mut delay = 0;
        for n in &to {
            let j = self.idx(n);
            if self.up(j) && self.link(from, j).connected {
                receivers.push((j, self.link(from, j).gen));
                delay = delay.max(self.draw(self.cfg.transfer));
            }
        }
        let mut at = self.now + delay;
        for &(j, _) in &receivers {
            at = at.max(self.fifo[from][j]);
        }
        for &(j, _) in &receivers {
            self.fifo[from][j] = at;
        }
        let id = self.next_transfer;
        self.next_transfer += 1;
        self.log(format!(
            "{} queues {} {}@{} (sid {sid}) to {:?} [transfer {id}]",
            self.name(from),
            meta.path,
            meta.size,
            meta.mtime_ns,
            receivers
                .iter()
                .map(|&(j, _)| self.name(j))
                .collect::<Vec<_>>()
        ));
        self.transfers.insert(
            id,
            Transfer {
                from,
                inc: self.nodes[from].inc,
                storage,
                sid,
                meta,
                to: receivers,
                cancelled: false,
            },
        );
        if self.nodes[from].stalls_sends {
            self.log(format!("{} stalls transfer {id}", self.name(from)));
            return;
        }
        let mut p = self.now + PROGRESS_EVERY;
        while p < at {
            self.push(p, Event::Progress(id));
            p += PROGRESS_EVERY;
        }
        self.push(at, Event::Transfer(id));
    }

    // ------------------------------------------------------------------------------------
    // Events

    /// Processes the next event and checks the invariants. False when the queue is empty.
    fn step(&mut self) -> bool {
        let Some(Scheduled { at, ev, .. }) = self.queue.pop() else {
            return false;
        };
        debug_assert!(at >= self.now);
        self.now = at;
        self.events += 1;
        if !matches!(ev, Event::Tick { .. } | Event::Watch { .. }) {
            self.busy_events -= 1;
        }
        self.handle(ev);
        self.collect_answers();
        self.check_invariants();
        for i in 0..self.nodes.len() {
            if self.nodes[i]
                .run
                .as_ref()
                .is_some_and(|r| r.policy.is_finished())
            {
                self.end_run(i);
            }
        }
        true
    }

    /// A one-shot run's policy says it is over: its report is checked and the process
    /// exits (a graceful stop).
    fn end_run(&mut self, node: usize) {
        let Some(run) = self.nodes[node].run.take() else {
            return;
        };
        let report = self.nodes[node]
            .core
            .as_ref()
            .map(|c| run.policy.report(c, 0, 0));
        self.log(format!(
            "{} ends its one-shot run: {}",
            self.name(node),
            match &report {
                Some(r) if r.ok() => "ok".to_owned(),
                Some(r) => format!("failed: {r:?}"),
                None => "no core".to_owned(),
            }
        ));
        if let Some(report) = &report {
            self.check_run(node, &run, report);
        }
        self.runs.push(RunRecord {
            node,
            started: run.started,
            ended: self.now,
            report,
        });
        self.stop(node, true);
    }

    fn handle(&mut self, ev: Event) {
        match ev {
            Event::Deliver { from, to, gen, msg } => {
                let link = self.link(from, to);
                let ok = self.up(to) && link.connected && link.gen == gen;
                self.log(format!(
                    "{} -> {} {}{}",
                    self.name(from),
                    self.name(to),
                    describe(&msg),
                    if ok { "" } else { " (lost)" }
                ));
                if ok && self.nodes[to].hostile {
                    if let PeerMsg::Election(ElectionMsg::Claim { ticket, .. }) = msg {
                        if self.nodes[to].denies {
                            self.send(to, from, ElectionMsg::Deny { ticket }.into());
                        }
                    }
                    return;
                }
                if ok {
                    let f = self.nodes[from].id.clone();
                    match msg {
                        PeerMsg::Election(m) => {
                            self.call(to, false, |c, io, now| c.on_election(&f, m, now, io));
                        }
                        PeerMsg::Session(m) => {
                            self.call(to, false, |c, io, now| c.on_session(&f, m, now, io));
                        }
                        // The core never sends file data; the simulator moves files itself.
                        PeerMsg::Transfer(m) => {
                            self.fail(&format!("a core sent a transfer message: {m:?}"))
                        }
                    }
                }
            }
            Event::Transfer(id) => self.deliver_transfer(id),
            Event::Progress(id) => {
                let Some(t) = self.transfers.get(&id).filter(|t| !t.cancelled) else {
                    return;
                };
                let (from, inc) = (t.from, t.inc);
                let live: Vec<usize> =
                    t.to.iter()
                        .filter(|&&(j, gen)| self.up(j) && self.link(from, j).gen == gen)
                        .map(|&(j, _)| j)
                        .collect();
                if self.up(from) && self.nodes[from].inc == inc {
                    self.call(from, false, |c, _, now| c.on_progress(now));
                }
                for j in live {
                    self.call(j, false, |c, _, now| c.on_progress(now));
                }
            }
            Event::Tick { node, inc } => {
                let n = &self.nodes[node];
                if n.inc != inc || n.tick_at != Some(self.now) {
                    return;
                }
                self.nodes[node].tick_at = None;
                self.call(node, true, |c, io, now| c.tick(now, io));
            }
            Event::Watch { node, inc } => {
                let n = &self.nodes[node];
                if n.inc != inc || n.watch_at != Some(self.now) {
                    return;
                }
                self.nodes[node].watch_at = None;
                let now = self.instant();
                let due = match &mut self.nodes[node].watch {
                    Some(w) => w.due(now),
                    None => return,
                };
                for (s, why) in due {
                    // Now and then as if its `.ignore` had changed: a session even when the
                    // scan finds nothing, which must not keep the nodes busy.
                    let rules = self.cfg.rules_changes && self.rng.chance(1, 8);
                    self.log(format!(
                        "{} watcher: {} due ({why:?}, rules changed: {rules})",
                        self.name(node),
                        self.nodes[node].storages[s]
                    ));
                    self.call(node, false, |c, io, now| c.rescan(s, rules, now, io));
                }
                self.schedule_watch(node);
            }
            Event::PeerDown { obs, subj, gen } => {
                if self.believes[obs][subj] == Some(gen) {
                    self.notify_down(obs, subj);
                }
            }
            Event::DropLinks { node } => {
                if !self.up(node) {
                    self.drop_links(node);
                }
            }
            Event::Restart { node } => {
                if !self.up(node) {
                    self.bring_up(node);
                }
            }
            Event::Leave { node, graceful } => {
                if self.up(node) {
                    self.take_down(node, graceful);
                }
            }
            Event::Reconnect { a, b } => {
                if self.up(a) && self.up(b) && !self.link(a, b).connected {
                    self.connect(a, b);
                }
            }
            Event::Chaos => self.chaos(),
            Event::Squat {
                node,
                storage,
                ticket,
                every,
            } => self.squat(node, storage, ticket, every),
        }
    }

    fn deliver_transfer(&mut self, id: u64) {
        let Some(t) = self.transfers.remove(&id) else {
            return;
        };
        let from = t.from;
        if t.cancelled || self.nodes[from].inc != t.inc || !self.up(from) {
            self.log(format!("transfer {id} of {} dropped", t.meta.path));
            return;
        }
        let storage_name = self.nodes[from].storages[t.storage].clone();
        let src = self.nodes[from].fs[t.storage].get(&t.meta.path).cloned();
        // The real sender re-checks size and mtime after reading: a changed source is not
        // sent as a mix of two versions.
        let valid = src.as_ref().is_some_and(|f| {
            f.meta.kind == EntryKind::File
                && f.meta.size == t.meta.size
                && f.meta.mtime_ns == t.meta.mtime_ns
        });
        let content = src.map_or(0, |f| f.content);
        if valid {
            let key = (
                storage_name.clone(),
                t.meta.path.clone(),
                t.meta.size,
                t.meta.mtime_ns,
            );
            *self.nodes[from].reads.entry(key).or_insert(0) += 1;
        }
        let from_id = self.nodes[from].id.clone();
        let mut accepted = 0;
        for &(r, gen) in &t.to {
            let link = self.link(from, r);
            if !self.up(r) || !link.connected || link.gen != gen {
                self.outcomes[4] += 1;
                self.log(format!(
                    "transfer {id} of {} to {} lost",
                    t.meta.path,
                    self.name(r)
                ));
                continue;
            }
            let (sid, meta) = (t.sid, &t.meta);
            let verdict = self
                .call(r, false, |c, io, now| {
                    c.accept_file(&from_id, sid, meta, now, io)
                })
                .expect("receiver is up");
            let accepted_as = match verdict {
                Ok(a) => a,
                Err(Refusal::Reject(why)) => {
                    let same = self.nodes[r]
                        .core
                        .as_ref()
                        .and_then(Core::session_info)
                        .is_some_and(|(s, _, _)| s == sid);
                    let full = self.now < self.nodes[r].full_until;
                    if same && why != super::SENDER_LOST && !full {
                        // Its own session, and nothing in the simulation is ignored or
                        // lacks space: the file was planned for it and will never come
                        // again, so the session can only hang.
                        self.fail(&format!(
                            "{} refused {} from {} in its own session {sid}: {why}",
                            self.name(r),
                            t.meta.path,
                            self.name(from)
                        ));
                    }
                    self.log(format!(
                        "{} rejects {} from {}: {why}",
                        self.name(r),
                        t.meta.path,
                        self.name(from)
                    ));
                    continue;
                }
                Err(Refusal::Violation(why)) => {
                    let v = format!(
                        "{} refuses {} from {} as a violation: {why}",
                        self.name(r),
                        t.meta.path,
                        self.name(from)
                    );
                    self.log(format!("VIOLATION {v}"));
                    self.violations.push(v);
                    continue;
                }
            };
            accepted += 1;
            let outcome = if !valid {
                Received::Aborted
            } else {
                self.commit(r, &storage_name, &t.meta, content, &accepted_as)
            };
            match outcome {
                Received::Committed { .. } => self.outcomes[0] += 1,
                Received::KeptLocal => self.outcomes[1] += 1,
                Received::Aborted => self.outcomes[2] += 1,
                Received::Failed => self.outcomes[3] += 1,
            }
            self.log(format!(
                "{} -> {} file {}@{} (sid {sid}): {outcome:?}",
                self.name(from),
                self.name(r),
                t.meta.path,
                t.meta.mtime_ns
            ));
            let path = &t.meta.path;
            self.call(r, false, |c, io, now| {
                c.on_received(sid, path, outcome, now, io)
            });
        }
        let sent = if !valid || accepted == 0 {
            Sent::Skipped
        } else {
            Sent::Done {
                bytes: t.meta.size,
                receivers: accepted,
                read: t.meta.size,
            }
        };
        self.log(format!(
            "{} sent {} (sid {}): {sent:?}",
            self.name(from),
            t.meta.path,
            t.sid
        ));
        let sid = t.sid;
        self.call(from, false, |c, io, now| c.on_sent(sid, sent, now, io));
    }

    /// Commits a received version on `r` as `fsops` does — only if the path still holds
    /// what was indexed — and records it in `r`'s store, as the shell does after the disk
    /// has it.
    fn commit(
        &mut self,
        r: usize,
        storage: &str,
        meta: &FileMeta,
        content: u64,
        accepted: &Accepted,
    ) -> Received {
        let rs = self.nodes[r]
            .storage(storage)
            .expect("a receiver has the storage");
        let current = self.nodes[r].fs[rs].get(&meta.path);
        let unchanged = match accepted.expect {
            None => current.is_none(),
            Some(v) => current.is_some_and(|f| f.meta.version() == Some(v)),
        };
        if !unchanged {
            return Received::KeptLocal;
        }
        // What the receiver's history says is there must be older than what replaces it:
        // anything else overwrites a version nobody decided to drop.
        let id = self.nodes[r].history.ids[rs];
        let known = self.nodes[r]
            .history
            .store
            .local(id, &meta.path)
            .expect("the simulated store reads");
        if let Some(k) = known.filter(|k| k.is_live() && current.is_some()) {
            if !accepted.vv.dominates(&k.vv) || accepted.vv == k.vv {
                let msg = format!(
                    "{} would replace {} {:?} by {:?}, which does not supersede it",
                    self.nodes[r].id, meta.path, k.vv, accepted.vv
                );
                self.fail(&msg);
            }
        }
        let file = SimFile::new(meta.clone(), content);
        let (ino, ctime) = (file.ino, file.ctime);
        if put_file(&mut self.nodes[r].fs[rs], file).is_err() {
            return Received::Failed;
        }
        self.watch_event(r, rs);
        let entry = Entry {
            meta: meta.clone(),
            deleted: false,
            hash: Some(hash_of(content)),
            vv: accepted.vv.clone(),
            by: accepted.by.clone(),
            link: None,
        };
        let now = EPOCH_SECS + self.now / SEC;
        let h = &mut self.nodes[r].history;
        if let Err(e) = h
            .store
            .record(id, vec![Applied::Put { entry, ino, ctime }], now)
        {
            self.fail(&format!("the simulated store failed: {e}"));
        }
        Received::Committed { bytes: meta.size }
    }
}
