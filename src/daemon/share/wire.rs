//! What the fleet writes to Redis, as values: the change log's entries, the keys, stream ids
//! and the cursor file. Pure (no sockets, no clock): tested with strings.

use std::fmt;
use std::net::IpAddr;

use crate::blacklist::{Key, mask32, mask128};

/// The keys of a fleet, all under `stringban:{FLEET}:` (the braces are a Redis Cluster hash
/// tag: every key of a fleet is in one slot).
#[derive(Clone, Debug, Eq, PartialEq)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    pub fn new(fleet: &str) -> Keys {
        Keys {
            prefix: format!("stringban:{{{fleet}}}:"),
        }
    }

    /// The fleet's epoch: a random token set by the first node that finds it missing. Another
    /// epoch than the one a node's cursor was taken in means Redis lost its data.
    pub fn epoch(&self) -> String {
        format!("{}epoch", self.prefix)
    }

    /// The change log: a stream.
    pub fn log(&self) -> String {
        format!("{}log", self.prefix)
    }

    /// A list's bans by expiry: a sorted set, member = key, score = expiry (unix seconds).
    pub fn expiry(&self, list: &str) -> String {
        format!("{}exp:{list}", self.prefix)
    }

    /// A list's bans: a hash, field = key, value = `EXPIRY NODE RULE` (the bootstrap snapshot).
    pub fn bans(&self, list: &str) -> String {
        format!("{}ban:{list}", self.prefix)
    }
}

/// A stream entry id, `MS-SEQ`.
#[derive(Clone, Copy, Debug, Default, Eq, Hash, Ord, PartialEq, PartialOrd)]
pub struct StreamId {
    pub ms: u64,
    pub seq: u64,
}

impl StreamId {
    pub const ZERO: StreamId = StreamId { ms: 0, seq: 0 };

    pub fn parse(text: &str) -> Option<StreamId> {
        let (ms, seq) = text.split_once('-')?;
        Some(StreamId {
            ms: ms.parse().ok()?,
            seq: seq.parse().ok()?,
        })
    }
}

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

/// What a change does.
#[derive(Clone, Debug, Eq, PartialEq)]
pub enum Op {
    /// Banned until `until` (unix seconds, the origin's clock), by `rule` (empty: by hand).
    Ban { key: Key, until: u64, rule: String },
    /// Removed (`del`): on peers, only their copies of shared bans, unless `fleet` (`del
    /// --fleet`), which lifts their own bans of the key too.
    Unban { key: Key, fleet: bool },
    /// The list flushed (`flush`): on peers, every shared ban, unless `fleet` (`flush
    /// --fleet`), which empties the list.
    Flush { fleet: bool },
}

/// One change of the log.
#[derive(Clone, Debug, Eq, PartialEq)]
pub struct Msg {
    /// The node that made it.
    pub node: String,
    pub list: String,
    pub op: Op,
    /// When it was made (unix microseconds, the origin's clock): propagation is measured from it.
    pub at_us: u64,
}

impl Msg {
    /// The stream entry's one field, `m`: `OP LIST KEY EXPIRY NODE TIME RULE` — op `b` (ban),
    /// `u` (unban) or `f` (flush), `U`/`F` fleet-wide, `-` for what the op has not, the rule last (it may hold
    /// spaces; empty for a ban by hand). One field, not seven: readers parse a fifth of the
    /// values, and `XRANGE` in `redis-cli` still reads as a line.
    pub fn to_text(&self) -> String {
        let (op, key, until, rule) = match &self.op {
            Op::Ban { key, until, rule } => ("b", key_text(*key), until.to_string(), rule.as_str()),
            Op::Unban { key, fleet } => (
                if *fleet { "U" } else { "u" },
                key_text(*key),
                "-".into(),
                "",
            ),
            Op::Flush { fleet } => (if *fleet { "F" } else { "f" }, "-".into(), "-".into(), ""),
        };
        format!(
            "{op} {} {key} {until} {} {} {rule}",
            self.list, self.node, self.at_us
        )
    }

