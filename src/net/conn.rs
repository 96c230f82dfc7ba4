//! One peer connection as the `net` thread sees it: the socket, its read and write buffers,
//! its handshake state and its timestamps.
//!
//! Reading turns bytes into decoded messages (never more than one frame's worth of buffer
//! beyond what has arrived); writing drains the queued frames until the socket would block.
//! No policy lives here: what a message means is decided by `net/mod.rs` and `sync`.

use std::collections::VecDeque;
use std::io::{self, IoSlice, Read, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use mio::net::TcpStream;

use crate::model::NodeId;
use crate::proto::{self, Message, FRAME_HEADER, MAX_FRAME};
use crate::run::DialError;

use super::{ConnId, Traffic};

const READ_CHUNK: usize = 64 * 1024;
/// Most bytes read from one socket before yielding to the loop, so one busy peer cannot
/// starve the others or overrun the inbound gauge by much.
const READ_BUDGET: usize = 1024 * 1024;
/// Buffers larger than this are shrunk back when they become empty.
const SHRINK_ABOVE: usize = 2 * 1024 * 1024;
/// Small frames are appended to the last output buffer while it is shorter than this.
const COALESCE_BELOW: usize = 64 * 1024;
/// Most buffers handed to one `writev`.
const MAX_IOVECS: usize = 32;

/// One piece of queued output: encoded small frames, or a whole frame a sender built in place
/// (file data), shared by every connection it goes to and written from where it is.
enum OutBuf {
    Bytes(Vec<u8>),
    Frame(Arc<Vec<u8>>),
}

impl OutBuf {
    fn as_slice(&self) -> &[u8] {
        match self {
            OutBuf::Bytes(v) => v,
            OutBuf::Frame(f) => f,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnState {
    /// Outgoing connect in progress.
    Connecting,
    /// Hellos being exchanged.
    Handshaking,
    /// Announced to `sync` (or about to be); messages flow.
    Ready,
    /// Flushing a final message, then shut for writing; what the peer still sends is read
    /// and dropped until it closes too (or a grace ends). Closing a socket with unread input
    /// makes the kernel send a reset, which can destroy our last frames (a leader's
    /// `SessionEnd`) before the peer read them.
    Closing,
}

pub enum ReadStatus {
    /// The socket has no more data for now.
    WouldBlock,
    /// The read budget was used; there may be more.
    More,
    /// The peer closed its side.
    Closed,
}

pub enum ReadOutcome {
    Frames(Vec<(Message, usize)>, ReadStatus),
    /// A protocol violation; the reason is for the log and the `Refuse`.
    Error(String),
}

pub struct Conn {
    pub id: ConnId,
    pub stream: TcpStream,
    pub addr: SocketAddr,
    /// Index of the configured peer address this connection was dialled for.
    pub dialed: Option<usize>,
    pub state: ConnState,
    pub peer: Option<NodeId>,
    /// `Connected` was sent to `sync`, so `Disconnected` must be too.
    pub announced: bool,
    /// Why the handshake failed, when it did: what a failed dial reports.
    pub refusal: Option<DialError>,
    /// When the current state began (connect and handshake deadlines).
    pub since: Instant,
    pub last_recv: Instant,
    pub last_send: Instant,
    pub write_interest: bool,
    /// Readable while reading was paused: read when resumed.
    pub read_pending: bool,
    /// Our side is shut for writing (`Closing`, everything flushed).
    pub write_shut: bool,
    /// Unsent bytes for this connection: frames queued by `sync` (counted by it) plus
    /// frames `net` queued itself (counted here).
    pub outbound: Arc<AtomicUsize>,
    traffic: Arc<Traffic>,
    rbuf: Vec<u8>,
    rlen: usize,
    /// Output not yet written, in order; `wpos` bytes of the first are already written.
    out: VecDeque<OutBuf>,
    wpos: usize,
}

impl Conn {
    pub fn new(
        id: ConnId,
        stream: TcpStream,
        addr: SocketAddr,
        dialed: Option<usize>,
        traffic: Arc<Traffic>,
    ) -> Conn {
        let now = Instant::now();
        Conn {
            id,
            stream,
            addr,
            dialed,
            state: ConnState::Connecting,
            peer: None,
            announced: false,
            refusal: None,
            since: now,
            last_recv: now,
            last_send: now,
            write_interest: false,
            read_pending: false,
            write_shut: false,
            outbound: Arc::new(AtomicUsize::new(0)),
            traffic,
            rbuf: Vec::new(),
            rlen: 0,
            out: VecDeque::new(),
            wpos: 0,
        }
    }

    /// "node (addr)" once known, else the address: for log lines.
    pub fn describe(&self) -> String {
        match &self.peer {
            Some(p) => format!("peer {p} ({}, connection {})", self.addr, self.id),
            None => format!("peer at {} (connection {})", self.addr, self.id),
        }
    }

    /// Appends a frame. `internal` frames (handshake, ping) are counted in the outbound
    /// gauge here; frames from `sync` were counted by `sync`.
    pub fn queue(&mut self, msg: &Message, internal: bool) {
        if !matches!(self.out.back(), Some(OutBuf::Bytes(v)) if v.len() < COALESCE_BELOW) {
            self.out.push_back(OutBuf::Bytes(Vec::new()));
        }
        let Some(OutBuf::Bytes(buf)) = self.out.back_mut() else {
            unreachable!("the back is a byte buffer: checked or just pushed")
        };
        let before = buf.len();
        proto::encode_frame(msg, buf);
        if internal {
            self.outbound
                .fetch_add(buf.len() - before, Ordering::AcqRel);
        }
    }

    /// Appends a frame built by `sync` (already counted in the outbound gauge by it).
    pub fn queue_frame(&mut self, frame: Arc<Vec<u8>>) {
        if !frame.is_empty() {
            self.out.push_back(OutBuf::Frame(frame));
        }
    }

    /// Reads and drops what a closing peer still sends. `true` once it has closed (or the
    /// socket failed): nothing is left to wait for.
    pub fn discard_input(&mut self) -> bool {
        let mut sink = [0u8; 4096];
        loop {
            match self.stream.read(&mut sink) {
                Ok(0) => return true,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return true,
            }
        }
    }

    pub fn has_output(&self) -> bool {
        !self.out.is_empty()
    }

    /// Whether a non-blocking connect finished: `Ok(true)` connected, `Ok(false)` not yet
    /// (a spurious wake-up), `Err` failed.
    pub fn connect_result(&mut self) -> io::Result<bool> {
        if let Some(e) = self.stream.take_error()? {
            return Err(e);
        }
        match self.stream.peer_addr() {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotConnected => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Writes queued bytes until done or the socket would block, several buffers per
    /// system call.
    pub fn write_out(&mut self) -> io::Result<()> {
        while !self.out.is_empty() {
            let mut slices = [IoSlice::new(&[]); MAX_IOVECS];
            let mut n_slices = 0;
            for (i, b) in self.out.iter().take(MAX_IOVECS).enumerate() {
                let bytes = b.as_slice();
                slices[i] = IoSlice::new(if i == 0 { &bytes[self.wpos..] } else { bytes });
                n_slices += 1;
            }
            match self.stream.write_vectored(&slices[..n_slices]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    self.traffic.add(n as u64, 0);
                    self.last_send = Instant::now();
                    self.outbound.fetch_sub(n, Ordering::AcqRel);
                    self.advance(n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Drops the `n` bytes just written from the front of the output.
    fn advance(&mut self, mut n: usize) {
        while n > 0 {
            let Some(front) = self.out.front() else {
                return;
            };
            let left = front.as_slice().len() - self.wpos;
            if n < left {
                self.wpos += n;
                return;
            }
            n -= left;
            self.wpos = 0;
            self.out.pop_front();
        }
    }

    /// Reads what the socket has (up to a budget) and decodes every complete frame.
    pub fn read_frames(&mut self) -> ReadOutcome {
        let mut frames = Vec::new();
        let mut read_total = 0;
        let status = loop {
            if read_total >= READ_BUDGET {
                break ReadStatus::More;
            }
            let want = self.next_frame_need().max(self.rlen + READ_CHUNK);
            if self.rbuf.len() < want {
                self.rbuf.resize(want, 0);
            }
            match self.stream.read(&mut self.rbuf[self.rlen..]) {
                Ok(0) => break ReadStatus::Closed,
                Ok(n) => {
                    self.rlen += n;
                    self.traffic.add(0, n as u64);
                    read_total += n;
                    if let Err(reason) = self.decode_frames(&mut frames) {
                        return ReadOutcome::Error(reason);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break ReadStatus::WouldBlock,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    return ReadOutcome::Frames(frames, {
                        log::debug!("read from {} failed: {e}", self.addr);
                        ReadStatus::Closed
                    })
                }
            }
        };
        if self.rlen == 0 && self.rbuf.len() > SHRINK_ABOVE {
            self.rbuf = Vec::new();
        }
        ReadOutcome::Frames(frames, status)
    }

    /// Buffer size needed to hold the frame whose header is at the start, if known. The
    /// header was validated against `MAX_FRAME` already, so this is bounded.
    fn next_frame_need(&self) -> usize {
        if self.rlen < FRAME_HEADER {
            return 0;
        }
        let len =
            u32::from_be_bytes([self.rbuf[0], self.rbuf[1], self.rbuf[2], self.rbuf[3]]) as usize;
        FRAME_HEADER + len.min(MAX_FRAME)
    }

    fn decode_frames(&mut self, out: &mut Vec<(Message, usize)>) -> Result<(), String> {
        let mut start = 0;
        loop {
            match proto::split_frame(&self.rbuf[start..self.rlen]) {
                Ok(Some((range, used))) => {
                    let payload = &self.rbuf[start + range.start..start + range.end];
                    let msg = proto::decode(payload).map_err(|e| format!("invalid frame: {e}"))?;
                    out.push((msg, used));
                    start += used;
                }
                Ok(None) => break,
                Err(e) => return Err(format!("invalid frame: {e}")),
            }
        }
        if start > 0 {
            self.rbuf.copy_within(start..self.rlen, 0);
            self.rlen -= start;
        }
        Ok(())
    }
}
