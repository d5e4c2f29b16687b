//! Runtime wiring: the config files that make containerd, podman/skopeo/cri-o and dockerd pull
//! through the agent's Registry v2 API, generated as text by pure functions (the
//! `shoal-agent configure` command writes them, and `--uninstall` takes them out again).
//!
//! Every generated mirror keeps the real registry as the fallback, so a host whose agent is
//! down still pulls:
//!
//! - containerd: one `hosts.toml` per registry under its hosts directory, with
//!   `server = <upstream>` and the agent as a `pull`/`resolve` host tried first (with a short
//!   `dial_timeout`, so a dead agent costs a pull milliseconds), plus a `_default/hosts.toml`
//!   that names only the agent (containerd then falls back to the registry named in the image
//!   reference). containerd reads these on every pull. A `hosts.toml` someone else wrote is
//!   never replaced: the agent's host goes in as a marked block before the file's own hosts
//!   ([`merge_hosts_toml`]), or the file is refused with the reason.
//! - podman, skopeo, cri-o (containers/image): one drop-in for `registries.conf.d` with a
//!   `[[registry]]` per registry and the agent as its `[[registry.mirror]]`. Read on every
//!   command.
//! - dockerd: `registry-mirrors` merged into `daemon.json`, every other key kept. dockerd only
//!   mirrors Docker Hub and reloads `registry-mirrors` on `SIGHUP`.
//!
//! Invariant: every value put into a generated file has been validated by [`Mirror::new`]
//! (host names, URLs), so the hand-written TOML never needs escaping beyond a plain quoted
//! string, and generating twice from the same inputs gives the same bytes. Whatever Shoal
//! writes is marked ([`HEADER`] for a whole file, [`BEGIN`]/[`END`] around a merged block),
//! and uninstalling removes exactly the marked parts.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The registry host that image references without a host name resolve to.
pub const DOCKER_HUB: &str = "docker.io";
/// Where Docker Hub's Registry v2 API actually answers.
pub const DOCKER_HUB_UPSTREAM: &str = "https://registry-1.docker.io";
/// The directory containerd's hosts config uses for registries without their own.
pub const CONTAINERD_DEFAULT_DIR: &str = "_default";
/// How long containerd waits to connect to the agent before it tries the next host. The agent
/// is on the node (loopback or the node's own IP), so a live one connects in well under this.
pub const AGENT_DIAL_TIMEOUT: &str = "500ms";

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
    #[error("{path} was not written by shoal-agent and cannot be merged into ({reason}); left as it is")]
    HostsTomlMerge { path: PathBuf, reason: String },
    #[error("reading {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
}

impl ConfigureError {
    /// Whether the input was at fault (exit 64) rather than the file system (exit 1).
    pub fn is_usage(&self) -> bool {
        !matches!(self, ConfigureError::Read { .. })
    }
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
    /// `agent_ip`, when given, replaces the host of `agent` (the chart passes the node's IP,
    /// which may be IPv6, from the environment).
    pub fn new(
        agent: &str,
        agent_ip: Option<std::net::IpAddr>,
        registries: &[String],
        upstreams: &[(String, String)],
    ) -> Result<Mirror, ConfigureError> {
        let agent_host = agent.strip_prefix("http://").unwrap_or(agent).trim_end_matches('/');
        if !valid_host_port(agent_host, true) {
            return Err(ConfigureError::Agent(agent.to_string()));
        }
        let agent_host = match (agent_ip, split_host_port(agent_host)) {
            (Some(ip), Some((_, Some(port)))) => std::net::SocketAddr::new(ip, port.parse().unwrap_or(0)).to_string(),
            _ => agent_host.to_string(),
        };
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
        Ok(Mirror { agent: agent_host, registries: out })
    }

    /// containerd: the files to write, `<dir>/<registry>/hosts.toml` for each registry, then
    /// `<dir>/_default/hosts.toml`, each merged into the file already there
    /// ([`merge_hosts_toml`]). Fails without writing anything if one cannot be merged.
    pub fn containerd_install(&self, hosts_dir: &Path) -> Result<Vec<FileContent>, ConfigureError> {
        let mut out = Vec::new();
        for f in self.containerd_files(hosts_dir) {
            let existing = match std::fs::read_to_string(&f.path) {
                Ok(t) => Some(t),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                Err(source) => return Err(ConfigureError::Read { path: f.path, source }),
            };
            let contents = match existing {
                Some(old) => merge_hosts_toml(&f.path, &old, &f.contents, &self.agent)?,
                None => f.contents,
            };
            out.push(FileContent { path: f.path, contents });
        }
        Ok(out)
    }

