//! Fuzz target: one frame's payload through the message decoder. Any input either fails
//! with an error or decodes to a message that encodes to exactly the length the sender's
//! back-pressure charges for it and decodes again to itself; the decoder that takes the
//! payload's buffer (encrypted links) gives exactly what the borrowing one gives.
#![no_main]

use iron_carrier::proto::{decode, decode_owned, encode_frame, frame_len, FRAME_HEADER};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let decoded = decode(data);
    assert_eq!(
        decode_owned(data.to_vec()),
        decoded,
        "the two decoders disagree"
    );
    let Ok(msg) = decoded else {
        return;
    };
    let mut frame = Vec::new();
    encode_frame(&msg, &mut frame);
    assert_eq!(frame.len(), frame_len(&msg), "{}", msg.name());
    let again = decode(&frame[FRAME_HEADER..]).expect("a re-encoded message decodes");
    assert_eq!(again, msg);
});
