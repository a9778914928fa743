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

use crate::io::pcap::{Writer, linktype};
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

/// One row of the ground truth.
#[derive(Clone, Debug, Eq, PartialEq)]
pub struct TruthRow {
    pub session: u64,
    pub start: Instant,
    pub client: IpAddr,
    pub client_port: u16,
    pub server: IpAddr,
    pub kind: Kind,
    pub mail_from: String,
    pub rcpt_to: String,
    pub c2s_packets: u32,
    pub s2c_packets: u32,
    /// 1-based index, among the client's packets, of the first one holding `@DOMAIN` verbatim
    /// (what a packet-mode, case-sensitive rule for `@DOMAIN` sees).
    pub pattern_packet: Option<u32>,
    /// Among the client's packets, the first with which the client's byte stream so far holds
    /// `@DOMAIN` in any case (what a stream-mode `--icase` rule sees).
    pub stream_packet: Option<u32>,
    /// Among the client's packets, the one that ends a `RCPT TO` line whose address holds
    /// `@DOMAIN` in any case (what an smtp-mode rule sees; bodies never count).
    pub smtp_packet: Option<u32>,
    /// 1-based index among all the session's packets (both directions) of the server's 354
    /// answer to DATA: where an smtp-mode flow bypasses.
    pub bypass_at: u32,
}

/// Which rule a ground-truth prediction is for: `--string @DOMAIN` in this mode.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub enum Oracle {
    /// `--mode packet` (case-sensitive).
    Packet,
    /// `--mode stream --icase`.
    StreamIcase,
    /// `--mode smtp`, with or without bypass (the same: plaintext sessions never bypass).
    Smtp,
}

/// Verdict counts predicted from the ground truth.
#[derive(Clone, Debug, Default, Eq, PartialEq)]
pub struct Expected {
    pub packets: u64,
    pub accept: u64,
    pub bypass: u64,
    pub drop: u64,
    pub reset: u64,
    /// Ban keys convicted, as the engine prints them.
    pub convicted: Vec<String>,
    /// Spam sessions whose source was never convicted, by kind.
    pub missed_spam: HashMap<Kind, u64>,
    /// Legit sessions that lost at least one packet, by kind.
    pub hurt_legit: HashMap<Kind, u64>,
}

/// The ground truth of a generated capture.
#[derive(Clone, Debug, Default, Eq, PartialEq)]
pub struct Truth {
    pub spam_domain: String,
    pub rows: Vec<TruthRow>,
}

const TRUTH_COLUMNS: &str = "session\tstart_us\tclient\tclient_port\tserver\tkind\tmail_from\trcpt_to\tc2s_packets\ts2c_packets\tpattern_packet\tstream_packet\tsmtp_packet\tbypass_at";

impl Truth {
    /// Writes the TSV form (comment lines, a header, one row per session).
    pub fn write(&self, cfg: &GenConfig, mut out: impl Write) -> io::Result<()> {
        writeln!(
            out,
            "# stringban gen ground truth: one row per SMTP session, in start order"
        )?;
        writeln!(
            out,
            "# sessions={} sources={} spam_domain={} legit_ratio={} seed={} rate={}",
            cfg.sessions, cfg.sources, cfg.spam_domain, cfg.legit_ratio, cfg.seed, cfg.rate
        )?;
        writeln!(
            out,
            "# pattern_packet: 1-based index among the client's packets of the first holding \"@{}\" verbatim",
            self.spam_domain
        )?;
        writeln!(
            out,
            "# stream_packet: ... of the first with which the client's stream holds it in any case; smtp_packet: ... of the one ending a RCPT TO line that holds it in any case; bypass_at: index among all the session's packets of the 354 answer to DATA"
        )?;
        writeln!(out, "# spam_domain\t{}", self.spam_domain)?;
        writeln!(out, "{TRUTH_COLUMNS}")?;
        let opt = |p: Option<u32>| p.map_or("-".to_string(), |p| p.to_string());
        for r in &self.rows {
            writeln!(
                out,
                "{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}",
                r.session,
                r.start.micros(),
                r.client,
                r.client_port,
                r.server,
                r.kind.name(),
                r.mail_from,
                r.rcpt_to,
                r.c2s_packets,
                r.s2c_packets,
                opt(r.pattern_packet),
                opt(r.stream_packet),
                opt(r.smtp_packet),
                r.bypass_at
            )?;
        }
        Ok(())
    }

