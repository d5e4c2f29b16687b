//! Loading a service's typed YAML configuration.
//!
//! Precedence, lowest to highest: the type's documented `Default`, then the YAML file, then
//! the few command-line flags (each with an environment twin) that the binary applies after
//! loading. Unknown keys are errors (every config type is `deny_unknown_fields`): a mistyped
//! Helm value fails loudly instead of being ignored. Loading never binds a port, so
//! `--check-config` and a bad config both exit before any listener exists.
//!
//! [`load_resolving`] also accepts an `origins` entry whose `peer` is a `host:port` name, as a
//! Kubernetes Service gives it, and puts the address it resolves to in its place before the
//! typed parse. That happens once, at startup. With `--check-config` a name is only checked
//! for its form, because names often resolve only where the service runs.

use std::net::{Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

/// Exit code for a bad configuration (BSD `EX_CONFIG`); `--check-config` exits 0 or this.
pub const EX_CONFIG: i32 = 64;

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("invalid config{}: {source}", path.as_ref().map(|p| format!(" in {}", p.display())).unwrap_or_default())]
    Parse { path: Option<PathBuf>, source: serde_yaml::Error },
    #[error("invalid config: {0}")]
    Invalid(String),
    #[error("cannot resolve origin peer {name:?}: {reason}")]
    Resolve { name: String, reason: String },
}

/// What [`load_resolving`] does with an origin peer given as a `host:port` name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PeerNames {
    /// Look the name up (getaddrinfo, so `/etc/resolv.conf` search domains apply) and use the
    /// first address. A name that does not resolve is a [`ConfigError::Resolve`].
    Lookup,
    /// Check the name's form only (`--check-config`). Each distinct name stands for its own
    /// address in the IPv6 documentation range `2001:db8::/32`, so checks that compare
    /// addresses still tell two names apart and see one name used twice.
    CheckOnly,
}

impl PeerNames {
    /// What a binary does with names: [`PeerNames::CheckOnly`] under `--check-config`, else
    /// [`PeerNames::Lookup`].
    pub fn for_check_config(check_config: bool) -> PeerNames {
        if check_config { PeerNames::CheckOnly } else { PeerNames::Lookup }
    }
}

/// Parses YAML text into a config; an empty document gives the defaults.
pub fn parse<T: DeserializeOwned>(text: &str) -> Result<T, ConfigError> {
    let text = if text.trim().is_empty() { "{}" } else { text };
    serde_yaml::from_str(text).map_err(|source| ConfigError::Parse { path: None, source })
}

/// Reads and parses a config file; `None` gives the embedded defaults.
pub fn load<T: DeserializeOwned>(path: Option<&Path>) -> Result<T, ConfigError> {
    load_with(path, parse)
}

/// Reads the file at `path` (none: empty text) and parses it with `parse_text`, naming the
/// file in a parse error.
fn load_with<T>(
    path: Option<&Path>,
    parse_text: impl FnOnce(&str) -> Result<T, ConfigError>,
) -> Result<T, ConfigError> {
    let Some(path) = path else { return parse_text("") };
    let text =
        std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
    parse_text(&text).map_err(|e| match e {
        ConfigError::Parse { source, .. } => ConfigError::Parse { path: Some(path.to_path_buf()), source },
        other => other,
    })
}

/// Like [`load`], but an `origins` entry's `peer` may also be `host:port` (for example
/// `shoal-origin-0.shoal.svc:7801`), resolved as `names` says. A file without such a name is
/// parsed exactly as [`load`] parses it.
pub fn load_resolving<T: DeserializeOwned>(path: Option<&Path>, names: PeerNames) -> Result<T, ConfigError> {
    load_with(path, |text| parse_resolving(text, names, &mut lookup_host))
}

/// [`load_resolving`] on text, with the name lookup passed in.
pub fn parse_resolving<T: DeserializeOwned>(
    text: &str,
    names: PeerNames,
    lookup: &mut dyn FnMut(&str) -> std::io::Result<Vec<SocketAddr>>,
) -> Result<T, ConfigError> {
    let mut doc: serde_yaml::Value = parse(text)?;
    if !resolve_origin_peers(&mut doc, names, lookup)? {
        // Nothing replaced: parse the text itself, so errors keep their line numbers.
        return parse(text);
    }
    serde_yaml::from_value(doc).map_err(|source| ConfigError::Parse { path: None, source })
}

