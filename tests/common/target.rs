//! A real daemon under attack, for the suites whose crafted peers attack it: the node with
//! its storage next to a marker outside it, the crafted peers' hello and session openings,
//! and what must hold after every attack (the daemon runs, logged why, wrote nothing, still
//! synchronizes with a legitimate node).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use iron_carrier::history::{Entry, Vv};
use iron_carrier::model::{FileMeta, NodeId, RelPath, Version};
use iron_carrier::proto::{
    ElectionMsg, Hello, LinkMsg, Message, PeerMsg, PlanItem, SessionMsg, TransferMsg,
    PROTOCOL_VERSION,
};

use super::peer::{Enc, RawPeer};
use super::{manifest, oneshot, show, Daemon, NodeConfig, TestDir, PATIENCE};

/// The storage both the daemon and the crafted peers announce.
pub const STORAGE: &str = "docs";
/// The daemon's node id. "a-evil" sorts before it (the crafted peer leads), "zz-…" after.
pub const DAEMON_ID: &str = "node-b";

pub fn hello(id: &str, group: Option<&str>, storages: &[&str]) -> Message {
    Message::Link(LinkMsg::Hello(Hello {
        version: PROTOCOL_VERSION,
        node_id: NodeId::new(id).expect("node id"),
        group: group.map(str::to_owned),
        listen_port: 0,
        clock_ms: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64),
        storages: storages.iter().map(|s| (*s).to_owned()).collect(),
    }))
}

/// A daemon with storage `<dir>/store` next to `<dir>/outside/marker.txt`, plus what its
/// directory held once it was up.
pub struct Target {
    pub dir: TestDir,
    pub daemon: Daemon,
    /// The daemon's config file.
    pub config: PathBuf,
    pub port: u16,
    /// The daemon's `encryption`, which the crafted peers and the legitimate node share.
    pub enc: Enc,
    around_before: BTreeMap<String, String>,
    store_before: BTreeMap<String, String>,
}

impl Target {
    pub fn start(tag: &str, enc: Enc) -> Target {
        Target::start_with(tag, enc, &[])
    }

    /// Like `start`, with extra files in the storage.
    pub fn start_with(tag: &str, enc: Enc, files: &[(&str, &[u8])]) -> Target {
        Target::build(tag, enc, files, &[], |c| c)
    }

    pub fn store(&self) -> PathBuf {
        self.dir.join("store")
    }

    /// Connects and brings the link up (preamble, handshake), as a node of the default group
    /// with the daemon's `encryption` would.
    pub fn link(&self) -> RawPeer {
        RawPeer::link(self.port, &self.enc.link(None))
    }

    /// The daemon's preamble, as every connection to it starts.
    pub fn preamble(&self) -> Vec<u8> {
        self.enc.link(None).preamble().to_vec()
    }

    /// Connects, exchanges hellos and waits until the daemon's `sync` thread knows the peer,
    /// so whatever the test sends next arrives at a connection that is past the handshake.
    pub fn handshake(&self, hello_msg: &Message) -> RawPeer {
        let Message::Link(LinkMsg::Hello(h)) = hello_msg else {
            panic!("not a Hello: {hello_msg:?}");
        };
        let needle = format!("peer {} connected;", h.node_id);
        let before = self.daemon.count_log(&needle);
        let mut p = self.link();
        p.send(hello_msg);
        match p.expect("the daemon's Hello") {
            Message::Link(LinkMsg::Hello(theirs)) => {
                assert_eq!(theirs.node_id.as_str(), DAEMON_ID);
                assert_eq!(theirs.version, PROTOCOL_VERSION);
                assert_eq!(theirs.storages, vec![STORAGE.to_owned()]);
            }
            other => panic!("expected the daemon's Hello, got {other:?}"),
        }
        assert!(
            super::wait_until(PATIENCE, || self.daemon.count_log(&needle) > before),
            "the daemon did not accept {}:\n{}",
            h.node_id,
            self.daemon.log()
        );
        p
    }

    pub fn wait_for_log(&self, needle: &str) {
        assert!(
            self.daemon.wait_for_log(needle, PATIENCE),
            "the daemon never logged {needle:?}:\n{}",
            self.daemon.log()
        );
    }

