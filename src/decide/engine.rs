//! The decision engine: one packet and `now` in, one [`Decision`] out.
//!
//! ```text
//! bytes ─► parse ─► to a guarded port? ─► source banned? ─► packet rules ─► flow rules ─► Decision
//!            │        │ no: from one, with smtp rules:      yes: Drop     match: ban + action
//!            │        │     the server's reply → its flow   (stream: the in-order byte stream;
//!            │        └ no: Accept                           smtp: envelope commands only)
//!            └─ error: Accept or Drop (policy)              none: Accept, or Bypass once a flow
//!                                                           is past its envelope or budget
//! ```
//!
//! The engine reads no clock, opens no file or socket, and never panics on packet bytes. The
//! blacklist is shared (`Arc`) by every worker; scanner scratch space, the flow table and
//! counters are per worker, so [`Engine::worker`] makes a sibling for another thread (the kernel
//! queues both directions of a flow to the same queue).

use std::sync::Arc;

use memchr::memmem::Finder;

use crate::allow::Allowlist;
use crate::blacklist::{Banned, Blacklist, ListId, RuleId};
use crate::config::Config;
use crate::flow::{
    self, Envelope, Flow, FlowBudget, FlowKey, FlowState, Flows, Handshake, Push, Smtp, slot_bytes,
};
use crate::parse::{self, Packet, Tcp, Transport, tcp_flags};
use crate::rule::{Action, Domain, Mode, Rule, StringMatch};
use crate::scan::{self, Scanner};
use crate::time::Instant;

pub use crate::verdict::{Decision, Hook, Reason, Unproven, Verdict};

pub use crate::config::{EngineConfig, UnparsedPolicy};

/// Per-worker counters. Plain integers: a worker owns its `Stats`; [`Stats::merge`] sums them.
#[derive(Clone, Debug, Default, Eq, PartialEq)]
pub struct Stats {
    pub packets: u64,
    pub bytes: u64,
    /// By `parse::Error`: bad version, bad header length, truncated.
    pub unparsed: [u64; 3],
    pub unguarded: u64,
    /// Packets that are neither TCP nor UDP (or non-first fragments).
    pub other_protocol: u64,
    /// By [`Verdict`] order: accept, bypass, drop, reset.
    pub verdicts: [u64; 4],
    /// Packets dropped because their source was banned, by list.
    pub banned: Vec<u64>,
    /// Matches by rule.
    pub matches: Vec<u64>,
    /// Imported iptables rules: packets each rule matched, by its place in the file.
    pub iptables_rules: Vec<u64>,
    pub bans_new: u64,
    pub bans_renewed: u64,
    /// Matches that convicted nobody for want of proof of address, by [`Unproven`] cause.
    pub unproven: [u64; 4],
    /// Client segments of a proven flow acknowledging what the server never sent: dropped
    /// unread (the server's stack drops them too).
    pub out_of_window: u64,
    /// Convictions counted towards a list's threshold, no ban yet.
    pub strikes: u64,
    /// Packets to a protected port from allowlisted sources, and rule matches in them (never
    /// banned, never dropped or reset).
    pub allowlisted: u64,
    pub allowlisted_convictions: u64,
    /// Flows: started, evicted (table full), expired (idle), bypassed, segments refused.
    pub flows_new: u64,
    pub flows_evicted: u64,
    /// Evicted flows whose client had proven its address (the table held no unproven one).
    pub flows_proven_evicted: u64,
    /// Evicted flows (of `flows_evicted`) to keep all flow state within its memory budget.
    pub flows_budget_evicted: u64,
    /// Unproven flows (of `flows_evicted`) of a source network at its share, evicted for a
    /// new flow of the same network; new flows refused because their network's share was all
    /// proven sessions.
    pub flows_share_evicted: u64,
    pub flows_share_refused: u64,
    pub flows_expired: u64,
    pub flows_bypassed: u64,
    pub flow_refused: u64,
    /// Sessions ended (closed, reset, convicted, bypassed, evicted or expired), the packets the
    /// engine looked at in them, the most in one, and how many had 1, 2, … 31, ≥ 32.
    pub sessions: u64,
    pub session_packets: u64,
    pub session_packets_max: u64,
    pub session_hist: Vec<u64>,
    /// Smtp mode: bare LFs and CRs inside message bodies (never taken as the end of data), the
    /// sources that sent the most of them (at most [`BARE_SOURCES`], most first), server replies
    /// that ended a body where no `CRLF.CRLF` was seen (the reader followed the server), and
    /// messages (bodies and BDAT chunks) read to their end.
    pub smtp_bare_newlines: u64,
    pub smtp_bare_sources: Vec<(std::net::IpAddr, u64)>,
    pub smtp_resyncs: u64,
    pub smtp_messages: u64,
}

/// Most sources kept in [`Stats::smtp_bare_sources`].
pub const BARE_SOURCES: usize = 32;

/// What the shell can see of a packet's connection.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub enum Sighting {
    /// A local socket with exactly this packet's tuple has completed its handshake and takes
    /// the peer's data: the address is the peer's own.
    Established,
    /// No such socket (or the shell will not look: over its lookup budget, a failed lookup).
    Absent,
    /// There is no socket table to ask (a replay; a gateway's `FORWARD`): the flow tracker's
    /// handshake and sequence checks decide.
    Unknown,
}

/// The shell's side of proof of address: asked only when a rule that bans or acts has matched
/// a packet from a source that is not allowlisted — never per packet. The daemon looks the
/// local socket up by the packet's exact tuple (sock_diag); a replay knows no sockets.
pub trait Witness {
    fn sighting(&mut self, packet: &Packet<'_>, hook: Hook) -> Sighting;
}

/// A witness that knows no sockets (replays, tests): the tracker alone proves.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoSockets;

impl Witness for NoSockets {
    fn sighting(&mut self, _: &Packet<'_>, _: Hook) -> Sighting {
        Sighting::Unknown
    }
}

impl Stats {
    fn new(rules: usize, lists: usize) -> Stats {
        Stats {
            matches: vec![0; rules],
            banned: vec![0; lists],
            ..Stats::default()
        }
    }

    pub fn unparsed_total(&self) -> u64 {
        self.unparsed.iter().sum()
    }

    pub fn verdict(&self, v: Verdict) -> u64 {
        self.verdicts[v.index()]
    }

    /// The median packets per ended session (from the histogram; 32 means "32 or more").
    pub fn session_packets_median(&self) -> u64 {
        let half = self.sessions.div_ceil(2);
        let mut seen = 0;
        for (n, count) in self.session_hist.iter().enumerate() {
            seen += count;
            if seen >= half && *count > 0 {
                return n as u64;
            }
        }
        0
    }

    /// Counts a flow evicted (`for_budget`: to keep within the memory budget, else the table
    /// was full), ending its session if it was open.
    fn evicted(&mut self, old: &Flow, for_budget: bool) {
        self.flows_evicted += 1;
        self.flows_budget_evicted += u64::from(for_budget);
        self.flows_proven_evicted += u64::from(old.handshake == Handshake::Done);
        if old.state == FlowState::Open {
            self.end_session(old.packets);
        }
    }

    /// Counts an unproven flow evicted for a new flow of its own network.
    fn evicted_for_share(&mut self, old: &Flow) {
        self.flows_share_evicted += 1;
        self.evicted(old, false);
    }

    fn end_session(&mut self, packets: u32) {
        self.sessions += 1;
        self.session_packets += u64::from(packets);
        self.session_packets_max = self.session_packets_max.max(u64::from(packets));
        let bucket = (packets as usize).min(32);
        if self.session_hist.len() <= bucket {
            self.session_hist.resize(33, 0);
        }
        self.session_hist[bucket] += 1;
    }

    /// The smtp-mode counters as JSON (for `stats` and `replay --json`).
    pub fn smtp_json(&self) -> serde_json::Value {
        let sources: Vec<_> = self
            .smtp_bare_sources
            .iter()
            .map(|(a, n)| serde_json::json!({"source": a.to_string(), "bare_newlines": n}))
            .collect();
        serde_json::json!({
            "messages": self.smtp_messages,
            "bare_newlines": self.smtp_bare_newlines,
            "bare_newline_sources": sources,
            "resyncs": self.smtp_resyncs,
        })
    }

    /// Counts what an SMTP reader saw in one segment of `src`'s session.
    fn smtp_events(&mut self, src: std::net::IpAddr, e: flow::SmtpEvents) {
        self.smtp_resyncs += u64::from(e.resyncs);
        self.smtp_messages += u64::from(e.messages);
        if e.bare_newlines > 0 {
            self.smtp_bare_newlines += u64::from(e.bare_newlines);
            self.bare_source(src, u64::from(e.bare_newlines));
        }
    }

