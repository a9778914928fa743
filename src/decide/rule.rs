//! A string-match rule with exact xt_string semantics (docs/KERNEL.md §2), and its filters.
//!
//! Offsets count from the first byte of the IP header; a rule matches when the whole pattern lies
//! in `[from, min(to, len))` (current kernels, ≥ 6.7). `icase` folds with the kernel's Latin-1
//! `toupper` table. `algo` is kept for printing only: on a linear buffer bm and kmp agree.

use std::fmt;

/// The longest pattern xt_string accepts (`XT_STRING_MAX_PATTERN_SIZE`).
pub const MAX_PATTERN_LEN: usize = 128;

/// xt_string's `--algo`. Both behave the same on the linear buffers we search.
#[derive(Clone, Copy, Debug, Default, Eq, PartialEq)]
pub enum Algo {
    #[default]
    Bm,
    Kmp,
}

impl Algo {
    pub fn parse(text: &str) -> Option<Algo> {
        match text {
            "bm" => Some(Algo::Bm),
            "kmp" => Some(Algo::Kmp),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Algo::Bm => "bm",
            Algo::Kmp => "kmp",
        }
    }
}

/// The `-m string` part of a rule.
#[derive(Clone, Debug, Eq, PartialEq)]
pub struct StringMatch {
    pub pattern: Vec<u8>,
    pub algo: Algo,
    pub from: u16,
    pub to: u16,
    pub icase: bool,
    pub invert: bool,
}

impl StringMatch {
    /// A match on `pattern` over the whole packet, case-sensitive, not inverted.
    pub fn new(pattern: Vec<u8>) -> Result<StringMatch, PatternError> {
        check_pattern_len(&pattern)?;
        Ok(StringMatch {
            pattern,
            algo: Algo::Bm,
            from: 0,
            to: u16::MAX,
            icase: false,
            invert: false,
        })
    }
}

impl fmt::Display for StringMatch {
    /// The iptables save form (`libxt_string.c` `string_save`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let invert = if self.invert { "! " } else { "" };
        let hex = self.pattern.iter().any(|&b| !(0x20..=0x7e).contains(&b))
            || self.pattern.last() == Some(&b'\\');
        if hex {
            write!(f, "-m string {invert}--hex-string \"|")?;
            for b in &self.pattern {
                write!(f, "{b:02x}")?;
            }
            f.write_str("|\"")?;
        } else {
            write!(f, "-m string {invert}--string \"")?;
            for &b in &self.pattern {
                if b == b'"' || b == b'\\' {
                    f.write_str("\\")?;
                }
                write!(f, "{}", b as char)?;
            }
            f.write_str("\"")?;
        }
        write!(f, " --algo {}", self.algo.name())?;
        if self.from != 0 {
            write!(f, " --from {}", self.from)?;
        }
        if self.to != u16::MAX {
            write!(f, " --to {}", self.to)?;
        }
        if self.icase {
            f.write_str(" --icase")?;
        }
        Ok(())
    }
}

/// Why a `--string` or `--hex-string` was refused. The texts are iptables' own.
#[derive(Clone, Debug, Eq, PartialEq)]
pub enum PatternError {
    Empty,
    TooLong,
    LiteralAtEnd,
    LiteralInHex,
    OddHexDigits,
    InvalidHexBlock,
    InvalidHexChar { found: char },
}

impl fmt::Display for PatternError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PatternError::Empty => f.write_str("STRING must contain at least one char"),
            PatternError::TooLong => {
                write!(f, "STRING too long (more than {MAX_PATTERN_LEN} bytes)")
            }
            PatternError::LiteralAtEnd => f.write_str("Bad literal placement at end of string"),
            PatternError::LiteralInHex => f.write_str("Cannot include literals in hex data"),
            PatternError::OddHexDigits => f.write_str("Odd number of hex digits"),
            PatternError::InvalidHexBlock => f.write_str("Invalid hex block"),
            PatternError::InvalidHexChar { found } => write!(f, "Invalid hex char '{found}'"),
        }
    }
}

fn check_pattern_len(pattern: &[u8]) -> Result<(), PatternError> {
    match pattern.len() {
        0 => Err(PatternError::Empty),
        n if n > MAX_PATTERN_LEN => Err(PatternError::TooLong),
        _ => Ok(()),
    }
}

