//! Control clients that asked a daemon to synchronize storages now and wait for the result
//! (`iron-carrier sync --wait`): which result answers each, and when. Pure: the shell asks
//! for the answers after every turn, and the simulator after every event.
//!
//! A waiter is answered, per storage, by the first result after its request — or by the
//! second, when a session on that storage was already running: that one may have scanned
//! before the change the client wants moved. It is also answered when nobody connected has
//! the storage any more, or when the election gave the request up without a session; it
//! never waits for ever on a daemon that runs.

use std::time::Instant;

use super::{Core, StorageResult};

/// How a waited-for sync of one storage ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WaitEnd {
    /// The first result after the request: a session over, or a failure.
    Result(StorageResult),
    /// No connected peer has the storage.
    NotShared,
    /// The request was given up without a session (its last result, if any, is older).
    NoSession,
}

/// One waiting client.
#[derive(Debug)]
pub(super) struct Waiter {
    token: u64,
    /// (storage, the result count that answers it).
    storages: Vec<(usize, u64)>,
}

impl Core {
    /// A control client asks to synchronize `storages` now. With `wait`, the answer comes
    /// from [`Core::take_answers`] under that token once each storage's sync is over.
    pub fn sync_now(&mut self, storages: &[usize], wait: Option<u64>, now: Instant) {
        let mut waiting = Vec::new();
        let count = self.storages.len();
        for &i in storages.iter().filter(|&&i| i < count) {
            let runs = self.session_storage() == Some(i);
            waiting.push((i, self.results_seen(i) + if runs { 2 } else { 1 }));
            self.trigger(i, now);
        }
        if let Some(token) = wait {
            self.waits.push(Waiter {
                token,
                storages: waiting,
            });
        }
    }

    /// The waiters whose syncs are over, with how each storage's ended; forgotten here.
    pub fn take_answers(&mut self) -> Vec<(u64, Vec<(usize, WaitEnd)>)> {
        if self.waits.is_empty() {
            return Vec::new();
        }
        let waits = std::mem::take(&mut self.waits);
        let mut answers = Vec::new();
        for w in waits {
            let ends: Option<Vec<(usize, WaitEnd)>> = w
                .storages
                .iter()
                .map(|&(i, need)| Some((i, self.wait_end(i, need)?)))
                .collect();
            match ends {
                Some(ends) => answers.push((w.token, ends)),
                None => self.waits.push(w),
            }
        }
        answers
    }

    /// Forgets every waiter (the node stops); their tokens, to be told.
    pub fn drop_waits(&mut self) -> Vec<u64> {
        std::mem::take(&mut self.waits)
            .into_iter()
            .map(|w| w.token)
            .collect()
    }

    fn wait_end(&self, i: usize, need: u64) -> Option<WaitEnd> {
        if self.results_seen(i) >= need {
            return Some(WaitEnd::Result(self.result(i)?.clone()));
        }
        if !self.has_holders(i) {
            return Some(WaitEnd::NotShared);
        }
        (!self.has_want(i) && self.session_storage() != Some(i)).then_some(WaitEnd::NoSession)
    }
}
