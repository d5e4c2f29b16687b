//! Who may write: the `auth:` section every service shares, and the check its protected
//! endpoints run (the origin's uploads, preheats and notifications, the agent's preheat, the
//! tracker's announces for other addresses).
//!
//! A caller is allowed when it presents `Authorization: Bearer <token>` with a token from
//! `tokens_file`, or when TLS authenticated its client certificate as one of `identities`
//! (the [`Caller`]'s identity: the first URI SAN, else the first DNS SAN, of the certificate
//! the client proved at the handshake, see [`crate::tls`]; only on a TLS listener, and only
//! from a client that presented one where `http_client_auth` is `optional`). A request
//! without credentials is
//! answered 401 (`UNAUTHORIZED`, with a `WWW-Authenticate: Bearer` challenge), one with
//! credentials that are not allowed 403 (`DENIED`); the check runs before anything else of
//! the request is read, so a refused request leaves nothing behind.
//!
//! The tokens file holds one token per line (blank lines and `#` comments skipped). It is
//! read when the config is validated and re-read whenever its modification time or size
//! changes (checked at most every [`RELOAD_CHECK`]), so a rotated Kubernetes Secret applies
//! without a restart; a file that cannot be read keeps the tokens last read. Tokens are kept
//! only as SHA-256 hashes and compared as hashes, so a comparison's time says nothing about
//! a token.
//!
//! With neither a tokens file nor identities, the endpoints are open: a lab's setting, which
//! the binaries log loudly at start.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use sha2::{Digest as _, Sha256};
use shoal_core::api::ErrorBody;

use crate::http::Caller;
use crate::tls::Identity;

/// How often, at most, the tokens file is checked for a change. Hard-coded.
pub const RELOAD_CHECK: Duration = Duration::from_secs(5);
/// Largest tokens file read. Hard-coded: a token is a line.
const MAX_TOKENS_FILE: u64 = 1 << 20;

/// The `auth:` section of a service's config.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// A file of allowed bearer tokens, one per line (a mounted Secret). Default none.
    pub tokens_file: Option<PathBuf>,
    /// Allowed client certificate identities (with TLS). Default none.
    pub identities: Vec<Identity>,
}

impl AuthConfig {
    /// Whether anything is configured; if not, the protected endpoints are open.
    pub fn is_configured(&self) -> bool {
        self.tokens_file.is_some() || !self.identities.is_empty()
    }

    /// Reads the tokens file and builds the check. Errors name the file (under `auth.`).
    pub fn load(&self) -> Result<Authorizer, String> {
        if !self.is_configured() {
            return Ok(Authorizer::open());
        }
        if let Some(i) = self.identities.iter().find(|i| i.as_str().is_empty()) {
            return Err(format!("auth.identities: an empty identity ({i:?})"));
        }
        let tokens = match &self.tokens_file {
            Some(path) => {
                let (hashes, stamp) =
                    read_tokens(path).map_err(|e| format!("auth.tokens_file {}: {e}", path.display()))?;
                if hashes.is_empty() {
                    return Err(format!("auth.tokens_file {}: holds no token", path.display()));
                }
                Some(TokenFile {
                    path: path.clone(),
                    state: Mutex::new(TokenState { hashes, stamp, checked: Instant::now() }),
                })
            }
            None => None,
        };
        let identities = self.identities.iter().cloned().collect();
        Ok(Authorizer { inner: Some(Arc::new(Inner { identities, tokens })) })
    }
}

/// The check of a service's protected endpoints; cheap to clone.
#[derive(Clone, Default)]
pub struct Authorizer {
    /// `None`: open.
    inner: Option<Arc<Inner>>,
}

impl std::fmt::Debug for Authorizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.inner {
            None => f.write_str("Authorizer(open)"),
            Some(i) => f
                .debug_struct("Authorizer")
                .field("tokens_file", &i.tokens.as_ref().map(|t| &t.path))
                .field("identities", &i.identities.len())
                .finish(),
        }
    }
}

struct Inner {
    identities: HashSet<Identity>,
    tokens: Option<TokenFile>,
}

struct TokenFile {
    path: PathBuf,
    /// A sync lock held for a map lookup, or for a re-read of the small file at most every
    /// [`RELOAD_CHECK`]; never across an `.await`.
    state: Mutex<TokenState>,
}

