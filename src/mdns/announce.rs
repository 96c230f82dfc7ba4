//! What discovery says and what it believes, pure (time passed in): the TXT record a node
//! announces, which announcements name a peer to dial (same group, same protocol, not us),
//! when a heard peer is handed to `net` again, which interfaces are announced on, when to
//! announce again, and the bytes of the query a starting node sends.
//!
//! An announcement is a hint, like a watcher event: it only makes `net` dial. The handshake
//! decides who the peer is (its node id, group and, with a passphrase, that it knows the
//! key), so a forged announcement costs at most a failed dial, and the tables here are
//! bounded so that a flood of them costs no more than a fixed amount of memory.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use crate::model::NodeId;
use crate::proto::PROTOCOL_VERSION;

/// The DNS-SD service every node announces and browses.
pub const SERVICE: &str = "_ironcarrier._tcp.local";
/// How long peers may cache an announcement (RFC 6762 recommends 120 s for records that
/// name a host's addresses). A peer not heard for this long is no longer dialled.
pub const TTL: Duration = Duration::from_secs(120);
/// Announcements after the one the crate sends on creation: RFC 6762 §8.3 asks for at
/// least two, one second apart; the third covers a lost packet on a busy Wi-Fi.
const FIRST_ANNOUNCEMENTS: [Duration; 2] = [Duration::from_secs(1), Duration::from_secs(3)];
/// Then once per half TTL, so that peers' entries never expire while we are up.
pub const ANNOUNCE_EVERY: Duration = Duration::from_secs(60);
/// A peer heard again is handed to `net` again after this long (so `net`'s entry, which
/// expires a TTL after the last hand-over, stays alive), or at once when it moved.
const FORWARD_EVERY: Duration = Duration::from_secs(30);
/// Most peers remembered. Anyone on the segment can announce our group's tag, so this
/// bounds what a flood of announcements costs; an expired entry makes room.
pub const MAX_HEARD: usize = 256;

/// The TXT attributes of this node's announcement: node id, protocol version, group tag.
/// Never the group's name, and nothing derived from a passphrase.
pub fn attributes(node: &NodeId, group_tag: &[u8; 16]) -> Vec<(String, String)> {
    vec![
        ("id".to_owned(), node.as_str().to_owned()),
        ("v".to_owned(), PROTOCOL_VERSION.to_string()),
        ("g".to_owned(), hex(group_tag)),
    ]
}

