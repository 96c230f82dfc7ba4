//! The policy of a one-shot run, sans-I/O: when to stop waiting for peers, which storages to
//! synchronize (again), when the run is over, and what it achieved. The sync thread feeds it
//! what happened (a peer joined, a dial ended) and calls [`OneShot::step`] after every event
//! with the time; the simulator drives the same code over thousands of schedules.
//!
//! The wait: until every configured peer is connected, or no new peer has connected or been
//! announced (discovery) for [`CONNECT_WINDOW`] — at most [`CONNECT_DEADLINE`], which is
//! also how long it waits for a first peer at all. With no peer configured and nothing else that could bring one (no
//! discovery), there is nothing to wait for and the run says so at once. A session that
//! included this node before the wait ended does not end the run: it may have started before
//! a late peer connected (nodes started together come up one by one, slowly under load or
//! qemu). After the wait every storage is claimed once; a storage that a connected peer has
//! but no clean session synchronized with it is claimed again, a few times at most.
//!
//! The run is over when nothing is wanted or in flight. It succeeded only if every storage
//! that a connected peer had was synchronized with each such peer and every configured peer
//! was reached ([`RunReport::ok`]).

use std::time::{Duration, Instant};

use super::{Core, StorageResult};
use crate::model::NodeId;
use crate::run::{DialError, Found, RunProblem, RunReport, StorageReport, StorageState};

/// How long a one-shot run waits for more of its peers after the last one that connected.
pub const CONNECT_WINDOW: Duration = Duration::from_secs(5);
/// How long a one-shot run waits for a first peer at all before giving up, and for all its
/// peers at most.
pub const CONNECT_DEADLINE: Duration = Duration::from_secs(15);
/// With discovery on, a one-shot run listens at least this long for announcements before
/// it takes the peers it has for all there are. Nodes answer the query a starting node
/// sends within a fraction of a second.
pub const DISCOVERY_LISTEN: Duration = Duration::from_secs(2);
/// Most times a one-shot run synchronizes a storage again because no clean session included
/// a connected peer that has it (bounds a peer that keeps reconnecting).
pub const ONESHOT_AGAIN: u32 = 3;
/// Most discovered nodes a run remembers for its report (`net` dials no more than 64).
const MAX_FOUND: usize = 64;

/// What became of the attempts to reach one configured peer.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Reach {
    NotYet,
    Reached,
    Failed(DialError),
}

/// One one-shot run's policy state.
pub struct OneShot {
    started: Instant,
    /// Configured peer addresses, and whether each was reached.
    configured: Vec<(String, Reach)>,
    /// Peers can come without being configured (discovery, or peers that dial us): the run
    /// waits for one even with nothing configured.
    others_may_come: bool,
    /// Nodes announced by discovery, with the last reason one was not reached.
    found: Vec<(NodeId, String, Reach)>,
    ever_connected: bool,
    /// When a peer last connected or was announced (or the run started).
    last_joined: Instant,
    /// The wait for peers is over.
    waited: bool,
    /// Everyone known is connected, and the wait ends when discovery has listened enough.
    listen_wake: Option<Instant>,
    /// Per storage: this run has claimed it.
    triggered: Vec<bool>,
    /// Per storage: times it was claimed again.
    again: Vec<u32>,
    finished: bool,
}

impl OneShot {
    pub fn new(
        started: Instant,
        configured: Vec<String>,
        others_may_come: bool,
        storages: usize,
    ) -> OneShot {
        OneShot {
            started,
            configured: configured.into_iter().map(|a| (a, Reach::NotYet)).collect(),
            others_may_come,
            found: Vec::new(),
            ever_connected: false,
            last_joined: started,
            waited: false,
            listen_wake: None,
            triggered: vec![false; storages],
            again: vec![0; storages],
            finished: false,
        }
    }

    /// A peer's handshake completed.
    pub fn peer_joined(&mut self, now: Instant, node: &NodeId) {
        self.ever_connected = true;
        self.last_joined = now;
        for (n, _, reach) in &mut self.found {
            if n == node {
                *reach = Reach::Reached;
            }
        }
    }

