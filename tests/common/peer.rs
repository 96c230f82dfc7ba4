//! A crafted peer: a blocking socket that speaks the link as a real node does (the clear
//! preamble, the Noise handshake, sealed frames) and then sends whatever bytes a test makes
//! up, sealed or not. The protocol and encryption suites attack real daemons with it.

use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, TcpStream};

use iron_carrier::net::link::{
    Handshake, LinkConfig, Mode, Transport, HANDSHAKE_LEN, PREAMBLE_LEN,
};
use iron_carrier::proto::{decode, encode_frame, split_frame, Message, FRAME_HEADER};

use super::PATIENCE;

/// The passphrase the suites use (long enough for the config's minimum).
pub const PASSPHRASE: &str = "correct horse battery staple";

/// The three `encryption` settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Enc {
    Plain,
    Ephemeral,
    Passphrase,
}

impl Enc {
    pub const ALL: [Enc; 3] = [Enc::Plain, Enc::Ephemeral, Enc::Passphrase];

    /// The value of the `encryption` key, as TOML.
    pub fn toml(self) -> String {
        match self {
            Enc::Plain => "false".to_owned(),
            Enc::Ephemeral => "true".to_owned(),
            Enc::Passphrase => format!("\"{PASSPHRASE}\""),
        }
    }

    /// What a node with this setting (and `group`) puts on its links.
    pub fn link(self, group: Option<&str>) -> LinkConfig {
        let made = match self {
            Enc::Plain => LinkConfig::new(Mode::Plain, group, None),
            Enc::Ephemeral => LinkConfig::new(Mode::Ephemeral, group, None),
            Enc::Passphrase => LinkConfig::new(Mode::Passphrase, group, Some(PASSPHRASE)),
        };
        made.expect("link config")
    }
}

/// A peer that is nothing but a blocking socket and, once the link is up, its keys.
pub struct RawPeer {
    pub stream: TcpStream,
    buf: Vec<u8>,
    transport: Option<Transport>,
}

impl RawPeer {
    /// Connects without saying anything. Reads time out after `PATIENCE`: that is the
    /// deadline for every answer the daemon owes.
    pub fn connect(port: u16) -> RawPeer {
        RawPeer::over(TcpStream::connect(("127.0.0.1", port)).expect("connect to the daemon"))
    }

    /// Like `connect`, from the loopback address `from` (any of 127.0.0.0/8).
    pub fn connect_from(from: Ipv4Addr, port: u16) -> RawPeer {
        RawPeer::over(connect_from(from, port).expect("connect to the daemon"))
    }

    fn over(stream: TcpStream) -> RawPeer {
        stream
            .set_read_timeout(Some(PATIENCE))
            .expect("set read timeout");
        stream.set_nodelay(true).expect("set nodelay");
        RawPeer {
            stream,
            buf: Vec::new(),
            transport: None,
        }
    }

    /// Connects and brings the link up as a node with `cfg` would; panics if the daemon
    /// refuses. Frames flow (sealed, if `cfg` encrypts) afterwards.
    pub fn link(port: u16, cfg: &LinkConfig) -> RawPeer {
        RawPeer::connect(port).linked(cfg)
    }

    /// Like `link`, from the loopback address `from`.
    pub fn link_from(from: Ipv4Addr, port: u16, cfg: &LinkConfig) -> RawPeer {
        RawPeer::connect_from(from, port).linked(cfg)
    }

    fn linked(mut self, cfg: &LinkConfig) -> RawPeer {
        let hs = self.start_link(cfg);
        self.finish_link(cfg, hs)
            .expect("the daemon's side of the link");
        self
    }

    /// Sends our preamble and, on an encrypted link, the first handshake message; returns
    /// the handshake to finish.
    pub fn start_link(&mut self, cfg: &LinkConfig) -> Option<Handshake> {
        self.send_raw(&cfg.preamble());
        if cfg.mode == Mode::Plain {
            return None;
        }
        let (hs, first) = Handshake::initiate(cfg).expect("first handshake message");
        self.send_raw(&first);
        Some(hs)
    }

