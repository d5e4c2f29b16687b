//! The peer wire protocol, sans-IO: [`decode`] reads one message from the front of a buffer,
//! [`encode`] appends one to a buffer. No sockets here; the swarm engine's connection driver
//! owns those.
//!
//! # Framing
//! Every message is `len: u32 BE` followed by `len` bytes: a one-byte type and its body.
//! `len == 0` is a keep-alive. All integers are big-endian. One TCP connection between two
//! hosts carries any number of blobs: every blob-scoped message names its blob by the 32 raw
//! bytes of its sha256 digest.
//!
//! | type | message   | body                                                          |
//! |------|-----------|---------------------------------------------------------------|
//! | 0    | Handshake | magic `SHOALP2P`, version u16, peer id [16], extensions       |
//! | 1    | Bitfield  | blob [32], piece count u32, bits (MSB first, ceil(count/8))   |
//! | 2    | Have      | blob [32], piece u32                                          |
//! | 3    | Request   | blob [32], piece u32                                          |
//! | 4    | Piece     | blob [32], piece u32, data (rest of the frame)                |
//! | 5    | Cancel    | blob [32], piece u32                                          |
//! | 6    | Reject    | blob [32], piece u32, reason u8 (0 not-have, 1 unknown blob, 2 busy, 3 seeding) |
//! | 7    | Error     | code u16, message (UTF-8, rest of the frame)                  |
//!
//! The first message on a connection, in both directions, is a `Handshake`. Its extensions
//! follow the peer id, each `tag u8, len u8, value [len]`; a decoder skips tags it does not
//! know, so a later build can add one without a new version. Tag 1 is the sender's topology
//! zone (UTF-8; whether it is a valid zone name is the receiver's call). A `Bitfield` for
//! a blob opens that blob on the connection (the sender is in the blob's swarm and has the
//! pieces whose bits are set); `Have` then announces each new piece.
//!
//! Invariant: `decode` never panics and never reads or allocates past [`MAX_FRAME_LEN`],
//! whatever the input; `Ok(None)` means "need more bytes" and nothing else.

use bytes::{BufMut, BytesMut};

use crate::Digest;
use crate::PeerId;
use crate::metainfo::{MAX_PIECE_LEN, MAX_PIECES};

/// Magic at the start of every handshake: garbage on the peer port fails fast.
pub const MAGIC: [u8; 8] = *b"SHOALP2P";
/// Newest protocol version this build speaks. Version 2 added the handshake's extensions; a
/// node sends it only when it has an extension to send, and version 1 otherwise, so a node
/// without a zone talks with builds that know only version 1.
pub const PROTOCOL_VERSION: u16 = 2;
/// Oldest protocol version this build accepts from a peer.
pub const MIN_PROTOCOL_VERSION: u16 = 1;
/// Handshake extension tag: the sender's topology zone.
pub const EXT_ZONE: u8 = 1;
/// Bytes of a handshake before its extensions (magic, version, peer id).
const HANDSHAKE_FIXED: usize = 8 + 2 + 16;
/// Bytes of the length prefix.
pub const LEN_PREFIX: usize = 4;
/// Largest bitfield body: one bit per piece of the largest blob.
pub const MAX_BITFIELD_BYTES: usize = (MAX_PIECES as usize).div_ceil(8);
/// Largest error message text; longer texts are cut on encode.
pub const MAX_ERROR_TEXT: usize = 1024;
/// Bytes before the data in a `Piece` frame (type, blob, index).
pub const PIECE_HEADER_LEN: usize = 1 + 32 + 4;
/// Largest frame after the length prefix: a full piece. Anything longer is an attack or a
/// bug, and is rejected before any allocation.
pub const MAX_FRAME_LEN: usize = PIECE_HEADER_LEN + MAX_PIECE_LEN as usize;

/// Why a peer refused a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RejectReason {
    /// The peer does not have that piece (yet).
    NotHave,
    /// The peer does not know the blob at all.
    UnknownBlob,
    /// The peer is at its upload limit; try elsewhere, or ask again after a back-off.
    Busy,
    /// A seed (an origin) already sent this piece to another peer and sends every piece once
    /// before any twice: get it from the peers that have it, or ask again after the pieces
    /// it has not sent yet.
    Seeding,
}

impl RejectReason {
    fn to_u8(self) -> u8 {
        match self {
            RejectReason::NotHave => 0,
            RejectReason::UnknownBlob => 1,
            RejectReason::Busy => 2,
            RejectReason::Seeding => 3,
        }
    }
    /// Whether the peer refused for now (it may be asked again) rather than for lack of it.
    pub fn is_busy(self) -> bool {
        matches!(self, RejectReason::Busy | RejectReason::Seeding)
    }
    fn from_u8(b: u8) -> Option<RejectReason> {
        Some(match b {
            0 => RejectReason::NotHave,
            1 => RejectReason::UnknownBlob,
            2 => RejectReason::Busy,
            3 => RejectReason::Seeding,
            _ => return None,
        })
    }
}

