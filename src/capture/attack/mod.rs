//! `stringban gen`: a realistic, deterministic capture of the flood, with its ground truth.
//!
//! Complete SMTP sessions (handshake, banner, EHLO, MAIL FROM, RCPT TO, DATA, body, QUIT, FIN) with
//! correct sequence numbers and checksums, as seen at the mail server, from many sources. The mix:
//!
//! | kind            | what the client does                                               |
//! |-----------------|--------------------------------------------------------------------|
//! | `spam`          | mails `<user>@DOMAIN`; the `To:` header names it too                |
//! | `spam-upper`    | `RCPT TO:<USER@DOMAIN>` in upper case; `To: undisclosed-recipients` |
//! | `spam-split`    | the RCPT line in two TCP segments, split inside `@DOMAIN`           |
//! | `spam-pipelined`| MAIL, RCPT and DATA in one segment (PIPELINING)                     |
//! | `legit`         | mail to a hosted domain, unrelated to DOMAIN                       |
//! | `legit-mention` | legit mail whose body mentions an address at DOMAIN                |
//!
//! Spam sources keep one kind (a bot runs one template); a tenth of them are IPv6 bots that rotate
//! their address inside their own /64. Sessions of one source (one /64 for IPv6) never overlap in
//! time. The ground truth (`<capture>.truth.tsv`) lists every session, and [`Truth::expected`]
//! predicts the exact verdict counts of a packet-mode replay — an oracle independent of the
//! engine.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::fmt;
use std::io::{self, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::capture::pcap::{Writer, linktype};
use crate::time::{Duration, Instant};

/// Settings of one generated capture.
#[derive(Clone, Debug, PartialEq)]
pub struct GenConfig {
    pub sessions: u64,
    pub sources: u64,
    pub spam_domain: String,
    /// Share of sessions that are legitimate mail, 0.0 to 1.0.
    pub legit_ratio: f64,
    pub seed: u64,
    /// New sessions per second, on average.
    pub rate: f64,
    pub start: Instant,
}

impl Default for GenConfig {
    fn default() -> GenConfig {
        GenConfig {
            sessions: 100_000,
            sources: 31_000,
            spam_domain: "example.com".to_string(),
            legit_ratio: 0.1,
            seed: 1,
            rate: 50.0,
            // 2026-01-01T00:00:00Z
            start: Instant::from_secs(1_767_225_600),
        }
    }
}

/// The most sources the address plan holds.
pub const MAX_SOURCES: u64 = 100_000;

/// Why generation was refused.
#[derive(Debug)]
pub enum GenError {
    BadConfig {
        key: &'static str,
        value: String,
        problem: &'static str,
    },
    Write(io::Error),
}

impl fmt::Display for GenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GenError::BadConfig {
                key,
                value,
                problem,
            } => write!(f, "{key} = {value}: {problem}"),
            GenError::Write(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for GenError {}

impl From<io::Error> for GenError {
    fn from(e: io::Error) -> GenError {
        GenError::Write(e)
    }
}

/// What a session does; see the module documentation.
#[derive(Clone, Copy, Debug, Eq, Hash, Ord, PartialEq, PartialOrd)]
pub enum Kind {
    Spam,
    SpamUpper,
    SpamSplit,
    SpamPipelined,
    Legit,
    LegitMention,
}

impl Kind {
    pub const ALL: [Kind; 6] = [
        Kind::Spam,
        Kind::SpamUpper,
        Kind::SpamSplit,
        Kind::SpamPipelined,
        Kind::Legit,
        Kind::LegitMention,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Kind::Spam => "spam",
            Kind::SpamUpper => "spam-upper",
            Kind::SpamSplit => "spam-split",
            Kind::SpamPipelined => "spam-pipelined",
            Kind::Legit => "legit",
            Kind::LegitMention => "legit-mention",
        }
    }

    pub fn parse(text: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.name() == text)
    }

    pub fn is_spam(self) -> bool {
        matches!(
            self,
            Kind::Spam | Kind::SpamUpper | Kind::SpamSplit | Kind::SpamPipelined
        )
    }
}

