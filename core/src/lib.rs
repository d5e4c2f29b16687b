//! Pure core of Shoal: everything that can be decided without a socket, a file or a clock.
//!
//! Invariant: this crate depends on no async runtime and does no I/O. The swarm engine, the
//! services and the load-test simulator all drive the same code here, so what is tested here
//! is what runs in production.

pub mod api;
pub mod cache;
pub mod digest;
pub mod download;
pub mod handout;
pub mod manifest;
pub mod metainfo;
pub mod net;
pub mod peer_id;
pub mod picker;
pub mod ratelimit;
pub mod registry;
pub mod ring;
pub mod seeding;
pub mod store_files;
pub mod wire;

pub use digest::{Digest, DigestHasher, ParseDigestError};
pub use metainfo::{MetaInfo, MetaInfoError, PieceHash, PieceIndex};
pub use peer_id::PeerId;

/// One mebibyte.
pub const MIB: u64 = 1024 * 1024;
