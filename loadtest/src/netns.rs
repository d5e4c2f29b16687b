//! Network-namespace mode: every node is a real binary (as in [`crate::processes`]) in its own
//! network namespace, joined to the others by a veth pair to a bridge, and every link is capped
//! by a real `tc` qdisc rather than the nodes' own limiters.
//!
//! Layout of one run (`<pid>` is this process, `<r>` counts runs within it):
//! - namespaces `shoal-lt-<pid>-<r>-t` (tracker), `-o<k>` (origins), `-a<i>` (agents), each
//!   with `lo` up and `eth0` on 198.18.S.x/24, where S is a /24 of 198.18.0.0/15 that no
//!   address of the root namespace uses;
//! - in the root namespace, a bridge `sl<pid hex>-<r>b` holding 198.18.S.1 (the harness's own
//!   address, from which it drives the nodes' HTTP APIs) and the veth ends `sl<pid hex>-<r>v<k>`;
//! - on a capped node, an `htb` qdisc on the egress of both ends of its veth pair: `eth0`
//!   caps what the node sends (its upload), the root end what it receives (its download). The
//!   harness's own traffic (to and from 198.18.S.1) goes to an uncapped class, since it stands
//!   for the container runtime on the same host reading from the agent, not a network peer.
//!
//! Only addresses inside this /24 and loopback are ever used. [`Lab`] removes everything it
//! made when dropped (every exit path, including a cancelled run on Ctrl-C); `--cleanup`
//! ([`cleanup_leftovers`]) removes what a killed harness left behind.

use std::net::{IpAddr, Ipv4Addr};
use std::process::Command;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::Context;

use crate::modes::LocalOptions;
use crate::processes::{Launch, Layout, run_with};
use crate::report::RunReport;

/// [`crate::report::RunReport::link_emulation`] in this mode.
pub const LINK_TC: &str = "tc htb";
/// Every namespace this harness makes starts with this.
pub const NETNS_PREFIX: &str = "shoal-lt-";

/// Runs the scenario with every node in its own namespace.
pub async fn run_netns(o: &LocalOptions) -> anyhow::Result<RunReport> {
    check_available()?;
    let lab = Lab::create(o.origins, o.agents, o.agent_rate, o.origin_rate)?;
    if o.verbose {
        println!(
            "network namespaces {}* on 198.18.{}.0/24, bridge {}, links capped by tc htb (agents {}, origin {})",
            lab.prefix,
            lab.subnet,
            lab.bridge,
            o.agent_rate.map_or("uncapped".into(), |r| format!("{}/s", crate::report::human_bytes(r))),
            o.origin_rate.map_or("uncapped".into(), |r| format!("{}/s", crate::report::human_bytes(r))),
        );
    }
    let layout =
        Layout::at(lab.ip(2), (0..o.origins).map(|k| lab.ip(3 + k)), (0..o.agents).map(|i| lab.ip(3 + o.origins + i)));
    let launch = Launch::Netns {
        tracker: lab.ns("t"),
        origins: (0..o.origins).map(|k| lab.ns(&format!("o{k}"))).collect(),
        agents: (0..o.agents).map(|i| lab.ns(&format!("a{i}"))).collect(),
    };
    // The children (inside `run_with`) are gone before `lab` is dropped and removes their
    // namespaces.
    let r = run_with(o, layout, &launch).await;
    drop(lab);
    r
}

/// Checks that this process can make namespaces: effective uid 0 and a working `ip netns add`.
pub fn check_available() -> anyhow::Result<()> {
    let status = std::fs::read_to_string("/proc/self/status").context("reading /proc/self/status")?;
    let euid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|v| v.split_whitespace().nth(1))
        .and_then(|v| v.parse::<u32>().ok());
    anyhow::ensure!(
        euid == Some(0),
        "--mode netns needs root (effective uid 0; this process has {}): it creates network namespaces, veth pairs, a bridge and tc qdiscs",
        euid.map_or("an unknown uid".into(), |u| u.to_string())
    );
    let probe = format!("{NETNS_PREFIX}{}-probe", std::process::id());
    ip(&["netns", "add", &probe]).map_err(|e| {
        anyhow::anyhow!("--mode netns cannot create network namespaces here: `ip netns add {probe}` failed: {e:#}")
    })?;
    ip(&["netns", "del", &probe])?;
    Ok(())
}

/// Runs `ip <args>`; an error carries its stderr.
fn ip(args: &[&str]) -> anyhow::Result<()> {
    cmd("ip", args)
}

fn tc(args: &[&str]) -> anyhow::Result<()> {
    cmd("tc", args)
}

