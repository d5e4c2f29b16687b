//! Mutual TLS between real nodes, with certificates from a CA made for each test: nodes swap a
//! blob; a certificate from another CA, an expired one, none, or no TLS at all is refused at
//! the handshake on every link (the peer port, the origin's and the tracker's APIs) and
//! counted; a peer id claimed under another certificate is refused; certificates rotated on
//! disk mid-run are picked up without dropping transfers.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use shoal_core::PeerId;
use shoal_core::wire::{self, Message, PROTOCOL_VERSION};
use shoal_loadtest::cluster::{Cluster, identity, mib, random_blob};
use shoal_loadtest::pull::pull_all;
use shoal_runtime::Tls;
use shoal_runtime::tls::test_ca::{self, NodeCert, TestCa};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// `shoal_tls_handshakes_refused_total` with these labels, from a node's registry.
fn refused(registry: &prometheus::Registry, link: &str, side: &str, reason: &str) -> u64 {
    refused_in(&registry.gather(), link, side, reason)
}

fn refused_in(families: &[prometheus::proto::MetricFamily], link: &str, side: &str, reason: &str) -> u64 {
    let want = [("link", link), ("side", side), ("reason", reason)];
    families
        .iter()
        .filter(|f| f.name() == "shoal_tls_handshakes_refused_total")
        .flat_map(|f| f.get_metric())
        .filter(|m| want.iter().all(|(k, v)| m.get_label().iter().any(|l| l.name() == *k && l.value() == *v)))
        .map(|m| m.get_counter().get_value() as u64)
        .sum()
}

/// The same counter from the text of a `/metrics` answer (the tracker's registry is its own).
fn refused_text(text: &str, link: &str, side: &str, reason: &str) -> u64 {
    let labels = format!("link=\"{link}\",reason=\"{reason}\",side=\"{side}\"");
    text.lines()
        .filter(|l| l.starts_with("shoal_tls_handshakes_refused_total{") && l.contains(&labels))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// A TLS handshake on `addr` with `config`, then a read: whether the server let us talk.
async fn peer_handshake(addr: SocketAddr, config: rustls::ClientConfig) -> bool {
    let Ok(tcp) = TcpStream::connect(addr).await else { return false };
    let name = rustls::pki_types::ServerName::IpAddress(addr.ip().into());
    let Ok(mut s) = tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, tcp).await else { return false };
    // TLS 1.3: a refused client certificate shows as an alert on the first read.
    let mut hs = BytesMut::new();
    wire::encode(&Message::Handshake { version: PROTOCOL_VERSION, peer_id: PeerId::random(), zone: None }, &mut hs);
    if s.write_all(&hs).await.is_err() || s.flush().await.is_err() {
        return false;
    }
    let mut buf = [0u8; 64];
    matches!(tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await, Ok(Ok(n)) if n > 0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_with_certificates_from_the_ca_swap_a_blob() {
    let c = Cluster::builder().agents(4).tls(true).start().await.unwrap();
    let size = mib(16);
    let data = random_blob(size, 41);
    let d = c.put_backend_blob(&data).unwrap();
    let pulls = pull_all(&c, d, Duration::from_secs(120)).await.unwrap();
    assert!(pulls.iter().all(|p| p.verified && p.bytes == size), "{pulls:?}");
    assert!(pulls.iter().map(|p| p.from_peers).sum::<u64>() > 0, "agents swapped pieces over TLS");
    for i in 0..4 {
        let id = c.agent(i).swarm.peer_id();
        assert!(id.is_bound_to(&identity(&format!("agent-{i}"))), "agent {i}'s peer id is bound to its certificate");
    }
    let families = c.origins[0].registry.gather();
    let total: u64 = ["unknown_ca", "expired", "no_certificate", "no_identity", "peer_id", "not_tls"]
        .iter()
        .map(|r| refused_in(&families, "peer", "server", r) + refused_in(&families, "http", "server", r))
        .sum();
    assert_eq!(total, 0, "no handshake between the cluster's nodes was refused");
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strangers_are_refused_at_the_handshake_on_every_link_and_counted() {
    let c = Cluster::builder().agents(1).tls(true).start().await.unwrap();
    let ca = c.ca.as_ref().unwrap();
    let probe = Tls::load(&c.tls_config("probe").unwrap().unwrap()).unwrap();
    let other = TestCa::new("another CA");
    let strangers: [(&str, Option<NodeCert>); 3] = [
        ("unknown_ca", Some(other.issue(&identity("agent-0")))),
        ("expired", Some(ca.issue_expired(&identity("agent-9")))),
        ("no_certificate", None),
    ];
    let agent = c.agent(0);
    let agent_peer = agent.swarm.advertise_addr();
    let origin_http = c.origin_nodes[0].http.clone();
    let tracker = c.tracker.url();
    for (reason, cert) in &strangers {
        let config = test_ca::client_config(cert.as_ref(), &probe);
        assert!(!peer_handshake(agent_peer, config.clone()).await, "{reason}: the agent's peer port let it in");
        let http = reqwest::Client::builder().use_preconfigured_tls(config).build().unwrap();
        for url in [&origin_http, &tracker] {
            assert!(http.get(format!("{url}/health")).send().await.is_err(), "{reason}: {url} let it in");
        }
    }
    // No TLS at all: a plaintext node on the peer port, plain HTTP on the APIs.
    let mut plain = TcpStream::connect(agent_peer).await.unwrap();
    let mut hs = BytesMut::new();
    wire::encode(&Message::Handshake { version: PROTOCOL_VERSION, peer_id: PeerId::random(), zone: None }, &mut hs);
    plain.write_all(&hs).await.unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), plain.read_to_end(&mut buf)).await;
    for url in [&origin_http, &tracker] {
        let url = url.replace("https://", "http://");
        assert!(reqwest::get(format!("{url}/health")).await.is_err(), "plain http to {url} was answered");
    }

    // Counted on the side that refused, by reason, on every link.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let tracker_metrics = c.http().get(format!("{tracker}/metrics")).send().await.unwrap().text().await.unwrap();
    for reason in ["unknown_ca", "expired", "no_certificate", "not_tls"] {
        assert_eq!(
            refused(&c.agents[0].as_ref().unwrap().registry, "peer", "server", reason),
            1,
            "agent peer {reason}"
        );
        assert_eq!(refused(&c.origins[0].registry, "http", "server", reason), 1, "origin http {reason}");
        assert_eq!(refused_text(&tracker_metrics, "http", "server", reason), 1, "tracker http {reason}");
    }
    // And the cluster still works.
    let data = random_blob(mib(2), 3);
    let d = c.put_backend_blob(&data).unwrap();
    assert_eq!(c.fetch(0, &d).await.unwrap(), data);
    c.shutdown().await;
}

/// A node with a valid certificate of its own claims the origin's peer id: its handshake is
/// refused (the id is bound to the origin's certificate), counted, and the origin is untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_id_claimed_under_another_certificate_is_refused() {
    let c = Cluster::builder().agents(1).tls(true).start().await.unwrap();
    let probe = Tls::load(&c.tls_config("mallory").unwrap().unwrap()).unwrap();
    let origin_id = c.origins[0].handle.swarm.peer_id();
    let agent_peer = c.agent(0).swarm.advertise_addr();
    let tcp = TcpStream::connect(agent_peer).await.unwrap();
    let name = rustls::pki_types::ServerName::IpAddress(agent_peer.ip().into());
    let mut s = probe.connector(shoal_runtime::tls::Link::Peer).connect(name, tcp).await.unwrap();
    let mut hs = BytesMut::new();
    wire::encode(&Message::Handshake { version: PROTOCOL_VERSION, peer_id: origin_id, zone: None }, &mut hs);
    s.write_all(&hs).await.unwrap();
    s.flush().await.unwrap();
    // The agent answers with its own handshake, then closes.
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf)).await;
    let (msg, used) = wire::decode(&buf).unwrap().expect("the agent's handshake");
    assert!(matches!(msg, Message::Handshake { .. }));
    assert_eq!(used, buf.len(), "nothing follows: the connection was refused");
    assert_eq!(refused(&c.agents[0].as_ref().unwrap().registry, "peer", "server", "peer_id"), 1);
    // The origin still serves the agent.
    let data = random_blob(mib(2), 5);
    let d = c.put_backend_blob(&data).unwrap();
    assert_eq!(c.fetch(0, &d).await.unwrap(), data);
    c.shutdown().await;
}

