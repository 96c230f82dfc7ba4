//! The `net` thread: one `mio::Poll` owning the listener and every peer connection.
//!
//! It frames and unframes messages, runs the handshake (version, group, node id, one
//! connection per peer), answers pings, enforces timeouts, redials peers with back-off
//! (`dial.rs`) and serves the daemon's control socket (`control.rs`). Everything else is
//! `sync`'s business: decoded messages go out as [`NetEvent`]s, messages to send come in as
//! [`NetCmd`]s through a [`NetHandle`] (channel + waker).
//!
//! This thread never touches the disk and never blocks anywhere but in `Poll::poll`. It is
//! given its options ([`NetOptions`]), never the config. Other threads reach it only through
//! [`handle`] (commands, events, the byte gauges of back-pressure, described there).

mod admit;
mod conn;
mod control;
mod dial;
mod limits;

pub use limits::CLOCK_SKEW_WARN;
use limits::{clock_skew_warning, log_due, unix_ms};
pub mod handle;
pub mod link;

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use crossbeam_channel::{unbounded, Receiver, Sender, TryRecvError};
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token, Waker};

use crate::model::NodeId;
use crate::proto::{Hello, LinkMsg, Message, PROTOCOL_VERSION};
use crate::run::{DialError, StartError};

use admit::Admission;
use conn::{Conn, ConnState, ReadOutcome};
use handle::{ConnId, InboundGauge, NetCmd, NetEvent, NetHandle, NetOptions, Traffic};
use handle::{IN_HIGH, IN_LOW, OUT_LOW};

/// What a decoded message costs in memory beyond its frame bytes (the event, the message
/// enum, a path's allocation), for the inbound gauge.
const MESSAGE_OVERHEAD: usize = 160;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Send a ping after this long without sending anything.
const PING_AFTER: Duration = Duration::from_secs(20);
/// Drop a connection that has been silent this long (a live peer answers pings).
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Commands taken from `sync` in one turn of the poll loop before sockets and timers get
/// theirs (see `handle_commands`). A command is one message or one shared file-data frame.
const COMMAND_BUDGET: usize = 256;
/// How long a refused connection may take to flush its `Refuse` before it is closed.
const CLOSE_GRACE: Duration = Duration::from_secs(2);
const REDIAL_MIN: Duration = Duration::from_millis(500);
/// A connection up for longer than this is never replaced by a duplicate.
const SETTLE_TIME: Duration = Duration::from_secs(2);
const REDIAL_MAX: Duration = Duration::from_secs(60);
/// Most peers known only by discovery at once. Anyone on the segment can announce our group
/// tag (it is no secret), so what they make us remember and dial is bounded; an expired
/// entry's place is taken by the next node announced.
pub const MAX_DISCOVERED: usize = 64;
/// How long the larger node id of a pair that discovered each other waits for the smaller
/// one's dial before dialling itself.
const DISCOVERED_DEFER: Duration = Duration::from_millis(700);

/// Most peers linked at once (configured ones may exceed it, see [`Net::peer_limit_reached`]).
/// Each costs a descriptor, buffers and a place in every index summary this node sends as a
/// follower, whose list of peers a receiver caps at 256 on decode; 128 stays well under
/// that and, with the handshakes admission lets through (`admit::PENDING_MAX`, 64) and the
/// files `sync` opens, well under the usual 1024 descriptors.
pub const MAX_PEERS: usize = 128;
/// Most bytes queued for one connection (its outbound gauge) before it is cut off as a
/// peer that does not read. Beyond `OUT_HIGH`, which paces file data, `sync` queues index
/// and plan streams whole, as fast as it reads them from its store (about 100-150 bytes an
/// entry): 64 MiB holds the stream of some 500,000 entries, five times the first sync of
/// 100,000 files this daemon is sized for, so an honest slow peer mid-session is not cut,
/// while a peer that never reads costs at most this much.
pub const OUT_MAX: usize = 64 * 1024 * 1024;
/// When accepting failed for want of descriptors, the listener is tried again after this:
/// its readiness is edge-triggered, and connections left waiting in its backlog would
/// produce no new event.
const ACCEPT_RETRY: Duration = Duration::from_secs(1);
/// A limit hit again within this time is not logged again (the same limit, or per node id).
const LOG_EVERY: Duration = Duration::from_secs(60);
/// Node ids whose conflicts' log times are remembered; past this the old ones are forgotten.
const CONFLICTS_REMEMBERED: usize = 256;

const WAKER: Token = Token(0);
const LISTENER: Token = Token(1);
const FIRST_CONN: u64 = 2;

/// Something `sync` queued for a connection.
enum Out<'a> {
    Msg(&'a Message),
    Frame(Arc<Vec<u8>>),
}

