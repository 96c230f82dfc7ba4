//! The election machine: which storages this node wants synchronized, its claim to lead
//! one, the grant it gave another claimant, and the back-off between attempts. Sans-I/O: it
//! sends election messages through [`Io`] and reports to [`Core`](super::Core) what it
//! decided ([`ElectionEvent`]); it never starts a session itself.
//!
//! A node grants at most one claim at a time and claims only while it has no session, no
//! claim and no grant, so two sessions never share a node. See the `core` module doc for
//! the whole scheme.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use super::{Ctx, Io};
use crate::model::NodeId;
use crate::proto::ElectionMsg;

/// A claim that has not been answered by everyone within this is withdrawn.
const CLAIM_TIMEOUT: Duration = Duration::from_secs(10);
/// A grant whose claimant does not start the session within this is void.
const GRANT_LEASE: Duration = Duration::from_secs(15);
/// A grant held this long while another node claims is taken back for that node: a
/// claimant collects its grants in a few round trips, so one that holds a grant this long
/// is waiting for a slow node or squatting, and must not keep the others waiting.
const GRANT_CONTESTED: Duration = Duration::from_secs(3);
/// How long a node whose grant was taken back is denied. A grant taken back is what a
/// slow but honest claimant also suffers, so it costs this and no more; one let lapse
/// (neither used nor released, which no honest node does) is a strike, and each strike
/// doubles the pause, up to [`BENCH_MAX`]. Strikes are forgiven after [`BENCH_MAX`] without
/// one, and when the node really starts a session: an honest node that was unlucky long
/// ago must not be held off for minutes now (the torture test found that).
const BENCH_FIRST: Duration = Duration::from_secs(2);
const BENCH_MAX: Duration = Duration::from_secs(600);
/// A peer that leaves a claim unanswered for [`GRANT_CONTESTED`] is "silent": it is left
/// out of this node's claims, and its own claims are denied, for this long. An honest node
/// answers a claim at once (a grant or a deny); one that does not is broken or hostile, and
/// waiting for it would cost the claim every grant it holds (they are taken back after
/// [`GRANT_CONTESTED`]), so no session with the others would ever start. Being wrongly
/// thought silent costs a slow node little: any answer it sends, however late, ends it,
/// and so does reconnecting.
const SILENT_PAUSE: Duration = Duration::from_secs(60);
/// A daemon whose claims one peer denied this many times in a row synchronizes without it
/// for [`REFUSING_PAUSE`]: a peer in a long session (or one that denies everything) must
/// not keep this node from its other peers. Its own claims are still granted, and the
/// storage is claimed again with it once the pause is over.
const DENIED_MAX: u32 = 4;
const REFUSING_PAUSE: Duration = Duration::from_secs(30);
/// Most nodes remembered as benched (each costs a node id): past it the earliest to
/// return are forgotten first.
const MAX_BENCHED: usize = 256;
/// How long a wanted storage must stay without any connected holder before the node
/// concludes that no peer has it.
const ALONE_GRACE: Duration = Duration::from_secs(2);
/// Failed attempts at one trigger before a daemon gives it up (until the next trigger).
const MAX_ATTEMPTS: u32 = 8;
/// A daemon whose sessions of a storage keep being aborted (peers killed, links lost: causes
/// that pass) never gives the storage up: past [`MAX_ATTEMPTS`] it tries again this often.
/// Giving up left two nodes apart for good, with no change left to trigger them (the
/// torture test found it). Sessions that end with failed files are different: what failed
/// (no space, a name the file system folds) fails again, so those are given up.
const ABORTED_RETRY: Duration = Duration::from_secs(60);
/// The same for a one-shot run: someone waits for it, and its own policy claims a storage
/// again a few times anyway (a peer refusing a storage, e.g. for a root that is not the one
/// synchronized before, refuses it for as long as the person takes to fix it).
pub(crate) const ONESHOT_MAX_ATTEMPTS: u32 = 2;

/// What the election decided, for [`Core`](super::Core) to act on.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum ElectionEvent {
    /// Every node asked granted the claim `ticket` for `storage`: lead a session with them.
    Lead {
        ticket: u64,
        storage: usize,
        granted: BTreeSet<NodeId>,
    },
    /// No connected peer has had `storage` for a while: the want is dropped.
    NoPeer(usize),
}

