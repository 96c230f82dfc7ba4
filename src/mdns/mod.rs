//! The `mdns` thread: service discovery on the local network with the `simple-mdns` crate's
//! blocking API. It announces this node (`_ironcarrier._tcp.local`: node id, protocol
//! version, group tag) on every usable interface, listens for other nodes' announcements,
//! and hands each peer of our group and protocol to `net` to dial. Shutdown sends goodbyes.
//!
//! The crate's limits, and what this module does about them:
//! - one `ServiceDiscovery` covers one interface and starts two threads that cannot be
//!   stopped: one instance per interface announced on (at most [`MAX_INSTANCES`] per process;
//!   their threads inherit this thread's name, `mdns`);
//! - it joins the group on its interface but sends through whatever interface the routing
//!   table picks for 224.0.0.251 (none on a machine without a default or multicast route):
//!   after creating an instance, its sending socket is found among our descriptors and
//!   pinned to the interface (`IP_MULTICAST_IF`, [`pin`]);
//! - it queries for the service once, at creation: the query is sent again, pinned, from a
//!   socket of ours during the first announcements ([`announce::query_packet`]);
//! - it announces once: this thread announces again at 1 s, 3 s, then every minute;
//! - it does not tell a goodbye from an announcement: a departed peer's entry in `net`
//!   expires a TTL (120 s) after it was last heard, and its connection's end says the rest.
//!
//! Interfaces are looked at every [`IFACE_CHECK`]: one that comes up later (Wi-Fi after the
//! daemon started at boot) is announced on then; one whose address changed says goodbye and
//! is announced again at the new address.

mod announce;
pub mod handle;

use std::collections::HashSet;
use std::io;
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::os::fd::FromRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use simple_mdns::sync_discovery::ServiceDiscovery;
use simple_mdns::{InstanceInformation, NetworkScope};

use crate::model::NodeId;
use crate::net::handle::{NetCmd, NetHandle};
use crate::run::StartError;

use announce::{Announcing, Flood, Heard, Iface, Ignored};
use handle::{MdnsHandle, MdnsOptions};

/// How often the interfaces are looked at again.
const IFACE_CHECK: Duration = Duration::from_secs(30);
/// Most crate instances per process (two threads each, which cannot be stopped): a machine
/// whose addresses keep changing stops announcing new ones here and says to restart.
pub const MAX_INSTANCES: usize = 8;
const MDNS_PORT: u16 = 5353;
const MDNS_GROUP: Ipv4Addr = Ipv4Addr::new(224, 0, 0, 251);
/// Floods after which discovery stays off until the process restarts: each costs what the
/// crate cached before its instances were silenced (a few MiB at most, see
/// [`RECEIVE_BUFFER`]), so their number is bounded too.
const MAX_FLOODS: u32 = 2;
/// The kernel's receive buffer of the crate's sockets (it doubles it for its bookkeeping):
/// what can be queued for the crate when a flood starts, and so what it can still cache
/// after we stop it. A burst of honest answers (tens of packets of a few hundred bytes)
/// fits.
const RECEIVE_BUFFER: libc::c_int = 32 * 1024;
/// Most nodes of our group with another protocol version that are reported, once each.
const MAX_VERSION_WARNINGS: usize = 16;

/// Spawns the `mdns` thread. It never fails the start: without a usable interface it says
/// so once and the node carries on with its configured peers.
pub fn spawn(
    opts: MdnsOptions,
    net: NetHandle,
) -> Result<(JoinHandle<()>, MdnsHandle), StartError> {
    let (tx, rx) = channel();
    let stop = Arc::new(AtomicBool::new(false));
    let handle = MdnsHandle {
        stop: stop.clone(),
        wake: tx.clone(),
    };
    let thread = std::thread::Builder::new()
        .name("mdns".into())
        .spawn(move || {
            let mut m = Mdns {
                opts,
                net,
                tx,
                rx,
                stop,
                instances: Vec::new(),
                heard: Heard::default(),
                flood: Flood::new(Instant::now()),
                paused_until: None,
                floods: 0,
                local: Vec::new(),
                next_check: Instant::now(),
                said_none: false,
                said_full: false,
                said_missing: HashSet::new(),
                said_version: HashSet::new(),
            };
            m.run();
        })
        .map_err(|e| StartError(format!("cannot spawn thread mdns: {e}")))?;
    Ok((thread, handle))
}

