//! Named ban lists shared by every worker.
//!
//! A key is the source address masked by the list's prefix (default IPv4 /32, IPv6 /64: attackers
//! rotate inside a /64). IPv4 keys are `u32`, IPv6 keys `u128`, each in its own `DashMap` with the
//! std SipHash hasher (keys are attacker-chosen). An entry is 20 bytes of `u32`s; the mutable
//! fields are atomics, so a lookup that refreshes a ban takes only the shard's read lock.
//!
//! Times have one-second resolution: a ban lasts at least its TTL and at most one second more.
//! Nothing here reads a clock; `now` is always passed in.
//!
//! Capacity: when a list is full, the least recently seen entries are evicted in a batch of
//! `max(1, capacity / 64)`, after every expired entry. One sweep costs a pass over the list, so
//! the amortised cost per insert stays constant and no per-entry LRU links are needed.
//!
//! Durability: a list given a journal ([`Blacklist::set_journal`]) sends a [`Change`] for each
//! new ban, renewal by a rule or by hand, removal and flush down a channel; the daemon's store
//! thread writes them (see `store`). A hit that refreshes a ban sends nothing: the periodic
//! snapshot carries refreshed expiries.

use std::collections::hash_map::RandomState;
use std::fmt;
use std::hash::BuildHasher;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::mpsc::Sender;

use dashmap::DashMap;

use crate::time::{Duration, Instant};

/// Index of a list in its [`Blacklist`].
pub type ListId = u16;

/// Index of the rule that made a ban; [`NO_RULE`] for bans added by hand.
pub type RuleId = u16;

/// The rule id of a ban that no rule made (control `add`, import).
pub const NO_RULE: RuleId = u16::MAX;

/// Rule ids from here up to (not including) [`NO_RULE`] tag bans a peer of the fleet made:
/// `rule - PEER_RULE` indexes the daemon's table of (node, rule name) origins. Local rule ids
/// stay below it (a configuration has far fewer rules).
pub const PEER_RULE: RuleId = 0x8000;

/// The origin-table index of a ban a peer made, or None for a local one.
pub fn peer_index(rule: RuleId) -> Option<u16> {
    (PEER_RULE..NO_RULE)
        .contains(&rule)
        .then(|| rule - PEER_RULE)
}

/// Who asked for a removal: this host (a rule, `del`, `flush`), or a peer of the fleet.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub enum By {
    /// This host, for itself: peers lift only what the fleet shared with them (their copies).
    Local,
    /// This host, for the whole fleet (`del --fleet`, `flush --fleet`): peers lift their own
    /// bans too.
    Fleet,
    /// A peer's change, applied here (never published again).
    Peer,
}

/// A list's settings.
#[derive(Clone, Debug, Eq, PartialEq)]
pub struct ListConfig {
    pub name: String,
    pub ttl: Duration,
    /// A packet from a banned source extends the ban by `ttl` (xt_recent `--update`).
    pub refresh_on_hit: bool,
    pub capacity: usize,
    pub prefix_v4: u8,
    pub prefix_v6: u8,
    /// Ban after this many convictions within `window` (1: at the first, as xt_recent `--set`).
    pub threshold: u8,
    /// The window convictions count in, from the first of them.
    pub window: Duration,
    /// A repeat offender's TTL is the previous one times this, up to `max_ttl` (1: off).
    pub escalate: u8,
    /// Longest escalated TTL (default: the larger of `ttl` and 30 days).
    pub max_ttl: Option<Duration>,
    /// How long after a ban ends its offender is remembered for escalation (default: max_ttl).
    pub remember: Option<Duration>,
    /// Longest ban a peer of the fleet may make here, from now (default: the list's `ttl`).
    pub peer_max_ttl: Option<Duration>,
}

impl ListConfig {
    pub const DEFAULT_CAPACITY: usize = 10_000_000;

    /// No name, defaults otherwise (a base for computations; `new` names a list).
    const EMPTY: ListConfig = ListConfig {
        name: String::new(),
        ttl: Duration::from_secs(86_400),
        refresh_on_hit: true,
        capacity: ListConfig::DEFAULT_CAPACITY,
        prefix_v4: 32,
        prefix_v6: 64,
        threshold: 1,
        window: Duration::from_secs(600),
        escalate: 1,
        max_ttl: None,
        remember: None,
        peer_max_ttl: None,
    };

    pub fn new(name: &str) -> ListConfig {
        ListConfig {
            name: name.to_string(),
            ..ListConfig::EMPTY
        }
    }

    /// The longest TTL an escalation reaches.
    pub fn max_ttl(&self) -> Duration {
        self.max_ttl
            .unwrap_or_else(|| self.ttl.max(Duration::from_secs(30 * 86_400)))
    }

    /// How long after a ban ends its offender is remembered (0 when escalation is off).
    pub fn remember(&self) -> Duration {
        match self.escalate {
            0 | 1 => Duration::ZERO,
            _ => self.remember.unwrap_or_else(|| self.max_ttl()),
        }
    }

    /// The TTL of an offender's `offence`-th ban (1-based): `ttl × escalate^(offence-1)`,
    /// at most [`ListConfig::max_ttl`].
    pub fn ttl_for(&self, offence: u8) -> Duration {
        let mut ttl = self.ttl.micros();
        let cap = self.max_ttl().micros().max(ttl);
        for _ in 1..offence.max(1) {
            if self.escalate <= 1 || ttl >= cap {
                break;
            }
            ttl = ttl.saturating_mul(u64::from(self.escalate));
        }
        Duration::from_micros(ttl.min(cap))
    }
}

/// A banned address or prefix.
#[derive(Clone, Copy, Debug, Eq, Hash, Ord, PartialEq, PartialOrd)]
pub enum Key {
    V4 { addr: u32, prefix: u8 },
    V6 { addr: u128, prefix: u8 },
}

impl Key {
    pub fn addr(self) -> IpAddr {
        match self {
            Key::V4 { addr, .. } => IpAddr::V4(Ipv4Addr::from(addr)),
            Key::V6 { addr, .. } => IpAddr::V6(Ipv6Addr::from(addr)),
        }
    }
}

impl fmt::Display for Key {
    /// `198.18.0.7` for a full-length key, `2001:db8:1::/64` for a prefix.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Key::V4 { prefix: 32, .. } | Key::V6 { prefix: 128, .. } => {
                write!(f, "{}", self.addr())
            }
            Key::V4 { prefix, .. } | Key::V6 { prefix, .. } => {
                write!(f, "{}/{prefix}", self.addr())
            }
        }
    }
}

/// A list's threshold and escalation, as used on convictions and sweeps (times in seconds).
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
struct Policy {
    threshold: u8,
    window: u32,
    escalate: u8,
    remember: u32,
    max_ttl: Duration,
}

impl Policy {
    fn of(c: &ListConfig) -> Policy {
        let secs = |d: Duration| u32::try_from(d.micros() / 1_000_000).unwrap_or(u32::MAX);
        Policy {
            threshold: c.threshold.max(1),
            window: secs(c.window),
            escalate: c.escalate.max(1),
            remember: secs(c.remember()),
            max_ttl: c.max_ttl(),
        }
    }

    /// `ttl × escalate^(offence-1)`, at most `max_ttl` (never less than `ttl`).
    fn ttl_for(self, ttl: Duration, offence: u8) -> Duration {
        ListConfig {
            ttl,
            escalate: self.escalate,
            max_ttl: Some(self.max_ttl),
            ..ListConfig::EMPTY
        }
        .ttl_for(offence)
    }

    fn remembers(self) -> bool {
        self.threshold > 1 || self.escalate > 1
    }

    /// Until when (seconds) an entry is kept: its ban's end; for strikes, the window from the
    /// first; for a ban served with escalation on, `remember` after its end.
    fn keep_until(self, first_seen: u32, expires_at: u32, strikes: u8, offences: u8) -> u32 {
        let mut until = expires_at;
        if self.threshold > 1 && strikes > 0 {
            until = until.max(first_seen.saturating_add(self.window));
        }
        if self.escalate > 1 && offences > 0 {
            until = until.max(expires_at.saturating_add(self.remember));
        }
        until
    }
}

