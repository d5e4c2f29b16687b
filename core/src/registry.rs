//! Pure parsing for the Registry v2 / OCI distribution read API: request paths
//! (`/v2/`, `/v2/<name>/manifests/<reference>`, `/v2/<name>/blobs/<digest>`), repository names,
//! tags, and `Range` headers. No I/O; the agent and the origin map the errors to HTTP.
//!
//! Invariant: a [`RepoName`] or [`Tag`] can only be made by a validating constructor, so a
//! value of either type is safe to put into a storage key: names match the OCI distribution
//! spec's name grammar (lowercase alphanumeric components joined by `.`, `_`, `__` or runs of
//! `-`, separated by single `/`), which has no `..`, no empty segment, no `%` and no backslash.
//! Paths are parsed raw (still percent-encoded), so an encoded slash (`%2F`) is never taken
//! for a separator: it is an invalid character.

use std::fmt;

use crate::{Digest, ParseDigestError};

/// Longest repository name accepted. Hard-coded: clients limit `host/name` to 255 characters.
pub const MAX_NAME_LEN: usize = 255;
/// Longest tag: the spec's tag grammar allows 128 characters.
pub const MAX_TAG_LEN: usize = 128;

/// A repository name such as `library/nginx`, validated against the spec's grammar.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RepoName(String);

/// A tag such as `v1.2.3`, validated against `[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Tag(String);

/// An upstream registry host as containerd names it in `?ns=`: `docker.io`, `ghcr.io`,
/// `registry.example:5000`. Lowercase DNS labels (or an IPv4 address) and an optional port;
/// no scheme, path, user info or brackets, so it can be matched against configuration and
/// logged safely.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RegistryHost(String);

/// Longest registry host accepted: a DNS name is at most 253 characters, plus a port.
pub const MAX_HOST_LEN: usize = 253 + 6;

/// What a manifest request names: a mutable tag or an immutable digest.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Reference {
    Tag(Tag),
    Digest(Digest),
}

/// A parsed request path of the read API.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Route {
    /// `/v2/` (or `/v2`): the version check.
    Base,
    /// `/v2/<name>/manifests/<reference>`.
    Manifest { name: RepoName, reference: Reference },
    /// `/v2/<name>/blobs/<digest>`.
    Blob { name: RepoName, digest: Digest },
}

