//! Configuration: a TOML file and/or command-line flags → a validated [`Config`].
//!
//! Every refusal is a [`ConfigError`] naming where the bad value came from (file and line, or the
//! command line), the key and the value. Unknown keys are errors. The keys and their defaults are
//! listed in the README and in `examples/stringban.toml`.

use std::fmt;
use std::ops::Range;

use serde::Deserialize;
use toml::Spanned;

use crate::blacklist::{ListConfig, ListId};
use crate::rule::{self, Action, Algo, Domain, Mode, Ports, Protocol, Rule, StringMatch};
use crate::time::{self, Duration};

/// A validated configuration.
#[derive(Clone, Debug, Default, Eq, PartialEq)]
pub struct Config {
    pub engine: EngineConfig,
    pub lists: Vec<ListConfig>,
    pub rules: Vec<Rule>,
    /// Imported iptables rules to run instead of stringban's own (`--iptables FILE`).
    pub iptables: Option<IptablesConfig>,
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
    /// Let a flow bypass the queue once its envelope is over (smtp mode) or its budget is spent.
    pub bypass: bool,
    /// Client bytes inspected per flow before it bypasses (0: no budget).
    pub bypass_after: u64,
    /// Most flows tracked per worker (least recently seen evicted).
    pub max_flows: usize,
    /// A flow unseen this long is forgotten.
    pub flow_idle: crate::time::Duration,
}

impl Default for EngineConfig {
    /// Protects SMTP: TCP port 25.
    fn default() -> EngineConfig {
        EngineConfig {
            ports: Ports::list(&[25]),
            on_unparsed: UnparsedPolicy::Accept,
            bypass: true,
            bypass_after: 0,
            max_flows: 65_536,
            flow_idle: crate::time::Duration::from_secs(300),
        }
    }
}

/// An imported iptables rule set, the recent tables' bound (`--compat-list-tot`), and the
/// chains built from them — once, here, so that a rule set that cannot run is refused with the
/// configuration and every engine runs the same chains.
#[derive(Clone, Debug)]
pub struct IptablesConfig {
    pub ruleset: crate::iptables::Ruleset,
    pub list_tot: Option<usize>,
    pub chains: crate::chains::Chains,
}

impl IptablesConfig {
    fn new(
        ruleset: crate::iptables::Ruleset,
        list_tot: Option<u64>,
    ) -> Result<IptablesConfig, String> {
        let list_tot = list_tot.map(|n| usize::try_from(n.max(1)).unwrap_or(usize::MAX));
        let chains = crate::chains::Chains::new(&ruleset, list_tot)?;
        Ok(IptablesConfig {
            ruleset,
            list_tot,
            chains,
        })
    }
}

impl PartialEq for IptablesConfig {
    /// The chains follow from the rule set and the bound.
    fn eq(&self, other: &IptablesConfig) -> bool {
        self.ruleset == other.ruleset && self.list_tot == other.list_tot
    }
}

impl Eq for IptablesConfig {}

/// A configuration value that was refused.
#[derive(Clone, Debug, Eq, PartialEq)]
pub struct ConfigError {
    /// The file path, or `command line`.
    pub origin: String,
    /// 1-based line in the file, when known.
    pub line: Option<usize>,
    /// The key (`rule.string`, `--ttl`, …), when known.
    pub key: String,
    /// The offending text, when known.
    pub value: String,
    pub problem: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.origin)?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        f.write_str(": ")?;
        if !self.key.is_empty() {
            write!(f, "{}", self.key)?;
            if !self.value.is_empty() {
                write!(f, " = {}", self.value)?;
            }
            f.write_str(": ")?;
        }
        f.write_str(&self.problem)
    }
}

impl std::error::Error for ConfigError {}

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
    fn has_rule(&self) -> bool {
        !self.string.is_empty() || !self.hex_string.is_empty() || !self.rcpt_domain.is_empty()
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    engine: RawEngine,
    #[serde(default)]
    list: Vec<Spanned<RawList>>,
    #[serde(default)]
    rule: Vec<Spanned<RawRule>>,
    iptables: Option<RawIptables>,
}

