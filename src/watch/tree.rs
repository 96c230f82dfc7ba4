//! Which directory each inotify watch stands for, and what an event means for the watches
//! (pure: no inotify, no file system; the thread in `mod.rs` carries the actions out).
//!
//! inotify names a watch by its descriptor and an event's subject by a bare name, so the
//! watcher keeps, per watched directory, its storage and its path inside it. Renames keep a
//! watch on the same directory, so a directory moved within a storage (its `IN_MOVED_FROM`
//! and `IN_MOVED_TO` paired by cookie) only changes the paths recorded below it; one moved out
//! of every storage loses its watches (they would report changes outside any storage), and one
//! moved in, or created, is walked and watched. Every event that can mean a change says so:
//! the scan decides what it was.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::hash::Hash;
use std::path::{Path, PathBuf};

/// The event bits the watcher asks for and reads (the kernel's values, `<sys/inotify.h>`).
pub mod mask {
    pub const MODIFY: u32 = 0x0000_0002;
    pub const ATTRIB: u32 = 0x0000_0004;
    pub const CLOSE_WRITE: u32 = 0x0000_0008;
    pub const MOVED_FROM: u32 = 0x0000_0040;
    pub const MOVED_TO: u32 = 0x0000_0080;
    pub const CREATE: u32 = 0x0000_0100;
    pub const DELETE: u32 = 0x0000_0200;
    pub const DELETE_SELF: u32 = 0x0000_0400;
    pub const MOVE_SELF: u32 = 0x0000_0800;
    pub const UNMOUNT: u32 = 0x0000_2000;
    pub const Q_OVERFLOW: u32 = 0x0000_4000;
    pub const IGNORED: u32 = 0x0000_8000;
    pub const ISDIR: u32 = 0x4000_0000;
}

/// One event, as read.
#[derive(Clone, Copy, Debug)]
pub struct Ev<'a, K> {
    pub wd: &'a K,
    pub mask: u32,
    pub cookie: u32,
    pub name: Option<&'a OsStr>,
}

/// What the thread must do about the events read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action<K> {
    /// Something may have changed in this storage.
    Changed(usize),
    /// Walk this directory (a path inside the storage) and watch it and everything below.
    Watch { storage: usize, rel: PathBuf },
    /// Remove these watches (a directory that left the storages).
    Unwatch(Vec<K>),
    /// The storage's root is gone (deleted, moved, unmounted): its watch is dropped.
    RootGone(usize),
    /// The kernel's queue overflowed: events were lost, anywhere.
    Overflow,
    /// The storage's `.ignore` changed: which directories to watch may have.
    Rules(usize),
}

#[derive(Clone, Debug)]
struct Dir {
    storage: usize,
    rel: PathBuf,
}

/// The watched directories of every storage, keyed by watch descriptor.
#[derive(Debug)]
pub struct Dirs<K> {
    by_wd: HashMap<K, Dir>,
    /// Paths inside storages whose events are no hint: (storage, path).
    exclude: Vec<(usize, PathBuf)>,
    /// `IN_MOVED_FROM`s of this read waiting for their `IN_MOVED_TO`, by cookie:
    /// (storage, path, is a directory).
    moves: HashMap<u32, (usize, PathBuf, bool)>,
}

impl<K: Hash + Eq + Clone> Dirs<K> {
    pub fn new(exclude: Vec<(usize, PathBuf)>) -> Dirs<K> {
        Dirs {
            by_wd: HashMap::new(),
            exclude,
            moves: HashMap::new(),
        }
    }

    /// A watch was added (or re-added: inotify gives a directory one descriptor) for `rel`
    /// in `storage`.
    pub fn insert(&mut self, wd: K, storage: usize, rel: PathBuf) {
        self.by_wd.insert(wd, Dir { storage, rel });
    }

    pub fn len(&self) -> usize {
        self.by_wd.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_wd.is_empty()
    }

    /// The watched directories of `storage`.
    pub fn count(&self, storage: usize) -> usize {
        self.by_wd.values().filter(|d| d.storage == storage).count()
    }

    /// The directory a watch stands for.
    pub fn get(&self, wd: &K) -> Option<(usize, &Path)> {
        self.by_wd.get(wd).map(|d| (d.storage, d.rel.as_path()))
    }

    /// Forgets `storage`'s watches at and below `rel`, returning them (to remove).
    fn take_subtree(&mut self, storage: usize, rel: &Path) -> Vec<K> {
        let gone: Vec<K> = self
            .by_wd
            .iter()
            .filter(|(_, d)| d.storage == storage && d.rel.starts_with(rel))
            .map(|(k, _)| k.clone())
            .collect();
        for k in &gone {
            self.by_wd.remove(k);
        }
        gone
    }

    /// Forgets every watch of `storage`, returning them.
    pub fn take_storage(&mut self, storage: usize) -> Vec<K> {
        self.take_subtree(storage, Path::new(""))
    }