/// Creates the poll and the listener (so a bind failure is reported before anything
/// starts), spawns the `net` thread and returns its handle.
pub fn spawn(
    opts: NetOptions,
    events: Sender<NetEvent>,
) -> Result<(JoinHandle<()>, NetHandle), StartError> {
    let poll = Poll::new().map_err(|e| StartError(format!("cannot create poll: {e}")))?;
    let waker = Arc::new(
        Waker::new(poll.registry(), WAKER)
            .map_err(|e| StartError(format!("cannot create waker: {e}")))?,
    );
    let listener = match opts.listen {
        Some(addr) => {
            let mut l = TcpListener::bind(addr)
                .map_err(|e| StartError(format!("cannot listen on {addr}: {e}")))?;
            poll.registry()
                .register(&mut l, LISTENER, Interest::READABLE)
                .map_err(|e| StartError(format!("cannot register listener: {e}")))?;
            Some(l)
        }
        None => None,
    };
    let inbound = Arc::new(InboundGauge {
        bytes: AtomicUsize::new(0),
        paused: AtomicBool::new(false),
        waker: waker.clone(),
    });
    let (tx, rx) = unbounded();
    let handle = NetHandle {
        tx,
        waker,
        inbound,
        traffic: Arc::new(Traffic::default()),
    };
    let own = handle.clone();
    let thread = std::thread::Builder::new()
        .name("net".into())
        .spawn(move || {
            let mut net = Net::new(poll, listener, opts, events, rx, own);
            net.run();
        })
        .map_err(|e| StartError(format!("cannot spawn thread net: {e}")))?;
    Ok((thread, handle))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Timer {
    /// Check connect / handshake / idle deadlines of a connection.
    Conn(ConnId),
    /// Try peer address `i` (configured or discovered) again.
    Redial(usize),
    /// End of the shutdown grace period.
    Drained,
    /// Try the listener again (accepting failed for want of descriptors).
    Accept,
    /// A control client's deadline.
    Control,
}

struct PeerAddr {
    text: String,
    /// The address it resolved to when last dialled (or at start-up for a literal address).
    resolved: Option<SocketAddr>,
    /// A `resolve` helper thread is looking the name up.
    resolving: bool,
    /// The node last seen at this address; while it is connected we do not dial.
    node: Option<NodeId>,
    /// A dial to this address is in flight (connecting or handshaking).
    in_flight: Option<ConnId>,
    failures: u32,
    /// Found by discovery, not configured: no more dials after this (the announcement's TTL
    /// past the last one heard).
    discovered: Option<Instant>,
    /// When the node at this address last spoke to us, and why the last dial failed: what
    /// `status` shows of a peer not connected.
    last_seen: Option<Instant>,
    last_error: Option<String>,
}

impl PeerAddr {
    fn expired(&self, now: Instant) -> bool {
        self.discovered.is_some_and(|until| now >= until)
    }
}

struct Net {
    poll: Poll,
    listener: Option<TcpListener>,
    opts: NetOptions,
    events_tx: Sender<NetEvent>,
    cmd_rx: Receiver<NetCmd>,
    /// Our own handle: helper threads answer through it, and it holds the shared gauges.
    own: NetHandle,
    conns: HashMap<ConnId, Conn>,
    /// Which connection is *the* connection to a node.
    by_node: HashMap<NodeId, ConnId>,
    next_id: ConnId,
    timers: BinaryHeap<Reverse<(Instant, Timer)>>,
    peers: Vec<PeerAddr>,
    /// Reading is paused because `sync` is behind.
    read_paused: bool,
    /// A connection stopped at its read budget with data left (`read_pending` says which).
    more_to_read: bool,
    /// The last turn stopped at `COMMAND_BUDGET` with commands left in the channel.
    more_commands: bool,
    /// Shutting down: flushing what is queued, accepting nothing new.
    draining: bool,
    /// Incoming connections are taken (see [`NetCmd::Accept`]).
    accepting: bool,
    drain_expired: bool,
    /// Limits on incoming connections that have not finished their handshake.
    admission: Admission,
    /// A descriptor held in reserve (`/dev/null`): out of descriptors, it is closed to accept
    /// and at once close one waiting connection, so the backlog drains instead of filling
    /// up with connections nobody takes (see [`Net::refuse_waiting`]).
    reserve: Option<std::fs::File>,
    /// A `Timer::Accept` is pending.
    accept_retry: bool,
    /// When running out of descriptors was last logged.
    fds_logged: Option<Instant>,
    /// When the peer limit was last logged.
    limit_logged: Option<Instant>,
    /// When a node id conflict was last logged, per node id.
    conflicts_logged: HashMap<NodeId, Instant>,
    control: Option<control::Server>,
}

impl Net {
    fn new(
        poll: Poll,
        listener: Option<TcpListener>,
        mut opts: NetOptions,
        events_tx: Sender<NetEvent>,
        cmd_rx: Receiver<NetCmd>,
        own: NetHandle,
    ) -> Net {
        let control = opts
            .control
            .take()
            .and_then(|c| control::Server::new(c, poll.registry()));
        let peers = opts
            .peers
            .iter()
            .map(|p| PeerAddr {
                text: p.clone(),
                resolved: p.parse().ok(),
                resolving: false,
                node: None,
                in_flight: None,
                failures: 0,
                discovered: None,
                last_seen: None,
                last_error: None,
            })
            .collect();
        Net {
            poll,
            listener,
            opts,
            events_tx,
            cmd_rx,
            own,
            conns: HashMap::new(),
            by_node: HashMap::new(),
            next_id: FIRST_CONN,
            timers: BinaryHeap::new(),
            peers,
            read_paused: false,
            more_to_read: false,
            more_commands: false,
            draining: false,
            accepting: false,
            drain_expired: false,
            admission: Admission::default(),
            reserve: std::fs::File::open("/dev/null").ok(),
            accept_retry: false,
            fds_logged: None,
            limit_logged: None,
            conflicts_logged: HashMap::new(),
            control,
        }
    }

    fn emit(&self, ev: NetEvent) {
        // `sync` gone means we are shutting down; nothing to do with the event.
        let _ = self.events_tx.send(ev);
    }

    fn run(&mut self) {
        let port = self
            .listener
            .as_ref()
            .and_then(|l| l.local_addr().ok())
            .map(|a| a.port());
        if let Some(p) = port {
            log::info!("listening on port {p}");
        }
        self.emit(NetEvent::Listening { port });
        for i in 0..self.peers.len() {
            self.dial(i);
        }
        let mut events = Events::with_capacity(256);
        loop {
            let timeout = if (self.more_to_read && !self.read_paused) || self.more_commands {
                // Data is waiting in a socket, or commands in the channel: look at the others
                // and come straight back.
                Some(Duration::ZERO)
            } else {
                self.timers
                    .peek()
                    .map(|Reverse((at, _))| at.saturating_duration_since(Instant::now()))
            };
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                log::error!("poll failed, network stopped: {e}");
                return;
            }
            // The control socket first: a status is answered before this turn's reading
            // and decoding of peers' data, which can take milliseconds on a small machine.
            for event in events.iter() {
                match event.token() {
                    control::LISTENER => self.control_accept(),
                    t => {
                        if let Some(slot) = control::slot_of(t) {
                            let closed = event.is_read_closed() || event.is_error();
                            let readable = event.is_readable() || closed;
                            self.control_event(slot, readable, event.is_writable());
                        }
                    }
                }
            }
            for event in events.iter() {
                match event.token() {
                    WAKER | control::LISTENER => {}
                    LISTENER => self.accept(),
                    t if control::slot_of(t).is_some() => {}
                    Token(t) => {
                        let id = t as ConnId;
                        if event.is_writable() || event.is_write_closed() {
                            self.on_writable(id);
                        }
                        if event.is_readable() || event.is_read_closed() || event.is_error() {
                            self.on_readable(id);
                        }
                    }
                }
            }
            if !self.draining && !self.handle_commands() {
                // Give what is queued (a final SessionEnd, say) a short chance to reach the
                // peers, and the peers the chance to read it, before the sockets close.
                self.draining = true;
                self.set_timer(Instant::now() + CLOSE_GRACE, Timer::Drained);
                if let Some(mut l) = self.listener.take() {
                    let _ = self.poll.registry().deregister(&mut l);
                }
                self.close_gracefully_all();
            }
            // Timers before the drain check: the drain's own deadline is a timer, and checked
            // first it would wait for the next event or timer after it (a stranger's 10 s
            // handshake deadline, say) to be noticed.
            self.fire_timers();
            if self.draining && (self.drain_expired || self.conns.is_empty()) {
                self.close_all();
                return;
            }
            self.maybe_resume_reading();
            self.read_more();
        }
    }

    /// Takes commands from the channel, at most `COMMAND_BUDGET` a turn. Returns false on
    /// shutdown.
    ///
    /// The budget is what keeps reading and timers alive during a transfer: each frame
    /// queued is flushed at once, `sync` refills as the gauge drains, and on loopback the
    /// channel could stay non-empty for the whole of a 400 MiB fan-out. Draining it to the
    /// end then meant no socket read and no timer for 90 s under qemu: every receiver's
    /// pings sat unread, and when the sending ended all four were dropped as "silent".
    fn handle_commands(&mut self) -> bool {
        self.more_commands = false;
        for _ in 0..COMMAND_BUDGET {
            match self.cmd_rx.try_recv() {
                Ok(NetCmd::Send { conn, msg }) => self.queue_from_sync(conn, Out::Msg(&msg)),
                Ok(NetCmd::SendFrame { conn, frame }) => {
                    self.queue_from_sync(conn, Out::Frame(frame))
                }
                Ok(NetCmd::Close { conn, reason }) => {
                    if let Some(c) = self.conns.get_mut(&conn) {
                        log::info!("closing connection to {}: {reason}", c.describe());
                        c.state = ConnState::Closing;
                        self.set_timer(Instant::now() + CLOSE_GRACE, Timer::Conn(conn));
                        self.flush(conn);
                    }
                }
                Ok(NetCmd::Accept) => {
                    self.accepting = true;
                    // The listener is edge-triggered: what queued before says nothing more.
                    self.accept();
                }
                Ok(NetCmd::Resolved { peer, result }) => self.on_resolved(peer, result),
                Ok(NetCmd::ControlReply { client, text }) => self.control_reply(client, text),
                Ok(NetCmd::Discovered { node, addr, ttl }) => {
                    self.on_discovered(node, addr, Instant::now() + ttl)
                }
                Ok(NetCmd::Shutdown) | Err(TryRecvError::Disconnected) => return false,
                Err(TryRecvError::Empty) => return true,
            }
        }
        self.more_commands = true;
        true
    }

    fn queue_from_sync(&mut self, id: ConnId, out: Out) {
        let Some(c) = self.conns.get_mut(&id) else {
            // The connection died after sync queued this; sync learns from Disconnected.
            return;
        };
        if c.state != ConnState::Ready {
            return;
        }
        match out {
            Out::Msg(msg) => c.queue(msg, false),
            Out::Frame(frame) => c.queue_frame(frame),
        }
        self.flush(id);
    }

    fn set_timer(&mut self, at: Instant, t: Timer) {
        self.timers.push(Reverse((at, t)));
    }

    fn fire_timers(&mut self) {
        let now = Instant::now();
        while let Some(Reverse((at, t))) = self.timers.peek().copied() {
            if at > now {
                break;
            }
            self.timers.pop();
            match t {
                Timer::Conn(id) => self.check_conn(id, now),
                Timer::Redial(i) => {
                    if !self.draining {
                        self.dial(i)
                    }
                }
                Timer::Drained => self.drain_expired = true,
                Timer::Accept => {
                    self.accept_retry = false;
                    if !self.draining {
                        self.accept();
                    }
                }
                Timer::Control => self.control_expire(now),
            }
        }
    }

    /// Enforces the deadlines of one connection; timers are lazily invalidated, so this
    /// re-derives everything from the connection's own timestamps.
    fn check_conn(&mut self, id: ConnId, now: Instant) {
        let Some(c) = self.conns.get_mut(&id) else {
            return;
        };
        let reason = match c.state {
            ConnState::Connecting if now >= c.since + CONNECT_TIMEOUT => Some("connect timed out"),
            ConnState::Handshaking if now >= c.since + HANDSHAKE_TIMEOUT => {
                Some("handshake timed out")
            }
            ConnState::Closing => Some("closed"),
            ConnState::Ready if now >= c.last_recv + IDLE_TIMEOUT => {
                Some("peer silent for too long")
            }
            // A peer that keeps talking but takes nothing of what we send would hold its
            // queue (up to `OUT_MAX`) and its descriptor for ever.
            ConnState::Ready if c.has_output() && now >= c.last_send + IDLE_TIMEOUT => {
                Some("peer read nothing for too long")
            }
            _ => None,
        };
        if let Some(reason) = reason {
            self.close(id, reason);
            return;
        }
        if c.state == ConnState::Ready && now >= c.last_send + PING_AFTER {
            // Quiet for a while: what a transfer's frames needed is not needed now.
            if c.shrink_idle() {
                crate::mem::release_free();
            }
            // Output still waiting says we are alive as well, once the peer reads it; a
            // Ping queued behind it every time would only add to it.
            if !c.has_output() {
                c.queue(&LinkMsg::Ping.into(), true);
                self.flush(id);
            }
        }
        let next = match self.conns.get(&id) {
            Some(c) => match c.state {
                ConnState::Connecting => c.since + CONNECT_TIMEOUT,
                ConnState::Handshaking => c.since + HANDSHAKE_TIMEOUT,
                _ => {
                    // Nothing written for a while (a peer not reading): the next look is a
                    // ping's interval away, not at once again.
                    let ping_at = c.last_send + PING_AFTER;
                    let ping_at = if ping_at <= now {
                        now + PING_AFTER
                    } else {
                        ping_at
                    };
                    let stall_at = c.last_send + IDLE_TIMEOUT;
                    let stall_at = if c.has_output() { stall_at } else { ping_at };
                    (c.last_recv + IDLE_TIMEOUT).min(ping_at).min(stall_at)
                }
            },
            None => return,
        };
        self.set_timer(next.max(now + Duration::from_millis(10)), Timer::Conn(id));
    }

    fn register(&mut self, mut stream: TcpStream, addr: SocketAddr, dialed: Option<usize>) {
        let id = self.next_id;
        self.next_id += 1;
        let interest = if dialed.is_some() {
            // A non-blocking connect reports completion as writability.
            Interest::READABLE | Interest::WRITABLE
        } else {
            Interest::READABLE
        };
        if let Err(e) = self
            .poll
            .registry()
            .register(&mut stream, Token(id as usize), interest)
        {
            log::warn!("cannot register connection to {addr}: {e}");
            if let Some(i) = dialed {
                self.dial_failed(i, DialError::Unreachable(e.to_string()));
            }
            return;
        }
        let _ = stream.set_nodelay(true);
        let mut c = Conn::new(
            id,
            stream,
            addr,
            dialed,
            self.own.traffic.clone(),
            self.opts.link.clone(),
        );
        c.write_interest = dialed.is_some();
        if dialed.is_none() {
            c.state = ConnState::Handshaking;
            if let Err(e) = c.start_link() {
                log::warn!("cannot start a link with {addr}: {e}");
                return;
            }
            c.queue(&LinkMsg::Hello(self.hello()).into(), true);
        }
        self.conns.insert(id, c);
        if dialed.is_none() {
            self.flush(id);
        }
        let deadline = Instant::now() + CONNECT_TIMEOUT.min(HANDSHAKE_TIMEOUT);
        self.set_timer(deadline, Timer::Conn(id));
    }

    fn hello(&self) -> Hello {
        Hello {
            version: PROTOCOL_VERSION,
            node_id: self.opts.local.node_id.clone(),
            group: self.opts.local.group.clone(),
            listen_port: self.opts.local.listen_port,
            clock_ms: unix_ms(SystemTime::now()),
            storages: self.opts.local.storages.clone(),
        }
    }

    fn on_writable(&mut self, id: ConnId) {
        let Some(c) = self.conns.get_mut(&id) else {
            return;
        };
        if c.state == ConnState::Connecting {
            match c.connect_result() {
                Ok(true) => {
                    c.state = ConnState::Handshaking;
                    c.since = Instant::now();
                    if let Err(e) = c.start_link() {
                        self.close(id, &format!("cannot start a link: {e}"));
                        return;
                    }
                    let hello = LinkMsg::Hello(self.hello()).into();
                    if let Some(c) = self.conns.get_mut(&id) {
                        c.queue(&hello, true);
                    }
                }
                Ok(false) => return,
                Err(e) => {
                    self.close(id, &format!("connect failed: {e}"));
                    return;
                }
            }
        }
        self.flush(id);
    }

    /// Writes what is queued; manages write interest; reports drains.
    fn flush(&mut self, id: ConnId) {
        let Some(c) = self.conns.get_mut(&id) else {
            return;
        };
        if c.state == ConnState::Connecting {
            return;
        }
        let before = c.outbound.load(Ordering::Acquire);
        let result = c.write_out();
        let after = c.outbound.load(Ordering::Acquire);
        if let Err(e) = result {
            self.close(id, &format!("write failed: {e}"));
            return;
        }
        if after > OUT_MAX {
            log::warn!(
                "disconnecting {}: {after} bytes queued for it, more than {OUT_MAX}: it does \
                 not read what it is sent",
                c.describe()
            );
            self.close(id, "does not read what it is sent");
            return;
        }
        let pending = c.has_output();
        if pending != c.write_interest {
            let interest = if pending {
                Interest::READABLE | Interest::WRITABLE
            } else {
                Interest::READABLE
            };
            if let Err(e) =
                self.poll
                    .registry()
                    .reregister(&mut c.stream, Token(id as usize), interest)
            {
                self.close(id, &format!("cannot reregister: {e}"));
                return;
            }
            c.write_interest = pending;
        }
        if c.state == ConnState::Closing && !pending && !c.write_shut {
            // Everything is written: say so with a FIN, then wait for the peer's.
            c.write_shut = true;
            if c.stream.shutdown(std::net::Shutdown::Write).is_err() || c.discard_input() {
                self.close(id, "closed");
            }
            return;
        }
        if c.announced && before >= OUT_LOW && after < OUT_LOW {
            self.emit(NetEvent::Drained { conn: id });
        }
    }

    fn on_readable(&mut self, id: ConnId) {
        if let Some(c) = self
            .conns
            .get_mut(&id)
            .filter(|c| c.state == ConnState::Closing)
        {
            // Nothing more is taken from a closing peer, but its bytes must be read for our
            // own last frames to arrive intact (see `ConnState::Closing`).
            if c.write_shut && c.discard_input() {
                self.close(id, "closed");
            }
            return;
        }
        if self.read_paused {
            if let Some(c) = self.conns.get_mut(&id) {
                c.read_pending = true;
            }
            return;
        }
        let Some(c) = self.conns.get_mut(&id) else {
            return;
        };
        if c.state == ConnState::Connecting || c.state == ConnState::Closing {
            return;
        }
        // Checked before every read, not only when a read budget runs out: a peer whose
        // frames always fit one read would otherwise never be paused.
        if self.own.inbound.load() > IN_HIGH {
            c.read_pending = true;
            self.pause_reading();
            return;
        }
        let outcome = c.read_frames();
        let (frames, status) = match outcome {
            ReadOutcome::Frames(frames, status) => (frames, status),
            ReadOutcome::Error(reason) => {
                let who = c.describe();
                log::warn!("disconnecting {who}: {reason}");
                if c.state == ConnState::Handshaking {
                    c.refusal = Some(DialError::BadHandshake(reason.clone()));
                }
                self.refuse(id, &reason);
                return;
            }
            ReadOutcome::Refused(why) => {
                log::warn!("refusing {}: {why}", c.describe());
                c.refusal = Some(why);
                self.linger_close(id);
                return;
            }
        };
        // Reading may have advanced the link, which queues bytes of its own (the
        // handshake's reply, our sealed Hello): they go out now, not with the next
        // message.
        self.flush(id);
        for (msg, size) in frames {
            if !self.handle_frame(id, msg, size) {
                return;
            }
        }
        match status {
            conn::ReadStatus::WouldBlock => {}
            conn::ReadStatus::Closed => self.close(id, "connection closed by peer"),
            conn::ReadStatus::More => {
                // A read budget's worth, and there may be more: back to the poll loop
                // first, so that timers (our pings) and the other connections get
                // their turn. A peer sending faster than we decrypt (a Pi, qemu) kept
                // a loop here going for a minute, and our silence made its peers drop us.
                // Readiness is edge-triggered: `read_more` reads it again.
                if let Some(c) = self.conns.get_mut(&id) {
                    c.read_pending = true;
                }
                self.more_to_read = true;
            }
        }
    }

    /// Reads on from connections that stopped at their read budget (one budget each, in
    /// turn), unless reading is paused (then `maybe_resume_reading` takes them).
    fn read_more(&mut self) {
        if !self.more_to_read || self.read_paused {
            return;
        }
        self.more_to_read = false;
        self.read_marked();
    }

    /// Reads every connection marked `read_pending`: readiness is edge-triggered, so data
    /// left in a socket (at a read budget's end, or while reading was paused) produces no
    /// new event. Stops if reading is paused meanwhile; the rest keep their mark.
    fn read_marked(&mut self) {
        let marked: Vec<ConnId> = self
            .conns
            .iter()
            .filter(|(_, c)| c.read_pending)
            .map(|(id, _)| *id)
            .collect();
        for id in marked {
            if self.read_paused {
                break;
            }
            if let Some(c) = self.conns.get_mut(&id) {
                c.read_pending = false;
            }
            self.on_readable(id);
        }
    }

    fn pause_reading(&mut self) {
        self.read_paused = true;
        self.own.inbound.paused.store(true, Ordering::Release);
        log::trace!("reading paused: sync is behind");
    }

    fn maybe_resume_reading(&mut self) {
        if !self.read_paused || self.own.inbound.load() >= IN_LOW {
            return;
        }
        self.read_paused = false;
        self.own.inbound.paused.store(false, Ordering::Release);
        self.read_marked();
    }

    /// Handles one decoded frame. Returns false if the connection was closed.
    fn handle_frame(&mut self, id: ConnId, msg: Message, size: usize) -> bool {
        let Some(c) = self.conns.get_mut(&id) else {
            return false;
        };
        c.last_recv = Instant::now();
        match (c.state, msg) {
            (ConnState::Handshaking, Message::Link(LinkMsg::Hello(h))) => self.on_hello(id, h),
            (_, Message::Link(LinkMsg::Refuse { reason })) => {
                let who = c.describe();
                log::warn!("{who} refused the connection: {reason}");
                c.refusal = Some(DialError::RefusedByPeer(reason));
                self.close(id, "refused by peer");
                false
            }
            (ConnState::Handshaking, other) => {
                let reason = format!("sent {} before the handshake", other.name());
                log::warn!("disconnecting {}: {reason}", c.describe());
                c.refusal = Some(DialError::BadHandshake(reason.clone()));
                self.refuse(id, &reason);
                false
            }
            (ConnState::Ready, Message::Link(LinkMsg::Hello(_))) => {
                log::warn!("disconnecting {}: second Hello", c.describe());
                self.refuse(id, "second Hello");
                false
            }
            (ConnState::Ready, Message::Link(LinkMsg::Ping)) => {
                // Output still queued will prove we are alive as well as a Pong. Answering
                // every Ping of a peer that floods them and reads nothing grew our memory
                // by 118 MiB in seconds.
                if !c.has_output() {
                    c.queue(&LinkMsg::Pong.into(), true);
                    self.flush(id);
                }
                true
            }
            (ConnState::Ready, Message::Link(LinkMsg::Pong)) => true,
            (ConnState::Ready, Message::Peer(msg)) => {
                // Charged with a per-message overhead: thousands of tiny frames cost memory
                // their bytes alone do not show.
                let size = size + MESSAGE_OVERHEAD;
                self.own.inbound.add(size);
                self.emit(NetEvent::Message {
                    conn: id,
                    msg,
                    size,
                });
                true
            }
            // Connecting or closing: nothing more is taken from this connection.
            (ConnState::Connecting | ConnState::Closing, _) => true,
        }
    }

    fn on_hello(&mut self, id: ConnId, h: Hello) -> bool {
        let local = &self.opts.local;
        let refusal = if h.node_id == local.node_id {
            Some(DialError::OwnNodeId(h.node_id.clone()))
        } else if h.group != local.group {
            Some(DialError::OtherGroup {
                node: h.node_id.clone(),
                ours: local.group.clone(),
                theirs: h.group.clone(),
            })
        } else {
            None
        };
        if let Some(why) = refusal {
            let reason = why.to_string();
            if let Some(c) = self.conns.get_mut(&id) {
                log::warn!("refusing {}: {reason}", c.describe());
                c.refusal = Some(why);
            }
            self.refuse(id, &reason);
            return false;
        }
        let node = h.node_id.clone();
        let Some(c) = self.conns.get_mut(&id) else {
            return false;
        };
        c.hello_port = h.listen_port;
        let dialed_by_us = c.dialed.is_some();
        let addr = c.addr;
        if let Some(reason) = self.id_conflict(id, &node) {
            if let Some(c) = self.conns.get_mut(&id) {
                c.refusal = Some(DialError::BadHandshake(reason.clone()));
            }
            self.refuse(id, &reason);
            return false;
        }
        // Configured addresses this incoming peer listens at: reached, though not by us.
        let mut found_at = Vec::new();
        if !dialed_by_us && h.listen_port != 0 {
            // The peer told us where it listens: if that is a configured address, we know who
            // is there and will not dial it while this connection lives.
            let listens_at = SocketAddr::new(addr.ip(), h.listen_port);
            for p in &mut self.peers {
                if p.resolved == Some(listens_at) {
                    p.node = Some(node.clone());
                    found_at.push(p.text.clone());
                }
            }
        }
        let replacing = self.by_node.contains_key(&node);
        // One connection per peer. A connection that has been up for a while is kept: it may
        // carry a session. Two that came up together (both nodes dialled at once) are settled
        // by a rule both ends apply alike: keep the one dialled by the smaller node id.
        // One that is closing (refused, or closed by sync) carries nothing more and only
        // lingers to flush its last frames: a peer that reconnects at once must not be
        // turned away as its duplicate, or it would be locked out for the whole grace.
        if let Some(&old) = self.by_node.get(&node) {
            let old_conn = self.conns.get(&old);
            let old_closing = old_conn.is_some_and(|c| c.state == ConnState::Closing);
            let old_dialed_by_us = old_conn.is_some_and(|c| c.dialed.is_some());
            let old_settled = old_conn.is_some_and(|c| c.since.elapsed() >= SETTLE_TIME);
            let we_are_smaller = self.opts.local.node_id < node;
            let preferred_is_ours = we_are_smaller;
            let new_preferred = dialed_by_us == preferred_is_ours;
            let old_preferred = old_dialed_by_us == preferred_is_ours;
            if !old_closing && (old_settled || !new_preferred || old_preferred) {
                log::debug!("dropping duplicate connection {id} to {node}");
                self.note_dial_ok(id, &node);
                self.close(id, "duplicate connection");
                return false;
            }
            if old_closing {
                self.detach_closing(old, &node);
            } else {
                log::debug!("replacing connection {old} to {node} with {id}");
                self.close(old, "replaced by the preferred duplicate");
            }
        }
        if !replacing && self.peer_limit_reached(self.is_configured_conn(id)) {
            let reason = format!("too many peers ({MAX_PEERS})");
            if let Some(c) = self.conns.get_mut(&id) {
                if log_due(&mut self.limit_logged, Instant::now()) {
                    log::warn!("refusing {}: {reason} (logged once a minute)", c.describe());
                }
                c.refusal = Some(DialError::BadHandshake(reason.clone()));
            }
            self.refuse(id, &reason);
            return false;
        }
        let Some(c) = self.conns.get_mut(&id) else {
            return false;
        };
        c.state = ConnState::Ready;
        c.since = Instant::now();
        c.peer = Some(node.clone());
        self.admission.finished(id);
        c.announced = true;
        let outbound = c.outbound.clone();
        self.by_node.insert(node.clone(), id);
        log::info!(
            "connected to {node} at {addr} ({})",
            if dialed_by_us { "outgoing" } else { "incoming" }
        );
        if let Some(w) = clock_skew_warning(&node, h.clock_ms, unix_ms(SystemTime::now())) {
            log::warn!("{w}");
        }
        self.emit(NetEvent::Connected {
            conn: id,
            hello: h,
            addr,
            outbound,
        });
        // After `Connected`, so that whoever counts successful dials already knows the peer.
        self.note_dial_ok(id, &node);
        for addr in found_at {
            self.emit(NetEvent::DialResult {
                addr,
                result: Ok(()),
            });
        }
        true
    }

    /// Sends `Refuse` (so the peer can log why), then closes once flushed or after a grace.
    fn refuse(&mut self, id: ConnId, reason: &str) {
        let Some(c) = self.conns.get_mut(&id) else {
            return;
        };
        c.queue(
            &LinkMsg::Refuse {
                reason: reason.to_owned(),
            }
            .into(),
            true,
        );
        self.linger_close(id);
    }

    /// Closes once what is queued is flushed (and the peer closed, or a grace ended).
    fn linger_close(&mut self, id: ConnId) {
        let Some(c) = self.conns.get_mut(&id) else {
            return;
        };
        c.state = ConnState::Closing;
        self.set_timer(Instant::now() + CLOSE_GRACE, Timer::Conn(id));
        self.flush(id);
    }

    /// Makes a closing connection nobody's: sync learns that it is gone now, while its
    /// socket still lingers to flush what was queued (a `Refuse` the peer should read).
    fn detach_closing(&mut self, id: ConnId, node: &NodeId) {
        if self.by_node.get(node) == Some(&id) {
            self.by_node.remove(node);
            log::info!("disconnected from {node}: closed (it has connected again)");
        }
        let Some(c) = self.conns.get_mut(&id) else {
            return;
        };
        if std::mem::take(&mut c.announced) {
            self.emit(NetEvent::Disconnected {
                conn: id,
                reason: "closed".to_owned(),
            });
        }
    }

    fn close(&mut self, id: ConnId, reason: &str) {
        let Some(mut c) = self.conns.remove(&id) else {
            return;
        };
        self.admission.finished(id);
        let _ = self.poll.registry().deregister(&mut c.stream);
        if let Some(i) = c.dialed {
            if self.peers.get(i).is_some_and(|p| p.in_flight == Some(id)) {
                // Failed before the handshake finished: a failed dial.
                let why = c
                    .refusal
                    .take()
                    .unwrap_or_else(|| DialError::Unreachable(reason.to_owned()));
                self.dial_failed(i, why);
            }
        }
        if let Some(node) = &c.peer {
            if self.by_node.get(node) == Some(&id) {
                self.by_node.remove(node);
                log::info!("disconnected from {node}: {reason}");
                for p in self
                    .peers
                    .iter_mut()
                    .filter(|p| p.node.as_ref() == Some(node))
                {
                    p.last_seen = Some(c.last_recv);
                }
                // Reconnect configured peers that we lost.
                let lost: Vec<usize> = self
                    .peers
                    .iter()
                    .enumerate()
                    .filter(|(_, p)| p.node.as_ref() == Some(node) && p.in_flight.is_none())
                    .map(|(i, _)| i)
                    .collect();
                if self.opts.redial_forever {
                    for i in lost {
                        self.set_timer(Instant::now() + REDIAL_MIN, Timer::Redial(i));
                    }
                }
            }
        }
        if c.announced {
            self.emit(NetEvent::Disconnected {
                conn: id,
                reason: reason.to_owned(),
            });
        } else {
            log::debug!("connection {id} to {} closed: {reason}", c.addr);
        }
    }

    /// Shutdown: every linked connection flushes, half-closes and waits for its peer to
    /// close (bounded by the drain's grace). One still connecting or in its handshake is
    /// closed at once: it carries no session, and strangers that never finish a handshake
    /// must not hold the shutdown up.
    fn close_gracefully_all(&mut self) {
        let ids: Vec<ConnId> = self.conns.keys().copied().collect();
        for id in ids {
            let Some(c) = self.conns.get_mut(&id) else {
                continue;
            };
            match c.state {
                ConnState::Connecting | ConnState::Handshaking => self.close(id, "shutting down"),
                ConnState::Closing => {}
                ConnState::Ready => {
                    c.state = ConnState::Closing;
                    self.flush(id);
                }
            }
        }
    }

    fn close_all(&mut self) {
        let ids: Vec<ConnId> = self.conns.keys().copied().collect();
        for id in ids {
            if let Some(c) = self.conns.get_mut(&id) {
                // Best effort: whatever is queued gets one last chance.
                let _ = c.write_out();
            }
            self.close(id, "shutting down");
        }
    }
}
