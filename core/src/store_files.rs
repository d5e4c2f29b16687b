//! The contents of the store's metadata files, parsed without touching the disk: a blob's
//! `.meta` (its metainfo as JSON, as origins serve it) and a partial download's `.bits` (the
//! packed bitfield of pieces verified and written, MSB first, as on the wire).
//!
//! The swarm's store reads the bytes and calls these; the fuzz targets call them too. Whatever
//! the bytes (a crash mid-write, a full disk, another version's file), parsing never panics:
//! a bad `.meta` is an error the store reports for that blob alone, and a `.bits` that does not
//! fit the metainfo is `None`, so the download starts over.

use crate::MetaInfo;
use crate::wire::bit;

/// Largest `.meta` file read: the JSON of a metainfo with the most pieces (65,536 hashes of 64
/// hex digits) plus room for its other fields. Hard-coded, from the metainfo's own bounds.
pub const MAX_META_LEN: usize = crate::metainfo::MAX_PIECES as usize * 64 + 4096;

/// Why a `.meta` file is unusable.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MetaFileError {
    #[error("{0} bytes, more than a metainfo can take ({MAX_META_LEN})")]
    TooLong(usize),
    #[error("{0}")]
    Invalid(String),
}

/// Parses a `.meta` file: one metainfo in JSON, consistent (piece count, length and piece
/// length agree) or an error.
pub fn parse_meta(bytes: &[u8]) -> Result<MetaInfo, MetaFileError> {
    if bytes.len() > MAX_META_LEN {
        return Err(MetaFileError::TooLong(bytes.len()));
    }
    serde_json::from_slice(bytes).map_err(|e| MetaFileError::Invalid(e.to_string()))
}

/// Parses a `.bits` file for a blob of `num_pieces` pieces into one flag per piece, or `None`
/// when the file cannot be the bitfield of that blob: another length, or a bit set past the
/// last piece (the store never writes one).
pub fn parse_bits(bytes: &[u8], num_pieces: u32) -> Option<Vec<bool>> {
    if bytes.len() != (num_pieces as usize).div_ceil(8) {
        return None;
    }
    let spare = num_pieces % 8;
    if spare != 0 && bytes.last().is_some_and(|&b| b & (0xFF >> spare) != 0) {
        return None;
    }
    Some((0..num_pieces).map(|i| bit(bytes, i)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::pack_bits;

    #[test]
    fn meta_round_trips_and_rejects_what_is_not_one() {
        let meta = MetaInfo::build(&[7u8; 3000]);
        let json = serde_json::to_vec(&meta).unwrap();
        assert_eq!(parse_meta(&json), Ok(meta));
        let bad: &[&[u8]] = &[
            b"",
            b"{",
            b"null",
            b"[]",
            // Truncated mid-write.
            &json[..json.len() / 2],
            // An unknown field.
            br#"{"digest":"sha256:0000000000000000000000000000000000000000000000000000000000000000","length":0,"piece_length":1048576,"pieces":"","x":1}"#,
            // No piece hash for a one-byte blob.
            br#"{"digest":"sha256:0000000000000000000000000000000000000000000000000000000000000000","length":1,"piece_length":1048576,"pieces":""}"#,
            // Zero-filled, as after a power loss.
            &[0u8; 64],
        ];
        for b in bad {
            assert!(parse_meta(b).is_err(), "{:?}", String::from_utf8_lossy(b));
        }
        assert_eq!(parse_meta(&vec![b' '; MAX_META_LEN + 1]), Err(MetaFileError::TooLong(MAX_META_LEN + 1)));
    }

    #[test]
    fn bits_fit_their_blob_or_are_none() {
        let check = |bytes: &[u8], n: u32, want: Option<&[bool]>| {
            assert_eq!(parse_bits(bytes, n).as_deref(), want, "{bytes:?} for {n} pieces");
        };
        check(&[], 0, Some(&[]));
        check(&[0b1010_0000], 3, Some(&[true, false, true]));
        check(&[0xFF], 8, Some(&[true; 8]));
        check(&[0xFF, 0x80], 9, Some(&[true; 9]));
        // Wrong length: another blob's file, or truncated.
        check(&[], 1, None);
        check(&[0, 0], 8, None);
        check(&[0xFF], 9, None);
        // A bit past the last piece.
        check(&[0b0001_0000], 3, None);
        check(&[0xFF, 0xC0], 9, None);
        for n in [1u32, 7, 8, 9, 100] {
            let have = |i: u32| i.is_multiple_of(3);
            let got = parse_bits(&pack_bits(n, have), n).unwrap();
            assert_eq!(got, (0..n).map(have).collect::<Vec<_>>(), "round trip of {n} pieces");
        }
    }
}