/// `Error` code: a piece the sender received from us failed its hash. The text names the
/// piece as `<digest> <index>` ([`corrupt_piece_text`], [`parse_corrupt_piece`]); the sender
/// closes the connection after it. A receiver hashes that piece from its disk again and drops
/// the blob if it fails there too, so it does not serve it again. Codes a receiver does not
/// know are only logged.
pub const ERROR_CORRUPT_PIECE: u16 = 1;

/// The text of an [`ERROR_CORRUPT_PIECE`] error naming piece `piece` of `blob`.
pub fn corrupt_piece_text(blob: Digest, piece: u32) -> String {
    format!("{blob} {piece}")
}

/// The piece an [`ERROR_CORRUPT_PIECE`] error names, if its text is well formed.
pub fn parse_corrupt_piece(text: &str) -> Option<(Digest, u32)> {
    let (blob, piece) = text.split_once(' ')?;
    let piece = if piece.bytes().all(|b| b.is_ascii_digit()) { piece.parse().ok()? } else { return None };
    Some((blob.parse().ok()?, piece))
}

/// One protocol message. Bodies borrow from the decoded buffer: no copy of piece data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message<'a> {
    KeepAlive,
    /// `zone`: the sender's topology zone, if it has one (the [`EXT_ZONE`] extension).
    Handshake {
        version: u16,
        peer_id: PeerId,
        zone: Option<&'a str>,
    },
    Bitfield {
        blob: Digest,
        num_pieces: u32,
        bits: &'a [u8],
    },
    Have {
        blob: Digest,
        piece: u32,
    },
    Request {
        blob: Digest,
        piece: u32,
    },
    Piece {
        blob: Digest,
        piece: u32,
        data: &'a [u8],
    },
    Cancel {
        blob: Digest,
        piece: u32,
    },
    Reject {
        blob: Digest,
        piece: u32,
        reason: RejectReason,
    },
    Error {
        code: u16,
        message: &'a str,
    },
}

/// Why bytes are not a valid message. Every variant is the sender's fault: the driver closes
/// the connection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("frame length {0} exceeds the limit of {MAX_FRAME_LEN}")]
    FrameTooLong(usize),
    #[error("unknown message type {0}")]
    UnknownType(u8),
    #[error("message type {kind} has body length {len}, expected {expected}")]
    BadLength { kind: u8, len: usize, expected: usize },
    #[error("handshake magic mismatch")]
    BadMagic,
    #[error("bitfield for {num_pieces} pieces is invalid (limit {MAX_PIECES}, body {len} bytes)")]
    BadBitfield { num_pieces: u32, len: usize },
    #[error("unknown reject reason {0}")]
    BadReason(u8),
    #[error("text is not utf-8")]
    BadText,
    #[error("handshake extension is truncated")]
    BadExtension,
}

const T_HANDSHAKE: u8 = 0;
const T_BITFIELD: u8 = 1;
const T_HAVE: u8 = 2;
const T_REQUEST: u8 = 3;
const T_PIECE: u8 = 4;
const T_CANCEL: u8 = 5;
const T_REJECT: u8 = 6;
const T_ERROR: u8 = 7;

/// Decodes one message from the front of `buf`.
///
/// Returns `Ok(None)` if more bytes are needed, or the message and the number of bytes it
/// used. Never reads past [`MAX_FRAME_LEN`] plus the prefix.
pub fn decode(buf: &[u8]) -> Result<Option<(Message<'_>, usize)>, DecodeError> {
    let Some(len) = frame_len(buf)? else {
        return Ok(None);
    };
    let total = LEN_PREFIX + len;
    if buf.len() < total {
        return Ok(None);
    }
    if len == 0 {
        return Ok(Some((Message::KeepAlive, total)));
    }
    let kind = buf[LEN_PREFIX];
    let body = &buf[LEN_PREFIX + 1..total];
    let msg = decode_body(kind, body)?;
    Ok(Some((msg, total)))
}

/// Reads the length prefix of the frame at the front of `buf`, checking it against the limit.
/// The driver uses this to size its read buffer before the whole frame has arrived.
pub fn frame_len(buf: &[u8]) -> Result<Option<usize>, DecodeError> {
    let Some(prefix) = buf.first_chunk::<LEN_PREFIX>() else {
        return Ok(None);
    };
    let len = u32::from_be_bytes(*prefix) as usize;
    if len > MAX_FRAME_LEN {
        return Err(DecodeError::FrameTooLong(len));
    }
    Ok(Some(len))
}