/// A storage this node wants synchronized.
struct Want {
    /// When it was last triggered: a session whose scan came after this satisfies it.
    since: Instant,
    attempts: u32,
    not_before: Instant,
    /// Since when no connected peer has the storage.
    alone_since: Option<Instant>,
    /// The claim being made left out a silent or refusing holder, whose pause ends then: a
    /// session without it does not satisfy the want, which is claimed again at that time.
    left_out: Option<Instant>,
}

struct Claim {
    ticket: u64,
    storage: usize,
    waiting: BTreeSet<NodeId>,
    granted: BTreeSet<NodeId>,
    started: Instant,
}

struct Granted {
    to: NodeId,
    ticket: u64,
    storage: usize,
    since: Instant,
    expires: Instant,
}

/// A node that held a grant without using it while others waited.
struct Bench {
    until: Instant,
    strikes: u32,
}

pub(crate) struct Election {
    wants: BTreeMap<usize, Want>,
    claim: Option<Claim>,
    grant: Option<Granted>,
    benched: BTreeMap<NodeId, Bench>,
    /// A daemon's: aborted sessions are retried for as long as it runs.
    persistent: bool,
    /// Peers that let a claim go unanswered, until when they are left out of claims.
    /// Only connected peers are here: a peer going away is forgotten.
    silent: BTreeMap<NodeId, Instant>,
    /// Denials of this daemon's claims in a row, by peer; and peers left out of its claims
    /// for denying too many, until when. Connected peers only.
    denials: BTreeMap<NodeId, u32>,
    refusing: BTreeMap<NodeId, Instant>,
    max_attempts: u32,
}

impl Default for Election {
    fn default() -> Election {
        Election {
            persistent: true,
            ..Election::new(MAX_ATTEMPTS)
        }
    }
}

impl Election {
    pub(crate) fn new(max_attempts: u32) -> Election {
        Election {
            wants: BTreeMap::new(),
            claim: None,
            grant: None,
            benched: BTreeMap::new(),
            persistent: false,
            silent: BTreeMap::new(),
            denials: BTreeMap::new(),
            refusing: BTreeMap::new(),
            max_attempts,
        }
    }

    pub(crate) fn is_idle(&self) -> bool {
        self.wants.is_empty() && self.claim.is_none() && self.grant.is_none()
    }

    pub(crate) fn has_want(&self, storage: usize) -> bool {
        self.wants.contains_key(&storage)
    }

    /// The storage of a grant to `from` for ticket `ticket`, if this node gave one.
    pub(crate) fn grant_for(&self, from: &NodeId, ticket: u64) -> Option<usize> {
        self.grant
            .as_ref()
            .filter(|g| g.to == *from && g.ticket == ticket)
            .map(|g| g.storage)
    }

    /// The granted session started: the grant is used up, and its holder's strikes are
    /// forgiven.
    pub(crate) fn take_grant(&mut self) {
        if let Some(g) = self.grant.take() {
            self.benched.remove(&g.to);
        }
    }

    /// `node` held a grant it did not use (`strikes`: 0 taken back, 1 let lapse): it is
    /// denied for a while, longer at each strike.
    fn bench(&mut self, node: &NodeId, strikes: u32, now: Instant) {
        if !self.benched.contains_key(node) && self.benched.len() >= MAX_BENCHED {
            self.benched.retain(|_, b| b.until > now);
            if self.benched.len() >= MAX_BENCHED {
                let first = self
                    .benched
                    .iter()
                    .min_by_key(|(_, b)| b.until)
                    .map(|(n, _)| n.clone());
                if let Some(n) = first {
                    self.benched.remove(&n);
                }
            }
        }
        let b = self.benched.entry(node.clone()).or_insert(Bench {
            until: now,
            strikes: 0,
        });
        if now >= b.until + BENCH_MAX {
            b.strikes = 0;
        }
        b.strikes = b.strikes.saturating_add(strikes);
        let pause = BENCH_FIRST
            .saturating_mul(1 << b.strikes.min(10))
            .min(BENCH_MAX);
        b.until = b.until.max(now + pause);
        // Once is what a slow claimant does; a lease let lapse is not.
        let level = if b.strikes >= 1 {
            log::Level::Warn
        } else {
            log::Level::Info
        };
        log::log!(
            level,
            "{node} held the lead of a storage without starting its session while others \
             waited; its claims are denied for {} s",
            pause.as_secs_f32()
        );
    }

