//! iptables rules as users have them: an `iptables-save` file, or a shell script of
//! `iptables` / `ip6tables` commands. Parsed into [`Rule`]s that print back in `iptables -S`
//! save form (docs/KERNEL.md §2.3, §3.1); option combinations iptables refuses are refused with
//! its reasons; anything outside the supported set is an error naming the line and the part.
//!
//! Supported: `-N`, `-A`, `-I [N]` (and, in scripts, `-F`/`-X`/`-Z`/`-P` as no-ops), `-t TABLE`,
//! `-w`; `[!] -p tcp|udp|all`; `[!] --dport` / `--sport` (with `-p tcp|udp`, ranges `a:b`);
//! `-m tcp|udp|multiport|string|recent|comment` with every option of each; `-j ACCEPT | DROP |
//! RETURN | REJECT [--reject-with R] | CHAIN`. Scripts: comments, `\` continuations, quotes, and
//! `NAME=value` assignments expanded as `$NAME` / `${NAME}` the way the shell would.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;

use crate::rule::{self, Algo, StringMatch};

/// IPv4 (`iptables`) or IPv6 (`ip6tables`).
#[derive(Clone, Copy, Debug, Eq, Hash, PartialEq)]
pub enum Family {
    V4,
    V6,
}

/// A port or a range, as written (`25`, `1024:65535`).
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub struct PortRange(pub u16, pub u16);

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0 == self.1 {
            write!(f, "{}", self.0)
        } else {
            write!(f, "{}:{}", self.0, self.1)
        }
    }
}

/// `-m recent`'s command.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub enum RecentCmd {
    Set,
    Rcheck,
    Update,
    Remove,
}

/// `-m recent` (docs/KERNEL.md §3.1).
#[derive(Clone, Debug, Eq, PartialEq)]
pub struct Recent {
    pub cmd: RecentCmd,
    pub invert: bool,
    pub seconds: Option<u32>,
    pub reap: bool,
    pub hitcount: Option<u32>,
    pub rttl: bool,
    pub name: String,
    /// None: all ones.
    pub mask: Option<IpAddr>,
    /// `--rdest` (else `--rsource`).
    pub dest: bool,
}

/// One match module of a rule.
#[derive(Clone, Debug, Eq, PartialEq)]
pub enum Match {
    /// `-m tcp` / `-m udp` (or implied by `-p` with `--dport`/`--sport`).
    Ports {
        udp: bool,
        sport: Option<(bool, PortRange)>,
        dport: Option<(bool, PortRange)>,
    },
    /// `-m multiport --sports|--dports|--ports [!] LIST`.
    Multiport {
        which: &'static str,
        invert: bool,
        ports: Vec<PortRange>,
    },
    /// The string match, and whether `--algo` (mandatory) was given.
    String(StringMatch, bool),
    Recent(Recent),
    Comment(String),
}

/// Where a rule jumps.
#[derive(Clone, Debug, Eq, PartialEq)]
pub enum Target {
    Accept,
    Drop,
    Return,
    Reject(String),
    Chain(String),
}

/// One rule (`-A`/`-I`) or a new chain (`-N`).
#[derive(Clone, Debug, Eq, PartialEq)]
pub struct Rule {
    /// 1-based line of the file.
    pub line: usize,
    pub family: Family,
    pub table: String,
    pub chain: String,
    /// `-I` position (1-based); None for `-A`.
    pub insert: Option<u32>,
    pub proto: Option<(bool, String)>,
    pub matches: Vec<Match>,
    pub target: Option<Target>,
}

/// A refused line.
#[derive(Clone, Debug, Eq, PartialEq)]
pub struct ImportError {
    pub line: usize,
    pub text: String,
    pub problem: String,
}

impl fmt::Display for ImportError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "line {}: {}: {}",
            self.line,
            self.problem,
            self.text.trim()
        )
    }
}

impl std::error::Error for ImportError {}

/// What a file holds: new chains and rules, in order.
#[derive(Clone, Debug, Default, Eq, PartialEq)]
pub struct Ruleset {
    /// `(family, table, chain)` of every `-N` / `:CHAIN` declaration.
    pub chains: Vec<(Family, String, String)>,
    /// `(family, table, chain, policy)` of every `-P` / `:CHAIN POLICY` of a built-in chain.
    pub policies: Vec<(Family, String, String, String)>,
    pub rules: Vec<Rule>,
}

/// The built-in chains of a table, in `iptables -S` order.
fn builtins(table: &str) -> &'static [&'static str] {
    match table {
        "raw" => &["PREROUTING", "OUTPUT"],
        "mangle" => &["PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"],
        "nat" => &["PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"],
        _ => &["INPUT", "FORWARD", "OUTPUT"],
    }
}

impl Ruleset {
    /// The `(family, table)` pairs the file touches, in first-use order.
    pub fn tables(&self) -> Vec<(Family, String)> {
        let mut out: Vec<(Family, String)> = Vec::new();
        let all = self
            .chains
            .iter()
            .map(|(f, t, _)| (*f, t.clone()))
            .chain(self.rules.iter().map(|r| (r.family, r.table.clone())));
        for ft in all {
            if !out.contains(&ft) {
                out.push(ft);
            }
        }
        out
    }

