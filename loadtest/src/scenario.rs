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
//! still add up after a restart. Every wait is bounded by the run's timeout. [`drive`] owns
//! the clock, the nodes and the schedule; each agent's state is an `AgentRun` that its events
//! (start, pulls ended, kill, restart) move on, pure and tested on its own.

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

/// One agent's state while a scenario runs, moved on by the run's events: its start, the end
/// of its pulls, a kill and a restart. [`drive`] owns the clock and the nodes; these methods
/// only record what happened, so a pull ended before a kill cannot count after it.
struct AgentRun {
    /// When its pulls start, after the run began; read for the report.
    start_at: Duration,
    /// Bumped by every kill; a pull's result carries the generation it was spawned in, and
    /// results of older ones are ignored.
    generation: u64,
    /// The pulls in flight, aborted by a kill or the deadline.
    task: Option<tokio::task::AbortHandle>,
    /// When its pulls first started; its time counts from here, downtime included.
    started: Option<Instant>,
    /// What it received and sent before its kills, added to its live stats after a restart.
    carried: Stats,
    /// Its node is up (false from a kill to its restart).
    running: bool,
    /// Seconds after the run began.
    killed_at: Option<f64>,
    /// Seconds after the run began, when the restart was issued.
    restarted_at: Option<f64>,
    /// Its pulls' time from `started`, bytes, and whether every copy verified.
    result: Option<(f64, u64, bool)>,
}

impl AgentRun {
    fn new(start_at: Duration) -> AgentRun {
        AgentRun {
            start_at,
            generation: 0,
            task: None,
            started: None,
            carried: Stats::default(),
            running: true,
            killed_at: None,
            restarted_at: None,
            result: None,
        }
    }

    /// Its start time came: the clock starts at `now` and `spawn` starts its pulls in the
    /// current generation.
    fn on_start(&mut self, now: Instant, spawn: impl FnOnce(u64) -> tokio::task::AbortHandle) {
        self.started = Some(now);
        self.task = Some(spawn(self.generation));
    }

    /// Pulls spawned in generation `gen_` ended at `ended` with `r` (bytes, every copy
    /// verified). Returns the agent's time in seconds, or `None` when the result is stale (an
    /// older generation, or the node is down); a failed pull of the current generation is an
    /// error.
    fn on_pulled(&mut self, gen_: u64, ended: Instant, r: anyhow::Result<(u64, bool)>) -> anyhow::Result<Option<f64>> {
        if gen_ != self.generation || !self.running {
            return Ok(None);
        }
        let (bytes, ok) = r?;
        let secs = self.started.map_or(0.0, |s| ended.saturating_duration_since(s).as_secs_f64());
        self.result = Some((secs, bytes, ok));
        self.task = None;
        Ok(Some(secs))
    }

    /// Its node is being killed `at_secs` into the run, having received and sent `last` since
    /// it (re)started: its pulls are aborted and their results will be ignored.
    fn on_kill(&mut self, at_secs: f64, last: Stats) {
        self.generation += 1;
        self.abort();
        self.carried += last;
        self.running = false;
        self.killed_at = Some(at_secs);
    }

    /// Its node was restarted `at_secs` into the run. Returns whether it must pull again (it
    /// had not finished before the kill).
    fn on_restart(&mut self, at_secs: f64) -> bool {
        self.running = true;
        self.restarted_at = Some(at_secs);
        self.result.is_none()
    }

    /// Its pulls start again after a restart, in the new generation; its time keeps counting
    /// from its first start.
    fn on_resume(&mut self, now: Instant, spawn: impl FnOnce(u64) -> tokio::task::AbortHandle) {
        self.started.get_or_insert(now);
        self.task = Some(spawn(self.generation));
    }

    /// Aborts its pulls in flight, if any.
    fn abort(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }

    /// Nothing more will happen to it unless a restart is pending: it finished, or it is down
    /// after a kill with no restart yet.
    fn settled(&self) -> bool {
        self.result.is_some() || (self.killed_at.is_some() && !self.running && self.restarted_at.is_none())
    }

    /// It has neither finished nor been taken down.
    fn pending(&self) -> bool {
        self.result.is_none() && self.running
    }

