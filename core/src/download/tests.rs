use std::time::Duration;

use proptest::prelude::*;

use super::*;
use crate::wire::pack_bits;

const MS: Duration = Duration::from_millis(1);

fn opts(per_peer: usize, total: usize) -> DownloadOptions {
    DownloadOptions {
        picker: PickerOptions {
            max_outstanding_per_peer: per_peer,
            max_outstanding_per_origin: per_peer,
            max_outstanding_total: total,
            seed: 7,
            ..PickerOptions::default()
        },
        request_timeout: Duration::from_secs(2),
        download_timeout: Duration::from_secs(60),
        busy_backoff: Some(Duration::from_millis(50)),
    }
}

fn all(n: u32) -> Vec<u8> {
    pack_bits(n, |_| true)
}

fn only(n: u32, pieces: &[u32]) -> Vec<u8> {
    pack_bits(n, |i| pieces.contains(&i))
}

fn drain(s: &mut DownloadState<u32>) -> Vec<Action<u32>> {
    std::iter::from_fn(|| s.poll()).collect()
}

fn requests(actions: &[Action<u32>]) -> Vec<(u32, u32)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Request { peer, piece } => Some((*peer, *piece)),
            _ => None,
        })
        .collect()
}

fn cancels(actions: &[Action<u32>]) -> Vec<(u32, u32)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Cancel { peer, piece } => Some((*peer, *piece)),
            _ => None,
        })
        .collect()
}

/// Every request the state holds is one the picker counts, peer by peer.
fn check(s: &DownloadState<u32>, peers: &[u32]) {
    s.picker().check_invariants();
    let total: usize = peers.iter().map(|p| s.picker().outstanding(p)).sum();
    assert_eq!(total, s.in_flight(), "pending requests and the picker's disagree");
}

#[test]
fn the_first_tick_announces_and_a_stalled_download_announces_again_soon() {
    let mut s = DownloadState::<u32>::new(4, &[], opts(4, usize::MAX));
    assert!(drain(&mut s).is_empty(), "nothing before the first tick");
    assert_eq!(s.next_wakeup(), Some(Duration::ZERO));
    s.tick(Duration::ZERO);
    assert_eq!(drain(&mut s), vec![Action::Announce]);
    // One announce at a time.
    s.tick(100 * MS);
    assert!(drain(&mut s).is_empty());
    // No peer joined: at most STALLED_ANNOUNCE later, however long the interval.
    s.announced(Duration::from_secs(3), 150 * MS);
    assert_eq!(s.next_wakeup(), Some(150 * MS + STALLED_ANNOUNCE));
    s.tick(600 * MS);
    assert!(drain(&mut s).is_empty());
    s.tick(700 * MS);
    assert_eq!(drain(&mut s), vec![Action::Announce]);
    // With a peer: the tracker's interval.
    s.peer_joined(1, &all(4), false, 700 * MS);
    drain(&mut s);
    s.announced(Duration::from_secs(3), 800 * MS);
    s.tick(3700 * MS);
    assert!(!drain(&mut s).contains(&Action::Announce));
    s.tick(3800 * MS);
    assert!(drain(&mut s).contains(&Action::Announce));
}

#[test]
fn a_joining_peer_gets_a_full_pipeline_in_stripe_order() {
    let mut s = DownloadState::<u32>::new(64, &[], opts(4, usize::MAX));
    s.peer_joined(1, &all(64), false, Duration::ZERO);
    let got = requests(&drain(&mut s));
    assert_eq!(got.len(), 4);
    // 64 pieces in 8 stripes of at least 16: the first stripe is pieces 0..16.
    assert!(got.iter().all(|&(p, i)| p == 1 && i < 16), "{got:?}");
    for &(p, i) in &got {
        assert_eq!(s.deadline(p, i), Some(Duration::from_secs(2)));
    }
    check(&s, &[1]);
}

