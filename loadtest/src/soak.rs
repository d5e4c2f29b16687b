//! `shoal-loadtest soak`: a long loop of pulls of many blobs with churn on small stores, on the
//! real binaries ([`crate::faults::cluster::FaultCluster`]), sampling every process's RSS and
//! open file descriptors, to show that nothing grows.
//!
//! Every agent runs a worker that pulls a random blob of the set (exact bytes checked as in the
//! fault matrix), then the next. Every `churn_every` one of the churned agents (the first
//! `churn` ones) is SIGKILLed and restarted 2 s later on its store; a failed pull on an agent
//! that is down or just restarting is an injected error, any other failure is not. Each
//! agent's store can be a tmpfs of `store_size` (root), and `agent_set` sets any key of the
//! agents' config (e.g. a store budget). After `warmup`, the RSS and fd count of every process
//! that lived through the whole run (the tracker, the origin, the agents never churned) are
//! compared between the first and the last window (a sixth of the measured time, at most ten
//! minutes): flat when within ±10%.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::{Rng as _, SeedableRng as _};
use shoal_core::Digest;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::cluster::random_blob;
use crate::faults::cluster::{BackendSpec, ClusterSpec, FaultCluster};
use crate::faults::pull::pull_exact;
use crate::report::human_bytes;

/// The tolerance of "flat".
pub const FLAT: f64 = 0.10;
/// The longest one pull may take.
const PULL_DEADLINE: Duration = Duration::from_secs(30);
/// A pull's failures are the churn's when it ended after a kill of its agent and started
/// before this long after it (the 2 s down, the restart, and the pulls then in flight).
const CHURN_WINDOW: Duration = Duration::from_secs(10);

