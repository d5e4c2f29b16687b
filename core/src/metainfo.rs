//! Metainfo: how a blob is cut into pieces and the hash of each piece.
//!
//! # Piece length rule
//! `piece_length = clamp(next_power_of_two(ceil(length / 256)), 1 MiB, 4 MiB)`.
//! Small pieces let a swarm start re-sharing sooner (a peer can upload a piece as soon as it
//! has verified it) and spread the origin's upload over more peers; beyond about 256 pieces per
//! blob that gain is gone, while per-piece costs (requests, hashes, bitfield bytes) keep
//! growing. So a blob up to 256 MiB gets 1 MiB pieces, up to 512 MiB 2 MiB pieces, and
//! anything larger 4 MiB pieces (a 2 GiB layer has 512). A blob smaller than one piece is one
//! piece. The upper bound keeps one piece under 4 MiB, the wire protocol's limit.
//!
//! # Piece hash
//! Each piece carries a cryptographic hash (BLAKE3, see [`PieceHash`]) so a peer can verify a
//! piece before it re-shares it; the whole blob is still checked against its sha256 digest
//! before it becomes visible.
//!
//! Invariant: a [`MetaInfo`] value is always consistent: `pieces.len()` matches
//! `length` and `piece_length`, and `piece_length` is a power of two within the allowed range.

use std::fmt;

use crate::{Digest, DigestHasher};

/// Smallest piece length the default rule picks.
pub const DEFAULT_MIN_PIECE_LEN: u32 = 1024 * 1024;
/// Largest piece length any metainfo may have; also bounds a wire `Piece` message.
pub const MAX_PIECE_LEN: u32 = 4 * 1024 * 1024;
/// Smallest piece length a metainfo may carry (tests and tiny blobs use it).
pub const MIN_PIECE_LEN: u32 = 16 * 1024;
/// Largest number of pieces of one blob: 256 GiB at 4 MiB pieces. Bounds bitfields.
pub const MAX_PIECES: u32 = 65_536;
/// Target number of pieces per blob for the default rule.
const TARGET_PIECES: u64 = 256;

/// The hash of one piece: BLAKE3-256.
///
/// BLAKE3 over SHA-256 for pieces because it is several times faster per core on this class
/// of machine (figures in `ARCHITECTURE.md`), and every byte an agent receives is hashed twice:
/// once per piece when it arrives and once for the blob's sha256 before commit.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct PieceHash(pub [u8; 32]);

impl PieceHash {
    pub fn of(data: &[u8]) -> PieceHash {
        PieceHash(*blake3::hash(data).as_bytes())
    }
}

impl fmt::Debug for PieceHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PieceHash({})", &hex::encode(self.0)[..12])
    }
}

/// A piece index known to be in range for the metainfo that made it.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct PieceIndex(u32);

impl PieceIndex {
    pub fn get(self) -> u32 {
        self.0
    }
    pub fn as_usize(self) -> usize {
        self.0 as usize
    }
}

/// Why a metainfo is inconsistent, or why bytes do not match it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MetaInfoError {
    #[error("piece length {0} is not a power of two in [{MIN_PIECE_LEN}, {MAX_PIECE_LEN}]")]
    PieceLength(u32),
    #[error("blob of {length} bytes needs {expected} pieces, metainfo has {got}")]
    PieceCount { length: u64, expected: u64, got: usize },
    #[error("blob of {0} bytes needs more than {MAX_PIECES} pieces")]
    TooLarge(u64),
    #[error("got {got} bytes, expected {expected}")]
    LengthMismatch { expected: u64, got: u64 },
    #[error("content digest {got} does not match {expected}")]
    DigestMismatch { expected: Digest, got: Digest },
    #[error("bad piece hash encoding")]
    Encoding,
}

/// How a blob is split into pieces and what each piece hashes to.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct MetaInfo {
    digest: Digest,
    length: u64,
    piece_length: u32,
    pieces: Vec<PieceHash>,
}

/// The piece length the default rule picks for a blob of `length` bytes.
pub fn default_piece_length(length: u64) -> u32 {
    let per_piece = length.div_ceil(TARGET_PIECES).max(1).next_power_of_two();
    u32::try_from(per_piece.clamp(DEFAULT_MIN_PIECE_LEN as u64, MAX_PIECE_LEN as u64))
        .expect("clamped to MAX_PIECE_LEN, which is a u32")
}

