//! The `watch` thread (daemon mode only): inotify on every directory of each watched storage,
//! events debounced per storage ([`crate::debounce`]), and a hint to `sync` when a storage is
//! due for a scan. It is the only thread that touches inotify.
//!
//! Events are hints: correctness never depends on them. `sync` answers a hint with a full
//! scan of the storage, and the history decides what changed (its own writes included, which
//! are in the history already and so start nothing). Whenever the watcher may have missed
//! something it says so with a scan: a new directory is walked and watched and then scanned
//! (files created in it before its watch existed are found); a full kernel queue, a watch
//! refused at the limit, and a root that disappears each mean a full rescan. Every storage is
//! also rescanned periodically (`rescan_interval`), as watchers miss changes (network file
//! systems, bind mounts, writes through another mount).
//!
//! Idle costs nothing: the thread sleeps in `poll` until an event, a debounce deadline, the
//! periodic rescan or shutdown. Memory: one map entry per watched directory (its storage and
//! its path inside it) and the kernel's watch; nothing per file.

pub mod handle;
pub mod tree;

use std::io::{self, ErrorKind};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use inotify::{Inotify, WatchDescriptor, WatchMask};
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token, Waker};

use crate::debounce::{Debouncer, Due};
use crate::fsops::MARKER;
use crate::ignore::IgnoreMatcher;
use crate::model::RelPath;
use crate::run::StartError;
use handle::{Hint, HintSender, WatchHandle, WatchOptions};
use tree::{Action, Dirs, Ev};

const INOTIFY: Token = Token(0);
const WAKER: Token = Token(1);
/// How often a storage whose root is missing (deleted, unmounted) is looked for again, and a
/// root without its storage marker (a disk not mounted yet: the watch is on the empty mount
/// point) is checked for another directory appearing at its path.
const ROOT_RETRY: Duration = Duration::from_secs(30);
/// How often a storage the watcher cannot fully see (the watch limit) is rescanned instead.
pub const DEGRADED_RESCAN: Duration = Duration::from_secs(60);
/// At most one overflow line per this long (a storm can overflow the queue again and again).
const OVERFLOW_LOG_EVERY: Duration = Duration::from_secs(60);
/// The read buffer: room for a few hundred events per read.
const BUF: usize = 16 * 1024;

/// Starts the thread. Its first act is to watch every storage, then to have each scanned
/// (what changed while the daemon was down).
pub fn spawn(
    opts: WatchOptions,
    hints: HintSender,
) -> Result<(JoinHandle<()>, WatchHandle), StartError> {
    let poll = Poll::new().map_err(|e| StartError(format!("cannot create poll: {e}")))?;
    let waker = Arc::new(
        Waker::new(poll.registry(), WAKER)
            .map_err(|e| StartError(format!("cannot create waker: {e}")))?,
    );
    let inotify = Inotify::init().map_err(|e| {
        StartError(format!(
            "cannot start the file watcher (inotify): {e}; set enable_file_watcher = false \
             to run without it"
        ))
    })?;
    poll.registry()
        .register(
            &mut SourceFd(&inotify.as_raw_fd()),
            INOTIFY,
            Interest::READABLE,
        )
        .map_err(|e| StartError(format!("cannot register inotify: {e}")))?;
    let stop = Arc::new(AtomicBool::new(false));
    let handle = WatchHandle {
        waker,
        stop: stop.clone(),
    };
    let thread = std::thread::Builder::new()
        .name("watch".into())
        .spawn(move || Watcher::new(opts, inotify, hints).run(poll, &stop))
        .map_err(|e| StartError(format!("cannot spawn thread watch: {e}")))?;
    Ok((thread, handle))
}

