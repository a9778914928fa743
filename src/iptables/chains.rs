//! Imported iptables rules, run: a packet enters the family's `filter` `INPUT` chain (or
//! `FORWARD`, on a gateway: [`Hook`]) and goes rule by rule as in the kernel — the protocol first, then each match in order (a
//! match that fails ends the rule, so a later `-m recent --set` only acts when the earlier
//! matches held), then the target: ACCEPT, DROP, REJECT, RETURN, or a jump into a user chain.
//! The end of a user chain returns; the end of `INPUT` / `FORWARD` applies its policy. A rule
//! without a target only counts the packets it matches, as in the kernel: every rule's count is
//! kept (by its place in the file) for `stats`.
//!
//! Verdicts: ACCEPT → accept; DROP → drop; `REJECT --reject-with tcp-reset` → reset; any other
//! REJECT → drop (stringban sends no ICMP errors: a documented divergence).
//! The recent tables are shared by every worker (one per name, IPv4 and IPv6 together, as in a
//! network namespace), behind one lock as in the kernel.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use crate::iptables::{Family, Match, RecentCmd, Refusal, Rule, Ruleset, Target, refuse};
use crate::parse::{Packet, Transport};
use crate::recent::Tables;
use crate::scan::Scanner;
use crate::time::Instant;
use crate::verdict::Hook;

/// The verdict of an imported rule set, and the file line of the rule that gave it (None: the
/// chain's policy).
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub struct ChainVerdict {
    pub verdict: crate::verdict::Verdict,
    pub line: Option<usize>,
}

/// Rules by family and chain, ready to run.
#[derive(Clone, Debug)]
pub struct Chains {
    /// Rules of each chain, by chain number.
    chains: Vec<Vec<Rule>>,
    /// For each chain's rules, the chain number a `-j CHAIN` target jumps to.
    jumps: Vec<Vec<Option<usize>>>,
    /// The chain number of `INPUT` and of `FORWARD` ([hook][family]), if it has rules.
    starts: [[Option<usize>; 2]; 2],
    /// Built-in chains whose policy is DROP.
    dropping: Vec<(Family, Hook)>,
    /// For each chain's rules, the rule's place in the file's rule list (its counter).
    index: Vec<Vec<usize>>,
    /// The file's rules (every table): the counters' length.
    total: usize,
    recent: Arc<Mutex<Tables>>,
    /// For each chain's rules, a prebuilt scanner per `-m string` match, in order (the engine's
    /// xt_string: windows, Latin-1 case folding, invert; no allocation per packet).
    scanners: Vec<Vec<Vec<Scanner>>>,
}

/// Longest chain of jumps followed (the kernel refuses loops; this only bounds the walk).
const MAX_DEPTH: usize = 64;