    /// Parses the TSV form.
    pub fn parse(text: &str) -> Result<Truth, String> {
        let mut truth = Truth::default();
        for (n, line) in text.lines().enumerate() {
            let bad = |what: &str| format!("line {}: {what}: {line:?}", n + 1);
            if let Some(domain) = line.strip_prefix("# spam_domain\t") {
                truth.spam_domain = domain.to_string();
                continue;
            }
            if line.starts_with('#') || line == TRUTH_COLUMNS || line.is_empty() {
                continue;
            }
            let f: Vec<&str> = line.split('\t').collect();
            if f.len() != 14 {
                return Err(bad("expected 14 columns"));
            }
            let opt = |i: usize, name: &str| -> Result<Option<u32>, String> {
                if f[i] == "-" {
                    Ok(None)
                } else {
                    f[i].parse().map(Some).map_err(|_| bad(name))
                }
            };
            truth.rows.push(TruthRow {
                session: f[0].parse().map_err(|_| bad("session"))?,
                start: Instant::from_micros(f[1].parse().map_err(|_| bad("start_us"))?),
                client: f[2].parse().map_err(|_| bad("client"))?,
                client_port: f[3].parse().map_err(|_| bad("client_port"))?,
                server: f[4].parse().map_err(|_| bad("server"))?,
                kind: Kind::parse(f[5]).ok_or_else(|| bad("kind"))?,
                mail_from: f[6].to_string(),
                rcpt_to: f[7].to_string(),
                c2s_packets: f[8].parse().map_err(|_| bad("c2s_packets"))?,
                s2c_packets: f[9].parse().map_err(|_| bad("s2c_packets"))?,
                pattern_packet: opt(10, "pattern_packet")?,
                stream_packet: opt(11, "stream_packet")?,
                smtp_packet: opt(12, "smtp_packet")?,
                bypass_at: f[13].parse().map_err(|_| bad("bypass_at"))?,
            });
        }
        Ok(truth)
    }

    /// The verdict counts of a packet-mode replay with one rule `--string @DOMAIN --action
    /// reject` guarding the server's port 25, a TTL longer than the capture and the given ban
    /// prefixes. Per ban key, in session order: each client packet is accepted until the first
    /// pattern packet, which is reset; every later client packet of that key is dropped. The
    /// server's packets are not to port 25, so they are accepted.
    pub fn expected(&self, prefix_v4: u8, prefix_v6: u8) -> Expected {
        self.expected_for(Oracle::Packet, prefix_v4, prefix_v6)
    }

    /// As [`Truth::expected`], for the rule `--string @DOMAIN` in another mode: the convicting
    /// packet is the stream or smtp column's instead. The generated sessions are plaintext, so
    /// smtp mode follows each one to its end with or without bypass (only STARTTLS bypasses).
    pub fn expected_for(&self, oracle: Oracle, prefix_v4: u8, prefix_v6: u8) -> Expected {
        let mut by_key: HashMap<String, Vec<&TruthRow>> = HashMap::new();
        for r in &self.rows {
            by_key
                .entry(ban_key(r.client, prefix_v4, prefix_v6))
                .or_default()
                .push(r);
        }
        let mut e = Expected::default();
        for (key, mut rows) in by_key {
            rows.sort_by_key(|r| (r.start, r.session));
            let mut banned = false;
            for r in rows {
                let convicting = match oracle {
                    Oracle::Packet => r.pattern_packet,
                    Oracle::StreamIcase => r.stream_packet,
                    Oracle::Smtp => r.smtp_packet,
                };
                let all = u64::from(r.c2s_packets + r.s2c_packets);
                e.packets += all;
                e.accept += u64::from(r.s2c_packets);
                let mut lost = false;
                for k in 1..=r.c2s_packets {
                    if banned {
                        e.drop += 1;
                        lost = true;
                    } else if convicting == Some(k) {
                        e.reset += 1;
                        banned = true;
                        lost = true;
                        e.convicted.push(key.clone());
                    } else {
                        e.accept += 1;
                    }
                }
                if r.kind.is_spam() && !lost {
                    *e.missed_spam.entry(r.kind).or_default() += 1;
                }
                if !r.kind.is_spam() && lost {
                    *e.hurt_legit.entry(r.kind).or_default() += 1;
                }
            }
        }
        e.convicted.sort();
        e
    }
}

