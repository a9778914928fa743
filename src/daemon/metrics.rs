//! The daemon's counters: one [`Snapshot`], rendered three ways — the periodic log line
//! ([`Snapshot::line`]), `stringban stats` ([`Snapshot::json`]) and the Prometheus text
//! exposition 0.0.4 ([`render`]) — so the three never drift apart. All three are pure:
//! counters in, text out (tested with strings). [`serve`] answers `GET /metrics` (any path, in
//! fact) over plain HTTP/1.x on an opt-in TCP listener, one response per connection.

use std::fmt::Write as _;
use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};

use crate::blacklist::Blacklist;
use crate::engine::{Stats, Verdict};
use crate::sys::nfqueue::codec::QueueCounters;

/// Upper bounds (seconds) of the decide-latency histogram's buckets; +Inf follows.
pub const LATENCY_BUCKETS: [f64; 10] = [
    100e-9, 250e-9, 500e-9, 1e-6, 2.5e-6, 5e-6, 10e-6, 25e-6, 100e-6, 1e-3,
];

/// A histogram of decide latencies: counts per bucket (the last is +Inf) and the sum.
#[derive(Clone, Debug, Default, Eq, PartialEq)]
pub struct Latency {
    pub buckets: [u64; LATENCY_BUCKETS.len() + 1],
    pub sum_ns: u64,
}

impl Latency {
    pub fn observe(&mut self, ns: u64) {
        let s = ns as f64 / 1e9;
        let i = LATENCY_BUCKETS
            .iter()
            .position(|b| s <= *b)
            .unwrap_or(LATENCY_BUCKETS.len());
        self.buckets[i] += 1;
        self.sum_ns += ns;
    }

    pub fn merge(&mut self, other: &Latency) {
        for (a, b) in self.buckets.iter_mut().zip(other.buckets) {
            *a += b;
        }
        self.sum_ns += other.sum_ns;
    }
}

/// Everything the exposition shows.
pub struct Snapshot<'a> {
    pub engine: &'a Stats,
    pub rule_names: &'a [String],
    pub blacklist: &'a Blacklist,
    pub queues: &'a [QueueCounters],
    pub latency: &'a Latency,
    pub malformed: u64,
    /// Worker wake-ups (the log line's packets per wake-up).
    pub wakeups: u64,
    pub sockets_destroyed: u64,
    pub reset_by_mark: u64,
    /// RSTs crafted toward the protected side (with `reset_by_mark`, where SOCK_DESTROY cannot
    /// or, on a gateway, toward the server behind it).
    pub crafted: u64,
    /// Crafted RSTs that could not be sent (that side of the session was not reset).
    pub crafted_failed: u64,
    /// Packets met in `FORWARD` (a gateway's), and the resets among them.
    pub forwarded: u64,
    pub forwarded_resets: u64,
    /// Resets with no local session of the packet's exact tuple: dropped, nothing destroyed.
    pub reset_no_socket: u64,
    /// The flow memory budget: bytes charged now, the most ever, the limit.
    /// Flow memory: used, peak, limit, and one network's share per worker.
    pub flow_memory: (usize, usize, usize, usize),
    /// Socket lookups for proof of address; refused over the budget; failed.
    pub lookups: u64,
    pub lookups_over_budget: u64,
    pub lookup_errors: u64,
    /// Imported iptables rules: each one's file line and save form, by place in the file (the
    /// engine's `iptables_rules` counters follow the same order).
    pub iptables_rules: &'a [(usize, String)],
    /// Packets the kernel queued as GSO super-packets, and with their checksum not yet filled
    /// in (both normal on locally generated traffic; shown for diagnosis).
    pub gso: u64,
    pub csum_not_ready: u64,
    /// `add --reset`: sessions destroyed on request, and requests that could not reset.
    pub reset_on_request: u64,
    pub reset_failures: u64,
    /// Control connections refused (the pool full) or not accepted (an accept error).
    pub control_refused: u64,
    /// Control commands refused for want of privilege.
    pub control_denied: u64,
    /// Metrics connections closed unanswered (too many, a head too large or too slow).
    pub metrics_refused: u64,
    /// Clients' segments the window check dropped before the queue (outside the TCP window:
    /// forged into a session, or stray); None: no window check.
    pub window_dropped: Option<u64>,
    /// The state directory's health (not shown without one).
    pub store: crate::persist::Status,
}

