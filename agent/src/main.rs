//! `shoal-agent`: parses config, binds, runs the agent until SIGTERM, drains. Its `configure`
//! subcommand instead writes the config that makes a container runtime pull through the agent
//! (the text comes from `shoal_agent::runtime_config`), and exits.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use clap::{Parser, Subcommand};
use shoal_agent::runtime_config::{self, FileContent, Mirror};
use shoal_runtime::config;
use tokio_util::sync::CancellationToken;

/// mimalloc returns freed piece buffers to the OS promptly; glibc malloc keeps an arena per
/// thread that held one, which took an agent moving a 4 GiB blob well past 64 MiB of RSS.
/// Counted, for `shoal_heap_bytes` (`shoal_runtime::alloc`).
#[global_allocator]
static GLOBAL: cap::Cap<mimalloc::MiMalloc> = cap::Cap::new(mimalloc::MiMalloc, usize::MAX);

#[derive(Parser)]
#[command(version = shoal_runtime::VERSION, about = "Shoal agent: pulls container image blobs through the peer-to-peer swarm")]
#[command(args_conflicts_with_subcommands = true)]
struct Args {
    #[command(subcommand)]
    command: Option<Command>,
    /// YAML config file (unknown keys are errors). Without it the embedded defaults apply.
    #[arg(long, env = "SHOAL_AGENT_CONFIG")]
    config: Option<PathBuf>,
    /// Overrides `listen`.
    #[arg(long, env = "SHOAL_AGENT_LISTEN")]
    listen: Option<SocketAddr>,
    /// Overrides `peer_listen`.
    #[arg(long, env = "SHOAL_AGENT_PEER_LISTEN")]
    peer_listen: Option<SocketAddr>,
    /// Overrides `swarm.store_dir`.
    #[arg(long, env = "SHOAL_AGENT_STORE")]
    store: Option<PathBuf>,
    /// Overrides the IP of `swarm.advertise_addr`, the address peers dial; the port stays
    /// `swarm.advertise_addr`'s, else `peer_listen`'s. For a node's IP from the environment
    /// (Kubernetes: `status.hostIP`).
    #[arg(long, env = "SHOAL_AGENT_ADVERTISE_IP")]
    advertise_ip: Option<IpAddr>,
    /// Overrides `swarm.zone`, the node's topology zone; empty leaves the config's. For a
    /// zone from the environment (Kubernetes: the pod's `topology.kubernetes.io/zone` label,
    /// which Kubernetes 1.35 copies from the node).
    #[arg(long, env = "SHOAL_AGENT_ZONE")]
    zone: Option<String>,
    /// Validates the config and exits: 0 if good, 64 if not.
    #[arg(long)]
    check_config: bool,
}

#[derive(Subcommand)]
enum Command {
    /// Writes the config that makes a container runtime pull through this agent, with the
    /// registry itself as the fallback, and exits. Runtimes read it without a restart
    /// (dockerd: on SIGHUP).
    #[command(subcommand)]
    Configure(Runtime),
}

#[derive(Subcommand)]
enum Runtime {
    /// containerd (ctr, nerdctl, the kubelet through CRI): one hosts.toml per registry and a
    /// `_default` catch-all under the hosts directory, merged into the hosts.toml files already
    /// there (a file that cannot be merged is refused, never overwritten).
    Containerd {
        #[command(flatten)]
        common: Common,
        /// containerd's hosts directory (the CRI plugin's `config_path`).
        #[arg(long, default_value = "/etc/containerd/certs.d")]
        hosts_dir: PathBuf,
        /// containerd's main config, read to tell whether `config_path` is set.
        #[arg(long, default_value = "/etc/containerd/config.toml")]
        containerd_config: PathBuf,
    },
    /// podman, skopeo, buildah and cri-o (containers/image): a registries.conf drop-in.
    Podman {
        #[command(flatten)]
        common: Common,
        /// The drop-in to write.
        #[arg(long, default_value = "/etc/containers/registries.conf.d/shoal.conf")]
        file: PathBuf,
    },
    /// dockerd: adds the agent to `registry-mirrors` in daemon.json (Docker Hub only).
    Docker {
        #[command(flatten)]
        common: Common,
        /// dockerd's config file; other keys in it are kept.
        #[arg(long, default_value = "/etc/docker/daemon.json")]
        daemon_json: PathBuf,
    },
}