/// The ban key of `addr` as the engine prints it (see `blacklist::Key`).
pub fn ban_key(addr: IpAddr, prefix_v4: u8, prefix_v6: u8) -> String {
    match addr {
        IpAddr::V4(a) if prefix_v4 >= 32 => a.to_string(),
        IpAddr::V4(a) => {
            let mask = if prefix_v4 == 0 {
                0
            } else {
                u32::MAX << (32 - u32::from(prefix_v4))
            };
            format!("{}/{prefix_v4}", Ipv4Addr::from(a.to_bits() & mask))
        }
        IpAddr::V6(a) if prefix_v6 >= 128 => a.to_string(),
        IpAddr::V6(a) => {
            let mask = if prefix_v6 == 0 {
                0
            } else {
                u128::MAX << (128 - u32::from(prefix_v6))
            };
            format!("{}/{prefix_v6}", Ipv6Addr::from(a.to_bits() & mask))
        }
    }
}

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

/// One packet of a session, from the IP header on.
struct Packet {
    ts: Instant,
    from_client: bool,
    bytes: Vec<u8>,
    /// The TCP payload is the last `payload_len` bytes.
    payload_len: usize,
}

/// TCP state of one side.
struct Side {
    addr: IpAddr,
    port: u16,
    seq: u32,
    ttl: u8,
    ip_id: u16,
}

struct SessionWriter {
    client: Side,
    server: Side,
    now: Instant,
    rtt_us: u64,
    packets: Vec<Packet>,
}

const SYN: u8 = 0x02;
const RST: u8 = 0x04;
const ACK: u8 = 0x10;
const PSH_ACK: u8 = 0x18;
const FIN_ACK: u8 = 0x11;
const FIN_PSH_ACK: u8 = 0x19;

impl SessionWriter {
    /// Sends a segment; the capture point is at the server, so a client segment is seen at
    /// `now` and the server's answer shortly after.
    fn send(&mut self, from_client: bool, flags: u8, payload: &[u8], options: &[u8]) {
        let (from, to) = if from_client {
            (&mut self.client, &self.server)
        } else {
            (&mut self.server, &self.client)
        };
        let ack = if flags & ACK != 0 { to.seq } else { 0 };
        let bytes = tcp_packet(from, to, flags, ack, payload, options);
        from.seq = from
            .seq
            .wrapping_add(payload.len() as u32 + u32::from(flags & (SYN | 0x01) != 0));
        from.ip_id = from.ip_id.wrapping_add(1);
        self.packets.push(Packet {
            ts: self.now,
            from_client,
            bytes,
            payload_len: payload.len(),
        });
    }

    /// Client packets sent so far.
    fn client_count(&self) -> u32 {
        self.packets.iter().filter(|p| p.from_client).count() as u32
    }

    /// Advances the clock: `half` half round trips plus `extra` microseconds.
    fn wait(&mut self, half: u64, extra: u64) {
        self.now = self
            .now
            .saturating_add(Duration::from_micros(self.rtt_us * half / 2 + extra));
    }

    fn client(&mut self, payload: &[u8]) {
        self.wait(1, 300);
        self.send(true, PSH_ACK, payload, &[]);
    }

    fn server(&mut self, payload: &[u8]) {
        self.wait(0, 250);
        self.send(false, PSH_ACK, payload, &[]);
        self.wait(1, 0);
    }
}