#[test]
fn a_freed_slot_the_delivering_peer_cannot_use_goes_to_another_peer() {
    // A window of two requests. Peer 1 holds pieces 0 and 1 only; the origin holds all four,
    // and is asked only for pieces no other peer has. Peer 1 takes the whole window first.
    let mut s = DownloadState::<u32>::new(4, &[], opts(4, 2));
    s.peer_joined(1, &only(4, &[0, 1]), false, Duration::ZERO);
    assert_eq!(requests(&drain(&mut s)), vec![(1, 0), (1, 1)]);
    s.peer_joined(9, &all(4), true, Duration::ZERO);
    assert!(requests(&drain(&mut s)).is_empty(), "the window is full");
    // Peer 1 delivers and has nothing more: the slot must go to the origin, or nothing would
    // ever ask it for pieces 2 and 3 (the stall the slot refill fixed).
    assert_eq!(s.piece_ok(1, 0, 10 * MS), Verified::New);
    let got = drain(&mut s);
    assert_eq!(got[0], Action::Have { piece: 0 });
    let req = requests(&got);
    assert_eq!(req.len(), 1);
    assert_eq!(req[0].0, 9, "{got:?}");
    check(&s, &[1, 9]);
    // The rest completes.
    let mut left = vec![(1, 1), req[0]];
    while let Some((peer, piece)) = left.pop() {
        s.piece_ok(peer, piece, 20 * MS);
        for a in drain(&mut s) {
            if let Action::Request { peer, piece } = a {
                left.push((peer, piece));
            }
        }
    }
    assert!(s.is_complete() && s.is_over());
}

#[test]
fn a_busy_peer_is_left_alone_until_its_backoff_ends_on_a_tick() {
    let mut s = DownloadState::<u32>::new(32, &[], opts(2, usize::MAX));
    s.tick(Duration::ZERO);
    s.announced(Duration::from_secs(3), Duration::ZERO);
    s.peer_joined(1, &all(32), false, Duration::ZERO);
    let first = requests(&drain(&mut s));
    assert_eq!(first.len(), 2);
    let (_, piece) = first[0];
    s.rejected(1, piece, RejectReason::Busy, 10 * MS);
    assert!(requests(&drain(&mut s)).is_empty(), "a busy peer is not asked again at once");
    // The deferred piece stays askable: a peer holding only it is asked for it.
    s.peer_joined(2, &only(32, &[piece]), false, 20 * MS);
    assert_eq!(requests(&drain(&mut s)), vec![(2, piece)]);
    // A `have` from the busy peer does not wake it early.
    s.peer_have(1, 0, 30 * MS);
    assert!(requests(&drain(&mut s)).is_empty());
    assert_eq!(s.next_wakeup(), Some(60 * MS));
    s.tick(50 * MS);
    assert!(requests(&drain(&mut s)).is_empty(), "the back-off ends at 60 ms");
    s.tick(100 * MS);
    let got = requests(&drain(&mut s));
    assert_eq!(got.len(), 1, "peer 1 is topped up to its pipeline: {got:?}");
    assert_eq!(got[0].0, 1);
    check(&s, &[1, 2]);
}

#[test]
fn without_a_busy_backoff_busy_is_like_not_having_the_piece() {
    let mut o = opts(1, usize::MAX);
    o.busy_backoff = None;
    let mut s = DownloadState::<u32>::new(32, &[], o);
    s.peer_joined(1, &all(32), false, Duration::ZERO);
    let (_, piece) = requests(&drain(&mut s))[0];
    s.rejected(1, piece, RejectReason::Busy, MS);
    let got = requests(&drain(&mut s));
    assert_eq!(got.len(), 1);
    assert_ne!(got[0].1, piece, "marked don't-ask at that peer");
}

