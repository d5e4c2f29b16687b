//! Runtime wiring: the config files that make containerd, podman/skopeo/cri-o and dockerd pull
//! through the agent's Registry v2 API, generated as text by pure functions (the
//! `shoal-agent configure` command writes them).
//!
//! Every generated mirror keeps the real registry as the fallback, so a host whose agent is
//! down still pulls:
//!
//! - containerd: one `hosts.toml` per registry under its hosts directory, with
//!   `server = <upstream>` and the agent as a `pull`/`resolve` host tried first, plus a
//!   `_default/hosts.toml` that names only the agent (containerd then falls back to the
//!   registry named in the image reference). containerd reads these on every pull.
//! - podman, skopeo, cri-o (containers/image): one drop-in for `registries.conf.d` with a
//!   `[[registry]]` per registry and the agent as its `[[registry.mirror]]`. Read on every
//!   command.
//! - dockerd: `registry-mirrors` merged into `daemon.json`, every other key kept. dockerd only
//!   mirrors Docker Hub and reloads `registry-mirrors` on `SIGHUP`.
//!
//! Invariant: every value put into a generated file has been validated by [`Mirror::new`]
//! (host names, URLs), so the hand-written TOML never needs escaping beyond a plain quoted
//! string, and generating twice from the same inputs gives the same bytes.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The registry host that image references without a host name resolve to.
pub const DOCKER_HUB: &str = "docker.io";
/// Where Docker Hub's Registry v2 API actually answers.
pub const DOCKER_HUB_UPSTREAM: &str = "https://registry-1.docker.io";
/// The directory containerd's hosts config uses for registries without their own.
pub const CONTAINERD_DEFAULT_DIR: &str = "_default";

/// Why a mirror cannot be configured.
#[derive(Debug, thiserror::Error)]
pub enum ConfigureError {
    #[error("invalid agent address '{0}': expected host:port, optionally with http://")]
    Agent(String),
    #[error("invalid registry host '{0}': expected a host name with an optional :port")]
    Registry(String),
    #[error("invalid upstream '{0}': expected REGISTRY=http(s)://host[:port][/path]")]
    Upstream(String),
    #[error("upstream given for '{0}', which is not among the registries")]
    UpstreamWithoutRegistry(String),
    #[error("{path}: not valid JSON: {source}")]
    DaemonJson { path: PathBuf, source: serde_json::Error },
    #[error("{path}: expected a JSON object, and `registry-mirrors` a list of strings")]
    DaemonJsonShape { path: PathBuf },
}

/// One registry and where its pulls go when the agent cannot answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registry {
    /// The host name as image references spell it (`docker.io`, `ghcr.io`, `10.0.0.5:5000`).
    pub host: String,
    /// Its Registry v2 base URL, `http(s)://host[:port][/path]`, no trailing slash.
    pub upstream: String,
}

/// The agent and the registries it mirrors, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mirror {
    /// The agent's `host:port` (its `listen` address as clients reach it).
    pub agent: String,
    /// In the order given, without duplicates.
    pub registries: Vec<Registry>,
}

/// A file to write: where, and its whole content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileContent {
    pub path: PathBuf,
    pub contents: String,
}

