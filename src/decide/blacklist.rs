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
}

impl ListConfig {
    pub const DEFAULT_CAPACITY: usize = 10_000_000;

    pub fn new(name: &str) -> ListConfig {
        ListConfig {
            name: name.to_string(),
            ttl: Duration::from_secs(86_400),
            refresh_on_hit: true,
            capacity: ListConfig::DEFAULT_CAPACITY,
            prefix_v4: 32,
            prefix_v6: 64,
        }
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

/// A snapshot of one entry, for listing.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub struct Ban {
    pub key: Key,
    pub first_seen: Instant,
    pub last_seen: Instant,
    pub expires_at: Instant,
    pub hits: u32,
    pub rule: RuleId,
}

#[derive(Debug)]
struct Entry {
    first_seen: u32,
    last_seen: AtomicU32,
    expires_at: AtomicU32,
    hits: AtomicU32,
    rule: RuleId,
}

impl Entry {
    fn new(now: Instant, ttl: Duration, rule: RuleId) -> Entry {
        Entry {
            first_seen: now.secs_u32(),
            last_seen: AtomicU32::new(now.secs_u32()),
            expires_at: AtomicU32::new(expiry(now, ttl)),
            hits: AtomicU32::new(0),
            rule,
        }
    }

    fn is_expired(&self, now: Instant) -> bool {
        now.micros() >= u64::from(self.expires_at.load(Relaxed)) * 1_000_000
    }

