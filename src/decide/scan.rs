//! The scanner: which of a rule set's string matches hit a packet.
//!
//! Built once per rule set (construction separate from search, as memchr does): one prebuilt
//! `memmem::Finder` per rule, and, for two rules or more, Aho-Corasick automata (one for
//! case-sensitive, one for folded needles). Per packet it picks the cheaper: the finders, searched
//! lazily in rule order so the first hit ends the scan, when there are few rules and a short
//! packet; otherwise one automaton pass with overlapping matches, so that no needle hides another
//! whose window differs.
//!
//! Case-insensitive needles are matched by folding the packet through the kernel's Latin-1
//! `toupper` table ([`fold`]) into a scratch buffer, then searching the folded needle: the same
//! result as the kernel's byte-by-byte `toupper(a) == toupper(b)`, at memmem speed.

use aho_corasick::{AhoCorasick, AhoCorasickKind, MatchKind};
use memchr::memmem::Finder;

use crate::rule::StringMatch;

/// Memmem finders are used for a packet when there is one rule, or when there are at most
/// `FINDER_MAX_RULES` rules and rules × searched bytes ≤ `FINDER_BUDGET`; Aho-Corasick otherwise.
/// Measured (docs/BENCHMARKS.md, `scan/strategy`): an automaton search costs ~45 ns per packet
/// up front, a finder ~8 ns per rule; per byte the two are alike.
pub const FINDER_MAX_RULES: usize = 8;

/// See [`FINDER_MAX_RULES`].
pub const FINDER_BUDGET: usize = 1024;

/// Which search a [`Scanner`] uses.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub enum Choice {
    /// Per packet, by the rule above (the default).
    Auto,
    /// Always one finder per rule.
    Finders,
    /// Always the automata (for more than one rule).
    Automata,
}

/// The kernel's `toupper` (lib/ctype.c): a-z, 0xDF, 0xE0–0xF6 and 0xF8–0xFF are lower case and
/// map to the byte 0x20 below. Branch-free so that [`fold`] vectorises.
#[inline(always)]
pub fn to_upper(b: u8) -> u8 {
    let lower = (b.wrapping_sub(b'a') < 26) | ((b >= 0xDF) & (b != 0xF7));
    b - ((lower as u8) << 5)
}

/// Writes `to_upper` of every byte of `haystack` into `out` (cleared first).
pub fn fold(haystack: &[u8], out: &mut Vec<u8>) {
    out.clear();
    out.extend(haystack.iter().map(|&b| to_upper(b)));
}

/// The search window of a rule over a packet of `len` bytes, if the needle can fit in it.
#[inline]
fn window(m: &Needle, len: usize) -> Option<(usize, usize)> {
    let end = usize::from(m.to).min(len);
    let from = usize::from(m.from);
    (from < end && end - from >= m.len).then_some((from, end))
}

#[derive(Clone, Debug)]
struct Needle {
    from: u16,
    to: u16,
    len: usize,
    icase: bool,
    invert: bool,
}

/// Overlapping Aho-Corasick automata; `ids[pattern]` is the rule index of each pattern.
#[derive(Clone, Debug)]
struct Automata {
    exact: Option<(AhoCorasick, Vec<usize>)>,
    folded: Option<(AhoCorasick, Vec<usize>)>,
}

/// Finds the first rule (in order) whose string match hits a packet.
///
/// A `Scanner` holds scratch buffers, so each worker owns one; cloning shares nothing mutable.
#[derive(Clone, Debug)]
pub struct Scanner {
    needles: Vec<Needle>,
    /// One prebuilt finder per rule (the needle folded for icase rules).
    finders: Vec<Finder<'static>>,
    /// Built for two rules or more, unless the choice is `Finders`.
    automata: Option<Automata>,
    choice: Choice,
    folded: Vec<u8>,
    found: Vec<bool>,
    candidates: Vec<bool>,
}

impl Scanner {
    /// Builds the scanner for `matches`, in rule order.
    pub fn new(matches: &[&StringMatch]) -> Scanner {
        Scanner::with_choice(matches, Choice::Auto)
    }

