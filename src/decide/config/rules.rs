//! One path from a rule's settings to a validated [`Rule`]: both front ends — a file's
//! `[[rule]]` and the command line's `--string`/`--hex-string`/`--rcpt-domain` — lower into a
//! [`RuleSpec`], and [`lower`] checks it, so a rule means the same and is refused for the same
//! reasons whichever way it was given. Only where a refusal points differs ([`Blame`]).

use std::fmt;
use std::ops::Range;

use super::{ConfigError, MODE_PROBLEM, check_mode};
use crate::blacklist::{ListConfig, ListId};
use crate::rule::{self, Action, Algo, Domain, Mode, Ports, Protocol, Rule, StringMatch};

/// Where a setting came from: a span of the file, or the command line.
#[derive(Clone, Debug)]
pub(super) enum At {
    Span(Range<usize>),
    Flag,
}

/// A setting and where it came from.
#[derive(Clone, Debug)]
pub(super) struct Set<T> {
    pub(super) value: T,
    pub(super) at: At,
}

impl<T> Set<T> {
    pub(super) fn flag(value: T) -> Set<T> {
        Set {
            value,
            at: At::Flag,
        }
    }
}

/// A rule's settings as given, before any is checked.
#[derive(Clone, Debug)]
pub(super) struct RuleSpec {
    pub(super) name: Option<String>,
    /// The rule as a whole (a file's `[[rule]]`).
    pub(super) whole: At,
    pub(super) string: Option<Set<String>>,
    pub(super) hex_string: Option<Set<String>>,
    pub(super) rcpt_domain: Option<Set<String>>,
    pub(super) subdomains: bool,
    pub(super) icase: bool,
    pub(super) invert: bool,
    pub(super) algo: Option<Set<String>>,
    pub(super) from: Option<Set<u16>>,
    pub(super) to: Option<u16>,
    pub(super) protocol: Option<Set<String>>,
    pub(super) dports: Vec<u16>,
    pub(super) sports: Vec<u16>,
    pub(super) action: Option<Set<String>>,
    pub(super) list: Option<Set<String>>,
    pub(super) ban: Option<bool>,
    pub(super) mode: Option<Set<String>>,
}

impl RuleSpec {
    pub(super) fn new(whole: At) -> RuleSpec {
        RuleSpec {
            name: None,
            whole,
            string: None,
            hex_string: None,
            rcpt_domain: None,
            subdomains: false,
            icase: false,
            invert: false,
            algo: None,
            from: None,
            to: None,
            protocol: None,
            dports: Vec::new(),
            sports: Vec::new(),
            action: None,
            list: None,
            ban: None,
            mode: None,
        }
    }
}

/// How a front end names a setting and locates a refusal: `key` is the setting's name in a
/// file (`from`, `rcpt_domain`).
pub(super) trait Blame {
    /// The setting as the user wrote it (`rule.from`, `--from`).
    fn name(&self, key: &str) -> String;
    fn blame(&self, at: &At, key: &str, value: &str, problem: &dyn fmt::Display) -> ConfigError;
}

