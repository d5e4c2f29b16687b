//! The read-only bodies operators' tools read: the tracker's `GET /blobs/<digest>/peers`
//! ([`SwarmSize`]) and the agent's `GET /stat/blobs/<digest>` ([`BlobStat`]).

use crate::Digest;

/// How many live (unexpired) nodes the tracker knows in a blob's swarm.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SwarmSize {
    /// Nodes with every piece, origins included.
    pub seeders: usize,
    /// Nodes still downloading.
    pub downloaders: usize,
    /// Of all of them, the origins.
    pub origins: usize,
}

/// Where a blob stands as one agent sees it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlobStat {
    pub digest: Digest,
    /// Bytes.
    pub size: u64,
    pub piece_length: u32,
    pub pieces: u32,
    /// This agent's copy.
    pub local: LocalCopy,
    /// The blob's swarm at its tracker; `None` when no tracker answered.
    pub swarm: Option<SwarmSize>,
    /// The ids of the origins that own the blob on the ring, best owner first.
    pub origins: Vec<String>,
}

/// This agent's copy of a blob.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalCopy {
    /// The whole blob is stored and verified here.
    pub complete: bool,
    /// Bytes this node received from origins and from other peers, and sent to peers, since
    /// it started (zero for a blob it only found in its store).
    pub from_origin: u64,
    pub from_peers: u64,
    pub uploaded: u64,
}