    /// The file as a script of `iptables` / `ip6tables` commands that [`parse`] reads back to
    /// the same rule set (what `stringban import` puts in a configuration).
    pub fn script(&self) -> String {
        let mut out = String::new();
        for (family, table) in self.tables() {
            let tool = match family {
                Family::V4 => "iptables",
                Family::V6 => "ip6tables",
            };
            let t = if table == "filter" {
                String::new()
            } else {
                format!(" -t {table}")
            };
            for line in self.save(family, &table) {
                out.push_str(&format!("{tool}{t} {line}\n"));
            }
        }
        out
    }

    /// What `iptables -S` (`ip6tables -t TABLE -S`) prints for `family`/`table` once the file
    /// has run on an empty table: policies, new chains (sorted), then every chain's rules —
    /// built-in chains first, user chains sorted — with `-I` positions applied.
    pub fn save(&self, family: Family, table: &str) -> Vec<String> {
        let mut out = Vec::new();
        for b in builtins(table) {
            let policy = self
                .policies
                .iter()
                .rev()
                .find(|(f, t, c, _)| *f == family && t == table && c == b)
                .map_or("ACCEPT", |p| p.3.as_str());
            out.push(format!("-P {b} {policy}"));
        }
        let mut user: Vec<&String> = self
            .chains
            .iter()
            .filter(|(f, t, _)| *f == family && t == table)
            .map(|(_, _, c)| c)
            .collect();
        user.sort();
        user.dedup();
        out.extend(user.iter().map(|c| format!("-N {c}")));
        let order: Vec<&str> = builtins(table)
            .iter()
            .copied()
            .chain(user.iter().map(|c| c.as_str()))
            .collect();
        for chain in order {
            let mut rules: Vec<String> = Vec::new();
            for r in self
                .rules
                .iter()
                .filter(|r| r.family == family && r.table == table && r.chain == chain)
            {
                match r.insert {
                    Some(pos) => {
                        let at = (pos as usize).saturating_sub(1).min(rules.len());
                        rules.insert(at, r.to_string());
                    }
                    None => rules.push(r.to_string()),
                }
            }
            out.extend(rules);
        }
        out
    }
}

/// Most bytes a line may hold once its variables are expanded (a rule is a few hundred): an
/// `A=$A$A` doubling chain stops here with an error instead of taking the machine's memory.
pub const MAX_EXPANDED: usize = 64 * 1024;

