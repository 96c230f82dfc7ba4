//! The `sync` thread: storages, sessions and transfers.
//!
//! It is the only thread that reads or writes inside a storage (and, later, the database).
//! It reacts to [`NetEvent`]s, runs one session at a time, pumps outgoing file data while
//! the network has room, and drives the one-shot run to its end.
//!
//! A session synchronizes one storage among the connected nodes that have it. The leader —
//! for now the node with the smallest id among the participants, so both ends of a
//! connection agree without talking — scans, collects a digest from every participant, asks
//! for full indexes only where digests differ, runs the pure diff (`crate::diff`), sends each
//! participant its part of the plan, and ends the session once every part is done. Followers
//! scan, answer, and carry out their part. Every step is checked: a follower accepts only the
//! files its plan announced, from the node the plan named, in the version the plan named.

mod session;
mod transfer;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use crossbeam_channel::{select, Receiver, Sender};

use crate::config::{Config, Encryption, StorageConfig};
use crate::daemon::{Mode, Outcome};
use crate::fsops::StorageDir;
use crate::model::NodeId;
use crate::net::{ConnId, NetCmd, NetEvent, NetHandle};
use crate::proto::{Hello, Message, PartStats};

use session::Session;
use transfer::{IncomingMap, Sender as FileSender};

/// Control messages from the main thread.
#[derive(Debug)]
pub enum SyncCtl {
    Shutdown,
}

/// How long a one-shot run waits for its configured peers to connect.
const CONNECT_WINDOW: Duration = Duration::from_secs(5);
/// How long a one-shot run waits for a first peer at all before giving up.
const CONNECT_DEADLINE: Duration = Duration::from_secs(15);
/// How long a follower waits for the leader to start a session it asked for.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// A session with no traffic for this long is abandoned.
const SESSION_IDLE_TIMEOUT: Duration = Duration::from_secs(120);
/// Retry delay after a peer said it was busy.
const BUSY_RETRY: Duration = Duration::from_millis(700);
/// Bytes of file data sent per loop turn before looking at incoming events again.
const PUMP_BUDGET: usize = 2 * 1024 * 1024;

/// A connected peer, as announced by its handshake.
pub(crate) struct Peer {
    pub conn: ConnId,
    pub node: NodeId,
    pub storages: Vec<String>,
    pub outbound: Arc<AtomicUsize>,
}

pub(crate) struct Storage {
    pub cfg: StorageConfig,
    pub dir: StorageDir,
}

/// What became of one storage in a session, as the one-shot summary reports it.
#[derive(Debug, Clone)]
pub(crate) enum StorageResult {
    Synced {
        peers: Vec<NodeId>,
        stats: PartStats,
    },
    NoPeer,
    Failed(String),
}

struct OneShot {
    started: Instant,
    /// Some peer completed a handshake with us at some point.
    ever_connected: bool,
    connect_phase_done: bool,
    cursor: usize,
    requested_at: Option<Instant>,
    results: Vec<(String, StorageResult)>,
    finished: bool,
}

pub(crate) struct SyncState {
    config: Config,
    mode: Mode,
    net: NetHandle,
    storages: Vec<Storage>,
    /// Database and side files, never indexed when they live inside a storage.
    exclude: Vec<PathBuf>,
    peers: HashMap<ConnId, Peer>,
    by_node: HashMap<NodeId, ConnId>,
    session: Option<Session>,
    /// Storages this node will lead a session for, in order.
    queue: VecDeque<usize>,
    retry_at: Option<Instant>,
    sender: FileSender,
    incoming: IncomingMap,
    /// Latest result per storage since this process started.
    completed: BTreeMap<String, StorageResult>,
    oneshot: Option<OneShot>,
    configured_ok: Vec<String>,
    next_sid: u64,
    next_cron: Option<SystemTime>,
}

