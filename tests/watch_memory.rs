//! The watcher's memory per watched directory, for `make bench` (ignored by `cargo test`):
//! 1,000 real directories laid out as the bench's data (`dNN/eNN`), each watched with real
//! inotify and recorded in the watcher's map as the `watch` thread does it. The heap the map
//! takes is counted exactly by a counting allocator (this binary's own); the kernel's share
//! is the size of one `inotify_inode_mark` and one `fsnotify_mark_connector` object, from
//! `/sys/kernel/slab` (besides, a watch keeps its directory's inode in the inode cache).
//! Prints `watch-memory: dirs=… heap_bytes_per_dir=… kernel_bytes_per_watch=…`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic in a test is a failed test

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::path::PathBuf;
use std::sync::atomic::{AtomicIsize, Ordering};

use inotify::{Inotify, WatchMask};
use iron_carrier::watch::tree::Dirs;

struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: every call is passed to the system allocator unchanged; only a counter is added.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        LIVE.fetch_add(l.size() as isize, Ordering::SeqCst);
        System.alloc(l)
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size() as isize, Ordering::SeqCst);
        System.dealloc(p, l)
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        LIVE.fetch_add(new as isize - l.size() as isize, Ordering::SeqCst);
        System.realloc(p, l, new)
    }
}

#[global_allocator]
static A: Counting = Counting;

/// The size one object of a slab cache takes, with its metadata.
fn slab_size(cache: &str) -> Option<u64> {
    std::fs::read_to_string(format!("/sys/kernel/slab/{cache}/slab_size"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

#[test]
#[ignore = "a benchmark: run by make bench"]
fn memory_per_watched_directory() {
    let dir = common::TestDir::new("watch-memory");
    let mut rels = Vec::new();
    for d in 0..50 {
        for e in 0..20 {
            let rel = PathBuf::from(format!("d{d:02}/e{e:02}"));
            std::fs::create_dir_all(dir.path().join(&rel)).unwrap();
            rels.push(rel);
        }
    }
    let inotify = Inotify::init().unwrap();
    let mut wds = Vec::new();
    for rel in &rels {
        wds.push(
            inotify
                .watches()
                .add(dir.path().join(rel), WatchMask::CREATE | WatchMask::ONLYDIR)
                .unwrap(),
        );
    }
    let before = LIVE.load(Ordering::SeqCst);
    let mut dirs = Dirs::new(Vec::new());
    for (wd, rel) in wds.into_iter().zip(&rels) {
        dirs.insert(wd, 0, rel.clone());
    }
    let heap = LIVE.load(Ordering::SeqCst) - before;
    assert_eq!(dirs.len(), rels.len());
    // The paths are the clones the map owns: counted above, as in the thread.
    let kernel = match (
        slab_size("inotify_inode_mark"),
        slab_size("fsnotify_mark_connector"),
    ) {
        (Some(m), Some(c)) => (m + c).to_string(),
        _ => "unknown".to_owned(),
    };
    println!(
        "watch-memory: dirs={} heap_bytes_per_dir={} kernel_bytes_per_watch={kernel}",
        rels.len(),
        heap / rels.len() as isize
    );
}