    /// What every test checks after its attack: (1) the daemon still runs, (2) it logged
    /// `reason`, (3) nothing appeared outside the storage and the storage is unchanged,
    /// (4) a legitimate node still synchronizes with it.
    pub fn assert_survived(mut self, reason: &str) {
        self.wait_for_log(reason);
        assert!(
            self.daemon.is_running(),
            "the daemon died:\n{}",
            self.daemon.log()
        );
        assert_eq!(
            around_storage(self.dir.path()),
            self.around_before,
            "something changed next to the storage"
        );
        assert_eq!(
            manifest(&self.store()),
            self.store_before,
            "the storage changed"
        );

        let good = TestDir::new("proto-good");
        let content = b"written by a well-behaved node\n";
        good.write("store/from-c-good.txt", content);
        let cfg = NodeConfig::new("c-good")
            .encryption(&self.enc.toml())
            .peer(self.port)
            .storage(STORAGE, &good.join("store"))
            .write(good.path());
        let out = oneshot(&cfg);
        assert_eq!(
            out.status.code(),
            Some(0),
            "a legitimate sync failed after the attack:\n{}\ndaemon log:\n{}",
            show(&out),
            self.daemon.log()
        );
        assert_eq!(
            std::fs::read(self.store().join("from-c-good.txt")).ok(),
            Some(content.to_vec()),
            "the legitimate file did not arrive:\n{}",
            self.daemon.log()
        );
        assert!(
            self.daemon.is_running(),
            "the daemon died:\n{}",
            self.daemon.log()
        );
        assert_eq!(around_storage(self.dir.path()), self.around_before);
    }
}

/// The daemon's directory without the storage and without the database files the daemon
/// may legitimately keep next to its config.
pub fn around_storage(dir: &Path) -> BTreeMap<String, String> {
    manifest(dir)
        .into_iter()
        .filter(|(k, _)| k != "store" && !k.starts_with("store/"))
        .filter(|(k, _)| {
            let name = k.rsplit('/').next().unwrap_or(k);
            !name.contains(".db")
        })
        .collect()
}

/// Claims the lead of "docs" ("a-evil" < "node-b", so the daemon yields even if it is
/// claiming itself), starts session `sid` once granted and waits for the daemon's summary;
/// returns the peers it names.
pub fn lead_session(p: &mut RawPeer, sid: u64) -> Vec<NodeId> {
    p.send(&Message::Peer(PeerMsg::Election(ElectionMsg::Claim {
        ticket: sid,
        storage: STORAGE.into(),
    })));
    loop {
        match p.expect("Grant") {
            Message::Peer(PeerMsg::Election(ElectionMsg::Grant { ticket })) if ticket == sid => {
                break
            }
            // The daemon's own claim, made when we connected: we never answer it.
            Message::Peer(PeerMsg::Election(ElectionMsg::Claim { .. })) => {}
            other => panic!("expected Grant, got {other:?}"),
        }
    }
    p.send(&Message::Peer(PeerMsg::Session(SessionMsg::Start {
        sid,
        storage: STORAGE.into(),
        members: vec![],
    })));
    match p.expect("IndexSummary") {
        Message::Peer(PeerMsg::Session(SessionMsg::IndexSummary { sid: s, peers, .. })) => {
            assert_eq!(s, sid);
            peers
        }
        other => panic!("expected IndexSummary, got {other:?}"),
    }
}

/// A daemon claims the lead of a shared storage as soon as a peer connects ("node-b" <
/// "zz-…"): grant its claim and read the SessionStart that follows.
pub fn expect_session_start(p: &mut RawPeer) -> u64 {
    let ticket = match p.expect("the daemon's Claim") {
        Message::Peer(PeerMsg::Election(ElectionMsg::Claim { ticket, storage })) => {
            assert_eq!(storage, STORAGE);
            ticket
        }
        other => panic!("expected Claim, got {other:?}"),
    };
    p.send(&Message::Peer(PeerMsg::Election(ElectionMsg::Grant {
        ticket,
    })));
    match p.expect("the daemon's SessionStart") {
        Message::Peer(PeerMsg::Session(SessionMsg::Start {
            sid,
            storage,
            members,
        })) => {
            assert_eq!(storage, STORAGE);
            assert_eq!(
                members.len(),
                1,
                "the daemon's session has one member: {members:?}"
            );
            assert_eq!(sid, ticket, "the session id is the granted ticket");
            sid
        }
        other => panic!("expected SessionStart, got {other:?}"),
    }
}

impl Target {
    /// `kill -9` of the daemon, and a new one on the same config and database; returns the
    /// log of the one killed.
    #[allow(dead_code)] // not every suite kills its target
    pub fn kill_and_restart(&mut self) -> String {
        let log = self.daemon.kill_in_place();
        self.daemon = Daemon::start(&self.config);
        log
    }

