//! `shoal`, the operator's command line: pull a blob through the local agent, push a file to
//! an origin, show where a blob stands, and preheat an image. Every command is a thin client
//! of the HTTP APIs the agent and the origins already serve; nothing here is trusted that the
//! client can check (a pulled blob's sha256 is checked again as it streams in).
//!
//! Output: people get short lines on stdout and progress bars on stderr (only when stdout is
//! a terminal); `--json` prints one JSON object instead, for scripts. Failures print one line
//! on stderr and exit with the code of their [`CliError`] kind ([`CliError::exit_code`]).

pub mod image;
mod output;

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Parser, Subcommand};
use futures::StreamExt;
use shoal_core::api::{AgentPreheatRequest, BlobStat, BlobState, ErrorBody, PreheatAnswer};
use shoal_core::{Digest, DigestHasher};
use shoal_runtime::request_id::{HEADER as REQUEST_ID, RequestId};
use tokio::io::AsyncWriteExt;
use tokio::time::Instant;

use crate::output::{Progress, human_bytes, human_rate};

/// The agent's default API address (`listen` in its config).
pub const DEFAULT_AGENT: &str = "http://127.0.0.1:7700";
/// The origin's default API address (`listen` in its config).
pub const DEFAULT_ORIGIN: &str = "http://127.0.0.1:7800";

/// Pause between polls of a preheat's state with `--wait`. Hard-coded.
const PREHEAT_POLL: Duration = Duration::from_millis(500);

#[derive(Parser, Debug)]
#[command(name = "shoal", version = shoal_runtime::VERSION)]
#[command(about = "Pull, push, inspect and preheat blobs through a Shoal agent and origins")]
#[command(after_help = "Exit codes: 0 ok, 1 failure (unreachable, server error, I/O), 2 usage, \
                        3 not found, 4 digest mismatch, 5 preheat with failed blobs.")]
pub struct Cli {
    /// The local agent's HTTP API.
    #[arg(long, global = true, env = "SHOAL_AGENT_URL", default_value = DEFAULT_AGENT)]
    pub agent: String,
    /// An origin's HTTP API, for `push`.
    #[arg(long, global = true, env = "SHOAL_ORIGIN_URL", default_value = DEFAULT_ORIGIN)]
    pub origin: String,
    /// A file holding the bearer token sent with `push` and `preheat` (its first line), for
    /// origins and agents whose `auth:` asks for one.
    #[arg(long, global = true, env = "SHOAL_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// One JSON object on stdout instead of text, and no progress bars.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Downloads a blob through the agent (from peers and origins), checking its sha256.
    Pull {
        /// `sha256:<64 hex>`.
        digest: String,
        /// Where to write it; without it, stdout (which must not be a terminal). The file
        /// appears only once every byte matched the digest.
        #[arg(short, long)]
        output: Option<PathBuf>,
    },
    /// Uploads a file to the origin (`--origin`), which stores, writes back and seeds it;
    /// prints its digest.
    Push { file: PathBuf },
    /// Shows a blob's size and pieces, this agent's copy, its swarm and its origins.
    Stat { digest: String },
    /// Warms an image in the origins (manifests, configs, layers) before anyone pulls it.
    Preheat(PreheatArgs),
}

#[derive(clap::Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
pub struct PreheatArgs {
    #[command(subcommand)]
    pub status: Option<PreheatCommand>,
    /// `[REGISTRY/]NAME[:TAG|@DIGEST]`, e.g. `registry.example:5000/team/app:1.4`; the tag
    /// defaults to `latest`, the registry to the origins' default upstream.
    pub image: Option<String>,
    /// Also download every blob into this agent's store.
    #[arg(long)]
    pub prefetch: bool,
    /// Pins every blob on the origins (and with --prefetch in this agent's store): never
    /// evicted until a preheat with --unpin.
    #[arg(long, conflicts_with = "unpin")]
    pub pin: bool,
    /// Unpins every blob of the image.
    #[arg(long)]
    pub unpin: bool,
    /// Waits until every blob is fetched, with a progress bar.
    #[arg(long)]
    pub wait: bool,
}