impl Chains {
    /// The `filter` table's rules of `set` (other tables are not run), with `-I` positions
    /// applied; recent tables are created in rule order, as the kernel's rule checks do.
    /// `list_tot` bounds each recent table (the kernel's `ip_list_tot`); None: unbounded.
    pub fn new(set: &Ruleset, list_tot: Option<usize>) -> Result<Chains, Refusal> {
        let mut by_name: HashMap<(Family, String), Vec<(usize, Rule)>> = HashMap::new();
        for (n, r) in set
            .rules
            .iter()
            .enumerate()
            .filter(|(_, r)| r.table == "filter")
        {
            let list = by_name.entry((r.family, r.chain.clone())).or_default();
            match r.insert {
                Some(pos) => {
                    let at = (pos as usize).saturating_sub(1).min(list.len());
                    list.insert(at, (n, r.clone()));
                }
                None => list.push((n, r.clone())),
            }
        }
        let mut tables = match list_tot {
            Some(n) => Tables::with_list_tot(n),
            None => Tables::default(),
        };
        for r in &set.rules {
            for m in &r.matches {
                if let Match::Recent(rc) = m {
                    tables.add_rule(rc);
                }
            }
        }
        // The last word on each built-in chain's policy.
        let mut policies: HashMap<(Family, Hook), bool> = HashMap::new();
        for (family, table, chain, policy) in &set.policies {
            let hook = [Hook::Input, Hook::Forward]
                .into_iter()
                .find(|h| h.chain() == chain);
            if let (true, Some(hook)) = (table == "filter", hook) {
                policies.insert((*family, hook), policy == "DROP");
            }
        }
        let mut dropping: Vec<(Family, Hook)> = policies
            .into_iter()
            .filter(|(_, drop)| *drop)
            .map(|(k, _)| k)
            .collect();
        dropping.sort_by_key(|(f, h)| (*f == Family::V6, *h == Hook::Forward));
        // Number the chains and resolve every jump once.
        let names: Vec<(Family, String)> = by_name.keys().cloned().collect();
        let number = |f: Family, c: &str| names.iter().position(|(nf, nc)| *nf == f && nc == c);
        let jumps = names
            .iter()
            .map(|k| {
                by_name[k]
                    .iter()
                    .map(|(_, r)| match &r.target {
                        Some(Target::Chain(next)) => number(k.0, next),
                        _ => None,
                    })
                    .collect()
            })
            .collect();
        let starts = [Hook::Input, Hook::Forward]
            .map(|h| [number(Family::V4, h.chain()), number(Family::V6, h.chain())]);
        let index = names
            .iter()
            .map(|k| by_name[k].iter().map(|(n, _)| *n).collect())
            .collect();
        let chains: Vec<Vec<Rule>> = names
            .iter()
            .map(|k| by_name[k].iter().map(|(_, r)| r.clone()).collect())
            .collect();
        let scanners = chains
            .iter()
            .map(|rules| {
                rules
                    .iter()
                    .map(|r| {
                        r.matches
                            .iter()
                            .filter_map(|m| match m {
                                Match::String(sm, _) => Some(Scanner::new(&[sm])),
                                _ => None,
                            })
                            .collect()
                    })
                    .collect()
            })
            .collect();
        let c = Chains {
            chains,
            jumps,
            starts,
            dropping,
            index,
            total: set.rules.len(),
            recent: Arc::new(Mutex::new(tables)),
            scanners,
        };
        for start in c.starts.into_iter().flatten().flatten() {
            c.check_loops(start, &mut Vec::new(), &names)?;
        }
        Ok(c)
    }

    fn check_loops(
        &self,
        chain: usize,
        path: &mut Vec<usize>,
        names: &[(Family, String)],
    ) -> Result<(), Refusal> {
        if path.contains(&chain) {
            let walk: Vec<&str> = path.iter().map(|&i| names[i].1.as_str()).collect();
            return Err(refuse!(
                "chain loop: {} -> {}",
                walk.join(" -> "),
                names[chain].1
            ));
        }
        path.push(chain);
        for next in self.jumps[chain].iter().flatten() {
            self.check_loops(*next, path, names)?;
        }
        path.pop();
        Ok(())
    }

    /// For each recent table that a `--rcheck` / `--update` rule reads: the longest
    /// `--seconds` of those rules (None: one reads it without `--seconds`, so an entry counts
    /// for ever). A source held there within that window is one the rules still act on.
    pub fn recent_windows(&self) -> HashMap<String, Option<u32>> {
        let mut out: HashMap<String, Option<u32>> = HashMap::new();
        for r in self.chains.iter().flatten() {
            for m in &r.matches {
                let Match::Recent(rc) = m else { continue };
                if !matches!(rc.cmd, RecentCmd::Rcheck | RecentCmd::Update) || rc.invert {
                    continue;
                }
                let name = rc.name.trim_end_matches('\u{0}').to_string();
                let w = out.entry(name).or_insert(Some(0));
                *w = match (*w, rc.seconds) {
                    (None, _) | (_, None) => None,
                    (Some(a), Some(b)) => Some(a.max(b)),
                };
            }
        }
        out
    }

    /// How many rules the file has: the length of the counters [`Chains::decide`] fills.
    pub fn rule_count(&self) -> usize {
        self.total
    }

    /// The built-in chains that have rules or a DROP policy (either family): `INPUT`,
    /// `FORWARD`, both or none.
    pub fn hooks(&self) -> Vec<Hook> {
        [Hook::Input, Hook::Forward]
            .into_iter()
            .filter(|h| {
                self.starts[*h as usize].iter().any(Option::is_some)
                    || self.dropping.iter().any(|(_, d)| d == h)
            })
            .collect()
    }