/// SplitMix64: small, fast, and the same sequence on every platform and version.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x5eed_5eed_5eed_5eed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }

    /// Uniform in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    pub fn chance(&mut self, p: f64) -> bool {
        self.unit() < p
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
}

const SERVER_V4: Ipv4Addr = Ipv4Addr::new(198, 19, 255, 25);
const SERVER_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xffff, 0xffff, 0, 0, 0, 0x25);
const SERVER_NAME: &str = "mx.stringban.test";
const HOSTED: &str = "mail.stringban.test";
const WORDS: &[&str] = &[
    "alpha", "bravo", "delta", "echo", "kilo", "lima", "oscar", "romeo", "sierra", "tango",
    "victor", "zulu", "amber", "cobalt", "ember", "harbor", "meadow", "quartz", "willow", "summit",
];

/// One source: a bot or a legitimate mail server.
#[derive(Clone, Debug)]
struct Source {
    /// IPv4 address, or the IPv6 /64 prefix (upper 64 bits) with `v6 = true`.
    base: u128,
    v6: bool,
    kind: Kind,
    rtt_us: u64,
    ttl: u8,
    busy_until: Instant,
}

impl Source {
    fn address(&self, rng: &mut Rng) -> IpAddr {
        if self.v6 {
            // Bots rotate their interface id inside their /64; legit servers keep ::1.
            let iid = if self.kind.is_spam() {
                rng.next_u64() | 1
            } else {
                1
            };
            IpAddr::V6(Ipv6Addr::from(self.base << 64 | u128::from(iid)))
        } else {
            IpAddr::V4(Ipv4Addr::from(self.base as u32))
        }
    }
}

/// One session as planned.
#[derive(Clone, Debug)]
struct Plan {
    id: u64,
    start: Instant,
    client: IpAddr,
    client_port: u16,
    kind: Kind,
    source: usize,
}

mod session;
mod truth;

use crate::craft::ethernet_header;
use session::{Packet, build_session};

pub use truth::{Expected, Oracle, Truth, TruthError, TruthRow, ban_key};

/// What [`generate`] wrote.
#[derive(Clone, Debug, Default)]
pub struct Summary {
    pub sessions_by_kind: Vec<(Kind, u64)>,
    pub packets: u64,
    pub bytes: u64,
    pub sources: u64,
    pub duration: Duration,
}