    /// Interprets one event, keeping the paths right; the actions go to `out`.
    pub fn event(&mut self, ev: Ev<'_, K>, out: &mut Vec<Action<K>>) {
        if ev.mask & mask::Q_OVERFLOW != 0 {
            out.push(Action::Overflow);
            return;
        }
        let Some(dir) = self.by_wd.get(ev.wd) else {
            // A watch removed already (its IN_IGNORED, or events queued before removal).
            return;
        };
        let storage = dir.storage;
        let is_root = dir.rel.as_os_str().is_empty();
        let Some(name) = ev.name else {
            // The watched directory itself.
            if ev.mask & mask::IGNORED != 0 {
                self.by_wd.remove(ev.wd);
                if is_root {
                    out.push(Action::RootGone(storage));
                }
            } else if is_root && ev.mask & (mask::DELETE_SELF | mask::MOVE_SELF) != 0 {
                // A root moved away keeps its watch (on a directory no longer the storage):
                // drop it and everything below, which moved with it.
                out.push(Action::Unwatch(self.take_storage(storage)));
                out.push(Action::RootGone(storage));
            } else if ev.mask & mask::UNMOUNT != 0 {
                out.push(Action::Changed(storage));
            }
            return;
        };
        let rel = dir.rel.join(name);
        if self.exclude.iter().any(|(s, p)| *s == storage && *p == rel) {
            return;
        }
        let is_dir = ev.mask & mask::ISDIR != 0;
        out.push(Action::Changed(storage));
        if rel.as_os_str() == crate::ignore::IGNORE_FILE {
            out.push(Action::Rules(storage));
        }
        if ev.mask & mask::MOVED_FROM != 0 {
            self.moves.insert(ev.cookie, (storage, rel, is_dir));
        } else if ev.mask & mask::MOVED_TO != 0 {
            match self.moves.remove(&ev.cookie) {
                Some((s, from, true)) if s == storage => {
                    // Renamed within the storage: the same watches, new paths.
                    for d in self.by_wd.values_mut() {
                        if d.storage == storage {
                            if let Ok(rest) = d.rel.strip_prefix(&from) {
                                d.rel = rel.join(rest);
                            }
                        }
                    }
                }
                Some((from_storage, from, true)) => {
                    out.push(Action::Changed(from_storage));
                    out.push(Action::Unwatch(self.take_subtree(from_storage, &from)));
                    out.push(Action::Watch { storage, rel });
                }
                Some((from_storage, _, false)) if from_storage != storage => {
                    out.push(Action::Changed(from_storage));
                }
                Some(_) => {}
                None if is_dir => out.push(Action::Watch { storage, rel }),
                None => {}
            }
        } else if ev.mask & mask::CREATE != 0 && is_dir {
            out.push(Action::Watch { storage, rel });
        }
    }

