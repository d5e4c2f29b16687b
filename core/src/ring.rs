//! Rendezvous-hash (highest-random-weight) ring of origins: which origins own each blob.
//!
//! Every origin gets a score for a blob, a stable 64-bit hash of `(origin id, blob digest)`
//! ([`score`]), and the `replicas` origins with the highest scores own the blob, best first.
//! The ring keeps no state beyond the node list. Every node that holds the same list computes the
//! same owners, whatever order the list is in. Adding an origin moves only the blobs it now
//! owns (about `replicas / n` of them). Removing one moves only the blobs it owned.
//!
//! Invariant: [`score`] is part of the cluster's contract, not an implementation detail.
//! Trackers, origins and agents of different versions must agree on the owners of a blob during
//! a rolling upgrade. So the hash is blake3 over a fixed, length-prefixed encoding. It is never
//! std's `DefaultHasher`, which may change between Rust releases. The `compat_*` tests pin
//! its output. If they fail, the change breaks mixed-version clusters.

use std::cmp::Ordering;
use std::collections::HashSet;

use crate::Digest;

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
    /// In the order given to [`Ring::new`]. The order never affects ownership.
    nodes: Vec<OriginNode>,
    /// At least 1. Can be more than the number of nodes, and then every node owns every blob.
    replicas: usize,
}

/// Why a list of origins is not a ring.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RingError {
    #[error("ring has no origins")]
    Empty,
    #[error("origin id is empty")]
    EmptyId,
    #[error("origin id {0:?} appears more than once")]
    DuplicateId(String),
    #[error("ring replicas must be at least 1")]
    ZeroReplicas,
}

/// Prefix of every hashed input. It separates ring scores from any other blake3 use of the same
/// bytes. Changing it changes every owner (see the module invariant).
const SCORE_DOMAIN: &[u8] = b"shoal ring v1\0";

impl Ring {
    /// Builds a ring where each blob has `replicas` owners, or all nodes if there are fewer.
    pub fn new(nodes: Vec<OriginNode>, replicas: usize) -> Result<Ring, RingError> {
        if nodes.is_empty() {
            return Err(RingError::Empty);
        }
        if replicas == 0 {
            return Err(RingError::ZeroReplicas);
        }
        let mut seen = HashSet::with_capacity(nodes.len());
        for node in &nodes {
            if node.id.is_empty() {
                return Err(RingError::EmptyId);
            }
            if !seen.insert(node.id.as_str()) {
                return Err(RingError::DuplicateId(node.id.clone()));
            }
        }
        Ok(Ring { nodes, replicas })
    }

    /// The owners of `blob`, best first: `min(replicas, nodes)` distinct nodes.
    pub fn owners(&self, blob: &Digest) -> Vec<&OriginNode> {
        let mut scored: Vec<(u64, &OriginNode)> = self.nodes.iter().map(|n| (score(&n.id, blob), n)).collect();
        let n_owners = self.replicas.min(scored.len());
        if n_owners < scored.len() {
            scored.select_nth_unstable_by(n_owners - 1, best_first);
            scored.truncate(n_owners);
        }
        scored.sort_unstable_by(best_first);
        scored.into_iter().map(|(_, n)| n).collect()
    }

    /// The node that owns `blob` first.
    pub fn primary(&self, blob: &Digest) -> &OriginNode {
        self.nodes
            .iter()
            .map(|n| (score(&n.id, blob), n))
            .min_by(best_first)
            .map(|(_, n)| n)
            .expect("a ring is never empty")
    }

    /// The nodes in the order they were given.
    pub fn nodes(&self) -> &[OriginNode] {
        &self.nodes
    }

    /// How many owners each blob has, as configured. [`Ring::owners`] caps it at the node count.
    pub fn replicas(&self) -> usize {
        self.replicas
    }
}

/// The score of the node named `node_id` for `blob`. The highest score owns the blob first.
///
/// This is the first 8 bytes, little-endian, of
/// `blake3(SCORE_DOMAIN || u64_le(len(node_id)) || node_id || digest bytes)`.
/// The length prefix makes the encoding unambiguous.
pub fn score(node_id: &str, blob: &Digest) -> u64 {
    let mut hasher = blake3::Hasher::new();
    hasher.update(SCORE_DOMAIN);
    hasher.update(&(node_id.len() as u64).to_le_bytes());
    hasher.update(node_id.as_bytes());
    hasher.update(blob.as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&hasher.finalize().as_bytes()[..8]);
    u64::from_le_bytes(first)
}