    /// containerd: `<dir>/<registry>/hosts.toml` for each registry, then
    /// `<dir>/_default/hosts.toml`, as Shoal writes them where there is no file yet.
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

    /// dockerd: `existing` with `http://<agent>` taken out of `registry-mirrors` (and the key
    /// gone if that leaves it empty); every other key and mirror is kept.
    pub fn daemon_json_without(&self, path: &Path, existing: &str) -> Result<String, ConfigureError> {
        let shape = || ConfigureError::DaemonJsonShape { path: path.to_path_buf() };
        let mut root: serde_json::Value = serde_json::from_str(existing)
            .map_err(|source| ConfigureError::DaemonJson { path: path.to_path_buf(), source })?;
        let obj = root.as_object_mut().ok_or_else(shape)?;
        let url = format!("http://{}", self.agent);
        if let Some(mirrors) = obj.get_mut("registry-mirrors") {
            let list = mirrors.as_array_mut().ok_or_else(shape)?;
            list.retain(|m| m.as_str().map(|s| s.trim_end_matches('/')) != Some(url.as_str()));
            if list.is_empty() {
                obj.remove("registry-mirrors");
            }
        }
        let mut text = serde_json::to_string_pretty(&root)
            .map_err(|source| ConfigureError::DaemonJson { path: path.to_path_buf(), source })?;
        text.push('\n');
        Ok(text)
    }
}

/// The first line of every file Shoal writes whole; `--uninstall` removes such files.
pub const HEADER: &str = "# Written by `shoal-agent configure`: pulls go to the Shoal agent first and to the\n\
                          # registry itself when the agent does not answer.\n";
/// Opens the agent's block merged into a `hosts.toml` Shoal did not write.
pub const BEGIN: &str =
    "# >>> shoal-agent configure: the Shoal agent, tried first (`--uninstall` removes this block)\n";
/// Closes that block.
pub const END: &str = "# <<< shoal-agent configure\n";

/// One containerd `hosts.toml`: with `server` for a named registry, without it for
/// `_default` (containerd then uses the host from the image reference).
pub fn containerd_hosts_toml(server: Option<&str>, agent: &str) -> String {
    let mut s = String::from(HEADER);
    if let Some(server) = server {
        s.push_str(&format!("server = \"{server}\"\n"));
    }
    s.push('\n');
    s.push_str(&agent_host_block(agent));
    s
}

/// The agent as a containerd host entry, between [`BEGIN`] and [`END`].
fn agent_host_block(agent: &str) -> String {
    format!(
        "{BEGIN}[host.\"http://{agent}\"]\n  capabilities = [\"pull\", \"resolve\"]\n  dial_timeout = \"{AGENT_DIAL_TIMEOUT}\"\n{END}"
    )
}