#[test]
fn expired_requests_are_cancelled_and_asked_again_on_a_tick() {
    let mut s = DownloadState::<u32>::new(32, &[], opts(1, usize::MAX));
    s.peer_joined(1, &all(32), false, Duration::ZERO);
    let (_, piece) = requests(&drain(&mut s))[0];
    s.peer_joined(2, &all(32), false, MS);
    drain(&mut s);
    s.tick(1999 * MS);
    assert!(cancels(&drain(&mut s)).is_empty());
    s.tick(2000 * MS);
    let got = drain(&mut s);
    assert_eq!(cancels(&got), vec![(1, piece)]);
    assert_eq!(s.timeouts(), 1);
    // Peer 1's slot is free again, and so is the piece: a peer holding only it gets it.
    let again = requests(&got);
    assert_eq!(again.len(), 1, "{got:?}");
    assert_eq!(again[0].0, 1);
    assert_ne!(again[0].1, piece, "peer 2 holds it too: not asked of peer 1 again");
    s.peer_joined(3, &only(32, &[piece]), false, 2001 * MS);
    assert_eq!(requests(&drain(&mut s)), vec![(3, piece)]);
    check(&s, &[1, 2, 3]);
}

#[test]
fn a_rejected_piece_is_asked_elsewhere_and_a_leaving_peer_releases_its_requests() {
    let mut s = DownloadState::<u32>::new(16, &[], opts(2, usize::MAX));
    s.peer_joined(1, &all(16), false, Duration::ZERO);
    let mine = requests(&drain(&mut s));
    let (a, b) = (mine[0].1, mine[1].1);
    s.rejected(1, a, RejectReason::NotHave, MS);
    let got = requests(&drain(&mut s));
    assert_eq!(got.len(), 1, "peer 1 is topped up");
    let c = got[0].1;
    assert!(c != a && c != b);
    s.peer_joined(2, &only(16, &[a, b, c]), false, 2 * MS);
    assert_eq!(requests(&drain(&mut s)), vec![(2, a)], "b and c are asked of peer 1 already");
    s.peer_left(1, 3 * MS);
    let got = requests(&drain(&mut s));
    assert_eq!(got.len(), 1, "peer 2's pipeline of two: {got:?}");
    assert!(got[0].0 == 2 && (got[0].1 == b || got[0].1 == c), "{got:?}");
    assert_eq!(s.peers(), &[2]);
    check(&s, &[1, 2]);
}

#[test]
fn a_corrupt_piece_blacklists_its_sender_for_good() {
    let mut s = DownloadState::<u32>::new(16, &[], opts(2, usize::MAX));
    s.peer_joined(1, &all(16), false, Duration::ZERO);
    let (_, piece) = requests(&drain(&mut s))[0];
    s.piece_failed(1, piece, MS);
    assert!(s.peers().is_empty());
    assert!(s.picker().is_blacklisted(&1));
    s.peer_joined(1, &all(16), false, 2 * MS);
    assert!(drain(&mut s).is_empty());
    assert!(s.peers().is_empty());
}

#[test]
fn endgame_duplicates_are_cancelled_and_a_late_copy_is_a_duplicate() {
    // Two pieces, both peers have both: endgame from the start (3 pieces or fewer missing).
    let mut s = DownloadState::<u32>::new(2, &[], opts(2, usize::MAX));
    s.peer_joined(1, &all(2), false, Duration::ZERO);
    s.peer_joined(2, &all(2), false, Duration::ZERO);
    let got = requests(&drain(&mut s));
    assert_eq!(got.len(), 4, "each piece from both peers: {got:?}");
    assert_eq!(s.piece_ok(1, 0, MS), Verified::New);
    let got = drain(&mut s);
    assert_eq!(cancels(&got), vec![(2, 0)]);
    // The cancelled copy was already on the wire.
    assert_eq!(s.piece_ok(2, 0, 2 * MS), Verified::Duplicate);
    check(&s, &[1, 2]);
}