fn build_session(
    plan: &Plan,
    source: &Source,
    cfg: &GenConfig,
    needle: &[u8],
    rng: &mut Rng,
) -> (Vec<Packet>, TruthRow) {
    let server_addr = if plan.client.is_ipv6() {
        IpAddr::V6(SERVER_V6)
    } else {
        IpAddr::V4(SERVER_V4)
    };
    let mut w = SessionWriter {
        client: Side {
            addr: plan.client,
            port: plan.client_port,
            seq: rng.next_u64() as u32,
            ttl: source.ttl,
            ip_id: rng.next_u64() as u16,
        },
        server: Side {
            addr: server_addr,
            port: 25,
            seq: rng.next_u64() as u32,
            ttl: 64,
            ip_id: rng.next_u64() as u16,
        },
        now: plan.start,
        rtt_us: source.rtt_us,
        packets: Vec::with_capacity(24),
    };
    let domain = &cfg.spam_domain;
    let word = |rng: &mut Rng| *rng.pick(WORDS);
    let spam = plan.kind.is_spam();
    let helo = if spam {
        format!("{}{}.dsl.test", word(rng), rng.below(9999))
    } else {
        format!("mx{}.{}-partner.test", rng.below(9), word(rng))
    };
    let mail_from = if spam {
        format!("{}{}@{}-deals.test", word(rng), rng.below(999), word(rng))
    } else {
        format!("{}@{}-partner.test", word(rng), word(rng))
    };
    let user = format!("{}.{}", word(rng), rng.below(99));
    let rcpt = match plan.kind {
        Kind::Spam | Kind::SpamSplit | Kind::SpamPipelined => format!("{user}@{domain}"),
        Kind::SpamUpper => format!("{user}@{domain}").to_uppercase(),
        Kind::Legit | Kind::LegitMention => format!("{user}@{HOSTED}"),
    };
    let to_header = match plan.kind {
        Kind::Spam | Kind::SpamPipelined | Kind::Legit | Kind::LegitMention => format!("<{rcpt}>"),
        Kind::SpamUpper | Kind::SpamSplit => "undisclosed-recipients:;".to_string(),
    };
    let body = message_body(plan, &mail_from, &to_header, domain, rng);

    // Handshake.
    w.send(true, SYN, &[], &[2, 4, 0x05, 0xb4]);
    w.wait(0, 150);
    w.send(false, SYN | ACK, &[], &[2, 4, 0x05, 0xb4]);
    w.wait(2, 0);
    w.send(true, ACK, &[], &[]);
    w.server(format!("220 {SERVER_NAME} ESMTP ready\r\n").as_bytes());
    w.client(format!("EHLO {helo}\r\n").as_bytes());
    w.server(format!("250-{SERVER_NAME}\r\n250-PIPELINING\r\n250-SIZE 52428800\r\n250-8BITMIME\r\n250 SMTPUTF8\r\n").as_bytes());
    let mail_cmd = format!("MAIL FROM:<{mail_from}>\r\n");
    let rcpt_cmd = format!("RCPT TO:<{rcpt}>\r\n");
    // Client packets that end the MAIL and RCPT lines; the session packet of the 354.
    let (mail_packet, rcpt_packet, bypass_at);
    if plan.kind == Kind::SpamPipelined {
        w.client(format!("{mail_cmd}{rcpt_cmd}DATA\r\n").as_bytes());
        (mail_packet, rcpt_packet) = (w.client_count(), w.client_count());
        w.server(b"250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n354 End data with <CR><LF>.<CR><LF>\r\n");
        bypass_at = w.packets.len() as u32;
    } else {
        w.client(mail_cmd.as_bytes());
        mail_packet = w.client_count();
        w.server(b"250 2.1.0 Ok\r\n");
        if plan.kind == Kind::SpamSplit {
            // Split strictly inside "@domain", so that neither segment holds it whole.
            let at = rcpt_cmd.find('@').unwrap_or(9);
            let cut = at + 1 + rng.below(domain.len() as u64 - 1) as usize;
            w.client(&rcpt_cmd.as_bytes()[..cut]);
            w.wait(0, 400);
            w.send(true, PSH_ACK, &rcpt_cmd.as_bytes()[cut..], &[]);
        } else {
            w.client(rcpt_cmd.as_bytes());
        }
        rcpt_packet = w.client_count();
        w.server(b"250 2.1.5 Ok\r\n");
        w.client(b"DATA\r\n");
        w.server(b"354 End data with <CR><LF>.<CR><LF>\r\n");
        bypass_at = w.packets.len() as u32;
    }
    let chunks: Vec<&[u8]> = body.chunks(1460).collect();
    for (i, chunk) in chunks.iter().enumerate() {
        if i == 0 {
            w.wait(1, 300);
        } else {
            w.wait(0, 120);
        }
        w.send(true, PSH_ACK, chunk, &[]);
    }
    let queue_id: String = (0..10)
        .map(|_| char::from(b"0123456789ABCDEF"[rng.below(16) as usize]))
        .collect();
    w.server(format!("250 2.0.0 Ok: queued as {queue_id}\r\n").as_bytes());
    w.client(b"QUIT\r\n");
    w.wait(0, 250);
    w.send(false, FIN_PSH_ACK, b"221 2.0.0 Bye\r\n", &[]);
    w.wait(1, 0);
    w.wait(1, 200);
    w.send(true, FIN_ACK, &[], &[]);
    w.wait(0, 100);
    w.send(false, ACK, &[], &[]);

    let mut c2s = 0u32;
    let mut s2c = 0u32;
    let mut pattern_packet = None;
    let mut stream_packet = None;
    // The client's byte stream so far, in lower case (the needle is ASCII).
    let lower_needle = needle.to_ascii_lowercase();
    let holds = |hay: &[u8]| hay.windows(needle.len()).any(|win| win == lower_needle);
    let mut stream: Vec<u8> = Vec::new();
    for p in &w.packets {
        if p.from_client {
            c2s += 1;
            if pattern_packet.is_none() && p.bytes.windows(needle.len()).any(|win| win == needle) {
                pattern_packet = Some(c2s);
            }
            stream.extend(p.bytes[p.bytes.len() - p.payload_len..].to_ascii_lowercase());
            if stream_packet.is_none() && holds(&stream) {
                stream_packet = Some(c2s);
            }
        } else {
            s2c += 1;
        }
    }
    let smtp_packet = if holds(mail_from.to_ascii_lowercase().as_bytes()) {
        Some(mail_packet)
    } else if holds(rcpt.to_ascii_lowercase().as_bytes()) {
        Some(rcpt_packet)
    } else {
        None
    };
    let row = TruthRow {
        session: plan.id,
        start: plan.start,
        client: plan.client,
        client_port: plan.client_port,
        server: server_addr,
        kind: plan.kind,
        mail_from,
        rcpt_to: rcpt,
        c2s_packets: c2s,
        s2c_packets: s2c,
        pattern_packet,
        stream_packet,
        smtp_packet,
        bypass_at,
    };
    (w.packets, row)
}