fn num_pieces(length: u64, piece_length: u32) -> u64 {
    length.div_ceil(piece_length as u64).max(1)
}

fn check_shape(length: u64, piece_length: u32) -> Result<(), MetaInfoError> {
    if !piece_length.is_power_of_two() || !(MIN_PIECE_LEN..=MAX_PIECE_LEN).contains(&piece_length) {
        return Err(MetaInfoError::PieceLength(piece_length));
    }
    if num_pieces(length, piece_length) > MAX_PIECES as u64 {
        return Err(MetaInfoError::TooLarge(length));
    }
    Ok(())
}

impl MetaInfo {
    /// Builds the metainfo of `data` with the default piece length.
    pub fn build(data: &[u8]) -> MetaInfo {
        let mut b = MetaInfoBuilder::new(data.len() as u64).expect("slice lengths fit");
        b.update(data);
        b.finish().expect("length matches by construction")
    }

    /// Assembles a metainfo from parts, checking that they are consistent.
    pub fn from_parts(
        digest: Digest,
        length: u64,
        piece_length: u32,
        pieces: Vec<PieceHash>,
    ) -> Result<MetaInfo, MetaInfoError> {
        check_shape(length, piece_length)?;
        let expected = num_pieces(length, piece_length);
        if pieces.len() as u64 != expected {
            return Err(MetaInfoError::PieceCount { length, expected, got: pieces.len() });
        }
        Ok(MetaInfo { digest, length, piece_length, pieces })
    }

    pub fn digest(&self) -> Digest {
        self.digest
    }
    pub fn length(&self) -> u64 {
        self.length
    }
    pub fn piece_length(&self) -> u32 {
        self.piece_length
    }
    // Fits: `pieces.len()` is at most MAX_PIECES (checked by `from_parts`).
    #[allow(clippy::cast_possible_truncation)]
    pub fn num_pieces(&self) -> u32 {
        self.pieces.len() as u32
    }
    pub fn piece_hashes(&self) -> &[PieceHash] {
        &self.pieces
    }

    /// Validates a raw piece index from the network.
    pub fn piece(&self, i: u32) -> Option<PieceIndex> {
        ((i as usize) < self.pieces.len()).then_some(PieceIndex(i))
    }

    /// Iterates over every piece index.
    pub fn all_pieces(&self) -> impl Iterator<Item = PieceIndex> + use<> {
        (0..self.num_pieces()).map(PieceIndex)
    }

    /// Byte offset of a piece in the blob.
    pub fn piece_offset(&self, i: PieceIndex) -> u64 {
        i.0 as u64 * self.piece_length as u64
    }

    /// Length of a piece; only the last one may be shorter.
    // Fits: the result is at most `piece_length`, a u32.
    #[allow(clippy::cast_possible_truncation)]
    pub fn piece_len(&self, i: PieceIndex) -> u32 {
        let start = self.piece_offset(i);
        (self.length - start).min(self.piece_length as u64) as u32
    }

    /// The piece containing byte `offset`, if it is inside the blob.
    // Fits: `offset < length`, so the quotient is below `pieces.len()` <= MAX_PIECES.
    #[allow(clippy::cast_possible_truncation)]
    pub fn piece_at(&self, offset: u64) -> Option<PieceIndex> {
        (offset < self.length).then(|| PieceIndex((offset / self.piece_length as u64) as u32))
    }

    /// Whether `data` is exactly piece `i`.
    pub fn verify_piece(&self, i: PieceIndex, data: &[u8]) -> bool {
        data.len() as u64 == self.piece_len(i) as u64 && PieceHash::of(data) == self.pieces[i.as_usize()]
    }
}

/// Builds a metainfo from a stream of bytes whose total length is known up front (the
/// backends report it), checking the content digest when `expected` is given.
pub struct MetaInfoBuilder {
    length: u64,
    piece_length: u32,
    seen: u64,
    blob: DigestHasher,
    piece: blake3::Hasher,
    piece_fill: u32,
    pieces: Vec<PieceHash>,
}

