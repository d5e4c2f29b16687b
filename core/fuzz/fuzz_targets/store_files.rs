//! Arbitrary bytes as the store's metadata files (`shoal_core::store_files`): a `.meta`, and
//! a `.bits` read against a piece count, as an agent or origin reads them at start after a
//! crash, a full disk or a power loss.
//!
//! Asserts more than "does not crash": a `.meta` that parses is a metainfo whose own JSON
//! parses back equal; a `.bits` that parses has one flag per piece, agrees bit for bit with the
//! file, and packs back to exactly the file's bytes (so no stray bit past the last piece is
//! accepted).

#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use shoal_core::store_files::{MAX_META_LEN, parse_bits, parse_meta};
use shoal_core::wire::{bit, pack_bits};

#[derive(Arbitrary, Debug)]
struct Input<'a> {
    /// Take the piece count from the file's length (less `spare` bits), or `num_pieces`.
    fit: bool,
    spare: u8,
    num_pieces: u32,
    bits: &'a [u8],
    meta: &'a [u8],
}

fuzz_target!(|input: Input<'_>| {
    if let Ok(m) = parse_meta(input.meta) {
        assert!(input.meta.len() <= MAX_META_LEN);
        let json = serde_json::to_vec(&m).expect("a metainfo serializes");
        assert_eq!(parse_meta(&json), Ok(m.clone()));
        // Its own bitfield, all set, is accepted for its piece count.
        let all = pack_bits(m.num_pieces(), |_| true);
        assert_eq!(parse_bits(&all, m.num_pieces()).map(|b| b.len()), Some(m.num_pieces() as usize));
    }
    // Up to 65,536 pieces, as many as a metainfo can have.
    let n = if input.fit {
        u32::try_from(input.bits.len() * 8).unwrap_or(u32::MAX).saturating_sub(u32::from(input.spare % 8))
    } else {
        input.num_pieces
    }
    .min(65_536);
    if let Some(flags) = parse_bits(input.bits, n) {
        assert_eq!(flags.len(), n as usize);
        for (i, &f) in flags.iter().enumerate() {
            assert_eq!(f, bit(input.bits, i as u32));
        }
        assert_eq!(pack_bits(n, |i| flags[i as usize]), input.bits);
    }
});
