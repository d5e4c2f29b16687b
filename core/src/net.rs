//! Address networks: [`Cidr`] (`10.0.0.0/8`, `fd00::/8`, or a bare address for one host) and
//! [`Networks`], a list of them, as configs name the callers and peers a node trusts or dials.
//!
//! Invariant: an IPv4-mapped IPv6 address (`::ffff:10.0.0.1`, what a dual-stack `[::]`
//! listener reports for an IPv4 caller) matches exactly the IPv4 networks its IPv4 address
//! matches, and never an IPv6 network; so one list means the same on every kind of socket.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

/// A network: an address and a prefix length, with the host bits zero.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

/// Why a network does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CidrError {
    #[error("{0:?} is not an IP address or an ADDRESS/PREFIX network")]
    Syntax(String),
    #[error("{0:?}: the prefix length is past the address's bits")]
    Prefix(String),
    #[error("{0:?}: host bits are set (did you mean {1}?)")]
    HostBits(String, Cidr),
}

impl Cidr {
    /// The network of `addr`'s first `prefix` bits. `None` if `prefix` is past the address's
    /// bits. Host bits are cleared.
    pub fn new(addr: IpAddr, prefix: u8) -> Option<Cidr> {
        let addr = addr.to_canonical();
        let bits = bits(addr);
        if prefix > bits {
            return None;
        }
        Some(Cidr { addr: mask(addr, prefix), prefix })
    }

    /// The network of one address.
    pub fn host(addr: IpAddr) -> Cidr {
        let addr = addr.to_canonical();
        Cidr { addr, prefix: bits(addr) }
    }

    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// Whether `ip` is in this network (IPv4-mapped addresses as their IPv4 address).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        ip.is_ipv4() == self.addr.is_ipv4() && mask(ip, self.prefix) == self.addr
    }
}

fn bits(addr: IpAddr) -> u8 {
    if addr.is_ipv4() { 32 } else { 128 }
}

/// `addr` with every bit past the first `prefix` cleared.
fn mask(addr: IpAddr, prefix: u8) -> IpAddr {
    match addr {
        IpAddr::V4(a) => {
            let m = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V4(Ipv4Addr::from(u32::from(a) & m))
        }
        IpAddr::V6(a) => {
            let m = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V6(Ipv6Addr::from(u128::from(a) & m))
        }
    }
}

impl FromStr for Cidr {
    type Err = CidrError;

    fn from_str(s: &str) -> Result<Cidr, CidrError> {
        let syntax = || CidrError::Syntax(s.to_owned());
        let (ip, prefix) = match s.split_once('/') {
            Some((ip, p)) => {
                let ip: IpAddr = ip.parse().map_err(|_| syntax())?;
                if p.is_empty() || p.len() > 3 || !p.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(syntax());
                }
                let p: u8 = p.parse().map_err(|_| CidrError::Prefix(s.to_owned()))?;
                (ip, Some(p))
            }
            None => (s.parse().map_err(|_| syntax())?, None),
        };
        let Some(prefix) = prefix else { return Ok(Cidr::host(ip)) };
        // `::ffff:10.0.0.0/104` is written against the IPv6 bits; keep it in those terms.
        let c = match ip {
            IpAddr::V6(v6) if v6.to_ipv4_mapped().is_some() => {
                let p4 = prefix.checked_sub(96).ok_or_else(|| CidrError::Prefix(s.to_owned()))?;
                Cidr::new(ip, p4).ok_or_else(|| CidrError::Prefix(s.to_owned()))?
            }
            _ => Cidr::new(ip, prefix).ok_or_else(|| CidrError::Prefix(s.to_owned()))?,
        };
        if c.addr != ip.to_canonical() {
            return Err(CidrError::HostBits(s.to_owned(), c));
        }
        Ok(c)
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl serde::Serialize for Cidr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Cidr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Cidr, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A list of networks; an address is in it when any network contains it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct Networks(pub Vec<Cidr>);

impl Networks {
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|c| c.contains(ip))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Loopback (`127.0.0.0/8`, `::1`), the private ranges (`10.0.0.0/8`, `172.16.0.0/12`,
    /// `192.168.0.0/16`, `fc00::/7`), shared address space (`100.64.0.0/10`, which some
    /// clusters use for pods) and link-local (`169.254.0.0/16`, `fe80::/10`): what a lab or a
    /// data center's own network uses, and no address on the internet.
    pub fn private() -> Networks {
        let list = [
            "127.0.0.0/8",
            "10.0.0.0/8",
            "172.16.0.0/12",
            "192.168.0.0/16",
            "100.64.0.0/10",
            "169.254.0.0/16",
            "::1/128",
            "fc00::/7",
            "fe80::/10",
        ];
        Networks(list.iter().filter_map(|s| s.parse().ok()).collect())
    }

    /// `127.0.0.0/8` and `::1`.
    pub fn loopback() -> Networks {
        Networks(["127.0.0.0/8", "::1/128"].iter().filter_map(|s| s.parse().ok()).collect())
    }
}

impl FromIterator<Cidr> for Networks {
    fn from_iter<I: IntoIterator<Item = Cidr>>(iter: I) -> Networks {
        Networks(iter.into_iter().collect())
    }
}

/// The key a per-source limit counts under: an IPv4 address, or an IPv6 address's /64 (one
/// host usually holds a whole /64, so counting single IPv6 addresses would let it take any
/// number of keys).
pub fn source_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        v4 @ IpAddr::V4(_) => v4,
        v6 => mask(v6, 64),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn parses_networks_and_hosts() {
        for (s, want) in [
            ("10.0.0.0/8", "10.0.0.0/8"),
            ("10.1.2.3", "10.1.2.3/32"),
            ("0.0.0.0/0", "0.0.0.0/0"),
            ("fd00::/8", "fd00::/8"),
            ("::1", "::1/128"),
            ("::/0", "::/0"),
            ("::ffff:10.0.0.0/104", "10.0.0.0/8"),
            ("::ffff:10.0.0.1", "10.0.0.1/32"),
        ] {
            assert_eq!(s.parse::<Cidr>().map(|c| c.to_string()), Ok(want.to_owned()), "{s}");
        }
    }

