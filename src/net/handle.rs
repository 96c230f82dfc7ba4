//! The one way into the `net` thread for every other thread: the [`NetHandle`] (a command
//! channel and the poll's waker), the commands it takes ([`NetCmd`]), the events `net` sends
//! out ([`NetEvent`]), the byte gauges both sides share, and the options `net` is started
//! with. Other threads import this module and nothing else of `net`.
//!
//! Back-pressure in both directions is by byte gauges shared with `sync`:
//! - outbound: `sync` adds a frame's size to the connection's gauge before handing it over;
//!   `net` subtracts what reaches the socket and sends [`NetEvent::Drained`] when the gauge
//!   falls below [`OUT_LOW`], so `sync` can stop at [`OUT_HIGH`] and wait;
//! - inbound: `net` adds each delivered frame to one [`InboundGauge`]; `sync` subtracts after
//!   handling it. Above [`IN_HIGH`] `net` stops reading sockets (TCP then slows the peer) and
//!   `sync` wakes it once below [`IN_LOW`].

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use crossbeam_channel::Sender;
use mio::Waker;

pub use super::link::{LinkConfig, Mode as LinkMode};
use crate::model::NodeId;
use crate::proto::{Hello, Message, PeerMsg};
use crate::run::DialError;

/// Identifies one connection for its whole life; never reused.
pub type ConnId = u64;

/// `sync` stops queueing file data to a connection above this many unsent bytes...
pub const OUT_HIGH: usize = 1024 * 1024;
/// ...and resumes when `net` reports the gauge fell below this.
pub const OUT_LOW: usize = 256 * 1024;
/// `net` stops reading sockets when `sync` has this many bytes of messages unhandled...
pub const IN_HIGH: usize = 2 * 1024 * 1024;
/// ...and resumes below this.
pub const IN_LOW: usize = 512 * 1024;
/// Messages from this size on are handed to `net` encoded (see [`NetHandle::send_msg`]);
/// smaller ones, coalesced by `net`, as they are.
const ENCODED_FROM: usize = 4096;

/// Commands from `sync` to `net`.
#[derive(Debug)]
pub enum NetCmd {
    /// Queue a message. The caller has already added its frame size to the connection's
    /// outbound gauge.
    Send {
        conn: ConnId,
        msg: Message,
    },
    /// Queue an encoded frame (file data built in place by the sender; one allocation
    /// shared by every receiver). Counted in the gauge by the caller, like `Send`.
    SendFrame {
        conn: ConnId,
        frame: Arc<Vec<u8>>,
    },
    /// Close a connection (after flushing what is queued), logging `reason`.
    Close {
        conn: ConnId,
        reason: String,
    },
    /// `mdns` heard `node` of our group announce itself at `addr`. Dialled unless connected;
    /// forgotten (no more redials) `ttl` after the last announcement.
    Discovered {
        node: NodeId,
        addr: SocketAddr,
        ttl: std::time::Duration,
    },
    /// The answer to control client `client`'s sync request (see [`NetEvent::ControlSync`]):
    /// written, then the client is closed.
    ControlReply {
        client: u64,
        text: String,
    },
    /// Start taking incoming connections: `sync` has opened the database and the storages.
    /// Until then they wait in the listener's backlog, where they hold no descriptor of
    /// ours: a crowd connecting at start-up must not take the ones the database needs.
    Accept,
    /// Internal: the `resolve` helper's answer for configured peer `peer`.
    Resolved {
        peer: usize,
        result: Result<SocketAddr, String>,
    },
    Shutdown,
}

/// Events from `net` to `sync`.
#[derive(Debug)]
pub enum NetEvent {
    /// A handshake completed: this is now the one connection to `hello.node_id`.
    Connected {
        conn: ConnId,
        hello: Hello,
        addr: SocketAddr,
        /// Unsent bytes queued for this connection (see the module doc).
        outbound: Arc<AtomicUsize>,
    },
    /// A decoded message. `size` must be released from the inbound gauge once handled.
    Message {
        conn: ConnId,
        msg: PeerMsg,
        size: usize,
    },
    /// A connection that had sent `Connected` is gone.
    Disconnected { conn: ConnId, reason: String },
    /// The outbound gauge of `conn` fell below [`OUT_LOW`].
    Drained { conn: ConnId },
    /// Outcome of one attempt to reach a configured peer address (also sent when a peer
    /// that dialled us turns out to listen at a configured address).
    DialResult {
        addr: String,
        result: Result<(), DialError>,
    },
    /// A node announced by discovery is new, back after it expired, or at a new address:
    /// it is being dialled (its [`NetEvent::DialResult`]s carry `addr`).
    Discovered { node: NodeId, addr: String },
    /// A control client asks to synchronize `storage` (all: `None`) now. `sync` answers with
    /// [`NetCmd::ControlReply`], at once or, with `wait`, when that is done.
    ControlSync {
        client: u64,
        storage: Option<String>,
        wait: bool,
    },
    /// The listener is up (or `port` is `None`: this node does not listen).
    Listening { port: Option<u16> },
}

