//! One measured run of a scenario ([`crate::scenario`]; "one blob to N agents" by default) on
//! an in-process cluster, from a [`LocalOptions`] to a [`RunReport`]; the CLI's `local` and
//! `bench` both call [`run`], which dispatches on the mode. What the modes share (the options,
//! store base, `--swarm` settings, report labels) is in [`crate::modes`].
//!
//! Sequence: pick a store directory (tmpfs by default), start the cluster, put the scenario's
//! random blobs in the origin backend, reset the peak-RSS counter, drive the scenario (pulls,
//! late starts, kills and restarts, sampling delivered bytes), read CPU time, then optionally
//! measure the origin-only baseline (of the first blob, scaled to all of them by fetching each
//! in turn), then shut the cluster down. CPU and RSS cover the swarm pull only.

use std::time::Duration;

use shoal_core::Digest;

use crate::baseline::{self, BaselineOptions};
use crate::cluster::{Cluster, random_blob};
use crate::modes::{LocalOptions, Mode, default_store_base, digest_label, placed_line, swarm_with};
use crate::pull::Target;
use crate::report::{self, Caps, DIGEST_READ_BACK, Resources, RunReport, RunSpec, STORE_WRITE_SECONDS, Store};
use crate::scenario::{Nodes, Scenario, Stats, drive};

/// Runs the scenario once in `o.mode`.
pub async fn run(o: &LocalOptions) -> anyhow::Result<RunReport> {
    match o.mode {
        Mode::InProcess => run_local(o).await,
        Mode::Processes => crate::processes::run_processes(o).await,
        Mode::Netns => crate::netns::run_netns(o).await,
        Mode::Remote => crate::remote::run_remote(o).await,
    }
}

/// Runs the scenario once in this process and reports it. The report says whether every copy
/// verified; the caller decides whether a mismatch is an error.
pub async fn run_local(o: &LocalOptions) -> anyhow::Result<RunReport> {
    let sc = o.scenario();
    sc.validate(o.agents)?;
    let base = o.dir.clone().unwrap_or_else(default_store_base);
    std::fs::create_dir_all(&base)?;
    let tmp = tempfile::Builder::new().prefix("shoal-local-").tempdir_in(&base)?;
    let root = tmp.path().to_path_buf();
    let store = Store::detect(&root);
    if o.verbose {
        println!(
            "shoal local cluster: 1 tracker, {} origin(s), {} agents; {}; stores in {} ({})",
            o.origins,
            o.agents,
            sc.describe(o.agents),
            root.display(),
            store.kind,
        );
    }
    let cluster = Cluster::builder()
        .swarm(swarm_with(crate::cluster::test_swarm_config(), &o.swarm)?)
        .agents(o.agents)
        .origins(o.origins)
        .agent_rate(o.agent_rate)
        .origin_rate(o.origin_rate)
        .root(root)
        .tls(o.tls)
        .zones(o.zones)
        .start()
        .await?;
    let mut cluster = cluster;
    let res = measure(&mut cluster, o, &sc, store).await;
    cluster.shutdown().await;
    drop(tmp);
    res
}

/// Kills and restarts go through each agent's shutdown token, so a killed agent stops at
/// once and keeps its store.
impl Nodes for Cluster {
    fn agent_url(&self, i: usize) -> Option<String> {
        self.agents.get(i)?.as_ref().map(|a| format!("http://{}", a.handle.http_addr))
    }

    async fn stats(&self, i: usize, digests: &[Digest]) -> Stats {
        let mut s = Stats::default();
        if let Some(Some(a)) = self.agents.get(i) {
            for d in digests {
                if let Some(b) = a.handle.swarm.stats(d) {
                    s += Stats { from_origin: b.from_origin, from_peers: b.from_peers, uploaded: b.uploaded };
                }
            }
        }
        s
    }

    async fn kill(&mut self, i: usize) -> anyhow::Result<()> {
        let n =
            self.agents.get_mut(i).and_then(Option::take).ok_or_else(|| anyhow::anyhow!("agent {i} is not running"))?;
        n.shutdown.cancel();
        let abort = n.task.abort_handle();
        if tokio::time::timeout(Duration::from_secs(10), n.task).await.is_err() {
            abort.abort();
        }
        Ok(())
    }

    async fn restart(&mut self, i: usize) -> anyhow::Result<()> {
        self.start_agent(i, None).await
    }
}

/// `sizes.len()` random blobs placed in the cluster's backend.
fn place_blobs(cluster: &Cluster, sizes: &[u64]) -> anyhow::Result<Vec<Target>> {
    sizes
        .iter()
        .map(|&size| {
            let data = random_blob(size, rand::random());
            cluster.put_backend_blob(&data)?;
            Ok(Target::generated(&data))
        })
        .collect()
}

