//! The command line's front end: rule and list settings given as flags (the one-liner case),
//! lowered into the same [`Rule`]s a file's `[[rule]]` gives.

use std::fmt;

use super::rules::{At, Blame, RuleSpec, Set, lower};
use super::{CLI, Config, ConfigError};

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
