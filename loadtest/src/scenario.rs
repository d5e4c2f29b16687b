//! The workloads a local run can drive, and the one driver every mode shares.
//!
//! A [`Scenario`] is a set of blobs every agent pulls concurrently (one blob; an image of K
//! layers, as a container runtime pulls them; or M distinct blobs), optionally with late
//! joiners (`K@T`: the last K agents start T after the others) and churn (`K@T`: the first K
//! agents are killed T into the run, optionally restarted on the same store after a delay).
//!
//! [`drive`] runs a scenario against any cluster that implements [`Nodes`] (in-process,
//! processes, network namespaces): it starts each agent's pulls at its start time, kills and
//! restarts nodes on schedule, samples delivered bytes, and returns one [`AgentPull`] per
//! agent. An agent's time is measured from its own start; a restarted agent's time includes
//! its downtime. Bytes a node received before it was killed are carried over, so its sources
//! still add up after a restart. Every wait is bounded by the run's timeout.

use std::fmt::Write as _;
use std::time::Duration;

use anyhow::Context as _;
use serde::{Deserialize, Serialize};
use shoal_core::Digest;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::pull::{AgentPull, Sample, Target, fetch_and_check};
use crate::report::human_bytes;

/// `K@T`: K agents, T after the run began.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AtTime {
    pub count: usize,
    pub at: Duration,
}

impl std::str::FromStr for AtTime {
    type Err = String;
    fn from_str(s: &str) -> Result<AtTime, String> {
        let (k, t) = s.split_once('@').ok_or_else(|| format!("{s:?}: expected K@T, e.g. 2@5s"))?;
        let count = k.trim().parse().map_err(|e| format!("{s:?}: count: {e}"))?;
        Ok(AtTime { count, at: parse_secs(t)? })
    }
}

/// "1.5s", "500ms", "2m", "1h" or a bare number of seconds.
pub fn parse_secs(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, scale) = if let Some(v) = s.strip_suffix("ms") {
        (v, 1e-3)
    } else if let Some(v) = s.strip_suffix('s') {
        (v, 1.0)
    } else if let Some(v) = s.strip_suffix('m') {
        (v, 60.0)
    } else if let Some(v) = s.strip_suffix('h') {
        (v, 3600.0)
    } else {
        (s, 1.0)
    };
    let x: f64 = num.trim().parse().map_err(|e| format!("{s:?}: {e}"))?;
    if !(x.is_finite() && x >= 0.0) {
        return Err(format!("{s:?}: must be a non-negative time"));
    }
    Ok(Duration::from_secs_f64(x * scale))
}

/// What the blobs are.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BlobSet {
    /// One blob.
    #[default]
    Single,
    /// The layers of one image, pulled concurrently.
    Layers,
    /// Many distinct blobs, pulled concurrently.
    Blobs,
}

/// Churn: `count` agents killed at `at`, restarted `restart` later if given.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Churn {
    pub count: usize,
    pub at: Duration,
    pub restart: Option<Duration>,
}

/// What every agent pulls and when.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Scenario {
    pub set: BlobSet,
    /// Blob sizes; every agent pulls all of them concurrently.
    pub blobs: Vec<u64>,
    /// The last `count` agents start `at` after the others.
    pub late: Option<AtTime>,
    /// The first `count` agents are killed at `at`.
    pub churn: Option<Churn>,
}

impl Scenario {
    /// One blob of `size` bytes to every agent at once.
    pub fn single(size: u64) -> Scenario {
        Scenario { set: BlobSet::Single, blobs: vec![size], late: None, churn: None }
    }

    /// Total bytes per agent, `F_total`.
    pub fn total_bytes(&self) -> u64 {
        self.blobs.iter().sum()
    }