    fn is_benched(&self, node: &NodeId, now: Instant) -> bool {
        self.benched.get(node).is_some_and(|b| now < b.until)
    }

    /// When [`Election::tick`] next has something to do. `in_session`: a session runs, so
    /// no new claim can start.
    pub(crate) fn next_deadline(&self, in_session: bool) -> Option<Instant> {
        let mut at: Option<Instant> = None;
        let mut min = |t: Instant| at = Some(at.map_or(t, |a: Instant| a.min(t)));
        if let Some(c) = &self.claim {
            min(c.started + CLAIM_TIMEOUT);
        }
        if let Some(g) = &self.grant {
            min(g.expires);
        }
        if !in_session && self.claim.is_none() && self.grant.is_none() {
            if let Some(w) = self.wants.values().map(|w| w.not_before).min() {
                min(w);
            }
        }
        at
    }

    /// `storage` should be synchronized, no sooner than `delay` from now.
    pub(crate) fn trigger_after(&mut self, storage: usize, now: Instant, delay: Duration) {
        let due = now + delay;
        let w = self.wants.entry(storage).or_insert(Want {
            since: now,
            attempts: 0,
            not_before: due,
            alone_since: None,
            left_out: None,
        });
        // A newer trigger is not absorbed by a session whose scan came before it.
        w.since = w.since.max(now);
        w.not_before = w.not_before.min(due);
        w.attempts = 0;
    }

    /// Gives up wanting `storage` (it cannot be scanned here).
    pub(crate) fn drop_want(&mut self, storage: usize) {
        self.wants.remove(&storage);
    }

    /// A peer went away: a grant to it is void, and a claim no longer waits for it (it may
    /// now be complete, which makes this node lead).
    pub(crate) fn peer_down(&mut self, node: &NodeId) -> Option<ElectionEvent> {
        if self.grant.as_ref().is_some_and(|g| g.to == *node) {
            self.grant = None;
        }
        self.silent.remove(node);
        self.denials.remove(node);
        self.refusing.remove(node);
        if let Some(c) = &mut self.claim {
            c.waiting.remove(node);
            c.granted.remove(node);
        }
        self.claim_progress()
    }

    /// Timeouts, and a new claim when this node is free. `busy`: a session runs.
    pub(crate) fn tick(
        &mut self,
        cx: &Ctx<'_>,
        busy: bool,
        now: Instant,
        io: &mut dyn Io,
    ) -> Vec<ElectionEvent> {
        if let Some(g) = self.grant.take_if(|g| now >= g.expires) {
            // A claimant either starts its session or releases its grants well within
            // the lease: one that lets it lapse held everyone else off for nothing.
            self.bench(&g.to, 1, now);
        }
        if self
            .claim
            .as_ref()
            .is_some_and(|c| now >= c.started + CLAIM_TIMEOUT)
        {
            log::debug!("claim not answered in time; withdrawing it");
            self.withdraw_claim(cx, now, io);
        }
        let mut events = Vec::new();
        if busy || self.claim.is_some() || self.grant.is_some() {
            return events;
        }
        let ready: Vec<usize> = self
            .wants
            .iter()
            .filter(|(_, w)| w.not_before <= now)
            .map(|(i, _)| *i)
            .collect();
        for i in ready {
            let name = &cx.storages[i];
            let mut holders = cx.peers.holders(name);
            self.silent.retain(|_, until| now < *until);
            self.refusing.retain(|_, until| now < *until);
            let pause = |n: &NodeId| self.silent.get(n).or(self.refusing.get(n)).copied();
            let mut left_out = None;
            if holders.iter().any(|n| pause(n).is_none()) {
                for n in &holders {
                    if let Some(until) = pause(n) {
                        left_out = Some(left_out.map_or(until, |l: Instant| l.min(until)));
                    }
                }
                holders.retain(|n| pause(n).is_none());
            }
            if holders.is_empty() {
                // A connection being replaced looks like a peer leaving and coming back: only
                // a storage that stays without peers for a moment has none.
                let Some(w) = self.wants.get_mut(&i) else {
                    continue;
                };
                match w.alone_since {
                    None => {
                        w.alone_since = Some(now);
                        w.not_before = now + ALONE_GRACE;
                    }
                    Some(t) if now >= t + ALONE_GRACE => {
                        self.wants.remove(&i);
                        events.push(ElectionEvent::NoPeer(i));
                    }
                    Some(t) => w.not_before = t + ALONE_GRACE,
                }
                continue;
            }
            if let Some(w) = self.wants.get_mut(&i) {
                w.alone_since = None;
                w.left_out = left_out;
            }
            let ticket = io.random().max(1);
            log::debug!("{name}: claiming the lead (ticket {ticket:016x})");
            for n in &holders {
                io.send(
                    n,
                    ElectionMsg::Claim {
                        ticket,
                        storage: name.clone(),
                    }
                    .into(),
                );
            }
            self.claim = Some(Claim {
                ticket,
                storage: i,
                waiting: holders,
                granted: BTreeSet::new(),
                started: now,
            });
            break;
        }
        events
    }

