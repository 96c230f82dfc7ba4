//! `net`'s limits on what peers may hold: accepting within the peer limit and out of
//! descriptors (a reserve descriptor, a retry timer), the reserve for configured peers, a
//! second node under a linked node id, and the clock a peer says it has; plus the
//! once-a-minute stamps their warnings share.

use std::io;
use std::net::IpAddr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::admit::Verdict;
use super::conn::Conn;
use super::handle::ConnId;
use super::{Net, Timer, ACCEPT_RETRY, CONFLICTS_REMEMBERED, LOG_EVERY, MAX_PEERS, SETTLE_TIME};
use crate::model::NodeId;

/// A peer whose clock differs from ours by more than this is named in a warning: where no
/// history decides (a first sync of a path both nodes have), the newer mtime keeps the name
/// and the other version becomes a conflict copy, so a clock far off picks the wrong one.
pub const CLOCK_SKEW_WARN: Duration = Duration::from_secs(60);

pub(super) fn unix_ms(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_millis()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_millis()).unwrap_or(i64::MAX),
    }
}

/// The warning for a peer whose clock read `theirs_ms` when ours read `ours_ms`, if they
/// differ by more than [`CLOCK_SKEW_WARN`] (the hello's time in flight is far below it).
pub(super) fn clock_skew_warning(node: &NodeId, theirs_ms: i64, ours_ms: i64) -> Option<String> {
    let skew = i128::from(theirs_ms) - i128::from(ours_ms);
    if skew.unsigned_abs() <= CLOCK_SKEW_WARN.as_millis() {
        return None;
    }
    let secs = skew.unsigned_abs() / 1000;
    let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    let way = if skew > 0 { "ahead of" } else { "behind" };
    Some(format!(
        "the clock of {node} is {h}h{m:02}m{s:02}s {way} ours: edits are ordered by their \
         history, but where there is none (a path both nodes had before they first synchronized) \
         the newer modification time keeps the name and the other version becomes a conflict \
         copy; set both clocks right (NTP)"
    ))
}

/// Whether to log now, given when it was last logged; updates the stamp if so.
pub(super) fn log_due(last: &mut Option<Instant>, now: Instant) -> bool {
    let due = last.is_none_or(|t| now >= t + LOG_EVERY);
    if due {
        *last = Some(now);
    }
    due
}

/// An address as one host: IPv4 connections to a dual-stack listener arrive mapped.
pub(super) fn host(ip: IpAddr) -> IpAddr {
    ip.to_canonical()
}

