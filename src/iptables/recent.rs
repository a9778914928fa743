//! xt_recent, reproduced (docs/KERNEL.md §3.2): tables by name holding, per address, a TTL and a
//! ring of timestamps; least-recently-*set-or-updated* order; `--seconds` counting stamps at or
//! after the cutoff; `--hitcount`; `--reap` looking at the LRU head only; `--rttl`; the
//! table's mask fixed by the rule that created it; invert exactly as the kernel (including
//! `! --update` recording a stamp when the rule matches). No entry ever expires on its own.
//!
//! Divergences kept on purpose: capacity is unbounded by default (the kernel's `ip_list_tot`
//! is 100; `with_list_tot` reproduces it); times are microseconds, not jiffies.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

use crate::iptables::{Recent, RecentCmd};
use crate::time::{Duration, Instant};

/// A table key: family and masked address.
type Addr = (bool, u128);

#[derive(Clone, Debug)]
struct Entry {
    ttl: u8,
    index: usize,
    nstamps: usize,
    stamps: Vec<Instant>,
    /// Position in the LRU order.
    seq: u64,
}

#[derive(Clone, Debug)]
struct Table {
    /// The mask of the rule that created the table (None: all ones).
    mask: Option<IpAddr>,
    /// Stamps per entry, less one (a power of two less one).
    nstamps_mask: usize,
    entries: HashMap<Addr, Entry>,
    /// LRU order: sequence number → key; the smallest is the head (least recently set/updated).
    lru: BTreeMap<u64, Addr>,
    next_seq: u64,
}

/// One address a table holds (for reports: `replay --iptables`).
#[derive(Clone, Debug, Eq, PartialEq)]
pub struct Held {
    pub table: String,
    /// The masked address, and the mask's prefix length when the mask is a prefix (else the
    /// family's full length).
    pub addr: IpAddr,
    pub prefix: u8,
    /// Its oldest and newest stored stamps, and how many are stored.
    pub first: Instant,
    pub last: Instant,
    pub stamps: usize,
}

/// Every table, by name.
#[derive(Clone, Debug)]
pub struct Tables {
    tables: HashMap<String, Table>,
    /// Most entries per table (`ip_list_tot`); `usize::MAX` by default.
    list_tot: usize,
}

impl Default for Tables {
    fn default() -> Tables {
        Tables::with_list_tot(usize::MAX)
    }
}

/// The 16 bytes of a table's mask, as the kernel's `union nf_inet_addr` holds it: the rule's
/// parser starts from all ones and writes an IPv4 mask over the first 4 bytes only.
fn mask_bytes(mask: Option<IpAddr>) -> u128 {
    match mask {
        None => u128::MAX,
        Some(IpAddr::V6(m)) => m.to_bits(),
        Some(IpAddr::V4(m)) => (u128::from(m.to_bits()) << 96) | (u128::MAX >> 32),
    }
}

fn apply_mask(addr: IpAddr, mask: Option<IpAddr>) -> Addr {
    let m = mask_bytes(mask);
    match addr {
        // An IPv4 address is ANDed with the mask's first 4 bytes.
        IpAddr::V4(a) => (false, u128::from(a.to_bits() & (m >> 96) as u32)),
        IpAddr::V6(a) => (true, a.to_bits() & m),
    }
}

impl Tables {
    /// Tables holding at most `list_tot` entries each (the kernel's `ip_list_tot`).
    pub fn with_list_tot(list_tot: usize) -> Tables {
        Tables {
            tables: HashMap::new(),
            list_tot: list_tot.max(1),
        }
    }

    /// Registers a rule's match, in rule order, as the kernel's `recent_mt_check` does: the
    /// first rule naming a table creates it with its mask; a rule needing more stamps than the
    /// table keeps flushes and enlarges it.
    pub fn add_rule(&mut self, r: &Recent) {
        let want = match r.hitcount {
            Some(h) if h > 0 => (h as usize).next_power_of_two() - 1,
            _ => 31,
        };
        match self.tables.get_mut(&r.name) {
            None => {
                self.tables.insert(
                    r.name.clone(),
                    Table {
                        mask: r.mask,
                        nstamps_mask: want,
                        entries: HashMap::new(),
                        lru: BTreeMap::new(),
                        next_seq: 0,
                    },
                );
            }
            Some(t) if want > t.nstamps_mask => {
                t.entries.clear();
                t.lru.clear();
                t.nstamps_mask = want;
            }
            Some(_) => {}
        }
    }