impl Mirror {
    /// Validates the inputs. `upstreams` maps a registry host to its URL; a registry without
    /// one goes to `https://<host>`, or [`DOCKER_HUB_UPSTREAM`] for Docker Hub.
    pub fn new(agent: &str, registries: &[String], upstreams: &[(String, String)]) -> Result<Mirror, ConfigureError> {
        let agent_host = agent.strip_prefix("http://").unwrap_or(agent).trim_end_matches('/');
        if !valid_host_port(agent_host, true) {
            return Err(ConfigureError::Agent(agent.to_string()));
        }
        let mut map = BTreeMap::new();
        for (host, url) in upstreams {
            if !valid_host_port(host, false) {
                return Err(ConfigureError::Registry(host.clone()));
            }
            let url = url.trim_end_matches('/');
            if !valid_url(url) {
                return Err(ConfigureError::Upstream(format!("{host}={url}")));
            }
            map.insert(host.as_str(), url.to_string());
        }
        let mut out: Vec<Registry> = Vec::new();
        for host in registries {
            if !valid_host_port(host, false) || host == CONTAINERD_DEFAULT_DIR {
                return Err(ConfigureError::Registry(host.clone()));
            }
            if out.iter().any(|r| &r.host == host) {
                continue;
            }
            let upstream = match map.get(host.as_str()) {
                Some(u) => u.clone(),
                None if host == DOCKER_HUB => DOCKER_HUB_UPSTREAM.to_string(),
                None => format!("https://{host}"),
            };
            out.push(Registry { host: host.clone(), upstream });
        }
        if let Some(host) = map.keys().find(|h| !out.iter().any(|r| r.host == **h)) {
            return Err(ConfigureError::UpstreamWithoutRegistry((*host).to_string()));
        }
        Ok(Mirror { agent: agent_host.to_string(), registries: out })
    }

    /// containerd: `<dir>/<registry>/hosts.toml` for each registry, then
    /// `<dir>/_default/hosts.toml`.
    pub fn containerd_files(&self, hosts_dir: &Path) -> Vec<FileContent> {
        let mut files: Vec<FileContent> = self
            .registries
            .iter()
            .map(|r| FileContent {
                path: hosts_dir.join(&r.host).join("hosts.toml"),
                contents: containerd_hosts_toml(Some(&r.upstream), &self.agent),
            })
            .collect();
        files.push(FileContent {
            path: hosts_dir.join(CONTAINERD_DEFAULT_DIR).join("hosts.toml"),
            contents: containerd_hosts_toml(None, &self.agent),
        });
        files
    }

    /// containers/image (podman, skopeo, cri-o): one `registries.conf` drop-in.
    pub fn registries_conf(&self) -> String {
        let mut s = String::from(HEADER);
        for r in &self.registries {
            let (location, insecure) = location(&r.upstream);
            s.push_str(&format!("\n[[registry]]\nprefix = \"{}\"\nlocation = \"{location}\"\n", r.host));
            if insecure {
                s.push_str("insecure = true\n");
            }
            s.push_str(&format!("\n[[registry.mirror]]\nlocation = \"{}\"\ninsecure = true\n", self.agent));
        }
        s
    }

    /// dockerd: `existing` (the current `daemon.json`, if any) with `http://<agent>` added to
    /// `registry-mirrors` once; every other key and mirror is kept as it was.
    pub fn daemon_json(&self, path: &Path, existing: Option<&str>) -> Result<String, ConfigureError> {
        let shape = || ConfigureError::DaemonJsonShape { path: path.to_path_buf() };
        let mut root = match existing.map(str::trim) {
            None | Some("") => serde_json::Value::Object(serde_json::Map::new()),
            Some(text) => serde_json::from_str(text)
                .map_err(|source| ConfigureError::DaemonJson { path: path.to_path_buf(), source })?,
        };
        let obj = root.as_object_mut().ok_or_else(shape)?;
        let mirrors = obj.entry("registry-mirrors").or_insert_with(|| serde_json::Value::Array(Vec::new()));
        let list = mirrors.as_array_mut().ok_or_else(shape)?;
        if list.iter().any(|m| !m.is_string()) {
            return Err(shape());
        }
        let url = format!("http://{}", self.agent);
        if !list.iter().any(|m| m.as_str().map(|s| s.trim_end_matches('/')) == Some(url.as_str())) {
            list.push(serde_json::Value::String(url));
        }
        let mut text = serde_json::to_string_pretty(&root)
            .map_err(|source| ConfigureError::DaemonJson { path: path.to_path_buf(), source })?;
        text.push('\n');
        Ok(text)
    }
}