/// Writes the capture (Ethernet pcap) to `capture` and returns its ground truth.
pub fn generate(cfg: &GenConfig, capture: impl Write) -> Result<(Truth, Summary), GenError> {
    validate(cfg)?;
    let mut rng = Rng::new(cfg.seed);
    let sources = make_sources(cfg, &mut rng);
    let plans = plan_sessions(cfg, &sources, &mut rng);
    let mut writer = Writer::new(capture, linktype::ETHERNET)?;
    let mut truth = Truth {
        spam_domain: cfg.spam_domain.clone(),
        rows: Vec::with_capacity(plans.len()),
    };
    let mut summary = Summary {
        sources: sources.len() as u64,
        ..Summary::default()
    };
    let mut by_kind: HashMap<Kind, u64> = HashMap::new();
    let needle = format!("@{}", cfg.spam_domain).into_bytes();

    // Sessions start in order; their packets interleave. A heap of (next packet time, session)
    // merges them; only the sessions in flight are held in memory.
    let mut pending: HashMap<u64, std::vec::IntoIter<Packet>> = HashMap::new();
    let mut heap: BinaryHeap<Reverse<(Instant, u64)>> = BinaryHeap::new();
    let mut next_plan = 0usize;
    let mut last_ts = cfg.start;
    loop {
        let next_start = plans.get(next_plan).map(|p| p.start);
        let next_packet = heap.peek().map(|Reverse((t, _))| *t);
        let take_plan = match (next_start, next_packet) {
            (None, None) => break,
            (Some(s), Some(p)) => s <= p,
            (Some(_), None) => true,
            (None, Some(_)) => false,
        };
        if take_plan {
            let plan = &plans[next_plan];
            next_plan += 1;
            let mut session_rng = Rng::new(cfg.seed ^ plan.id.wrapping_mul(0x9e37_79b9_7f4a_7c15));
            let (packets, row) =
                build_session(plan, &sources[plan.source], cfg, &needle, &mut session_rng);
            *by_kind.entry(plan.kind).or_default() += 1;
            truth.rows.push(row);
            let iter = packets.into_iter();
            if let Some(first) = iter.as_slice().first() {
                heap.push(Reverse((first.ts, plan.id)));
            }
            pending.insert(plan.id, iter);
            continue;
        }
        let Some(Reverse((_, id))) = heap.pop() else {
            break;
        };
        let Some(iter) = pending.get_mut(&id) else {
            continue;
        };
        if let Some(p) = iter.next() {
            let eth = ethernet_header(p.bytes[0] >> 4 == 6, p.from_client);
            writer.write(p.ts, &[&eth, &p.bytes])?;
            summary.packets += 1;
            summary.bytes += (eth.len() + p.bytes.len()) as u64;
            last_ts = p.ts;
        }
        match iter.as_slice().first() {
            Some(next) => heap.push(Reverse((next.ts, id))),
            None => {
                pending.remove(&id);
            }
        }
    }
    writer.into_inner().flush()?;
    summary.duration = last_ts.saturating_sub(cfg.start);
    summary.sessions_by_kind = Kind::ALL
        .iter()
        .map(|k| (*k, by_kind.get(k).copied().unwrap_or(0)))
        .collect();
    truth.rows.sort_by_key(|r| (r.start, r.session));
    Ok((truth, summary))
}

fn validate(cfg: &GenConfig) -> Result<(), GenError> {
    let bad = |key, value: String, problem| {
        Err(GenError::BadConfig {
            key,
            value,
            problem,
        })
    };
    if cfg.sessions == 0 {
        return bad("--sessions", "0".into(), "must be at least 1");
    }
    if cfg.sources == 0 || cfg.sources > MAX_SOURCES {
        return bad("--sources", cfg.sources.to_string(), "must be 1 to 100000");
    }
    if !(0.0..=1.0).contains(&cfg.legit_ratio) {
        return bad(
            "--legit-ratio",
            cfg.legit_ratio.to_string(),
            "must be between 0 and 1",
        );
    }
    if !(cfg.rate > 0.0 && cfg.rate.is_finite()) {
        return bad("--rate", cfg.rate.to_string(), "must be above 0");
    }
    let d = &cfg.spam_domain;
    if d.is_empty()
        || d.len() > 120
        || !d
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
        || !d.contains('.')
    {
        return bad(
            "--spam-domain",
            d.clone(),
            "must be a domain name such as example.com",
        );
    }
    Ok(())
}

