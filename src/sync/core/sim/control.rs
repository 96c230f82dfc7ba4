//! What a control client asks of a simulated daemon: synchronize a storage now (`sync`), and
//! wait for the result (`sync --wait`). Every waiting client must be answered exactly once,
//! and by the time the nodes settle, unless its daemon stopped meanwhile (the real one then
//! answers "shutting down").

use super::*;

/// One `sync --wait` request.
pub(super) struct Wait {
    node: usize,
    /// The node's incarnation when it asked: a restart forgets it.
    inc: u32,
    token: u64,
    storage: String,
    answered: bool,
}

impl Sim {
    /// A watcher, cron or `sync` without `--wait` asks `node` to synchronize `storage` (a
    /// one-shot run has none of them: only its own policy claims storages).
    pub(super) fn trigger(&mut self, node: usize, storage: &str) {
        let Some(s) = self.nodes[node].storage(storage) else {
            return;
        };
        if self.nodes[node].kind == Kind::OneShot {
            return;
        }
        self.log(format!("{} triggers {storage}", self.name(node)));
        self.call(node, false, |c, _, now| c.trigger(s, now));
    }

    /// `sync STORAGE --wait` asked of `node`.
    pub(super) fn sync_wait(&mut self, node: usize, storage: &str) {
        let Some(s) = self.nodes[node].storage(storage) else {
            return;
        };
        if self.nodes[node].kind == Kind::OneShot || !self.up(node) {
            return;
        }
        let token = self.waits.len() as u64;
        self.log(format!(
            "{} is asked to sync {storage} and answer when done (client {token})",
            self.name(node)
        ));
        self.waits.push(Wait {
            node,
            inc: self.nodes[node].inc,
            token,
            storage: storage.to_owned(),
            answered: false,
        });
        self.call(node, false, |c, _, now| c.sync_now(&[s], Some(token), now));
    }

    /// Takes every answer the cores have; one for a client answered before, or for one
    /// never asked, is a violation.
    pub(super) fn collect_answers(&mut self) {
        for i in 0..self.nodes.len() {
            let Some(answers) = self.nodes[i].core.as_mut().map(Core::take_answers) else {
                continue;
            };
            for (token, ends) in answers {
                let inc = self.nodes[i].inc;
                let found = self
                    .waits
                    .iter_mut()
                    .find(|w| w.token == token && w.node == i && w.inc == inc);
                let what = match found {
                    None => format!(
                        "{} answered client {token}, which it was never asked by",
                        self.name(i)
                    ),
                    Some(w) if w.answered => {
                        format!("{} answered client {token} twice", self.name(i))
                    }
                    Some(w) => {
                        w.answered = true;
                        let storage = w.storage.clone();
                        self.log(format!(
                            "{} answers client {token}: {storage}: {ends:?}",
                            self.name(i)
                        ));
                        continue;
                    }
                };
                self.violations.push(what);
            }
        }
    }

    /// The nodes settled: every client of a daemon still in the life it asked in has its
    /// answer.
    pub(super) fn check_waits_answered(&mut self) {
        let forgotten: Vec<String> = self
            .waits
            .iter()
            .filter(|w| !w.answered && self.up(w.node) && self.nodes[w.node].inc == w.inc)
            .map(|w| {
                format!(
                    "{} never answered client {} (sync {} --wait)",
                    self.name(w.node),
                    w.token,
                    w.storage
                )
            })
            .collect();
        self.violations.extend(forgotten);
    }

    /// How many `sync --wait` clients were answered.
    pub(super) fn waits_answered(&self) -> usize {
        self.waits.iter().filter(|w| w.answered).count()
    }
}