const HEADER: &str = "# Written by `shoal-agent configure`: pulls go to the Shoal agent first and to the\n\
                      # registry itself when the agent does not answer.\n";

/// One containerd `hosts.toml`: with `server` for a named registry, without it for
/// `_default` (containerd then uses the host from the image reference).
pub fn containerd_hosts_toml(server: Option<&str>, agent: &str) -> String {
    let mut s = String::from(HEADER);
    if let Some(server) = server {
        s.push_str(&format!("server = \"{server}\"\n"));
    }
    s.push_str(&format!("\n[host.\"http://{agent}\"]\n  capabilities = [\"pull\", \"resolve\"]\n"));
    s
}

/// Whether a containerd `config.toml` sets the CRI plugin's registry `config_path` (1.x
/// `io.containerd.grpc.v1.cri`, 2.x `io.containerd.cri.v1.images`). `None` if it does not
/// parse as TOML.
pub fn containerd_config_path_set(config_toml: &str) -> Option<bool> {
    let doc: toml::Table = config_toml.parse().ok()?;
    let plugins = doc.get("plugins").and_then(|p| p.as_table());
    let set = ["io.containerd.grpc.v1.cri", "io.containerd.cri.v1.images"].iter().any(|name| {
        plugins
            .and_then(|p| p.get(*name))
            .and_then(|c| c.get("registry"))
            .and_then(|r| r.get("config_path"))
            .and_then(|v| v.as_str())
            .is_some_and(|v| !v.is_empty())
    });
    Some(set)
}

/// The `config.toml` lines that make containerd's CRI plugin (what the kubelet uses) read
/// `hosts_dir`. `ctr` needs `--hosts-dir` instead.
pub fn containerd_config_path_hint(hosts_dir: &Path) -> String {
    format!("[plugins.\"io.containerd.grpc.v1.cri\".registry]\n  config_path = \"{}\"\n", hosts_dir.display())
}

/// `registries.conf` wants `host[:port][/path]`; an `http://` upstream is marked insecure.
fn location(upstream: &str) -> (&str, bool) {
    match upstream.strip_prefix("http://") {
        Some(rest) => (rest, true),
        None => (upstream.strip_prefix("https://").unwrap_or(upstream), false),
    }
}

/// `host[:port]` with DNS or IPv4 characters (IPv6 literals are not supported). The port is
/// required when `need_port`.
fn valid_host_port(s: &str, need_port: bool) -> bool {
    let (host, port) = match s.rsplit_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (s, None),
    };
    let host_ok = !host.is_empty()
        && host.len() <= 253
        && host.chars().all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-' || c == '_')
        && !host.starts_with(['.', '-']);
    let port_ok = match port {
        Some(p) => p.parse::<u16>().is_ok_and(|n| n > 0),
        None => !need_port,
    };
    host_ok && port_ok
}

/// `http(s)://host[:port][/path]` with plain path characters.
fn valid_url(s: &str) -> bool {
    let Some(rest) = s.strip_prefix("https://").or_else(|| s.strip_prefix("http://")) else {
        return false;
    };
    let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
    valid_host_port(host, false)
        && path.chars().all(|c| c.is_ascii_alphanumeric() || "-._~/".contains(c))
        && !path.split('/').any(|seg| seg == "..")
}