#[derive(Subcommand, Debug)]
pub enum PreheatCommand {
    /// The state of a preheat, by the id `shoal preheat` printed (`ORIGIN/ID`).
    Status { id: String },
}

/// Why a command failed; each kind has its own exit code.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// Bad arguments (exit 2, as clap's own usage errors).
    #[error("{0}")]
    Usage(String),
    /// The blob, image or preheat is unknown (exit 3).
    #[error("{0}")]
    NotFound(String),
    /// The bytes received do not hash to the digest asked for (exit 4).
    #[error("received bytes hash to {got}, not {want}")]
    Mismatch { want: Digest, got: Digest },
    /// A preheat finished with blobs that could not be fetched (exit 5).
    #[error("preheat {id}: {failed} of {total} blobs failed")]
    PreheatFailed { id: String, failed: usize, total: usize },
    /// The server answered with an error (exit 1).
    #[error("{url}: {status} {code}: {message}")]
    Server { url: String, status: u16, code: String, message: String },
    /// The server could not be reached or its answer read (exit 1).
    #[error("{url}: {source}")]
    Http { url: String, source: reqwest::Error },
    /// A local file could not be read or written (exit 1).
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
}

impl CliError {
    pub fn exit_code(&self) -> i32 {
        match self {
            CliError::Usage(_) => 2,
            CliError::NotFound(_) => 3,
            CliError::Mismatch { .. } => 4,
            CliError::PreheatFailed { .. } => 5,
            CliError::Server { .. } | CliError::Http { .. } | CliError::Io { .. } => 1,
        }
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> CliError + '_ {
    move |source| CliError::Io { path: path.display().to_string(), source }
}

/// The client every command uses. No overall timeout: a pull takes as long as the blob.
fn client() -> reqwest::Client {
    reqwest::Client::builder().connect_timeout(Duration::from_secs(10)).build().expect("http client builds")
}

/// Sends `req` with a fresh request id (so the nodes' logs of this command can be found) and
/// turns an error answer into a [`CliError`], 404 into `NotFound`.
async fn send(url: &str, req: reqwest::RequestBuilder) -> Result<reqwest::Response, CliError> {
    let req = req.header(REQUEST_ID, RequestId::random().as_str());
    let resp = req.send().await.map_err(|source| CliError::Http { url: url.to_string(), source })?;
    let status = resp.status().as_u16();
    if resp.status().is_success() {
        return Ok(resp);
    }
    let text = resp.text().await.unwrap_or_default();
    let (code, message) = match serde_json::from_str::<ErrorBody>(&text) {
        Ok(b) => (b.code, b.message),
        // Registry-style bodies and plain text are shown as they came.
        Err(_) => (String::new(), text.trim().chars().take(512).collect()),
    };
    if status == 404 {
        let m = if message.is_empty() { format!("{url}: not found") } else { message };
        return Err(CliError::NotFound(m));
    }
    Err(CliError::Server { url: url.to_string(), status, code, message })
}

fn parse_digest(s: &str) -> Result<Digest, CliError> {
    s.parse().map_err(|e| CliError::Usage(format!("{s:?} is not a digest: {e}")))
}

fn base(url: &str) -> &str {
    url.trim_end_matches('/')
}

/// Runs one command, writing its report to `out` (stdout in the binary).
pub async fn run(cli: &Cli, out: &mut (dyn Write + Send)) -> Result<(), CliError> {
    let show_progress = !cli.json && std::io::stdout().is_terminal();
    let report = match &cli.command {
        Command::Pull { digest, output } => pull(cli, parse_digest(digest)?, output.as_deref(), show_progress).await?,
        Command::Push { file } => push(cli, file, show_progress).await?,
        Command::Stat { digest } => stat(cli, parse_digest(digest)?).await?,
        Command::Preheat(p) => match (&p.status, &p.image) {
            (Some(PreheatCommand::Status { id }), _) => preheat_status(cli, id).await?,
            (None, Some(image)) => {
                let pin = (p.pin || p.unpin).then_some(p.pin);
                preheat(cli, image, p.prefetch, pin, p.wait, show_progress).await?
            }
            (None, None) => return Err(CliError::Usage("preheat needs an IMAGE, or `status ID`".into())),
        },
    };
    let text = if cli.json { format!("{}\n", report.json) } else { report.text };
    // A closed stdout (`| head`) is not the command's failure.
    let _ = out.write_all(text.as_bytes()).and_then(|()| out.flush());
    report.failure.map_or(Ok(()), Err)
}

/// What a command prints, and a failure to exit with after printing it.
struct Report {
    text: String,
    json: serde_json::Value,
    failure: Option<CliError>,
}

impl Report {
    fn ok(text: String, json: serde_json::Value) -> Report {
        Report { text, json, failure: None }
    }
}

/// The agent's piece bytes of a blob from peers and from origins (`GET /debug/blobs/<digest>`
/// at `url`); `None` when it does not know the blob or does not answer.
async fn sources(http: &reqwest::Client, url: &str) -> Option<(u64, u64)> {
    let v: serde_json::Value = http.get(url).send().await.ok()?.error_for_status().ok()?.json().await.ok()?;
    Some((v["from_peers"].as_u64().unwrap_or(0), v["from_origin"].as_u64().unwrap_or(0)))
}

async fn pull(cli: &Cli, digest: Digest, output: Option<&Path>, show_progress: bool) -> Result<Report, CliError> {
    if output.is_none() && std::io::stdout().is_terminal() {
        return Err(CliError::Usage("refusing to write a blob to a terminal: use -o FILE or a pipe".into()));
    }
    if output.is_none() && cli.json {
        return Err(CliError::Usage("--json needs -o FILE: stdout carries the blob".into()));
    }
    let url = format!("{}/blobs/{digest}", base(&cli.agent));
    let started = Instant::now();
    let http = client();
    let resp = send(&url, http.get(&url)).await?;
    let len = resp.content_length();
    let progress = Progress::bytes(show_progress && output.is_some(), len, "pull");
    // While the bar is drawn, where the agent's pieces come from: peers against origins.
    let sources_task = progress.visible().then(|| {
        let (http, progress) = (http.clone(), progress.clone());
        let u = format!("{}/debug/blobs/{digest}", base(&cli.agent));
        tokio::spawn(async move {
            loop {
                if let Some((peers, origins)) = sources(&http, &u).await
                    && peers + origins > 0
                {
                    progress.message(format!(
                        "pieces: {} from peers, {} from origins",
                        human_bytes(peers),
                        human_bytes(origins)
                    ));
                }
                tokio::time::sleep(std::time::Duration::from_millis(300)).await;
            }
        })
    });
    // The file appears under its name only once every byte matched.
    let part = output.map(|p| {
        let mut name = p.file_name().map(|n| n.to_os_string()).unwrap_or_default();
        name.push(".part");
        p.with_file_name(name)
    });
    let mut sink: Box<dyn tokio::io::AsyncWrite + Send + Unpin> = match &part {
        Some(p) => Box::new(tokio::fs::File::create(p).await.map_err(io_err(p))?),
        None => Box::new(tokio::io::stdout()),
    };
    let sink_name = part.as_deref().unwrap_or(Path::new("stdout"));
    let mut hasher = DigestHasher::new();
    let mut n = 0u64;
    let mut body = resp.bytes_stream();
    let res = async {
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|source| CliError::Http { url: url.clone(), source })?;
            hasher.update(&chunk);
            sink.write_all(&chunk).await.map_err(io_err(sink_name))?;
            n += chunk.len() as u64;
            progress.set(n);
        }
        sink.flush().await.map_err(io_err(sink_name))?;
        drop(sink);
        let got = hasher.finish();
        if got != digest {
            return Err(CliError::Mismatch { want: digest, got });
        }
        if let (Some(p), Some(o)) = (&part, output) {
            tokio::fs::rename(p, o).await.map_err(io_err(o))?;
        }
        Ok::<(), CliError>(())
    }
    .await;
    if let Some(t) = sources_task {
        t.abort();
    }
    progress.finish();
    if let Err(e) = res {
        if let Some(p) = &part {
            let _ = std::fs::remove_file(p);
        }
        return Err(e);
    }
    let secs = started.elapsed().as_secs_f64();
    // Where the bytes came from, as the agent counted them (absent for a blob it already had).
    let (from_peers, from_origin) =
        sources(&http, &format!("{}/debug/blobs/{digest}", base(&cli.agent))).await.unwrap_or((0, 0));
    let dest = output.map(|p| p.display().to_string());
    let mut text =
        format!("pulled {digest}: {} in {secs:.1}s ({})", human_bytes(n), human_rate(n as f64 / secs.max(1e-9)));
    if from_peers + from_origin > 0 {
        let pct = 100.0 * from_peers as f64 / (from_peers + from_origin) as f64;
        text.push_str(&format!(
            ", {pct:.0}% from peers ({} from peers, {} from origins)",
            human_bytes(from_peers),
            human_bytes(from_origin)
        ));
    } else {
        text.push_str(", already on this host");
    }
    if let Some(d) = &dest {
        text.push_str(&format!(" -> {d}"));
    }
    text.push('\n');
    let json = serde_json::json!({
        "digest": digest, "bytes": n, "seconds": secs, "file": dest,
        "from_peers": from_peers, "from_origin": from_origin,
    });
    if output.is_none() {
        // Stdout carries the blob: the summary goes to stderr.
        eprint!("{text}");
        return Ok(Report::ok(String::new(), json));
    }
    Ok(Report::ok(text, json))
}

