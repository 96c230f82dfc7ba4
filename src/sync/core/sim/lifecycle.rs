//! Nodes coming up and going down (a crash, a kill, a graceful stop, a one-shot run's end),
//! and the links between them made and cut: the simulated processes and connections.

use super::*;

impl Sim {
    pub(super) fn notify_down(&mut self, obs: usize, subj: usize) {
        self.believes[obs][subj] = None;
        self.log(format!(
            "{} notices {} is gone",
            self.name(obs),
            self.name(subj)
        ));
        let id = self.nodes[subj].id.clone();
        self.call(obs, false, |c, io, now| c.peer_down(&id, now, io));
    }

    /// Closes every connection of `node`; peers notice after a detection delay.
    pub(super) fn drop_links(&mut self, node: usize) {
        for j in 0..self.nodes.len() {
            if j != node {
                self.cut(node, j);
            }
        }
    }

    /// Closes the connection between `a` and `b`: what is in flight is lost, and each side
    /// notices after a detection delay (a side whose core is gone has nothing to notice).
    pub(super) fn cut(&mut self, a: usize, b: usize) {
        if !self.link(a, b).connected {
            return;
        }
        let old = self.link(a, b).gen;
        self.next_gen += 1;
        let gen = self.next_gen;
        *self.link_mut(a, b) = Link {
            connected: false,
            gen,
        };
        for (obs, subj) in [(a, b), (b, a)] {
            if self.believes[obs][subj] == Some(old) {
                let at = self.now + self.draw(self.cfg.detect);
                self.push(
                    at,
                    Event::PeerDown {
                        obs,
                        subj,
                        gen: old,
                    },
                );
            }
        }
    }

    /// Opens a new connection between two nodes that are up; both cores learn of it.
    pub(super) fn connect(&mut self, a: usize, b: usize) {
        // A side may not have noticed the former connection yet: a new connection from the
        // same node replaces it, which the shell reports as gone first.
        for (obs, subj) in [(a, b), (b, a)] {
            if self.believes[obs][subj].is_some() {
                self.notify_down(obs, subj);
            }
        }
        self.next_gen += 1;
        let gen = self.next_gen;
        *self.link_mut(a, b) = Link {
            connected: true,
            gen,
        };
        self.log(format!("{} and {} connect", self.name(a), self.name(b)));
        let now = self.instant();
        for (x, y) in [(a, b), (b, a)] {
            self.believes[x][y] = Some(gen);
            let (id, st) = (self.nodes[y].id.clone(), self.nodes[y].storages.clone());
            let shared: Vec<String> = st
                .iter()
                .filter(|s| self.nodes[x].storage(s).is_some())
                .cloned()
                .collect();
            if let Some(run) = &mut self.nodes[x].run {
                // Every other link, the peer was also announced by discovery first (its
                // address is its name here, as configured ones are).
                if gen % 2 == 1 {
                    run.policy
                        .discovered(now, id.clone(), id.as_str().to_owned());
                }
                // `net` reports the handshake, then the configured address as reached.
                run.policy.peer_joined(now, &id);
                run.policy.dial_result(id.as_str(), Ok(()));
                run.seen.extend(shared.into_iter().map(|s| (y, s)));
            }
            self.call(x, false, |c, _, now| c.peer_up(id, st, now));
        }
    }

    /// Crashes `node` (`graceful`: it aborts its session and its last messages drain first).
    pub(super) fn take_down(&mut self, node: usize, graceful: bool) {
        self.losses += 1;
        self.log(format!(
            "{} goes down{}",
            self.name(node),
            if graceful { " (graceful)" } else { "" }
        ));
        if let Some(run) = self.nodes[node].run.take() {
            self.runs.push(RunRecord {
                node,
                started: run.started,
                ended: self.now,
                report: None,
            });
        }
        self.stop(node, graceful);
    }