fn cmd(prog: &str, args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new(prog).args(args).output().with_context(|| format!("running {prog}"))?;
    anyhow::ensure!(
        out.status.success(),
        "`{prog} {}`: {}: {}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

fn output(prog: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(prog).args(args).output().with_context(|| format!("running {prog}"))?;
    anyhow::ensure!(out.status.success(), "`{prog} {}`: {}", args.join(" "), out.status);
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

static RUNS: AtomicUsize = AtomicUsize::new(0);
/// The /24s this process has in use, so concurrent runs in one process never share one.
static SUBNETS: Mutex<Vec<u8>> = Mutex::new(Vec::new());

/// One run's namespaces, bridge and links; removed on drop.
pub struct Lab {
    prefix: String,
    /// The third octet: nodes are 198.18.S.x.
    subnet: u8,
    bridge: String,
    veth_prefix: String,
    namespaces: Vec<String>,
    veths: Vec<String>,
    bridge_made: bool,
}

impl Lab {
    /// Makes the namespaces for a tracker, `origins` origins and `agents` agents, with the
    /// given caps (bytes/s; the tracker is never capped).
    pub fn create(
        origins: usize,
        agents: usize,
        agent_rate: Option<u64>,
        origin_rate: Option<u64>,
    ) -> anyhow::Result<Lab> {
        anyhow::ensure!(
            origins + agents <= 250,
            "--mode netns puts all nodes in one /24: at most 250 origins and agents, not {}",
            origins + agents
        );
        let pid = std::process::id();
        let r = RUNS.fetch_add(1, Ordering::Relaxed);
        let subnet = pick_subnet(pid)?;
        let mut lab = Lab {
            prefix: format!("{NETNS_PREFIX}{pid}-{r}-"),
            subnet,
            bridge: format!("sl{pid:x}-{r}b"),
            veth_prefix: format!("sl{pid:x}-{r}v"),
            namespaces: Vec::new(),
            veths: Vec::new(),
            bridge_made: false,
        };
        // From here on, a failure drops `lab`, which removes what was made.
        lab.setup(origins, agents, agent_rate, origin_rate)?;
        Ok(lab)
    }

    fn setup(
        &mut self,
        origins: usize,
        agents: usize,
        agent_rate: Option<u64>,
        origin_rate: Option<u64>,
    ) -> anyhow::Result<()> {
        anyhow::ensure!(self.veth_prefix.len() + 3 <= 15, "interface names too long for pid {}", std::process::id());
        ip(&["link", "add", &self.bridge, "type", "bridge"])?;
        self.bridge_made = true;
        ip(&["addr", "add", &format!("{}/24", self.ip(1)), "dev", &self.bridge])?;
        ip(&["link", "set", &self.bridge, "up"])?;
        let mut nodes = vec![("t".to_string(), None)];
        nodes.extend((0..origins).map(|k| (format!("o{k}"), origin_rate)));
        nodes.extend((0..agents).map(|i| (format!("a{i}"), agent_rate)));
        for (k, (name, rate)) in nodes.iter().enumerate() {
            self.add_node(k, name, *rate).with_context(|| format!("setting up namespace {}", self.ns(name)))?;
        }
        Ok(())
    }

    /// Namespace `name` at 198.18.S.(k+2), its link capped at `rate` both ways.
    fn add_node(&mut self, k: usize, name: &str, rate: Option<u64>) -> anyhow::Result<()> {
        let ns = self.ns(name);
        ip(&["netns", "add", &ns])?;
        self.namespaces.push(ns.clone());
        ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        let veth = format!("{}{k}", self.veth_prefix);
        ip(&["link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &ns])?;
        self.veths.push(veth.clone());
        ip(&["link", "set", &veth, "master", &self.bridge])?;
        ip(&["link", "set", &veth, "up"])?;
        ip(&["-n", &ns, "addr", "add", &format!("{}/24", self.ip(k + 2)), "dev", "eth0"])?;
        ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
        if let Some(rate) = rate {
            let harness = format!("{}/32", self.ip(1));
            cap(Some(&ns), "eth0", rate, "dst", &harness)?;
            cap(None, &veth, rate, "src", &harness)?;
        }
        Ok(())
    }

    /// The namespace called `name` in this run.
    pub fn ns(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    /// 198.18.S.`host`.
    pub fn ip(&self, host: usize) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(198, 18, self.subnet, host as u8))
    }

    /// Sets the link of the node called `name` (`t`, `o<k>`, `a<i>`) down or up, at its
    /// root-namespace end: a partition of that node from every other, its connections kept.
    pub fn set_link(&self, name: &str, up: bool) -> anyhow::Result<()> {
        let ns = self.ns(name);
        let k = self.namespaces.iter().position(|n| *n == ns).ok_or_else(|| anyhow::anyhow!("no node {name}"))?;
        ip(&["link", "set", &self.veths[k], if up { "up" } else { "down" }])
    }
}

/// An `htb` root qdisc on `dev` (in namespace `ns`, or the root one): everything at `rate`
/// bytes/s except packets whose `dir` ("src"/"dst") is `exempt`, which go uncapped.
fn cap(ns: Option<&str>, dev: &str, rate: u64, dir: &str, exempt: &str) -> anyhow::Result<()> {
    let bits = format!("{}bit", rate.saturating_mul(8));
    // A burst of 10 ms at the rate (at least 64 KiB) keeps the long-run rate exact.
    let burst = format!("{}b", (rate / 100).max(64 << 10));
    let with_ns = |args: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = ns.map(|n| vec!["-n".to_string(), n.to_string()]).unwrap_or_default();
        v.extend(args.iter().map(|s| (*s).to_string()));
        v
    };
    let run = |args: &[&str]| {
        let a = with_ns(args);
        tc(&a.iter().map(String::as_str).collect::<Vec<_>>())
    };
    run(&["qdisc", "add", "dev", dev, "root", "handle", "1:", "htb", "default", "10"])?;
    run(&[
        "class", "add", "dev", dev, "parent", "1:", "classid", "1:10", "htb", "rate", &bits, "ceil", &bits, "burst",
        &burst, "cburst", &burst,
    ])?;
    run(&["class", "add", "dev", dev, "parent", "1:", "classid", "1:20", "htb", "rate", "20gbit"])?;
    run(&[
        "filter", "add", "dev", dev, "parent", "1:", "protocol", "ip", "prio", "1", "u32", "match", "ip", dir, exempt,
        "flowid", "1:20",
    ])
}

/// A /24 of 198.18.0.0/16 no root-namespace address is in and no other run of this process
/// holds.
fn pick_subnet(pid: u32) -> anyhow::Result<u8> {
    let addrs = output("ip", &["-4", "-o", "addr", "show"])?;
    let taken_here = |s: u8| addrs.contains(&format!(" 198.18.{s}."));
    let mut held = SUBNETS.lock().unwrap_or_else(|e| e.into_inner());
    let first = (pid % 254) as usize;
    for k in 0..254 {
        let s = ((first + k) % 254 + 1) as u8;
        if !held.contains(&s) && !taken_here(s) {
            held.push(s);
            return Ok(s);
        }
    }
    anyhow::bail!("no free /24 in 198.18.0.0/16 for the namespaces")
}

impl Drop for Lab {
    fn drop(&mut self) {
        // Deleting a root-side veth deletes its pair; then the namespaces, then the bridge.
        for v in &self.veths {
            if let Err(e) = ip(&["link", "del", v]) {
                eprintln!("cleanup: {e:#}");
            }
        }
        for ns in &self.namespaces {
            if let Err(e) = ip(&["netns", "del", ns]) {
                eprintln!("cleanup: {e:#}");
            }
        }
        if self.bridge_made
            && let Err(e) = ip(&["link", "del", &self.bridge])
        {
            eprintln!("cleanup: {e:#}");
        }
        SUBNETS.lock().unwrap_or_else(|e| e.into_inner()).retain(|&s| s != self.subnet);
    }
}

/// Removes namespaces and links a harness left behind: those named with the harness prefix
/// whose process is gone (a running harness's are left alone). Returns what was removed.
pub fn cleanup_leftovers() -> anyhow::Result<Vec<String>> {
    let alive = |pid: u32| std::path::Path::new(&format!("/proc/{pid}")).exists();
    let mut removed = Vec::new();
    for line in output("ip", &["-o", "link", "show"])?.lines() {
        // "12: sl1a2b-0v3@if2: <...>"
        let Some(name) = line.split(": ").nth(1).map(|n| n.split('@').next().unwrap_or(n)) else { continue };
        if let Some(pid) = link_pid(name)
            && !alive(pid)
            && ip(&["link", "del", name]).is_ok()
        {
            removed.push(format!("link {name}"));
        }
    }
    for line in output("ip", &["netns", "list"])?.lines() {
        let Some(name) = line.split_whitespace().next() else { continue };
        if let Some(pid) = netns_pid(name)
            && !alive(pid)
        {
            ip(&["netns", "del", name])?;
            removed.push(format!("netns {name}"));
        }
    }
    Ok(removed)
}

/// The pid in a harness namespace name `shoal-lt-<pid>-...`.
fn netns_pid(name: &str) -> Option<u32> {
    name.strip_prefix(NETNS_PREFIX)?.split('-').next()?.parse().ok()
}

/// The pid in a harness link name `sl<pid hex>-<run>b` or `sl<pid hex>-<run>v<k>` (run and k
/// in decimal).
fn link_pid(name: &str) -> Option<u32> {
    let (pid, rest) = name.strip_prefix("sl")?.split_once('-')?;
    let tail = rest.trim_start_matches(|c: char| c.is_ascii_digit());
    let ok =
        tail == "b" || tail.strip_prefix('v').is_some_and(|k| !k.is_empty() && k.bytes().all(|b| b.is_ascii_digit()));
    if !ok || rest.len() == tail.len() {
        return None;
    }
    u32::from_str_radix(pid, 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leftover_names_parse() {
        assert_eq!(netns_pid("shoal-lt-1234-0-a3"), Some(1234));
        assert_eq!(netns_pid("shoal-lt-1234-probe"), Some(1234));
        assert_eq!(netns_pid("other-1234"), None);
        assert_eq!(link_pid("sl4d2-0b"), Some(0x4d2));
        assert_eq!(link_pid("sl4d2-17v12"), Some(0x4d2));
        assert_eq!(link_pid("sl4d2-v12"), None);
        assert_eq!(link_pid("slave0"), None);
        assert_eq!(link_pid("eth0"), None);
    }
}