    /// [`Msg::to_text`] back; the error says what is wrong.
    pub fn parse(text: &str) -> Result<Msg, String> {
        let mut it = text.splitn(7, ' ');
        let mut next = |what: &str| it.next().ok_or_else(|| format!("{text:?}: no {what}"));
        let (op, list, key, until, node, at) = (
            next("op")?,
            next("list")?,
            next("key")?,
            next("expiry")?,
            next("node")?,
            next("time")?,
        );
        let rule = it.next().unwrap_or("");
        let key = || parse_key(key).ok_or_else(|| format!("key {key:?}: not ADDR/PREFIX"));
        let op = match op {
            "b" => Op::Ban {
                key: key()?,
                until: until
                    .parse()
                    .map_err(|_| format!("expiry {until:?}: not seconds"))?,
                rule: rule.to_string(),
            },
            "u" | "U" => Op::Unban {
                key: key()?,
                fleet: op == "U",
            },
            "f" | "F" => Op::Flush { fleet: op == "F" },
            other => return Err(format!("op {other:?}: expected b, u, U, f or F")),
        };
        if node.is_empty() || list.is_empty() {
            return Err(format!("{text:?}: empty node or list"));
        }
        Ok(Msg {
            node: node.to_string(),
            list: list.to_string(),
            op,
            at_us: at.parse().unwrap_or(0),
        })
    }
}

/// A key as the log writes it: `ADDR/PREFIX`, always with the prefix.
pub fn key_text(key: Key) -> String {
    match key {
        Key::V4 { prefix, .. } | Key::V6 { prefix, .. } => format!("{}/{prefix}", key.addr()),
    }
}

/// [`key_text`] back; host bits set under the prefix are refused.
pub fn parse_key(text: &str) -> Option<Key> {
    let (addr, prefix) = text.split_once('/')?;
    let prefix: u8 = prefix.parse().ok()?;
    match addr.parse::<IpAddr>().ok()? {
        IpAddr::V4(a) if prefix <= 32 => {
            let bits = a.to_bits();
            (mask32(bits, prefix) == bits).then_some(Key::V4 { addr: bits, prefix })
        }
        IpAddr::V6(a) if prefix <= 128 => {
            let bits = a.to_bits();
            (mask128(bits, prefix) == bits).then_some(Key::V6 { addr: bits, prefix })
        }
        _ => None,
    }
}

/// A snapshot hash's value: `EXPIRY NODE RULE` (the rule may hold spaces; empty: by hand).
pub fn snapshot_value(until: u64, node: &str, rule: &str) -> String {
    format!("{until} {node} {rule}")
}

/// [`snapshot_value`] back: expiry, node, rule.
pub fn parse_snapshot_value(text: &str) -> Option<(u64, &str, &str)> {
    let (until, rest) = text.split_once(' ')?;
    let (node, rule) = rest.split_once(' ').unwrap_or((rest, ""));
    Some((until.parse().ok()?, node, rule))
}

/// How far a log entry's signed publication time may be from the time Redis gave its id: more
/// is a replay of an old entry (or a clock off by that much), refused.
pub const SIGNED_SKEW_MS: u64 = 10 * 60 * 1000;

/// The fleet key: what every node signs its entries with (HMAC-SHA256), so that anything else
/// that can write to Redis (another application sharing it, a stolen password) can neither
/// ban, nor lift, nor flush. A key file holds one key per line (at least 32 characters, `#`
/// comments and blank lines ignored): the first signs, every one verifies, so a fleet rotates
/// by adding the new key second everywhere, then first, then dropping the old.
#[derive(Clone)]
pub struct FleetKey {
    keys: Vec<ring::hmac::Key>,
    /// Each key's id: the first 8 hex digits of its SHA-256 (shown in `status`, compared on
    /// reload; never the key).
    ids: Vec<String>,
}

impl fmt::Debug for FleetKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FleetKey({:?})", self.ids)
    }
}

impl PartialEq for FleetKey {
    fn eq(&self, other: &FleetKey) -> bool {
        self.ids == other.ids
    }
}

impl Eq for FleetKey {}

/// Why a signed value was refused.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub enum Refused {
    /// No signature where one is required.
    Unsigned,
    /// A signature no key of ours made (forged, damaged, or another fleet's key).
    BadSignature,
    /// Validly signed, but published too far from when Redis took it: a replay.
    Stale,
    /// A node or rule name that is not one ([`check_names`]): too long, or with characters a
    /// log line or a terminal would take for something else.
    BadName,
}

impl Refused {
    pub fn as_str(self) -> &'static str {
        match self {
            Refused::Unsigned => "unsigned",
            Refused::BadSignature => "bad_signature",
            Refused::Stale => "stale",
            Refused::BadName => "bad_name",
        }
    }
}