/// Decodes `--string S`: the bytes as given, 1 to 128 of them.
pub fn parse_string(text: &str) -> Result<Vec<u8>, PatternError> {
    let bytes = text.as_bytes().to_vec();
    check_pattern_len(&bytes)?;
    Ok(bytes)
}

/// Decodes `--hex-string S` with iptables' grammar (`parse_hex_string`), quirks included:
/// the character right after a closing `|` is always literal, and a lone trailing `|` opens an
/// empty block and ends the string. The kernel then refuses an empty pattern, and so do we.
pub fn parse_hex_string(text: &str) -> Result<Vec<u8>, PatternError> {
    let s = text.as_bytes();
    if s.is_empty() {
        return Err(PatternError::Empty);
    }
    let at = |i: usize| s.get(i).copied().unwrap_or(0);
    let mut out = Vec::with_capacity(s.len());
    let (mut i, mut hex, mut literal) = (0usize, false, false);
    while i < s.len() {
        if s[i] == b'\\' && !hex {
            literal = true;
        } else if s[i] == b'\\' {
            return Err(PatternError::LiteralInHex);
        } else if s[i] == b'|' {
            if hex {
                hex = false;
            } else {
                hex = true;
                while at(i + 1) == b' ' {
                    i += 1;
                }
            }
            if i + 1 >= s.len() {
                break;
            }
            i += 1;
        }
        if literal {
            if i + 1 >= s.len() {
                return Err(PatternError::LiteralAtEnd);
            }
            out.push(s[i + 1]);
            i += 2;
            literal = false;
        } else if hex {
            if i + 1 >= s.len() {
                return Err(PatternError::OddHexDigits);
            }
            if i + 2 >= s.len() {
                return Err(PatternError::InvalidHexBlock);
            }
            let (hi, lo) = (s[i], s[i + 1]);
            for digit in [hi, lo] {
                if !digit.is_ascii_hexdigit() {
                    return Err(PatternError::InvalidHexChar {
                        found: digit as char,
                    });
                }
            }
            out.push(hex_value(hi) << 4 | hex_value(lo));
            i += if s[i + 2] == b' ' { 3 } else { 2 };
        } else {
            out.push(s[i]);
            i += 1;
        }
        if out.len() > MAX_PATTERN_LEN {
            return Err(PatternError::TooLong);
        }
    }
    check_pattern_len(&out)?;
    Ok(out)
}

fn hex_value(digit: u8) -> u8 {
    match digit {
        b'0'..=b'9' => digit - b'0',
        b'a'..=b'f' => digit - b'a' + 10,
        _ => digit - b'A' + 10,
    }
}

/// A set of ports: empty means any.
#[derive(Clone, Debug, Default, Eq, PartialEq)]
pub struct Ports(Vec<(u16, u16)>);

impl Ports {
    pub fn any() -> Ports {
        Ports(Vec::new())
    }

    pub fn list(ports: &[u16]) -> Ports {
        Ports(ports.iter().map(|&p| (p, p)).collect())
    }

    pub fn ranges(ranges: Vec<(u16, u16)>) -> Ports {
        Ports(ranges)
    }

    pub fn is_any(&self) -> bool {
        self.0.is_empty()
    }

    /// Every port in the set, ranges expanded (empty for "any").
    pub fn singles(&self) -> Vec<u16> {
        self.0.iter().flat_map(|&(lo, hi)| lo..=hi).collect()
    }

    pub fn contains(&self, port: u16) -> bool {
        self.0.is_empty() || self.0.iter().any(|&(lo, hi)| lo <= port && port <= hi)
    }
}

