//! One peer connection as the `net` thread sees it: the socket, its read and write buffers,
//! its link (preamble, Noise handshake, sealed frames: `net/link.rs`) and its timestamps.
//!
//! Reading turns bytes into decoded messages (never more than one frame's worth of buffer
//! beyond what has arrived); writing drains the queued frames until the socket would block.
//! On an encrypted link every frame is sealed as it is queued (so nonces follow the order
//! of the bytes on the wire) and opened as it is read, into the buffer its message keeps;
//! frames queued before the handshake ends (our `Hello`) wait, plain, until it does. No
//! policy lives here: what a message means is decided by `net/mod.rs` and `sync`.

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

use super::link::{
    Handshake, LinkConfig, LinkError, Mode, Transport, HANDSHAKE_LEN, HANDSHAKE_REFUSED,
    MAX_SEALED, PREAMBLE_LEN, TAG_LEN,
};

use super::{ConnId, Traffic};

const READ_CHUNK: usize = 64 * 1024;
/// Most bytes read from one socket before yielding to the loop, so one busy peer cannot
/// starve the others or overrun the inbound gauge by much.
const READ_BUDGET: usize = 1024 * 1024;
/// Most frames decoded from one socket before yielding to the loop. A decoded message
/// takes far more memory than its frame (a 5-byte Ping is a whole `Message`): a read
/// budget of the smallest frames decoded at once held 20 MiB.
const FRAMES_BUDGET: usize = 1024;
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
    /// The link was refused before any message could pass (another version, group or
    /// encryption mode, another passphrase): both ends know why without being told.
    Refused(DialError),
}

/// Where the link is, before messages can flow.
enum Phase {
    /// Waiting for the peer's preamble. An initiator of an encrypted link has already sent
    /// its first handshake message and holds its state here.
    Preamble(Option<Handshake>),
    /// Waiting for the other handshake message.
    Handshake(Handshake),
    /// Frames flow (sealed when `transport` is set).
    Frames,
}

pub struct Conn {
    pub id: ConnId,
    pub stream: TcpStream,
    pub addr: SocketAddr,
    /// Index of the configured peer address this connection was dialled for.
    pub dialed: Option<usize>,
    pub state: ConnState,
    pub peer: Option<NodeId>,
    /// The port the peer says it listens on (its `Hello`; 0: none, or not yet known).
    pub hello_port: u16,
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
    link: Arc<LinkConfig>,
    phase: Phase,
    transport: Option<Transport>,
    /// Plain frames queued before an encrypted link is up: sealed when it is.
    held: Vec<u8>,
    /// Sealing failed: the connection must close (reported by the next write).
    broken: Option<LinkError>,
}

impl Conn {
    pub fn new(
        id: ConnId,
        stream: TcpStream,
        addr: SocketAddr,
        dialed: Option<usize>,
        traffic: Arc<Traffic>,
        link: Arc<LinkConfig>,
    ) -> Conn {
        let now = Instant::now();
        Conn {
            id,
            stream,
            addr,
            dialed,
            state: ConnState::Connecting,
            peer: None,
            hello_port: 0,
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
            link,
            phase: Phase::Frames,
            transport: None,
            held: Vec::new(),
            broken: None,
        }
    }

    /// The TCP connection is up: queues our preamble (and, dialling an encrypted link, the
    /// first handshake message, which needs nothing from the peer).
    pub fn start_link(&mut self) -> Result<(), LinkError> {
        self.queue_raw(self.link.preamble().to_vec());
        let hs = if self.link.mode != Mode::Plain && self.dialed.is_some() {
            let (hs, msg) = Handshake::initiate(&self.link)?;
            self.queue_raw(msg.to_vec());
            Some(hs)
        } else {
            None
        };
        self.phase = Phase::Preamble(hs);
        Ok(())
    }

    fn queue_raw(&mut self, bytes: Vec<u8>) {
        self.outbound.fetch_add(bytes.len(), Ordering::AcqRel);
        self.out.push_back(OutBuf::Bytes(bytes));
    }

