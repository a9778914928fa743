//! The `iptables -S` save form of a rule set, and the script that reads back to it.

use super::*;

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

pub(super) fn quote(s: &str) -> String {
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