struct TokenState {
    hashes: HashSet<[u8; 32]>,
    /// The file's modification time and size when it was read.
    stamp: (Option<SystemTime>, u64),
    checked: Instant,
}

/// An allowed request: what it may pass on when it calls other nodes on the caller's behalf.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Grant {
    /// The caller's bearer token, if it authenticated with one.
    pub bearer: Option<String>,
}

/// Why a request is refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No credentials: 401.
    #[error("credentials are required: a bearer token or an allowed client certificate")]
    Unauthenticated,
    /// Credentials that are not allowed: 403.
    #[error("{0}")]
    Forbidden(String),
}

impl AuthError {
    pub fn status(&self) -> StatusCode {
        match self {
            AuthError::Unauthenticated => StatusCode::UNAUTHORIZED,
            AuthError::Forbidden(_) => StatusCode::FORBIDDEN,
        }
    }

    /// The stable code: `UNAUTHORIZED` or `DENIED` (the Registry v2 codes).
    pub fn code(&self) -> &'static str {
        match self {
            AuthError::Unauthenticated => "UNAUTHORIZED",
            AuthError::Forbidden(_) => "DENIED",
        }
    }

    /// The headers of the answer: the challenge of a 401.
    pub fn headers(&self) -> HeaderMap {
        let mut h = HeaderMap::new();
        if matches!(self, AuthError::Unauthenticated) {
            h.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"shoal\""));
        }
        h
    }
}

impl IntoResponse for AuthError {
    fn into_response(self) -> Response {
        let body = ErrorBody { code: self.code().into(), message: self.to_string() };
        (self.status(), self.headers(), axum::Json(body)).into_response()
    }
}

/// The token of an `Authorization: Bearer <token>` header; `Err` for an `Authorization`
/// header of another form.
pub fn bearer(headers: &HeaderMap) -> Result<Option<&str>, AuthError> {
    let Some(v) = headers.get(header::AUTHORIZATION) else { return Ok(None) };
    let bad = || AuthError::Forbidden("the Authorization header is not \"Bearer <token>\"".into());
    let v = v.to_str().map_err(|_| bad())?;
    let (scheme, token) = v.split_once(' ').ok_or_else(bad)?;
    let token = token.trim();
    if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() {
        return Err(bad());
    }
    Ok(Some(token))
}

impl Authorizer {
    /// Lets everyone in.
    pub fn open() -> Authorizer {
        Authorizer { inner: None }
    }

    pub fn is_open(&self) -> bool {
        self.inner.is_none()
    }

    /// Whether `caller`, sending `headers`, may use a protected endpoint.
    pub fn authorize(&self, caller: &Caller, headers: &HeaderMap) -> Result<Grant, AuthError> {
        let token = bearer(headers)?;
        let grant = Grant { bearer: token.map(str::to_owned) };
        let Some(inner) = &self.inner else { return Ok(grant) };
        if let Some(id) = &caller.identity
            && inner.identities.contains(id)
        {
            return Ok(grant);
        }
        match (token, &inner.tokens) {
            (Some(t), Some(file)) if file.allows(t) => Ok(grant),
            (Some(_), _) => Err(AuthError::Forbidden("the bearer token is not allowed".into())),
            (None, _) => match &caller.identity {
                Some(id) => Err(AuthError::Forbidden(format!("client certificate {id} is not allowed"))),
                None => Err(AuthError::Unauthenticated),
            },
        }
    }
}

impl TokenFile {
    fn allows(&self, token: &str) -> bool {
        let hash: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if state.checked.elapsed() >= RELOAD_CHECK {
            state.checked = Instant::now();
            self.reload(&mut state);
        }
        state.hashes.contains(&hash)
    }

    fn reload(&self, state: &mut TokenState) {
        let stamp = match std::fs::metadata(&self.path) {
            Ok(m) => (m.modified().ok(), m.len()),
            Err(e) => {
                tracing::warn!(path = %self.path.display(), "tokens file unreadable, keeping the tokens last read: {e}");
                return;
            }
        };
        if stamp == state.stamp {
            return;
        }
        match read_tokens(&self.path) {
            Ok((hashes, stamp)) => {
                tracing::info!(path = %self.path.display(), tokens = hashes.len(), "tokens file reloaded");
                state.hashes = hashes;
                state.stamp = stamp;
            }
            Err(e) => {
                tracing::warn!(path = %self.path.display(), "tokens file unreadable, keeping the tokens last read: {e}")
            }
        }
    }
}