/// `[iptables]`: imported rules (`stringban import` writes this).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawIptables {
    rules: Spanned<String>,
    compat_list_tot: Option<u64>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawEngine {
    ports: Option<Vec<u16>>,
    on_unparsed: Option<Spanned<String>>,
    bypass: Option<bool>,
    bypass_after: Option<u64>,
    max_flows: Option<Spanned<u64>>,
    flow_idle: Option<Spanned<DurationValue>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawList {
    name: Spanned<String>,
    ttl: Option<Spanned<DurationValue>>,
    refresh_on_hit: Option<bool>,
    capacity: Option<Spanned<u64>>,
    prefix_v4: Option<Spanned<u8>>,
    prefix_v6: Option<Spanned<u8>>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum DurationValue {
    Secs(u64),
    Text(String),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    name: Option<String>,
    string: Option<Spanned<String>>,
    hex_string: Option<Spanned<String>>,
    #[serde(default)]
    icase: bool,
    #[serde(default)]
    invert: bool,
    algo: Option<Spanned<String>>,
    from: Option<Spanned<u16>>,
    to: Option<u16>,
    protocol: Option<Spanned<String>>,
    #[serde(default)]
    dports: Vec<u16>,
    #[serde(default)]
    sports: Vec<u16>,
    action: Option<Spanned<String>>,
    list: Option<Spanned<String>>,
    ban: Option<bool>,
    mode: Option<Spanned<String>>,
    rcpt_domain: Option<Spanned<String>>,
    #[serde(default)]
    subdomains: bool,
}

/// Where values come from, to locate errors.
struct Origin<'a> {
    name: &'a str,
    text: &'a str,
}

impl Origin<'_> {
    fn error(
        &self,
        span: Option<Range<usize>>,
        key: &str,
        value: &str,
        problem: impl fmt::Display,
    ) -> ConfigError {
        let line = span.map(|s| {
            self.text[..s.start.min(self.text.len())]
                .matches('\n')
                .count()
                + 1
        });
        ConfigError {
            origin: self.name.to_string(),
            line,
            key: key.to_string(),
            value: value.to_string(),
            problem: problem.to_string(),
        }
    }

    fn at<T>(
        &self,
        v: &Spanned<T>,
        key: &str,
        value: &str,
        problem: impl fmt::Display,
    ) -> ConfigError {
        self.error(Some(v.span()), key, value, problem)
    }
}

const CLI: &str = "command line";

impl Config {
    /// Parses a configuration file's text. `name` is used in error messages.
    pub fn from_toml(name: &str, text: &str) -> Result<Config, ConfigError> {
        Config::build(Some((name, text)), &Flags::default())
    }

