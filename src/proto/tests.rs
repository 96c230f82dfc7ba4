//! The codec's tests: round trips of every message, frames built in place, malformed and
//! minimal inputs, random mutations.

use super::codec::tag;
use super::codec::*;
use super::*;
use crate::history::{Entry, Record, Vv};
use crate::model::{FileMeta, NodeId, RelPath, Version};

fn p(s: &str) -> RelPath {
    RelPath::new(s).unwrap()
}

fn n(s: &str) -> NodeId {
    NodeId::new(s).unwrap()
}

fn vv(pairs: &[(&str, u64)]) -> Vv {
    Vv::from_pairs(pairs.iter().map(|(a, c)| (n(a), *c)).collect()).unwrap()
}

/// A live file entry with a hash, a two-node version and no link.
fn file_entry(path: &str) -> Entry {
    Entry {
        meta: FileMeta::file(p(path), 12, -5_000_000_001, 0o644),
        deleted: false,
        hash: Some([7; 32]),
        vv: vv(&[("a", 1), ("b", u64::MAX)]),
        by: n("b"),
        link: None,
    }
}

/// The smallest entry: a one-letter directory, no hash, no version, no link.
fn smallest_entry() -> Entry {
    Entry {
        meta: FileMeta::dir(p("d"), 0),
        deleted: false,
        hash: None,
        vv: Vv::default(),
        by: n("a"),
        link: None,
    }
}