    /// Reads the daemon's preamble and, on an encrypted link, its handshake message. `Err`
    /// says what went wrong (the daemon closed, refused the handshake, or sent another
    /// preamble).
    pub fn finish_link(&mut self, cfg: &LinkConfig, hs: Option<Handshake>) -> Result<(), String> {
        let theirs = self
            .read_raw(PREAMBLE_LEN)
            .ok_or("closed before its preamble")?;
        cfg.check_preamble(&theirs)
            .map_err(|m| format!("its preamble does not match ours: {m:?}"))?;
        let Some(hs) = hs else {
            return Ok(());
        };
        let second = self
            .read_raw(HANDSHAKE_LEN)
            .ok_or("closed before the second handshake message")?;
        let transport = hs.finish(&second).map_err(|e| format!("handshake: {e}"))?;
        self.transport = Some(transport);
        Ok(())
    }

    /// Exactly `n` bytes as they arrive, or `None` if the daemon closes first.
    pub fn read_raw(&mut self, n: usize) -> Option<Vec<u8>> {
        while self.buf.len() < n {
            if !self.fill() {
                return None;
            }
        }
        Some(self.buf.drain(..n).collect())
    }

    /// Reads once more into the buffer; false once the daemon has closed.
    fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 64 * 1024];
        loop {
            match self.stream.read(&mut chunk) {
                Ok(0) => return false,
                Ok(n) => {
                    self.buf.extend_from_slice(&chunk[..n]);
                    return true;
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                // A close with unread bytes on the daemon's side arrives as a reset.
                Err(e) if e.kind() == ErrorKind::ConnectionReset => return false,
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    panic!("the daemon neither answered nor closed within {PATIENCE:?}")
                }
                Err(e) => panic!("read from the daemon failed: {e}"),
            }
        }
    }

    /// Bytes exactly as given, whatever the link.
    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("write to the daemon");
    }

    /// Whole plain frames (`[len][payload]`, one or several), sealed one by one if the link
    /// is encrypted: what a peer following the framing but lying in the payload sends.
    pub fn send_frames(&mut self, frames: &[u8]) {
        let Some(t) = &mut self.transport else {
            return self.send_raw(frames);
        };
        let mut out = Vec::new();
        let mut at = 0;
        while at < frames.len() {
            let len = u32::from_be_bytes(frames[at..at + FRAME_HEADER].try_into().unwrap());
            let end = at + FRAME_HEADER + len as usize;
            let mut f = frames[at..end].to_vec();
            t.seal(&mut f, 0, std::time::Instant::now()).expect("seal");
            out.extend_from_slice(&f);
            at = end;
        }
        self.send_raw(&out);
    }

    /// Seals one plain frame without sending it (for replays and tampering).
    pub fn seal(&mut self, frame: &[u8]) -> Vec<u8> {
        let mut f = frame.to_vec();
        if let Some(t) = &mut self.transport {
            t.seal(&mut f, 0, std::time::Instant::now()).expect("seal");
        }
        f
    }

    pub fn send(&mut self, msg: &Message) {
        self.send_frames(&frame(msg));
    }

    /// The next whole frame as it was on the wire (sealed on an encrypted link), or `None`
    /// once the daemon has closed the connection.
    pub fn recv_wire(&mut self) -> Option<Vec<u8>> {
        loop {
            if self.buf.len() >= FRAME_HEADER {
                let len = u32::from_be_bytes(self.buf[..FRAME_HEADER].try_into().unwrap());
                let end = FRAME_HEADER + len as usize;
                if self.buf.len() >= end {
                    return Some(self.buf.drain(..end).collect());
                }
            }
            if !self.fill() {
                assert!(
                    self.buf.is_empty(),
                    "the daemon closed the connection in the middle of a frame"
                );
                return None;
            }
        }
    }

    /// The next message, or `None` once the daemon has closed the connection.
    pub fn recv(&mut self) -> Option<Message> {
        let mut f = self.recv_wire()?;
        if let Some(t) = &mut self.transport {
            let mut plain = Vec::new();
            t.open(&f, &mut plain)
                .unwrap_or_else(|e| panic!("the daemon sent a frame that does not open: {e}"));
            f = (plain.len() as u32).to_be_bytes().to_vec();
            f.extend_from_slice(&plain);
        }
        match split_frame(&f) {
            Ok(Some((range, _))) => Some(
                decode(&f[range])
                    .unwrap_or_else(|e| panic!("the daemon sent an undecodable frame: {e}")),
            ),
            Ok(None) => panic!("a whole frame was read, split_frame wants more"),
            Err(e) => panic!("the daemon sent an invalid frame header: {e}"),
        }
    }

    /// The next message that is not a keep-alive or a released claim; panics if the
    /// connection closes first.
    pub fn expect(&mut self, what: &str) -> Message {
        use iron_carrier::proto::{ElectionMsg, LinkMsg, PeerMsg};
        loop {
            match self.recv() {
                Some(Message::Link(LinkMsg::Ping)) => self.send(&Message::Link(LinkMsg::Pong)),
                Some(Message::Link(LinkMsg::Pong))
                | Some(Message::Peer(PeerMsg::Election(ElectionMsg::Release { .. }))) => {}
                Some(m) => return m,
                None => panic!("the daemon closed the connection while we waited for {what}"),
            }
        }
    }

    /// Reads until the daemon closes the connection; returns what it sent meanwhile.
    pub fn until_closed(&mut self) -> Vec<Message> {
        let mut got = Vec::new();
        while let Some(m) = self.recv() {
            got.push(m);
        }
        got
    }
}

