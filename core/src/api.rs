//! Typed JSON bodies of the HTTP APIs between Shoal services. Services never depend on one
//! another's crates; they share these types.
//!
//! Tracker: `POST /announce` with [`AnnounceRequest`] → [`AnnounceResponse`].
//! Origin: `GET /blobs/<digest>/metainfo` → a [`crate::MetaInfo`] (200), or 202 with a
//! `Retry-After` header while the origin is still fetching the blob from its backend, or 404;
//! `GET`/`HEAD /blobs/<digest>` → the blob's bytes; `PUT /blobs/<digest>` → upload;
//! `POST /preheat` with [`PreheatRequest`] → [`PreheatStatus`] (202), which the agent's own
//! `POST /preheat` ([`AgentPreheatRequest`]) answers as a [`PreheatAnswer`].
//! Errors everywhere are an [`ErrorBody`].

use std::net::SocketAddr;

mod ops;
mod preheat;
pub use ops::{BlobStat, LocalCopy, SwarmSize};
pub use preheat::{AgentPreheatRequest, BlobState, PreheatAnswer, PreheatRequest, PreheatStatus};

use crate::{Digest, PeerId};

/// A node tells the tracker it is in a blob's swarm, or with `stopped` that it left it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AnnounceRequest {
    pub blob: Digest,
    pub peer_id: PeerId,
    /// The node's peer (wire protocol) address, reachable by other nodes.
    pub addr: SocketAddr,
    /// The node has every piece.
    pub complete: bool,
    /// The node is an origin (a seed of last resort).
    #[serde(default)]
    pub origin: bool,
    /// The node no longer holds the blob (it evicted it): the tracker forgets it at once
    /// instead of handing it out until its entry expires, and answers with no peers. Sent
    /// only when true, so every other announce is what trackers before it accept.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub stopped: bool,
}

/// One peer of a blob's swarm as the tracker hands it out.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerInfo {
    /// Unknown for an origin taken from the ring before it announced.
    pub peer_id: Option<PeerId>,
    pub addr: SocketAddr,
    pub complete: bool,
    pub origin: bool,
}

/// The tracker's answer: some peers, and when to announce again.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AnnounceResponse {
    pub peers: Vec<PeerInfo>,
    /// Milliseconds until the next announce.
    pub interval_ms: u64,
}

/// Body of every error response.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ErrorBody {
    /// A stable machine-readable code such as `BLOB_UNKNOWN` or `DIGEST_INVALID`.
    pub code: String,
    pub message: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(stopped: bool) -> AnnounceRequest {
        AnnounceRequest {
            blob: Digest::of(b"blob"),
            peer_id: PeerId([7; 16]),
            addr: "10.0.0.1:7701".parse().unwrap(),
            complete: true,
            origin: false,
            stopped,
        }
    }

    /// An announce that is not a stop is the JSON trackers before `stopped` accept, and their
    /// announces (without it) still parse.
    #[test]
    fn stopped_is_sent_only_when_set() {
        let plain = serde_json::to_value(req(false)).unwrap();
        assert!(plain.get("stopped").is_none(), "{plain}");
        let old = format!(
            r#"{{"blob":"{}","peer_id":"{}","addr":"10.0.0.1:7701","complete":true,"origin":false}}"#,
            Digest::of(b"blob"),
            PeerId([7; 16])
        );
        assert_eq!(serde_json::from_str::<AnnounceRequest>(&old).unwrap(), req(false));
        let stop = serde_json::to_string(&req(true)).unwrap();
        assert!(stop.contains(r#""stopped":true"#), "{stop}");
        assert_eq!(serde_json::from_str::<AnnounceRequest>(&stop).unwrap(), req(true));
    }
}