fn samples() -> Vec<Message> {
    let mut gone = file_entry("old");
    gone.deleted = true;
    gone.link = Some(p("a/ü b.txt"));
    let mut moved = file_entry("a/ü b.txt");
    moved.link = Some(p("old"));
    vec![
        Message::from(LinkMsg::Hello(Hello {
            version: PROTOCOL_VERSION,
            node_id: n("pi"),
            group: Some("family".into()),
            listen_port: 25230,
            clock_ms: 1_796_601_600_123,
            storages: vec!["docs".into(), "my photos".into()],
        })),
        Message::from(LinkMsg::Hello(Hello {
            version: PROTOCOL_VERSION,
            node_id: n("b"),
            group: None,
            listen_port: 0,
            clock_ms: -1,
            storages: vec![],
        })),
        Message::from(LinkMsg::Refuse {
            reason: "wrong group".into(),
        }),
        Message::from(LinkMsg::Ping),
        Message::from(LinkMsg::Pong),
        Message::from(ElectionMsg::Claim {
            ticket: 9,
            storage: "docs".into(),
        }),
        Message::from(ElectionMsg::Grant { ticket: 9 }),
        Message::from(ElectionMsg::Deny { ticket: 9 }),
        Message::from(ElectionMsg::Release { ticket: 9 }),
        Message::from(SessionMsg::Start {
            sid: u64::MAX,
            storage: "docs".into(),
            members: vec![n("b"), n("c")],
        }),
        Message::from(SessionMsg::Abort {
            sid: 7,
            reason: "cannot scan".into(),
        }),
        Message::from(SessionMsg::Alive { sid: 7 }),
        Message::from(SessionMsg::IndexSummary {
            sid: 1,
            index_id: u64::MAX,
            seq: 17,
            count: 3,
            digest: [9; 32],
            peers: vec![n("a"), n("c")],
        }),
        Message::from(SessionMsg::IndexRequest { sid: 1, since: 0 }),
        Message::from(SessionMsg::IndexRequest { sid: 1, since: 12 }),
        Message::from(SessionMsg::IndexChunk {
            sid: 1,
            records: vec![
                Record::Entry(smallest_entry()),
                Record::Entry(moved.clone()),
                Record::Entry(gone.clone()),
                Record::MovePrefix {
                    from: p("photos"),
                    to: p("pics/2026"),
                    by: n("c"),
                    counter: 1_800_000_000,
                },
            ],
        }),
        Message::from(SessionMsg::IndexEnd { sid: 1, seq: 17 }),
        Message::from(SessionMsg::PlanChunk {
            sid: 2,
            items: vec![
                PlanItem::Send {
                    meta: FileMeta::file(p("x"), u64::MAX, i64::MAX, 0o777),
                    to: vec![
                        SendTo {
                            node: n("a"),
                            expect: Some(Version {
                                size: 1,
                                mtime_ns: -1,
                            }),
                        },
                        SendTo {
                            node: n("c"),
                            expect: None,
                        },
                    ],
                },
                PlanItem::Receive {
                    entry: file_entry("y/z"),
                    from: n("a"),
                    expect: Some(Version {
                        size: 5,
                        mtime_ns: -6,
                    }),
                },
                PlanItem::Receive {
                    entry: file_entry("w"),
                    from: n("a"),
                    expect: None,
                },
                PlanItem::MakeDir {
                    entry: smallest_entry(),
                },
                PlanItem::Delete {
                    entry: gone.clone(),
                    expect: Some(Version {
                        size: 12,
                        mtime_ns: -5_000_000_001,
                    }),
                },
                PlanItem::SetVersion {
                    entry: file_entry("same"),
                    expect: None,
                },
                PlanItem::Rename {
                    from: p("old"),
                    expect: Version {
                        size: 12,
                        mtime_ns: 1,
                    },
                    entry: moved.clone(),
                    gone: gone.clone(),
                },
                PlanItem::Rename {
                    from: p("f.txt"),
                    expect: Version {
                        size: 0,
                        mtime_ns: 0,
                    },
                    entry: file_entry("f.sync-conflict-20270115-080000-b.txt"),
                    gone: Entry {
                        meta: FileMeta::file(p("f.txt"), 0, 0, 0o644),
                        deleted: true,
                        link: Some(p("f.sync-conflict-20270115-080000-b.txt")),
                        ..file_entry("f.txt")
                    },
                },
                PlanItem::MoveDir {
                    from: p("photos"),
                    to: p("pics"),
                    by: n("c"),
                    counter: 9,
                },
            ],
        }),
        Message::from(SessionMsg::PlanEnd { sid: 2 }),
        Message::from(SessionMsg::PlanReady { sid: 2 }),
        Message::from(SessionMsg::Go { sid: 2 }),
        Message::from(SessionMsg::PartDone {
            sid: 2,
            stats: PartStats {
                files_sent: 1,
                bytes_sent: 2,
                files_received: 3,
                bytes_received: 4,
                deleted: 6,
                failed: 5,
            },
        }),
        Message::from(SessionMsg::End { sid: 2, ok: true }),
        Message::from(TransferMsg::FileStart {
            sid: 2,
            xid: 3,
            meta: FileMeta::file(p("big.bin"), 5 << 32, 1, 0o644),
        }),
        Message::from(TransferMsg::FileData {
            xid: 3,
            data: vec![1, 2, 3],
        }),
        Message::from(TransferMsg::FileData {
            xid: 3,
            data: vec![0xAB; CHUNK_SIZE],
        }),
        Message::from(TransferMsg::FileEnd {
            xid: 3,
            hash: [1; 32],
        }),
        Message::from(TransferMsg::FileAbort {
            xid: 3,
            reason: "source changed".into(),
        }),
        Message::from(TransferMsg::FileReject {
            xid: 3,
            reason: "ignored here".into(),
        }),
        Message::from(TransferMsg::FileResume {
            xid: 3,
            offset: 7 << 20,
        }),
        Message::from(TransferMsg::FileSkip {
            xid: 3,
            offset: u64::MAX,
        }),
        Message::from(TransferMsg::Signature {
            sid: 2,
            path: p("big.bin"),
            sig: crate::delta::Signature {
                block_size: 1024,
                file_size: 1025,
                blocks: vec![
                    crate::delta::BlockSig {
                        weak: 7,
                        strong: [1; 8],
                    };
                    2
                ],
            },
        }),
        Message::from(TransferMsg::Signature {
            sid: 2,
            path: p("gone"),
            sig: crate::delta::Signature::empty(),
        }),
        Message::from(TransferMsg::FileCopy {
            xid: 3,
            first: 0,
            count: 2,
        }),
    ]
}

