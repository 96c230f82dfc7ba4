//! Fuzz target: a byte stream as a peer's socket delivers it, through both framings. Plain:
//! `split_frame` frame after frame, each payload decoded. Sealed: the length check
//! (`Transport::sealed_len`) and `Transport::open` on a link made by a real handshake.
//! Nothing may panic, and no frame may open: the fuzzer cannot know the keys, so an opened
//! frame would be a forgery.
#![no_main]

use std::sync::{Mutex, OnceLock};

use iron_carrier::net::link::{Handshake, LinkConfig, Mode, Transport};
use iron_carrier::proto::{decode, split_frame};
use iron_carrier_fuzz::assert_no_frame_opens;
use libfuzzer_sys::fuzz_target;

/// The responder's end of one real link. A failed open changes nothing, so one link serves
/// every input.
fn transport() -> &'static Mutex<Transport> {
    static LINK: OnceLock<Mutex<Transport>> = OnceLock::new();
    LINK.get_or_init(|| {
        let cfg = LinkConfig::new(Mode::Ephemeral, None, None).expect("config");
        let (initiator, first) = Handshake::initiate(&cfg).expect("initiate");
        let responder = Handshake::respond(&cfg).expect("respond");
        let (second, theirs) = responder.accept(&first).expect("accept");
        initiator.finish(&second).expect("finish");
        Mutex::new(theirs)
    })
}

fuzz_target!(|data: &[u8]| {
    let mut rest = data;
    while let Ok(Some((payload, used))) = split_frame(rest) {
        let _ = decode(&rest[payload]);
        rest = &rest[used..];
    }

    let mut link = transport().lock().expect("lock");
    assert_no_frame_opens(&mut link, data);
});