    /// Checks the scenario against `n` agents.
    pub fn validate(&self, n: usize) -> anyhow::Result<()> {
        anyhow::ensure!(!self.blobs.is_empty(), "the scenario has no blobs");
        anyhow::ensure!(self.blobs.iter().all(|&b| b > 0), "every blob needs at least one byte");
        let late = self.late.map_or(0, |l| l.count);
        let churn = self.churn.map_or(0, |c| c.count);
        anyhow::ensure!(
            late + churn <= n,
            "--late-join {late} and --churn {churn} agents must be distinct: {} > {n} agents",
            late + churn
        );
        Ok(())
    }

    /// When agent `i` of `n` starts its pulls.
    pub fn start_of(&self, i: usize, n: usize) -> Duration {
        match self.late {
            Some(l) if i >= n.saturating_sub(l.count) => l.at,
            _ => Duration::ZERO,
        }
    }

    /// Agent `i` is one of the churned ones.
    pub fn churned(&self, i: usize) -> bool {
        self.churn.is_some_and(|c| i < c.count)
    }

    /// A one-line description, e.g. "image of 3 layers (…) to 10 agents, layers concurrently".
    pub fn describe(&self, n: usize) -> String {
        let total = human_bytes(self.total_bytes());
        let mut s = match self.set {
            BlobSet::Single => format!("one blob to {n} agents"),
            BlobSet::Layers => format!(
                "image of {} layers ({} = {total}) to {n} agents, layers pulled concurrently",
                self.blobs.len(),
                self.blobs.iter().map(|&b| human_bytes(b)).collect::<Vec<_>>().join(" + "),
            ),
            BlobSet::Blobs => format!(
                "{} distinct blobs of {} ({total} in all) to {n} agents, each agent pulls all concurrently",
                self.blobs.len(),
                human_bytes(self.blobs[0])
            ),
        };
        if let Some(l) = self.late {
            let _ = write!(s, "; {} late joiner(s) starting at {:.1}s", l.count, l.at.as_secs_f64());
        }
        if let Some(c) = self.churn {
            let _ = write!(s, "; {} agent(s) killed at {:.1}s", c.count, c.at.as_secs_f64());
            match c.restart {
                Some(r) => {
                    let _ = write!(s, " and restarted {:.1}s later on the same store", r.as_secs_f64());
                }
                None => s.push_str(" and not restarted"),
            }
        }
        s
    }

    /// The report's account of the scenario.
    pub fn info(&self) -> ScenarioInfo {
        let bound_note = if self.late.is_some() || self.churn.is_some() {
            "T* is for the static case only (every agent present from the start, none killed); late joiners and churn are not in it"
        } else if self.blobs.len() > 1 {
            "T* uses F_total, the bytes of all the blobs one agent pulls"
        } else {
            "T* for the one blob"
        };
        ScenarioInfo {
            set: self.set,
            blobs: self.blobs.clone(),
            late_join: self.late.map(|l| LateJoinInfo { count: l.count, after_secs: l.at.as_secs_f64() }),
            churn: self.churn.map(|c| ChurnInfo {
                count: c.count,
                at_secs: c.at.as_secs_f64(),
                restart_after_secs: c.restart.map(|r| r.as_secs_f64()),
            }),
            bound_note: bound_note.into(),
        }
    }
}

/// The scenario as the report states it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ScenarioInfo {
    pub set: BlobSet,
    /// Blob sizes, bytes; each agent pulls all of them.
    pub blobs: Vec<u64>,
    pub late_join: Option<LateJoinInfo>,
    pub churn: Option<ChurnInfo>,
    /// What T* covers in this scenario.
    pub bound_note: String,
}

/// The late joiners.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct LateJoinInfo {
    pub count: usize,
    pub after_secs: f64,
}

/// The churn.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChurnInfo {
    pub count: usize,
    pub at_secs: f64,
    pub restart_after_secs: Option<f64>,
}

/// Bytes a node has received and sent for some blobs; also an agent's
/// `/debug/blobs/<digest>` answer, whose other fields are ignored.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct Stats {
    pub from_origin: u64,
    pub from_peers: u64,
    pub uploaded: u64,
}

