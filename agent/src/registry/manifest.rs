//! What kind of manifest a blob is, from its JSON: the `Content-Type` a registry answers with.
//! The parsing lives in `shoal_core::manifest`, shared with the origin's pull-through and
//! preheat; this module names what the registry API uses of it.

pub use shoal_core::manifest::{
    DOCKER_MANIFEST, DOCKER_MANIFEST_LIST, MAX_MANIFEST_LEN, OCI_INDEX, OCI_MANIFEST, media_type,
};
