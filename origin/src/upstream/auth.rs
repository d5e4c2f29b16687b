//! Registry authentication for pull-through: parsing `WWW-Authenticate` challenges and
//! caching bearer tokens.
//!
//! The Docker token flow: a request without a token gets 401 with
//! `WWW-Authenticate: Bearer realm="https://auth.example/token",service="registry.example",scope="repository:x:pull"`;
//! the client asks `realm?service=...&scope=...` (with Basic credentials if it has any) for a
//! JSON `{"token": ...}` (or `access_token`) valid for `expires_in` seconds (60 if absent), and
//! retries with `Authorization: Bearer <token>`.
//!
//! [`parse_challenges`] is pure and never panics: quoted values may hold commas and escaped
//! quotes, and several challenges may share one header. Tokens are cached per scope until
//! shortly before they expire ([`TokenCache`]), and never longer than [`MAX_TOKEN_LIFETIME`]
//! whatever `expires_in` says; its lock is a sync `Mutex` held only for map operations, never
//! across an `.await`, and nothing that can panic runs under it.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

/// A token is dropped this long before its announced expiry, so a request never starts with a
/// token about to lapse. Hard-coded.
pub const EXPIRY_MARGIN: Duration = Duration::from_secs(10);
/// Lifetime of a token whose response gives no `expires_in`, as the token spec says.
pub const DEFAULT_EXPIRES_IN: u64 = 60;
/// Most tokens cached per upstream. Hard-coded: past it, the cache is cleared.
const MAX_TOKENS: usize = 1024;
/// Longest a token is kept, whatever its `expires_in` says (a token endpoint may send any
/// number). Hard-coded.
pub const MAX_TOKEN_LIFETIME: Duration = Duration::from_secs(24 * 3600);

/// One authentication challenge.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Challenge {
    Basic { realm: Option<String> },
    Bearer { realm: String, service: Option<String>, scope: Option<String> },
}

/// Parses every challenge in a `WWW-Authenticate` value, skipping schemes other than Basic
/// and Bearer and Bearer challenges without a realm.
pub fn parse_challenges(header: &str) -> Vec<Challenge> {
    let mut out = Vec::new();
    let mut cur: Option<(String, HashMap<String, String>)> = None;
    let mut p = Parser { s: header.as_bytes(), i: 0 };
    loop {
        p.skip_ws_commas();
        if p.done() {
            break;
        }
        let Some(tok) = p.token() else {
            // Not a token: skip one byte so the loop always advances.
            p.i += 1;
            continue;
        };
        p.skip_ws();
        if p.peek() == Some(b'=') {
            // A parameter of the current challenge.
            p.i += 1;
            p.skip_ws();
            let value = if p.peek() == Some(b'"') { p.quoted() } else { p.token().unwrap_or_default() };
            if let Some((_, params)) = cur.as_mut() {
                params.entry(tok.to_ascii_lowercase()).or_insert(value);
            }
        } else {
            // A new scheme.
            if let Some(c) = cur.take() {
                out.extend(finish(c));
            }
            cur = Some((tok.to_ascii_lowercase(), HashMap::new()));
        }
    }
    if let Some(c) = cur.take() {
        out.extend(finish(c));
    }
    out
}

fn finish((scheme, mut params): (String, HashMap<String, String>)) -> Option<Challenge> {
    match scheme.as_str() {
        "basic" => Some(Challenge::Basic { realm: params.remove("realm") }),
        "bearer" => Some(Challenge::Bearer {
            realm: params.remove("realm").filter(|r| !r.is_empty())?,
            service: params.remove("service"),
            scope: params.remove("scope"),
        }),
        _ => None,
    }
}

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
}

