//! Files over 4 GiB on every architecture. Sizes and offsets are `u64` on disk and on the
//! wire, never `usize`, so a 32-bit build (armv7, run by `make cross-test` under qemu)
//! handles them exactly like a 64-bit one: the scanner's sizes, reads at offsets past 4 GiB
//! through [`StorageDir`], delta signatures of 5 GiB files and the protocol's encoding of
//! file sizes. The files are sparse (`File::set_len`): 5 GiB of holes cost no disk.
//!
//! The end-to-end sync of a 4.5 GiB file between two real nodes (a whole transfer, then a
//! delta against it) reads, hashes and writes every byte and needs about 10 GiB of free disk,
//! so it runs only with `IC_HEAVY=1`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic in a test is a failed test

mod common;

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;
use iron_carrier::delta::{self, BlockSig, Signature, MAX_BLOCKS, STRONG_LEN};
use iron_carrier::fsops::{StatKind, StorageDir};
use iron_carrier::history::{Entry, Record, Vv};
use iron_carrier::ignore::IgnoreMatcher;
use iron_carrier::model::{EntryKind, FileMeta, NodeId, RelPath, Version};
use iron_carrier::proto::{self, Message, PeerMsg, PlanItem, SendTo, SessionMsg, TransferMsg};
use iron_carrier::scanner::{scan, ScanOptions};

const GIB: u64 = 1 << 30;
/// Past 4 GiB, and not a multiple of any block size: the last delta block is a short one.
const SIZE: u64 = 5 * GIB + 1000;
const TAIL: &[u8] = b"the last bytes of a file over four GiB";

/// Creates a sparse file of `size` bytes at `p` whose last bytes are [`TAIL`].
fn sparse(p: &Path, size: u64) {
    let f = File::create(p).expect("create sparse file");
    f.set_len(size).expect("set_len past 4 GiB");
    f.write_all_at(TAIL, size - TAIL.len() as u64)
        .expect("write past 4 GiB");
}

/// A storage directory holding one sparse file `big.img` of [`SIZE`] bytes.
fn storage_with_big_file(tag: &str) -> (TestDir, PathBuf) {
    let dir = TestDir::new(tag);
    let root = dir.mkdir("s");
    sparse(&root.join("big.img"), SIZE);
    (dir, root)
}

#[test]
fn the_scanner_reports_the_exact_size_of_a_file_over_4_gib() {
    let (_dir, root) = storage_with_big_file("large-scan");
    let ignore = IgnoreMatcher::empty();
    let res = scan(
        &root,
        &ScanOptions {
            ignore: &ignore,
            exclude: &[],
        },
    )
    .expect("scan");
    assert_eq!(res.entries.len(), 1, "{:?}", res.entries);
    let e = &res.entries[0];
    assert_eq!(e.path.as_str(), "big.img");
    assert_eq!(e.kind, EntryKind::File);
    assert_eq!(e.size, SIZE);
}

#[test]
fn a_storage_file_over_4_gib_is_read_at_offsets_past_4_gib() {
    let (_dir, root) = storage_with_big_file("large-read");
    let storage = StorageDir::open(&root).expect("open storage");
    let path = RelPath::new("big.img").unwrap();

    let st = storage.stat(&path).expect("stat").expect("present");
    assert_eq!((st.kind, st.size), (StatKind::File, SIZE));

    let (file, st) = storage.open_read(&path).expect("open_read");
    assert_eq!(st.size, SIZE);
    assert_eq!(file.metadata().unwrap().len(), SIZE);

    let mut tail = vec![0u8; TAIL.len()];
    file.read_exact_at(&mut tail, SIZE - TAIL.len() as u64)
        .expect("read the tail");
    assert_eq!(tail, TAIL);

    // A hole just past 4 GiB (where a 32-bit offset would wrap to 0) reads as zeros.
    let mut hole = [0xFFu8; 64];
    file.read_exact_at(&mut hole, 4 * GIB - 32)
        .expect("read across 4 GiB");
    assert_eq!(hole, [0u8; 64]);

    // Reading at the end gives nothing, not the start of the file.
    let mut past = [0u8; 8];
    assert_eq!(file.read_at(&mut past, SIZE).expect("read at EOF"), 0);
}

