//! iptables rules as users have them: an `iptables-save` or `ip6tables-save` file (the header
//! says the family, or `--family`), or a shell script of `iptables` / `ip6tables` commands.
//! Parsed into [`Rule`]s that print back in `iptables -S` / `ip6tables -S`
//! save form (docs/KERNEL.md §2.3, §3.1); option combinations iptables refuses are refused with
//! its reasons; anything outside the supported set is an error naming the line and the part.
//!
//! Supported: `-N`, `-A`, `-I [N]` (and, in scripts, `-F`/`-X`/`-Z`/`-P` as no-ops), `-t TABLE`,
//! `-w`; `[!] -p tcp|udp|all`; `[!] --dport` / `--sport` (with `-p tcp|udp`, ranges `a:b`);
//! `-m tcp|udp|multiport|string|recent|comment` with every option of each; `-j ACCEPT | DROP |
//! RETURN | REJECT [--reject-with R] | CHAIN`, or no target (the rule only counts). Scripts: comments, `\` continuations, quotes, and
//! `NAME=value` assignments expanded as `$NAME` / `${NAME}` the way the shell would.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;

use crate::rule::{self, Algo, StringMatch};

pub mod chains;
mod lexer;
mod parser;
#[cfg(test)]
mod peer;
pub mod recent;
mod save;

pub use lexer::MAX_EXPANDED;
pub use parser::{parse, parse_as};

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

/// Why a rule, an option, a chain or a table was refused (iptables' own words where it has
/// them); [`ImportError`] adds the line.
#[derive(Clone, Debug, Eq, PartialEq)]
pub struct Refusal(pub String);

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Refusal {}

impl From<String> for Refusal {
    fn from(s: String) -> Refusal {
        Refusal(s)
    }
}

impl From<&str> for Refusal {
    fn from(s: &str) -> Refusal {
        Refusal(s.to_string())
    }
}

/// `Refusal` from `format!` arguments.
macro_rules! refuse {
    ($($t:tt)*) => { $crate::iptables::Refusal(format!($($t)*)) };
}
pub(crate) use refuse;

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
pub(crate) fn builtins(table: &str) -> &'static [&'static str] {
    match table {
        "raw" => &["PREROUTING", "OUTPUT"],
        "mangle" => &["PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"],
        "nat" => &["PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"],
        _ => &["INPUT", "FORWARD", "OUTPUT"],
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
                "iptables -A nochain -j DROP\n",
                "no chain \"nochain\" in the filter table",
            ),
            ("-I @\n", "no chain \"@\""),
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