/// One message as a plain frame.
pub fn frame(msg: &Message) -> Vec<u8> {
    let mut v = Vec::new();
    encode_frame(msg, &mut v);
    v
}

/// A TCP connection to 127.0.0.1:`port` from the loopback address `from`: `std` cannot bind
/// a client socket before connecting; libc can.
pub fn connect_from(from: Ipv4Addr, port: u16) -> Option<TcpStream> {
    connect_from_with(from, port, false)
}

/// Like [`connect_from`], and with `nonblocking` the socket is non-blocking and may still be
/// connecting when this returns (a full accept queue drops the handshake, and a blocking
/// connect would wait minutes).
pub fn connect_from_with(from: Ipv4Addr, port: u16, nonblocking: bool) -> Option<TcpStream> {
    use std::os::fd::FromRawFd;
    let sockaddr = |ip: Ipv4Addr, port: u16| libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(ip).to_be(),
        },
        sin_zero: [0; 8],
    };
    let local = sockaddr(from, 0);
    let remote = sockaddr(Ipv4Addr::LOCALHOST, port);
    let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    let flags = if nonblocking {
        libc::SOCK_STREAM | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK
    } else {
        libc::SOCK_STREAM | libc::SOCK_CLOEXEC
    };
    // SAFETY: plain socket calls on a descriptor this function owns until it is wrapped.
    unsafe {
        let fd = libc::socket(libc::AF_INET, flags, 0);
        if fd < 0 {
            return None;
        }
        let bound = libc::bind(fd, (&local as *const libc::sockaddr_in).cast(), len) == 0;
        let r = libc::connect(fd, (&remote as *const libc::sockaddr_in).cast(), len);
        let started = r == 0
            || (nonblocking
                && std::io::Error::last_os_error().raw_os_error() == Some(libc::EINPROGRESS));
        if !bound || !started {
            libc::close(fd);
            return None;
        }
        Some(TcpStream::from_raw_fd(fd))
    }
}
