//! Shoal's P2P engine, shared by agents and origins: one [`Swarm`] per node.
//!
//! - [`conn`]: the connection driver. Owns a socket: handshake, a reader loop that decodes
//!   frames with `shoal_core::wire` and a writer fed by a channel, deadlines on every read and
//!   write. One TCP connection per pair of nodes carries every blob they share.
//! - [`download`]: one actor task per blob being downloaded. It owns the blob's
//!   `shoal_core::picker::Picker`, turns events from connections into piece requests, handles
//!   timeouts, announces to the tracker and dials peers, and commits the blob when done.
//! - `peers`: the connection table (connections, dials, origin addresses, the blacklist),
//!   the one owner of who is connected.
//! - `zones`: this node's zone and its peers', learned from handouts: how each peer ranks
//!   as a source (near, far, origin) and which bytes crossed a zone boundary.
//! - [`store`]: pieces on disk; [`limiter`]: token buckets; [`announce`]: the tracker client;
//!   [`blocking`]: the bounded pool for disk I/O and hashing.
//!
//! Invariant: a piece is written to the store, marked present, announced or served only after
//! it matched its piece hash; a blob is complete only after its sha256 matched.
//! [`Swarm::stream`] hands a reader each piece once it is present, in order, before the blob
//! is complete: sound only when the metainfo is authentic (it came from an origin over TLS).
//!
//! With TLS (`Swarm::start`'s `tls`) every peer connection is mutual TLS, the node's peer id
//! is bound to its certificate's identity, and a remote's claimed id must be bound to the
//! certificate it proved; the blacklist is keyed by that identity and address, never a claim.

pub mod announce;
pub mod blocking;
pub mod bufpool;
pub mod config;
pub mod conn;
pub mod download;
mod error;
pub mod gc;
mod index;
pub mod limiter;
pub mod metrics;
mod node;
mod peers;
pub mod store;
pub mod store_metrics;
mod zones;

pub use config::{PinConfig, StoreConfig, SwarmConfig};
pub use error::SwarmError;
pub use gc::RoundReport;
pub use index::{PIN_PREHEAT, repository_pin};
pub use node::{BlobStats, Role, Swarm, UseRecord};
pub use store::{BlobFile, FsSpace, Store, StoreError};