#[test]
fn a_delta_signature_of_a_5_gib_file_addresses_every_block() {
    let block_size = delta::block_size_for(SIZE);
    let blocks = SIZE.div_ceil(u64::from(block_size));
    assert!(
        blocks <= MAX_BLOCKS as u64,
        "{blocks} blocks of {block_size}"
    );
    let blocks = blocks as u32;
    let sig = Signature {
        block_size,
        file_size: SIZE,
        blocks: vec![
            BlockSig {
                weak: 0,
                strong: [0; STRONG_LEN]
            };
            blocks as usize
        ],
    };
    sig.validate().expect("a valid signature");
    assert!(delta::wanted(
        SIZE,
        Some(Version {
            size: SIZE,
            mtime_ns: 0
        })
    ));

    let last = blocks - 1;
    assert_eq!(
        sig.block_offset(last),
        u64::from(last) * u64::from(block_size)
    );
    assert!(sig.block_offset(last) > 4 * GIB);
    assert_eq!(
        sig.block_offset(last) + u64::from(sig.block_len(last)),
        SIZE
    );
    assert_eq!(sig.block_len(last), (SIZE % u64::from(block_size)) as u32);
    assert_eq!(sig.block_len(0), block_size);

    // The block that straddles or starts at 4 GiB.
    let at_4g = (4 * GIB / u64::from(block_size)) as u32;
    assert_eq!(sig.block_offset(at_4g), 4 * GIB);
    assert_eq!(sig.block_len(at_4g), block_size);

    // Copies: the whole file (more than u32::MAX bytes), runs across 4 GiB, the short tail.
    assert_eq!(sig.check_copy(0, blocks), Ok(SIZE));
    assert_eq!(sig.check_copy(at_4g - 1, 2), Ok(2 * u64::from(block_size)));
    assert_eq!(sig.check_copy(last, 1), Ok(SIZE % u64::from(block_size)));
    assert_eq!(sig.check_copy(at_4g, blocks - at_4g), Ok(SIZE - 4 * GIB));
    // Out of range, including counts that would wrap in 32 bits.
    assert!(sig.check_copy(last, 2).is_err());
    assert!(sig.check_copy(blocks, 1).is_err());
    assert!(sig.check_copy(1, u32::MAX).is_err());
    assert!(sig.check_copy(u32::MAX, u32::MAX).is_err());
    assert!(sig.check_copy(0, 0).is_err());

    // A signature whose block count does not match a size past 4 GiB is refused.
    let mut short = sig.clone();
    short.file_size = SIZE - 4 * GIB;
    assert!(short.validate().is_err());
}

/// Encodes `msg` as a frame, splits and decodes it again.
fn round_trip(msg: &Message) -> Message {
    let mut buf = Vec::new();
    proto::encode_frame(msg, &mut buf);
    assert_eq!(buf.len(), proto::frame_len(msg));
    let (payload, used) = proto::split_frame(&buf)
        .expect("a valid frame")
        .expect("a complete frame");
    assert_eq!(used, buf.len());
    proto::decode(&buf[payload]).expect("decode")
}

#[test]
fn file_sizes_over_4_gib_cross_the_wire_unchanged() {
    let meta = FileMeta::file(
        RelPath::new("video/big.img").unwrap(),
        SIZE,
        1_700_000_000_123_456_789,
        0o644,
    );
    let start = Message::Peer(PeerMsg::Transfer(TransferMsg::FileStart {
        sid: u64::MAX - 1,
        xid: u32::MAX,
        meta: meta.clone(),
    }));
    assert_eq!(round_trip(&start), start);
    let Message::Peer(PeerMsg::Transfer(TransferMsg::FileStart { meta: got, .. })) =
        round_trip(&start)
    else {
        panic!("not a FileStart");
    };
    assert_eq!(got.size, SIZE);
    assert_eq!(proto::meta_len(&meta), proto::meta_len(&got));

    let node = NodeId::new("node-b").unwrap();
    let entry = Entry {
        meta: meta.clone(),
        deleted: false,
        hash: Some([3; 32]),
        vv: Vv::from_pairs(vec![(node.clone(), u64::MAX)]).unwrap(),
        by: node.clone(),
        link: None,
    };
    let others = [
        Message::Peer(PeerMsg::Session(SessionMsg::IndexChunk {
            sid: 7,
            records: vec![Record::Entry(entry.clone())],
        })),
        Message::Peer(PeerMsg::Session(SessionMsg::PlanChunk {
            sid: 7,
            items: vec![
                PlanItem::Send {
                    meta: meta.clone(),
                    to: vec![SendTo {
                        node: node.clone(),
                        expect: Some(Version {
                            size: SIZE - 1,
                            mtime_ns: 1,
                        }),
                    }],
                },
                PlanItem::Receive {
                    entry: entry.clone(),
                    from: node,
                    expect: Some(Version {
                        size: u64::MAX,
                        mtime_ns: i64::MIN,
                    }),
                },
            ],
        })),
        Message::Peer(PeerMsg::Transfer(TransferMsg::Signature {
            sid: 7,
            path: meta.path.clone(),
            sig: Signature {
                block_size: delta::block_size_for(SIZE),
                file_size: SIZE,
                blocks: vec![
                    BlockSig {
                        weak: 1,
                        strong: [2; STRONG_LEN]
                    };
                    SIZE.div_ceil(u64::from(delta::block_size_for(SIZE))) as usize
                ],
            },
        })),
        Message::Peer(PeerMsg::Transfer(TransferMsg::FileCopy {
            xid: 1,
            first: u32::MAX - 1,
            count: u32::MAX,
        })),
    ];
    for msg in &others {
        assert_eq!(&round_trip(msg), msg, "{}", msg.name());
    }
}