    /// The report's line for agent `agent`, with `live`, what its node has received and sent
    /// since it last (re)started (`None` when it is down).
    fn pull(&self, agent: usize, live: Option<Stats>) -> AgentPull {
        let mut s = self.carried;
        if let Some(live) = live {
            s += live;
        }
        let (secs, bytes, verified) = self.result.unwrap_or((f64::NAN, 0, false));
        AgentPull {
            agent,
            secs: if self.result.is_some() { secs } else { 0.0 },
            bytes,
            verified,
            from_origin: s.from_origin,
            from_peers: s.from_peers,
            uploaded: s.uploaded,
            started_secs: self.start_at.as_secs_f64(),
            late: !self.start_at.is_zero(),
            killed_secs: self.killed_at,
            restarted_secs: self.restarted_at,
            finished: self.result.is_some(),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Event {
    Start(usize),
    Kill(usize),
    Restart(usize),
}

/// The run's scheduled events in descending time order, so `pop` takes the earliest: every
/// agent's start and the churned agents' kills. At equal times, starts come before kills, in
/// agent order. Restarts are added when their kill happens ([`schedule`]).
fn initial_events(sc: &Scenario, n: usize) -> Vec<(Duration, Event)> {
    let mut events: Vec<(Duration, Event)> = (0..n).map(|i| (sc.start_of(i, n), Event::Start(i))).collect();
    if let Some(c) = sc.churn {
        for i in 0..c.count.min(n) {
            events.push((c.at, Event::Kill(i)));
        }
    }
    // Stable, so equal times keep the order above once reversed and popped.
    events.sort_by_key(|(t, _)| *t);
    events.reverse();
    events
}

/// Adds `ev` at `when` to `events` (descending time order), after the events already due at
/// the same time.
fn schedule(events: &mut Vec<(Duration, Event)>, when: Duration, ev: Event) {
    let pos = events.partition_point(|(t, _)| *t > when);
    events.insert(pos, (when, ev));
}

/// What a pull task sends back: the agent, the generation it was spawned in, when its pulls
/// ended, and their bytes and whether every digest matched.
type Pulled = (usize, u64, Instant, anyhow::Result<(u64, bool)>);

/// Starts agent `i`'s pulls of every target from `base` (its HTTP API), concurrently; the
/// outcome goes to `tx` tagged with `gen_`.
fn spawn_pull(
    http: &reqwest::Client,
    tx: &mpsc::UnboundedSender<Pulled>,
    targets: &[Target],
    i: usize,
    gen_: u64,
    base: String,
) -> tokio::task::AbortHandle {
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
    let mut agents: Vec<AgentRun> = (0..n).map(|i| AgentRun::new(sc.start_of(i, n))).collect();
    let mut events = initial_events(sc, n);
    let (tx, mut rx) = mpsc::unbounded_channel::<Pulled>();
    let (http, tx) = (&http, &tx);
    let spawn = |i: usize, base: String| move |gen_: u64| spawn_pull(http, tx, targets, i, gen_, base);
    let mut timeline = Vec::new();
    let mut tick = tokio::time::interval(o.sample_every.max(Duration::from_millis(10)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let deadline = tokio::time::sleep(o.timeout);
    tokio::pin!(deadline);
    let mut done = 0usize;
    // Bounded by the deadline; every branch either makes progress or ends the loop.
    loop {
        let pending_restarts = events.iter().any(|(_, e)| matches!(e, Event::Restart(_) | Event::Kill(_)));
        if !agents.is_empty() && agents.iter().all(AgentRun::settled) && !pending_restarts {
            break;
        }
        let next = events.last().map(|(t, _)| t0 + *t);
        tokio::select! {
            Some((i, gen_, ended, r)) = rx.recv() => {
                if let Some(secs) = agents[i].on_pulled(gen_, ended, r)? && o.progress {
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
                            agents[i].on_start(Instant::now(), spawn(i, base));
                        }
                        Event::Kill(i) => {
                            let at = t0.elapsed();
                            let last = nodes.stats(i, digests).await;
                            agents[i].on_kill(at.as_secs_f64(), last);
                            nodes.kill(i).await?;
                            if let Some(r) = sc.churn.and_then(|c| c.restart) {
                                schedule(&mut events, t0.elapsed() + r, Event::Restart(i));
                            }
                            if o.progress {
                                eprintln!("agent {i} killed at {:.3}s{}", t0.elapsed().as_secs_f64(),
                                    if agents[i].result.is_some() { " (it had finished)" } else { "" });
                            }
                        }
                        Event::Restart(i) => {
                            // When the restart was issued; the node is ready a little later.
                            let at = t0.elapsed();
                            nodes.restart(i).await?;
                            let again = agents[i].on_restart(at.as_secs_f64());
                            if o.progress {
                                eprintln!("agent {i} restarted at {:.3}s", t0.elapsed().as_secs_f64());
                            }
                            if again {
                                let base = nodes.agent_url(i).ok_or_else(|| anyhow::anyhow!("agent {i} did not restart"))?;
                                agents[i].on_resume(Instant::now(), spawn(i, base));
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
                agents.iter_mut().for_each(AgentRun::abort);
                let left: Vec<usize> = (0..n).filter(|&i| agents[i].pending()).collect();
                anyhow::bail!("pull did not finish within {:?}; agents not done: {left:?}", o.timeout);
            }
        }
    }
    let mut out = Vec::with_capacity(n);
    for (i, a) in agents.iter().enumerate() {
        let live = if a.running { Some(nodes.stats(i, digests).await) } else { None };
        out.push(a.pull(i, live));
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
    fn starts_come_first_and_restarts_queue_behind_equal_times() {
        let sc = Scenario {
            late: Some(AtTime { count: 1, at: Duration::from_secs(1) }),
            churn: Some(Churn { count: 2, at: Duration::from_secs(1), restart: Some(Duration::from_secs(1)) }),
            ..Scenario::single(10)
        };
        let mut events = initial_events(&sc, 4);
        schedule(&mut events, Duration::from_secs(1), Event::Restart(3));
        schedule(&mut events, Duration::ZERO, Event::Restart(2));
        let order: Vec<(u64, Event)> = events.iter().rev().map(|(t, e)| (t.as_secs(), *e)).collect();
        use Event::{Kill, Restart, Start};
        let expect =
            [(0, Start(0)), (0, Start(1)), (0, Start(2)), (0, Restart(2)), (1, Start(3)), (1, Kill(0)), (1, Kill(1))];
        assert_eq!(order[..7], expect);
        assert_eq!(order[7], (1, Restart(3)));
    }

    /// A pull task that never ends, for the agent state's task slot.
    fn idle(_gen: u64) -> tokio::task::AbortHandle {
        tokio::spawn(std::future::pending::<()>()).abort_handle()
    }

    #[tokio::test]
    async fn a_pull_from_before_a_kill_is_ignored_and_time_counts_from_the_first_start() {
        let t0 = Instant::now();
        let secs = Duration::from_secs;
        let mut a = AgentRun::new(Duration::ZERO);
        a.on_start(t0, idle);
        assert!(a.pending() && !a.settled());
        a.on_kill(1.0, Stats { from_origin: 5, from_peers: 7, uploaded: 1 });
        assert!(a.task.is_none() && !a.pending() && a.settled());
        // The killed generation's pulls end later, one way or another: both are ignored.
        assert_eq!(a.on_pulled(0, t0 + secs(1), Ok((10, true))).unwrap(), None);
        assert_eq!(a.on_pulled(0, t0 + secs(1), Err(anyhow::anyhow!("connection reset"))).unwrap(), None);
        assert!(a.on_restart(2.0), "it had not finished, so it pulls again");
        assert!(a.pending() && !a.settled());
        a.on_resume(t0 + secs(2), idle);
        assert!(a.on_pulled(0, t0 + secs(3), Ok((10, true))).unwrap().is_none(), "still stale");
        assert_eq!(a.on_pulled(1, t0 + secs(3), Ok((10, true))).unwrap(), Some(3.0), "downtime included");
        assert!(a.task.is_none() && a.settled());
        let p = a.pull(4, Some(Stats { from_origin: 0, from_peers: 3, uploaded: 2 }));
        assert_eq!((p.agent, p.secs, p.bytes, p.verified, p.finished), (4, 3.0, 10, true, true));
        assert_eq!((p.from_origin, p.from_peers, p.uploaded), (5, 10, 3), "carried over the restart");
        assert_eq!((p.killed_secs, p.restarted_secs, p.late), (Some(1.0), Some(2.0), false));
    }

    #[tokio::test]
    async fn kills_before_and_after_finishing() {
        let t0 = Instant::now();
        // Finished, then killed and restarted: nothing to pull again, the result stands.
        let mut a = AgentRun::new(Duration::ZERO);
        a.on_start(t0, idle);
        assert_eq!(a.on_pulled(0, t0 + Duration::from_millis(1500), Ok((10, false))).unwrap(), Some(1.5));
        a.on_kill(2.0, Stats::default());
        assert!(!a.on_restart(3.0));
        assert!(a.settled() && !a.pending());
        let p = a.pull(0, None);
        assert_eq!((p.secs, p.verified, p.finished), (1.5, false, true));
        // A late joiner killed for good before finishing: settled, reported unfinished.
        let mut b = AgentRun::new(Duration::from_secs(2));
        b.on_start(t0, idle);
        b.on_kill(2.5, Stats { from_origin: 1, from_peers: 2, uploaded: 3 });
        assert!(b.settled() && !b.pending());
        let p = b.pull(1, None);
        assert_eq!((p.secs, p.bytes, p.finished, p.late, p.started_secs), (0.0, 0, false, true, 2.0));
        assert_eq!((p.from_origin, p.from_peers, p.uploaded, p.killed_secs), (1, 2, 3, Some(2.5)));
        // A pull of the current generation that failed is the run's error.
        let mut c = AgentRun::new(Duration::ZERO);
        c.on_start(t0, idle);
        assert!(c.on_pulled(0, t0, Err(anyhow::anyhow!("digest mismatch"))).is_err());
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
