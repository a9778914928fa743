//! Save files and scripts into a [`Ruleset`]: commands, each module's options, and the checks
//! iptables makes (with its error texts).

use super::lexer::words;
use super::*;

pub(super) fn parse_port(s: &str) -> Result<u16, Refusal> {
    s.parse()
        .map_err(|_| refuse!("port {s:?}: expected 0-65535"))
}

pub(super) fn parse_range(s: &str) -> Result<PortRange, Refusal> {
    match s.split_once(':') {
        Some((a, b)) => {
            let a = if a.is_empty() { 0 } else { parse_port(a)? };
            let b = if b.is_empty() { 65535 } else { parse_port(b)? };
            if a > b {
                return Err(refuse!(
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
        let err = |problem: Refusal| ImportError {
            line: start,
            text: line.clone(),
            problem: problem.0,
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
                    return Err(err(refuse!(
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

pub(super) enum Command {
    Chain((String, String)),
    Policy(String, String, String),
    Rule(Rule),
}

/// One command's arguments (after the program name).
pub(super) fn command(
    family: Family,
    table: &str,
    args: &[String],
    line: usize,
) -> Result<Option<Command>, Refusal> {
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
                    return Err(refuse!("-P {chain} {policy}: the policy is ACCEPT or DROP"));
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
                return Err(refuse!("{op} needs a chain name"));
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
pub(super) fn rule_options(args: &[String], family: Family) -> Result<Rule, Refusal> {
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
    let take = |i: &mut usize, what: &str| -> Result<String, Refusal> {
        *i += 1;
        args.get(*i)
            .cloned()
            .ok_or_else(|| refuse!("{what} needs a value"))
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
                        return Err(refuse!("unsupported protocol {other:?} (tcp, udp or all)"));
                    }
                };
                r.proto = Some((neg, p));
            }
            "-m" | "--match" => {
                let name = take(&mut i, a)?;
                let m = match name.as_str() {
                    "tcp" | "udp" => {
                        if r.proto.as_ref().map(|p| p.1.as_str()) != Some(name.as_str()) {
                            return Err(refuse!("-m {name} needs -p {name} before it"));
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
                    other => return Err(refuse!("unsupported match -m {other}")),
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
                        return Err(refuse!(
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
                        return Err(refuse!("{a} given twice"));
                    }
                    *slot = Some((neg, v));
                }
            }
            _ => {
                let Some(c) = current else {
                    return Err(refuse!("unsupported option {a:?}"));
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
pub(super) fn module_option(
    m: &mut Match,
    a: &str,
    neg: bool,
    i: &mut usize,
    args: &[String],
) -> Result<(), Refusal> {
    let mut value = || -> Result<String, Refusal> {
        *i += 1;
        args.get(*i)
            .cloned()
            .ok_or_else(|| refuse!("{a} needs a value"))
    };
    match m {
        Match::Ports { sport, dport, .. } => {
            let slot = match a {
                "--dport" | "--destination-port" => dport,
                "--sport" | "--source-port" => sport,
                _ => return Err(refuse!("unsupported option {a:?} of -m tcp/udp")),
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
                _ => return Err(refuse!("unsupported option {a:?} of -m multiport")),
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
            _ => return Err(refuse!("unsupported option {a:?} of -m string")),
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
                    return Err(refuse!("recent: bad --name {v:?}"));
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
                        .map_err(|_| refuse!("recent: --mask {v}: not an address"))?,
                );
            }
            _ => return Err(refuse!("unsupported option {a:?} of -m recent")),
        },
        Match::Comment(c) => match a {
            "--comment" => {
                let v = value()?;
                if v.len() > 255 {
                    return Err("comment: at most 255 characters".into());
                }
                *c = v;
            }
            _ => return Err(refuse!("unsupported option {a:?} of -m comment")),
        },
    }
    Ok(())
}

pub(super) fn parse_u16(what: &str, v: &str) -> Result<u16, Refusal> {
    v.parse()
        .map_err(|_| refuse!("string: {what} {v:?}: expected 0-65535"))
}

/// What iptables' final checks refuse.
pub(super) fn check_match(m: &Match, r: &Rule) -> Result<(), Refusal> {
    match m {
        Match::String(sm, algo_given) => {
            if sm.pattern.is_empty() {
                return Err("STRING match: You must specify `--string' or `--hex-string'".into());
            }
            if !algo_given {
                return Err("string: option \"--algo\" must be specified".into());
            }
            if sm.from > sm.to {
                return Err(refuse!(
                    "string: --from {} is above --to {}",
                    sm.from,
                    sm.to
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
                return Err(refuse!("recent: --mask {mask} is not of this family"));
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
pub(super) fn check_table(name: &str) -> Result<(), Refusal> {
    match name {
        "filter" | "nat" | "mangle" | "raw" | "security" => Ok(()),
        _ => Err(refuse!(
            "table {name:?}: not filter, nat, mangle, raw or security"
        )),
    }
}

/// A chain name iptables takes (at most 28 bytes, not starting with `-` or `!`) that also
/// prints and reads back as one shell word: visible ASCII other than quotes, `\\`, `$`, `` ` ``.
pub(super) fn check_chain(name: &str) -> Result<(), Refusal> {
    let bad = |c: char| !c.is_ascii_graphic() || matches!(c, '\'' | '"' | '\\' | '$' | '`');
    if name.is_empty() {
        return Err("a chain declaration needs a name".into());
    }
    if name.len() > 28 {
        return Err(refuse!("chain name {name:?}: longer than 28 bytes"));
    }
    if name.starts_with(['-', '!']) {
        return Err(refuse!("chain name {name:?}: may not start with - or !"));
    }
    if let Some(c) = name.chars().find(|c| bad(*c)) {
        return Err(refuse!(
            "chain name {name:?}: {c:?} is not taken (visible ASCII other than quotes, \\, $ and `)"
        ));
    }
    Ok(())
}
