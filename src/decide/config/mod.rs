//! Configuration: a TOML file and/or command-line flags → a validated [`Config`].
//!
//! Every refusal is a [`ConfigError`] naming where the bad value came from (file and line, or the
//! command line), the key and the value. Unknown keys are errors. The keys and their defaults are
//! listed in the README and in `examples/stringban.toml`.

use std::fmt;

use crate::allow::{Allowed, Allowlist};
use crate::blacklist::ListConfig;
use crate::rule::{Mode, Ports, Protocol, Rule};
use crate::time::{self, Duration};

mod file;
mod flags;
mod rules;

use file::{Origin, parse_file};
pub use flags::Flags;

/// A validated configuration.
#[derive(Clone, Debug, Default, Eq, PartialEq)]
pub struct Config {
    pub engine: EngineConfig,
    /// Sources never banned; see [`AllowConfig`].
    pub allow: AllowConfig,
    pub lists: Vec<ListConfig>,
    pub rules: Vec<Rule>,
    /// Imported iptables rules to run instead of stringban's own (`--iptables FILE`).
    pub iptables: Option<IptablesConfig>,
    /// The file's `[share]` section (the daemon's `--share*` flags override it at start).
    pub share: Option<ShareSpec>,
}

/// `[share]`: bans shared with a fleet of daemons through Redis. Every field is optional here;
/// the daemon fills in the defaults (fleet `stringban`, node = the host name, every list).
#[derive(Clone, Debug, Default, Eq, PartialEq)]
pub struct ShareSpec {
    /// `redis://[user:password@]HOST:PORT[/DB]` or `rediss://…` (TLS).
    pub url: Option<String>,
    /// PEM file of the CA that signed the server's certificate (`rediss://`).
    pub ca_file: Option<String>,
    /// The fleet key's file: entries are signed with it and only signed ones are applied.
    pub key_file: Option<String>,
    /// The fleet's name: every key is under `stringban:{FLEET}:`.
    pub fleet: Option<String>,
    /// This daemon's id in the fleet.
    pub node: Option<String>,
    /// The lists shared (by name); None: all.
    pub lists: Option<Vec<String>>,
    /// The change log's bound (`XADD … MAXLEN ~ N`).
    pub maxlen: Option<u64>,
}

/// A fleet or node name: 1 to 64 of letters, digits, `.`, `_`, `-`, `:`.
pub fn check_share_name(name: &str) -> Result<(), String> {
    let ok = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | ':');
    if name.is_empty() || name.len() > 64 || !name.chars().all(ok) {
        return Err("expected 1 to 64 letters, digits, '.', '_', '-' or ':'".into());
    }
    Ok(())
}

/// A Redis URL's scheme and host are there (the daemon parses it fully at start).
pub fn check_share_url(url: &str) -> Result<(), String> {
    let rest = url
        .strip_prefix("redis://")
        .or_else(|| url.strip_prefix("rediss://"))
        .ok_or("expected redis://[USER:PASSWORD@]HOST:PORT[/DB] or rediss://…")?;
    let host = rest.rsplit_once('@').map_or(rest, |(_, h)| h);
    if host.is_empty() || host.starts_with('/') || host.starts_with(':') {
        return Err("no host in the URL".into());
    }
    Ok(())
}

/// A Redis URL with its password replaced by `***`, for messages and `status`.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    match rest.rsplit_once('@') {
        Some((cred, host)) => match cred.split_once(':') {
            Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
            None => format!("{scheme}://***@{host}"),
        },
        None => url.to_string(),
    }
}

/// The allowlist as configured: CIDRs from the file and the command line, files to include, and
/// whether the daemon adds its defaults (loopback, the host's addresses). The shell reads the
/// files and the host's addresses and calls [`Config::allowlist`].
#[derive(Clone, Debug, Eq, PartialEq)]
pub struct AllowConfig {
    pub entries: Vec<Allowed>,
    pub files: Vec<String>,
    pub defaults: bool,
    /// What the engines use: `entries` once built; with the files' and the defaults once
    /// [`Config::resolve_allowlist`] ran.
    pub list: std::sync::Arc<Allowlist>,
}

impl Default for AllowConfig {
    fn default() -> AllowConfig {
        AllowConfig {
            entries: Vec::new(),
            files: Vec::new(),
            defaults: true,
            list: std::sync::Arc::default(),
        }
    }
}