/// The thread body.
pub fn run(
    config: Config,
    mode: Mode,
    net: NetHandle,
    net_events: Receiver<NetEvent>,
    ctl: Receiver<SyncCtl>,
    done: Sender<Outcome>,
) {
    let mut state = match SyncState::new(config, mode, net) {
        Ok(s) => s,
        Err(e) => {
            log::error!("{e}");
            let _ = done.send(Outcome {
                ok: false,
                summary: vec![e],
            });
            // Stay until told to stop so shutdown stays ordered.
            let _ = ctl.recv();
            return;
        }
    };
    let mut done = Some(done);
    loop {
        let busy = state.pump();
        let timeout = if busy {
            Duration::ZERO
        } else {
            state.next_wakeup()
        };
        select! {
            recv(ctl) -> msg => match msg {
                Ok(SyncCtl::Shutdown) | Err(_) => {
                    state.shutdown();
                    return;
                }
            },
            recv(net_events) -> ev => match ev {
                Ok(ev) => state.on_net_event(ev),
                Err(_) => return,
            },
            default(timeout) => {}
        }
        // Handle everything already queued before pumping more data out.
        while let Ok(ev) = net_events.try_recv() {
            state.on_net_event(ev);
        }
        state.tick();
        if let Some(outcome) = state.oneshot_outcome() {
            if let Some(tx) = done.take() {
                let _ = tx.send(outcome);
            }
        }
    }
}