impl fmt::Display for Ports {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, &(lo, hi)) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            if lo == hi {
                write!(f, "{lo}")?;
            } else {
                write!(f, "{lo}:{hi}")?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The examples of docs/KERNEL.md §2.2 (iptables' `parse_hex_string`).
    #[test]
    fn hex_string_grammar() {
        let ok: &[(&str, &[u8])] = &[
            ("|0d0a|", &[0x0d, 0x0a]),
            ("|0D 0A|", &[0x0d, 0x0a]),
            ("| 0d 0a |", &[0x0d, 0x0a]),
            ("abc|00|def", b"abc\0def"),
            (
                "|03|www|09|netfilter|03|org|00|",
                b"\x03www\x09netfilter\x03org\x00",
            ),
            ("\\|x", b"|x"),
            ("|41|42|43|", &[0x41, b'4', b'2', 0x43]),
            ("|0a||0b|", &[0x0a, 0x7c, 0x30, 0x62]),
            ("|41|\\", &[0x41, 0x5c]),
            ("@example.com", b"@example.com"),
        ];
        for (text, want) in ok {
            assert_eq!(parse_hex_string(text).as_deref(), Ok(*want), "{text:?}");
        }
        let bad: &[(&str, PatternError)] = &[
            ("", PatternError::Empty),
            ("|", PatternError::Empty),
            ("|0a", PatternError::InvalidHexBlock),
            ("|0a0|", PatternError::InvalidHexBlock),
            ("||", PatternError::OddHexDigits),
            ("|41  42|", PatternError::InvalidHexChar { found: ' ' }),
            ("|4g|", PatternError::InvalidHexChar { found: 'g' }),
            ("a\\", PatternError::LiteralAtEnd),
            ("|41\\|", PatternError::LiteralInHex),
        ];
        for (text, want) in bad {
            assert_eq!(parse_hex_string(text).as_ref(), Err(want), "{text:?}");
        }
    }

    #[test]
    fn pattern_length_limits() {
        assert!(parse_string(&"a".repeat(128)).is_ok());
        assert_eq!(parse_string(&"a".repeat(129)), Err(PatternError::TooLong));
        assert_eq!(parse_string(""), Err(PatternError::Empty));
        assert!(parse_hex_string(&format!("|{}|", "41".repeat(128))).is_ok());
        assert_eq!(
            parse_hex_string(&format!("|{}|", "41".repeat(129))),
            Err(PatternError::TooLong)
        );
    }

    #[test]
    fn save_form() {
        let mut m = StringMatch::new(b"test".to_vec()).unwrap();
        assert_eq!(m.to_string(), "-m string --string \"test\" --algo bm");
        m.from = 40;
        m.to = 57;
        m.icase = true;
        m.invert = true;
        m.algo = Algo::Kmp;
        assert_eq!(
            m.to_string(),
            "-m string ! --string \"test\" --algo kmp --from 40 --to 57 --icase"
        );
        let hex = StringMatch::new(b"\x03www\x00".to_vec()).unwrap();
        assert_eq!(
            hex.to_string(),
            "-m string --hex-string \"|0377777700|\" --algo bm"
        );
        let backslash = StringMatch::new(b"a\\".to_vec()).unwrap();
        assert_eq!(
            backslash.to_string(),
            "-m string --hex-string \"|615c|\" --algo bm"
        );
        let quoted = StringMatch::new(b"a\"b\\c".to_vec()).unwrap();
        assert_eq!(
            quoted.to_string(),
            "-m string --string \"a\\\"b\\\\c\" --algo bm"
        );
    }

    #[test]
    fn ports() {
        assert!(Ports::any().contains(1));
        let p = Ports::ranges(vec![(25, 25), (1000, 2000)]);
        assert!(p.contains(25) && p.contains(1500) && !p.contains(26));
        assert_eq!(p.to_string(), "25,1000:2000");
    }
}

/// Which packets a rule looks at.
#[derive(Clone, Copy, Debug, Default, Eq, PartialEq)]
pub enum Protocol {
    /// Every IP packet (iptables without `-p`); port filters are then not allowed.
    All,
    #[default]
    Tcp,
    Udp,
}

impl Protocol {
    pub fn parse(text: &str) -> Option<Protocol> {
        match text {
            "all" => Some(Protocol::All),
            "tcp" => Some(Protocol::Tcp),
            "udp" => Some(Protocol::Udp),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Protocol::All => "all",
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

/// What a match does to the packet. Every match also bans the source, unless the rule says not.
#[derive(Clone, Copy, Debug, Default, Eq, PartialEq)]
pub enum Action {
    /// Drop silently.
    Drop,
    /// Let this packet through (the ban still stops the next ones).
    Log,
    /// Drop and reset the connection (TCP only).
    #[default]
    Reject,
}

impl Action {
    pub fn parse(text: &str) -> Option<Action> {
        match text {
            "drop" => Some(Action::Drop),
            "log" => Some(Action::Log),
            "reject" => Some(Action::Reject),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Action::Drop => "drop",
            Action::Log => "log",
            Action::Reject => "reject",
        }
    }
}

/// How a rule looks at the traffic (docs/ARCHITECTURE.md, *Flows*).
#[derive(Clone, Copy, Debug, Default, Eq, PartialEq)]
pub enum Mode {
    /// Each packet on its own, exactly as xt_string.
    #[default]
    Packet,
    /// The client's in-order TCP byte stream, across segments (`from`/`to` and invert do not
    /// apply).
    Stream,
    /// Only inside `MAIL FROM` / `RCPT TO` commands, case-insensitively; bodies never match.
    Smtp,
}

impl Mode {
    pub fn parse(text: &str) -> Option<Mode> {
        match text {
            "packet" => Some(Mode::Packet),
            "stream" => Some(Mode::Stream),
            "smtp" => Some(Mode::Smtp),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Mode::Packet => "packet",
            Mode::Stream => "stream",
            Mode::Smtp => "smtp",
        }
    }

    /// Does the mode follow flows (as opposed to single packets)?
    pub fn is_flow(self) -> bool {
        self != Mode::Packet
    }
}

/// An smtp-mode rule that names a recipient domain instead of a string.
#[derive(Clone, Debug, Eq, PartialEq)]
pub struct Domain {
    /// Lower case, no leading `@` or dot.
    pub name: Vec<u8>,
    /// Also match `*.name`.
    pub subdomains: bool,
}

impl Domain {
    /// Parses a domain name: letters, digits, `-`, `_` and dots, 1 to 253 bytes.
    pub fn parse(text: &str, subdomains: bool) -> Result<Domain, &'static str> {
        let t = text.trim_start_matches('@').trim_end_matches('.');
        if t.is_empty()
            || t.len() > 253
            || t.starts_with('.')
            || !t
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        {
            return Err("expected a domain name such as example.com");
        }
        Ok(Domain {
            name: t.to_ascii_lowercase().into_bytes(),
            subdomains,
        })
    }

    /// Does a path's domain (any case) name this domain (or, if asked, a subdomain of it)?
    pub fn matches(&self, domain: &[u8]) -> bool {
        let d = domain.strip_suffix(b".").unwrap_or(domain);
        if d.eq_ignore_ascii_case(&self.name) {
            return true;
        }
        self.subdomains
            && d.len() > self.name.len()
            && d[d.len() - self.name.len() - 1] == b'.'
            && d[d.len() - self.name.len()..].eq_ignore_ascii_case(&self.name)
    }
}

/// One rule: filters, a string match, an action and the list its matches ban into.
#[derive(Clone, Debug, Eq, PartialEq)]
pub struct Rule {
    pub name: String,
    pub matcher: StringMatch,
    pub protocol: Protocol,
    pub dports: Ports,
    pub sports: Ports,
    pub action: Action,
    /// The list a match bans the source into; `None` for a rule that only acts on the packet.
    pub ban: Option<crate::blacklist::ListId>,
    pub mode: Mode,
    /// Smtp mode: match `RCPT TO` paths at this domain instead of the string.
    pub rcpt_domain: Option<Domain>,
}

impl Rule {
    /// Does a match do anything to its sender (ban, drop, reset)? Only then is proof of its
    /// address asked for: a `log` rule without a list only counts.
    pub fn acts(&self) -> bool {
        self.ban.is_some() || self.action != Action::Log
    }

    /// Do the rule's protocol and port filters admit `packet`?
    pub fn admits(&self, packet: &crate::parse::Packet<'_>) -> bool {
        use crate::parse::Transport;
        match (self.protocol, packet.transport) {
            (Protocol::All, _) => true,
            (Protocol::Tcp, Transport::Tcp(t)) => {
                self.dports.contains(t.dport) && self.sports.contains(t.sport)
            }
            (Protocol::Udp, Transport::Udp { sport, dport }) => {
                self.dports.contains(dport) && self.sports.contains(sport)
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod domain_tests {
    use super::*;

    #[test]
    fn domains_match_exactly_or_by_subdomain() {
        let d = Domain::parse("@Example.COM", false).unwrap();
        assert_eq!(d.name, b"example.com");
        assert!(d.matches(b"EXAMPLE.com"));
        assert!(d.matches(b"example.com."));
        assert!(!d.matches(b"mail.example.com"));
        assert!(!d.matches(b"notexample.com"));
        let s = Domain::parse("example.com", true).unwrap();
        assert!(s.matches(b"mail.EXAMPLE.com"));
        assert!(!s.matches(b"notexample.com"));
        assert!(Domain::parse("", false).is_err());
        assert!(Domain::parse("a b", false).is_err());
    }
}
