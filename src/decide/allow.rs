//! The allowlist: sources that are never banned (fail2ban's `ignoreip`).
//!
//! CIDRs come from the configuration file, the command line, included files (one per line) and,
//! in the daemon, defaults: loopback (`127.0.0.0/8`, `::1`) and the host's own addresses. They
//! are merged into sorted, disjoint ranges per family, so a lookup is one binary search and an
//! empty list costs one length test. Each entry keeps where it came from, to say why an address
//! is allowed.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

/// An address and a prefix length, host bits cleared.
#[derive(Clone, Copy, Debug, Eq, Hash, Ord, PartialEq, PartialOrd)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// `addr/prefix`, host bits cleared; None if the prefix is too long for the family.
    pub fn new(addr: IpAddr, prefix: u8) -> Option<Cidr> {
        let addr = match addr {
            IpAddr::V4(a) if prefix <= 32 => {
                IpAddr::V4(Ipv4Addr::from(a.to_bits() & mask32(prefix)))
            }
            IpAddr::V6(a) if prefix <= 128 => {
                IpAddr::V6(Ipv6Addr::from(a.to_bits() & mask128(prefix)))
            }
            _ => return None,
        };
        Some(Cidr { addr, prefix })
    }

    /// One address: `/32` or `/128`.
    pub fn host(addr: IpAddr) -> Cidr {
        let prefix = if addr.is_ipv4() { 32 } else { 128 };
        Cidr { addr, prefix }
    }

    pub fn addr(self) -> IpAddr {
        self.addr
    }

    pub fn prefix(self) -> u8 {
        self.prefix
    }

    pub fn contains(self, addr: IpAddr) -> bool {
        match (self.addr, canonical(addr)) {
            (IpAddr::V4(net), IpAddr::V4(a)) => a.to_bits() & mask32(self.prefix) == net.to_bits(),
            (IpAddr::V6(net), IpAddr::V6(a)) => a.to_bits() & mask128(self.prefix) == net.to_bits(),
            _ => false,
        }
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// Why a text is not a CIDR.
#[derive(Clone, Debug, Eq, PartialEq)]
pub struct BadCidr(String);

impl fmt::Display for BadCidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for BadCidr {}

impl FromStr for Cidr {
    type Err = BadCidr;

    /// `198.18.0.0/15`, `2001:db8::/32`, or one address. Host bits must be clear: `10.0.0.1/8`
    /// is refused (it is most likely a typo for a host or for `10.0.0.0/8`).
    fn from_str(s: &str) -> Result<Cidr, BadCidr> {
        let (a, p) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = a.parse().map_err(|_| {
            BadCidr(
                "not an IPv4 or IPv6 address (CIDR expected, e.g. 198.18.0.0/15 or 2001:db8::/32)"
                    .into(),
            )
        })?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match p {
            None => max,
            Some(p) => match p.parse::<u8>() {
                Ok(n) if n <= max => n,
                _ => return Err(BadCidr(format!("prefix must be 0..={max}"))),
            },
        };
        let cidr = Cidr::new(addr, prefix).ok_or_else(|| BadCidr("bad prefix".into()))?;
        if cidr.addr != addr {
            return Err(BadCidr(format!(
                "host bits set: did you mean {cidr} (or {}/{max} for the one address)?",
                addr
            )));
        }
        Ok(cidr)
    }
}

fn mask32(prefix: u8) -> u32 {
    if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(prefix))
    }
}

fn mask128(prefix: u8) -> u128 {
    if prefix == 0 {
        0
    } else {
        u128::MAX << (128 - u32::from(prefix))
    }
}

/// IPv4-mapped IPv6 addresses count as IPv4 (as the blacklist keys them).
fn canonical(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(addr, IpAddr::V4),
        v4 => v4,
    }
}

