//! Who may start a handshake: limits on incoming connections that have not finished one.
//! Pure (time passed in), so the policy is tested without sockets.
//!
//! A handshake costs the responder two X25519 operations, slow on an ARM11, and a connection
//! that never finishes one holds a socket and a buffer for the handshake deadline. So:
//! - each source address (an IPv6 /64 counts as one) starts at most [`BURST`] handshakes at
//!   once and [`PER_SECOND`] a second after that, and has at most [`PENDING_PER_ADDR`] under
//!   way;
//! - at most [`PENDING_MAX`] are under way in all; a newcomer beyond that evicts the oldest
//!   one, so a crowd of strangers that never finish cannot keep out a peer that finishes in
//!   milliseconds.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use super::handle::ConnId;

/// Handshakes a source may start at once...
pub const BURST: u32 = 16;
/// ...and per second after that.
pub const PER_SECOND: u32 = 4;
/// Unfinished handshakes one source may have.
pub const PENDING_PER_ADDR: u32 = 8;
/// Unfinished incoming handshakes in all.
pub const PENDING_MAX: usize = 64;
/// Sources remembered; beyond this the idle ones are forgotten (a bound on memory).
const SOURCES_MAX: usize = 4096;
/// A source refused again within this time is not logged again.
const LOG_EVERY: Duration = Duration::from_secs(60);

/// What to do with a new incoming connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Take it; if `evict` is set, close that (oldest unfinished) connection first.
    Admit { evict: Option<ConnId> },
    /// Refuse it: its source is over its rate or its share. `log`: say so (once a minute).
    Refuse { why: Refusal, log: bool },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    Rate,
    Pending,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::Rate => write!(
                f,
                "more than {BURST} handshakes at once or {PER_SECOND} a second"
            ),
            Refusal::Pending => write!(f, "{PENDING_PER_ADDR} handshakes already under way"),
        }
    }
}

struct Source {
    /// Tokens in thousandths, so refills need no floating point.
    milli: u64,
    at: Instant,
    pending: u32,
    logged: Option<Instant>,
}

#[derive(Default)]
pub struct Admission {
    sources: HashMap<IpAddr, Source>,
    /// Unfinished incoming connections, oldest first.
    pending: VecDeque<(ConnId, IpAddr)>,
}