fn make_sources(cfg: &GenConfig, rng: &mut Rng) -> Vec<Source> {
    let legit_sessions = (cfg.sessions as f64 * cfg.legit_ratio).round() as u64;
    let spam_sessions = cfg.sessions - legit_sessions;
    // Legit mail comes from fewer, busier servers than the bots: one source per 3 sessions.
    let mut legit = if legit_sessions == 0 {
        0
    } else {
        legit_sessions.div_ceil(3).clamp(1, cfg.sources)
    };
    if spam_sessions > 0 && legit == cfg.sources {
        legit = cfg.sources - 1;
    }
    if legit_sessions > 0 && legit == 0 {
        legit = 1;
    }
    let spam = cfg.sources - legit;
    let mut out = Vec::with_capacity(cfg.sources as usize);
    let spam_v4_base = u128::from(u32::from(Ipv4Addr::new(198, 18, 0, 1)));
    let legit_v4_base = u128::from(u32::from(Ipv4Addr::new(198, 19, 200, 1)));
    for i in 0..spam {
        let kind = match rng.below(100) {
            0..70 => Kind::Spam,
            70..80 => Kind::SpamUpper,
            80..90 => Kind::SpamSplit,
            _ => Kind::SpamPipelined,
        };
        let v6 = rng.chance(0.1);
        let base = if v6 {
            0x2001_0db8_u128 << 32 | u128::from(i)
        } else {
            spam_v4_base + u128::from(i)
        };
        out.push(Source {
            base,
            v6,
            kind,
            rtt_us: 20_000 + rng.below(180_000),
            ttl: *rng.pick(&[44u8, 52, 113, 49]),
            busy_until: Instant::ZERO,
        });
    }
    for j in 0..legit {
        let v6 = rng.chance(0.1);
        let base = if v6 {
            (0x2001_0db8_u128 << 32) | 0xfffe_0000 | u128::from(j)
        } else {
            legit_v4_base + u128::from(j)
        };
        out.push(Source {
            base,
            v6,
            kind: Kind::Legit,
            rtt_us: 5_000 + rng.below(40_000),
            ttl: 57,
            busy_until: Instant::ZERO,
        });
    }
    out
}