/// Writes `contents` to `path` through a temporary file in the same directory and a rename,
/// so a runtime never reads half a file. Returns `false` (and writes nothing) if the file
/// already holds exactly `contents`.
pub fn write_atomic(path: &Path, contents: &str) -> std::io::Result<bool> {
    if std::fs::read(path).is_ok_and(|old| old == contents.as_bytes()) {
        return Ok(false);
    }
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = dir.join(format!(".{name}.shoal-tmp.{}", std::process::id()));
    let res = (|| {
        std::fs::write(&tmp, contents)?;
        // Keep the mode of the file being replaced (daemon.json may be 0600).
        if let Ok(meta) = std::fs::metadata(path) {
            std::fs::set_permissions(&tmp, meta.permissions())?;
        }
        std::fs::File::open(&tmp)?.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if res.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    res.map(|()| true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mirror(registries: &[&str], upstreams: &[(&str, &str)]) -> Mirror {
        let regs: Vec<String> = registries.iter().map(|s| s.to_string()).collect();
        let ups: Vec<(String, String)> = upstreams.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect();
        Mirror::new("127.0.0.1:7700", &regs, &ups).unwrap()
    }

    fn parse(text: &str) -> toml::Table {
        text.parse().unwrap_or_else(|e| panic!("not TOML: {e}\n{text}"))
    }

    #[test]
    fn containerd_hosts_toml_exact_and_parses() {
        let m = mirror(&["docker.io", "127.0.0.1:5000"], &[("127.0.0.1:5000", "http://127.0.0.1:5000")]);
        let files = m.containerd_files(Path::new("/etc/containerd/certs.d"));
        let paths: Vec<_> = files.iter().map(|f| f.path.to_str().unwrap()).collect();
        assert_eq!(
            paths,
            [
                "/etc/containerd/certs.d/docker.io/hosts.toml",
                "/etc/containerd/certs.d/127.0.0.1:5000/hosts.toml",
                "/etc/containerd/certs.d/_default/hosts.toml",
            ]
        );
        let expect_hub = format!(
            "{HEADER}server = \"https://registry-1.docker.io\"\n\n[host.\"http://127.0.0.1:7700\"]\n  capabilities = [\"pull\", \"resolve\"]\n"
        );
        assert_eq!(files[0].contents, expect_hub);
        let expect_default =
            format!("{HEADER}\n[host.\"http://127.0.0.1:7700\"]\n  capabilities = [\"pull\", \"resolve\"]\n");
        assert_eq!(files[2].contents, expect_default);

        let t = parse(&files[1].contents);
        assert_eq!(t["server"].as_str(), Some("http://127.0.0.1:5000"));
        let caps = &t["host"]["http://127.0.0.1:7700"]["capabilities"];
        assert_eq!(caps.as_array().unwrap().len(), 2);
        let d = parse(&files[2].contents);
        assert!(d.get("server").is_none());
        assert!(d["host"].get("http://127.0.0.1:7700").is_some());
    }

    #[test]
    fn registries_conf_exact_and_parses() {
        let m = mirror(&["docker.io", "reg.local:5000"], &[("reg.local:5000", "http://reg.local:5000/")]);
        let text = m.registries_conf();
        let expect = format!(
            "{HEADER}\n[[registry]]\nprefix = \"docker.io\"\nlocation = \"registry-1.docker.io\"\n\n\
             [[registry.mirror]]\nlocation = \"127.0.0.1:7700\"\ninsecure = true\n\n\
             [[registry]]\nprefix = \"reg.local:5000\"\nlocation = \"reg.local:5000\"\ninsecure = true\n\n\
             [[registry.mirror]]\nlocation = \"127.0.0.1:7700\"\ninsecure = true\n"
        );
        assert_eq!(text, expect);
        let t = parse(&text);
        let regs = t["registry"].as_array().unwrap();
        assert_eq!(regs.len(), 2);
        assert_eq!(regs[1]["location"].as_str(), Some("reg.local:5000"));
        assert_eq!(regs[1]["mirror"][0]["location"].as_str(), Some("127.0.0.1:7700"));
        assert_eq!(regs[1]["mirror"][0]["insecure"].as_bool(), Some(true));
        assert!(regs[0].get("insecure").is_none());
    }

    #[test]
    fn daemon_json_merge_keeps_other_keys_and_is_idempotent() {
        let m = mirror(&["docker.io"], &[]);
        let p = Path::new("/etc/docker/daemon.json");
        let existing =
            r#"{"log-driver":"journald","registry-mirrors":["https://mirror.example"],"features":{"buildkit":true}}"#;
        let once = m.daemon_json(p, Some(existing)).unwrap();
        let v: serde_json::Value = serde_json::from_str(&once).unwrap();
        assert_eq!(v["log-driver"], "journald");
        assert_eq!(v["features"]["buildkit"], true);
        assert_eq!(v["registry-mirrors"], serde_json::json!(["https://mirror.example", "http://127.0.0.1:7700"]));
        assert_eq!(m.daemon_json(p, Some(&once)).unwrap(), once);

        assert_eq!(
            m.daemon_json(p, None).unwrap(),
            "{\n  \"registry-mirrors\": [\n    \"http://127.0.0.1:7700\"\n  ]\n}\n"
        );
        assert_eq!(m.daemon_json(p, Some("  \n")).unwrap(), m.daemon_json(p, None).unwrap());
    }

    #[test]
    fn daemon_json_rejects_what_it_cannot_merge() {
        let m = mirror(&["docker.io"], &[]);
        let p = Path::new("d.json");
        for bad in ["{", "[]", r#"{"registry-mirrors":"x"}"#, r#"{"registry-mirrors":[1]}"#] {
            assert!(m.daemon_json(p, Some(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn upstream_defaults_and_validation() {
        let m = mirror(&["docker.io", "ghcr.io", "docker.io"], &[]);
        assert_eq!(
            m.registries,
            [
                Registry { host: "docker.io".into(), upstream: DOCKER_HUB_UPSTREAM.into() },
                Registry { host: "ghcr.io".into(), upstream: "https://ghcr.io".into() },
            ]
        );
        let regs = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let ok = |agent: &str, r: &[&str], u: &[(&str, &str)]| {
            let ups: Vec<_> = u.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect();
            Mirror::new(agent, &regs(r), &ups).is_ok()
        };
        assert!(ok("http://10.0.0.1:7700/", &["docker.io"], &[]));
        assert!(!ok("10.0.0.1", &["docker.io"], &[]), "agent needs a port");
        assert!(!ok("a b:1", &["docker.io"], &[]));
        assert!(!ok("127.0.0.1:7700", &["docker.io/x"], &[]));
        assert!(!ok("127.0.0.1:7700", &["_default"], &[]));
        assert!(!ok("127.0.0.1:7700", &["reg\"x"], &[]));
        assert!(!ok("127.0.0.1:7700", &["docker.io"], &[("docker.io", "ftp://x")]));
        assert!(!ok("127.0.0.1:7700", &["docker.io"], &[("docker.io", "https://x/\"")]));
        assert!(!ok("127.0.0.1:7700", &["docker.io"], &[("ghcr.io", "https://ghcr.io")]));
        assert!(ok("127.0.0.1:7700", &["docker.io"], &[("docker.io", "https://mirror.gcr.io/v")]));
    }

    #[test]
    fn containerd_config_path_detection() {
        assert_eq!(containerd_config_path_set(""), Some(false));
        assert_eq!(containerd_config_path_set("version = 2\n"), Some(false));
        assert_eq!(containerd_config_path_set("not toml ["), None);
        let hint = containerd_config_path_hint(Path::new("/etc/containerd/certs.d"));
        assert_eq!(containerd_config_path_set(&format!("version = 2\n{hint}")), Some(true));
        let v2 = "[plugins.\"io.containerd.cri.v1.images\".registry]\nconfig_path = \"/etc/containerd/certs.d\"\n";
        assert_eq!(containerd_config_path_set(v2), Some(true));
    }

    #[test]
    fn write_atomic_writes_once_then_reports_unchanged() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a/b/hosts.toml");
        assert!(write_atomic(&p, "x = 1\n").unwrap());
        assert!(!write_atomic(&p, "x = 1\n").unwrap());
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "x = 1\n");
        assert!(write_atomic(&p, "x = 2\n").unwrap());
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "x = 2\n");
        let names: Vec<_> = std::fs::read_dir(p.parent().unwrap()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, ["hosts.toml"], "no temporary file left behind");
    }
}