impl Config {
    /// Sets the allowlist the engines use: the configured CIDRs, each file's (read by `read`, which returns the text
    /// or the reason it could not), and when `host` is given and defaults are on, loopback and
    /// `host`'s addresses (interface name, address) — except with imported iptables rules, which
    /// run exactly as the kernel runs them.
    pub fn resolve_allowlist(
        &mut self,
        read: impl FnMut(&str) -> Result<String, String>,
        host: Option<&[(String, std::net::IpAddr)]>,
    ) -> Result<(), ConfigError> {
        let list = self.allowlist(read, host)?;
        self.allow.list = std::sync::Arc::new(list);
        Ok(())
    }

    fn allowlist(
        &self,
        mut read: impl FnMut(&str) -> Result<String, String>,
        host: Option<&[(String, std::net::IpAddr)]>,
    ) -> Result<Allowlist, ConfigError> {
        let mut entries = self.allow.entries.clone();
        for name in &self.allow.files {
            let text = read(name).map_err(|problem| ConfigError {
                origin: name.clone(),
                line: None,
                key: "allow.files".into(),
                value: String::new(),
                problem,
            })?;
            entries.extend(crate::allow::parse_list(name, &text)?);
        }
        // Imported iptables rules run as the kernel runs them: no implicit allowlist there.
        if let (true, Some(host), None) = (self.allow.defaults, host, &self.iptables) {
            entries.extend(crate::allow::defaults(host));
        }
        Ok(Allowlist::new(entries))
    }
}

/// The least [`EngineConfig::flow_memory`] taken: room for a few thousand flows.
pub const MIN_FLOW_MEMORY: usize = 1 << 20;
const FLOW_MEMORY_HINT: &str =
    "expected a size of at least 1M: bytes, or with K, M or G (KiB, MiB, GiB)";

/// `64M`, `65536K`, `1G`, `67108864`: a size in bytes (binary suffixes K, M, G, optionally
/// followed by `iB` or `B`).
pub fn parse_size(text: &str) -> Option<usize> {
    let t = text.trim();
    let digits = t.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 {
        return None;
    }
    let n: usize = t[..digits].parse().ok()?;
    let shift = match t[digits..].trim().to_ascii_uppercase().as_str() {
        "" | "B" => 0,
        "K" | "KB" | "KIB" => 10,
        "M" | "MB" | "MIB" => 20,
        "G" | "GB" | "GIB" => 30,
        _ => return None,
    };
    n.checked_mul(1usize << shift)
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
    /// One memory budget, in bytes, for the state of every flow of every worker (slots, held
    /// segments, partial lines); full, it evicts unproven flows first.
    pub flow_memory: usize,
    /// What one source network (a /24, a /48) may hold of it in one worker's table; `None`:
    /// a sixteenth of `flow_memory` ([`EngineConfig::flow_share`]).
    pub flow_share: Option<usize>,
    /// Ask for proof of address before a conviction (off: trust source addresses, for load
    /// generators with forged sources and replays of one-sided captures — never on a host that
    /// strangers reach).
    pub proof: bool,
}

/// [`EngineConfig::flow_memory`]'s default: 64 MiB, enough for ~300,000 flows of a small mail
/// server.
pub const DEFAULT_FLOW_MEMORY: usize = 64 << 20;

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
            flow_memory: DEFAULT_FLOW_MEMORY,
            flow_share: None,
            proof: true,
        }
    }
}

impl EngineConfig {
    /// What one source network may hold of the flow memory, per worker: set, or a sixteenth.
    pub fn flow_share(&self) -> usize {
        self.flow_share
            .unwrap_or(self.flow_memory / crate::flow::SHARE_DIVISOR)
    }

    /// The flow memory budget these settings ask for.
    pub fn flow_budget(&self) -> crate::flow::FlowBudget {
        crate::flow::FlowBudget::with_share(self.flow_memory, self.flow_share())
    }
}

