//! The `sync` thread: storages, sessions and transfers.
//!
//! It owns every storage and (later) the database; it is the only thread that reads or
//! writes files inside a storage.

use crossbeam_channel::{select, Receiver, Sender};

use crate::config::Config;
use crate::daemon::{Mode, Outcome};
use crate::net::{NetEvent, NetHandle};

/// Control messages from the main thread.
#[derive(Debug)]
pub enum SyncCtl {
    Shutdown,
}

/// The thread body.
pub fn run(
    _config: Config,
    mode: Mode,
    _net: NetHandle,
    net_events: Receiver<NetEvent>,
    ctl: Receiver<SyncCtl>,
    done: Sender<Outcome>,
) {
    if mode == Mode::OneShot {
        let _ = done.send(Outcome { ok: true });
    }
    loop {
        select! {
            recv(ctl) -> msg => match msg {
                Ok(SyncCtl::Shutdown) | Err(_) => return,
            },
            recv(net_events) -> ev => if ev.is_err() { return },
        }
    }
}