#[test]
fn every_message_round_trips_through_a_frame() {
    let mut stream = Vec::new();
    for m in samples() {
        let before = stream.len();
        encode_frame(&m, &mut stream);
        assert_eq!(stream.len() - before, frame_len(&m), "{}", m.name());
    }
    let mut rest = &stream[..];
    let mut decoded = Vec::new();
    while !rest.is_empty() {
        let (range, used) = split_frame(rest).unwrap().expect("complete frame");
        decoded.push(decode(&rest[range]).unwrap());
        rest = &rest[used..];
    }
    assert_eq!(decoded, samples());
}

#[test]
fn a_file_data_frame_built_in_place_is_the_encoded_frame() {
    for len in [0, 1, 4096, CHUNK_SIZE] {
        let data: Vec<u8> = (0..len).map(|i| (i * 7 + 3) as u8).collect();
        let mut in_place = file_data_head(0xA1B2_C3D4, len).to_vec();
        in_place.extend_from_slice(&data);
        let msg = Message::from(TransferMsg::FileData {
            xid: 0xA1B2_C3D4,
            data,
        });
        let mut encoded = Vec::new();
        encode_frame(&msg, &mut encoded);
        assert_eq!(in_place, encoded, "{len} bytes");
        assert_eq!(in_place.len(), frame_len(&msg));
    }
}

#[test]
fn incomplete_frames_wait_for_more_bytes() {
    let mut buf = Vec::new();
    encode_frame(&Message::from(LinkMsg::Ping), &mut buf);
    for cut in 0..buf.len() {
        assert_eq!(split_frame(&buf[..cut]), Ok(None), "cut at {cut}");
    }
    assert!(split_frame(&buf).unwrap().is_some());
}

#[test]
fn oversized_length_is_rejected_from_the_header_alone() {
    let header = ((MAX_FRAME + 1) as u32).to_be_bytes();
    assert_eq!(
        split_frame(&header),
        Err(DecodeError::FrameTooLarge(MAX_FRAME + 1))
    );
    assert_eq!(
        split_frame(&u32::MAX.to_be_bytes()),
        Err(DecodeError::FrameTooLarge(u32::MAX as usize))
    );
    assert_eq!(split_frame(&[0, 0, 0, 0]), Err(DecodeError::EmptyFrame));
}

fn payload(m: &Message) -> Vec<u8> {
    let mut v = Vec::new();
    encode_frame(m, &mut v);
    v.split_off(FRAME_HEADER)
}

/// Raw payload for a FileStart with an arbitrary path string, bypassing RelPath.
fn file_start_with_path(path: &[u8]) -> Vec<u8> {
    let mut v = vec![tag::FILE_START];
    v.extend_from_slice(&1u64.to_be_bytes());
    v.extend_from_slice(&1u32.to_be_bytes());
    v.extend_from_slice(&(path.len() as u16).to_be_bytes());
    v.extend_from_slice(path);
    v.push(0);
    v.extend_from_slice(&5u64.to_be_bytes());
    v.extend_from_slice(&0i64.to_be_bytes());
    v.extend_from_slice(&0o644u32.to_be_bytes());
    v
}

/// A raw Signature payload with `count` blocks (all zero) after the given header.
fn signature(block_size: u32, file_size: u64, count: u32) -> Vec<u8> {
    let mut v = vec![tag::SIGNATURE];
    v.extend_from_slice(&1u64.to_be_bytes());
    v.extend_from_slice(&1u16.to_be_bytes());
    v.push(b'f');
    v.extend_from_slice(&block_size.to_be_bytes());
    v.extend_from_slice(&file_size.to_be_bytes());
    v.extend_from_slice(&count.to_be_bytes());
    let n = (count as usize).min(80_000);
    v.extend(std::iter::repeat_n(0u8, n * 12));
    v
}

