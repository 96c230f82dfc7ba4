//! The link's units: preambles, the handshake in every outcome, sealing and opening frames
//! (tampering, replay, reflection, reordering, rekeying), and the passphrase KDF.

use std::time::{Duration, Instant};

use super::*;

fn cfg(mode: Mode, group: Option<&str>, pass: Option<&str>) -> LinkConfig {
    LinkConfig::new(mode, group, pass).unwrap()
}

fn pass(p: &str) -> LinkConfig {
    cfg(Mode::Passphrase, Some("home"), Some(p))
}

/// A full handshake: (initiator's transport, responder's transport).
fn pair(a: &LinkConfig, b: &LinkConfig) -> Result<(Transport, Transport), LinkError> {
    let (hs_a, m1) = Handshake::initiate(a)?;
    let (m2, tb) = Handshake::respond(b)?.accept(&m1)?;
    let ta = hs_a.finish(&m2)?;
    Ok((ta, tb))
}

fn frame(payload: &[u8]) -> Vec<u8> {
    let mut v = (payload.len() as u32).to_be_bytes().to_vec();
    v.extend_from_slice(payload);
    v
}

fn sealed(t: &mut Transport, payload: &[u8]) -> Vec<u8> {
    let mut v = frame(payload);
    t.seal(&mut v, 0, Instant::now()).unwrap();
    v
}

fn open(t: &mut Transport, f: Vec<u8>) -> Result<Vec<u8>, LinkError> {
    let mut plain = Vec::new();
    t.open(&f, &mut plain)?;
    Ok(plain)
}

#[test]
fn both_directions_carry_frames_under_each_mode() {
    for c in [
        cfg(Mode::Ephemeral, None, None),
        pass("correct horse battery"),
    ] {
        let (mut a, mut b) = pair(&c, &c).unwrap();
        for i in 0..100u32 {
            let msg = format!("frame {i}").into_bytes();
            assert_eq!(open(&mut b, sealed(&mut a, &msg)).unwrap(), msg);
            assert_eq!(open(&mut a, sealed(&mut b, &msg)).unwrap(), msg);
        }
    }
}

#[test]
fn sealed_frames_hide_the_payload_and_grow_by_the_tag() {
    let c = pass("correct horse battery");
    let (mut a, _) = pair(&c, &c).unwrap();
    let msg = b"holiday/photo-0001.jpg".to_vec();
    let f = sealed(&mut a, &msg);
    assert_eq!(f.len(), FRAME_HEADER + msg.len() + TAG_LEN);
    assert_eq!(
        u32::from_be_bytes([f[0], f[1], f[2], f[3]]) as usize,
        msg.len() + TAG_LEN
    );
    assert!(!f.windows(6).any(|w| w == b"holida"));
}

#[test]
fn every_flipped_bit_is_refused() {
    let c = cfg(Mode::Ephemeral, None, None);
    let msg = b"some payload".to_vec();
    let len = sealed(&mut pair(&c, &c).unwrap().0, &msg).len();
    // A refused frame advances nothing, so one link serves every flip, and the untouched
    // frame still opens at the end.
    let (mut a, mut b) = pair(&c, &c).unwrap();
    let f = sealed(&mut a, &msg);
    for byte in 0..len {
        for bit in 0..8 {
            let mut bad = f.clone();
            bad[byte] ^= 1 << bit;
            assert!(open(&mut b, bad).is_err(), "byte {byte} bit {bit}");
        }
    }
    assert_eq!(open(&mut b, f).unwrap(), msg);
}

#[test]
fn replayed_reordered_and_reflected_frames_are_refused() {
    let c = pass("correct horse battery");
    let (mut a, mut b) = pair(&c, &c).unwrap();
    let f1 = sealed(&mut a, b"one");
    let f2 = sealed(&mut a, b"two");
    // Reordered: the second before the first.
    assert_eq!(open(&mut b, f2.clone()), Err(LinkError::Forged));
    assert_eq!(open(&mut b, f1.clone()).unwrap(), b"one");
    // Replayed: the first again.
    assert_eq!(open(&mut b, f1.clone()), Err(LinkError::Forged));
    assert_eq!(open(&mut b, f2.clone()).unwrap(), b"two");
    // Reflected: a's own frame back to a (its receiving key is the other direction's).
    let f3 = sealed(&mut a, b"three");
    assert_eq!(open(&mut a, f3), Err(LinkError::Forged));
    // A frame of one connection in another connection with the same passphrase.
    let (_, mut b2) = pair(&c, &c).unwrap();
    assert_eq!(open(&mut b2, f1), Err(LinkError::Forged));
}