    /// Builds the configuration from an optional file (`(name, text)`) and flags. Flags add a
    /// rule (`--string`/`--hex-string`), and override the protected ports and the first list's
    /// TTL and capacity. Without a file, flags must name a string.
    pub fn build(file: Option<(&str, &str)>, flags: &Flags) -> Result<Config, ConfigError> {
        let cli = |key: &str, value: &str, problem: &dyn fmt::Display| ConfigError {
            origin: CLI.to_string(),
            line: None,
            key: key.to_string(),
            value: value.to_string(),
            problem: problem.to_string(),
        };
        let mut config = match file {
            Some((name, text)) => parse_file(&Origin { name, text })?,
            None => Config::default(),
        };
        if config.lists.is_empty() {
            config.lists.push(ListConfig::new("default"));
        }
        if !flags.ports.is_empty() {
            config.engine.ports = Ports::list(&flags.ports);
        }
        if let Some(ttl) = &flags.ttl {
            config.lists[0].ttl = time::parse_duration(ttl).map_err(|e| cli("--ttl", ttl, &e))?;
            if config.lists[0].ttl == Duration::ZERO {
                return Err(cli("--ttl", ttl, &"must be more than 0"));
            }
        }
        if let Some(capacity) = flags.capacity {
            if capacity == 0 {
                return Err(cli("--capacity", "0", &"must be at least 1"));
            }
            config.lists[0].capacity = usize::try_from(capacity).unwrap_or(usize::MAX);
        }
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
            let domain =
                Domain::parse(d, flags.subdomains).map_err(|e| cli("--rcpt-domain", d, &e));
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
        if flags.no_bypass {
            config.engine.bypass = false;
        }
        if let Some(b) = flags.bypass_after {
            config.engine.bypass_after = b;
        }
        if let Some(m) = flags.max_flows {
            if m == 0 {
                return Err(cli("--max-flows", "0", &"must be at least 1"));
            }
            config.engine.max_flows = usize::try_from(m).unwrap_or(usize::MAX);
        }
        if let Some(idle) = &flags.flow_idle {
            config.engine.flow_idle =
                time::parse_duration(idle).map_err(|e| cli("--flow-idle", idle, &e))?;
            if config.engine.flow_idle == Duration::ZERO {
                return Err(cli("--flow-idle", idle, &"must be more than 0"));
            }
        }
        let from_file = config.iptables.is_some();
        if from_file && flags.iptables.is_some() {
            return Err(cli(
                "--iptables",
                "",
                &"the configuration already has [iptables] rules",
            ));
        }
        if from_file {
            if !config.rules.is_empty() {
                return Err(cli(
                    "[iptables]",
                    "",
                    &"runs alone: give no [[rule]], --string, --hex-string or --rcpt-domain with it",
                ));
            }
            config.engine.ports = Ports::any();
            return Ok(config);
        }
        if let Some((name, text)) = &flags.iptables {
            let ruleset = crate::iptables::parse(text).map_err(|e| ConfigError {
                origin: name.clone(),
                line: Some(e.line),
                key: String::new(),
                value: e.text.trim().to_string(),
                problem: e.problem.clone(),
            })?;
            let iptables =
                IptablesConfig::new(ruleset, flags.compat_list_tot).map_err(|problem| {
                    ConfigError {
                        origin: name.clone(),
                        line: None,
                        key: String::new(),
                        value: String::new(),
                        problem,
                    }
                })?;
            if !config.rules.is_empty() {
                return Err(cli(
                    "--iptables",
                    name,
                    &"runs the file's rules alone: give no --string/--hex-string/--rcpt-domain or [[rule]] with it",
                ));
            }
            config.engine.ports = Ports::any();
            config.iptables = Some(iptables);
            return Ok(config);
        }
        if flags.compat_list_tot.is_some() {
            return Err(cli("--compat-list-tot", "", &"applies to --iptables"));
        }
        if config.rules.is_empty() {
            let problem = if file.is_some() {
                "the configuration has no [[rule]]"
            } else {
                "give --string, --hex-string or --config"
            };
            return Err(ConfigError {
                origin: file.map_or(CLI, |f| f.0).to_string(),
                line: None,
                key: String::new(),
                value: String::new(),
                problem: problem.to_string(),
            });
        }
        if !config.engine.ports.is_any()
            && let Some(r) = config.rules.iter().find(|r| r.protocol == Protocol::Udp)
        {
            return Err(cli(
                "--port",
                &config.engine.ports.to_string(),
                &format!("rule {:?} is udp: {UDP_PROBLEM}", r.name),
            ));
        }
        if config.rules.len() > usize::from(u16::MAX - 1) {
            return Err(cli("rule", "", &"at most 65534 rules"));
        }
        if config.engine.ports.is_any()
            && let Some(r) = config.rules.iter().find(|r| r.mode.is_flow())
        {
            return Err(cli(
                "--port",
                "any",
                &format!(
                    "rule {:?} is {} mode, which tells client from server by the protected ports: list them",
                    r.name,
                    r.mode.name()
                ),
            ));
        }
        let flow_rules = config.rules.iter().filter(|r| r.mode.is_flow()).count();
        if flow_rules > MAX_FLOW_RULES {
            return Err(cli(
                "rule.mode",
                "",
                &format!("at most {MAX_FLOW_RULES} stream and smtp rules ({flow_rules} given)"),
            ));
        }
        if !flags.has_rule()
            && (flags.icase || flags.invert || flags.from.is_some() || flags.to.is_some())
        {
            return Err(cli(
                "--icase/--invert/--from/--to",
                "",
                &"apply to --string or --hex-string; give one",
            ));
        }
        if flags.subdomains && flags.rcpt_domain.is_empty() {
            return Err(cli(
                "--subdomains",
                "",
                &"applies to --rcpt-domain; give one",
            ));
        }
        Ok(config)
    }
}

const UDP_PROBLEM: &str =
    "never reached: [engine] ports limits the engine to those TCP ports; set ports = []";

const MODE_PROBLEM: &str = "expected packet, stream or smtp";

/// Most stream and smtp rules (a flow remembers which of them matched in 64 bits).
pub const MAX_FLOW_RULES: usize = 64;