/// A snapshot of one entry, for listing and persisting.
///
/// An entry is a ban while `now < expires_at`. With a threshold or escalation it may also be a
/// record of an offender who is not banned now: convictions counted towards the threshold
/// (`strikes`, since `first_seen`), or bans served (`offences`), kept for a while (see
/// [`List::keep_until`]).
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub struct Ban {
    pub key: Key,
    /// When the entry was made; while it counts strikes, the start of their window.
    pub first_seen: Instant,
    pub last_seen: Instant,
    pub expires_at: Instant,
    pub hits: u32,
    pub rule: RuleId,
    /// Convictions counted towards the list's threshold (0 once banned).
    pub strikes: u8,
    /// Bans served or being served (escalation).
    pub offences: u8,
}

impl Ban {
    pub fn is_banned(&self, now: Instant) -> bool {
        now.micros() < self.expires_at.micros()
    }
}

#[derive(Debug)]
struct Entry {
    first_seen: AtomicU32,
    last_seen: AtomicU32,
    expires_at: AtomicU32,
    hits: AtomicU32,
    rule: RuleId,
    strikes: u8,
    offences: u8,
}

impl Entry {
    fn banned(now: Instant, ttl: Duration, rule: RuleId) -> Entry {
        Entry {
            first_seen: AtomicU32::new(now.secs_u32()),
            last_seen: AtomicU32::new(now.secs_u32()),
            expires_at: AtomicU32::new(expiry(now, ttl)),
            hits: AtomicU32::new(0),
            rule,
            strikes: 0,
            offences: 1,
        }
    }

    fn is_banned(&self, now: Instant) -> bool {
        now.micros() < u64::from(self.expires_at.load(Relaxed)) * 1_000_000
    }

    fn snapshot(&self, key: Key) -> Ban {
        let at = |secs: u32| Instant::from_secs(u64::from(secs));
        Ban {
            key,
            first_seen: at(self.first_seen.load(Relaxed)),
            last_seen: at(self.last_seen.load(Relaxed)),
            expires_at: at(self.expires_at.load(Relaxed)),
            hits: self.hits.load(Relaxed),
            rule: self.rule,
            strikes: self.strikes,
            offences: self.offences,
        }
    }
}

/// `now + ttl` rounded up to the second, saturating.
fn expiry(now: Instant, ttl: Duration) -> u32 {
    let micros = now.micros().saturating_add(ttl.micros());
    u32::try_from(micros.div_ceil(1_000_000)).unwrap_or(u32::MAX)
}

/// Shards per map, fixed (not derived from the CPU count) so that a snapshot's order matches
/// the maps of a restart on any machine.
const SHARDS: usize = 8;

/// The SipHash keys of a list's maps. Random per list; kept in the snapshot (in the root-only
/// state directory) so that a restart hashes alike. Keys are attacker-chosen addresses, hence a
/// keyed hash: an attacker who does not know the keys cannot aim floods at one bucket.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub struct HashKeys(pub u64, pub u64);

impl HashKeys {
    /// Two fresh random keys (from std's randomly seeded SipHash state).
    pub fn random() -> HashKeys {
        let r = RandomState::new();
        HashKeys(r.hash_one(0x5eed_u64), r.hash_one(0xfeed_u64))
    }
}

/// SipHash-2-4 with explicit keys (std's `RandomState` hides its keys), taken a word at a
/// time ([`crate::decide::sip`]): the same hash as std's `SipHasher`, which a persisted map needs.
#[derive(Clone, Copy, Debug)]
pub struct Keyed(HashKeys);

impl BuildHasher for Keyed {
    type Hasher = crate::decide::sip::Sip24;

    fn build_hasher(&self) -> crate::decide::sip::Sip24 {
        crate::decide::sip::Sip24::new(self.0.0, self.0.1)
    }
}

/// A change to a list, for the journal.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub enum Change {
    /// A conviction or a ban by hand: the entry as it now is, and what it did.
    Ban(ListId, Ban, Banned),
    /// An entry was removed by hand (here or on a peer).
    Remove(ListId, Key, By),
    /// A list was flushed (here or on a peer).
    Flush(ListId, By),
}

/// What [`List::ban`] did.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub enum Banned {
    /// A new entry (possibly after evicting others).
    New,
    /// The key was already banned; its TTL starts again.
    Renewed,
    /// Counted towards the list's threshold, not banned yet: convictions so far.
    Strike(u8),
    /// A ban a peer of the fleet made, applied here ([`List::apply_shared`]).
    Shared,
}

impl Change {
    /// Made on this host (to be shared with the fleet), not applied from a peer.
    pub fn is_local(&self) -> bool {
        match self {
            Change::Ban(_, _, b) => *b != Banned::Shared,
            Change::Remove(_, _, by) | Change::Flush(_, by) => *by != By::Peer,
        }
    }

    pub fn list(&self) -> ListId {
        match *self {
            Change::Ban(l, _, _) | Change::Remove(l, _, _) | Change::Flush(l, _) => l,
        }
    }
}

/// Counters of one list, shared by all workers.
#[derive(Debug, Default)]
pub struct ListStats {
    pub added: AtomicU64,
    pub renewed: AtomicU64,
    /// Convictions counted towards the threshold without a ban.
    pub strikes: AtomicU64,
    pub hits: AtomicU64,
    pub expired: AtomicU64,
    pub evicted: AtomicU64,
    pub removed: AtomicU64,
    /// Peers' bans not applied: the list was full of this host's own entries.
    pub peer_refused: AtomicU64,
}

/// One named ban list.
#[derive(Debug)]
pub struct List {
    /// Name and prefixes, fixed for the list's life (its keys are masked by the prefixes); the
    /// TTL, refresh and capacity in it are only the initial values: the live ones are below,
    /// changed by a reload ([`List::update`]).
    config: ListConfig,
    ttl_us: AtomicU64,
    refresh_on_hit: AtomicBool,
    capacity: AtomicUsize,
    /// Threshold, window, escalation (reloadable): read on convictions and sweeps only.
    offenders: std::sync::RwLock<ListConfig>,
    policy: std::sync::RwLock<Policy>,
    /// The policy's `escalate`, readable without the lock.
    escalate: std::sync::atomic::AtomicU8,
    /// Seconds past the last sweep, to report the bans that ended since.
    last_sweep: AtomicU32,
    v4: DashMap<u32, Entry, Keyed>,
    v6: DashMap<u128, Entry, Keyed>,
    keys: HashKeys,
    len: AtomicUsize,
    stats: ListStats,
    /// Where changes go (the daemon's store), and this list's id there.
    journal: OnceLock<(ListId, Sender<Change>)>,
}

impl List {
    pub fn new(config: ListConfig) -> List {
        List::with_keys(config, HashKeys::random())
    }

    /// A list hashing with `keys` (a restart reuses the snapshot's keys, so that the snapshot's
    /// order, which is the old maps' bucket order, is the new maps' too: loading then writes
    /// the tables front to back instead of at random).
    pub fn with_keys(config: ListConfig, keys: HashKeys) -> List {
        List {
            ttl_us: AtomicU64::new(config.ttl.micros()),
            refresh_on_hit: AtomicBool::new(config.refresh_on_hit),
            capacity: AtomicUsize::new(config.capacity),
            offenders: std::sync::RwLock::new(config.clone()),
            policy: std::sync::RwLock::new(Policy::of(&config)),
            escalate: std::sync::atomic::AtomicU8::new(config.escalate),
            last_sweep: AtomicU32::new(0),
            config,
            v4: DashMap::with_hasher_and_shard_amount(Keyed(keys), SHARDS),
            v6: DashMap::with_hasher_and_shard_amount(Keyed(keys), SHARDS),
            keys,
            len: AtomicUsize::new(0),
            stats: ListStats::default(),
            journal: OnceLock::new(),
        }
    }

    fn record(&self, change: impl FnOnce(ListId) -> Change) {
        if let Some((id, tx)) = self.journal.get() {
            // The store gone (shutting down): nothing to keep.
            let _ = tx.send(change(*id));
        }
    }

