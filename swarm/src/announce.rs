//! The tracker client: announces a node's part in a blob's swarm and returns peers.
//!
//! A blob's tracker is chosen by hashing its digest over the configured trackers (client-side
//! sharding, so trackers share no state); on failure the next one is tried.

use std::sync::Arc;
use std::time::Duration;

use shoal_runtime::auth::TokenSource;

use shoal_core::Digest;
use shoal_core::api::{AnnounceRequest, AnnounceResponse, SwarmSize};

/// Why an announce failed (the caller retries on its next tick).
#[derive(Debug, thiserror::Error)]
pub enum AnnounceError {
    #[error("no tracker configured")]
    NoTracker,
    #[error("tracker {url}: {source}")]
    Http { url: String, source: reqwest::Error },
    #[error("tracker {url} answered {status}: {body}")]
    Status { url: String, status: u16, body: String },
}

#[derive(Clone)]
pub struct TrackerClient {
    urls: Vec<String>,
    http: reqwest::Client,
    /// The bearer token sent with every announce, if the node has one.
    token: Option<Arc<TokenSource>>,
}

impl TrackerClient {
    /// A client of the trackers at `urls`; with `tls`, over mutual TLS (`https://` URLs).
    pub fn new(urls: Vec<String>, timeout: Duration, tls: Option<&shoal_runtime::Tls>) -> TrackerClient {
        let mut builder = reqwest::Client::builder().timeout(timeout);
        if let Some(tls) = tls {
            builder = tls.http_client(builder);
        }
        let http = builder.build().expect("http client builds");
        TrackerClient {
            urls: urls.into_iter().map(|u| u.trim_end_matches('/').to_string()).collect(),
            http,
            token: None,
        }
    }

    /// Sends `token` (when there is one) as the bearer token of every announce.
    pub fn with_token(self, token: Option<Arc<TokenSource>>) -> TrackerClient {
        TrackerClient { token, ..self }
    }

    pub fn is_empty(&self) -> bool {
        self.urls.is_empty()
    }

    /// Index of the first tracker to ask for `blob`.
    fn shard(&self, blob: &Digest) -> usize {
        let b = blob.as_bytes();
        let h = u64::from_be_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]);
        usize::try_from(h % self.urls.len() as u64).expect("below the number of trackers")
    }

    pub async fn announce(&self, req: &AnnounceRequest) -> Result<AnnounceResponse, AnnounceError> {
        if self.urls.is_empty() {
            return Err(AnnounceError::NoTracker);
        }
        let first = self.shard(&req.blob);
        let mut last_err = None;
        for k in 0..self.urls.len() {
            let url = format!("{}/announce", self.urls[(first + k) % self.urls.len()]);
            match self.try_one(&url, req).await {
                Ok(r) => return Ok(r),
                Err(e) => last_err = Some(e),
            }
        }
        Err(last_err.expect("at least one tracker was tried"))
    }

    /// How many live nodes `blob`'s tracker knows in its swarm (read-only: this node is not
    /// recorded). The same tracker order as [`TrackerClient::announce`].
    pub async fn swarm_size(&self, blob: &Digest) -> Result<SwarmSize, AnnounceError> {
        if self.urls.is_empty() {
            return Err(AnnounceError::NoTracker);
        }
        let first = self.shard(blob);
        let mut last_err = None;
        for k in 0..self.urls.len() {
            let url = format!("{}/blobs/{blob}/peers", self.urls[(first + k) % self.urls.len()]);
            let http = |source| AnnounceError::Http { url: url.clone(), source };
            let resp = match self.http.get(&url).send().await {
                Ok(r) => r,
                Err(e) => {
                    last_err = Some(http(e));
                    continue;
                }
            };
            let status = resp.status();
            if !status.is_success() {
                let body = resp.text().await.unwrap_or_default().chars().take(200).collect();
                last_err = Some(AnnounceError::Status { url: url.clone(), status: status.as_u16(), body });
                continue;
            }
            match resp.json().await {
                Ok(s) => return Ok(s),
                Err(e) => last_err = Some(http(e)),
            }
        }
        Err(last_err.expect("at least one tracker was tried"))
    }

    async fn try_one(&self, url: &str, req: &AnnounceRequest) -> Result<AnnounceResponse, AnnounceError> {
        let http = |source| AnnounceError::Http { url: url.to_string(), source };
        let mut post = self.http.post(url).json(req);
        if let Some(t) = &self.token {
            post = post.bearer_auth(t.get());
        }
        // The request a download works for (see `shoal_runtime::request_id`), for the
        // tracker's logs.
        if let Some(id) = shoal_runtime::request_id::current() {
            post = post.header(shoal_runtime::request_id::HEADER, id.as_str());
        }
        let resp = post.send().await.map_err(http)?;
        let status = resp.status();
        if !status.is_success() {
            let body = resp.text().await.unwrap_or_default().chars().take(200).collect();
            return Err(AnnounceError::Status { url: url.to_string(), status: status.as_u16(), body });
        }
        resp.json().await.map_err(http)
    }
}
