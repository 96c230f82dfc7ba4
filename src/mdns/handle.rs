//! The one way into the `mdns` thread for every other thread: the options it starts with
//! and the handle that stops it (with goodbye packets). What it finds goes straight to `net`
//! as [`crate::net::handle::NetCmd::Discovered`]; nothing comes back.

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Sender;
use std::sync::Arc;

use simple_mdns::InstanceInformation;

use crate::model::NodeId;

/// What `mdns` needs of the config (it never reads the config itself).
#[derive(Clone, Debug)]
pub struct MdnsOptions {
    pub node_id: NodeId,
    /// The group's tag (a hash of its name: the name is never announced).
    pub group_tag: [u8; 16],
    /// The port peers dial: the one `net` listens on.
    pub port: u16,
    /// `listen_address`: when it is one address, only the interface holding it is announced.
    pub listen: IpAddr,
    /// `discovery_interfaces`; empty: every usable interface.
    pub interfaces: Vec<String>,
}

/// Stops the `mdns` thread, which says goodbye on every interface first.
#[derive(Clone)]
pub struct MdnsHandle {
    pub(super) stop: Arc<AtomicBool>,
    /// The channel the crate reports announcements on; a message wakes the thread.
    pub(super) wake: Sender<InstanceInformation>,
}

impl MdnsHandle {
    pub fn shutdown(&self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.wake.send(InstanceInformation::new(String::new()));
    }
}