    /// Discovery heard `node` announce itself at `addr` (new, or at a new address). It is
    /// being dialled: the wait for peers goes on for a while.
    pub fn discovered(&mut self, now: Instant, node: NodeId, addr: String) {
        if !self.waited {
            self.last_joined = self.last_joined.max(now);
        }
        let full = self.found.len() >= MAX_FOUND;
        match self.found.iter_mut().find(|(n, _, _)| *n == node) {
            Some(f) if f.2 != Reach::Reached => f.1 = addr,
            Some(_) => {}
            None if !full => self.found.push((node, addr, Reach::NotYet)),
            None => {}
        }
    }

    /// An attempt to reach peer address `addr` (configured or discovered) ended.
    pub fn dial_result(&mut self, addr: &str, result: Result<(), DialError>) {
        for (_, a, reach) in &mut self.found {
            if a == addr && *reach != Reach::Reached {
                *reach = match &result {
                    Ok(()) => Reach::Reached,
                    Err(e) => Reach::Failed(e.clone()),
                };
            }
        }
        for (a, reach) in &mut self.configured {
            if a != addr || *reach == Reach::Reached {
                continue;
            }
            *reach = match &result {
                Ok(()) => Reach::Reached,
                Err(e) => Reach::Failed(e.clone()),
            };
        }
    }

    pub fn is_finished(&self) -> bool {
        self.finished
    }

    /// Decides what to do at `now`: ends the wait, claims storages on `core`, or ends the
    /// run. `busy`: the thread is still sending files or computing signatures.
    pub fn step(&mut self, now: Instant, core: &mut Core, busy: bool) {
        if self.finished {
            return;
        }
        if !self.waited {
            if self.configured.is_empty() && !self.others_may_come {
                // Nobody can come: say so now, not after the whole wait.
                self.finished = true;
                return;
            }
            let waited = now.saturating_duration_since(self.started);
            let quiet = now.saturating_duration_since(self.last_joined);
            // Everyone we know of is here: the configured peers and the nodes announced so
            // far. With discovery on, not before the announcements had time to arrive.
            let everyone = (!self.configured.is_empty() || !self.found.is_empty())
                && self.configured.iter().all(|(_, r)| *r == Reach::Reached)
                && self.found.iter().all(|(_, _, r)| *r == Reach::Reached);
            let listened = !self.others_may_come || waited >= DISCOVERY_LISTEN;
            // Set only while `now` is before the end of the listening: never a time past.
            self.listen_wake = (everyone && !listened).then(|| self.started + DISCOVERY_LISTEN);
            if (everyone && listened)
                || (self.ever_connected && (quiet >= CONNECT_WINDOW || waited >= CONNECT_DEADLINE))
            {
                self.waited = true;
            } else {
                if waited >= CONNECT_DEADLINE {
                    self.finished = true;
                }
                return;
            }
        }
        let n = core.storages().len();
        for i in 0..n {
            let idle = !core.has_want(i) && core.session_storage() != Some(i);
            if self.triggered[i] {
                // A session this run took part in may have left out a peer connected to
                // this node (one its leader was not connected to, or one that came later),
                // or failed: that storage is synchronized again, a few times at most.
                if idle && !core.unsynced_holders(i).is_empty() && self.again[i] < ONESHOT_AGAIN {
                    self.again[i] += 1;
                    log::info!(
                        "{}: a connected peer has not been synchronized with; synchronizing again",
                        core.storages()[i]
                    );
                    core.trigger(i, now);
                }
                continue;
            }
            // Each storage is claimed once after the wait, even if a session already
            // synchronized it (or is doing so right now): that session may have left out a
            // peer that connected later, and a claim is only satisfied by a session whose
            // scan comes after it. When everyone agrees, the extra session costs a scan and
            // one digest per node.
            self.triggered[i] = true;
            if matches!(core.result(i), Some(StorageResult::Synced { .. })) && !core.has_holders(i)
            {
                // Synchronized with peers that have all gone since: nobody left to ask.
                continue;
            }
            core.trigger(i, now);
        }
        let settled = (0..n).all(|i| {
            !core.has_want(i) && core.session_storage() != Some(i) && core.result(i).is_some()
        });
        if settled && core.session_storage().is_none() && !busy {
            self.finished = true;
        }
    }

