//! The `sync` thread: the I/O shell around [`core::Core`].
//!
//! It is the only thread that reads or writes inside a storage (and, later, the database). It
//! turns [`NetEvent`]s into core inputs, implements the core's [`core::Io`] with `net`, the
//! scanner and `fsops`, moves file data (the sending engine and the receiving side in
//! `transfer.rs`), and drives a one-shot run to its end. Policy — who leads, what moves, when a
//! session is done — is the core's; this file only carries it out.

pub mod core;
#[cfg(test)]
mod sim;
mod transfer;

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use crossbeam_channel::{select, Receiver, Sender};

use crate::config::{Config, Encryption, StorageConfig};
use crate::delta::{self, Signature};
use crate::fsops::StorageDir;
use crate::ignore::IgnoreMatcher;
use crate::model::{FileMeta, NodeId, RelPath};
use crate::net::handle::{ConnId, NetCmd, NetEvent, NetHandle};
use crate::proto::{Hello, Message, SendTo};
use crate::run::{Mode, Outcome};
use crate::scanner::{self, ScanOptions};

use self::core::{Core, Io, Received, Refusal, Sent, StorageResult};
use transfer::{
    commit_verified, Dest, Finished, Incoming, IncomingMap, OutJob, RecvDone, SendDone,
    Sender as FileSender, SigJob, Signer, Verified, WriteError,
};

/// Control messages from the main thread.
#[derive(Debug)]
pub enum SyncCtl {
    Shutdown,
}

/// How long a one-shot run waits for more of its configured peers after the last one that
/// connected (peers started together come up one by one, slowly on a loaded machine).
const CONNECT_WINDOW: Duration = Duration::from_secs(5);
/// How long a one-shot run waits for a first peer at all before giving up, and for all its
/// peers at most.
const CONNECT_DEADLINE: Duration = Duration::from_secs(15);
/// Most times a one-shot run synchronizes a storage again because a session left out a
/// connected peer (bounds a peer that keeps reconnecting).
const ONESHOT_AGAIN: u32 = 3;
/// Bytes of file data sent per loop turn before looking at incoming events again.
const PUMP_BUDGET: usize = 2 * 1024 * 1024;
/// Bytes of old versions read for signatures per loop turn.
const SIGN_BUDGET: usize = 4 * 1024 * 1024;
/// Most signatures kept for sends not started yet: bounds what a peer can make us store.
const MAX_PENDING_SIGNATURES: usize = 4096;
/// Most received files waiting for one batched commit (each holds two descriptors).
const MAX_COMMIT_BATCH: usize = 64;
/// Longest a received file waits for its batch while more data is still arriving.
const COMMIT_DELAY: Duration = Duration::from_millis(50);

/// A connected peer, as announced by its handshake.
struct Peer {
    node: NodeId,
    outbound: Arc<AtomicUsize>,
    /// We asked `net` to close it; ignore what it still sends.
    closing: bool,
}

struct Storage {
    cfg: StorageConfig,
    dir: StorageDir,
}

/// Everything the core's side effects need: the [`Io`] implementation.
struct Shell {
    net: NetHandle,
    storages: Vec<Storage>,
    /// Database and side files, never indexed when they live inside a storage.
    exclude: Vec<PathBuf>,
    peers: HashMap<ConnId, Peer>,
    by_node: HashMap<NodeId, ConnId>,
    sender: FileSender,
    incoming: IncomingMap,
    signer: Signer,
    /// Signatures this node sent for files it receives as deltas, by (session, path): what
    /// their block copies are checked against.
    bases: HashMap<(u64, RelPath), Signature>,
    /// Sends the core released and the sender has no job for yet, oldest batch first.
    pending_sends: VecDeque<PendingSends>,
    /// Jobs of one core send, counted down so the core hears of each send once.
    groups: HashMap<u64, Group>,
    next_group: u64,
    buf: Vec<u8>,
    rng: u64,
}

/// A session's released sends, turned into sender jobs a few at a time: each job resolves
/// its receivers' connections, clones its metadata and gets a group entry, which for 10,000
/// files at once cost the sending node more than a megabyte for nothing.
struct PendingSends {
    sid: u64,
    sends: std::vec::IntoIter<(FileMeta, Vec<SendTo>)>,
}

/// The jobs one core send was split into (one whole-file stream, one job per delta).
struct Group {
    sid: u64,
    left: usize,
    wire: u64,
    receivers: usize,
    read: u64,
    failed: bool,
}