#[derive(clap::Args, Clone, Debug)]
pub struct SoakArgs {
    /// How long to run, e.g. 1h, 10m, 90s.
    #[arg(long, default_value = "1h", value_parser = crate::scenario::parse_secs)]
    pub duration: Duration,
    /// Samples before this are not judged (caches and pools filling).
    #[arg(long, value_parser = crate::scenario::parse_secs)]
    pub warmup: Option<Duration>,
    #[arg(long, default_value_t = 6)]
    pub agents: usize,
    /// Distinct blobs pulled.
    #[arg(long, default_value_t = 40)]
    pub blobs: usize,
    /// Each blob's size.
    #[arg(long, default_value = "8MiB")]
    pub size: shoal_runtime::ByteSize,
    /// Each agent's store on a tmpfs of this size (needs root); the store's own budget comes
    /// from `--agent-set` when the agent has one.
    #[arg(long)]
    pub store_size: Option<shoal_runtime::ByteSize>,
    /// A key of every agent's config, as a dotted path (`KEY.SUB=VALUE`, the value read as
    /// JSON when it is, else a string); repeatable.
    #[arg(long = "agent-set", value_name = "PATH=VALUE", value_parser = parse_setting)]
    pub agent_set: Vec<(String, serde_json::Value)>,
    /// Agents killed and restarted in turn (the first ones); the others run throughout.
    #[arg(long, default_value_t = 2)]
    pub churn: usize,
    #[arg(long, default_value = "2m", value_parser = crate::scenario::parse_secs)]
    pub churn_every: Duration,
    #[arg(long, default_value = "10s", value_parser = crate::scenario::parse_secs)]
    pub sample_every: Duration,
    /// Each worker waits this long between two pulls (a pull of a blob its agent holds takes
    /// milliseconds; the pause keeps the loop from being a CPU benchmark).
    #[arg(long, default_value = "500ms", value_parser = crate::scenario::parse_secs)]
    pub pause: Duration,
    /// Per-agent link cap (bytes/s).
    #[arg(long, default_value = "64MiB")]
    pub agent_rate: shoal_runtime::ByteSize,
    /// Stores and logs go in a fresh directory under this one (default /dev/shm).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Every sample as CSV (secs, process, rss_kib, fds, threads) here.
    #[arg(long)]
    pub samples: Option<PathBuf>,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

/// `PATH=VALUE` of `--agent-set`.
pub fn parse_setting(s: &str) -> Result<(String, serde_json::Value), String> {
    let (k, v) = s.split_once('=').ok_or_else(|| format!("{s:?}: expected PATH=VALUE"))?;
    let k = k.trim();
    if k.is_empty() || k.split('.').any(str::is_empty) {
        return Err(format!("{s:?}: bad path"));
    }
    let v = v.trim();
    Ok((k.to_string(), serde_json::from_str(v).unwrap_or_else(|_| serde_json::Value::String(v.into()))))
}

/// One process's samples: (secs since start, RSS KiB, open fds, heap KiB). The heap is what
/// the process's allocator counts as live (`shoal_heap_bytes`; 0 where it gives none): a rise
/// in RSS without one in the heap is memory the allocator keeps, not a table that grows.
type Series = Vec<(f64, u64, u64, u64)>;

/// What a process did over the measured time.
#[derive(Clone, Debug, PartialEq)]
pub struct Trend {
    pub first: f64,
    pub last: f64,
}

impl Trend {
    pub fn change(&self) -> f64 {
        if self.first == 0.0 { 0.0 } else { (self.last - self.first) / self.first }
    }
    pub fn flat(&self) -> bool {
        self.change().abs() <= FLAT
    }
}

/// The means of the first and last windows of `samples` (value picked by `f`) after `warmup`.
pub fn trend(samples: &Series, warmup: f64, window: f64, f: impl Fn(&(f64, u64, u64, u64)) -> u64) -> Option<Trend> {
    let kept: Vec<&(f64, u64, u64, u64)> = samples.iter().filter(|s| s.0 >= warmup).collect();
    let (start, end) = (kept.first()?.0, kept.last()?.0);
    let mean = |sel: Vec<u64>| (!sel.is_empty()).then(|| sel.iter().sum::<u64>() as f64 / sel.len() as f64);
    let first = mean(kept.iter().filter(|s| s.0 <= start + window).map(|s| f(s)).collect())?;
    let last = mean(kept.iter().filter(|s| s.0 >= end - window).map(|s| f(s)).collect())?;
    Some(Trend { first, last })
}

/// Reads a process's RSS (KiB), open fds and threads from /proc. The threads are only
/// written to the samples: a step in RSS that comes with one in threads is the runtime's
/// blocking pool (and each thread's allocator heap), not a table that grows.
fn sample(pid: u32) -> Option<(u64, u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss = crate::report::proc_kib(&status, "VmRSS:")? / 1024;
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count() as u64;
    let threads = status.lines().find_map(|l| l.strip_prefix("Threads:")).and_then(|v| v.trim().parse().ok())?;
    Some((rss, fds, threads))
}

pub async fn main(a: &SoakArgs) -> anyhow::Result<()> {
    anyhow::ensure!(a.agents >= 2 && a.blobs >= 1, "--agents at least 2, --blobs at least 1");
    anyhow::ensure!(a.churn < a.agents, "--churn must leave agents that run throughout");
    let warmup = a.warmup.unwrap_or(a.duration / 6).min(a.duration / 2);
    let base = a.dir.clone().unwrap_or_else(crate::modes::default_store_base);
    std::fs::create_dir_all(&base)?;
    let tmp = tempfile::Builder::new().prefix("shoal-soak-").tempdir_in(&base)?;
    let mut mounts = Vec::new();
    let mut agent_store = Vec::new();
    if let Some(sz) = a.store_size {
        for i in 0..a.agents {
            let dir = tmp.path().join(format!("store-{i}"));
            mounts.push(crate::faults::TmpfsMount::mount(&dir, sz.0)?);
            agent_store.push((i, dir.join("agent")));
        }
    }
    let mut blobs = Vec::new();
    std::fs::create_dir_all(tmp.path().join("backend/sha256"))?;
    for k in 0..a.blobs {
        let data = random_blob(a.size.0, a.seed.wrapping_mul(1000).wrapping_add(k as u64));
        let d = Digest::of(&data);
        std::fs::write(tmp.path().join("backend/sha256").join(d.hex()), &data)?;
        blobs.push((d, Arc::new(data)));
    }
    let spec = ClusterSpec {
        trackers: 1,
        origins: 1,
        replicas: 1,
        agents: a.agents,
        backend: BackendSpec::Fs,
        agent_rate: Some(a.agent_rate.0),
        origin_rate: None,
        agent_store,
        swarm: Vec::new(),
        download_timeout: Duration::from_secs(120),
    };
    let mut c = FaultCluster::start_with(&spec, tmp.path(), None, &a.agent_set).await?;
    println!(
        "soak: {} agents ({} churned every {:?}), {} blobs of {}, stores {}, {:?} (warm-up {:?}); logs in {}",
        a.agents,
        a.churn,
        a.churn_every,
        a.blobs,
        human_bytes(a.size.0),
        a.store_size.map_or("unbounded".into(), |s| format!("on a {} tmpfs", human_bytes(s.0))),
        a.duration,
        warmup,
        tmp.path().display()
    );
    let t0 = Instant::now();
    let end = t0 + a.duration;
    let stop = CancellationToken::new();
    // Per agent: when it was last killed; pulls done, bytes, failures (injected or not).
    let down: Arc<Vec<Mutex<Option<Instant>>>> = Arc::new((0..a.agents).map(|_| Mutex::new(None)).collect());
    let pulls = Arc::new(AtomicU64::new(0));
    let bytes = Arc::new(AtomicU64::new(0));
    let injected = Arc::new(AtomicU64::new(0));
    let errors: Arc<Mutex<Vec<String>>> = Arc::new(Mutex::new(Vec::new()));
    let http = reqwest::Client::builder().connect_timeout(Duration::from_secs(2)).build()?;
    let mut workers = Vec::new();
    for i in 0..a.agents {
        let (http, blobs, stop) = (http.clone(), blobs.clone(), stop.clone());
        let (down, pulls, bytes, injected, errors) =
            (down.clone(), pulls.clone(), bytes.clone(), injected.clone(), errors.clone());
        let base = c.agent_url(i);
        let seed = a.seed ^ (i as u64 + 1);
        let pause = a.pause;
        workers.push(tokio::spawn(async move {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            while !stop.is_cancelled() && Instant::now() < end {
                let (d, data) = &blobs[rng.random_range(0..blobs.len())];
                let started = Instant::now();
                let deadline = started + PULL_DEADLINE;
                let log = pull_exact(
                    &http,
                    &format!("{base}/blobs/{d}"),
                    data.clone(),
                    &stop,
                    deadline,
                    Duration::from_millis(500),
                )
                .await;
                // The pull overlapped the agent's last kill and the restart after it.
                let ended = Instant::now();
                let last_kill = *down[i].lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                let churned = last_kill.is_some_and(|k| k <= ended && started <= k + CHURN_WINDOW);
                // Failures while the agent was down or restarting are the churn's.
                if churned {
                    injected.fetch_add(log.failures.len() as u64, Ordering::Relaxed);
                } else if !log.failures.is_empty() || log.wrong_bytes > 0 {
                    errors.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(format!(
                        "agent {i} {d}: {}{}",
                        log.failure_summary(),
                        if log.wrong_bytes > 0 { format!(", {} WRONG BYTES", log.wrong_bytes) } else { String::new() }
                    ));
                }
                if log.done.is_some() {
                    pulls.fetch_add(1, Ordering::Relaxed);
                    bytes.fetch_add(data.len() as u64, Ordering::Relaxed);
                }
                tokio::select! {
                    () = tokio::time::sleep(pause) => {}
                    () = stop.cancelled() => {}
                }
            }
        }));
    }
    let mut series: BTreeMap<String, Series> = BTreeMap::new();
    let mut csv = String::from("secs,process,rss_kib,fds,threads,heap_kib\n");
    let mut next_sample = Instant::now();
    let mut next_churn = t0 + a.churn_every;
    let mut churn_k = 0usize;
    let mut churned: Vec<String> = Vec::new();
    while Instant::now() < end {
        let now = Instant::now();
        if now >= next_sample {
            let secs = t0.elapsed().as_secs_f64();
            for name in c.names() {
                if let Some(pid) = c.pid(&name)
                    && let Some((rss, fds, threads)) = sample(pid)
                {
                    let heap = tokio::time::timeout(Duration::from_secs(2), c.metric(&name, "shoal_heap_bytes"))
                        .await
                        .ok()
                        .flatten()
                        .unwrap_or(0)
                        / 1024;
                    // A restarted process is a new series.
                    series.entry(format!("{name}[{pid}]")).or_default().push((secs, rss, fds, heap));
                    let _ = writeln!(csv, "{secs:.1},{name}[{pid}],{rss},{fds},{threads},{heap}");
                }
            }
            next_sample += a.sample_every;
        }
        if a.churn > 0 && now >= next_churn {
            let i = churn_k % a.churn;
            churn_k += 1;
            let name = format!("agent-{i}");
            *down[i].lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(Instant::now());
            c.kill(&name).await?;
            tokio::time::sleep(Duration::from_secs(2)).await;
            c.restart(&name).await?;
            churned.push(name);
            next_churn += a.churn_every;
        }
        tokio::time::sleep(Duration::from_millis(200).min(next_sample.saturating_duration_since(Instant::now()))).await;
    }
    stop.cancel();
    for w in workers {
        let _ = w.await;
    }
    let panics = c.panics();
    c.shutdown().await;
    drop(mounts);
    if let Some(p) = &a.samples {
        std::fs::write(p, &csv)?;
    }
    // Judge the processes that lived through the run.
    let measured = (a.duration - warmup).as_secs_f64();
    let window = (measured / 6.0).min(600.0);
    let w = warmup.as_secs_f64();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<22} {:>12} {:>12} {:>8} {:>8} {:>8} {:>8} {:>11} {:>11}  verdict",
        "process",
        "RSS first MiB",
        "RSS last MiB",
        "change",
        "fds first",
        "fds last",
        "change",
        "heap first",
        "heap last"
    );
    let mut all_flat = true;
    for (name, s) in &series {
        let lived = s.first().is_some_and(|x| x.0 <= w)
            && s.last().is_some_and(|x| x.0 >= a.duration.as_secs_f64() - 2.0 * a.sample_every.as_secs_f64());
        let (Some(rss), Some(fds)) = (trend(s, w, window, |x| x.1), trend(s, w, window, |x| x.2)) else { continue };
        let heap = trend(s, w, window, |x| x.3).unwrap_or(Trend { first: 0.0, last: 0.0 });
        let verdict = if !lived {
            "restarted: not judged"
        } else if rss.flat() && fds.flat() {
            "flat"
        } else {
            all_flat = false;
            "GROWS"
        };
        let _ = writeln!(
            out,
            "{:<22} {:>12.1} {:>12.1} {:>7.1}% {:>8.0} {:>8.0} {:>7.1}% {:>11.1} {:>11.1}  {verdict}",
            name,
            rss.first / 1024.0,
            rss.last / 1024.0,
            rss.change() * 100.0,
            fds.first,
            fds.last,
            fds.change() * 100.0,
            heap.first / 1024.0,
            heap.last / 1024.0
        );
    }
    let errors = errors.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
    let _ = writeln!(
        out,
        "\n{} pulls ({}), {} injected failures (churn of {:?}), {} other errors, {} panics; windows of {:.0} s after a {:.0} s warm-up",
        pulls.load(Ordering::Relaxed),
        human_bytes(bytes.load(Ordering::Relaxed)),
        injected.load(Ordering::Relaxed),
        churned.iter().collect::<std::collections::BTreeSet<_>>(),
        errors.len(),
        panics.len(),
        window,
        w
    );
    for e in errors.iter().take(20) {
        let _ = writeln!(out, "error: {e}");
    }
    for p in panics.iter().take(20) {
        let _ = writeln!(out, "panic: {p}");
    }
    print!("{out}");
    anyhow::ensure!(all_flat, "some process's RSS or fds grew more than {:.0}%", FLAT * 100.0);
    anyhow::ensure!(errors.is_empty() && panics.is_empty(), "errors other than the injected ones, or panics");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trend_compares_the_first_and_last_windows_after_warmup() {
        // Warm-up spike, then flat around 100, then a rise to 130.
        let s: Series = vec![
            (0.0, 500, 9, 0),
            (10.0, 100, 10, 0),
            (20.0, 104, 10, 0),
            (30.0, 96, 10, 0),
            (40.0, 130, 10, 0),
            (50.0, 130, 10, 0),
        ];
        let t = trend(&s, 10.0, 10.0, |x| x.1).unwrap();
        assert_eq!(t.first, 102.0);
        assert_eq!(t.last, 130.0);
        assert!(!t.flat());
        let f = trend(&s, 10.0, 10.0, |x| x.2).unwrap();
        assert!(f.flat() && f.change() == 0.0);
        assert!(trend(&s, 60.0, 10.0, |x| x.1).is_none(), "nothing after the warm-up");
    }

    #[test]
    fn settings_are_dotted_paths() {
        assert_eq!(
            parse_setting("store.max_size=48MiB").unwrap(),
            ("store.max_size".into(), serde_json::json!("48MiB"))
        );
        assert_eq!(parse_setting("a=3").unwrap().1, serde_json::json!(3));
        assert!(parse_setting("x").is_err() && parse_setting("a..b=1").is_err());
    }
}