#[test]
fn the_last_piece_cancels_what_is_left_then_commits_and_later_events_are_ignored() {
    let mut s = DownloadState::<u32>::new(2, &[], opts(2, usize::MAX));
    s.peer_joined(1, &all(2), false, Duration::ZERO);
    s.peer_joined(2, &all(2), false, Duration::ZERO);
    drain(&mut s);
    s.piece_ok(1, 0, MS);
    drain(&mut s);
    assert_eq!(s.piece_ok(2, 1, 2 * MS), Verified::New);
    let got = drain(&mut s);
    assert_eq!(got.last(), Some(&Action::Commit));
    assert_eq!(cancels(&got), vec![(1, 1)]);
    assert_eq!(s.in_flight(), 0);
    assert_eq!(s.next_wakeup(), None);
    s.piece_ok(1, 1, 3 * MS);
    s.peer_joined(3, &all(2), false, 3 * MS);
    s.tick(Duration::from_secs(100));
    assert!(drain(&mut s).is_empty());
}

#[test]
fn a_download_that_has_every_piece_commits_at_once() {
    let mut s = DownloadState::<u32>::new(3, &[true, true, true], opts(2, usize::MAX));
    assert_eq!(drain(&mut s), vec![Action::Commit]);
}

#[test]
fn a_download_past_its_timeout_gives_up_on_a_tick() {
    let mut s = DownloadState::<u32>::new(3, &[], opts(2, usize::MAX));
    s.tick(Duration::ZERO);
    drain(&mut s);
    s.tick(Duration::from_secs(60));
    assert_eq!(drain(&mut s), vec![Action::GiveUp]);
    assert!(s.is_over() && !s.is_complete());
}

#[test]
fn the_request_timeout_adds_the_drain_of_two_pipelines() {
    // (base s, rate, piece, depth) -> timeout ms
    let table = [
        (10, None, 1 << 20, 4, 10_000),
        (10, Some(50 << 20), 1 << 20, 4, 10_160), // 8 MiB at 50 MiB/s
        (10, Some(50 << 20), 4 << 20, 4, 10_640), // the blob's own piece length
        (1, Some(0), 1 << 20, 4, 1_000),
    ];
    for (base, rate, piece, depth, want) in table {
        let got = request_timeout(Duration::from_secs(base), rate, piece, depth);
        assert_eq!(got.as_millis(), want, "{rate:?} {piece} {depth}");
    }
}

#[test]
fn dials_go_to_every_origin_and_to_peers_while_there_is_room() {
    // (peer, origin); 0 is this node.
    let handout = [(1, false), (0, false), (2, false), (7, true), (3, false), (8, true)];
    // (open, max) -> dialed
    let table: [(usize, usize, &[u32]); 4] =
        [(0, 16, &[1, 2, 7, 3, 8]), (0, 2, &[1, 2, 7, 8]), (1, 3, &[1, 2, 7, 8]), (5, 3, &[7, 8])];
    for (open, max, want) in table {
        let got = peers_to_dial(handout, open, max, |p| p.1, |p| p.0 == 0, |_| false);
        let got: Vec<u32> = got.into_iter().map(|p| p.0).collect();
        assert_eq!(got, want, "{open} open of {max}");
    }
    // Origins count against the room as they are dialed.
    let got = peers_to_dial([(7, true), (1, false), (2, false)], 0, 2, |p| p.1, |_| false, |_| false);
    assert_eq!(got, vec![(7, true), (1, false)]);
}

/// Peers of other zones (over 100) get their share of the room, `max(1, max / 16)`, however
/// many peers of our zone come before them; the rest goes to our zone, and what one side
/// cannot use goes to the other.
#[test]
fn dials_keep_a_share_for_other_zones() {
    let mut handout: Vec<(u32, bool)> = (1..=20).map(|p| (p, false)).collect();
    handout.extend([(10, false), (11, false), (12, false)].map(|(p, o)| (p + 100, o)));
    handout.push((7, true));
    let far = |p: &(u32, bool)| p.0 > 100;
    // (open, max) -> (near dialed, far dialed); the origin always
    let table =
        [(0, 16, 13, 3), (0, 48, 20, 3), (0, 32, 20, 3), (0, 4, 2, 2), (14, 16, 0, 2), (15, 16, 0, 1), (16, 16, 0, 0)];
    for (open, max, near, far_n) in table {
        let got = peers_to_dial(handout.clone(), open, max, |p| p.1, |p| p.0 == 0, far);
        assert_eq!(got.iter().filter(|p| !p.1 && !far(p)).count(), near, "{open} open of {max}: {got:?}");
        assert_eq!(got.iter().filter(|p| far(p)).count(), far_n, "{open} open of {max}: {got:?}");
        assert!(got.contains(&(7, true)));
    }
    // Few near peers: the far ones fill the room.
    let few: Vec<(u32, bool)> = vec![(1, false), (110, false), (111, false), (112, false), (113, false)];
    let got = peers_to_dial(few, 0, 4, |p| p.1, |_| false, far);
    assert_eq!(got, vec![(1, false), (110, false), (111, false), (112, false)]);
}