/// The longest rule name a peer's entry may carry.
pub const MAX_RULE_NAME: usize = 256;

/// Are a peer's node and rule names ones this host will store, log and print? A node: 1 to 64
/// of letters, digits, `.`, `_`, `-`, `:` (as `--share-node` takes); a rule: at most
/// [`MAX_RULE_NAME`] bytes, no control character (no newline to forge a log line, no escape
/// for a terminal).
pub fn check_names(node: &str, rule: &str) -> Result<(), String> {
    if !is_token(node) {
        return Err(format!(
            "node name {:?}: expected 1 to 64 letters, digits, '.', '_', '-' or ':'",
            node.chars().take(80).collect::<String>()
        ));
    }
    let control = rule.chars().any(char::is_control);
    if rule.len() > MAX_RULE_NAME || control {
        return Err(format!(
            "rule name of {} bytes{}: at most {MAX_RULE_NAME}, no control characters",
            rule.len(),
            if control {
                " with control characters"
            } else {
                ""
            }
        ));
    }
    Ok(())
}

/// The least length of a key line.
pub const MIN_KEY_LEN: usize = 32;

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) || !text.is_ascii() {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).ok())
        .collect()
}

impl FleetKey {
    /// The keys of a key file's text; the error says which line is wrong (never its content).
    pub fn parse(text: &str) -> Result<FleetKey, String> {
        let (mut keys, mut ids) = (Vec::new(), Vec::new());
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            if line.len() < MIN_KEY_LEN {
                return Err(format!(
                    "line {}: a key of {} characters; at least {MIN_KEY_LEN} are needed (e.g. `head -c 32 /dev/urandom | base64`)",
                    n + 1,
                    line.len()
                ));
            }
            keys.push(ring::hmac::Key::new(
                ring::hmac::HMAC_SHA256,
                line.as_bytes(),
            ));
            let digest = ring::digest::digest(&ring::digest::SHA256, line.as_bytes());
            ids.push(hex(&digest.as_ref()[..4]));
        }
        if keys.is_empty() {
            return Err("no key in it (one per line, the first signs)".into());
        }
        Ok(FleetKey { keys, ids })
    }

    /// The keys' ids, the signing one first.
    pub fn ids(&self) -> &[String] {
        &self.ids
    }

    /// How many keys verify.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// What is signed: each part with its length first, so no two lists of parts sign alike.
    fn framed(parts: &[&[u8]]) -> Vec<u8> {
        let mut msg = Vec::new();
        for p in parts {
            msg.extend_from_slice(&(p.len() as u64).to_be_bytes());
            msg.extend_from_slice(p);
        }
        msg
    }

    fn mac(key: &ring::hmac::Key, parts: &[&[u8]]) -> ring::hmac::Tag {
        ring::hmac::sign(key, &FleetKey::framed(parts))
    }

    /// Does any of the keys make `tag` for `parts`? (`ring::hmac::verify` compares in
    /// constant time.)
    fn verify(&self, parts: &[&[u8]], tag: &[u8]) -> bool {
        let msg = FleetKey::framed(parts);
        self.keys
            .iter()
            .any(|k| ring::hmac::verify(k, &msg, tag).is_ok())
    }

    /// The signature of a log entry `m` ([`Msg::to_text`]) published at unix ms `t` in `fleet`:
    /// the entry's `s` field, `T:HEX`.
    pub fn sign_entry(&self, fleet: &str, m: &str, t: u64) -> String {
        let t_text = t.to_string();
        let tag = FleetKey::mac(
            &self.keys[0],
            &[
                b"stringban log 1",
                fleet.as_bytes(),
                t_text.as_bytes(),
                m.as_bytes(),
            ],
        );
        format!("{t}:{}", hex(tag.as_ref()))
    }

    /// Checks an entry's `s` field against `m` and the time Redis gave it (`id_ms`); the
    /// publication time when it holds.
    pub fn verify_entry(
        &self,
        fleet: &str,
        m: &str,
        s: Option<&str>,
        id_ms: u64,
    ) -> Result<u64, Refused> {
        let s = s.ok_or(Refused::Unsigned)?;
        let (t_text, tag) = s.split_once(':').ok_or(Refused::BadSignature)?;
        let tag = unhex(tag).ok_or(Refused::BadSignature)?;
        let t: u64 = t_text.parse().map_err(|_| Refused::BadSignature)?;
        if !self.verify(
            &[
                b"stringban log 1",
                fleet.as_bytes(),
                t_text.as_bytes(),
                m.as_bytes(),
            ],
            &tag,
        ) {
            return Err(Refused::BadSignature);
        }
        if t.abs_diff(id_ms) > SIGNED_SKEW_MS {
            return Err(Refused::Stale);
        }
        Ok(t)
    }

    /// A snapshot value ([`snapshot_value`]) of `key` in `list`, signed: `~HEX VALUE`.
    pub fn sign_snapshot(&self, fleet: &str, list: &str, key: &str, value: &str) -> String {
        let tag = FleetKey::mac(
            &self.keys[0],
            &[
                b"stringban ban 1",
                fleet.as_bytes(),
                list.as_bytes(),
                key.as_bytes(),
                value.as_bytes(),
            ],
        );
        format!("~{} {value}", hex(tag.as_ref()))
    }

    /// A signed snapshot value's value, if its signature holds for `key` in `list`.
    pub fn verify_snapshot<'a>(
        &self,
        fleet: &str,
        list: &str,
        key: &str,
        signed: &'a str,
    ) -> Result<&'a str, Refused> {
        let rest = signed.strip_prefix('~').ok_or(Refused::Unsigned)?;
        let (tag, value) = rest.split_once(' ').ok_or(Refused::BadSignature)?;
        let tag = unhex(tag).ok_or(Refused::BadSignature)?;
        if self.verify(
            &[
                b"stringban ban 1",
                fleet.as_bytes(),
                list.as_bytes(),
                key.as_bytes(),
                value.as_bytes(),
            ],
            &tag,
        ) {
            Ok(value)
        } else {
            Err(Refused::BadSignature)
        }
    }
}