/// The bearer token a node presents to another (the swarm to its trackers): the first token
/// line of a file, re-read when the file changes (checked at most every [`RELOAD_CHECK`]).
pub struct TokenSource {
    path: PathBuf,
    /// A sync lock held for a copy of the token, or a re-read of the small file; never
    /// across an `.await`.
    state: Mutex<(String, Stamp, Instant)>,
}

impl std::fmt::Debug for TokenSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenSource").field("path", &self.path).finish_non_exhaustive()
    }
}

impl TokenSource {
    /// Reads the token; errors name the file.
    pub fn load(path: &Path) -> Result<TokenSource, String> {
        let (token, stamp) = read_first_token(path).map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(TokenSource { path: path.to_path_buf(), state: Mutex::new((token, stamp, Instant::now())) })
    }

    /// The current token.
    pub fn get(&self) -> String {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if state.2.elapsed() >= RELOAD_CHECK {
            state.2 = Instant::now();
            let changed = std::fs::metadata(&self.path).is_ok_and(|m| (m.modified().ok(), m.len()) != state.1);
            if changed {
                match read_first_token(&self.path) {
                    Ok((t, stamp)) => (state.0, state.1) = (t, stamp),
                    Err(e) => {
                        tracing::warn!(path = %self.path.display(), "token file unreadable, keeping the token: {e}")
                    }
                }
            }
        }
        state.0.clone()
    }
}

fn read_first_token(path: &Path) -> std::io::Result<(String, Stamp)> {
    let meta = std::fs::metadata(path)?;
    if meta.len() > MAX_TOKENS_FILE {
        return Err(std::io::Error::other(format!("larger than {MAX_TOKENS_FILE} bytes")));
    }
    let text = std::fs::read_to_string(path)?;
    let token = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with('#'))
        .ok_or_else(|| std::io::Error::other("holds no token"))?;
    Ok((token.to_owned(), (meta.modified().ok(), meta.len())))
}

type Stamp = (Option<SystemTime>, u64);

