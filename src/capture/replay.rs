//! `stringban replay`: the engine over pcap/pcapng files, packet timestamps as the clock.
//!
//! Frames are read and stripped to the IP header in batches; only the `Engine::decide` calls are
//! timed, so the reported throughput is the engine's, not the disk's. The verdict log (TSV) is
//! written after each timed batch.

use std::fmt;
use std::fs::File;
use std::io::{self, BufReader, IsTerminal, Write};
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use std::collections::HashMap;

use crate::blacklist::{Key, ListId};
use crate::capture::pcap::{self, PcapError, Reader, Skip};
use crate::engine::{Decision, Engine, Reason, Stats, Verdict};
use crate::parse;
use crate::time::Instant;

/// Frames decided per timed batch.
const BATCH: usize = 4096;

/// Files above this size get a progress line on a terminal.
const PROGRESS_BYTES: u64 = 64 << 20;

/// How a replay runs.
#[derive(Default)]
pub struct Options {
    /// Where to write one TSV line per packet.
    pub verdicts: Option<Box<dyn Write>>,
    /// Print progress on stderr (only honoured when stderr is a terminal).
    pub progress: bool,
    /// Where the packets met the filter: imported iptables rules run this hook's chain.
    pub hook: crate::verdict::Hook,
}

/// One replayed file.
#[derive(Clone, Debug)]
pub struct FileReport {
    pub path: PathBuf,
    pub frames: u64,
    /// Set when the capture ended inside a record; what came before was replayed.
    pub truncated: Option<String>,
}

/// What a replay saw and decided.
#[derive(Clone, Debug)]
pub struct Report {
    pub files: Vec<FileReport>,
    /// Frames read, IP or not.
    pub frames: u64,
    /// Frames without an IP packet (ARP, …) or with a link type we do not read.
    pub skipped: u64,
    pub stats: Stats,
    /// Seconds spent inside `Engine::decide`.
    pub engine_secs: f64,
    pub first_ts: Option<Instant>,
    pub last_ts: Option<Instant>,
    /// Rule names, by rule index.
    pub rule_names: Vec<String>,
    /// List names, by list index.
    pub list_names: Vec<String>,
    /// Every source convicted during the replay, most dropped packets first.
    pub banned: Vec<Convicted>,
    /// Imported iptables rules: each `-m recent` table's name and entries at the end.
    pub recent: Vec<(String, usize)>,
}

/// A source (ban key) that a rule convicted during the replay.
#[derive(Clone, Debug, Eq, PartialEq)]
pub struct Convicted {
    pub key: Key,
    pub list: String,
    /// When a rule first convicted it.
    pub first: Instant,
    /// Rule matches that (re)banned it.
    pub convictions: u64,
    /// Its packets dropped because it was banned.
    pub dropped: u64,
    /// Still banned when the capture ends.
    pub live_at_end: bool,
}

impl Report {
    pub fn engine_pps(&self) -> f64 {
        if self.engine_secs > 0.0 {
            self.stats.packets as f64 / self.engine_secs
        } else {
            0.0
        }
    }

    pub fn engine_gbps(&self) -> f64 {
        if self.engine_secs > 0.0 {
            self.stats.bytes as f64 * 8.0 / self.engine_secs / 1e9
        } else {
            0.0
        }
    }