/// One allowlist entry and where it came from (`file:line`, `command line`, `loopback`, …).
#[derive(Clone, Debug, Eq, PartialEq)]
pub struct Allowed {
    pub cidr: Cidr,
    pub origin: String,
}

/// The merged allowlist. See the module documentation.
#[derive(Clone, Debug, Default, Eq, PartialEq)]
pub struct Allowlist {
    entries: Vec<Allowed>,
    v4: Vec<(u32, u32)>,
    v6: Vec<(u128, u128)>,
}

impl Allowlist {
    pub fn new(entries: Vec<Allowed>) -> Allowlist {
        let mut v4 = Vec::new();
        let mut v6 = Vec::new();
        for e in &entries {
            match e.cidr.addr {
                IpAddr::V4(a) => {
                    let lo = a.to_bits();
                    v4.push((lo, lo | !mask32(e.cidr.prefix)));
                }
                IpAddr::V6(a) => {
                    let lo = a.to_bits();
                    v6.push((lo, lo | !mask128(e.cidr.prefix)));
                }
            }
        }
        Allowlist {
            entries,
            v4: merge(v4),
            v6: merge(v6),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Every entry, as given (duplicates and overlaps included).
    pub fn entries(&self) -> &[Allowed] {
        &self.entries
    }

    /// Is `addr` allowed?
    #[inline]
    pub fn contains(&self, addr: IpAddr) -> bool {
        if self.entries.is_empty() {
            return false;
        }
        match canonical(addr) {
            IpAddr::V4(a) => within(&self.v4, a.to_bits()),
            IpAddr::V6(a) => within(&self.v6, a.to_bits()),
        }
    }

    /// The first entry that allows `addr`, to say why.
    pub fn why(&self, addr: IpAddr) -> Option<&Allowed> {
        self.entries.iter().find(|e| e.cidr.contains(addr))
    }
}

/// Sorted, disjoint, non-adjacent ranges.
fn merge<T: Ord + Copy + num::One>(mut ranges: Vec<(T, T)>) -> Vec<(T, T)> {
    ranges.sort_unstable();
    let mut out: Vec<(T, T)> = Vec::with_capacity(ranges.len());
    for (lo, hi) in ranges {
        match out.last_mut() {
            Some(last) if lo <= last.1 || last.1.next() == Some(lo) => last.1 = last.1.max(hi),
            _ => out.push((lo, hi)),
        }
    }
    out
}

fn within<T: Ord + Copy>(ranges: &[(T, T)], x: T) -> bool {
    // The last range starting at or before x.
    let i = ranges.partition_point(|&(lo, _)| lo <= x);
    i > 0 && x <= ranges[i - 1].1
}

mod num {
    /// The successor, if any (to merge adjacent ranges).
    pub trait One: Sized {
        fn next(self) -> Option<Self>;
    }
    impl One for u32 {
        fn next(self) -> Option<u32> {
            self.checked_add(1)
        }
    }
    impl One for u128 {
        fn next(self) -> Option<u128> {
            self.checked_add(1)
        }
    }
}

/// The defaults: loopback, and each of `host` (the host's own addresses) as one address.
pub fn defaults(host: &[(String, IpAddr)]) -> Vec<Allowed> {
    let mut out = vec![
        Allowed {
            cidr: Cidr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 0)), 8).expect("valid"),
            origin: "default: loopback".into(),
        },
        Allowed {
            cidr: Cidr::host(IpAddr::V6(Ipv6Addr::LOCALHOST)),
            origin: "default: loopback".into(),
        },
    ];
    for (iface, addr) in host {
        out.push(Allowed {
            cidr: Cidr::host(*addr),
            origin: format!("default: address of {iface}"),
        });
    }
    out
}