impl SyncState {
    fn new(config: Config, mode: Mode, net: NetHandle) -> Result<SyncState, String> {
        let mut storages = Vec::new();
        for cfg in &config.storages {
            let dir = StorageDir::open(&cfg.path)
                .map_err(|e| format!("cannot open storage {}: {e}", cfg.name))?;
            storages.push(Storage {
                cfg: cfg.clone(),
                dir,
            });
        }
        let exclude = db_paths(&config.log_path);
        if config.encryption != Encryption::Off {
            log::warn!("encryption is not implemented in this version: connections are plain text");
        }
        if config.enable_service_discovery {
            log::info!("service discovery (mDNS) is not implemented yet; using the peers list");
        }
        let oneshot = (mode == Mode::OneShot).then(|| OneShot {
            started: Instant::now(),
            ever_connected: false,
            connect_phase_done: false,
            cursor: 0,
            requested_at: None,
            results: Vec::new(),
            finished: false,
        });
        let next_cron = match (&config.schedule_sync, mode) {
            (Some(s), Mode::Daemon) => s.schedule.next_fire(SystemTime::now()),
            _ => None,
        };
        let seed = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0)
            ^ (u64::from(std::process::id()) << 32);
        Ok(SyncState {
            sender: FileSender::new(config.max_parallel_transfers as usize),
            config,
            mode,
            net,
            storages,
            exclude,
            peers: HashMap::new(),
            by_node: HashMap::new(),
            session: None,
            queue: VecDeque::new(),
            retry_at: None,
            incoming: HashMap::new(),
            completed: BTreeMap::new(),
            oneshot,
            configured_ok: Vec::new(),
            next_sid: seed,
            next_cron,
        })
    }

    fn local_id(&self) -> &NodeId {
        &self.config.node_id
    }

    fn storage_index(&self, name: &str) -> Option<usize> {
        self.storages.iter().position(|s| s.cfg.name == name)
    }

    /// Connected peers that have storage `name`, sorted by node id.
    fn peers_with(&self, name: &str) -> Vec<ConnId> {
        let mut v: Vec<&Peer> = self
            .peers
            .values()
            .filter(|p| p.storages.iter().any(|s| s == name))
            .collect();
        v.sort_by(|a, b| a.node.cmp(&b.node));
        v.into_iter().map(|p| p.conn).collect()
    }

    /// The leader for a storage among this node and the peers that have it: the smallest
    /// node id. `None` means this node.
    fn leader_for(&self, name: &str) -> Option<ConnId> {
        let mut best: (&NodeId, Option<ConnId>) = (self.local_id(), None);
        for conn in self.peers_with(name) {
            if let Some(p) = self.peers.get(&conn) {
                if p.node < *best.0 {
                    best = (&p.node, Some(conn));
                }
            }
        }
        best.1
    }

    fn send(&self, conn: ConnId, msg: Message) {
        if let Some(p) = self.peers.get(&conn) {
            self.net.send_msg(conn, &p.outbound, msg);
        }
    }

    /// Disconnects a peer that broke the protocol.
    fn disconnect(&mut self, conn: ConnId, reason: &str) {
        if let Some(p) = self.peers.get(&conn) {
            log::warn!("disconnecting {}: {reason}", p.node);
            self.send(
                conn,
                Message::Refuse {
                    reason: reason.to_owned(),
                },
            );
        }
        self.net.send(NetCmd::Close {
            conn,
            reason: reason.to_owned(),
        });
        self.forget_peer(conn, reason);
    }

    fn on_net_event(&mut self, ev: NetEvent) {
        match ev {
            NetEvent::Listening { port } => {
                log::debug!("net is listening on {port:?}");
            }
            NetEvent::DialResult { addr, ok, reason } => {
                if ok {
                    if !self.configured_ok.contains(&addr) {
                        self.configured_ok.push(addr);
                    }
                } else {
                    log::debug!("dial {addr} failed: {reason}");
                }
            }
            NetEvent::Connected {
                conn,
                hello,
                addr: _,
                outbound,
            } => self.on_connected(conn, hello, outbound),
            NetEvent::Disconnected { conn, reason } => self.forget_peer(conn, &reason),
            NetEvent::Drained { .. } => {}
            NetEvent::Message { conn, msg, size } => {
                if self.peers.contains_key(&conn) {
                    self.on_message(conn, msg);
                }
                self.net.inbound.release(size);
            }
        }
    }

    fn on_connected(&mut self, conn: ConnId, hello: Hello, outbound: Arc<AtomicUsize>) {
        let node = hello.node_id.clone();
        let shared: Vec<String> = hello
            .storages
            .iter()
            .filter(|s| self.storage_index(s).is_some())
            .cloned()
            .collect();
        log::info!(
            "peer {node} connected; shared storages: {}",
            if shared.is_empty() {
                "none".to_owned()
            } else {
                shared.join(", ")
            }
        );
        self.by_node.insert(node.clone(), conn);
        if let Some(os) = &mut self.oneshot {
            os.ever_connected = true;
        }
        self.peers.insert(
            conn,
            Peer {
                conn,
                node,
                storages: hello.storages,
                outbound,
            },
        );
        // A daemon that leads a shared storage syncs it as soon as a peer shows up.
        if self.mode == Mode::Daemon {
            for name in shared {
                if self.leader_for(&name).is_none() {
                    self.enqueue(&name);
                }
            }
        }
    }

    fn forget_peer(&mut self, conn: ConnId, reason: &str) {
        let Some(peer) = self.peers.remove(&conn) else {
            return;
        };
        if self.by_node.get(&peer.node) == Some(&conn) {
            self.by_node.remove(&peer.node);
        }
        log::debug!("peer {} gone: {reason}", peer.node);
        self.sender.drop_receiver(conn, None);
        self.incoming.retain(|(c, _), _| *c != conn);
        if self.session.as_ref().is_some_and(|s| s.involves(conn)) {
            self.abort_session(
                &format!("peer {} disconnected ({reason})", peer.node),
                false,
            );
        }
    }

    /// Queues a session this node leads.
    fn enqueue(&mut self, name: &str) {
        let Some(i) = self.storage_index(name) else {
            return;
        };
        if !self.queue.contains(&i) {
            self.queue.push_back(i);
        }
    }

    fn on_message(&mut self, conn: ConnId, msg: Message) {
        match msg {
            Message::SyncRequest { storage } => {
                if self.storage_index(&storage).is_none() {
                    log::debug!("sync request for unknown storage {storage:?} ignored");
                } else if self.leader_for(&storage).is_none() {
                    // A session already running for it with the requester answers the request.
                    let answered = self.session.as_ref().is_some_and(|s| {
                        s.leader.is_none()
                            && self.storages[s.storage].cfg.name == storage
                            && s.involves(conn)
                    });
                    if !answered {
                        self.enqueue(&storage);
                    }
                } else {
                    log::debug!("sync request for {storage} ignored: another node leads it");
                }
            }
            Message::SessionStart { sid, storage } => self.follower_start(conn, sid, &storage),
            Message::SessionBusy { sid } => self.on_busy(conn, sid),
            Message::SessionAbort { sid, reason } => {
                if self
                    .session
                    .as_ref()
                    .is_some_and(|s| s.sid == sid && s.involves(conn))
                {
                    let who = self.node_name(conn);
                    self.abort_session(&format!("{who} aborted the session: {reason}"), false);
                }
            }
            Message::IndexSummary { sid, count, digest } => {
                self.leader_on_summary(conn, sid, count, digest)
            }
            Message::IndexRequest { sid } => self.follower_send_index(conn, sid),
            Message::IndexChunk { sid, entries } => self.leader_on_index_chunk(conn, sid, entries),
            Message::IndexEnd { sid } => self.leader_on_index_end(conn, sid),
            Message::PlanChunk { sid, items } => self.follower_on_plan_chunk(conn, sid, items),
            Message::PlanEnd { sid } => self.follower_on_plan_end(conn, sid),
            Message::PartDone { sid, stats } => self.leader_on_part_done(conn, sid, stats),
            Message::SessionEnd { sid, ok } => self.follower_on_end(conn, sid, ok),
            Message::FileStart { sid, xid, meta } => self.on_file_start(conn, sid, xid, meta),
            Message::FileData { xid, data } => self.on_file_data(conn, xid, &data),
            Message::FileEnd { xid, hash } => self.on_file_end(conn, xid, &hash),
            Message::FileAbort { xid, reason } => self.on_file_abort(conn, xid, &reason),
            Message::FileReject { xid, reason } => {
                log::info!("{} declined a file: {reason}", self.node_name(conn));
                self.sender.drop_receiver(conn, Some(xid));
            }
            Message::Hello(_) | Message::Refuse { .. } | Message::Ping | Message::Pong => {}
        }
    }

    fn node_name(&self, conn: ConnId) -> String {
        self.peers
            .get(&conn)
            .map_or_else(|| format!("connection {conn}"), |p| p.node.to_string())
    }

    /// Sends file data while receivers have room. Returns true if more can be sent now.
    fn pump(&mut self) -> bool {
        let Some(s) = &self.session else {
            return false;
        };
        let storage = &self.storages[s.storage].dir;
        let (finished, spent, more) = self.sender.pump(storage, &self.net, PUMP_BUDGET);
        if spent > 0 {
            // A long file in flight is progress even though no message arrives.
            if let Some(s) = &mut self.session {
                s.last_activity = Instant::now();
            }
        }
        for d in finished {
            self.on_send_done(d);
        }
        more
    }

    fn next_wakeup(&self) -> Duration {
        let now = Instant::now();
        let mut at = now + Duration::from_secs(1);
        if let Some(r) = self.retry_at {
            at = at.min(r);
        }
        if let Some(s) = &self.session {
            at = at.min(s.last_activity + SESSION_IDLE_TIMEOUT);
        }
        at.saturating_duration_since(now)
    }

    fn tick(&mut self) {
        let now = Instant::now();
        if let Some(s) = &self.session {
            if now >= s.last_activity + SESSION_IDLE_TIMEOUT {
                self.abort_session("no progress for too long", true);
            }
        }
        if let Some(at) = self.next_cron {
            if SystemTime::now() >= at {
                self.on_schedule();
            }
        }
        self.drive_oneshot(now);
        if self.session.is_none() && self.retry_at.is_none_or(|r| now >= r) {
            self.retry_at = None;
            while let Some(i) = self.queue.pop_front() {
                if self.leader_start(i) {
                    break;
                }
            }
        }
    }

    fn on_schedule(&mut self) {
        log::info!("scheduled sync");
        self.next_cron = self
            .config
            .schedule_sync
            .as_ref()
            .and_then(|s| s.schedule.next_fire(SystemTime::now()));
        let names: Vec<String> = self.storages.iter().map(|s| s.cfg.name.clone()).collect();
        for name in names {
            match self.leader_for(&name) {
                None => self.enqueue(&name),
                Some(conn) => self.send(conn, Message::SyncRequest { storage: name }),
            }
        }
    }

    fn drive_oneshot(&mut self, now: Instant) {
        let Some(os) = &self.oneshot else { return };
        if os.finished {
            return;
        }
        if !os.connect_phase_done {
            let all_up = !self.config.peers.is_empty()
                && self
                    .config
                    .peers
                    .iter()
                    .all(|p| self.configured_ok.contains(p));
            // A peer may lead every shared storage and leave before the window ends.
            let all_done = self
                .storages
                .iter()
                .all(|s| self.completed.contains_key(&s.cfg.name));
            let waited = now.duration_since(os.started);
            if all_up || all_done || (waited >= CONNECT_WINDOW && os.ever_connected) {
                if let Some(os) = &mut self.oneshot {
                    os.connect_phase_done = true;
                }
            } else if waited >= CONNECT_DEADLINE {
                let msg = if self.config.peers.is_empty() {
                    "no peer connected (no peers are configured: set `peers` in the config)"
                        .to_owned()
                } else {
                    format!("no peer reachable (tried {})", self.config.peers.join(", "))
                };
                log::error!("{msg}");
                if let Some(os) = &mut self.oneshot {
                    os.results.push(("*".into(), StorageResult::Failed(msg)));
                    os.finished = true;
                }
                return;
            } else {
                return;
            }
        }
        loop {
            let Some(os) = &self.oneshot else { return };
            let Some(storage) = self.storages.get(os.cursor) else {
                break;
            };
            let name = storage.cfg.name.clone();
            let result = if let Some(r) = self.completed.get(&name) {
                Some(r.clone())
            } else if self.peers_with(&name).is_empty() {
                Some(StorageResult::NoPeer)
            } else {
                match self.leader_for(&name) {
                    None => {
                        let i = os.cursor;
                        let active = self.session.as_ref().is_some_and(|s| s.storage == i);
                        if !active && !self.queue.contains(&i) {
                            self.queue.push_back(i);
                        }
                        None
                    }
                    Some(conn) => match os.requested_at {
                        None => {
                            self.send(
                                conn,
                                Message::SyncRequest {
                                    storage: name.clone(),
                                },
                            );
                            if let Some(os) = &mut self.oneshot {
                                os.requested_at = Some(now);
                            }
                            None
                        }
                        Some(at)
                            if now.duration_since(at) >= REQUEST_TIMEOUT
                                && self.session.is_none() =>
                        {
                            Some(StorageResult::Failed(
                                "the leading peer did not start a session".into(),
                            ))
                        }
                        Some(_) => None,
                    },
                }
            };
            match result {
                Some(r) => {
                    if let Some(os) = &mut self.oneshot {
                        os.results.push((name, r));
                        os.cursor += 1;
                        os.requested_at = None;
                    }
                }
                None => return,
            }
        }
        // Every storage has a result; finish once nothing is in flight.
        if self.session.is_none() && self.sender.is_idle() {
            if let Some(os) = &mut self.oneshot {
                os.finished = true;
            }
        }
    }

    fn oneshot_outcome(&mut self) -> Option<Outcome> {
        let os = self.oneshot.as_mut()?;
        if !os.finished {
            return None;
        }
        let mut ok = true;
        let mut summary = Vec::new();
        for (name, r) in os.results.drain(..) {
            let line = match r {
                StorageResult::Synced { peers, stats } => {
                    if stats.failed > 0 {
                        ok = false;
                    }
                    let with: Vec<&str> = peers.iter().map(NodeId::as_str).collect();
                    format!(
                        "{name}: synchronized with {} — received {} file(s), {}; sent {} file(s), {}{}",
                        with.join(", "),
                        stats.files_received,
                        human_bytes(stats.bytes_received),
                        stats.files_sent,
                        human_bytes(stats.bytes_sent),
                        if stats.failed > 0 {
                            format!("; {} file(s) failed", stats.failed)
                        } else {
                            String::new()
                        }
                    )
                }
                StorageResult::NoPeer => format!("{name}: no connected peer has this storage"),
                StorageResult::Failed(why) => {
                    ok = false;
                    if name == "*" {
                        why
                    } else {
                        format!("{name}: not synchronized: {why}")
                    }
                }
            };
            summary.push(line);
        }
        self.oneshot = None;
        Some(Outcome { ok, summary })
    }

    fn shutdown(&mut self) {
        if self.session.is_some() {
            self.abort_session("shutting down", false);
        }
        // Dropping the incoming transfers removes their temporary files.
        self.incoming.clear();
    }

    fn new_sid(&mut self) -> u64 {
        // A per-process counter from a time-and-pid seed: unique enough to tell sessions
        // apart in one group; sessions are also keyed by their leader.
        self.next_sid = self
            .next_sid
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.next_sid
    }
}

/// The database file and its SQLite side files, as absolute paths.
fn db_paths(log_path: &std::path::Path) -> Vec<PathBuf> {
    let base = match (log_path.parent(), log_path.file_name()) {
        (Some(dir), Some(name)) => match std::fs::canonicalize(dir) {
            Ok(dir) => dir.join(name),
            Err(_) => log_path.to_owned(),
        },
        _ => log_path.to_owned(),
    };
    let mut v = vec![base.clone()];
    for suffix in ["-wal", "-shm", "-journal"] {
        let mut s = base.clone().into_os_string();
        s.push(suffix);
        v.push(PathBuf::from(s));
    }
    v
}

/// "12.3 KiB" style sizes for the summary.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_sizes() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(200 * 1024 * 1024), "200.0 MiB");
    }
}
