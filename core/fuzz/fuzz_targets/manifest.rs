//! Arbitrary bytes as an image manifest or index (`shoal_core::manifest`), as the agent's
//! registry API, the origin's pull-through and preheat read them.
//!
//! Asserts more than "does not crash": `parse` succeeds only on what `media_type` calls a
//! manifest, with that media type; an index's kind and an image's kind agree with
//! `is_index`; a media type that goes out as a header is printable ASCII; the references are
//! the descriptors' digests, without duplicates.

#![no_main]

use libfuzzer_sys::fuzz_target;
use shoal_core::manifest::{self, Manifest};

fuzz_target!(|data: &[u8]| {
    let mt = manifest::media_type(data);
    if let Some(m) = &mt {
        assert!(!m.is_empty() && m.len() <= 255 && m.bytes().all(|b| b.is_ascii_graphic()), "{m:?}");
    }
    let Ok(parsed) = manifest::parse(data) else { return };
    assert_eq!(Some(parsed.media_type()), mt.as_deref());
    let (is_index, descriptors): (bool, Vec<_>) = match &parsed {
        Manifest::Index { manifests, .. } => (true, manifests.iter().map(|d| d.digest).collect()),
        Manifest::Image { config, layers, .. } => {
            (false, std::iter::once(config.digest).chain(layers.iter().map(|d| d.digest)).collect())
        }
    };
    assert_eq!(is_index, manifest::is_index(parsed.media_type()));
    let refs = parsed.references();
    assert!(refs.iter().all(|r| descriptors.contains(r)));
    assert!(descriptors.iter().all(|d| refs.contains(d)));
    let mut dedup = refs.clone();
    dedup.sort_by_key(|d| d.to_string());
    dedup.dedup();
    assert_eq!(dedup.len(), refs.len(), "duplicate references");
});