#[test]
fn malformed_payloads_are_rejected_with_a_reason() {
    let ok = file_start_with_path(b"fine/name");
    assert!(decode(&ok).is_ok());

    let mut trailing = payload(&Message::from(LinkMsg::Ping));
    trailing.push(0);
    let mut count_bomb = vec![tag::INDEX_CHUNK];
    count_bomb.extend_from_slice(&1u64.to_be_bytes());
    count_bomb.extend_from_slice(&u32::MAX.to_be_bytes());
    let mut bad_hello = payload(&samples()[0]);
    bad_hello[1] = b'X';
    let mut newer = payload(&samples()[0]);
    newer[9..11].copy_from_slice(&(PROTOCOL_VERSION + 1).to_be_bytes());
    let mut bad_bool = payload(&Message::from(SessionMsg::End { sid: 1, ok: true }));
    *bad_bool.last_mut().unwrap() = 7;
    let mut big_chunk = vec![tag::FILE_DATA];
    big_chunk.extend_from_slice(&1u32.to_be_bytes());
    big_chunk.extend_from_slice(&((CHUNK_SIZE + 1) as u32).to_be_bytes());
    big_chunk.extend(std::iter::repeat_n(0u8, CHUNK_SIZE + 1));
    let mut data_len_lie = vec![tag::FILE_DATA];
    data_len_lie.extend_from_slice(&1u32.to_be_bytes());
    data_len_lie.extend_from_slice(&1000u32.to_be_bytes());
    data_len_lie.extend_from_slice(&[0; 10]);
    let mut dir_start = file_start_with_path(b"d");
    let kind_at = dir_start.len() - 21;
    dir_start[kind_at] = 1;

    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("dotdot", file_start_with_path(b"../x"), "invalid path"),
        (
            "inner dotdot",
            file_start_with_path(b"a/../../x"),
            "invalid path",
        ),
        ("absolute", file_start_with_path(b"/etc/x"), "invalid path"),
        ("empty path", file_start_with_path(b""), "invalid path"),
        (
            "double slash",
            file_start_with_path(b"a//b"),
            "invalid path",
        ),
        ("nul", file_start_with_path(b"a\0b"), "invalid path"),
        (
            "internal name",
            file_start_with_path(b".iron-carrier.tmp.1"),
            "invalid path",
        ),
        ("bad utf8", file_start_with_path(&[0xff, 0xfe]), "not UTF-8"),
        ("directory as file", dir_start, "directory"),
        ("unknown tag", vec![0xEE], "unknown message tag"),
        ("empty", vec![], "truncated"),
        ("truncated", ok[..ok.len() - 1].to_vec(), "truncated"),
        ("trailing", trailing, "unexpected bytes"),
        ("count bomb", count_bomb, "too many"),
        ("bad magic", bad_hello, "bad magic"),
        ("newer version", newer, "newer protocol"),
        ("bad bool", bad_bool, "neither 0 nor 1"),
        ("oversized chunk", big_chunk, "too many"),
        (
            "signature block size 0",
            signature(0, 0, 0),
            "block size out of range",
        ),
        (
            "signature block size huge",
            signature(1 << 30, 1 << 30, 1),
            "block size out of range",
        ),
        (
            "signature count lie",
            signature(1024, 4096, 3),
            "does not match",
        ),
        (
            "signature too many blocks",
            signature(1024, 70_000 * 1024, 70_000),
            "too many",
        ),
        (
            "signature count bomb",
            signature(1024, 1 << 40, u32::MAX),
            "too many",
        ),
        ("data length lie", data_len_lie, "truncated"),
    ];
    for (name, bytes, want) in cases {
        match decode(&bytes) {
            Ok(m) => panic!("{name}: decoded {m:?}"),
            Err(e) => assert!(e.to_string().contains(want), "{name}: {e}"),
        }
    }
}

