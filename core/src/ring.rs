//! Rendezvous-hash ring of origins. (Stub: the implementation replaces this file.)

/// One origin as the ring knows it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OriginNode {
    /// Stable name of the origin, hashed into the ring.
    pub id: String,
    /// Base URL of its HTTP API.
    pub http: String,
    /// Address of its peer (wire protocol) port.
    pub peer: std::net::SocketAddr,
}

/// The origins and how many of them own each blob.
#[derive(Clone, Debug)]
pub struct Ring {
    _nodes: Vec<OriginNode>,
}

impl Ring {
    pub fn new(_nodes: Vec<OriginNode>, _replicas: usize) -> Result<Ring, RingError> {
        todo!()
    }
    /// The owners of `blob`, best first.
    pub fn owners(&self, _blob: &crate::Digest) -> Vec<&OriginNode> {
        todo!()
    }
    pub fn nodes(&self) -> &[OriginNode] {
        todo!()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RingError {
    #[error("ring has no origins")]
    Empty,
}