    /// Decides a packet met at `hook`; `packets` counts, by the rule's place in the file, every
    /// rule that matched it (the caller's counters, sized to the file's rules).
    pub fn decide(
        &mut self,
        p: &Packet<'_>,
        hook: Hook,
        now: Instant,
        packets: &mut [u64],
    ) -> ChainVerdict {
        use crate::verdict::Verdict;
        let family = if p.src.is_ipv4() {
            Family::V4
        } else {
            Family::V6
        };
        let ttl = match p.bytes.first().map(|b| b >> 4) {
            Some(4) => p.bytes.get(8).copied().unwrap_or(0),
            _ => p.bytes.get(7).copied().unwrap_or(0),
        };
        if let Some(v) = self.walk(family, hook, p, ttl, now, packets) {
            return v;
        }
        ChainVerdict {
            verdict: if self.dropping.contains(&(family, hook)) {
                Verdict::Drop
            } else {
                Verdict::Accept
            },
            line: None,
        }
    }

    /// Walks the hook's chain and the chains it jumps to: the verdict of the rule that decides,
    /// or None for the policy. Frames live in a fixed array: no allocation per packet.
    fn walk(
        &mut self,
        family: Family,
        hook: Hook,
        p: &Packet<'_>,
        ttl: u8,
        now: Instant,
        packets: &mut [u64],
    ) -> Option<ChainVerdict> {
        use crate::verdict::Verdict;
        let Chains {
            chains,
            jumps,
            starts,
            index,
            recent,
            scanners,
            ..
        } = self;
        let start = starts[hook as usize][usize::from(family == Family::V6)]?;
        // (chain, next rule) frames.
        let mut stack = [(0usize, 0usize); MAX_DEPTH];
        stack[0] = (start, 0);
        let mut depth = 1;
        while depth > 0 {
            depth -= 1;
            let (chain, from) = stack[depth];
            let rules = chains[chain].iter().zip(&index[chain]).enumerate();
            for (i, (r, &counter)) in rules.skip(from) {
                if !matches(r, &mut scanners[chain][i], recent, p, ttl, now) {
                    continue;
                }
                if let Some(n) = packets.get_mut(counter) {
                    *n += 1;
                }
                let line = Some(r.line);
                let verdict = match &r.target {
                    Some(Target::Accept) => Verdict::Accept,
                    Some(Target::Drop) => Verdict::Drop,
                    Some(Target::Reject(with)) if with == "tcp-reset" => Verdict::Reset,
                    Some(Target::Reject(_)) => Verdict::Drop,
                    Some(Target::Return) => break,
                    Some(Target::Chain(_)) => {
                        let Some(next) = jumps[chain][i] else {
                            continue; // a chain with no rules: nothing happens there
                        };
                        if depth + 2 > MAX_DEPTH {
                            break;
                        }
                        stack[depth] = (chain, i + 1);
                        stack[depth + 1] = (next, 0);
                        depth += 2;
                        break;
                    }
                    None => continue,
                };
                return Some(ChainVerdict { verdict, line });
            }
        }
        None
    }

    /// The recent tables (shared by every clone of these chains).
    pub fn recent(&self) -> &Arc<Mutex<Tables>> {
        &self.recent
    }

    /// The same chains with recent tables of their own, copied from these (a new engine starts
    /// from the configuration's pristine tables, never from another engine's).
    pub fn with_own_tables(&self) -> Chains {
        let tables = self
            .recent
            .lock()
            .map(|t| t.clone())
            .unwrap_or_else(|poisoned| poisoned.into_inner().clone());
        Chains {
            recent: Arc::new(Mutex::new(tables)),
            ..self.clone()
        }
    }

    /// Uses `tables` from now on (the daemon gives every worker, and every reload, the same).
    pub fn share_recent(&mut self, tables: Arc<Mutex<Tables>>) {
        self.recent = tables;
    }
}