#[test]
fn a_failed_open_changes_nothing_and_a_good_frame_still_opens_after_it() {
    // `open` must not advance the nonce on failure (the connection closes anyway, but a
    // caller must never see a half-advanced state).
    let c = cfg(Mode::Ephemeral, None, None);
    let (mut a, mut b) = pair(&c, &c).unwrap();
    let f = sealed(&mut a, b"x");
    let mut bad = f.clone();
    let last = bad.len() - 1;
    bad[last] ^= 1;
    assert!(open(&mut b, bad).is_err());
    assert_eq!(open(&mut b, f).unwrap(), b"x");
}

#[test]
fn both_ends_rekey_at_the_same_frame() {
    let c = cfg(Mode::Ephemeral, None, None);
    let (mut a, mut b) = pair(&c, &c).unwrap();
    for i in 0..REKEY_FRAMES + 10 {
        let msg = i.to_be_bytes();
        assert_eq!(open(&mut b, sealed(&mut a, &msg)).unwrap(), msg);
    }
    // The key was replaced once, on both ends, and frames kept opening across it.
    assert_eq!((a.tx.generation, b.rx.generation), (1, 1));
    // By bytes too: a few large frames.
    let big = vec![7u8; 1024 * 1024];
    for _ in 0..(REKEY_BYTES / big.len() as u64 + 1) {
        assert_eq!(open(&mut b, sealed(&mut a, &big)).unwrap(), big);
    }
    assert_eq!((a.tx.generation, b.rx.generation), (2, 2));
    // A frame sealed with a replaced key does not open under the new one.
    let (mut a, mut b) = pair(&c, &c).unwrap();
    for i in 0..REKEY_FRAMES - 1 {
        open(&mut b, sealed(&mut a, &i.to_be_bytes())).unwrap();
    }
    let flagged = sealed(&mut a, b"last of the first key");
    assert_eq!(a.tx.generation, 1);
    let mut forged = flagged.clone();
    forged[0] &= 0x7f;
    assert_eq!(open(&mut b, forged), Err(LinkError::Forged));
    open(&mut b, flagged).unwrap();
    assert_eq!(b.rx.generation, 1);
}

#[test]
fn an_idle_link_rekeys_after_its_time_and_the_receiver_follows_the_flag() {
    let c = cfg(Mode::Ephemeral, None, None);
    let (mut a, mut b) = pair(&c, &c).unwrap();
    let t0 = Instant::now();
    let seal_at = |t: &mut Transport, now: Instant| {
        let mut v = frame(b"ping");
        t.seal(&mut v, 0, now).unwrap();
        v
    };
    let f = seal_at(&mut a, t0);
    assert_eq!(
        u32::from_be_bytes(f[..4].try_into().unwrap()) & REKEY_FLAG,
        0
    );
    open(&mut b, f).unwrap();
    let f = seal_at(&mut a, t0 + REKEY_AFTER - Duration::from_secs(1));
    open(&mut b, f).unwrap();
    assert_eq!(a.tx.generation, 0, "not yet");
    // The key's time is up: this frame is flagged, and both ends move on after it.
    let f = seal_at(&mut a, t0 + REKEY_AFTER);
    assert_ne!(
        u32::from_be_bytes(f[..4].try_into().unwrap()) & REKEY_FLAG,
        0
    );
    open(&mut b, f).unwrap();
    assert_eq!((a.tx.generation, b.rx.generation), (1, 1));
    // The new key's clock starts at its first frame.
    let later = t0 + 3 * REKEY_AFTER;
    open(&mut b, seal_at(&mut a, later)).unwrap();
    open(&mut b, seal_at(&mut a, later + REKEY_AFTER / 2)).unwrap();
    assert_eq!((a.tx.generation, b.rx.generation), (1, 1));
    // The other direction kept its key all along.
    assert_eq!((a.rx.generation, b.tx.generation), (0, 0));
    open(&mut a, sealed(&mut b, b"back")).unwrap();
}

