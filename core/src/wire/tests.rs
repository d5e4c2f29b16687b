//! Table tests for the wire codec: one [`check`] helper and one line per case.
//!
//! Valid frames are mostly built by hand from the format table in the module docs (not by the
//! encoder), so a case tests `decode` against the spec and, through the canonical re-encoding
//! in [`check`], `encode` against it too. `captured_frames` pins the exact bytes with files
//! under `core/tests/data/`, so a change of the wire format fails a test instead of a rolling
//! upgrade. The property tests at the bottom cover what the tables cannot enumerate.

use proptest::prelude::*;
use proptest::sample::Index;

use super::*;

/// Checks everything a single frame must satisfy:
/// - `decode(frame)` is `expect`, and a decoded message used exactly `frame.len()` bytes;
/// - every strict prefix of `frame` is `Ok(None)` ("need more bytes", never an error);
/// - bytes after the frame (the next frame) change nothing;
/// - a decoded message re-encodes to exactly `frame` (the encoding is canonical), also
///   through the zero-copy `encode_piece_header` path for pieces.
///
/// A frame that must be rejected from its length prefix alone is passed as just the prefix.
#[track_caller]
fn check(frame: &[u8], expect: Result<Message<'_>, DecodeError>) {
    let expect = expect.map(|msg| Some((msg, frame.len())));
    assert_eq!(decode(frame), expect, "whole frame");
    for cut in 0..frame.len() {
        assert_eq!(decode(&frame[..cut]), Ok(None), "prefix of {cut} bytes");
    }
    let mut longer = frame.to_vec();
    longer.extend_from_slice(&[0xff; 5]);
    assert_eq!(decode(&longer), expect, "frame followed by more bytes");
    if let Ok(Some((msg, _))) = &expect {
        assert!(enc(msg) == frame, "re-encoding {msg:?} differs from the frame");
        if let Message::Piece { blob, piece, data } = *msg {
            let mut buf = BytesMut::new();
            encode_piece_header(blob, piece, data.len(), &mut buf);
            buf.extend_from_slice(data);
            assert!(buf[..] == *frame, "piece header path differs from the frame");
        }
    }
}

/// Encodes one message.
fn enc(msg: &Message<'_>) -> Vec<u8> {
    let mut buf = BytesMut::new();
    encode(msg, &mut buf);
    buf.to_vec()
}

/// Builds a frame by hand: the length prefix, `kind`, then the body parts in order.
fn frame(kind: u8, parts: &[&[u8]]) -> Vec<u8> {
    let body: Vec<u8> = parts.concat();
    let len = u32::try_from(1 + body.len()).unwrap();
    let mut out = len.to_be_bytes().to_vec();
    out.push(kind);
    out.extend_from_slice(&body);
    out
}

/// Just a length prefix.
fn prefix(len: usize) -> Vec<u8> {
    u32::try_from(len).unwrap().to_be_bytes().to_vec()
}

fn blob() -> Digest {
    Digest::of(b"blob")
}

fn be(n: u32) -> [u8; 4] {
    n.to_be_bytes()
}

fn handshake_body(magic: &[u8; 8], version: u16) -> Vec<u8> {
    [&magic[..], &version.to_be_bytes(), &[7; 16]].concat()
}

// Round trips of every message type.