fn plan_sessions(cfg: &GenConfig, sources: &[Source], rng: &mut Rng) -> Vec<Plan> {
    let legit_sessions = (cfg.sessions as f64 * cfg.legit_ratio).round() as u64;
    let spam_ids: Vec<usize> = (0..sources.len())
        .filter(|&i| sources[i].kind.is_spam())
        .collect();
    let legit_ids: Vec<usize> = (0..sources.len())
        .filter(|&i| !sources[i].kind.is_spam())
        .collect();
    let mut order: Vec<usize> = Vec::with_capacity(cfg.sessions as usize);
    for (ids, count) in [
        (&spam_ids, cfg.sessions - legit_sessions),
        (&legit_ids, legit_sessions),
    ] {
        if ids.is_empty() {
            continue;
        }
        for n in 0..count {
            // Every source sends at least once when there are sessions enough, then at random.
            let id = if (n as usize) < ids.len() {
                ids[n as usize]
            } else {
                *rng.pick(ids)
            };
            order.push(id);
        }
    }
    for i in (1..order.len()).rev() {
        order.swap(i, rng.below(i as u64 + 1) as usize);
    }
    let mut busy: Vec<Instant> = sources.iter().map(|s| s.busy_until).collect();
    let mut t = cfg.start.micros() as f64;
    let mean_gap_us = 1e6 / cfg.rate;
    let mut plans = Vec::with_capacity(order.len());
    for (id, source) in order.into_iter().enumerate() {
        t += -mean_gap_us * (1.0 - rng.unit()).ln();
        let s = &sources[source];
        // A source's sessions never overlap: at most ~14 round trips plus slack.
        let mut start = Instant::from_micros(t as u64);
        if start < busy[source] {
            start = busy[source];
        }
        busy[source] = start.saturating_add(Duration::from_micros(s.rtt_us * 20 + 2_000_000));
        let kind = if s.kind == Kind::Legit && rng.chance(0.25) {
            Kind::LegitMention
        } else {
            s.kind
        };
        let mut addr_rng = Rng::new(cfg.seed ^ (id as u64) << 20 ^ 0xadd7);
        plans.push(Plan {
            id: id as u64,
            start,
            client: s.address(&mut addr_rng),
            client_port: 32_768 + rng.below(28_232) as u16,
            kind,
            source,
        });
    }
    plans.sort_by_key(|p| (p.start, p.id));
    plans
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capture::pcap::{Reader, ip_packet};
    use crate::craft::Checksum;
    use crate::parse;

    fn small() -> GenConfig {
        GenConfig {
            sessions: 400,
            sources: 120,
            legit_ratio: 0.2,
            seed: 7,
            ..GenConfig::default()
        }
    }

    #[test]
    fn deterministic() {
        let (mut a, mut b) = (Vec::new(), Vec::new());
        let (ta, _) = generate(&small(), &mut a).unwrap();
        let (tb, _) = generate(&small(), &mut b).unwrap();
        assert_eq!(a, b);
        assert_eq!(ta, tb);
        let mut c = Vec::new();
        generate(&GenConfig { seed: 8, ..small() }, &mut c).unwrap();
        assert_ne!(a, c);
    }

    #[test]
    fn sessions_are_complete_and_consistent() {
        let mut capture = Vec::new();
        let (truth, summary) = generate(&small(), &mut capture).unwrap();
        assert_eq!(truth.rows.len(), 400);
        for kind in Kind::ALL {
            assert!(
                truth.rows.iter().any(|r| r.kind == kind),
                "no {kind:?} session"
            );
        }
        assert!(truth.rows.iter().any(|r| r.client.is_ipv6()));
        let total: u64 = truth
            .rows
            .iter()
            .map(|r| u64::from(r.c2s_packets + r.s2c_packets))
            .sum();
        assert_eq!(total, summary.packets);
        // Evasive variants never carry the literal pattern; the others always do.
        for r in &truth.rows {
            match r.kind {
                Kind::SpamUpper | Kind::SpamSplit | Kind::Legit => {
                    assert_eq!(r.pattern_packet, None, "{r:?}")
                }
                _ => assert!(r.pattern_packet.is_some(), "{r:?}"),
            }
        }
        // Every packet parses, checksums are right, and timestamps never go back.
        let mut reader = Reader::new(&capture[..]).unwrap();
        let mut last = Instant::ZERO;
        let mut n = 0;
        while let Some(rec) = reader.next_record().unwrap() {
            let ip = ip_packet(rec.link, rec.data).unwrap();
            let p = parse::packet(ip).unwrap();
            assert!(p.ports().is_some());
            assert!(rec.ts >= last);
            last = rec.ts;
            if ip[0] >> 4 == 4 {
                let mut h = Checksum::default();
                h.add(&ip[..20]);
                assert_eq!(h.finish(), 0, "ipv4 header checksum");
            }
            n += 1;
        }
        assert_eq!(n, summary.packets);
    }

    #[test]
    fn truth_round_trips() {
        let cfg = small();
        let (truth, _) = generate(&cfg, io::sink()).unwrap();
        let mut text = Vec::new();
        truth.write(&cfg, &mut text).unwrap();
        assert_eq!(
            Truth::parse(std::str::from_utf8(&text).unwrap()).unwrap(),
            truth
        );
    }

    #[test]
    fn expected_counts_add_up() {
        let (truth, summary) = generate(&small(), io::sink()).unwrap();
        let e = truth.expected(32, 64);
        assert_eq!(e.packets, summary.packets);
        assert_eq!(e.accept + e.drop + e.reset, e.packets);
        assert_eq!(e.reset as usize, e.convicted.len());
        assert!(e.missed_spam.get(&Kind::SpamUpper).copied().unwrap_or(0) > 0);
        assert!(e.missed_spam.get(&Kind::SpamSplit).copied().unwrap_or(0) > 0);
        assert_eq!(e.missed_spam.get(&Kind::Spam), None);
        assert!(e.hurt_legit.get(&Kind::LegitMention).copied().unwrap_or(0) > 0);
    }

    #[test]
    fn refuses_bad_settings() {
        for cfg in [
            GenConfig {
                sessions: 0,
                ..small()
            },
            GenConfig {
                sources: 0,
                ..small()
            },
            GenConfig {
                sources: MAX_SOURCES + 1,
                ..small()
            },
            GenConfig {
                legit_ratio: 1.5,
                ..small()
            },
            GenConfig {
                spam_domain: "no spaces.com".into(),
                ..small()
            },
        ] {
            assert!(matches!(
                generate(&cfg, io::sink()),
                Err(GenError::BadConfig { .. })
            ));
        }
    }
}