struct OneShot {
    started: Instant,
    ever_connected: bool,
    /// When a peer last connected (or the run started).
    last_joined: Instant,
    /// The wait for configured peers is over.
    connected: bool,
    /// Per storage: this run has triggered it.
    triggered: Vec<bool>,
    /// Per storage: times it was triggered again because a session left out a peer.
    again: Vec<u32>,
    finished: bool,
}

/// Received, verified files not committed yet (see [`SyncThread::commit_pending`]).
#[derive(Default)]
struct PendingCommits {
    /// With the index of their storage.
    files: Vec<(usize, Verified)>,
    /// When the oldest arrived.
    since: Option<Instant>,
}

struct SyncThread {
    config: Config,
    core: Core,
    shell: Shell,
    pending: PendingCommits,
    oneshot: Option<OneShot>,
    configured_ok: Vec<String>,
    next_cron: Option<SystemTime>,
    /// The session running at the last tick, to notice when one ends.
    last_session: Option<u64>,
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
    let mut t = match SyncThread::new(config, mode, net) {
        Ok(t) => t,
        Err(e) => {
            log::error!("{e}");
            let _ = done.send(Outcome {
                ok: false,
                summary: vec![e],
                reload: false,
            });
            // Stay until told to stop so shutdown stays ordered.
            let _ = ctl.recv();
            return;
        }
    };
    let mut done = Some(done);
    loop {
        let busy = t.pump();
        let timeout = if busy {
            Duration::ZERO
        } else {
            t.next_wakeup()
        };
        select! {
            recv(ctl) -> msg => match msg {
                Ok(SyncCtl::Shutdown) | Err(_) => {
                    t.shutdown();
                    return;
                }
            },
            recv(net_events) -> ev => match ev {
                Ok(ev) => t.on_net_event(ev),
                Err(_) => return,
            },
            default(timeout) => {}
        }
        // Handle everything already queued before pumping more data out.
        while let Ok(ev) = net_events.try_recv() {
            t.on_net_event(ev);
        }
        t.commit_if_due();
        t.tick();
        if let Some(outcome) = t.oneshot_outcome() {
            if let Some(tx) = done.take() {
                let _ = tx.send(outcome);
            }
        }
    }
}