#[test]
fn a_rekey_flag_set_or_cleared_on_the_way_is_a_forgery() {
    let c = cfg(Mode::Ephemeral, None, None);
    // Set on the way.
    let (mut a, mut b) = pair(&c, &c).unwrap();
    let mut f = sealed(&mut a, b"hello");
    f[0] ^= 0x80;
    assert_eq!(open(&mut b, f), Err(LinkError::Forged));
    // Cleared on the way.
    let (mut a, mut b) = pair(&c, &c).unwrap();
    let t0 = Instant::now();
    let mut f = frame(b"hello");
    a.seal(&mut f, 0, t0).unwrap();
    let mut g = frame(b"late");
    a.seal(&mut g, 0, t0 + REKEY_AFTER).unwrap();
    assert_ne!(g[0] & 0x80, 0, "flagged");
    open(&mut b, f).unwrap();
    g[0] &= 0x7f;
    assert_eq!(open(&mut b, g), Err(LinkError::Forged));
}

#[test]
fn lengths_are_checked_from_the_header_alone() {
    assert_eq!(
        Transport::sealed_len((MAX_SEALED as u32 + 1).to_be_bytes()),
        Err(LinkError::BadLength(MAX_SEALED + 1))
    );
    assert!(Transport::sealed_len((TAG_LEN as u32).to_be_bytes()).is_err());
    assert!(Transport::sealed_len(u32::MAX.to_be_bytes()).is_err());
    assert_eq!(
        Transport::sealed_len((MAX_SEALED as u32).to_be_bytes()),
        Ok(MAX_SEALED)
    );
    let c = cfg(Mode::Ephemeral, None, None);
    let (_, mut b) = pair(&c, &c).unwrap();
    // A header that disagrees with the bytes given, and inputs too short for a header.
    let mut f = vec![0, 0, 0, 40];
    f.extend_from_slice(&[0; 20]);
    let mut plain = Vec::new();
    assert!(b.open(&f, &mut plain).is_err());
    assert!(b.open(&[0, 0], &mut plain).is_err());
}

#[test]
fn another_passphrase_fails_on_both_ends() {
    let (hs_a, m1) = Handshake::initiate(&pass("correct horse battery")).unwrap();
    let b = pass("incorrect horse battery");
    assert_eq!(
        Handshake::respond(&b).unwrap().accept(&m1).err(),
        Some(LinkError::Handshake)
    );
    // The responder then says so; the initiator reports it.
    assert_eq!(
        hs_a.finish(&HANDSHAKE_REFUSED).err(),
        Some(LinkError::RefusedByPeer)
    );
    // A responder that answered anyway (an attacker with another key) fails the initiator.
    let (hs_a, m1) = Handshake::initiate(&pass("correct horse battery")).unwrap();
    let (_, m1_b) = Handshake::initiate(&b).unwrap();
    let (m2_b, _) = Handshake::respond(&b).unwrap().accept(&m1_b).unwrap();
    let _ = m1;
    assert_eq!(hs_a.finish(&m2_b).err(), Some(LinkError::Handshake));
}

#[test]
fn the_prologue_binds_the_group_and_the_mode() {
    // Preambles are checked first; the handshake refuses a mismatch the check missed (a
    // preamble altered on the way).
    let a = cfg(Mode::Ephemeral, Some("home"), None);
    let other_group = cfg(Mode::Ephemeral, Some("work"), None);
    assert!(pair(&a, &other_group).is_err());
    let same = cfg(Mode::Ephemeral, Some("home"), None);
    assert!(pair(&a, &same).is_ok());
}

#[test]
fn a_replayed_first_message_gets_a_fresh_reply_and_keys() {
    let c = pass("correct horse battery");
    let (hs_a, m1) = Handshake::initiate(&c).unwrap();
    let (m2, mut tb) = Handshake::respond(&c).unwrap().accept(&m1).unwrap();
    let mut ta = hs_a.finish(&m2).unwrap();
    let f = sealed(&mut ta, b"hello");
    assert_eq!(open(&mut tb, f.clone()).unwrap(), b"hello");
    // An eavesdropper replays m1 and the first frame to a new responder.
    let (m2_again, mut tb2) = Handshake::respond(&c).unwrap().accept(&m1).unwrap();
    assert_ne!(m2, m2_again, "a fresh ephemeral key");
    assert_eq!(open(&mut tb2, f), Err(LinkError::Forged));
    // Fresh ephemerals on the initiator's side too.
    let (_, m1_again) = Handshake::initiate(&c).unwrap();
    assert_ne!(m1, m1_again);
}

