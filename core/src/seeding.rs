//! Super-seeding: how an origin spends its upload on a blob.
//!
//! Many agents starting at once ask an origin for pieces before they know what their peers
//! hold, so without a policy the origin uploads the same piece to several of them and its
//! uplink, the swarm's scarcest resource, carries duplicates. [`SeedBudget`] admits a request
//! for a piece already sent only once every piece has been sent at least once; until then the
//! origin answers "busy" and the requester gets that piece from the peer that has it, or asks
//! again later.
//!
//! A downloader that is answered "busy" leaves that peer alone for [`BUSY_BACKOFF`] and asks
//! the others meanwhile; the peer is not excluded, since it will have upload room again soon.
//!
//! A piece counts as sent from the moment it is admitted, so two requests for it at once do
//! not both go out; an upload that never reaches the socket (the requester cancelled it, the
//! read failed, the connection closed first) is given back with [`SeedBudget::refund`].
//! Otherwise a peer requesting and cancelling every piece would leave the origin answering
//! "busy" to everyone for pieces nobody received.
//!
//! Invariant: `unsent` is the number of pieces whose count is zero.

use std::time::Duration;

/// How long a downloader leaves a peer that answered "busy" before asking it again.
pub const BUSY_BACKOFF: Duration = Duration::from_millis(50);

/// The most upload bytes a node with an egress cap of `egress_rate` bytes/s lets wait at the
/// cap: what it sends in `backlog` (counted in whole milliseconds).
pub fn max_upload_backlog(egress_rate: u64, backlog: Duration) -> u64 {
    u64::try_from(u128::from(egress_rate) * backlog.as_millis() / 1000).unwrap_or(u64::MAX)
}

/// Whether an upload of `bytes` may join a backlog of `backlog` bytes bounded by `max` (`None`:
/// unbounded). An empty backlog always admits one piece, so a piece larger than the bound
/// still goes.
pub fn admits_upload(backlog: u64, bytes: u64, max: Option<u64>) -> bool {
    max.is_none_or(|max| backlog == 0 || backlog.saturating_add(bytes) <= max)
}

/// Why a node refuses to upload a piece it was asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// It lacks the piece (answered `NotHave`).
    NotHave,
    /// Its upload backlog is full (answered `Busy`).
    Backlog,
    /// The connection has no upload permit left (answered `Busy`).
    Permits,
    /// An origin's super-seeding budget refuses the piece for now (answered `Busy`).
    Seeding,
}

impl Refusal {
    /// Whether the answer is `Busy` (ask again later) rather than `NotHave`.
    pub fn is_busy(self) -> bool {
        self != Refusal::NotHave
    }

    /// The answer on the wire: a seeding refusal says so, so that the downloader asks for the
    /// pieces not sent yet before asking for this one again; a full backlog or no permit is
    /// plain busy, and the downloader keeps its order (a reader may be waiting for the piece).
    pub fn reject_reason(self) -> crate::wire::RejectReason {
        use crate::wire::RejectReason;
        match self {
            Refusal::NotHave => RejectReason::NotHave,
            Refusal::Backlog | Refusal::Permits => RejectReason::Busy,
            Refusal::Seeding => RejectReason::Seeding,
        }
    }
}

/// The serving rule of every node, and of the simulator: whether to upload a requested
/// piece, deciding in this order. A piece the node lacks is refused as not-have. Then the
/// upload backlog (`backlog`: try to reserve room for the piece, `None` when the bound is
/// reached), the connection's upload permits (`permit`: try to take one), and last, on an
/// origin, the super-seeding budget (`budget`: the blob's budget and the piece), which counts
/// what it admits and so is asked only once the rest admitted the upload. A reservation taken
/// before a later refusal is dropped, which gives it back. On success the caller holds both
/// reservations for the length of the upload.
pub fn admit_upload<B, U>(
    has_piece: bool,
    backlog: impl FnOnce() -> Option<B>,
    permit: impl FnOnce() -> Option<U>,
    budget: Option<(&mut SeedBudget, u32)>,
) -> Result<(B, U), Refusal> {
    if !has_piece {
        return Err(Refusal::NotHave);
    }
    let backlog = backlog().ok_or(Refusal::Backlog)?;
    let permit = permit().ok_or(Refusal::Permits)?;
    if let Some((budget, piece)) = budget
        && !budget.admit(piece)
    {
        return Err(Refusal::Seeding);
    }
    Ok((backlog, permit))
}

/// Upload counts of one blob at one seed.
#[derive(Clone, Debug)]
pub struct SeedBudget {
    sent: Vec<u32>,
    unsent: u32,
}

impl SeedBudget {
    pub fn new(num_pieces: u32) -> SeedBudget {
        SeedBudget { sent: vec![0; num_pieces as usize], unsent: num_pieces }
    }

    /// Whether to upload `piece` now; counts it if so. Out-of-range pieces are refused.
    pub fn admit(&mut self, piece: u32) -> bool {
        let Some(count) = self.sent.get_mut(piece as usize) else { return false };
        if *count > 0 && self.unsent > 0 {
            return false;
        }
        if *count == 0 {
            self.unsent -= 1;
        }
        *count += 1;
        true
    }

