//! The `net` thread: one `mio::Poll` owning every socket.
//!
//! The only way in is a [`NetHandle`] (a command channel plus a `mio::Waker`); the only way
//! out is the [`NetEvent`] channel to `sync`. This thread never touches the disk and never
//! blocks on anything but `Poll::poll`.

use std::sync::Arc;
use std::thread::JoinHandle;

use crossbeam_channel::{unbounded, Receiver, Sender};
use mio::{Events, Poll, Token, Waker};

use crate::config::Config;
use crate::daemon::StartError;

const WAKER: Token = Token(0);

/// Commands from `sync` to `net`.
#[derive(Debug)]
pub enum NetCmd {
    Shutdown,
}

/// Events from `net` to `sync`.
#[derive(Debug)]
pub enum NetEvent {}

/// The way into the `net` thread: send a command, then wake the poll loop.
#[derive(Clone)]
pub struct NetHandle {
    tx: Sender<NetCmd>,
    waker: Arc<Waker>,
}

impl NetHandle {
    pub fn send(&self, cmd: NetCmd) {
        if self.tx.send(cmd).is_ok() {
            let _ = self.waker.wake();
        }
    }

    pub fn shutdown(&self) {
        self.send(NetCmd::Shutdown);
    }
}

/// Creates the poll, spawns the `net` thread and returns its handle.
pub fn spawn(
    _config: &Config,
    _events: Sender<NetEvent>,
) -> Result<(JoinHandle<()>, NetHandle), StartError> {
    let poll = Poll::new().map_err(|e| StartError(format!("cannot create poll: {e}")))?;
    let waker = Arc::new(
        Waker::new(poll.registry(), WAKER)
            .map_err(|e| StartError(format!("cannot create waker: {e}")))?,
    );
    let (tx, rx) = unbounded();
    let thread = std::thread::Builder::new()
        .name("net".into())
        .spawn(move || event_loop(poll, rx))
        .map_err(|e| StartError(format!("cannot spawn thread net: {e}")))?;
    Ok((thread, NetHandle { tx, waker }))
}

fn event_loop(mut poll: Poll, rx: Receiver<NetCmd>) {
    let mut events = Events::with_capacity(64);
    loop {
        if let Err(e) = poll.poll(&mut events, None) {
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            log::error!("poll failed: {e}");
            return;
        }
        // The only command so far is Shutdown; a closed channel means the same.
        if matches!(
            rx.try_recv(),
            Ok(NetCmd::Shutdown) | Err(crossbeam_channel::TryRecvError::Disconnected)
        ) {
            return;
        }
    }
}