/// Replaces every `origins[*].peer` that is a `host:port` name by an address. Returns whether
/// anything was replaced. Entries of any other shape are left for the typed parse to judge.
fn resolve_origin_peers(
    doc: &mut serde_yaml::Value,
    names: PeerNames,
    lookup: &mut dyn FnMut(&str) -> std::io::Result<Vec<SocketAddr>>,
) -> Result<bool, ConfigError> {
    let Some(origins) = doc.get_mut("origins").and_then(|o| o.as_sequence_mut()) else { return Ok(false) };
    // The distinct names in order of first use; a name's stand-in address is its position.
    let mut seen: Vec<String> = Vec::new();
    for entry in origins {
        let Some(peer) = entry.get_mut("peer") else { continue };
        let Some(name) = peer.as_str().filter(|p| p.parse::<SocketAddr>().is_err()).map(str::to_owned) else {
            continue;
        };
        let resolve_err = |reason: String| ConfigError::Resolve { name: name.clone(), reason };
        let port = check_host_port(&name).map_err(resolve_err)?;
        let idx = match seen.iter().position(|n| *n == name) {
            Some(i) => i,
            None => {
                seen.push(name.clone());
                seen.len() - 1
            }
        };
        let addr = match names {
            PeerNames::Lookup => lookup(&name)
                .map_err(|e| resolve_err(e.to_string()))?
                .into_iter()
                .next()
                .ok_or_else(|| resolve_err("the name has no address".into()))?,
            PeerNames::CheckOnly => {
                let n = u16::try_from(idx + 1).map_err(|_| resolve_err("more than 65535 origin names".into()))?;
                SocketAddr::from((Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, n), port))
            }
        };
        *peer = serde_yaml::Value::String(addr.to_string());
    }
    Ok(!seen.is_empty())
}

/// Checks that `name` is `host:port` with a DNS host name and a port, and returns the port.
fn check_host_port(name: &str) -> Result<u16, String> {
    let (host, port) = name.rsplit_once(':').ok_or("expected host:port or ip:port")?;
    let port: u16 = port.parse().map_err(|_| format!("bad port {port:?}"))?;
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    };
    let host = host.strip_suffix('.').unwrap_or(host);
    if host.is_empty() || host.len() > 253 || !host.split('.').all(label_ok) {
        return Err(format!("{host:?} is not a host name"));
    }
    Ok(port)
}