impl Parser<'_> {
    fn done(&self) -> bool {
        self.i >= self.s.len()
    }

    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }

    fn skip_ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t')) {
            self.i += 1;
        }
    }

    fn skip_ws_commas(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b',')) {
            self.i += 1;
        }
    }

    /// An RFC 7230 token (plus `/` and `:` that some servers leave unquoted in values).
    fn token(&mut self) -> Option<String> {
        let start = self.i;
        while let Some(c) = self.peek() {
            let ok = c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~/:".contains(&c);
            if !ok {
                break;
            }
            self.i += 1;
        }
        (self.i > start).then(|| String::from_utf8_lossy(&self.s[start..self.i]).into_owned())
    }

    /// A quoted string starting at `"`; `\x` stands for `x`. An unterminated string runs to the
    /// end of the header.
    fn quoted(&mut self) -> String {
        self.i += 1;
        let mut out = Vec::new();
        while let Some(c) = self.peek() {
            self.i += 1;
            match c {
                b'"' => break,
                b'\\' => {
                    if let Some(n) = self.peek() {
                        out.push(n);
                        self.i += 1;
                    }
                }
                _ => out.push(c),
            }
        }
        String::from_utf8_lossy(&out).into_owned()
    }
}

/// The scope a pull of `name` needs, as registries write it in their challenges.
pub fn pull_scope(name: &str) -> String {
    format!("repository:{name}:pull")
}

/// A token endpoint's answer.
#[derive(Debug, serde::Deserialize)]
pub struct TokenResponse {
    #[serde(default)]
    pub token: Option<String>,
    #[serde(default)]
    pub access_token: Option<String>,
    #[serde(default)]
    pub expires_in: Option<u64>,
}

impl TokenResponse {
    /// The token (`token` wins over `access_token`) and how long it may be used.
    pub fn into_token(self) -> Option<(String, Duration)> {
        let t = self.token.filter(|t| !t.is_empty()).or(self.access_token.filter(|t| !t.is_empty()))?;
        let secs = self.expires_in.filter(|s| *s > 0).unwrap_or(DEFAULT_EXPIRES_IN);
        Some((t, Duration::from_secs(secs).min(MAX_TOKEN_LIFETIME).saturating_sub(EXPIRY_MARGIN)))
    }
}

/// Bearer tokens of one upstream by scope, each until its expiry minus [`EXPIRY_MARGIN`].
#[derive(Default)]
pub struct TokenCache {
    tokens: Mutex<HashMap<String, (String, Instant)>>,
}

impl TokenCache {
    /// The map; a panic elsewhere while it was held leaves it usable (every entry is whole).
    fn lock(&self) -> MutexGuard<'_, HashMap<String, (String, Instant)>> {
        self.tokens.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A token for `scope` that has not expired.
    pub fn get(&self, scope: &str) -> Option<String> {
        let now = Instant::now();
        self.lock().get(scope).filter(|(_, until)| now < *until).map(|(t, _)| t.clone())
    }

    /// Keeps `token` for `scope` during `valid` (at most [`MAX_TOKEN_LIFETIME`]); a zero
    /// `valid` is not kept.
    pub fn put(&self, scope: &str, token: String, valid: Duration) {
        let valid = valid.min(MAX_TOKEN_LIFETIME);
        if valid.is_zero() {
            return;
        }
        // Computed before the lock is taken, and unable to overflow.
        let Some(until) = Instant::now().checked_add(valid) else { return };
        let mut tokens = self.lock();
        if tokens.len() >= MAX_TOKENS {
            tokens.clear();
        }
        tokens.insert(scope.to_owned(), (token, until));
    }