/// The hashes of the tokens in `path`, and the file's stamp.
fn read_tokens(path: &Path) -> std::io::Result<(HashSet<[u8; 32]>, Stamp)> {
    let meta = std::fs::metadata(path)?;
    if meta.len() > MAX_TOKENS_FILE {
        return Err(std::io::Error::other(format!("larger than {MAX_TOKENS_FILE} bytes")));
    }
    let text = std::fs::read_to_string(path)?;
    let hashes = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|t| Sha256::digest(t.as_bytes()).into())
        .collect();
    Ok((hashes, (meta.modified().ok(), meta.len())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caller(identity: Option<&str>) -> Caller {
        Caller { addr: "10.0.0.9:5000".parse().unwrap(), identity: identity.map(Identity::named) }
    }

    fn headers(auth: Option<&str>) -> HeaderMap {
        let mut h = HeaderMap::new();
        if let Some(a) = auth {
            h.insert(header::AUTHORIZATION, HeaderValue::from_str(a).unwrap());
        }
        h
    }

    fn tokens(dir: &Path, text: &str) -> PathBuf {
        let p = dir.join("tokens");
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn tokens_and_identities_decide() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = AuthConfig {
            tokens_file: Some(tokens(dir.path(), "# writers\nalpha\n\n  beta  \n")),
            identities: vec![Identity::named("spiffe://cluster/origin")],
        };
        let a = cfg.load().unwrap();
        let check = |id: Option<&str>, auth: Option<&str>| a.authorize(&caller(id), &headers(auth)).map(|g| g.bearer);
        // (identity, Authorization, answer)
        assert_eq!(check(None, Some("Bearer alpha")), Ok(Some("alpha".into())));
        assert_eq!(check(None, Some("bearer beta")), Ok(Some("beta".into())));
        assert_eq!(check(Some("spiffe://cluster/origin"), None), Ok(None));
        assert_eq!(check(Some("spiffe://cluster/origin"), Some("Bearer nope")), Ok(Some("nope".into())));
        assert_eq!(check(None, None), Err(AuthError::Unauthenticated));
        assert!(matches!(check(None, Some("Bearer gamma")), Err(AuthError::Forbidden(_))));
        assert!(
            matches!(check(None, Some("Bearer # writers")), Err(AuthError::Forbidden(_))),
            "comments are not tokens"
        );
        assert!(matches!(check(None, Some("Basic YTpi")), Err(AuthError::Forbidden(_))));
        assert!(matches!(check(None, Some("Bearer ")), Err(AuthError::Forbidden(_))));
        assert!(
            matches!(check(Some("spiffe://cluster/agent"), None), Err(AuthError::Forbidden(m)) if m.contains("agent"))
        );
    }

    #[test]
    fn open_when_nothing_is_configured() {
        let a = AuthConfig::default().load().unwrap();
        assert!(a.is_open());
        assert_eq!(a.authorize(&caller(None), &headers(None)), Ok(Grant::default()));
        assert_eq!(a.authorize(&caller(None), &headers(Some("Bearer x"))).unwrap().bearer.as_deref(), Some("x"));
    }

    #[test]
    fn bad_files_are_config_errors() {
        let dir = tempfile::tempdir().unwrap();
        let err =
            AuthConfig { tokens_file: Some(dir.path().join("missing")), ..AuthConfig::default() }.load().unwrap_err();
        assert!(err.contains("auth.tokens_file") && err.contains("missing"), "{err}");
        let empty = tokens(dir.path(), "# nothing yet\n\n");
        let err = AuthConfig { tokens_file: Some(empty), ..AuthConfig::default() }.load().unwrap_err();
        assert!(err.contains("holds no token"), "{err}");
        let err = AuthConfig { identities: vec![Identity::named("")], ..AuthConfig::default() }.load().unwrap_err();
        assert!(err.contains("auth.identities"), "{err}");
    }

    #[test]
    fn the_answers_are_error_bodies_with_a_challenge() {
        let r = AuthError::Unauthenticated.into_response();
        assert_eq!(r.status(), 401);
        assert_eq!(r.headers()[header::WWW_AUTHENTICATE], "Bearer realm=\"shoal\"");
        let r = AuthError::Forbidden("no".into()).into_response();
        assert_eq!(r.status(), 403);
        assert!(r.headers().get(header::WWW_AUTHENTICATE).is_none());
    }

    #[test]
    fn a_node_presents_the_first_token_of_its_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = tokens(dir.path(), "# the origins' token\n\n  first \nsecond\n");
        let t = TokenSource::load(&path).unwrap();
        assert_eq!(t.get(), "first");
        std::fs::write(&path, "rotated\n").unwrap();
        t.state.lock().unwrap().2 -= RELOAD_CHECK;
        assert_eq!(t.get(), "rotated");
        let err = TokenSource::load(&tokens(dir.path(), "# none\n")).unwrap_err();
        assert!(err.contains("holds no token"), "{err}");
        assert!(TokenSource::load(&dir.path().join("missing")).is_err());
    }

    #[test]
    fn a_changed_file_is_reloaded() {
        let dir = tempfile::tempdir().unwrap();
        let path = tokens(dir.path(), "old\n");
        let a = AuthConfig { tokens_file: Some(path.clone()), ..AuthConfig::default() }.load().unwrap();
        let ok = |t: &str| a.authorize(&caller(None), &headers(Some(&format!("Bearer {t}")))).is_ok();
        assert!(ok("old") && !ok("new"));
        std::fs::write(&path, "new\nnewer\n").unwrap();
        // Checked at most every RELOAD_CHECK: make the last check look that old.
        let backdate = |a: &Authorizer| {
            let file = a.inner.as_ref().unwrap().tokens.as_ref().unwrap();
            file.state.lock().unwrap().checked -= RELOAD_CHECK;
        };
        backdate(&a);
        assert!(ok("new") && ok("newer") && !ok("old"), "the rotated tokens apply");
        // A file that vanishes keeps the tokens last read.
        std::fs::remove_file(&path).unwrap();
        backdate(&a);
        assert!(ok("new"));
    }
}