impl MetaInfoBuilder {
    pub fn new(length: u64) -> Result<MetaInfoBuilder, MetaInfoError> {
        Self::with_piece_length(length, default_piece_length(length))
    }

    pub fn with_piece_length(length: u64, piece_length: u32) -> Result<MetaInfoBuilder, MetaInfoError> {
        check_shape(length, piece_length)?;
        Ok(MetaInfoBuilder {
            length,
            piece_length,
            seen: 0,
            blob: DigestHasher::new(),
            piece: blake3::Hasher::new(),
            piece_fill: 0,
            pieces: Vec::with_capacity(
                usize::try_from(num_pieces(length, piece_length)).expect("check_shape bounds it by MAX_PIECES"),
            ),
        })
    }

    /// Feeds the next bytes of the blob.
    // Fits: `take <= room`, which is at most `piece_length`, a u32.
    #[allow(clippy::cast_possible_truncation)]
    pub fn update(&mut self, mut data: &[u8]) {
        self.seen += data.len() as u64;
        self.blob.update(data);
        while !data.is_empty() {
            let room = (self.piece_length - self.piece_fill) as usize;
            let take = room.min(data.len());
            self.piece.update(&data[..take]);
            self.piece_fill += take as u32;
            data = &data[take..];
            if self.piece_fill == self.piece_length {
                self.pieces.push(PieceHash(*self.piece.finalize().as_bytes()));
                self.piece.reset();
                self.piece_fill = 0;
            }
        }
    }

    /// Bytes fed so far.
    pub fn seen(&self) -> u64 {
        self.seen
    }

    /// Finishes, checking the length.
    pub fn finish(mut self) -> Result<MetaInfo, MetaInfoError> {
        if self.seen != self.length {
            return Err(MetaInfoError::LengthMismatch { expected: self.length, got: self.seen });
        }
        if self.piece_fill > 0 || self.pieces.is_empty() {
            self.pieces.push(PieceHash(*self.piece.finalize().as_bytes()));
        }
        MetaInfo::from_parts(self.blob.finish(), self.length, self.piece_length, self.pieces)
    }

    /// Finishes, checking the length and that the content hashes to `expected`.
    pub fn finish_expecting(self, expected: Digest) -> Result<MetaInfo, MetaInfoError> {
        let m = self.finish()?;
        if m.digest != expected {
            return Err(MetaInfoError::DigestMismatch { expected, got: m.digest });
        }
        Ok(m)
    }
}

/// JSON form of a metainfo, as origins serve it.
#[derive(serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct MetaInfoJson {
    digest: Digest,
    length: u64,
    piece_length: u32,
    /// Piece hashes, hex, concatenated.
    pieces: String,
}

impl serde::Serialize for MetaInfo {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut pieces = String::with_capacity(self.pieces.len() * 64);
        for p in &self.pieces {
            pieces.push_str(&hex::encode(p.0));
        }
        MetaInfoJson { digest: self.digest, length: self.length, piece_length: self.piece_length, pieces }.serialize(s)
    }
}