    /// Adds `n` bare newlines to `src`'s count, keeping the [`BARE_SOURCES`] highest counts.
    fn bare_source(&mut self, src: std::net::IpAddr, n: u64) {
        let list = &mut self.smtp_bare_sources;
        match list.iter_mut().find(|(a, _)| *a == src) {
            Some((_, count)) => *count += n,
            None => list.push((src, n)),
        }
        list.sort_by_key(|&(_, count)| std::cmp::Reverse(count));
        list.truncate(BARE_SOURCES);
    }

    /// Adds `other` into `self`.
    pub fn merge(&mut self, other: &Stats) {
        self.smtp_bare_newlines += other.smtp_bare_newlines;
        self.smtp_resyncs += other.smtp_resyncs;
        self.smtp_messages += other.smtp_messages;
        for &(src, n) in &other.smtp_bare_sources {
            self.bare_source(src, n);
        }
        self.packets += other.packets;
        self.bytes += other.bytes;
        self.unguarded += other.unguarded;
        self.other_protocol += other.other_protocol;
        self.bans_new += other.bans_new;
        self.bans_renewed += other.bans_renewed;
        self.out_of_window += other.out_of_window;
        for (a, b) in self.unproven.iter_mut().zip(other.unproven) {
            *a += b;
        }
        self.strikes += other.strikes;
        self.allowlisted += other.allowlisted;
        self.allowlisted_convictions += other.allowlisted_convictions;
        self.flows_new += other.flows_new;
        self.flows_evicted += other.flows_evicted;
        self.flows_proven_evicted += other.flows_proven_evicted;
        self.flows_budget_evicted += other.flows_budget_evicted;
        self.flows_share_evicted += other.flows_share_evicted;
        self.flows_share_refused += other.flows_share_refused;
        self.flows_expired += other.flows_expired;
        self.flows_bypassed += other.flows_bypassed;
        self.flow_refused += other.flow_refused;
        self.sessions += other.sessions;
        self.session_packets += other.session_packets;
        self.session_packets_max = self.session_packets_max.max(other.session_packets_max);
        add_vec(&mut self.session_hist, &other.session_hist);
        for (a, b) in self.unparsed.iter_mut().zip(other.unparsed) {
            *a += b;
        }
        for (a, b) in self.verdicts.iter_mut().zip(other.verdicts) {
            *a += b;
        }
        add_vec(&mut self.matches, &other.matches);
        add_vec(&mut self.iptables_rules, &other.iptables_rules);
        add_vec(&mut self.banned, &other.banned);
    }
}

fn add_vec(a: &mut Vec<u64>, b: &[u64]) {
    if a.len() < b.len() {
        a.resize(b.len(), 0);
    }
    for (x, y) in a.iter_mut().zip(b) {
        *x += y;
    }
}

/// The rules of the flow modes, prepared once per rule set.
#[derive(Clone, Debug)]
struct FlowRules {
    /// Rule index of each flow rule; a flow rule's position here is its bit in `Flow::matched`.
    rules: Vec<usize>,
    /// Stream rules: each one's position (the engine holds a scanner over their patterns).
    stream: Vec<usize>,
    /// Bytes carried between a flow's scans: the longest stream pattern less one.
    carry: usize,
    /// Smtp rules: position, folded-needle finder, or recipient domain.
    smtp: Vec<(usize, Finder<'static>, Option<Domain>)>,
}

impl FlowRules {
    /// The flow rules and, if there are stream rules, a scanner over their whole-buffer patterns.
    fn new(rules: &[Rule]) -> (FlowRules, Option<Scanner>) {
        let flow: Vec<usize> = (0..rules.len())
            .filter(|&i| rules[i].mode.is_flow())
            .collect();
        let stream_pos: Vec<usize> = (0..flow.len())
            .filter(|&p| rules[flow[p]].mode == Mode::Stream)
            .collect();
        let whole: Vec<StringMatch> = stream_pos
            .iter()
            .map(|&p| StringMatch {
                from: 0,
                to: u16::MAX,
                invert: false,
                ..rules[flow[p]].matcher.clone()
            })
            .collect();
        let carry = whole
            .iter()
            .map(|m| m.pattern.len().saturating_sub(1))
            .max()
            .unwrap_or(0);
        let smtp = (0..flow.len())
            .filter(|&p| rules[flow[p]].mode == Mode::Smtp)
            .map(|p| {
                let r = &rules[flow[p]];
                let mut folded = Vec::new();
                scan::fold(&r.matcher.pattern, &mut folded);
                (p, Finder::new(&folded).into_owned(), r.rcpt_domain.clone())
            })
            .collect();
        let refs: Vec<&StringMatch> = whole.iter().collect();
        let scanner = (!refs.is_empty()).then(|| Scanner::new(&refs));
        (
            FlowRules {
                rules: flow,
                stream: stream_pos,
                carry,
                smtp,
            },
            scanner,
        )
    }
}

/// Decides packets. See the module documentation.
#[derive(Debug)]
pub struct Engine {
    config: EngineConfig,
    rules: Arc<[Rule]>,
    blacklist: Arc<Blacklist>,
    scanner: Scanner,
    /// Any packet-mode rule?
    packet_rules: bool,
    flow_rules: Arc<FlowRules>,
    stream_scanner: Option<Scanner>,
    flows: Flows,
    /// The memory budget of all flow state (shared by the workers: [`Engine::worker`],
    /// [`Engine::share_flow_budget`]); the same `Arc` as `flows`'.
    budget: Arc<FlowBudget>,
    /// Imported iptables rules (`--iptables`), run instead of the rules above.
    chains: Option<crate::chains::Chains>,
    /// No flow can be idle long enough to expire before this ([`Engine::expire`]).
    expire_due: Instant,
    /// Scratch: a flow's carry plus its new in-order bytes; a folded SMTP path.
    scratch: Vec<u8>,
    folded: Vec<u8>,
    stats: Stats,
    /// Sources never banned (shared by the workers, replaced on reload).
    allow: Arc<Allowlist>,
}

impl Engine {
    /// An engine with a fresh blacklist built from `config`'s lists.
    pub fn new(config: &Config) -> Engine {
        let blacklist = Arc::new(Blacklist::new(config.lists.clone()));
        Engine::with_blacklist(config, blacklist)
    }

    /// An engine deciding with `config`'s rules over an existing blacklist (whose lists must
    /// be `config.lists`, in order).
    pub fn with_blacklist(config: &Config, blacklist: Arc<Blacklist>) -> Engine {
        let rules: Arc<[Rule]> = config.rules.clone().into();
        let matchers: Vec<_> = rules.iter().map(|r| &r.matcher).collect();
        let scanner = Scanner::new(&matchers);
        let mut stats = Stats::new(rules.len(), blacklist.lists().len());
        let chains = config.iptables.as_ref().map(|i| i.chains.with_own_tables());
        stats.iptables_rules = vec![0; chains.as_ref().map_or(0, |c| c.rule_count())];
        let (flow_rules, stream_scanner) = FlowRules::new(&rules);
        let flow_rules = Arc::new(flow_rules);
        let budget = Arc::new(config.engine.flow_budget());
        Engine {
            config: config.engine.clone(),
            packet_rules: rules.iter().any(|r| r.mode == Mode::Packet),
            rules,
            blacklist,
            scanner,
            flows: Flows::new(config.engine.max_flows, Arc::clone(&budget)),
            budget,
            flow_rules,
            stream_scanner,
            chains,
            expire_due: Instant::from_micros(0),
            scratch: Vec::new(),
            folded: Vec::new(),
            stats,
            allow: Arc::clone(&config.allow.list),
        }
    }

    /// Never bans (nor drops, nor resets) sources in `allow`.
    pub fn set_allowlist(&mut self, allow: Arc<Allowlist>) {
        self.allow = allow;
    }

    pub fn allowlist(&self) -> &Arc<Allowlist> {
        &self.allow
    }

    /// A sibling for another worker thread: same rules and blacklist, own scratch and counters.
    pub fn worker(&self) -> Engine {
        Engine {
            config: self.config.clone(),
            rules: Arc::clone(&self.rules),
            blacklist: Arc::clone(&self.blacklist),
            scanner: self.scanner.clone(),
            packet_rules: self.packet_rules,
            flow_rules: Arc::clone(&self.flow_rules),
            stream_scanner: self.stream_scanner.clone(),
            chains: self.chains.clone(),
            expire_due: Instant::from_micros(0),
            flows: Flows::new(self.config.max_flows, Arc::clone(&self.budget)),
            budget: Arc::clone(&self.budget),
            scratch: Vec::new(),
            folded: Vec::new(),
            stats: Stats {
                iptables_rules: vec![0; self.stats.iptables_rules.len()],
                ..Stats::new(self.rules.len(), self.blacklist.lists().len())
            },
            allow: Arc::clone(&self.allow),
        }
    }