fn message_body(plan: &Plan, from: &str, to_header: &str, domain: &str, rng: &mut Rng) -> Vec<u8> {
    let mut b = String::with_capacity(2048);
    let msg_id = rng.next_u64();
    b.push_str(&format!("From: <{from}>\r\nTo: {to_header}\r\nSubject: "));
    let (subject, lines) = match plan.kind {
        Kind::Legit | Kind::LegitMention => ("Minutes of the planning meeting", 4 + rng.below(30)),
        _ => ("You have WON a prize, claim now", 3 + rng.below(12)),
    };
    b.push_str(&format!("{subject}\r\nMessage-ID: <{msg_id:016x}@{}>\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n", plan.client_port));
    for i in 0..lines {
        if plan.kind == Kind::LegitMention && i == 1 {
            b.push_str(&format!(
                "The invoice from billing@{domain} arrived twice; please ignore the second one.\r\n"
            ));
            continue;
        }
        let w1 = WORDS[rng.below(WORDS.len() as u64) as usize];
        let w2 = WORDS[rng.below(WORDS.len() as u64) as usize];
        b.push_str(&format!("Line {i}: the {w1} report and the {w2} figures are attached as discussed last week.\r\n"));
    }
    b.push_str(".\r\n");
    b.into_bytes()
}

fn ethernet_header(v6: bool, from_client: bool) -> [u8; 14] {
    let server = [0x02, 0, 0, 0, 0, 0x01];
    let router = [0x02, 0, 0, 0, 0, 0x02];
    let (dst, src) = if from_client {
        (server, router)
    } else {
        (router, server)
    };
    let mut h = [0u8; 14];
    h[..6].copy_from_slice(&dst);
    h[6..12].copy_from_slice(&src);
    h[12..].copy_from_slice(if v6 { &[0x86, 0xdd] } else { &[0x08, 0x00] });
    h
}

/// A TCP segment from `src:sport` to `dst:dport` (same address family) with correct lengths and
/// checksums: for the live benchmark's packet generator.
pub fn tcp_segment(
    src: (IpAddr, u16),
    dst: (IpAddr, u16),
    seq: u32,
    ack: u32,
    payload: &[u8],
) -> Vec<u8> {
    tcp_flags_segment(src, dst, seq, ack, PSH_ACK, payload)
}

