//! Byte sizes (`"256MiB"`, `"1.5GB"`, `12345`) and durations (`"10s"`, `"250ms"`) as config
//! values.

use std::fmt;
use std::str::FromStr;

/// A number of bytes; in YAML either an integer or a string with a unit (B, KB, MB, GB, TB,
/// KiB, MiB, GiB, TiB; case-insensitive, optional space, fractions allowed).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Default, Hash)]
pub struct ByteSize(pub u64);

/// Why a byte size does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid byte size {0:?} (examples: 1048576, \"64MiB\", \"1.5GB\")")]
pub struct ParseByteSizeError(String);

impl FromStr for ByteSize {
    type Err = ParseByteSizeError;

    // Fits: `v` is checked to be finite and in [0, u64::MAX) before the cast.
    #[allow(clippy::cast_possible_truncation)]
    fn from_str(s: &str) -> Result<ByteSize, ParseByteSizeError> {
        let err = || ParseByteSizeError(s.to_string());
        let t = s.trim();
        let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "k" | "kb" => 1_000,
            "m" | "mb" => 1_000_000,
            "g" | "gb" => 1_000_000_000,
            "t" | "tb" => 1_000_000_000_000,
            "ki" | "kib" => 1 << 10,
            "mi" | "mib" => 1 << 20,
            "gi" | "gib" => 1 << 30,
            "ti" | "tib" => 1 << 40,
            _ => return Err(err()),
        };
        if num.is_empty() {
            return Err(err());
        }
        if let Ok(n) = num.parse::<u64>() {
            return n.checked_mul(mult).map(ByteSize).ok_or_else(err);
        }
        let f: f64 = num.parse().map_err(|_| err())?;
        let v = f * mult as f64;
        if !v.is_finite() || v < 0.0 || v >= u64::MAX as f64 {
            return Err(err());
        }
        Ok(ByteSize(v.round() as u64))
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        for (unit, size) in [("GiB", 1u64 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)] {
            if b >= size && b.is_multiple_of(size) {
                return write!(f, "{}{unit}", b / size);
            }
        }
        write!(f, "{b}B")
    }
}

impl serde::Serialize for ByteSize {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for ByteSize {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<ByteSize, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = ByteSize;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a byte count or a string such as \"64MiB\"")
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<ByteSize, E> {
                Ok(ByteSize(v))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<ByteSize, E> {
                u64::try_from(v).map(ByteSize).map_err(|_| E::custom("byte size must not be negative"))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<ByteSize, E> {
                v.parse().map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

/// A duration written as `"10s"`, `"250ms"`, `"5m"`, `"1h 30m"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct Duration(#[serde(with = "humantime_serde")] pub std::time::Duration);

impl Duration {
    pub const fn from_secs(s: u64) -> Duration {
        Duration(std::time::Duration::from_secs(s))
    }
    pub const fn from_millis(ms: u64) -> Duration {
        Duration(std::time::Duration::from_millis(ms))
    }
    pub fn get(self) -> std::time::Duration {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(input: &str, expect: Option<u64>) {
        assert_eq!(input.parse::<ByteSize>().ok().map(|b| b.0), expect, "input {input:?}");
    }

    #[test]
    fn byte_sizes() {
        check("0", Some(0));
        check("1234", Some(1234));
        check("64MiB", Some(64 << 20));
        check("64 mib", Some(64 << 20));
        check("1.5GB", Some(1_500_000_000));
        check("2GiB", Some(2 << 30));
        check("300MB", Some(300_000_000));
        check("", None);
        check("MiB", None);
        check("12 parsecs", None);
        check("-1", None);
        check("99999999999999999999", None);
        check("99999999TiB", None);
    }

    #[test]
    fn byte_size_serde() {
        let v: ByteSize = serde_json::from_str("\"4MiB\"").unwrap();
        assert_eq!(v.0, 4 << 20);
        let v: ByteSize = serde_json::from_str("10").unwrap();
        assert_eq!(v.0, 10);
        assert!(serde_json::from_str::<ByteSize>("-3").is_err());
        assert_eq!(ByteSize(4 << 20).to_string(), "4MiB");
        assert_eq!(ByteSize(1000).to_string(), "1000B");
    }

    #[test]
    fn durations() {
        let d: Duration = serde_json::from_str("\"250ms\"").unwrap();
        assert_eq!(d.get(), std::time::Duration::from_millis(250));
        let d: Duration = serde_json::from_str("\"1m 30s\"").unwrap();
        assert_eq!(d.get().as_secs(), 90);
        assert!(serde_json::from_str::<Duration>("\"soon\"").is_err());
    }
}