    /// Puts a persisted entry back (its key re-masked by this list's prefixes), unless it has
    /// expired at `now`. Records nothing. Returns whether it was added.
    pub fn restore(&self, ban: &Ban, now: Instant) -> bool {
        if now.micros() >= ban.expires_at.micros()
            && (!self.remembers() || now.micros() >= self.keep_until(ban).micros())
        {
            return false;
        }
        if self.len() >= self.capacity() {
            self.make_room(now);
        }
        let entry = Entry {
            first_seen: AtomicU32::new(ban.first_seen.secs_u32()),
            last_seen: AtomicU32::new(ban.last_seen.secs_u32()),
            expires_at: AtomicU32::new(ban.expires_at.secs_u32()),
            hits: AtomicU32::new(ban.hits),
            rule: ban.rule,
            strikes: ban.strikes,
            // Version-2 files predate offence counts: a ban there is a first offence.
            offences: ban.offences.max(u8::from(ban.expires_at > Instant::ZERO)),
        };
        let fresh = match self.key(ban.key.addr()) {
            Key::V4 { addr, .. } => self.v4.insert(addr, entry).is_none(),
            Key::V6 { addr, .. } => self.v6.insert(addr, entry).is_none(),
        };
        if fresh {
            self.len.fetch_add(1, Relaxed);
        }
        true
    }

    /// The ban of `addr`'s key, if it is banned at `now`.
    pub fn get(&self, addr: IpAddr, now: Instant) -> Option<Ban> {
        self.entry(addr, now).filter(|b| b.is_banned(now))
    }

    /// The entry of `addr`'s key at `now`, banned or a record kept of an offender.
    pub fn entry(&self, addr: IpAddr, now: Instant) -> Option<Ban> {
        let key = self.key(addr);
        let entry = match key {
            Key::V4 { addr, .. } => self.v4.get(&addr).map(|e| e.snapshot(key)),
            Key::V6 { addr, .. } => self.v6.get(&addr).map(|e| e.snapshot(key)),
        };
        entry.filter(|b| now.micros() < self.keep_until(b).micros())
    }

    /// The list's settings as they are now.
    pub fn config(&self) -> ListConfig {
        let o = match self.offenders.read() {
            Ok(c) => c.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        };
        ListConfig {
            ttl: self.ttl(),
            refresh_on_hit: self.refresh_on_hit(),
            capacity: self.capacity(),
            threshold: o.threshold,
            window: o.window,
            escalate: o.escalate,
            max_ttl: o.max_ttl,
            remember: o.remember,
            ..self.config.clone()
        }
    }

    /// The threshold and escalation settings now.
    /// [`ListConfig::max_ttl`] as configured now, without copying the configuration.
    pub fn max_ttl(&self) -> Duration {
        let max = match self.offenders.read() {
            Ok(c) => c.max_ttl,
            Err(poisoned) => poisoned.into_inner().max_ttl,
        };
        max.unwrap_or_else(|| self.ttl().max(Duration::from_secs(30 * 86_400)))
    }

    /// The longest ban a peer may make here, from now: [`ListConfig::peer_max_ttl`] as
    /// configured now, else the list's own TTL (a peer's ban never outlasts a local first one).
    pub fn peer_max_ttl(&self) -> Duration {
        let max = match self.offenders.read() {
            Ok(c) => c.peer_max_ttl,
            Err(poisoned) => poisoned.into_inner().peer_max_ttl,
        };
        max.unwrap_or_else(|| self.ttl())
    }

    fn policy(&self) -> Policy {
        match self.policy.read() {
            Ok(p) => *p,
            Err(poisoned) => *poisoned.into_inner(),
        }
    }

    /// Does the list keep records of offenders who are not banned (threshold or escalation)?
    fn remembers(&self) -> bool {
        self.policy().remembers()
    }

    /// Until when an entry is kept: see [`Policy::keep_until`].
    pub fn keep_until(&self, ban: &Ban) -> Instant {
        let p = self.policy();
        Instant::from_secs(u64::from(p.keep_until(
            ban.first_seen.secs_u32(),
            ban.expires_at.secs_u32(),
            ban.strikes,
            ban.offences,
        )))
    }

    pub fn name(&self) -> &str {
        &self.config.name
    }

    pub fn ttl(&self) -> Duration {
        Duration::from_micros(self.ttl_us.load(Relaxed))
    }

    pub fn refresh_on_hit(&self) -> bool {
        self.refresh_on_hit.load(Relaxed)
    }

    pub fn capacity(&self) -> usize {
        self.capacity.load(Relaxed)
    }

    /// Would [`List::update`] take `new`? A changed name or prefix is refused: every key is
    /// masked by the prefix, so that needs a restart. (A reload checks every list first.)
    pub fn check_update(&self, new: &ListConfig) -> Result<(), ListChange> {
        let old = &self.config;
        if new.name != old.name {
            return Err(ListChange::Renamed {
                from: old.name.clone(),
                to: new.name.clone(),
            });
        }
        for (what, a, b) in [
            ("prefix_v4", old.prefix_v4, new.prefix_v4),
            ("prefix_v6", old.prefix_v6, new.prefix_v6),
        ] {
            if a != b {
                return Err(ListChange::Prefix {
                    list: old.name.clone(),
                    what,
                    from: a,
                    to: b,
                });
            }
        }
        Ok(())
    }

    /// Applies a reloaded configuration of this list: TTL (for bans made or renewed from now
    /// on; existing bans keep their expiry), refresh on hit, and capacity (a smaller one evicts
    /// at once, expired entries first, then the least recently seen). Refused as
    /// [`List::check_update`] says, changing nothing. Returns what changed, as `setting old ->
    /// new` texts.
    pub fn update(&self, new: &ListConfig, now: Instant) -> Result<Vec<String>, ListChange> {
        self.check_update(new)?;
        let old = self.config();
        let mut changed = Vec::new();
        if new.ttl != old.ttl {
            changed.push(format!("ttl {} -> {}", old.ttl, new.ttl));
            self.ttl_us.store(new.ttl.micros(), Relaxed);
        }
        if new.refresh_on_hit != old.refresh_on_hit {
            changed.push(format!(
                "refresh_on_hit {} -> {}",
                old.refresh_on_hit, new.refresh_on_hit
            ));
            self.refresh_on_hit.store(new.refresh_on_hit, Relaxed);
        }
        for (what, a, b) in [
            (
                "threshold",
                old.threshold.to_string(),
                new.threshold.to_string(),
            ),
            ("window", old.window.to_string(), new.window.to_string()),
            (
                "escalate",
                old.escalate.to_string(),
                new.escalate.to_string(),
            ),
            (
                "max_ttl",
                old.max_ttl().to_string(),
                new.max_ttl().to_string(),
            ),
            (
                "remember",
                old.remember().to_string(),
                new.remember().to_string(),
            ),
        ] {
            if a != b {
                changed.push(format!("{what} {a} -> {b}"));
            }
        }
        match self.offenders.write() {
            Ok(mut o) => *o = new.clone(),
            Err(poisoned) => *poisoned.into_inner() = new.clone(),
        }
        match self.policy.write() {
            Ok(mut p) => *p = Policy::of(new),
            Err(poisoned) => *poisoned.into_inner() = Policy::of(new),
        }
        self.escalate.store(new.escalate, Relaxed);
        if new.capacity != old.capacity {
            changed.push(format!("capacity {} -> {}", old.capacity, new.capacity));
            self.capacity.store(new.capacity, Relaxed);
            while self.len() > new.capacity {
                let before = self.len();
                self.make_room(now);
                if self.len() >= before {
                    break;
                }
            }
        }
        Ok(changed)
    }

    /// The keys this list hashes with (saved in the snapshot).
    pub fn hash_keys(&self) -> HashKeys {
        self.keys
    }

    pub fn stats(&self) -> &ListStats {
        &self.stats
    }

