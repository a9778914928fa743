//! The command line's front end: rule and list settings given as flags (the one-liner case),
//! lowered into the same [`Rule`]s a file's `[[rule]]` gives.

use std::fmt;

use super::rules::{At, Blame, RuleSpec, Set, lower};
use super::{CLI, Config, ConfigError};

/// Rule and list settings given as command-line flags (the one-liner case). The command line
/// parses straight into this (`clap` flattens it into each command that takes rules).
#[derive(Clone, Debug, Default, Eq, PartialEq, clap::Args)]
pub struct Flags {
    /// Ban sources of packets that contain this string (repeatable).
    #[arg(long, value_name = "STRING")]
    pub string: Vec<String>,
    /// Like --string, in iptables --hex-string syntax, e.g. '|40|example.com' (repeatable).
    #[arg(long, value_name = "HEX")]
    pub hex_string: Vec<String>,
    /// Match case-insensitively (the kernel's Latin-1 table).
    #[arg(long)]
    pub icase: bool,
    /// Match packets that do NOT contain the string (iptables '!').
    #[arg(long)]
    pub invert: bool,
    /// bm or kmp (printed only: both match the same on linear buffers).
    #[arg(long, value_name = "ALGO")]
    pub algo: Option<String>,
    /// First offset searched, counted from the IP header.
    #[arg(long, value_name = "N")]
    pub from: Option<u16>,
    /// End of the searched range (exclusive), counted from the IP header.
    #[arg(long, value_name = "N")]
    pub to: Option<u16>,
    /// Protected TCP destination port(s), overriding the configuration (default 25).
    #[arg(long = "port", value_name = "PORT", value_delimiter = ',')]
    pub ports: Vec<u16>,
    /// How long a ban lasts, e.g. 24h, 90m, 3600 (first list).
    #[arg(long, value_name = "DURATION")]
    pub ttl: Option<String>,
    /// reject (drop + reset), drop, or log (accept this packet, ban the source).
    #[arg(long, value_name = "ACTION")]
    pub action: Option<String>,
    /// Matching mode: packet (exact xt_string), stream (the TCP byte stream, across segments) or
    /// smtp (only in MAIL FROM / RCPT TO commands, any case; bodies never match).
    #[arg(long, value_name = "MODE")]
    pub mode: Option<String>,
    /// Ban after N convictions within --window (first list; default 1: at the first).
    #[arg(long, value_name = "N")]
    pub threshold: Option<u64>,
    /// The window --threshold convictions count in [default: 10m].
    #[arg(long, value_name = "DURATION")]
    pub window: Option<String>,
    /// Multiply a repeat offender's TTL by N, up to --max-ttl (first list; default 1: off).
    #[arg(long, value_name = "N")]
    pub escalate: Option<u64>,
    /// Longest escalated TTL [default: the larger of --ttl and 30d].
    #[arg(long, value_name = "DURATION")]
    pub max_ttl: Option<String>,
    /// Most bans the first list holds before evicting the least recently seen.
    #[arg(long, value_name = "N")]
    pub capacity: Option<u64>,
    /// Ban senders of mail to this recipient domain (an smtp-mode rule; repeatable).
    #[arg(long, value_name = "DOMAIN")]
    pub rcpt_domain: Vec<String>,
    /// --rcpt-domain also matches its subdomains.
    #[arg(long)]
    pub subdomains: bool,
    /// Never let a flow bypass inspection (follow every session to its end).
    #[arg(long)]
    pub no_bypass: bool,
    /// Let a flow bypass inspection after this many client bytes (0: no budget).
    #[arg(long, value_name = "BYTES")]
    pub bypass_after: Option<u64>,
    /// Most flows tracked per worker, least recently seen evicted [default: 65536].
    #[arg(long, value_name = "N")]
    pub max_flows: Option<u64>,
    /// Trust source addresses: convict without proof of address (load tests with forged sources,
    /// replays of one-sided captures). Never on a host that strangers reach.
    #[arg(long)]
    pub no_proof: bool,
    /// Memory for the state of all flows, every worker together (e.g. 64M, 1G); full, unproven
    /// flows are evicted first [default: 64M].
    #[arg(long, value_name = "SIZE")]
    pub flow_memory: Option<String>,
    /// What one source network (a /24, a /48) may hold of the flow memory in one worker: a
    /// network at its share first evicts its own unproven flows, then opens no more flows
    /// [default: a sixteenth of --flow-memory].
    #[arg(long, value_name = "SIZE")]
    pub flow_share: Option<String>,
    /// Forget a flow unseen this long [default: 300s].
    #[arg(long, value_name = "DURATION")]
    pub flow_idle: Option<String>,
    /// With --iptables: bound each recent table to N entries, evicting as the kernel's
    /// ip_list_tot (default: unbounded).
    #[arg(long, value_name = "N")]
    pub compat_list_tot: Option<u64>,
    /// Never ban these sources: CIDRs, v4 or v6 (repeatable, or comma-separated).
    #[arg(long = "allow", value_name = "CIDR", value_delimiter = ',')]
    pub allow: Vec<String>,
    /// Never ban the sources listed in FILE, one CIDR per line, '#' comments (repeatable;
    /// re-read on SIGHUP).
    #[arg(long = "allow-file", value_name = "FILE")]
    pub allow_file: Vec<String>,
    /// Do not allowlist loopback and the host's own addresses (which `run` does by default).
    #[arg(long)]
    pub no_default_allow: bool,
    /// `--iptables FILE`: its name and text (read by the command line).
    #[arg(skip)]
    pub iptables: Option<(String, String)>,
    /// `--family`: the family of the file's save-format lines (None: its header's, else IPv4).
    #[arg(skip)]
    pub iptables_family: Option<crate::iptables::Family>,
}