    /// The machine-readable form printed by `--json`.
    pub fn to_json(&self) -> serde_json::Value {
        let s = &self.stats;
        let verdicts: serde_json::Map<String, serde_json::Value> = Verdict::ALL
            .iter()
            .map(|v| (v.name().to_string(), s.verdict(*v).into()))
            .collect();
        let matches: Vec<_> = self
            .rule_names
            .iter()
            .zip(&s.matches)
            .map(|(name, count)| serde_json::json!({ "rule": name, "matches": count }))
            .collect();
        let top: Vec<_> = self
            .banned
            .iter()
            .take(10)
            .map(|c| serde_json::json!({ "source": c.key.to_string(), "list": c.list, "dropped": c.dropped, "convictions": c.convictions }))
            .collect();
        serde_json::json!({
            "files": self.files.iter().map(|f| serde_json::json!({
                "path": f.path.display().to_string(),
                "frames": f.frames,
                "truncated": f.truncated,
            })).collect::<Vec<_>>(),
            "frames": self.frames,
            "skipped_frames": self.skipped,
            "packets": s.packets,
            "bytes": s.bytes,
            "unparsed": s.unparsed_total(),
            "unguarded": s.unguarded,
            "verdicts": verdicts,
            "matches": matches,
            "bans_added": s.bans_new,
            "unproven": crate::engine::Unproven::ALL.iter().map(|c| (c.name().to_string(), serde_json::json!(s.unproven[*c as usize]))).collect::<serde_json::Map<_, _>>(),
            "banned_count": self.banned.len(),
            "banned_at_end": self.banned.iter().filter(|c| c.live_at_end).count(),
            "banned": banned_sources(self),
            "top_banned": top,
            "recent_tables": self.recent.iter().map(|(name, n)| serde_json::json!({"name": name, "entries": n})).collect::<Vec<_>>(),
            "flows": {
                "new": s.flows_new,
                "bypassed": s.flows_bypassed,
                "evicted": s.flows_evicted,
                "expired": s.flows_expired,
                "refused_segments": s.flow_refused,
            },
            "sessions": {
                "count": s.sessions,
                "packets": s.session_packets,
                "packets_max": s.session_packets_max,
                "packets_median": s.session_packets_median(),
            },
            "smtp": s.smtp_json(),
            "engine_seconds": self.engine_secs,
            "engine_pps": self.engine_pps(),
            "engine_gbps": self.engine_gbps(),
            "capture_seconds": self.capture_secs(),
        })
    }

    fn capture_secs(&self) -> f64 {
        match (self.first_ts, self.last_ts) {
            (Some(a), Some(b)) => b.saturating_sub(a).micros() as f64 / 1e6,
            _ => 0.0,
        }
    }
}

impl fmt::Display for Report {
    /// The human summary.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = &self.stats;
        let n = group;
        writeln!(
            f,
            "replayed {} file(s): {} frames, {} packets, {} bytes over {:.1} s of capture",
            self.files.len(),
            n(self.frames),
            n(s.packets),
            n(s.bytes),
            self.capture_secs()
        )?;
        for file in &self.files {
            if let Some(t) = &file.truncated {
                writeln!(
                    f,
                    "  warning: {}: {t}; the {} frames before the cut were replayed",
                    file.path.display(),
                    n(file.frames)
                )?;
            }
        }
        writeln!(
            f,
            "skipped:  {} non-IP frames, {} unparsed packets, {} not to a protected port",
            n(self.skipped),
            n(s.unparsed_total()),
            n(s.unguarded)
        )?;
        write!(f, "verdicts:")?;
        for v in Verdict::ALL {
            write!(f, " {} {}", v.name(), n(s.verdict(v)))?;
        }
        writeln!(f)?;
        for (i, name) in self.rule_names.iter().enumerate() {
            writeln!(
                f,
                "rule {i} {name:?}: {} matches",
                n(s.matches.get(i).copied().unwrap_or(0))
            )?;
        }
        // Imported iptables rules ban through their recent tables (below), not the lists.
        for (i, name) in self
            .list_names
            .iter()
            .enumerate()
            .filter(|_| self.recent.is_empty())
        {
            writeln!(
                f,
                "list {name:?}: {} packets dropped from banned sources",
                n(s.banned.get(i).copied().unwrap_or(0))
            )?;
        }
        for (name, entries) in &self.recent {
            writeln!(
                f,
                "recent:   table {name:?} holds {} sources at the end (imported iptables rules)",
                n(*entries as u64)
            )?;
        }
        let live = self.banned.iter().filter(|c| c.live_at_end).count() as u64;
        if !self.recent.is_empty() && self.rule_names.is_empty() {
            writeln!(
                f,
                "banned:   {} sources held by the recent tables the rules read ({} still acted on when the capture ends)",
                n(self.banned.len() as u64),
                n(live)
            )?;
        } else {
            writeln!(
                f,
                "banned:   {} distinct sources ({} still banned when the capture ends)",
                n(self.banned.len() as u64),
                n(live)
            )?;
        }
        if !self.banned.is_empty() {
            writeln!(f, "  top sources by packets dropped:")?;
        }
        for c in self.banned.iter().take(10) {
            writeln!(
                f,
                "  {:<40} {:>8} dropped  {} {}",
                c.key.to_string(),
                n(c.dropped),
                if c.list.starts_with("recent:") {
                    "table"
                } else {
                    "list"
                },
                c.list.strip_prefix("recent:").unwrap_or(&c.list)
            )?;
        }
        let unproven: u64 = s.unproven.iter().sum();
        if unproven > 0 {
            writeln!(
                f,
                "unproven: {} matches convicted nobody: no connection {}, no handshake {}, out of window {}, mid-stream {}",
                n(unproven),
                n(s.unproven[0]),
                n(s.unproven[1]),
                n(s.unproven[2]),
                n(s.unproven[3])
            )?;
        }
        if s.flows_new > 0 {
            writeln!(
                f,
                "flows:    {} followed, {} bypassed, {} evicted, {} expired, {} out-of-order segments refused",
                n(s.flows_new),
                n(s.flows_bypassed),
                n(s.flows_evicted),
                n(s.flows_expired),
                n(s.flow_refused)
            )?;
            writeln!(
                f,
                "sessions: {} ended; packets the engine looked at per session: mean {:.1}, median {}, max {}",
                n(s.sessions),
                s.session_packets as f64 / s.sessions.max(1) as f64,
                s.session_packets_median(),
                s.session_packets_max
            )?;
        }
        if s.smtp_messages + s.smtp_bare_newlines + s.smtp_resyncs > 0 {
            writeln!(
                f,
                "smtp:     {} messages read to their end; {} bare CR/LF in bodies (from {} sources), {} bodies ended by the server elsewhere",
                n(s.smtp_messages),
                n(s.smtp_bare_newlines),
                s.smtp_bare_sources.len(),
                n(s.smtp_resyncs)
            )?;
        }
        write!(
            f,
            "engine:   {:.2} M packets/s, {:.2} Gbit/s ({:.3} s in decide, one thread)",
            self.engine_pps() / 1e6,
            self.engine_gbps(),
            self.engine_secs
        )
    }
}