    /// Entries held, expired ones included until a sweep or lookup removes them.
    pub fn len(&self) -> usize {
        self.len.load(Relaxed)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The key `addr` falls under in this list. IPv4-mapped IPv6 addresses count as IPv4.
    pub fn key(&self, addr: IpAddr) -> Key {
        match addr {
            IpAddr::V4(v4) => Key::V4 {
                addr: mask32(v4.to_bits(), self.config.prefix_v4),
                prefix: self.config.prefix_v4,
            },
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => self.key(IpAddr::V4(v4)),
                None => Key::V6 {
                    addr: mask128(v6.to_bits(), self.config.prefix_v6),
                    prefix: self.config.prefix_v6,
                },
            },
        }
    }

    /// Is `addr` banned at `now`? A hit counts, and refreshes the ban if the list says so.
    /// Ended entries are left to the sweep ([`List::expire`]), which reports them.
    pub fn check(&self, addr: IpAddr, now: Instant) -> bool {
        match self.key(addr) {
            Key::V4 { addr, .. } => self.check_in(&self.v4, addr, now),
            Key::V6 { addr, .. } => self.check_in(&self.v6, addr, now),
        }
    }

    fn check_in<K: Eq + std::hash::Hash + Copy>(
        &self,
        map: &DashMap<K, Entry, Keyed>,
        key: K,
        now: Instant,
    ) -> bool {
        match map.get(&key) {
            Some(entry) if entry.is_banned(now) => {
                entry.hits.fetch_add(1, Relaxed);
                entry.last_seen.fetch_max(now.secs_u32(), Relaxed);
                if self.refresh_on_hit() {
                    let ttl = self.ttl_of(entry.offences);
                    entry.expires_at.fetch_max(expiry(now, ttl), Relaxed);
                }
                self.stats.hits.fetch_add(1, Relaxed);
                true
            }
            _ => false,
        }
    }

    /// The TTL of an offender's `offence`-th ban (the list's TTL unless escalating). On every
    /// hit that refreshes a ban: the common case reads one atomic, not the policy's lock.
    fn ttl_of(&self, offence: u8) -> Duration {
        if offence <= 1 || self.escalate.load(Relaxed) <= 1 {
            return self.ttl();
        }
        self.policy().ttl_for(self.ttl(), offence)
    }

    /// A rule convicted `addr` at `now`: counted towards the threshold, or banned (for the TTL
    /// its offences escalate to), or its ban renewed.
    pub fn ban(&self, addr: IpAddr, now: Instant, rule: RuleId) -> Banned {
        match self.key(addr) {
            Key::V4 { addr, .. } => self.convict_in(&self.v4, addr, now, None, rule),
            Key::V6 { addr, .. } => self.convict_in(&self.v6, addr, now, None, rule),
        }
    }

    /// Bans `addr` for `ttl` from `now` at once (a ban by hand: no threshold, no escalation).
    pub fn ban_for(&self, addr: IpAddr, now: Instant, ttl: Duration, rule: RuleId) -> Banned {
        match self.key(addr) {
            Key::V4 { addr, .. } => self.convict_in(&self.v4, addr, now, Some(ttl), rule),
            Key::V6 { addr, .. } => self.convict_in(&self.v6, addr, now, Some(ttl), rule),
        }
    }

    fn convict_in<K: Eq + std::hash::Hash + StoredKey>(
        &self,
        map: &DashMap<K, Entry, Keyed>,
        key: K,
        now: Instant,
        by_hand: Option<Duration>,
        rule: RuleId,
    ) -> Banned {
        let policy = self.policy();
        let t = now.secs_u32();
        if let Some(mut entry) = map.get_mut(&key) {
            let e = &mut *entry;
            if e.is_banned(now) {
                if peer_index(e.rule).is_some() {
                    // A peer's ban renewed by a conviction here: this host's now.
                    e.rule = rule;
                }
                let ttl = by_hand.unwrap_or_else(|| self.ttl_of(e.offences));
                e.expires_at.fetch_max(expiry(now, ttl), Relaxed);
                e.last_seen.fetch_max(t, Relaxed);
                self.stats.renewed.fetch_add(1, Relaxed);
                let ban = e.snapshot(self.key_of(key));
                drop(entry);
                self.record(|id| Change::Ban(id, ban, Banned::Renewed));
                return Banned::Renewed;
            }
            let first = e.first_seen.load(Relaxed);
            let kept = policy.keep_until(first, e.expires_at.load(Relaxed), e.strikes, e.offences);
            if t >= kept {
                // Forgotten: start afresh.
                e.strikes = 0;
                e.offences = 0;
                e.hits.store(0, Relaxed);
                e.first_seen.store(t, Relaxed);
            }
            let outcome = self.strike_or_ban(e, now, by_hand, rule, policy);
            let ban = e.snapshot(self.key_of(key));
            drop(entry);
            self.record(|id| Change::Ban(id, ban, outcome));
            return outcome;
        }
        if self.len() >= self.capacity() {
            self.make_room(now);
        }
        let mut entry = Entry {
            offences: 0,
            expires_at: AtomicU32::new(0),
            ..Entry::banned(now, Duration::ZERO, rule)
        };
        let outcome = self.strike_or_ban(&mut entry, now, by_hand, rule, policy);
        let ban = entry.snapshot(self.key_of(key));
        if map.insert(key, entry).is_none() {
            self.len.fetch_add(1, Relaxed);
        }
        self.record(|id| Change::Ban(id, ban, outcome));
        outcome
    }

    /// One more conviction of an entry that is not banned: a strike below the threshold, else
    /// a ban.
    fn strike_or_ban(
        &self,
        e: &mut Entry,
        now: Instant,
        by_hand: Option<Duration>,
        rule: RuleId,
        policy: Policy,
    ) -> Banned {
        let t = now.secs_u32();
        e.last_seen.store(t, Relaxed);
        e.rule = rule;
        if by_hand.is_none() && policy.threshold > 1 {
            if e.strikes == 0 || t >= e.first_seen.load(Relaxed).saturating_add(policy.window) {
                e.strikes = 0;
                e.first_seen.store(t, Relaxed);
            }
            e.strikes = e.strikes.saturating_add(1);
            if e.strikes < policy.threshold {
                self.stats.strikes.fetch_add(1, Relaxed);
                return Banned::Strike(e.strikes);
            }
        }
        e.strikes = 0;
        e.offences = e.offences.saturating_add(1);
        let ttl = by_hand.unwrap_or_else(|| self.ttl_of(e.offences));
        e.expires_at.store(expiry(now, ttl), Relaxed);
        e.hits.store(0, Relaxed);
        self.stats.added.fetch_add(1, Relaxed);
        Banned::New
    }

    /// Removes `addr`'s entry; true if there was one.
    pub fn remove(&self, addr: IpAddr) -> bool {
        self.remove_by(addr, By::Local)
    }

    /// [`List::remove`], recorded as asked `by` this host or a peer.
    pub fn remove_by(&self, addr: IpAddr, by: By) -> bool {
        let key = self.key(addr);
        let removed = match key {
            Key::V4 { addr, .. } => self.v4.remove(&addr).is_some(),
            Key::V6 { addr, .. } => self.v6.remove(&addr).is_some(),
        };
        if removed {
            self.len.fetch_sub(1, Relaxed);
            self.stats.removed.fetch_add(1, Relaxed);
            self.record(|id| Change::Remove(id, key, by));
        }
        removed
    }

    /// Removes every entry; returns how many there were.
    pub fn clear(&self) -> usize {
        self.clear_by(By::Local)
    }

    /// [`List::clear`], recorded as asked `by` this host or a peer.
    pub fn clear_by(&self, by: By) -> usize {
        let n = self.v4.len() + self.v6.len();
        self.v4.clear();
        self.v6.clear();
        self.len.store(0, Relaxed);
        self.stats.removed.fetch_add(n as u64, Relaxed);
        self.record(|id| Change::Flush(id, by));
        n
    }