/// `req` with the bearer token of `--token-file`, if given.
fn with_token(cli: &Cli, req: reqwest::RequestBuilder) -> Result<reqwest::RequestBuilder, CliError> {
    match &cli.token_file {
        Some(f) => {
            let token = shoal_runtime::auth::TokenSource::load(f).map_err(CliError::Usage)?;
            Ok(req.bearer_auth(token.get()))
        }
        None => Ok(req),
    }
}

async fn push(cli: &Cli, file: &Path, show_progress: bool) -> Result<Report, CliError> {
    let len = tokio::fs::metadata(file).await.map_err(io_err(file))?.len();
    // The digest names the upload, so the file is read twice: hashed, then sent.
    let hashing = Progress::bytes(show_progress, Some(len), "hash");
    let digest = {
        let mut f = tokio::fs::File::open(file).await.map_err(io_err(file))?;
        let mut hasher = DigestHasher::new();
        let mut buf = vec![0u8; 1 << 20];
        let mut n = 0u64;
        loop {
            let k = tokio::io::AsyncReadExt::read(&mut f, &mut buf).await.map_err(io_err(file))?;
            if k == 0 {
                break;
            }
            hasher.update(&buf[..k]);
            n += k as u64;
            hashing.set(n);
        }
        hasher.finish()
    };
    hashing.finish();
    let url = format!("{}/blobs/{digest}", base(&cli.origin));
    let started = Instant::now();
    let progress = Progress::bytes(show_progress, Some(len), "push");
    let f = tokio::fs::File::open(file).await.map_err(io_err(file))?;
    let bar = progress.clone();
    let mut sent = 0u64;
    let stream = tokio_util::io::ReaderStream::with_capacity(f, 1 << 20).inspect(move |c| {
        if let Ok(c) = c {
            sent += c.len() as u64;
            bar.set(sent);
        }
    });
    let req = client().put(&url).header(reqwest::header::CONTENT_LENGTH, len).body(reqwest::Body::wrap_stream(stream));
    let req = with_token(cli, req)?;
    let res = send(&url, req).await;
    progress.finish();
    if let Err(CliError::Http { .. }) = &res {
        // An origin refuses an upload before reading its body and closes the connection, which
        // a client still sending sees only as a broken connection: an empty upload, which
        // stores nothing, gets the same answer in full.
        let probe = with_token(cli, client().put(&url).header(reqwest::header::CONTENT_LENGTH, 0))?;
        if let Err(e @ CliError::Server { status: 401 | 403, .. }) = send(&url, probe).await {
            return Err(e);
        }
    }
    res?;
    let secs = started.elapsed().as_secs_f64();
    let text = format!("{digest}\n");
    if !cli.json && show_progress {
        eprintln!("pushed {} in {secs:.1}s ({})", human_bytes(len), human_rate(len as f64 / secs.max(1e-9)));
    }
    Ok(Report::ok(text, serde_json::json!({"digest": digest, "bytes": len, "seconds": secs})))
}