impl SyncThread {
    fn new(config: Config, mode: Mode, net: NetHandle) -> Result<SyncThread, String> {
        let mut storages = Vec::new();
        for cfg in &config.storages {
            let dir = StorageDir::open(&cfg.path)
                .map_err(|e| format!("cannot open storage {}: {e}", cfg.name))?;
            storages.push(Storage {
                cfg: cfg.clone(),
                dir,
            });
        }
        if config.encryption != Encryption::Off {
            log::warn!("encryption is not implemented in this version: connections are plain text");
        }
        if config.enable_service_discovery {
            log::info!("service discovery (mDNS) is not implemented yet; using the peers list");
        }
        let names = config.storages.iter().map(|s| s.name.clone()).collect();
        let core = Core::new(config.node_id.clone(), names, mode == Mode::Daemon);
        let next_cron = match (&config.schedule_sync, mode) {
            (Some(s), Mode::Daemon) => s.schedule.next_fire(SystemTime::now()),
            _ => None,
        };
        let rng = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0)
            ^ (u64::from(std::process::id()) << 32)
            | 1;
        let shell = Shell {
            net,
            storages,
            exclude: db_paths(&config.log_path),
            peers: HashMap::new(),
            by_node: HashMap::new(),
            sender: FileSender::new(config.max_parallel_transfers as usize),
            incoming: HashMap::new(),
            signer: Signer::default(),
            bases: HashMap::new(),
            pending_sends: VecDeque::new(),
            groups: HashMap::new(),
            next_group: 1,
            buf: Vec::new(),
            rng,
        };
        let started = Instant::now();
        let oneshot = (mode == Mode::OneShot).then(|| OneShot {
            started,
            ever_connected: false,
            last_joined: started,
            connected: false,
            triggered: vec![false; config.storages.len()],
            again: vec![0; config.storages.len()],
            finished: false,
        });
        Ok(SyncThread {
            config,
            core,
            shell,
            pending: PendingCommits::default(),
            oneshot,
            configured_ok: Vec::new(),
            next_cron,
            last_session: None,
        })
    }

    fn on_net_event(&mut self, ev: NetEvent) {
        let now = Instant::now();
        match ev {
            NetEvent::Listening { port } => log::debug!("net is listening on {port:?}"),
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
            } => self.on_connected(conn, hello, outbound, now),
            NetEvent::Disconnected { conn, reason } => {
                let Some(peer) = self.shell.peers.remove(&conn) else {
                    return;
                };
                if self.shell.by_node.get(&peer.node) == Some(&conn) {
                    self.shell.by_node.remove(&peer.node);
                }
                log::debug!("peer {} gone: {reason}", peer.node);
                self.shell.sender.drop_receiver(conn, None);
                self.shell.signer.drop_receiver(conn);
                // Dropping an incoming transfer removes its temporary file.
                self.shell.incoming.retain(|(c, _), _| *c != conn);
                self.core.peer_down(&peer.node, now, &mut self.shell);
            }
            NetEvent::Drained { .. } => {}
            NetEvent::Message { conn, msg, size } => {
                if let Some(p) = self.shell.peers.get(&conn).filter(|p| !p.closing) {
                    let from = p.node.clone();
                    self.on_message(conn, &from, msg, now);
                }
                self.shell.net.inbound.release(size);
            }
        }
    }

    fn on_connected(
        &mut self,
        conn: ConnId,
        hello: Hello,
        outbound: Arc<AtomicUsize>,
        now: Instant,
    ) {
        let node = hello.node_id.clone();
        let shared: Vec<&str> = hello
            .storages
            .iter()
            .filter(|s| self.core.storages().contains(s))
            .map(String::as_str)
            .collect();
        log::info!(
            "peer {node} connected; shared storages: {}",
            if shared.is_empty() {
                "none".to_owned()
            } else {
                shared.join(", ")
            }
        );
        self.shell.by_node.insert(node.clone(), conn);
        self.shell.peers.insert(
            conn,
            Peer {
                node: node.clone(),
                outbound,
                closing: false,
            },
        );
        if let Some(os) = &mut self.oneshot {
            os.ever_connected = true;
            os.last_joined = now;
        }
        self.core.peer_up(node, hello.storages, now);
    }

    fn on_message(&mut self, conn: ConnId, from: &NodeId, msg: Message, now: Instant) {
        let shell = &mut self.shell;
        match msg {
            Message::FileStart { sid, xid, meta } => {
                match self.core.accept_file(from, sid, &meta, now, shell) {
                    Ok(expect) => {
                        if shell.incoming.contains_key(&(conn, xid)) {
                            return shell.disconnect(from, "reused a transfer id");
                        }
                        let base = shell.bases.remove(&(sid, meta.path.clone()));
                        shell
                            .incoming
                            .insert((conn, xid), Incoming::new(sid, meta, expect, base));
                    }
                    Err(Refusal::Reject(reason)) => {
                        shell.send(from, Message::FileReject { xid, reason });
                    }
                    Err(Refusal::Violation(reason)) => shell.disconnect(from, &reason),
                }
            }
            Message::FileData { xid, data } => {
                self.on_chunk(conn, from, xid, Chunk::Literal(&data), now);
            }
            Message::FileCopy { xid, first, count } => {
                self.on_chunk(conn, from, xid, Chunk::Copy(first, count), now);
            }
            Message::Signature { sid, path, sig } => {
                let ours = self.core.session_info().is_some_and(|(s, _, _)| s == sid);
                if !ours {
                    return;
                }
                if shell.sender.pending_signatures() >= MAX_PENDING_SIGNATURES {
                    return shell.disconnect(from, "sent more signatures than we can keep");
                }
                shell.sender.add_signature(sid, path, conn, sig);
            }
            Message::FileEnd { xid, hash } => {
                let Some(inc) = shell.incoming.remove(&(conn, xid)) else {
                    return;
                };
                let Some(storage) = self.core.session_storage() else {
                    return;
                };
                let st = &shell.storages[storage];
                let (sid, path) = (inc.sid, inc.meta.path.clone());
                match inc.finish(&st.dir, &hash) {
                    Finished::Ready(v) => {
                        self.pending.since.get_or_insert(now);
                        self.pending.files.push((storage, v));
                        if self.pending.files.len() >= MAX_COMMIT_BATCH {
                            self.commit_pending(now);
                        }
                    }
                    Finished::Done(done) => {
                        let outcome = received(&st.cfg.name, &path, done);
                        self.core.on_received(sid, &path, outcome, now, shell);
                    }
                }
            }
            Message::FileAbort { xid, reason } => {
                let Some(inc) = shell.incoming.remove(&(conn, xid)) else {
                    return;
                };
                // The sender counts its own failures; a source that changed is not one.
                log::info!("{} not received: {reason}", inc.meta.path);
                let (sid, path) = (inc.sid, inc.meta.path.clone());
                drop(inc);
                self.core
                    .on_received(sid, &path, Received::Aborted, now, shell);
            }
            Message::FileReject { xid, reason } => {
                log::info!("{from} declined a file: {reason}");
                shell.sender.drop_receiver(conn, Some(xid));
            }
            Message::Hello(_) | Message::Refuse { .. } | Message::Ping | Message::Pong => {}
            other => self.core.on_message(from, other, now, shell),
        }
    }

    /// Literal bytes or block copies for a transfer being received.
    fn on_chunk(&mut self, conn: ConnId, from: &NodeId, xid: u32, chunk: Chunk<'_>, now: Instant) {
        let Some(storage) = self.core.session_storage() else {
            return;
        };
        let shell = &mut self.shell;
        let Some(inc) = shell.incoming.get_mut(&(conn, xid)) else {
            // Data for a transfer we rejected or dropped; the sender stops soon.
            return;
        };
        self.core.on_progress(now);
        let dir = &shell.storages[storage].dir;
        let r = match chunk {
            Chunk::Literal(data) => inc.write(dir, data),
            Chunk::Copy(first, count) => inc.copy(dir, first, count, &mut shell.buf),
        };
        let outcome = match r {
            Ok(()) => return,
            Err(WriteError::Violation(reason)) => {
                shell.incoming.remove(&(conn, xid));
                return shell.disconnect(from, &reason);
            }
            Err(WriteError::BaseChanged(why)) => {
                log::info!("{}: {why}", shell.storages[storage].cfg.name);
                Received::KeptLocal
            }
            Err(WriteError::Io(why)) => {
                log::warn!("{}: {why}", shell.storages[storage].cfg.name);
                Received::Failed
            }
        };
        let (sid, path) = (inc.sid, inc.meta.path.clone());
        shell.incoming.remove(&(conn, xid));
        shell.send(
            from,
            Message::FileReject {
                xid,
                reason: "the receiver cannot take it".into(),
            },
        );
        self.core.on_received(sid, &path, outcome, now, shell);
    }

    /// Sends file data while receivers have room. Returns true if more can be sent now.
    fn pump(&mut self) -> bool {
        let Some(storage) = self.core.session_storage() else {
            return false;
        };
        let shell = &mut self.shell;
        let dir = &shell.storages[storage].dir;
        let (signed, read, more_sigs) =
            shell
                .signer
                .pump(dir, &shell.net, SIGN_BUDGET, &mut shell.buf);
        for d in signed {
            if let Some(sig) = d.sig {
                shell.bases.insert((d.sid, d.path), sig);
            }
        }
        shell.refill_sender();
        let dir = &shell.storages[storage].dir;
        let (finished, sent, more) = shell.sender.pump(dir, &shell.net, PUMP_BUDGET);
        // The queue ran dry with a slot free: the next turn refills it and starts a file.
        let more = more || (!shell.pending_sends.is_empty() && shell.sender.has_free_slot());
        let spent = read + sent;
        let now = Instant::now();
        if spent > 0 {
            // A long file in flight is progress even though no message arrives.
            self.core.on_progress(now);
        }
        let name = shell.storages[storage].cfg.name.clone();
        for d in finished {
            let group = match &d {
                SendDone::Sent { group, .. } | SendDone::Failed { group, .. } => *group,
            };
            let Some(g) = self.shell.groups.get_mut(&group) else {
                continue;
            };
            match d {
                SendDone::Sent {
                    wire,
                    receivers,
                    read,
                    ..
                } => {
                    g.wire += wire;
                    g.receivers += receivers;
                    g.read += read;
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
                        g.failed = true;
                    }
                }
            }
            g.left -= 1;
            if g.left > 0 {
                continue;
            }
            let Some(g) = self.shell.groups.remove(&group) else {
                continue;
            };
            let outcome = if g.failed {
                Sent::Failed
            } else if g.receivers == 0 {
                Sent::Skipped
            } else {
                Sent::Done {
                    bytes: g.wire,
                    receivers: g.receivers,
                    read: g.read,
                }
            };
            self.core.on_sent(g.sid, outcome, now, &mut self.shell);
        }
        more || more_sigs
    }

    fn next_wakeup(&self) -> Duration {
        let now = Instant::now();
        let mut at = now + Duration::from_secs(1);
        if let Some(d) = self.core.next_deadline() {
            at = at.min(d);
        }
        if let Some(since) = self.pending.since {
            at = at.min(since + COMMIT_DELAY);
        }
        if let Some(os) = self.oneshot.as_ref().filter(|os| !os.connected) {
            at = at.min((os.last_joined + CONNECT_WINDOW).min(os.started + CONNECT_DEADLINE));
        }
        at.saturating_duration_since(now)
    }

    fn tick(&mut self) {
        let now = Instant::now();
        if let Some(at) = self.next_cron {
            if SystemTime::now() >= at {
                log::info!("scheduled sync");
                self.next_cron = self
                    .config
                    .schedule_sync
                    .as_ref()
                    .and_then(|s| s.schedule.next_fire(SystemTime::now()));
                for i in 0..self.core.storages().len() {
                    self.core.trigger(i, now);
                }
            }
        }
        self.drive_oneshot(now);
        self.core.tick(now, &mut self.shell);
        let current = self.core.session_info().map(|(sid, _, _)| sid);
        if self.last_session.is_some() && current != self.last_session {
            let (sent, received) = self.shell.net.traffic.get();
            log::info!("network so far: sent {sent} bytes, received {received} bytes");
            if current.is_none() {
                self.shell.release_idle_memory();
            }
        }
        self.last_session = current;
    }

    fn drive_oneshot(&mut self, now: Instant) {
        let Some(os) = &mut self.oneshot else { return };
        if os.finished {
            return;
        }
        let n = self.core.storages().len();
        if !os.connected {
            let all_up = !self.config.peers.is_empty()
                && self
                    .config
                    .peers
                    .iter()
                    .all(|p| self.configured_ok.contains(p));
            // Even when a session that included this node already ran, the wait goes on: it
            // may have run before every peer was connected (nodes started together connect
            // one by one, slowly on a loaded or emulated machine), and ending the run then
            // would leave the late peers' files out.
            let waited = now.duration_since(os.started);
            let quiet = now.duration_since(os.last_joined);
            if all_up
                || (os.ever_connected && (quiet >= CONNECT_WINDOW || waited >= CONNECT_DEADLINE))
            {
                os.connected = true;
            } else {
                if waited >= CONNECT_DEADLINE {
                    os.finished = true;
                }
                return;
            }
        }
        // Each storage is triggered once, after the wait, even if a session including this
        // node already synchronized it (or is doing so right now): that session may have left
        // out a peer that connected later, and a trigger is only absorbed by a session whose
        // scan comes after it. When every participant already agrees, the extra session costs
        // a scan and one digest per node. A storage synchronized with peers that have all gone
        // since is not triggered: it has nobody left to synchronize with.
        for i in 0..n {
            if os.triggered[i] {
                // A session this run took part in may still have left out a peer connected
                // to this node (one its leader was not connected to, or one that came later):
                // that storage is synchronized again, a few times at most.
                if !self.core.has_want(i)
                    && self.core.session_storage() != Some(i)
                    && matches!(self.core.result(i), Some(StorageResult::Synced { .. }))
                    && !self.core.synced_with_all(i)
                    && os.again[i] < ONESHOT_AGAIN
                {
                    os.again[i] += 1;
                    log::info!(
                        "{}: a connected peer was not in the last session; synchronizing again",
                        self.core.storages()[i]
                    );
                    self.core.trigger(i, now);
                }
                continue;
            }
            os.triggered[i] = true;
            if matches!(self.core.result(i), Some(StorageResult::Synced { .. }))
                && !self.core.has_holders(i)
            {
                continue;
            }
            self.core.trigger(i, now);
        }
        let settled = (0..n).all(|i| {
            !self.core.has_want(i)
                && self.core.session_storage() != Some(i)
                && self.core.result(i).is_some()
        });
        if settled
            && self.core.session_storage().is_none()
            && self.shell.sender.is_idle()
            && self.shell.pending_sends.is_empty()
            && self.shell.signer.is_idle()
        {
            os.finished = true;
        }
    }

    fn oneshot_outcome(&mut self) -> Option<Outcome> {
        let os = self.oneshot.as_ref()?;
        if !os.finished {
            return None;
        }
        let outcome = if !os.ever_connected {
            let msg = if self.config.peers.is_empty() {
                "no peer connected (no peers are configured: set `peers` in the config)".to_owned()
            } else {
                format!("no peer reachable (tried {})", self.config.peers.join(", "))
            };
            log::error!("{msg}");
            Outcome {
                ok: false,
                summary: vec![msg],
                reload: false,
            }
        } else {
            let mut ok = true;
            let mut summary = Vec::new();
            for (i, name) in self.core.storages().iter().enumerate() {
                let line = match self.core.result(i) {
                    Some(StorageResult::Synced { peers, stats }) => {
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
                    Some(StorageResult::NoPeer) | None => {
                        format!("{name}: no connected peer has this storage")
                    }
                    Some(StorageResult::Failed(why)) => {
                        ok = false;
                        format!("{name}: not synchronized: {why}")
                    }
                };
                summary.push(line);
            }
            let (sent, received) = self.shell.net.traffic.get();
            summary.push(format!(
                "network: sent {sent} bytes, received {received} bytes ({} / {})",
                human_bytes(sent),
                human_bytes(received)
            ));
            Outcome {
                ok,
                summary,
                reload: false,
            }
        };
        self.oneshot = None;
        Some(outcome)
    }

    /// Commits the received files now if nothing else is being received (the batch cannot
    /// grow) or the oldest has waited long enough.
    fn commit_if_due(&mut self) {
        let Some(since) = self.pending.since else {
            return;
        };
        let now = Instant::now();
        if self.shell.incoming.is_empty() || now >= since + COMMIT_DELAY {
            self.commit_pending(now);
        }
    }

    /// Puts every pending received file in place in one batch ([`commit_verified`]) and
    /// tells the core how each went. Files are committed even if their session has ended
    /// meanwhile: their contents are complete and verified.
    fn commit_pending(&mut self, now: Instant) {
        self.pending.since = None;
        let files = std::mem::take(&mut self.pending.files);
        if files.is_empty() {
            return;
        }
        let (storages, batch): (Vec<usize>, Vec<Verified>) = files.into_iter().unzip();
        for (storage, (sid, path, done)) in storages.into_iter().zip(commit_verified(batch)) {
            let name = &self.shell.storages[storage].cfg.name;
            let outcome = received(name, &path, done);
            self.core
                .on_received(sid, &path, outcome, now, &mut self.shell);
        }
    }

    fn shutdown(&mut self) {
        let now = Instant::now();
        // Complete, verified files are worth keeping.
        self.commit_pending(now);
        self.core.abort("shutting down", now, &mut self.shell);
        // Dropping the incoming transfers removes their temporary files.
        self.shell.incoming.clear();
    }
}

