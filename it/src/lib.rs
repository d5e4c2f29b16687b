//! In-process multi-node tests of Shoal: whole clusters (tracker, origins, agents on
//! distinct loopback addresses) in one test binary, built with
//! `shoal_loadtest::cluster::Cluster`. [`evil_peer`] is a peer that speaks the wire protocol
//! but serves corrupt pieces.

// Harness code: counts, sizes and addresses here are small, and no file offsets are computed.
#![allow(clippy::cast_possible_truncation)]

pub mod evil_peer;
#[cfg(test)]
pub mod registry_server;

#[cfg(test)]
mod tests;