    /// Imported iptables rules, if any.
    pub fn chains(&self) -> Option<&crate::chains::Chains> {
        self.chains.as_ref()
    }

    /// The recent tables of imported iptables rules, if any.
    pub fn recent_tables(&self) -> Option<Arc<std::sync::Mutex<crate::recent::Tables>>> {
        self.chains.as_ref().map(|c| Arc::clone(c.recent()))
    }

    /// Makes imported iptables rules use `tables` (shared by every worker and kept across
    /// reloads, as one network namespace's tables are).
    pub fn share_recent_tables(&mut self, tables: Arc<std::sync::Mutex<crate::recent::Tables>>) {
        if let Some(c) = self.chains.as_mut() {
            c.share_recent(tables);
        }
    }

    /// Makes this engine's flow state count against `budget`, shared with other engines (the
    /// daemon's workers, across reloads). Call it before the first packet: flows tracked so far
    /// are forgotten.
    pub fn share_flow_budget(&mut self, budget: Arc<FlowBudget>) {
        self.flows = Flows::new(self.config.max_flows, Arc::clone(&budget));
        self.budget = budget;
    }

    /// The flow memory budget this engine charges.
    pub fn flow_budget(&self) -> &Arc<FlowBudget> {
        &self.budget
    }

    /// Flows tracked now.
    pub fn flows(&self) -> &Flows {
        &self.flows
    }

    /// Do the rules follow flows (stream or smtp mode)?
    pub fn follows_flows(&self) -> bool {
        !self.flow_rules.rules.is_empty()
    }

    /// Do the rules read the server's replies (smtp mode)?
    pub fn reads_replies(&self) -> bool {
        !self.flow_rules.smtp.is_empty()
    }