/// The crate's instance for one interface address.
struct Instance {
    iface: Iface,
    sd: ServiceDiscovery,
    /// Our own socket for queries, pinned to the interface.
    query: Option<UdpSocket>,
    announcing: Announcing,
    /// The crate's receiving sockets of this instance (found like its sender): silenced when
    /// it is retired.
    receivers: Vec<libc::c_int>,
    /// Said goodbye and silenced (its address changed, its interface went away, or a
    /// flood): its threads live on, blocked on a socket that hears nothing.
    retired: bool,
}

impl Instance {
    fn retire(&mut self) {
        self.sd.remove_service_from_discovery();
        for fd in &self.receivers {
            silence(*fd, self.iface.addr);
        }
        self.retired = true;
    }
}

struct Mdns {
    opts: MdnsOptions,
    net: NetHandle,
    /// Given to each instance: it reports what it hears here.
    tx: Sender<InstanceInformation>,
    rx: Receiver<InstanceInformation>,
    stop: Arc<AtomicBool>,
    instances: Vec<Instance>,
    heard: Heard,
    flood: Flood,
    /// Discovery is paused after a flood until then.
    paused_until: Option<Instant>,
    floods: u32,
    /// The interfaces announced on (an announced peer's address on one of their networks
    /// is preferred).
    local: Vec<Iface>,
    next_check: Instant,
    said_none: bool,
    said_full: bool,
    said_missing: HashSet<String>,
    said_version: HashSet<NodeId>,
}

impl Mdns {
    fn run(&mut self) {
        loop {
            if self.stop.load(Ordering::SeqCst) {
                self.goodbye();
                return;
            }
            let now = Instant::now();
            if now >= self.next_check {
                self.check_interfaces(now);
                self.next_check = now + IFACE_CHECK;
            }
            let mut next = self.next_check;
            for inst in self.instances.iter_mut().filter(|i| !i.retired) {
                if inst.announcing.due(now) {
                    inst.sd.announce(false);
                    if inst.announcing.early() {
                        send_query(inst);
                    }
                }
                next = next.min(inst.announcing.next);
            }
            match self
                .rx
                .recv_timeout(next.saturating_duration_since(Instant::now()))
            {
                Ok(info) => self.on_announcement(&info),
                Err(RecvTimeoutError::Timeout) => {}
                // We hold a sender ourselves: cannot happen.
                Err(RecvTimeoutError::Disconnected) => return,
            }
        }
    }

    fn on_announcement(&mut self, info: &InstanceInformation) {
        let now = Instant::now();
        if self.paused_until.is_some_and(|t| now < t) || self.floods >= MAX_FLOODS {
            // Heard before the instances were silenced.
            return;
        }
        let records = info.ip_addresses.len() + info.ports.len() + info.attributes.len();
        let print = announce::fingerprint(
            &info.unescaped_instance_name(),
            info.ip_addresses.iter().copied(),
            info.ports.iter().copied(),
            &info.attributes,
        );
        if self.flood.heard(now, print, records) {
            self.pause(now);
            return;
        }
        let got = announce::read(
            &self.opts.node_id,
            &self.opts.group_tag,
            &info.attributes,
            info.ip_addresses.iter().copied(),
            info.ports.iter().copied(),
            &self.local,
        );
        match got {
            Ok((node, addr)) => {
                if self.heard.heard(now, node.clone(), addr) {
                    log::debug!("discovery: {node} announced at {addr}");
                    self.net.send(NetCmd::Discovered {
                        node,
                        addr,
                        ttl: announce::TTL,
                    });
                }
            }
            Err(Ignored::Version { node, version }) => {
                if self.said_version.len() < MAX_VERSION_WARNINGS
                    && self.said_version.insert(node.clone())
                {
                    log::warn!(
                        "discovery: {node} of this group speaks protocol version {version:?}, \
                         this node {}: not dialled (upgrade one of them)",
                        crate::proto::PROTOCOL_VERSION
                    );
                }
            }
            Err(Ignored::OtherGroup | Ignored::OwnId) => {}
            Err(Ignored::Malformed(why)) => {
                log::debug!("discovery: ignoring an announcement: {why}")
            }
        }
    }