/// What a rule's mode allows: `Err((setting, problem))`.
fn check_mode(
    mode: Mode,
    from: u16,
    to: u16,
    invert: bool,
    protocol: Protocol,
    domain: bool,
) -> Result<(), (&'static str, String)> {
    if domain && mode != Mode::Smtp {
        return Err(("rcpt_domain", "a recipient domain needs mode smtp".into()));
    }
    if !mode.is_flow() {
        return Ok(());
    }
    let m = mode.name();
    if from != 0 {
        return Err(("from", format!("offsets apply to packet mode, not {m}")));
    }
    if to != u16::MAX {
        return Err(("to", format!("offsets apply to packet mode, not {m}")));
    }
    if invert {
        return Err(("invert", format!("invert applies to packet mode, not {m}")));
    }
    if protocol != Protocol::Tcp {
        return Err((
            "protocol",
            format!("{m} mode follows TCP flows: protocol must be tcp"),
        ));
    }
    Ok(())
}

fn parse_file(origin: &Origin<'_>) -> Result<Config, ConfigError> {
    let raw: RawFile = toml::from_str(origin.text).map_err(|e| {
        let span = e.span();
        let value = span
            .clone()
            .and_then(|s| origin.text.get(s))
            .unwrap_or("")
            .trim()
            .to_string();
        origin.error(
            span,
            "",
            "",
            format!(
                "{}{}",
                e.message().trim_end(),
                if value.is_empty() {
                    String::new()
                } else {
                    format!(" (at `{value}`)")
                }
            ),
        )
    })?;
    let mut config = Config::default();
    if let Some(ipt) = &raw.iptables {
        let start = origin.text[..ipt.rules.span().start.min(origin.text.len())]
            .matches('\n')
            .count();
        // The rules start on the line after `rules = """`.
        let ruleset = crate::iptables::parse(ipt.rules.as_ref()).map_err(|e| ConfigError {
            origin: origin.name.to_string(),
            line: Some(start + 1 + e.line),
            key: "iptables.rules".into(),
            value: e.text.trim().to_string(),
            problem: e.problem.clone(),
        })?;
        let iptables = IptablesConfig::new(ruleset, ipt.compat_list_tot)
            .map_err(|problem| origin.at(&ipt.rules, "iptables.rules", "", problem))?;
        config.iptables = Some(iptables);
    }
    if let Some(ports) = raw.engine.ports {
        config.engine.ports = Ports::list(&ports);
    }
    if let Some(p) = raw.engine.on_unparsed {
        config.engine.on_unparsed = match p.as_ref().as_str() {
            "accept" => UnparsedPolicy::Accept,
            "drop" => UnparsedPolicy::Drop,
            other => {
                return Err(origin.at(&p, "engine.on_unparsed", other, "expected accept or drop"));
            }
        };
    }
    if let Some(b) = raw.engine.bypass {
        config.engine.bypass = b;
    }
    if let Some(b) = raw.engine.bypass_after {
        config.engine.bypass_after = b;
    }
    if let Some(m) = &raw.engine.max_flows {
        if *m.as_ref() == 0 {
            return Err(origin.at(m, "engine.max_flows", "0", "must be at least 1"));
        }
        config.engine.max_flows = usize::try_from(*m.as_ref()).unwrap_or(usize::MAX);
    }
    if let Some(idle) = &raw.engine.flow_idle {
        config.engine.flow_idle = match idle.as_ref() {
            DurationValue::Secs(s) => Duration::from_secs(*s),
            DurationValue::Text(t) => {
                time::parse_duration(t).map_err(|e| origin.at(idle, "engine.flow_idle", t, e))?
            }
        };
        if config.engine.flow_idle == Duration::ZERO {
            return Err(origin.at(idle, "engine.flow_idle", "0", "must be more than 0"));
        }
    }
    for spanned in raw.list {
        let list = spanned.into_inner();
        let name = list.name.as_ref().clone();
        if name.is_empty()
            || name.len() > 64
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        {
            return Err(origin.at(
                &list.name,
                "list.name",
                &name,
                "1-64 characters of A-Z a-z 0-9 - _ .",
            ));
        }
        if config.lists.iter().any(|l| l.name == name) {
            return Err(origin.at(
                &list.name,
                "list.name",
                &name,
                "a list with this name is already defined",
            ));
        }
        let mut out = ListConfig::new(&name);
        if let Some(ttl) = &list.ttl {
            out.ttl = match ttl.as_ref() {
                DurationValue::Secs(s) => Duration::from_secs(*s),
                DurationValue::Text(t) => {
                    time::parse_duration(t).map_err(|e| origin.at(ttl, "list.ttl", t, e))?
                }
            };
            if out.ttl == Duration::ZERO {
                return Err(origin.at(ttl, "list.ttl", "0", "must be more than 0"));
            }
        }
        if let Some(r) = list.refresh_on_hit {
            out.refresh_on_hit = r;
        }
        if let Some(c) = &list.capacity {
            if *c.as_ref() == 0 {
                return Err(origin.at(c, "list.capacity", "0", "must be at least 1"));
            }
            out.capacity = usize::try_from(*c.as_ref()).unwrap_or(usize::MAX);
        }
        if let Some(p) = &list.prefix_v4 {
            if *p.as_ref() > 32 {
                return Err(origin.at(
                    p,
                    "list.prefix_v4",
                    &p.as_ref().to_string(),
                    "must be 0 to 32",
                ));
            }
            out.prefix_v4 = *p.as_ref();
        }
        if let Some(p) = &list.prefix_v6 {
            if *p.as_ref() > 128 {
                return Err(origin.at(
                    p,
                    "list.prefix_v6",
                    &p.as_ref().to_string(),
                    "must be 0 to 128",
                ));
            }
            out.prefix_v6 = *p.as_ref();
        }
        config.lists.push(out);
    }
    if config.lists.is_empty() {
        config.lists.push(ListConfig::new("default"));
    }
    for (index, spanned) in raw.rule.into_iter().enumerate() {
        let span = spanned.span();
        let rule = parse_rule(
            origin,
            index,
            span.clone(),
            spanned.into_inner(),
            &config.lists,
        )?;
        if rule.protocol == Protocol::Udp && !config.engine.ports.is_any() {
            return Err(origin.error(Some(span), "rule.protocol", "udp", UDP_PROBLEM));
        }
        config.rules.push(rule);
    }
    Ok(config)
}

