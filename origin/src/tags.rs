//! Tag resolution from the backend, in the docker/distribution layout: a tag's digest is
//! read from
//! `<prefix>/docker/registry/v2/repositories/<name>/_manifests/tags/<tag>/current/link`
//! (text `sha256:<hex>`). `GET /tags/<name>/<tag>` (`crate::api`) answers it as text (200),
//! or 404 `MANIFEST_UNKNOWN`. Nothing here knows of HTTP.
//!
//! The backend's own `prefix` (the registry's `rootdirectory`) applies, whatever its blob
//! layout. Name and tag are validated by `shoal_core::registry` before any key is built, so a
//! request cannot name an object outside the repositories tree.
//!
//! A tag the backend lacks is resolved through an upstream registry when pull-through is
//! configured ([`resolve_through`]): the request's `?ns=<host>` names the upstream (the
//! default one otherwise). The manifest read from the upstream is stored as a blob, so the
//! agent's follow-up request by digest finds it; the answer is cached for `tag_ttl`, and with
//! `write_back` the manifest and the tag's link files are written to the backend. The origin
//! does not cache tags read from the backend: agents do, with their own TTL.

use bytes::Bytes;
use shoal_core::Digest;
use shoal_core::registry::{Reference, RegistryHost, RepoName, Tag};

use crate::backend::{Backend, BackendError};
use crate::fetch::{FetchError, Fetcher};
use crate::upstream::{UpstreamError, Upstreams};

/// Largest tag link file read. Hard-coded: a link is `sha256:` and 64 hex characters.
const MAX_LINK: usize = 256;

/// Why a tag could not be resolved.
#[derive(Debug, thiserror::Error)]
pub enum TagError {
    /// The link file does not exist: 404.
    #[error("tag {tag} of {name} is unknown")]
    Unknown { name: RepoName, tag: Tag },
    /// The link file does not hold a digest: the bucket is damaged.
    #[error("tag {tag} of {name} links to something that is not a digest: {content:?}")]
    BadLink { name: RepoName, tag: Tag, content: String },
    /// Reading the link failed.
    #[error("reading tag {tag} of {name}: {source:#}")]
    Backend { name: RepoName, tag: Tag, source: BackendError },
    /// The upstream failed (denied, unavailable, a bad answer).
    #[error("resolving tag {tag} of {name}: {source}")]
    Upstream { name: RepoName, tag: Tag, source: UpstreamError },
    /// The manifest read from the upstream could not be stored.
    #[error("storing the manifest of {name}:{tag}: {source}")]
    Store { name: RepoName, tag: Tag, source: FetchError },
}

/// The key of a tag's link file, relative to the backend's prefix.
pub fn tag_link_key(name: &RepoName, tag: &Tag) -> String {
    format!("docker/registry/v2/repositories/{name}/_manifests/tags/{tag}/current/link")
}

/// The key of a manifest revision's link file, which docker/distribution needs to serve a
/// manifest by digest.
pub fn revision_link_key(name: &RepoName, digest: &Digest) -> String {
    format!("docker/registry/v2/repositories/{name}/_manifests/revisions/sha256/{}/link", digest.hex())
}

/// Resolves a tag from the backend, else through the upstream that `ns` selects.
pub async fn resolve_through(
    fetcher: &Fetcher,
    upstreams: Option<&Upstreams>,
    name: &RepoName,
    tag: &Tag,
    ns: Option<&RegistryHost>,
) -> Result<Digest, TagError> {
    let backend = fetcher.backend().as_ref();
    let unknown = match resolve(backend, name, tag).await {
        Err(e @ TagError::Unknown { .. }) => e,
        other => return other,
    };
    let Some((ups, up)) = upstreams.and_then(|u| Some((u, u.select(ns, name)?))) else {
        return Err(unknown);
    };
    if let Some(d) = ups.cached_tag(&up, name, tag) {
        return Ok(d);
    }
    let m = up.manifest(name, &Reference::Tag(tag.clone())).await.map_err(|e| match e {
        UpstreamError::NotFound => TagError::Unknown { name: name.clone(), tag: tag.clone() },
        source => TagError::Upstream { name: name.clone(), tag: tag.clone(), source },
    })?;
    fetcher.store_manifest(&m, up.cfg.write_back).await.map_err(|source| TagError::Store {
        name: name.clone(),
        tag: tag.clone(),
        source,
    })?;
    if up.cfg.write_back {
        write_links(backend, name, tag, m.digest).await;
    }
    ups.cache_tag(&up, name, tag, m.digest);
    tracing::info!(%name, %tag, digest = %m.digest, upstream = %up.host(), "tag resolved upstream");
    Ok(m.digest)
}

/// Writes the revision and tag link files of a manifest pulled through, as
/// docker/distribution lays them out. Failures are logged: the tag still resolves upstream.
async fn write_links(backend: &dyn Backend, name: &RepoName, tag: &Tag, digest: Digest) {
    let text = Bytes::from(digest.to_string());
    for key in [revision_link_key(name, &digest), tag_link_key(name, tag)] {
        if let Err(e) = backend.put_small(&key, text.clone()).await {
            tracing::warn!(%name, %tag, key, "cannot write back link: {e:#}");
        }
    }
}

/// Reads the digest a tag points at.
pub async fn resolve(backend: &dyn Backend, name: &RepoName, tag: &Tag) -> Result<Digest, TagError> {
    let key = tag_link_key(name, tag);
    let err = |source| TagError::Backend { name: name.clone(), tag: tag.clone(), source };
    let bytes = match backend.get_small(&key, MAX_LINK).await {
        Ok(Some(b)) => b,
        Ok(None) | Err(BackendError::NotFound) => {
            return Err(TagError::Unknown { name: name.clone(), tag: tag.clone() });
        }
        Err(e) => return Err(err(e)),
    };
    let text = String::from_utf8_lossy(&bytes);
    text.trim().parse().map_err(|_| TagError::BadLink {
        name: name.clone(),
        tag: tag.clone(),
        content: text.chars().take(80).collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::{FsBackend, FsConfig, Layout};

    #[tokio::test]
    async fn resolves_link_files_under_the_prefix() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = FsConfig { root: dir.path().to_path_buf(), layout: Layout::DockerRegistry, prefix: "reg".into() };
        let backend = FsBackend::new(cfg).await.unwrap();
        let (name, tag) = (RepoName::parse("library/nginx").unwrap(), Tag::parse("v1").unwrap());
        let path = dir.path().join("reg").join(tag_link_key(&name, &tag));
        let d = Digest::of(b"manifest");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, d.to_string()).unwrap();
        assert_eq!(resolve(&backend, &name, &tag).await.unwrap(), d);

        std::fs::write(&path, format!("{d}\n")).unwrap();
        assert_eq!(resolve(&backend, &name, &tag).await.unwrap(), d, "a trailing newline is tolerated");

        std::fs::write(&path, "garbage").unwrap();
        assert!(matches!(resolve(&backend, &name, &tag).await, Err(TagError::BadLink { .. })));

        std::fs::write(&path, "x".repeat(1000)).unwrap();
        assert!(matches!(resolve(&backend, &name, &tag).await, Err(TagError::Backend { .. })));

        let other = Tag::parse("v2").unwrap();
        assert!(matches!(resolve(&backend, &name, &other).await, Err(TagError::Unknown { .. })));
    }
}