fn exact(kind: u8, body: &[u8], expected: usize) -> Result<(), DecodeError> {
    if body.len() != expected {
        return Err(DecodeError::BadLength { kind, len: body.len(), expected });
    }
    Ok(())
}

fn at_least(kind: u8, body: &[u8], expected: usize) -> Result<(), DecodeError> {
    if body.len() < expected {
        return Err(DecodeError::BadLength { kind, len: body.len(), expected });
    }
    Ok(())
}

/// Walks a handshake's extensions; returns the zone's, skipping unknown tags. A truncated
/// extension or a zone that is not UTF-8 is an error; of two zones the last counts.
fn handshake_zone(mut ext: &[u8]) -> Result<Option<&str>, DecodeError> {
    let mut zone = None;
    while !ext.is_empty() {
        let [tag, len, rest @ ..] = ext else {
            return Err(DecodeError::BadExtension);
        };
        let Some((value, rest)) = rest.split_at_checked(usize::from(*len)) else {
            return Err(DecodeError::BadExtension);
        };
        if *tag == EXT_ZONE {
            zone = Some(std::str::from_utf8(value).map_err(|_| DecodeError::BadText)?);
        }
        ext = rest;
    }
    Ok(zone)
}

fn blob_at(body: &[u8]) -> Digest {
    let mut d = [0u8; 32];
    d.copy_from_slice(&body[..32]);
    Digest::from_wire(d)
}

fn u32_at(body: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([body[at], body[at + 1], body[at + 2], body[at + 3]])
}

fn decode_body(kind: u8, body: &[u8]) -> Result<Message<'_>, DecodeError> {
    Ok(match kind {
        T_HANDSHAKE => {
            at_least(kind, body, HANDSHAKE_FIXED)?;
            if body[..8] != MAGIC {
                return Err(DecodeError::BadMagic);
            }
            let version = u16::from_be_bytes([body[8], body[9]]);
            let mut id = [0u8; 16];
            id.copy_from_slice(&body[10..26]);
            let zone = handshake_zone(&body[HANDSHAKE_FIXED..])?;
            Message::Handshake { version, peer_id: PeerId(id), zone }
        }
        T_BITFIELD => {
            at_least(kind, body, 36)?;
            let num_pieces = u32_at(body, 32);
            let bits = &body[36..];
            let want = (num_pieces as usize).div_ceil(8);
            if num_pieces == 0 || num_pieces > MAX_PIECES || bits.len() != want {
                return Err(DecodeError::BadBitfield { num_pieces, len: bits.len() });
            }
            // Spare bits past the last piece must be zero so a bitfield has one encoding.
            let spare = want * 8 - num_pieces as usize;
            if spare > 0 && bits[want - 1] & ((1u8 << spare) - 1) != 0 {
                return Err(DecodeError::BadBitfield { num_pieces, len: bits.len() });
            }
            Message::Bitfield { blob: blob_at(body), num_pieces, bits }
        }
        T_HAVE | T_REQUEST | T_CANCEL => {
            exact(kind, body, 36)?;
            let (blob, piece) = (blob_at(body), u32_at(body, 32));
            match kind {
                T_HAVE => Message::Have { blob, piece },
                T_REQUEST => Message::Request { blob, piece },
                _ => Message::Cancel { blob, piece },
            }
        }
        T_PIECE => {
            at_least(kind, body, 36)?;
            Message::Piece { blob: blob_at(body), piece: u32_at(body, 32), data: &body[36..] }
        }
        T_REJECT => {
            exact(kind, body, 37)?;
            let reason = RejectReason::from_u8(body[36]).ok_or(DecodeError::BadReason(body[36]))?;
            Message::Reject { blob: blob_at(body), piece: u32_at(body, 32), reason }
        }
        T_ERROR => {
            at_least(kind, body, 2)?;
            if body.len() - 2 > MAX_ERROR_TEXT {
                return Err(DecodeError::BadLength { kind, len: body.len(), expected: 2 + MAX_ERROR_TEXT });
            }
            let code = u16::from_be_bytes([body[0], body[1]]);
            let message = std::str::from_utf8(&body[2..]).map_err(|_| DecodeError::BadText)?;
            Message::Error { code, message }
        }
        other => return Err(DecodeError::UnknownType(other)),
    })
}

