//! A real S3 server (s3s-fs) on 127.0.0.1 for tests and benchmarks, killed on drop.
//!
//! `scripts/s3-server.sh install` installs the binary; it is found through `$SHOAL_S3S_FS`,
//! `$CARGO_HOME/bin` (or `~/.cargo/bin`) or the `PATH`. s3s-fs keeps object `<key>` of bucket
//! `<bucket>` as the plain file `data/<bucket>/<key>`.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;

pub const ACCESS_KEY: &str = "shoal";
pub const SECRET_KEY: &str = "shoalsecret";
const START_TIMEOUT: Duration = Duration::from_secs(20);

pub struct S3Server {
    child: Child,
    pub endpoint: String,
    /// The server's root: `data/<bucket>/<key>` is an object.
    pub data: PathBuf,
    _dir: tempfile::TempDir,
}

impl S3Server {
    /// Starts s3s-fs with the given buckets (created as directories).
    pub fn start(buckets: &[&str]) -> anyhow::Result<S3Server> {
        let bin = find_s3s_fs().context(
            "s3s-fs not found (looked at $SHOAL_S3S_FS, ~/.cargo/bin/s3s-fs and the PATH); \
             install it with `scripts/s3-server.sh install`",
        )?;
        let dir = tempfile::tempdir()?;
        let data = dir.path().join("data");
        for b in buckets {
            std::fs::create_dir_all(data.join(b))?;
        }
        let mut last_log = String::new();
        // A free port can be taken between probing and binding: retry with another.
        for attempt in 0..3 {
            let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
            let log_path = dir.path().join(format!("s3s-fs-{attempt}.log"));
            let log = std::fs::File::create(&log_path)?;
            let mut child = Command::new(&bin)
                .args(["--host", "127.0.0.1", "--port", &port.to_string()])
                .args(["--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY])
                .arg(&data)
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log)
                .spawn()
                .with_context(|| format!("running {}", bin.display()))?;
            if wait_for_port(&mut child, port) {
                return Ok(S3Server { child, endpoint: format!("http://127.0.0.1:{port}"), data, _dir: dir });
            }
            let _ = child.kill();
            let _ = child.wait();
            last_log = std::fs::read_to_string(&log_path).unwrap_or_default();
        }
        anyhow::bail!("s3s-fs did not start; its last log:\n{last_log}")
    }

    /// Origin backend YAML for `bucket` on this server (flat layout unless `extra` says).
    pub fn backend_yaml(&self, bucket: &str, extra: &str) -> String {
        format!(
            "type: s3\nbucket: {bucket}\nendpoint_url: {}\naccess_key_id: {ACCESS_KEY}\n\
             secret_access_key: {SECRET_KEY}\n{extra}",
            self.endpoint
        )
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn find_s3s_fs() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("SHOAL_S3S_FS") {
        return Some(PathBuf::from(p)).filter(|p| p.is_file());
    }
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cargo")));
    if let Some(p) = cargo_home.map(|h| h.join("bin/s3s-fs")).filter(|p| p.is_file()) {
        return Some(p);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|d| d.join("s3s-fs")).find(|p| p.is_file())
}

fn wait_for_port(child: &mut Child, port: u16) -> bool {
    let deadline = Instant::now() + START_TIMEOUT;
    while Instant::now() < deadline {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return true;
        }
        if child.try_wait().ok().flatten().is_some() {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}