#[derive(clap::Args)]
struct Common {
    /// The agent's registry address as the runtime reaches it (its `listen`); an IPv6
    /// address in brackets, `[fd00::1]:7700`.
    #[arg(long, default_value = "127.0.0.1:7700")]
    agent: String,
    /// Replaces the host of `--agent` with this IP (IPv4 or IPv6), e.g. the node's IP from the
    /// environment.
    #[arg(long)]
    agent_ip: Option<IpAddr>,
    /// A registry host to mirror, as image references name it; repeat for more.
    #[arg(long = "registry", default_value = runtime_config::DOCKER_HUB)]
    registries: Vec<String>,
    /// REGISTRY=URL: where REGISTRY's pulls go when the agent is down (also mirrors
    /// REGISTRY). Default https://REGISTRY, https://registry-1.docker.io for docker.io.
    #[arg(long = "upstream", value_parser = parse_upstream)]
    upstreams: Vec<(String, String)>,
    /// Prints the files instead of writing them.
    #[arg(long)]
    dry_run: bool,
    /// Removes what `configure` wrote instead: files Shoal wrote whole, and Shoal's block in a
    /// containerd hosts.toml it merged into (daemon.json: the agent's mirror). Nothing else.
    #[arg(long, conflicts_with = "dry_run")]
    uninstall: bool,
}

fn parse_upstream(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("expected REGISTRY=URL, got '{s}'"))
}

impl Common {
    fn mirror(&self) -> Result<Mirror, runtime_config::ConfigureError> {
        let mut registries = self.registries.clone();
        registries.extend(self.upstreams.iter().map(|(k, _)| k.clone()));
        Mirror::new(&self.agent, self.agent_ip, &registries, &self.upstreams)
    }
}

/// Runs `configure`; the exit code is 64 for bad input, 1 when writing fails.
fn configure(runtime: &Runtime) -> i32 {
    match try_configure(runtime) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("shoal-agent configure: {e:#}");
            if e.downcast_ref::<runtime_config::ConfigureError>().is_some_and(|e| e.is_usage()) { 64 } else { 1 }
        }
    }
}

