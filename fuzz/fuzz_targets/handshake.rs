//! Fuzz target: the link before anyone is trusted. The input plays a stranger: its first 32
//! bytes are its preamble, checked against each mode; the next 48 are the first handshake
//! message, given to a responder; the next 48 the second, given to an initiator; the rest
//! are sealed frames for the responder, if it took the first message. The preamble's mode
//! byte picks the responder's mode (a passphrase for 2, else `encryption = true`).
//!
//! Nothing may panic. A responder may take a first message (a replayed one, or any made
//! with the public key of `encryption = true`), but no frame may then open: the keys
//! depend on its fresh ephemeral key. No initiator may finish on a second message it did
//! not answer: that would need its fresh secret.
#![no_main]

use std::sync::OnceLock;

use iron_carrier::net::link::{Handshake, LinkConfig, Mode, HANDSHAKE_LEN, PREAMBLE_LEN};
use iron_carrier_fuzz::assert_no_frame_opens;
use libfuzzer_sys::fuzz_target;

/// Plain, `true` and a passphrase (stretched once: Argon2id per input would cost 25 ms).
fn configs() -> &'static [LinkConfig; 3] {
    static CONFIGS: OnceLock<[LinkConfig; 3]> = OnceLock::new();
    CONFIGS.get_or_init(|| {
        let make = |mode, pass| LinkConfig::new(mode, Some("home"), pass).expect("config");
        [
            make(Mode::Plain, None),
            make(Mode::Ephemeral, None),
            make(Mode::Passphrase, Some("correct horse battery staple")),
        ]
    })
}

fuzz_target!(|data: &[u8]| {
    let configs = configs();
    let (preamble, rest) = data.split_at(data.len().min(PREAMBLE_LEN));
    for cfg in configs {
        let _ = cfg.check_preamble(preamble);
    }
    let cfg = match preamble.get(12) {
        Some(2) => &configs[2],
        _ => &configs[1],
    };
    let (first, rest) = rest.split_at(rest.len().min(HANDSHAKE_LEN));
    let (second, rest) = rest.split_at(rest.len().min(HANDSHAKE_LEN));

    let (initiator, _) = Handshake::initiate(cfg).expect("initiate");
    assert!(
        initiator.finish(second).is_err(),
        "an initiator finished on a second message it never got"
    );

    let responder = Handshake::respond(cfg).expect("respond");
    let Ok((_, mut link)) = responder.accept(first) else {
        return;
    };
    assert_no_frame_opens(&mut link, rest);
});
