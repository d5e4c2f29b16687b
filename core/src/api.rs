//! Typed JSON bodies of the HTTP APIs between Shoal services. Services never depend on one
//! another's crates; they share these types.
//!
//! Tracker: `POST /announce` with [`AnnounceRequest`] → [`AnnounceResponse`].
//! Origin: `GET /blobs/<digest>/metainfo` → a [`crate::MetaInfo`] (200), or 202 with a
//! `Retry-After` header while the origin is still fetching the blob from its backend, or 404;
//! `GET`/`HEAD /blobs/<digest>` → the blob's bytes; `PUT /blobs/<digest>` → upload;
//! `POST /preheat` with [`PreheatRequest`] → [`PreheatStatus`] (202), which the agent's own
//! `POST /preheat` ([`AgentPreheatRequest`]) answers as a [`PreheatAnswer`].
//! Errors everywhere are an [`ErrorBody`].

use std::net::SocketAddr;

mod ops;
mod preheat;
pub use ops::{BlobStat, LocalCopy, SwarmSize};
pub use preheat::{AgentPreheatRequest, BlobState, PreheatAnswer, PreheatRequest, PreheatStatus};

use crate::{Digest, PeerId};

/// A node tells the tracker it is in a blob's swarm, or with `stopped` that it left it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AnnounceRequest {
    pub blob: Digest,
    pub peer_id: PeerId,
    /// The node's peer (wire protocol) address, reachable by other nodes.
    pub addr: SocketAddr,
    /// The node has every piece.
    pub complete: bool,
    /// The node is an origin (a seed of last resort).
    #[serde(default)]
    pub origin: bool,
    /// The node no longer holds the blob (it evicted it): the tracker forgets it at once
    /// instead of handing it out until its entry expires, and answers with no peers. Sent
    /// only when true, so every other announce is what trackers before it accept.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub stopped: bool,
    /// The node's topology zone, if configured: the tracker hands out peers of the same zone
    /// first. Sent only when set, so announces without it are what older trackers accept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
}

/// Longest zone name accepted: a Kubernetes label value's limit.
pub const MAX_ZONE_LEN: usize = 63;

/// Whether `zone` is a usable topology zone name: 1 to [`MAX_ZONE_LEN`] bytes of ASCII
/// letters, digits, `-`, `_` and `.` (what a `topology.kubernetes.io/zone` label holds).
/// Configs are validated with it, and the tracker refuses announces whose zone fails it.
pub fn is_valid_zone(zone: &str) -> bool {
    !zone.is_empty()
        && zone.len() <= MAX_ZONE_LEN
        && zone.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// One peer of a blob's swarm as the tracker hands it out.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerInfo {
    /// Unknown for an origin taken from the ring before it announced.
    pub peer_id: Option<PeerId>,
    pub addr: SocketAddr,
    pub complete: bool,
    pub origin: bool,
    /// The zone the peer announced, if any; sent only when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
}

/// The tracker's answer: some peers, and when to announce again.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AnnounceResponse {
    pub peers: Vec<PeerInfo>,
    /// Milliseconds until the next announce.
    pub interval_ms: u64,
    /// What the asker is to ask peers of other zones for: sent only to an asker that named a
    /// zone (`{"share": {"slot": k, "of": m}}` to a gateway of its zone, `"none"` to the
    /// others); absent, a node asks them for any piece its zone lacks, as before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub imports: Option<crate::handout::Imports>,
}

/// Body of every error response.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ErrorBody {
    /// A stable machine-readable code such as `BLOB_UNKNOWN` or `DIGEST_INVALID`.
    pub code: String,
    pub message: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(stopped: bool) -> AnnounceRequest {
        AnnounceRequest {
            blob: Digest::of(b"blob"),
            peer_id: PeerId([7; 16]),
            addr: "10.0.0.1:7701".parse().unwrap(),
            complete: true,
            origin: false,
            stopped,
            zone: None,
        }
    }

    /// An announce that is not a stop is the JSON trackers before `stopped` accept, and their
    /// announces (without it) still parse.
    #[test]
    fn stopped_is_sent_only_when_set() {
        let plain = serde_json::to_value(req(false)).unwrap();
        assert!(plain.get("stopped").is_none(), "{plain}");
        let old = format!(
            r#"{{"blob":"{}","peer_id":"{}","addr":"10.0.0.1:7701","complete":true,"origin":false}}"#,
            Digest::of(b"blob"),
            PeerId([7; 16])
        );
        assert_eq!(serde_json::from_str::<AnnounceRequest>(&old).unwrap(), req(false));
        let stop = serde_json::to_string(&req(true)).unwrap();
        assert!(stop.contains(r#""stopped":true"#), "{stop}");
        assert_eq!(serde_json::from_str::<AnnounceRequest>(&stop).unwrap(), req(true));
    }

    #[test]
    fn zone_names() {
        for ok in ["a", "eu-west-1a", "zone_2.rack-7", &"z".repeat(MAX_ZONE_LEN)] {
            assert!(is_valid_zone(ok), "{ok}");
        }
        for bad in ["", "a b", "a/b", "zone\n", "é", &"z".repeat(MAX_ZONE_LEN + 1)] {
            assert!(!is_valid_zone(bad), "{bad:?}");
        }
    }

    /// A zone is sent only when set, and messages without one (older nodes and trackers)
    /// still parse, as `None`.
    #[test]
    fn zone_is_optional_on_the_wire() {
        let plain = serde_json::to_value(req(false)).unwrap();
        assert!(plain.get("zone").is_none(), "{plain}");
        let zoned = AnnounceRequest { zone: Some("eu-west-1a".into()), ..req(false) };
        let text = serde_json::to_string(&zoned).unwrap();
        assert!(text.contains(r#""zone":"eu-west-1a""#), "{text}");
        assert_eq!(serde_json::from_str::<AnnounceRequest>(&text).unwrap(), zoned);
        let old_peer = r#"{"peer_id":null,"addr":"10.0.0.2:7701","complete":false,"origin":true}"#;
        let peer: PeerInfo = serde_json::from_str(old_peer).unwrap();
        assert_eq!(peer.zone, None);
        assert_eq!(serde_json::to_string(&peer).unwrap(), old_peer);
        let with = PeerInfo { zone: Some("b".into()), ..peer };
        let text = serde_json::to_string(&with).unwrap();
        assert_eq!(serde_json::from_str::<PeerInfo>(&text).unwrap(), with);
    }

    /// `imports` is sent only when the tracker says it; an answer without it (an older
    /// tracker) parses as `None`.
    #[test]
    fn imports_are_optional_on_the_wire() {
        let old = r#"{"peers":[],"interval_ms":3000}"#;
        let answer: AnnounceResponse = serde_json::from_str(old).unwrap();
        assert_eq!(answer.imports, None);
        assert_eq!(serde_json::to_string(&answer).unwrap(), old);
        let told = AnnounceResponse { imports: Some(crate::handout::Imports::Share { slot: 2, of: 16 }), ..answer };
        let text = serde_json::to_string(&told).unwrap();
        assert_eq!(text, r#"{"peers":[],"interval_ms":3000,"imports":{"share":{"slot":2,"of":16}}}"#);
        assert_eq!(serde_json::from_str::<AnnounceResponse>(&text).unwrap(), told);
    }
}
