//! What the fuzz targets share: feeding a byte stream as sealed frames to a link that the
//! input cannot hold the keys of.

use iron_carrier::net::link::Transport;
use iron_carrier::proto::FRAME_HEADER;

/// Takes `bytes` as sealed frames, one after another, while their headers hold; none may
/// open: the fuzzer does not know the keys, so an opened frame would be a forgery.
pub fn assert_no_frame_opens(link: &mut Transport, mut bytes: &[u8]) {
    let mut plain = Vec::new();
    while let Some(header) = bytes.first_chunk::<FRAME_HEADER>() {
        let Ok(len) = Transport::sealed_len(*header) else {
            return;
        };
        let Some(frame) = bytes.get(..FRAME_HEADER + len) else {
            return;
        };
        assert!(
            link.open(frame, &mut plain).is_err(),
            "a frame opened without the key"
        );
        bytes = &bytes[FRAME_HEADER + len..];
    }
}