impl Shell {
    /// Turns one core send into sender jobs: one stream for everyone who gets the whole
    /// file (read once for all of them), and one job per receiver that gets a delta against
    /// its own old version. Receivers no longer connected are left out.
    fn start_send(&mut self, sid: u64, meta: FileMeta, to: Vec<SendTo>) {
        let group = self.next_group;
        self.next_group += 1;
        let dest = |n: &NodeId| {
            let conn = *self.by_node.get(n)?;
            let p = self.peers.get(&conn)?;
            Some(Dest {
                conn,
                outbound: p.outbound.clone(),
            })
        };
        let mut whole = Vec::new();
        let mut jobs = Vec::new();
        for t in &to {
            let Some(d) = dest(&t.node) else { continue };
            if delta::wanted(meta.size, t.old) {
                jobs.push(OutJob {
                    sid,
                    meta: meta.clone(),
                    to: vec![d],
                    group,
                    delta: true,
                });
            } else {
                whole.push(d);
            }
        }
        // A job with no receiver at all still reports back (as skipped) through `pump`.
        if !whole.is_empty() || jobs.is_empty() {
            jobs.push(OutJob {
                sid,
                meta,
                to: whole,
                group,
                delta: false,
            });
        }
        self.groups.insert(
            group,
            Group {
                sid,
                left: jobs.len(),
                wire: 0,
                receivers: 0,
                read: 0,
                failed: false,
            },
        );
        for j in jobs {
            self.sender.push(j);
        }
    }