/// The DNS-SD instance name: one label, unique per node and group, whatever the node id
/// holds (a node id may be 64 bytes, a label at most 63).
pub fn instance_name(node: &NodeId, group_tag: &[u8; 16]) -> String {
    let mut h = blake3::Hasher::new();
    h.update(group_tag);
    h.update(node.as_str().as_bytes());
    format!("ic-{}", hex(&h.finalize().as_bytes()[..8]))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Why an announcement names no peer to dial.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ignored {
    /// Another group (or another program using our service name).
    OtherGroup,
    /// Our own announcement, or another node using our node id.
    OwnId,
    /// A node of our group speaking another protocol version: the handshake would refuse.
    Version {
        node: NodeId,
        version: String,
    },
    Malformed(&'static str),
}

/// A peer to dial, read from an announcement's attributes, addresses and ports: the first
/// of its addresses on one of `local`'s networks (the interfaces we announce on).
pub fn read(
    own: &NodeId,
    group_tag: &[u8; 16],
    attributes: &HashMap<String, Option<String>>,
    ips: impl IntoIterator<Item = IpAddr>,
    ports: impl IntoIterator<Item = u16>,
    local: &[Iface],
) -> Result<(NodeId, SocketAddr), Ignored> {
    let get = |k: &str| attributes.get(k).and_then(|v| v.as_deref());
    if get("g") != Some(hex(group_tag).as_str()) {
        return Err(Ignored::OtherGroup);
    }
    let node = get("id")
        .and_then(|s| NodeId::new(s).ok())
        .ok_or(Ignored::Malformed("no valid node id"))?;
    if node == *own {
        return Err(Ignored::OwnId);
    }
    let version = get("v").unwrap_or("");
    if version != PROTOCOL_VERSION.to_string() {
        return Err(Ignored::Version {
            node,
            version: version.chars().take(8).collect(),
        });
    }
    let port = ports
        .into_iter()
        .filter(|&p| p != 0)
        .min()
        .ok_or(Ignored::Malformed("no port"))?;
    let mut v4: Vec<Ipv4Addr> = ips
        .into_iter()
        .filter_map(|ip| match ip {
            IpAddr::V4(a) if usable_peer_addr(a) => Some(a),
            _ => None,
        })
        .collect();
    v4.sort();
    // Multicast DNS does not cross routers: a peer heard here is on one of our networks. An
    // address elsewhere could only aim this node's dials at some other host.
    let addr = v4
        .iter()
        .find(|a| local.iter().any(|i| i.same_network(**a)))
        .ok_or(Ignored::Malformed(
            "no IPv4 address on this node's networks",
        ))?;
    Ok((node, SocketAddr::new(IpAddr::V4(*addr), port)))
}

/// An address a peer on the local network can have: not ours to refuse by routing alone
/// (loopback would dial ourselves; multicast, broadcast and 0.0.0.0 are no host).
fn usable_peer_addr(a: Ipv4Addr) -> bool {
    !(a.is_loopback() || a.is_multicast() || a.is_broadcast() || a.is_unspecified())
}

/// The peers heard, and when each was last handed to `net`.
#[derive(Default)]
pub struct Heard {
    peers: HashMap<NodeId, HeardPeer>,
}

struct HeardPeer {
    addr: SocketAddr,
    heard: Instant,
    forwarded: Instant,
}

impl Heard {
    /// `node` announced itself at `addr`: whether to hand it to `net` now (new, moved, back
    /// after it expired, or not handed over for [`FORWARD_EVERY`]).
    pub fn heard(&mut self, now: Instant, node: NodeId, addr: SocketAddr) -> bool {
        if let Some(p) = self.peers.get_mut(&node) {
            let due = p.addr != addr
                || now.saturating_duration_since(p.heard) >= TTL
                || now.saturating_duration_since(p.forwarded) >= FORWARD_EVERY;
            p.addr = addr;
            p.heard = now;
            if due {
                p.forwarded = now;
            }
            return due;
        }
        if self.peers.len() >= MAX_HEARD {
            self.peers
                .retain(|_, p| now.saturating_duration_since(p.heard) < TTL);
            if self.peers.len() >= MAX_HEARD {
                return false;
            }
        }
        self.peers.insert(
            node,
            HeardPeer {
                addr,
                heard: now,
                forwarded: now,
            },
        );
        true
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.peers.len()
    }
}

/// Most new records a minute announced under our service name (any group) before discovery
/// pauses. The crate caches every record it hears, without a bound and for good (it only
/// filters expired ones out), at about 1 KiB each: a host announcing ever new names would
/// grow this process without end. Past the budget, the instances are silenced (their caches
/// freeze) and made anew after [`FLOOD_PAUSE`], so a flood costs about 1 MiB per pause, for
/// at most [`super::MAX_INSTANCES`] instances. Only records not heard before in the minute
/// count: nodes repeating their announcements, or answering queries, cost nothing; 200
/// nodes (any group) appearing within a minute do not trip it.
pub const FLOOD_RECORDS_PER_MIN: u32 = 1000;
/// How long discovery stays silent after a flood.
pub const FLOOD_PAUSE: Duration = Duration::from_secs(600);
const FLOOD_WINDOW: Duration = Duration::from_secs(60);
/// Announcements remembered per window to tell new from repeated (8 bytes each).
const FLOOD_SEEN: usize = 4096;

/// Counts the new records heard per minute against [`FLOOD_RECORDS_PER_MIN`].
#[derive(Debug)]
pub struct Flood {
    window_start: Instant,
    records: u32,
    /// Fingerprints of the announcements heard in this window.
    seen: HashSet<u64>,
}

impl Flood {
    pub fn new(now: Instant) -> Flood {
        Flood {
            window_start: now,
            records: 0,
            seen: HashSet::new(),
        }
    }

    /// An announcement with fingerprint `print` and about `records` records was heard:
    /// whether the budget is now spent (the caller pauses; the count starts over).
    pub fn heard(&mut self, now: Instant, print: u64, records: usize) -> bool {
        if now.saturating_duration_since(self.window_start) >= FLOOD_WINDOW {
            self.window_start = now;
            self.records = 0;
            self.seen.clear();
        }
        if self.seen.contains(&print) {
            return false;
        }
        if self.seen.len() < FLOOD_SEEN {
            self.seen.insert(print);
        }
        self.records = self.records.saturating_add(records.max(1) as u32);
        if self.records > FLOOD_RECORDS_PER_MIN {
            self.window_start = now;
            self.records = 0;
            self.seen.clear();
            return true;
        }
        false
    }
}

/// A fingerprint of what an announcement says (its name, addresses, ports, attributes),
/// whatever order they came in.
pub fn fingerprint(
    name: &str,
    ips: impl IntoIterator<Item = IpAddr>,
    ports: impl IntoIterator<Item = u16>,
    attributes: &HashMap<String, Option<String>>,
) -> u64 {
    let mut ips: Vec<IpAddr> = ips.into_iter().collect();
    ips.sort();
    let mut ports: Vec<u16> = ports.into_iter().collect();
    ports.sort();
    let mut attrs: Vec<(&String, &Option<String>)> = attributes.iter().collect();
    attrs.sort();
    let mut h = blake3::Hasher::new();
    h.update(format!("{name:?}{ips:?}{ports:?}{attrs:?}").as_bytes());
    let mut out = [0u8; 8];
    out.copy_from_slice(&h.finalize().as_bytes()[..8]);
    u64::from_le_bytes(out)
}

/// One IPv4 address of a network interface, as `getifaddrs` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Iface {
    pub name: String,
    pub addr: Ipv4Addr,
    pub netmask: Ipv4Addr,
    pub up: bool,
    pub loopback: bool,
    pub multicast: bool,
}

impl Iface {
    fn same_network(&self, other: Ipv4Addr) -> bool {
        let m = u32::from(self.netmask);
        m != 0 && u32::from(self.addr) & m == u32::from(other) & m
    }
}

/// The interfaces to announce on: up, multicast, not loopback, named in `wanted` (if any),
/// holding `listen` (if it is one address). One per name: its first IPv4 address.
pub fn select(all: &[Iface], wanted: &[String], listen: IpAddr) -> Vec<Iface> {
    let mut out: Vec<Iface> = Vec::new();
    for i in all {
        let named = wanted.is_empty() || wanted.contains(&i.name);
        let holds = listen.is_unspecified() || listen == IpAddr::V4(i.addr);
        if i.up
            && i.multicast
            && !i.loopback
            && !i.addr.is_loopback()
            && named
            && holds
            && !out.iter().any(|o| o.name == i.name)
        {
            out.push(i.clone());
        }
    }
    out
}

/// When an interface's instance announces next: [`FIRST_ANNOUNCEMENTS`] after its
/// creation, then every [`ANNOUNCE_EVERY`].
#[derive(Debug, Clone, Copy)]
pub struct Announcing {
    created: Instant,
    sent: usize,
    pub next: Instant,
}

impl Announcing {
    pub fn new(created: Instant) -> Announcing {
        Announcing {
            created,
            sent: 0,
            next: created + FIRST_ANNOUNCEMENTS[0],
        }
    }

    /// Whether to announce at `now`; moves `next` on when it does.
    pub fn due(&mut self, now: Instant) -> bool {
        if now < self.next {
            return false;
        }
        self.sent += 1;
        self.next = match FIRST_ANNOUNCEMENTS.get(self.sent) {
            Some(d) => self.created + *d,
            None => now + ANNOUNCE_EVERY,
        };
        true
    }

    /// Whether the query for peers is sent again at this announcement: during the first
    /// ones only (a lost first query would otherwise leave a one-shot run alone).
    pub fn early(&self) -> bool {
        self.sent <= FIRST_ANNOUNCEMENTS.len()
    }
}

/// An mDNS query (RFC 6762) for the PTR records of [`SERVICE`], asking for multicast
/// answers, so every node's receiver hears them.
pub fn query_packet() -> Vec<u8> {
    // Header: id 0, flags 0 (standard query), one question.
    let mut p = vec![0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0];
    for label in SERVICE.split('.') {
        p.push(label.len() as u8);
        p.extend_from_slice(label.as_bytes());
    }
    p.push(0);
    // QTYPE PTR (12), QCLASS IN (1) with the unicast-response bit clear.
    p.extend_from_slice(&[0, 12, 0, 1]);
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> NodeId {
        NodeId::new(s).unwrap()
    }

    const TAG: [u8; 16] = [7; 16];

    fn attrs(node: &str, tag: &[u8; 16]) -> HashMap<String, Option<String>> {
        attributes(&id(node), tag)
            .into_iter()
            .map(|(k, v)| (k, Some(v)))
            .collect()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn lan() -> Vec<Iface> {
        vec![Iface {
            name: "eth0".into(),
            addr: "198.18.0.1".parse().unwrap(),
            netmask: "255.255.255.0".parse().unwrap(),
            up: true,
            loopback: false,
            multicast: true,
        }]
    }

    #[test]
    fn a_peer_of_our_group_is_read_with_its_address() {
        let got = read(
            &id("a"),
            &TAG,
            &attrs("b", &TAG),
            [ip("198.18.0.2")],
            [25230],
            &lan(),
        );
        assert_eq!(got, Ok((id("b"), "198.18.0.2:25230".parse().unwrap())));
    }

    #[test]
    fn other_groups_ourselves_and_other_versions_are_not_dialled() {
        let other = read(
            &id("a"),
            &TAG,
            &attrs("b", &[8; 16]),
            [ip("198.18.0.2")],
            [1],
            &[],
        );
        assert_eq!(other, Err(Ignored::OtherGroup));
        let me = read(
            &id("a"),
            &TAG,
            &attrs("a", &TAG),
            [ip("198.18.0.2")],
            [1],
            &[],
        );
        assert_eq!(me, Err(Ignored::OwnId));
        let mut old = attrs("b", &TAG);
        old.insert("v".into(), Some("3".into()));
        let got = read(&id("a"), &TAG, &old, [ip("198.18.0.2")], [1], &[]);
        assert!(matches!(got, Err(Ignored::Version { .. })), "{got:?}");
    }

    #[test]
    fn forged_or_broken_announcements_are_refused() {
        let mut bad = attrs("b", &TAG);
        bad.insert("id".into(), Some("has space".into()));
        let got = read(&id("a"), &TAG, &bad, [ip("198.18.0.2")], [1], &[]);
        assert!(matches!(got, Err(Ignored::Malformed(_))));
        bad.remove("id");
        let got = read(&id("a"), &TAG, &bad, [ip("198.18.0.2")], [1], &[]);
        assert!(matches!(got, Err(Ignored::Malformed(_))));
        let no_port = read(
            &id("a"),
            &TAG,
            &attrs("b", &TAG),
            [ip("198.18.0.2")],
            [0],
            &[],
        );
        assert!(matches!(no_port, Err(Ignored::Malformed(_))));
        for addr in [
            "127.0.0.1",
            "224.0.0.251",
            "0.0.0.0",
            "255.255.255.255",
            "::1",
        ] {
            let got = read(&id("a"), &TAG, &attrs("b", &TAG), [ip(addr)], [1], &[]);
            assert!(matches!(got, Err(Ignored::Malformed(_))), "{addr}: {got:?}");
        }
    }

    #[test]
    fn only_an_address_on_our_networks_is_dialled() {
        let got = read(
            &id("a"),
            &TAG,
            &attrs("b", &TAG),
            [ip("10.0.0.5"), ip("198.18.0.9"), ip("172.16.0.1")],
            [5],
            &lan(),
        );
        assert_eq!(got.unwrap().1, "198.18.0.9:5".parse().unwrap());
        // A forged announcement pointing at a host elsewhere (to make every node of the
        // segment dial it) is refused.
        let elsewhere = read(
            &id("a"),
            &TAG,
            &attrs("b", &TAG),
            [ip("203.0.113.7")],
            [22],
            &lan(),
        );
        assert!(
            matches!(elsewhere, Err(Ignored::Malformed(_))),
            "{elsewhere:?}"
        );
    }

    #[test]
    fn the_announcement_names_no_group_and_fits_dns() {
        let a = attributes(&id("node"), &TAG);
        let text = format!("{a:?}");
        assert!(!text.contains("my-group"));
        let long = "x".repeat(64);
        let name = instance_name(&id(&long), &TAG);
        assert!(name.len() <= 63, "{name}");
        assert_ne!(name, instance_name(&id(&long), &[0; 16]));
        assert_eq!(name, instance_name(&id(&long), &TAG));
    }

    #[test]
    fn a_peer_is_handed_over_when_new_moved_or_due() {
        let t0 = Instant::now();
        let mut h = Heard::default();
        let a1: SocketAddr = "198.18.0.2:1".parse().unwrap();
        let a2: SocketAddr = "198.18.0.3:1".parse().unwrap();
        assert!(h.heard(t0, id("b"), a1));
        assert!(!h.heard(t0 + Duration::from_secs(1), id("b"), a1));
        assert!(h.heard(t0 + Duration::from_secs(2), id("b"), a2), "moved");
        assert!(!h.heard(t0 + Duration::from_secs(3), id("b"), a2));
        assert!(h.heard(t0 + Duration::from_secs(2) + FORWARD_EVERY, id("b"), a2));
    }

    #[test]
    fn a_flood_of_names_is_bounded_and_expired_ones_make_room() {
        let t0 = Instant::now();
        let mut h = Heard::default();
        let a: SocketAddr = "198.18.0.2:1".parse().unwrap();
        for i in 0..MAX_HEARD + 100 {
            h.heard(t0, id(&format!("n{i}")), a);
        }
        assert_eq!(h.len(), MAX_HEARD);
        assert!(!h.heard(t0, id("late"), a));
        assert!(h.heard(t0 + TTL, id("late"), a));
        assert_eq!(h.len(), 1);
    }

    #[test]
    fn a_flood_trips_once_per_budget_and_a_busy_segment_never() {
        let t0 = Instant::now();
        let mut f = Flood::new(t0);
        // 200 nodes appearing within a minute, each announcing five records, then every one
        // of them repeating itself (announcements, answers to queries) for an hour.
        for k in 0..200u64 {
            assert!(
                !f.heard(t0 + Duration::from_millis(k * 250), k, 5),
                "a crowd tripped"
            );
        }
        for minute in 1..61u64 {
            for k in 0..200u64 * 10 {
                let t = t0 + Duration::from_secs(minute * 60) + Duration::from_millis(k * 25);
                assert!(!f.heard(t, k % 200, 5), "a busy but honest segment tripped");
            }
        }
        // Ever new names: tripped every 1,000 records.
        let t1 = t0 + Duration::from_secs(7200);
        let mut f = Flood::new(t1);
        let trips = (0..3500u64)
            .filter(|k| f.heard(t1 + Duration::from_millis(*k), 1_000_000 + k, 1))
            .count();
        assert_eq!(trips, 3);
        // Empty announcements still count.
        let mut f = Flood::new(t1);
        assert!((0..=FLOOD_RECORDS_PER_MIN as u64).any(|k| f.heard(t1, k, 0)));
    }

    #[test]
    fn a_fingerprint_ignores_order_and_sees_every_field() {
        let a = attrs("b", &TAG);
        let one = fingerprint("x", [ip("10.0.0.1"), ip("10.0.0.2")], [1, 2], &a);
        assert_eq!(
            one,
            fingerprint("x", [ip("10.0.0.2"), ip("10.0.0.1")], [2, 1], &a)
        );
        assert_ne!(
            one,
            fingerprint("y", [ip("10.0.0.1"), ip("10.0.0.2")], [1, 2], &a)
        );
        assert_ne!(one, fingerprint("x", [ip("10.0.0.1")], [1, 2], &a));
        assert_ne!(
            one,
            fingerprint("x", [ip("10.0.0.1"), ip("10.0.0.2")], [1], &a)
        );
        assert_ne!(
            one,
            fingerprint(
                "x",
                [ip("10.0.0.1"), ip("10.0.0.2")],
                [1, 2],
                &attrs("c", &TAG)
            )
        );
    }

    #[test]
    fn interfaces_are_chosen_by_flags_names_and_listen_address() {
        let mut all = lan();
        let mk = |name: &str, addr: &str, up, lo, mc| Iface {
            name: name.into(),
            addr: addr.parse().unwrap(),
            netmask: "255.0.0.0".parse().unwrap(),
            up,
            loopback: lo,
            multicast: mc,
        };
        all.push(mk("lo", "127.0.0.1", true, true, false));
        all.push(mk("wlan0", "10.0.0.2", true, false, true));
        all.push(mk("wlan0", "10.0.0.3", true, false, true));
        all.push(mk("down0", "10.1.0.2", false, false, true));
        all.push(mk("tun0", "10.2.0.2", true, false, false));
        let any = ip("0.0.0.0");
        let names = |v: Vec<Iface>| v.into_iter().map(|i| i.name).collect::<Vec<_>>();
        assert_eq!(names(select(&all, &[], any)), ["eth0", "wlan0"]);
        assert_eq!(names(select(&all, &["wlan0".into()], any)), ["wlan0"]);
        assert_eq!(
            names(select(&all, &["lo".into()], any)),
            Vec::<String>::new()
        );
        assert_eq!(names(select(&all, &[], ip("198.18.0.1"))), ["eth0"]);
        assert_eq!(
            names(select(&all, &[], ip("127.0.0.1"))),
            Vec::<String>::new()
        );
    }

    #[test]
    fn announcements_come_at_one_and_three_seconds_then_every_minute() {
        let t0 = Instant::now();
        let mut a = Announcing::new(t0);
        assert!(!a.due(t0));
        assert!(a.due(t0 + Duration::from_secs(1)));
        assert!(a.early());
        assert!(!a.due(t0 + Duration::from_secs(2)));
        assert!(a.due(t0 + Duration::from_secs(3)));
        assert!(a.early());
        assert_eq!(a.next, t0 + Duration::from_secs(3) + ANNOUNCE_EVERY);
        assert!(a.due(a.next));
        assert!(!a.early());
    }

    #[test]
    fn the_query_asks_for_the_service_pointer() {
        let q = query_packet();
        assert_eq!(&q[4..6], &[0, 1], "one question");
        assert_eq!(q[12] as usize, "_ironcarrier".len());
        assert_eq!(&q[q.len() - 4..], &[0, 12, 0, 1]);
        assert_eq!(q.len(), 12 + SERVICE.len() + 2 + 4);
    }
}
