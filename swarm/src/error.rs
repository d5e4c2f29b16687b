//! [`SwarmError`]: why a download or a seed failed, as the swarm's callers see it.
//!
//! It is `Clone` because one failure reaches every waiter of a shared download (through the
//! entry's `watch` of its status); causes that are not `Clone` are held in an `Arc`.

use std::sync::Arc;

use shoal_core::Digest;

use crate::store::StoreError;

/// Why a download or a seed failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SwarmError {
    #[error("store: {0}")]
    Store(Arc<StoreError>),
    #[error("download of {digest} timed out after {secs}s")]
    Timeout { digest: Digest, secs: u64 },
    #[error("node is shutting down")]
    ShuttingDown,
    #[error("blob {0} is not in the store")]
    NotStored(Digest),
    /// `max_downloads` downloads are running: try again once one ended.
    #[error("{max} downloads are already running (swarm.max_downloads)")]
    TooManyDownloads { max: usize },
    #[error("download failed: {0}")]
    Failed(Arc<str>),
}

impl From<StoreError> for SwarmError {
    fn from(e: StoreError) -> SwarmError {
        SwarmError::Store(Arc::new(e))
    }
}