#[test]
fn decoding_random_bytes_never_panics() {
    // A tiny xorshift keeps this deterministic and dependency-free.
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let seeds: Vec<Vec<u8>> = samples().iter().map(payload).collect();
    for i in 0..20_000 {
        let mut buf = seeds[i % seeds.len()].clone();
        // Flip, truncate or extend a seed so most inputs are almost valid.
        match next() % 3 {
            0 if !buf.is_empty() => {
                let at = (next() as usize) % buf.len();
                buf[at] = next() as u8;
            }
            1 => {
                let keep = (next() as usize) % (buf.len() + 1);
                buf.truncate(keep);
            }
            _ => buf.extend((0..next() % 8).map(|_| next() as u8)),
        }
        let _ = decode(&buf);
        let _ = split_frame(&buf);
    }
}

fn one_byte_name(c: &str) -> NodeId {
    n(c)
}

/// The smallest element of every kind that is counted on the wire.
fn smallest_plan_items() -> Vec<PlanItem> {
    let f = FileMeta::file(p("f"), 0, 0, 0);
    let mut file = smallest_entry();
    file.meta = f.clone();
    let mut renamed = smallest_entry();
    renamed.meta = FileMeta::file(p("g"), 0, 0, 0);
    vec![
        PlanItem::MakeDir {
            entry: smallest_entry(),
        },
        PlanItem::Receive {
            entry: file.clone(),
            from: one_byte_name("a"),
            expect: None,
        },
        PlanItem::Send {
            meta: f,
            to: vec![SendTo {
                node: one_byte_name("a"),
                expect: None,
            }],
        },
        PlanItem::Delete {
            entry: Entry {
                deleted: true,
                ..smallest_entry()
            },
            expect: None,
        },
        PlanItem::SetVersion {
            entry: smallest_entry(),
            expect: None,
        },
        PlanItem::Rename {
            from: p("f"),
            expect: Version {
                size: 0,
                mtime_ns: 0,
            },
            entry: renamed,
            gone: Entry {
                deleted: true,
                ..file.clone()
            },
        },
        PlanItem::MoveDir {
            from: p("d"),
            to: p("e"),
            by: one_byte_name("a"),
            counter: 0,
        },
    ]
}

/// The smallest record of each kind.
fn smallest_records() -> Vec<Record> {
    vec![
        Record::Entry(smallest_entry()),
        Record::MovePrefix {
            from: p("d"),
            to: p("e"),
            by: one_byte_name("a"),
            counter: 0,
        },
    ]
}

