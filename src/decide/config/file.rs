//! The configuration file's front end: TOML (unknown keys refused) lowered into a [`Config`],
//! every error located by file, line, key and value.

use std::fmt;
use std::ops::Range;

use serde::Deserialize;
use toml::Spanned;

use super::rules::{At, Blame, RuleSpec, Set, lower};
use super::{Config, ConfigError, IptablesConfig, UDP_PROBLEM, UnparsedPolicy};
use crate::blacklist::ListConfig;
use crate::rule::{Ports, Protocol};
use crate::time::{self, Duration};

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
    allow: Option<RawAllow>,
    share: Option<RawShare>,
}

/// `[share]`: bans shared with a fleet through Redis.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawShare {
    url: Option<Spanned<String>>,
    ca_file: Option<String>,
    key_file: Option<String>,
    fleet: Option<Spanned<String>>,
    node: Option<Spanned<String>>,
    lists: Option<Vec<Spanned<String>>>,
    maxlen: Option<Spanned<u64>>,
}

/// `[allow]`: sources never banned.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAllow {
    #[serde(default)]
    cidrs: Vec<Spanned<String>>,
    #[serde(default)]
    files: Vec<String>,
    defaults: Option<bool>,
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
    flow_memory: Option<Spanned<SizeValue>>,
    flow_share: Option<Spanned<SizeValue>>,
    proof: Option<bool>,
}

/// A size: bytes as an integer, or text with a suffix (`"64M"`).
#[derive(Deserialize)]
#[serde(untagged)]
enum SizeValue {
    Bytes(u64),
    Text(String),
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
    threshold: Option<Spanned<u64>>,
    window: Option<Spanned<DurationValue>>,
    escalate: Option<Spanned<u64>>,
    max_ttl: Option<Spanned<DurationValue>>,
    remember: Option<Spanned<DurationValue>>,
    peer_max_ttl: Option<Spanned<DurationValue>>,
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
pub(super) struct Origin<'a> {
    pub(super) name: &'a str,
    pub(super) text: &'a str,
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

    pub(super) fn at<T>(
        &self,
        v: &Spanned<T>,
        key: &str,
        value: &str,
        problem: impl fmt::Display,
    ) -> ConfigError {
        self.error(Some(v.span()), key, value, problem)
    }
}