    /// As [`Scanner::new`], with the search forced one way (for benches and tests).
    pub fn with_choice(matches: &[&StringMatch], choice: Choice) -> Scanner {
        let needles = matches
            .iter()
            .map(|m| Needle {
                from: m.from,
                to: m.to,
                len: m.pattern.len(),
                icase: m.icase,
                invert: m.invert,
            })
            .collect();
        let needle_bytes = |m: &StringMatch| -> Vec<u8> {
            let mut folded = Vec::new();
            if m.icase {
                fold(&m.pattern, &mut folded);
            } else {
                folded.extend_from_slice(&m.pattern);
            }
            folded
        };
        let finders = matches
            .iter()
            .map(|m| Finder::new(&needle_bytes(m)).into_owned())
            .collect();
        let automata = (matches.len() >= 2 && choice != Choice::Finders).then(|| {
            let build = |icase: bool| {
                let (ids, pats): (Vec<usize>, Vec<Vec<u8>>) = matches
                    .iter()
                    .enumerate()
                    .filter(|(_, m)| m.icase == icase)
                    .map(|(i, m)| (i, needle_bytes(m)))
                    .unzip();
                if ids.is_empty() {
                    return None;
                }
                let ac = AhoCorasick::builder()
                    .match_kind(MatchKind::Standard)
                    .kind(Some(AhoCorasickKind::DFA))
                    .build(&pats)
                    // A DFA over a few thousand needles of <= 128 bytes stays far below the
                    // builder's limits; fall back to the default kind if it ever does not.
                    .or_else(|_| {
                        AhoCorasick::builder()
                            .match_kind(MatchKind::Standard)
                            .build(&pats)
                    })
                    .expect("aho-corasick accepts any set of non-empty byte needles");
                Some((ac, ids))
            };
            Automata {
                exact: build(false),
                folded: build(true),
            }
        });
        let n = matches.len();
        Scanner {
            needles,
            finders,
            automata,
            choice,
            folded: Vec::new(),
            found: vec![false; n],
            candidates: vec![false; n],
        }
    }

    pub fn len(&self) -> usize {
        self.needles.len()
    }

    pub fn is_empty(&self) -> bool {
        self.needles.is_empty()
    }

    /// The index of the first rule `i` with `candidate(i)` whose match (after `invert`) holds
    /// for `packet`, or `None`. `packet` starts at the IP header.
    pub fn first_match(
        &mut self,
        packet: &[u8],
        candidate: impl FnMut(usize) -> bool,
    ) -> Option<usize> {
        let use_finders = match (&self.automata, self.choice) {
            (None, _) | (_, Choice::Finders) => true,
            (Some(_), Choice::Automata) => false,
            (Some(_), Choice::Auto) => {
                self.needles.len() <= FINDER_MAX_RULES
                    && self.needles.len() * packet.len() <= FINDER_BUDGET
            }
        };
        if use_finders {
            self.first_by_finders(packet, candidate)
        } else {
            self.first_by_automata(packet, candidate)
        }
    }

    fn first_by_finders(
        &mut self,
        packet: &[u8],
        mut candidate: impl FnMut(usize) -> bool,
    ) -> Option<usize> {
        let mut folded_ready = false;
        for (i, (needle, finder)) in self.needles.iter().zip(&self.finders).enumerate() {
            if !candidate(i) {
                continue;
            }
            let hit = match window(needle, packet.len()) {
                None => false,
                Some((from, end)) if needle.icase => {
                    if !folded_ready {
                        fold(packet, &mut self.folded);
                        folded_ready = true;
                    }
                    finder.find(&self.folded[from..end]).is_some()
                }
                Some((from, end)) => finder.find(&packet[from..end]).is_some(),
            };
            if hit != needle.invert {
                return Some(i);
            }
        }
        None
    }

    fn first_by_automata(
        &mut self,
        packet: &[u8],
        mut candidate: impl FnMut(usize) -> bool,
    ) -> Option<usize> {
        let Some(automata) = &self.automata else {
            return None;
        };
        let mut any = false;
        for (i, c) in self.candidates.iter_mut().enumerate() {
            *c = candidate(i);
            any |= *c;
        }
        if !any {
            return None;
        }
        self.found.iter_mut().for_each(|f| *f = false);
        if let Some((ac, ids)) = &automata.exact {
            mark(ac, ids, &self.needles, packet, packet, &mut self.found);
        }
        if let Some((ac, ids)) = &automata.folded {
            fold(packet, &mut self.folded);
            mark(
                ac,
                ids,
                &self.needles,
                &self.folded,
                packet,
                &mut self.found,
            );
        }
        (0..self.needles.len())
            .find(|&i| self.candidates[i] && self.found[i] != self.needles[i].invert)
    }
}