#[test]
fn minimum_element_sizes_are_the_real_smallest_encodings() {
    let enc = |f: &dyn Fn(&mut Enc)| {
        let mut v = Vec::new();
        f(&mut Enc(&mut v));
        v.len()
    };
    assert_eq!(MIN_NAME, enc(&|e| e.str("a")));
    assert_eq!(MIN_VERSION, enc(&|e| e.version(None)));
    assert_eq!(
        MIN_TARGET,
        enc(&|e| {
            e.str("a");
            e.version(None)
        })
    );
    assert_eq!(MIN_META, enc(&|e| e.meta(&FileMeta::dir(p("d"), 0))));
    assert_eq!(MIN_META, enc(&|e| e.meta(&FileMeta::file(p("f"), 0, 0, 0))));
    assert_eq!(MIN_ENTRY, enc(&|e| e.entry(&smallest_entry())));
    assert_eq!(
        MIN_VV_PAIR,
        enc(&|e| e.vv(&vv(&[("a", 1)]))) - enc(&|e| e.vv(&Vv::default()))
    );
    let smallest_record = smallest_records()
        .iter()
        .map(|r| enc(&|e| e.record(r)))
        .min();
    assert_eq!(Some(MIN_RECORD), smallest_record);
    for r in smallest_records() {
        assert_eq!(record_len(&r), enc(&|e| e.record(&r)), "{r:?}");
    }
    let big = file_entry("some/longer path");
    assert_eq!(entry_len(&big), enc(&|e| e.entry(&big)));
    let smallest_item = smallest_plan_items()
        .iter()
        .map(|i| enc(&|e| e.plan_item(i)))
        .min();
    assert_eq!(Some(MIN_PLAN_ITEM), smallest_item);
    for item in smallest_plan_items() {
        assert_eq!(
            plan_item_len(&item),
            enc(&|e| e.plan_item(&item)),
            "{item:?}"
        );
    }
    let block = crate::delta::BlockSig {
        weak: 0,
        strong: [0; crate::delta::STRONG_LEN],
    };
    assert_eq!(
        MIN_BLOCK,
        enc(&|e| {
            e.u32(block.weak);
            e.0.extend_from_slice(&block.strong)
        })
    );
}

/// Regression: a storage holding only empty one-letter directories (`d`, `e`, `e/f`)
/// never synchronized: the receiver refused the plan with "too many plan items: 3"
/// because the decoder assumed every item was at least as large as a file entry.
#[test]
fn a_plan_of_one_letter_directories_decodes() {
    let items: Vec<PlanItem> = ["d", "e", "e/f"]
        .iter()
        .map(|d| {
            let mut entry = smallest_entry();
            entry.meta = FileMeta::dir(p(d), 0o755);
            PlanItem::MakeDir { entry }
        })
        .collect();
    let msg = Message::from(SessionMsg::PlanChunk { sid: 1, items });
    assert_eq!(decode(&payload(&msg)), Ok(msg));
}

/// Every counted list, filled with its smallest elements, decodes; one element more
/// than the bytes hold is refused before anything is allocated.
#[test]
fn every_counted_list_of_smallest_elements_decodes() {
    let names = |k: usize| -> Vec<NodeId> {
        (0..k)
            .map(|i| one_byte_name(&((b'a' + i as u8) as char).to_string()))
            .collect()
    };
    let mut cases: Vec<Message> = Vec::new();
    for k in [1, 3, 20] {
        cases.push(Message::from(LinkMsg::Hello(Hello {
            version: PROTOCOL_VERSION,
            node_id: one_byte_name("x"),
            group: None,
            listen_port: 0,
            clock_ms: 0,
            storages: names(k).iter().map(|n| n.as_str().to_owned()).collect(),
        })));
        cases.push(Message::from(SessionMsg::Start {
            sid: 1,
            storage: "s".into(),
            members: names(k),
        }));
        cases.push(Message::from(SessionMsg::IndexSummary {
            sid: 1,
            index_id: 0,
            seq: 0,
            count: 0,
            digest: [0; 32],
            peers: names(k),
        }));
        for r in smallest_records() {
            cases.push(Message::from(SessionMsg::IndexChunk {
                sid: 1,
                records: vec![r; k],
            }));
        }
        for item in smallest_plan_items() {
            cases.push(Message::from(SessionMsg::PlanChunk {
                sid: 1,
                items: vec![item; k],
            }));
        }
        cases.push(Message::from(SessionMsg::PlanChunk {
            sid: 1,
            items: vec![PlanItem::Send {
                meta: FileMeta::file(p("f"), 0, 0, 0),
                to: names(k)
                    .into_iter()
                    .map(|node| SendTo { node, expect: None })
                    .collect(),
            }],
        }));
        let size = 1024u64 * k as u64;
        cases.push(Message::from(TransferMsg::Signature {
            sid: 1,
            path: p("f"),
            sig: crate::delta::Signature {
                block_size: 1024,
                file_size: size,
                blocks: vec![
                    crate::delta::BlockSig {
                        weak: 0,
                        strong: [0; crate::delta::STRONG_LEN],
                    };
                    k
                ],
            },
        }));
    }
    for msg in cases {
        let bytes = payload(&msg);
        assert_eq!(decode(&bytes).as_ref(), Ok(&msg), "{}", msg.name());
    }
}