/// The `hosts.toml` to write over `existing`: `generated` if Shoal wrote the file (it starts
/// with [`HEADER`]); otherwise `existing` with the agent's block put before its first table,
/// so containerd tries the agent before the file's own hosts and keeps its `server`, CA,
/// client certificates and headers. A block from an earlier run is replaced. Refuses (and the
/// file stays as it is) when `existing` is not TOML, already names the agent outside the
/// block, or would read differently with the block in.
pub fn merge_hosts_toml(path: &Path, existing: &str, generated: &str, agent: &str) -> Result<String, ConfigureError> {
    let refuse = |reason: String| ConfigureError::HostsTomlMerge { path: path.to_path_buf(), reason };
    if existing.starts_with(HEADER) {
        return Ok(generated.to_string());
    }
    let theirs = strip_block(existing).ok_or_else(|| refuse("an unterminated shoal-agent block".into()))?;
    let before: toml::Table =
        theirs.parse().map_err(|e: toml::de::Error| refuse(format!("not TOML: {}", e.message())))?;
    let key = format!("http://{agent}");
    if before.get("host").and_then(|h| h.get(&key)).is_some() {
        return Err(refuse(format!("it already has [host.\"{key}\"]")));
    }
    // Top-level keys (server, ca, ...) come before the first table header in TOML, and the
    // agent's table must come before the file's own hosts: the first header is the place.
    let at = theirs
        .match_indices('\n')
        .map(|(i, _)| i + 1)
        .chain(std::iter::once(0))
        .filter(|&i| theirs[i..].trim_start_matches([' ', '\t']).starts_with('['))
        .min();
    let block = agent_host_block(agent);
    let merged = match at {
        Some(i) => format!("{}{block}\n{}", &theirs[..i], &theirs[i..]),
        None if theirs.is_empty() || theirs.ends_with('\n') => format!("{theirs}{block}"),
        None => format!("{theirs}\n{block}"),
    };
    // The file must mean what it meant, plus the agent's host.
    let mut after: toml::Table =
        merged.parse().map_err(|e: toml::de::Error| refuse(format!("merging breaks it: {}", e.message())))?;
    let ours = after.get_mut("host").and_then(|h| h.as_table_mut()).and_then(|h| h.remove(&key));
    if after.get("host").and_then(|h| h.as_table()).is_some_and(|h| h.is_empty()) && before.get("host").is_none() {
        after.remove("host");
    }
    if ours.is_none() || after != before {
        return Err(refuse("the agent's block cannot be placed without changing the file's own settings".into()));
    }
    Ok(merged)
}

/// `text` without a [`BEGIN`]..[`END`] block (and the blank line after it); `None` if a
/// block is opened and never closed.
fn strip_block(text: &str) -> Option<String> {
    let Some(start) = text.find(BEGIN) else {
        return Some(text.to_string());
    };
    let end = start + text[start..].find(END)? + END.len();
    let rest = text[end..].strip_prefix('\n').unwrap_or(&text[end..]);
    Some(format!("{}{rest}", &text[..start]))
}

/// What uninstalling did to one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Uninstall {
    /// Shoal wrote the whole file: removed.
    Removed(PathBuf),
    /// Shoal's block was taken out; the rest of the file is as it was.
    Unmerged(PathBuf),
}

/// What Shoal's part of `text` leaves behind: `None` to remove the file (Shoal wrote all of
/// it), `Some(rest)` otherwise (`rest == text` when Shoal wrote none of it).
pub fn uninstall_text(text: &str) -> Option<String> {
    if text.starts_with(HEADER) {
        return None;
    }
    Some(strip_block(text).unwrap_or_else(|| text.to_string()))
}

/// Takes Shoal's files and blocks out of every `<hosts_dir>/*/hosts.toml`, and removes a
/// registry directory left empty; files Shoal did not write are not touched.
pub fn containerd_uninstall(hosts_dir: &Path) -> std::io::Result<Vec<Uninstall>> {
    let mut done = Vec::new();
    let entries = match std::fs::read_dir(hosts_dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(done),
        Err(e) => return Err(e),
    };
    let mut dirs: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.is_dir()).collect();
    dirs.sort();
    for dir in dirs {
        let path = dir.join("hosts.toml");
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        match uninstall_text(&text) {
            None => {
                std::fs::remove_file(&path)?;
                // Only if nothing else (the user's CA files) lives there.
                let _ = std::fs::remove_dir(&dir);
                done.push(Uninstall::Removed(path));
            }
            Some(rest) if rest != text => {
                write_atomic(&path, &rest)?;
                done.push(Uninstall::Unmerged(path));
            }
            Some(_) => {}
        }
    }
    Ok(done)
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
/// `hosts_dir`: containerd 2.x (config `version = 3`) names the plugin
/// `io.containerd.cri.v1.images`, 1.x (`version = 2`) `io.containerd.grpc.v1.cri`. Both are
/// given when `config_toml` does not say which. `ctr` needs `--hosts-dir` instead.
pub fn containerd_config_path_hint(hosts_dir: &Path, config_toml: Option<&str>) -> String {
    let version = config_toml
        .and_then(|t| t.parse::<toml::Table>().ok())
        .and_then(|t| t.get("version").and_then(|v| v.as_integer()));
    let v1 = format!("[plugins.\"io.containerd.grpc.v1.cri\".registry]\n  config_path = \"{}\"\n", hosts_dir.display());
    let v2 =
        format!("[plugins.\"io.containerd.cri.v1.images\".registry]\n  config_path = \"{}\"\n", hosts_dir.display());
    match version {
        Some(3) => v2,
        Some(2) => v1,
        _ => format!("# containerd 2.x (config version = 3):\n{v2}# containerd 1.x (config version = 2):\n{v1}"),
    }
}

