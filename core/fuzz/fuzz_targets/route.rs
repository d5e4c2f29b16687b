//! Arbitrary request paths into the Registry v2 route parser, and the name, tag and reference
//! parsers behind it.
//!
//! Asserts more than "does not crash": a parsed route's parts are exactly the validated pieces
//! of the path (the name keeps its slashes and every character is one a storage key may hold;
//! the reference is the last segment), so a route can never smuggle `..` or a `%2F` into a key.

#![no_main]

use libfuzzer_sys::fuzz_target;
use shoal_core::registry::{Reference, RegistryHost, RepoName, Route, Tag, parse_route};

fn key_safe(s: &str) -> bool {
    !s.is_empty()
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-/".contains(&b))
        && s.split('/').all(|c| !c.is_empty() && c != "." && c != "..")
}

fuzz_target!(|data: &[u8]| {
    let Ok(path) = std::str::from_utf8(data) else { return };
    match parse_route(path) {
        Ok(Route::Base) => assert!(path == "/v2" || path == "/v2/", "{path:?}"),
        Ok(Route::Manifest { name, reference }) => {
            assert!(key_safe(name.as_str()), "{name}");
            let want = format!("/v2/{name}/manifests/{reference}");
            assert_eq!(path, want);
            if let Reference::Tag(t) = &reference {
                assert!(!t.as_str().is_empty() && t.as_str().len() <= 128, "{t}");
            }
        }
        Ok(Route::Blob { name, digest }) => {
            assert!(key_safe(name.as_str()), "{name}");
            assert_eq!(path, format!("/v2/{name}/blobs/{digest}"));
        }
        Err(_) => {}
    }
    // Each parser alone: a value it accepts displays as its input and parses back equal.
    if let Ok(n) = RepoName::parse(path) {
        assert!(key_safe(n.as_str()), "{n}");
        assert_eq!(n.as_str(), path);
        assert_eq!(RepoName::parse(n.as_str()).as_ref(), Ok(&n));
    }
    if let Ok(t) = Tag::parse(path) {
        assert_eq!(t.as_str(), path);
        assert!(!path.contains(['/', ':']), "{path:?}");
    }
    if let Ok(h) = RegistryHost::parse(path) {
        assert_eq!(h.as_str(), path.to_ascii_lowercase());
        assert_eq!(RegistryHost::parse(h.as_str()).as_ref(), Ok(&h));
        assert!(!h.as_str().contains(['/', '?', '#', '@']), "{h}");
    }
    if let Ok(r) = Reference::parse(path) {
        assert_eq!(Reference::parse(&r.to_string()).as_ref(), Ok(&r));
    }
});