/// What a scripted peer does with the next request in flight.
#[derive(Clone, Copy, Debug)]
enum Reply {
    Ok,
    Busy,
    Seeding,
    NotHave,
    Corrupt,
    Silent,
}

fn reply() -> impl Strategy<Value = Reply> {
    prop_oneof![
        6 => Just(Reply::Ok),
        2 => Just(Reply::Busy),
        1 => Just(Reply::Seeding),
        1 => Just(Reply::NotHave),
        1 => Just(Reply::Silent),
        1 => Just(Reply::Corrupt),
    ]
}

/// A peer of another zone is asked only for what no peer of ours has, once ours has nothing
/// free to give, one request at a time; when our peer leaves, its pieces go to the far one.
#[test]
fn a_far_peer_is_asked_only_for_what_near_peers_lack() {
    let mut s = DownloadState::<u32>::new(8, &[], opts(8, usize::MAX));
    s.peer_joined_as(1, &only(8, &[0, 1, 2, 3, 4]), PeerKind::Near, Duration::ZERO);
    s.peer_joined_as(2, &all(8), PeerKind::Far, MS);
    let mut asked = requests(&drain(&mut s));
    asked.sort_unstable();
    assert_eq!(asked.len(), 6, "{asked:?}");
    assert_eq!(&asked[..5], &[(1, 0), (1, 1), (1, 2), (1, 3), (1, 4)]);
    assert!(asked[5].0 == 2 && asked[5].1 >= 5, "{asked:?}");
    check(&s, &[1, 2]);
    // The far piece arrives: the next one goes to the far peer.
    s.piece_ok(2, asked[5].1, 2 * MS);
    let next = requests(&drain(&mut s));
    assert!(next.len() == 1 && next[0].0 == 2 && next[0].1 >= 5, "{next:?}");
    check(&s, &[1, 2]);
    // Our peer leaves: its pieces become the far peer's, still one at a time.
    s.peer_left(1, 3 * MS);
    assert!(requests(&drain(&mut s)).is_empty(), "the far slot is taken");
    check(&s, &[2]);
}