impl std::ops::AddAssign for Stats {
    fn add_assign(&mut self, o: Stats) {
        self.from_origin += o.from_origin;
        self.from_peers += o.from_peers;
        self.uploaded += o.uploaded;
    }
}

/// A running cluster's agents, as [`drive`] needs them.
pub(crate) trait Nodes {
    /// The base URL (`http://host:port`) of agent `i`'s HTTP API, `None` while it is down.
    fn agent_url(&self, i: usize) -> Option<String>;
    /// What agent `i` has received and sent for `digests` since it (re)started.
    async fn stats(&self, i: usize, digests: &[Digest]) -> Stats;
    /// Stops agent `i` abruptly (its store stays).
    async fn kill(&mut self, i: usize) -> anyhow::Result<()>;
    /// Starts agent `i` again on its store.
    async fn restart(&mut self, i: usize) -> anyhow::Result<()>;
}

/// How [`drive`] observes a run.
#[derive(Clone, Debug)]
pub struct DriveOptions {
    pub timeout: Duration,
    pub sample_every: Duration,
    pub progress: bool,
}

/// Per-agent state while a scenario runs.
struct AgentRun {
    start_at: Duration,
    /// Bumped on every (re)start; results of older pulls are ignored.
    generation: u64,
    task: Option<tokio::task::AbortHandle>,
    started: Option<Instant>,
    carried: Stats,
    running: bool,
    killed_at: Option<f64>,
    restarted_at: Option<f64>,
    result: Option<(f64, u64, bool)>,
}

enum Event {
    Start(usize),
    Kill(usize),
    Restart(usize),
}

