//! Raw bytes into `decode`, over and over until the buffer is used up or rejected.
//!
//! Asserts more than "does not crash": every decoded message uses a sane number of bytes,
//! re-encodes to exactly those bytes (the encoding is canonical, but for a handshake's
//! extensions) and decodes back equal, and
//! `Ok(None)` only ever means a frame is incomplete.

#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use shoal_core::wire::{LEN_PREFIX, Message, decode, encode, frame_len};

fuzz_target!(|data: &[u8]| {
    let mut rest = data;
    loop {
        match decode(rest) {
            Ok(Some((msg, used))) => {
                assert!((LEN_PREFIX..=rest.len()).contains(&used), "used {used} of {}", rest.len());
                let mut buf = BytesMut::new();
                encode(&msg, &mut buf);
                // A handshake's extensions are the one part with more than one encoding: unknown
                // tags are skipped and of two zones the last counts, so only its meaning must
                // survive (below); every other message is canonical.
                if !matches!(msg, Message::Handshake { .. }) {
                    assert_eq!(&buf[..], &rest[..used], "re-encoding of {msg:?}");
                }
                assert_eq!(decode(&buf), Ok(Some((msg, buf.len()))));
                rest = &rest[used..];
            }
            Ok(None) => {
                let whole = frame_len(rest)
                    .expect("decode would have failed")
                    .is_some_and(|len| rest.len() >= LEN_PREFIX + len);
                assert!(!whole, "Ok(None) with a whole frame in the buffer");
                return;
            }
            Err(_) => return,
        }
    }
});
