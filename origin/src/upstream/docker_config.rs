//! Registry credentials from a Docker config JSON: the `.dockerconfigjson` key of a
//! `kubernetes.io/dockerconfigjson` Secret, or `~/.docker/config.json`.
//!
//! ```json
//! {"auths": {"registry.example.com": {"auth": "<base64 of user:password>"},
//!            "https://index.docker.io/v1/": {"username": "u", "password": "p"}}}
//! ```
//!
//! Keys are matched by host: a scheme and a path are dropped (`https://index.docker.io/v1/`
//! is `index.docker.io`), and Docker Hub's aliases all mean `docker.io`. An entry gives either
//! `auth` or `username` and `password`; other fields (`email`, `identitytoken`, credential
//! helpers) are ignored, as they need a client of their own.

use std::collections::HashMap;

use base64::Engine;

use super::Secret;

/// Why a Docker config cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum DockerConfigError {
    #[error("not a Docker config JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("auths.{registry}: {reason}")]
    Entry { registry: String, reason: &'static str },
}

/// The credentials of a Docker config, by normalised registry host.
#[derive(Clone, Debug, Default)]
pub struct DockerCredentials {
    by_host: HashMap<String, (String, Secret)>,
}

#[derive(serde::Deserialize)]
struct Raw {
    #[serde(default)]
    auths: HashMap<String, RawEntry>,
}

#[derive(serde::Deserialize)]
struct RawEntry {
    auth: Option<String>,
    username: Option<String>,
    password: Option<Secret>,
}

impl DockerCredentials {
    pub fn parse(text: &str) -> Result<DockerCredentials, DockerConfigError> {
        let raw: Raw = serde_json::from_str(text)?;
        let mut by_host = HashMap::new();
        for (registry, e) in raw.auths {
            let bad = |reason| DockerConfigError::Entry { registry: registry.clone(), reason };
            let creds = match (e.auth.filter(|a| !a.is_empty()), e.username, e.password) {
                (Some(auth), _, _) => {
                    let bytes = base64::engine::general_purpose::STANDARD
                        .decode(auth.trim())
                        .map_err(|_| bad("auth is not base64"))?;
                    let text = String::from_utf8(bytes).map_err(|_| bad("auth is not UTF-8"))?;
                    let (user, pass) = text.split_once(':').ok_or_else(|| bad("auth is not user:password"))?;
                    (user.to_owned(), Secret(pass.to_owned()))
                }
                (None, Some(user), Some(pass)) => (user, pass),
                // An entry with only an identity token or an email: nothing usable here.
                (None, _, _) => continue,
            };
            if creds.0.is_empty() {
                return Err(bad("the username is empty"));
            }
            by_host.insert(normalize(&registry), creds);
        }
        Ok(DockerCredentials { by_host })
    }

    /// The credentials for the first of `hosts` (as clients or URLs spell them) that has any.
    pub fn lookup<'a>(&self, hosts: impl IntoIterator<Item = &'a str>) -> Option<(String, Secret)> {
        hosts.into_iter().find_map(|h| self.by_host.get(&normalize(h)).cloned())
    }

    pub fn is_empty(&self) -> bool {
        self.by_host.is_empty()
    }
}

/// `https://Index.Docker.io/v1/` -> `docker.io`; `reg.example:5000/x` -> `reg.example:5000`.
fn normalize(key: &str) -> String {
    let key = key.trim();
    let key = key.strip_prefix("https://").or_else(|| key.strip_prefix("http://")).unwrap_or(key);
    let host = key.split('/').next().unwrap_or("").to_ascii_lowercase();
    match host.as_str() {
        "index.docker.io" | "registry-1.docker.io" | "registry.hub.docker.com" => "docker.io".to_owned(),
        _ => host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn creds(c: &DockerCredentials, host: &str) -> Option<(String, String)> {
        c.lookup([host]).map(|(u, p)| (u, p.0))
    }

    #[test]
    fn auth_and_username_password_entries() {
        // base64("robot$ci:pa:ss") — a password may hold colons.
        let text = r#"{"auths": {
            "https://index.docker.io/v1/": {"auth": "cm9ib3QkY2k6cGE6c3M="},
            "Registry.Example.com:5000": {"username": "u", "password": "p", "email": "x@y"},
            "ghcr.io": {"identitytoken": "t"}
        }, "credsStore": "desktop"}"#;
        let c = DockerCredentials::parse(text).unwrap();
        let some = |u: &str, p: &str| Some((u.to_owned(), p.to_owned()));
        assert_eq!(creds(&c, "docker.io"), some("robot$ci", "pa:ss"));
        assert_eq!(creds(&c, "registry-1.docker.io"), some("robot$ci", "pa:ss"));
        assert_eq!(creds(&c, "https://registry-1.docker.io"), some("robot$ci", "pa:ss"));
        assert_eq!(creds(&c, "registry.example.com:5000"), some("u", "p"));
        assert_eq!(creds(&c, "registry.example.com"), None, "the port is part of the host");
        assert_eq!(creds(&c, "ghcr.io"), None, "an identity token alone is not used");
        assert_eq!(c.lookup(["nothing.example", "registry.example.com:5000"]).map(|x| x.0), Some("u".into()));
        assert!(!format!("{c:?}").contains("pa:ss"), "passwords are not printed: {c:?}");
    }

    #[test]
    fn bad_configs_say_why() {
        let err = |t: &str| DockerCredentials::parse(t).unwrap_err().to_string();
        assert!(err("{").contains("not a Docker config JSON"));
        assert!(err(r#"{"auths": {"r.io": {"auth": "!!"}}}"#).contains("auths.r.io: auth is not base64"));
        // base64("nocolon")
        assert!(err(r#"{"auths": {"r.io": {"auth": "bm9jb2xvbg=="}}}"#).contains("not user:password"));
        // base64(":p")
        assert!(err(r#"{"auths": {"r.io": {"auth": "OnA="}}}"#).contains("username is empty"));
        assert!(DockerCredentials::parse("{}").unwrap().is_empty());
    }
}