    fn snapshot(&self, key: Key) -> Ban {
        let at = |secs: u32| Instant::from_secs(u64::from(secs));
        Ban {
            key,
            first_seen: at(self.first_seen),
            last_seen: at(self.last_seen.load(Relaxed)),
            expires_at: at(self.expires_at.load(Relaxed)),
            hits: self.hits.load(Relaxed),
            rule: self.rule,
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

/// SipHash with explicit keys (std's `RandomState` hides its keys).
#[derive(Clone, Copy, Debug)]
pub struct Keyed(HashKeys);

impl BuildHasher for Keyed {
    // SipHash-2-4, std's only keyed SipHash on stable: deprecated only in favour of crates,
    // and frozen, which is what a persisted hash needs.
    #[allow(deprecated)]
    type Hasher = std::hash::SipHasher;

    #[allow(deprecated)]
    fn build_hasher(&self) -> std::hash::SipHasher {
        std::hash::SipHasher::new_with_keys(self.0.0, self.0.1)
    }
}

/// A change to a list, for the journal.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub enum Change {
    /// A ban was made or renewed: the entry as it now is.
    Ban(ListId, Ban),
    /// An entry was removed by hand.
    Remove(ListId, Key),
    /// A list was flushed.
    Flush(ListId),
}

/// What [`List::ban`] did.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub enum Banned {
    /// A new entry (possibly after evicting others).
    New,
    /// The key was already banned; its TTL starts again.
    Renewed,
}

/// Counters of one list, shared by all workers.
#[derive(Debug, Default)]
pub struct ListStats {
    pub added: AtomicU64,
    pub renewed: AtomicU64,
    pub hits: AtomicU64,
    pub expired: AtomicU64,
    pub evicted: AtomicU64,
    pub removed: AtomicU64,
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
        if now.micros() >= ban.expires_at.micros() {
            return false;
        }
        if self.len() >= self.capacity() {
            self.make_room(now);
        }
        let entry = Entry {
            first_seen: ban.first_seen.secs_u32(),
            last_seen: AtomicU32::new(ban.last_seen.secs_u32()),
            expires_at: AtomicU32::new(ban.expires_at.secs_u32()),
            hits: AtomicU32::new(ban.hits),
            rule: ban.rule,
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

    /// The live entry of `addr`'s key, if any.
    pub fn get(&self, addr: IpAddr, now: Instant) -> Option<Ban> {
        let key = self.key(addr);
        let entry = match key {
            Key::V4 { addr, .. } => self.v4.get(&addr).map(|e| e.snapshot(key)),
            Key::V6 { addr, .. } => self.v6.get(&addr).map(|e| e.snapshot(key)),
        };
        entry.filter(|b| now.micros() < b.expires_at.micros())
    }

    /// The list's settings as they are now.
    pub fn config(&self) -> ListConfig {
        ListConfig {
            ttl: self.ttl(),
            refresh_on_hit: self.refresh_on_hit(),
            capacity: self.capacity(),
            ..self.config.clone()
        }
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
    /// An expired entry found here is removed.
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
        let expired = match map.get(&key) {
            None => return false,
            Some(entry) if entry.is_expired(now) => true,
            Some(entry) => {
                entry.hits.fetch_add(1, Relaxed);
                entry.last_seen.fetch_max(now.secs_u32(), Relaxed);
                if self.refresh_on_hit() {
                    entry.expires_at.fetch_max(expiry(now, self.ttl()), Relaxed);
                }
                self.stats.hits.fetch_add(1, Relaxed);
                false
            }
        };
        if expired {
            if map.remove_if(&key, |_, e| e.is_expired(now)).is_some() {
                self.len.fetch_sub(1, Relaxed);
                self.stats.expired.fetch_add(1, Relaxed);
            }
            return false;
        }
        true
    }

    /// Bans `addr` for the list's TTL from `now`.
    pub fn ban(&self, addr: IpAddr, now: Instant, rule: RuleId) -> Banned {
        self.ban_for(addr, now, self.ttl(), rule)
    }

    /// Bans `addr` for `ttl` from `now` (a hand-made ban may have its own TTL).
    pub fn ban_for(&self, addr: IpAddr, now: Instant, ttl: Duration, rule: RuleId) -> Banned {
        match self.key(addr) {
            Key::V4 { addr, .. } => self.ban_in(&self.v4, addr, now, ttl, rule),
            Key::V6 { addr, .. } => self.ban_in(&self.v6, addr, now, ttl, rule),
        }
    }

    fn ban_in<K: Eq + std::hash::Hash + StoredKey>(
        &self,
        map: &DashMap<K, Entry, Keyed>,
        key: K,
        now: Instant,
        ttl: Duration,
        rule: RuleId,
    ) -> Banned {
        if let Some(entry) = map.get(&key)
            && !entry.is_expired(now)
        {
            entry.expires_at.fetch_max(expiry(now, ttl), Relaxed);
            entry.last_seen.fetch_max(now.secs_u32(), Relaxed);
            self.stats.renewed.fetch_add(1, Relaxed);
            let ban = entry.snapshot(self.key_of(key));
            drop(entry);
            self.record(|id| Change::Ban(id, ban));
            return Banned::Renewed;
        }
        if self.len() >= self.capacity() {
            self.make_room(now);
        }
        let entry = Entry::new(now, ttl, rule);
        let ban = entry.snapshot(self.key_of(key));
        if map.insert(key, entry).is_none() {
            self.len.fetch_add(1, Relaxed);
        }
        self.stats.added.fetch_add(1, Relaxed);
        self.record(|id| Change::Ban(id, ban));
        Banned::New
    }

    /// Removes `addr`'s entry; true if there was one.
    pub fn remove(&self, addr: IpAddr) -> bool {
        let key = self.key(addr);
        let removed = match key {
            Key::V4 { addr, .. } => self.v4.remove(&addr).is_some(),
            Key::V6 { addr, .. } => self.v6.remove(&addr).is_some(),
        };
        if removed {
            self.len.fetch_sub(1, Relaxed);
            self.stats.removed.fetch_add(1, Relaxed);
            self.record(|id| Change::Remove(id, key));
        }
        removed
    }

    /// Removes every entry; returns how many there were.
    pub fn clear(&self) -> usize {
        let n = self.v4.len() + self.v6.len();
        self.v4.clear();
        self.v6.clear();
        self.len.store(0, Relaxed);
        self.stats.removed.fetch_add(n as u64, Relaxed);
        self.record(Change::Flush);
        n
    }

    /// Removes expired entries; returns how many.
    pub fn expire(&self, now: Instant) -> usize {
        let mut gone = 0;
        self.v4.retain(|_, e| {
            !e.is_expired(now) || {
                gone += 1;
                false
            }
        });
        self.v6.retain(|_, e| {
            !e.is_expired(now) || {
                gone += 1;
                false
            }
        });
        self.len.fetch_sub(gone, Relaxed);
        self.stats.expired.fetch_add(gone as u64, Relaxed);
        gone
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

    /// The live entries at `now`, unordered.
    pub fn bans(&self, now: Instant) -> Vec<Ban> {
        let (p4, p6) = (self.config.prefix_v4, self.config.prefix_v6);
        let mut out = Vec::with_capacity(self.len());
        for e in self.v4.iter().filter(|e| !e.is_expired(now)) {
            out.push(e.value().snapshot(Key::V4 {
                addr: *e.key(),
                prefix: p4,
            }));
        }
        for e in self.v6.iter().filter(|e| !e.is_expired(now)) {
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

fn mask32(addr: u32, prefix: u8) -> u32 {
    match prefix {
        0 => 0,
        p => addr & (u32::MAX << (32 - u32::from(p.min(32)))),
    }
}

fn mask128(addr: u128, prefix: u8) -> u128 {
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
        assert!(!l.check(ip("198.18.0.1"), t0.saturating_add(Duration::from_secs(60))));
        assert!(
            l.is_empty(),
            "an expired entry found by a lookup is removed"
        );
        assert_eq!(l.stats().expired.load(Relaxed), 1);
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
}
