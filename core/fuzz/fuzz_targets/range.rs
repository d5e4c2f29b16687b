//! Arbitrary `Range` header values against arbitrary blob lengths.
//!
//! Asserts more than "does not crash": a partial range is non-empty and inside the blob, and
//! it is what a straightforward reading of the header gives; a header that does not start with
//! `bytes=` is always the whole blob.

#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use shoal_core::registry::{ByteRange, parse_range};

#[derive(Arbitrary, Debug)]
struct Input<'a> {
    len: u64,
    small: bool,
    header: &'a str,
}

fuzz_target!(|input: Input<'_>| {
    // Small lengths meet the edge cases (0, 1, a few bytes) more often.
    let len = if input.small { input.len % 16 } else { input.len };
    let header = input.header;
    match parse_range(header, len) {
        ByteRange::Partial { start, end } => {
            assert!(start < end && end <= len, "{header:?} on {len}: {start}..{end}");
            let spec = header.trim().strip_prefix("bytes=").expect("a partial range has the unit").trim();
            let (a, b) = spec.split_once('-').expect("a partial range has a dash");
            if a.is_empty() {
                let n: u64 = b.parse().expect("a suffix length");
                assert_eq!((start, end), (len - n.min(len), len), "{header:?}");
            } else {
                let first: u64 = a.parse().expect("a first byte");
                assert_eq!(start, first, "{header:?}");
                if !b.is_empty() {
                    let last: u64 = b.parse().expect("a last byte");
                    assert_eq!(end, last.min(len - 1) + 1, "{header:?}");
                } else {
                    assert_eq!(end, len, "{header:?}");
                }
            }
        }
        ByteRange::Unsatisfiable => {
            assert!(header.trim().starts_with("bytes="), "{header:?}");
        }
        ByteRange::Full => {}
    }
    if !header.trim().starts_with("bytes=") {
        assert_eq!(parse_range(header, len), ByteRange::Full, "{header:?}");
    }
});