async fn stat(cli: &Cli, digest: Digest) -> Result<Report, CliError> {
    let url = format!("{}/stat/blobs/{digest}", base(&cli.agent));
    let resp = send(&url, client().get(&url)).await?;
    let s: BlobStat = resp.json().await.map_err(|source| CliError::Http { url: url.clone(), source })?;
    let local = if s.local.complete {
        "complete on this host".to_string()
    } else if s.local.from_origin + s.local.from_peers > 0 {
        "downloading".to_string()
    } else {
        "not on this host".to_string()
    };
    let mut text = format!(
        "digest   {}\nsize     {} ({} bytes)\npieces   {} of {}\nlocal    {local}",
        s.digest,
        human_bytes(s.size),
        s.size,
        s.pieces,
        human_bytes(u64::from(s.piece_length))
    );
    if s.local.from_origin + s.local.from_peers + s.local.uploaded > 0 {
        text.push_str(&format!(
            " (received {} from peers, {} from origins; sent {} to peers)",
            human_bytes(s.local.from_peers),
            human_bytes(s.local.from_origin),
            human_bytes(s.local.uploaded)
        ));
    }
    match &s.swarm {
        Some(w) => text.push_str(&format!(
            "\nswarm    {} seeding ({} of them origins), {} downloading",
            w.seeders, w.origins, w.downloaders
        )),
        None => text.push_str("\nswarm    unknown (no tracker answered)"),
    }
    text.push_str(&format!("\norigins  {}\n", s.origins.join(", ")));
    let json = serde_json::to_value(&s).expect("a stat serializes");
    Ok(Report::ok(text, json))
}