/// `replay FILE [#########...........]  45.1%  801,234 frames  120 MB/s`.
fn progress_line(
    path: &Path,
    done: u64,
    size: u64,
    frames: u64,
    elapsed: std::time::Duration,
) -> String {
    const WIDTH: usize = 30;
    let fraction = if size == 0 {
        1.0
    } else {
        (done as f64 / size as f64).min(1.0)
    };
    let filled = (fraction * WIDTH as f64) as usize;
    let rate = done as f64 / elapsed.as_secs_f64().max(1e-3) / 1e6;
    format!(
        "replay {} [{}{}] {:5.1}%  {} frames  {rate:.0} MB/s",
        path.display(),
        "#".repeat(filled),
        ".".repeat(WIDTH - filled),
        fraction * 100.0,
        group(frames)
    )
}

/// `1234567` → `1,234,567`.
pub fn group(v: u64) -> String {
    let digits = v.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Why a replay stopped.
#[derive(Debug)]
pub enum ReplayError {
    Open { path: PathBuf, source: io::Error },
    Capture { path: PathBuf, source: PcapError },
    UnsupportedLink { path: PathBuf, link: u32 },
    Verdicts { source: io::Error },
}

impl fmt::Display for ReplayError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReplayError::Open { path, source } => write!(f, "{}: {source}", path.display()),
            ReplayError::Capture { path, source } => write!(f, "{}: {source}", path.display()),
            ReplayError::UnsupportedLink { path, link } => write!(
                f,
                "{}: link type {link} is not supported (Ethernet, Linux SLL/SLL2, raw IP, BSD loopback are)",
                path.display()
            ),
            ReplayError::Verdicts { source } => write!(f, "writing the verdict log: {source}"),
        }
    }
}

impl std::error::Error for ReplayError {}

/// A batch of frames waiting for the engine.
#[derive(Default)]
struct Batch {
    data: Vec<u8>,
    frames: Vec<(u64, Instant, std::ops::Range<usize>)>,
    decisions: Vec<Decision>,
    convicted: HashMap<(ListId, Key), Convicted>,
    /// Imported iptables rules: packets dropped or reset, by source.
    ipt_dropped: HashMap<IpAddr, u64>,
}