/// Runs `sc` on `nodes` (agents `0..n`, every one pulling `targets`) and returns each agent's
/// pull, in agent order, and the delivered-bytes timeline.
pub(crate) async fn drive<N: Nodes>(
    nodes: &mut N,
    n: usize,
    targets: &[Target],
    sc: &Scenario,
    o: &DriveOptions,
) -> anyhow::Result<(Vec<AgentPull>, Vec<Sample>)> {
    let http = reqwest::Client::new();
    let digests: &[Digest] = &Target::digests(targets);
    let t0 = Instant::now();
    let mut agents: Vec<AgentRun> = (0..n)
        .map(|i| AgentRun {
            start_at: sc.start_of(i, n),
            generation: 0,
            task: None,
            started: None,
            carried: Stats::default(),
            running: true,
            killed_at: None,
            restarted_at: None,
            result: None,
        })
        .collect();
    let mut events: Vec<(Duration, Event)> = (0..n).map(|i| (agents[i].start_at, Event::Start(i))).collect();
    if let Some(c) = sc.churn {
        for i in 0..c.count.min(n) {
            // A restart is scheduled when its kill happens.
            events.push((c.at, Event::Kill(i)));
        }
    }
    // Stable: at equal times, starts before kills before restarts, in agent order.
    events.sort_by_key(|(t, _)| *t);
    events.reverse();
    // (agent, generation, when its pulls ended, bytes and whether every digest matched)
    let (tx, mut rx) = mpsc::unbounded_channel::<(usize, u64, Instant, anyhow::Result<(u64, bool)>)>();
    let spawn_pull = |i: usize, gen_: u64, base: String| {
        let (http, tx, targets) = (http.clone(), tx.clone(), targets.to_vec());
        tokio::spawn(async move {
            let http = &http;
            let fetches = targets.iter().map(|t| {
                let url = format!("{base}/blobs/{}", t.digest);
                async move { fetch_and_check(http, &url, t, &[]).await.with_context(|| format!("agent {i}")) }
            });
            let r = futures::future::join_all(fetches)
                .await
                .into_iter()
                .try_fold((0u64, true), |(bytes, ok), r| r.map(|(b, good)| (bytes + b, ok && good)));
            let _ = tx.send((i, gen_, Instant::now(), r));
        })
        .abort_handle()
    };
    let mut timeline = Vec::new();
    let mut tick = tokio::time::interval(o.sample_every.max(Duration::from_millis(10)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let deadline = tokio::time::sleep(o.timeout);
    tokio::pin!(deadline);
    let mut done = 0usize;
    let finished = |agents: &[AgentRun]| {
        agents.iter().all(|a| a.result.is_some() || (a.killed_at.is_some() && !a.running && a.restarted_at.is_none()))
            && !agents.is_empty()
    };
    // Bounded by the deadline; every branch either makes progress or ends the loop.
    loop {
        let pending_restarts = events.iter().any(|(_, e)| matches!(e, Event::Restart(_) | Event::Kill(_)));
        if finished(&agents) && !pending_restarts {
            break;
        }
        let next = events.last().map(|(t, _)| t0 + *t);
        tokio::select! {
            Some((i, gen_, ended, r)) = rx.recv() => {
                let a = &mut agents[i];
                if gen_ != a.generation || !a.running {
                    continue;
                }
                let (bytes, ok) = r?;
                let secs = a.started.map_or(0.0, |s| ended.saturating_duration_since(s).as_secs_f64());
                a.result = Some((secs, bytes, ok));
                a.task = None;
                if o.progress {
                    done += 1;
                    eprintln!("[{done:>4}/{n}] agent {i} done in {secs:.3}s");
                }
            }
            () = sleep_until_opt(next) => {
                let now = t0.elapsed();
                while events.last().is_some_and(|(t, _)| *t <= now) {
                    let Some((_, ev)) = events.pop() else { break };
                    match ev {
                        Event::Start(i) => {
                            let base = nodes.agent_url(i).ok_or_else(|| anyhow::anyhow!("agent {i} is not running"))?;
                            let a = &mut agents[i];
                            a.started = Some(Instant::now());
                            a.task = Some(spawn_pull(i, a.generation, base));
                        }
                        Event::Kill(i) => {
                            let at = t0.elapsed();
                            let s = nodes.stats(i, digests).await;
                            let a = &mut agents[i];
                            a.generation += 1;
                            if let Some(t) = a.task.take() {
                                t.abort();
                            }
                            a.carried += s;
                            a.running = false;
                            a.killed_at = Some(at.as_secs_f64());
                            nodes.kill(i).await?;
                            if let Some(r) = sc.churn.and_then(|c| c.restart) {
                                let when = t0.elapsed() + r;
                                // `events` is in descending time order; pops take the earliest.
                                let pos = events.partition_point(|(t, _)| *t > when);
                                events.insert(pos, (when, Event::Restart(i)));
                            }
                            if o.progress {
                                eprintln!("agent {i} killed at {:.3}s{}", t0.elapsed().as_secs_f64(),
                                    if a.result.is_some() { " (it had finished)" } else { "" });
                            }
                        }
                        Event::Restart(i) => {
                            // When the restart was issued; the node is ready a little later.
                            let at = t0.elapsed();
                            nodes.restart(i).await?;
                            let a = &mut agents[i];
                            a.running = true;
                            a.restarted_at = Some(at.as_secs_f64());
                            if o.progress {
                                eprintln!("agent {i} restarted at {:.3}s", t0.elapsed().as_secs_f64());
                            }
                            if a.result.is_none() {
                                let base = nodes.agent_url(i).ok_or_else(|| anyhow::anyhow!("agent {i} did not restart"))?;
                                a.started.get_or_insert_with(Instant::now);
                                a.task = Some(spawn_pull(i, a.generation, base));
                            }
                        }
                    }
                }
            }
            _ = tick.tick() => {
                let secs = t0.elapsed().as_secs_f64();
                let nodes = &*nodes;
                let live = futures::future::join_all(
                    agents.iter().enumerate().filter(|(_, a)| a.running).map(|(i, _)| nodes.stats(i, digests)),
                )
                .await;
                let carried: u64 = agents.iter().map(|a| a.carried.from_origin + a.carried.from_peers).sum();
                let delivered = carried + live.iter().map(|s| s.from_origin + s.from_peers).sum::<u64>();
                timeline.push(Sample { secs, delivered });
            }
            () = &mut deadline => {
                for a in &agents {
                    if let Some(t) = &a.task {
                        t.abort();
                    }
                }
                let left: Vec<usize> = (0..n).filter(|&i| agents[i].result.is_none() && agents[i].running).collect();
                anyhow::bail!("pull did not finish within {:?}; agents not done: {left:?}", o.timeout);
            }
        }
    }
    let mut out = Vec::with_capacity(n);
    for (i, a) in agents.iter().enumerate() {
        let mut s = a.carried;
        if a.running {
            s += nodes.stats(i, digests).await;
        }
        let (secs, bytes, verified) = a.result.unwrap_or((f64::NAN, 0, false));
        out.push(AgentPull {
            agent: i,
            secs: if a.result.is_some() { secs } else { 0.0 },
            bytes,
            verified,
            from_origin: s.from_origin,
            from_peers: s.from_peers,
            uploaded: s.uploaded,
            started_secs: a.start_at.as_secs_f64(),
            late: !a.start_at.is_zero(),
            killed_secs: a.killed_at,
            restarted_secs: a.restarted_at,
            finished: a.result.is_some(),
        });
    }
    let secs = out.iter().filter(|p| p.finished).map(|p| p.started_secs + p.secs).fold(0.0, f64::max);
    timeline.push(Sample { secs, delivered: out.iter().map(|p| p.from_origin + p.from_peers).sum() });
    Ok((out, timeline))
}

async fn sleep_until_opt(t: Option<Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_take_every_unit_the_help_names() {
        let cases = [("500ms", 0.5), ("1.5s", 1.5), ("2m", 120.0), ("1h", 3600.0), ("7", 7.0)];
        for (text, secs) in cases {
            assert_eq!(parse_secs(text).unwrap(), Duration::from_secs_f64(secs), "{text}");
        }
        assert!(parse_secs("-1s").is_err() && parse_secs("1d").is_err());
    }

    #[test]
    fn parses_k_at_t() {
        assert_eq!("2@5s".parse::<AtTime>().unwrap(), AtTime { count: 2, at: Duration::from_secs(5) });
        assert_eq!("1@500ms".parse::<AtTime>().unwrap().at, Duration::from_millis(500));
        assert_eq!("3@1.5".parse::<AtTime>().unwrap().at, Duration::from_millis(1500));
        assert!("3".parse::<AtTime>().is_err());
        assert!("x@1s".parse::<AtTime>().is_err());
        assert!("1@-1s".parse::<AtTime>().is_err());
    }

    #[test]
    fn late_joiners_are_the_last_and_churn_the_first() {
        let sc = Scenario {
            late: Some(AtTime { count: 2, at: Duration::from_secs(3) }),
            churn: Some(Churn { count: 1, at: Duration::from_secs(1), restart: None }),
            ..Scenario::single(10)
        };
        sc.validate(4).unwrap();
        let starts: Vec<u64> = (0..4).map(|i| sc.start_of(i, 4).as_secs()).collect();
        assert_eq!(starts, [0, 0, 3, 3]);
        assert!(sc.churned(0) && !sc.churned(1));
        assert!(sc.validate(2).is_err());
        assert!(sc.describe(4).contains("late joiner"));
        assert!(sc.info().bound_note.contains("static case"));
    }

    #[test]
    fn describes_layers_with_the_total() {
        let sc = Scenario { set: BlobSet::Layers, blobs: vec![2 << 20, 1 << 20], late: None, churn: None };
        assert_eq!(sc.total_bytes(), 3 << 20);
        let d = sc.describe(5);
        assert!(d.starts_with("image of 2 layers"), "{d}");
        assert!(sc.info().bound_note.contains("F_total"));
    }
}