/// Sets `found[rule]` for every automaton match that lies wholly inside its rule's window.
fn mark(
    ac: &AhoCorasick,
    ids: &[usize],
    needles: &[Needle],
    haystack: &[u8],
    packet: &[u8],
    found: &mut [bool],
) {
    let (mut lo, mut hi) = (usize::MAX, 0);
    for &rule in ids {
        if let Some((from, end)) = window(&needles[rule], packet.len()) {
            lo = lo.min(from);
            hi = hi.max(end);
        }
    }
    if lo >= hi {
        return;
    }
    let mut left = ids.len();
    for m in ac.find_overlapping_iter(&haystack[lo..hi]) {
        let rule = ids[m.pattern().as_usize()];
        if found[rule] {
            continue;
        }
        let (start, end) = (lo + m.start(), lo + m.end());
        if let Some((from, to)) = window(&needles[rule], packet.len())
            && from <= start
            && end <= to
        {
            found[rule] = true;
            left -= 1;
            if left == 0 {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rule::{Algo, StringMatch};

    /// The kernel's ctype lower-case set, written out as lib/ctype.c lists it.
    fn kernel_toupper(b: u8) -> u8 {
        let lower = matches!(b, 0x61..=0x7a | 0xdf | 0xe0..=0xf6 | 0xf8..=0xff);
        if lower { b - 0x20 } else { b }
    }

    #[test]
    fn fold_is_the_kernel_table() {
        for b in 0..=255u8 {
            assert_eq!(to_upper(b), kernel_toupper(b), "byte {b:#04x}");
        }
        assert_eq!(to_upper(0xff), 0xdf);
        assert_eq!(to_upper(0xdf), 0xbf);
        assert_eq!(to_upper(0xf7), 0xf7);
    }

    fn rule(pattern: &[u8], from: u16, to: u16, algo: Algo) -> StringMatch {
        StringMatch {
            pattern: pattern.to_vec(),
            algo,
            from,
            to,
            icase: false,
            invert: false,
        }
    }

    /// docs/KERNEL.md §2.6: "foo bar baz" at offset X in a UDP/IPv4 packet, four rules.
    /// Expected results are the kernel ≥ 6.7's on linear data (the one divergence, X = 1495
    /// where kernel bm misses across a fragment boundary, is listed as such).
    #[test]
    fn kernel_selftest_vectors() {
        let needle = b"foo bar baz";
        let rules = [
            rule(needle, 1000, 1500, Algo::Bm),
            rule(needle, 1400, 1600, Algo::Bm),
            rule(needle, 1000, 1500, Algo::Kmp),
            rule(needle, 1400, 1600, Algo::Kmp),
        ];
        let cases: &[(usize, [bool; 4])] = &[
            (0, [false; 4]),
            (989, [false; 4]),
            (1000, [true, false, true, false]),
            (1389, [true, false, true, false]),
            (1489, [true; 4]),
            // Kernel: kmp 1400-1600 only (bm misses across the 1500-byte fragment boundary).
            // Deliberate divergence: on a linear buffer bm and kmp agree.
            (1495, [false, true, false, true]),
            (1500, [false, true, false, true]),
            (1589, [false, true, false, true]),
            (1590, [false; 4]),
            (1600, [false; 4]),
        ];
        for choice in [Choice::Auto, Choice::Finders, Choice::Automata] {
            for (at, want) in cases {
                let mut packet = vec![0u8; 1700];
                packet[*at..at + needle.len()].copy_from_slice(needle);
                for (i, r) in rules.iter().enumerate() {
                    let mut s = Scanner::with_choice(&[r], choice);
                    assert_eq!(
                        s.first_match(&packet, |_| true).is_some(),
                        want[i],
                        "at {at} rule {i} {choice:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn short_packet_clips_to() {
        let r = rule(b"abc", 0, u16::MAX, Algo::Bm);
        let mut s = Scanner::new(&[&r]);
        assert_eq!(s.first_match(b"xxabc", |_| true), Some(0));
        assert_eq!(s.first_match(b"xxab", |_| true), None);
        let from_eq_to = rule(b"a", 5, 5, Algo::Bm);
        assert_eq!(
            Scanner::new(&[&from_eq_to]).first_match(b"aaaaaaaaaa", |_| true),
            None
        );
    }

    #[test]
    fn icase_uses_latin1_table() {
        let mut r = rule("@exämple.com".as_bytes(), 0, u16::MAX, Algo::Bm);
        r.icase = true;
        r.pattern = b"@ex\xe4mple.com".to_vec();
        let mut s = Scanner::new(&[&r]);
        assert_eq!(s.first_match(b"to:<a@EX\xc4MPLE.COM>", |_| true), Some(0));
        // ASCII folding would not equate 0xe4 and 0xc4; 0xf7 (division sign) has no case.
        let mut d = rule(b"\xf7", 0, u16::MAX, Algo::Kmp);
        d.icase = true;
        assert_eq!(Scanner::new(&[&d]).first_match(b"\xd7", |_| true), None);
    }

    #[test]
    fn invert_and_candidates() {
        let mut a = rule(b"spam", 0, u16::MAX, Algo::Bm);
        a.invert = true;
        let b = rule(b"ham", 0, u16::MAX, Algo::Bm);
        for choice in [Choice::Auto, Choice::Finders, Choice::Automata] {
            let mut s = Scanner::with_choice(&[&a, &b], choice);
            assert_eq!(s.first_match(b"ham and eggs", |_| true), Some(0));
            assert_eq!(s.first_match(b"spam and ham", |_| true), Some(1));
            assert_eq!(s.first_match(b"spam and ham", |i| i == 0), None);
            assert_eq!(s.first_match(b"spam", |_| true), None);
        }
    }

    #[test]
    fn overlapping_needles_are_all_seen() {
        // "example.com" would hide "ample" under leftmost-first semantics.
        let a = rule(b"example.com", 0, 20, Algo::Bm);
        let b = rule(b"ample", 0, u16::MAX, Algo::Bm);
        let mut s = Scanner::with_choice(&[&a, &b], Choice::Automata);
        let mut packet = vec![b'.'; 30];
        packet[15..26].copy_from_slice(b"example.com");
        assert_eq!(s.first_match(&packet, |_| true), Some(1));
    }
}
