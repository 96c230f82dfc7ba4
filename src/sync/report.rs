//! What `sync` tells the outside about its storages: the status board (totals, state, the
//! last sync, progress and its rate, recent errors), refreshed a few times a second and at
//! once when a session ends; and the answers to control clients' sync requests, the
//! waited-for ones when the session they asked for is over.
//!
//! It only reads the core and the shell, and decides nothing for them.

use std::collections::VecDeque;
use std::time::{Duration, Instant, SystemTime};

use crate::net::handle::NetCmd;
use crate::run::Moved;
use crate::status::{Board, LastSync, Progress, SyncState};

use super::core::{Core, StorageResult, WaitEnd};
use super::shell::Shell;

/// How often the board is refreshed while something may change.
const REFRESH: Duration = Duration::from_millis(250);
/// Totals are counted again at most this often while they change (a session commits in
/// batches; counting 100,000 rows on a Pi takes a while), and always when a session ends.
const RECOUNT: Duration = Duration::from_secs(5);
/// The window the transfer rate is measured over.
const RATE_WINDOW: Duration = Duration::from_secs(5);

pub(super) struct Reporter {
    board: Board,
    next_refresh: Instant,
    /// Per storage: the core's result count last shown, and the index state its totals
    /// were counted at.
    seen: Vec<u64>,
    counted: Vec<Option<(u64, u64)>>,
    recounted: Instant,
    /// A refresh was skipped (too soon): the next one is due even if nothing else happens.
    stale: bool,
    /// (session, samples of its bytes done) for the rate.
    samples: (u64, VecDeque<(Instant, u64)>),
}

impl Reporter {
    pub(super) fn new(board: Board, storages: usize) -> Reporter {
        Reporter {
            board,
            next_refresh: Instant::now(),
            seen: vec![0; storages],
            counted: vec![None; storages],
            recounted: Instant::now(),
            stale: true,
            samples: (0, VecDeque::new()),
        }
    }

    /// When the board wants its next refresh: while a session runs (its progress moves
    /// without an event), or when one was skipped; idle, never.
    pub(super) fn next_deadline(&self, core: &Core) -> Option<Instant> {
        (self.stale || core.session_info().is_some()).then_some(self.next_refresh)
    }

    /// Brings the board up to date: at most every [`REFRESH`], unless `now_anyway`.
    pub(super) fn refresh(&mut self, core: &Core, shell: &Shell, now_anyway: bool) {
        let now = Instant::now();
        if !now_anyway && now < self.next_refresh {
            self.stale = true;
            return;
        }
        self.stale = false;
        self.next_refresh = now + REFRESH;
        let recount = now_anyway || now >= self.recounted + RECOUNT;
        if recount {
            self.recounted = now;
        }
        let wall = SystemTime::now();
        let running = core.session_info().map(|(sid, _, storage)| (sid, storage));
        let progress =
            running.map(|(sid, storage)| (storage, self.progress(sid, core, shell, now)));
        // The database first, the board's lock after: a status being answered meanwhile
        // must not wait for a query.
        let mut totals = vec![None; shell.storages.len()];
        for (i, storage) in shell.storages.iter().enumerate() {
            let Ok(state) = shell.store.local_state(storage.id) else {
                continue;
            };
            if self.counted[i] == Some(state) {
                continue;
            }
            if recount || self.counted[i].is_none() {
                if let Ok(t) = shell.store.totals(storage.id) {
                    totals[i] = Some(t);
                    self.counted[i] = Some(state);
                }
            } else {
                // Changed since the last count (a scan outside a session, say): counted
                // when its pause is over, even if nothing else happens by then.
                self.stale = true;
                self.next_refresh = self.next_refresh.max(self.recounted + RECOUNT);
            }
        }
        let mut board = self.board.lock();
        for (i, st) in board.iter_mut().enumerate() {
            let Some(storage) = shell.storages.get(i) else {
                continue;
            };
            if let Some((files, bytes)) = totals[i] {
                st.files = files;
                st.bytes = bytes;
            }
            let count = core.results_seen(i);
            if count != self.seen[i] {
                self.seen[i] = count;
                match core.result(i) {
                    Some(StorageResult::Synced { peers, stats }) => {
                        st.last_sync = Some(LastSync {
                            at: wall,
                            with: peers.clone(),
                            moved: Moved::from(*stats),
                            clean: stats.failed == 0,
                        });
                        if stats.failed > 0 {
                            st.note_error(wall, crate::run::SyncError::FilesFailed(stats.failed));
                        }
                    }
                    Some(StorageResult::Failed(why)) => st.note_error(wall, why.clone()),
                    Some(StorageResult::NoPeer) | None => {}
                }
            }
            st.peers = core.holders(i);
            st.progress = progress.filter(|(s, _)| *s == i).map(|(_, p)| p);
            st.state = if storage.dir.is_none() {
                SyncState::Unavailable
            } else if st.progress.is_some() {
                SyncState::Syncing
            } else if st.peers.is_empty() {
                SyncState::NotShared
            } else if core.has_want(i) {
                SyncState::Pending
            } else {
                match core.result(i) {
                    Some(StorageResult::Synced { stats, .. })
                        if stats.failed == 0 && core.unsynced_holders(i).is_empty() =>
                    {
                        SyncState::InSync
                    }
                    Some(StorageResult::Failed(_)) => SyncState::Failed,
                    Some(StorageResult::Synced { stats, .. }) if stats.failed > 0 => {
                        SyncState::Failed
                    }
                    _ => SyncState::Pending,
                }
            };
        }
    }