    /// Another node claims the lead of `storage`. `busy`: a session runs here.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn on_claim(
        &mut self,
        cx: &Ctx<'_>,
        from: &NodeId,
        ticket: u64,
        storage: &str,
        busy: bool,
        now: Instant,
        io: &mut dyn Io,
    ) {
        let deny = ElectionMsg::Deny { ticket }.into();
        let Some(i) = cx.storages.iter().position(|s| s == storage) else {
            return io.send(from, deny);
        };
        if busy || self.is_benched(from, now) || self.is_silent(from, now) {
            return io.send(from, deny);
        }
        if let Some(g) = &self.grant {
            if g.to == *from && g.ticket == ticket {
                return io.send(from, ElectionMsg::Grant { ticket }.into());
            }
            // The holder claiming again, with a new ticket, is not another node waiting:
            // taking the grant back for it would hand it straight back, and a squatter
            // re-claiming faster than anyone else could hold the grant for ever.
            if g.to == *from || now < g.since + GRANT_CONTESTED {
                return io.send(from, deny);
            }
            // Held too long while another node waits: taken back (the holder hears a
            // `Deny` and withdraws; a session it starts anyway is refused for want of a
            // grant), and given to the one that asks.
            if let Some(old) = self.grant.take() {
                io.send(&old.to, ElectionMsg::Deny { ticket: old.ticket }.into());
                self.bench(&old.to, 0, now);
            }
        }
        if self.claim.is_some() {
            if from < cx.me {
                // A claimant with priority: step aside for it.
                log::debug!("{storage}: yielding the lead to {from}");
                self.withdraw_claim(cx, now, io);
            } else {
                return io.send(from, deny);
            }
        }
        self.grant = Some(Granted {
            to: from.clone(),
            ticket,
            storage: i,
            since: now,
            expires: now + GRANT_LEASE,
        });
        io.send(from, ElectionMsg::Grant { ticket }.into());
    }

    pub(crate) fn on_grant(
        &mut self,
        from: &NodeId,
        ticket: u64,
        io: &mut dyn Io,
    ) -> Option<ElectionEvent> {
        self.answered(from);
        self.denials.remove(from);
        match &mut self.claim {
            Some(c) if c.ticket == ticket && c.waiting.contains(from) => {
                c.waiting.remove(from);
                c.granted.insert(from.clone());
                self.claim_progress()
            }
            _ => {
                // A grant for a claim we no longer hold: free the granter at once.
                io.send(from, ElectionMsg::Release { ticket }.into());
                None
            }
        }
    }

    pub(crate) fn on_deny(
        &mut self,
        cx: &Ctx<'_>,
        from: &NodeId,
        ticket: u64,
        now: Instant,
        io: &mut dyn Io,
    ) {
        self.answered(from);
        if self.claim.as_ref().is_some_and(|c| {
            c.ticket == ticket && (c.waiting.contains(from) || c.granted.contains(from))
        }) {
            log::debug!("claim denied by {from}; retrying later");
            if self.persistent {
                let n = self.denials.entry(from.clone()).or_insert(0);
                *n += 1;
                if *n >= DENIED_MAX {
                    self.denials.remove(from);
                    self.refusing.insert(from.clone(), now + REFUSING_PAUSE);
                    log::info!(
                        "{from} denied {DENIED_MAX} claims in a row; synchronizing without it \
                         for {} s",
                        REFUSING_PAUSE.as_secs()
                    );
                }
            }
            self.withdraw_claim(cx, now, io);
        }
    }

    pub(crate) fn on_release(&mut self, from: &NodeId, ticket: u64) {
        if self.grant_for(from, ticket).is_some() {
            self.grant = None;
        }
    }

    /// `node` answered a claim of ours, however late (a node that was stopped or swapping
    /// answers what it missed when it runs again): it is not silent.
    fn answered(&mut self, node: &NodeId) {
        if self.silent.remove(node).is_some() {
            log::info!("{node} answers claims again");
        }
    }

    fn is_silent(&self, node: &NodeId, now: Instant) -> bool {
        self.silent.get(node).is_some_and(|&until| now < until)
    }

    /// Gives up the current claim: releases everyone asked, backs off. Those asked long
    /// ago that never answered are silent.
    fn withdraw_claim(&mut self, cx: &Ctx<'_>, now: Instant, io: &mut dyn Io) {
        let Some(c) = self.claim.take() else { return };
        if now >= c.started + GRANT_CONTESTED {
            for n in &c.waiting {
                log::warn!(
                    "{n} did not answer a claim to lead {} within {} s; it is left out of \
                     this node's sessions for {} s",
                    cx.storages[c.storage],
                    GRANT_CONTESTED.as_secs(),
                    SILENT_PAUSE.as_secs()
                );
                self.silent.insert(n.clone(), now + SILENT_PAUSE);
            }
        }
        for n in c.waiting.iter().chain(c.granted.iter()) {
            io.send(n, ElectionMsg::Release { ticket: c.ticket }.into());
        }
        let rank = cx.peers.rank(cx.me);
        let jitter = io.random() % 100;
        if let Some(w) = self.wants.get_mut(&c.storage) {
            w.attempts += 1;
            // Smaller ids come back sooner: the claimant with priority wins the next round.
            let base = 40 + 60 * u64::from(rank);
            let factor = 1u64 << w.attempts.min(5);
            w.not_before = now + Duration::from_millis(base * factor + jitter);
        }
    }

    /// Leads once every participant granted; ends a claim left without participants.
    fn claim_progress(&mut self) -> Option<ElectionEvent> {
        if !self.claim.as_ref()?.waiting.is_empty() {
            return None;
        }
        let c = self.claim.take()?;
        if c.granted.is_empty() {
            // Everyone we asked went away; the want stays and is retried by tick.
            return None;
        }
        Some(ElectionEvent::Lead {
            ticket: c.ticket,
            storage: c.storage,
            granted: c.granted,
        })
    }

    /// A session of `storage` that this node took part in completed (`failed`: not every
    /// file moved). A trigger older than its scan is satisfied; a failure is retried with
    /// back-off, a few times at most — the next session only moves what is missing.
    pub(crate) fn session_finished(
        &mut self,
        storage: usize,
        scanned_at: Instant,
        failed: bool,
        now: Instant,
    ) {
        if failed {
            if let Some(w) = self.wants.get_mut(&storage) {
                w.attempts += 1;
                if w.attempts > self.max_attempts {
                    self.wants.remove(&storage);
                } else {
                    w.not_before = now + Duration::from_millis(250 << w.attempts.min(6));
                }
            }
        } else if let Some(w) = self.wants.get_mut(&storage) {
            if w.since > scanned_at {
                return;
            }
            match w.left_out.take() {
                // Synchronized with the others: the one left out is asked when its pause
                // ends.
                Some(until) => {
                    w.attempts = 0;
                    w.not_before = until.max(now);
                }
                None => {
                    self.wants.remove(&storage);
                }
            }
        }
    }

    /// A session of `storage` was aborted: whoever is left retries it (with back-off), so
    /// the remaining nodes converge without the one that went away.
    pub(crate) fn session_aborted(&mut self, storage: usize, now: Instant) {
        let w = self.wants.entry(storage).or_insert(Want {
            since: now,
            attempts: 0,
            not_before: now,
            alone_since: None,
            left_out: None,
        });
        w.attempts += 1;
        if w.attempts > self.max_attempts {
            if !self.persistent {
                self.wants.remove(&storage);
                return;
            }
            if w.attempts == self.max_attempts + 1 {
                log::info!(
                    "a session was aborted {} times in a row; trying again every {} s",
                    self.max_attempts + 1,
                    ABORTED_RETRY.as_secs()
                );
            }
            w.attempts = self.max_attempts + 2;
            w.not_before = now + ABORTED_RETRY;
            return;
        }
        let factor = 1u64 << w.attempts.min(6);
        w.not_before = now + Duration::from_millis(250 * factor);
    }
}
