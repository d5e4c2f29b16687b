//! Structured input: an `Arbitrary` message, made valid, then `decode(encode(m)) == m`.
//!
//! The only change the codec may make is the documented one: an error text over
//! `MAX_ERROR_TEXT` bytes is cut on a char boundary. (A handshake's zone over 255 bytes is a
//! caller's bug, refused by `encode`; the input cuts it first.)

#![no_main]

use arbitrary::Arbitrary;
use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use shoal_core::metainfo::{MAX_PIECE_LEN, MAX_PIECES};
use shoal_core::wire::{MAX_ERROR_TEXT, Message, RejectReason, decode, encode};
use shoal_core::{Digest, PeerId};

#[derive(Arbitrary, Debug)]
enum Input {
    KeepAlive,
    Handshake { version: u16, peer_id: [u8; 16], zone: Option<String> },
    Bitfield { blob: [u8; 32], num_pieces: u32, bits: Vec<u8> },
    Have { blob: [u8; 32], piece: u32 },
    Request { blob: [u8; 32], piece: u32 },
    Piece { blob: [u8; 32], piece: u32, data: Vec<u8> },
    Cancel { blob: [u8; 32], piece: u32 },
    Reject { blob: [u8; 32], piece: u32, reason: Reason },
    Error { code: u16, message: String },
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Reason {
    NotHave,
    UnknownBlob,
    Busy,
}

/// The input with its data made valid: owned here, borrowed by [`Valid::message`].
struct Valid {
    input: Input,
}

fuzz_target!(|input: Input| {
    let valid = Valid::new(input);
    let msg = valid.message();
    let mut buf = BytesMut::new();
    encode(&msg, &mut buf);
    let expected = match msg {
        Message::Error { code, message } => Message::Error { code, message: truncate(message) },
        other => other,
    };
    assert_eq!(decode(&buf), Ok(Some((expected, buf.len()))));
});

impl Valid {
    /// Fixes what `encode` would refuse: bitfield shape and spare bits, oversized pieces.
    fn new(mut input: Input) -> Valid {
        match &mut input {
            Input::Bitfield { num_pieces, bits, .. } => {
                *num_pieces = 1 + *num_pieces % MAX_PIECES;
                let n_bytes = (*num_pieces as usize).div_ceil(8);
                bits.resize(n_bytes, 0);
                let spare = n_bytes * 8 - *num_pieces as usize;
                bits[n_bytes - 1] &= 0xff << spare;
            }
            Input::Piece { data, .. } => data.truncate(MAX_PIECE_LEN as usize),
            Input::Handshake { zone: Some(z), .. } => {
                let mut end = z.len().min(usize::from(u8::MAX));
                while !z.is_char_boundary(end) {
                    end -= 1;
                }
                z.truncate(end);
            }
            _ => {}
        }
        Valid { input }
    }

    fn message(&self) -> Message<'_> {
        match self.input {
            Input::KeepAlive => Message::KeepAlive,
            Input::Handshake { version, peer_id, ref zone } => {
                Message::Handshake { version, peer_id: PeerId(peer_id), zone: zone.as_deref() }
            }
            Input::Bitfield { blob, num_pieces, ref bits } => {
                Message::Bitfield { blob: digest(blob), num_pieces, bits }
            }
            Input::Have { blob, piece } => Message::Have { blob: digest(blob), piece },
            Input::Request { blob, piece } => Message::Request { blob: digest(blob), piece },
            Input::Piece { blob, piece, ref data } => Message::Piece { blob: digest(blob), piece, data },
            Input::Cancel { blob, piece } => Message::Cancel { blob: digest(blob), piece },
            Input::Reject { blob, piece, reason } => {
                let reason = match reason {
                    Reason::NotHave => RejectReason::NotHave,
                    Reason::UnknownBlob => RejectReason::UnknownBlob,
                    Reason::Busy => RejectReason::Busy,
                };
                Message::Reject { blob: digest(blob), piece, reason }
            }
            Input::Error { code, ref message } => Message::Error { code, message },
        }
    }
}

/// A digest from raw bytes, through the public parser (the raw constructor is crate-private).
fn digest(bytes: [u8; 32]) -> Digest {
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    Digest::from_hex(&hex).expect("64 lowercase hex characters")
}

/// The longest prefix of `s` of at most `MAX_ERROR_TEXT` bytes that ends on a char boundary.
fn truncate(s: &str) -> &str {
    let mut end = s.len().min(MAX_ERROR_TEXT);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}