    /// Links a crafted idle peer (sharing nothing) from `from` as `id`; returns it if the
    /// daemon linked it (sent its Hello), `None` if it refused or closed.
    pub fn idle_peer(&self, from: std::net::Ipv4Addr, id: &str) -> Option<RawPeer> {
        let cfg = self.enc.link(None);
        let mut p = RawPeer::connect_from(from, self.port);
        let hs = p.start_link(&cfg);
        p.finish_link(&cfg, hs).ok()?;
        p.send(&hello(id, None, &[]));
        match p.recv()? {
            Message::Link(LinkMsg::Hello(_)) => Some(p),
            _ => None,
        }
    }

    /// Like `start`, with the binary started through `wrapper` (see `Daemon::start_via`; e.g.
    /// `prlimit --nofile=64:64`) and its config amended by `amend` (e.g. a configured peer).
    pub fn start_custom(
        tag: &str,
        enc: Enc,
        wrapper: &[&str],
        amend: impl FnOnce(NodeConfig) -> NodeConfig,
    ) -> Target {
        Target::build(tag, enc, &[], wrapper, amend)
    }

    fn build(
        tag: &str,
        enc: Enc,
        files: &[(&str, &[u8])],
        wrapper: &[&str],
        amend: impl FnOnce(NodeConfig) -> NodeConfig,
    ) -> Target {
        let dir = TestDir::new(&format!("{tag}-{enc:?}"));
        dir.write("store/keep.txt", b"already here\n");
        for (path, content) in files {
            dir.write(&format!("store/{path}"), content);
        }
        dir.write("outside/marker.txt", b"must stay exactly as it is\n");
        let cfg = amend(
            NodeConfig::new(DAEMON_ID)
                .encryption(&enc.toml())
                .storage(STORAGE, &dir.join("store")),
        );
        let port = cfg.port;
        let config = cfg.write(dir.path());
        let daemon = Daemon::start_via(wrapper, &config);
        let around_before = around_storage(dir.path());
        let store_before = manifest(&dir.join("store"));
        Target {
            dir,
            daemon,
            config,
            port,
            enc,
            around_before,
            store_before,
        }
    }
}

pub fn one(node: &str, counter: u64) -> Vv {
    Vv::from_pairs(vec![(NodeId::new(node).unwrap(), counter)]).unwrap()
}

/// Leads a session whose plan makes the daemon receive `path` (new size `size`) from us,
/// against its current version `old` (None: it has none), then says Go and starts the file.
pub fn start_receive(t: &Target, path: &str, size: u64, old: Option<Version>) -> (RawPeer, u64) {
    let sid = 0xDE17_A5E5;
    let mut p = t.handshake(&hello("a-evil", None, &[STORAGE]));
    lead_session(&mut p, sid);
    let meta = FileMeta::file(
        RelPath::new(path).unwrap(),
        size,
        1_900_000_000_000_000_000,
        0o644,
    );
    let entry = Entry {
        meta: meta.clone(),
        deleted: false,
        hash: Some([5; 32]),
        vv: one("a-evil", 1_900_000_000),
        by: NodeId::new("a-evil").unwrap(),
        link: None,
    };
    p.send(&Message::Peer(PeerMsg::Session(SessionMsg::PlanChunk {
        sid,
        items: vec![PlanItem::Receive {
            entry,
            from: NodeId::new("a-evil").unwrap(),
            expect: old,
        }],
    })));
    p.send(&Message::Peer(PeerMsg::Session(SessionMsg::PlanEnd {
        sid,
    })));
    // A delta receiver also sends its signature (in either order with PlanReady); an honest
    // sender starts a delta only once it has it.
    let (mut ready, mut signed) = (false, old.is_none());
    while !(ready && signed) {
        match p.expect("PlanReady and the signature") {
            Message::Peer(PeerMsg::Session(SessionMsg::PlanReady { sid: s })) => {
                assert_eq!(s, sid);
                ready = true;
            }
            Message::Peer(PeerMsg::Transfer(TransferMsg::Signature { .. })) => signed = true,
            other => panic!("expected PlanReady or Signature, got {other:?}"),
        }
    }
    p.send(&Message::Peer(PeerMsg::Session(SessionMsg::Go { sid })));
    p.send(&Message::Peer(PeerMsg::Transfer(TransferMsg::FileStart {
        sid,
        xid: 9,
        meta,
    })));
    (p, sid)
}