/// Appends `msg` to `dst`.
///
/// # Panics
/// If `msg` breaks a limit the decoder enforces (a piece over [`MAX_PIECE_LEN`], an invalid
/// bitfield): those are bugs in the caller, never network input.
// Fits: every frame length is asserted or bounded below MAX_FRAME_LEN, far under u32::MAX.
#[allow(clippy::cast_possible_truncation)]
pub fn encode(msg: &Message<'_>, dst: &mut BytesMut) {
    match *msg {
        Message::KeepAlive => dst.put_u32(0),
        Message::Handshake { version, peer_id, zone } => {
            let ext = zone.map_or(0, |z| {
                assert!(z.len() <= usize::from(u8::MAX), "zone too long for a handshake");
                2 + z.len()
            });
            dst.put_u32((1 + HANDSHAKE_FIXED + ext) as u32);
            dst.put_u8(T_HANDSHAKE);
            dst.put_slice(&MAGIC);
            dst.put_u16(version);
            dst.put_slice(&peer_id.0);
            if let Some(z) = zone {
                dst.put_u8(EXT_ZONE);
                dst.put_u8(z.len() as u8);
                dst.put_slice(z.as_bytes());
            }
        }
        Message::Bitfield { blob, num_pieces, bits } => {
            assert!(num_pieces > 0 && num_pieces <= MAX_PIECES && bits.len() == (num_pieces as usize).div_ceil(8));
            // The decoder rejects set spare bits, so writing them would only get us disconnected.
            let spare = bits.len() * 8 - num_pieces as usize;
            assert!(bits[bits.len() - 1] & ((1u8 << spare) - 1) == 0, "bitfield has spare bits set");
            dst.put_u32((1 + 36 + bits.len()) as u32);
            dst.put_u8(T_BITFIELD);
            dst.put_slice(blob.as_bytes());
            dst.put_u32(num_pieces);
            dst.put_slice(bits);
        }
        Message::Have { blob, piece } => put_blob_piece(dst, T_HAVE, blob, piece, 0),
        Message::Request { blob, piece } => put_blob_piece(dst, T_REQUEST, blob, piece, 0),
        Message::Cancel { blob, piece } => put_blob_piece(dst, T_CANCEL, blob, piece, 0),
        Message::Reject { blob, piece, reason } => {
            put_blob_piece(dst, T_REJECT, blob, piece, 1);
            dst.put_u8(reason.to_u8());
        }
        Message::Piece { blob, piece, data } => {
            encode_piece_header(blob, piece, data.len(), dst);
            dst.put_slice(data);
        }
        Message::Error { code, message } => {
            let text = truncate_utf8(message, MAX_ERROR_TEXT);
            dst.put_u32((1 + 2 + text.len()) as u32);
            dst.put_u8(T_ERROR);
            dst.put_u16(code);
            dst.put_slice(text.as_bytes());
        }
    }
}

/// Appends only the header of a `Piece` frame carrying `data_len` bytes, so the driver can
/// write the piece data from its own buffer without copying it.
// Fits: `data_len` is asserted to be at most MAX_PIECE_LEN, so the frame is at most MAX_FRAME_LEN.
#[allow(clippy::cast_possible_truncation)]
pub fn encode_piece_header(blob: Digest, piece: u32, data_len: usize, dst: &mut BytesMut) {
    assert!(data_len <= MAX_PIECE_LEN as usize, "piece of {data_len} bytes is over the limit");
    dst.put_u32((PIECE_HEADER_LEN + data_len) as u32);
    dst.put_u8(T_PIECE);
    dst.put_slice(blob.as_bytes());
    dst.put_u32(piece);
}

// Fits: `extra` is 0 or 1, so the frame length is a few dozen bytes.
#[allow(clippy::cast_possible_truncation)]
fn put_blob_piece(dst: &mut BytesMut, kind: u8, blob: Digest, piece: u32, extra: usize) {
    dst.put_u32((1 + 36 + extra) as u32);
    dst.put_u8(kind);
    dst.put_slice(blob.as_bytes());
    dst.put_u32(piece);
}

fn truncate_utf8(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Packs a bitfield: bit `i` (MSB first) set when `have(i)`.
pub fn pack_bits(num_pieces: u32, have: impl Fn(u32) -> bool) -> Vec<u8> {
    let mut bits = vec![0u8; (num_pieces as usize).div_ceil(8)];
    for i in 0..num_pieces {
        if have(i) {
            bits[(i / 8) as usize] |= 0x80 >> (i % 8);
        }
    }
    bits
}

/// Whether bit `i` is set in a packed bitfield. Out-of-range bits read as unset.
pub fn bit(bits: &[u8], i: u32) -> bool {
    bits.get((i / 8) as usize).is_some_and(|b| b & (0x80 >> (i % 8)) != 0)
}

#[cfg(test)]
mod tests;