impl<'de> serde::Deserialize<'de> for MetaInfo {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<MetaInfo, D::Error> {
        use serde::de::Error;
        let j = MetaInfoJson::deserialize(d)?;
        if j.pieces.len() % 64 != 0 {
            return Err(D::Error::custom(MetaInfoError::Encoding));
        }
        let mut pieces = Vec::with_capacity(j.pieces.len() / 64);
        for chunk in j.pieces.as_bytes().chunks(64) {
            let mut h = [0u8; 32];
            hex::decode_to_slice(chunk, &mut h).map_err(|_| D::Error::custom(MetaInfoError::Encoding))?;
            pieces.push(PieceHash(h));
        }
        MetaInfo::from_parts(j.digest, j.length, j.piece_length, pieces).map_err(D::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MIB;

    #[test]
    fn piece_length_rule() {
        let cases: &[(u64, u32)] = &[
            (0, 1 << 20),
            (1, 1 << 20),
            (256 * MIB, 1 << 20),
            (256 * MIB + 1, 2 << 20),
            (512 * MIB, 2 << 20),
            (512 * MIB + 1, 4 << 20),
            (2048 * MIB, 4 << 20),
            (200 * 1024 * MIB, 4 << 20),
        ];
        for &(len, want) in cases {
            assert_eq!(default_piece_length(len), want, "length {len}");
        }
    }

    #[test]
    fn small_blob_is_one_piece() {
        let m = MetaInfo::build(b"hello");
        assert_eq!(m.num_pieces(), 1);
        assert_eq!(m.piece_len(m.piece(0).unwrap()), 5);
        assert!(m.verify_piece(m.piece(0).unwrap(), b"hello"));
        assert!(!m.verify_piece(m.piece(0).unwrap(), b"hellO"));
        assert!(m.piece(1).is_none());
        let empty = MetaInfo::build(b"");
        assert_eq!(empty.num_pieces(), 1);
        assert_eq!(empty.piece_len(empty.piece(0).unwrap()), 0);
        assert_eq!(empty.digest(), Digest::of(b""));
    }

    #[test]
    // The byte pattern wraps on purpose; offsets fit as the test blob is under 64 KiB.
    #[allow(clippy::cast_possible_truncation)]
    fn streaming_matches_whole_and_piece_math() {
        let data: Vec<u8> = (0..(3 * MIN_PIECE_LEN + 100)).map(|i| (i * 7) as u8).collect();
        let mut b = MetaInfoBuilder::with_piece_length(data.len() as u64, MIN_PIECE_LEN).unwrap();
        for chunk in data.chunks(1000) {
            b.update(chunk);
        }
        let m = b.finish_expecting(Digest::of(&data)).unwrap();
        assert_eq!(m.num_pieces(), 4);
        for p in m.all_pieces() {
            let off = m.piece_offset(p) as usize;
            let len = m.piece_len(p) as usize;
            assert!(m.verify_piece(p, &data[off..off + len]));
        }
        assert_eq!(m.piece_len(m.piece(3).unwrap()), 100);
        assert_eq!(m.piece_at(data.len() as u64 - 1), m.piece(3));
        assert_eq!(m.piece_at(data.len() as u64), None);
    }

    #[test]
    fn builder_rejects_wrong_length_and_digest() {
        let mut b = MetaInfoBuilder::new(10).unwrap();
        b.update(b"123");
        assert!(matches!(b.finish(), Err(MetaInfoError::LengthMismatch { expected: 10, got: 3 })));
        let mut b = MetaInfoBuilder::new(3).unwrap();
        b.update(b"123");
        assert!(matches!(b.finish_expecting(Digest::of(b"124")), Err(MetaInfoError::DigestMismatch { .. })));
    }

    #[test]
    fn json_round_trip_and_validation() {
        let data = vec![9u8; (2 * MIN_PIECE_LEN) as usize];
        let mut b = MetaInfoBuilder::with_piece_length(data.len() as u64, MIN_PIECE_LEN).unwrap();
        b.update(&data);
        let m = b.finish().unwrap();
        let j = serde_json::to_string(&m).unwrap();
        assert_eq!(serde_json::from_str::<MetaInfo>(&j).unwrap(), m);
        // Drop one piece hash: the count no longer matches.
        let mut v: serde_json::Value = serde_json::from_str(&j).unwrap();
        let p = v["pieces"].as_str().unwrap()[64..].to_string();
        v["pieces"] = p.into();
        assert!(serde_json::from_value::<MetaInfo>(v.clone()).is_err());
        v["pieces"] = "zz".into();
        assert!(serde_json::from_value::<MetaInfo>(v.clone()).is_err());
        v["extra"] = 1.into();
        assert!(serde_json::from_value::<MetaInfo>(v).is_err());
    }

    #[test]
    fn rejects_bad_piece_lengths() {
        assert_eq!(MetaInfoBuilder::with_piece_length(1, 3000).err(), Some(MetaInfoError::PieceLength(3000)));
        assert_eq!(
            MetaInfoBuilder::with_piece_length(1, MAX_PIECE_LEN * 2).err(),
            Some(MetaInfoError::PieceLength(MAX_PIECE_LEN * 2))
        );
        assert!(matches!(
            MetaInfoBuilder::with_piece_length(u64::MAX, MAX_PIECE_LEN).err(),
            Some(MetaInfoError::TooLarge(_))
        ));
    }
}