    #[test]
    fn refuses_what_is_not_a_network() {
        for (s, want) in [
            ("10.0.0.0/33", "prefix"),
            ("fd00::/129", "prefix"),
            ("10.0.0.1/8", "host bits"),
            ("10.0.0.0/", "not an IP"),
            ("10.0.0.0/+8", "not an IP"),
            ("10.0.0.0/ 8", "not an IP"),
            ("10.0.0/8", "not an IP"),
            ("example.com/8", "not an IP"),
            ("", "not an IP"),
            ("::ffff:10.0.0.0/8", "prefix"),
        ] {
            let err = s.parse::<Cidr>().expect_err(s).to_string();
            assert!(err.contains(want), "{s}: {err}");
        }
        assert!(
            matches!("10.0.0.1/8".parse::<Cidr>(), Err(CidrError::HostBits(_, c)) if c.to_string() == "10.0.0.0/8")
        );
    }

    #[test]
    fn contains_by_family_and_prefix() {
        let n = |s: &str| s.parse::<Cidr>().unwrap();
        // (network, address, in)
        for (net, addr, want) in [
            ("10.0.0.0/8", "10.255.1.2", true),
            ("10.0.0.0/8", "11.0.0.0", false),
            ("10.0.0.0/8", "::ffff:10.1.1.1", true),
            ("10.1.2.3", "10.1.2.3", true),
            ("10.1.2.3", "10.1.2.4", false),
            ("0.0.0.0/0", "203.0.113.9", true),
            ("0.0.0.0/0", "::1", false),
            ("::/0", "10.0.0.1", false),
            ("::/0", "::ffff:10.0.0.1", false),
            ("fd00::/8", "fd12:3456::1", true),
            ("fd00::/8", "fe80::1", false),
            ("::1/128", "::1", true),
            ("172.16.0.0/12", "172.31.255.255", true),
            ("172.16.0.0/12", "172.32.0.0", false),
        ] {
            assert_eq!(n(net).contains(ip(addr)), want, "{net} ∋ {addr}");
        }
    }

    #[test]
    fn the_private_default_is_every_lab_range_and_no_internet_address() {
        let p = Networks::private();
        for a in ["127.0.0.1", "127.9.9.9", "10.1.2.3", "172.20.0.1", "192.168.1.1", "100.64.0.1", "::1", "fd00::1"] {
            assert!(p.contains(ip(a)), "{a}");
        }
        for a in ["8.8.8.8", "203.0.113.1", "2001:db8::1", "172.32.0.1", "0.0.0.0", "::"] {
            assert!(!p.contains(ip(a)), "{a}");
        }
        assert!(Networks::loopback().contains(ip("::ffff:127.0.0.1")));
        assert!(!Networks::default().contains(ip("127.0.0.1")), "an empty list holds nothing");
    }

    #[test]
    fn serde_as_strings() {
        let n: Networks = serde_json::from_str(r#"["10.0.0.0/8", "::1"]"#).unwrap();
        assert_eq!(serde_json::to_string(&n).unwrap(), r#"["10.0.0.0/8","::1/128"]"#);
        let err = serde_json::from_str::<Networks>(r#"["10.0.0.1/8"]"#).unwrap_err().to_string();
        assert!(err.contains("host bits"), "{err}");
    }

    #[test]
    fn ipv6_sources_count_by_their_64() {
        assert_eq!(source_key(ip("2001:db8:1:2:aaaa::1")), ip("2001:db8:1:2::"));
        assert_eq!(source_key(ip("2001:db8:1:2:bbbb::9")), source_key(ip("2001:db8:1:2::7")));
        assert_ne!(source_key(ip("2001:db8:1:3::1")), source_key(ip("2001:db8:1:2::1")));
        assert_eq!(source_key(ip("10.0.0.1")), ip("10.0.0.1"));
        assert_eq!(source_key(ip("::ffff:10.0.0.1")), ip("10.0.0.1"));
    }
}
