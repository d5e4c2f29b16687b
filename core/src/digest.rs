//! Content digests: `sha256:<64 lowercase hex>`, the name of every blob.
//!
//! A [`Digest`] is only made by parsing a validated string or by hashing bytes, so a value of
//! this type is always well formed. Parsing is strict: upper-case hex, other algorithms, wrong
//! lengths and stray whitespace are rejected, because a digest is also a file name in the
//! store and a key in every map.

use std::fmt;
use std::str::FromStr;

use sha2::{Digest as _, Sha256};

/// The sha256 digest of a blob.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest([u8; 32]);

/// Why a string is not a digest.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseDigestError {
    #[error("unsupported digest algorithm {0:?} (only sha256)")]
    Algorithm(String),
    #[error("digest has no algorithm prefix (expected sha256:<hex>)")]
    NoAlgorithm,
    #[error("digest hex has length {0}, expected 64")]
    Length(usize),
    #[error("digest hex has a character that is not lowercase hex")]
    Hex,
}

impl Digest {
    /// The digest of `data`.
    pub fn of(data: &[u8]) -> Digest {
        Digest(Sha256::digest(data).into())
    }

    /// The raw 32 bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The 64 lowercase hex characters, without the algorithm prefix.
    pub fn hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Parses 64 lowercase hex characters with no prefix (a store file name, a registry path).
    pub fn from_hex(s: &str) -> Result<Digest, ParseDigestError> {
        if s.len() != 64 {
            return Err(ParseDigestError::Length(s.len()));
        }
        if !s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(ParseDigestError::Hex);
        }
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).map_err(|_| ParseDigestError::Hex)?;
        Ok(Digest(out))
    }

    /// Rebuilds a digest from the 32 bytes the wire protocol carries.
    pub(crate) fn from_wire(bytes: [u8; 32]) -> Digest {
        Digest(bytes)
    }
}

impl FromStr for Digest {
    type Err = ParseDigestError;

    fn from_str(s: &str) -> Result<Digest, ParseDigestError> {
        let (algo, hex) = s.split_once(':').ok_or(ParseDigestError::NoAlgorithm)?;
        if algo != "sha256" {
            return Err(ParseDigestError::Algorithm(algo.chars().take(32).collect()));
        }
        Digest::from_hex(hex)
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", hex::encode(self.0))
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl serde::Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Digest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Digest, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Incremental sha256 of a blob, for data that arrives in pieces.
#[derive(Default, Clone)]
pub struct DigestHasher(Sha256);

impl DigestHasher {
    pub fn new() -> DigestHasher {
        DigestHasher(Sha256::new())
    }

    pub fn update(&mut self, data: &[u8]) {
        self.0.update(data);
    }

    pub fn finish(self) -> Digest {
        Digest(self.0.finalize().into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(input: &str, expect: Result<(), ParseDigestError>) {
        let got = input.parse::<Digest>().map(|d| {
            assert_eq!(d.to_string(), input, "display must round-trip");
        });
        assert_eq!(got, expect, "input {input:?}");
    }

    const EMPTY: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn valid() {
        check(&format!("sha256:{EMPTY}"), Ok(()));
    }
    #[test]
    fn no_prefix() {
        check(EMPTY, Err(ParseDigestError::NoAlgorithm));
    }
    #[test]
    fn other_algorithm() {
        check(&format!("sha512:{EMPTY}"), Err(ParseDigestError::Algorithm("sha512".into())));
    }
    #[test]
    fn uppercase_hex() {
        check(&format!("sha256:{}", EMPTY.to_uppercase()), Err(ParseDigestError::Hex));
    }
    #[test]
    fn short() {
        check("sha256:abcd", Err(ParseDigestError::Length(4)));
    }
    #[test]
    fn long() {
        check(&format!("sha256:{EMPTY}0"), Err(ParseDigestError::Length(65)));
    }
    #[test]
    fn non_hex() {
        check(&format!("sha256:{}g", &EMPTY[..63]), Err(ParseDigestError::Hex));
    }
    #[test]
    fn whitespace() {
        check(&format!("sha256:{} ", &EMPTY[..63]), Err(ParseDigestError::Hex));
    }
    #[test]
    fn multibyte_does_not_panic() {
        let s = format!("sha256:{}é", &EMPTY[..62]);
        assert_eq!(s.parse::<Digest>(), Err(ParseDigestError::Hex));
    }
    #[test]
    fn hashing_matches_known_value() {
        assert_eq!(Digest::of(b"").to_string(), format!("sha256:{EMPTY}"));
        let mut h = DigestHasher::new();
        h.update(b"");
        assert_eq!(h.finish(), Digest::of(b""));
    }
    #[test]
    fn serde_round_trip_and_rejects_bad() {
        let d = Digest::of(b"x");
        let j = serde_json::to_string(&d).unwrap();
        assert_eq!(serde_json::from_str::<Digest>(&j).unwrap(), d);
        assert!(serde_json::from_str::<Digest>("\"sha256:zz\"").is_err());
    }
}