    /// A flood of announcements: every instance is silenced (the crate's caches, which have
    /// no bound, stop growing) until the pause ends; then the interfaces get new ones.
    fn pause(&mut self, now: Instant) {
        self.floods += 1;
        let until = if self.floods >= MAX_FLOODS {
            "stops until the daemon restarts".to_owned()
        } else {
            format!(
                "pauses for {} minutes",
                announce::FLOOD_PAUSE.as_secs() / 60
            )
        };
        log::warn!(
            "discovery: more than {} new mDNS records a minute announced on the network (a \
             flood?); discovery {until} to keep memory bounded (configured peers and \
             connected nodes are not affected)",
            announce::FLOOD_RECORDS_PER_MIN,
        );
        for inst in self.instances.iter_mut().filter(|i| !i.retired) {
            inst.retire();
        }
        self.paused_until = Some(now + announce::FLOOD_PAUSE);
    }

    /// Announces on interfaces that came up or changed address since the last look.
    fn check_interfaces(&mut self, now: Instant) {
        if self.paused_until.is_some_and(|t| now < t) || self.floods >= MAX_FLOODS {
            return;
        }
        let all = interfaces();
        for want in &self.opts.interfaces {
            if !all.iter().any(|i| i.name == *want) && self.said_missing.insert(want.clone()) {
                log::warn!(
                    "discovery_interfaces: there is no interface {want:?} with an IPv4 address \
                     (yet); looking again every {} s",
                    IFACE_CHECK.as_secs()
                );
            }
        }
        let chosen = announce::select(&all, &self.opts.interfaces, self.opts.listen);
        // Gone, or at another address: goodbye (its threads cannot be stopped; they idle).
        for inst in self.instances.iter_mut().filter(|i| !i.retired) {
            if !chosen.contains(&inst.iface) {
                log::info!(
                    "discovery: {} ({}) is gone or changed; no longer announced there",
                    inst.iface.name,
                    inst.iface.addr
                );
                inst.retire();
            }
        }
        if chosen.is_empty() {
            if !self.said_none {
                log::warn!(
                    "discovery: no usable network interface (up, multicast, IPv4, not \
                     loopback{}); synchronizing with the configured peers only, and looking \
                     again every {} s",
                    if self.opts.listen.is_unspecified() {
                        String::new()
                    } else {
                        format!(", holding listen_address {}", self.opts.listen)
                    },
                    IFACE_CHECK.as_secs()
                );
                self.said_none = true;
            }
        } else {
            self.said_none = false;
        }
        for iface in &chosen {
            if self
                .instances
                .iter()
                .any(|i| !i.retired && i.iface == *iface)
            {
                continue;
            }
            if self.instances.len() >= MAX_INSTANCES {
                if !self.said_full {
                    log::warn!(
                        "discovery: {MAX_INSTANCES} interface addresses announced since start \
                         (or floods paused it); not announcing {} ({}) until the daemon \
                         restarts (SIGHUP)",
                        iface.name,
                        iface.addr
                    );
                    self.said_full = true;
                }
                continue;
            }
            if let Some(inst) = self.start(iface.clone(), now) {
                self.instances.push(inst);
            }
        }
        self.local = chosen;
    }

    fn start(&self, iface: Iface, now: Instant) -> Option<Instance> {
        let mut info = InstanceInformation::new(announce::instance_name(
            &self.opts.node_id,
            &self.opts.group_tag,
        ))
        .with_ip_address(iface.addr.into())
        .with_port(self.opts.port);
        for (k, v) in announce::attributes(&self.opts.node_id, &self.opts.group_tag) {
            info = info.with_attribute(k, Some(v));
        }
        let receivers_before = sockets_bound_to(MDNS_GROUP);
        let senders_before = sockets_bound_to(Ipv4Addr::UNSPECIFIED);
        let sd = match ServiceDiscovery::new_with_scope(
            info,
            announce::SERVICE,
            announce::TTL.as_secs() as u32,
            Some(self.tx.clone()),
            NetworkScope::V4WithInterface(iface.addr),
        ) {
            Ok(sd) => sd,
            Err(e) => {
                log::warn!(
                    "discovery: cannot use {} ({}): {e}; synchronizing with the configured \
                     peers only there",
                    iface.name,
                    iface.addr
                );
                return None;
            }
        };
        let senders: Vec<libc::c_int> = sockets_bound_to(Ipv4Addr::UNSPECIFIED)
            .into_iter()
            .filter(|fd| !senders_before.contains(fd))
            .collect();
        if pin(&senders, iface.addr) == 0 {
            log::warn!(
                "discovery: cannot pin announcements to {}; they follow the routing table",
                iface.name
            );
        }
        let receivers: Vec<libc::c_int> = sockets_bound_to(MDNS_GROUP)
            .into_iter()
            .filter(|fd| !receivers_before.contains(fd))
            .collect();
        for fd in &receivers {
            let _ = setsockopt(*fd, libc::SOL_SOCKET, libc::SO_RCVBUF, &RECEIVE_BUFFER);
        }
        // The crate's first announcement went where the routing table said: again, pinned.
        sd.announce(false);
        let query = match query_socket(iface.addr) {
            Ok(s) => Some(s),
            Err(e) => {
                log::debug!("discovery: no query socket on {}: {e}", iface.name);
                None
            }
        };
        log::info!(
            "discovery: announcing {} on {} ({}:{})",
            self.opts.node_id,
            iface.name,
            iface.addr,
            self.opts.port
        );
        let inst = Instance {
            iface,
            sd,
            query,
            announcing: Announcing::new(now),
            receivers,
            retired: false,
        };
        send_query(&inst);
        Some(inst)
    }

