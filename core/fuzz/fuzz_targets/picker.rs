//! An arbitrary sequence of download events into one `Picker`.
//!
//! Asserts more than "does not crash": after every event the picker's own invariants hold
//! (`check_invariants`: counts, states and the request index agree), requests only name pieces
//! we lack and the peer has, are never repeated to one peer, and stay within the per-peer and
//! total caps; a verified piece never cancels its own sender, and a failed peer is blacklisted
//! with nothing left in flight.

#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use shoal_core::picker::{PeerKind, Picker, PickerOptions};

#[derive(Arbitrary, Debug)]
enum Event {
    /// `kind` folds to near, far (another zone) or origin.
    Join {
        peer: u8,
        bits: Vec<u8>,
        kind: u8,
    },
    Have {
        peer: u8,
        piece: u32,
    },
    Left {
        peer: u8,
    },
    Next {
        peer: u8,
    },
    Verified {
        peer: u8,
        piece: u32,
    },
    Failed {
        peer: u8,
        piece: u32,
    },
    Rejected {
        peer: u8,
        piece: u32,
    },
    TimedOut {
        peer: u8,
        piece: u32,
    },
    Deferred {
        peer: u8,
        piece: u32,
    },
    Busy {
        peer: u8,
        piece: u32,
    },
}

#[derive(Arbitrary, Debug)]
struct Input {
    num_pieces: u16,
    have: Vec<bool>,
    per_peer: u8,
    per_origin: u8,
    total: u8,
    endgame_pieces: u8,
    stripes: u8,
    stripe_lookahead: u8,
    far: u8,
    seed: u64,
    events: Vec<Event>,
}

/// Peers are folded into a few ids so that events meet the same peers often.
const PEERS: u8 = 8;

fuzz_target!(|input: Input| {
    let num_pieces = u32::from(input.num_pieces % 512);
    let (per_peer, per_origin) = (usize::from(input.per_peer % 8), usize::from(input.per_origin % 8));
    let total = if input.total == u8::MAX { usize::MAX } else { usize::from(input.total % 32) };
    let opts = PickerOptions {
        max_outstanding_per_peer: per_peer,
        max_outstanding_per_origin: per_origin,
        seed: input.seed,
        endgame_pieces: u32::from(input.endgame_pieces % 8),
        stripes: u32::from(input.stripes % 16),
        stripe_lookahead: u32::from(input.stripe_lookahead % 4),
        max_outstanding_total: total,
        max_outstanding_far: usize::from(input.far % 4),
    };
    let mut p: Picker<u8> = Picker::new(num_pieces, &input.have, opts);
    p.check_invariants();
    let piece = |i: u32| if i.is_multiple_of(4) { i } else { i % num_pieces.max(1) };
    for event in input.events.into_iter().take(2000) {
        match event {
            Event::Join { peer, bits, kind } => {
                let kind = [PeerKind::Near, PeerKind::Far, PeerKind::Origin][usize::from(kind % 3)];
                p.peer_joined_as(peer % PEERS, &bits, kind);
            }
            Event::Have { peer, piece: i } => p.peer_have(peer % PEERS, piece(i)),
            Event::Left { peer } => p.peer_left(peer % PEERS),
            Event::Next { peer } => {
                let q = peer % PEERS;
                let before = p.outstanding(&q);
                let got = p.next_requests(q);
                let mut distinct = got.clone();
                distinct.sort_unstable();
                distinct.dedup();
                assert_eq!(distinct.len(), got.len(), "a piece asked twice in one call: {got:?}");
                assert!(got.iter().all(|&i| i < num_pieces && !p.have(i)), "{got:?}");
                assert_eq!(p.outstanding(&q), before + got.len());
                assert!(p.outstanding(&q) <= per_peer.max(per_origin));
                assert!((0..PEERS).map(|r| p.outstanding(&r)).sum::<usize>() <= total);
                assert!(got.is_empty() || !p.is_blacklisted(&q));
            }
            Event::Verified { peer, piece: i } => {
                let q = peer % PEERS;
                assert!(!p.piece_verified(q, piece(i)).contains(&q));
            }
            Event::Failed { peer, piece: i } => {
                let q = peer % PEERS;
                p.piece_failed(q, piece(i));
                assert!(p.is_blacklisted(&q) && p.outstanding(&q) == 0);
            }
            Event::Rejected { peer, piece: i } => p.request_rejected(peer % PEERS, piece(i)),
            Event::TimedOut { peer, piece: i } => p.request_timed_out(peer % PEERS, piece(i)),
            Event::Deferred { peer, piece: i } => p.request_deferred(peer % PEERS, piece(i)),
            Event::Busy { peer, piece: i } => p.request_busy(peer % PEERS, piece(i)),
        }
        p.check_invariants();
    }
});
