//! Client of the origin cluster: asks the ring owners of a blob for its metainfo, waiting
//! while an origin fetches the blob from its backend (HTTP 202 with `Retry-After`).
//!
//! Requests carry pull-through hints ([`Hints`]) as query parameters: the repository and the
//! upstream registry host a registry client named, so an origin whose backend lacks a blob
//! knows where to pull it from. They never change which bytes are accepted: metainfo is
//! checked against the digest asked for, and pieces against the metainfo.

use std::time::Duration;

use shoal_core::api::{PreheatAnswer, PreheatRequest, PreheatStatus};
use shoal_core::registry::RepoName;
use shoal_core::ring::Ring;
use shoal_core::{Digest, MetaInfo};
use tokio::time::Instant;

/// Where a blob came from in the client's view: sent to origins as `?name=&ns=`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Hints {
    /// The repository of the registry request.
    pub name: Option<RepoName>,
    /// The upstream registry host (containerd's `ns=`).
    pub ns: Option<String>,
}

impl Hints {
    /// The query pairs to send; empty when there is no hint.
    pub fn query(&self) -> Vec<(&'static str, &str)> {
        let mut q = Vec::new();
        if let Some(n) = &self.name {
            q.push(("name", n.as_str()));
        }
        // Only a well-formed host is passed on; origins would refuse any other.
        if let Some(ns) = self.ns.as_deref().filter(|h| shoal_core::registry::RegistryHost::parse(h).is_ok()) {
            q.push(("ns", ns));
        }
        q
    }
}

/// How the origin that decided a preheat answered.
#[derive(Debug)]
pub enum PreheatReply {
    /// 202: the job started.
    Started(PreheatAnswer),
    /// Any other status below 500 (a refusal, a bad request), with its body as it came and the
    /// origin's ring id added as `origin`.
    Other { status: u16, body: serde_json::Value },
}

#[derive(Debug, thiserror::Error)]
pub enum OriginError {
    #[error("blob {0} is unknown to the origins")]
    NotFound(Digest),
    #[error("origins did not produce {digest} within {secs}s")]
    Timeout { digest: Digest, secs: u64 },
    #[error("no origin could be reached for {digest}: {last}")]
    Unavailable { digest: Digest, last: String },
    #[error("origin {origin} sent metainfo for {got}, asked for {want}")]
    WrongMetaInfo { origin: String, want: Digest, got: Digest },
}

/// Most bytes of an origin's error body kept for a message. Hard-coded.
const MAX_ERROR_BODY: usize = 512;

/// `status: body` of an error response, the body cut to [`MAX_ERROR_BODY`].
async fn describe(url: &str, resp: reqwest::Response) -> String {
    let status = resp.status();
    let body = resp.text().await.unwrap_or_default();
    let body: String = body.trim().chars().take(MAX_ERROR_BODY).collect();
    if body.is_empty() { format!("{url}: status {status}") } else { format!("{url}: status {status}: {body}") }
}

#[derive(Clone)]
pub struct OriginClient {
    ring: Ring,
    http: reqwest::Client,
    fetch_timeout: Duration,
}

/// Longest pause between polls of an origin that is still fetching.
const MAX_POLL: Duration = Duration::from_secs(2);

impl OriginClient {
    /// A client of `ring`'s origins; with `tls`, over mutual TLS.
    pub fn new(ring: Ring, fetch_timeout: Duration, tls: Option<&shoal_runtime::Tls>) -> OriginClient {
        let mut builder =
            reqwest::Client::builder().connect_timeout(Duration::from_secs(5)).timeout(Duration::from_secs(30));
        if let Some(tls) = tls {
            builder = tls.http_client(builder);
        }
        let http = builder.build().expect("http client builds");
        OriginClient { ring, http, fetch_timeout }
    }

    /// The metainfo of `digest`, from the first owner that has or can fetch it.
    pub async fn metainfo(&self, digest: Digest) -> Result<MetaInfo, OriginError> {
        self.metainfo_for(digest, &Hints::default()).await
    }