impl Snapshot<'_> {
    /// The periodic log line.
    pub fn line(&self) -> String {
        let e = self.engine;
        let (qd, ud) = self.queues.iter().fold((0, 0), |(q, u), c| {
            (q + c.queue_dropped, u + c.user_dropped)
        });
        let banned: usize = self.blacklist.lists().iter().map(|l| l.len()).sum();
        format!(
            "packets {} accept {} drop {} reset {} (sockets destroyed {}, by REJECT {} with {} \
             crafted local RSTs) bypass {} bans {} banned-now {} unparsed {} malformed {} kernel \
             queue_dropped {} user_dropped {} avg-batch {:.1} flows {} bypassed {} sessions {} \
             packets/session mean {:.1} max {} gso {} csum-not-ready {} forwarded {} (reset {}) \
             crafted-rst-failures {} unproven {} (no-connection {} no-handshake {} \
             out-of-window {} mid-stream {}) reset-no-socket {} store {}",
            e.packets,
            e.verdict(Verdict::Accept),
            e.verdict(Verdict::Drop),
            e.verdict(Verdict::Reset),
            self.sockets_destroyed,
            self.reset_by_mark,
            self.crafted,
            e.verdict(Verdict::Bypass),
            e.bans_new,
            banned,
            e.unparsed_total(),
            self.malformed,
            qd,
            ud,
            e.packets as f64 / self.wakeups.max(1) as f64,
            e.flows_new,
            e.flows_bypassed,
            e.sessions,
            e.session_packets as f64 / e.sessions.max(1) as f64,
            e.session_packets_max,
            self.gso,
            self.csum_not_ready,
            self.forwarded,
            self.forwarded_resets,
            self.crafted_failed,
            e.unproven.iter().sum::<u64>(),
            e.unproven[0],
            e.unproven[1],
            e.unproven[2],
            e.unproven[3],
            self.reset_no_socket,
            match (&self.store.enabled, self.store.healthy) {
                (false, _) => "none",
                (true, true) => "healthy",
                (true, false) => "FAILING",
            }
        )
    }

    /// `stringban stats`.
    pub fn json(&self) -> serde_json::Value {
        use serde_json::json;
        use std::sync::atomic::Ordering::Relaxed;
        let e = self.engine;
        let lists: Vec<_> = self
            .blacklist
            .lists()
            .iter()
            .map(|l| {
                let s = l.stats();
                json!({
                    "name": l.config().name,
                    "size": l.len(),
                    "added": s.added.load(Relaxed),
                    "renewed": s.renewed.load(Relaxed),
                    "strikes": s.strikes.load(Relaxed),
                    "hits": s.hits.load(Relaxed),
                    "expired": s.expired.load(Relaxed),
                    "evicted": s.evicted.load(Relaxed),
                    "removed": s.removed.load(Relaxed),
                    "peer_refused": s.peer_refused.load(Relaxed),
                })
            })
            .collect();
        let queues: Vec<_> = self
            .queues
            .iter()
            .map(|c| json!({"queue": c.queue, "queue_dropped": c.queue_dropped, "user_dropped": c.user_dropped}))
            .collect();
        json!({
            "packets": e.packets,
            "bytes": e.bytes,
            "verdicts": {
                "accept": e.verdict(Verdict::Accept),
                "bypass": e.verdict(Verdict::Bypass),
                "drop": e.verdict(Verdict::Drop),
                "reset": e.verdict(Verdict::Reset),
            },
            "matches": e.matches.iter().enumerate().map(|(i, n)| json!({
                "rule": i,
                "name": self.rule_names.get(i),
                "matches": n,
            })).collect::<Vec<_>>(),
            "banned_packets": self.blacklist.lists().iter().zip(&e.banned).map(|(l, n)| json!({
                "list": l.name(),
                "packets": n,
            })).collect::<Vec<_>>(),
            "bans_new": e.bans_new,
            "bans_renewed": e.bans_renewed,
            "strikes": e.strikes,
            "allowlisted_packets": e.allowlisted,
            "allowlisted_convictions": e.allowlisted_convictions,
            "unparsed": e.unparsed_total(),
            "malformed": self.malformed,
            "sockets_destroyed": self.sockets_destroyed,
            "reset_by_mark": self.reset_by_mark,
            "crafted_local_rsts": self.crafted,
            "crafted_rst_failures": self.crafted_failed,
            "forwarded_packets": self.forwarded,
            "forwarded_resets": self.forwarded_resets,
            "unproven": crate::engine::Unproven::ALL.iter().map(|c| (c.name().to_string(), json!(e.unproven[*c as usize]))).collect::<serde_json::Map<_, _>>(),
            "reset_no_socket": self.reset_no_socket,
            "out_of_window_segments": e.out_of_window,
            "socket_lookups": {
                "lookups": self.lookups,
                "over_budget": self.lookups_over_budget,
                "errors": self.lookup_errors,
            },
            "iptables_rules": self.iptables_rules.iter().zip(&e.iptables_rules).map(|((line, rule), n)| json!({
                "line": line,
                "rule": rule,
                "packets": n,
            })).collect::<Vec<_>>(),
            "gso_packets": self.gso,
            "csum_not_ready_packets": self.csum_not_ready,
            "wakeups": self.wakeups,
            "flows_new": e.flows_new,
            "flows_evicted": e.flows_evicted,
            "flows_proven_evicted": e.flows_proven_evicted,
            "flows_budget_evicted": e.flows_budget_evicted,
            "flows_share_evicted": e.flows_share_evicted,
            "flows_share_refused": e.flows_share_refused,
            "flow_memory": {
                "used_bytes": self.flow_memory.0,
                "peak_bytes": self.flow_memory.1,
                "limit_bytes": self.flow_memory.2,
                "network_share_bytes": self.flow_memory.3,
            },
            "flows_bypassed": e.flows_bypassed,
            "sessions": e.sessions,
            "session_packets": e.session_packets,
            "smtp": e.smtp_json(),
            "sessions_reset_on_request": self.reset_on_request,
            "reset_on_request_failures": self.reset_failures,
            "control_refused": self.control_refused,
            "control_denied": self.control_denied,
            "metrics_refused": self.metrics_refused,
            "window_dropped": self.window_dropped,
            "store": store_json(&self.store),
            "lists": lists,
            "kernel_queues": queues,
        })
    }
}