/// A snapshot value without its signature, unchecked (a node with no key reads a signing
/// fleet's snapshot).
pub fn unsigned_snapshot(value: &str) -> &str {
    match value.strip_prefix('~') {
        Some(rest) => rest.split_once(' ').map_or("", |(_, v)| v),
        None => value,
    }
}

/// Where this node is in the fleet's log, kept in the state directory (`share.cursor`).
#[derive(Clone, Debug, Default, Eq, PartialEq)]
pub struct Cursor {
    /// The fleet it belongs to: a cursor of another fleet is not used.
    pub fleet: String,
    /// The fleet's epoch it was taken in ([`Keys::epoch`]).
    pub epoch: String,
    /// The last entry applied.
    pub id: StreamId,
    /// Entries of the log up to `id` (Redis' `entries-added` count): the lag in entries.
    pub pos: u64,
    /// Every local change made before this time (unix seconds) was published; after a crash,
    /// the local bans seen since are published again.
    pub published: u64,
}

/// Is `text` a token the cursor file may hold as it is: 1 to 64 of letters, digits, `.`, `_`,
/// `-`, `:` (fleet names and the epochs this daemon makes are)?
pub fn is_token(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= 64
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b':'))
}

/// The fleet's epoch as read from Redis, made a token: itself when it is one, else `h` and the
/// first 16 hex digits of its SHA-256 (still a different epoch for every different value, and
/// never a newline in the cursor file).
pub fn safe_epoch(raw: &str) -> String {
    if is_token(raw) {
        raw.to_string()
    } else {
        let d = ring::digest::digest(&ring::digest::SHA256, raw.as_bytes());
        format!("h{}", hex(&d.as_ref()[..8]))
    }
}

impl Cursor {
    /// The file's text; fields that are not tokens ([`is_token`]) are written as `-` (never a
    /// line of their own).
    pub fn to_text(&self) -> String {
        let token = |t: &str| {
            if is_token(t) {
                t.to_string()
            } else {
                "-".into()
            }
        };
        format!(
            "stringban share cursor 1\nfleet {}\nepoch {}\nid {}\npos {}\npublished {}\n",
            token(&self.fleet),
            token(&self.epoch),
            self.id,
            self.pos,
            self.published
        )
    }