/// `configure ... --uninstall`: takes out what `configure` wrote, and says what it did.
fn uninstall(runtime: &Runtime) -> anyhow::Result<()> {
    use anyhow::Context;
    use runtime_config::Uninstall;
    let mut out = String::new();
    let mut remove_whole = |path: &std::path::Path| -> anyhow::Result<()> {
        match std::fs::read_to_string(path) {
            Ok(t) if runtime_config::uninstall_text(&t).is_none() => {
                std::fs::remove_file(path).with_context(|| format!("removing {}", path.display()))?;
                out.push_str(&format!("removed {}\n", path.display()));
            }
            Ok(_) => out.push_str(&format!("left {}: not written by shoal-agent\n", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        }
        Ok(())
    };
    match runtime {
        Runtime::Containerd { hosts_dir, .. } => {
            let done = runtime_config::containerd_uninstall(hosts_dir)
                .with_context(|| format!("uninstalling from {}", hosts_dir.display()))?;
            for d in done {
                match d {
                    Uninstall::Removed(p) => out.push_str(&format!("removed {}\n", p.display())),
                    Uninstall::Unmerged(p) => out.push_str(&format!("took the agent's block out of {}\n", p.display())),
                }
            }
        }
        Runtime::Podman { file, .. } => remove_whole(file)?,
        Runtime::Docker { common, daemon_json } => {
            let m = common.mirror()?;
            match std::fs::read_to_string(daemon_json) {
                Ok(t) => {
                    let contents = m.daemon_json_without(daemon_json, &t)?;
                    if runtime_config::write_atomic(daemon_json, &contents)
                        .with_context(|| format!("writing {}", daemon_json.display()))?
                    {
                        out.push_str(&format!("took http://{} out of {}\n", m.agent, daemon_json.display()));
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e).with_context(|| format!("reading {}", daemon_json.display())),
            }
        }
    }
    let _ = std::io::Write::write_all(&mut std::io::stdout().lock(), out.as_bytes());
    Ok(())
}

fn try_configure(runtime: &Runtime) -> anyhow::Result<()> {
    use anyhow::Context;
    let (Runtime::Containerd { common, .. } | Runtime::Podman { common, .. } | Runtime::Docker { common, .. }) =
        runtime;
    if common.uninstall {
        return uninstall(runtime);
    }
    let (common, files, notes) = match runtime {
        Runtime::Containerd { common, hosts_dir, containerd_config } => {
            let m = common.mirror()?;
            let mut notes = vec![format!(
                "containerd reads {} on every pull: no restart needed (ctr needs --hosts-dir {}).",
                hosts_dir.display(),
                hosts_dir.display()
            )];
            let config = std::fs::read_to_string(containerd_config).ok();
            let set = config.as_deref().and_then(runtime_config::containerd_config_path_set);
            if set != Some(true) {
                notes.push(format!(
                    "{} does not set the CRI plugin's config_path; add this once and restart containerd:\n{}",
                    containerd_config.display(),
                    runtime_config::containerd_config_path_hint(hosts_dir, config.as_deref())
                ));
            }
            (common, m.containerd_install(hosts_dir)?, notes)
        }
        Runtime::Podman { common, file } => {
            let m = common.mirror()?;
            let files = vec![FileContent { path: file.clone(), contents: m.registries_conf() }];
            let notes = vec!["podman, skopeo and cri-o read it on every command: no restart needed.".to_string()];
            (common, files, notes)
        }
        Runtime::Docker { common, daemon_json } => {
            let m = common.mirror()?;
            let existing = match std::fs::read_to_string(daemon_json) {
                Ok(t) => Some(t),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                Err(e) => return Err(e).with_context(|| format!("reading {}", daemon_json.display())),
            };
            let contents = m.daemon_json(daemon_json, existing.as_deref())?;
            let mut notes = vec![
                "dockerd reloads registry-mirrors on SIGHUP: `systemctl reload docker` or `kill -HUP $(pidof dockerd)`."
                    .to_string(),
                "dockerd uses registry mirrors for Docker Hub images only.".to_string(),
            ];
            if m.registries.iter().any(|r| r.host != runtime_config::DOCKER_HUB) {
                notes.push(
                    "other registries are pulled directly by dockerd; use containerd's hosts.toml for them.".into(),
                );
            }
            (common, vec![FileContent { path: daemon_json.clone(), contents }], notes)
        }
    };
    // Collected and written at once: a closed stdout (`| head`) must not stop the writes.
    let mut out = String::new();
    for f in &files {
        if common.dry_run {
            out.push_str(&format!("# {}\n{}\n", f.path.display(), f.contents));
        } else {
            let changed = runtime_config::write_atomic(&f.path, &f.contents)
                .with_context(|| format!("writing {}", f.path.display()))?;
            out.push_str(&format!("{} {}\n", if changed { "wrote" } else { "unchanged" }, f.path.display()));
        }
    }
    for n in notes {
        out.push_str(&n);
        out.push('\n');
    }
    let _ = std::io::Write::write_all(&mut std::io::stdout().lock(), out.as_bytes());
    Ok(())
}

fn load(args: &Args) -> Result<shoal_agent::ValidConfig, config::ConfigError> {
    let names = config::PeerNames::for_check_config(args.check_config);
    let mut cfg: shoal_agent::Config = config::load_resolving(args.config.as_deref(), names)?;
    if let Some(a) = args.listen {
        cfg.listen = a;
    }
    if let Some(a) = args.peer_listen {
        cfg.peer_listen = a;
    }
    if let Some(s) = &args.store {
        cfg.swarm.store_dir = s.clone();
    }
    if let Some(ip) = args.advertise_ip {
        let port = cfg.swarm.advertise_addr.unwrap_or(cfg.peer_listen).port();
        cfg.swarm.advertise_addr = Some(SocketAddr::new(ip, port));
    }
    if let Some(zone) = args.zone.as_deref().filter(|z| !z.is_empty()) {
        cfg.swarm.zone = Some(zone.to_owned());
    }
    cfg.validate()
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    shoal_runtime::alloc::count_heap_with(|| GLOBAL.allocated());
    let args = Args::parse();
    if let Some(Command::Configure(runtime)) = &args.command {
        std::process::exit(configure(runtime));
    }
    let cfg = shoal_runtime::config_or_exit("shoal-agent", load(&args), args.check_config);
    shoal_runtime::init_tracing("info", cfg.config.log_format);
    shoal_runtime::alloc::no_huge_pages();
    if cfg.tls.is_none() {
        shoal_runtime::tls::warn_plaintext("agent");
    }
    let listeners = shoal_agent::Listeners::bind(cfg.config.listen, cfg.config.peer_listen).await?;
    let metrics = match cfg.config.metrics_listen {
        Some(addr) => Some(tokio::net::TcpListener::bind(addr).await?),
        None => None,
    };
    let grace = cfg.config.shutdown_grace.get();
    let shutdown = CancellationToken::new();
    let registry = prometheus::Registry::new();
    let (agent, serve) = shoal_agent::start(cfg, listeners, registry, shutdown.clone()).await?;
    let admin = metrics.map(|l| shoal_agent::serve_admin(&agent, l, shutdown.clone(), grace));
    let serve = async move {
        match admin {
            Some(admin) => futures::future::try_join(serve, admin).await.map(|_| ()),
            None => serve.await,
        }
    };
    shoal_runtime::serve_until_signal(serve, shutdown).await
}
