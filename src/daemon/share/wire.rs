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
    /// Removed (`del`).
    Unban { key: Key },
    /// The list flushed.
    Flush,
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
    /// `u` (unban) or `f` (flush), `-` for what the op has not, the rule last (it may hold
    /// spaces; empty for a ban by hand). One field, not seven: readers parse a fifth of the
    /// values, and `XRANGE` in `redis-cli` still reads as a line.
    pub fn to_text(&self) -> String {
        let (op, key, until, rule) = match &self.op {
            Op::Ban { key, until, rule } => ("b", key_text(*key), until.to_string(), rule.as_str()),
            Op::Unban { key } => ("u", key_text(*key), "-".into(), ""),
            Op::Flush => ("f", "-".into(), "-".into(), ""),
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
            "u" => Op::Unban { key: key()? },
            "f" => Op::Flush,
            other => return Err(format!("op {other:?}: expected b, u or f")),
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

impl Cursor {
    pub fn to_text(&self) -> String {
        format!(
            "stringban share cursor 1\nfleet {}\nepoch {}\nid {}\npos {}\npublished {}\n",
            self.fleet, self.epoch, self.id, self.pos, self.published
        )
    }

    pub fn parse(text: &str) -> Result<Cursor, String> {
        let mut lines = text.lines();
        if lines.next() != Some("stringban share cursor 1") {
            return Err("not a stringban share cursor (version 1)".into());
        }
        let mut c = Cursor::default();
        let mut seen = 0;
        if text.contains('\r') {
            return Err("a carriage return: not a file this daemon wrote".into());
        }
        for line in lines {
            let (k, v) = line
                .split_once(' ')
                .ok_or_else(|| format!("line {line:?}: expected KEY VALUE"))?;
            let bad = || format!("{k} = {v:?}: bad value");
            match k {
                "fleet" => c.fleet = v.to_string(),
                "epoch" => c.epoch = v.to_string(),
                "id" => c.id = StreamId::parse(v).ok_or_else(bad)?,
                "pos" => c.pos = v.parse().map_err(|_| bad())?,
                "published" => c.published = v.parse().map_err(|_| bad())?,
                _ => return Err(format!("line {line:?}: unknown key")),
            }
            seen += 1;
        }
        if seen < 5 {
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
            Op::Unban { key },
            Op::Flush,
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
                .contains("expected b, u or f")
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
}
