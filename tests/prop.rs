//! Property tests: the stable-toolchain stand-in for fuzzing.

use std::net::{IpAddr, Ipv4Addr};

use proptest::prelude::*;

use stringban::allow::{Allowed, Allowlist, Cidr};
use stringban::blacklist::{Banned, List, ListConfig};
use stringban::config::{Config, Flags};
use stringban::rule::{Algo, StringMatch};
use stringban::scan::{Choice, Scanner};
use stringban::{Duration, Engine, Instant, parse};

/// lib/ctype.c's lower-case set, independently of `scan::to_upper`.
fn kernel_upper(b: u8) -> u8 {
    if matches!(b, 0x61..=0x7a | 0xdf | 0xe0..=0xf6 | 0xf8..=0xff) {
        b - 0x20
    } else {
        b
    }
}

/// The naive reference: the whole pattern inside `[from, min(to, len))`, then `invert`.
fn naive_hit(m: &StringMatch, packet: &[u8]) -> bool {
    let end = usize::from(m.to).min(packet.len());
    let from = usize::from(m.from);
    let n = m.pattern.len();
    let eq = |a: u8, b: u8| {
        if m.icase {
            kernel_upper(a) == kernel_upper(b)
        } else {
            a == b
        }
    };
    let found = from < end
        && end - from >= n
        && (from..=end - n).any(|s| (0..n).all(|i| eq(packet[s + i], m.pattern[i])));
    found != m.invert
}

/// Bytes from a small alphabet (with case pairs and Latin-1 letters) so that matches happen.
fn alphabet() -> impl Strategy<Value = u8> {
    prop_oneof![
        Just(b'a'),
        Just(b'A'),
        Just(b'b'),
        Just(b'@'),
        Just(0xe4),
        Just(0xc4),
        Just(0xff),
        Just(0xdf),
        Just(0xf7),
        any::<u8>()
    ]
}