/// The store's health for `stats` (null without a state directory).
fn store_json(s: &crate::persist::Status) -> serde_json::Value {
    use serde_json::json;
    if !s.enabled {
        return serde_json::Value::Null;
    }
    let when = |t: u64| if t == 0 { json!(null) } else { json!(t) };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let age = |t: u64| {
        if t == 0 {
            json!(null)
        } else {
            json!(now.saturating_sub(t))
        }
    };
    json!({
        "healthy": s.healthy,
        "errors": s.errors,
        "recoveries": s.recoveries,
        "last_error": if s.last_error.is_empty() { json!(null) } else { json!(s.last_error) },
        "failing_since": when(s.failing_since),
        "pending_records": s.pending,
        "last_fsync": when(s.last_fsync),
        "last_fsync_age_s": age(s.last_fsync),
        "last_snapshot": when(s.last_snapshot),
        "last_snapshot_age_s": age(s.last_snapshot),
    })
}

/// A label value: the exposition format's three escapes, and any other control character
/// (a peer's or a file's text may hold one; the format has no escape for it) as U+FFFD.
fn escape(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c if c.is_control() => out.push('\u{fffd}'),
            c => out.push(c),
        }
    }
    out
}

/// The text exposition of `s`.
pub fn render(s: &Snapshot<'_>) -> String {
    let mut o = String::with_capacity(4096);
    let head = |o: &mut String, name: &str, kind: &str, help: &str| {
        let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} {kind}");
    };
    let e = s.engine;
    head(
        &mut o,
        "stringban_packets_total",
        "counter",
        "Packets decided.",
    );
    let _ = writeln!(o, "stringban_packets_total {}", e.packets);
    head(
        &mut o,
        "stringban_bytes_total",
        "counter",
        "Bytes of the packets decided.",
    );
    let _ = writeln!(o, "stringban_bytes_total {}", e.bytes);
    head(
        &mut o,
        "stringban_verdicts_total",
        "counter",
        "Verdicts, by verdict.",
    );
    for v in Verdict::ALL {
        let _ = writeln!(
            o,
            "stringban_verdicts_total{{verdict=\"{}\"}} {}",
            v.name(),
            e.verdict(v)
        );
    }
    head(
        &mut o,
        "stringban_decisions_total",
        "counter",
        "Packets by the reason of their verdict.",
    );
    let banned: u64 = e.banned.iter().sum();
    let matched: u64 = e.matches.iter().sum();
    for (reason, n) in [
        ("banned", banned),
        ("matched", matched),
        ("unguarded", e.unguarded),
        ("unparsed", e.unparsed_total()),
        ("bypassed", e.verdict(Verdict::Bypass)),
        ("flow_limit", e.flow_refused),
        ("out_of_window", e.out_of_window),
    ] {
        let _ = writeln!(o, "stringban_decisions_total{{reason=\"{reason}\"}} {n}");
    }
    head(
        &mut o,
        "stringban_matches_total",
        "counter",
        "Matches, by rule.",
    );
    for (name, n) in s.rule_names.iter().zip(&e.matches) {
        let _ = writeln!(
            o,
            "stringban_matches_total{{rule=\"{}\"}} {n}",
            escape(name)
        );
    }
    for (name, help, n) in [
        (
            "stringban_allowlisted_packets_total",
            "Packets to a protected port from allowlisted sources.",
            e.allowlisted,
        ),
        (
            "stringban_allowlisted_convictions_total",
            "Rule matches from allowlisted sources (accepted, never banned).",
            e.allowlisted_convictions,
        ),
        (
            "stringban_strikes_total",
            "Convictions counted towards a list's threshold, no ban yet.",
            e.strikes,
        ),
    ] {
        head(&mut o, name, "counter", help);
        let _ = writeln!(o, "{name} {n}");
    }
    head(
        &mut o,
        "stringban_banned_packets_total",
        "counter",
        "Packets dropped because their source was banned, by list.",
    );
    for (l, n) in s.blacklist.lists().iter().zip(&e.banned) {
        let _ = writeln!(
            o,
            "stringban_banned_packets_total{{list=\"{}\"}} {n}",
            escape(&l.config().name)
        );
    }
    let per_list = |o: &mut String,
                    name: &str,
                    kind: &str,
                    help: &str,
                    f: &dyn Fn(&crate::blacklist::List) -> u64| {
        let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for l in s.blacklist.lists() {
            let _ = writeln!(
                o,
                "{name}{{list=\"{}\"}} {}",
                escape(&l.config().name),
                f(l)
            );
        }
    };
    use std::sync::atomic::Ordering::Relaxed;
    per_list(
        &mut o,
        "stringban_bans",
        "gauge",
        "Entries in the list.",
        &|l| l.len() as u64,
    );
    per_list(
        &mut o,
        "stringban_bans_added_total",
        "counter",
        "Bans made.",
        &|l| l.stats().added.load(Relaxed),
    );
    per_list(
        &mut o,
        "stringban_bans_renewed_total",
        "counter",
        "Bans renewed.",
        &|l| l.stats().renewed.load(Relaxed),
    );
    per_list(
        &mut o,
        "stringban_bans_expired_total",
        "counter",
        "Bans expired.",
        &|l| l.stats().expired.load(Relaxed),
    );
    per_list(
        &mut o,
        "stringban_bans_evicted_total",
        "counter",
        "Bans evicted (list full).",
        &|l| l.stats().evicted.load(Relaxed),
    );
    per_list(
        &mut o,
        "stringban_bans_removed_total",
        "counter",
        "Bans removed by hand.",
        &|l| l.stats().removed.load(Relaxed),
    );
    per_list(
        &mut o,
        "stringban_peer_bans_refused_total",
        "counter",
        "Peers' bans not applied: the list was full of this host's own entries.",
        &|l| l.stats().peer_refused.load(Relaxed),
    );
    head(
        &mut o,
        "stringban_flows_total",
        "counter",
        "Flows followed (stream and smtp modes).",
    );
    let _ = writeln!(o, "stringban_flows_total {}", e.flows_new);
    head(
        &mut o,
        "stringban_flows_bypassed_total",
        "counter",
        "Flows let past the queue.",
    );
    let _ = writeln!(o, "stringban_flows_bypassed_total {}", e.flows_bypassed);
    head(
        &mut o,
        "stringban_smtp_messages_total",
        "counter",
        "SMTP message bodies (and BDAT chunks) read to their end (smtp mode).",
    );
    let _ = writeln!(o, "stringban_smtp_messages_total {}", e.smtp_messages);
    head(
        &mut o,
        "stringban_smtp_bare_newlines_total",
        "counter",
        "Bare CR or LF inside SMTP message bodies (never taken as the end of data).",
    );
    let _ = writeln!(
        o,
        "stringban_smtp_bare_newlines_total {}",
        e.smtp_bare_newlines
    );
    head(
        &mut o,
        "stringban_smtp_bare_newlines_by_source",
        "gauge",
        "Bare CR or LF inside SMTP bodies from the sources that sent the most (at most 32).",
    );
    for (src, n) in &e.smtp_bare_sources {
        let _ = writeln!(
            o,
            "stringban_smtp_bare_newlines_by_source{{source=\"{src}\"}} {n}"
        );
    }
    head(
        &mut o,
        "stringban_smtp_resyncs_total",
        "counter",
        "SMTP bodies the server ended where no CRLF.CRLF was seen (the reader followed its replies).",
    );
    let _ = writeln!(o, "stringban_smtp_resyncs_total {}", e.smtp_resyncs);
    head(
        &mut o,
        "stringban_session_packets_total",
        "counter",
        "Packets of ended sessions the engine looked at.",
    );
    let _ = writeln!(o, "stringban_session_packets_total {}", e.session_packets);
    head(
        &mut o,
        "stringban_sessions_total",
        "counter",
        "Sessions ended.",
    );
    let _ = writeln!(o, "stringban_sessions_total {}", e.sessions);
    head(
        &mut o,
        "stringban_resets_total",
        "counter",
        "Resets, by how the local side was reset.",
    );
    let _ = writeln!(
        o,
        "stringban_resets_total{{how=\"sock_destroy\"}} {}",
        s.sockets_destroyed
    );
    let _ = writeln!(
        o,
        "stringban_resets_total{{how=\"reject_mark\"}} {}",
        s.reset_by_mark
    );
    let _ = writeln!(
        o,
        "stringban_resets_total{{how=\"on_request\"}} {}",
        s.reset_on_request
    );
    head(
        &mut o,
        "stringban_crafted_local_rsts_total",
        "counter",
        "RSTs crafted toward the local side where SOCK_DESTROY could not reset it.",
    );
    let _ = writeln!(o, "stringban_crafted_local_rsts_total {}", s.crafted);
    head(
        &mut o,
        "stringban_crafted_rst_failures_total",
        "counter",
        "Crafted RSTs that could not be sent: that side of the session was not reset.",
    );
    let _ = writeln!(
        o,
        "stringban_crafted_rst_failures_total {}",
        s.crafted_failed
    );
    head(
        &mut o,
        "stringban_forwarded_packets_total",
        "counter",
        "Packets queued from FORWARD (a gateway's traffic to the servers behind it).",
    );
    let _ = writeln!(o, "stringban_forwarded_packets_total {}", s.forwarded);
    head(
        &mut o,
        "stringban_forwarded_resets_total",
        "counter",
        "Forwarded flows reset: the kernel's RST to the client, a crafted one to the server.",
    );
    let _ = writeln!(o, "stringban_forwarded_resets_total {}", s.forwarded_resets);
    head(
        &mut o,
        "stringban_unproven_total",
        "counter",
        "Matches that convicted nobody: the source did not prove its address, by cause.",
    );
    for c in crate::engine::Unproven::ALL {
        let _ = writeln!(
            o,
            "stringban_unproven_total{{cause=\"{}\"}} {}",
            c.name(),
            e.unproven[c as usize]
        );
    }
    head(
        &mut o,
        "stringban_flow_memory_bytes",
        "gauge",
        "The flow memory budget: bytes charged now, the most ever charged, the limit.",
    );
    for (what, n) in [
        ("used", s.flow_memory.0),
        ("peak", s.flow_memory.1),
        ("limit", s.flow_memory.2),
        ("network_share", s.flow_memory.3),
    ] {
        let _ = writeln!(o, "stringban_flow_memory_bytes{{what=\"{what}\"}} {n}");
    }
    head(
        &mut o,
        "stringban_flows_evicted_total",
        "counter",
        "Flows evicted: table full or budget, of those proven ones, and unproven ones of a network at its share.",
    );
    let _ = writeln!(
        o,
        "stringban_flows_evicted_total{{kind=\"all\"}} {}",
        e.flows_evicted
    );
    let _ = writeln!(
        o,
        "stringban_flows_evicted_total{{kind=\"budget\"}} {}",
        e.flows_budget_evicted
    );
    let _ = writeln!(
        o,
        "stringban_flows_evicted_total{{kind=\"proven\"}} {}",
        e.flows_proven_evicted
    );
    let _ = writeln!(
        o,
        "stringban_flows_evicted_total{{kind=\"share\"}} {}",
        e.flows_share_evicted
    );
    head(
        &mut o,
        "stringban_flows_share_refused_total",
        "counter",
        "New flows refused: their source network's share of flow memory was all proven sessions.",
    );
    let _ = writeln!(
        o,
        "stringban_flows_share_refused_total {}",
        e.flows_share_refused
    );
    head(
        &mut o,
        "stringban_reset_no_socket_total",
        "counter",
        "Resets for which no local session had the exact tuple: dropped, nothing destroyed.",
    );
    let _ = writeln!(o, "stringban_reset_no_socket_total {}", s.reset_no_socket);
    head(
        &mut o,
        "stringban_socket_lookups_total",
        "counter",
        "Socket lookups for proof of address, by outcome (over_budget: refused, no lookup made).",
    );
    for (what, n) in [
        ("made", s.lookups),
        ("over_budget", s.lookups_over_budget),
        ("failed", s.lookup_errors),
    ] {
        let _ = writeln!(
            o,
            "stringban_socket_lookups_total{{outcome=\"{what}\"}} {n}"
        );
    }
    if !s.iptables_rules.is_empty() {
        head(
            &mut o,
            "stringban_iptables_rule_packets_total",
            "counter",
            "Packets each imported iptables rule matched (rules without a target only count).",
        );
        for ((line, _), n) in s.iptables_rules.iter().zip(&s.engine.iptables_rules) {
            let _ = writeln!(
                o,
                "stringban_iptables_rule_packets_total{{line=\"{line}\"}} {n}"
            );
        }
    }
    head(
        &mut o,
        "stringban_gso_packets_total",
        "counter",
        "Packets queued as GSO super-packets.",
    );
    let _ = writeln!(o, "stringban_gso_packets_total {}", s.gso);
    head(
        &mut o,
        "stringban_csum_not_ready_packets_total",
        "counter",
        "Packets queued with their checksum not yet filled in.",
    );
    let _ = writeln!(
        o,
        "stringban_csum_not_ready_packets_total {}",
        s.csum_not_ready
    );
    head(
        &mut o,
        "stringban_reset_on_request_failures_total",
        "counter",
        "add --reset requests whose sessions could not be reset (the address was banned).",
    );
    let _ = writeln!(
        o,
        "stringban_reset_on_request_failures_total {}",
        s.reset_failures
    );
    head(
        &mut o,
        "stringban_control_refused_total",
        "counter",
        "Control connections refused (too many open or waiting) or not accepted (an accept error).",
    );
    let _ = writeln!(o, "stringban_control_refused_total {}", s.control_refused);
    head(
        &mut o,
        "stringban_control_denied_total",
        "counter",
        "Control commands refused for want of privilege (del, flush, reload by a member of the control group).",
    );
    let _ = writeln!(o, "stringban_control_denied_total {}", s.control_denied);
    head(
        &mut o,
        "stringban_metrics_refused_total",
        "counter",
        "Metrics connections closed unanswered: too many at once, a request head over 16 KiB or not whole within 2 s.",
    );
    let _ = writeln!(o, "stringban_metrics_refused_total {}", s.metrics_refused);
    if let Some(n) = s.window_dropped {
        head(
            &mut o,
            "stringban_window_dropped_total",
            "counter",
            "Clients' segments the window check dropped before the queue: outside the TCP window (forged into a session, or stray), as conntrack judged.",
        );
        let _ = writeln!(o, "stringban_window_dropped_total {n}");
    }
    if s.store.enabled {
        let st = &s.store;
        let rows: [(&str, &str, &str, u64); 6] = [
            (
                "stringban_store_healthy",
                "gauge",
                "1 while the state directory takes every write; 0 during a fault (retried with backoff).",
                u64::from(st.healthy),
            ),
            (
                "stringban_store_errors_total",
                "counter",
                "Journal writes, fsyncs and snapshots that failed (each failed retry counts).",
                st.errors,
            ),
            (
                "stringban_store_recoveries_total",
                "counter",
                "Faults that ended with everything in memory written again.",
                st.recoveries,
            ),
            (
                "stringban_store_pending_records",
                "gauge",
                "Ban changes not yet known to be on disk.",
                st.pending,
            ),
            (
                "stringban_store_last_fsync_timestamp_seconds",
                "gauge",
                "When the journal was last made durable (Unix time).",
                st.last_fsync,
            ),
            (
                "stringban_store_last_snapshot_timestamp_seconds",
                "gauge",
                "When the last snapshot was written (Unix time).",
                st.last_snapshot,
            ),
        ];
        for (name, kind, help, v) in rows {
            head(&mut o, name, kind, help);
            let _ = writeln!(o, "{name} {v}");
        }
    }
    head(
        &mut o,
        "stringban_malformed_total",
        "counter",
        "Malformed netlink messages from the kernel.",
    );
    let _ = writeln!(o, "stringban_malformed_total {}", s.malformed);
    type Pick = fn(&QueueCounters) -> u64;
    let per_queue: [(&str, &str, Pick); 2] = [
        (
            "stringban_queue_dropped_total",
            "Packets the kernel dropped: queue full (nfnetlink_queue queue_dropped).",
            |q| q.queue_dropped,
        ),
        (
            "stringban_queue_user_dropped_total",
            "Packets the kernel dropped: socket buffer full (nfnetlink_queue user_dropped).",
            |q| q.user_dropped,
        ),
    ];
    for (name, help, pick) in per_queue {
        head(&mut o, name, "counter", help);
        for q in s.queues {
            let _ = writeln!(o, "{name}{{queue=\"{}\"}} {}", q.queue, pick(q));
        }
    }
    head(
        &mut o,
        "stringban_decide_seconds",
        "histogram",
        "Time in Engine::decide per packet (every 16th packet timed).",
    );
    let mut cumulative = 0;
    for (i, n) in s.latency.buckets.iter().enumerate() {
        cumulative += n;
        let le = LATENCY_BUCKETS
            .get(i)
            .map_or("+Inf".to_string(), |b| format!("{b:e}"));
        let _ = writeln!(
            o,
            "stringban_decide_seconds_bucket{{le=\"{le}\"}} {cumulative}"
        );
    }
    let _ = writeln!(
        o,
        "stringban_decide_seconds_sum {}",
        s.latency.sum_ns as f64 / 1e9
    );
    let _ = writeln!(o, "stringban_decide_seconds_count {cumulative}");
    o
}