/// The least [`EngineConfig::flow_share`] taken: room for a few hundred flows.
pub const MIN_FLOW_SHARE: usize = 64 << 10;
const FLOW_SHARE_HINT: &str =
    "expected a size of at least 64K: bytes, or with K, M or G (KiB, MiB, GiB)";

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
    ) -> Result<IptablesConfig, crate::iptables::Refusal> {
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
            if flags.ports.contains(&0) {
                return Err(cli("--port", "0", &"ports are 1-65535"));
            }
            config.engine.ports = Ports::list(&flags.ports);
        }
        flags::add_allow(&mut config, flags)?;
        config.allow.list = std::sync::Arc::new(Allowlist::new(config.allow.entries.clone()));
        if let Some(ttl) = &flags.ttl {
            config.lists[0].ttl = time::parse_duration(ttl).map_err(|e| cli("--ttl", ttl, &e))?;
            if config.lists[0].ttl == Duration::ZERO {
                return Err(cli("--ttl", ttl, &"must be more than 0"));
            }
        }
        let positive = |flag: &str, text: &str| match time::parse_duration(text) {
            Ok(Duration::ZERO) => Err(cli(flag, text, &"must be more than 0")),
            Ok(d) => Ok(d),
            Err(e) => Err(cli(flag, text, &e)),
        };
        if let Some(n) = flags.threshold {
            config.lists[0].threshold = match n {
                1..=255 => n as u8,
                _ => return Err(cli("--threshold", &n.to_string(), &"must be 1 to 255")),
            };
        }
        if let Some(w) = &flags.window {
            config.lists[0].window = positive("--window", w)?;
        }
        if let Some(n) = flags.escalate {
            config.lists[0].escalate = match n {
                1..=16 => n as u8,
                _ => return Err(cli("--escalate", &n.to_string(), &"must be 1 (off) to 16")),
            };
        }
        if let Some(m) = &flags.max_ttl {
            let max = positive("--max-ttl", m)?;
            if max < config.lists[0].ttl {
                return Err(cli("--max-ttl", m, &"must be at least the ttl"));
            }
            config.lists[0].max_ttl = Some(max);
        }
        if let Some(capacity) = flags.capacity {
            if capacity == 0 {
                return Err(cli("--capacity", "0", &"must be at least 1"));
            }
            config.lists[0].capacity = usize::try_from(capacity).unwrap_or(usize::MAX);
        }
        flags::add_rules(&mut config, flags)?;
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
        if flags.no_proof {
            config.engine.proof = false;
        }
        if let Some(m) = &flags.flow_memory {
            config.engine.flow_memory = parse_size(m)
                .filter(|&b| b >= MIN_FLOW_MEMORY)
                .ok_or_else(|| cli("--flow-memory", m, &FLOW_MEMORY_HINT))?;
        }
        if let Some(m) = &flags.flow_share {
            config.engine.flow_share = Some(
                parse_size(m)
                    .filter(|&b| b >= MIN_FLOW_SHARE)
                    .ok_or_else(|| cli("--flow-share", m, &FLOW_SHARE_HINT))?,
            );
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
            let ruleset = crate::iptables::parse_as(text, flags.iptables_family).map_err(|e| {
                ConfigError {
                    origin: name.clone(),
                    line: Some(e.line),
                    key: String::new(),
                    value: e.text.trim().to_string(),
                    problem: e.problem.clone(),
                }
            })?;
            let iptables =
                IptablesConfig::new(ruleset, flags.compat_list_tot).map_err(|problem| {
                    ConfigError {
                        origin: name.clone(),
                        line: None,
                        key: String::new(),
                        value: String::new(),
                        problem: problem.to_string(),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rule::Action;

    fn err(text: &str) -> ConfigError {
        Config::from_toml("t.toml", text).unwrap_err()
    }

    #[test]
    fn the_share_section_and_its_errors() {
        let c = Config::from_toml(
            "t.toml",
            "[[list]]\nname = \"spam\"\n[[list]]\nname = \"bots\"\n[share]\nurl = \"rediss://sb:pw@10.0.0.5:6380/2\"\nca_file = \"/etc/ca.pem\"\nkey_file = \"/etc/fleet.key\"\nfleet = \"mx\"\nnode = \"mx1.example.net\"\nlists = [\"spam\"]\nmaxlen = 50000\n[[rule]]\nstring = \"x\"\nlist = \"spam\"\n",
        )
        .unwrap();
        let s = c.share.unwrap();
        assert_eq!(s.url.as_deref(), Some("rediss://sb:pw@10.0.0.5:6380/2"));
        assert_eq!(s.ca_file.as_deref(), Some("/etc/ca.pem"));
        assert_eq!(s.key_file.as_deref(), Some("/etc/fleet.key"));
        assert_eq!(
            (s.fleet.as_deref(), s.node.as_deref()),
            (Some("mx"), Some("mx1.example.net"))
        );
        assert_eq!(
            (s.lists, s.maxlen),
            (Some(vec!["spam".into()]), Some(50_000))
        );
        let e = err("[share]\nurl = \"http://sb:secret@x\"\n");
        assert_eq!((e.line, e.key.as_str()), (Some(2), "share.url"));
        assert!(e.problem.contains("redis://"));
        assert!(!e.to_string().contains("secret"), "{e}");
        let e = err("[share]\nurl = \"redis://:6379\"\n");
        assert!(e.problem.contains("no host"), "{e}");
        let e = err("[share]\nnode = \"a b\"\n");
        assert_eq!(
            (e.line, e.key.as_str(), e.value.as_str()),
            (Some(2), "share.node", "a b")
        );
        let e = err("[share]\nfleet = \"\"\n");
        assert_eq!(e.key, "share.fleet");
        let e = err("[share]\nlists = [\"nope\"]\n");
        assert_eq!(
            (e.key.as_str(), e.problem.as_str()),
            ("share.lists", "no such list")
        );
        let e = err("[share]\nmaxlen = 10\n");
        assert_eq!(e.key, "share.maxlen");
        let e = err("[share]\nurl = \"redis://x\"\npassword = \"p\"\n");
        assert!(e.problem.contains("unknown field"), "{e}");
        assert_eq!(redact_url("redis://u:pw@h:1/0"), "redis://u:***@h:1/0");
        assert_eq!(redact_url("rediss://pw@h"), "rediss://***@h");
        assert_eq!(redact_url("redis://h:6379"), "redis://h:6379");
    }

    #[test]
    fn allowlist_thresholds_and_escalation() {
        let mut c = Config::from_toml(
            "t.toml",
            "[allow]\ncidrs = [\"192.0.2.0/24\", \"2001:db8::/32\"]\nfiles = [\"relays.txt\"]\n\n[[list]]\nname = \"spam\"\nthreshold = 3\nwindow = \"5m\"\nescalate = 4\nmax_ttl = \"30d\"\n\n[[rule]]\nstring = \"x\"\n",
        )
        .unwrap();
        assert_eq!(c.allow.entries.len(), 2);
        assert_eq!(c.allow.entries[1].origin, "t.toml:2");
        assert_eq!((c.lists[0].threshold, c.lists[0].escalate), (3, 4));
        assert_eq!(c.lists[0].window, Duration::from_secs(300));
        assert_eq!(c.lists[0].ttl_for(2), Duration::from_secs(4 * 86_400));
        assert_eq!(c.lists[0].ttl_for(9), Duration::from_secs(30 * 86_400));
        let host = [("eth0".to_string(), "198.18.0.1".parse().unwrap())];
        c.resolve_allowlist(|_| Ok("198.51.100.7 # smarthost\n".into()), Some(&host))
            .unwrap();
        let l = &c.allow.list;
        for a in [
            "192.0.2.9",
            "198.51.100.7",
            "127.0.0.1",
            "198.18.0.1",
            "::1",
        ] {
            assert!(l.contains(a.parse().unwrap()), "{a}");
        }
        assert!(!l.contains("198.18.0.2".parse().unwrap()));
        // Defaults off; a file that cannot be read names itself.
        let mut c = Config::from_toml(
            "t.toml",
            "[allow]\ndefaults = false\n[[rule]]\nstring = \"x\"\n",
        )
        .unwrap();
        c.resolve_allowlist(|_| Ok(String::new()), Some(&host))
            .unwrap();
        assert!(!c.allow.list.contains("127.0.0.1".parse().unwrap()));
        let mut c = Config::from_toml(
            "t.toml",
            "[allow]\nfiles = [\"/nope\"]\n[[rule]]\nstring = \"x\"\n",
        )
        .unwrap();
        let e = c
            .resolve_allowlist(|_| Err("No such file".into()), None)
            .unwrap_err();
        assert_eq!(e.to_string(), "/nope: allow.files: No such file");
        // Refusals name the line and value.
        let e = err("[allow]\ncidrs = [\"10.0.0.1/8\"]\n[[rule]]\nstring = \"x\"\n");
        assert_eq!((e.line, e.value.as_str()), (Some(2), "10.0.0.1/8"));
        let e = err("[[list]]\nname = \"a\"\nthreshold = 0\n[[rule]]\nstring = \"x\"\n");
        assert_eq!((e.line, e.key.as_str()), (Some(3), "list.threshold"));
        let e = err(
            "[[list]]\nname = \"a\"\nttl = \"2d\"\nmax_ttl = \"1d\"\n[[rule]]\nstring = \"x\"\n",
        );
        assert_eq!(e.key, "list.max_ttl");
        let e = err("[engine]\nports = [0]\n[[rule]]\nstring = \"x\"\n");
        assert_eq!(e.key, "engine.ports");
        let flags = |f: Flags| {
            Config::build(
                None,
                &Flags {
                    string: vec!["x".into()],
                    ..f
                },
            )
        };
        let e = flags(Flags {
            ports: vec![0],
            ..Flags::default()
        })
        .unwrap_err();
        assert_eq!(e.to_string(), "command line: --port = 0: ports are 1-65535");
        let e = flags(Flags {
            allow: vec!["nope".into()],
            ..Flags::default()
        })
        .unwrap_err();
        assert_eq!(e.key, "--allow");
        let c = flags(Flags {
            threshold: Some(2),
            escalate: Some(2),
            ..Flags::default()
        })
        .unwrap();
        assert_eq!((c.lists[0].threshold, c.lists[0].escalate), (2, 2));
        assert!(
            flags(Flags {
                threshold: Some(256),
                ..Flags::default()
            })
            .is_err()
        );
        // Imported iptables rules run as the kernel's: no default allowlist.
        let mut c = Config::build(
            None,
            &Flags {
                iptables: Some(("r.sh".into(), "iptables -A INPUT -p tcp -j ACCEPT\n".into())),
                ..Flags::default()
            },
        )
        .unwrap();
        c.resolve_allowlist(|_| Ok(String::new()), Some(&host))
            .unwrap();
        assert!(!c.allow.list.contains("127.0.0.1".parse().unwrap()));
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

    #[test]
    fn flow_memory_sizes_and_their_errors() {
        assert_eq!(parse_size("64M"), Some(64 << 20));
        assert_eq!(parse_size("65536 KiB"), Some(64 << 20));
        assert_eq!(parse_size("1g"), Some(1 << 30));
        assert_eq!(parse_size("1048576"), Some(1 << 20));
        for bad in ["", "M", "12X", "-1M", "99999999999999999999G"] {
            assert_eq!(parse_size(bad), None, "{bad}");
        }
        let c = Config::build(
            Some((
                "f.toml",
                "[engine]\nflow_memory = \"8M\"\n[[rule]]\nstring = \"x\"\n",
            )),
            &Flags::default(),
        )
        .expect("valid");
        assert_eq!(c.engine.flow_memory, 8 << 20);
        assert_eq!(
            Config::build(
                None,
                &Flags {
                    string: vec!["x".into()],
                    ..Flags::default()
                }
            )
            .expect("valid")
            .engine
            .flow_memory,
            DEFAULT_FLOW_MEMORY
        );
        let e = Config::build(
            Some((
                "f.toml",
                "[engine]\nflow_memory = \"1K\"\n[[rule]]\nstring = \"x\"\n",
            )),
            &Flags::default(),
        )
        .expect_err("too small");
        let text = e.to_string();
        assert!(
            text.contains("f.toml:2") && text.contains("engine.flow_memory") && text.contains("1K"),
            "{text}"
        );
        let flags = Flags {
            string: vec!["x".into()],
            flow_memory: Some("lots".into()),
            ..Flags::default()
        };
        let text = Config::build(None, &flags)
            .expect_err("not a size")
            .to_string();
        assert!(
            text.contains("--flow-memory") && text.contains("lots"),
            "{text}"
        );
    }

    #[test]
    fn a_networks_share_defaults_to_a_sixteenth_and_says_what_is_wrong() {
        let c = Config::build(
            Some((
                "f.toml",
                "[engine]\nflow_memory = \"32M\"\n[[rule]]\nstring = \"x\"\n",
            )),
            &Flags::default(),
        )
        .expect("valid");
        assert_eq!(c.engine.flow_share(), 2 << 20);
        assert_eq!(c.engine.flow_budget().share(), 2 << 20);
        let c = Config::build(
            Some((
                "f.toml",
                "[engine]\nflow_share = \"512K\"\n[[rule]]\nstring = \"x\"\n",
            )),
            &Flags::default(),
        )
        .expect("valid");
        assert_eq!(c.engine.flow_share(), 512 << 10);
        let text = Config::build(
            Some((
                "f.toml",
                "[engine]\nflow_share = \"1K\"\n[[rule]]\nstring = \"x\"\n",
            )),
            &Flags::default(),
        )
        .expect_err("too small")
        .to_string();
        assert!(
            text.contains("f.toml:2") && text.contains("engine.flow_share") && text.contains("1K"),
            "{text}"
        );
        let flags = Flags {
            string: vec!["x".into()],
            flow_share: Some("some".into()),
            ..Flags::default()
        };
        let text = Config::build(None, &flags)
            .expect_err("not a size")
            .to_string();
        assert!(
            text.contains("--flow-share") && text.contains("some"),
            "{text}"
        );
    }
}