    pub fn parse(text: &str) -> Result<Cursor, String> {
        let mut lines = text.lines();
        if lines.next() != Some("stringban share cursor 1") {
            return Err("not a stringban share cursor (version 1)".into());
        }
        let mut c = Cursor::default();
        let mut seen = 0u8;
        if text.contains('\r') {
            return Err("a carriage return: not a file this daemon wrote".into());
        }
        for line in lines {
            let (k, v) = line
                .split_once(' ')
                .ok_or_else(|| format!("line {line:?}: expected KEY VALUE"))?;
            let bad = || format!("{k} = {v:?}: bad value");
            let bit = match k {
                "fleet" | "epoch" if !is_token(v) => return Err(bad()),
                "fleet" => {
                    c.fleet = v.to_string();
                    1
                }
                "epoch" => {
                    c.epoch = v.to_string();
                    2
                }
                "id" => {
                    c.id = StreamId::parse(v).ok_or_else(bad)?;
                    4
                }
                "pos" => {
                    c.pos = v.parse().map_err(|_| bad())?;
                    8
                }
                "published" => {
                    c.published = v.parse().map_err(|_| bad())?;
                    16
                }
                _ => return Err(format!("line {line:?}: unknown key")),
            };
            if seen & bit != 0 {
                return Err(format!("line {line:?}: {k} given twice"));
            }
            seen |= bit;
        }
        if seen != 31 {
            return Err("truncated".into());
        }
        Ok(c)
    }
}

/// Latencies of propagation (microseconds): the last [`Propagation::KEEP`] samples for exact
/// quantiles, and Prometheus histogram buckets since start.
#[derive(Clone, Debug, Default)]
pub struct Propagation {
    ring: Vec<u32>,
    next: usize,
    pub count: u64,
    pub sum_us: u64,
    /// Per [`Propagation::BUCKETS_MS`] bound (cumulative when exported).
    pub buckets: [u64; 12],
}

impl Propagation {
    pub const KEEP: usize = 65_536;
    pub const BUCKETS_MS: [f64; 12] = [
        1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 5000.0, 60000.0,
    ];

    pub fn add(&mut self, us: u64) {
        let v = u32::try_from(us).unwrap_or(u32::MAX);
        if self.ring.len() < Self::KEEP {
            self.ring.push(v);
        } else {
            self.ring[self.next] = v;
        }
        self.next = (self.next + 1) % Self::KEEP;
        self.count += 1;
        self.sum_us = self.sum_us.saturating_add(us);
        let ms = us as f64 / 1000.0;
        if let Some(i) = Self::BUCKETS_MS.iter().position(|&b| ms <= b) {
            self.buckets[i] += 1;
        }
    }