/// The most of a request head read: beyond, the request is answered 431 and closed.
pub const MAX_HEAD: usize = 16 * 1024;
/// A request head must be whole this long after the connection was taken.
pub const HEAD_DEADLINE: std::time::Duration = std::time::Duration::from_secs(2);
/// Scrapes served at once, and connections waiting for a worker; one more is closed.
pub const WORKERS: usize = 8;
pub const WAITING: usize = 32;

/// How a request head ended.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub enum Head {
    /// The blank line that ends it was read.
    Whole,
    /// [`MAX_HEAD`] bytes and no end.
    TooLarge,
    /// The client closed, or was silent past the deadline, before the end.
    Cut,
}

/// Reads a request head: at most [`MAX_HEAD`] bytes, within [`HEAD_DEADLINE`] in all (the
/// socket's read timeout set to what is left before each read), whatever the client sends.
pub fn read_head(stream: &mut TcpStream) -> io::Result<Head> {
    let deadline = std::time::Instant::now() + HEAD_DEADLINE;
    let mut buf = [0u8; 4096];
    let mut seen = 0usize;
    // The last 3 bytes read, to find a blank line across reads.
    let mut tail: Vec<u8> = Vec::with_capacity(4096 + 3);
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return Ok(Head::Cut);
        }
        stream.set_read_timeout(Some(left))?;
        let n = match stream.read(&mut buf) {
            Ok(0) => return Ok(Head::Cut),
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Ok(Head::Cut);
            }
            Err(e) => return Err(e),
        };
        seen += n;
        let keep = tail.len().min(3);
        tail.drain(..tail.len() - keep);
        tail.extend_from_slice(&buf[..n]);
        if tail.windows(4).any(|w| w == b"\r\n\r\n") || tail.windows(2).any(|w| w == b"\n\n") {
            return Ok(Head::Whole);
        }
        if seen >= MAX_HEAD {
            return Ok(Head::TooLarge);
        }
    }
}