async fn preheat(
    cli: &Cli,
    image: &str,
    prefetch: bool,
    pin: Option<bool>,
    wait: bool,
    show_progress: bool,
) -> Result<Report, CliError> {
    let img = image::ImageRef::parse(image).map_err(|e| CliError::Usage(format!("{image:?}: {e}")))?;
    let url = format!("{}/preheat", base(&cli.agent));
    let body = AgentPreheatRequest { name: img.name, reference: img.reference, ns: img.registry, prefetch, pin };
    let resp = send(&url, with_token(cli, client().post(&url).json(&body))?).await?;
    let mut json: serde_json::Value =
        resp.json().await.map_err(|source| CliError::Http { url: url.clone(), source })?;
    let st: PreheatAnswer = serde_json::from_value(json.clone()).map_err(|e| CliError::Server {
        url: url.clone(),
        status: 202,
        code: String::new(),
        message: format!("unexpected answer: {e}"),
    })?;
    let handle = match &st.origin {
        Some(o) => format!("{o}/{}", st.status.id),
        None => st.status.id.clone(),
    };
    if let Some(obj) = json.as_object_mut() {
        obj.insert("handle".into(), serde_json::Value::String(handle.clone()));
    }
    let mut text = format!(
        "preheat {handle}: {} blobs of {}@{}{}\n",
        st.status.digests.len(),
        st.status.name,
        st.status.manifest,
        if prefetch { ", prefetching into this agent" } else { "" }
    );
    if !wait {
        return Ok(Report::ok(text, json));
    }
    let done = poll_preheat(cli, &handle, show_progress).await?;
    text.push_str(&describe_preheat(&done));
    let failure = failed(&handle, &done);
    let json = serde_json::json!({"handle": handle, "started": json, "finished": state_json(&done)});
    Ok(Report { text, json, failure })
}

