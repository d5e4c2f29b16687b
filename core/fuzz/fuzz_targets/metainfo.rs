//! Arbitrary bytes as the JSON metainfo an origin serves (`GET /blobs/<digest>/metainfo`).
//!
//! Asserts more than "does not crash": a metainfo that parses is consistent (its piece count
//! covers its length at its piece length, every piece has a length and an offset inside the
//! blob), and it serializes to JSON that parses back equal.

#![no_main]

use libfuzzer_sys::fuzz_target;
use shoal_core::MetaInfo;

fuzz_target!(|data: &[u8]| {
    let Ok(m) = serde_json::from_slice::<MetaInfo>(data) else { return };
    let n = u64::from(m.num_pieces());
    let pl = u64::from(m.piece_length());
    assert!(pl.is_power_of_two(), "{pl}");
    assert_eq!(n, m.length().div_ceil(pl).max(1), "{m:?}");
    assert_eq!(m.piece_hashes().len() as u64, n);
    let mut covered = 0u64;
    for i in m.all_pieces() {
        assert_eq!(m.piece_offset(i), covered);
        let len = u64::from(m.piece_len(i));
        assert!(len <= pl);
        covered += len;
        if len > 0 {
            assert_eq!(m.piece_at(m.piece_offset(i)), Some(i));
        }
    }
    assert_eq!(covered, m.length());
    assert!(m.piece(m.num_pieces()).is_none());
    let json = serde_json::to_vec(&m).expect("a metainfo serializes");
    assert_eq!(serde_json::from_slice::<MetaInfo>(&json).expect("its own JSON parses"), m);
});