/// A gateway told its share asks the far peer for it at once; a node told `None` does not
/// ask it at all; either asks it for anything its zone lacks once no new piece came for
/// `FAR_FALLBACK` (a gateway of another share is gone), and a piece that comes puts that off.
#[test]
fn imports_restrict_far_requests_until_the_download_stalls() {
    // (imports, pieces of the far requests before the fallback)
    let share = Imports::Share { slot: 1, of: 4 };
    let table: [(Imports, &[u32]); 2] = [(share, &[1, 5]), (Imports::None, &[])];
    for (imports, at_once) in table {
        let mut s = DownloadState::<u32>::new(8, &[], opts(8, usize::MAX));
        s.set_imports(imports, Duration::ZERO);
        // The near peer keeps pieces 0 and 2 in flight and never answers; the far one has all.
        s.peer_joined_as(1, &only(8, &[0, 2]), PeerKind::Near, Duration::ZERO);
        s.peer_joined_as(2, &all(8), PeerKind::Far, MS);
        s.announced(Duration::from_secs(10), MS);
        let mut far: Vec<u32> = requests(&drain(&mut s)).into_iter().filter(|r| r.0 == 2).map(|r| r.1).collect();
        far.sort_unstable();
        // A share goes out one request at a time.
        assert_eq!(far.len(), at_once.len().min(1), "{imports:?}: {far:?}");
        assert!(far.iter().all(|p| at_once.contains(p)), "{imports:?}: {far:?}");
        check(&s, &[1, 2]);
        if let Some(&p) = far.first() {
            // The piece comes at 100 ms: the next of the share goes, and the clock restarts.
            s.piece_ok(2, p, 100 * MS);
            let next = requests(&drain(&mut s));
            assert_eq!(next.len(), 1, "{next:?}");
            assert!(at_once.contains(&next[0].1) && next[0].1 != p, "{next:?}");
            s.piece_ok(2, next[0].1, 100 * MS);
            drain(&mut s);
        }
        let since = if far.is_empty() { Duration::ZERO } else { 100 * MS };
        assert_eq!(s.next_wakeup(), Some(since + FAR_FALLBACK), "{imports:?}");
        s.tick(since + FAR_FALLBACK - MS);
        assert!(requests(&drain(&mut s)).is_empty(), "{imports:?}: not yet");
        s.tick(since + FAR_FALLBACK);
        // Pieces 0 and 2 are still in flight at the near peer; the rest go one at a time.
        let late = requests(&drain(&mut s));
        assert_eq!(late.len(), 1, "{imports:?}: {late:?}");
        assert!(late[0].0 == 2 && ![0, 2, 1, 5].contains(&late[0].1), "{imports:?}: {late:?}");
        assert!(s.picker().far_fallback());
        check(&s, &[1, 2]);
    }
}

proptest! {
    /// Whatever the peers answer, the state and its picker agree on what is in flight, no
    /// action follows the commit, and a download with an honest seed among its peers ends
    /// complete once its peers answer.
    #[test]
    fn any_replies_keep_the_books_and_finish(
        num_pieces in 1u32..40,
        total in prop_oneof![Just(usize::MAX), 1usize..6],
        replies in proptest::collection::vec((reply(), 0usize..8), 0..300),
    ) {
        run_case(num_pieces, total, &replies)?;
    }
}

/// The body of `any_replies_keep_the_books_and_finish`.
fn run_case(num_pieces: u32, total: usize, replies: &[(Reply, usize)]) -> Result<(), TestCaseError> {
    let peers = [1u32, 2, 3, 9];
    let mut o = opts(3, total);
    o.download_timeout = Duration::from_secs(24 * 3600);
    let mut s = DownloadState::<u32>::new(num_pieces, &[], o);
    let mut inflight: Vec<(u32, u32)> = Vec::new();
    let mut now = Duration::ZERO;
    let mut committed = false;
    let take = |s: &mut DownloadState<u32>, inflight: &mut Vec<(u32, u32)>, committed: &mut bool| {
        for a in drain(s) {
            prop_assert!(!*committed, "{a:?} after the commit");
            match a {
                Action::Request { peer, piece } => inflight.push((peer, piece)),
                Action::Cancel { peer, piece } => inflight.retain(|r| *r != (peer, piece)),
                Action::Commit => *committed = true,
                Action::Have { .. } | Action::Announce | Action::GiveUp => {}
            }
        }
        Ok(())
    };
    for (k, &p) in (0u32..).zip(peers.iter()) {
        // Peer 3 has the first half only; 2 is in another zone; 9 is an origin.
        let bits = if p == 3 { pack_bits(num_pieces, |i| i < num_pieces / 2) } else { all(num_pieces) };
        let kind = match p {
            9 => PeerKind::Origin,
            2 => PeerKind::Far,
            _ => PeerKind::Near,
        };
        s.peer_joined_as(p, &bits, kind, now + k * MS);
        take(&mut s, &mut inflight, &mut committed)?;
    }
    for &(r, pick) in replies {
        now += 7 * MS;
        if inflight.is_empty() {
            s.tick(now);
        } else {
            let (peer, piece) = inflight.remove(pick % inflight.len());
            // The origin never lies: some peer can always finish the download.
            let r = if peer == 9 && matches!(r, Reply::Corrupt | Reply::NotHave) { Reply::Ok } else { r };
            match r {
                Reply::Ok => {
                    s.piece_ok(peer, piece, now);
                }
                Reply::Busy => s.rejected(peer, piece, RejectReason::Busy, now),
                Reply::Seeding => s.rejected(peer, piece, RejectReason::Seeding, now),
                Reply::NotHave => s.rejected(peer, piece, RejectReason::NotHave, now),
                Reply::Corrupt => {
                    s.piece_failed(peer, piece, now);
                    inflight.retain(|(p, _)| *p != peer);
                }
                Reply::Silent => s.tick(now),
            }
        }
        take(&mut s, &mut inflight, &mut committed)?;
        if !s.is_over() {
            check(&s, &peers);
        }
    }
    // Then every peer answers every request honestly, ticking past every deadline.
    for _ in 0..10_000 {
        if committed {
            break;
        }
        if let Some((peer, piece)) = inflight.pop() {
            now += MS;
            s.piece_ok(peer, piece, now);
        } else {
            now += Duration::from_millis(500);
            s.tick(now);
        }
        take(&mut s, &mut inflight, &mut committed)?;
    }
    prop_assert!(
        committed,
        "the download never committed: missing {}, in flight {}, peers {:?}, asked {:?}, over {}",
        s.picker().missing(),
        s.in_flight(),
        s.peers(),
        inflight,
        s.is_over()
    );
    prop_assert!(s.is_complete());
    Ok(())
}