    /// Ends every tracked flow (counting its session): at the end of a replay.
    pub fn finish(&mut self) {
        while let Some(f) = self.flows.pop_oldest() {
            if f.state == FlowState::Open {
                self.stats.end_session(f.packets);
            }
        }
    }

    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    pub fn blacklist(&self) -> &Arc<Blacklist> {
        &self.blacklist
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Decides one packet (starting at its IP header) at `now`.
    ///
    /// Side effects, all in memory: a match bans the source in the rule's list; a packet from a
    /// banned source counts as a hit on the ban (and refreshes it if the list says so).
    pub fn decide(&mut self, packet: &[u8], now: Instant) -> Decision {
        self.decide_at(packet, Hook::Input, now)
    }

    /// [`Engine::decide`] for a packet met at `hook`: imported iptables rules run that hook's
    /// chain (stringban's own rules judge a forwarded packet as one to this host).
    pub fn decide_at(&mut self, packet: &[u8], hook: Hook, now: Instant) -> Decision {
        self.decide_seen(packet, hook, now, &mut NoSockets)
    }

    /// [`Engine::decide_at`] with a witness of this host's sockets: a match convicts only a
    /// source that proved its address (the witness's established socket, or a handshake the
    /// tracker saw it complete); the witness is asked only then.
    pub fn decide_seen(
        &mut self,
        packet: &[u8],
        hook: Hook,
        now: Instant,
        witness: &mut dyn Witness,
    ) -> Decision {
        let decision = self.judge(packet, hook, now, witness);
        self.stats.packets += 1;
        self.stats.bytes += packet.len() as u64;
        self.stats.verdicts[decision.verdict.index()] += 1;
        decision
    }

    fn judge(
        &mut self,
        bytes: &[u8],
        hook: Hook,
        now: Instant,
        witness: &mut dyn Witness,
    ) -> Decision {
        let packet = match parse::packet(bytes) {
            Ok(p) => p,
            Err(e) => {
                self.stats.unparsed[e as usize] += 1;
                let verdict = match self.config.on_unparsed {
                    UnparsedPolicy::Accept => Verdict::Accept,
                    UnparsedPolicy::Drop => Verdict::Drop,
                };
                return Decision {
                    verdict,
                    reason: Reason::Unparsed(e),
                };
            }
        };
        if let Some(chains) = self.chains.as_mut() {
            if self.allow.contains(packet.src) {
                self.stats.allowlisted += 1;
                return Decision {
                    verdict: Verdict::Accept,
                    reason: Reason::Clean,
                };
            }
            let v = chains.decide(&packet, hook, now, &mut self.stats.iptables_rules);
            return Decision {
                verdict: v.verdict,
                reason: Reason::Iptables {
                    line: v.line.map(|l| u32::try_from(l).unwrap_or(u32::MAX)),
                },
            };
        }
        let guarded = match packet.transport {
            Transport::Tcp(t) => {
                let to_guarded = self.config.ports.contains(t.dport);
                if !to_guarded && self.follows_flows() && self.config.ports.contains(t.sport) {
                    return self.flow_server(&packet, t, now);
                }
                to_guarded
            }
            Transport::Udp { .. } | Transport::Fragment | Transport::Other => {
                self.stats.other_protocol +=
                    u64::from(!matches!(packet.transport, Transport::Udp { .. }));
                self.config.ports.is_any()
            }
        };
        if !guarded {
            self.stats.unguarded += 1;
            return Decision {
                verdict: Verdict::Accept,
                reason: Reason::Unguarded,
            };
        }
        let allowed = self.allow.contains(packet.src);
        self.stats.allowlisted += u64::from(allowed);
        for (id, list) in self.blacklist.lists().iter().enumerate() {
            if !allowed && list.check(packet.src, now) {
                self.stats.banned[id] += 1;
                // Lists are indexed by ListId (u16) when the config is built.
                let list = id as ListId;
                return Decision {
                    verdict: Verdict::Drop,
                    reason: Reason::Banned { list },
                };
            }
        }
        let rules = &self.rules;
        let hit = if self.packet_rules {
            self.scanner.first_match(bytes, |i| {
                rules[i].mode == Mode::Packet && rules[i].admits(&packet)
            })
        } else {
            None
        };
        if let Some(index) = hit {
            let rule = &self.rules[index];
            // Packet mode has no tracker: only a socket can vouch, and a segment without ACK
            // belongs to no established connection. With no socket table (a replay, FORWARD)
            // the match convicts as the kernel's would.
            let proof = if allowed || !rule.acts() || !self.config.proof {
                Ok(())
            } else if let Transport::Tcp(t) = packet.transport
                && t.flags & tcp_flags::ACK == 0
            {
                Err(Unproven::NoConnection)
            } else {
                match witness.sighting(&packet, hook) {
                    Sighting::Absent => Err(Unproven::NoConnection),
                    Sighting::Established | Sighting::Unknown => Ok(()),
                }
            };
            return match proof {
                Ok(()) => convict(
                    rule,
                    index,
                    &packet,
                    now,
                    &self.blacklist,
                    &mut self.stats,
                    allowed,
                ),
                Err(cause) => unproven(index, cause, &mut self.stats),
            };
        }
        if let Transport::Tcp(t) = packet.transport
            && self.follows_flows()
        {
            return self.flow_client(&packet, t, hook, now, allowed, witness);
        }
        Decision {
            verdict: Verdict::Accept,
            reason: Reason::Clean,
        }
    }

    /// Forgets flows idle longer than the configured time (from the least recently seen).
    /// Nothing can expire before `expire_due` (the least recently seen flow's time plus the idle
    /// time, when last looked at), so most packets skip the look at the table's cold ends.
    fn expire(&mut self, now: Instant) {
        if now < self.expire_due {
            return;
        }
        loop {
            let Some(seen) = self.flows.oldest_seen() else {
                self.expire_due = now.saturating_add(self.config.flow_idle);
                break;
            };
            let due = seen.saturating_add(self.config.flow_idle);
            if due >= now {
                self.expire_due = due;
                break;
            }
            if let Some(f) = self.flows.pop_oldest() {
                self.stats.flows_expired += 1;
                if f.state == FlowState::Open {
                    self.stats.end_session(f.packets);
                }
            }
        }
    }

    /// Removes a flow, counting its session if it was still open.
    fn end_flow(&mut self, key: &FlowKey) {
        if let Some(f) = self.flows.remove(key)
            && f.state == FlowState::Open
        {
            self.stats.end_session(f.packets);
        }
    }

    /// A client segment of a flow-mode flow. One table lookup in the common case; an in-order
    /// segment with nothing held is read where it lies when no stream rule needs the carry.
    fn flow_client(
        &mut self,
        packet: &Packet<'_>,
        t: Tcp,
        hook: Hook,
        now: Instant,
        allowed: bool,
        witness: &mut dyn Witness,
    ) -> Decision {
        let decision = self.flow_client_segment(packet, t, hook, now, allowed, witness);
        self.within_budget();
        decision
    }

    /// A server segment of a followed flow (see [`Engine::flow_server_segment`]).
    fn flow_server(&mut self, packet: &Packet<'_>, t: Tcp, now: Instant) -> Decision {
        let decision = self.flow_server_segment(packet, t, now);
        self.within_budget();
        decision
    }

    /// Over the memory budget (this worker's flows grew, or another's): evicts this worker's
    /// flows, unproven first, until it is back within.
    fn within_budget(&mut self) {
        if !self.budget.over() {
            return;
        }
        let stats = &mut self.stats;
        self.flows.make_room(0, |old| stats.evicted(&old, true));
    }

    fn flow_client_segment(
        &mut self,
        packet: &Packet<'_>,
        t: Tcp,
        hook: Hook,
        now: Instant,
        allowed: bool,
        witness: &mut dyn Witness,
    ) -> Decision {
        let clean = Decision {
            verdict: Verdict::Accept,
            reason: Reason::Clean,
        };
        self.expire(now);
        let key = FlowKey::new(packet.src, t.sport, packet.dst, t.dport);
        let payload = packet.payload();
        let syn = t.flags & tcp_flags::SYN != 0 && t.flags & tcp_flags::ACK == 0;
        let rst = t.flags & tcp_flags::RST != 0;
        let fin = t.flags & tcp_flags::FIN != 0;
        let Engine {
            flows,
            scratch,
            folded,
            stats,
            stream_scanner,
            flow_rules,
            config,
            budget,
            ..
        } = self;
        let fr: &FlowRules = flow_rules;
        let flow = match flows.get(&key) {
            Some(flow) => flow,
            None => {
                // Only a SYN or data opens a flow: stray ACKs, FINs and RSTs do not fill the table.
                if rst || (!syn && payload.is_empty()) {
                    return clean;
                }
                let smtp = (!fr.smtp.is_empty()).then(|| Smtp::new(syn));
                // A network at its share makes room among its own unproven flows; one whose
                // share is all proven sessions opens no more until one ends.
                if !flows.admit(&key, |old| stats.evicted_for_share(&old)) {
                    stats.flows_share_refused += 1;
                    return Decision {
                        verdict: Verdict::Drop,
                        reason: Reason::FlowLimit,
                    };
                }
                // A full budget makes room: unproven flows go first.
                flows.make_room(slot_bytes(), |old| stats.evicted(&old, true));
                if let Some(old) = flows.insert(key, Flow::new(now, smtp, syn)) {
                    stats.evicted(&old, false);
                }
                stats.flows_new += 1;
                match flows.get(&key) {
                    Some(flow) => flow,
                    None => return clean,
                }
            }
        };
        if let FlowState::Refused(cause) = flow.state {
            flow.last_seen = now;
            let pos = flow.matched.trailing_zeros() as usize;
            let rule = fr.rules.get(pos).copied().unwrap_or(0);
            return Decision {
                verdict: Verdict::Drop,
                // Rules are indexed by RuleId (u16) when the config is built.
                reason: Reason::Unproven {
                    rule: rule as RuleId,
                    cause,
                },
            };
        }
        if let Err(decided) = touch(flow, now) {
            return decided;
        }
        if syn {
            // A SYN (re)starts a flow not yet proven; on a proven one it is a stray (the
            // server's stack answers it with a challenge ACK), never a reason to forget.
            if flow.handshake < Handshake::SynAck
                || (flow.handshake == Handshake::SynAck
                    && flow.client.next() != Some(t.seq.wrapping_add(1)))
            {
                flow.client.syn(t.seq);
                flow.handshake = Handshake::Syn;
            }
        }
        let flow = if !syn
            && flow.handshake == Handshake::SynAck
            && t.flags & tcp_flags::ACK != 0
            && flow.acks_what_the_server_sent(t.ack)
        {
            // Proven: from now on it outlives every flow that is not.
            flow.handshake = Handshake::Done;
            match flows.promote(&key) {
                Some(flow) => flow,
                None => return clean,
            }
        } else {
            flow
        };
        // A proven flow's data must acknowledge only what the server sent, or its stack drops
        // it: so do we, unread, leaving the flow as it was (a forger who knows the tuple and
        // guesses the sequence neither convicts the client nor moves the stream under it).
        if !payload.is_empty()
            && flow.handshake == Handshake::Done
            && (t.flags & tcp_flags::ACK == 0 || !flow.acks_what_the_server_sent(t.ack))
        {
            stats.out_of_window += 1;
            return Decision {
                verdict: Verdict::Drop,
                reason: Reason::OutOfWindow,
            };
        }
        let mut hit = None;
        if !payload.is_empty() {
            let seq = data_seq(&t);
            let fresh: &[u8] = if stream_scanner.is_none()
                && let Some(bytes) = flow.client.in_order(seq, payload)
            {
                bytes
            } else {
                scratch.clear();
                scratch.extend_from_slice(&flow.carry);
                let carry_len = scratch.len();
                // Only a proven client may make us hold bytes ahead of a gap (a forger's flows
                // hold nothing), and only within the budget; refused, TCP sends them again.
                let may_hold = flow.handshake == Handshake::Done
                    && budget.fits(payload.len())
                    && flow.net_fits(payload.len());
                match flow.client.push_within(seq, payload, scratch, may_hold) {
                    Push::Refused => {
                        stats.flow_refused += 1;
                        return Decision {
                            verdict: Verdict::Drop,
                            reason: Reason::FlowLimit,
                        };
                    }
                    Push::Old | Push::Held => &[],
                    Push::Data => {
                        if let Some(scanner) = stream_scanner.as_mut() {
                            let (matched, positions) = (flow.matched, &fr.stream);
                            hit = scan_stream(scanner, scratch, |k| {
                                matched & (1 << positions[k]) == 0
                            })
                            .map(|k| positions[k]);
                            let keep = fr.carry.min(scratch.len());
                            flow.carry.clear();
                            flow.carry
                                .extend_from_slice(&scratch[scratch.len() - keep..]);
                        }
                        &scratch[carry_len..]
                    }
                }
            };
            flow.client_bytes = flow
                .client_bytes
                .saturating_add(u32::try_from(fresh.len()).unwrap_or(u32::MAX));
            if hit.is_none()
                && !fresh.is_empty()
                && let Some(smtp) = flow.smtp.as_mut()
            {
                let matched = flow.matched;
                smtp.client(fresh, |env, path| {
                    hit = smtp_match(fr, matched, env, path, folded);
                    hit.is_some()
                });
                stats.smtp_events(packet.src, smtp.take_events());
            }
            budget.recharge(flow);
        }
        if let Some(pos) = hit {
            flow.matched |= 1 << pos;
            let index = fr.rules[pos];
            let rule = &self.rules[index];
            if !allowed
                && rule.acts()
                && self.config.proof
                && let Err(cause) = prove(flow, &t, || witness.sighting(packet, hook))
            {
                if cause != Unproven::MidStream {
                    flow.state = FlowState::Refused(cause);
                    flow.shed();
                    self.budget.recharge(flow);
                    self.stats.end_session(flow.packets);
                }
                return unproven(index, cause, &mut self.stats);
            }
            let decision = convict(
                &self.rules[index],
                index,
                packet,
                now,
                &self.blacklist,
                &mut self.stats,
                allowed,
            );
            if decision.verdict != Verdict::Accept {
                self.end_flow(&key);
            }
            return decision;
        }
        // Without smtp rules the server's side is not followed: the client's FIN ends the flow.
        if rst || (fin && (flow.server_fin || fr.smtp.is_empty())) {
            self.end_flow(&key);
            return clean;
        }
        flow.client_fin |= fin;
        if bypass_due(config, fr, flow) {
            return self.bypass(&key);
        }
        clean
    }

    /// A server segment of a followed flow: its handshake and sequence numbers, and in smtp
    /// mode its replies.
    fn flow_server_segment(&mut self, packet: &Packet<'_>, t: Tcp, now: Instant) -> Decision {
        let reply = Decision {
            verdict: Verdict::Accept,
            reason: Reason::Reply,
        };
        // Stream mode reads nothing of the server but its sequence numbers: a pure ACK moves
        // none (the live rules do not even queue it), so it needs no lookup.
        if self.flow_rules.smtp.is_empty()
            && packet.payload().is_empty()
            && t.flags & (tcp_flags::SYN | tcp_flags::FIN | tcp_flags::RST) == 0
        {
            return reply;
        }
        self.expire(now);
        let key = FlowKey::new(packet.dst, t.dport, packet.src, t.sport);
        let rst = t.flags & tcp_flags::RST != 0;
        let fin = t.flags & tcp_flags::FIN != 0;
        let Engine {
            flows,
            scratch,
            stats,
            flow_rules,
            config,
            budget,
            ..
        } = self;
        // The client's packets keep the flow's place in the recency order; the server's only
        // refresh its time (a flow whose server alone talks is at worst expired a little late).
        let Some(flow) = flows.peek(&key) else {
            return reply;
        };
        if let Err(decided) = touch(flow, now) {
            return decided;
        }
        let payload = packet.payload();
        if t.flags & tcp_flags::SYN != 0 {
            // The SYN-ACK must acknowledge the client's SYN; its ISN is what the client must
            // then acknowledge to prove its address.
            if flow.handshake == Handshake::Syn
                && t.flags & tcp_flags::ACK != 0
                && flow.client.next() == Some(t.ack)
            {
                flow.server.syn(t.seq);
                flow.handshake = Handshake::SynAck;
                flow.server_isn = t.seq;
                flow.server_high = t.seq.wrapping_add(1);
            }
        } else if flow.handshake >= Handshake::SynAck {
            let end = t
                .seq
                .wrapping_add(payload.len() as u32)
                .wrapping_add(u32::from(t.flags & tcp_flags::FIN != 0));
            if flow::before(flow.server_high, end) {
                flow.server_high = end;
            }
        }
        let may_hold = budget.fits(payload.len()) && flow.net_fits(payload.len());
        if !payload.is_empty()
            && let Some(smtp) = flow.smtp.as_mut()
        {
            let seq = data_seq(&t);
            let fresh: &[u8] = match flow.server.in_order(seq, payload) {
                Some(bytes) => bytes,
                None => {
                    scratch.clear();
                    match flow.server.push_within(seq, payload, scratch, may_hold) {
                        Push::Data => scratch,
                        // The server's stream has a gap we will not fill: stop pairing replies.
                        Push::Refused => {
                            smtp.desync();
                            &[]
                        }
                        Push::Old | Push::Held => &[],
                    }
                }
            };
            if !fresh.is_empty() {
                smtp.server(fresh);
                stats.smtp_events(packet.dst, smtp.take_events());
            }
            budget.recharge(flow);
        }
        if rst || (fin && flow.client_fin) {
            self.end_flow(&key);
            return reply;
        }
        flow.server_fin |= fin;
        if bypass_due(config, flow_rules, flow) {
            return self.bypass(&key);
        }
        reply
    }

    /// Marks a flow bypassed: its session ends here as far as the queue is concerned.
    fn bypass(&mut self, key: &FlowKey) -> Decision {
        if let Some(flow) = self.flows.get(key) {
            flow.state = FlowState::Bypassed;
            flow.shed();
            self.budget.recharge(flow);
            let packets = flow.packets;
            self.stats.flows_bypassed += 1;
            self.stats.end_session(packets);
        }
        Decision {
            verdict: Verdict::Bypass,
            reason: Reason::Bypassed,
        }
    }
}

/// Marks a packet of `flow` seen at `now` and counts it, when the flow is open; a packet of a
/// bypassed flow (kept, small, until idle: packets in flight when the connmark took over, and a
/// capture's last ACKs) is bypassed like the rest.
fn touch(flow: &mut Flow, now: Instant) -> Result<(), Decision> {
    flow.last_seen = now;
    if flow.state == FlowState::Bypassed {
        return Err(Decision {
            verdict: Verdict::Bypass,
            reason: Reason::Bypassed,
        });
    }
    flow.packets = flow.packets.saturating_add(1);
    Ok(())
}

/// The sequence number of a segment's first data byte (a SYN takes one).
fn data_seq(t: &Tcp) -> u32 {
    if t.flags & tcp_flags::SYN != 0 {
        t.seq.wrapping_add(1)
    } else {
        t.seq
    }
}

/// Is an open flow due to bypass: encrypted after STARTTLS (smtp rules only), or past its
/// budget? A plaintext SMTP session never bypasses: another transaction can follow any message.
fn bypass_due(config: &EngineConfig, fr: &FlowRules, flow: &Flow) -> bool {
    if !config.bypass || flow.state != FlowState::Open {
        return false;
    }
    let budget = config.bypass_after > 0 && u64::from(flow.client_bytes) >= config.bypass_after;
    let opaque = fr.stream.is_empty() && flow.smtp.as_ref().is_some_and(Smtp::opaque);
    budget || opaque
}

/// Scans a stream buffer (carry + new bytes) with the stream scanner, in windows the scanner's
/// 16-bit offsets can address, overlapping by the longest pattern.
fn scan_stream(
    scanner: &mut Scanner,
    buf: &[u8],
    mut candidate: impl FnMut(usize) -> bool,
) -> Option<usize> {
    const WINDOW: usize = u16::MAX as usize;
    let mut start = 0;
    loop {
        let end = (start + WINDOW).min(buf.len());
        if let Some(k) = scanner.first_match(&buf[start..end], &mut candidate) {
            return Some(k);
        }
        if end == buf.len() {
            return None;
        }
        // Patterns are at most 128 bytes: overlap the windows by that much.
        start = end - 128;
    }
}

/// The first smtp rule (not yet matched in this flow) that a MAIL FROM / RCPT TO path matches.
fn smtp_match(
    fr: &FlowRules,
    matched: u64,
    env: Envelope,
    path: &[u8],
    folded: &mut Vec<u8>,
) -> Option<usize> {
    let mut folded_ready = false;
    for (pos, finder, domain) in &fr.smtp {
        if matched & (1 << pos) != 0 {
            continue;
        }
        let hit = match domain {
            Some(d) => env == Envelope::RcptTo && flow::domain(path).is_some_and(|x| d.matches(x)),
            None => {
                if !folded_ready {
                    scan::fold(path, folded);
                    folded_ready = true;
                }
                finder.find(folded).is_some()
            }
        };
        if hit {
            return Some(*pos);
        }
    }
    None
}

/// Has the client of `flow` proven its address for segment `t`? The flow must be followed from
/// its SYN (else its bytes may be a body); then an established local socket proves it, and
/// where there is no socket table to ask, the handshake the tracker saw it complete does —
/// with a segment that acknowledges only what the server sent.
fn prove(flow: &Flow, t: &Tcp, witness: impl FnOnce() -> Sighting) -> Result<(), Unproven> {
    if flow.handshake == Handshake::MidStream {
        return Err(Unproven::MidStream);
    }
    let tracked = flow.handshake == Handshake::Done;
    if tracked && (t.flags & tcp_flags::ACK == 0 || !flow.acks_what_the_server_sent(t.ack)) {
        return Err(Unproven::OutOfWindow);
    }
    match witness() {
        Sighting::Established => Ok(()),
        Sighting::Absent => Err(Unproven::NoConnection),
        Sighting::Unknown if tracked => Ok(()),
        Sighting::Unknown => Err(Unproven::NoHandshake),
    }
}

/// A rule matched, but the source did not prove its address: counted, nobody banned or reset.
/// The packet is dropped (its sender may be forging it), except mid-stream, where its bytes
/// may be a body of a real session: accepted.
fn unproven(index: usize, cause: Unproven, stats: &mut Stats) -> Decision {
    stats.matches[index] += 1;
    stats.unproven[cause as usize] += 1;
    Decision {
        verdict: if cause == Unproven::MidStream {
            Verdict::Accept
        } else {
            Verdict::Drop
        },
        // Rules are indexed by RuleId (u16) when the config is built.
        reason: Reason::Unproven {
            rule: index as RuleId,
            cause,
        },
    }
}

/// A rule matched `packet`: ban its source (if the rule bans) and turn the action into a
/// verdict.
fn convict(
    rule: &Rule,
    index: usize,
    packet: &Packet<'_>,
    now: Instant,
    blacklist: &Blacklist,
    stats: &mut Stats,
    allowed: bool,
) -> Decision {
    stats.matches[index] += 1;
    // Rules are indexed by RuleId (u16) when the config is built.
    let rule_id = index as RuleId;
    if allowed {
        stats.allowlisted_convictions += 1;
        return Decision {
            verdict: Verdict::Accept,
            reason: Reason::Allowlisted { rule: rule_id },
        };
    }
    if let Some(list) = rule.ban {
        match blacklist.list(list).ban(packet.src, now, rule_id) {
            Banned::New => stats.bans_new += 1,
            Banned::Renewed | Banned::Shared => stats.bans_renewed += 1,
            Banned::Strike(_) => stats.strikes += 1,
        }
    }
    let verdict = match rule.action {
        Action::Drop => Verdict::Drop,
        Action::Log => Verdict::Accept,
        Action::Reject => Verdict::Reset,
    };
    Decision {
        verdict,
        reason: Reason::Matched { rule: rule_id },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Flags;
    use crate::craft::{tcp_flags_segment, tcp_segment};
    use crate::script::{Script, Shape, Step};
    use std::net::{IpAddr, Ipv4Addr};

    const T0: Instant = Instant::from_secs(1_000_000);
    const SERVER: (IpAddr, u16) = (IpAddr::V4(Ipv4Addr::new(198, 18, 0, 1)), 25);

    fn client(i: u8) -> (IpAddr, u16) {
        (IpAddr::V4(Ipv4Addr::new(198, 19, 0, i)), 40_000)
    }

    fn engine(mode: &str, action: &str, tweak: impl FnOnce(&mut Flags)) -> Engine {
        let mut flags = Flags {
            string: vec!["@example.com".into()],
            mode: Some(mode.into()),
            action: Some(action.into()),
            ports: vec![25],
            ..Flags::default()
        };
        tweak(&mut flags);
        Engine::new(&Config::build(None, &flags).expect("valid flags"))
    }

    /// The server's initial sequence number in [`handshake`].
    const SERVER_ISN: u32 = 5_000;

    fn said(e: &mut Engine, from: (IpAddr, u16), seq: u32, payload: &[u8]) -> Decision {
        e.decide(&tcp_segment(from, SERVER, seq, SERVER_ISN + 1, payload), T0)
    }

    /// A handshake the client completes: SYN (`isn`), the server's SYN-ACK, the client's ACK.
    fn handshake(e: &mut Engine, from: (IpAddr, u16), isn: u32) {
        let syn = tcp_flags_segment(from, SERVER, isn, 0, tcp_flags::SYN, b"");
        assert_eq!(e.decide(&syn, T0).verdict, Verdict::Accept);
        let syn_ack = tcp_flags_segment(
            SERVER,
            from,
            SERVER_ISN,
            isn + 1,
            tcp_flags::SYN | tcp_flags::ACK,
            b"",
        );
        let _ = e.decide(&syn_ack, T0);
        let ack = tcp_flags_segment(from, SERVER, isn + 1, SERVER_ISN + 1, tcp_flags::ACK, b"");
        assert_eq!(e.decide(&ack, T0).verdict, Verdict::Accept);
    }

    /// A witness that answers the same for every packet (the daemon's sockets, in a test).
    struct Says(Sighting, u32);

    impl Witness for Says {
        fn sighting(&mut self, _: &Packet<'_>, _: Hook) -> Sighting {
            self.1 += 1;
            self.0
        }
    }

    #[test]
    fn packet_mode_verdict_paths() {
        let mut e = engine("packet", "reject", |_| {});
        // Not to a protected port: not looked at.
        let other = tcp_segment(client(1), (SERVER.0, 80), 1, 1, b"RCPT TO:<a@example.com>");
        let d = e.decide(&other, T0);
        assert_eq!((d.verdict, d.reason), (Verdict::Accept, Reason::Unguarded));
        // Clean, then a match that bans, then the banned source's next packets dropped.
        let d = said(&mut e, client(1), 1, b"MAIL FROM:<a@hosted.test>\r\n");
        assert_eq!((d.verdict, d.reason), (Verdict::Accept, Reason::Clean));
        let d = said(&mut e, client(1), 30, b"RCPT TO:<victim@example.com>\r\n");
        assert_eq!(
            (d.verdict, d.reason),
            (Verdict::Reset, Reason::Matched { rule: 0 })
        );
        let syn = tcp_flags_segment(client(1), SERVER, 7, 0, 0x02, b"");
        let d = e.decide(&syn, T0);
        assert_eq!(
            (d.verdict, d.reason),
            (Verdict::Drop, Reason::Banned { list: 0 })
        );
        // Another source is not affected; counters follow.
        let d = said(&mut e, client(2), 1, b"hello\r\n");
        assert_eq!(d.verdict, Verdict::Accept);
        let s = e.stats();
        assert_eq!(s.packets, 5);
        assert_eq!(s.verdict(Verdict::Reset), 1);
        assert_eq!(s.verdict(Verdict::Drop), 1);
        assert_eq!(s.bans_new, 1);
        // A drop rule drops instead of resetting.
        let mut e = engine("packet", "drop", |_| {});
        let d = said(&mut e, client(3), 1, b"RCPT TO:<victim@example.com>\r\n");
        assert_eq!(d.verdict, Verdict::Drop);
        assert!(e.blacklist().list(0).get(client(3).0, T0).is_some());
    }

    /// An allowlisted source sending the string is counted, accepted and never banned, in every
    /// mode; a ban it already had does not bite; a threshold delays the ban, not the action.
    #[test]
    fn allowlisted_sources_are_never_banned() {
        for mode in ["packet", "stream", "smtp"] {
            let mut e = engine(mode, "reject", |f| f.allow = vec!["198.19.0.0/30".into()]);
            e.blacklist().list(0).ban(client(1).0, T0, 0);
            handshake(&mut e, client(1), 99);
            let d = said(&mut e, client(1), 100, b"RCPT TO:<victim@example.com>\r\n");
            assert_eq!(
                (d.verdict, d.reason),
                (Verdict::Accept, Reason::Allowlisted { rule: 0 }),
                "{mode}"
            );
            assert_eq!(e.stats().allowlisted, 3, "{mode}");
            assert_eq!(e.stats().allowlisted_convictions, 1, "{mode}");
            assert_eq!(e.stats().bans_new, 0, "{mode}");
            // Outside the allowlist: convicted as ever.
            handshake(&mut e, client(9), 99);
            let d = said(&mut e, client(9), 100, b"RCPT TO:<victim@example.com>\r\n");
            assert_eq!(d.verdict, Verdict::Reset, "{mode}");
            assert!(e.blacklist().list(0).get(client(9).0, T0).is_some());
        }
        let mut e = engine("packet", "reject", |f| f.threshold = Some(2));
        let d = said(&mut e, client(3), 1, b"RCPT TO:<v@example.com>\r\n");
        assert_eq!(d.verdict, Verdict::Reset);
        assert_eq!((e.stats().strikes, e.stats().bans_new), (1, 0));
        let d = said(&mut e, client(3), 40, b"RCPT TO:<v@example.com>\r\n");
        assert_eq!(d.verdict, Verdict::Reset);
        assert_eq!((e.stats().strikes, e.stats().bans_new), (1, 1));
    }

    #[test]
    fn the_unparsed_policy_decides_bytes_that_are_no_packet() {
        let garbage = [0x45u8, 0, 0, 3];
        let mut e = engine("packet", "reject", |_| {});
        let d = e.decide(&garbage, T0);
        assert_eq!(d.verdict, Verdict::Accept);
        assert!(matches!(d.reason, Reason::Unparsed(_)));
        let mut flags = Flags {
            string: vec!["x".into()],
            ..Flags::default()
        };
        flags.ports = vec![25];
        let mut config = Config::build(None, &flags).expect("valid flags");
        config.engine.on_unparsed = UnparsedPolicy::Drop;
        let mut e = Engine::new(&config);
        let d = e.decide(&garbage, T0);
        assert_eq!(d.verdict, Verdict::Drop);
        assert!(matches!(d.reason, Reason::Unparsed(_)));
        assert_eq!(e.stats().unparsed_total(), 1);
    }

    /// A smtp-mode session after STARTTLS (answered 220) is bypassed; without bypass it stays
    /// queued and accepted.
    #[test]
    fn bypass_after_starttls_and_no_bypass() {
        let mut s = Script::new(client(4), SERVER);
        for (c, text) in [
            (false, &b"220 mx.hosted.test ESMTP\r\n"[..]),
            (true, b"EHLO x\r\n"),
            (false, b"250 ok\r\n"),
            (true, b"STARTTLS\r\n"),
            (false, b"220 go ahead\r\n"),
            (true, b"\x16\x03\x01 encrypted bytes @example.com"),
        ] {
            s.steps.push(if c {
                Step::Client(text.to_vec())
            } else {
                Step::Server(text.to_vec())
            });
        }
        let last = |e: &mut Engine| {
            let mut last = None;
            for f in s.packets(Shape::WHOLE, T0) {
                last = Some(e.decide(&f.ip, f.ts));
            }
            last.expect("packets")
        };
        let d = last(&mut engine("smtp", "reject", |_| {}));
        assert_eq!((d.verdict, d.reason), (Verdict::Bypass, Reason::Bypassed));
        let mut e = engine("smtp", "reject", |f| f.no_bypass = true);
        let d = last(&mut e);
        assert_eq!(d.verdict, Verdict::Accept);
        assert!(e.blacklist().list(0).get(client(4).0, T0).is_none());
    }

    /// Stream mode: a pattern cut across segments is found; a segment too far ahead of the
    /// stream is dropped (TCP sends it again) rather than skipped.
    #[test]
    fn stream_mode_joins_segments_and_bounds_what_it_holds() {
        let mut e = engine("stream", "reject", |_| {});
        handshake(&mut e, client(5), 99);
        let d = said(&mut e, client(5), 100, b"RCPT TO:<v@exam");
        assert_eq!(d.verdict, Verdict::Accept);
        let d = said(&mut e, client(5), 115, b"ple.com>\r\n");
        assert_eq!(
            (d.verdict, d.reason),
            (Verdict::Reset, Reason::Matched { rule: 0 })
        );

        let mut e = engine("stream", "reject", |_| {});
        let syn = tcp_flags_segment(client(6), SERVER, 99, 0, 0x02, b"");
        assert_eq!(e.decide(&syn, T0).verdict, Verdict::Accept);
        let far = 100 + crate::flow::MAX_AHEAD + 10;
        let d = said(&mut e, client(6), far, b"later bytes");
        assert_eq!((d.verdict, d.reason), (Verdict::Drop, Reason::FlowLimit));
        assert!(e.blacklist().list(0).get(client(6).0, T0).is_none());
    }

    /// One segment with the string from a forged source, no connection behind it, convicts
    /// nobody in any mode: packet mode asks the witness (no socket: dropped, counted), the flow
    /// modes never saw the flow start (mid-stream: accepted, its bytes may be a body).
    #[test]
    fn a_segment_with_no_connection_convicts_nobody() {
        for mode in ["packet", "stream", "smtp"] {
            let mut e = engine(mode, "reject", |_| {});
            let mut w = Says(Sighting::Absent, 0);
            let seg = tcp_segment(client(7), SERVER, 1234, 99, b"RCPT TO:<v@example.com>\r\n");
            let d = e.decide_seen(&seg, Hook::Input, T0, &mut w);
            assert!(
                matches!(d.reason, Reason::Unproven { rule: 0, .. }),
                "{mode}: {d:?}"
            );
            assert_ne!(d.verdict, Verdict::Reset, "{mode}");
            assert!(
                e.blacklist().list(0).get(client(7).0, T0).is_none(),
                "{mode}"
            );
            assert_eq!(e.stats().bans_new, 0, "{mode}");
            assert_eq!(e.stats().unproven.iter().sum::<u64>(), 1, "{mode}");
        }
        // Without proof (`--no-proof`: a load generator's forged sources), the match convicts.
        let mut e = engine("packet", "reject", |f| f.no_proof = true);
        let seg = tcp_segment(client(7), SERVER, 1234, 99, b"RCPT TO:<v@example.com>\r\n");
        let d = e.decide_seen(&seg, Hook::Input, T0, &mut Says(Sighting::Absent, 0));
        assert_eq!(
            (d.verdict, d.reason),
            (Verdict::Reset, Reason::Matched { rule: 0 })
        );
        // A segment without ACK belongs to no established connection: no lookup is made.
        let mut e = engine("packet", "reject", |_| {});
        let mut w = Says(Sighting::Established, 0);
        let syn_data = tcp_flags_segment(client(7), SERVER, 1, 0, tcp_flags::SYN, b"@example.com");
        let d = e.decide_seen(&syn_data, Hook::Input, T0, &mut w);
        assert_eq!(
            d.reason,
            Reason::Unproven {
                rule: 0,
                cause: Unproven::NoConnection
            }
        );
        assert_eq!(w.1, 0);
    }

    /// A blind handshake — SYN, then an ACK that guesses the server's sequence number, then
    /// data — proves nothing: without a socket to ask, only a client that acknowledged the
    /// SYN-ACK it received is convicted.
    #[test]
    fn a_blind_handshake_proves_nothing() {
        for mode in ["stream", "smtp"] {
            let mut e = engine(mode, "reject", |_| {});
            let from = client(8);
            let syn = tcp_flags_segment(from, SERVER, 99, 0, tcp_flags::SYN, b"");
            let _ = e.decide(&syn, T0);
            let syn_ack = tcp_flags_segment(
                SERVER,
                from,
                SERVER_ISN,
                100,
                tcp_flags::SYN | tcp_flags::ACK,
                b"",
            );
            let _ = e.decide(&syn_ack, T0);
            // The forger never saw the SYN-ACK: its ACK guesses.
            let guess = SERVER_ISN.wrapping_add(1_000_000);
            let d = e.decide(
                &tcp_segment(from, SERVER, 100, guess, b"RCPT TO:<v@example.com>\r\n"),
                T0,
            );
            assert_eq!(
                d.reason,
                Reason::Unproven {
                    rule: 0,
                    cause: Unproven::NoHandshake
                },
                "{mode}"
            );
            assert_eq!(d.verdict, Verdict::Drop, "{mode}");
            assert!(e.blacklist().list(0).get(from.0, T0).is_none(), "{mode}");
            // The same bytes from a client that completed the handshake: convicted.
            let mut e = engine(mode, "reject", |_| {});
            handshake(&mut e, from, 99);
            let d = said(&mut e, from, 100, b"RCPT TO:<v@example.com>\r\n");
            assert_eq!(
                (d.verdict, d.reason),
                (Verdict::Reset, Reason::Matched { rule: 0 }),
                "{mode}"
            );
        }
    }

    /// In INPUT the local socket is the proof: a flow-mode client whose SYN-ACK the tracker
    /// never saw is convicted when its socket is established, and not when there is none.
    #[test]
    fn an_established_socket_is_the_proof_where_there_is_one() {
        for (sighting, convicted) in [(Sighting::Established, true), (Sighting::Absent, false)] {
            let mut e = engine("stream", "reject", |_| {});
            let mut w = Says(sighting, 0);
            let syn = tcp_flags_segment(client(9), SERVER, 99, 0, tcp_flags::SYN, b"");
            let _ = e.decide_seen(&syn, Hook::Input, T0, &mut w);
            let seg = tcp_segment(client(9), SERVER, 100, 77, b"RCPT TO:<v@example.com>\r\n");
            let d = e.decide_seen(&seg, Hook::Input, T0, &mut w);
            assert_eq!(
                d.verdict == Verdict::Reset,
                convicted,
                "{sighting:?}: {d:?}"
            );
            assert_eq!(w.1, 1, "asked once, at the match");
        }
    }

    /// Data acknowledging what the server never sent is outside the connection's window: a
    /// forger who knows the tuple but not the sequence numbers convicts nobody.
    #[test]
    fn a_guessed_sequence_number_convicts_nobody() {
        let mut e = engine("smtp", "reject", |_| {});
        let from = client(10);
        handshake(&mut e, from, 99);
        let far = SERVER_ISN.wrapping_add(1 << 30);
        let rcpt = b"RCPT TO:<v@example.com>\r\n";
        let d = e.decide(&tcp_segment(from, SERVER, 100, far, rcpt), T0);
        assert_eq!((d.verdict, d.reason), (Verdict::Drop, Reason::OutOfWindow));
        assert!(e.blacklist().list(0).get(from.0, T0).is_none());
        assert_eq!(e.stats().out_of_window, 1);
        // The stream did not move: the client's own segment at that sequence is read.
        let d = said(&mut e, from, 100, b"RCPT TO:<w@hosted.test>\r\n");
        assert_eq!((d.verdict, d.reason), (Verdict::Accept, Reason::Clean));
        // A guessed sequence number far from the stream is never read either.
        let d = said(&mut e, from, 100u32.wrapping_add(1 << 31), rcpt);
        assert_eq!(d.verdict, Verdict::Drop);
        assert!(e.blacklist().list(0).get(from.0, T0).is_none());
    }

    /// A flood of forged one-packet flows fills the table with unproven flows; a full table
    /// evicts those first, so a session whose client proved its address is kept, and a body
    /// line that reads like a command in it is still body text.
    #[test]
    fn a_flood_of_forged_flows_never_evicts_a_proven_session() {
        let mut e = engine("smtp", "reject", |f| f.max_flows = Some(64));
        let from = client(11);
        handshake(&mut e, from, 99);
        let (mut seq, mut seen) = (100, SERVER_ISN + 1);
        let server = |e: &mut Engine, seen: &mut u32, seq: u32, text: &[u8]| {
            let _ = e.decide(&tcp_segment(SERVER, from, *seen, seq, text), T0);
            *seen += text.len() as u32;
        };
        server(&mut e, &mut seen, seq, b"220 hi\r\n");
        for (c, reply) in [
            (&b"MAIL FROM:<a@b.test>\r\n"[..], &b"250 ok\r\n"[..]),
            (b"RCPT TO:<c@hosted.test>\r\n", b"250 ok\r\n"),
            (b"DATA\r\n", b"354 go\r\n"),
        ] {
            let d = e.decide(&tcp_segment(from, SERVER, seq, seen, c), T0);
            assert_eq!(d.verdict, Verdict::Accept);
            seq += c.len() as u32;
            server(&mut e, &mut seen, seq, reply);
        }
        for i in 0..1000u32 {
            let forged = (
                IpAddr::V4(Ipv4Addr::from(0xC613_0000 + i)),
                1024 + (i % 60000) as u16,
            );
            let _ = e.decide(&tcp_segment(forged, SERVER, i, i, b"x"), T0);
        }
        assert!(e.stats().flows_evicted >= 900);
        assert_eq!(e.flows().proven_evicted(), 0);
        let body = b"RCPT TO:<quoted@example.com> is just text\r\n";
        let d = e.decide(&tcp_segment(from, SERVER, seq, seen, body), T0);
        assert_eq!((d.verdict, d.reason), (Verdict::Accept, Reason::Clean));
        assert!(e.blacklist().list(0).get(from.0, T0).is_none());
    }

    /// All flow state stays within its memory budget: a flood of forged flows holding partial
    /// lines is evicted (unproven first), out-of-order bytes from flows that never completed a
    /// handshake are never held, and the proven session survives it all.
    #[test]
    fn flow_state_stays_within_its_memory_budget() {
        let mut e = engine("smtp", "reject", |f| {
            f.flow_memory = Some("1M".into());
            f.max_flows = Some(1 << 20);
        });
        let from = client(12);
        handshake(&mut e, from, 99);
        let line = [b'a'; 1400];
        for i in 0..20_000u32 {
            let forged = (IpAddr::V4(Ipv4Addr::from(0xC613_0000 + i)), 2000);
            // The SYN fixes the sequence; a segment ahead of it would be held: refused.
            let syn = tcp_flags_segment(forged, SERVER, i, 0, tcp_flags::SYN, b"");
            let _ = e.decide(&syn, T0);
            let ahead = tcp_segment(forged, SERVER, i + 5000, 0, &line);
            assert_eq!(e.decide(&ahead, T0).verdict, Verdict::Drop);
            // In order: a partial command line, kept until the budget evicts the flow.
            let _ = e.decide(&tcp_segment(forged, SERVER, i + 1, 0, &line), T0);
            assert!(
                e.flow_budget().used() <= (1 << 20) + 4096,
                "{i}: {}",
                e.flow_budget().used()
            );
        }
        // Evicted for the budget, or first for their own network's share (the forged
        // sources are 78 networks of 256 addresses; the proven client is in the first).
        let st = e.stats();
        assert!(st.flows_budget_evicted + st.flows_share_evicted > 15_000);
        assert!(st.flows_share_evicted > 0);
        assert_eq!(st.flows_proven_evicted, 0);
        assert!(e.flow_budget().peak() <= (1 << 20) + 4096);
        // The proven client is still followed from its start: its RCPT convicts.
        let d = said(&mut e, from, 100, b"RCPT TO:<v@example.com>\r\n");
        assert_eq!(d.verdict, Verdict::Reset);
        // Every byte charged is given back when the engine goes.
        let budget = Arc::clone(e.flow_budget());
        drop(e);
        assert_eq!(budget.used(), 0);
    }

    /// A forger who spoofs addresses of a victim's network fills that network's share with
    /// unproven flows: its new flows push out only its own unproven ones (oldest first), so the
    /// victim's proven session is kept, a new connection of the victim's is admitted and
    /// proven, and other networks never notice.
    #[test]
    fn a_forger_filling_a_networks_share_never_pushes_out_its_proven_sessions() {
        let mut e = engine("smtp", "reject", |f| {
            f.flow_memory = Some("8M".into());
            f.flow_share = Some("64K".into());
            f.max_flows = Some(1 << 20);
        });
        let victim = client(11);
        handshake(&mut e, victim, 99);
        for i in 0..5_000u32 {
            let forged = (
                IpAddr::V4(Ipv4Addr::new(198, 19, 0, (i % 250) as u8)),
                1024 + i as u16,
            );
            let syn = tcp_flags_segment(forged, SERVER, i, 0, tcp_flags::SYN, b"");
            assert_eq!(e.decide(&syn, T0).verdict, Verdict::Accept, "{i}");
            let net = e.flows().network_bytes(victim.0);
            assert!(net <= (64 << 10) + 2 * slot_bytes(), "{i}: {net}");
        }
        assert!(e.stats().flows_share_evicted > 4_000);
        assert_eq!(e.stats().flows_share_refused, 0);
        assert_eq!(e.stats().flows_proven_evicted, 0);
        // Another network's flows are untouched by it.
        let other = (IpAddr::V4(Ipv4Addr::new(198, 18, 7, 7)), 5555);
        handshake(&mut e, other, 1);
        // The victim's new connection gets in, proves itself, and is followed.
        let again = (victim.0, 40_001);
        handshake(&mut e, again, 500);
        let d = said(&mut e, again, 501, b"RCPT TO:<v@hosted.test>\r\n");
        assert_eq!((d.verdict, d.reason), (Verdict::Accept, Reason::Clean));
        // And the first session is still known from its start: its RCPT convicts.
        let d = said(&mut e, victim, 100, b"RCPT TO:<v@example.com>\r\n");
        assert_eq!(d.verdict, Verdict::Reset);
        let budget = Arc::clone(e.flow_budget());
        drop(e);
        assert_eq!(budget.used(), 0, "every network's entry is given back");
    }

    /// A network that fills its share with sessions it proved gets no more flows until one
    /// ends (its SYNs are dropped, counted); other networks open theirs as before.
    #[test]
    fn a_network_whose_share_is_all_proven_sessions_opens_no_more() {
        let mut e = engine("stream", "reject", |f| {
            f.flow_memory = Some("8M".into());
            f.flow_share = Some("64K".into());
            f.max_flows = Some(1 << 20);
        });
        let addr = IpAddr::V4(Ipv4Addr::new(198, 19, 3, 1));
        let mut refused = None;
        for port in 1000..3000u16 {
            let syn = tcp_flags_segment((addr, port), SERVER, 7, 0, tcp_flags::SYN, b"");
            let d = e.decide(&syn, T0);
            if d.verdict == Verdict::Drop {
                assert_eq!(d.reason, Reason::FlowLimit);
                refused = Some(port);
                break;
            }
            handshake(&mut e, (addr, port), 7);
        }
        let port = refused.expect("the share ran out");
        assert!(usize::from(port - 1000) * slot_bytes() <= 64 << 10);
        assert_eq!(e.stats().flows_share_refused, 1);
        assert_eq!(e.stats().flows_proven_evicted, 0);
        // Another network is not refused.
        let other = (IpAddr::V4(Ipv4Addr::new(198, 19, 4, 1)), 1000);
        let syn = tcp_flags_segment(other, SERVER, 7, 0, tcp_flags::SYN, b"");
        assert_eq!(e.decide(&syn, T0).verdict, Verdict::Accept);
        // One session ends (RST): the network may open one again.
        let rst = tcp_flags_segment((addr, 1000), SERVER, 8, 0, tcp_flags::RST, b"");
        let _ = e.decide(&rst, T0);
        let syn = tcp_flags_segment((addr, port), SERVER, 7, 0, tcp_flags::SYN, b"");
        assert_eq!(e.decide(&syn, T0).verdict, Verdict::Accept);
    }

    /// Out-of-order bytes count against the network's share: proven sessions of one network
    /// hold bytes ahead of a gap only while their network is within it.
    #[test]
    fn held_bytes_count_against_their_networks_share() {
        let mut e = engine("stream", "reject", |f| {
            f.flow_memory = Some("8M".into());
            f.flow_share = Some("64K".into());
        });
        let addr = IpAddr::V4(Ipv4Addr::new(198, 19, 5, 1));
        let ahead = [b'a'; 1400];
        let mut held = 0usize;
        let mut refused = false;
        for port in 1000..1100u16 {
            handshake(&mut e, (addr, port), 7);
            // Bytes 1000 past the stream's next: held, until the share is spent.
            let d = said(&mut e, (addr, port), 1008, &ahead);
            if d.reason == Reason::FlowLimit {
                refused = true;
                break;
            }
            held += ahead.len();
        }
        assert!(refused, "held {held}");
        assert!(e.flows().network_bytes(addr) <= (64 << 10) + ahead.len() + 4096);
        // Another network still may hold.
        let other = (IpAddr::V4(Ipv4Addr::new(198, 19, 6, 1)), 1000);
        handshake(&mut e, other, 7);
        let d = said(&mut e, other, 1008, &ahead);
        assert_eq!(d.verdict, Verdict::Accept);
    }

    #[test]
    fn networks_are_a_slash_24_and_a_slash_48() {
        let n = |a: &str| flow::network(a.parse().expect("an address"));
        assert_eq!(n("198.19.0.1"), n("198.19.0.254"));
        assert_ne!(n("198.19.0.1"), n("198.19.1.1"));
        assert_eq!(n("2001:db8:1::1"), n("2001:db8:1:ffff::2"));
        assert_ne!(n("2001:db8:1::1"), n("2001:db8:2::1"));
        assert_ne!(n("::ffff:0:0"), n("::"));
    }
}