/// Replays `files` in order through `engine`.
pub fn replay(
    engine: &mut Engine,
    files: &[PathBuf],
    mut options: Options,
) -> Result<Report, ReplayError> {
    let mut report = Report {
        files: Vec::new(),
        frames: 0,
        skipped: 0,
        stats: Stats::default(),
        engine_secs: 0.0,
        first_ts: None,
        last_ts: None,
        rule_names: engine.rules().iter().map(|r| r.name.clone()).collect(),
        list_names: engine
            .blacklist()
            .lists()
            .iter()
            .map(|l| l.config().name.clone())
            .collect(),
        banned: Vec::new(),
        recent: Vec::new(),
    };
    if let Some(out) = options.verdicts.as_mut() {
        writeln!(out, "#index\tsrc\tsport\tdst\tdport\tverdict\treason")
            .map_err(|source| ReplayError::Verdicts { source })?;
    }
    let mut batch = Batch::default();
    for path in files {
        let file_report = replay_file(engine, path, &mut options, &mut batch, &mut report)?;
        report.files.push(file_report);
    }
    // Flows still open at the end of the capture end their sessions here.
    engine.finish();
    report.stats = engine.stats().clone();
    let end = report.last_ts.unwrap_or(Instant::ZERO);
    let mut banned: Vec<Convicted> = batch
        .convicted
        .drain()
        .map(|((list_id, key), mut c)| {
            let list = engine.blacklist().list(list_id);
            c.live_at_end = list.get(key.addr(), end).is_some();
            c
        })
        .collect();
    banned.sort_by(|a, b| b.dropped.cmp(&a.dropped).then(a.key.cmp(&b.key)));
    report.banned = banned;
    if let (Some(tables), Some(chains)) = (engine.recent_tables(), engine.chains()) {
        let t = tables
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        report.recent = t.sizes();
        report.banned = held_as_banned(&t, &chains.recent_windows(), &batch.ipt_dropped, end);
    }
    Ok(report)
}

/// Imported iptables rules ban through their recent tables: every source a table that the rules
/// read holds, with the packets dropped or reset from it, live at the end when a reading rule's
/// `--seconds` (if any) still covers its newest stamp. Most dropped first.
fn held_as_banned(
    tables: &crate::recent::Tables,
    windows: &HashMap<String, Option<u32>>,
    dropped: &HashMap<IpAddr, u64>,
    end: Instant,
) -> Vec<Convicted> {
    // Packets dropped, by table and masked source: one pass over the sources per table.
    let mut by_table: HashMap<&str, HashMap<IpAddr, u64>> = HashMap::new();
    for name in windows.keys() {
        let per = by_table.entry(name.as_str()).or_default();
        for (src, n) in dropped {
            if let Some(m) = tables.masked(name, *src) {
                *per.entry(m).or_default() += n;
            }
        }
    }
    let mut out: Vec<Convicted> = tables
        .held()
        .into_iter()
        .filter_map(|h| {
            let window = windows.get(&h.table)?;
            let key = match h.addr {
                IpAddr::V4(a) => Key::V4 {
                    addr: a.to_bits(),
                    prefix: h.prefix,
                },
                IpAddr::V6(a) => Key::V6 {
                    addr: a.to_bits(),
                    prefix: h.prefix,
                },
            };
            let dropped = by_table
                .get(h.table.as_str())
                .and_then(|m| m.get(&h.addr))
                .copied()
                .unwrap_or(0);
            let live = window.is_none_or(|secs| {
                end.micros().saturating_sub(h.last.micros())
                    <= crate::time::Duration::from_secs(u64::from(secs)).micros()
            });
            Some(Convicted {
                key,
                list: format!("recent:{}", h.table),
                first: h.first,
                convictions: h.stamps as u64,
                dropped,
                live_at_end: live,
            })
        })
        .collect();
    out.sort_by(|a, b| b.dropped.cmp(&a.dropped).then(a.key.cmp(&b.key)));
    out
}

