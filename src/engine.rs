//! The decision engine: one packet and `now` in, one [`Decision`] out.
//!
//! ```text
//! bytes ─► parse ─► guarded port? ─► source banned? ─► first matching rule ─► Decision
//!            │            no: Accept        yes: Drop          match: ban + action
//!            └─ error: Accept or Drop (policy)                 none:  Accept
//! ```
//!
//! The engine reads no clock, opens no file or socket, and never panics on packet bytes. The
//! blacklist is shared (`Arc`) by every worker; scanner scratch space and counters are per
//! worker, so [`Engine::worker`] makes a sibling for another thread.

use std::sync::Arc;

use crate::blacklist::{Banned, Blacklist, ListId, RuleId};
use crate::config::Config;
use crate::parse::{self, Transport};
use crate::rule::{Action, Ports, Rule};
use crate::scan::Scanner;
use crate::time::Instant;

/// What the shell does with the packet.
#[derive(Clone, Copy, Debug, Eq, Hash, PartialEq)]
pub enum Verdict {
    /// Let it through.
    Accept,
    /// Let it through and stop queueing its flow.
    Bypass,
    /// Discard it.
    Drop,
    /// Discard it and reset the connection.
    Reset,
}

impl Verdict {
    pub const ALL: [Verdict; 4] = [
        Verdict::Accept,
        Verdict::Bypass,
        Verdict::Drop,
        Verdict::Reset,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Verdict::Accept => "accept",
            Verdict::Bypass => "bypass",
            Verdict::Drop => "drop",
            Verdict::Reset => "reset",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Why the engine decided as it did.
#[derive(Clone, Copy, Debug, Eq, Hash, PartialEq)]
pub enum Reason {
    /// The source is in a ban list.
    Banned { list: ListId },
    /// Looked at, nothing matched.
    Clean,
    /// A rule matched.
    Matched { rule: RuleId },
    /// Not to a protected port: not the engine's business.
    Unguarded,
    /// The bytes are not a packet we can read.
    Unparsed(parse::Error),
}

/// The engine's answer for one packet.
#[must_use]
#[derive(Clone, Copy, Debug, Eq, Hash, PartialEq)]
pub struct Decision {
    pub verdict: Verdict,
    pub reason: Reason,
}

/// What the engine does with packets it cannot parse.
#[derive(Clone, Copy, Debug, Default, Eq, PartialEq)]
pub enum UnparsedPolicy {
    #[default]
    Accept,
    Drop,
}

/// Engine-wide settings.
#[derive(Clone, Debug, Eq, PartialEq)]
pub struct EngineConfig {
    /// Protected TCP destination ports. Empty: every packet is looked at.
    pub ports: Ports,
    pub on_unparsed: UnparsedPolicy,
}

impl Default for EngineConfig {
    /// Protects SMTP: TCP port 25.
    fn default() -> EngineConfig {
        EngineConfig {
            ports: Ports::list(&[25]),
            on_unparsed: UnparsedPolicy::Accept,
        }
    }
}

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
    pub bans_new: u64,
    pub bans_renewed: u64,
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

    /// Adds `other` into `self`.
    pub fn merge(&mut self, other: &Stats) {
        self.packets += other.packets;
        self.bytes += other.bytes;
        self.unguarded += other.unguarded;
        self.other_protocol += other.other_protocol;
        self.bans_new += other.bans_new;
        self.bans_renewed += other.bans_renewed;
        for (a, b) in self.unparsed.iter_mut().zip(other.unparsed) {
            *a += b;
        }
        for (a, b) in self.verdicts.iter_mut().zip(other.verdicts) {
            *a += b;
        }
        add_vec(&mut self.matches, &other.matches);
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

/// Decides packets. See the module documentation.
#[derive(Debug)]
pub struct Engine {
    config: EngineConfig,
    rules: Arc<[Rule]>,
    blacklist: Arc<Blacklist>,
    scanner: Scanner,
    stats: Stats,
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
        let stats = Stats::new(rules.len(), blacklist.lists().len());
        Engine {
            config: config.engine.clone(),
            rules,
            blacklist,
            scanner,
            stats,
        }
    }

    /// A sibling for another worker thread: same rules and blacklist, own scratch and counters.
    pub fn worker(&self) -> Engine {
        Engine {
            config: self.config.clone(),
            rules: Arc::clone(&self.rules),
            blacklist: Arc::clone(&self.blacklist),
            scanner: self.scanner.clone(),
            stats: Stats::new(self.rules.len(), self.blacklist.lists().len()),
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
        let decision = self.judge(packet, now);
        self.stats.packets += 1;
        self.stats.bytes += packet.len() as u64;
        self.stats.verdicts[decision.verdict.index()] += 1;
        decision
    }

    fn judge(&mut self, bytes: &[u8], now: Instant) -> Decision {
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
        let guarded = match packet.transport {
            Transport::Tcp(t) => self.config.ports.contains(t.dport),
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
        for (id, list) in self.blacklist.lists().iter().enumerate() {
            if list.check(packet.src, now) {
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
        let Some(index) = self
            .scanner
            .first_match(bytes, |i| rules[i].admits(&packet))
        else {
            return Decision {
                verdict: Verdict::Accept,
                reason: Reason::Clean,
            };
        };
        let rule = &self.rules[index];
        self.stats.matches[index] += 1;
        // Rules are indexed by RuleId (u16) when the config is built.
        let rule_id = index as RuleId;
        if let Some(list) = rule.ban {
            match self.blacklist.list(list).ban(packet.src, now, rule_id) {
                Banned::New => self.stats.bans_new += 1,
                Banned::Renewed => self.stats.bans_renewed += 1,
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
}