fn parse_rule(
    origin: &Origin<'_>,
    index: usize,
    span: Range<usize>,
    r: RawRule,
    lists: &[ListConfig],
) -> Result<Rule, ConfigError> {
    let domain = match &r.rcpt_domain {
        None => None,
        Some(d) => Some(
            Domain::parse(d.as_ref(), r.subdomains)
                .map_err(|e| origin.at(d, "rule.rcpt_domain", d.as_ref(), e))?,
        ),
    };
    let pattern = match (&r.string, &r.hex_string, &domain) {
        (Some(s), None, None) => rule::parse_string(s.as_ref())
            .map_err(|e| origin.at(s, "rule.string", s.as_ref(), e))?,
        (None, Some(h), None) => rule::parse_hex_string(h.as_ref())
            .map_err(|e| origin.at(h, "rule.hex_string", h.as_ref(), e))?,
        (None, None, Some(d)) => [b"@".as_slice(), &d.name].concat(),
        (None, None, None) => {
            return Err(origin.error(
                Some(span),
                "rule",
                "",
                "needs string, hex_string or rcpt_domain",
            ));
        }
        (Some(s), ..) | (None, Some(s), _) => {
            return Err(origin.at(
                s,
                "rule.string",
                s.as_ref(),
                "give one of string, hex_string and rcpt_domain",
            ));
        }
    };
    if r.subdomains && domain.is_none() {
        return Err(origin.error(
            Some(span),
            "rule.subdomains",
            "true",
            "applies to rcpt_domain",
        ));
    }
    let algo = match &r.algo {
        None => Algo::Bm,
        Some(a) => Algo::parse(a.as_ref())
            .ok_or_else(|| origin.at(a, "rule.algo", a.as_ref(), "expected bm or kmp"))?,
    };
    let (from, to) = (
        r.from.as_ref().map_or(0, |f| *f.as_ref()),
        r.to.unwrap_or(u16::MAX),
    );
    if let Some(f) = &r.from
        && from > to
    {
        return Err(origin.at(
            f,
            "rule.from",
            &from.to_string(),
            format!("is above rule.to ({to})"),
        ));
    }
    let protocol = match &r.protocol {
        None => Protocol::Tcp,
        Some(p) => Protocol::parse(p.as_ref())
            .ok_or_else(|| origin.at(p, "rule.protocol", p.as_ref(), "expected tcp, udp or all"))?,
    };
    if protocol == Protocol::All && (!r.dports.is_empty() || !r.sports.is_empty()) {
        let p = r.protocol.as_ref().map(|p| p.span());
        return Err(origin.error(
            p,
            "rule.protocol",
            "all",
            "dports and sports need protocol tcp or udp",
        ));
    }
    let action = match &r.action {
        None => Action::Reject,
        Some(a) => Action::parse(a.as_ref()).ok_or_else(|| {
            origin.at(a, "rule.action", a.as_ref(), "expected reject, drop or log")
        })?,
    };
    if action == Action::Reject && protocol != Protocol::Tcp {
        let a = r.action.as_ref().map(|a| a.span()).unwrap_or(span.clone());
        return Err(origin.error(
            Some(a),
            "rule.action",
            "reject",
            "a reset needs protocol = \"tcp\"",
        ));
    }
    let ban = if r.ban == Some(false) {
        None
    } else {
        match &r.list {
            None => Some(0),
            Some(name) => {
                let i = lists.iter().position(|l| &l.name == name.as_ref());
                let i = i.ok_or_else(|| {
                    origin.at(
                        name,
                        "rule.list",
                        name.as_ref(),
                        "no [[list]] has this name",
                    )
                })?;
                Some(ListId::try_from(i).unwrap_or(ListId::MAX))
            }
        }
    };
    let mode = match &r.mode {
        None if domain.is_some() => Mode::Smtp,
        None => Mode::Packet,
        Some(m) => Mode::parse(m.as_ref())
            .ok_or_else(|| origin.at(m, "rule.mode", m.as_ref(), MODE_PROBLEM))?,
    };
    check_mode(mode, from, to, r.invert, protocol, domain.is_some()).map_err(
        |(what, problem)| {
            let at = match what {
                "from" => r.from.as_ref().map(|f| f.span()),
                "protocol" => r.protocol.as_ref().map(|p| p.span()),
                "rcpt_domain" => r.rcpt_domain.as_ref().map(|d| d.span()),
                _ => r.mode.as_ref().map(|m| m.span()),
            };
            origin.error(
                Some(at.unwrap_or(span.clone())),
                &format!("rule.{what}"),
                mode.name(),
                problem,
            )
        },
    )?;
    let text = r
        .string
        .as_ref()
        .or(r.hex_string.as_ref())
        .or(r.rcpt_domain.as_ref())
        .map(|s| s.as_ref().clone())
        .unwrap_or_default();
    Ok(Rule {
        name: r.name.unwrap_or_else(|| {
            if text.is_empty() {
                format!("rule{index}")
            } else {
                text
            }
        }),
        matcher: StringMatch {
            pattern,
            algo,
            from,
            to,
            icase: r.icase,
            invert: r.invert,
        },
        protocol,
        dports: Ports::list(&r.dports),
        sports: Ports::list(&r.sports),
        action,
        ban,
        mode,
        rcpt_domain: domain,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> ConfigError {
        Config::from_toml("t.toml", text).unwrap_err()
    }

    #[test]
    fn full_file() {
        let c = Config::from_toml(
            "t.toml",
            r#"
[engine]
ports = [25, 587]
on_unparsed = "drop"

[[list]]
name = "spam"
ttl = "7d"
refresh_on_hit = false
capacity = 1000
prefix_v4 = 24
prefix_v6 = 48

[[rule]]
name = "example"
string = "@example.com"
icase = true
algo = "kmp"
from = 40
to = 1500
dports = [25]
action = "drop"
list = "spam"

[[rule]]
hex_string = "|0d0a|QUIT"
protocol = "tcp"
ban = false
"#,
        )
        .unwrap();
        assert_eq!(c.engine.ports, Ports::list(&[25, 587]));
        assert_eq!(c.engine.on_unparsed, UnparsedPolicy::Drop);
        assert_eq!(c.lists[0].ttl, Duration::from_secs(7 * 86_400));
        assert!(!c.lists[0].refresh_on_hit);
        assert_eq!(
            (
                c.lists[0].prefix_v4,
                c.lists[0].prefix_v6,
                c.lists[0].capacity
            ),
            (24, 48, 1000)
        );
        let r = &c.rules[0];
        assert_eq!(
            r.matcher.to_string(),
            "-m string --string \"@example.com\" --algo kmp --from 40 --to 1500 --icase"
        );
        assert_eq!(
            (r.action, r.ban, r.name.as_str()),
            (Action::Drop, Some(0), "example")
        );
        assert_eq!(c.rules[1].matcher.pattern, b"\r\nQUIT");
        assert_eq!(c.rules[1].ban, None);
    }

    #[test]
    fn errors_name_line_key_and_value() {
        let e = err("[[rule]]\nstring = \"x\"\n\n[[list]]\nname = \"a\"\nttl = \"24x\"\n");
        assert_eq!(
            e.to_string(),
            "t.toml:6: list.ttl = 24x: expected a duration such as 86400, 90s, 15m, 24h, 7d or 1h30m"
        );
        let e = err("[[rule]]\nhex_string = \"|0a\"\n");
        assert_eq!(
            (e.line, e.key.as_str(), e.value.as_str()),
            (Some(2), "rule.hex_string", "|0a")
        );
        assert_eq!(e.problem, "Invalid hex block");
        let e = err("[[rule]]\nstring = \"x\"\nstrnig = \"y\"\n");
        assert_eq!(e.line, Some(3));
        assert!(e.problem.contains("unknown field `strnig`"), "{e}");
        let e = err("[engine]\nports = [70000]\n[[rule]]\nstring = \"x\"\n");
        assert_eq!(e.line, Some(2), "{e}");
        let e = err("[[rule]]\nstring = \"x\"\nlist = \"nope\"\n");
        assert_eq!((e.line, e.key.as_str()), (Some(3), "rule.list"));
        let e = err("[engine]\nports = []\n[[rule]]\nstring = \"x\"\nprotocol = \"udp\"\n");
        assert_eq!(e.key, "rule.action");
        let e = err("[[rule]]\nstring = \"x\"\nprotocol = \"udp\"\naction = \"drop\"\n");
        assert_eq!((e.line, e.key.as_str()), (Some(1), "rule.protocol"));
        assert!(Config::from_toml("t", "[engine]\nports = []\n[[rule]]\nstring = \"x\"\nprotocol = \"udp\"\naction = \"drop\"\n").is_ok());
        let e = err("[[rule]]\nstring = \"x\"\nfrom = 10\nto = 5\n");
        assert_eq!((e.line, e.key.as_str()), (Some(3), "rule.from"));
        let e = err("[[rule]]\nstring = \"x\"\nmode = \"fancy\"\n");
        assert_eq!((e.line, e.key.as_str()), (Some(3), "rule.mode"));
        let e = err("[[rule]]\nstring = \"x\"\nmode = \"stream\"\nfrom = 40\n");
        assert_eq!((e.line, e.key.as_str()), (Some(4), "rule.from"), "{e}");
        let e = err("[[rule]]\nstring = \"x\"\ninvert = true\nmode = \"smtp\"\n");
        assert_eq!((e.line, e.key.as_str()), (Some(4), "rule.invert"), "{e}");
        let e = err("[[rule]]\nrcpt_domain = \"example.com\"\nmode = \"stream\"\n");
        assert_eq!(
            (e.line, e.key.as_str()),
            (Some(2), "rule.rcpt_domain"),
            "{e}"
        );
        let e = err("[[rule]]\nrcpt_domain = \"not a domain\"\n");
        assert_eq!(
            (e.line, e.key.as_str()),
            (Some(2), "rule.rcpt_domain"),
            "{e}"
        );
        let e = err("[[rule]]\nstring = \"x\"\nsubdomains = true\n");
        assert_eq!(e.key, "rule.subdomains", "{e}");
        let e = err("[engine]\nports = []\n[[rule]]\nstring = \"x\"\nmode = \"smtp\"\n");
        assert_eq!(e.key, "--port", "flow modes need the protected ports: {e}");
        let e = err("[engine]\nmax_flows = 0\n[[rule]]\nstring = \"x\"\n");
        assert_eq!(
            (e.line, e.key.as_str()),
            (Some(2), "engine.max_flows"),
            "{e}"
        );
        let e = err("[[list]]\nname = \"a\"\n");
        assert_eq!(e.problem, "the configuration has no [[rule]]");
    }

    #[test]
    fn iptables_rules_in_the_file() {
        let c = Config::from_toml(
            "t.toml",
            "[iptables]\nrules = '''\niptables -A INPUT -p tcp --dport 25 -m recent --rcheck -j DROP\n'''\ncompat_list_tot = 100\n",
        )
        .unwrap();
        let ipt = c.iptables.unwrap();
        assert_eq!(ipt.list_tot, Some(100));
        assert_eq!(ipt.ruleset.rules.len(), 1);
        assert!(c.engine.ports.is_any());
        let e = err(
            "# x\n[iptables]\nrules = '''\niptables -A INPUT -j DROP\niptables -A INPUT -s 1.2.3.4 -j DROP\n'''\n",
        );
        assert_eq!((e.line, e.key.as_str()), (Some(5), "iptables.rules"), "{e}");
        let e = err("[iptables]\nrules = 'iptables -A INPUT -j DROP'\n[[rule]]\nstring = \"x\"\n");
        assert!(e.problem.contains("runs alone"), "{e}");
    }

    #[test]
    fn flow_modes_and_engine_settings() {
        let c = Config::from_toml(
            "t.toml",
            "[engine]\nbypass = false\nbypass_after = 4096\nmax_flows = 10\nflow_idle = \"2m\"\n[[rule]]\nrcpt_domain = \"@Example.com\"\nsubdomains = true\n[[rule]]\nstring = \"spam\"\nmode = \"stream\"\nicase = true\n",
        )
        .unwrap();
        assert!(!c.engine.bypass);
        assert_eq!(c.engine.bypass_after, 4096);
        assert_eq!(c.engine.max_flows, 10);
        assert_eq!(c.engine.flow_idle, Duration::from_secs(120));
        assert_eq!(
            c.rules[0].mode,
            Mode::Smtp,
            "a domain rule is smtp by default"
        );
        let d = c.rules[0].rcpt_domain.as_ref().unwrap();
        assert_eq!(
            (d.name.as_slice(), d.subdomains),
            (&b"example.com"[..], true)
        );
        assert_eq!(c.rules[1].mode, Mode::Stream);
        let flags = Flags {
            rcpt_domain: vec!["example.com".into()],
            ..Flags::default()
        };
        let c = Config::build(None, &flags).unwrap();
        assert_eq!(c.rules[0].mode, Mode::Smtp);
        let bad = |f: Flags| Config::build(None, &f).unwrap_err().key;
        let f = Flags {
            string: vec!["x".into()],
            mode: Some("stream".into()),
            to: Some(100),
            ..Flags::default()
        };
        assert_eq!(bad(f), "--to");
        let f = Flags {
            rcpt_domain: vec!["example.com".into()],
            mode: Some("packet".into()),
            ..Flags::default()
        };
        assert_eq!(bad(f), "--rcpt-domain");
        let f = Flags {
            string: vec!["x".into()],
            subdomains: true,
            ..Flags::default()
        };
        assert_eq!(bad(f), "--subdomains");
    }

    #[test]
    fn one_liner_flags() {
        let flags = Flags {
            string: vec!["@example.com".into()],
            ports: vec![25],
            ttl: Some("24h".into()),
            action: Some("reject".into()),
            ..Flags::default()
        };
        let c = Config::build(None, &flags).unwrap();
        assert_eq!(c.engine.ports, Ports::list(&[25]));
        assert_eq!(c.lists[0].ttl, Duration::from_secs(86_400));
        assert_eq!(c.rules[0].action, Action::Reject);
        assert_eq!(c.rules[0].matcher.pattern, b"@example.com");
    }

    #[test]
    fn flag_errors() {
        let bad = |flags: Flags| Config::build(None, &flags).unwrap_err().to_string();
        assert_eq!(
            bad(Flags {
                string: vec!["x".into()],
                ttl: Some("soon".into()),
                ..Flags::default()
            }),
            "command line: --ttl = soon: expected a duration such as 86400, 90s, 15m, 24h, 7d or 1h30m"
        );
        assert_eq!(
            bad(Flags {
                hex_string: vec!["|4".into()],
                ..Flags::default()
            }),
            "command line: --hex-string = |4: Odd number of hex digits"
        );
        assert_eq!(
            bad(Flags::default()),
            "command line: give --string, --hex-string or --config"
        );
        assert!(
            bad(Flags {
                string: vec!["x".into()],
                action: Some("nuke".into()),
                ..Flags::default()
            })
            .contains("--action = nuke")
        );
    }
}
