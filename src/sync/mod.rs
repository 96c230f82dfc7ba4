//! The `sync` thread: one loop over its inputs (events from `net`, control from main, time),
//! feeding the sans-I/O [`core::Core`] and, for a one-shot run, its policy
//! ([`core::oneshot::OneShot`]).
//!
//! It is the only thread that reads or writes inside a storage (and, later, the database).
//! Routing is by message audience: election and session messages go to the core, transfer
//! messages to the receiver ([`receive`]) or the sender ([`send`]), each of which reports
//! back to the core once per file. The core's side effects go through the [`shell`]. Policy —
//! who leads, what moves, when a session or a run is done — is the core's; this file only
//! carries it out.

pub mod core;
mod receive;
mod report;
mod send;
mod shell;

use std::path::PathBuf;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use crossbeam_channel::{select, Receiver, Sender};

use crate::config::Config;
use crate::fsops::StorageDir;
use crate::model::NodeId;
use crate::net::handle::{ConnId, NetEvent, NetHandle};
use crate::proto::{Hello, PeerMsg, TransferMsg};
use crate::run::{Mode, Outcome};
use crate::store::Store;
use crate::watch::handle::Hints;

use self::core::oneshot::OneShot;
use self::core::{Core, Io, Received, Refusal, Violation};
use receive::{Chunk, ChunkOutcome, Ended, RecvEnd, MAX_INCOMING};
use report::Reporter;
use shell::{Peer, Shell, Storage};

/// Control messages from the main thread.
#[derive(Debug)]
pub enum SyncCtl {
    Shutdown,
}

/// Bytes of file data sent per loop turn before looking at incoming events again.
const PUMP_BUDGET: usize = 2 * 1024 * 1024;
/// Bytes of old versions read for signatures per loop turn.
const SIGN_BUDGET: usize = 4 * 1024 * 1024;
/// Most signatures kept for sends not started yet: bounds what a peer can make us store.
const MAX_PENDING_SIGNATURES: usize = 4096;
/// With a cron schedule, the loop wakes at least this often, so that a wall clock set
/// forwards or back is noticed. With nothing to do it sleeps until an input arrives.
const CRON_SLEEP: Duration = Duration::from_secs(60);
/// "No deadline": long enough to mean for ever, short enough to add to an `Instant`.
const FOREVER: Duration = Duration::from_secs(86_400);

struct SyncThread {
    config: Config,
    core: Core,
    shell: Shell,
    oneshot: Option<OneShot>,
    /// Whether the shell was idle (nothing to send or sign) at the last tick.
    idle_at_tick: bool,
    next_cron: Option<SystemTime>,
    report: Reporter,
}

/// What the thread waits on.
pub struct Inputs {
    pub net_events: Receiver<NetEvent>,
    pub ctl: Receiver<SyncCtl>,
    /// The watcher's hints (daemons that watch a storage).
    pub hints: Option<Hints>,
    /// Where the storages' status is shown.
    pub board: crate::status::Board,
}

/// The thread body. `ready` hears once whether the thread could start (its storages and
/// history database open); a failure there is a start-up error of the whole process.
pub fn run(
    config: Config,
    mode: Mode,
    net: NetHandle,
    inputs: Inputs,
    ready: Sender<Result<(), String>>,
    done: Sender<Outcome>,
) {
    let Inputs {
        net_events,
        ctl,
        hints,
        board,
    } = inputs;
    let never = crossbeam_channel::never();
    let hint_wake = hints.as_ref().map_or(&never, Hints::wake);
    let mut t = match SyncThread::new(config, mode, net, board) {
        Ok(t) => {
            let _ = ready.send(Ok(()));
            t
        }
        Err(e) => {
            let _ = ready.send(Err(e));
            // Stay until told to stop so shutdown stays ordered.
            let _ = ctl.recv();
            return;
        }
    };
    let mut done = Some(done);
    loop {
        let busy = t.pump();
        // Pumping can end a session (its last send) or drain the outbox a one-shot run
        // waits for: the tick that acts on it must come now, not at the next event, which
        // may never come.
        let timeout = if busy || t.needs_tick() {
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
            recv(hint_wake) -> _ => {}
            default(timeout) => {}
        }
        if let Some(h) = &hints {
            for hint in h.take() {
                t.core
                    .rescan(hint.storage, hint.rules, Instant::now(), &mut t.shell);
            }
        }
        // Handle everything already queued before pumping more data out.
        while let Ok(ev) = net_events.try_recv() {
            t.on_net_event(ev);
        }
        let ended = t.shell.receiver.commit_if_due(Instant::now());
        t.received(ended);
        t.tick();
        // Sessions and scans outside them (hints, waiting rescans) leave memory behind; an
        // idle daemon gives it back.
        if t.core.session_info().is_none() {
            t.shell.release_if_spent();
        }
        t.report.answer_waiters(&mut t.core, &t.shell);
        if let Some(outcome) = t.oneshot_outcome() {
            // The last state first: a progress display draws it before the summary.
            t.report.refresh(&t.core, &t.shell, true);
            if let Some(tx) = done.take() {
                let _ = tx.send(outcome);
            }
        }
    }
}