/// Bytes of delivered-but-unhandled messages, shared by `net` (adds) and `sync` (releases).
pub struct InboundGauge {
    pub(super) bytes: AtomicUsize,
    pub(super) paused: AtomicBool,
    pub(super) waker: Arc<Waker>,
}

impl InboundGauge {
    /// Called by `sync` after handling a message of `size` bytes.
    pub fn release(&self, size: usize) {
        let before = self.bytes.fetch_sub(size, Ordering::AcqRel);
        let after = before.saturating_sub(size);
        if after < IN_LOW && self.paused.load(Ordering::Acquire) {
            let _ = self.waker.wake();
        }
    }

    pub(super) fn add(&self, size: usize) {
        self.bytes.fetch_add(size, Ordering::AcqRel);
    }

    pub(super) fn load(&self) -> usize {
        self.bytes.load(Ordering::Acquire)
    }
}

/// The way into the `net` thread: send a command, then wake the poll loop.
#[derive(Clone)]
pub struct NetHandle {
    pub(super) tx: Sender<NetCmd>,
    pub(super) waker: Arc<Waker>,
    pub inbound: Arc<InboundGauge>,
    /// Bytes this node put on and took off the wire, all connections together.
    pub traffic: Arc<Traffic>,
}

/// Wire byte counters. A mutex rather than 64-bit atomics, which some 32-bit targets lack;
/// only `net` writes it, once per socket call.
#[derive(Default)]
pub struct Traffic(std::sync::Mutex<(u64, u64)>);

impl Traffic {
    pub fn add(&self, sent: u64, received: u64) {
        if let Ok(mut t) = self.0.lock() {
            t.0 += sent;
            t.1 += received;
        }
    }

    /// (sent, received) so far.
    pub fn get(&self) -> (u64, u64) {
        self.0.lock().map(|t| *t).unwrap_or((0, 0))
    }
}

impl NetHandle {
    pub fn send(&self, cmd: NetCmd) {
        if self.tx.send(cmd).is_ok() {
            let _ = self.waker.wake();
        }
    }

    /// Queues `msg` for `conn`, accounting its size in the connection's outbound gauge.
    /// A big message (a chunk of a plan or an index) travels as its encoded frame: a
    /// leader queues every peer's plan faster than `net` writes it, and the frame is a
    /// fraction of the decoded items' memory (100,000 files: a few MiB, not tens).
    pub fn send_msg(&self, conn: ConnId, outbound: &AtomicUsize, msg: impl Into<Message>) {
        let msg = msg.into();
        let mut frame = Vec::new();
        crate::proto::encode_frame(&msg, &mut frame);
        if frame.len() >= ENCODED_FROM {
            frame.shrink_to_fit();
            self.send_frame(conn, outbound, Arc::new(frame));
        } else {
            outbound.fetch_add(frame.len(), Ordering::AcqRel);
            self.send(NetCmd::Send { conn, msg });
        }
    }

    /// Queues an encoded frame for `conn`, accounting its size in the outbound gauge.
    pub fn send_frame(&self, conn: ConnId, outbound: &AtomicUsize, frame: Arc<Vec<u8>>) {
        outbound.fetch_add(frame.len(), Ordering::AcqRel);
        self.send(NetCmd::SendFrame { conn, frame });
    }

    pub fn shutdown(&self) {
        self.send(NetCmd::Shutdown);
    }
}

/// What this node says about itself in every handshake.
#[derive(Clone, Debug)]
pub struct LocalInfo {
    pub node_id: NodeId,
    pub group: Option<String>,
    pub listen_port: u16,
    pub storages: Vec<String>,
}

/// Options for the `net` thread, derived from the config by the caller.
pub struct NetOptions {
    pub local: LocalInfo,
    /// Address to listen on; `None` for a node that only dials.
    pub listen: Option<SocketAddr>,
    /// Configured peer addresses (`host:port`), dialled and redialled.
    pub peers: Vec<String>,
    /// Keep redialling forever (daemon) or give up after the first failure of each attempt
    /// cycle (one-shot: `sync` decides when to stop waiting).
    pub redial_forever: bool,
    /// How links are protected, with the passphrase's key already derived.
    pub link: Arc<LinkConfig>,
    /// The daemon's control socket, if it serves one.
    pub control: Option<ControlOptions>,
}

/// The control socket `net` serves (bound by the caller, so that a second daemon stops
/// before anything starts), and what a status is made of besides `net`'s own peers.
pub struct ControlOptions {
    pub listener: std::os::unix::net::UnixListener,
    /// Removed when `net` stops.
    pub path: std::path::PathBuf,
    pub board: crate::status::Board,
    pub info: crate::status::NodeInfo,
}
