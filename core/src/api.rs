//! Typed JSON bodies of the HTTP APIs between Shoal services. Services never depend on one
//! another's crates; they share these types.
//!
//! Tracker: `POST /announce` with [`AnnounceRequest`] → [`AnnounceResponse`].
//! Origin: `GET /blobs/<digest>/metainfo` → a [`crate::MetaInfo`] (200), or 202 with a
//! `Retry-After` header while the origin is still fetching the blob from its backend, or 404;
//! `GET`/`HEAD /blobs/<digest>` → the blob's bytes; `PUT /blobs/<digest>` → upload.
//! Errors everywhere are an [`ErrorBody`].

use std::net::SocketAddr;

mod ops;
pub use ops::{BlobStat, LocalCopy, SwarmSize};

use crate::{Digest, PeerId};

/// A node tells the tracker it is in a blob's swarm.
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