    fn encrypted(&self) -> bool {
        self.link.mode != Mode::Plain
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
        if self.encrypted() && self.transport.is_none() {
            let before = self.held.len();
            proto::encode_frame(msg, &mut self.held);
            if internal {
                self.outbound
                    .fetch_add(self.held.len() - before, Ordering::AcqRel);
            }
            return;
        }
        if !matches!(self.out.back(), Some(OutBuf::Bytes(v)) if v.len() < COALESCE_BELOW) {
            self.out.push_back(OutBuf::Bytes(Vec::new()));
        }
        let Some(OutBuf::Bytes(buf)) = self.out.back_mut() else {
            unreachable!("the back is a byte buffer: checked or just pushed")
        };
        let before = buf.len();
        proto::encode_frame(msg, buf);
        let mut added = if internal { buf.len() - before } else { 0 };
        if let Some(t) = &mut self.transport {
            match t.seal(buf, before, Instant::now()) {
                Ok(()) => added += TAG_LEN,
                Err(e) => {
                    buf.truncate(before);
                    self.broken = Some(e);
                }
            }
        }
        self.outbound.fetch_add(added, Ordering::AcqRel);
    }

    /// Appends a frame built by `sync` (already counted in the outbound gauge by it). On an
    /// encrypted link it is sealed into a copy of its own: each connection has its keys.
    pub fn queue_frame(&mut self, frame: Arc<Vec<u8>>) {
        if frame.is_empty() {
            return;
        }
        if !self.encrypted() {
            self.out.push_back(OutBuf::Frame(frame));
            return;
        }
        let Some(t) = &mut self.transport else {
            // `net` hands over `sync`'s frames only once the link is up.
            self.broken = Some(LinkError::Internal("a frame before the handshake".into()));
            return;
        };
        // Sealed straight from the shared frame into this connection's copy: one pass.
        let mut sealed = Vec::with_capacity(frame.len() + TAG_LEN);
        let made = t.seal_into(&frame, &mut sealed, Instant::now());
        drop(frame);
        match made {
            Ok(()) => {
                self.outbound.fetch_add(TAG_LEN, Ordering::AcqRel);
                self.out.push_back(OutBuf::Bytes(sealed));
            }
            Err(e) => self.broken = Some(e),
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
        if let Some(e) = &self.broken {
            return Err(io::Error::other(format!("cannot seal a frame: {e}")));
        }
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
            if read_total >= READ_BUDGET || frames.len() >= FRAMES_BUDGET {
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
                    if let Err(fail) = self.advance_link() {
                        return fail;
                    }
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

    /// Drops an empty read buffer bigger than a read's chunk: a connection that carried
    /// file data keeps a frame's worth otherwise (a quarter MiB or more) for as long as it
    /// stays idle. Returns whether it freed one.
    pub(super) fn shrink_idle(&mut self) -> bool {
        if self.rlen == 0 && self.rbuf.len() > READ_CHUNK {
            self.rbuf = Vec::new();
            return true;
        }
        false
    }

    /// Buffer size needed to hold the frame whose header is at the start, if known. The
    /// header was validated against `MAX_FRAME` already, so this is bounded.
    fn next_frame_need(&self) -> usize {
        if self.rlen < FRAME_HEADER || !matches!(self.phase, Phase::Frames) {
            return 0;
        }
        let len =
            u32::from_be_bytes([self.rbuf[0], self.rbuf[1], self.rbuf[2], self.rbuf[3]]) as usize;
        FRAME_HEADER
            + len.min(if self.encrypted() {
                MAX_SEALED
            } else {
                MAX_FRAME
            })
    }

    /// Drops the first `n` bytes read.
    fn consume(&mut self, n: usize) {
        self.rbuf.copy_within(n..self.rlen, 0);
        self.rlen -= n;
    }

    /// Takes the preamble and the handshake from what was read, as far as it goes.
    fn advance_link(&mut self) -> Result<(), ReadOutcome> {
        loop {
            match std::mem::replace(&mut self.phase, Phase::Frames) {
                Phase::Frames => return Ok(()),
                Phase::Preamble(hs) => {
                    if self.rlen < PREAMBLE_LEN {
                        self.phase = Phase::Preamble(hs);
                        return Ok(());
                    }
                    if let Err(m) = self.link.check_preamble(&self.rbuf[..PREAMBLE_LEN]) {
                        return Err(ReadOutcome::Refused(
                            m.dial_error(self.link.group.as_deref()),
                        ));
                    }
                    self.consume(PREAMBLE_LEN);
                    self.phase = match (self.link.mode, hs) {
                        (Mode::Plain, _) => Phase::Frames,
                        (_, Some(hs)) => Phase::Handshake(hs),
                        (_, None) => Phase::Handshake(
                            Handshake::respond(&self.link)
                                .map_err(|e| ReadOutcome::Error(e.to_string()))?,
                        ),
                    };
                }
                Phase::Handshake(hs) => {
                    if self.rlen < HANDSHAKE_LEN {
                        self.phase = Phase::Handshake(hs);
                        return Ok(());
                    }
                    let mut msg = [0u8; HANDSHAKE_LEN];
                    msg.copy_from_slice(&self.rbuf[..HANDSHAKE_LEN]);
                    self.consume(HANDSHAKE_LEN);
                    let done = if self.dialed.is_some() {
                        hs.finish(&msg)
                    } else {
                        hs.accept(&msg).map(|(reply, t)| {
                            self.queue_raw(reply.to_vec());
                            t
                        })
                    };
                    let transport = match done {
                        Ok(t) => t,
                        Err(e) => {
                            if e == LinkError::Handshake && self.dialed.is_none() {
                                self.queue_raw(HANDSHAKE_REFUSED.to_vec());
                            }
                            return Err(ReadOutcome::Refused(e.dial_error()));
                        }
                    };
                    self.transport = Some(transport);
                    self.seal_held();
                }
            }
        }
    }

    /// The link is up: what was queued before it (our `Hello`) goes out sealed, in order.
    fn seal_held(&mut self) {
        let held = std::mem::take(&mut self.held);
        let Some(t) = &mut self.transport else {
            return;
        };
        let mut pos = 0;
        while pos + FRAME_HEADER <= held.len() {
            let len = u32::from_be_bytes([held[pos], held[pos + 1], held[pos + 2], held[pos + 3]])
                as usize;
            let end = (pos + FRAME_HEADER + len).min(held.len());
            let mut frame = held[pos..end].to_vec();
            if let Err(e) = t.seal(&mut frame, 0, Instant::now()) {
                self.broken = Some(e);
                return;
            }
            self.outbound.fetch_add(TAG_LEN, Ordering::AcqRel);
            self.out.push_back(OutBuf::Bytes(frame));
            pos = end;
        }
    }

    fn decode_frames(&mut self, out: &mut Vec<(Message, usize)>) -> Result<(), String> {
        if !matches!(self.phase, Phase::Frames) {
            return Ok(());
        }
        if self.transport.is_some() {
            return self.open_frames(out);
        }
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

    /// Opens and decodes every whole sealed frame read so far.
    fn open_frames(&mut self, out: &mut Vec<(Message, usize)>) -> Result<(), String> {
        let Some(t) = &mut self.transport else {
            return Ok(());
        };
        let mut start = 0;
        // Each frame opens into a buffer of its own, which a `FileData` keeps as its data
        // (`decode_owned`): no second copy of the chunk, and no buffer kept between reads.
        while self.rlen - start >= FRAME_HEADER {
            let header = [
                self.rbuf[start],
                self.rbuf[start + 1],
                self.rbuf[start + 2],
                self.rbuf[start + 3],
            ];
            let len = Transport::sealed_len(header).map_err(|e| e.to_string())?;
            let end = start + FRAME_HEADER + len;
            if end > self.rlen {
                break;
            }
            let mut plain = Vec::new();
            t.open(&self.rbuf[start..end], &mut plain)
                .map_err(|e| e.to_string())?;
            let size = FRAME_HEADER + plain.len();
            let msg = proto::decode_owned(plain).map_err(|e| format!("invalid frame: {e}"))?;
            out.push((msg, size));
            start = end;
        }
        if start > 0 {
            self.consume(start);
        }
        Ok(())
    }
}