    /// A peer's lift that is not fleet-wide: removes `addr`'s entry only if it came from the
    /// fleet (a peer's ban), never one of this host's own. Recorded as a peer's removal.
    pub fn remove_shared(&self, addr: IpAddr) -> bool {
        let key = self.key(addr);
        let peer = |e: &Entry| peer_index(e.rule).is_some();
        let removed = match key {
            Key::V4 { addr, .. } => self.v4.remove_if(&addr, |_, e| peer(e)).is_some(),
            Key::V6 { addr, .. } => self.v6.remove_if(&addr, |_, e| peer(e)).is_some(),
        };
        if removed {
            self.len.fetch_sub(1, Relaxed);
            self.stats.removed.fetch_add(1, Relaxed);
            self.record(|id| Change::Remove(id, key, By::Peer));
        }
        removed
    }

    /// A peer's flush that is not fleet-wide: removes every entry that came from the fleet,
    /// keeping this host's own (each removal recorded, as a peer's). Returns how many.
    pub fn clear_shared(&self) -> usize {
        let peer = |e: &Entry| peer_index(e.rule).is_some();
        let mut gone: Vec<Key> = Vec::new();
        self.v4.retain(|k, e| {
            let drop = peer(e);
            if drop {
                gone.push(self.key_of(*k));
            }
            !drop
        });
        self.v6.retain(|k, e| {
            let drop = peer(e);
            if drop {
                gone.push(self.key_of(*k));
            }
            !drop
        });
        self.len.fetch_sub(gone.len(), Relaxed);
        self.stats.removed.fetch_add(gone.len() as u64, Relaxed);
        for key in &gone {
            self.record(|id| Change::Remove(id, *key, By::Peer));
        }
        gone.len()
    }

    /// Applies a ban a peer of the fleet made: `key` banned until `until` (absolute time; the
    /// caller caps it), tagged `rule` (a [`PEER_RULE`] origin). Idempotent and monotonic: an
    /// entry already banned at least as long is left as it is (and nothing is recorded), a
    /// shorter ban is extended, a record of an offender becomes a ban (one more offence).
    /// Returns false when nothing changed, and for a key of another prefix than this list's
    /// (the caller counts it).
    pub fn apply_shared(&self, key: Key, until: Instant, now: Instant, rule: RuleId) -> bool {
        if self.key(key.addr()) != key || until <= now {
            return false;
        }
        match key {
            Key::V4 { addr, .. } => self.apply_in(&self.v4, addr, until, now, rule),
            Key::V6 { addr, .. } => self.apply_in(&self.v6, addr, until, now, rule),
        }
    }

    fn apply_in<K: Eq + std::hash::Hash + StoredKey>(
        &self,
        map: &DashMap<K, Entry, Keyed>,
        key: K,
        until: Instant,
        now: Instant,
        rule: RuleId,
    ) -> bool {
        let until_s = u32::try_from(until.micros().div_ceil(1_000_000)).unwrap_or(u32::MAX);
        let t = now.secs_u32();
        if let Some(mut entry) = map.get_mut(&key) {
            let e = &mut *entry;
            if e.is_banned(now) {
                if e.expires_at.fetch_max(until_s, Relaxed) >= until_s {
                    return false;
                }
            } else {
                e.expires_at.store(until_s, Relaxed);
                e.offences = e.offences.saturating_add(1);
                e.strikes = 0;
                e.hits.store(0, Relaxed);
                e.first_seen.store(t, Relaxed);
                e.rule = rule;
            }
            e.last_seen.fetch_max(t, Relaxed);
            let ban = e.snapshot(self.key_of(key));
            drop(entry);
            self.stats.renewed.fetch_add(1, Relaxed);
            self.record(|id| Change::Ban(id, ban, Banned::Shared));
            return true;
        }
        if self.len() >= self.capacity() && !self.make_room_for_peer(now) {
            // Full of this host's own entries: a peer's ban never evicts one.
            self.stats.peer_refused.fetch_add(1, Relaxed);
            return false;
        }
        let entry = Entry {
            expires_at: AtomicU32::new(until_s),
            ..Entry::banned(now, Duration::ZERO, rule)
        };
        let ban = entry.snapshot(self.key_of(key));
        if map.insert(key, entry).is_none() {
            self.len.fetch_add(1, Relaxed);
        }
        self.stats.added.fetch_add(1, Relaxed);
        self.record(|id| Change::Ban(id, ban, Banned::Shared));
        true
    }

    /// Removes entries no longer kept at `now` (bans that ended, records past their time);
    /// returns how many.
    pub fn expire(&self, now: Instant) -> usize {
        self.expire_reporting(now, |_| {})
    }

    /// [`List::expire`], calling `ended` with each ban that ended since the previous sweep
    /// (removed, or kept as a record of its offender).
    pub fn expire_reporting(&self, now: Instant, mut ended: impl FnMut(Ban)) -> usize {
        let policy = self.policy();
        let t = now.secs_u32();
        let since = self.last_sweep.swap(t, Relaxed);
        let (p4, p6) = (self.config.prefix_v4, self.config.prefix_v6);
        let mut gone = 0;
        let mut sweep = |e: &Entry, key: Key| {
            let expires = e.expires_at.load(Relaxed);
            if expires > since && expires <= t {
                ended(e.snapshot(key));
            }
            let keep =
                t < policy.keep_until(e.first_seen.load(Relaxed), expires, e.strikes, e.offences);
            gone += usize::from(!keep);
            keep
        };
        self.v4.retain(|k, e| {
            sweep(
                e,
                Key::V4 {
                    addr: *k,
                    prefix: p4,
                },
            )
        });
        self.v6.retain(|k, e| {
            sweep(
                e,
                Key::V6 {
                    addr: *k,
                    prefix: p6,
                },
            )
        });
        self.len.fetch_sub(gone, Relaxed);
        self.stats.expired.fetch_add(gone as u64, Relaxed);
        gone
    }

    /// Frees room for a peer's ban: expired entries first, then the least recently seen of the
    /// peers' entries (a batch of `max(1, capacity / 64)`), never one of this host's own. False
    /// when the list is still full.
    fn make_room_for_peer(&self, now: Instant) -> bool {
        if self.expire(now) > 0 && self.len() < self.capacity() {
            return true;
        }
        let batch = (self.capacity() / 64).max(1);
        let mut seen: Vec<u32> = Vec::new();
        let peer = |e: &Entry| peer_index(e.rule).is_some();
        self.v4
            .iter()
            .filter(|e| peer(e.value()))
            .for_each(|e| seen.push(e.last_seen.load(Relaxed)));
        self.v6
            .iter()
            .filter(|e| peer(e.value()))
            .for_each(|e| seen.push(e.last_seen.load(Relaxed)));
        if seen.is_empty() {
            return false;
        }
        let k = batch.min(seen.len()) - 1;
        let threshold = *seen.select_nth_unstable(k).1;
        let mut left = batch;
        let mut gone = 0usize;
        let mut keep = |e: &Entry| {
            let evict = left > 0 && peer(e) && e.last_seen.load(Relaxed) <= threshold;
            left -= usize::from(evict);
            gone += usize::from(evict);
            !evict
        };
        self.v4.retain(|_, e| keep(e));
        self.v6.retain(|_, e| keep(e));
        self.len.fetch_sub(gone, Relaxed);
        self.stats.evicted.fetch_add(gone as u64, Relaxed);
        self.len() < self.capacity()
    }

    /// Frees room for at least one entry: expired entries first, then the least recently seen
    /// `max(1, capacity / 64)`.
    fn make_room(&self, now: Instant) {
        if self.expire(now) > 0 && self.len() < self.capacity() {
            return;
        }
        let batch = (self.capacity() / 64).max(1);
        let mut seen: Vec<u32> = Vec::with_capacity(self.len());
        self.v4
            .iter()
            .for_each(|e| seen.push(e.last_seen.load(Relaxed)));
        self.v6
            .iter()
            .for_each(|e| seen.push(e.last_seen.load(Relaxed)));
        if seen.is_empty() {
            return;
        }
        let k = batch.min(seen.len()) - 1;
        let threshold = *seen.select_nth_unstable(k).1;
        // Everything seen before the threshold goes, and entries seen exactly at it until the
        // batch is full (ties are common at one-second resolution).
        let below = seen.iter().filter(|&&s| s < threshold).count();
        let mut ties = batch.saturating_sub(below);
        let mut gone = 0usize;
        let mut keep = |e: &Entry| {
            let s = e.last_seen.load(Relaxed);
            let evict = s < threshold
                || (s == threshold && ties > 0 && {
                    ties -= 1;
                    true
                });
            gone += usize::from(evict);
            !evict
        };
        self.v4.retain(|_, e| keep(e));
        self.v6.retain(|_, e| keep(e));
        self.len.fetch_sub(gone, Relaxed);
        self.stats.evicted.fetch_add(gone as u64, Relaxed);
    }