    /// Turns released sends into jobs while the sender wants more.
    fn refill_sender(&mut self) {
        while self.sender.wants_jobs() {
            let Some(batch) = self.pending_sends.front_mut() else {
                return;
            };
            match batch.sends.next() {
                Some((meta, to)) => {
                    let sid = batch.sid;
                    self.start_send(sid, meta, to);
                }
                None => {
                    self.pending_sends.pop_front();
                }
            }
        }
    }

    /// Gives back what a big session left behind (queue and map capacity, the read buffer)
    /// and returns freed heap to the kernel: an idle daemon's memory is what it uses now.
    fn release_idle_memory(&mut self) {
        self.sender.shrink();
        self.pending_sends.shrink_to_fit();
        self.incoming.shrink_to_fit();
        self.bases.shrink_to_fit();
        self.groups.shrink_to_fit();
        self.buf = Vec::new();
        crate::mem::release_free();
    }
}

/// Logs how a received file ended and turns it into the core's outcome.
fn received(storage: &str, path: &RelPath, done: RecvDone) -> Received {
    match done {
        RecvDone::Committed { bytes } => {
            log::debug!("{storage}: received {path}");
            Received::Committed { bytes }
        }
        RecvDone::KeptLocal(why) => {
            log::info!("{storage}: {why}");
            Received::KeptLocal
        }
        RecvDone::Failed(why) => {
            log::warn!("{storage}: {why}");
            Received::Failed
        }
    }
}

