//! The control socket, served from `net`'s poll loop: no thread per client, a few clients
//! at a time, every one with a deadline and a bounded request.
//!
//! A status is answered here at once, from the board `sync` keeps and `net`'s own peers:
//! it never waits for `sync`, however busy. A sync request goes to `sync`
//! ([`NetEvent::ControlSync`]), whose answer comes back as [`NetCmd::ControlReply`]
//! (possibly much later, for `--wait`). A client that sends garbage or too much gets one
//! error line and is closed; one that does not send its request, or does not read its
//! answer, within [`CLIENT_DEADLINE`] is closed: nobody can hold a slot for ever, and the
//! answers are small, so a slow reader costs at most one answer's bytes.
//!
//! [`NetCmd::ControlReply`]: super::handle::NetCmd::ControlReply

use std::io::{self, Read, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use mio::net::{UnixListener, UnixStream};
use mio::{Interest, Registry, Token};

use super::handle::{ControlOptions, NetEvent};
use super::{Net, Timer};
use crate::control::{Request, MAX_REQUEST};
use crate::status::{Board, NodeInfo, PeerStatus, Status};

/// Clients served at once; more are closed as they come (the socket is the daemon user's
/// alone, so this only bounds a runaway script).
pub(super) const MAX_CLIENTS: usize = 16;
/// Time to send the request, and then to read the answer.
pub(super) const CLIENT_DEADLINE: Duration = Duration::from_secs(10);
/// The listener's token; clients take the ones below it. Connections count up from 2, so
/// the two ranges never meet.
pub(super) const LISTENER: Token = Token(usize::MAX);

fn client_token(slot: usize) -> Token {
    Token(usize::MAX - 1 - slot)
}

/// The client slot a token stands for, if it is a control token.
pub(super) fn slot_of(t: Token) -> Option<usize> {
    let below = usize::MAX - t.0;
    (1..=MAX_CLIENTS).contains(&below).then(|| below - 1)
}

enum Phase {
    Reading,
    /// Its sync request is with `sync`; no deadline (a waited-for sync takes what it takes).
    Waiting,
    Writing,
}

struct Client {
    /// Never reused: a late answer for a client that left never reaches the next one.
    serial: u64,
    stream: UnixStream,
    buf: Vec<u8>,
    phase: Phase,
    deadline: Instant,
    out: Vec<u8>,
    wpos: usize,
    /// It closed its side after its request: its end is no hang-up.
    half_closed: bool,
}

pub(super) struct Server {
    listener: UnixListener,
    path: PathBuf,
    /// The socket file's inode, so that only our own socket is removed at the end.
    ino: Option<u64>,
    board: Board,
    info: NodeInfo,
    clients: Vec<Option<Client>>,
    next_serial: u64,
}

impl Server {
    pub(super) fn new(opts: ControlOptions, registry: &Registry) -> Option<Server> {
        use std::os::unix::fs::MetadataExt;
        let mut listener = UnixListener::from_std(opts.listener);
        if let Err(e) = registry.register(&mut listener, LISTENER, Interest::READABLE) {
            log::warn!("control socket unusable: {e}");
            return None;
        }
        Some(Server {
            ino: std::fs::symlink_metadata(&opts.path).ok().map(|m| m.ino()),
            listener,
            path: opts.path,
            board: opts.board,
            info: opts.info,
            clients: (0..MAX_CLIENTS).map(|_| None).collect(),
            next_serial: 1,
        })
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        use std::os::unix::fs::MetadataExt;
        // A newer daemon may have replaced a socket it found dead: that one is not ours.
        let ours = std::fs::symlink_metadata(&self.path)
            .ok()
            .map(|m| m.ino())
            .is_some_and(|i| Some(i) == self.ino);
        if ours {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// An `Instant` as wall-clock time.
fn wall(now: Instant, t: Instant) -> SystemTime {
    SystemTime::now() - now.saturating_duration_since(t)
}

impl Net {
    /// Accepts every waiting client.
    pub(super) fn control_accept(&mut self) {
        let now = Instant::now();
        let Some(srv) = self.control.as_mut() else {
            return;
        };
        let mut accepted = false;
        loop {
            let mut stream = match srv.listener.accept() {
                Ok((s, _)) => s,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    log::debug!("control socket: accept failed: {e}");
                    break;
                }
            };
            // Full: the newcomer takes the place of the client that has been silent
            // longest, so silent connections cannot keep a status from being answered.
            // Clients waiting for a sync are never evicted.
            let free = srv.clients.iter().position(Option::is_none);
            let silent = || {
                srv.clients
                    .iter()
                    .enumerate()
                    .filter_map(|(k, c)| {
                        let c = c.as_ref()?;
                        matches!(c.phase, Phase::Reading).then_some((c.deadline, k))
                    })
                    .min()
                    .map(|(_, k)| k)
            };
            let Some(slot) = free.or_else(silent) else {
                log::debug!("control socket: {MAX_CLIENTS} clients wait for syncs; one closed");
                continue;
            };
            if let Some(mut old) = srv.clients[slot].take() {
                log::info!("control socket: client closed: silent while others came");
                let _ = self.poll.registry().deregister(&mut old.stream);
            }
            if self
                .poll
                .registry()
                .register(&mut stream, client_token(slot), Interest::READABLE)
                .is_err()
            {
                continue;
            }
            let serial = srv.next_serial;
            srv.next_serial += 1;
            srv.clients[slot] = Some(Client {
                serial,
                stream,
                buf: Vec::new(),
                phase: Phase::Reading,
                deadline: now + CLIENT_DEADLINE,
                out: Vec::new(),
                wpos: 0,
                half_closed: false,
            });
            accepted = true;
        }
        if accepted {
            self.set_timer(now + CLIENT_DEADLINE, Timer::Control);
        }
    }

    /// A client's socket is ready.
    pub(super) fn control_event(&mut self, slot: usize, readable: bool, writable: bool) {
        if readable {
            self.control_read(slot);
        }
        if writable {
            self.control_write(slot);
        }
    }

    fn control_read(&mut self, slot: usize) {
        let Some(c) = self.client(slot) else { return };
        if !matches!(c.phase, Phase::Reading) {
            // Waiting or writing: anything more it sends is not a request; only its
            // hanging up matters (a `sync --wait` given up with ^C).
            let mut scrap = [0u8; 256];
            match c.stream.read(&mut scrap) {
                // It said all it had to say already: it still reads.
                Ok(0) if c.half_closed => {}
                Ok(0) => self.control_close(slot, None),
                Ok(_) => self.control_close(slot, Some("sent more than one request")),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(_) => self.control_close(slot, None),
            }
            return;
        }
        let mut chunk = [0u8; 512];
        let line = loop {
            let room = MAX_REQUEST - c.buf.len();
            let want = room.min(chunk.len());
            if want == 0 {
                return self.control_refuse(slot, "request too long");
            }
            match c.stream.read(&mut chunk[..want]) {
                // Nothing said: gone. A request without its newline, then the end of what
                // it sends (`printf … | socat`): answered all the same.
                Ok(0) if c.buf.is_empty() => return self.control_close(slot, None),
                Ok(0) => {
                    c.half_closed = true;
                    break std::mem::take(&mut c.buf);
                }
                Ok(n) => {
                    c.buf.extend_from_slice(&chunk[..n]);
                    if let Some(end) = c.buf.iter().position(|&b| b == b'\n') {
                        if end + 1 != c.buf.len() {
                            return self.control_refuse(slot, "sent more than one request");
                        }
                        c.buf.truncate(end);
                        break std::mem::take(&mut c.buf);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return self.control_close(slot, None),
            }
        };
        // A terminal's line ends in "\r\n".
        let line = line.strip_suffix(b"\r").unwrap_or(&line);
        match Request::parse(line) {
            Err(why) => self.control_refuse(slot, &why),
            Ok(Request::Status { json }) => {
                let Some(status) = self.status() else { return };
                let body = if json {
                    status.to_json()
                } else {
                    status.to_text()
                };
                self.control_answer(slot, format!("ok\n{body}"));
            }
            Ok(Request::Sync { storage, wait }) => {
                let Some(c) = self.client(slot) else { return };
                c.phase = Phase::Waiting;
                let client = c.serial;
                self.emit(NetEvent::ControlSync {
                    client,
                    storage,
                    wait,
                });
            }
        }
    }

    fn client(&mut self, slot: usize) -> Option<&mut Client> {
        self.control.as_mut()?.clients.get_mut(slot)?.as_mut()
    }

    /// `sync`'s answer to client `serial` (gone already: dropped).
    pub(super) fn control_reply(&mut self, serial: u64, text: String) {
        let Some(srv) = self.control.as_ref() else {
            return;
        };
        let slot = srv.clients.iter().position(|c| {
            c.as_ref()
                .is_some_and(|c| c.serial == serial && matches!(c.phase, Phase::Waiting))
        });
        if let Some(slot) = slot {
            self.control_answer(slot, text);
        }
    }

    fn control_refuse(&mut self, slot: usize, why: &str) {
        log::info!("control socket: client closed: {why}");
        let line = format!("error {}\n", why.replace('\n', " "));
        self.control_answer(slot, line);
    }

    /// Starts writing `text`; the client is closed once it has read it all.
    fn control_answer(&mut self, slot: usize, text: String) {
        let now = Instant::now();
        let Some(c) = self.client(slot) else { return };
        c.phase = Phase::Writing;
        c.out = text.into_bytes();
        c.wpos = 0;
        c.deadline = now + CLIENT_DEADLINE;
        self.set_timer(now + CLIENT_DEADLINE, Timer::Control);
        self.control_write(slot);
    }

    fn control_write(&mut self, slot: usize) {
        let Some(c) = self
            .control
            .as_mut()
            .and_then(|srv| srv.clients.get_mut(slot)?.as_mut())
        else {
            return;
        };
        if !matches!(c.phase, Phase::Writing) {
            return;
        }
        while c.wpos < c.out.len() {
            match c.stream.write(&c.out[c.wpos..]) {
                Ok(0) => return self.control_close(slot, None),
                Ok(n) => c.wpos += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    let token = client_token(slot);
                    let _ = self.poll.registry().reregister(
                        &mut c.stream,
                        token,
                        Interest::READABLE | Interest::WRITABLE,
                    );
                    return;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return self.control_close(slot, None),
            }
        }
        self.control_close(slot, None);
    }

    fn control_close(&mut self, slot: usize, why: Option<&str>) {
        let Some(srv) = self.control.as_mut() else {
            return;
        };
        if let Some(mut c) = srv.clients.get_mut(slot).and_then(Option::take) {
            if let Some(why) = why {
                log::info!("control socket: client closed: {why}");
            }
            let _ = self.poll.registry().deregister(&mut c.stream);
        }
    }

    /// Closes the clients past their deadline.
    pub(super) fn control_expire(&mut self, now: Instant) {
        let Some(srv) = self.control.as_ref() else {
            return;
        };
        let late: Vec<usize> = srv
            .clients
            .iter()
            .enumerate()
            .filter_map(|(k, c)| {
                let c = c.as_ref()?;
                let timed = !matches!(c.phase, Phase::Waiting);
                (timed && now >= c.deadline).then_some(k)
            })
            .collect();
        for slot in late {
            self.control_close(slot, Some("too slow (no request, or the answer not read)"));
        }
    }

    /// The status as of now: the node, `net`'s peers, the board's storages.
    fn status(&self) -> Option<Status> {
        let srv = self.control.as_ref()?;
        let now = Instant::now();
        let mut peers: Vec<PeerStatus> = Vec::new();
        for (node, id) in &self.by_node {
            let Some(c) = self.conns.get(id) else {
                continue;
            };
            let mine = |discovered: bool| {
                self.peers
                    .iter()
                    .any(|p| p.node.as_ref() == Some(node) && p.discovered.is_some() == discovered)
            };
            // Where we dial it, if we do: the address a connection came from has a port
            // nobody configured.
            let dialled = self
                .peers
                .iter()
                .find(|p| p.node.as_ref() == Some(node))
                .map(|p| p.text.clone());
            peers.push(PeerStatus {
                node: Some(node.clone()),
                address: Some(dialled.unwrap_or_else(|| c.addr.to_string())),
                connected: true,
                configured: mine(false),
                discovered: mine(true),
                last_seen: Some(wall(now, c.last_recv)),
                last_error: None,
            });
        }
        for p in &self.peers {
            let connected = p
                .node
                .as_ref()
                .is_some_and(|n| self.by_node.contains_key(n));
            if connected {
                continue;
            }
            peers.push(PeerStatus {
                node: p.node.clone(),
                address: Some(p.text.clone()),
                connected: false,
                configured: p.discovered.is_none(),
                discovered: p.discovered.is_some(),
                last_seen: p.last_seen.map(|t| wall(now, t)),
                last_error: p.last_error.clone(),
            });
        }
        peers.sort_by(|a, b| (&a.node, &a.address).cmp(&(&b.node, &b.address)));
        Some(Status {
            now: SystemTime::now(),
            node: srv.info.clone(),
            peers,
            storages: srv.board.snapshot(),
        })
    }
}