    fn goodbye(&mut self) {
        for inst in self.instances.iter_mut().filter(|i| !i.retired) {
            inst.sd.remove_service_from_discovery();
        }
    }
}

fn send_query(inst: &Instance) {
    if let Some(s) = &inst.query {
        if let Err(e) = s.send_to(&announce::query_packet(), (MDNS_GROUP, MDNS_PORT)) {
            log::debug!("discovery: query on {} failed: {e}", inst.iface.name);
        }
    }
}

/// This machine's IPv4 interface addresses (`getifaddrs`).
fn interfaces() -> Vec<Iface> {
    let mut out = Vec::new();
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `head` with a list we free below with freeifaddrs.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return out;
    }
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: `cur` is a node of the list getifaddrs returned, not yet freed.
        let ifa = unsafe { &*cur };
        cur = ifa.ifa_next;
        let (Some(addr), Some(name)) = (ipv4_of(ifa.ifa_addr), c_name(ifa.ifa_name)) else {
            continue;
        };
        let flags = ifa.ifa_flags as libc::c_int;
        out.push(Iface {
            name,
            addr,
            netmask: ipv4_of(ifa.ifa_netmask).unwrap_or(Ipv4Addr::UNSPECIFIED),
            up: flags & libc::IFF_UP != 0,
            loopback: flags & libc::IFF_LOOPBACK != 0,
            multicast: flags & libc::IFF_MULTICAST != 0,
        });
    }
    // SAFETY: `head` came from getifaddrs and is freed once.
    unsafe { libc::freeifaddrs(head) };
    out
}

fn ipv4_of(sa: *const libc::sockaddr) -> Option<Ipv4Addr> {
    if sa.is_null() {
        return None;
    }
    // SAFETY: non-null sockaddr from getifaddrs; read as sockaddr_in only when AF_INET.
    unsafe {
        if i32::from((*sa).sa_family) != libc::AF_INET {
            return None;
        }
        let sin = &*(sa as *const libc::sockaddr_in);
        Some(Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)))
    }
}

fn c_name(p: *const libc::c_char) -> Option<String> {
    if p.is_null() {
        return None;
    }
    // SAFETY: getifaddrs names are NUL-terminated strings.
    let s = unsafe { std::ffi::CStr::from_ptr(p) };
    Some(s.to_string_lossy().into_owned())
}

fn setsockopt<T>(fd: libc::c_int, level: libc::c_int, opt: libc::c_int, v: &T) -> io::Result<()> {
    // SAFETY: `v` is valid for size_of::<T>() bytes for the duration of the call.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            opt,
            (v as *const T).cast(),
            std::mem::size_of::<T>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn in_addr(a: Ipv4Addr) -> libc::in_addr {
    libc::in_addr {
        s_addr: u32::from(a).to_be(),
    }
}

/// Pins the sending sockets in `senders` (the instance's, see [`sockets_bound_to`]) to
/// `addr`'s interface. Returns how many were pinned (the crate's clones share one socket).
fn pin(senders: &[libc::c_int], addr: Ipv4Addr) -> usize {
    senders
        .iter()
        .filter(|fd| {
            setsockopt(
                **fd,
                libc::IPPROTO_IP,
                libc::IP_MULTICAST_IF,
                &in_addr(addr),
            )
            .is_ok()
        })
        .count()
}

/// This process's descriptors.
fn own_fds() -> Vec<libc::c_int> {
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse().ok()))
        .collect()
}

