//! Peer identities: 16 bytes chosen by each node at start.
//!
//! Without TLS they are all random, and a peer id is only a claim. With TLS a node's id is
//! *bound* to its certificate's identity ([`PeerId::bound`]): the first [`BOUND_PREFIX`]
//! bytes are a hash of the identity and the rest are random, so a connection can check that
//! the id in its peer's `Handshake` belongs to the certificate that peer proved
//! ([`PeerId::is_bound_to`]). Nodes sharing one certificate identity share the prefix and can
//! claim each other's ids; nodes with different identities cannot. The wire format does not
//! change: a bound id is 16 bytes like any other.

use std::fmt;

/// Identifies one running node (agent or origin) in the swarm.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerId(pub [u8; 16]);

/// How many leading bytes of a bound peer id come from the identity's hash; the other 8 are
/// random, so the nodes of one identity (a certificate shared by a component) still differ.
pub const BOUND_PREFIX: usize = 8;

impl PeerId {
    /// A fresh random id.
    pub fn random() -> PeerId {
        PeerId(rand::random())
    }

    /// A fresh id bound to a certificate identity: the identity's hash, then random bytes.
    pub fn bound(identity: &str) -> PeerId {
        let mut id: [u8; 16] = rand::random();
        id[..BOUND_PREFIX].copy_from_slice(&identity_prefix(identity));
        PeerId(id)
    }

    /// Whether this id was made by [`PeerId::bound`] for `identity`.
    pub fn is_bound_to(&self, identity: &str) -> bool {
        self.0[..BOUND_PREFIX] == identity_prefix(identity)
    }

    pub fn hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Parses 32 hex characters.
    pub fn from_hex(s: &str) -> Option<PeerId> {
        let mut out = [0u8; 16];
        hex::decode_to_slice(s, &mut out).ok()?;
        Some(PeerId(out))
    }
}

/// The first [`BOUND_PREFIX`] bytes of BLAKE3 over a domain tag and the identity.
fn identity_prefix(identity: &str) -> [u8; BOUND_PREFIX] {
    let mut h = blake3::Hasher::new();
    h.update(b"shoal peer id v1\0");
    h.update(identity.as_bytes());
    let mut out = [0u8; BOUND_PREFIX];
    out.copy_from_slice(&h.finalize().as_bytes()[..BOUND_PREFIX]);
    out
}

impl fmt::Display for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.hex())
    }
}

impl fmt::Debug for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PeerId({})", &self.hex()[..8])
    }
}

impl serde::Serialize for PeerId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.hex())
    }
}

impl<'de> serde::Deserialize<'de> for PeerId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<PeerId, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        PeerId::from_hex(&s).ok_or_else(|| serde::de::Error::custom("peer id must be 32 hex characters"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bound_id_belongs_to_its_identity_only() {
        let a = PeerId::bound("spiffe://shoal/origin-0");
        let b = PeerId::bound("spiffe://shoal/origin-0");
        assert_ne!(a, b, "the random half tells two nodes of one identity apart");
        assert!(a.is_bound_to("spiffe://shoal/origin-0") && b.is_bound_to("spiffe://shoal/origin-0"));
        assert!(!a.is_bound_to("spiffe://shoal/origin-1"));
        assert!(!a.is_bound_to("shoal-agent.shoal.svc"));
        // A random id is bound to nothing (but by a 2^-64 chance).
        assert!(!PeerId([7; 16]).is_bound_to("spiffe://shoal/origin-0"));
        // A pin: nodes of different versions must derive the same prefix from an identity.
        assert_eq!(hex::encode(identity_prefix("shoal-origin")), "5ef39922053f1621");
    }
}