/// The count of a list of smallest elements raised by one: refused as too many or
/// truncated, never decoded and never a panic.
#[test]
fn a_count_one_above_what_the_bytes_hold_is_refused() {
    let mut bytes = payload(&Message::from(SessionMsg::PlanChunk {
        sid: 1,
        items: vec![
            PlanItem::MoveDir {
                from: p("d"),
                to: p("e"),
                by: one_byte_name("a"),
                counter: 0,
            };
            3
        ],
    }));
    // tag, sid, then the count.
    bytes[9..13].copy_from_slice(&4u32.to_be_bytes());
    let err = decode(&bytes).unwrap_err().to_string();
    assert!(err.contains("too many plan items: 4"), "{err}");
}

#[test]
fn meta_len_matches_encoding() {
    let m = FileMeta::file(p("some/path.txt"), 1, 2, 3);
    let mut v = Vec::new();
    Enc(&mut v).meta(&m);
    assert_eq!(meta_len(&m), v.len());
}

/// Writes every sample as a seed for the fuzz targets (`make fuzz-seeds`, into the directory
/// `IC_FUZZ_SEEDS` names): the whole stream of frames for `frame`, each payload for
/// `message` (the handshake's seeds come from `net/link/tests.rs`). Ignored: it writes
/// files, and only when asked.
#[test]
#[ignore]
fn write_fuzz_seeds() {
    let Some(dir) = std::env::var_os("IC_FUZZ_SEEDS") else {
        return;
    };
    let dir = std::path::PathBuf::from(dir);
    let mut stream = Vec::new();
    // A whole chunk of file data teaches a fuzzer nothing a small one does not.
    let small = samples().into_iter().filter(|m| frame_len(m) <= 4096);
    for (i, m) in small.enumerate() {
        let before = stream.len();
        encode_frame(&m, &mut stream);
        let payload = &stream[before + FRAME_HEADER..];
        let path = dir.join("message").join(format!("{i:02}-{}", m.name()));
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, payload).unwrap();
    }
    std::fs::create_dir_all(dir.join("frame")).unwrap();
    std::fs::write(dir.join("frame").join("all-samples"), &stream).unwrap();
}

#[test]
fn decoding_an_owned_payload_agrees_with_decoding_a_borrowed_one() {
    let mut payloads: Vec<Vec<u8>> = samples()
        .iter()
        .map(|m| {
            let mut f = Vec::new();
            encode_frame(m, &mut f);
            f.split_off(FRAME_HEADER)
        })
        .collect();
    // File data whose length field lies, in both directions, too long a chunk, a bare head.
    let mut chunk = Vec::new();
    encode_frame(
        &TransferMsg::FileData {
            xid: 7,
            data: vec![1; 100],
        }
        .into(),
        &mut chunk,
    );
    let chunk = chunk.split_off(FRAME_HEADER);
    for (at, value) in [(8, 99u8), (8, 101), (5, 0xff)] {
        let mut bad = chunk.clone();
        bad[at] = value;
        payloads.push(bad);
    }
    payloads.push(chunk[..9].to_vec());
    payloads.push(chunk[..5].to_vec());
    let mut big = vec![tag::FILE_DATA, 0, 0, 0, 1];
    big.extend_from_slice(&((CHUNK_SIZE + 1) as u32).to_be_bytes());
    big.resize(9 + CHUNK_SIZE + 1, 0);
    payloads.push(big);
    for p in payloads {
        assert_eq!(decode_owned(p.clone()), decode(&p), "{p:?}");
    }
}