    /// A map key as a [`Key`] with this list's prefix.
    fn key_of<K: StoredKey>(&self, k: K) -> Key {
        k.key(self.config.prefix_v4, self.config.prefix_v6)
    }

    /// The bans at `now`, unordered.
    pub fn bans(&self, now: Instant) -> Vec<Ban> {
        let mut out = self.records(now);
        out.retain(|b| b.is_banned(now));
        out
    }

    /// Every entry kept at `now` (bans, and records of offenders not banned now), unordered:
    /// what a snapshot holds.
    pub fn records(&self, now: Instant) -> Vec<Ban> {
        let policy = self.policy();
        let t = now.secs_u32();
        let kept = |e: &Entry| {
            t < policy.keep_until(
                e.first_seen.load(Relaxed),
                e.expires_at.load(Relaxed),
                e.strikes,
                e.offences,
            )
        };
        let (p4, p6) = (self.config.prefix_v4, self.config.prefix_v6);
        let mut out = Vec::with_capacity(self.len());
        for e in self.v4.iter().filter(|e| kept(e.value())) {
            out.push(e.value().snapshot(Key::V4 {
                addr: *e.key(),
                prefix: p4,
            }));
        }
        for e in self.v6.iter().filter(|e| kept(e.value())) {
            out.push(e.value().snapshot(Key::V6 {
                addr: *e.key(),
                prefix: p6,
            }));
        }
        out
    }
}

/// The two map key types, turned back into [`Key`]s.
trait StoredKey: Copy {
    fn key(self, prefix_v4: u8, prefix_v6: u8) -> Key;
}

impl StoredKey for u32 {
    fn key(self, prefix_v4: u8, _: u8) -> Key {
        Key::V4 {
            addr: self,
            prefix: prefix_v4,
        }
    }
}

impl StoredKey for u128 {
    fn key(self, _: u8, prefix_v6: u8) -> Key {
        Key::V6 {
            addr: self,
            prefix: prefix_v6,
        }
    }
}

/// `addr` with the bits past `prefix` cleared.
pub fn mask32(addr: u32, prefix: u8) -> u32 {
    match prefix {
        0 => 0,
        p => addr & (u32::MAX << (32 - u32::from(p.min(32)))),
    }
}

/// `addr` with the bits past `prefix` cleared.
pub fn mask128(addr: u128, prefix: u8) -> u128 {
    match prefix {
        0 => 0,
        p => addr & (u128::MAX << (128 - u32::from(p.min(128)))),
    }
}

/// Every list, by [`ListId`].
#[derive(Debug)]
pub struct Blacklist {
    lists: Vec<List>,
}

impl Blacklist {
    pub fn new(configs: Vec<ListConfig>) -> Blacklist {
        Blacklist {
            lists: configs.into_iter().map(List::new).collect(),
        }
    }

    /// Lists hashing with the keys a snapshot saved for them (by name; a list without saved
    /// keys gets fresh ones).
    pub fn with_hash_keys(configs: Vec<ListConfig>, keys: &[(String, HashKeys)]) -> Blacklist {
        Blacklist {
            lists: configs
                .into_iter()
                .map(|c| match keys.iter().find(|(n, _)| *n == c.name) {
                    Some(&(_, k)) => List::with_keys(c, k),
                    None => List::new(c),
                })
                .collect(),
        }
    }

    pub fn lists(&self) -> &[List] {
        &self.lists
    }

    pub fn list(&self, id: ListId) -> &List {
        &self.lists[usize::from(id)]
    }

    pub fn by_name(&self, name: &str) -> Option<(ListId, &List)> {
        let i = self.lists.iter().position(|l| l.config.name == name)?;
        Some((ListId::try_from(i).ok()?, &self.lists[i]))
    }

    /// Removes expired entries of every list; returns how many.
    pub fn expire(&self, now: Instant) -> usize {
        self.lists.iter().map(|l| l.expire(now)).sum()
    }

    /// From now on, every list sends its [`Change`]s to `tx` (once; later calls do nothing).
    pub fn set_journal(&self, tx: &Sender<Change>) {
        for (i, l) in self.lists.iter().enumerate() {
            let id = ListId::try_from(i).unwrap_or(ListId::MAX);
            let _ = l.journal.set((id, tx.clone()));
        }
    }
}

/// A list change a reload cannot apply to live bans (it needs a restart).
#[derive(Clone, Debug, Eq, PartialEq)]
pub enum ListChange {
    /// The lists are not the same names in the same order.
    Lists,
    Renamed {
        from: String,
        to: String,
    },
    /// Every key is masked by the prefix.
    Prefix {
        list: String,
        what: &'static str,
        from: u8,
        to: u8,
    },
}

impl std::fmt::Display for ListChange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ListChange::Lists => {
                f.write_str("the lists changed (names or order); restart to change lists")
            }
            ListChange::Renamed { from, to } => write!(f, "list {from} is now named {to}"),
            ListChange::Prefix {
                list,
                what,
                from,
                to,
            } => write!(
                f,
                "list {list}: {what} {from} -> {to} needs a restart (its bans are keyed by the prefix)"
            ),
        }
    }
}

