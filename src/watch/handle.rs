//! The one way into and out of the `watch` thread for every other thread: the options it
//! starts with, the handle that stops it, and the hints it hands to `sync`.
//!
//! A hint says only "storage *i* is due for a scan" (its events debounced, or its periodic
//! rescan). It carries no paths: the scan and the history decide what changed, so the hint
//! costs no memory per file, and hints for one storage that `sync` has not taken yet are one
//! flag, however many arrive.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::{bounded, Receiver, Sender};
use mio::Waker;

/// One storage the watcher watches.
#[derive(Clone, Debug)]
pub struct WatchedStorage {
    /// Its index in the config (and in `sync`'s storages).
    pub index: usize,
    pub name: String,
    pub root: PathBuf,
    /// Debounce: how long after its last change it is scanned.
    pub delay: Duration,
}

/// What `watch` needs of the config (it never reads the config itself).
#[derive(Clone, Debug)]
pub struct WatchOptions {
    pub storages: Vec<WatchedStorage>,
    /// The number of storages in the config (watched or not): the size of the hint flags.
    pub total_storages: usize,
    /// How often every watched storage is scanned whatever the watcher saw; `None`: never.
    pub rescan: Option<Duration>,
    /// Absolute paths whose changes are no hint (the history database and its side files,
    /// which may live inside a storage: their writes would otherwise wake us after every
    /// scan).
    pub exclude: Vec<PathBuf>,
}

/// Stops the `watch` thread.
#[derive(Clone)]
pub struct WatchHandle {
    pub(super) waker: Arc<Waker>,
    pub(super) stop: Arc<AtomicBool>,
}

impl WatchHandle {
    pub fn shutdown(&self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.waker.wake();
    }
}

/// A storage due for a scan.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hint {
    pub storage: usize,
    /// Its `.ignore` changed: what is to be synchronized may have changed although no file
    /// did (files a peer offered that the old rules declined), so it is synchronized even if
    /// the scan finds nothing new.
    pub rules: bool,
}

/// Per storage: due, and due with changed rules.
type Flags = Arc<[(AtomicBool, AtomicBool)]>;

/// The `watch` side of the hints.
pub struct HintSender {
    flags: Flags,
    wake: Sender<()>,
}

impl HintSender {
    pub fn send(&self, hint: Hint) {
        if let Some((due, rules)) = self.flags.get(hint.storage) {
            if hint.rules {
                rules.store(true, Ordering::SeqCst);
            }
            due.store(true, Ordering::SeqCst);
            // Full means a wake-up is pending already, and it will see this flag too.
            let _ = self.wake.try_send(());
        }
    }
}

/// The `sync` side of the hints: a channel to wait on, and the storages due.
pub struct Hints {
    flags: Flags,
    wake: Receiver<()>,
}

impl Hints {
    /// Readable when a hint may be waiting (select on it, then [`Hints::take`]).
    pub fn wake(&self) -> &Receiver<()> {
        &self.wake
    }

    /// The storages due for a scan since the last call, each once.
    pub fn take(&self) -> Vec<Hint> {
        (0..self.flags.len())
            .filter(|&i| self.flags[i].0.swap(false, Ordering::SeqCst))
            .map(|storage| Hint {
                storage,
                rules: self.flags[storage].1.swap(false, Ordering::SeqCst),
            })
            .collect()
    }
}

/// A pair of hint ends for `storages` storages.
pub fn hints(storages: usize) -> (HintSender, Hints) {
    let flags: Flags = (0..storages)
        .map(|_| (AtomicBool::new(false), AtomicBool::new(false)))
        .collect();
    let (tx, rx) = bounded(1);
    (
        HintSender {
            flags: flags.clone(),
            wake: tx,
        },
        Hints { flags, wake: rx },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hints_coalesce_per_storage_and_are_taken_once() {
        let (tx, rx) = hints(3);
        let h = |storage, rules| Hint { storage, rules };
        for _ in 0..1000 {
            tx.send(h(2, false));
        }
        tx.send(h(2, true));
        tx.send(h(2, false));
        tx.send(h(0, false));
        tx.send(h(9, true)); // no such storage
        assert!(rx.wake().try_recv().is_ok());
        assert!(
            rx.wake().try_recv().is_err(),
            "one wake-up, however many hints"
        );
        assert_eq!(rx.take(), vec![h(0, false), h(2, true)]);
        assert_eq!(rx.take(), vec![]);
        tx.send(h(1, false));
        assert!(rx.wake().try_recv().is_ok());
        assert_eq!(rx.take(), vec![h(1, false)]);
    }
}