    /// Entries in table `name`.
    pub fn len(&self, name: &str) -> usize {
        self.tables.get(name).map_or(0, |t| t.entries.len())
    }

    pub fn is_empty(&self) -> bool {
        self.tables.values().all(|t| t.entries.is_empty())
    }

    /// Every table's name and entry count, by name.
    pub fn sizes(&self) -> Vec<(String, usize)> {
        let mut out: Vec<_> = self
            .tables
            .iter()
            // The parser marks a name given with --name by a trailing NUL.
            .map(|(name, t)| (name.trim_end_matches('\u{0}').to_string(), t.entries.len()))
            .collect();
        out.sort();
        out
    }

    /// Every address every table holds, by table name then address.
    pub fn held(&self) -> Vec<Held> {
        let mut out = Vec::new();
        for (name, t) in &self.tables {
            let m = mask_bytes(t.mask);
            for (&(v6, bits), e) in &t.entries {
                let (addr, prefix) = if v6 {
                    let p = if m.leading_ones() + m.trailing_zeros() == 128 {
                        m.leading_ones()
                    } else {
                        128
                    };
                    (IpAddr::V6(std::net::Ipv6Addr::from(bits)), p as u8)
                } else {
                    let m4 = (m >> 96) as u32;
                    let p = if m4.leading_ones() + m4.trailing_zeros() == 32 {
                        m4.leading_ones()
                    } else {
                        32
                    };
                    (IpAddr::V4(std::net::Ipv4Addr::from(bits as u32)), p as u8)
                };
                let stored = &e.stamps[..e.nstamps];
                out.push(Held {
                    table: name.trim_end_matches('\u{0}').to_string(),
                    addr,
                    prefix,
                    first: stored.iter().copied().min().unwrap_or(Instant::ZERO),
                    last: stored.iter().copied().max().unwrap_or(Instant::ZERO),
                    stamps: e.nstamps,
                });
            }
        }
        out.sort_by(|a, b| a.table.cmp(&b.table).then(a.addr.cmp(&b.addr)));
        out
    }

    /// `addr` masked by table `name`'s mask (None: no such table). `name` as reported (the
    /// parser's marker of a given `--name` is not needed).
    pub fn masked(&self, name: &str, addr: IpAddr) -> Option<IpAddr> {
        let t = self
            .tables
            .get(name)
            .or_else(|| self.tables.get(&format!("{name}\u{0}")))?;
        let (v6, bits) = apply_mask(addr, t.mask);
        Some(if v6 {
            IpAddr::V6(std::net::Ipv6Addr::from(bits))
        } else {
            IpAddr::V4(std::net::Ipv4Addr::from(bits as u32))
        })
    }

    /// Does the table hold `addr` (masked by the table's mask)?
    pub fn contains(&self, name: &str, addr: IpAddr) -> bool {
        self.tables
            .get(name)
            .is_some_and(|t| t.entries.contains_key(&apply_mask(addr, t.mask)))
    }