fn replay_file(
    engine: &mut Engine,
    path: &Path,
    options: &mut Options,
    batch: &mut Batch,
    report: &mut Report,
) -> Result<FileReport, ReplayError> {
    let file = File::open(path).map_err(|source| ReplayError::Open {
        path: path.to_path_buf(),
        source,
    })?;
    let size = file.metadata().map(|m| m.len()).unwrap_or(0);
    let capture_err = |source| ReplayError::Capture {
        path: path.to_path_buf(),
        source,
    };
    let mut reader = Reader::new(BufReader::with_capacity(1 << 20, file)).map_err(capture_err)?;
    if let Some(link) = reader.pcap_link()
        && !pcap::linktype::is_supported(link)
    {
        return Err(ReplayError::UnsupportedLink {
            path: path.to_path_buf(),
            link,
        });
    }
    let show_progress = options.progress && size > PROGRESS_BYTES && io::stderr().is_terminal();
    let started = std::time::Instant::now();
    let mut last_progress = started;
    let mut out = FileReport {
        path: path.to_path_buf(),
        frames: 0,
        truncated: None,
    };
    loop {
        batch.data.clear();
        batch.frames.clear();
        let mut done = false;
        while batch.frames.len() < BATCH {
            match reader.next_record() {
                Ok(Some(rec)) => {
                    out.frames += 1;
                    report.frames += 1;
                    match pcap::ip_packet(rec.link, rec.data) {
                        Ok(ip) => {
                            let start = batch.data.len();
                            batch.data.extend_from_slice(ip);
                            batch
                                .frames
                                .push((report.frames, rec.ts, start..batch.data.len()));
                        }
                        Err(Skip::NotIp | Skip::Short | Skip::UnsupportedLink(_)) => {
                            report.skipped += 1
                        }
                    }
                }
                Ok(None) => {
                    done = true;
                    break;
                }
                Err(e @ PcapError::Truncated { .. }) => {
                    out.truncated = Some(e.to_string());
                    done = true;
                    break;
                }
                Err(e) => return Err(capture_err(e)),
            }
        }
        decide_batch(engine, options.hook, batch, report);
        if let Some(w) = options.verdicts.as_mut() {
            write_verdicts(w, batch, engine).map_err(|source| ReplayError::Verdicts { source })?;
        }
        if show_progress && last_progress.elapsed().as_millis() >= 250 {
            last_progress = std::time::Instant::now();
            let line = progress_line(path, reader.offset(), size, out.frames, started.elapsed());
            eprint!("\r{line}");
        }
        if done {
            break;
        }
    }
    if show_progress {
        eprintln!(
            "\r{}",
            progress_line(path, size, size, out.frames, started.elapsed())
        );
    }
    Ok(out)
}

fn decide_batch(
    engine: &mut Engine,
    hook: crate::verdict::Hook,
    batch: &mut Batch,
    report: &mut Report,
) {
    batch.decisions.clear();
    let started = std::time::Instant::now();
    for (_, ts, range) in &batch.frames {
        let decision = engine.decide_at(&batch.data[range.clone()], hook, *ts);
        batch.decisions.push(decision);
    }
    report.engine_secs += started.elapsed().as_secs_f64();
    // Outside the timed loop: attribute convictions and drops to their sources.
    for ((_, ts, range), d) in batch.frames.iter().zip(&batch.decisions) {
        if let (Reason::Iptables { .. }, Verdict::Drop | Verdict::Reset) = (d.reason, d.verdict)
            && let Ok(p) = parse::packet(&batch.data[range.clone()])
        {
            *batch.ipt_dropped.entry(p.src).or_default() += 1;
            continue;
        }
        let (list_id, convicting) = match d.reason {
            Reason::Banned { list } => (list, false),
            Reason::Matched { rule } => match engine.rules()[usize::from(rule)].ban {
                Some(list) => (list, true),
                None => continue,
            },
            _ => continue,
        };
        let Ok(p) = parse::packet(&batch.data[range.clone()]) else {
            continue;
        };
        let list = engine.blacklist().list(list_id);
        let key = list.key(p.src);
        let c = batch
            .convicted
            .entry((list_id, key))
            .or_insert_with(|| Convicted {
                key,
                list: list.config().name.clone(),
                first: *ts,
                convictions: 0,
                dropped: 0,
                live_at_end: false,
            });
        if convicting {
            c.convictions += 1;
        } else {
            c.dropped += 1;
        }
    }
    if let Some((_, ts, _)) = batch.frames.first() {
        report.first_ts = Some(report.first_ts.map_or(*ts, |t| t.min(*ts)));
    }
    if let Some((_, ts, _)) = batch.frames.last() {
        report.last_ts = Some(report.last_ts.map_or(*ts, |t| t.max(*ts)));
    }
}

