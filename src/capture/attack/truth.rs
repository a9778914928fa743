//! The ground truth of a generated capture, and the verdict counts it predicts (an oracle
//! independent of the engine).

use std::collections::HashMap;
use std::io::{self, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::{GenConfig, Kind};
use crate::time::Instant;

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

/// A ground-truth file that does not read: the line and the field.
#[derive(Clone, Debug, Eq, PartialEq)]
pub struct TruthError(pub String);

impl std::fmt::Display for TruthError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for TruthError {}

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
    pub fn parse(text: &str) -> Result<Truth, TruthError> {
        let mut truth = Truth::default();
        for (n, line) in text.lines().enumerate() {
            let bad = |what: &str| TruthError(format!("line {}: {what}: {line:?}", n + 1));
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
            let opt = |i: usize, name: &str| -> Result<Option<u32>, TruthError> {
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