    /// The `q` quantile (0 to 1) of the samples kept, in microseconds.
    pub fn quantile(&self, q: f64) -> Option<u64> {
        if self.ring.is_empty() {
            return None;
        }
        let mut v = self.ring.clone();
        let k = ((v.len() - 1) as f64 * q.clamp(0.0, 1.0)).round() as usize;
        Some(u64::from(*v.select_nth_unstable(k).1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip() {
        let key = parse_key("198.18.0.0/24").unwrap();
        for op in [
            Op::Ban {
                key,
                until: 1_800_000_000,
                rule: "spam to example.com".into(),
            },
            Op::Ban {
                key: parse_key("2001:db8::1/128").unwrap(),
                until: 5,
                rule: String::new(),
            },
            Op::Unban { key, fleet: false },
            Op::Unban { key, fleet: true },
            Op::Flush { fleet: false },
            Op::Flush { fleet: true },
        ] {
            let m = Msg {
                node: "mx1".into(),
                list: "spam".into(),
                op,
                at_us: 42,
            };
            assert_eq!(Msg::parse(&m.to_text()), Ok(m));
        }
        assert_eq!(
            Msg::parse("b spam 198.18.0.7/32 99 mx2 7 a rule")
                .unwrap()
                .op,
            Op::Ban {
                key: parse_key("198.18.0.7/32").unwrap(),
                until: 99,
                rule: "a rule".into()
            }
        );
    }

    #[test]
    fn bad_messages_say_why() {
        assert_eq!(
            Msg::parse("b x 198.18.0.1/24 9 a 1"),
            Err("key \"198.18.0.1/24\": not ADDR/PREFIX".into())
        );
        assert!(
            Msg::parse("b x 198.18.0.1/32")
                .unwrap_err()
                .contains("no expiry")
        );
        assert!(Msg::parse("").unwrap_err().contains("no list"));
        assert!(
            Msg::parse("z x - - a 1")
                .unwrap_err()
                .contains("expected b, u, U, f or F")
        );
        assert!(
            Msg::parse("b x 198.18.0.1/32 soon a 1")
                .unwrap_err()
                .contains("not seconds")
        );
    }

    #[test]
    fn keys_and_ids() {
        let k = Keys::new("mx");
        assert_eq!(k.log(), "stringban:{mx}:log");
        assert_eq!(k.bans("spam"), "stringban:{mx}:ban:spam");
        assert_eq!(k.expiry("spam"), "stringban:{mx}:exp:spam");
        let a = StreamId::parse("1700000000000-3").unwrap();
        assert_eq!(a.to_string(), "1700000000000-3");
        assert!(a < StreamId::parse("1700000000000-10").unwrap());
        assert!(StreamId::parse("12").is_none());
        assert_eq!(key_text(parse_key("0.0.0.0/0").unwrap()), "0.0.0.0/0");
        assert!(parse_key("198.18.0.7").is_none());
        assert!(parse_key("198.18.0.7/33").is_none());
    }

    #[test]
    fn snapshot_values() {
        let v = snapshot_value(99, "mx2", "a rule");
        assert_eq!(parse_snapshot_value(&v), Some((99, "mx2", "a rule")));
        assert_eq!(parse_snapshot_value("99 mx2 "), Some((99, "mx2", "")));
        assert_eq!(parse_snapshot_value("x mx2 r"), None);
    }

    #[test]
    fn cursor_round_trip_and_damage() {
        let c = Cursor {
            fleet: "mx".into(),
            epoch: "e1".into(),
            id: StreamId { ms: 17, seq: 2 },
            pos: 99,
            published: 1_800_000_000,
        };
        assert_eq!(Cursor::parse(&c.to_text()), Ok(c.clone()));
        let text = c.to_text();
        assert!(Cursor::parse(&text[..text.len() - 12]).is_err());
        assert!(Cursor::parse("garbage").is_err());
        assert!(Cursor::parse(&text.replace("pos 99", "pos x")).is_err());
        // Five lines are not five keys: a repeated key (found by the fuzzer) is refused, not
        // read as a cursor with an empty epoch.
        let twice = text.replace("epoch e1", "fleet mx");
        assert_eq!(
            Cursor::parse(&twice),
            Err("line \"fleet mx\": fleet given twice".into())
        );
    }

    #[test]
    fn propagation_quantiles() {
        let mut p = Propagation::default();
        assert_eq!(p.quantile(0.5), None);
        for us in 1..=1000 {
            p.add(us * 1000);
        }
        assert_eq!(p.quantile(0.5), Some(501_000));
        assert_eq!(p.quantile(0.99), Some(990_000));
        assert_eq!(p.count, 1000);
        assert_eq!(p.buckets[0], 1);
        assert_eq!(p.buckets.iter().sum::<u64>(), 1000);
    }

    const K1: &str = "k1-0123456789abcdef0123456789abcdef";
    const K2: &str = "k2-fedcba9876543210fedcba9876543210";

    /// Only what one of the fleet's keys signed, for this fleet and this very text, published
    /// near when Redis took it, is accepted; a rotation accepts both keys.
    #[test]
    fn fleet_signatures_hold_only_for_what_was_signed() {
        let k1 = FleetKey::parse(K1).expect("a key");
        let m = "b spam 198.18.0.1/32 2000000000 A 1767225600000000 @example.com";
        let s = k1.sign_entry("mx", m, 1_767_225_600_000);
        assert_eq!(
            k1.verify_entry("mx", m, Some(&s), 1_767_225_601_000),
            Ok(1_767_225_600_000)
        );
        // Another text, fleet, key, or a missing or mangled signature: refused.
        let other = m.replace("198.18.0.1", "198.18.0.2");
        assert_eq!(
            k1.verify_entry("mx", &other, Some(&s), 1_767_225_601_000),
            Err(Refused::BadSignature)
        );
        assert_eq!(
            k1.verify_entry("other", m, Some(&s), 1_767_225_601_000),
            Err(Refused::BadSignature)
        );
        let k2 = FleetKey::parse(K2).expect("a key");
        assert_eq!(
            k2.verify_entry("mx", m, Some(&s), 1_767_225_601_000),
            Err(Refused::BadSignature)
        );
        assert_eq!(k1.verify_entry("mx", m, None, 0), Err(Refused::Unsigned));
        for bad in ["", "x", "1:zz", "nan:00", &s[..s.len() - 2]] {
            assert_eq!(
                k1.verify_entry("mx", m, Some(bad), 0),
                Err(Refused::BadSignature),
                "{bad}"
            );
        }
        // The publication time is signed: an old entry written again now is stale.
        let later = 1_767_225_600_000 + SIGNED_SKEW_MS + 1;
        assert_eq!(
            k1.verify_entry("mx", m, Some(&s), later),
            Err(Refused::Stale)
        );
        // Rotation: a node holding both keys accepts either; it signs with its first.
        let both = FleetKey::parse(&format!("# new first\n{K2}\n\n{K1}\n")).expect("two keys");
        assert_eq!(both.len(), 2);
        assert!(
            both.verify_entry("mx", m, Some(&s), 1_767_225_600_000)
                .is_ok()
        );
        let s2 = both.sign_entry("mx", m, 1_767_225_600_000);
        assert!(
            k2.verify_entry("mx", m, Some(&s2), 1_767_225_600_000)
                .is_ok()
        );
        assert!(
            k1.verify_entry("mx", m, Some(&s2), 1_767_225_600_000)
                .is_err()
        );
        assert_eq!(both.ids()[1], k1.ids()[0]);
        assert_ne!(k1, k2);
        // Snapshot values: bound to the list and the key.
        let v = snapshot_value(2_000_000_000, "A", "@example.com");
        let sv = k1.sign_snapshot("mx", "spam", "198.18.0.1/32", &v);
        assert_eq!(
            k1.verify_snapshot("mx", "spam", "198.18.0.1/32", &sv),
            Ok(v.as_str())
        );
        assert_eq!(unsigned_snapshot(&sv), v);
        assert_eq!(unsigned_snapshot(&v), v);
        assert_eq!(
            k1.verify_snapshot("mx", "spam", "198.18.0.2/32", &sv),
            Err(Refused::BadSignature)
        );
        assert_eq!(
            k1.verify_snapshot("mx", "bots", "198.18.0.1/32", &sv),
            Err(Refused::BadSignature)
        );
        assert_eq!(
            k1.verify_snapshot("mx", "spam", "198.18.0.1/32", &v),
            Err(Refused::Unsigned)
        );
    }

    #[test]
    fn key_files_say_what_is_wrong_and_never_the_key() {
        let e = FleetKey::parse("# only a comment\n\n").expect_err("no key");
        assert!(e.contains("no key"), "{e}");
        let e = FleetKey::parse(&format!("{K1}\nshort-secret\n")).expect_err("short");
        assert!(e.contains("line 2") && !e.contains("short-secret"), "{e}");
        assert!(!format!("{:?}", FleetKey::parse(K1).expect("a key")).contains("k1-"));
    }

    /// What Redis hands back as the fleet's epoch can never write a line of its own into the
    /// cursor file, and a damaged field is refused on read.
    #[test]
    fn the_cursor_holds_tokens_only() {
        assert_eq!(safe_epoch("0123abcd0123abcd"), "0123abcd0123abcd");
        let forged = safe_epoch("x\nid 999999999999-0\npos 1");
        assert!(is_token(&forged) && forged.starts_with('h'), "{forged}");
        assert_ne!(safe_epoch("a b"), safe_epoch("a  b"));
        let c = Cursor {
            fleet: "mx".into(),
            epoch: "bad\nid 1-1".into(),
            ..Cursor::default()
        };
        let text = c.to_text();
        assert_eq!(text.lines().count(), 6, "{text}");
        assert!(text.contains("epoch -\n"));
        let bad =
            "stringban share cursor 1\nfleet mx\nepoch a\u{1b}b\nid 1-0\npos 1\npublished 0\n";
        assert!(Cursor::parse(bad).is_err());
    }

    #[test]
    fn peer_names_are_checked() {
        assert!(check_names("mx1.example.net", "@example.com").is_ok());
        assert!(check_names("mx1", "").is_ok());
        for node in [
            "",
            "a b",
            "A\n2099-01-01T00:00:00Z x",
            "\u{1b}]0;x",
            &"n".repeat(65),
        ] {
            assert!(check_names(node, "r").is_err(), "{node:?}");
        }
        assert!(check_names("mx1", &"r".repeat(MAX_RULE_NAME + 1)).is_err());
        assert!(check_names("mx1", "a\u{1b}[2J").is_err());
        assert!(check_names("mx1", "line\nbreak").is_err());
    }
}