    /// The latest time [`OneShot::step`] must run again, if the run itself has a deadline:
    /// never a time already past once `step(now)` has run, so the thread never spins.
    pub fn next_wakeup(&self) -> Option<Instant> {
        if self.finished || self.waited {
            return None;
        }
        let deadline = self.started + CONNECT_DEADLINE;
        let wake = if self.ever_connected {
            (self.last_joined + CONNECT_WINDOW).min(deadline)
        } else {
            deadline
        };
        Some(self.listen_wake.map_or(wake, |l| l.min(wake)))
    }

    /// What the run achieved. `sent` and `received` are the bytes on the wire.
    pub fn report(&self, core: &Core, sent: u64, received: u64) -> RunReport {
        let unreached = self
            .configured
            .iter()
            .filter_map(|(addr, reach)| match reach {
                Reach::Reached => None,
                Reach::Failed(e) => Some((addr.clone(), e.clone())),
                Reach::NotYet => Some((
                    addr.clone(),
                    DialError::Unreachable("no answer within the wait".into()),
                )),
            })
            .collect();
        let problem = if self.ever_connected {
            None
        } else if !self.configured.is_empty() {
            Some(RunProblem::NoPeerConnected)
        } else if self.others_may_come && self.found.is_empty() {
            Some(RunProblem::NoPeerFound {
                secs: CONNECT_DEADLINE.as_secs(),
            })
        } else if self.others_may_come {
            Some(RunProblem::NoPeerConnected)
        } else {
            Some(RunProblem::NoPeerConfigured)
        };
        let found = self
            .found
            .iter()
            .map(|(node, addr, reach)| Found {
                node: node.clone(),
                addr: addr.clone(),
                unreached: match reach {
                    Reach::Reached => None,
                    Reach::Failed(e) => Some(e.clone()),
                    Reach::NotYet => {
                        Some(DialError::Unreachable("no answer within the wait".into()))
                    }
                },
            })
            .collect();
        let storages = core
            .storages()
            .iter()
            .enumerate()
            .map(|(i, name)| {
                let rec = core.record(i);
                let missing: Vec<_> = rec.seen.difference(&rec.synced_with).cloned().collect();
                let state = if rec.seen.is_empty() {
                    StorageState::NotShared
                } else if missing.is_empty() {
                    StorageState::Synced
                } else {
                    StorageState::Failed {
                        missing,
                        why: rec.last_error.clone(),
                    }
                };
                StorageReport {
                    name: name.clone(),
                    state,
                    with: rec.synced_with.iter().cloned().collect(),
                    moved: rec.moved,
                }
            })
            .collect();
        RunReport {
            problem,
            storages,
            unreached,
            found,
            sent,
            received,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::NodeId;
    use crate::run::RunProblem;

    fn core() -> Core {
        Core::new(NodeId::new("me").unwrap(), vec!["docs".into()], false)
    }

    /// Regression: with no `peers` and discovery off the run waited its whole 15 s.
    #[test]
    fn with_nobody_to_wait_for_the_run_ends_at_once() {
        let t0 = Instant::now();
        let mut c = core();
        let mut os = OneShot::new(t0, Vec::new(), false, 1);
        os.step(t0, &mut c, false);
        assert!(os.is_finished());
        let r = os.report(&c, 0, 0);
        assert_eq!(r.problem, Some(RunProblem::NoPeerConfigured));
        assert!(!r.ok());
    }

    /// Regression: the wait's deadline was `last_joined + CONNECT_WINDOW` even before any
    /// peer had joined, a time past after 5 s, so the thread slept 0 and spun until 15 s.
    /// Whatever happens, a step at `now` never leaves a wake-up at or before `now`.
    #[test]
    fn a_step_never_leaves_a_wake_up_in_the_past() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut x: u64 = 0x2545_F491_4F6C_DD1D;
        for round in 0..200 {
            let mut c = core();
            let configured = vec!["a:1".to_owned(), "b:2".to_owned()];
            let mut os = OneShot::new(t0, configured, round % 2 == 0, 1);
            let mut now = t0;
            while !os.is_finished() && now < t0 + Duration::from_secs(30) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                match x % 7 {
                    0 => os.peer_joined(now, &NodeId::new("b").unwrap()),
                    1 => os.dial_result("a:1", Err(DialError::Unreachable("refused".into()))),
                    2 => os.discovered(now, NodeId::new("c").unwrap(), "c:3".into()),
                    3 => os.dial_result("c:3", Ok(())),
                    _ => {}
                }
                os.step(now, &mut c, false);
                if let Some(w) = os.next_wakeup() {
                    assert!(w > now, "round {round}: wake-up {w:?} not after {now:?}");
                    // Sleep as the thread would, or be woken earlier by an event.
                    now = if x % 3 == 0 { w } else { now + ms(x % 700) };
                } else {
                    now += ms(100);
                }
            }
        }
    }