impl Flags {
    pub(super) fn has_rule(&self) -> bool {
        !self.string.is_empty() || !self.hex_string.is_empty() || !self.rcpt_domain.is_empty()
    }
}

/// A [`ConfigError`] for flag `key` with `value`.
pub(super) fn cli(key: &str, value: &str, problem: &dyn fmt::Display) -> ConfigError {
    ConfigError {
        origin: CLI.to_string(),
        line: None,
        key: key.to_string(),
        value: value.to_string(),
        problem: problem.to_string(),
    }
}

/// The command line names a setting `--key` (dashes for underscores).
struct FlagBlame;

impl Blame for FlagBlame {
    fn name(&self, key: &str) -> String {
        format!("--{}", key.replace('_', "-"))
    }

    fn blame(&self, _: &At, key: &str, value: &str, problem: &dyn fmt::Display) -> ConfigError {
        cli(&self.name(key), value, problem)
    }
}

/// `--allow`, `--allow-file` and `--no-default-allow`, added to what the file says.
pub(super) fn add_allow(config: &mut Config, flags: &Flags) -> Result<(), ConfigError> {
    for c in &flags.allow {
        let cidr = c
            .trim()
            .parse()
            .map_err(|e: crate::allow::BadCidr| cli("--allow", c, &e))?;
        config.allow.entries.push(crate::allow::Allowed {
            cidr,
            origin: format!("{CLI} --allow"),
        });
    }
    config.allow.files.extend(flags.allow_file.iter().cloned());
    if flags.no_default_allow {
        config.allow.defaults = false;
    }
    Ok(())
}

/// One rule per `--string`, `--hex-string` and `--rcpt-domain`, with the other rule flags,
/// lowered by the same path as a file's `[[rule]]`.
pub(super) fn add_rules(config: &mut Config, flags: &Flags) -> Result<(), ConfigError> {
    let base = RuleSpec {
        icase: flags.icase,
        invert: flags.invert,
        algo: flags.algo.clone().map(Set::flag),
        from: flags.from.map(Set::flag),
        to: flags.to,
        action: flags.action.clone().map(Set::flag),
        mode: flags.mode.clone().map(Set::flag),
        ..RuleSpec::new(At::Flag)
    };
    let mut specs = Vec::new();
    for s in &flags.string {
        specs.push(RuleSpec {
            string: Some(Set::flag(s.clone())),
            ..base.clone()
        });
    }
    for h in &flags.hex_string {
        specs.push(RuleSpec {
            hex_string: Some(Set::flag(h.clone())),
            ..base.clone()
        });
    }
    for d in &flags.rcpt_domain {
        specs.push(RuleSpec {
            rcpt_domain: Some(Set::flag(d.clone())),
            subdomains: flags.subdomains,
            ..base.clone()
        });
    }
    for spec in specs {
        let index = config.rules.len();
        let rule = lower(spec, index, &config.lists, &FlagBlame)?;
        config.rules.push(rule);
    }
    Ok(())
}