/// An IPv6 host can use a whole /64: it counts as one source.
fn source_of(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

impl Admission {
    pub fn admit(&mut self, conn: ConnId, ip: IpAddr, now: Instant) -> Verdict {
        let key = source_of(ip);
        if self.sources.len() >= SOURCES_MAX && !self.sources.contains_key(&key) {
            self.forget_idle(now);
        }
        let s = self.sources.entry(key).or_insert(Source {
            milli: u64::from(BURST) * 1000,
            at: now,
            pending: 0,
            logged: None,
        });
        let elapsed = now.saturating_duration_since(s.at);
        let refill = elapsed.as_millis().min(u128::from(u32::MAX)) as u64 * u64::from(PER_SECOND);
        s.milli = (s.milli + refill).min(u64::from(BURST) * 1000);
        s.at = now;
        let why = if s.pending >= PENDING_PER_ADDR {
            Some(Refusal::Pending)
        } else if s.milli < 1000 {
            Some(Refusal::Rate)
        } else {
            None
        };
        if let Some(why) = why {
            let log = s.logged.is_none_or(|t| now >= t + LOG_EVERY);
            if log {
                s.logged = Some(now);
            }
            return Verdict::Refuse { why, log };
        }
        s.milli -= 1000;
        s.pending += 1;
        let evict = if self.pending.len() >= PENDING_MAX {
            self.pending.front().map(|&(c, _)| c)
        } else {
            None
        };
        if let Some(old) = evict {
            self.finished(old);
        }
        self.pending.push_back((conn, key));
        Verdict::Admit { evict }
    }

    /// The connection finished its handshake or closed; unknown ids are ignored.
    pub fn finished(&mut self, conn: ConnId) {
        let Some(i) = self.pending.iter().position(|&(c, _)| c == conn) else {
            return;
        };
        if let Some((_, key)) = self.pending.remove(i) {
            if let Some(s) = self.sources.get_mut(&key) {
                s.pending = s.pending.saturating_sub(1);
            }
        }
    }

    /// Unfinished incoming handshakes now.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Drops sources with nothing under way whose tokens are back to full (they would start
    /// afresh anyway); if that is not enough, every source with nothing under way.
    fn forget_idle(&mut self, now: Instant) {
        let full = Duration::from_millis(u64::from(BURST) * 1000 / u64::from(PER_SECOND));
        self.sources
            .retain(|_, s| s.pending > 0 || now.saturating_duration_since(s.at) < full);
        if self.sources.len() >= SOURCES_MAX {
            self.sources.retain(|_, s| s.pending > 0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn a_source_gets_its_burst_then_its_rate() {
        let mut a = Admission::default();
        let t0 = Instant::now();
        let x = ip("198.18.0.7");
        for c in 0..BURST as u64 {
            assert!(matches!(a.admit(c, x, t0), Verdict::Admit { evict: None }));
            a.finished(c);
        }
        assert_eq!(
            a.admit(100, x, t0),
            Verdict::Refuse {
                why: Refusal::Rate,
                log: true
            }
        );
        // Logged once, not for every refusal.
        assert_eq!(
            a.admit(101, x, t0),
            Verdict::Refuse {
                why: Refusal::Rate,
                log: false
            }
        );
        // A quarter of a second later, one more token.
        let t1 = t0 + Duration::from_millis(1000 / u64::from(PER_SECOND));
        assert!(matches!(a.admit(102, x, t1), Verdict::Admit { .. }));
        assert!(matches!(a.admit(103, x, t1), Verdict::Refuse { .. }));
        // Another source is not affected.
        assert!(matches!(
            a.admit(104, ip("198.18.0.8"), t1),
            Verdict::Admit { .. }
        ));
    }

    #[test]
    fn unfinished_handshakes_are_capped_per_source_and_freed_when_done() {
        let mut a = Admission::default();
        let t = Instant::now();
        let x = ip("198.18.0.7");
        for c in 0..u64::from(PENDING_PER_ADDR) {
            assert!(matches!(a.admit(c, x, t), Verdict::Admit { .. }));
        }
        assert!(matches!(
            a.admit(50, x, t),
            Verdict::Refuse {
                why: Refusal::Pending,
                ..
            }
        ));
        a.finished(3);
        a.finished(3); // twice: no effect
        assert!(matches!(a.admit(51, x, t), Verdict::Admit { .. }));
        assert_eq!(a.pending(), PENDING_PER_ADDR as usize);
    }

    #[test]
    fn a_crowd_of_strangers_evicts_its_oldest_never_refuses_a_newcomer() {
        let mut a = Admission::default();
        let t = Instant::now();
        for host in 0..PENDING_MAX as u32 {
            let addr = IpAddr::V4(std::net::Ipv4Addr::from(0xC612_0000 + host));
            let admitted = a.admit(u64::from(host), addr, t);
            assert!(matches!(admitted, Verdict::Admit { evict: None }));
        }
        // A good peer arrives while every slot is taken: the oldest stranger goes.
        assert_eq!(
            a.admit(1000, ip("198.19.0.1"), t),
            Verdict::Admit { evict: Some(0) }
        );
        assert_eq!(a.pending(), PENDING_MAX);
        a.finished(1000);
        assert_eq!(a.pending(), PENDING_MAX - 1);
    }

    #[test]
    fn an_ipv6_slash_64_is_one_source_and_mapped_v4_is_v4() {
        let mut a = Admission::default();
        let t = Instant::now();
        for c in 0..u64::from(PENDING_PER_ADDR) {
            let addr: IpAddr = format!("2001:db8:1:2::{:x}", c + 1).parse().unwrap();
            assert!(matches!(a.admit(c, addr, t), Verdict::Admit { .. }));
        }
        assert!(matches!(
            a.admit(99, ip("2001:db8:1:2::ffff"), t),
            Verdict::Refuse { .. }
        ));
        assert!(matches!(
            a.admit(98, ip("2001:db8:1:3::1"), t),
            Verdict::Admit { .. }
        ));
        assert_eq!(source_of(ip("::ffff:198.18.0.1")), ip("198.18.0.1"));
    }

    #[test]
    fn memory_is_bounded_by_the_number_of_sources() {
        let mut a = Admission::default();
        let t = Instant::now();
        for i in 0..(SOURCES_MAX as u32 * 3) {
            let addr = IpAddr::V4(std::net::Ipv4Addr::from(0x0A00_0000 + i));
            let _ = a.admit(u64::from(i), addr, t);
            a.finished(u64::from(i));
        }
        assert!(a.sources.len() <= SOURCES_MAX);
    }
}