/// Downloaders that know only the blob's origin (no tracker answers and there is no peer
/// exchange), which super-seeds: a piece it has sent once is answered busy until every piece
/// has been sent once. Every downloader finishes. With each downloader asking a busy origin
/// for the same refused pieces of the first stripe again, the pieces nobody had asked for
/// were never asked, the budget never reopened, and every download stalled.
#[test]
fn downloaders_that_know_only_a_super_seeding_origin_all_finish() {
    use crate::seeding::SeedBudget;
    const PIECES: u32 = 128;
    const DOWNLOADERS: u32 = 6;
    /// The origin's link sends one piece per this many milliseconds.
    const SEND_MS: u64 = 2;
    const ORIGIN: u32 = 0;
    let mut budget = SeedBudget::new(PIECES);
    let mut states: Vec<DownloadState<u32>> = (0..DOWNLOADERS)
        .map(|d| {
            let mut o = opts(4, 8);
            o.picker.seed = u64::from(d);
            o.picker.stripes = 8;
            o.picker.stripe_lookahead = 0;
            DownloadState::new(PIECES, &[], o)
        })
        .collect();
    // Requests at the origin: (downloader, piece), answered in order.
    let mut queue: std::collections::VecDeque<(usize, u32)> = Default::default();
    // Answers on their way back: (due, downloader, piece, sent).
    let mut replies: Vec<(Duration, usize, u32, bool)> = Vec::new();
    let mut committed = vec![false; DOWNLOADERS as usize];
    let mut link_free = Duration::ZERO;
    for s in &mut states {
        s.tick(Duration::ZERO);
        s.announced(Duration::from_secs(30), Duration::ZERO);
        s.peer_joined(ORIGIN, &all(PIECES), true, Duration::ZERO);
    }
    let mut now = Duration::ZERO;
    while now < Duration::from_secs(50) && committed.iter().any(|c| !c) {
        for (d, s) in states.iter_mut().enumerate() {
            while let Some(action) = s.poll() {
                match action {
                    Action::Request { piece, .. } => queue.push_back((d, piece)),
                    Action::Cancel { piece, .. } => queue.retain(|r| *r != (d, piece)),
                    Action::Announce => s.announced(Duration::from_secs(30), now),
                    Action::Commit => committed[d] = true,
                    Action::GiveUp => panic!("downloader {d} gave up"),
                    Action::Have { .. } => {}
                }
            }
        }
        // The origin answers what has arrived: a refusal at once, a piece when its link is free.
        while let Some((d, piece)) = queue.pop_front() {
            if budget.admit(piece) {
                link_free = link_free.max(now) + Duration::from_millis(SEND_MS);
                replies.push((link_free, d, piece, true));
            } else {
                replies.push((now + MS, d, piece, false));
            }
        }
        now += MS;
        let (due, later): (Vec<_>, Vec<_>) = replies.drain(..).partition(|r| r.0 <= now);
        replies = later;
        for (_, d, piece, sent) in due {
            if sent {
                states[d].piece_ok(ORIGIN, piece, now);
            } else {
                states[d].rejected(ORIGIN, piece, RejectReason::Seeding, now);
            }
        }
        if now.as_millis().is_multiple_of(TICK.as_millis()) {
            for s in &mut states {
                s.tick(now);
            }
        }
    }
    let done = committed.iter().filter(|c| **c).count();
    assert_eq!(done, DOWNLOADERS as usize, "{done} of {DOWNLOADERS} finished by {now:?}");
    // The origin sends each downloader its copy: nothing lost to the refusals but time.
    let floor = Duration::from_millis(SEND_MS * u64::from(PIECES * DOWNLOADERS));
    assert!(now < floor * 3, "finished at {now:?}, the origin's link alone needs {floor:?}");
}