    /// Stops `node`'s process (`graceful`: as on SIGTERM or at the end of a one-shot run).
    pub(super) fn stop(&mut self, node: usize, graceful: bool) {
        if graceful {
            self.call(node, false, |c, io, now| c.shut_down(now, io));
        }
        self.up_since[node] = None;
        let n = &mut self.nodes[node];
        n.core = None;
        n.inc += 1;
        n.tick_at = None;
        n.watch = None;
        n.watch_at = None;
        for b in &mut self.believes[node] {
            *b = None;
        }
        if graceful {
            // `net` half-closes and reads until each peer closes: what this node sent before
            // it stopped still arrives, within the drain's grace.
            let last = self.fifo[node].iter().copied().max().unwrap_or(0);
            let at = (last + 1).clamp(self.now + 100 * MS, self.now + CLOSE_GRACE_NS);
            self.push(at, Event::DropLinks { node });
        } else {
            self.drop_links(node);
        }
    }

    /// Starts `node` with a fresh core (a daemon, or a new one-shot run) and connects it to
    /// every node that is up.
    pub(super) fn bring_up(&mut self, node: usize) {
        self.drop_links(node);
        let kind = self.nodes[node].kind;
        self.log(format!("{} comes up ({kind:?})", self.name(node)));
        let now = self.instant();
        let others: Vec<usize> = (0..self.nodes.len()).filter(|&j| j != node).collect();
        if kind == Kind::OneShot {
            self.runs_started += 1;
            let late = others
                .iter()
                .any(|&j| self.up_since[j].is_some_and(|t| t + CONNECT_WINDOW_NS < self.now));
            if late {
                self.late_runs += 1;
            }
        }
        self.up_since[node] = Some(self.now);
        let names: Vec<String> = others.iter().map(|&j| self.name(j).to_owned()).collect();
        let down: Vec<String> = others
            .iter()
            .filter(|&&j| !self.up(j))
            .map(|&j| self.name(j).to_owned())
            .collect();
        let n = &mut self.nodes[node];
        n.inc += 1;
        n.tick_at = None;
        n.watch_at = None;
        // The watcher starts with a scan of every storage (what changed while it was down).
        n.watch = (kind == Kind::Daemon).then(|| {
            let mut w = Debouncer::new(&n.watch_settings, now);
            for s in 0..n.storages.len() {
                w.changed(s, now);
            }
            w
        });
        n.core = Some(Core::new(
            n.id.clone(),
            n.storages.clone(),
            kind == Kind::Daemon,
        ));
        n.run = (kind == Kind::OneShot).then(|| {
            // Every other node is a configured peer; daemons dial it too.
            let mut policy = OneShot::new(now, names, true, n.storages.len());
            for d in down {
                policy.dial_result(&d, Err(DialError::Unreachable("connection refused".into())));
            }
            Run {
                policy,
                started: self.now,
                seen: BTreeSet::new(),
            }
        });
        for j in others {
            if self.up(j) {
                self.connect(node, j);
            }
        }
        // The policy's first step, as the real loop takes one before it first sleeps.
        self.call(node, false, |_, _, _| ());
        self.schedule_watch(node);
    }

    pub(super) fn start_all(&mut self) {
        for i in 0..self.nodes.len() {
            self.bring_up(i);
        }
        self.check_invariants();
    }

    /// Hostile `node` claims `storage` from every node it is connected to with `ticket`,
    /// and again `every` later with the next one (see [`Event::Squat`]).
    pub(super) fn squat(&mut self, node: usize, storage: &'static str, ticket: u64, every: u64) {
        if !self.up(node) {
            return;
        }
        for j in 0..self.nodes.len() {
            if j != node && self.link(node, j).connected {
                let claim = ElectionMsg::Claim {
                    ticket,
                    storage: storage.into(),
                };
                self.send(node, j, claim.into());
            }
        }
        let (ticket, at) = (ticket + 1, self.now + every);
        self.push(
            at,
            Event::Squat {
                node,
                storage,
                ticket,
                every,
            },
        );
    }
}
