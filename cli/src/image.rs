//! Image references as people type them: `[REGISTRY/]NAME[:TAG|@DIGEST]`.
//!
//! The first path component is a registry host when it has a `.` or a `:` or is `localhost`
//! (Docker's rule); otherwise the origins' default upstream is meant. The name and the
//! reference are checked by `shoal_core::registry`, as the agent checks them.

use shoal_core::registry::{Reference, RegistryHost, RepoName};

/// A parsed image reference.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageRef {
    /// The registry host, if one was named.
    pub registry: Option<String>,
    pub name: String,
    /// A tag or a digest; `latest` when none was given.
    pub reference: String,
}

impl ImageRef {
    pub fn parse(s: &str) -> Result<ImageRef, String> {
        let (rest, registry) = match s.split_once('/') {
            Some((first, rest)) if first.contains('.') || first.contains(':') || first == "localhost" => {
                RegistryHost::parse(first).map_err(|e| format!("registry {first:?}: {e}"))?;
                (rest, Some(first.to_string()))
            }
            _ => (s, None),
        };
        let (name, reference) = if let Some((n, d)) = rest.split_once('@') {
            (n, d.to_string())
        } else {
            // A `:` after the last `/` starts the tag.
            let last = rest.rfind('/').map_or(0, |i| i + 1);
            match rest[last..].find(':') {
                Some(i) => (&rest[..last + i], rest[last + i + 1..].to_string()),
                None => (rest, "latest".to_string()),
            }
        };
        RepoName::parse(name).map_err(|e| format!("name {name:?}: {e}"))?;
        Reference::parse(&reference).map_err(|e| format!("reference {reference:?}: {e}"))?;
        Ok(ImageRef { registry, name: name.to_string(), reference })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(input: &str, want: Option<(Option<&str>, &str, &str)>) {
        let got = ImageRef::parse(input).ok();
        let want = want.map(|(r, n, t)| ImageRef {
            registry: r.map(str::to_string),
            name: n.to_string(),
            reference: t.to_string(),
        });
        assert_eq!(got, want, "{input}");
    }

    #[test]
    fn references() {
        check("team/app", Some((None, "team/app", "latest")));
        check("team/app:1.4", Some((None, "team/app", "1.4")));
        check("nginx", Some((None, "nginx", "latest")));
        check("registry.example:5000/team/app:v2", Some((Some("registry.example:5000"), "team/app", "v2")));
        check("localhost/app", Some((Some("localhost"), "app", "latest")));
        let d = format!("sha256:{}", "a".repeat(64));
        check(&format!("ghcr.io/o/app@{d}"), Some((Some("ghcr.io"), "o/app", d.as_str())));
        check("Team/App", None);
        check("team/app:", None);
        check("team/app@sha256:zz", None);
        check("", None);
    }
}