    /// Forgets the token for `scope` (the upstream refused it).
    pub fn remove(&self, scope: &str) {
        self.lock().remove(scope);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bearer(realm: &str, service: Option<&str>, scope: Option<&str>) -> Challenge {
        Challenge::Bearer { realm: realm.into(), service: service.map(Into::into), scope: scope.map(Into::into) }
    }

    fn check(header: &str, expect: &[Challenge]) {
        assert_eq!(parse_challenges(header), expect, "{header}");
    }

    #[test]
    fn docker_hub_challenge() {
        check(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/nginx:pull""#,
            &[bearer(
                "https://auth.docker.io/token",
                Some("registry.docker.io"),
                Some("repository:library/nginx:pull"),
            )],
        );
    }

    #[test]
    fn quoted_values_with_commas_and_escapes() {
        check(
            r#"Bearer realm="https://a/token",scope="repository:x:pull,push",service="s""#,
            &[bearer("https://a/token", Some("s"), Some("repository:x:pull,push"))],
        );
        check(r#"Bearer realm="https://a/t\"q\\", service=s"#, &[bearer("https://a/t\"q\\", Some("s"), None)]);
        check(r#"Bearer realm="https://a/unterminated"#, &[bearer("https://a/unterminated", None, None)]);
    }

    #[test]
    fn case_spacing_and_unquoted_values() {
        check(
            "bearer  Realm = https://a:5001/auth ,  SERVICE=reg , scope=repository:a/b:pull",
            &[bearer("https://a:5001/auth", Some("reg"), Some("repository:a/b:pull"))],
        );
        check(r#"Basic realm="Registry Realm""#, &[Challenge::Basic { realm: Some("Registry Realm".into()) }]);
        check("Basic", &[Challenge::Basic { realm: None }]);
    }

    #[test]
    fn several_challenges_in_one_header() {
        check(
            r#"Basic realm="r", Bearer realm="https://t",service="s""#,
            &[Challenge::Basic { realm: Some("r".into()) }, bearer("https://t", Some("s"), None)],
        );
        check(r#"Negotiate, Bearer realm="https://t""#, &[bearer("https://t", None, None)]);
    }

    #[test]
    fn garbage_and_incomplete_challenges() {
        check("", &[]);
        check(",,,", &[]);
        check("Bearer", &[]);
        check(r#"Bearer realm="""#, &[]);
        check(r#"Bearer service="s""#, &[]);
        check("=== \"\" ;;; \u{e9}", &[]);
        check(r#"realm="x", Bearer realm="https://t""#, &[bearer("https://t", None, None)]);
        check(r#"Bearer realm="https://a", realm="https://b""#, &[bearer("https://a", None, None)]);
    }

    #[test]
    fn token_responses() {
        let parse = |json: &str| serde_json::from_str::<TokenResponse>(json).unwrap().into_token();
        assert_eq!(parse(r#"{"token":"t","expires_in":300}"#), Some(("t".into(), Duration::from_secs(290))));
        assert_eq!(parse(r#"{"access_token":"a"}"#), Some(("a".into(), Duration::from_secs(50))));
        assert_eq!(parse(r#"{"token":"","access_token":"a"}"#).map(|t| t.0), Some("a".into()));
        assert_eq!(parse(r#"{"token":"t","access_token":"a"}"#).map(|t| t.0), Some("t".into()));
        assert_eq!(parse(r#"{"token":"t","expires_in":5}"#), Some(("t".into(), Duration::ZERO)));
        assert_eq!(parse(r#"{"token":"t","expires_in":0}"#), Some(("t".into(), Duration::from_secs(50))));
        assert_eq!(parse(r#"{"expires_in":60}"#), None);
        // Any number a token endpoint sends is kept within a day.
        let huge = format!(r#"{{"token":"t","expires_in":{}}}"#, u64::MAX);
        assert_eq!(parse(&huge), Some(("t".into(), MAX_TOKEN_LIFETIME - EXPIRY_MARGIN)));
    }

    /// A lifetime past what `Instant` can hold panicked under the lock, poisoning it for
    /// every later request.
    #[tokio::test]
    async fn a_lifetime_past_the_clock_neither_panics_nor_poisons() {
        let cache = TokenCache::default();
        cache.put("repository:a:pull", "t".into(), Duration::MAX);
        assert_eq!(cache.get("repository:a:pull").as_deref(), Some("t"));
        cache.put("repository:b:pull", "u".into(), Duration::from_secs(u64::MAX));
        assert_eq!(cache.get("repository:b:pull").as_deref(), Some("u"));
    }

    #[tokio::test]
    async fn tokens_expire() {
        let cache = TokenCache::default();
        cache.put("repository:a:pull", "t1".into(), Duration::from_millis(300));
        cache.put("repository:b:pull", "t2".into(), Duration::ZERO);
        assert_eq!(cache.get("repository:a:pull").as_deref(), Some("t1"));
        assert_eq!(cache.get("repository:b:pull"), None, "a token valid for no time is not kept");
        assert_eq!(cache.get("repository:c:pull"), None);
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert_eq!(cache.get("repository:a:pull"), None, "expired");
        cache.put("repository:a:pull", "t3".into(), Duration::from_secs(50));
        assert_eq!(cache.get("repository:a:pull").as_deref(), Some("t3"));
        cache.remove("repository:a:pull");
        assert_eq!(cache.get("repository:a:pull"), None);
    }
}