    /// As [`OriginClient::metainfo`], passing pull-through `hints` to the origins.
    pub async fn metainfo_for(&self, digest: Digest, hints: &Hints) -> Result<MetaInfo, OriginError> {
        let deadline = Instant::now() + self.fetch_timeout;
        let mut last = String::from("no origin answered");
        for node in self.ring.owners(&digest) {
            let url = format!("{}/blobs/{digest}/metainfo", node.http.trim_end_matches('/'));
            let mut pause = Duration::from_millis(50);
            loop {
                if Instant::now() >= deadline {
                    return Err(OriginError::Timeout { digest, secs: self.fetch_timeout.as_secs() });
                }
                let mut req = self.http.get(&url).query(&hints.query());
                if let Some(id) = shoal_runtime::request_id::current() {
                    req = req.header(shoal_runtime::request_id::HEADER, id.as_str());
                }
                let resp = match req.send().await {
                    Ok(r) => r,
                    Err(e) => {
                        last = format!("{url}: {e}");
                        break; // Next owner.
                    }
                };
                match resp.status().as_u16() {
                    200 => {
                        let meta: MetaInfo = match resp.json().await {
                            Ok(m) => m,
                            Err(e) => {
                                last = format!("{url}: bad metainfo: {e}");
                                break;
                            }
                        };
                        if meta.digest() != digest {
                            return Err(OriginError::WrongMetaInfo {
                                origin: node.id.clone(),
                                want: digest,
                                got: meta.digest(),
                            });
                        }
                        return Ok(meta);
                    }
                    202 => {
                        let hint = resp
                            .headers()
                            .get("retry-after")
                            .and_then(|v| v.to_str().ok())
                            .and_then(|v| v.parse::<u64>().ok())
                            .map(Duration::from_secs);
                        tokio::time::sleep(hint.unwrap_or(pause).min(pause)).await;
                        pause = (pause * 2).min(MAX_POLL);
                    }
                    404 => return Err(OriginError::NotFound(digest)),
                    _ => {
                        last = describe(&url, resp).await;
                        break;
                    }
                }
            }
        }
        Err(OriginError::Unavailable { digest, last })
    }

    /// Forwards a preheat request to the owners of `manifest`; the first origin that answers
    /// other than 5xx decides. A job it started comes back with its ring id as `origin` (a
    /// preheat id is only unique on its origin).
    pub async fn preheat(
        &self,
        manifest: Digest,
        body: &PreheatRequest,
        bearer: Option<&str>,
    ) -> Result<PreheatReply, OriginError> {
        let mut last = String::from("no origin answered");
        for node in self.ring.owners(&manifest) {
            let url = format!("{}/preheat", node.http.trim_end_matches('/'));
            let mut req = self.http.post(&url).json(body);
            if let Some(t) = bearer {
                req = req.bearer_auth(t);
            }
            let resp = match req.send().await {
                Ok(r) => r,
                Err(e) => {
                    last = format!("{url}: {e}");
                    continue;
                }
            };
            let status = resp.status().as_u16();
            if status >= 500 {
                last = describe(&url, resp).await;
                continue;
            }
            if status == 202 {
                match resp.json::<PreheatStatus>().await {
                    Ok(status) => {
                        let origin = Some(node.id.clone());
                        return Ok(PreheatReply::Started(PreheatAnswer { status, origin, prefetch: None }));
                    }
                    Err(e) => last = format!("{url}: status {status}, bad body: {e}"),
                }
                continue;
            }
            match resp.json::<serde_json::Value>().await {
                Ok(mut body) => {
                    if let Some(obj) = body.as_object_mut() {
                        obj.insert("origin".into(), serde_json::Value::String(node.id.clone()));
                    }
                    return Ok(PreheatReply::Other { status, body });
                }
                Err(e) => last = format!("{url}: status {status}, bad body: {e}"),
            }
        }
        Err(OriginError::Unavailable { digest: manifest, last })
    }

    /// The state of preheat `id` on the origin whose ring id is `origin` (`GET /preheat/<id>`
    /// there): its status code and JSON body, or `None` when no origin has that ring id.
    pub async fn preheat_status(&self, origin: &str, id: &str) -> Option<Result<(u16, serde_json::Value), String>> {
        let node = self.ring.nodes().iter().find(|n| n.id == origin)?;
        let url = format!("{}/preheat/{id}", node.http.trim_end_matches('/'));
        let res = async {
            let resp = self.http.get(&url).send().await.map_err(|e| format!("{url}: {e}"))?;
            let status = resp.status().as_u16();
            let body: serde_json::Value =
                resp.json().await.map_err(|e| format!("{url}: status {status}, bad body: {e}"))?;
            Ok::<_, String>((status, body))
        };
        Some(res.await)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(name: Option<&str>, ns: Option<&str>) -> Vec<(&'static str, String)> {
        let hints = Hints { name: name.map(|n| RepoName::parse(n).unwrap()), ns: ns.map(str::to_owned) };
        hints.query().into_iter().map(|(k, v)| (k, v.to_owned())).collect()
    }

    #[test]
    fn hints_become_query_pairs() {
        assert_eq!(query(None, None), vec![]);
        assert_eq!(query(Some("library/nginx"), None), vec![("name", "library/nginx".to_owned())]);
        assert_eq!(
            query(Some("a/b"), Some("docker.io")),
            vec![("name", "a/b".to_owned()), ("ns", "docker.io".to_owned())]
        );
        assert_eq!(query(None, Some("ghcr.io:443")), vec![("ns", "ghcr.io:443".to_owned())]);
        assert_eq!(query(None, Some("https://evil/x")), vec![], "a malformed ns is not passed on");
    }
}