#[test]
fn garbage_handshake_messages_are_refused_without_panicking() {
    let c = pass("correct horse battery");
    for msg in [
        vec![],
        vec![1u8; 47],
        vec![0u8; 48],
        vec![0xffu8; 48],
        vec![5u8; 49],
    ] {
        assert!(Handshake::respond(&c).unwrap().accept(&msg).is_err());
        let (hs, _) = Handshake::initiate(&c).unwrap();
        assert!(hs.finish(&msg).is_err());
    }
}

#[test]
fn preambles_say_what_differs() {
    let ours = pass("correct horse battery");
    assert_eq!(ours.check_preamble(&ours.preamble()), Ok(()));
    let plain = cfg(Mode::Plain, Some("home"), None);
    assert_eq!(
        ours.check_preamble(&plain.preamble()),
        Err(Mismatch::Mode {
            ours: Mode::Passphrase,
            theirs: Mode::Plain
        })
    );
    let work = cfg(
        Mode::Passphrase,
        Some("work"),
        Some("correct horse battery"),
    );
    assert_eq!(ours.check_preamble(&work.preamble()), Err(Mismatch::Group));
    let mut newer = ours.preamble();
    newer[8..12].copy_from_slice(&99u32.to_be_bytes());
    assert_eq!(ours.check_preamble(&newer), Err(Mismatch::Version(99)));
    let mut junk = ours.preamble();
    junk[0] = b'X';
    assert_eq!(ours.check_preamble(&junk), Err(Mismatch::NotIronCarrier));
    let mut mode = ours.preamble();
    mode[12] = 9;
    assert_eq!(ours.check_preamble(&mode), Err(Mismatch::NotIronCarrier));
    assert_eq!(ours.check_preamble(&[0; 5]), Err(Mismatch::NotIronCarrier));
    // The group's name is not in the preamble.
    assert!(!ours.preamble().windows(4).any(|w| w == b"home"));
}

#[test]
fn the_kdf_depends_on_passphrase_and_group_and_nothing_else() {
    let k = |p: &str, g: Option<&str>| stretch_passphrase(p, g).unwrap().0;
    assert_eq!(
        k("correct horse battery", Some("a")),
        k("correct horse battery", Some("a"))
    );
    assert_ne!(
        k("correct horse battery", Some("a")),
        k("correct horse batterz", Some("a"))
    );
    assert_ne!(
        k("correct horse battery", Some("a")),
        k("correct horse battery", Some("b"))
    );
    assert_ne!(
        k("correct horse battery", None),
        k("correct horse battery", Some("a"))
    );
}

/// Writes seeds for the fuzz target `handshake` (`make fuzz-seeds`, into the directory
/// `IC_FUZZ_SEEDS` names): a preamble, a first and a second message, as real nodes of the
/// group "home" send them. Ignored: it writes files, and only when asked.
#[test]
#[ignore]
fn write_fuzz_seeds() {
    let Some(dir) = std::env::var_os("IC_FUZZ_SEEDS") else {
        return;
    };
    let dir = std::path::PathBuf::from(dir).join("handshake");
    std::fs::create_dir_all(&dir).unwrap();
    for (name, c) in [
        ("ephemeral", cfg(Mode::Ephemeral, Some("home"), None)),
        (
            "passphrase",
            cfg(
                Mode::Passphrase,
                Some("home"),
                Some("correct horse battery staple"),
            ),
        ),
    ] {
        let (initiator, first) = Handshake::initiate(&c).unwrap();
        let (second, _) = Handshake::respond(&c).unwrap().accept(&first).unwrap();
        initiator.finish(&second).unwrap();
        let mut seed = c.preamble().to_vec();
        seed.extend_from_slice(&first);
        seed.extend_from_slice(&second);
        std::fs::write(dir.join(name), seed).unwrap();
    }
}