impl SyncThread {
    fn new(
        config: Config,
        mode: Mode,
        net: NetHandle,
        board: crate::status::Board,
    ) -> Result<SyncThread, String> {
        let mut store =
            Store::open(&config.log_path, &config.node_id).map_err(|e| e.to_string())?;
        let mut storages = Vec::new();
        for cfg in &config.storages {
            // A root that cannot be opened (a disk not mounted yet) is that storage's error,
            // at every scan, not the node's: the others synchronize.
            let dir = match StorageDir::open(&cfg.path) {
                Ok(d) => Some(d),
                Err(e) => {
                    log::error!(
                        "{}: the storage root {} cannot be opened ({e}); it is not \
                         synchronized until it can",
                        cfg.name,
                        cfg.path.display()
                    );
                    None
                }
            };
            let id = store.storage(&cfg.name).map_err(|e| e.to_string())?;
            storages.push(Storage {
                cfg: cfg.clone(),
                dir,
                id,
            });
        }
        if config.peers.is_empty() && !config.enable_service_discovery && mode == Mode::Daemon {
            log::warn!(
                "nobody to sync with: no `peers` are configured and service discovery is off; \
                 this node synchronizes only with nodes that dial it"
            );
        }
        let names = config.storages.iter().map(|s| s.name.clone()).collect();
        let core = Core::new(config.node_id.clone(), names, mode == Mode::Daemon);
        let next_cron = match (&config.schedule_sync, mode) {
            (Some(s), Mode::Daemon) => s.schedule.next_fire(SystemTime::now()),
            _ => None,
        };
        let seed = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0)
            ^ (u64::from(std::process::id()) << 32);
        let shell = Shell::new(
            net,
            storages,
            db_paths(&config.log_path),
            config.max_parallel_transfers as usize,
            store,
            seed,
        );
        // Daemons that have this node in their `peers` dial it, so a one-shot run without
        // peers of its own still waits for them, unless nothing could find it (discovery off).
        let oneshot = (mode == Mode::OneShot).then(|| {
            OneShot::new(
                Instant::now(),
                config.peers.clone(),
                config.enable_service_discovery,
                config.storages.len(),
            )
        });
        let report = Reporter::new(board, config.storages.len());
        Ok(SyncThread {
            config,
            core,
            shell,
            oneshot,
            idle_at_tick: true,
            next_cron,
            report,
        })
    }

    fn on_net_event(&mut self, ev: NetEvent) {
        let now = Instant::now();
        match ev {
            NetEvent::Listening { port } => log::debug!("net is listening on {port:?}"),
            NetEvent::Discovered { node, addr } => {
                if let Some(os) = &mut self.oneshot {
                    os.discovered(now, node, addr);
                }
            }
            NetEvent::DialResult { addr, result } => {
                if let Err(e) = &result {
                    log::debug!("dial {addr} failed: {e}");
                }
                if let Some(os) = &mut self.oneshot {
                    os.dial_result(&addr, result);
                }
            }
            NetEvent::Connected {
                conn,
                hello,
                addr: _,
                outbound,
            } => self.on_connected(conn, hello, outbound, now),
            NetEvent::Disconnected { conn, reason } => {
                if let Some(node) = self.shell.peer_gone(conn) {
                    log::debug!("peer {node} gone: {reason}");
                    self.core.peer_down(&node, now, &mut self.shell);
                }
            }
            NetEvent::Drained { .. } => {}
            NetEvent::ControlSync {
                client,
                storage,
                wait,
            } => self
                .report
                .on_request(client, storage, wait, &mut self.core, &self.shell),
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
            os.peer_joined(now, &node);
        }
        self.core.peer_up(node, hello.storages, now);
    }

    /// Routes a peer's message by its audience.
    fn on_message(&mut self, conn: ConnId, from: &NodeId, msg: PeerMsg, now: Instant) {
        match msg {
            PeerMsg::Election(m) => self.core.on_election(from, m, now, &mut self.shell),
            PeerMsg::Session(m) => self.core.on_session(from, m, now, &mut self.shell),
            PeerMsg::Transfer(m) => self.on_transfer(conn, from, m, now),
        }
    }

    fn on_transfer(&mut self, conn: ConnId, from: &NodeId, msg: TransferMsg, now: Instant) {
        let shell = &mut self.shell;
        match msg {
            TransferMsg::FileStart { sid, xid, meta } => {
                match self.core.accept_file(from, sid, &meta, now, shell) {
                    Ok(_) if shell.receiver.incoming() >= MAX_INCOMING => {
                        let reason = format!(
                            "{MAX_INCOMING} files are being received already; retried at the \
                             next session"
                        );
                        log::warn!("{} from {from} not received: {reason}", meta.path);
                        shell.send_to(
                            from,
                            TransferMsg::FileReject {
                                xid,
                                reason: reason.clone(),
                            },
                        );
                        // The core took it as started: it hears the end, as for any file.
                        let storage = self.core.session_storage().unwrap_or_default();
                        self.received(vec![Ended {
                            storage,
                            sid,
                            path: meta.path,
                            end: RecvEnd::Failed(reason),
                        }]);
                    }
                    Ok(expect) => {
                        let storage = self.core.session_storage().unwrap_or_default();
                        let key = (sid, storage);
                        if let Err(v) = shell.receiver.start(conn, xid, key, meta, expect) {
                            return shell.disconnect(from, v);
                        }
                        let Ok(dir) = shell.storages[storage].dir() else {
                            return;
                        };
                        if let Some(offset) = shell.receiver.offer_resume(conn, xid, dir) {
                            shell.send_to(from, TransferMsg::FileResume { xid, offset });
                        }
                    }
                    Err(Refusal::Reject(reason)) => shell.send_to(
                        from,
                        TransferMsg::FileReject {
                            xid,
                            reason: reason.to_owned(),
                        },
                    ),
                    Err(Refusal::Violation(v)) => shell.disconnect(from, v),
                }
            }
            TransferMsg::FileData { xid, data } => {
                self.on_chunk(conn, from, xid, Chunk::Literal(&data), now);
            }
            TransferMsg::FileCopy { xid, first, count } => {
                self.on_chunk(conn, from, xid, Chunk::Copy(first, count), now);
            }
            TransferMsg::Signature { sid, path, sig } => {
                let ours = self.core.session_info().is_some_and(|(s, _, _)| s == sid);
                if !ours {
                    return;
                }
                if shell.outbox.engine.pending_signatures() >= MAX_PENDING_SIGNATURES {
                    return shell.disconnect(from, Violation::TooManySignatures);
                }
                shell.outbox.engine.add_signature(sid, path, conn, sig);
            }
            TransferMsg::FileEnd { xid, hash } => {
                let Some(storage) = self.core.session_storage() else {
                    return;
                };
                let Ok(dir) = shell.storages[storage].dir() else {
                    return;
                };
                let ended = shell.receiver.end(conn, xid, &hash, dir, now);
                self.received(ended);
            }
            TransferMsg::FileAbort { xid, reason } => {
                if let Some(ended) = shell.receiver.abort(conn, xid, reason) {
                    self.received(vec![ended]);
                }
            }
            TransferMsg::FileResume { xid, offset } => {
                shell.outbox.engine.resume(conn, xid, offset, &shell.net);
            }
            TransferMsg::FileSkip { xid, offset } => {
                self.on_chunk(conn, from, xid, Chunk::Skip(offset), now);
            }
            TransferMsg::FileReject { xid, reason } => {
                match shell.outbox.engine.drop_receiver(conn, Some(xid)) {
                    Some(path) => log::warn!("{from} declined {path}: {reason}"),
                    None => log::info!("{from} declined a file: {reason}"),
                }
            }
        }
    }

    /// Literal bytes or block copies for a transfer being received.
    fn on_chunk(&mut self, conn: ConnId, from: &NodeId, xid: u32, chunk: Chunk<'_>, now: Instant) {
        let Some(storage) = self.core.session_storage() else {
            return;
        };
        let shell = &mut self.shell;
        let Ok(dir) = shell.storages[storage].dir() else {
            return;
        };
        match shell.receiver.chunk(conn, xid, chunk, dir) {
            ChunkOutcome::Unknown => {}
            ChunkOutcome::Written => self.core.on_progress(now),
            ChunkOutcome::Violation(v) => {
                self.core.on_progress(now);
                shell.disconnect(from, v);
            }
            ChunkOutcome::Ended(ended) => {
                self.core.on_progress(now);
                // The sender's summary says why (a full disk, a read-only file system),
                // not just that the file failed.
                let reason = match &ended.end {
                    RecvEnd::Failed(why) | RecvEnd::KeptLocal(why) | RecvEnd::Aborted(why) => {
                        why.clone()
                    }
                    RecvEnd::Committed { .. } => String::new(),
                };
                shell.send_to(from, TransferMsg::FileReject { xid, reason });
                self.received(vec![ended]);
            }
        }
    }

    /// Logs how each received file ended, records the committed ones in the history (one
    /// transaction per batch) and tells the core, once per file.
    fn received(&mut self, ended: Vec<Ended>) {
        let now = Instant::now();
        let mut touched: Vec<usize> = Vec::new();
        let mut outcomes = Vec::with_capacity(ended.len());
        for Ended {
            storage,
            sid,
            path,
            end,
        } in ended
        {
            let name = &self.shell.storages[storage].cfg.name;
            let outcome = match end {
                RecvEnd::Committed {
                    bytes,
                    entry,
                    ino,
                    ctime,
                } => {
                    log::debug!("{name}: received {path}");
                    self.shell.record_received(storage, entry, ino, ctime);
                    if !touched.contains(&storage) {
                        touched.push(storage);
                    }
                    Received::Committed { bytes }
                }
                RecvEnd::KeptLocal(why) => {
                    log::info!("{name}: {why}");
                    Received::KeptLocal
                }
                RecvEnd::Failed(why) => {
                    log::warn!("{name}: {why}");
                    Received::Failed
                }
                RecvEnd::Aborted(why) => {
                    // The sender counts its own failures; a source that changed is not one.
                    log::info!("{path} not received: {why}");
                    Received::Aborted
                }
            };
            outcomes.push((storage, sid, path, outcome));
        }
        // The store first, then the core: a file on disk whose history could not be
        // written (a full disk under the database) is a failure of the session, which is
        // then synchronized again, not a success that leaves the store behind unnoticed.
        let unrecorded: Vec<usize> = touched
            .into_iter()
            .filter(|&storage| !core::Io::flush_history(&mut self.shell, storage))
            .collect();
        for (storage, sid, path, outcome) in outcomes {
            let outcome = match outcome {
                Received::Committed { .. } if unrecorded.contains(&storage) => Received::Failed,
                o => o,
            };
            self.core
                .on_received(sid, &path, outcome, now, &mut self.shell);
        }
    }

    /// Sends file data and signatures while receivers have room. Returns true if more can
    /// be done right now.
    fn pump(&mut self) -> bool {
        let Some(storage) = self.core.session_storage() else {
            return false;
        };
        let shell = &mut self.shell;
        let st = &shell.storages[storage];
        let Ok(dir) = st.dir() else {
            return false;
        };
        let (read, more_sigs) = shell.receiver.pump_signatures(dir, &shell.net, SIGN_BUDGET);
        let dest = |n: &NodeId| shell_dest(&shell.by_node, &shell.peers, n);
        let (ended, sent, more) =
            shell
                .outbox
                .pump(&st.cfg.name, dir, &shell.net, PUMP_BUDGET, &dest);
        let now = Instant::now();
        if read + sent > 0 {
            // A long file in flight is progress even though no message arrives.
            self.core.on_progress(now);
        }
        for (sid, outcome) in ended {
            self.core.on_sent(sid, outcome, now, &mut self.shell);
        }
        more || more_sigs
    }

    fn next_wakeup(&self) -> Duration {
        let now = Instant::now();
        let mut at = now + FOREVER;
        if let Some(cron) = self.next_cron {
            let wait = cron
                .duration_since(SystemTime::now())
                .unwrap_or(Duration::ZERO);
            at = at.min(now + wait.min(CRON_SLEEP));
        }
        let deadlines = [
            self.core.next_deadline(),
            self.shell.receiver.next_deadline(),
            self.shell.outbox.engine.next_deadline(),
            self.oneshot.as_ref().and_then(OneShot::next_wakeup),
            self.report.next_deadline(&self.core),
        ];
        for d in deadlines.into_iter().flatten() {
            at = at.min(d);
        }
        at.saturating_duration_since(now)
    }

    /// Something changed since the last tick that only a tick acts on.
    fn needs_tick(&self) -> bool {
        self.core.has_ended() || self.shell.is_idle() != self.idle_at_tick
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
        // The one-shot policy before the core's tick, so what it claims is claimed now, and
        // after, so a run the tick settled ends now.
        let busy = !self.shell.is_idle();
        if let Some(os) = &mut self.oneshot {
            os.step(now, &mut self.core, busy);
        }
        self.core.tick(now, &mut self.shell);
        let ended = self.after_session_changes();
        self.report.refresh(&self.core, &self.shell, ended);
        let busy = !self.shell.is_idle();
        self.idle_at_tick = !busy;
        if let Some(os) = &mut self.oneshot {
            os.step(now, &mut self.core, busy);
        }
    }

    /// When a session this thread took part in is over (whatever ended it; it may have
    /// started and ended since the last look).
    /// True if one ended.
    fn after_session_changes(&mut self) -> bool {
        let ended = self.core.take_ended();
        for &old in &ended {
            // Sends and signatures are only pumped while a session runs: anything the one
            // that ended left behind would never drain, and would keep a one-shot run
            // "busy" for ever.
            if !self.shell.is_idle() {
                log::debug!("session {old:016x} ended with work queued; dropping it");
                core::Io::cancel_session(&mut self.shell, old);
            }
        }
        if !ended.is_empty() {
            let (sent, received) = self.shell.net.traffic.get();
            log::info!(
                "network so far: sent {sent} bytes, received {received} bytes; {} database \
                 transactions",
                self.shell.store.transactions()
            );
            self.shell.note_spent();
        }
        !ended.is_empty()
    }

    /// The one-shot run's report, once (when its policy says it is over).
    fn oneshot_outcome(&mut self) -> Option<Outcome> {
        if !self.oneshot.as_ref()?.is_finished() {
            return None;
        }
        let os = self.oneshot.take()?;
        let (sent, received) = self.shell.net.traffic.get();
        let report = os.report(&self.core, sent, received);
        if !report.ok() {
            log::warn!("the run did not synchronize everything (see the summary)");
        }
        Some(Outcome::Run(report))
    }

    fn shutdown(&mut self) {
        let now = Instant::now();
        if let Some(storage) = self.core.session_storage() {
            log::info!(
                "{}: stopping during a session: it is abandoned (its peers are told; files \
                 received whole are kept, partial ones kept to resume), and synchronized \
                 again at the next start",
                self.core.storages()[storage]
            );
        }
        self.report.shut_down(&mut self.core, &self.shell);
        // Complete, verified files are worth keeping.
        let ended = self.shell.receiver.commit_all();
        self.received(ended);
        self.core.shut_down(now, &mut self.shell);
        // Dropping the incoming transfers removes their temporary files.
        self.shell.receiver.drop_all();
    }
}

/// Where to send to `node` (a free function so that it borrows only the peer maps while the
/// outbox is borrowed mutably).
fn shell_dest(
    by_node: &std::collections::HashMap<NodeId, ConnId>,
    peers: &std::collections::HashMap<ConnId, Peer>,
    node: &NodeId,
) -> Option<send::Dest> {
    let conn = *by_node.get(node)?;
    let p = peers.get(&conn)?;
    Some(send::Dest {
        conn,
        outbound: p.outbound.clone(),
    })
}

/// The database file and its SQLite side files, as absolute paths.
pub fn db_paths(log_path: &std::path::Path) -> Vec<PathBuf> {
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