fn write_verdicts(out: &mut dyn Write, batch: &Batch, engine: &Engine) -> io::Result<()> {
    for ((index, _, range), decision) in batch.frames.iter().zip(&batch.decisions) {
        let bytes = &batch.data[range.clone()];
        let (src, sport, dst, dport) = match parse::packet(bytes) {
            Ok(p) => {
                let (sp, dp) = p
                    .ports()
                    .map_or(("-".to_string(), "-".to_string()), |(s, d)| {
                        (s.to_string(), d.to_string())
                    });
                (p.src.to_string(), sp, p.dst.to_string(), dp)
            }
            Err(_) => ("-".into(), "-".into(), "-".into(), "-".into()),
        };
        // A rule's name is the operator's text: escaped, and no tab to break the columns.
        let reason = reason_text(decision.reason, engine);
        writeln!(
            out,
            "{index}\t{src}\t{sport}\t{dst}\t{dport}\t{}\t{}",
            decision.verdict.name(),
            crate::daemon::printable::printable(&reason).replace('\t', "\\t")
        )?;
    }
    Ok(())
}

/// The reason column of the verdict log.
pub fn reason_text(reason: Reason, engine: &Engine) -> String {
    match reason {
        Reason::Banned { list } => {
            format!("banned:{}", engine.blacklist().list(list).config().name)
        }
        Reason::Clean => "clean".into(),
        Reason::Allowlisted { rule } => {
            format!("allowlisted:{}", engine.rules()[usize::from(rule)].name)
        }
        Reason::Matched { rule } => format!("matched:{}", engine.rules()[usize::from(rule)].name),
        Reason::Unproven { rule, cause } => format!(
            "unproven:{}:{}",
            engine.rules()[usize::from(rule)].name,
            cause.name()
        ),
        Reason::Unguarded => "unguarded".into(),
        Reason::Reply => "reply".into(),
        Reason::Bypassed => "bypassed".into(),
        Reason::FlowLimit => "flow-limit".into(),
        Reason::OutOfWindow => "out-of-window".into(),
        Reason::Iptables { line: Some(l) } => format!("iptables:line{l}"),
        Reason::Iptables { line: None } => "iptables:policy".into(),
        Reason::Unparsed(e) => format!(
            "unparsed:{}",
            match e {
                parse::Error::BadVersion => "bad-version",
                parse::Error::BadHeaderLen => "bad-header-len",
                parse::Error::Truncated => "truncated",
            }
        ),
    }
}

/// The sources a replay convicted, as sorted strings (for tests and `--json`).
pub fn banned_sources(report: &Report) -> Vec<String> {
    let mut keys: Vec<Key> = report.banned.iter().map(|c| c.key).collect();
    keys.sort();
    keys.iter().map(Key::to_string).collect()
}

/// Whether a rule convicted `addr` (or the prefix it falls in) during the replay.
pub fn is_convicted(report: &Report, addr: IpAddr) -> bool {
    report.banned.iter().any(|c| match (c.key, addr) {
        (crate::blacklist::Key::V4 { addr: k, prefix }, IpAddr::V4(a)) => {
            let mask = if prefix == 0 {
                0
            } else {
                u32::MAX << (32 - u32::from(prefix))
            };
            a.to_bits() & mask == k
        }
        (crate::blacklist::Key::V6 { addr: k, prefix }, IpAddr::V6(a)) => {
            let mask = if prefix == 0 {
                0
            } else {
                u128::MAX << (128 - u32::from(prefix))
            };
            a.to_bits() & mask == k
        }
        _ => false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_bar() {
        let line = progress_line(
            Path::new("a.pcap"),
            50,
            100,
            1234,
            std::time::Duration::from_secs(1),
        );
        assert_eq!(
            line,
            "replay a.pcap [###############...............]  50.0%  1,234 frames  0 MB/s"
        );
    }

    #[test]
    fn groups_thousands() {
        assert_eq!(group(0), "0");
        assert_eq!(group(999), "999");
        assert_eq!(group(1_000), "1,000");
        assert_eq!(group(12_345_678), "12,345,678");
    }
}