/// Free bytes in the file system holding `p`.
fn free_bytes(p: &Path) -> u64 {
    let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: statvfs writes into the zeroed struct we pass; `c` is NUL-terminated.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    assert_eq!(unsafe { libc::statvfs(c.as_ptr(), &mut st) }, 0, "statvfs");
    st.f_bavail as u64 * st.f_frsize as u64
}

/// Two real nodes synchronize a 4.5 GiB sparse file: first whole (B has none), then as a
/// delta after A changed a few bytes past 4 GiB. Only with `IC_HEAVY=1`.
#[test]
fn a_4_5_gib_file_syncs_whole_and_then_as_a_delta_between_two_nodes() {
    if std::env::var_os("IC_HEAVY").is_none_or(|v| v != "1") {
        eprintln!("skipped: set IC_HEAVY=1 to sync a 4.5 GiB file between two nodes");
        return;
    }
    const BIG: u64 = 4 * GIB + GIB / 2;
    // Declared first, so it is dropped (removed) last, after the daemon has stopped.
    let dir = TestDir::new("large-sync");
    // B ends up with a real (not sparse) copy, and with a second one while the delta is
    // assembled next to it.
    let need = 2 * BIG + GIB;
    let free = free_bytes(dir.path());
    assert!(
        free >= need,
        "needs {need} bytes free in {} (has {free}); set TMPDIR elsewhere",
        dir.path().display()
    );
    let limit = Duration::from_secs(3600);
    let (a, b) = pair_configs(&dir, "large-sync");
    let src = dir.join("a/big.img");
    let dst = dir.join("b/big.img");
    sparse(&src, BIG);
    set_mtime(&src, 1_600_000_000);
    let (ca, cb) = (a.write(dir.path()), b.write(dir.path()));

    for round in ["whole", "delta"] {
        if round == "delta" {
            // A few new bytes past 4 GiB, and a newer mtime: B's copy is the delta base.
            let f = File::options().write(true).open(&src).unwrap();
            f.write_all_at(b"changed past four GiB", 4 * GIB + 12_345)
                .unwrap();
            drop(f);
            set_mtime(&src, 1_700_000_000);
        }
        let t = Instant::now();
        let daemon = Daemon::start(&cb);
        let out = oneshot_within(&ca, limit);
        let (code, log) = daemon.stop();
        assert_eq!(out.status.code(), Some(0), "{}\nB:\n{log}", show(&out));
        assert_eq!(code, Some(0), "B's exit:\n{log}");
        eprintln!(
            "{round}: {:.1} s; {}",
            t.elapsed().as_secs_f64(),
            String::from_utf8_lossy(&out.stdout).trim()
        );
        assert_eq!(std::fs::metadata(&dst).unwrap().len(), BIG);
        assert_eq!(file_digest(&dst), file_digest(&src), "{round}: B differs");
        let mut tail = vec![0u8; TAIL.len()];
        File::open(&dst)
            .unwrap()
            .read_exact_at(&mut tail, BIG - TAIL.len() as u64)
            .unwrap();
        assert_eq!(tail, TAIL);
    }
    drop(dir);
}
