//! Fuzz target: one frame's payload through the message decoder. Any input either fails
//! with an error or decodes to a message that encodes to exactly the length the sender's
//! back-pressure charges for it and decodes again to itself.
#![no_main]

use iron_carrier::proto::{decode, encode_frame, frame_len, FRAME_HEADER};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(msg) = decode(data) else {
        return;
    };
    let mut frame = Vec::new();
    encode_frame(&msg, &mut frame);
    assert_eq!(frame.len(), frame_len(&msg), "{}", msg.name());
    let again = decode(&frame[FRAME_HEADER..]).expect("a re-encoded message decodes");
    assert_eq!(again, msg);
});
