//! Tag resolution from the backend, in the docker/distribution layout:
//! `GET /tags/<name>/<tag>` reads
//! `<prefix>/docker/registry/v2/repositories/<name>/_manifests/tags/<tag>/current/link`
//! (text `sha256:<hex>`) and answers the digest as text (200), or 404 `MANIFEST_UNKNOWN`.
//!
//! The backend's own `prefix` (the registry's `rootdirectory`) applies, whatever its blob
//! layout. Name and tag are validated by `shoal_core::registry` before any key is built, so a
//! request cannot name an object outside the repositories tree. The origin does not cache
//! tags: agents do, with their own TTL.

use axum::extract::State;
use axum::http::{StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use shoal_core::Digest;
use shoal_core::registry::{RepoName, Tag};
use shoal_runtime::ApiError;

use crate::api::AppState;
use crate::backend::{Backend, BackendError};

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
}

/// The key of a tag's link file, relative to the backend's prefix.
pub fn tag_link_key(name: &RepoName, tag: &Tag) -> String {
    format!("docker/registry/v2/repositories/{name}/_manifests/tags/{tag}/current/link")
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

impl From<TagError> for ApiError {
    fn from(e: TagError) -> ApiError {
        let (status, code) = match &e {
            TagError::Unknown { .. } => (StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN"),
            TagError::BadLink { .. } => (StatusCode::BAD_GATEWAY, "UNAVAILABLE"),
            TagError::Backend { source, .. } if source.is_transient() => {
                (StatusCode::SERVICE_UNAVAILABLE, "UNAVAILABLE")
            }
            TagError::Backend { .. } => (StatusCode::BAD_GATEWAY, "UNAVAILABLE"),
        };
        ApiError::new(status, code, format!("{e:#}"))
    }
}

/// Splits the raw (still percent-encoded) path `/tags/<name>/<tag>` and validates both parts.
pub fn parse_tag_path(path: &str) -> Result<(RepoName, Tag), ApiError> {
    let rest = path.strip_prefix("/tags/").unwrap_or_default();
    let Some((name, tag)) = rest.rsplit_once('/') else {
        return Err(ApiError::new(StatusCode::NOT_FOUND, "NAME_INVALID", "expected /tags/<name>/<tag>"));
    };
    let name =
        RepoName::parse(name).map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "NAME_INVALID", e.to_string()))?;
    let tag = Tag::parse(tag).map_err(|e| ApiError::new(StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN", e.to_string()))?;
    Ok((name, tag))
}

/// `GET /tags/<name>/<tag>`.
pub async fn get_tag(State(st): State<AppState>, uri: Uri) -> Result<Response, ApiError> {
    let (name, tag) = parse_tag_path(uri.path())?;
    let digest = resolve(st.fetcher.backend().as_ref(), &name, &tag).await?;
    tracing::debug!(%name, %tag, %digest, "tag resolved");
    Ok(([(header::CONTENT_TYPE, "text/plain")], digest.to_string()).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::{FsBackend, FsConfig, Layout};

    fn show(path: &str) -> String {
        match parse_tag_path(path) {
            Ok((n, t)) => format!("{n} {t}"),
            Err(e) => e.code.to_string(),
        }
    }

    #[test]
    fn tag_paths() {
        assert_eq!(show("/tags/nginx/latest"), "nginx latest");
        assert_eq!(show("/tags/library/nginx/1.25"), "library/nginx 1.25");
        assert_eq!(show("/tags/a/b/c/v1"), "a/b/c v1");
        assert_eq!(show("/tags/latest"), "NAME_INVALID");
        assert_eq!(show("/tags/"), "NAME_INVALID");
        assert_eq!(show("/tags/../../etc/passwd"), "NAME_INVALID");
        assert_eq!(show("/tags/a%2F..%2Fb/v1"), "NAME_INVALID");
        assert_eq!(show("/tags/a//b/v1"), "NAME_INVALID");
        assert_eq!(show("/tags/a/.."), "MANIFEST_UNKNOWN");
        assert_eq!(show("/tags/a/"), "MANIFEST_UNKNOWN");
    }

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