    /// Evaluates a `-m recent` match for a packet whose chosen address (source or
    /// destination, per the rule) is `addr` and TTL / hop limit `ttl`, at `now`. Returns
    /// whether the match holds; updates the table as the kernel does.
    pub fn eval(&mut self, r: &Recent, addr: IpAddr, ttl: u8, now: Instant) -> bool {
        let list_tot = self.list_tot;
        if !self.tables.contains_key(&r.name) {
            self.add_rule(r);
        }
        let Some(t) = self.tables.get_mut(&r.name) else {
            return r.invert;
        };
        let mut ret = r.invert;
        let key = apply_mask(addr, t.mask);
        let lookup_ttl = if r.rttl { ttl } else { 0 };
        let found = t
            .entries
            .get(&key)
            .is_some_and(|e| lookup_ttl == 0 || e.ttl == 0 || e.ttl == lookup_ttl);
        if !found {
            if r.cmd != RecentCmd::Set {
                return ret;
            }
            // A stale entry of another TTL under the same key: the kernel would hold both;
            // one key per address here (documented).
            if let Some(old) = t.entries.remove(&key) {
                t.lru.remove(&old.seq);
            }
            if t.entries.len() >= list_tot
                && let Some((&seq, &head)) = t.lru.iter().next()
            {
                t.lru.remove(&seq);
                t.entries.remove(&head);
            }
            let mut stamps = vec![Instant::ZERO; t.nstamps_mask + 1];
            stamps[0] = now;
            let seq = t.next_seq;
            t.next_seq += 1;
            t.entries.insert(
                key,
                Entry {
                    ttl,
                    index: 1,
                    nstamps: 1,
                    stamps,
                    seq,
                },
            );
            t.lru.insert(seq, key);
            return !ret;
        }
        let cutoff = Instant::from_micros(
            now.micros()
                .saturating_sub(Duration::from_secs(u64::from(r.seconds.unwrap_or(0))).micros()),
        );
        match r.cmd {
            RecentCmd::Set => ret = !ret,
            RecentCmd::Remove => {
                if let Some(e) = t.entries.remove(&key) {
                    t.lru.remove(&e.seq);
                }
                return !ret;
            }
            RecentCmd::Rcheck | RecentCmd::Update => {
                let e = &t.entries[&key];
                let mut hits = 0u32;
                for s in &e.stamps[..e.nstamps] {
                    if r.seconds.is_some() && *s < cutoff {
                        continue;
                    }
                    hits += 1;
                    if r.hitcount.is_none_or(|h| h == 0 || hits >= h) {
                        ret = !ret;
                        break;
                    }
                }
                if r.reap {
                    let updating = r.cmd == RecentCmd::Update && ret;
                    if let Some((&seq, &head)) = t.lru.iter().next() {
                        let h = &t.entries[&head];
                        let newest = h.stamps[(h.index + h.stamps.len() - 1) % h.stamps.len()];
                        if !(head == key && updating) && newest < cutoff {
                            t.lru.remove(&seq);
                            t.entries.remove(&head);
                        }
                    }
                }
            }
        }
        if (r.cmd == RecentCmd::Set || (r.cmd == RecentCmd::Update && ret))
            && let Some(e) = t.entries.get_mut(&key)
        {
            e.index &= t.nstamps_mask;
            e.stamps[e.index] = now;
            e.index += 1;
            e.nstamps = e.nstamps.max(e.index);
            t.lru.remove(&e.seq);
            e.seq = t.next_seq;
            t.next_seq += 1;
            t.lru.insert(e.seq, key);
            e.ttl = ttl;
        }
        ret
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn held_lists_every_masked_address_with_its_stamps() {
        let mut t = Tables::default();
        let mut r = rule(RecentCmd::Set);
        r.mask = Some("255.255.255.0".parse().unwrap());
        for (a, s) in [("198.19.1.7", 5), ("198.19.1.9", 9), ("198.19.2.1", 7)] {
            t.eval(&r, a.parse().unwrap(), 64, Instant::from_secs(s));
        }
        let held = t.held();
        assert_eq!(held.len(), 2);
        assert_eq!(
            (held[0].addr.to_string(), held[0].prefix, held[0].stamps),
            ("198.19.1.0".to_string(), 24, 2)
        );
        assert_eq!(
            (held[0].first, held[0].last),
            (Instant::from_secs(5), Instant::from_secs(9))
        );
        assert_eq!(held[1].addr.to_string(), "198.19.2.0");
    }

    fn rule(cmd: RecentCmd) -> Recent {
        Recent {
            cmd,
            invert: false,
            seconds: None,
            reap: false,
            hitcount: None,
            rttl: false,
            name: "t".into(),
            mask: None,
            dest: false,
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn at(s: u64) -> Instant {
        Instant::from_secs(1_000 + s)
    }

    #[test]
    fn set_then_update_with_seconds_is_inclusive_and_refreshes() {
        let mut t = Tables::default();
        let update = Recent {
            seconds: Some(10),
            ..rule(RecentCmd::Update)
        };
        assert!(
            !t.eval(&update, ip("10.0.0.1"), 64, at(0)),
            "unknown address"
        );
        assert!(
            t.eval(&rule(RecentCmd::Set), ip("10.0.0.1"), 64, at(0)),
            "set always matches"
        );
        assert!(
            t.eval(&update, ip("10.0.0.1"), 64, at(10)),
            "stamp at the cutoff counts"
        );
        // The update recorded a stamp at 10: at 20 it is still inside.
        assert!(t.eval(&update, ip("10.0.0.1"), 64, at(20)));
        assert!(
            !t.eval(&update, ip("10.0.0.1"), 64, at(31)),
            "all stamps older than 10 s"
        );
        let rcheck = rule(RecentCmd::Rcheck);
        assert!(
            t.eval(&rcheck, ip("10.0.0.1"), 64, at(1_000_000)),
            "entries never expire"
        );
    }

    #[test]
    fn hitcount_counts_stamps_in_the_window() {
        let mut t = Tables::default();
        let check = Recent {
            seconds: Some(60),
            hitcount: Some(3),
            ..rule(RecentCmd::Rcheck)
        };
        t.add_rule(&rule(RecentCmd::Set));
        t.add_rule(&check);
        for s in 0..2 {
            t.eval(&rule(RecentCmd::Set), ip("10.0.0.2"), 64, at(s));
        }
        assert!(!t.eval(&check, ip("10.0.0.2"), 64, at(5)));
        t.eval(&rule(RecentCmd::Set), ip("10.0.0.2"), 64, at(6));
        assert!(t.eval(&check, ip("10.0.0.2"), 64, at(7)));
        assert!(
            !t.eval(&check, ip("10.0.0.2"), 64, at(61)),
            "the first stamp left the window"
        );
    }

    #[test]
    fn invert_quirks_and_remove() {
        let mut t = Tables::default();
        let not_update = Recent {
            invert: true,
            seconds: Some(5),
            ..rule(RecentCmd::Update)
        };
        t.eval(&rule(RecentCmd::Set), ip("10.0.0.3"), 64, at(0));
        // Fails the check (stamp too old) → `! --update` matches, and records a stamp.
        assert!(t.eval(&not_update, ip("10.0.0.3"), 64, at(100)));
        let check = Recent {
            seconds: Some(5),
            ..rule(RecentCmd::Rcheck)
        };
        assert!(
            t.eval(&check, ip("10.0.0.3"), 64, at(101)),
            "the quirk's stamp is there"
        );
        let not_set = Recent {
            invert: true,
            ..rule(RecentCmd::Set)
        };
        assert!(
            !t.eval(&not_set, ip("10.0.0.4"), 64, at(0)),
            "! --set never matches"
        );
        assert!(t.contains("t", ip("10.0.0.4")), "... but adds");
        assert!(t.eval(&rule(RecentCmd::Remove), ip("10.0.0.4"), 64, at(1)));
        assert!(
            !t.eval(&rule(RecentCmd::Remove), ip("10.0.0.4"), 64, at(2)),
            "gone"
        );
    }

    #[test]
    fn list_tot_evicts_the_least_recently_set_or_updated() {
        let mut t = Tables::with_list_tot(2);
        let set = rule(RecentCmd::Set);
        t.eval(&set, ip("10.0.0.1"), 64, at(0));
        t.eval(&set, ip("10.0.0.2"), 64, at(1));
        // An rcheck hit does not refresh 10.0.0.1 ...
        t.eval(&rule(RecentCmd::Rcheck), ip("10.0.0.1"), 64, at(2));
        t.eval(&set, ip("10.0.0.3"), 64, at(3));
        assert!(!t.contains("t", ip("10.0.0.1")), "the LRU head went");
        // ... an update does.
        t.eval(&rule(RecentCmd::Update), ip("10.0.0.2"), 64, at(4));
        t.eval(&set, ip("10.0.0.4"), 64, at(5));
        assert!(t.contains("t", ip("10.0.0.2")));
        assert!(!t.contains("t", ip("10.0.0.3")));
    }

    #[test]
    fn reap_looks_at_the_lru_head_only() {
        let mut t = Tables::default();
        let set = rule(RecentCmd::Set);
        t.eval(&set, ip("10.0.0.1"), 64, at(0));
        t.eval(&set, ip("10.0.0.2"), 64, at(50));
        let reap = Recent {
            seconds: Some(10),
            reap: true,
            ..rule(RecentCmd::Rcheck)
        };
        t.eval(&reap, ip("10.0.0.9"), 64, at(100));
        assert_eq!(t.len("t"), 2, "an unknown address reaps nothing");
        t.eval(&reap, ip("10.0.0.2"), 64, at(100));
        assert!(
            !t.contains("t", ip("10.0.0.1")),
            "the head, older than the cutoff, went"
        );
        assert!(t.contains("t", ip("10.0.0.2")), "one per packet");
    }

    #[test]
    fn rttl_mask_and_dest() {
        let mut t = Tables::default();
        let set = Recent {
            mask: Some(ip("255.255.255.0")),
            ..rule(RecentCmd::Set)
        };
        t.add_rule(&set);
        t.eval(&set, ip("10.0.0.7"), 64, at(0));
        let check = Recent {
            rttl: true,
            ..rule(RecentCmd::Rcheck)
        };
        assert!(
            t.eval(&check, ip("10.0.0.200"), 64, at(1)),
            "same /24 under the table's mask"
        );
        assert!(!t.eval(&check, ip("10.0.0.200"), 63, at(1)), "another TTL");
        assert!(
            t.eval(&check, ip("10.0.0.200"), 0, at(1)),
            "TTL 0 matches any"
        );
    }
}