pub(super) fn parse_file(origin: &Origin<'_>) -> Result<Config, ConfigError> {
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
        if ports.contains(&0) {
            return Err(origin.error(None, "engine.ports", "0", "ports are 1-65535"));
        }
        config.engine.ports = Ports::list(&ports);
    }
    if let Some(allow) = raw.allow {
        for c in &allow.cidrs {
            let cidr = c
                .as_ref()
                .trim()
                .parse()
                .map_err(|e: crate::allow::BadCidr| origin.at(c, "allow.cidrs", c.as_ref(), e))?;
            let line = origin.text[..c.span().start.min(origin.text.len())]
                .matches('\n')
                .count()
                + 1;
            config.allow.entries.push(crate::allow::Allowed {
                cidr,
                origin: format!("{}:{line}", origin.name),
            });
        }
        config.allow.files = allow.files;
        if let Some(d) = allow.defaults {
            config.allow.defaults = d;
        }
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
    if let Some(p) = raw.engine.proof {
        config.engine.proof = p;
    }
    if let Some(m) = &raw.engine.flow_memory {
        let text = match m.as_ref() {
            SizeValue::Bytes(b) => b.to_string(),
            SizeValue::Text(t) => t.clone(),
        };
        config.engine.flow_memory = super::parse_size(&text)
            .filter(|&b| b >= super::MIN_FLOW_MEMORY)
            .ok_or_else(|| {
                origin.at(
                    m,
                    "engine.flow_memory",
                    &text,
                    "expected a size of at least 1M: bytes, or text with K, M or G (\"64M\")",
                )
            })?;
    }
    if let Some(m) = &raw.engine.flow_share {
        let text = match m.as_ref() {
            SizeValue::Bytes(b) => b.to_string(),
            SizeValue::Text(t) => t.clone(),
        };
        let share = super::parse_size(&text)
            .filter(|&b| b >= super::MIN_FLOW_SHARE)
            .ok_or_else(|| {
                origin.at(
                    m,
                    "engine.flow_share",
                    &text,
                    "expected a size of at least 64K: bytes, or text with K, M or G (\"4M\")",
                )
            })?;
        config.engine.flow_share = Some(share);
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
        if let Some(t) = &list.threshold {
            out.threshold = match u16::try_from(*t.as_ref()) {
                Ok(n @ 1..=255) => n as u8,
                _ => {
                    let v = t.as_ref().to_string();
                    return Err(origin.at(t, "list.threshold", &v, "must be 1 to 255"));
                }
            };
        }
        if let Some(e) = &list.escalate {
            out.escalate = match u16::try_from(*e.as_ref()) {
                Ok(n @ 1..=16) => n as u8,
                _ => {
                    let v = e.as_ref().to_string();
                    return Err(origin.at(e, "list.escalate", &v, "must be 1 (off) to 16"));
                }
            };
        }
        let duration = |d: &Spanned<DurationValue>, key: &str| match d.as_ref() {
            DurationValue::Secs(0) => Err(origin.at(d, key, "0", "must be more than 0")),
            DurationValue::Secs(s) => Ok(Duration::from_secs(*s)),
            DurationValue::Text(t) => match time::parse_duration(t) {
                Ok(Duration::ZERO) => Err(origin.at(d, key, t, "must be more than 0")),
                Ok(v) => Ok(v),
                Err(e) => Err(origin.at(d, key, t, e)),
            },
        };
        if let Some(w) = &list.window {
            out.window = duration(w, "list.window")?;
        }
        if let Some(m) = &list.max_ttl {
            out.max_ttl = Some(duration(m, "list.max_ttl")?);
        }
        if let Some(r) = &list.remember {
            out.remember = Some(duration(r, "list.remember")?);
        }
        if let Some(p) = &list.peer_max_ttl {
            out.peer_max_ttl = Some(duration(p, "list.peer_max_ttl")?);
        }
        if let Some(m) = &list.max_ttl
            && out.max_ttl < Some(out.ttl)
        {
            return Err(origin.at(m, "list.max_ttl", "", "must be at least the list's ttl"));
        }
        config.lists.push(out);
    }
    if config.lists.is_empty() {
        config.lists.push(ListConfig::new("default"));
    }
    for (index, spanned) in raw.rule.into_iter().enumerate() {
        let span = spanned.span();
        let rule = lower(
            spec_of(span.clone(), spanned.into_inner()),
            index,
            &config.lists,
            origin,
        )?;
        if rule.protocol == Protocol::Udp && !config.engine.ports.is_any() {
            return Err(origin.error(Some(span), "rule.protocol", "udp", UDP_PROBLEM));
        }
        config.rules.push(rule);
    }
    if let Some(share) = raw.share {
        let mut spec = super::ShareSpec::default();
        if let Some(u) = &share.url {
            super::check_share_url(u.as_ref())
                .map_err(|p| origin.at(u, "share.url", &super::redact_url(u.as_ref()), p))?;
            spec.url = Some(u.as_ref().clone());
        }
        spec.ca_file = share.ca_file;
        spec.key_file = share.key_file;
        for (key, v, out) in [
            ("share.fleet", &share.fleet, &mut spec.fleet),
            ("share.node", &share.node, &mut spec.node),
        ] {
            if let Some(v) = v {
                super::check_share_name(v.as_ref())
                    .map_err(|p| origin.at(v, key, v.as_ref(), p))?;
                *out = Some(v.as_ref().clone());
            }
        }
        if let Some(lists) = &share.lists {
            for l in lists {
                if !config.lists.iter().any(|c| c.name == *l.as_ref()) {
                    return Err(origin.at(l, "share.lists", l.as_ref(), "no such list"));
                }
            }
            spec.lists = Some(lists.iter().map(|l| l.as_ref().clone()).collect());
        }
        if let Some(m) = &share.maxlen {
            if *m.as_ref() < 1000 {
                return Err(origin.at(m, "share.maxlen", &m.as_ref().to_string(), "at least 1000"));
            }
            spec.maxlen = Some(*m.as_ref());
        }
        config.share = Some(spec);
    }
    Ok(config)
}

/// A file's `[[rule]]` as a [`RuleSpec`] (settings with their spans).
fn spec_of(span: std::ops::Range<usize>, r: RawRule) -> RuleSpec {
    let set = |v: Spanned<String>| Set {
        at: At::Span(v.span()),
        value: v.into_inner(),
    };
    RuleSpec {
        name: r.name,
        whole: At::Span(span),
        string: r.string.map(set),
        hex_string: r.hex_string.map(set),
        rcpt_domain: r.rcpt_domain.map(set),
        subdomains: r.subdomains,
        icase: r.icase,
        invert: r.invert,
        algo: r.algo.map(set),
        from: r.from.map(|f| Set {
            at: At::Span(f.span()),
            value: f.into_inner(),
        }),
        to: r.to,
        protocol: r.protocol.map(set),
        dports: r.dports,
        sports: r.sports,
        action: r.action.map(set),
        list: r.list.map(set),
        ban: r.ban,
        mode: r.mode.map(set),
    }
}

impl Blame for Origin<'_> {
    fn name(&self, key: &str) -> String {
        format!("rule.{key}")
    }

    fn blame(&self, at: &At, key: &str, value: &str, problem: &dyn fmt::Display) -> ConfigError {
        let span = match at {
            At::Span(s) => Some(s.clone()),
            At::Flag => None,
        };
        let key = if key.is_empty() {
            "rule".to_string()
        } else {
            self.name(key)
        };
        self.error(span, &key, value, problem)
    }
}