impl Io for Shell {
    fn send(&mut self, to: &NodeId, msg: Message) {
        if let Some(p) = self.by_node.get(to).and_then(|c| self.peers.get(c)) {
            if let Some(&conn) = self.by_node.get(to) {
                self.net.send_msg(conn, &p.outbound, msg);
            }
        }
    }

    fn disconnect(&mut self, node: &NodeId, reason: &str) {
        let Some(&conn) = self.by_node.get(node) else {
            return;
        };
        log::warn!("disconnecting {node}: {reason}");
        self.send(
            node,
            Message::Refuse {
                reason: reason.to_owned(),
            },
        );
        if let Some(p) = self.peers.get_mut(&conn) {
            p.closing = true;
        }
        self.net.send(NetCmd::Close {
            conn,
            reason: reason.to_owned(),
        });
    }

    fn scan(&mut self, i: usize) -> Result<(Vec<FileMeta>, IgnoreMatcher), String> {
        let st = &self.storages[i];
        let ignore = IgnoreMatcher::load(&st.cfg.path).map_err(|e| e.to_string())?;
        let opts = ScanOptions {
            ignore: &ignore,
            exclude: &self.exclude,
        };
        let result = scanner::scan(&st.cfg.path, &opts).map_err(|e| e.to_string())?;
        // Called only when no session is active, so no temporary file can be in use.
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

    fn make_dir(&mut self, storage: usize, path: &RelPath, mode: u32) -> Result<(), String> {
        self.storages[storage]
            .dir
            .create_dir_all(path, mode)
            .map_err(|e| e.to_string())
    }

    fn queue_sends(&mut self, _storage: usize, sid: u64, sends: Vec<(FileMeta, Vec<SendTo>)>) {
        self.pending_sends.push_back(PendingSends {
            sid,
            sends: sends.into_iter(),
        });
    }

    fn queue_signature(
        &mut self,
        _storage: usize,
        sid: u64,
        path: RelPath,
        expect: (u64, i64),
        to: NodeId,
    ) {
        let Some(&conn) = self.by_node.get(&to) else {
            return;
        };
        let Some(p) = self.peers.get(&conn) else {
            return;
        };
        let dest = Dest {
            conn,
            outbound: p.outbound.clone(),
        };
        self.signer.push(SigJob::new(sid, path, expect, dest));
    }

    fn cancel_session(&mut self, sid: u64) {
        self.pending_sends.retain(|b| b.sid != sid);
        self.sender.cancel_session(sid, &self.net);
        self.signer.cancel_session(sid);
        self.incoming.retain(|_, inc| inc.sid != sid);
        self.bases.retain(|(s, _), _| *s != sid);
        self.groups.retain(|_, g| g.sid != sid);
    }

    fn free_space(&self, storage: usize) -> Option<u64> {
        self.storages[storage].dir.free_space().ok()
    }

    fn random(&mut self) -> u64 {
        // xorshift64*: tickets and jitter need to differ between nodes, not to be secret.
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        self.rng.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

/// A piece of a file being received.
enum Chunk<'a> {
    Literal(&'a [u8]),
    Copy(u32, u32),
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