/// Checks `spec` (rule number `index`, lists `lists`) into a [`Rule`].
pub(super) fn lower(
    spec: RuleSpec,
    index: usize,
    lists: &[ListConfig],
    b: &dyn Blame,
) -> Result<Rule, ConfigError> {
    let whole = spec.whole.clone();
    let domain = match &spec.rcpt_domain {
        None => None,
        Some(d) => Some(
            Domain::parse(&d.value, spec.subdomains)
                .map_err(|e| b.blame(&d.at, "rcpt_domain", &d.value, &e))?,
        ),
    };
    let pattern = match (&spec.string, &spec.hex_string, &domain) {
        (Some(s), None, None) => {
            rule::parse_string(&s.value).map_err(|e| b.blame(&s.at, "string", &s.value, &e))?
        }
        (None, Some(h), None) => rule::parse_hex_string(&h.value)
            .map_err(|e| b.blame(&h.at, "hex_string", &h.value, &e))?,
        (None, None, Some(d)) => [b"@".as_slice(), &d.name].concat(),
        (None, None, None) => {
            return Err(b.blame(&whole, "", "", &"needs string, hex_string or rcpt_domain"));
        }
        (Some(s), ..) | (None, Some(s), _) => {
            return Err(b.blame(
                &s.at,
                "string",
                &s.value,
                &"give one of string, hex_string and rcpt_domain",
            ));
        }
    };
    if spec.subdomains && domain.is_none() {
        return Err(b.blame(&whole, "subdomains", "true", &"applies to rcpt_domain"));
    }
    let algo = match &spec.algo {
        None => Algo::Bm,
        Some(a) => Algo::parse(&a.value)
            .ok_or_else(|| b.blame(&a.at, "algo", &a.value, &"expected bm or kmp"))?,
    };
    let (from, to) = (
        spec.from.as_ref().map_or(0, |f| f.value),
        spec.to.unwrap_or(u16::MAX),
    );
    if let Some(f) = &spec.from
        && from > to
    {
        return Err(b.blame(
            &f.at,
            "from",
            &from.to_string(),
            &format!("is above {} ({to})", b.name("to")),
        ));
    }
    let protocol = match &spec.protocol {
        None => Protocol::Tcp,
        Some(p) => Protocol::parse(&p.value)
            .ok_or_else(|| b.blame(&p.at, "protocol", &p.value, &"expected tcp, udp or all"))?,
    };
    if protocol == Protocol::All && (!spec.dports.is_empty() || !spec.sports.is_empty()) {
        let at = spec.protocol.as_ref().map_or(&whole, |p| &p.at);
        return Err(b.blame(
            at,
            "protocol",
            "all",
            &"dports and sports need protocol tcp or udp",
        ));
    }
    let action = match &spec.action {
        None => Action::Reject,
        Some(a) => Action::parse(&a.value)
            .ok_or_else(|| b.blame(&a.at, "action", &a.value, &"expected reject, drop or log"))?,
    };
    if action == Action::Reject && protocol != Protocol::Tcp {
        let at = spec.action.as_ref().map_or(&whole, |a| &a.at);
        return Err(b.blame(at, "action", "reject", &"a reset needs protocol = \"tcp\""));
    }
    let ban = if spec.ban == Some(false) {
        None
    } else {
        match &spec.list {
            None => Some(0),
            Some(name) => {
                let i = lists.iter().position(|l| l.name == name.value);
                let i = i.ok_or_else(|| {
                    b.blame(&name.at, "list", &name.value, &"no [[list]] has this name")
                })?;
                Some(ListId::try_from(i).unwrap_or(ListId::MAX))
            }
        }
    };
    let mode = match &spec.mode {
        None if domain.is_some() => Mode::Smtp,
        None => Mode::Packet,
        Some(m) => {
            Mode::parse(&m.value).ok_or_else(|| b.blame(&m.at, "mode", &m.value, &MODE_PROBLEM))?
        }
    };
    check_mode(mode, from, to, spec.invert, protocol, domain.is_some()).map_err(
        |(what, problem)| {
            let at = match what {
                "from" => spec.from.as_ref().map(|f| &f.at),
                "protocol" => spec.protocol.as_ref().map(|p| &p.at),
                "rcpt_domain" => spec.rcpt_domain.as_ref().map(|d| &d.at),
                _ => spec.mode.as_ref().map(|m| &m.at),
            };
            b.blame(at.unwrap_or(&whole), what, mode.name(), &problem)
        },
    )?;
    let text = spec
        .string
        .as_ref()
        .or(spec.hex_string.as_ref())
        .or(spec.rcpt_domain.as_ref())
        .map(|s| s.value.clone())
        .unwrap_or_default();
    Ok(Rule {
        name: spec.name.unwrap_or_else(|| {
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
            icase: spec.icase,
            invert: spec.invert,
        },
        protocol,
        dports: Ports::list(&spec.dports),
        sports: Ports::list(&spec.sports),
        action,
        ban,
        mode,
        rcpt_domain: domain,
    })
}