impl std::error::Error for ListChange {}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn list(ttl_secs: u64, refresh: bool, capacity: usize) -> List {
        List::new(ListConfig {
            ttl: Duration::from_secs(ttl_secs),
            refresh_on_hit: refresh,
            capacity,
            ..ListConfig::new("t")
        })
    }

    #[test]
    fn a_peers_ban_applies_once_only_extends_and_is_not_local() {
        let bl = Blacklist::new(vec![ListConfig {
            prefix_v4: 24,
            ..ListConfig::new("spam")
        }]);
        let (tx, rx) = std::sync::mpsc::channel();
        bl.set_journal(&tx);
        let l = bl.list(0);
        let t0 = Instant::from_secs(1_000);
        let key = l.key(ip("198.18.7.9"));
        let tag = PEER_RULE + 3;
        assert!(l.apply_shared(key, Instant::from_secs(1_100), t0, tag));
        assert!(
            !l.apply_shared(key, Instant::from_secs(1_100), t0, tag),
            "idempotent"
        );
        assert!(
            !l.apply_shared(key, Instant::from_secs(1_050), t0, tag),
            "never shortens"
        );
        assert!(
            l.apply_shared(key, Instant::from_secs(1_200), t0, tag),
            "extends"
        );
        assert!(
            !l.apply_shared(key, Instant::from_secs(900), t0, tag),
            "already ended"
        );
        let other = Key::V4 {
            addr: u32::from(std::net::Ipv4Addr::new(198, 18, 7, 9)),
            prefix: 32,
        };
        assert!(
            !l.apply_shared(other, Instant::from_secs(1_300), t0, tag),
            "another prefix"
        );
        let b = l.get(ip("198.18.7.200"), t0).unwrap();
        assert_eq!(
            (b.expires_at, b.rule, b.offences),
            (Instant::from_secs(1_200), tag, 1)
        );
        assert_eq!(peer_index(b.rule), Some(3));
        let changes: Vec<Change> = rx.try_iter().collect();
        assert_eq!(changes.len(), 2);
        assert!(changes.iter().all(|c| !c.is_local() && c.list() == 0));
        assert!(matches!(changes[0], Change::Ban(0, _, Banned::Shared)));
        // A conviction here renews it as this host's own ban.
        assert_eq!(l.ban(ip("198.18.7.1"), t0, 4), Banned::Renewed);
        let c = rx.try_recv().unwrap();
        assert!(c.is_local());
        assert_eq!(l.get(ip("198.18.7.1"), t0).unwrap().rule, 4);
        // Removals and flushes say who asked.
        assert!(l.remove_by(ip("198.18.7.1"), By::Peer));
        assert_eq!(rx.try_recv().unwrap(), Change::Remove(0, key, By::Peer));
        assert!(l.apply_shared(key, Instant::from_secs(1_100), t0, tag));
        let _ = rx.try_recv();
        assert_eq!(l.clear_by(By::Peer), 1);
        assert!(!rx.try_recv().unwrap().is_local());
        l.remove(ip("198.18.7.1"));
        l.clear();
        assert!(rx.try_iter().all(|c| c.is_local()));
        assert_eq!(peer_index(NO_RULE), None);
        assert_eq!(peer_index(7), None);
    }

    #[test]
    fn a_peers_ban_of_a_remembered_offender_is_one_more_offence() {
        let l = List::new(ListConfig {
            ttl: Duration::from_secs(10),
            escalate: 2,
            ..ListConfig::new("t")
        });
        let t0 = Instant::from_secs(1_000);
        l.ban(ip("198.18.0.1"), t0, 0);
        let t1 = Instant::from_secs(1_020);
        assert!(l.get(ip("198.18.0.1"), t1).is_none());
        let key = l.key(ip("198.18.0.1"));
        assert!(l.apply_shared(key, Instant::from_secs(1_080), t1, PEER_RULE));
        let b = l.get(ip("198.18.0.1"), t1).unwrap();
        assert_eq!((b.offences, b.expires_at), (2, Instant::from_secs(1_080)));
    }

    #[test]
    fn a_reload_changes_ttl_refresh_and_capacity_in_place_and_refuses_a_new_prefix() {
        let l = list(60, false, 100);
        let t0 = Instant::from_secs(1_000);
        for i in 0..50u32 {
            l.ban(IpAddr::V4(std::net::Ipv4Addr::from(0xC612_0000 + i)), t0, 0);
        }
        let new = ListConfig {
            ttl: Duration::from_secs(3600),
            refresh_on_hit: true,
            capacity: 10,
            ..l.config()
        };
        let changed = l.update(&new, t0).unwrap();
        assert_eq!(changed.len(), 3, "{changed:?}");
        assert_eq!(l.config(), new);
        assert!(
            l.len() <= 10,
            "a smaller capacity evicts at once: {}",
            l.len()
        );
        // New bans get the new TTL.
        l.ban(ip("198.19.0.1"), t0, 0);
        let b = l.get(ip("198.19.0.1"), t0).unwrap();
        assert_eq!(b.expires_at, t0.saturating_add(Duration::from_secs(3600)));
        // A new prefix is refused, and nothing changes.
        let bad = ListConfig {
            prefix_v4: 24,
            ttl: Duration::from_secs(5),
            ..l.config()
        };
        let e = l.update(&bad, t0).unwrap_err();
        assert!(
            e.to_string().contains("prefix_v4 32 -> 24 needs a restart"),
            "{e}"
        );
        assert_eq!(l.config(), new);
        assert_eq!(
            l.update(&new, t0).unwrap(),
            Vec::<String>::new(),
            "no change"
        );
    }

    #[test]
    fn ban_then_expire() {
        let l = list(60, false, 100);
        let t0 = Instant::from_secs(1_000);
        assert!(!l.check(ip("198.18.0.1"), t0));
        assert_eq!(l.ban(ip("198.18.0.1"), t0, 0), Banned::New);
        assert!(l.check(ip("198.18.0.1"), t0));
        assert!(l.check(ip("198.18.0.1"), t0.saturating_add(Duration::from_secs(59))));
        let t60 = t0.saturating_add(Duration::from_secs(60));
        assert!(!l.check(ip("198.18.0.1"), t60));
        assert_eq!(
            l.len(),
            1,
            "an ended ban is left to the sweep, which reports it"
        );
        let mut ended = Vec::new();
        assert_eq!(
            l.expire_reporting(t60, |b| ended.push(b.key.to_string())),
            1
        );
        assert_eq!(ended, ["198.18.0.1"]);
        assert!(l.is_empty());
        assert_eq!(l.stats().expired.load(Relaxed), 1);
    }

    fn offenders(threshold: u8, escalate: u8) -> List {
        List::new(ListConfig {
            ttl: Duration::from_secs(60),
            refresh_on_hit: false,
            threshold,
            window: Duration::from_secs(100),
            escalate,
            max_ttl: Some(Duration::from_secs(300)),
            remember: Some(Duration::from_secs(1_000)),
            ..ListConfig::new("offenders")
        })
    }

    #[test]
    fn a_threshold_bans_at_the_nth_conviction_within_the_window() {
        let l = offenders(3, 1);
        let a = ip("198.18.0.1");
        let at = |s: u64| Instant::from_secs(1_000 + s);
        assert_eq!(l.ban(a, at(0), 0), Banned::Strike(1));
        assert_eq!(l.ban(a, at(10), 0), Banned::Strike(2));
        assert!(!l.check(a, at(11)), "strikes are not a ban");
        assert!(l.bans(at(11)).is_empty());
        assert_eq!(
            l.records(at(11)).len(),
            1,
            "but they are kept (and persisted)"
        );
        assert_eq!(l.ban(a, at(20), 0), Banned::New);
        assert!(l.check(a, at(21)));
        // Outside the window the count starts again.
        let b = ip("198.18.0.2");
        assert_eq!(l.ban(b, at(0), 0), Banned::Strike(1));
        assert_eq!(l.ban(b, at(150), 0), Banned::Strike(1));
        assert_eq!(l.ban(b, at(160), 0), Banned::Strike(2));
        // A record of strikes is swept once its window is over.
        l.expire(at(300));
        assert!(l.entry(b, at(300)).is_none());
        // By hand: at once.
        let c = ip("198.18.0.3");
        assert_eq!(
            l.ban_for(c, at(0), Duration::from_secs(5), NO_RULE),
            Banned::New
        );
        assert_eq!(l.stats().strikes.load(Relaxed), 5);
    }

    #[test]
    fn repeat_offenders_get_longer_bans_up_to_the_maximum() {
        let l = offenders(1, 2);
        let a = ip("198.18.0.1");
        let mut t = Instant::from_secs(10_000);
        let mut ttls = Vec::new();
        for _ in 0..5 {
            assert_eq!(l.ban(a, t, 0), Banned::New);
            let ban = l.get(a, t).unwrap();
            ttls.push(ban.expires_at.saturating_sub(t).secs());
            // Served: the next conviction comes after the ban ended.
            t = ban.expires_at.saturating_add(Duration::from_secs(10));
            assert!(!l.check(a, t));
            l.expire(t);
        }
        assert_eq!(ttls, [60, 120, 240, 300, 300]);
        assert_eq!(l.entry(a, t).unwrap().offences, 5);
        // Forgotten `remember` after the last ban ended: a first offence again.
        let later = t.saturating_add(Duration::from_secs(2_000));
        l.expire(later);
        assert!(l.is_empty());
        assert_eq!(l.ban(a, later, 0), Banned::New);
        assert_eq!(
            l.get(a, later)
                .unwrap()
                .expires_at
                .saturating_sub(later)
                .secs(),
            60
        );
    }

    #[test]
    fn an_offenders_record_survives_a_restore() {
        let l = offenders(2, 2);
        let a = ip("198.18.0.9");
        let t = Instant::from_secs(5_000);
        assert_eq!(l.ban(a, t, 0), Banned::Strike(1));
        let fresh = offenders(2, 2);
        for r in l.records(t) {
            assert!(fresh.restore(&r, t));
        }
        assert_eq!(
            fresh.ban(a, t.saturating_add(Duration::from_secs(1)), 0),
            Banned::New
        );
        let served = fresh
            .get(a, t.saturating_add(Duration::from_secs(1)))
            .unwrap();
        let after = served.expires_at.saturating_add(Duration::from_secs(1));
        let again = offenders(2, 2);
        for r in fresh.records(after) {
            assert!(again.restore(&r, after), "a served ban is remembered");
        }
        assert_eq!(again.ban(a, after, 0), Banned::Strike(1));
        assert_eq!(again.ban(a, after, 0), Banned::New);
        let ttl = again
            .get(a, after)
            .unwrap()
            .expires_at
            .saturating_sub(after)
            .secs();
        assert_eq!(
            ttl, 120,
            "the second offence, after two restores, is escalated"
        );
    }

    #[test]
    fn ttl_is_never_shortened_by_rounding() {
        let l = list(1, false, 100);
        let t = Instant::from_micros(10_900_000);
        l.ban(ip("198.18.0.1"), t, 0);
        assert!(l.check(ip("198.18.0.1"), Instant::from_micros(11_899_999)));
        assert!(!l.check(ip("198.18.0.1"), Instant::from_micros(12_000_000)));
    }

    #[test]
    fn refresh_on_hit_extends() {
        let l = list(60, true, 100);
        let t0 = Instant::from_secs(1_000);
        l.ban(ip("198.18.0.1"), t0, 0);
        assert!(l.check(ip("198.18.0.1"), Instant::from_secs(1_050)));
        assert!(l.check(ip("198.18.0.1"), Instant::from_secs(1_100)));
        assert!(!l.check(ip("198.18.0.1"), Instant::from_secs(1_161)));
    }

    #[test]
    fn renewal_restarts_ttl() {
        let l = list(60, false, 100);
        l.ban(ip("198.18.0.1"), Instant::from_secs(0), 0);
        assert_eq!(
            l.ban(ip("198.18.0.1"), Instant::from_secs(50), 0),
            Banned::Renewed
        );
        assert!(l.check(ip("198.18.0.1"), Instant::from_secs(100)));
        assert_eq!(l.len(), 1);
    }

    #[test]
    fn prefixes_group_addresses() {
        let l = List::new(ListConfig {
            prefix_v4: 24,
            ..ListConfig::new("p")
        });
        let now = Instant::from_secs(1);
        l.ban(ip("198.18.7.9"), now, 3);
        assert!(l.check(ip("198.18.7.200"), now));
        assert!(!l.check(ip("198.18.8.9"), now));
        let v6 = List::new(ListConfig::new("v6"));
        v6.ban(ip("2001:db8:1:2::99"), now, 0);
        assert!(v6.check(ip("2001:db8:1:2:ffff::1"), now));
        assert!(!v6.check(ip("2001:db8:1:3::99"), now));
        assert_eq!(v6.bans(now)[0].key.to_string(), "2001:db8:1:2::/64");
        assert_eq!(l.bans(now)[0].key.to_string(), "198.18.7.0/24");
        assert_eq!(l.bans(now)[0].rule, 3);
    }

    #[test]
    fn mapped_v6_is_v4() {
        let l = list(60, false, 100);
        l.ban(ip("::ffff:198.18.0.5"), Instant::from_secs(1), 0);
        assert!(l.check(ip("198.18.0.5"), Instant::from_secs(1)));
        assert_eq!(
            l.bans(Instant::from_secs(1))[0].key.to_string(),
            "198.18.0.5"
        );
    }

    #[test]
    fn capacity_evicts_least_recently_seen() {
        let l = list(3_600, false, 100);
        for i in 0..100u32 {
            l.ban(
                IpAddr::V4(Ipv4Addr::from(0xC612_0000 + i)),
                Instant::from_secs(u64::from(i)),
                0,
            );
        }
        // Touch the oldest: it is now the most recently seen.
        assert!(l.check(
            IpAddr::V4(Ipv4Addr::from(0xC612_0000)),
            Instant::from_secs(200)
        ));
        l.ban(ip("198.19.0.1"), Instant::from_secs(201), 0);
        assert_eq!(
            l.len(),
            100,
            "capacity 100 evicts a batch of max(1, 100/64) = 1"
        );
        assert!(l.check(
            IpAddr::V4(Ipv4Addr::from(0xC612_0000)),
            Instant::from_secs(202)
        ));
        assert!(!l.check(
            IpAddr::V4(Ipv4Addr::from(0xC612_0001)),
            Instant::from_secs(202)
        ));
        assert!(l.check(ip("198.19.0.1"), Instant::from_secs(202)));
        assert_eq!(l.stats().evicted.load(Relaxed), 1);
    }

    #[test]
    fn eviction_prefers_expired() {
        let l = list(10, false, 2);
        l.ban(ip("198.18.0.1"), Instant::from_secs(0), 0);
        l.ban(ip("198.18.0.2"), Instant::from_secs(5), 0);
        l.ban(ip("198.18.0.3"), Instant::from_secs(12), 0);
        assert_eq!(l.stats().expired.load(Relaxed), 1);
        assert_eq!(l.stats().evicted.load(Relaxed), 0);
        assert!(l.check(ip("198.18.0.2"), Instant::from_secs(12)));
    }

    #[test]
    fn remove_and_clear() {
        let l = list(60, false, 100);
        l.ban(ip("198.18.0.1"), Instant::from_secs(0), 0);
        l.ban(ip("2001:db8::1"), Instant::from_secs(0), 0);
        assert!(l.remove(ip("198.18.0.1")));
        assert!(!l.remove(ip("198.18.0.1")));
        assert_eq!(l.clear(), 1);
        assert!(l.is_empty());
    }

    /// A peer's bans fill free room and push out only peers' entries: a list full of this
    /// host's own convictions and bans by hand refuses them (counted), never evicting one.
    #[test]
    fn peers_bans_never_evict_this_hosts_own() {
        let l = list(3600, false, 128);
        let t = Instant::from_secs(1000);
        let v4 = |i: u32| IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + i));
        for i in 0..100 {
            l.ban(v4(i), t, 0);
        }
        let until = Instant::from_secs(5000);
        let mut applied = 0;
        for i in 1000..1400 {
            applied += usize::from(l.apply_shared(l.key(v4(i)), until, t, PEER_RULE));
        }
        assert_eq!(l.len(), 128);
        assert!((0..100).all(|i| l.check(v4(i), t)), "every local ban kept");
        assert!(applied >= 28, "{applied}");
        assert!(
            l.stats().peer_refused.load(Relaxed) == 0,
            "room was made among the peers'"
        );
        // Full of local entries: a peer's ban is refused.
        let full = list(3600, false, 10);
        for i in 0..10 {
            full.ban(v4(i), t, 0);
        }
        assert!(!full.apply_shared(full.key(v4(77)), until, t, PEER_RULE));
        assert_eq!(full.stats().peer_refused.load(Relaxed), 1);
        assert_eq!(full.len(), 10);
        // A local ban still makes room as it always did.
        full.ban(v4(99), t, 0);
        assert!(full.check(v4(99), t));
        // The peer TTL: the list's own TTL unless peer_max_ttl says otherwise.
        assert_eq!(l.peer_max_ttl(), Duration::from_secs(3600));
        let p = List::new(ListConfig {
            peer_max_ttl: Some(Duration::from_secs(60)),
            ..ListConfig::new("p")
        });
        assert_eq!(p.peer_max_ttl(), Duration::from_secs(60));
    }

    /// A peer's lift or flush that is not fleet-wide takes only what the fleet shared here:
    /// this host's own convictions and bans by hand stay.
    #[test]
    fn a_peers_lift_and_flush_take_only_what_the_fleet_shared() {
        let l = list(3600, false, 100);
        let t = Instant::from_secs(1000);
        let (own, shared, other) = (ip("198.18.0.1"), ip("198.18.0.2"), ip("198.18.0.3"));
        l.ban(own, t, 0);
        for a in [shared, other] {
            assert!(l.apply_shared(l.key(a), Instant::from_secs(5000), t, PEER_RULE));
        }
        assert!(!l.remove_shared(own), "this host's own ban stays");
        assert!(l.remove_shared(shared));
        assert!(l.check(own, t) && !l.check(shared, t));
        assert_eq!(l.clear_shared(), 1);
        assert!(l.check(own, t) && !l.check(other, t));
        assert_eq!(l.len(), 1);
        // Fleet-wide: everything goes.
        assert!(l.remove_by(own, By::Peer));
        assert!(l.is_empty());
    }
}