/// Does rule `r` hold for the packet? Its protocol, then each match in order (the first that
/// fails ends it, so a later `-m recent` acts only if the earlier matches held).
fn matches(
    r: &Rule,
    scanners: &mut [Scanner],
    recent: &Mutex<Tables>,
    p: &Packet<'_>,
    ttl: u8,
    now: Instant,
) -> bool {
    if let Some((neg, proto)) = &r.proto {
        let is = match proto.as_str() {
            "tcp" => matches!(p.transport, Transport::Tcp(_)),
            "udp" => matches!(p.transport, Transport::Udp { .. }),
            _ => true,
        };
        if is == *neg {
            return false;
        }
    }
    let ports = p.ports();
    let mut strings = 0;
    for m in &r.matches {
        let ok = match m {
            Match::Ports { sport, dport, .. } => {
                let Some((sp, dp)) = ports else { return false };
                let hit = |want: &Option<(bool, crate::iptables::PortRange)>, v: u16| {
                    want.is_none_or(|(neg, r)| (r.0 <= v && v <= r.1) != neg)
                };
                hit(sport, sp) && hit(dport, dp)
            }
            Match::Multiport {
                which,
                invert,
                ports: list,
            } => {
                let Some((sp, dp)) = ports else { return false };
                let any = |v: u16| list.iter().any(|r| r.0 <= v && v <= r.1);
                let hit = match *which {
                    "--sports" => any(sp),
                    "--dports" => any(dp),
                    _ => any(sp) || any(dp),
                };
                hit != *invert
            }
            Match::String(..) => {
                let scanner = &mut scanners[strings];
                strings += 1;
                scanner.first_match(p.bytes, |_| true).is_some()
            }
            Match::Recent(rc) => {
                let addr: IpAddr = if rc.dest { p.dst } else { p.src };
                let mut tables = recent
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
                tables.eval(rc, addr, ttl, now)
            }
            Match::Comment(_) => true,
        };
        if !ok {
            return false;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::craft::tcp_segment;
    use crate::iptables::parse;
    use crate::verdict::Verdict;

    const RECIPE: &str = "iptables -N blackchain\niptables -A INPUT -p tcp --dport 25 -m recent --name blacklist --update --seconds 86400 -j DROP\niptables -A INPUT -p tcp --dport 25 -m string --string \"example.com\" --algo bm -j blackchain\niptables -A blackchain -m recent --set --name blacklist -p tcp -j REJECT --reject-with tcp-reset\n";

    fn seg(src: &str, dport: u16, payload: &str) -> Vec<u8> {
        tcp_segment(
            (src.parse().unwrap(), 40_000),
            ("198.18.0.1".parse().unwrap(), dport),
            1,
            1,
            payload.as_bytes(),
        )
    }

    fn run(c: &mut Chains, bytes: &[u8], s: u64) -> ChainVerdict {
        let p = crate::parse::packet(bytes).unwrap();
        c.decide(&p, Hook::Input, Instant::from_secs(1_000 + s), &mut [0; 16])
    }

    #[test]
    fn the_seed_recipe_runs_as_in_the_kernel() {
        let mut c = Chains::new(&parse(RECIPE).unwrap(), None).unwrap();
        let clean = seg("198.19.1.1", 25, "MAIL FROM:<a@b.test>\r\n");
        let spam = seg("198.19.1.1", 25, "RCPT TO:<v@example.com>\r\n");
        assert_eq!(
            run(&mut c, &clean, 0).verdict,
            Verdict::Accept,
            "INPUT policy"
        );
        let v = run(&mut c, &spam, 1);
        assert_eq!((v.verdict, v.line), (Verdict::Reset, Some(4)));
        assert_eq!(
            run(&mut c, &clean, 2).verdict,
            Verdict::Drop,
            "--update within 86400 s"
        );
        assert_eq!(run(&mut c, &clean, 50_000).verdict, Verdict::Drop);
        assert_eq!(
            run(&mut c, &clean, 2 + 86_400 + 1).verdict,
            Verdict::Drop,
            "the drop at 50,000 s refreshed it"
        );
        assert_eq!(
            run(&mut c, &clean, 2 + 86_400 + 1 + 86_400 + 1).verdict,
            Verdict::Accept,
            "a day of silence lifts it"
        );
        assert_eq!(
            run(&mut c, &seg("198.19.1.2", 80, "example.com"), 3).verdict,
            Verdict::Accept,
            "other port"
        );
    }

    #[test]
    fn return_policy_inverted_protocol_and_loops() {
        let text = "iptables -N a\niptables -P INPUT DROP\niptables -A INPUT ! -p udp -j a\niptables -A a -p tcp -m tcp --dport 22 -j RETURN\niptables -A a -j ACCEPT\n";
        let mut c = Chains::new(&parse(text).unwrap(), None).unwrap();
        assert_eq!(
            run(&mut c, &seg("10.0.0.1", 25, "x"), 0).verdict,
            Verdict::Accept
        );
        let v = run(&mut c, &seg("10.0.0.1", 22, "x"), 0);
        assert_eq!(
            (v.verdict, v.line),
            (Verdict::Drop, None),
            "RETURN, then the policy"
        );
        let looped = "iptables -N a\niptables -N b\niptables -A INPUT -j a\niptables -A a -j b\niptables -A b -j a\n";
        assert!(
            Chains::new(&parse(looped).unwrap(), None)
                .unwrap_err()
                .0
                .contains("loop")
        );
    }

    #[test]
    fn forward_runs_its_own_chain_and_policy_and_rules_without_target_count() {
        let text = "iptables -N spam\niptables -P FORWARD DROP\niptables -A FORWARD -p tcp --dport 25\niptables -A FORWARD -p tcp --dport 25 -m string --string example.com --algo bm -j spam\niptables -A FORWARD -p tcp --dport 25 -j ACCEPT\niptables -A spam -p tcp -j REJECT --reject-with tcp-reset\niptables -A INPUT -p tcp --dport 25 -j DROP\n";
        let mut c = Chains::new(&parse(text).unwrap(), None).unwrap();
        assert_eq!(c.hooks(), [Hook::Input, Hook::Forward]);
        let mut counts = [0u64; 6];
        let mut at = |c: &mut Chains, hook, payload: &str, dport| {
            let bytes = seg("198.19.1.1", dport, payload);
            let p = crate::parse::packet(&bytes).unwrap();
            c.decide(&p, hook, Instant::from_secs(1), &mut counts)
                .verdict
        };
        assert_eq!(at(&mut c, Hook::Forward, "HELO x", 25), Verdict::Accept);
        assert_eq!(
            at(&mut c, Hook::Forward, "RCPT TO:<a@example.com>", 25),
            Verdict::Reset
        );
        assert_eq!(
            at(&mut c, Hook::Forward, "x", 80),
            Verdict::Drop,
            "FORWARD's policy"
        );
        assert_eq!(
            at(&mut c, Hook::Input, "x", 80),
            Verdict::Accept,
            "INPUT's policy"
        );
        assert_eq!(at(&mut c, Hook::Input, "x", 25), Verdict::Drop);
        // By file order: the counting rule saw both port-25 packets.
        assert_eq!(counts, [2, 1, 1, 1, 1, 0]);
        let only_input = Chains::new(&parse(RECIPE).unwrap(), None).unwrap();
        assert_eq!(only_input.hooks(), [Hook::Input]);
        let policy_only = parse("iptables -P FORWARD DROP\n").unwrap();
        assert_eq!(
            Chains::new(&policy_only, None).unwrap().hooks(),
            [Hook::Forward]
        );
    }

    #[test]
    fn string_windows_and_case() {
        // Offsets count from the IP header: the TCP payload starts at 40.
        let text = "iptables -A INPUT -p tcp -m string --string ABC --algo bm --icase --from 42 --to 46 -j DROP\n";
        let mut c = Chains::new(&parse(text).unwrap(), None).unwrap();
        let v = |c: &mut Chains, payload: &str| run(c, &seg("10.0.0.1", 25, payload), 0).verdict;
        assert_eq!(v(&mut c, "xxabcx"), Verdict::Drop);
        assert_eq!(v(&mut c, "xxxabc"), Verdict::Drop, "ends exactly at `to`");
        assert_eq!(v(&mut c, "xxxxabc"), Verdict::Accept, "must end by `to`");
        assert_eq!(v(&mut c, "abcxxx"), Verdict::Accept, "starts before `from`");
    }
}