/// Answers one HTTP connection: reads its head ([`read_head`]), then writes `body()` (made
/// only for a whole request, so a slow or hostile client costs no rendering). Returns how the
/// head ended.
pub fn respond(mut stream: TcpStream, body: impl FnOnce() -> String) -> io::Result<Head> {
    stream.set_write_timeout(Some(HEAD_DEADLINE))?;
    let head = read_head(&mut stream)?;
    match head {
        Head::Whole => {
            let body = body();
            write!(
                stream,
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            )?;
        }
        Head::TooLarge => {
            write!(
                stream,
                "HTTP/1.1 431 Request Header Fields Too Large\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            )?;
        }
        Head::Cut => return Ok(head),
    }
    stream.flush()?;
    Ok(head)
}

/// Binds the metrics listener.
pub fn bind(addr: &str) -> io::Result<TcpListener> {
    TcpListener::bind(addr)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::blacklist::ListConfig;
    use crate::time::Instant;

    #[test]
    fn label_values_hold_no_control_character() {
        assert_eq!(escape("a\\b\"c\nd"), "a\\\\b\\\"c\\nd");
        assert_eq!(escape("x\u{1b}[2Jy\u{7}"), "x\u{fffd}[2Jy\u{fffd}");
    }

    #[test]
    fn exposition_has_every_family_with_values() {
        let bl = Blacklist::new(vec![ListConfig::new("spam")]);
        bl.list(0)
            .ban("198.18.0.1".parse().unwrap(), Instant::from_secs(1), 0);
        let e = Stats {
            packets: 10,
            verdicts: [6, 1, 2, 1],
            matches: vec![1],
            banned: vec![2],
            ..Stats::default()
        };
        let mut lat = Latency::default();
        lat.observe(300);
        lat.observe(2_000_000);
        let q = [QueueCounters {
            queue: 0,
            queue_dropped: 3,
            user_dropped: 4,
            ..QueueCounters::default()
        }];
        let snap = Snapshot {
            engine: &e,
            rule_names: &["@example.com".to_string()],
            blacklist: &bl,
            queues: &q,
            latency: &lat,
            malformed: 0,
            sockets_destroyed: 1,
            reset_by_mark: 0,
            reset_on_request: 2,
            reset_failures: 0,
            control_refused: 3,
            control_denied: 1,
            metrics_refused: 0,
            window_dropped: Some(3),
            wakeups: 2,
            crafted: 4,
            crafted_failed: 0,
            forwarded: 8,
            forwarded_resets: 1,
            reset_no_socket: 9,
            flow_memory: (1, 2, 3, 4),
            lookups: 11,
            lookups_over_budget: 12,
            lookup_errors: 13,
            iptables_rules: &[],
            gso: 5,
            csum_not_ready: 6,
            store: crate::persist::Status {
                enabled: true,
                healthy: false,
                errors: 2,
                pending: 7,
                ..Default::default()
            },
        };
        let text = render(&snap);
        // The three renderings show the same counters.
        let json = snap.json();
        assert_eq!(json["packets"], 10);
        assert_eq!(json["crafted_local_rsts"], 4);
        assert_eq!(json["gso_packets"], 5);
        assert_eq!(json["csum_not_ready_packets"], 6);
        assert_eq!(json["store"]["pending_records"], 7);
        assert_eq!(json["kernel_queues"][0]["queue_dropped"], 3);
        assert_eq!(json["reset_no_socket"], 9);
        assert_eq!(json["socket_lookups"]["errors"], 13);
        assert_eq!(json["unproven"]["no_connection"], 0);
        let line = snap.line();
        for want in [
            "packets 10 ",
            "with 4 crafted local RSTs",
            "gso 5 csum-not-ready 6 forwarded 8 (reset 1) crafted-rst-failures 0 unproven 0 ",
            "reset-no-socket 9 store FAILING",
            "queue_dropped 3 user_dropped 4",
        ] {
            assert!(line.contains(want), "missing {want:?} in {line}");
        }
        for want in [
            "stringban_packets_total 10\n",
            "stringban_reset_no_socket_total 9\n",
            "stringban_flow_memory_bytes{what=\"limit\"} 3\n",
            "stringban_unproven_total{cause=\"mid_stream\"} 0\n",
            "stringban_socket_lookups_total{outcome=\"over_budget\"} 12\n",
            "stringban_resets_total{how=\"on_request\"} 2\n",
            "stringban_control_refused_total 3\n",
            "stringban_control_denied_total 1\n",
            "stringban_store_healthy 0\n",
            "stringban_crafted_local_rsts_total 4\n",
            "stringban_gso_packets_total 5\n",
            "stringban_csum_not_ready_packets_total 6\n",
            "stringban_store_errors_total 2\n",
            "stringban_store_pending_records 7\n",
            "stringban_verdicts_total{verdict=\"reset\"} 1\n",
            "stringban_decisions_total{reason=\"banned\"} 2\n",
            "stringban_matches_total{rule=\"@example.com\"} 1\n",
            "stringban_bans{list=\"spam\"} 1\n",
            "stringban_bans_added_total{list=\"spam\"} 1\n",
            "stringban_queue_dropped_total{queue=\"0\"} 3\n",
            "stringban_queue_user_dropped_total{queue=\"0\"} 4\n",
            "stringban_decide_seconds_bucket{le=\"5e-7\"} 1\n",
            "stringban_decide_seconds_bucket{le=\"+Inf\"} 2\n",
            "stringban_decide_seconds_count 2\n",
            "# TYPE stringban_decide_seconds histogram\n",
        ] {
            assert!(text.contains(want), "missing {want:?} in\n{text}");
        }
    }

    /// A request head is read within its bounds whatever the client does: whole, too large
    /// (answered 431 after 16 KiB, however much more is sent), or cut (silent, or a byte now and
    /// then, past the deadline).
    #[test]
    fn request_heads_are_bounded_in_size_and_time() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let mut heads = Vec::new();
            for _ in 0..3 {
                let (s, _) = listener.accept().unwrap();
                let t0 = std::time::Instant::now();
                let head = respond(s, || "up 1\n".to_string()).unwrap();
                heads.push((head, t0.elapsed()));
            }
            heads
        });
        let mut c = TcpStream::connect(addr).unwrap();
        c.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let mut answer = String::new();
        c.read_to_string(&mut answer).unwrap();
        assert!(
            answer.starts_with("HTTP/1.1 200") && answer.ends_with("up 1\n"),
            "{answer}"
        );
        let mut c = TcpStream::connect(addr).unwrap();
        let junk = vec![b'x'; 64 * 1024];
        let _ = c.write_all(&junk);
        let mut answer = Vec::new();
        let _ = c.read_to_end(&mut answer);
        assert!(answer.starts_with(b"HTTP/1.1 431"));
        let mut c = TcpStream::connect(addr).unwrap();
        for _ in 0..3 {
            if c.write_all(b"G").is_err() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(900));
        }
        let heads = server.join().unwrap();
        assert_eq!(heads[0].0, Head::Whole);
        assert_eq!(heads[1].0, Head::TooLarge);
        assert_eq!(heads[2].0, Head::Cut);
        assert!(
            heads[2].1 < HEAD_DEADLINE + std::time::Duration::from_millis(300),
            "{:?}",
            heads[2].1
        );
    }
}