/// The system resolver, as [`PeerNames::Lookup`] uses it.
fn lookup_host(name: &str) -> std::io::Result<Vec<SocketAddr>> {
    std::net::ToSocketAddrs::to_socket_addrs(name).map(Iterator::collect)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize, Debug, PartialEq)]
    #[serde(deny_unknown_fields, default)]
    struct Cfg {
        port: u16,
        name: String,
    }
    impl Default for Cfg {
        fn default() -> Self {
            Cfg { port: 7, name: "x".into() }
        }
    }

    #[test]
    fn empty_gives_defaults() {
        assert_eq!(parse::<Cfg>("").unwrap(), Cfg::default());
        assert_eq!(load::<Cfg>(None).unwrap(), Cfg::default());
    }

    #[test]
    fn partial_overrides() {
        assert_eq!(parse::<Cfg>("port: 9").unwrap(), Cfg { port: 9, name: "x".into() });
    }

    #[test]
    fn unknown_key_rejected_with_its_name() {
        let e = parse::<Cfg>("prot: 9").unwrap_err().to_string();
        assert!(e.contains("unknown field `prot`"), "{e}");
    }

    #[test]
    fn missing_file_is_a_read_error() {
        let e = load::<Cfg>(Some(Path::new("/nonexistent/x.yaml"))).unwrap_err();
        assert!(matches!(e, ConfigError::Read { .. }));
    }

    #[derive(serde::Deserialize, Debug, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Origin {
        id: String,
        peer: SocketAddr,
    }

    #[derive(serde::Deserialize, Debug, Default, PartialEq)]
    #[serde(deny_unknown_fields, default)]
    struct WithOrigins {
        origins: Vec<Origin>,
    }

    /// Parses `yaml` with a lookup that knows `a.svc` (10.0.0.1) and `b.svc` (two addresses).
    fn resolving(yaml: &str, names: PeerNames) -> Result<Vec<String>, String> {
        let mut lookup = |name: &str| -> std::io::Result<Vec<SocketAddr>> {
            let (host, port) = name.rsplit_once(':').unwrap();
            let port: u16 = port.parse().unwrap();
            match host {
                "a.svc" => Ok(vec![SocketAddr::from(([10, 0, 0, 1], port))]),
                "b.svc" => Ok(vec![SocketAddr::from(([10, 0, 0, 2], port)), SocketAddr::from(([10, 0, 0, 3], port))]),
                "empty.svc" => Ok(vec![]),
                _ => Err(std::io::Error::other("no such host")),
            }
        };
        let cfg: WithOrigins = parse_resolving(yaml, names, &mut lookup).map_err(|e| e.to_string())?;
        Ok(cfg.origins.iter().map(|o| format!("{}={}", o.id, o.peer)).collect())
    }

    fn two(a: &str, b: &str) -> String {
        format!("origins:\n- {{ id: o0, peer: '{a}' }}\n- {{ id: o1, peer: '{b}' }}\n")
    }

    #[test]
    fn origin_peer_names_are_looked_up() {
        let got = resolving(&two("a.svc:7801", "b.svc:7802"), PeerNames::Lookup).unwrap();
        assert_eq!(got, ["o0=10.0.0.1:7801", "o1=10.0.0.2:7802"]);
        let got = resolving(&two("10.9.9.9:1", "[fd00::1]:2"), PeerNames::Lookup).unwrap();
        assert_eq!(got, ["o0=10.9.9.9:1", "o1=[fd00::1]:2"]);
        assert_eq!(resolving("", PeerNames::Lookup).unwrap(), Vec::<String>::new());
    }

    #[test]
    fn check_only_gives_each_name_its_own_stand_in() {
        let got = resolving(&two("x.svc:7801", "y.svc:7801"), PeerNames::CheckOnly).unwrap();
        assert_eq!(got, ["o0=[2001:db8::1]:7801", "o1=[2001:db8::2]:7801"]);
        let got = resolving(&two("x.svc:7801", "x.svc:7801"), PeerNames::CheckOnly).unwrap();
        assert_eq!(got, ["o0=[2001:db8::1]:7801", "o1=[2001:db8::1]:7801"]);
    }

    #[test]
    fn bad_origin_peer_names() {
        for (peer, expect) in [
            ("nowhere.svc:7801", "no such host"),
            ("empty.svc:7801", "has no address"),
            ("a.svc", "expected host:port"),
            ("a.svc:http", "bad port"),
            ("a.svc:70000", "bad port"),
            ("a_b.svc:1", "not a host name"),
            ("-a.svc:1", "not a host name"),
            (":1", "not a host name"),
        ] {
            let err = resolving(&two(peer, "10.0.0.9:1"), PeerNames::Lookup).unwrap_err();
            assert!(err.contains(expect) && err.contains(peer), "{peer}: {err}");
        }
        // Without a lookup only the form is checked.
        assert!(resolving(&two("a_b.svc:1", "10.0.0.9:1"), PeerNames::CheckOnly).is_err());
        assert!(resolving(&two("nowhere.svc:1", "10.0.0.9:1"), PeerNames::CheckOnly).is_ok());
    }

    #[test]
    fn without_names_errors_keep_their_line() {
        let yaml = "origins:\n- { id: o0, peer: '10.0.0.1:1', weight: 2 }\n";
        let err = resolving(yaml, PeerNames::Lookup).unwrap_err();
        assert!(err.contains("unknown field `weight`") && err.contains("line 2"), "{err}");
    }
}