#[test]
fn keep_alive() {
    check(&[0, 0, 0, 0], Ok(Message::KeepAlive));
}
#[test]
fn handshake() {
    let peer_id = PeerId([7; 16]);
    check(
        &frame(T_HANDSHAKE, &[&handshake_body(&MAGIC, 1)]),
        Ok(Message::Handshake { version: 1, peer_id, zone: None }),
    );
    // The codec does not judge versions; the connection driver does.
    let body = handshake_body(&MAGIC, u16::MAX);
    check(&frame(T_HANDSHAKE, &[&body]), Ok(Message::Handshake { version: u16::MAX, peer_id, zone: None }));
}
#[test]
fn handshake_extensions() {
    let peer_id = PeerId([7; 16]);
    let hs = |ext: &[u8]| frame(T_HANDSHAKE, &[&handshake_body(&MAGIC, 2), ext]);
    let with = |zone| Ok(Message::Handshake { version: 2, peer_id, zone });
    // Canonical: encoding the message gives these bytes back.
    check(&hs(&[EXT_ZONE, 4, b'e', b'u', b'-', b'1']), with(Some("eu-1")));
    // An empty value is passed on; the receiver judges the name.
    check(&hs(&[EXT_ZONE, 0]), with(Some("")));
    let table: &[(&[u8], Result<Message<'_>, DecodeError>)] = &[
        // Unknown tags are skipped, before and after the zone.
        (&[9, 2, 0xff, 0xfe, EXT_ZONE, 1, b'a', 200, 0], with(Some("a"))),
        (&[9, 0], with(None)),
        // Of two zones the last counts.
        (&[EXT_ZONE, 1, b'a', EXT_ZONE, 1, b'b'], with(Some("b"))),
        // Truncated: a lone tag, a length past the end.
        (&[EXT_ZONE], Err(DecodeError::BadExtension)),
        (&[EXT_ZONE, 5, b'a'], Err(DecodeError::BadExtension)),
        (&[9, 1], Err(DecodeError::BadExtension)),
        // A zone that is not UTF-8.
        (&[EXT_ZONE, 2, 0xc3, 0x28], Err(DecodeError::BadText)),
    ];
    for (ext, want) in table {
        let frame = hs(ext);
        let want = want.clone().map(|m| Some((m, frame.len())));
        assert_eq!(decode(&frame), want, "extensions {ext:?}");
        for cut in 0..frame.len() {
            assert_eq!(decode(&frame[..cut]), Ok(None), "prefix of {cut} bytes of {ext:?}");
        }
    }
}
#[test]
fn bitfield_one_piece() {
    let b = blob();
    check(
        &frame(T_BITFIELD, &[b.as_bytes(), &be(1), &[0x80]]),
        Ok(Message::Bitfield { blob: b, num_pieces: 1, bits: &[0x80] }),
    );
    check(
        &frame(T_BITFIELD, &[b.as_bytes(), &be(1), &[0x00]]),
        Ok(Message::Bitfield { blob: b, num_pieces: 1, bits: &[0x00] }),
    );
}
#[test]
fn bitfield_eight_pieces() {
    let b = blob();
    check(
        &frame(T_BITFIELD, &[b.as_bytes(), &be(8), &[0xff]]),
        Ok(Message::Bitfield { blob: b, num_pieces: 8, bits: &[0xff] }),
    );
}
#[test]
fn bitfield_nine_pieces() {
    let b = blob();
    let bits = [0xff, 0x80];
    check(
        &frame(T_BITFIELD, &[b.as_bytes(), &be(9), &bits]),
        Ok(Message::Bitfield { blob: b, num_pieces: 9, bits: &bits }),
    );
}
#[test]
fn bitfield_max_pieces() {
    let b = blob();
    for bits in [pack_bits(MAX_PIECES, |i| i % 3 == 0), pack_bits(MAX_PIECES, |_| true)] {
        assert_eq!(bits.len(), MAX_BITFIELD_BYTES);
        let msg = Message::Bitfield { blob: b, num_pieces: MAX_PIECES, bits: &bits };
        check(&frame(T_BITFIELD, &[b.as_bytes(), &be(MAX_PIECES), &bits]), Ok(msg));
    }
}
#[test]
fn have_request_cancel() {
    let b = blob();
    check(&frame(T_HAVE, &[b.as_bytes(), &be(3)]), Ok(Message::Have { blob: b, piece: 3 }));
    check(&frame(T_REQUEST, &[b.as_bytes(), &be(u32::MAX)]), Ok(Message::Request { blob: b, piece: u32::MAX }));
    check(&frame(T_CANCEL, &[b.as_bytes(), &be(0)]), Ok(Message::Cancel { blob: b, piece: 0 }));
}
#[test]
fn piece_empty() {
    let b = blob();
    check(&frame(T_PIECE, &[b.as_bytes(), &be(1)]), Ok(Message::Piece { blob: b, piece: 1, data: &[] }));
}
#[test]
fn piece_small() {
    let b = blob();
    check(&frame(T_PIECE, &[b.as_bytes(), &be(1), b"abc"]), Ok(Message::Piece { blob: b, piece: 1, data: b"abc" }));
}
#[test]
fn piece_max() {
    let b = blob();
    let data: Vec<u8> = (0..MAX_PIECE_LEN).map(|i| i.to_le_bytes()[0] ^ i.to_le_bytes()[1]).collect();
    let f = frame(T_PIECE, &[b.as_bytes(), &be(9), &data]);
    assert_eq!(f.len(), LEN_PREFIX + MAX_FRAME_LEN, "a maximal piece is a maximal frame");
    check(&f, Ok(Message::Piece { blob: b, piece: 9, data: &data }));
}
#[test]
fn reject_every_reason() {
    let b = blob();
    let cases = [
        (0, RejectReason::NotHave),
        (1, RejectReason::UnknownBlob),
        (2, RejectReason::Busy),
        (3, RejectReason::Seeding),
    ];
    for (byte, reason) in cases {
        check(&frame(T_REJECT, &[b.as_bytes(), &be(5), &[byte]]), Ok(Message::Reject { blob: b, piece: 5, reason }));
    }
}
#[test]
fn error_texts() {
    check(&frame(T_ERROR, &[&500u16.to_be_bytes()]), Ok(Message::Error { code: 500, message: "" }));
    check(&frame(T_ERROR, &[&500u16.to_be_bytes(), b"boom"]), Ok(Message::Error { code: 500, message: "boom" }));
    let text = "caf\u{e9} \u{1f980}";
    check(&frame(T_ERROR, &[&0u16.to_be_bytes(), text.as_bytes()]), Ok(Message::Error { code: 0, message: text }));
    let max = "x".repeat(MAX_ERROR_TEXT);
    check(
        &frame(T_ERROR, &[&u16::MAX.to_be_bytes(), max.as_bytes()]),
        Ok(Message::Error { code: u16::MAX, message: &max }),
    );
}
#[test]
fn error_text_over_limit_is_truncated_on_encode() {
    let cases = [
        // (text, bytes kept): a cut at a char boundary, one inside a 2-byte and one inside a
        // 4-byte char.
        ("x".repeat(MAX_ERROR_TEXT + 1), MAX_ERROR_TEXT),
        (format!("a{}", "\u{e9}".repeat(512)), MAX_ERROR_TEXT - 1),
        (format!("a{}", "\u{1f980}".repeat(300)), MAX_ERROR_TEXT - 3),
    ];
    for (text, kept) in &cases {
        let f = enc(&Message::Error { code: 7, message: text });
        check(&f, Ok(Message::Error { code: 7, message: &text[..*kept] }));
    }
}

// Malformed input.

#[test]
fn length_over_limit_is_rejected_from_the_prefix() {
    check(&prefix(MAX_FRAME_LEN + 1), Err(DecodeError::FrameTooLong(MAX_FRAME_LEN + 1)));
    check(&prefix(u32::MAX as usize), Err(DecodeError::FrameTooLong(u32::MAX as usize)));
    assert_eq!(frame_len(&prefix(MAX_FRAME_LEN + 1)), Err(DecodeError::FrameTooLong(MAX_FRAME_LEN + 1)));
    assert_eq!(frame_len(&prefix(MAX_FRAME_LEN)), Ok(Some(MAX_FRAME_LEN)));
}
#[test]
fn piece_data_over_limit_is_impossible() {
    // The largest frame is exactly a header and a maximal piece (see `piece_max`), so one more
    // byte of data is a `FrameTooLong`, seen before any of the data arrives.
    assert_eq!(MAX_FRAME_LEN - PIECE_HEADER_LEN, MAX_PIECE_LEN as usize);
    let len = PIECE_HEADER_LEN + MAX_PIECE_LEN as usize + 1;
    check(&prefix(len), Err(DecodeError::FrameTooLong(len)));
    // No other message can be longer than a maximal piece either.
    const { assert!(1 + 36 + MAX_BITFIELD_BYTES <= MAX_FRAME_LEN) };
    const { assert!(1 + 2 + MAX_ERROR_TEXT <= MAX_FRAME_LEN) };
}
#[test]
fn unknown_type() {
    check(&frame(8, &[]), Err(DecodeError::UnknownType(8)));
    check(&frame(0xff, &[b"whatever"]), Err(DecodeError::UnknownType(0xff)));
}
#[test]
fn wrong_body_length_of_fixed_size_types() {
    let hs = handshake_body(&MAGIC, 1);
    let bad = |kind, len, expected| Err(DecodeError::BadLength { kind, len, expected });
    check(&frame(T_HANDSHAKE, &[]), bad(T_HANDSHAKE, 0, 26));
    check(&frame(T_HANDSHAKE, &[&hs[..25]]), bad(T_HANDSHAKE, 25, 26));
    check(&frame(T_HANDSHAKE, &[&hs, &[0]]), Err(DecodeError::BadExtension));
    let b = blob();
    for kind in [T_HAVE, T_REQUEST, T_CANCEL] {
        check(&frame(kind, &[]), bad(kind, 0, 36));
        check(&frame(kind, &[b.as_bytes(), &[0; 3]]), bad(kind, 35, 36));
        check(&frame(kind, &[b.as_bytes(), &[0; 5]]), bad(kind, 37, 36));
    }
    check(&frame(T_REJECT, &[b.as_bytes(), &[0; 4]]), bad(T_REJECT, 36, 37));
    check(&frame(T_REJECT, &[b.as_bytes(), &[0; 6]]), bad(T_REJECT, 38, 37));
}
#[test]
fn too_short_variable_size_types() {
    let bad = |kind, len, expected| Err(DecodeError::BadLength { kind, len, expected });
    let b = blob();
    check(&frame(T_BITFIELD, &[b.as_bytes(), &[0; 3]]), bad(T_BITFIELD, 35, 36));
    check(&frame(T_PIECE, &[]), bad(T_PIECE, 0, 36));
    check(&frame(T_PIECE, &[b.as_bytes(), &[0; 3]]), bad(T_PIECE, 35, 36));
    check(&frame(T_ERROR, &[]), bad(T_ERROR, 0, 2));
    check(&frame(T_ERROR, &[&[0]]), bad(T_ERROR, 1, 2));
}
#[test]
fn error_text_over_limit_is_rejected_on_decode() {
    let text = "x".repeat(MAX_ERROR_TEXT + 1);
    let expect = DecodeError::BadLength { kind: T_ERROR, len: 2 + MAX_ERROR_TEXT + 1, expected: 2 + MAX_ERROR_TEXT };
    check(&frame(T_ERROR, &[&[0, 1], text.as_bytes()]), Err(expect));
}
#[test]
fn bad_magic() {
    check(&frame(T_HANDSHAKE, &[&handshake_body(b"SHOALP2Q", 1)]), Err(DecodeError::BadMagic));
    check(&frame(T_HANDSHAKE, &[&handshake_body(b"shoalp2p", 1)]), Err(DecodeError::BadMagic));
    check(&frame(T_HANDSHAKE, &[&[0; 26]]), Err(DecodeError::BadMagic));
}
#[test]
fn bitfield_invalid() {
    let b = blob();
    let bad = |num_pieces, len| Err(DecodeError::BadBitfield { num_pieces, len });
    // Zero pieces.
    check(&frame(T_BITFIELD, &[b.as_bytes(), &be(0)]), bad(0, 0));
    check(&frame(T_BITFIELD, &[b.as_bytes(), &be(0), &[0]]), bad(0, 1));
    // Over the piece limit, with the byte count that count would need.
    let over = MAX_PIECES + 1;
    let bits = vec![0; MAX_BITFIELD_BYTES + 1];
    check(&frame(T_BITFIELD, &[b.as_bytes(), &be(over), &bits]), bad(over, bits.len()));
    check(&frame(T_BITFIELD, &[b.as_bytes(), &be(u32::MAX), &[0]]), bad(u32::MAX, 1));
    // Wrong byte count.
    check(&frame(T_BITFIELD, &[b.as_bytes(), &be(1)]), bad(1, 0));
    check(&frame(T_BITFIELD, &[b.as_bytes(), &be(8), &[0xff, 0]]), bad(8, 2));
    check(&frame(T_BITFIELD, &[b.as_bytes(), &be(9), &[0xff]]), bad(9, 1));
    check(&frame(T_BITFIELD, &[b.as_bytes(), &be(9), &[0xff, 0x80, 0]]), bad(9, 3));
    let short = vec![0; MAX_BITFIELD_BYTES - 1];
    check(&frame(T_BITFIELD, &[b.as_bytes(), &be(MAX_PIECES), &short]), bad(MAX_PIECES, short.len()));
}
#[test]
fn bitfield_spare_bits_must_be_zero() {
    let b = blob();
    let bad = |num_pieces, len| Err(DecodeError::BadBitfield { num_pieces, len });
    check(&frame(T_BITFIELD, &[b.as_bytes(), &be(1), &[0x40]]), bad(1, 1));
    check(&frame(T_BITFIELD, &[b.as_bytes(), &be(1), &[0x81]]), bad(1, 1));
    check(&frame(T_BITFIELD, &[b.as_bytes(), &be(7), &[0x01]]), bad(7, 1));
    check(&frame(T_BITFIELD, &[b.as_bytes(), &be(9), &[0xff, 0x40]]), bad(9, 2));
    check(&frame(T_BITFIELD, &[b.as_bytes(), &be(15), &[0, 0x01]]), bad(15, 2));
}
#[test]
fn unknown_reject_reason() {
    let b = blob();
    check(&frame(T_REJECT, &[b.as_bytes(), &be(0), &[4]]), Err(DecodeError::BadReason(4)));
    check(&frame(T_REJECT, &[b.as_bytes(), &be(0), &[0xff]]), Err(DecodeError::BadReason(0xff)));
}
#[test]
fn error_text_not_utf8() {
    let cases: &[&[u8]] = &[
        &[0xff],
        b"ok\xc3",                 // Cut inside a 2-byte sequence.
        &[0xc0, 0x80],             // Overlong NUL.
        &[0xed, 0xa0, 0x80],       // UTF-16 surrogate.
        &[0xf4, 0x90, 0x80, 0x80], // Above U+10FFFF.
    ];
    for text in cases {
        check(&frame(T_ERROR, &[&[0, 1], text]), Err(DecodeError::BadText));
    }
}

// Invalid messages are the caller's bug: `encode` refuses them rather than write a frame the
// peer will reject.

#[test]
fn encode_refuses_bitfield_with_spare_bits() {
    let refused = |num_pieces, bits: &[u8]| {
        let msg = Message::Bitfield { blob: blob(), num_pieces, bits };
        std::panic::catch_unwind(|| enc(&msg)).is_err()
    };
    assert!(!refused(9, &[0xff, 0x80]));
    assert!(refused(9, &[0xff, 0x40]), "spare bits set");
    assert!(refused(1, &[0x01]), "spare bits set");
    assert!(refused(9, &[0xff]), "wrong byte count");
    assert!(refused(0, &[]), "no pieces");
}

// Streams and pinned bytes.

#[test]
fn several_messages_from_one_buffer() {
    let b = blob();
    let bits = pack_bits(10, |i| i % 2 == 0);
    let msgs = [
        Message::Handshake { version: PROTOCOL_VERSION, peer_id: PeerId([1; 16]), zone: None },
        Message::Handshake { version: PROTOCOL_VERSION, peer_id: PeerId([2; 16]), zone: Some("rack-7.eu-west-1a") },
        Message::Bitfield { blob: b, num_pieces: 10, bits: &bits },
        Message::KeepAlive,
        Message::Request { blob: b, piece: 4 },
        Message::Piece { blob: b, piece: 4, data: b"four" },
        Message::Piece { blob: b, piece: 5, data: b"" },
        Message::Have { blob: b, piece: 4 },
        Message::Cancel { blob: b, piece: 6 },
        Message::Reject { blob: b, piece: 7, reason: RejectReason::NotHave },
        Message::Error { code: 1, message: "bye" },
    ];
    let mut buf = BytesMut::new();
    for m in &msgs {
        encode(m, &mut buf);
    }
    // Half of the next frame is already there: it must wait, not fail.
    let next = enc(&Message::Have { blob: b, piece: 9 });
    buf.extend_from_slice(&next[..next.len() / 2]);

    let mut rest = &buf[..];
    let mut got = Vec::new();
    while let Some((m, used)) = decode(rest).unwrap() {
        got.push(m);
        rest = &rest[used..];
    }
    assert_eq!(got, msgs);
    assert_eq!(rest, &next[..next.len() / 2]);
}

#[test]
fn captured_frames() {
    // Hand-made from the format table; see core/tests/data/README.md. Never regenerate these
    // with the encoder: they exist to catch the encoder changing.
    let b: Digest = "sha256:888696c38e895dd742b8494f449219c12a256a16d0841b93813c841a298df92c".parse().unwrap();
    assert_eq!(b, Digest::of(b"shoal"));
    let peer_id = PeerId(core::array::from_fn(|i| u8::try_from(i).unwrap()));
    let cases: &[(&[u8], Message<'_>)] = &[
        (include_bytes!("../../tests/data/keepalive.bin"), Message::KeepAlive),
        (include_bytes!("../../tests/data/handshake.bin"), Message::Handshake { version: 1, peer_id, zone: None }),
        (
            include_bytes!("../../tests/data/handshake_zone.bin"),
            Message::Handshake { version: 2, peer_id, zone: Some("eu-west-1a") },
        ),
        (
            include_bytes!("../../tests/data/bitfield.bin"),
            Message::Bitfield { blob: b, num_pieces: 10, bits: &pack_bits(10, |i| [0, 2, 5, 7, 9].contains(&i)) },
        ),
        (include_bytes!("../../tests/data/have.bin"), Message::Have { blob: b, piece: 7 }),
        (include_bytes!("../../tests/data/request.bin"), Message::Request { blob: b, piece: 0x0102_0304 }),
        (include_bytes!("../../tests/data/piece.bin"), Message::Piece { blob: b, piece: 2, data: b"hello, shoal" }),
        (include_bytes!("../../tests/data/cancel.bin"), Message::Cancel { blob: b, piece: 1 }),
        (
            include_bytes!("../../tests/data/reject.bin"),
            Message::Reject { blob: b, piece: 3, reason: RejectReason::Busy },
        ),
        (
            include_bytes!("../../tests/data/error.bin"),
            Message::Error { code: 404, message: "blob not found: caf\u{e9}" },
        ),
    ];
    for (bytes, msg) in cases {
        check(bytes, Ok(msg.clone()));
    }
}

#[test]
fn bit_helpers() {
    let bits = pack_bits(10, |i| i == 0 || i == 9);
    assert_eq!(bits, [0x80, 0x40]);
    let set: Vec<u32> = (0..16).filter(|&i| bit(&bits, i)).collect();
    assert_eq!(set, [0, 9]);
    assert!(!bit(&bits, u32::MAX), "out of range reads as unset");
}

// Property tests.

/// A message that owns its data, so a strategy can hold it; [`OwnedMessage::as_message`]
/// borrows it for `encode`. Only valid messages: those `encode` accepts and keeps intact.
#[derive(Clone, Debug)]
enum OwnedMessage {
    KeepAlive,
    Handshake { version: u16, peer_id: PeerId, zone: Option<String> },
    Bitfield { blob: Digest, num_pieces: u32, bits: Vec<u8> },
    Have { blob: Digest, piece: u32 },
    Request { blob: Digest, piece: u32 },
    Piece { blob: Digest, piece: u32, data: Vec<u8> },
    Cancel { blob: Digest, piece: u32 },
    Reject { blob: Digest, piece: u32, reason: RejectReason },
    Error { code: u16, message: String },
}

impl OwnedMessage {
    fn as_message(&self) -> Message<'_> {
        match *self {
            OwnedMessage::KeepAlive => Message::KeepAlive,
            OwnedMessage::Handshake { version, peer_id, ref zone } => {
                Message::Handshake { version, peer_id, zone: zone.as_deref() }
            }
            OwnedMessage::Bitfield { blob, num_pieces, ref bits } => Message::Bitfield { blob, num_pieces, bits },
            OwnedMessage::Have { blob, piece } => Message::Have { blob, piece },
            OwnedMessage::Request { blob, piece } => Message::Request { blob, piece },
            OwnedMessage::Piece { blob, piece, ref data } => Message::Piece { blob, piece, data },
            OwnedMessage::Cancel { blob, piece } => Message::Cancel { blob, piece },
            OwnedMessage::Reject { blob, piece, reason } => Message::Reject { blob, piece, reason },
            OwnedMessage::Error { code, ref message } => Message::Error { code, message },
        }
    }
}

impl Arbitrary for OwnedMessage {
    type Parameters = ();
    type Strategy = BoxedStrategy<OwnedMessage>;

    fn arbitrary_with((): ()) -> Self::Strategy {
        let blob = any::<[u8; 32]>().prop_map(Digest::from_wire);
        let reason = prop_oneof![
            Just(RejectReason::NotHave),
            Just(RejectReason::UnknownBlob),
            Just(RejectReason::Busy),
            Just(RejectReason::Seeding)
        ];
        // Mostly small bitfields, whose spare bits are the interesting part, and some up to the limit.
        let bitfield = (blob.clone(), prop_oneof![3 => 1..=24u32, 1 => 1..=MAX_PIECES]).prop_flat_map(|(blob, n)| {
            let n_bytes = (n as usize).div_ceil(8);
            proptest::collection::vec(any::<u8>(), n_bytes).prop_map(move |mut bits| {
                let spare = n_bytes * 8 - n as usize;
                bits[n_bytes - 1] &= 0xff << spare;
                OwnedMessage::Bitfield { blob, num_pieces: n, bits }
            })
        });
        prop_oneof![
            Just(OwnedMessage::KeepAlive),
            // Zones of up to 63 chars of up to 4 bytes: within the 255 bytes an extension holds.
            (any::<u16>(), any::<[u8; 16]>(), proptest::option::of("(?s).{0,63}"))
                .prop_map(|(version, id, zone)| { OwnedMessage::Handshake { version, peer_id: PeerId(id), zone } }),
            bitfield,
            (blob.clone(), any::<u32>()).prop_map(|(blob, piece)| OwnedMessage::Have { blob, piece }),
            (blob.clone(), any::<u32>()).prop_map(|(blob, piece)| OwnedMessage::Request { blob, piece }),
            (blob.clone(), any::<u32>(), proptest::collection::vec(any::<u8>(), 0..2048))
                .prop_map(|(blob, piece, data)| OwnedMessage::Piece { blob, piece, data }),
            (blob.clone(), any::<u32>()).prop_map(|(blob, piece)| OwnedMessage::Cancel { blob, piece }),
            (blob, any::<u32>(), reason).prop_map(|(blob, piece, reason)| OwnedMessage::Reject { blob, piece, reason }),
            // At most 256 chars of at most 4 bytes: never over `MAX_ERROR_TEXT`, so kept whole.
            (any::<u16>(), "(?s).{0,256}").prop_map(|(code, message)| OwnedMessage::Error { code, message }),
        ]
        .boxed()
    }
}

/// Bytes for the "never panics" property: pure noise, and valid streams with one byte changed
/// and cut anywhere, so that most inputs get past the length prefix and the type.
fn wire_bytes() -> impl Strategy<Value = Vec<u8>> {
    let noise = proptest::collection::vec(any::<u8>(), 0..128);
    let framed_noise = proptest::collection::vec((0u8..10, proptest::collection::vec(any::<u8>(), 0..64)), 1..4)
        .prop_map(|frames| frames.iter().flat_map(|(kind, body)| frame(*kind, &[body])).collect());
    let mutated = (proptest::collection::vec(any::<OwnedMessage>(), 1..4), any::<Index>(), any::<u8>(), any::<Index>())
        .prop_map(|(msgs, at, flip, cut)| {
            let mut buf: Vec<u8> = msgs.iter().flat_map(|m| enc(&m.as_message())).collect();
            let at = at.index(buf.len());
            buf[at] ^= flip;
            buf.truncate(cut.index(buf.len() + 1));
            buf
        });
    prop_oneof![noise, framed_noise, mutated]
}

#[test]
fn corrupt_piece_errors_name_their_piece() {
    let d = blob();
    assert_eq!(parse_corrupt_piece(&corrupt_piece_text(d, 7)), Some((d, 7)));
    assert_eq!(parse_corrupt_piece(&corrupt_piece_text(d, u32::MAX)), Some((d, u32::MAX)));
    let bad = [
        String::new(),
        format!("{d}"),
        format!("{d} "),
        format!("{d} -1"),
        format!("{d} +1"),
        format!("{d} 4294967296"),
        format!("{d} 1 2"),
        format!("{d}  1"),
        format!("sha256:zz {}", 1),
        "sha256:abc 1".to_string(),
    ];
    for text in bad {
        assert_eq!(parse_corrupt_piece(&text), None, "{text:?}");
    }
    // It fits an error frame's text.
    assert!(corrupt_piece_text(d, u32::MAX).len() <= MAX_ERROR_TEXT);
}

proptest! {
    #[test]
    fn prop_round_trip(owned in any::<OwnedMessage>()) {
        let msg = owned.as_message();
        let buf = enc(&msg);
        prop_assert_eq!(decode(&buf), Ok(Some((msg, buf.len()))));
    }

    #[test]
    fn prop_error_text_truncated_to_longest_char_prefix(code in any::<u16>(), text in "(?s).{0,600}") {
        let buf = enc(&Message::Error { code, message: &text });
        let Ok(Some((Message::Error { code: got_code, message }, used))) = decode(&buf) else {
            return Err(TestCaseError::fail("not an error message"));
        };
        prop_assert_eq!(got_code, code);
        prop_assert_eq!(used, buf.len());
        prop_assert!(text.starts_with(message) && message.len() <= MAX_ERROR_TEXT);
        if let Some(next) = text[message.len()..].chars().next() {
            prop_assert!(message.len() + next.len_utf8() > MAX_ERROR_TEXT, "cut too early");
        }
    }

    #[test]
    fn prop_decode_never_panics(buf in wire_bytes()) {
        let mut rest = &buf[..];
        loop {
            match decode(rest) {
                Ok(Some((msg, used))) => {
                    prop_assert!((LEN_PREFIX..=rest.len()).contains(&used));
                    // Whatever decodes is the canonical encoding of what it decoded to.
                    prop_assert_eq!(enc(&msg), &rest[..used]);
                    rest = &rest[used..];
                }
                Ok(None) => {
                    let whole = frame_len(rest).unwrap().is_some_and(|len| rest.len() >= LEN_PREFIX + len);
                    prop_assert!(!whole, "Ok(None) with a whole frame in the buffer");
                    break;
                }
                Err(_) => break,
            }
        }
    }
}
