//! Piece picker: which piece to request from which peer. (Stub: the implementation replaces
//! this file; the public API below is the contract the swarm engine builds against.)

use std::hash::Hash;

/// Tunables of the picker.
#[derive(Clone, Debug)]
pub struct PickerOptions {
    /// Requests in flight to one peer at most (pipelining depth).
    pub max_outstanding_per_peer: usize,
    /// Requests in flight to one origin at most.
    pub max_outstanding_per_origin: usize,
    /// Seed of the random tie-break, so a run is reproducible.
    pub seed: u64,
}

impl Default for PickerOptions {
    fn default() -> Self {
        PickerOptions { max_outstanding_per_peer: 4, max_outstanding_per_origin: 4, seed: 0 }
    }
}

/// Per-blob download state.
pub struct Picker<P> {
    _p: std::marker::PhantomData<P>,
}

impl<P: Copy + Eq + Hash + Ord + std::fmt::Debug> Picker<P> {
    pub fn new(_num_pieces: u32, _have: &[bool], _opts: PickerOptions) -> Self {
        todo!()
    }
    pub fn peer_joined(&mut self, _peer: P, _bits: &[u8], _is_origin: bool) {
        todo!()
    }
    pub fn peer_have(&mut self, _peer: P, _piece: u32) {
        todo!()
    }
    pub fn peer_left(&mut self, _peer: P) {
        todo!()
    }
    pub fn next_requests(&mut self, _peer: P) -> Vec<u32> {
        todo!()
    }
    pub fn piece_verified(&mut self, _from: P, _piece: u32) -> Vec<P> {
        todo!()
    }
    pub fn piece_failed(&mut self, _from: P, _piece: u32) {
        todo!()
    }
    pub fn request_rejected(&mut self, _peer: P, _piece: u32) {
        todo!()
    }
    pub fn request_timed_out(&mut self, _peer: P, _piece: u32) {
        todo!()
    }
    pub fn is_complete(&self) -> bool {
        todo!()
    }
    pub fn have(&self, _piece: u32) -> bool {
        todo!()
    }
    pub fn missing(&self) -> u32 {
        todo!()
    }
    pub fn is_blacklisted(&self, _peer: &P) -> bool {
        todo!()
    }
    pub fn outstanding(&self, _peer: &P) -> usize {
        todo!()
    }
    pub fn in_endgame(&self) -> bool {
        todo!()
    }
}
