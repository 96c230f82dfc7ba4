//! Reaching peers: configured addresses dialled and redialled with back-off, names looked up
//! off the thread (`resolve`), nodes that discovery heard dialled while their announcements
//! last, and what each attempt ended with (for `sync`, and for `status`).

use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Instant;

use mio::net::TcpStream;

use super::handle::ConnId;
use super::handle::{NetCmd, NetEvent};
use super::{Net, PeerAddr, Timer, DISCOVERED_DEFER, MAX_DISCOVERED, REDIAL_MAX, REDIAL_MIN};
use crate::model::NodeId;
use crate::run::DialError;

impl Net {
    /// An announcement of our group: the node is dialled unless it is connected. A known
    /// address (configured, or this node's previous one) is reused; a new node takes an
    /// expired entry's place, or a new one up to [`MAX_DISCOVERED`].
    pub(super) fn on_discovered(&mut self, node: NodeId, addr: SocketAddr, until: Instant) {
        if self.draining || node == self.opts.local.node_id {
            return;
        }
        let now = Instant::now();
        let known = self.peers.iter().position(|p| {
            p.resolved == Some(addr) || (p.discovered.is_some() && p.node.as_ref() == Some(&node))
        });
        let (i, news) = match known {
            Some(i) => {
                let p = &mut self.peers[i];
                let mut news = false;
                if p.discovered.is_some() {
                    // A dial to the old address still in flight goes on; when it fails, the
                    // redial goes to the new one.
                    news = p.expired(now) || p.resolved != Some(addr);
                    p.discovered = Some(until);
                    p.text = addr.to_string();
                    p.resolved = Some(addr);
                    p.node = Some(node.clone());
                }
                (i, news)
            }
            None => {
                let entry = PeerAddr {
                    text: addr.to_string(),
                    resolved: Some(addr),
                    resolving: false,
                    node: Some(node.clone()),
                    in_flight: None,
                    failures: 0,
                    discovered: Some(until),
                    last_seen: None,
                    last_error: None,
                };
                let free = self.peers.iter().position(|p| {
                    p.expired(now)
                        && p.in_flight.is_none()
                        && !p
                            .node
                            .as_ref()
                            .is_some_and(|n| self.by_node.contains_key(n))
                });
                let discovered = self.peers.iter().filter(|p| p.discovered.is_some()).count();
                match free {
                    Some(i) => self.peers[i] = entry,
                    None if discovered < MAX_DISCOVERED => self.peers.push(entry),
                    None => {
                        log::debug!(
                            "discovery: not dialling {node} at {addr}: {MAX_DISCOVERED} \
                             discovered peers are already known"
                        );
                        return;
                    }
                }
                (free.unwrap_or(self.peers.len() - 1), true)
            }
        };
        if self.by_node.contains_key(&node) {
            return;
        }
        let dial_first = self.opts.local.node_id < node;
        if news {
            log::info!("discovered {node} at {addr}");
            self.emit(NetEvent::Discovered {
                node,
                addr: addr.to_string(),
            });
        }
        // An announcement is fresh evidence the node is there: back-off starts over.
        self.peers[i].failures = 0;
        if dial_first {
            self.dial(i);
        } else {
            // Both nodes hear each other at once: the smaller id dials first, so that the
            // pair does not make two connections and drop one (the duplicate rule would
            // keep the same one). If it does not come, we dial.
            self.set_timer(now + DISCOVERED_DEFER, Timer::Redial(i));
        }
    }

    pub(super) fn dial(&mut self, i: usize) {
        let Some(p) = self.peers.get(i) else { return };
        if p.in_flight.is_some() || p.resolving || p.expired(Instant::now()) {
            return;
        }
        if let Some(node) = &p.node {
            if self.by_node.contains_key(node) {
                return;
            }
        }
        if let Ok(addr) = p.text.parse::<SocketAddr>() {
            return self.connect(i, addr);
        }
        // A name: looking it up may wait on DNS for seconds, which this thread must never
        // do. A short-lived helper thread answers through our own command channel.
        let text = p.text.clone();
        let own = self.own.clone();
        let spawned = std::thread::Builder::new()
            .name("resolve".into())
            .spawn(move || {
                let result = match text.to_socket_addrs().map(|mut a| a.next()) {
                    Ok(Some(a)) => Ok(a),
                    Ok(None) => Err("name resolves to no address".to_owned()),
                    Err(e) => Err(format!("cannot resolve: {e}")),
                };
                own.send(NetCmd::Resolved { peer: i, result });
            });
        match spawned {
            Ok(_) => self.peers[i].resolving = true,
            Err(e) => self.dial_failed(
                i,
                DialError::Unreachable(format!("cannot start a resolver thread: {e}")),
            ),
        }
    }

    pub(super) fn on_resolved(&mut self, i: usize, result: Result<SocketAddr, String>) {
        let Some(p) = self.peers.get_mut(i) else {
            return;
        };
        p.resolving = false;
        if self.draining {
            return;
        }
        match result {
            Ok(addr) => {
                p.resolved = Some(addr);
                self.connect(i, addr);
            }
            Err(reason) => self.dial_failed(i, DialError::Unreachable(reason)),
        }
    }

    pub(super) fn connect(&mut self, i: usize, addr: SocketAddr) {
        match TcpStream::connect(addr) {
            Ok(stream) => {
                log::debug!("dialling {} ({addr})", self.peers[i].text);
                let id = self.next_id;
                self.peers[i].in_flight = Some(id);
                self.register(stream, addr, Some(i));
            }
            Err(e) => self.dial_failed(i, DialError::Unreachable(e.to_string())),
        }
    }

    pub(super) fn dial_failed(&mut self, i: usize, why: DialError) {
        let Some(p) = self.peers.get_mut(i) else {
            return;
        };
        p.in_flight = None;
        p.failures += 1;
        p.last_error = Some(why.to_string());
        let shift = p.failures.min(8) - 1;
        let delay = (REDIAL_MIN * (1u32 << shift)).min(REDIAL_MAX);
        if p.failures == 1 || p.failures % 10 == 0 {
            log::info!("cannot reach peer {}: {why} (retrying)", p.text);
        } else {
            log::debug!("cannot reach peer {}: {why}", p.text);
        }
        let text = p.text.clone();
        let failures = p.failures;
        let forever = self.opts.redial_forever && !p.expired(Instant::now());
        self.emit(NetEvent::DialResult {
            addr: text,
            result: Err(why),
        });
        if forever || failures < 6 {
            self.set_timer(Instant::now() + delay, Timer::Redial(i));
        }
    }

    pub(super) fn note_dial_ok(&mut self, id: ConnId, node: &NodeId) {
        let Some(i) = self.conns.get(&id).and_then(|c| c.dialed) else {
            return;
        };
        if let Some(p) = self.peers.get_mut(i) {
            p.in_flight = None;
            p.failures = 0;
            p.last_error = None;
            p.node = Some(node.clone());
            let text = p.text.clone();
            self.emit(NetEvent::DialResult {
                addr: text,
                result: Ok(()),
            });
        }
    }
}
