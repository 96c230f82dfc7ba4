//! The I/O shell around the core: the [`Io`] the core acts through, implemented with `net`
//! (through its handle), the scanner and `fsops`. It knows the connected peers (connection,
//! node, outbound gauge) and owns the storages' open roots, the sending side ([`Outbox`])
//! and the receiving side ([`Receiver`]); it decides nothing.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;

use crate::config::StorageConfig;
use crate::fsops::StorageDir;
use crate::ignore::IgnoreMatcher;
use crate::model::{FileMeta, NodeId, RelPath, Version};
use crate::net::handle::{ConnId, NetCmd, NetHandle};
use crate::proto::{LinkMsg, Message, PeerMsg, SendTo};
use crate::run::SyncError;
use crate::scanner::{self, ScanOptions};

use super::core::{Io, Violation};
use super::receive::Receiver;
use super::send::{Dest, Outbox};

/// A connected peer, as announced by its handshake.
pub struct Peer {
    pub node: NodeId,
    pub outbound: Arc<AtomicUsize>,
    /// We asked `net` to close it; ignore what it still sends.
    pub closing: bool,
}

/// A storage: its configuration and its open root.
pub struct Storage {
    pub cfg: StorageConfig,
    pub dir: StorageDir,
}

/// Everything the core's side effects need.
pub struct Shell {
    pub net: NetHandle,
    pub storages: Vec<Storage>,
    /// Database and side files, never indexed when they live inside a storage.
    pub exclude: Vec<PathBuf>,
    pub peers: HashMap<ConnId, Peer>,
    pub by_node: HashMap<NodeId, ConnId>,
    pub outbox: Outbox,
    pub receiver: Receiver,
    rng: u64,
}

impl Shell {
    pub fn new(
        net: NetHandle,
        storages: Vec<Storage>,
        exclude: Vec<PathBuf>,
        max_parallel: usize,
        seed: u64,
    ) -> Shell {
        Shell {
            net,
            storages,
            exclude,
            peers: HashMap::new(),
            by_node: HashMap::new(),
            outbox: Outbox::new(max_parallel),
            receiver: Receiver::default(),
            rng: seed | 1,
        }
    }

    /// Where to send to `node`: its connection and outbound gauge, if it is connected.
    pub fn dest(&self, node: &NodeId) -> Option<Dest> {
        let conn = *self.by_node.get(node)?;
        let p = self.peers.get(&conn)?;
        Some(Dest {
            conn,
            outbound: p.outbound.clone(),
        })
    }

    /// Sends any message (a transfer message, say) to a connected node.
    pub fn send_to(&self, node: &NodeId, msg: impl Into<Message>) {
        if let Some(d) = self.dest(node) {
            self.net.send_msg(d.conn, &d.outbound, msg);
        }
    }

    /// A peer's connection is gone: everything in flight with it is dropped (temporary files
    /// of its transfers are removed). Returns its node if it was known.
    pub fn peer_gone(&mut self, conn: ConnId) -> Option<NodeId> {
        let peer = self.peers.remove(&conn)?;
        if self.by_node.get(&peer.node) == Some(&conn) {
            self.by_node.remove(&peer.node);
        }
        self.outbox.engine.drop_receiver(conn, None);
        self.receiver.drop_conn(conn);
        Some(peer.node)
    }

    /// Gives back what a big session left behind (queue and map capacity, read buffers)
    /// and returns freed heap to the kernel: an idle daemon's memory is what it uses now.
    pub fn release_idle_memory(&mut self) {
        self.outbox.shrink();
        self.receiver.shrink();
        crate::mem::release_free();
    }

    /// Nothing is being sent or signed.
    pub fn is_idle(&self) -> bool {
        self.outbox.is_idle() && self.receiver.signing_idle()
    }
}

impl Io for Shell {
    fn send(&mut self, to: &NodeId, msg: PeerMsg) {
        self.send_to(to, msg);
    }

    fn disconnect(&mut self, node: &NodeId, why: Violation) {
        let Some(&conn) = self.by_node.get(node) else {
            return;
        };
        let reason = why.to_string();
        log::warn!("disconnecting {node}: {reason}");
        self.send_to(
            node,
            LinkMsg::Refuse {
                reason: reason.clone(),
            },
        );
        if let Some(p) = self.peers.get_mut(&conn) {
            p.closing = true;
        }
        self.net.send(NetCmd::Close { conn, reason });
    }

    fn scan(&mut self, i: usize) -> Result<(Vec<FileMeta>, IgnoreMatcher), SyncError> {
        let st = &self.storages[i];
        let ignore =
            IgnoreMatcher::load(&st.cfg.path).map_err(|e| SyncError::Scan(e.to_string()))?;
        let opts = ScanOptions {
            ignore: &ignore,
            exclude: &self.exclude,
        };
        let result =
            scanner::scan(&st.cfg.path, &opts).map_err(|e| SyncError::Scan(e.to_string()))?;
        // Called only when no session is active, so no temporary file can be in use.
        for t in &result.temp_files {
            match st.dir.remove_internal(t) {
                Ok(()) => log::info!("{}: removed leftover temporary file {t}", st.cfg.name),
                Err(e) => log::warn!("{}: cannot remove leftover {t}: {e}", st.cfg.name),
            }
        }
        log::debug!(
            "{}: scanned {} entries ({} skipped)",
            st.cfg.name,
            result.entries.len(),
            result.skipped
        );
        Ok((result.entries, ignore))
    }

    fn make_dir(&mut self, storage: usize, path: &RelPath, mode: u32) -> std::io::Result<()> {
        self.storages[storage].dir.create_dir_all(path, mode)
    }

    fn queue_sends(&mut self, _storage: usize, sid: u64, sends: Vec<(FileMeta, Vec<SendTo>)>) {
        self.outbox.queue(sid, sends);
    }

    fn queue_signature(
        &mut self,
        _storage: usize,
        sid: u64,
        path: RelPath,
        base: Version,
        to: NodeId,
    ) {
        if let Some(dest) = self.dest(&to) {
            self.receiver.queue_signature(sid, path, base, dest);
        }
    }

    fn cancel_session(&mut self, sid: u64) {
        self.outbox.cancel_session(sid, &self.net);
        self.receiver.cancel_session(sid);
    }

    fn free_space(&self, storage: usize) -> Option<u64> {
        self.storages[storage].dir.free_space().ok()
    }

    fn random(&mut self) -> u64 {
        // xorshift64*: tickets and jitter need to differ between nodes, not to be secret.
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        self.rng.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}