/// `registries.conf` wants `host[:port][/path]`; an `http://` upstream is marked insecure.
fn location(upstream: &str) -> (&str, bool) {
    match upstream.strip_prefix("http://") {
        Some(rest) => (rest, true),
        None => (upstream.strip_prefix("https://").unwrap_or(upstream), false),
    }
}

/// `host[:port]` or `[ipv6]:port` split at the port's colon; `None` for an unclosed bracket
/// or text after it that is not `:port`.
fn split_host_port(s: &str) -> Option<(&str, Option<&str>)> {
    if let Some(rest) = s.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        return match after {
            "" => Some((host, None)),
            _ => Some((host, Some(after.strip_prefix(':')?))),
        };
    }
    Some(match s.rsplit_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (s, None),
    })
}

/// `host[:port]` with DNS or IPv4 characters, or `[ipv6]:port` with an IPv6 literal in
/// brackets. The port is required when `need_port`.
fn valid_host_port(s: &str, need_port: bool) -> bool {
    let Some((host, port)) = split_host_port(s) else {
        return false;
    };
    let host_ok = if s.starts_with('[') {
        host.parse::<std::net::Ipv6Addr>().is_ok()
    } else {
        !host.is_empty()
            && host.len() <= 253
            && host.chars().all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-' || c == '_')
            && !host.starts_with(['.', '-'])
    };
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
        Mirror::new("127.0.0.1:7700", None, &regs, &ups).unwrap()
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
        let host = format!(
            "{BEGIN}[host.\"http://127.0.0.1:7700\"]\n  capabilities = [\"pull\", \"resolve\"]\n  dial_timeout = \"500ms\"\n{END}"
        );
        let expect_hub = format!("{HEADER}server = \"https://registry-1.docker.io\"\n\n{host}");
        assert_eq!(files[0].contents, expect_hub);
        let expect_default = format!("{HEADER}\n{host}");
        assert_eq!(files[2].contents, expect_default);

        let t = parse(&files[1].contents);
        assert_eq!(t["server"].as_str(), Some("http://127.0.0.1:5000"));
        let caps = &t["host"]["http://127.0.0.1:7700"]["capabilities"];
        assert_eq!(caps.as_array().unwrap().len(), 2);
        assert_eq!(t["host"]["http://127.0.0.1:7700"]["dial_timeout"].as_str(), Some(AGENT_DIAL_TIMEOUT));
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
    fn daemon_json_uninstall_takes_only_the_agent_out() {
        let m = mirror(&["docker.io"], &[]);
        let p = Path::new("/etc/docker/daemon.json");
        let before = r#"{"log-driver":"journald","registry-mirrors":["https://mirror.example"]}"#;
        let with = m.daemon_json(p, Some(before)).unwrap();
        let v: serde_json::Value = serde_json::from_str(&m.daemon_json_without(p, &with).unwrap()).unwrap();
        assert_eq!(v, serde_json::from_str::<serde_json::Value>(before).unwrap());
        let only = m.daemon_json(p, None).unwrap();
        assert_eq!(m.daemon_json_without(p, &only).unwrap(), "{}\n");
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
            Mirror::new(agent, None, &regs(r), &ups).is_ok()
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
        let dir = Path::new("/etc/containerd/certs.d");
        for version in [2, 3] {
            let config = format!("version = {version}\n");
            let hint = containerd_config_path_hint(dir, Some(&config));
            assert_eq!(hint.matches("config_path").count(), 1, "{hint}");
            assert_eq!(containerd_config_path_set(&format!("{config}{hint}")), Some(true), "{hint}");
        }
        assert!(containerd_config_path_hint(dir, Some("version = 3\n")).contains("io.containerd.cri.v1.images"));
        assert!(containerd_config_path_hint(dir, Some("version = 2\n")).contains("io.containerd.grpc.v1.cri"));
        let both = containerd_config_path_hint(dir, None);
        assert!(both.contains("io.containerd.cri.v1.images") && both.contains("io.containerd.grpc.v1.cri"), "{both}");
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

    #[test]
    fn ipv6_literals_are_accepted_in_brackets() {
        let regs = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let ok = |agent: &str, r: &[&str], u: &[(&str, &str)]| {
            let ups: Vec<_> = u.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect();
            Mirror::new(agent, None, &regs(r), &ups)
        };
        let m = ok("[::1]:7700", &["[fd00::5]:5000"], &[("[fd00::5]:5000", "http://[fd00::5]:5000/")]).unwrap();
        assert_eq!(m.agent, "[::1]:7700");
        assert_eq!(m.registries[0].upstream, "http://[fd00::5]:5000");
        assert!(ok("[fd00::5]", &["docker.io"], &[]).is_err(), "agent needs a port");
        assert!(ok("127.0.0.1:7700", &["[fd00::5]"], &[]).is_ok());
        for bad in ["::1:7700", "[::1:7700", "[::1]7700", "[not-v6]:7700", "[::1]:0"] {
            assert!(ok(bad, &["docker.io"], &[]).is_err(), "{bad}");
        }
        let t = parse(&m.containerd_files(Path::new("/d"))[0].contents);
        assert!(t["host"].get("http://[::1]:7700").is_some());

        // The node's IP from the environment replaces --agent's host, IPv6 in brackets.
        let v6 = Mirror::new("0.0.0.0:7700", Some("fd00::10".parse().unwrap()), &regs(&["docker.io"]), &[]).unwrap();
        assert_eq!(v6.agent, "[fd00::10]:7700");
        let v4 = Mirror::new("0.0.0.0:7700", Some("10.0.0.7".parse().unwrap()), &regs(&["docker.io"]), &[]).unwrap();
        assert_eq!(v4.agent, "10.0.0.7:7700");
    }

    const USERS: &str = "# Our registry's own settings.\nserver = \"https://reg.example\"\nca = \"/etc/certs/reg.pem\"\n\n\
                         [host.\"https://mirror.example\"]\n  capabilities = [\"pull\"]\n  ca = \"/etc/certs/mirror.pem\"\n\
                         [host.\"https://mirror.example\".header]\n  Authorization = [\"Basic dTpw\"]\n";

    #[test]
    fn a_users_hosts_toml_is_merged_into_not_replaced() {
        let m = mirror(&["reg.example"], &[]);
        let p = Path::new("/d/reg.example/hosts.toml");
        let generated = &m.containerd_files(Path::new("/d"))[0].contents;
        let merged = merge_hosts_toml(p, USERS, generated, &m.agent).unwrap();
        // Everything the user wrote is still there, byte for byte, and the agent comes first.
        assert_eq!(strip_block(&merged).unwrap(), USERS);
        let t = parse(&merged);
        assert_eq!(t["server"].as_str(), Some("https://reg.example"));
        assert_eq!(t["ca"].as_str(), Some("/etc/certs/reg.pem"));
        assert_eq!(t["host"]["https://mirror.example"]["header"]["Authorization"][0].as_str(), Some("Basic dTpw"));
        let agent_at = merged.find("[host.\"http://127.0.0.1:7700\"]").unwrap();
        assert!(agent_at < merged.find("[host.\"https://mirror.example\"]").unwrap(), "agent first:\n{merged}");
        // Again: the same bytes; with another agent address: the block is replaced.
        assert_eq!(merge_hosts_toml(p, &merged, generated, &m.agent).unwrap(), merged);
        let other = merge_hosts_toml(p, &merged, generated, "127.0.0.1:7710").unwrap();
        assert!(other.contains("http://127.0.0.1:7710") && !other.contains("http://127.0.0.1:7700"), "{other}");
        // A file of only top-level keys gets the block at its end.
        let keys_only = "server = \"https://reg.example\"\n";
        let merged = merge_hosts_toml(p, keys_only, generated, &m.agent).unwrap();
        assert_eq!(strip_block(&merged).unwrap(), keys_only);
        assert!(parse(&merged)["host"].get("http://127.0.0.1:7700").is_some());
        // A file Shoal wrote is simply regenerated.
        assert_eq!(merge_hosts_toml(p, &containerd_hosts_toml(None, "x:1"), generated, &m.agent).unwrap(), *generated);
    }

    #[test]
    fn a_hosts_toml_that_cannot_be_merged_is_refused_with_the_reason() {
        let m = mirror(&["reg.example"], &[]);
        let p = Path::new("/d/reg.example/hosts.toml");
        let g = &m.containerd_files(Path::new("/d"))[0].contents;
        let reason = |existing: &str| merge_hosts_toml(p, existing, g, &m.agent).unwrap_err().to_string();
        assert!(reason("server = ").contains("not TOML"), "{}", reason("server = "));
        let mine = "[host.\"http://127.0.0.1:7700\"]\n  capabilities = [\"pull\"]\n";
        assert!(reason(mine).contains("already has [host.\"http://127.0.0.1:7700\"]"), "{}", reason(mine));
        // A line starting with '[' inside a multi-line string is not a table header.
        let tricky = "note = \"\"\"\n[host.\"x\"]\n\"\"\"\n";
        assert!(reason(tricky).contains("cannot be placed"), "{}", reason(tricky));
        assert!(reason(&format!("{BEGIN}[host.\"a\"]\n")).contains("unterminated"));
    }

    #[test]
    fn install_never_clobbers_and_uninstall_removes_only_what_shoal_wrote() {
        let dir = tempfile::tempdir().unwrap();
        let hosts = dir.path();
        let write = |rel: &str, text: &str| {
            let p = hosts.join(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, text).unwrap();
        };
        write("reg.example/hosts.toml", USERS);
        write("reg.example/ca.pem", "-----BEGIN CERTIFICATE-----\n");
        write("other.example/hosts.toml", "server = \"https://other.example\"\n");
        write("broken.example/hosts.toml", "server = \n");
        let m = mirror(&["docker.io", "reg.example"], &[]);
        for f in m.containerd_install(hosts).unwrap() {
            write_atomic(&f.path, &f.contents).unwrap();
        }
        let read = |rel: &str| std::fs::read_to_string(hosts.join(rel)).unwrap();
        assert!(read("docker.io/hosts.toml").starts_with(HEADER));
        assert!(read("_default/hosts.toml").starts_with(HEADER));
        assert_eq!(strip_block(&read("reg.example/hosts.toml")).unwrap(), USERS, "the user's file is kept");
        assert!(read("reg.example/hosts.toml").contains(BEGIN));
        assert_eq!(read("other.example/hosts.toml"), "server = \"https://other.example\"\n", "not mirrored: untouched");

        // A file that cannot be merged stops the whole install before anything is written.
        let broken = mirror(&["docker.io", "broken.example"], &[]);
        let err = broken.containerd_install(hosts).unwrap_err();
        assert!(matches!(err, ConfigureError::HostsTomlMerge { .. }) && err.is_usage(), "{err}");
        assert_eq!(read("broken.example/hosts.toml"), "server = \n");

        let mut done = containerd_uninstall(hosts).unwrap();
        done.sort_by(|a, b| format!("{a:?}").cmp(&format!("{b:?}")));
        assert_eq!(
            done,
            [
                Uninstall::Removed(hosts.join("_default/hosts.toml")),
                Uninstall::Removed(hosts.join("docker.io/hosts.toml")),
                Uninstall::Unmerged(hosts.join("reg.example/hosts.toml")),
            ]
        );
        assert!(!hosts.join("docker.io").exists() && !hosts.join("_default").exists(), "emptied dirs go");
        assert_eq!(read("reg.example/hosts.toml"), USERS, "the user's file is back as it was");
        assert!(hosts.join("reg.example/ca.pem").exists());
        assert_eq!(read("other.example/hosts.toml"), "server = \"https://other.example\"\n");
        assert_eq!(read("broken.example/hosts.toml"), "server = \n");
        assert_eq!(containerd_uninstall(hosts).unwrap(), [], "nothing left to remove");
    }
}