/// The IPv4 address a UDP socket is bound to; `None` for any other descriptor.
fn udp_bound(fd: libc::c_int) -> Option<SocketAddrV4> {
    let mut ty: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: the out-pointers are valid for the lengths given; a descriptor that is not a
    // socket makes the calls fail, nothing more.
    unsafe {
        if libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_TYPE,
            (&mut ty as *mut libc::c_int).cast(),
            &mut len,
        ) != 0
            || ty != libc::SOCK_DGRAM
        {
            return None;
        }
        let mut sin: libc::sockaddr_in = std::mem::zeroed();
        let mut len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        if libc::getsockname(fd, (&mut sin as *mut libc::sockaddr_in).cast(), &mut len) != 0
            || i32::from(sin.sin_family) != libc::AF_INET
        {
            return None;
        }
        Some(SocketAddrV4::new(
            Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)),
            u16::from_be(sin.sin_port),
        ))
    }
}

/// Our UDP sockets bound to `addr`:5353. The crate keeps its sockets private: those of the
/// instance just made are the ones that were not there before (its sender is bound to
/// 0.0.0.0, its receiver to the group's address; our query sockets are made afterwards).
fn sockets_bound_to(addr: Ipv4Addr) -> Vec<libc::c_int> {
    own_fds()
        .into_iter()
        .filter(|fd| udp_bound(*fd) == Some(SocketAddrV4::new(addr, MDNS_PORT)))
        .collect()
}

/// A receiving socket of a retired instance hears nothing more: it leaves the group, and
/// stops taking the groups other sockets joined (`IP_MULTICAST_ALL`, on by default). Its
/// thread stays blocked in `recv`, and its cache no longer grows.
fn silence(fd: libc::c_int, iface: Ipv4Addr) {
    let zero: libc::c_int = 0;
    let _ = setsockopt(fd, libc::IPPROTO_IP, libc::IP_MULTICAST_ALL, &zero);
    let mreq = libc::ip_mreq {
        imr_multiaddr: in_addr(MDNS_GROUP),
        imr_interface: in_addr(iface),
    };
    // Fails if the interface is gone, which dropped the membership already.
    let _ = setsockopt(fd, libc::IPPROTO_IP, libc::IP_DROP_MEMBERSHIP, &mreq);
}

/// A socket for our queries: source port 5353 (RFC 6762 §6: otherwise responders answer it
/// by unicast, which the crate's receiver never sees), pinned to `addr`'s interface (where
/// the kernel allows: qemu-user does not know `IP_MULTICAST_IF`), and
/// deaf to multicast where the kernel allows (it is never read).
fn query_socket(addr: Ipv4Addr) -> io::Result<UdpSocket> {
    // SAFETY: plain socket(2); the descriptor is owned by the UdpSocket made from it.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a new socket nobody else owns.
    let sock = unsafe { UdpSocket::from_raw_fd(fd) };
    let one: libc::c_int = 1;
    let zero: libc::c_int = 0;
    setsockopt(fd, libc::SOL_SOCKET, libc::SO_REUSEADDR, &one)?;
    setsockopt(fd, libc::SOL_SOCKET, libc::SO_REUSEPORT, &one)?;
    if let Err(e) = setsockopt(fd, libc::IPPROTO_IP, libc::IP_MULTICAST_IF, &in_addr(addr)) {
        // Then the query follows the routing table, as the crate's packets do.
        log::debug!("discovery: cannot pin the query socket to {addr}: {e}");
    }
    // Best effort (qemu-user, for one, does not know it): without it the unread socket
    // also gets the group's packets, in a receive buffer kept at the kernel's minimum.
    let _ = setsockopt(fd, libc::IPPROTO_IP, libc::IP_MULTICAST_ALL, &zero);
    let _ = setsockopt(fd, libc::SOL_SOCKET, libc::SO_RCVBUF, &zero);
    let sin = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: MDNS_PORT.to_be(),
        sin_addr: in_addr(Ipv4Addr::UNSPECIFIED),
        sin_zero: [0; 8],
    };
    // SAFETY: `sin` is a valid sockaddr_in for the length given.
    let rc = unsafe {
        libc::bind(
            fd,
            (&sin as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(sock)
}