/// A TCP segment with the given flags (ACK number sent only with the ACK flag), correct lengths
/// and checksums: for scripted sessions ([`crate::script`]).
pub fn tcp_flags_segment(
    (src, sport): (IpAddr, u16),
    (dst, dport): (IpAddr, u16),
    seq: u32,
    ack: u32,
    flags: u8,
    payload: &[u8],
) -> Vec<u8> {
    let from = Side {
        addr: src,
        port: sport,
        seq,
        ttl: 64,
        ip_id: 1,
    };
    let to = Side {
        addr: dst,
        port: dport,
        seq: ack,
        ttl: 64,
        ip_id: 1,
    };
    let ack = if flags & ACK != 0 { ack } else { 0 };
    tcp_packet(&from, &to, flags, ack, payload, &[])
}

/// The Ethernet header the generator writes before an IP packet (`v6`: its EtherType).
pub fn ethernet_frame_header(v6: bool, from_client: bool) -> [u8; 14] {
    ethernet_header(v6, from_client)
}

/// A bare RST from `src:sport` to `dst:dport` with sequence number `seq` (no ACK), correct
/// lengths and checksums: the daemon's crafted reset toward the local side.
pub fn tcp_rst((src, sport): (IpAddr, u16), (dst, dport): (IpAddr, u16), seq: u32) -> Vec<u8> {
    let from = Side {
        addr: src,
        port: sport,
        seq,
        ttl: 64,
        ip_id: 0,
    };
    let to = Side {
        addr: dst,
        port: dport,
        seq: 0,
        ttl: 64,
        ip_id: 0,
    };
    tcp_packet(&from, &to, RST, 0, &[], &[])
}

/// Builds an IPv4 or IPv6 TCP packet with correct lengths and checksums.
fn tcp_packet(
    from: &Side,
    to: &Side,
    flags: u8,
    ack: u32,
    payload: &[u8],
    options: &[u8],
) -> Vec<u8> {
    let tcp_len = 20 + options.len() + payload.len();
    let mut tcp = Vec::with_capacity(tcp_len);
    tcp.extend(from.port.to_be_bytes());
    tcp.extend(to.port.to_be_bytes());
    tcp.extend(from.seq.to_be_bytes());
    tcp.extend(ack.to_be_bytes());
    tcp.push(((20 + options.len()) as u8 / 4) << 4);
    tcp.push(flags);
    tcp.extend(64_240u16.to_be_bytes());
    tcp.extend([0, 0, 0, 0]);
    tcp.extend(options);
    tcp.extend(payload);
    let mut sum = Checksum::default();
    let mut out = Vec::with_capacity(40 + tcp_len);
    match (from.addr, to.addr) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let total = (20 + tcp_len) as u16;
            out.extend([0x45, 0]);
            out.extend(total.to_be_bytes());
            out.extend(from.ip_id.to_be_bytes());
            out.extend([0x40, 0, from.ttl, 6, 0, 0]);
            out.extend(s.octets());
            out.extend(d.octets());
            let mut h = Checksum::default();
            h.add(&out);
            out[10..12].copy_from_slice(&h.finish().to_be_bytes());
            sum.add(&s.octets());
            sum.add(&d.octets());
            sum.add(&[0, 6]);
            sum.add(&(tcp_len as u16).to_be_bytes());
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            out.extend([0x60, 0, 0, 0]);
            out.extend((tcp_len as u16).to_be_bytes());
            out.extend([6, from.ttl]);
            out.extend(s.octets());
            out.extend(d.octets());
            sum.add(&s.octets());
            sum.add(&d.octets());
            sum.add(&(tcp_len as u32).to_be_bytes());
            sum.add(&[0, 0, 0, 6]);
        }
        _ => unreachable!("a session's two sides share an address family"),
    }
    sum.add(&tcp);
    tcp[16..18].copy_from_slice(&sum.finish().to_be_bytes());
    out.extend(tcp);
    out
}

/// The Internet checksum (RFC 1071), fed in even-length pieces except the last.
#[derive(Default)]
struct Checksum(u32);

impl Checksum {
    fn add(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(2);
        for c in &mut chunks {
            self.0 += u32::from(u16::from_be_bytes([c[0], c[1]]));
        }
        if let [last] = chunks.remainder() {
            self.0 += u32::from(*last) << 8;
        }
    }

    fn finish(&self) -> u16 {
        let mut s = self.0;
        while s > 0xffff {
            s = (s & 0xffff) + (s >> 16);
        }
        !(s as u16)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::pcap::{Reader, ip_packet};
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