/// Why a path is not a route of the read API, classified by the answer it gets.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    /// Not under `/v2/`, or no endpoint of that shape: 404.
    #[error("no such endpoint")]
    NotFound,
    /// An endpoint of the API that this server does not implement (push, catalog, tag
    /// listing, referrers): 405 `UNSUPPORTED`.
    #[error("{0} is not supported by this mirror")]
    Unsupported(&'static str),
    /// 400 `NAME_INVALID`.
    #[error("invalid repository name: {0}")]
    NameInvalid(String),
    /// A reference that is neither a tag nor a digest: 404 `MANIFEST_UNKNOWN`, as it can name
    /// no manifest.
    #[error("invalid tag: {0}")]
    TagInvalid(String),
    /// 400 `DIGEST_INVALID`.
    #[error("invalid digest: {0}")]
    DigestInvalid(#[from] ParseDigestError),
}

impl RepoName {
    /// Validates a repository name (raw, not percent-decoded).
    pub fn parse(s: &str) -> Result<RepoName, RouteError> {
        let invalid = |why: &str| RouteError::NameInvalid(format!("{:?}: {why}", truncate(s)));
        if s.is_empty() {
            return Err(invalid("empty"));
        }
        if s.len() > MAX_NAME_LEN {
            return Err(invalid(&format!("longer than {MAX_NAME_LEN} characters")));
        }
        for component in s.split('/') {
            check_component(component).map_err(invalid)?;
        }
        Ok(RepoName(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Tag {
    /// Validates a tag.
    pub fn parse(s: &str) -> Result<Tag, RouteError> {
        let invalid = |why: &str| RouteError::TagInvalid(format!("{:?}: {why}", truncate(s)));
        let b = s.as_bytes();
        let Some(&first) = b.first() else { return Err(invalid("empty")) };
        if b.len() > MAX_TAG_LEN {
            return Err(invalid(&format!("longer than {MAX_TAG_LEN} characters")));
        }
        if !(first.is_ascii_alphanumeric() || first == b'_') {
            return Err(invalid("must start with a letter, digit or `_`"));
        }
        if !b.iter().all(|&c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-')) {
            return Err(invalid("only letters, digits, `_`, `.` and `-` are allowed"));
        }
        Ok(Tag(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl RegistryHost {
    /// Validates a host with an optional `:port`. Letters are accepted in either case and
    /// kept lowercase, as hostnames are case-insensitive.
    pub fn parse(s: &str) -> Result<RegistryHost, RouteError> {
        let invalid = |why: &str| RouteError::NameInvalid(format!("registry host {:?}: {why}", truncate(s)));
        if s.is_empty() || s.len() > MAX_HOST_LEN {
            return Err(invalid("empty or too long"));
        }
        let (host, port) = match s.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (s, None),
        };
        if let Some(p) = port
            && (p.is_empty()
                || p.len() > 5
                || !p.bytes().all(|b| b.is_ascii_digit())
                || p.parse::<u32>().map_or(true, |n| n == 0 || n > 65_535))
        {
            return Err(invalid("port must be 1 to 65535"));
        }
        for label in host.split('.') {
            let b = label.as_bytes();
            if b.is_empty() || b.len() > 63 {
                return Err(invalid("empty or overlong label"));
            }
            if b[0] == b'-' || b[b.len() - 1] == b'-' {
                return Err(invalid("labels do not start or end with `-`"));
            }
            if !b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-') {
                return Err(invalid("only letters, digits, `-`, `.` and one `:port` are allowed"));
            }
        }
        Ok(RegistryHost(s.to_ascii_lowercase()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RegistryHost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> serde::Deserialize<'de> for RegistryHost {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        RegistryHost::parse(&s).map_err(serde::de::Error::custom)
    }
}

impl Reference {
    /// A digest if the string has a `:` (tags never do), a tag otherwise.
    pub fn parse(s: &str) -> Result<Reference, RouteError> {
        if s.contains(':') { Ok(Reference::Digest(s.parse()?)) } else { Ok(Reference::Tag(Tag::parse(s)?)) }
    }
}

impl fmt::Display for RepoName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Display for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reference::Tag(t) => t.fmt(f),
            Reference::Digest(d) => d.fmt(f),
        }
    }
}

/// At most 80 characters of untrusted input, for error messages.
fn truncate(s: &str) -> String {
    s.chars().take(80).collect()
}

/// One path component: `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`.
fn check_component(c: &str) -> Result<(), &'static str> {
    if c.is_empty() {
        return Err("empty path component");
    }
    if c == "." || c == ".." {
        return Err("`.` or `..` component");
    }
    let b = c.as_bytes();
    let alnum = |x: u8| x.is_ascii_lowercase() || x.is_ascii_digit();
    if !alnum(b[0]) || !alnum(b[b.len() - 1]) {
        return Err("components start and end with a lowercase letter or digit");
    }
    let mut i = 0;
    while i < b.len() {
        if alnum(b[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && !alnum(b[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        let ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|x| x == b'-');
        if !ok {
            return Err(if sep.bytes().all(|x| matches!(x, b'.' | b'_' | b'-')) {
                "separators are `.`, `_`, `__` or dashes"
            } else {
                "only lowercase letters, digits, `.`, `_`, `-` and `/` are allowed"
            });
        }
    }
    Ok(())
}

/// Parses a raw (percent-encoded) request path.
pub fn parse_route(path: &str) -> Result<Route, RouteError> {
    let rest = match path {
        "/v2" | "/v2/" => return Ok(Route::Base),
        _ => path.strip_prefix("/v2/").ok_or(RouteError::NotFound)?,
    };
    if rest == "_catalog" {
        return Err(RouteError::Unsupported("the catalog"));
    }
    let segs: Vec<&str> = rest.split('/').collect();
    let n = segs.len();
    if n >= 3 && segs[n - 2] == "tags" && segs[n - 1] == "list" {
        return Err(RouteError::Unsupported("tag listing"));
    }
    if segs.windows(2).any(|w| w == ["blobs", "uploads"]) {
        return Err(RouteError::Unsupported("pushing"));
    }
    if n >= 3 && segs[n - 2] == "referrers" {
        return Err(RouteError::Unsupported("the referrers API"));
    }
    if n < 3 {
        return Err(RouteError::NotFound);
    }
    let (kind, reference) = (segs[n - 2], segs[n - 1]);
    if kind != "manifests" && kind != "blobs" {
        return Err(RouteError::NotFound);
    }
    // The name is everything before the last two segments; it keeps its slashes.
    let name_len = rest.len() - kind.len() - reference.len() - 2;
    let name = RepoName::parse(&rest[..name_len])?;
    match kind {
        "manifests" => Ok(Route::Manifest { name, reference: Reference::parse(reference)? }),
        _ => Ok(Route::Blob { name, digest: reference.parse()? }),
    }
}

/// The outcome of a `Range` header against a blob of known length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ByteRange {
    /// No usable range: send the whole blob (200). Malformed and multi-range headers land
    /// here too, as RFC 9110 lets a server ignore them.
    Full,
    /// Send `[start, end)` (206 with `Content-Range: bytes start-(end-1)/len`).
    Partial { start: u64, end: u64 },
    /// A well-formed range that misses the blob: 416 with `Content-Range: bytes */len`.
    Unsatisfiable,
}

/// Interprets a `Range` header value (`bytes=a-b`, `bytes=a-`, `bytes=-n`) for a blob of
/// `len` bytes. An end past the blob is clamped to its last byte.
pub fn parse_range(header: &str, len: u64) -> ByteRange {
    let Some(spec) = header.trim().strip_prefix("bytes=") else { return ByteRange::Full };
    if spec.contains(',') {
        return ByteRange::Full;
    }
    let Some((a, b)) = spec.trim().split_once('-') else { return ByteRange::Full };
    let num = |s: &str| -> Option<u64> {
        if s.is_empty() || !s.bytes().all(|c| c.is_ascii_digit()) { None } else { s.parse().ok() }
    };
    match (a.is_empty(), b.is_empty()) {
        (true, true) => ByteRange::Full,
        // Suffix: the last `n` bytes.
        (true, false) => match num(b) {
            None => ByteRange::Full,
            Some(0) => ByteRange::Unsatisfiable,
            Some(_) if len == 0 => ByteRange::Unsatisfiable,
            Some(n) => ByteRange::Partial { start: len - n.min(len), end: len },
        },
        (false, _) => {
            let Some(start) = num(a) else { return ByteRange::Full };
            let last = if b.is_empty() {
                u64::MAX
            } else {
                match num(b) {
                    Some(x) => x,
                    None => return ByteRange::Full,
                }
            };
            if last < start {
                return ByteRange::Full;
            }
            if start >= len {
                return ByteRange::Unsatisfiable;
            }
            ByteRange::Partial { start, end: last.min(len - 1) + 1 }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX: &str = "ab5e8c0c9a1d6e5fbd3b0f0d9e1c2a3b4c5d6e7f8091a2b3c4d5e6f708192a3b";

    fn host(s: &str) -> Option<String> {
        RegistryHost::parse(s).ok().map(|h| h.to_string())
    }

    #[test]
    fn registry_hosts() {
        assert_eq!(host("docker.io").as_deref(), Some("docker.io"));
        assert_eq!(host("Registry.Example:5000").as_deref(), Some("registry.example:5000"));
        assert_eq!(host("127.0.0.1:5000").as_deref(), Some("127.0.0.1:5000"));
        assert_eq!(host("localhost").as_deref(), Some("localhost"));
        assert_eq!(host(""), None);
        assert_eq!(host("a..b"), None);
        assert_eq!(host("-a.io"), None);
        assert_eq!(host("a.io:"), None);
        assert_eq!(host("a.io:0"), None);
        assert_eq!(host("a.io:70000"), None);
        assert_eq!(host("a.io:80:80"), None);
        assert_eq!(host("https://a.io"), None);
        assert_eq!(host("a.io/x"), None);
        assert_eq!(host("user@a.io"), None);
        assert_eq!(host("[::1]:5000"), None);
        assert_eq!(host(&"a".repeat(64)), None);
    }

    /// Renders a parse result compactly so each test is one line.
    fn show(r: Result<Route, RouteError>) -> String {
        match r {
            Ok(Route::Base) => "base".into(),
            Ok(Route::Manifest { name, reference: Reference::Tag(t) }) => format!("manifest {name} tag {t}"),
            Ok(Route::Manifest { name, reference: Reference::Digest(d) }) => {
                format!("manifest {name} digest {}", &d.hex()[..4])
            }
            Ok(Route::Blob { name, digest }) => format!("blob {name} {}", &digest.hex()[..4]),
            Err(RouteError::NotFound) => "404".into(),
            Err(RouteError::Unsupported(_)) => "unsupported".into(),
            Err(RouteError::NameInvalid(_)) => "NAME_INVALID".into(),
            Err(RouteError::TagInvalid(_)) => "TAG_INVALID".into(),
            Err(RouteError::DigestInvalid(_)) => "DIGEST_INVALID".into(),
        }
    }

    fn check(path: &str, expect: &str) {
        assert_eq!(show(parse_route(path)), expect, "path {path:?}");
    }

    #[test]
    fn base() {
        check("/v2/", "base");
        check("/v2", "base");
        check("/v1/", "404");
        check("/", "404");
        check("", "404");
        check("/v2x/", "404");
    }

    #[test]
    fn manifests_by_tag() {
        check("/v2/nginx/manifests/latest", "manifest nginx tag latest");
        check("/v2/library/nginx/manifests/1.25", "manifest library/nginx tag 1.25");
        check("/v2/a/b/c/manifests/v1", "manifest a/b/c tag v1");
        check("/v2/a/b/c/d/e/manifests/_x", "manifest a/b/c/d/e tag _x");
        check("/v2/my.org/my-app__x/manifests/V1.0-rc_2", "manifest my.org/my-app__x tag V1.0-rc_2");
        check("/v2/a---b/manifests/t", "manifest a---b tag t");
        // Segments named like the endpoints are fine inside a name.
        check("/v2/blobs/manifests/latest", "manifest blobs tag latest");
        check("/v2/manifests/manifests/manifests", "manifest manifests tag manifests");
        check("/v2/a/blobs/x/manifests/t", "manifest a/blobs/x tag t");
    }

    #[test]
    fn manifests_and_blobs_by_digest() {
        check(&format!("/v2/library/nginx/manifests/sha256:{HEX}"), "manifest library/nginx digest ab5e");
        check(&format!("/v2/library/nginx/blobs/sha256:{HEX}"), "blob library/nginx ab5e");
        check(&format!("/v2/x/blobs/sha256:{HEX}"), "blob x ab5e");
    }

    #[test]
    fn bad_digests() {
        check("/v2/x/blobs/sha256:abc", "DIGEST_INVALID");
        check("/v2/x/blobs/latest", "DIGEST_INVALID");
        check("/v2/x/blobs/", "DIGEST_INVALID");
        check(&format!("/v2/x/blobs/sha512:{HEX}"), "DIGEST_INVALID");
        check(&format!("/v2/x/blobs/sha256:{}", HEX.to_uppercase()), "DIGEST_INVALID");
        check(&format!("/v2/x/blobs/sha256%3A{HEX}"), "DIGEST_INVALID");
        check("/v2/x/manifests/sha256:nothex", "DIGEST_INVALID");
        check("/v2/x/manifests/md5:abcd", "DIGEST_INVALID");
    }

    #[test]
    fn bad_tags() {
        check("/v2/x/manifests/", "TAG_INVALID");
        check("/v2/x/manifests/-x", "TAG_INVALID");
        check("/v2/x/manifests/.x", "TAG_INVALID");
        check("/v2/x/manifests/..", "TAG_INVALID");
        check("/v2/x/manifests/a%2Fb", "TAG_INVALID");
        check("/v2/x/manifests/a b", "TAG_INVALID");
        check(&format!("/v2/x/manifests/{}", "a".repeat(129)), "TAG_INVALID");
        check(&format!("/v2/x/manifests/{}", "a".repeat(128)), &format!("manifest x tag {}", "a".repeat(128)));
    }

    #[test]
    fn bad_names() {
        for name in [
            "Library/nginx",
            "library//nginx",
            "/library/nginx",
            "library/nginx/",
            "..",
            "../etc",
            "a/../b",
            "a/./b",
            ".",
            "a..b",
            "a.-b",
            "a___b",
            "-a",
            "a-",
            "a_",
            "_a",
            ".a",
            "a%2Fb",
            "a%2fb",
            "%2e%2e/x",
            "..%2F..%2Fetc",
            "a\\b",
            "a b",
            "a\0b",
            "a:b",
            "ü",
        ] {
            check(&format!("/v2/{name}/manifests/latest"), "NAME_INVALID");
            check(&format!("/v2/{name}/blobs/sha256:{HEX}"), "NAME_INVALID");
        }
        check(&format!("/v2/{}/manifests/t", "a".repeat(256)), "NAME_INVALID");
        assert!(RepoName::parse(&"a".repeat(255)).is_ok());
    }

    #[test]
    fn other_shapes() {
        check("/v2/_catalog", "unsupported");
        check("/v2/library/nginx/tags/list", "unsupported");
        check("/v2/library/nginx/blobs/uploads/", "unsupported");
        check("/v2/library/nginx/blobs/uploads/some-uuid", "unsupported");
        check(&format!("/v2/x/referrers/sha256:{HEX}"), "unsupported");
        check("/v2/nginx", "404");
        check("/v2/nginx/manifests", "404");
        check("/v2/nginx/latest/x", "404");
        check("/v2/library/nginx/manifests/latest/", "404");
        check("/v2/library/nginx/tags/x", "404");
        check("/v2/../../etc/passwd", "404");
        check("/v2/../manifests/x", "NAME_INVALID");
    }

    #[test]
    fn names_and_tags_directly() {
        assert_eq!(RepoName::parse("a/b").unwrap().as_str(), "a/b");
        assert!(RepoName::parse("").is_err());
        assert_eq!(Tag::parse("latest").unwrap().to_string(), "latest");
        assert!(Tag::parse("").is_err());
        assert_eq!(Reference::parse("v1").unwrap(), Reference::Tag(Tag::parse("v1").unwrap()));
        let d: Digest = format!("sha256:{HEX}").parse().unwrap();
        assert_eq!(Reference::parse(&d.to_string()).unwrap(), Reference::Digest(d));
    }

    fn range(h: &str, len: u64) -> ByteRange {
        parse_range(h, len)
    }

    #[test]
    fn ranges() {
        use ByteRange::*;
        assert_eq!(range("bytes=0-9", 100), Partial { start: 0, end: 10 });
        assert_eq!(range("bytes=10-", 100), Partial { start: 10, end: 100 });
        assert_eq!(range("bytes=90-200", 100), Partial { start: 90, end: 100 });
        assert_eq!(range("bytes=99-99", 100), Partial { start: 99, end: 100 });
        assert_eq!(range("bytes=-10", 100), Partial { start: 90, end: 100 });
        assert_eq!(range("bytes=-1000", 100), Partial { start: 0, end: 100 });
        assert_eq!(range(" bytes=1-2 ", 100), Partial { start: 1, end: 3 });
        assert_eq!(range("bytes=100-", 100), Unsatisfiable);
        assert_eq!(range("bytes=100-200", 100), Unsatisfiable);
        assert_eq!(range("bytes=-0", 100), Unsatisfiable);
        assert_eq!(range("bytes=0-", 0), Unsatisfiable);
        assert_eq!(range("bytes=-5", 0), Unsatisfiable);
        // Ignored: malformed, multi-range, other units.
        assert_eq!(range("bytes=5-1", 100), Full);
        assert_eq!(range("bytes=0-1,5-6", 100), Full);
        assert_eq!(range("items=0-1", 100), Full);
        assert_eq!(range("bytes=a-b", 100), Full);
        assert_eq!(range("bytes=-", 100), Full);
        assert_eq!(range("bytes=+1-2", 100), Full);
        assert_eq!(range("bytes=99999999999999999999999-", 100), Full);
        assert_eq!(range("", 100), Full);
    }
}
