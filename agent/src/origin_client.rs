//! Client of the origin cluster: asks the ring owners of a blob for its metainfo, waiting
//! while an origin fetches the blob from its backend (HTTP 202 with `Retry-After`).

use std::time::Duration;

use shoal_core::ring::Ring;
use shoal_core::{Digest, MetaInfo};
use tokio::time::Instant;

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

#[derive(Clone)]
pub struct OriginClient {
    ring: Ring,
    http: reqwest::Client,
    fetch_timeout: Duration,
}

/// Longest pause between polls of an origin that is still fetching.
const MAX_POLL: Duration = Duration::from_secs(2);

impl OriginClient {
    pub fn new(ring: Ring, fetch_timeout: Duration) -> OriginClient {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(30))
            .build()
            .expect("http client builds");
        OriginClient { ring, http, fetch_timeout }
    }

    /// The metainfo of `digest`, from the first owner that has or can fetch it.
    pub async fn metainfo(&self, digest: Digest) -> Result<MetaInfo, OriginError> {
        let deadline = Instant::now() + self.fetch_timeout;
        let mut last = String::from("no origin answered");
        for node in self.ring.owners(&digest) {
            let url = format!("{}/blobs/{digest}/metainfo", node.http.trim_end_matches('/'));
            let mut pause = Duration::from_millis(50);
            loop {
                if Instant::now() >= deadline {
                    return Err(OriginError::Timeout { digest, secs: self.fetch_timeout.as_secs() });
                }
                let resp = match self.http.get(&url).send().await {
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
                    s => {
                        last = format!("{url}: status {s}");
                        break;
                    }
                }
            }
        }
        Err(OriginError::Unavailable { digest, last })
    }
}