    /// The end of one read: a directory whose `IN_MOVED_FROM` found no `IN_MOVED_TO` left
    /// every storage, and its watches go. (A pair split across two reads is taken as a move
    /// out and a move in: more work, the same watches in the end.)
    pub fn end_of_read(&mut self, out: &mut Vec<Action<K>>) {
        let moves: Vec<(usize, PathBuf, bool)> = self.moves.drain().map(|(_, m)| m).collect();
        for (storage, rel, is_dir) in moves {
            if is_dir {
                out.push(Action::Unwatch(self.take_subtree(storage, &rel)));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::mask::*;
    use super::*;

    fn ev<'a>(wd: &'a i32, m: u32, cookie: u32, name: Option<&'a str>) -> Ev<'a, i32> {
        Ev {
            wd,
            mask: m,
            cookie,
            name: name.map(OsStr::new),
        }
    }

    fn dirs() -> Dirs<i32> {
        let mut d = Dirs::new(vec![(0, PathBuf::from("iron-carrier.db"))]);
        d.insert(1, 0, PathBuf::new());
        d.insert(2, 0, PathBuf::from("a"));
        d.insert(3, 0, PathBuf::from("a/b"));
        d.insert(4, 1, PathBuf::new());
        d
    }

    #[test]
    fn file_events_are_changes_of_their_storage_and_excluded_names_are_none() {
        let mut d = dirs();
        let mut out = Vec::new();
        d.event(ev(&3, CLOSE_WRITE, 0, Some("f")), &mut out);
        d.event(ev(&4, DELETE, 0, Some("g")), &mut out);
        d.event(ev(&1, MODIFY, 0, Some("iron-carrier.db")), &mut out);
        d.event(ev(&99, CREATE, 0, Some("stale")), &mut out);
        assert_eq!(out, vec![Action::Changed(0), Action::Changed(1)]);
        out.clear();
        d.event(ev(&1, CLOSE_WRITE, 0, Some(".ignore")), &mut out);
        d.event(ev(&2, CLOSE_WRITE, 0, Some(".ignore")), &mut out);
        assert_eq!(
            out,
            vec![Action::Changed(0), Action::Rules(0), Action::Changed(0)],
            "only the root's .ignore holds rules"
        );
    }

    #[test]
    fn a_new_directory_is_watched_and_an_overflow_is_said() {
        let mut d = dirs();
        let mut out = Vec::new();
        d.event(ev(&2, CREATE | ISDIR, 0, Some("new")), &mut out);
        d.event(ev(&-1, Q_OVERFLOW, 0, None), &mut out);
        assert_eq!(
            out,
            vec![
                Action::Changed(0),
                Action::Watch {
                    storage: 0,
                    rel: PathBuf::from("a/new")
                },
                Action::Overflow
            ]
        );
    }

    #[test]
    fn a_directory_renamed_inside_its_storage_keeps_its_watches_under_new_paths() {
        let mut d = dirs();
        d.insert(5, 0, PathBuf::from("ab")); // a sibling sharing a prefix of the name
        let mut out = Vec::new();
        d.event(ev(&1, MOVED_FROM | ISDIR, 7, Some("a")), &mut out);
        d.event(ev(&1, MOVED_TO | ISDIR, 7, Some("z")), &mut out);
        d.end_of_read(&mut out);
        assert_eq!(out, vec![Action::Changed(0), Action::Changed(0)]);
        assert_eq!(d.get(&2), Some((0, Path::new("z"))));
        assert_eq!(d.get(&3), Some((0, Path::new("z/b"))));
        assert_eq!(d.get(&5), Some((0, Path::new("ab"))));
        assert_eq!(d.len(), 5);
    }

    #[test]
    fn a_directory_moved_out_loses_its_watches_and_one_moved_in_is_watched() {
        let mut d = dirs();
        let mut out = Vec::new();
        d.event(ev(&1, MOVED_FROM | ISDIR, 8, Some("a")), &mut out);
        d.end_of_read(&mut out);
        assert_eq!(out[0], Action::Changed(0));
        let Action::Unwatch(mut gone) = out[1].clone() else {
            panic!("{out:?}")
        };
        gone.sort();
        assert_eq!(gone, vec![2, 3]);
        assert_eq!(d.count(0), 1);
        out.clear();
        d.event(ev(&4, MOVED_TO | ISDIR, 9, Some("in")), &mut out);
        d.end_of_read(&mut out);
        assert_eq!(
            out,
            vec![
                Action::Changed(1),
                Action::Watch {
                    storage: 1,
                    rel: PathBuf::from("in")
                }
            ]
        );
    }

    #[test]
    fn a_directory_moved_between_storages_is_unwatched_in_one_and_walked_in_the_other() {
        let mut d = dirs();
        let mut out = Vec::new();
        d.event(ev(&2, MOVED_FROM | ISDIR, 3, Some("b")), &mut out);
        d.event(ev(&4, MOVED_TO | ISDIR, 3, Some("b2")), &mut out);
        d.end_of_read(&mut out);
        assert_eq!(
            out,
            vec![
                Action::Changed(0),
                Action::Changed(1),
                Action::Changed(0),
                Action::Unwatch(vec![3]),
                Action::Watch {
                    storage: 1,
                    rel: PathBuf::from("b2")
                }
            ]
        );
    }

    #[test]
    fn a_file_renamed_is_a_change_and_nothing_else() {
        let mut d = dirs();
        let mut out = Vec::new();
        d.event(ev(&2, MOVED_FROM, 4, Some("x")), &mut out);
        d.event(ev(&3, MOVED_TO, 4, Some("y")), &mut out);
        d.event(ev(&3, MOVED_FROM, 5, Some("y")), &mut out);
        d.end_of_read(&mut out);
        assert_eq!(out, vec![Action::Changed(0); 3]);
        assert_eq!(d.len(), 4);
    }

    #[test]
    fn a_root_deleted_or_moved_away_is_said_and_its_watches_go() {
        let mut d = dirs();
        let mut out = Vec::new();
        d.event(ev(&1, MOVE_SELF, 0, None), &mut out);
        let Action::Unwatch(mut gone) = out[0].clone() else {
            panic!("{out:?}")
        };
        gone.sort();
        assert_eq!(gone, vec![1, 2, 3]);
        assert_eq!(out[1], Action::RootGone(0));
        out.clear();
        // Deleted: the kernel drops the watch (IN_IGNORED) after IN_DELETE_SELF.
        d.event(ev(&4, DELETE_SELF, 0, None), &mut out);
        d.event(ev(&4, IGNORED, 0, None), &mut out);
        assert_eq!(out[1], Action::RootGone(1));
        d.event(ev(&4, IGNORED, 0, None), &mut out);
        assert_eq!(out.len(), 2, "{out:?}");
        assert!(d.is_empty());
    }

    #[test]
    fn a_subdirectory_deleted_is_forgotten_when_the_kernel_drops_its_watch() {
        let mut d = dirs();
        let mut out = Vec::new();
        d.event(ev(&2, DELETE | ISDIR, 0, Some("b")), &mut out);
        d.event(ev(&3, DELETE_SELF, 0, None), &mut out);
        d.event(ev(&3, IGNORED, 0, None), &mut out);
        assert_eq!(out, vec![Action::Changed(0)]);
        assert_eq!(d.get(&3), None);
        assert_eq!(d.count(0), 2);
    }
}