    /// Gives back one admitted upload of `piece` that was not sent after all. A piece with no
    /// upload counted, or out of range, is left alone.
    pub fn refund(&mut self, piece: u32) {
        let Some(count) = self.sent.get_mut(piece as usize) else { return };
        if *count == 0 {
            return;
        }
        *count -= 1;
        if *count == 0 {
            self.unsent += 1;
        }
    }

    /// Pieces not yet sent once.
    pub fn unsent(&self) -> u32 {
        self.unsent
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Applies requests in order and checks each answer.
    fn check(num_pieces: u32, steps: &[(u32, bool)]) {
        let mut b = SeedBudget::new(num_pieces);
        for (k, &(piece, want)) in steps.iter().enumerate() {
            assert_eq!(b.admit(piece), want, "step {k}: piece {piece}");
            assert_eq!(b.unsent() as usize, b.sent.iter().filter(|c| **c == 0).count());
        }
    }

    #[test]
    fn each_piece_once_before_any_twice() {
        check(3, &[(0, true), (0, false), (1, true), (1, false), (2, true), (0, true), (0, true), (2, true)]);
    }

    #[test]
    fn single_piece_blob_is_always_served_after_the_first() {
        check(1, &[(0, true), (0, true), (0, true)]);
    }

    #[test]
    fn upload_backlog_bound() {
        assert_eq!(max_upload_backlog(300_000_000, Duration::from_millis(200)), 60_000_000);
        assert_eq!(max_upload_backlog(1000, Duration::from_micros(1999)), 1);
        assert_eq!(max_upload_backlog(u64::MAX, Duration::from_secs(10)), u64::MAX);
        // (backlog, bytes, bound, admitted)
        let cases = [
            (0, 10, None, true),
            (u64::MAX, 10, None, true),
            (0, 10, Some(5), true),
            (1, 10, Some(5), false),
            (5, 5, Some(10), true),
            (6, 5, Some(10), false),
            // No overflow: a sum past u64::MAX counts as u64::MAX.
            (u64::MAX - 1, 5, Some(u64::MAX - 1), false),
        ];
        for (backlog, bytes, max, want) in cases {
            assert_eq!(admits_upload(backlog, bytes, max), want, "{backlog} + {bytes} in {max:?}");
        }
    }

    #[test]
    fn the_serving_rule_decides_in_order_and_counts_only_what_it_admits() {
        // (has, backlog room, permit, seed budget admits) -> answer
        let table = [
            (false, true, true, true, Err(Refusal::NotHave)),
            (false, false, false, false, Err(Refusal::NotHave)),
            (true, false, false, false, Err(Refusal::Backlog)),
            (true, true, false, false, Err(Refusal::Permits)),
            (true, true, true, false, Err(Refusal::Seeding)),
            (true, true, true, true, Ok(((), ()))),
        ];
        for (has, room, permit, fresh, want) in table {
            let mut budget = SeedBudget::new(2);
            if !fresh {
                budget.admit(0);
            }
            let before = budget.unsent();
            let mut asked = Vec::new();
            let got = admit_upload(
                has,
                || {
                    asked.push("backlog");
                    room.then_some(())
                },
                || permit.then_some(()),
                Some((&mut budget, 0)),
            );
            assert_eq!(got, want, "{has} {room} {permit} {fresh}");
            assert_eq!(asked.is_empty(), !has, "the backlog is asked only for a piece we have");
            let counted = budget.unsent() != before;
            assert_eq!(counted, got.is_ok() && fresh, "the budget counts only an admitted upload");
        }
        // Without a budget (not an origin), only the first three rules apply.
        assert_eq!(admit_upload(true, || Some(1), || Some(2), None), Ok((1, 2)));
        assert!(Refusal::Seeding.is_busy() && Refusal::Backlog.is_busy() && !Refusal::NotHave.is_busy());
        use crate::wire::RejectReason;
        for (refusal, reason) in [
            (Refusal::NotHave, RejectReason::NotHave),
            (Refusal::Backlog, RejectReason::Busy),
            (Refusal::Permits, RejectReason::Busy),
            (Refusal::Seeding, RejectReason::Seeding),
        ] {
            assert_eq!(refusal.reject_reason(), reason);
            assert_eq!(reason.is_busy(), refusal.is_busy());
        }
    }

    #[test]
    fn a_refunded_piece_is_unsent_again() {
        let mut b = SeedBudget::new(2);
        assert!(b.admit(0));
        assert!(!b.admit(0), "sent once while piece 1 never was");
        b.refund(0);
        assert_eq!(b.unsent(), 2);
        assert!(b.admit(0), "given back: it may go out again");
        // Refunds past the count, or of pieces out of range, change nothing.
        b.refund(1);
        b.refund(7);
        assert_eq!(b.unsent(), 1);
        assert!(b.admit(1));
        assert!(b.admit(0) && b.admit(0));
        b.refund(0);
        assert_eq!(b.unsent(), 0, "one of three uploads of piece 0 given back: it was still sent");
    }

    #[test]
    fn out_of_range_is_refused() {
        check(2, &[(2, false), (u32::MAX, false), (1, true)]);
    }
}
