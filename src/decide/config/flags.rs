//! The command line's front end: rule and list settings given as flags (the one-liner case),
//! lowered into the same [`Rule`]s a file's `[[rule]]` gives.

use std::fmt;

use super::{CLI, Config, ConfigError, MODE_PROBLEM, check_mode};
use crate::rule::{self, Action, Algo, Domain, Mode, Ports, Protocol, Rule, StringMatch};

/// Rule and list settings given as command-line flags (the one-liner case).
#[derive(Clone, Debug, Default, Eq, PartialEq)]
pub struct Flags {
    pub string: Vec<String>,
    pub hex_string: Vec<String>,
    pub icase: bool,
    pub invert: bool,
    pub algo: Option<String>,
    pub from: Option<u16>,
    pub to: Option<u16>,
    pub ports: Vec<u16>,
    pub ttl: Option<String>,
    pub action: Option<String>,
    pub mode: Option<String>,
    pub capacity: Option<u64>,
    /// Smtp-mode rules naming a recipient domain.
    pub rcpt_domain: Vec<String>,
    pub subdomains: bool,
    /// Engine: never bypass a flow (follow every session to its end).
    pub no_bypass: bool,
    pub bypass_after: Option<u64>,
    pub max_flows: Option<u64>,
    pub flow_idle: Option<String>,
    /// `--iptables FILE`: its name and text.
    pub iptables: Option<(String, String)>,
    /// `--compat-list-tot N`: bound each recent table as the kernel's ip_list_tot.
    pub compat_list_tot: Option<u64>,
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

/// One rule per `--string`, `--hex-string` and `--rcpt-domain`, with the other rule flags.
pub(super) fn add_rules(config: &mut Config, flags: &Flags) -> Result<(), ConfigError> {
    let patterns = flags
        .string
        .iter()
        .map(|s| ("--string", s, rule::parse_string(s)))
        .chain(
            flags
                .hex_string
                .iter()
                .map(|s| ("--hex-string", s, rule::parse_hex_string(s))),
        );
    let domains = flags.rcpt_domain.iter().map(|d| {
        let domain = Domain::parse(d, flags.subdomains).map_err(|e| cli("--rcpt-domain", d, &e));
        let pattern = Ok(format!("@{}", d.trim_start_matches('@')).into_bytes());
        ("--rcpt-domain", d, pattern, Some(domain))
    });
    let patterns = patterns
        .map(|(k, t, p)| (k, t, p, None))
        .chain(domains)
        .collect::<Vec<_>>();
    for (key, text, pattern, domain) in patterns {
        let pattern = pattern.map_err(|e| cli(key, text, &e))?;
        let domain = domain.transpose()?;
        let algo = match &flags.algo {
            None => Algo::Bm,
            Some(a) => Algo::parse(a).ok_or_else(|| cli("--algo", a, &"expected bm or kmp"))?,
        };
        let (from, to) = (flags.from.unwrap_or(0), flags.to.unwrap_or(u16::MAX));
        if from > to {
            return Err(cli(
                "--from",
                &from.to_string(),
                &format!("is above --to {to}"),
            ));
        }
        let action = match &flags.action {
            None => Action::Reject,
            Some(a) => Action::parse(a)
                .ok_or_else(|| cli("--action", a, &"expected reject, drop or log"))?,
        };
        let mode = match &flags.mode {
            None if domain.is_some() => Mode::Smtp,
            None => Mode::Packet,
            Some(m) => Mode::parse(m).ok_or_else(|| cli("--mode", m, &MODE_PROBLEM))?,
        };
        let flag_of = |what: &str| match what {
            "from" => "--from",
            "to" => "--to",
            "invert" => "--invert",
            "rcpt_domain" => "--rcpt-domain",
            _ => "--mode",
        };
        check_mode(
            mode,
            from,
            to,
            flags.invert,
            Protocol::Tcp,
            domain.is_some(),
        )
        .map_err(|(what, problem)| cli(flag_of(what), mode.name(), &problem))?;
        config.rules.push(Rule {
            name: text.clone(),
            matcher: StringMatch {
                pattern,
                algo,
                from,
                to,
                icase: flags.icase,
                invert: flags.invert,
            },
            protocol: Protocol::Tcp,
            dports: Ports::any(),
            sports: Ports::any(),
            action,
            ban: Some(0),
            mode,
            rcpt_domain: domain,
        });
    }
    Ok(())
}