    #[test]
    fn the_wait_ends_when_every_configured_peer_is_reached() {
        let t0 = Instant::now();
        let mut c = core();
        let mut os = OneShot::new(t0, vec!["a:1".into()], false, 1);
        os.step(t0, &mut c, false);
        assert_eq!(os.next_wakeup(), Some(t0 + CONNECT_DEADLINE));
        os.peer_joined(t0, &NodeId::new("b").unwrap());
        os.dial_result("a:1", Ok(()));
        os.step(t0, &mut c, false);
        assert_eq!(os.next_wakeup(), None, "the wait is over");
        assert!(c.has_want(0), "the storage is claimed at once");
    }

    /// With discovery on, everyone known being here ends the wait only once announcements
    /// had time to arrive; a node announced meanwhile is waited for too.
    #[test]
    fn with_discovery_the_wait_listens_first_and_waits_for_the_announced() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut c = core();
        let mut os = OneShot::new(t0, vec!["a:1".into()], true, 1);
        os.peer_joined(t0, &NodeId::new("b").unwrap());
        os.dial_result("a:1", Ok(()));
        os.step(t0, &mut c, false);
        assert_eq!(os.next_wakeup(), Some(t0 + DISCOVERY_LISTEN));
        assert!(!c.has_want(0));
        let t1 = t0 + ms(500);
        os.discovered(t1, NodeId::new("c").unwrap(), "198.18.0.3:1".into());
        os.step(t0 + DISCOVERY_LISTEN, &mut c, false);
        assert!(!c.has_want(0), "c was announced and is not here yet");
        let t2 = t0 + DISCOVERY_LISTEN + ms(100);
        os.dial_result("198.18.0.3:1", Ok(()));
        os.peer_joined(t2, &NodeId::new("c").unwrap());
        os.step(t2, &mut c, false);
        assert_eq!(os.next_wakeup(), None, "the wait is over");
        assert!(c.has_want(0));
        let r = os.report(&c, 0, 0);
        assert_eq!(r.found.len(), 1);
        assert_eq!(r.found[0].unreached, None);
    }

    #[test]
    fn with_discovery_and_nobody_the_run_says_nobody_was_found() {
        let t0 = Instant::now();
        let mut c = core();
        let mut os = OneShot::new(t0, Vec::new(), true, 1);
        os.step(t0, &mut c, false);
        assert!(!os.is_finished());
        os.step(t0 + CONNECT_DEADLINE, &mut c, false);
        assert!(os.is_finished());
        let r = os.report(&c, 0, 0);
        assert!(
            matches!(r.problem, Some(RunProblem::NoPeerFound { .. })),
            "{r:?}"
        );
        assert!(!r.ok());
    }

    #[test]
    fn without_any_peer_the_run_ends_at_the_deadline_naming_the_configured_ones() {
        let t0 = Instant::now();
        let mut c = core();
        let mut os = OneShot::new(t0, vec!["a:1".into()], true, 1);
        os.dial_result("a:1", Err(DialError::OwnNodeId(NodeId::new("me").unwrap())));
        os.step(
            t0 + CONNECT_DEADLINE - Duration::from_millis(1),
            &mut c,
            false,
        );
        assert!(!os.is_finished());
        os.step(t0 + CONNECT_DEADLINE, &mut c, false);
        assert!(os.is_finished());
        let r = os.report(&c, 0, 0);
        assert_eq!(r.problem, Some(RunProblem::NoPeerConnected));
        assert_eq!(
            r.unreached,
            vec![(
                "a:1".to_owned(),
                DialError::OwnNodeId(NodeId::new("me").unwrap())
            )]
        );
    }
}