/// Splits a shell line into words: quotes, backslashes, `$NAME` / `${NAME}` from `vars`
/// (unknown: empty, as the shell), `#` comments. Single quotes keep everything literal. The
/// expanded words may hold at most [`MAX_EXPANDED`] bytes in all.
fn words(line: &str, vars: &HashMap<String, String>) -> Result<Vec<String>, String> {
    let mut total = 0usize;
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut chars = line.chars().peekable();
    let mut quote: Option<char> = None;
    while let Some(c) = chars.next() {
        match (quote, c) {
            (None, '#') if !in_word => break,
            (None, c) if c.is_whitespace() => {
                if in_word {
                    out.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            (None, '\'' | '"') => {
                quote = Some(c);
                in_word = true;
            }
            (Some(q), c) if c == q => quote = None,
            (Some('\''), c) => cur.push(c),
            (_, '\\') => {
                in_word = true;
                match chars.next() {
                    Some(n) if quote.is_none() || matches!(n, '"' | '\\' | '$' | '`') => {
                        cur.push(n)
                    }
                    Some(n) => {
                        cur.push('\\');
                        cur.push(n);
                    }
                    None => {}
                }
            }
            (_, '$') => {
                in_word = true;
                let name: String = if chars.peek() == Some(&'{') {
                    chars.next();
                    let n: String = chars.by_ref().take_while(|&c| c != '}').collect();
                    n
                } else {
                    let mut n = String::new();
                    while let Some(&c) = chars.peek() {
                        if c.is_ascii_alphanumeric() || c == '_' {
                            n.push(c);
                            chars.next();
                        } else {
                            break;
                        }
                    }
                    n
                };
                if name.is_empty() {
                    cur.push('$');
                } else {
                    let value = vars.get(&name).map_or("", String::as_str);
                    total += value.len();
                    if total > MAX_EXPANDED {
                        return Err(format!(
                            "${name} expands the line past {MAX_EXPANDED} bytes (a runaway variable?)"
                        ));
                    }
                    cur.push_str(value);
                }
            }
            (_, c) => {
                cur.push(c);
                in_word = true;
            }
        }
    }
    if quote.is_some() {
        return Err("unterminated quote".into());
    }
    if in_word {
        out.push(cur);
    }
    Ok(out)
}

fn parse_port(s: &str) -> Result<u16, String> {
    s.parse()
        .map_err(|_| format!("port {s:?}: expected 0-65535"))
}

fn parse_range(s: &str) -> Result<PortRange, String> {
    match s.split_once(':') {
        Some((a, b)) => {
            let a = if a.is_empty() { 0 } else { parse_port(a)? };
            let b = if b.is_empty() { 65535 } else { parse_port(b)? };
            if a > b {
                return Err(format!(
                    "port range {s}: the first port is above the second"
                ));
            }
            Ok(PortRange(a, b))
        }
        None => parse_port(s).map(|p| PortRange(p, p)),
    }
}

/// Parses a file: an `iptables-save` dump or a shell script of `iptables` commands.
pub fn parse(text: &str) -> Result<Ruleset, ImportError> {
    let mut set = Ruleset::default();
    let mut vars: HashMap<String, String> = HashMap::new();
    let mut table = "filter".to_string();
    let mut pending = String::new();
    let mut start = 0;
    // One empty line more: a `\` continuation on the last line ends there (as the shell does).
    for (i, raw) in text.lines().chain(std::iter::once("")).enumerate() {
        if pending.is_empty() {
            start = i + 1;
        }
        if let Some(head) = raw.strip_suffix('\\') {
            pending.push_str(head);
            pending.push(' ');
            continue;
        }
        pending.push_str(raw);
        let line = std::mem::take(&mut pending);
        let err = |problem: String| ImportError {
            line: start,
            text: line.clone(),
            problem,
        };
        let t = line.trim();
        if t.is_empty() || t.starts_with('#') || t == "COMMIT" {
            continue;
        }
        if let Some(name) = t.strip_prefix('*') {
            table = name.trim().to_string();
            check_table(&table).map_err(&err)?;
            continue;
        }
        if let Some(decl) = t.strip_prefix(':') {
            let mut it = decl.split_whitespace();
            let name = it.next().unwrap_or("");
            check_chain(name).map_err(&err)?;
            let policy = it.next().unwrap_or("-");
            if builtins(&table).contains(&name) {
                set.policies.push((
                    Family::V4,
                    table.clone(),
                    name.to_string(),
                    policy.to_string(),
                ));
            } else {
                set.chains
                    .push((Family::V4, table.clone(), name.to_string()));
            }
            continue;
        }
        let w = words(t, &vars).map_err(&err)?;
        if w.is_empty() {
            continue;
        }
        // NAME=value
        if w.len() == 1
            && let Some((name, value)) = w[0].split_once('=')
            && !name.is_empty()
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        {
            vars.insert(name.to_string(), value.to_string());
            continue;
        }
        let (family, args) = if w[0].starts_with('-') {
            (Family::V4, &w[..]) // iptables-save rule lines
        } else {
            let base = w[0].rsplit('/').next().unwrap_or(&w[0]);
            match base {
                "iptables" | "iptables-legacy" | "iptables-nft" => (Family::V4, &w[1..]),
                "ip6tables" | "ip6tables-legacy" | "ip6tables-nft" => (Family::V6, &w[1..]),
                "set" | "echo" | "modprobe" | "exit" | "true" => continue,
                other => {
                    return Err(err(format!(
                        "unsupported command {other:?} (expected iptables or ip6tables)"
                    )));
                }
            }
        };
        if let Some(r) = command(family, &table, args, start).map_err(err)? {
            match r {
                Command::Chain(c) => set.chains.push((family, c.0, c.1)),
                Command::Policy(t, c, p) => set.policies.push((family, t, c, p)),
                Command::Rule(r) => set.rules.push(r),
            }
        }
    }
    // A jump to a name that is neither built in nor declared: a target we do not support.
    for r in &set.rules {
        if let Some(Target::Chain(c)) = &r.target
            && !set.chains.iter().any(|(_, _, n)| n == c)
        {
            return Err(ImportError {
                line: r.line,
                text: r.to_string(),
                problem: format!("unsupported target -j {c} (not a chain declared with -N)"),
            });
        }
    }
    Ok(set)
}

enum Command {
    Chain((String, String)),
    Policy(String, String, String),
    Rule(Rule),
}

/// One command's arguments (after the program name).
fn command(
    family: Family,
    table: &str,
    args: &[String],
    line: usize,
) -> Result<Option<Command>, String> {
    let mut table = table.to_string();
    let mut i = 0;
    let mut op: Option<(&str, String, Option<u32>)> = None;
    let mut rest = Vec::new();
    while i < args.len() {
        let a = args[i].as_str();
        let next = |i: usize| args.get(i + 1).cloned().ok_or(format!("{a} needs a value"));
        match a {
            "-w" | "--wait" => {
                if args.get(i + 1).is_some_and(|v| v.parse::<u32>().is_ok()) {
                    i += 1;
                }
            }
            "-t" | "--table" => {
                table = next(i)?;
                check_table(&table)?;
                i += 1;
            }
            "-A" | "--append" | "-N" | "--new-chain" | "-F" | "--flush" | "-X"
            | "--delete-chain" | "-Z" | "--zero" => {
                let chain = args.get(i + 1).cloned().unwrap_or_default();
                op = Some((a, chain, None));
                i += 1;
            }
            "-P" | "--policy" => {
                let chain = next(i)?;
                let policy = args
                    .get(i + 2)
                    .cloned()
                    .ok_or("-P needs a chain and a policy")?;
                if !matches!(policy.as_str(), "ACCEPT" | "DROP") {
                    return Err(format!("-P {chain} {policy}: the policy is ACCEPT or DROP"));
                }
                return Ok(Some(Command::Policy(table, chain, policy)));
            }
            "-I" | "--insert" => {
                let chain = next(i)?;
                i += 1;
                let pos = match args.get(i + 1).and_then(|v| v.parse::<u32>().ok()) {
                    Some(p) => {
                        i += 1;
                        Some(p)
                    }
                    None => Some(1),
                };
                op = Some(("-I", chain, pos));
            }
            _ => rest.push(args[i].clone()),
        }
        i += 1;
    }
    let Some((op, chain, pos)) = op else {
        return Err("no command (-A, -I or -N)".into());
    };
    match op {
        "-N" | "--new-chain" => {
            if chain.is_empty() {
                return Err("-N needs a chain name".into());
            }
            check_chain(&chain)?;
            Ok(Some(Command::Chain((table, chain))))
        }
        "-F" | "--flush" | "-X" | "--delete-chain" | "-Z" | "--zero" => Ok(None),
        _ => {
            if chain.is_empty() {
                return Err(format!("{op} needs a chain name"));
            }
            check_chain(&chain)?;
            let mut r = rule_options(&rest, family)?;
            r.line = line;
            r.table = table;
            r.chain = chain;
            r.insert = pos;
            Ok(Some(Command::Rule(r)))
        }
    }
}

/// The options of one rule: protocol, matches, target.
fn rule_options(args: &[String], family: Family) -> Result<Rule, String> {
    let mut r = Rule {
        line: 0,
        family,
        table: String::new(),
        chain: String::new(),
        insert: None,
        proto: None,
        matches: Vec::new(),
        target: None,
    };
    let mut i = 0;
    let mut invert = false;
    // The match whose options follow (index into r.matches).
    let mut current: Option<usize> = None;
    let take = |i: &mut usize, what: &str| -> Result<String, String> {
        *i += 1;
        args.get(*i)
            .cloned()
            .ok_or_else(|| format!("{what} needs a value"))
    };
    while i < args.len() {
        let a = args[i].as_str();
        if a == "!" {
            if invert {
                return Err("two ! in a row".into());
            }
            invert = true;
            i += 1;
            continue;
        }
        let neg = std::mem::take(&mut invert);
        match a {
            "-p" | "--protocol" => {
                let p = take(&mut i, a)?.to_ascii_lowercase();
                let p = match p.as_str() {
                    "6" => "tcp".to_string(),
                    "17" => "udp".to_string(),
                    "tcp" | "udp" | "all" => p,
                    other => {
                        return Err(format!("unsupported protocol {other:?} (tcp, udp or all)"));
                    }
                };
                r.proto = Some((neg, p));
            }
            "-m" | "--match" => {
                let name = take(&mut i, a)?;
                let m = match name.as_str() {
                    "tcp" | "udp" => {
                        if r.proto.as_ref().map(|p| p.1.as_str()) != Some(name.as_str()) {
                            return Err(format!("-m {name} needs -p {name} before it"));
                        }
                        Match::Ports {
                            udp: name == "udp",
                            sport: None,
                            dport: None,
                        }
                    }
                    "multiport" => {
                        if !matches!(r.proto.as_ref(), Some((false, p)) if p == "tcp" || p == "udp")
                        {
                            return Err("multiport needs `-p tcp' or `-p udp'".into());
                        }
                        Match::Multiport {
                            which: "",
                            invert: false,
                            ports: Vec::new(),
                        }
                    }
                    "string" => Match::String(
                        StringMatch {
                            pattern: Vec::new(),
                            algo: Algo::Bm,
                            from: 0,
                            to: u16::MAX,
                            icase: false,
                            invert: false,
                        },
                        false,
                    ),
                    "recent" => Match::Recent(Recent {
                        cmd: RecentCmd::Set,
                        invert: false,
                        seconds: None,
                        reap: false,
                        hitcount: None,
                        rttl: false,
                        name: "DEFAULT".into(),
                        mask: None,
                        dest: false,
                    }),
                    "comment" => Match::Comment(String::new()),
                    other => return Err(format!("unsupported match -m {other}")),
                };
                r.matches.push(m);
                current = Some(r.matches.len() - 1);
            }
            "-j" | "--jump" => {
                let t = take(&mut i, a)?;
                r.target = Some(match t.as_str() {
                    "ACCEPT" => Target::Accept,
                    "DROP" => Target::Drop,
                    "RETURN" => Target::Return,
                    "REJECT" => Target::Reject(match family {
                        Family::V4 => "icmp-port-unreachable".into(),
                        Family::V6 => "icmp6-port-unreachable".into(),
                    }),
                    // A user chain; checked against the declared chains once the file is read.
                    t => Target::Chain(t.to_string()),
                });
                current = None;
            }
            "--reject-with" => {
                let w = take(&mut i, a)?;
                match &mut r.target {
                    Some(Target::Reject(with)) => *with = w,
                    _ => return Err("--reject-with belongs to -j REJECT".into()),
                }
            }
            "--dport" | "--destination-port" | "--sport" | "--source-port" => {
                let v = parse_range(&take(&mut i, a)?)?;
                let is_dport = a.contains('d');
                let proto = match r.proto.as_ref() {
                    Some((false, p)) if p == "tcp" || p == "udp" => p.clone(),
                    _ => {
                        return Err(format!(
                            "unknown option \"{a}\" (it needs -p tcp or -p udp)"
                        ));
                    }
                };
                let idx = match r
                    .matches
                    .iter()
                    .position(|m| matches!(m, Match::Ports { .. }))
                {
                    Some(j) => j,
                    None => {
                        r.matches.push(Match::Ports {
                            udp: proto == "udp",
                            sport: None,
                            dport: None,
                        });
                        r.matches.len() - 1
                    }
                };
                if let Match::Ports { sport, dport, .. } = &mut r.matches[idx] {
                    let slot = if is_dport { dport } else { sport };
                    if slot.is_some() {
                        return Err(format!("{a} given twice"));
                    }
                    *slot = Some((neg, v));
                }
            }
            _ => {
                let Some(c) = current else {
                    return Err(format!("unsupported option {a:?}"));
                };
                module_option(&mut r.matches[c], a, neg, &mut i, args)?;
            }
        }
        i += 1;
    }
    if invert {
        return Err("a trailing !".into());
    }
    for m in &r.matches {
        check_match(m, &r)?;
    }
    if r.target.is_none() {
        return Err("no target (-j)".into());
    }
    if let Some(Target::Reject(with)) = &r.target
        && with == "tcp-reset"
        && !matches!(r.proto.as_ref(), Some((false, p)) if p == "tcp")
    {
        return Err("--reject-with tcp-reset needs -p tcp".into());
    }
    Ok(r)
}

/// One option of the match module `m`.
fn module_option(
    m: &mut Match,
    a: &str,
    neg: bool,
    i: &mut usize,
    args: &[String],
) -> Result<(), String> {
    let mut value = || -> Result<String, String> {
        *i += 1;
        args.get(*i)
            .cloned()
            .ok_or_else(|| format!("{a} needs a value"))
    };
    match m {
        Match::Ports { sport, dport, .. } => {
            let slot = match a {
                "--dport" | "--destination-port" => dport,
                "--sport" | "--source-port" => sport,
                _ => return Err(format!("unsupported option {a:?} of -m tcp/udp")),
            };
            *slot = Some((neg, parse_range(&value()?)?));
        }
        Match::Multiport {
            which,
            invert,
            ports,
        } => {
            *which = match a {
                "--dports" | "--destination-ports" => "--dports",
                "--sports" | "--source-ports" => "--sports",
                "--ports" => "--ports",
                _ => return Err(format!("unsupported option {a:?} of -m multiport")),
            };
            if !ports.is_empty() {
                return Err("multiport: only one of --sports, --dports, --ports".into());
            }
            *invert = neg;
            for p in value()?.split(',') {
                ports.push(parse_range(p)?);
            }
            // A range counts as two ports (the kernel's XT_MULTI_PORTS = 15).
            let n: usize = ports.iter().map(|r| if r.0 == r.1 { 1 } else { 2 }).sum();
            if n > 15 {
                return Err("multiport: too many ports specified (at most 15)".into());
            }
        }
        Match::String(sm, algo_given) => match a {
            "--string" | "--hex-string" => {
                if !sm.pattern.is_empty() {
                    return Err("STRING match: give --string or --hex-string once".into());
                }
                let v = value()?;
                let parsed = if a == "--string" {
                    rule::parse_string(&v)
                } else {
                    rule::parse_hex_string(&v)
                };
                sm.pattern = parsed.map_err(|e| e.to_string())?;
                sm.invert = neg;
            }
            "--algo" => {
                let v = value()?;
                sm.algo =
                    Algo::parse(&v).ok_or(format!("string: unknown --algo {v:?} (bm or kmp)"))?;
                *algo_given = true;
            }
            "--from" => sm.from = parse_u16(a, &value()?)?,
            "--to" => sm.to = parse_u16(a, &value()?)?,
            "--icase" => sm.icase = true,
            _ => return Err(format!("unsupported option {a:?} of -m string")),
        },
        Match::Recent(rc) => match a {
            "--set" | "--rcheck" | "--update" | "--remove" => {
                rc.cmd = match a {
                    "--set" => RecentCmd::Set,
                    "--rcheck" => RecentCmd::Rcheck,
                    "--update" => RecentCmd::Update,
                    _ => RecentCmd::Remove,
                };
                if rc.name.ends_with('\u{0}') {
                    return Err(
                        "recent: only one of `--set', `--rcheck' `--update' or `--remove' may be set"
                            .into(),
                    );
                }
                rc.invert = neg;
                // Mark "a command was given" without another field: a NUL the name can never hold.
                rc.name.push('\u{0}');
            }
            "--seconds" => {
                let v: u32 = value()?
                    .parse()
                    .map_err(|_| "recent: --seconds needs a number".to_string())?;
                if v == 0 {
                    return Err("recent: --seconds must be at least 1".into());
                }
                rc.seconds = Some(v);
            }
            "--hitcount" => {
                let v: u32 = value()?
                    .parse()
                    .map_err(|_| "recent: --hitcount needs a number".to_string())?;
                if v >= 65536 {
                    return Err("recent: --hitcount must be below 65536".into());
                }
                rc.hitcount = Some(v);
            }
            "--reap" => rc.reap = true,
            "--rttl" => rc.rttl = true,
            "--rsource" => rc.dest = false,
            "--rdest" => rc.dest = true,
            "--name" => {
                let v = value()?;
                if v.is_empty() || v == "." || v == ".." || v.contains('/') || v.len() > 199 {
                    return Err(format!("recent: bad --name {v:?}"));
                }
                let had = rc.name.ends_with('\u{0}');
                rc.name = v;
                if had {
                    rc.name.push('\u{0}');
                }
            }
            "--mask" => {
                let v = value()?;
                rc.mask = Some(
                    v.parse()
                        .map_err(|_| format!("recent: --mask {v}: not an address"))?,
                );
            }
            _ => return Err(format!("unsupported option {a:?} of -m recent")),
        },
        Match::Comment(c) => match a {
            "--comment" => {
                let v = value()?;
                if v.len() > 255 {
                    return Err("comment: at most 255 characters".into());
                }
                *c = v;
            }
            _ => return Err(format!("unsupported option {a:?} of -m comment")),
        },
    }
    Ok(())
}

fn parse_u16(what: &str, v: &str) -> Result<u16, String> {
    v.parse()
        .map_err(|_| format!("string: {what} {v:?}: expected 0-65535"))
}

/// What iptables' final checks refuse.
fn check_match(m: &Match, r: &Rule) -> Result<(), String> {
    match m {
        Match::String(sm, algo_given) => {
            if sm.pattern.is_empty() {
                return Err("STRING match: You must specify `--string' or `--hex-string'".into());
            }
            if !algo_given {
                return Err("string: option \"--algo\" must be specified".into());
            }
            if sm.from > sm.to {
                return Err(format!(
                    "string: --from {} is above --to {}",
                    sm.from, sm.to
                ));
            }
        }
        Match::Recent(rc) => {
            if !rc.name.ends_with('\u{0}') {
                return Err(
                    "recent: you must specify one of `--set', `--rcheck' `--update' or `--remove'"
                        .into(),
                );
            }
            let set_or_remove = matches!(rc.cmd, RecentCmd::Set | RecentCmd::Remove);
            if set_or_remove && (rc.seconds.is_some() || rc.hitcount.is_some() || rc.reap) {
                return Err(
                    "recent: --seconds, --hitcount and --reap go with --rcheck or --update".into(),
                );
            }
            if set_or_remove && rc.rttl {
                return Err("recent: --rttl goes with --rcheck or --update".into());
            }
            if rc.reap && rc.seconds.is_none() {
                return Err("recent: --reap needs --seconds".into());
            }
            if let Some(mask) = rc.mask
                && (mask.is_ipv4() != (r.family == Family::V4))
            {
                return Err(format!("recent: --mask {mask} is not of this family"));
            }
        }
        Match::Multiport { ports, .. } if ports.is_empty() => {
            return Err("multiport: give --sports, --dports or --ports".into());
        }
        Match::Comment(c) if c.is_empty() => return Err("comment: give --comment".into()),
        _ => {}
    }
    Ok(())
}

/// The tables iptables knows.
fn check_table(name: &str) -> Result<(), String> {
    match name {
        "filter" | "nat" | "mangle" | "raw" | "security" => Ok(()),
        _ => Err(format!(
            "table {name:?}: not filter, nat, mangle, raw or security"
        )),
    }
}

/// A chain name iptables takes (at most 28 bytes, not starting with `-` or `!`) that also
/// prints and reads back as one shell word: visible ASCII other than quotes, `\\`, `$`, `` ` ``.
fn check_chain(name: &str) -> Result<(), String> {
    let bad = |c: char| !c.is_ascii_graphic() || matches!(c, '\'' | '"' | '\\' | '$' | '`');
    if name.is_empty() {
        return Err("a chain declaration needs a name".into());
    }
    if name.len() > 28 {
        return Err(format!("chain name {name:?}: longer than 28 bytes"));
    }
    if name.starts_with(['-', '!']) {
        return Err(format!("chain name {name:?}: may not start with - or !"));
    }
    if let Some(c) = name.chars().find(|c| bad(*c)) {
        return Err(format!(
            "chain name {name:?}: {c:?} is not taken (visible ASCII other than quotes, \\, $ and `)"
        ));
    }
    Ok(())
}

fn quote(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

impl fmt::Display for Rule {
    /// `iptables -S` save form: `-A CHAIN …` (`-I` rules print as `-A`, as `-S` shows them).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "-A {}", self.chain)?;
        if let Some((neg, p)) = &self.proto {
            write!(f, "{} -p {p}", if *neg { " !" } else { "" })?;
        }
        let bang = |n: bool| if n { " !" } else { "" };
        for m in &self.matches {
            match m {
                Match::Ports { udp, sport, dport } => {
                    write!(f, " -m {}", if *udp { "udp" } else { "tcp" })?;
                    if let Some((n, p)) = sport {
                        write!(f, "{} --sport {p}", bang(*n))?;
                    }
                    if let Some((n, p)) = dport {
                        write!(f, "{} --dport {p}", bang(*n))?;
                    }
                }
                Match::Multiport {
                    which,
                    invert,
                    ports,
                } => {
                    let list: Vec<String> = ports.iter().map(PortRange::to_string).collect();
                    write!(
                        f,
                        " -m multiport{} {which} {}",
                        bang(*invert),
                        list.join(",")
                    )?;
                }
                Match::String(sm, _) => write!(f, " {sm}")?,
                Match::Recent(rc) => {
                    let cmd = match rc.cmd {
                        RecentCmd::Set => "--set",
                        RecentCmd::Rcheck => "--rcheck",
                        RecentCmd::Update => "--update",
                        RecentCmd::Remove => "--remove",
                    };
                    write!(f, " -m recent{} {cmd}", bang(rc.invert))?;
                    if let Some(s) = rc.seconds {
                        write!(f, " --seconds {s}")?;
                    }
                    if rc.reap {
                        f.write_str(" --reap")?;
                    }
                    if let Some(h) = rc.hitcount {
                        write!(f, " --hitcount {h}")?;
                    }
                    if rc.rttl {
                        f.write_str(" --rttl")?;
                    }
                    let name = rc.name.trim_end_matches('\u{0}');
                    let mask = match (rc.mask, self.family) {
                        (Some(m), _) => m.to_string(),
                        (None, Family::V4) => "255.255.255.255".into(),
                        (None, Family::V6) => "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff".into(),
                    };
                    write!(
                        f,
                        " --name {name} --mask {mask} {}",
                        if rc.dest { "--rdest" } else { "--rsource" }
                    )?;
                }
                Match::Comment(c) => write!(f, " -m comment --comment {}", quote(c))?,
            }
        }
        match &self.target {
            Some(Target::Accept) => f.write_str(" -j ACCEPT"),
            Some(Target::Drop) => f.write_str(" -j DROP"),
            Some(Target::Return) => f.write_str(" -j RETURN"),
            Some(Target::Reject(with)) => write!(f, " -j REJECT --reject-with {with}"),
            Some(Target::Chain(c)) => write!(f, " -j {c}"),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The recipe of the seed report, as a script (the README quotes it).
    const RECIPE: &str = r#"#!/bin/sh
IPTABLES=/sbin/iptables
PORT=25
$IPTABLES -N blackchain
$IPTABLES -A INPUT -p tcp --dport ${PORT} -m recent --name blacklist --update --seconds 86400 -j DROP
$IPTABLES -A INPUT -p tcp --dport $PORT -m string --string "example.com" --algo bm -j blackchain
$IPTABLES -A blackchain -m recent --set --name blacklist -p tcp -j REJECT --reject-with tcp-reset
"#;

    fn printed(text: &str) -> Vec<String> {
        parse(text)
            .unwrap()
            .rules
            .iter()
            .map(Rule::to_string)
            .collect()
    }

    #[test]
    fn the_seed_recipe_prints_as_iptables_s() {
        let set = parse(RECIPE).unwrap();
        assert_eq!(
            set.chains,
            [(Family::V4, "filter".to_string(), "blackchain".to_string())]
        );
        assert_eq!(
            printed(RECIPE),
            [
                "-A INPUT -p tcp -m tcp --dport 25 -m recent --update --seconds 86400 --name blacklist --mask 255.255.255.255 --rsource -j DROP",
                "-A INPUT -p tcp -m tcp --dport 25 -m string --string \"example.com\" --algo bm -j blackchain",
                "-A blackchain -p tcp -m recent --set --name blacklist --mask 255.255.255.255 --rsource -j REJECT --reject-with tcp-reset",
            ]
        );
        assert_eq!(set.rules[2].line, 7);
    }

    #[test]
    fn iptables_save_files_and_every_module() {
        let save = "# Generated by iptables-save\n*filter\n:INPUT ACCEPT [0:0]\n:SPAM - [0:0]\n-A INPUT -p tcp -m multiport --dports 25,587,2525:2530 -m comment --comment \"mail \\\"ports\\\"\" -j SPAM\n-A SPAM -m string ! --hex-string \"|40|Example|2e|com\" --algo kmp --from 40 --to 1500 --icase -m recent ! --rcheck --seconds 60 --reap --hitcount 3 --rttl --name x --mask 255.255.255.0 --rdest -j RETURN\n-A SPAM -p udp -m udp ! --sport 53 -j ACCEPT\nCOMMIT\n";
        assert_eq!(
            printed(save),
            [
                "-A INPUT -p tcp -m multiport --dports 25,587,2525:2530 -m comment --comment \"mail \\\"ports\\\"\" -j SPAM",
                "-A SPAM -m string ! --string \"@Example.com\" --algo kmp --from 40 --to 1500 --icase -m recent ! --rcheck --seconds 60 --reap --hitcount 3 --rttl --name x --mask 255.255.255.0 --rdest -j RETURN",
                "-A SPAM -p udp -m udp ! --sport 53 -j ACCEPT",
            ]
        );
    }

    #[test]
    fn ip6tables_insert_and_continuations() {
        let text = "ip6tables -w -I INPUT 2 -p tcp \\\n   --dport 25 -m recent --set -j REJECT --reject-with tcp-reset\n";
        let set = parse(text).unwrap();
        let r = &set.rules[0];
        assert_eq!((r.family, r.insert, r.line), (Family::V6, Some(2), 1));
        assert_eq!(
            r.to_string(),
            "-A INPUT -p tcp -m tcp --dport 25 -m recent --set --name DEFAULT --mask ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff --rsource -j REJECT --reject-with tcp-reset"
        );
        assert_eq!(
            printed("iptables -A INPUT -p tcp -j REJECT\n")[0],
            "-A INPUT -p tcp -j REJECT --reject-with icmp-port-unreachable"
        );
    }

    #[test]
    fn a_continuation_on_the_last_line_and_runaway_variables() {
        // No newline after the backslash, or one: the rule is kept either way.
        for text in [
            "iptables -A INPUT -p tcp --dport 25 \\\n  -j DROP \\",
            "iptables -A INPUT -p tcp --dport 25 \\\n  -j DROP \\\n",
        ] {
            assert_eq!(
                printed(text),
                ["-A INPUT -p tcp -m tcp --dport 25 -j DROP"],
                "{text:?}"
            );
        }
        // A=$A$A, forty times: refused at 64 KiB with the line and the variable named.
        let mut text = String::from("A=x\n");
        for _ in 0..40 {
            text.push_str("A=$A$A\n");
        }
        let e = parse(&text).unwrap_err();
        assert!(
            e.problem.contains("$A expands the line past 65536 bytes"),
            "{e}"
        );
        assert_eq!(e.line, 18, "{e}");
    }

    #[test]
    fn refusals_name_the_line_and_the_part() {
        for (text, want) in [
            ("*filtre\n", "table \"filtre\""),
            ("iptables -t ` -A INPUT -j DROP\n", "table \"`\""),
            (":''\u{1} - [0:0]\n", "is not taken"),
            ("iptables -N -bad\n", "may not start with"),
            (
                "iptables -N a_chain_name_of_more_than_28_bytes\n",
                "longer than 28 bytes",
            ),
            ("iptables -A 'a$b' -j DROP\n", "is not taken"),
            (
                "iptables -A INPUT -s 10.0.0.1 -j DROP\n",
                "unsupported option \"-s\"",
            ),
            (
                "iptables -A INPUT -m string --algo bm -j DROP\n",
                "You must specify `--string'",
            ),
            (
                "iptables -A INPUT -m string --string x -j DROP\n",
                "\"--algo\" must be specified",
            ),
            (
                "iptables -A INPUT -m recent --name x -j DROP\n",
                "you must specify one of `--set'",
            ),
            (
                "iptables -A INPUT -m recent --set --seconds 5 -j DROP\n",
                "go with --rcheck or --update",
            ),
            (
                "iptables -A INPUT -m recent --rcheck --reap -j DROP\n",
                "--reap needs --seconds",
            ),
            (
                "iptables -A INPUT -m recent --rcheck --seconds 0 -j DROP\n",
                "at least 1",
            ),
            (
                "iptables -A INPUT -m recent --set --update -j DROP\n",
                "only one of",
            ),
            ("iptables -A INPUT --dport 25 -j DROP\n", "needs -p tcp"),
            (
                "iptables -A INPUT -p tcp -m multiport --dports 1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16 -j DROP\n",
                "too many ports",
            ),
            (
                "iptables -A INPUT -m multiport --dports 25 -j DROP\n",
                "multiport needs",
            ),
            (
                "iptables -A INPUT -j REJECT --reject-with tcp-reset\n",
                "needs -p tcp",
            ),
            ("iptables -A INPUT -j LOG\n", "unsupported target -j LOG"),
            ("iptables -A INPUT -p tcp\n", "no target"),
            (
                "iptables -A INPUT -m string --string x --algo fsm -j DROP\n",
                "unknown --algo",
            ),
            (
                "iptables -A INPUT -m string --string x --algo bm --from 9 --to 5 -j DROP\n",
                "above --to",
            ),
            (
                "iptables -A INPUT -m conntrack --ctstate NEW -j DROP\n",
                "unsupported match -m conntrack",
            ),
            ("nft add rule x\n", "unsupported command \"nft\""),
            (
                "iptables -A INPUT -m comment --comment 'open -j DROP\n",
                "unterminated quote",
            ),
        ] {
            let e = parse(&format!("# header\n{text}")).unwrap_err();
            assert_eq!(e.line, 2, "{text}");
            assert!(e.problem.contains(want), "{text}: {e}");
        }
    }

    #[test]
    fn save_orders_like_iptables_s() {
        let text = "iptables -N zz\niptables -N AA\niptables -P INPUT DROP\niptables -A OUTPUT -j ACCEPT\niptables -A INPUT -j zz\niptables -I INPUT -j AA\niptables -I INPUT 2 -j DROP\niptables -A zz -j RETURN\n";
        let set = parse(text).unwrap();
        assert_eq!(
            set.save(Family::V4, "filter"),
            [
                "-P INPUT DROP",
                "-P FORWARD ACCEPT",
                "-P OUTPUT ACCEPT",
                "-N AA",
                "-N zz",
                "-A INPUT -j AA",
                "-A INPUT -j DROP",
                "-A INPUT -j zz",
                "-A OUTPUT -j ACCEPT",
                "-A zz -j RETURN",
            ]
        );
    }
}