fn state_json(s: &PreheatAnswer) -> serde_json::Value {
    serde_json::json!({
        "id": s.status.id, "origin": s.origin, "manifest": s.status.manifest, "blobs": s.status.digests.len(),
        "done": s.status.count(BlobState::Done), "pending": s.status.count(BlobState::Pending), "failed": s.status.count(BlobState::Failed), "errors": s.status.errors,
    })
}

fn failed(handle: &str, s: &PreheatAnswer) -> Option<CliError> {
    let n = s.status.count(BlobState::Failed);
    (n > 0).then(|| CliError::PreheatFailed { id: handle.to_string(), failed: n, total: s.status.states.len() })
}

fn describe_preheat(s: &PreheatAnswer) -> String {
    let mut text = format!(
        "{} done, {} pending, {} failed of {}\n",
        s.status.count(BlobState::Done),
        s.status.count(BlobState::Pending),
        s.status.count(BlobState::Failed),
        s.status.states.len()
    );
    for (d, e) in &s.status.errors {
        text.push_str(&format!("  {d}: {e}\n"));
    }
    text
}

/// `ORIGIN/ID` as `shoal preheat` printed it.
fn split_handle(handle: &str) -> Result<(&str, &str), CliError> {
    handle
        .split_once('/')
        .filter(|(o, i)| !o.is_empty() && !i.is_empty())
        .ok_or_else(|| CliError::Usage(format!("{handle:?}: a preheat id is ORIGIN/ID, as `shoal preheat` prints it")))
}

async fn get_preheat(cli: &Cli, handle: &str) -> Result<PreheatAnswer, CliError> {
    let (origin, id) = split_handle(handle)?;
    let url = format!("{}/preheat/{origin}/{id}", base(&cli.agent));
    let resp = send(&url, client().get(&url)).await?;
    let mut st: PreheatAnswer = resp.json().await.map_err(|source| CliError::Http { url: url.clone(), source })?;
    st.origin.get_or_insert_with(|| origin.to_string());
    Ok(st)
}

async fn poll_preheat(cli: &Cli, handle: &str, show_progress: bool) -> Result<PreheatAnswer, CliError> {
    let mut st = get_preheat(cli, handle).await?;
    let progress = Progress::count(show_progress, st.status.states.len() as u64, "preheat");
    while st.status.count(BlobState::Pending) > 0 {
        progress.set((st.status.states.len() - st.status.count(BlobState::Pending)) as u64);
        tokio::time::sleep(PREHEAT_POLL).await;
        st = get_preheat(cli, handle).await?;
    }
    progress.finish();
    Ok(st)
}

async fn preheat_status(cli: &Cli, handle: &str) -> Result<Report, CliError> {
    let st = get_preheat(cli, handle).await?;
    let text = format!("preheat {handle}: {}@{}\n{}", st.status.name, st.status.manifest, describe_preheat(&st));
    let failure = failed(handle, &st);
    Ok(Report { text, json: state_json(&st), failure })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_are_distinct_per_kind() {
        let d = Digest::of(b"x");
        let codes = [
            CliError::Usage(String::new()).exit_code(),
            CliError::NotFound(String::new()).exit_code(),
            CliError::Mismatch { want: d, got: d }.exit_code(),
            CliError::PreheatFailed { id: String::new(), failed: 1, total: 1 }.exit_code(),
            CliError::Server { url: String::new(), status: 500, code: String::new(), message: String::new() }
                .exit_code(),
        ];
        assert_eq!(codes, [2, 3, 4, 5, 1]);
    }

    #[test]
    fn preheat_handles_name_their_origin() {
        assert_eq!(split_handle("origin-0/ph-3").unwrap(), ("origin-0", "ph-3"));
        for bad in ["ph-3", "/ph-3", "origin-0/"] {
            assert_eq!(split_handle(bad).unwrap_err().exit_code(), 2, "{bad}");
        }
    }
}