/// cert-manager renews every certificate while agents pull: the pulls finish, and new
/// handshakes present the new certificates.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_rotated_mid_run_are_picked_up_without_dropping_transfers() {
    // 8 MiB/s per agent: a 24 MiB pull takes a few seconds, long enough to rotate under it.
    let c = Cluster::builder().agents(3).tls(true).agent_rate(Some(mib(8))).start().await.unwrap();
    let size = mib(24);
    let data = random_blob(size, 77);
    let d = c.put_backend_blob(&data).unwrap();
    let tls_dir = c.root().join("tls");
    let ca = c.ca.as_ref().unwrap();
    let rotate = async {
        tokio::time::sleep(Duration::from_millis(800)).await;
        let mut names = vec!["tracker".to_string(), "origin-0".to_string()];
        names.extend((0..3).map(|i| format!("agent-{i}")));
        for name in &names {
            ca.issue(&identity(name)).write(&tls_dir, name).unwrap();
        }
    };
    let (pulls, ()) = tokio::join!(pull_all(&c, d, Duration::from_secs(120)), rotate);
    let pulls = pulls.unwrap();
    assert!(pulls.iter().all(|p| p.verified && p.bytes == size), "{pulls:?}");

    // A new handshake with the origin sees the rotated certificate.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let probe = Tls::load(&c.tls_config("probe").unwrap().unwrap()).unwrap();
    let addr: SocketAddr = c.origin_nodes[0].http.trim_start_matches("https://").parse().unwrap();
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::IpAddress(addr.ip().into());
    let s = probe.connector(shoal_runtime::tls::Link::Http).connect(name, tcp).await.unwrap();
    let served = s.get_ref().1.peer_certificates().unwrap()[0].to_vec();
    let pem = std::fs::read(tls_dir.join("origin-0.crt")).unwrap();
    use rustls::pki_types::pem::PemObject;
    let on_disk = rustls::pki_types::CertificateDer::from_pem_slice(&pem).unwrap();
    assert_eq!(served, on_disk.to_vec(), "the origin serves the certificate now on disk");
    let ok = c.origins[0]
        .registry
        .gather()
        .iter()
        .filter(|f| f.name() == "shoal_tls_reloads_total")
        .flat_map(|f| f.get_metric())
        .filter(|m| m.get_label().iter().any(|l| l.value() == "ok"))
        .map(|m| m.get_counter().get_value())
        .sum::<f64>();
    assert!(ok >= 1.0, "the origin counted its reload");
    // A fresh pull through the rotated nodes still works.
    let more = random_blob(mib(2), 78);
    let d2 = c.put_backend_blob(&more).unwrap();
    assert_eq!(c.fetch(2, &d2).await.unwrap(), more);
    c.shutdown().await;
}