/// A list file: one CIDR per line; `#` starts a comment; blank lines are skipped. Errors name
/// `name:line`.
pub fn parse_list(name: &str, text: &str) -> Result<Vec<Allowed>, crate::config::ConfigError> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let word = line.split('#').next().unwrap_or("").trim();
        if word.is_empty() {
            continue;
        }
        let cidr: Cidr = word
            .parse()
            .map_err(|e: BadCidr| crate::config::ConfigError {
                origin: name.to_string(),
                line: Some(i + 1),
                key: "allow".into(),
                value: word.to_string(),
                problem: e.to_string(),
            })?;
        out.push(Allowed {
            cidr,
            origin: format!("{name}:{}", i + 1),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn list(cidrs: &[&str]) -> Allowlist {
        Allowlist::new(
            cidrs
                .iter()
                .map(|c| Allowed {
                    cidr: c.parse().unwrap(),
                    origin: "test".into(),
                })
                .collect(),
        )
    }

    #[test]
    fn cidrs_parse_and_refuse_host_bits() {
        assert_eq!(
            "198.18.0.0/15".parse::<Cidr>().unwrap().to_string(),
            "198.18.0.0/15"
        );
        assert_eq!(
            "2001:db8::1".parse::<Cidr>().unwrap().to_string(),
            "2001:db8::1/128"
        );
        let e = "10.0.0.1/8".parse::<Cidr>().unwrap_err().to_string();
        assert!(e.contains("10.0.0.0/8"), "{e}");
        assert!("10.0.0.0/33".parse::<Cidr>().is_err());
        assert!("example.com".parse::<Cidr>().is_err());
        assert!("".parse::<Cidr>().is_err());
        assert_eq!("0.0.0.0/0".parse::<Cidr>().unwrap().prefix(), 0);
    }

    #[test]
    fn lookups_match_a_linear_scan() {
        let l = list(&[
            "198.18.0.0/24",
            "198.18.1.0/24",
            "198.18.0.128/25",
            "10.0.0.0/8",
            "192.0.2.7",
            "2001:db8::/32",
            "::1",
        ]);
        for a in [
            "198.18.0.0",
            "198.18.1.255",
            "198.18.2.0",
            "10.255.255.255",
            "11.0.0.0",
            "192.0.2.7",
            "192.0.2.8",
            "2001:db8:ffff::1",
            "2001:db9::",
            "::1",
            "::2",
            "::ffff:10.1.2.3",
            "0.0.0.0",
            "255.255.255.255",
        ] {
            let linear = l.entries().iter().any(|e| e.cidr.contains(ip(a)));
            assert_eq!(l.contains(ip(a)), linear, "{a}");
        }
        assert!(
            l.contains(ip("::ffff:10.1.2.3")),
            "mapped IPv4 counts as IPv4"
        );
        assert!(!Allowlist::default().contains(ip("127.0.0.1")));
        let all = list(&["0.0.0.0/0", "::/0"]);
        assert!(all.contains(ip("255.255.255.255")) && all.contains(ip("ffff::1")));
    }

    #[test]
    fn defaults_hold_loopback_and_the_host() {
        let l = Allowlist::new(defaults(&[("eth0".into(), ip("198.18.0.1"))]));
        assert!(l.contains(ip("127.0.0.1")) && l.contains(ip("127.9.9.9")));
        assert!(l.contains(ip("::1")) && l.contains(ip("198.18.0.1")));
        assert!(!l.contains(ip("198.18.0.2")));
        assert_eq!(
            l.why(ip("198.18.0.1")).unwrap().origin,
            "default: address of eth0"
        );
    }

    #[test]
    fn list_files_name_the_line() {
        let ok = parse_list(
            "allow.txt",
            "# relays\n192.0.2.0/24  # backup MX\n\n2001:db8::/48\n",
        )
        .unwrap();
        assert_eq!(ok.len(), 2);
        assert_eq!(ok[1].origin, "allow.txt:4");
        let e = parse_list("allow.txt", "192.0.2.0/24\nnot-an-address\n").unwrap_err();
        assert_eq!(e.line, Some(2));
        assert_eq!(e.value, "not-an-address");
    }
}