async fn measure(cluster: &mut Cluster, o: &LocalOptions, sc: &Scenario, store: Store) -> anyhow::Result<RunReport> {
    let targets = place_blobs(cluster, &sc.blobs)?;
    let digests = Target::digests(&targets);
    if !o.cold_origin {
        let agent = format!("http://{}", cluster.agent(0).http_addr);
        crate::pull::warm_origins(&reqwest::Client::new(), &agent, &digests).await?;
    }
    if o.verbose {
        println!("{}", placed_line(digests.len(), o.cold_origin));
    }
    let rss_reset = report::reset_peak_rss();
    let cpu0 = report::cpu_times();
    let written0 = cluster.agents_counter(STORE_WRITE_SECONDS);
    let read_back0 = cluster.agents_counter(DIGEST_READ_BACK);
    let (agents, timeline) =
        drive(cluster, o.agents, &targets, sc, &o.drive_options(Duration::from_millis(100))).await?;
    let cpu1 = report::cpu_times();
    let written = cluster.agents_counter(STORE_WRITE_SECONDS) - written0;
    let read_back = (cluster.agents_counter(DIGEST_READ_BACK) - read_back0) as u64;
    let mut resources = Resources::between(
        cpu0,
        cpu1,
        report::peak_rss(),
        None,
        format!(
            "this one process during the swarm pull: tracker, origins, agents and the harness's HTTP clients, which hash every copy (BLAKE3); peak RSS {}",
            if rss_reset { "since just before the pull" } else { "over the process lifetime (reset not allowed)" }
        ),
    );
    resources.store_write_secs = Some(written);
    resources.digest_read_back = Some(read_back);
    let origin_uploaded = cluster.origin_uploaded();
    let baseline = match o.baseline {
        None => None,
        Some(mode) => {
            if o.verbose {
                println!("measuring the origin-only baseline ({mode:?})");
            }
            let bopts = BaselineOptions {
                mode,
                n: agents.len(),
                origin_rate: o.origin_rate,
                agent_rate: o.agent_rate,
                timeout: o.timeout,
                progress: o.progress,
            };
            Some(baseline::measure_all(&cluster.origin_nodes[0].http, &targets, &bopts).await?)
        }
    };
    let spec = RunSpec {
        scenario: sc.describe(o.agents),
        mode: "in-process".into(),
        n_origins: o.origins,
        blob_bytes: sc.total_bytes(),
        digest: digest_label(&digests),
        caps: Caps { agent_rate: o.agent_rate, origin_rate: o.origin_rate, seeding_origins: o.origins.clamp(1, 3) },
        store,
        scenario_info: Some(sc.info()),
        link_emulation: String::new(),
    };
    let mut report = RunReport::new(spec, agents, origin_uploaded, timeline, resources, baseline);
    report.tls = o.tls;
    if o.zones > 0 {
        report.zone_copies = Some(zone_copies(cluster, o.zones, sc.total_bytes()));
    }
    Ok(report)
}

/// Per zone, the bytes its agents received from other zones' peers
/// (`shoal_swarm_cross_zone_bytes_total`), in copies of `bytes`.
pub fn zone_copies(cluster: &Cluster, zones: usize, bytes: u64) -> Vec<f64> {
    let mut into = vec![0u64; zones];
    for (i, a) in cluster.agents.iter().enumerate() {
        if let Some(a) = a {
            into[i % zones] += crate::cluster::counter(&a.registry, "shoal_swarm_cross_zone_bytes_total", None);
        }
    }
    into.iter().map(|&b| b as f64 / bytes.max(1) as f64).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::baseline::BaselineMode;

    /// The CI-sized real run: a few agents, a few MiB, capped, with the baseline and the
    /// written report. Correctness only: no timing assertions.
    #[tokio::test]
    async fn small_real_run_reports_consistently() {
        let out = tempfile::tempdir().unwrap();
        let o = LocalOptions {
            agents: 3,
            size: 4 << 20,
            agent_rate: Some(64 << 20),
            origin_rate: Some(64 << 20),
            dir: Some(out.path().join("stores")),
            timeout: Duration::from_secs(120),
            baseline: Some(BaselineMode::Concurrent),
            verbose: false,
            ..LocalOptions::default()
        };
        let r = run_local(&o).await.unwrap();
        assert!(r.verified_all, "{}", r.table());
        assert_eq!(r.agents.len(), 3);
        assert!(r.from_origin + r.from_peers >= 3 * (4 << 20));
        assert!(r.bound.is_some() && r.ratios.is_some() && r.speedup.is_some());
        assert!(r.baseline.as_ref().unwrap().verified_all);
        r.write(&out.path().join("report")).unwrap();
        let json = std::fs::read_to_string(out.path().join("report/report.json")).unwrap();
        let back: RunReport = serde_json::from_str(&json).unwrap();
        crate::report::assert_reports_close(&back, &r);
        let html = std::fs::read_to_string(out.path().join("report/report.html")).unwrap();
        assert!(html.contains("<svg"));
    }
}