    /// This node's part of session `sid`: whole files over, and the bytes in flight.
    fn progress(&mut self, sid: u64, core: &Core, shell: &Shell, now: Instant) -> Progress {
        let incoming = core.incoming().map(|(_, i)| i).unwrap_or_default();
        let sending = shell.outbox.progress;
        let sending = if sending.sid == sid {
            sending
        } else {
            Default::default()
        };
        let files_total = incoming.files_total + sending.files_total;
        let bytes_total = incoming.bytes_total + sending.bytes_total;
        let in_flight = shell.receiver.in_flight() + shell.outbox.engine.in_flight();
        let bytes_done = (incoming.bytes_done + sending.bytes_done + in_flight).min(bytes_total);
        let (at, samples) = &mut self.samples;
        if *at != sid {
            *at = sid;
            samples.clear();
        }
        samples.push_back((now, bytes_done));
        while samples
            .front()
            .is_some_and(|(t, _)| now.duration_since(*t) > RATE_WINDOW)
        {
            samples.pop_front();
        }
        let rate = match (samples.front(), samples.back()) {
            (Some((t0, b0)), Some((t1, b1))) if t1 > t0 => {
                let secs = t1.duration_since(*t0).as_secs_f64();
                (b1.saturating_sub(*b0) as f64 / secs) as u64
            }
            _ => 0,
        };
        let elapsed = samples
            .front()
            .map_or(0, |(t, _)| now.duration_since(*t).as_secs());
        Progress {
            files_done: incoming.files_done + sending.files_done,
            files_total,
            bytes_done,
            bytes_total,
            rate,
            elapsed,
        }
    }

    /// A control client asks to synchronize `storage` (all: `None`) now; with `wait` it is
    /// answered when that is over (the core decides when: `core/waits.rs`).
    pub(super) fn on_request(
        &mut self,
        client: u64,
        storage: Option<String>,
        wait: bool,
        core: &mut Core,
        shell: &Shell,
    ) {
        let names = core.storages().to_vec();
        let chosen: Vec<usize> = match &storage {
            None => (0..names.len()).collect(),
            Some(name) => match names.iter().position(|n| n == name) {
                Some(i) => vec![i],
                None => {
                    let known = names.join(", ");
                    return reply(
                        shell,
                        client,
                        format!("error no storage named {name:?} (this node has: {known})\n"),
                    );
                }
            },
        };
        for &i in &chosen {
            log::info!("{}: synchronizing now, as a control client asked", names[i]);
        }
        core.sync_now(&chosen, wait.then_some(client), Instant::now());
        if !wait {
            let list: Vec<&str> = chosen.iter().map(|&i| names[i].as_str()).collect();
            reply(
                shell,
                client,
                format!("ok\nsynchronizing: {}\n", list.join(", ")),
            );
        }
    }

    /// Answers the waiting clients whose syncs are over.
    pub(super) fn answer_waiters(&mut self, core: &mut Core, shell: &Shell) {
        for (client, ends) in core.take_answers() {
            let (code, text) = outcome(core, &ends);
            reply(shell, client, format!("done {code}\n{text}"));
        }
    }

    /// The daemon stops: nobody waits for a session that will not come.
    pub(super) fn shut_down(&mut self, core: &mut Core, shell: &Shell) {
        for client in core.drop_waits() {
            reply(
                shell,
                client,
                "done 1\nthe daemon is shutting down; nothing more is synchronized\n".into(),
            );
        }
    }
}

fn reply(shell: &Shell, client: u64, text: String) {
    shell.net.send(NetCmd::ControlReply { client, text });
}

/// The exit code and the lines of a waited-for sync: 0 if every storage was synchronized
/// with every connected peer that has it, without a failed file.
fn outcome(core: &Core, ends: &[(usize, WaitEnd)]) -> (i32, String) {
    let mut code = 0;
    let mut text = String::new();
    for (i, end) in ends {
        let name = &core.storages()[*i];
        let line = match end {
            WaitEnd::NotShared => {
                code = 1;
                format!("{name}: no connected peer has this storage")
            }
            WaitEnd::Result(StorageResult::Synced { peers, stats }) => {
                let with: Vec<&str> = peers.iter().map(|p| p.as_str()).collect();
                let moved = crate::status::moved_phrase(&Moved::from(*stats));
                if stats.failed > 0 {
                    code = 1;
                    format!(
                        "{name}: not synchronized entirely: {} file(s) failed ({moved})",
                        stats.failed
                    )
                } else {
                    format!("{name}: synchronized with {} — {moved}", with.join(", "))
                }
            }
            WaitEnd::Result(StorageResult::Failed(why)) => {
                code = 1;
                format!("{name}: not synchronized: {why}")
            }
            WaitEnd::Result(StorageResult::NoPeer) | WaitEnd::NoSession => {
                code = 1;
                format!("{name}: not synchronized: no session took place")
            }
        };
        text.push_str(&line);
        text.push('\n');
    }
    (code, text)
}
