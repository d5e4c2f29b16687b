//! Byte sizes (`"256MiB"`, `"1.5GB"`, `12345`), durations (`"10s"`, `"250ms"`), percentages
//! (`"90%"`) and size limits that are either (`"50GiB"` or `"80%"` of something) as config
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

/// A percentage written as `"90%"` or `"92.5%"`, from 0% to 100%, kept in basis points
/// (hundredths of a percent) so it compares exactly.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Percent(u32);

/// Why a percentage or a size limit does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {what} {input:?} (examples: {examples})")]
pub struct ParsePercentError {
    what: &'static str,
    input: String,
    examples: &'static str,
}

impl Percent {
    /// The whole: 100%.
    pub const FULL: Percent = Percent(10_000);

    /// `n` percent; at most 100.
    pub const fn new(n: u32) -> Percent {
        assert!(n <= 100, "a percentage is at most 100");
        Percent(n * 100)
    }

    /// Hundredths of a percent: 10000 is 100%.
    pub const fn basis_points(self) -> u32 {
        self.0
    }

    /// This share of `total`, rounded down.
    pub fn of(self, total: u64) -> u64 {
        u64::try_from(u128::from(total) * u128::from(self.0) / 10_000).expect("at most the total")
    }
}

impl FromStr for Percent {
    type Err = ParsePercentError;

    fn from_str(s: &str) -> Result<Percent, ParsePercentError> {
        let err = || ParsePercentError { what: "percentage", input: s.to_string(), examples: "\"90%\", \"12.5%\"" };
        let num = s.trim().strip_suffix('%').ok_or_else(err)?.trim();
        let digits = |t: &str| !t.is_empty() && t.len() <= 3 && t.bytes().all(|b| b.is_ascii_digit());
        let (whole, frac) = match num.split_once('.') {
            Some((w, f)) if f.len() <= 2 && digits(f) => (w, f),
            Some(_) => return Err(err()),
            None => (num, ""),
        };
        if !digits(whole) {
            return Err(err());
        }
        let whole: u32 = whole.parse().map_err(|_| err())?;
        let frac: u32 = format!("{frac:0<2}").parse().map_err(|_| err())?;
        let bp = whole * 100 + frac;
        if bp > 10_000 {
            return Err(err());
        }
        Ok(Percent(bp))
    }
}

impl fmt::Display for Percent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 % 100 {
            0 => write!(f, "{}%", self.0 / 100),
            r if r % 10 == 0 => write!(f, "{}.{}%", self.0 / 100, r / 10),
            r => write!(f, "{}.{r:02}%", self.0 / 100),
        }
    }
}

impl serde::Serialize for Percent {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Percent {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Percent, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A size given either in bytes or as a share of a total the user does not want to write
/// down (a filesystem's size): `"50GiB"`, `53687091200` or `"80%"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SizeLimit {
    Bytes(ByteSize),
    Percent(Percent),
}

impl SizeLimit {
    /// The limit in bytes, a percentage taken of `total`.
    pub fn of(self, total: u64) -> u64 {
        match self {
            SizeLimit::Bytes(b) => b.0,
            SizeLimit::Percent(p) => p.of(total),
        }
    }
}

impl FromStr for SizeLimit {
    type Err = ParsePercentError;

    fn from_str(s: &str) -> Result<SizeLimit, ParsePercentError> {
        if s.trim().ends_with('%') {
            return s.parse().map(SizeLimit::Percent);
        }
        s.parse().map(SizeLimit::Bytes).map_err(|_| ParsePercentError {
            what: "size",
            input: s.to_string(),
            examples: "53687091200, \"50GiB\", \"80%\"",
        })
    }
}

impl fmt::Display for SizeLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SizeLimit::Bytes(b) => b.fmt(f),
            SizeLimit::Percent(p) => p.fmt(f),
        }
    }
}

impl serde::Serialize for SizeLimit {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for SizeLimit {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<SizeLimit, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = SizeLimit;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a byte count, a string such as \"50GiB\", or a percentage such as \"80%\"")
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<SizeLimit, E> {
                Ok(SizeLimit::Bytes(ByteSize(v)))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<SizeLimit, E> {
                u64::try_from(v)
                    .map(|v| SizeLimit::Bytes(ByteSize(v)))
                    .map_err(|_| E::custom("size must not be negative"))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<SizeLimit, E> {
                v.parse().map_err(E::custom)
            }
        }
        d.deserialize_any(V)
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

    #[test]
    fn percentages() {
        let table = [
            ("90%", Some(9000)),
            ("0%", Some(0)),
            ("100%", Some(10_000)),
            ("12.5%", Some(1250)),
            ("12.05%", Some(1205)),
            (" 7 % ", Some(700)),
            ("100.01%", None),
            ("101%", None),
            ("90", None),
            ("%", None),
            ("-5%", None),
            ("1.234%", None),
            ("1.%", None),
            (".5%", None),
            ("1e2%", None),
        ];
        for (input, want) in table {
            assert_eq!(input.parse::<Percent>().ok().map(Percent::basis_points), want, "input {input:?}");
        }
        assert_eq!(Percent::new(90).to_string(), "90%");
        assert_eq!("12.5%".parse::<Percent>().unwrap().to_string(), "12.5%");
        assert_eq!("12.05%".parse::<Percent>().unwrap().to_string(), "12.05%");
        assert_eq!(Percent::new(75).of(1000), 750);
        assert_eq!("12.5%".parse::<Percent>().unwrap().of(u64::MAX), u64::MAX / 8);
    }

    #[test]
    fn size_limits() {
        let table: [(&str, Option<SizeLimit>); 5] = [
            ("\"80%\"", Some(SizeLimit::Percent(Percent::new(80)))),
            ("\"50GiB\"", Some(SizeLimit::Bytes(ByteSize(50 << 30)))),
            ("1234", Some(SizeLimit::Bytes(ByteSize(1234)))),
            ("\"80 parsecs\"", None),
            ("-1", None),
        ];
        for (json, want) in table {
            assert_eq!(serde_json::from_str::<SizeLimit>(json).ok(), want, "{json}");
        }
        assert_eq!(SizeLimit::Percent(Percent::new(10)).of(1000), 100);
        assert_eq!(SizeLimit::Bytes(ByteSize(7)).of(1000), 7);
        let err = serde_json::from_str::<SizeLimit>("\"lots\"").unwrap_err().to_string();
        assert!(err.contains("\"80%\""), "{err}");
    }
}