/// Higher score first. A tie (probability about 2^-64) goes to the smaller id, so the order is
/// total and does not depend on the order of the node list.
fn best_first(a: &(u64, &OriginNode), b: &(u64, &OriginNode)) -> Ordering {
    b.0.cmp(&a.0).then_with(|| a.1.id.cmp(&b.1.id))
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use super::*;

    fn node(id: &str) -> OriginNode {
        let port = 7000 + u16::try_from(id.len()).unwrap();
        OriginNode {
            id: id.to_string(),
            http: format!("http://{id}:7602"),
            peer: SocketAddr::from(([10, 0, 0, 1], port)),
        }
    }

    fn ring(ids: &[&str], replicas: usize) -> Ring {
        Ring::new(ids.iter().map(|id| node(id)).collect(), replicas).unwrap()
    }

    fn owner_ids(ring: &Ring, blob: &Digest) -> Vec<String> {
        ring.owners(blob).into_iter().map(|n| n.id.clone()).collect()
    }

    /// 1,000 digests that are uniformly spread but the same in every run.
    fn digests() -> impl Iterator<Item = Digest> {
        (0u32..1000).map(|i| Digest::of(&i.to_le_bytes()))
    }

    fn ids(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("origin-{i}")).collect()
    }

    fn ring_of(ids: &[String], replicas: usize) -> Ring {
        Ring::new(ids.iter().map(|id| node(id)).collect(), replicas).unwrap()
    }

    #[test]
    fn rejects_bad_rings() {
        assert_eq!(Ring::new(vec![], 3).unwrap_err(), RingError::Empty);
        assert_eq!(Ring::new(vec![node("a")], 0).unwrap_err(), RingError::ZeroReplicas);
        assert_eq!(
            Ring::new(vec![node("a"), node("b"), node("a")], 2).unwrap_err(),
            RingError::DuplicateId("a".into())
        );
        assert_eq!(Ring::new(vec![node("")], 1).unwrap_err(), RingError::EmptyId);
    }

    #[test]
    fn owner_count_is_min_of_replicas_and_nodes() {
        let blob = Digest::of(b"x");
        assert_eq!(ring(&["a", "b", "c", "d"], 3).owners(&blob).len(), 3);
        assert_eq!(ring(&["a", "b"], 3).owners(&blob).len(), 2);
        assert_eq!(ring(&["a"], 1).owners(&blob).len(), 1);
    }

    #[test]
    fn deterministic_and_independent_of_node_order() {
        let forward = ring(&["a", "b", "c", "d", "e"], 3);
        let backward = ring(&["e", "d", "c", "b", "a"], 3);
        for blob in digests() {
            let once = owner_ids(&forward, &blob);
            assert_eq!(once, owner_ids(&forward, &blob));
            assert_eq!(once, owner_ids(&backward, &blob));
        }
    }

    #[test]
    fn owners_are_distinct_and_best_first() {
        let ring = ring_of(&ids(7), 4);
        for blob in digests() {
            let owners = ring.owners(&blob);
            let unique: HashSet<&str> = owners.iter().map(|n| n.id.as_str()).collect();
            assert_eq!(unique.len(), owners.len());
            let scores: Vec<u64> = owners.iter().map(|n| score(&n.id, &blob)).collect();
            assert!(scores.windows(2).all(|w| w[0] >= w[1]), "{scores:?}");
            assert_eq!(ring.primary(&blob), owners[0]);
            // The owners outscore every node left out.
            let worst = *scores.last().unwrap();
            for n in ring.nodes() {
                if !unique.contains(n.id.as_str()) {
                    assert!(score(&n.id, &blob) <= worst);
                }
            }
        }
    }

    #[test]
    fn every_node_gets_a_fair_share() {
        let ring = ring_of(&ids(10), 1);
        let mut counts = std::collections::HashMap::<String, usize>::new();
        for blob in digests() {
            *counts.entry(ring.primary(&blob).id.clone()).or_default() += 1;
        }
        // Expect 100 each; a node with fewer than 50 or more than 150 means a biased hash.
        for (id, count) in &counts {
            assert!((50..=150).contains(count), "{id} owns {count} of 1000");
        }
        assert_eq!(counts.len(), 10);
    }

    #[test]
    fn adding_a_node_moves_about_one_nth() {
        let mut before_ids = ids(10);
        let before = ring_of(&before_ids, 1);
        before_ids.push("origin-new".into());
        let after = ring_of(&before_ids, 1);
        let mut moved = 0;
        for blob in digests() {
            let (old, new) = (before.primary(&blob), after.primary(&blob));
            if old != new {
                moved += 1;
                assert_eq!(new.id, "origin-new", "a blob moved between two old nodes");
            }
        }
        // Expect 1000/11 ≈ 91; the standard deviation is about 9.
        assert!((50..=140).contains(&moved), "{moved} of 1000 blobs moved");
    }

    #[test]
    fn adding_a_node_changes_one_owner_of_about_replicas_over_n() {
        let mut before_ids = ids(10);
        let before = ring_of(&before_ids, 3);
        before_ids.push("origin-new".into());
        let after = ring_of(&before_ids, 3);
        let mut changed = 0;
        for blob in digests() {
            let old = owner_ids(&before, &blob);
            let new = owner_ids(&after, &blob);
            if old == new {
                continue;
            }
            changed += 1;
            // The new node joined the set and exactly one old owner left it; the rest keep
            // their order.
            assert!(new.contains(&"origin-new".to_string()));
            let kept: Vec<&String> = new.iter().filter(|id| *id != "origin-new").collect();
            assert_eq!(kept.len(), 2);
            let old_kept: Vec<&String> = old.iter().filter(|id| kept.contains(id)).collect();
            assert_eq!(kept, old_kept);
        }
        // Expect 3000/11 ≈ 273.
        assert!((200..=350).contains(&changed), "{changed} of 1000 owner sets changed");
    }

    #[test]
    fn removing_a_node_moves_only_its_blobs() {
        let all = ids(10);
        let before = ring_of(&all, 3);
        let gone = "origin-3";
        let rest: Vec<String> = all.iter().filter(|id| *id != gone).cloned().collect();
        let after = ring_of(&rest, 3);
        let mut moved = 0;
        for blob in digests() {
            let old = owner_ids(&before, &blob);
            let new = owner_ids(&after, &blob);
            if !old.iter().any(|id| id == gone) {
                assert_eq!(old, new, "a blob {gone} did not own moved");
                continue;
            }
            moved += 1;
            // The survivors keep their order and one more node takes the last place.
            let survivors: Vec<String> = old.into_iter().filter(|id| id != gone).collect();
            assert_eq!(new[..2], survivors[..]);
            assert!(!survivors.contains(&new[2]));
        }
        // Expect 3000/10 = 300.
        assert!((220..=380).contains(&moved), "{moved} of 1000 blobs moved");
    }

    // Compatibility pins. These values come from the v1 score function. They were checked against
    // an independent implementation (Python's `blake3` package over the encoding documented on
    // `score`). Never edit them to make a change pass: a different hash gives different owners,
    // and a mixed-version cluster would then disagree about who owns a blob.

    const EMPTY_BLOB: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn compat_scores() {
        let empty: Digest = EMPTY_BLOB.parse().unwrap();
        let shoal = Digest::of(b"shoal");
        let table: &[(&str, &Digest, u64)] = &[
            ("origin-a", &empty, 1_608_672_043_587_155_566),
            ("origin-b", &empty, 18_347_724_981_731_225_510),
            ("origin-a", &shoal, 3_936_335_754_034_432_527),
        ];
        for (id, blob, expect) in table {
            assert_eq!(score(id, blob), *expect, "score({id:?}, {blob})");
        }
    }

    #[test]
    fn compat_owner_order() {
        let five: &[&str] = &["origin-a", "origin-b", "origin-c", "origin-d", "origin-e"];
        let table: &[(&[&str], usize, Digest, &[&str])] = &[
            (five, 5, EMPTY_BLOB.parse().unwrap(), &["origin-b", "origin-d", "origin-c", "origin-e", "origin-a"]),
            (five, 5, Digest::of(b"shoal"), &["origin-c", "origin-d", "origin-e", "origin-a", "origin-b"]),
            (five, 3, Digest::of(b"layer"), &["origin-b", "origin-a", "origin-d"]),
            (&["tokyo", "paris", "lima"], 2, Digest::of(b"config"), &["paris", "tokyo"]),
        ];
        for (ids, replicas, blob, expect) in table {
            let got = owner_ids(&ring(ids, *replicas), blob);
            assert_eq!(got, *expect, "owners of {blob} among {ids:?}");
        }
    }
}