fn string_match() -> impl Strategy<Value = StringMatch> {
    (
        prop::collection::vec(alphabet(), 1..6),
        0u16..80,
        0u16..90,
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(|(pattern, a, b, icase, invert)| {
            let (from, to) = if b == 89 {
                (a.min(40), u16::MAX)
            } else {
                (a.min(b), a.max(b))
            };
            StringMatch {
                pattern,
                algo: Algo::Kmp,
                from,
                to,
                icase,
                invert,
            }
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2_000, ..ProptestConfig::default() })]

    #[test]
    fn scanner_agrees_with_naive_reference(
        rules in prop::collection::vec(string_match(), 1..12),
        packet in prop::collection::vec(alphabet(), 0..100),
        mask in any::<u16>(),
    ) {
        let candidate = |i: usize| mask & (1 << (i % 16)) != 0;
        let want = rules.iter().enumerate().find(|(i, m)| candidate(*i) && naive_hit(m, &packet)).map(|(i, _)| i);
        let refs: Vec<&StringMatch> = rules.iter().collect();
        for choice in [Choice::Auto, Choice::Finders, Choice::Automata] {
            let mut s = Scanner::with_choice(&refs, choice);
            prop_assert_eq!(s.first_match(&packet, candidate), want, "{:?}", choice);
        }
    }

    #[test]
    fn parse_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
        let _ = parse::packet(&bytes);
    }

    #[test]
    fn parse_never_panics_on_mutated_packets(
        flips in prop::collection::vec((0usize..80, any::<u8>()), 1..6),
        cut in 0usize..100,
        v6 in any::<bool>(),
    ) {
        let mut p = if v6 { V6.to_vec() } else { V4.to_vec() };
        for (at, b) in flips {
            let i = at % p.len();
            p[i] = b;
        }
        p.truncate(cut);
        let _ = parse::packet(&p);
    }

    #[test]
    fn decide_is_deterministic_and_never_panics(
        packets in prop::collection::vec((prop::collection::vec(any::<u8>(), 0..80), any::<bool>(), 0u64..5_000_000), 1..40),
    ) {
        let flags = Flags { string: vec!["ab".into()], ports: vec![25], ttl: Some("2s".into()), ..Flags::default() };
        let config = Config::build(None, &flags).unwrap();
        let (mut a, mut b) = (Engine::new(&config), Engine::new(&config));
        let mut now = 1_000_000_000u64;
        for (bytes, real, step) in packets {
            now += step;
            // Half are real-looking packets carrying the random bytes as payload.
            let packet = if real { let mut p = V4.to_vec(); p.extend(&bytes); p } else { bytes };
            let t = Instant::from_micros(now);
            prop_assert_eq!(a.decide(&packet, t), b.decide(&packet, t));
        }
        prop_assert_eq!(a.stats(), b.stats());
    }

    /// The merged ranges answer as a linear scan over the CIDRs would, overlaps and adjacent
    /// ranges included (a small address space, so they overlap often).
    #[test]
    fn allowlist_agrees_with_a_linear_scan(
        cidrs in prop::collection::vec((0u32..256, 20u8..=32), 0..12),
        v6 in prop::collection::vec((0u128..256, 116u8..=128), 0..6),
        probes in prop::collection::vec(0u32..300, 1..64),
    ) {
        let mut entries = Vec::new();
        for (a, p) in &cidrs {
            let addr = IpAddr::V4(Ipv4Addr::from(0xC612_0000 | (a << 4)));
            entries.push(Allowed { cidr: Cidr::new(addr, *p).unwrap(), origin: "p".into() });
        }
        for (a, p) in &v6 {
            let addr = IpAddr::V6(std::net::Ipv6Addr::from((0x2001_0db8u128 << 96) | (a << 4)));
            entries.push(Allowed { cidr: Cidr::new(addr, *p).unwrap(), origin: "p".into() });
        }
        let list = Allowlist::new(entries.clone());
        for x in &probes {
            for addr in [
                IpAddr::V4(Ipv4Addr::from(0xC612_0000 | (x << 4) | (x & 15))),
                IpAddr::V6(std::net::Ipv6Addr::from((0x2001_0db8u128 << 96) | u128::from(x << 4 | (x & 15)))),
            ] {
                let linear = entries.iter().any(|e| e.cidr.contains(addr));
                prop_assert_eq!(list.contains(addr), linear, "{}", addr);
            }
        }
    }

    /// A source convicted again after each ban ends gets non-decreasing bans, each the previous
    /// one times `escalate` until `max_ttl`; the threshold holds every time.
    #[test]
    fn escalation_grows_to_the_cap(
        ttl in 1u64..100,
        escalate in 1u8..5,
        threshold in 1u8..4,
        cap in 1u64..20,
        gaps in prop::collection::vec(1u64..50, 1..8),
    ) {
        let max_ttl = Duration::from_secs(ttl * cap);
        let list = List::new(ListConfig {
            ttl: Duration::from_secs(ttl),
            refresh_on_hit: false,
            threshold,
            window: Duration::from_secs(1_000),
            escalate,
            max_ttl: Some(max_ttl),
            // Longer than any gap here: every offender is remembered (the default, max_ttl,
            // would forget one whose gap after its ban is longer than max_ttl).
            remember: Some(Duration::from_secs(100_000)),
            ..ListConfig::new("p")
        });
        let a = IpAddr::V4(Ipv4Addr::new(198, 18, 0, 1));
        let mut t = Instant::from_secs(1_000_000);
        let mut want = ttl;
        for gap in gaps {
            for k in 1..threshold {
                prop_assert_eq!(list.ban(a, t, 0), Banned::Strike(k));
                prop_assert!(!list.check(a, t));
            }
            prop_assert_eq!(list.ban(a, t, 0), Banned::New);
            let got = list.get(a, t).unwrap().expires_at.saturating_sub(t).secs();
            prop_assert_eq!(got, want);
            want = (want * u64::from(escalate)).min(ttl * cap).max(ttl);
            t = Instant::from_secs(t.secs_u32() as u64 + got + gap);
        }
    }

    #[test]
    fn after_expire_no_entry_outlives_its_ttl(
        bans in prop::collection::vec((0u32..64, 0u64..100_000_000), 1..60),
        ttl_secs in 1u64..60,
        at in 0u64..200_000_000,
    ) {
        let list = List::new(ListConfig { ttl: Duration::from_secs(ttl_secs), refresh_on_hit: false, ..ListConfig::new("p") });
        for (host, t) in &bans {
            list.ban(IpAddr::V4(Ipv4Addr::new(198, 18, 0, *host as u8)), Instant::from_micros(*t), 0);
        }
        let now = Instant::from_micros(at);
        list.expire(now);
        for b in list.bans(now) {
            prop_assert!(b.expires_at > now);
            prop_assert!(b.expires_at.micros() <= b.last_seen.micros() + ttl_secs * 1_000_000 + 1_000_000);
        }
        // Every address whose latest ban is recent enough is still there; the rest are gone.
        for host in 0u32..64 {
            let last = bans.iter().filter(|(h, _)| *h == host).map(|(_, t)| *t).max();
            let addr = IpAddr::V4(Ipv4Addr::new(198, 18, 0, host as u8));
            let alive = list.check(addr, now);
            if let Some(t) = last {
                if at < t + ttl_secs * 1_000_000 { prop_assert!(alive, "host {} banned at {} ttl {}", host, t, ttl_secs); }
                if at >= (t + ttl_secs * 1_000_000).div_ceil(1_000_000) * 1_000_000 + 1_000_000 { prop_assert!(!alive); }
            } else {
                prop_assert!(!alive);
            }
        }
    }
}

/// IPv4 TCP 198.18.0.2:40000 → 198.18.0.1:25, ACK|PSH, no payload.
static V4: [u8; 40] = [
    0x45, 0, 0, 0x28, 0, 1, 0x40, 0, 64, 6, 0, 0, 198, 18, 0, 2, 198, 18, 0, 1, 0x9c, 0x40, 0, 25,
    0, 0, 0, 100, 0, 0, 0, 200, 0x50, 0x18, 0xff, 0xff, 0, 0, 0, 0,
];

/// IPv6 TCP with a hop-by-hop header.
static V6: [u8; 68] = [
    0x60, 0, 0, 0, 0, 0x1c, 0, 64, 0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2,
    0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 6, 0, 1, 4, 0, 0, 0, 0, 0x9c, 0x40,
    0, 25, 0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x02, 0xff, 0xff, 0, 0, 0, 0,
];