/// What inotify reports for each watched directory: everything that can change what a scan
/// finds. `IN_DONT_FOLLOW` and `IN_ONLYDIR`: a symlink is never followed out of a storage.
fn watch_mask() -> WatchMask {
    WatchMask::MODIFY
        | WatchMask::ATTRIB
        | WatchMask::CLOSE_WRITE
        | WatchMask::MOVED_FROM
        | WatchMask::MOVED_TO
        | WatchMask::CREATE
        | WatchMask::DELETE
        | WatchMask::DELETE_SELF
        | WatchMask::MOVE_SELF
        | WatchMask::DONT_FOLLOW
        | WatchMask::ONLYDIR
        | WatchMask::EXCL_UNLINK
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Added {
    Yes,
    No,
    /// The watch limit (`max_user_watches`) or the kernel's memory.
    Limit,
}

struct Root {
    name: String,
    path: PathBuf,
    /// Its index in the config.
    index: usize,
    /// Its root has a watch.
    watched: bool,
    /// The watched root directory's (device, inode): a disk mounted on the path later, or a
    /// directory put in its place, is another directory, which the watch does not see.
    id: Option<(u64, u64)>,
    /// The root held the storage marker when it was watched. Until it does, it is checked
    /// every [`ROOT_RETRY`]; a root that held one and went away is back only with one.
    marked: bool,
    /// Its `.ignore` changed since its last hint.
    rules_changed: bool,
    /// Its `.ignore`: ignored directories are not watched (what happens in them is never
    /// synchronized, and `node_modules` would cost thousands of watches).
    ignore: IgnoreMatcher,
}

struct Watcher {
    inotify: Inotify,
    /// Indexed like the debouncer's slots (the watched storages, in order).
    roots: Vec<Root>,
    dirs: Dirs<WatchDescriptor>,
    debounce: Debouncer,
    hints: HintSender,
    rescan: Option<Duration>,
    /// The watch limit was met (said once per process: the fix is the same sysctl).
    limit_logged: bool,
    overflow_logged: Option<Instant>,
    next_root_retry: Option<Instant>,
    /// The first walk is done (later roots found are roots that came back).
    started: bool,
}

impl Watcher {
    fn new(opts: WatchOptions, inotify: Inotify, hints: HintSender) -> Watcher {
        let now = Instant::now();
        let settings: Vec<_> = opts
            .storages
            .iter()
            .map(|s| (s.delay, opts.rescan))
            .collect();
        let mut exclude = Vec::new();
        for (slot, s) in opts.storages.iter().enumerate() {
            let root = std::fs::canonicalize(&s.root).unwrap_or_else(|_| s.root.clone());
            for p in &opts.exclude {
                if let Ok(rel) = p.strip_prefix(&root) {
                    exclude.push((slot, rel.to_owned()));
                }
            }
        }
        let roots = opts
            .storages
            .into_iter()
            .map(|s| Root {
                name: s.name,
                path: s.root,
                index: s.index,
                watched: false,
                id: None,
                marked: false,
                rules_changed: false,
                ignore: IgnoreMatcher::empty(),
            })
            .collect();
        Watcher {
            inotify,
            roots,
            dirs: Dirs::new(exclude),
            debounce: Debouncer::new(&settings, now),
            hints,
            rescan: opts.rescan,
            limit_logged: false,
            overflow_logged: None,
            next_root_retry: None,
            started: false,
        }
    }

    fn run(mut self, mut poll: Poll, stop: &AtomicBool) {
        let now = Instant::now();
        for slot in 0..self.roots.len() {
            self.watch_root(slot, now);
        }
        log::info!(
            "watching {} director{} in {} storage(s)",
            self.dirs.len(),
            if self.dirs.len() == 1 { "y" } else { "ies" },
            self.roots.iter().filter(|r| r.watched).count()
        );
        self.started = true;
        let mut events = Events::with_capacity(4);
        let mut buf = vec![0u8; BUF];
        loop {
            let timeout = [self.debounce.next_deadline(), self.next_root_retry]
                .into_iter()
                .flatten()
                .min()
                .map(|at| at.saturating_duration_since(Instant::now()));
            if let Err(e) = poll.poll(&mut events, timeout) {
                if e.kind() != ErrorKind::Interrupted {
                    log::error!("the file watcher stopped: poll failed: {e}");
                    return;
                }
            }
            if stop.load(Ordering::SeqCst) {
                return;
            }
            if events.iter().any(|e| e.token() == INOTIFY) {
                self.read_all(&mut buf);
            }
            let now = Instant::now();
            if self.next_root_retry.is_some_and(|at| at <= now) {
                self.next_root_retry = None;
                for slot in 0..self.roots.len() {
                    self.check_root(slot, now);
                }
            }
            for (slot, why) in self.debounce.due(now) {
                let r = &mut self.roots[slot];
                match why {
                    Due::Changes { events } => {
                        log::debug!("{}: {events} change event(s); scanning", r.name)
                    }
                    Due::Periodic => log::debug!("{}: periodic rescan", r.name),
                }
                self.hints.send(Hint {
                    storage: r.index,
                    rules: std::mem::take(&mut r.rules_changed),
                });
            }
        }
    }

    /// Reads until the queue is empty (readiness is edge-triggered), then acts.
    fn read_all(&mut self, buf: &mut [u8]) {
        let mut actions = Vec::new();
        loop {
            match self.inotify.read_events(buf) {
                Ok(evs) => {
                    let mut any = false;
                    for e in evs {
                        any = true;
                        self.dirs.event(
                            Ev {
                                wd: &e.wd,
                                mask: e.mask.bits(),
                                cookie: e.cookie,
                                name: e.name,
                            },
                            &mut actions,
                        );
                    }
                    if !any {
                        break;
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => {
                    // Whatever it was, events may be lost: scan everything.
                    log::warn!("reading file events failed: {e}; rescanning");
                    actions.push(Action::Overflow);
                    break;
                }
            }
        }
        self.dirs.end_of_read(&mut actions);
        let now = Instant::now();
        for a in actions {
            self.act(a, now);
        }
    }

    fn act(&mut self, a: Action<WatchDescriptor>, now: Instant) {
        match a {
            Action::Changed(slot) => self.debounce.changed(slot, now),
            Action::Watch { storage, rel } => {
                // Watch first, then scan: whatever was created in the directory before its
                // watch existed is found by the scan this change leads to.
                self.watch_tree(storage, &rel);
                self.debounce.changed(storage, now);
            }
            Action::Unwatch(wds) => {
                for wd in wds {
                    // Fails for a directory already gone, whose watch the kernel dropped.
                    let _ = self.inotify.watches().remove(wd);
                }
            }
            Action::RootGone(slot) => {
                let r = &mut self.roots[slot];
                log::warn!(
                    "{}: the storage root {} disappeared (deleted, moved or unmounted); \
                     looking for it every {} s",
                    r.name,
                    r.path.display(),
                    ROOT_RETRY.as_secs()
                );
                r.watched = false;
                for wd in self.dirs.take_storage(slot) {
                    let _ = self.inotify.watches().remove(wd);
                }
                self.debounce.changed(slot, now);
                self.retry_roots_at(now + ROOT_RETRY);
            }
            Action::Rules(slot) => {
                self.roots[slot].rules_changed = true;
                // Directories no longer ignored get their watches; ones ignored now keep
                // theirs until they go (their events cost a scan that finds nothing).
                self.load_rules(slot);
                if self.roots[slot].watched {
                    self.watch_tree(slot, Path::new(""));
                }
            }
            Action::Overflow => {
                if self
                    .overflow_logged
                    .is_none_or(|t| now.duration_since(t) >= OVERFLOW_LOG_EVERY)
                {
                    log::warn!(
                        "the file event queue overflowed (fs.inotify.max_queued_events): \
                         events were lost; rescanning every watched storage"
                    );
                    self.overflow_logged = Some(now);
                }
                // Directories created meanwhile have no watch yet: walk everything again
                // (a directory watched already keeps its descriptor).
                for slot in 0..self.roots.len() {
                    if self.roots[slot].watched {
                        self.watch_tree(slot, Path::new(""));
                    }
                    self.debounce.changed(slot, now);
                }
            }
        }
    }

    /// Reads the storage's `.ignore`. One that cannot be read or parsed ignores nothing here:
    /// more watches, never fewer (the scan reports the error).
    fn load_rules(&mut self, slot: usize) {
        let r = &mut self.roots[slot];
        r.ignore = IgnoreMatcher::load(&r.path).unwrap_or_else(|_| IgnoreMatcher::empty());
    }

    fn is_ignored(&self, slot: usize, rel: &Path) -> bool {
        rel.to_str()
            .and_then(|s| RelPath::new(s).ok())
            .is_some_and(|p| self.roots[slot].ignore.is_ignored(&p, true))
    }

    fn retry_roots_at(&mut self, at: Instant) {
        if self.next_root_retry.is_none_or(|t| at < t) {
            self.next_root_retry = Some(at);
        }
    }

    /// The root's (device, inode) and whether it holds the storage marker; `None` if it is
    /// not a directory.
    fn root_state(&self, slot: usize) -> Option<((u64, u64), bool)> {
        use std::os::unix::fs::MetadataExt;
        let path = &self.roots[slot].path;
        let m = std::fs::metadata(path).ok().filter(|m| m.is_dir())?;
        let marked = std::fs::symlink_metadata(path.join(MARKER)).is_ok();
        Some(((m.dev(), m.ino()), marked))
    }

    /// The periodic look at a root that is missing or has no marker.
    fn check_root(&mut self, slot: usize, now: Instant) {
        let r = &self.roots[slot];
        if !r.watched {
            return self.watch_root(slot, now);
        }
        if r.marked {
            return;
        }
        match self.root_state(slot) {
            Some((id, _)) if Some(id) != r.id => {
                // Another directory at the root's path (a disk mounted on it at last): the
                // watches are on the old one.
                log::info!(
                    "{}: another directory is at {} now (a disk mounted?); watching it",
                    r.name,
                    r.path.display()
                );
                self.roots[slot].watched = false;
                for wd in self.dirs.take_storage(slot) {
                    let _ = self.inotify.watches().remove(wd);
                }
                self.watch_root(slot, now);
            }
            Some((_, true)) => self.roots[slot].marked = true,
            Some((_, false)) => self.retry_roots_at(now + ROOT_RETRY),
            None => {} // its IN_DELETE_SELF or IN_UNMOUNT says so
        }
    }

    /// Watches a storage's root and everything below, then has it scanned.
    fn watch_root(&mut self, slot: usize, now: Instant) {
        let r = &self.roots[slot];
        let state = self.root_state(slot);
        let Some((id, marked)) = state.filter(|&(_, m)| m || !r.marked) else {
            // Missing, or a root that had its marker and has none now: an empty mount point
            // or a directory made in its place, not the storage. Looked for again later.
            log::debug!(
                "{}: the storage root {} is not there; not watched yet",
                r.name,
                r.path.display()
            );
            self.retry_roots_at(now + ROOT_RETRY);
            return;
        };
        self.load_rules(slot);
        if self.add_watch(slot, Path::new(""), true) == Added::Yes {
            let r = &mut self.roots[slot];
            r.watched = true;
            r.id = Some(id);
            r.marked = marked;
            self.watch_tree(slot, Path::new(""));
            self.debounce.changed(slot, now);
            if self.started {
                log::info!(
                    "{}: the storage root {} is back; watching {} directories",
                    self.roots[slot].name,
                    self.roots[slot].path.display(),
                    self.dirs.count(slot)
                );
            }
        }
        if !self.roots[slot].marked {
            self.retry_roots_at(now + ROOT_RETRY);
        }
    }

    /// Adds a watch for `rel` in storage `slot`.
    fn add_watch(&mut self, slot: usize, rel: &Path, is_root: bool) -> Added {
        let path = self.roots[slot].path.join(rel);
        let mut mask = watch_mask();
        if is_root {
            // The root may be a symlink the user chose; below it nothing is followed.
            mask.remove(WatchMask::DONT_FOLLOW);
        }
        match self.inotify.watches().add(&path, mask) {
            Ok(wd) => {
                self.dirs.insert(wd, slot, rel.to_owned());
                Added::Yes
            }
            Err(e) => self.watch_failed(slot, &path, &e),
        }
    }

    fn watch_failed(&mut self, slot: usize, path: &Path, e: &io::Error) -> Added {
        let name = &self.roots[slot].name;
        match e.raw_os_error() {
            // Gone or replaced meanwhile: its parent's events say so.
            Some(libc::ENOENT) | Some(libc::ENOTDIR) | Some(libc::ELOOP) => Added::No,
            Some(libc::ENOSPC) | Some(libc::ENOMEM) => {
                if !self.limit_logged {
                    self.limit_logged = true;
                    log::warn!(
                        "{name}: cannot watch {}: the inotify watch limit is reached; raise it \
                         with `sysctl fs.inotify.max_user_watches=524288` (and in \
                         /etc/sysctl.conf). Until then storages not fully watched are \
                         rescanned every {} s",
                        path.display(),
                        DEGRADED_RESCAN.as_secs()
                    );
                }
                let now = Instant::now();
                let every = match self.rescan {
                    Some(r) => r.min(DEGRADED_RESCAN),
                    None => DEGRADED_RESCAN,
                };
                if self.debounce.rescan_interval(slot) != Some(every) {
                    self.debounce.set_rescan(slot, Some(every), now);
                    self.debounce.changed(slot, now);
                }
                Added::Limit
            }
            _ => {
                log::warn!(
                    "{name}: cannot watch {}: {e}; its changes are found by the periodic \
                     rescan",
                    path.display()
                );
                Added::No
            }
        }
    }

    /// Walks `rel` in storage `slot` and watches every directory below it (not following
    /// symlinks). Stops at the watch limit: the storage is then rescanned periodically.
    fn watch_tree(&mut self, slot: usize, rel: &Path) {
        let mut stack = vec![rel.to_owned()];
        while let Some(dir) = stack.pop() {
            // The root's own watch is added by `watch_root`; any other directory's here,
            // before its children are listed.
            if !dir.as_os_str().is_empty() {
                if self.is_ignored(slot, &dir) {
                    continue;
                }
                match self.add_watch(slot, &dir, false) {
                    Added::Yes => {}
                    Added::No => continue,
                    // Adding more would fail the same way.
                    Added::Limit => return,
                }
            }
            let Ok(entries) = std::fs::read_dir(self.roots[slot].path.join(&dir)) else {
                continue;
            };
            for e in entries.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    stack.push(dir.join(e.file_name()));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::tree::mask;
    use inotify::EventMask;

    #[test]
    fn the_pure_masks_are_the_kernels() {
        let pairs = [
            (mask::MODIFY, EventMask::MODIFY),
            (mask::ATTRIB, EventMask::ATTRIB),
            (mask::CLOSE_WRITE, EventMask::CLOSE_WRITE),
            (mask::MOVED_FROM, EventMask::MOVED_FROM),
            (mask::MOVED_TO, EventMask::MOVED_TO),
            (mask::CREATE, EventMask::CREATE),
            (mask::DELETE, EventMask::DELETE),
            (mask::DELETE_SELF, EventMask::DELETE_SELF),
            (mask::MOVE_SELF, EventMask::MOVE_SELF),
            (mask::UNMOUNT, EventMask::UNMOUNT),
            (mask::Q_OVERFLOW, EventMask::Q_OVERFLOW),
            (mask::IGNORED, EventMask::IGNORED),
            (mask::ISDIR, EventMask::ISDIR),
        ];
        for (ours, kernel) in pairs {
            assert_eq!(ours, kernel.bits(), "{kernel:?}");
        }
    }
}
