//! A real upstream registry for pull-through tests: Debian's `docker-registry` (the
//! docker/distribution 2.8 server) with the filesystem storage driver in a temporary
//! directory, on a free 127.0.0.1 port, optionally behind htpasswd (Basic) or token (Bearer)
//! auth. Content goes in through its own push API over HTTP (monolithic blob upload, manifest
//! PUT), as `docker push` would put it.
//!
//! The process is killed and reaped on drop. A missing binary is an error with the install
//! line, not a skip: these tests must run wherever the suite runs.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use shoal_core::Digest;

/// Where Debian installs the registry.
pub const REGISTRY_BIN: &str = "/usr/bin/docker-registry";
/// How long the registry may take to answer `/v2/` after start.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// How the registry authenticates clients.
#[derive(Clone, Debug)]
pub enum RegistryAuth {
    Anonymous,
    /// `auth: htpasswd:` with one bcrypt line.
    Htpasswd {
        user: String,
        password: String,
    },
    /// `auth: token:`: JWTs from `realm`, signed by a key whose certificate is in the PEM
    /// bundle `root_cert_pem`.
    Token {
        realm: String,
        service: String,
        issuer: String,
        root_cert_pem: String,
    },
}

/// A running `docker-registry`.
pub struct RegistryServer {
    child: Child,
    /// `http://127.0.0.1:<port>`.
    pub url: String,
    /// `127.0.0.1:<port>`, the host clients name it by.
    pub host: String,
    dir: tempfile::TempDir,
    http: reqwest::Client,
}

impl RegistryServer {
    /// Starts a registry and waits until `/v2/` answers.
    pub async fn start(auth: RegistryAuth) -> anyhow::Result<RegistryServer> {
        if !Path::new(REGISTRY_BIN).exists() {
            bail!("{REGISTRY_BIN} is missing: install it with `apt-get install -y docker-registry`");
        }
        let dir = tempfile::tempdir()?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let host = format!("127.0.0.1:{port}");
        let storage = dir.path().join("storage");
        std::fs::create_dir_all(&storage)?;
        let auth_yaml = match &auth {
            RegistryAuth::Anonymous => String::new(),
            RegistryAuth::Htpasswd { user, password } => {
                let hash = bcrypt::hash(password, 4)?;
                let file = dir.path().join("htpasswd");
                std::fs::write(&file, format!("{user}:{hash}\n"))?;
                format!("auth:\n  htpasswd:\n    realm: shoal-test\n    path: {}\n", file.display())
            }
            RegistryAuth::Token { realm, service, issuer, root_cert_pem } => {
                let file = dir.path().join("root.pem");
                std::fs::write(&file, root_cert_pem)?;
                format!(
                    "auth:\n  token:\n    realm: {realm}\n    service: {service}\n    issuer: {issuer}\n    rootcertbundle: {}\n",
                    file.display()
                )
            }
        };
        let config = format!(
            "version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {host}\n{auth_yaml}",
            storage.display()
        );
        let config_path = dir.path().join("config.yml");
        std::fs::write(&config_path, config)?;
        let log = std::fs::File::create(dir.path().join("registry.log"))?;
        let child = Command::new(REGISTRY_BIN)
            .arg("serve")
            .arg(&config_path)
            .env_remove("AWS_CA_BUNDLE")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {REGISTRY_BIN}"))?;
        let http = reqwest::Client::builder().timeout(Duration::from_secs(30)).build()?;
        let mut server = RegistryServer { child, url: format!("http://{host}"), host, dir, http };
        server.wait_ready().await?;
        Ok(server)
    }

    async fn wait_ready(&mut self) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + START_TIMEOUT;
        let url = format!("{}/v2/", self.url);
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!("docker-registry exited with {status}: {}", self.log());
            }
            if let Ok(r) = self.http.get(&url).send().await
                && (r.status().is_success() || r.status() == reqwest::StatusCode::UNAUTHORIZED)
            {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                bail!("docker-registry did not answer {url} within {START_TIMEOUT:?}: {}", self.log());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The registry's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }

    /// The registry's storage root (its `rootdirectory`).
    pub fn storage(&self) -> PathBuf {
        self.dir.path().join("storage")
    }

    /// Uploads a blob in one request (`POST .../blobs/uploads/`, then `PUT ?digest=`).
    /// `authorization` is the full `Authorization` header value, if any.
    pub async fn push_blob(&self, name: &str, data: &[u8], authorization: Option<&str>) -> anyhow::Result<Digest> {
        let digest = Digest::of(data);
        let mut req = self.http.post(format!("{}/v2/{name}/blobs/uploads/", self.url));
        if let Some(a) = authorization {
            req = req.header("authorization", a);
        }
        let resp = req.send().await?;
        ensure!(resp.status() == 202, "starting an upload to {name}: {}", resp.status());
        let location = resp.headers().get("location").and_then(|v| v.to_str().ok()).context("no Location")?;
        let location =
            if location.starts_with("http") { location.to_owned() } else { format!("{}{location}", self.url) };
        let sep = if location.contains('?') { '&' } else { '?' };
        let mut req = self
            .http
            .put(format!("{location}{sep}digest={digest}"))
            .header("content-type", "application/octet-stream")
            .body(data.to_vec());
        if let Some(a) = authorization {
            req = req.header("authorization", a);
        }
        let resp = req.send().await?;
        ensure!(resp.status() == 201, "finishing the upload of {digest} to {name}: {}", resp.status());
        Ok(digest)
    }

    /// Puts a manifest under a tag.
    pub async fn push_manifest(
        &self,
        name: &str,
        tag: &str,
        media_type: &str,
        manifest: &[u8],
        authorization: Option<&str>,
    ) -> anyhow::Result<Digest> {
        let mut req = self
            .http
            .put(format!("{}/v2/{name}/manifests/{tag}", self.url))
            .header("content-type", media_type)
            .body(manifest.to_vec());
        if let Some(a) = authorization {
            req = req.header("authorization", a);
        }
        let resp = req.send().await?;
        let status = resp.status();
        let body = resp.text().await.unwrap_or_default();
        ensure!(status == 201, "putting manifest {name}:{tag}: {status}: {body}");
        Ok(Digest::of(manifest))
    }
}

impl Drop for RegistryServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