impl Net {
    pub(super) fn accept(&mut self) {
        if !self.accepting {
            return;
        }
        loop {
            let Some(listener) = self.listener.as_ref() else {
                return;
            };
            match listener.accept() {
                Ok((stream, addr)) => {
                    let id = self.next_id;
                    // A stranger that could not be linked anyway costs no handshake; a
                    // configured peer's address may use the reserve above the limit.
                    let reserved = self.is_configured_ip(addr.ip());
                    if self.peer_limit_reached(reserved) {
                        if log_due(&mut self.limit_logged, Instant::now()) {
                            log::warn!(
                                "refusing connections from strangers: too many peers \
                                 ({MAX_PEERS}) (logged once a minute)"
                            );
                        }
                        drop(stream);
                        continue;
                    }
                    match self.admission.admit(id, addr.ip(), Instant::now()) {
                        Verdict::Refuse { why, log } => {
                            if log {
                                log::warn!(
                                    "refusing connections from {}: {why} (logged once a minute)",
                                    addr.ip()
                                );
                            }
                            // Dropped at once: no buffer, no handshake, no timer.
                            drop(stream);
                            continue;
                        }
                        Verdict::Admit { evict } => {
                            if let Some(old) = evict {
                                log::debug!(
                                    "closing connection {old}: the oldest of {} unfinished handshakes",
                                    self.admission.pending()
                                );
                                self.close(old, "too many unfinished handshakes");
                            }
                        }
                    }
                    log::debug!("accepted connection from {addr}");
                    self.register(stream, addr, None);
                    if !self.conns.contains_key(&id) {
                        self.admission.finished(id);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::Interrupted | io::ErrorKind::ConnectionAborted
                    ) =>
                {
                    continue
                }
                Err(e) => {
                    let out_of_fds = matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE));
                    if out_of_fds {
                        if log_due(&mut self.fds_logged, Instant::now()) {
                            log::warn!(
                                "out of file descriptors ({e}): refusing incoming connections \
                                 until some are free (logged once a minute)"
                            );
                        }
                        if self.refuse_waiting() {
                            continue;
                        }
                    } else {
                        log::warn!("accept failed: {e}");
                    }
                    // Not spinning on it, but not waiting for an event either: readiness
                    // is edge-triggered, and what waits in the backlog would wait for ever.
                    if !self.accept_retry {
                        self.accept_retry = true;
                        self.set_timer(Instant::now() + ACCEPT_RETRY, Timer::Accept);
                    }
                    return;
                }
            }
        }
    }

    /// Out of descriptors: closes the reserve, accepts one waiting connection and closes it
    /// at once, then takes the reserve back. Returns whether one was refused (so the
    /// backlog can be drained on); false when there is no reserve or nothing came of it.
    pub(super) fn refuse_waiting(&mut self) -> bool {
        let Some(reserve) = self.reserve.take() else {
            return false;
        };
        drop(reserve);
        let refused = match self.listener.as_ref().map(|l| l.accept()) {
            Some(Ok((stream, addr))) => {
                log::debug!("refused connection from {addr}: out of file descriptors");
                drop(stream);
                true
            }
            _ => false,
        };
        // Another thread may have taken the descriptor meanwhile: then the retry timer
        // tries again, and so does the next shortage.
        self.reserve = std::fs::File::open("/dev/null").ok();
        refused && self.reserve.is_some()
    }

    /// Configured peer addresses (not discovered ones): the reserve above [`MAX_PEERS`].
    pub(super) fn configured(&self) -> usize {
        self.peers.iter().filter(|p| p.discovered.is_none()).count()
    }

    /// Whether `ip` is the address of a configured peer.
    pub(super) fn is_configured_ip(&self, ip: IpAddr) -> bool {
        self.peers
            .iter()
            .any(|p| p.discovered.is_none() && p.resolved.is_some_and(|a| host(a.ip()) == host(ip)))
    }

    /// Whether connection `id` goes to a configured peer: dialled for a configured
    /// address, or coming from a configured peer's address.
    pub(super) fn is_configured_conn(&self, id: ConnId) -> bool {
        let Some(c) = self.conns.get(&id) else {
            return false;
        };
        match c.dialed {
            Some(i) => self.peers.get(i).is_some_and(|p| p.discovered.is_none()),
            None => self.is_configured_ip(c.addr.ip()),
        }
    }

    /// Whether one more peer would be too many. A crowd of strangers must not lock friends
    /// out: configured peers have a reserve above [`MAX_PEERS`], one place each.
    pub(super) fn peer_limit_reached(&self, configured: bool) -> bool {
        let limit = if configured {
            MAX_PEERS + self.configured()
        } else {
            MAX_PEERS
        };
        self.by_node.len() >= limit
    }

    /// Whether connection `id`, whose `Hello` names `node`, conflicts with the connection
    /// `node` already has: another node using the same id. Returns the reason to refuse it
    /// with, after logging it (once a minute per id).
    ///
    /// Another listening port is another node (a node sends the same port on every
    /// connection). Another address is one only once the first connection has settled:
    /// two nodes dialling each other at once may see each other at different addresses
    /// (a host with several), and the duplicate rule settles those quietly.
    pub(super) fn id_conflict(&mut self, id: ConnId, node: &NodeId) -> Option<String> {
        let old = self.conns.get(self.by_node.get(node)?)?;
        let new = self.conns.get(&id)?;
        let other_port = old.hello_port != new.hello_port;
        let other_host = host(old.addr.ip()) != host(new.addr.ip());
        let settled = old.since.elapsed() >= SETTLE_TIME;
        let conflict = other_port || (other_host && settled);
        if !conflict {
            return None;
        }
        let at = |c: &Conn| match c.hello_port {
            0 => format!("{} (not listening)", c.addr),
            p => format!("{} (listening on port {p})", c.addr),
        };
        let (old_at, new_at) = (at(old), at(new));
        let now = Instant::now();
        if self.conflicts_logged.len() >= CONFLICTS_REMEMBERED {
            self.conflicts_logged.retain(|_, t| now < *t + LOG_EVERY);
            if self.conflicts_logged.len() >= CONFLICTS_REMEMBERED {
                self.conflicts_logged.clear();
            }
        }
        let mut last = self.conflicts_logged.get(node).copied();
        if log_due(&mut last, now) {
            self.conflicts_logged.insert(node.clone(), now);
            log::warn!(
                "node id conflict: {node} is connected from {old_at}, and a connection from \
                 {new_at} claims the same id: refusing it (node ids must be unique in a group; \
                 logged once a minute per id)"
            );
        }
        Some(format!(
            "node id conflict: {node} is already connected from {old_at} (node ids must be \
             unique in a group: set node_id)"
        ))
    }
}

#[cfg(test)]
mod clock_tests {
    use super::*;

    #[test]
    fn a_clock_far_off_is_named_either_way_and_a_near_one_is_not() {
        let n = NodeId::new("pi").unwrap();
        let now = 1_796_601_600_000;
        assert_eq!(clock_skew_warning(&n, now + 59_000, now), None);
        assert_eq!(clock_skew_warning(&n, now - 60_000, now), None);
        let ahead = clock_skew_warning(&n, now + 3_723_000, now).unwrap();
        assert!(ahead.contains("pi is 1h02m03s ahead of ours"), "{ahead}");
        let behind = clock_skew_warning(&n, 0, now).unwrap();
        assert!(behind.contains("behind ours"), "{behind}");
        // A hello from 2100, or from before 1970: no overflow.
        assert!(clock_skew_warning(&n, i64::MAX, i64::MIN).is_some());
        assert!(unix_ms(UNIX_EPOCH - Duration::from_secs(1)) == -1000);
    }
}