/// A reader streams the blob from one origin whose backlog holds one piece, so most requests
/// are answered plain busy: the pieces still arrive stripe by stripe, every piece of a stripe
/// before any of the stripe after next. When a busy piece went after every other piece, a
/// streamed pull got its first byte only once the whole blob was in.
#[test]
fn a_sole_origin_answering_busy_still_fills_the_stripes_in_order() {
    const PIECES: u32 = 64;
    const STRIPES: u32 = 4;
    const SEND_MS: u64 = 5;
    const ORIGIN: u32 = 0;
    let mut o = opts(4, 8);
    o.picker.stripes = STRIPES;
    o.picker.stripe_lookahead = 0;
    let mut s = DownloadState::<u32>::new(PIECES, &[], o);
    s.tick(Duration::ZERO);
    s.announced(Duration::from_secs(30), Duration::ZERO);
    s.peer_joined(ORIGIN, &all(PIECES), true, Duration::ZERO);
    // The piece on the origin's link and when it arrives; refusals arrive a millisecond later.
    let mut sending: Option<(Duration, u32)> = None;
    let mut refused: Vec<(Duration, u32)> = Vec::new();
    let mut order = Vec::new();
    let mut now = Duration::ZERO;
    while !s.is_over() && now < Duration::from_secs(10) {
        while let Some(action) = s.poll() {
            match action {
                Action::Request { piece, .. } if sending.is_none() => {
                    sending = Some((now + Duration::from_millis(SEND_MS), piece));
                }
                Action::Request { piece, .. } => refused.push((now + MS, piece)),
                Action::Announce => s.announced(Duration::from_secs(30), now),
                Action::GiveUp => panic!("gave up"),
                _ => {}
            }
        }
        now += MS;
        if let Some((due, piece)) = sending
            && due <= now
        {
            sending = None;
            order.push(piece);
            s.piece_ok(ORIGIN, piece, now);
        }
        let (due, later): (Vec<_>, Vec<_>) = refused.drain(..).partition(|r| r.0 <= now);
        refused = later;
        for (_, piece) in due {
            s.rejected(ORIGIN, piece, RejectReason::Busy, now);
        }
        if now.as_millis().is_multiple_of(TICK.as_millis()) {
            s.tick(now);
        }
    }
    assert!(s.is_complete(), "{} of {PIECES} pieces by {now:?}", order.len());
    let stripe_len = PIECES / STRIPES;
    for (k, &piece) in order.iter().enumerate() {
        let stripe = piece / stripe_len;
        let behind = order[k..].iter().filter(|&&p| p / stripe_len + 2 <= stripe).count();
        assert_eq!(behind, 0, "piece {piece} (stripe {stripe}) came before a piece two stripes earlier: {order:?}");
    }
}
