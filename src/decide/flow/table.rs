//! The bounded flow table: one slot per flow, least-recently-seen eviction, idle expiry.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

use super::*;

/// A flow, named from the client's side: client address and port, server address and port.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub struct FlowKey {
    client: [u8; 16],
    server: [u8; 16],
    cport: u16,
    sport: u16,
}

pub(super) fn octets(a: IpAddr) -> [u8; 16] {
    match a {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}

impl std::hash::Hash for FlowKey {
    /// Whole words (the table's [`crate::decide::sip`] hasher compresses each at once): 12 bytes for
    /// IPv4 (both addresses mapped), 36 for IPv6. The derived impl makes six calls, with
    /// length prefixes, and the flow table hashes a key for every packet.
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        const MAPPED: [u8; 12] = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff];
        let word = |b: &[u8]| {
            let mut w = [0u8; 8];
            w.copy_from_slice(b);
            u64::from_ne_bytes(w)
        };
        let ports = u32::from(self.cport) | u32::from(self.sport) << 16;
        if self.client[..12] == MAPPED && self.server[..12] == MAPPED {
            let mut b = [0u8; 8];
            b[..4].copy_from_slice(&self.client[12..]);
            b[4..].copy_from_slice(&self.server[12..]);
            state.write_u64(u64::from_ne_bytes(b));
            state.write_u32(ports);
            return;
        }
        for half in [&self.client, &self.server] {
            state.write_u64(word(&half[..8]));
            state.write_u64(word(&half[8..]));
        }
        state.write_u32(ports);
    }
}

impl FlowKey {
    /// A cheap, unkeyed mix of the key: the place of its flow in [`Flows`]' front cache.
    /// An attacker may aim keys at one place; that costs only the keyed lookup behind it.
    fn quick(&self) -> usize {
        let w = |b: &[u8]| {
            let mut x = [0u8; 8];
            x.copy_from_slice(b);
            u64::from_ne_bytes(x)
        };
        let ports = u64::from(self.cport) << 16 | u64::from(self.sport);
        let x = w(&self.client[8..])
            ^ w(&self.server[8..]).rotate_left(32)
            ^ (w(&self.client[..8]) ^ w(&self.server[..8])).rotate_left(7)
            ^ ports << 21;
        (x.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> (64 - FRONT_BITS)) as usize
    }

    pub fn new(client: IpAddr, cport: u16, server: IpAddr, sport: u16) -> FlowKey {
        FlowKey {
            client: octets(client),
            server: octets(server),
            cport,
            sport,
        }
    }
}

/// One memory budget for the flow state of every worker (the engines of one daemon share it):
/// each flow is charged its slot and the heap it holds (held segments, carry, a partial line).
/// A full budget evicts unproven flows first and refuses to hold more out-of-order bytes.
/// Within it, each source network (a /24, a /48: [`net_of`]) may take at most its *share* of a
/// worker's table, so one network cannot take it all.
#[derive(Debug)]
pub struct FlowBudget {
    limit: AtomicUsize,
    share: AtomicUsize,
    /// Written by every worker: on a cache line of their own, away from the two read by
    /// every packet.
    counts: Counts,
}

#[derive(Debug)]
#[repr(align(64))]
struct Counts {
    used: AtomicUsize,
    peak: AtomicUsize,
}

/// The share of one source network when none is set: a sixteenth of the budget.
pub const SHARE_DIVISOR: usize = 16;

impl FlowBudget {
    /// A budget of `limit` bytes, each network's share a sixteenth of it.
    pub fn new(limit: usize) -> FlowBudget {
        FlowBudget::with_share(limit, limit / SHARE_DIVISOR)
    }

    /// A budget of `limit` bytes, of which one source network may take `share` per worker.
    pub fn with_share(limit: usize, share: usize) -> FlowBudget {
        FlowBudget {
            limit: AtomicUsize::new(limit),
            share: AtomicUsize::new(share),
            counts: Counts {
                used: AtomicUsize::new(0),
                peak: AtomicUsize::new(0),
            },
        }
    }

    /// What one source network may hold in one worker's table, in bytes.
    pub fn share(&self) -> usize {
        self.share.load(Relaxed)
    }

    /// A new share (a reload): networks over it take nothing more until they are back within.
    pub fn set_share(&self, share: usize) {
        self.share.store(share, Relaxed);
    }

    pub fn limit(&self) -> usize {
        self.limit.load(Relaxed)
    }

    /// A new limit (a reload): flows beyond it are evicted as their workers next see packets.
    pub fn set_limit(&self, limit: usize) {
        self.limit.store(limit, Relaxed);
    }

    /// Bytes charged now, and the most ever charged at once.
    pub fn used(&self) -> usize {
        self.counts.used.load(Relaxed)
    }

    pub fn peak(&self) -> usize {
        self.counts.peak.load(Relaxed)
    }

    /// Is there room for `bytes` more?
    pub fn fits(&self, bytes: usize) -> bool {
        self.used().saturating_add(bytes) <= self.limit()
    }

    pub fn over(&self) -> bool {
        self.used() > self.limit()
    }

    fn add(&self, bytes: usize) {
        let now = self.counts.used.fetch_add(bytes, Relaxed) + bytes;
        self.counts.peak.fetch_max(now, Relaxed);
    }

    fn sub(&self, bytes: usize) {
        self.counts.used.fetch_sub(bytes, Relaxed);
    }

    /// Charges `flow` what it holds now (its slot and its heap), adjusting the shared count
    /// by the difference only (most packets change nothing: no atomic write).
    pub fn recharge(&self, flow: &mut Flow) {
        let now = u32::try_from(slot_bytes() + flow.heap_bytes()).unwrap_or(u32::MAX);
        match now.cmp(&flow.charged) {
            std::cmp::Ordering::Greater => self.add((now - flow.charged) as usize),
            std::cmp::Ordering::Less => self.sub((flow.charged - now) as usize),
            std::cmp::Ordering::Equal => return,
        }
        flow.charged = now;
    }
}

/// What one flow costs without its heap: its slot in the slab and its place in the index.
pub fn slot_bytes() -> usize {
    std::mem::size_of::<Option<Slot>>() + std::mem::size_of::<u32>() + 1
}

/// Where a flow stands.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub enum FlowState {
    /// Being inspected.
    Open,
    /// Past its envelope (or budget): the rest is let through uninspected.
    Bypassed,
    /// A rule matched but its client could not prove its address: the rest of the client's
    /// data is dropped (a forger's flow; a real client's retransmission meets the same refusal,
    /// never an unscanned pass).
    Refused(crate::verdict::Unproven),
}

/// How much of the TCP handshake the tracker has seen: the proof that the client's address is
/// its own (it received the server's SYN-ACK, so it answered from that address).
#[derive(Clone, Copy, Debug, Eq, Ord, PartialEq, PartialOrd)]
pub enum Handshake {
    /// Picked up after its start (first seen on a data segment, or its state was lost): where
    /// its bytes stand (command or body) is unknown, so it never convicts.
    MidStream,
    /// The client's SYN.
    Syn,
    /// The server's SYN-ACK, acknowledging that SYN.
    SynAck,
    /// The client acknowledged the SYN-ACK (or bytes the server sent after it).
    Done,
}

/// One tracked flow.
#[derive(Clone, Debug)]
pub struct Flow {
    pub last_seen: Instant,
    /// Flow rules (by index among the flow rules, up to 64) that already matched.
    pub matched: u64,
    /// Packets of this flow the engine looked at while it was open (queued packets per session).
    pub packets: u32,
    /// Client bytes inspected (saturating).
    pub client_bytes: u32,
    pub state: FlowState,
    pub client_fin: bool,
    pub server_fin: bool,
    pub client: Reasm,
    pub server: Reasm,
    /// Stream mode: the last bytes of the client stream, carried into the next scan.
    pub carry: Vec<u8>,
    /// Smtp mode.
    pub smtp: Option<Smtp>,
    pub handshake: Handshake,
    /// The server's initial sequence number (from its SYN-ACK) and the sequence number after
    /// the last byte it has sent: a client can acknowledge only what lies between.
    pub server_isn: u32,
    pub server_high: u32,
    /// What the flow budget has charged this flow (slot and heap), in bytes.
    pub charged: u32,
    /// What its source network may still take of its share, in KiB (set by the table each
    /// time it hands the flow out): the bound on out-of-order bytes it may hold now.
    pub net_room: u16,
    /// What its network was charged for it: `charged` when the table last saw it.
    net_charged: u32,
    /// Which recency list of the table its slot is on.
    tier: u8,
}

impl Flow {
    /// A flow first seen at `now`: on the client's SYN (`from_syn`), or mid-stream.
    pub fn new(now: Instant, smtp: Option<Smtp>, from_syn: bool) -> Flow {
        Flow {
            handshake: if from_syn {
                Handshake::Syn
            } else {
                Handshake::MidStream
            },
            server_isn: 0,
            server_high: 0,
            charged: 0,
            net_room: 0,
            net_charged: 0,
            tier: UNPROVEN,
            last_seen: now,
            matched: 0,
            packets: 0,
            client_bytes: 0,
            state: FlowState::Open,
            client_fin: false,
            server_fin: false,
            client: Reasm::default(),
            server: Reasm::default(),
            carry: Vec::new(),
            smtp,
        }
    }

    /// May its network's share take `bytes` more (out of order, to hold)?
    pub fn net_fits(&self, bytes: usize) -> bool {
        bytes <= usize::from(self.net_room) << 10
    }

    /// Heap bytes this flow holds beyond its slot: carry, held segments, a partial line.
    pub fn heap_bytes(&self) -> usize {
        self.carry.capacity()
            + self.client.held_bytes()
            + self.server.held_bytes()
            + self.smtp.as_ref().map_or(0, Smtp::line_capacity)
    }

    /// Could the server have sent what `ack` acknowledges? (After its SYN-ACK, up to the last
    /// byte it sent.)
    pub fn acks_what_the_server_sent(&self, ack: u32) -> bool {
        self.handshake >= Handshake::SynAck
            && !before(ack, self.server_isn.wrapping_add(1))
            && !before(self.server_high, ack)
    }

    /// Drops what a bypassed flow no longer needs.
    pub fn shed(&mut self) {
        self.carry = Vec::new();
        self.client = Reasm::default();
        self.server = Reasm::default();
        self.smtp = None;
    }
}

const NIL: u32 = u32::MAX;
/// Slots per page: the slab grows a page at a time, so it never holds more than one page
/// unused (a doubling `Vec` could hold as many unused slots as used ones).
const PAGE: usize = 1024;

pub(super) struct Slot {
    key: FlowKey,
    prev: u32,
    next: u32,
    /// Its source network (in [`Flows::nets`]) and its place on that network's list of the
    /// same tier (oldest first, by arrival).
    net: u32,
    nprev: u32,
    nnext: u32,
    /// The flow; its `tier` (kept there, in the flow's padding) names the slot's recency
    /// list: [`UNPROVEN`] or [`PROVEN`].
    flow: Flow,
}

/// The network `client` counts under for its share (see [`net_of`]).
pub fn network(client: IpAddr) -> [u8; 16] {
    net_of(&octets(client))
}

/// The network a client address counts under for its share: its /24 (IPv4) or /48 (IPv6).
fn net_of(client: &[u8; 16]) -> [u8; 16] {
    let mut n = *client;
    let v4 = n[..12] == [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff];
    let keep = if v4 { 15 } else { 6 };
    n[keep..].fill(0);
    n
}

/// One source network's flows in a table: what they hold, and its two lists.
struct Net {
    key: [u8; 16],
    bytes: usize,
    flows: u32,
    /// Oldest and newest flow, per tier.
    first: [u32; 2],
    last: [u32; 2],
}

/// What a network's entry costs: its slot and its place in the index.
fn net_bytes() -> usize {
    std::mem::size_of::<Option<Net>>() + std::mem::size_of::<u32>() + 1
}

/// Flows whose client has not (yet) completed a handshake the tracker saw: evicted first.
const UNPROVEN: u8 = 0;
/// Handshake-proven flows: evicted only when no unproven flow is left.
const PROVEN: u8 = 1;

/// The bounded flow table: see the module documentation. The index is a `hashbrown`
/// `HashTable` of slot numbers (4 bytes and a control byte per flow), hashed with SipHash
/// under a random key (flow keys are chosen by remote hosts); the key lives once, in the slot.
/// Two recency lists: unproven flows (a forged source can open any number) and proven ones;
/// a full table evicts the least recently seen unproven flow, so a flood of forged flows
/// never pushes out a session whose client proved its address.
pub struct Flows {
    index: hashbrown::HashTable<u32>,
    hasher: crate::decide::sip::SipKeys<1, 3>,
    pages: Vec<Box<[Option<Slot>]>>,
    used: usize,
    free: Vec<u32>,
    /// Most recently seen, per tier.
    head: [u32; 2],
    /// Least recently seen, per tier.
    tail: [u32; 2],
    max: usize,
    /// Proven flows evicted (the table held nothing else).
    proven_evicted: u64,
    budget: Arc<FlowBudget>,
    /// Source networks with flows here: a slab of entries, its free list, and its index.
    nets: Vec<Option<Net>>,
    nets_free: Vec<u32>,
    net_index: hashbrown::HashTable<u32>,
    /// A direct-mapped cache in front of the index, by [`FlowKey::quick`]: a slot number,
    /// checked against the slot's key before use (a freed or reused slot is a miss), so it
    /// needs no upkeep. Most packets are of a flow seen a few packets before.
    front: Box<[std::cell::Cell<u32>]>,
    /// Keys of flows removed lately, by [`FlowKey::quick`]: a flow's last packets (the
    /// server's ACK of a FIN, a reset's echo) come after it ended, and are known absent
    /// without the index. An insert of the key clears its entry.
    gone: Box<[Option<FlowKey>]>,
    /// The slot whose flow was handed out last ([`Flows::settle`]).
    handed: u32,
    /// The network found last, and its entry: a flow's admission, insertion, promotion and
    /// removal ask for the same one in turn.
    net_cache: std::cell::Cell<([u8; 16], u32)>,
    /// Networks within [`NEAR`] of `near_of`, the share they were counted against.
    near: usize,
    near_of: usize,
}

/// The front cache's size: 4,096 slot numbers (16 KiB).
const FRONT_BITS: u32 = 12;

/// Removed keys remembered: 1,024 (40 KiB).
const GONE: usize = 1024;

/// A network this close to its share is "near" it: a segment may not fit in what is left.
const NEAR: usize = 64 << 10;

impl Drop for Flows {
    /// Gives back to the shared budget what this table's flows were charged (a worker's engine
    /// rebuilt on reload, a replay ended).
    fn drop(&mut self) {
        let charged: usize = self
            .pages
            .iter()
            .flat_map(|p| p.iter().flatten())
            .map(|s| s.flow.charged as usize)
            .sum();
        let nets = self.nets.iter().flatten().count() * net_bytes();
        self.budget.sub(charged + nets);
    }
}

impl std::fmt::Debug for Flows {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Flows")
            .field("len", &self.index.len())
            .field("max", &self.max)
            .finish()
    }
}

impl Flows {
    /// A table of at most `max` flows, charging `budget` for each.
    pub fn new(max: usize, budget: Arc<FlowBudget>) -> Flows {
        Flows {
            budget,
            index: hashbrown::HashTable::new(),
            hasher: crate::decide::sip::SipKeys::random(),
            pages: Vec::new(),
            used: 0,
            free: Vec::new(),
            head: [NIL; 2],
            tail: [NIL; 2],
            max: max.clamp(1, NIL as usize - 1),
            proven_evicted: 0,
            nets: Vec::new(),
            nets_free: Vec::new(),
            net_index: hashbrown::HashTable::new(),
            front: (0..1 << FRONT_BITS)
                .map(|_| std::cell::Cell::new(NIL))
                .collect(),
            gone: vec![None; GONE].into_boxed_slice(),
            handed: NIL,
            net_cache: std::cell::Cell::new(([0; 16], NIL)),
            near: 0,
            near_of: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.index.len()
    }

    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    fn hash(&self, key: &FlowKey) -> u64 {
        use std::hash::BuildHasher;
        self.hasher.hash_one(key)
    }

    fn at(&self, i: u32) -> &Slot {
        self.pages[i as usize / PAGE][i as usize % PAGE]
            .as_ref()
            .expect("indexed slots are occupied")
    }

    fn slot(&mut self, i: u32) -> &mut Slot {
        self.pages[i as usize / PAGE][i as usize % PAGE]
            .as_mut()
            .expect("indexed slots are occupied")
    }

    /// The slot of `key`: from the front cache when it still holds it, else from the keyed
    /// index (and the cache then remembers it).
    fn find(&self, key: &FlowKey) -> Option<u32> {
        let place = &self.front[key.quick()];
        let i = place.get();
        if i != NIL
            && let Some(Some(s)) = self
                .pages
                .get(i as usize / PAGE)
                .and_then(|p| p.get(i as usize % PAGE))
            && s.key == *key
        {
            return Some(i);
        }
        if self.gone[key.quick() % GONE] == Some(*key) {
            return None;
        }
        let h = self.hash(key);
        let i = self.index.find(h, |&i| self.at(i).key == *key).copied()?;
        place.set(i);
        Some(i)
    }

    fn unlink(&mut self, i: u32) {
        let (prev, next, tier) = {
            let s = self.slot(i);
            (s.prev, s.next, usize::from(s.flow.tier))
        };
        if prev == NIL {
            self.head[tier] = next;
        } else {
            self.slot(prev).next = next;
        }
        if next == NIL {
            self.tail[tier] = prev;
        } else {
            self.slot(next).prev = prev;
        }
    }

    fn link_front(&mut self, i: u32) {
        let tier = usize::from(self.slot(i).flow.tier);
        let head = self.head[tier];
        {
            let s = self.slot(i);
            s.prev = NIL;
            s.next = head;
        }
        if head != NIL {
            self.slot(head).prev = i;
        } else {
            self.tail[tier] = i;
        }
        self.head[tier] = i;
    }

    /// The flow of `key`, marked most recently seen.
    pub fn get(&mut self, key: &FlowKey) -> Option<&mut Flow> {
        let i = self.find(key)?;
        let tier = usize::from(self.at(i).flow.tier);
        if self.head[tier] != i {
            self.unlink(i);
            self.link_front(i);
        }
        Some(self.hand_out(i))
    }

    /// The flow of `key`, its place in the recency order unchanged.
    pub fn peek(&mut self, key: &FlowKey) -> Option<&mut Flow> {
        let i = self.find(key)?;
        Some(self.hand_out(i))
    }

    /// Moves the flow of `key` among the proven (most recently seen there, newest of its
    /// network's).
    pub fn promote(&mut self, key: &FlowKey) -> Option<&mut Flow> {
        let i = self.find(key)?;
        if self.at(i).flow.tier != PROVEN {
            self.unlink(i);
            let n = self.net_at(i);
            self.net_unlink(i, n);
            self.slot(i).flow.tier = PROVEN;
            self.link_front(i);
            self.net_link_last(i, n);
        }
        Some(self.hand_out(i))
    }

    /// Slot `i`'s flow, after charging its network what the flow came to hold since the
    /// table last saw it, and telling it what its network may still take.
    fn hand_out(&mut self, i: u32) -> &mut Flow {
        if self.handed != i {
            self.settle();
            self.handed = i;
        }
        self.settle_slot(i);
        // No network near its share (the common case): room for any segment, known without
        // reading the network's entry.
        let room = if self.near_share() == 0 {
            u16::MAX
        } else {
            let n = self.net_at(i) as usize;
            let bytes = self.nets[n].as_ref().map_or(0, |x| x.bytes);
            u16::try_from(self.budget.share().saturating_sub(bytes) >> 10).unwrap_or(u16::MAX)
        };
        let s = self.slot(i);
        s.flow.net_room = room;
        &mut s.flow
    }

    /// Networks within [`NEAR`] bytes of their share (counted against the share now in the
    /// budget: a new one recounts).
    fn near_share(&mut self) -> usize {
        let share = self.budget.share();
        if share != self.near_of {
            self.near_of = share;
            let line = share.saturating_sub(NEAR);
            self.near = self
                .nets
                .iter()
                .flatten()
                .filter(|n| n.bytes > line)
                .count();
        }
        self.near
    }

    /// Sets network `n`'s bytes, keeping the count of networks near their share.
    fn set_net_bytes(&mut self, n: u32, bytes: usize) {
        let line = self.near_of.saturating_sub(NEAR);
        let Some(net) = self.nets[n as usize].as_mut() else {
            return;
        };
        let (was, now) = (net.bytes > line, bytes > line);
        net.bytes = bytes;
        match (was, now) {
            (false, true) => self.near += 1,
            (true, false) => self.near -= 1,
            _ => {}
        }
    }

    /// Charges the network of the flow handed out last what that flow came to hold (the
    /// engine recharges a flow while it holds it, so its network learns at the next call).
    fn settle(&mut self) {
        if self.handed != NIL {
            self.settle_slot(self.handed);
            self.handed = NIL;
        }
    }

    /// Brings slot `i`'s network up to date with its flow's charge.
    fn settle_slot(&mut self, i: u32) {
        let (charged, was) = {
            let s = self.at(i);
            (s.flow.charged, s.flow.net_charged)
        };
        if charged == was {
            return;
        }
        let n = self.net_at(i);
        self.near_share();
        let bytes = self.nets[n as usize].as_ref().map_or(0, |x| x.bytes);
        self.set_net_bytes(n, (bytes + charged as usize).saturating_sub(was as usize));
        self.slot(i).flow.net_charged = charged;
    }

    /// The network of slot `i`'s client.
    fn net_at(&self, i: u32) -> u32 {
        self.at(i).net
    }

    fn find_net(&self, net: &[u8; 16]) -> Option<u32> {
        let (key, n) = self.net_cache.get();
        if n != NIL && key == *net {
            return Some(n);
        }
        use std::hash::BuildHasher;
        let h = self.hasher.hash_one(net);
        let nets = &self.nets;
        let found = self
            .net_index
            .find(h, |&n| {
                nets[n as usize].as_ref().is_some_and(|x| x.key == *net)
            })
            .copied();
        if let Some(n) = found {
            self.net_cache.set((*net, n));
        }
        found
    }

    /// The network of `client`, added (and charged to the budget) if it has no flow here yet.
    fn net_for(&mut self, client: &[u8; 16]) -> u32 {
        let key = net_of(client);
        if let Some(n) = self.find_net(&key) {
            return n;
        }
        let net = Net {
            key,
            bytes: 0,
            flows: 0,
            first: [NIL; 2],
            last: [NIL; 2],
        };
        let n = match self.nets_free.pop() {
            Some(n) => {
                self.nets[n as usize] = Some(net);
                n
            }
            None => {
                self.nets.push(Some(net));
                (self.nets.len() - 1) as u32
            }
        };
        self.budget.add(net_bytes());
        use std::hash::BuildHasher;
        let h = self.hasher.hash_one(key);
        let Flows {
            net_index,
            nets,
            hasher,
            ..
        } = self;
        net_index.insert_unique(h, n, |&m| {
            hasher.hash_one(nets[m as usize].as_ref().map_or([0; 16], |x| x.key))
        });
        self.net_cache.set((key, n));
        n
    }

    /// Forgets network `n` (its last flow is gone).
    fn drop_net(&mut self, n: u32) {
        let Some(key) = self.nets[n as usize].as_ref().map(|x| x.key) else {
            return;
        };
        use std::hash::BuildHasher;
        let h = self.hasher.hash_one(key);
        if let Ok(entry) = self.net_index.find_entry(h, |&m| m == n) {
            entry.remove();
        }
        self.set_net_bytes(n, 0);
        if self.net_cache.get().1 == n {
            self.net_cache.set(([0; 16], NIL));
        }
        self.nets[n as usize] = None;
        self.nets_free.push(n);
        self.budget.sub(net_bytes());
    }

    fn net(&mut self, n: u32) -> &mut Net {
        self.nets[n as usize]
            .as_mut()
            .expect("a slot's network is listed")
    }

    /// Appends slot `i` to its network's list of its tier (the newest there).
    fn net_link_last(&mut self, i: u32, n: u32) {
        let tier = usize::from(self.at(i).flow.tier);
        let last = self.net(n).last[tier];
        {
            let s = self.slot(i);
            s.nprev = last;
            s.nnext = NIL;
        }
        if last == NIL {
            self.net(n).first[tier] = i;
        } else {
            self.slot(last).nnext = i;
        }
        self.net(n).last[tier] = i;
    }

    fn net_unlink(&mut self, i: u32, n: u32) {
        let (tier, prev, next) = {
            let s = self.at(i);
            (usize::from(s.flow.tier), s.nprev, s.nnext)
        };
        if prev == NIL {
            self.net(n).first[tier] = next;
        } else {
            self.slot(prev).nnext = next;
        }
        if next == NIL {
            self.net(n).last[tier] = prev;
        } else {
            self.slot(next).nprev = prev;
        }
    }

    /// May a new flow of `key`'s client network be added? A network at its share first gives
    /// up its own oldest unproven flows (handed to `evicted`): a forger who fills a victim's
    /// share with forged flows only ever pushes out forged flows and the victim's not yet
    /// proven ones, never a proven session. A network whose share is all proven flows gets no
    /// more until one ends (false).
    pub fn admit(&mut self, key: &FlowKey, mut evicted: impl FnMut(Flow)) -> bool {
        self.settle();
        let share = self.budget.share();
        let Some(n) = self.find_net(&net_of(&key.client)) else {
            return true;
        };
        loop {
            let Some(net) = self.nets[n as usize].as_ref() else {
                return true;
            };
            if net.bytes + slot_bytes() <= share {
                return true;
            }
            let oldest = net.first[usize::from(UNPROVEN)];
            if oldest == NIL {
                return false;
            }
            let key = self.at(oldest).key;
            match self.remove(&key) {
                Some(f) => evicted(f),
                None => return false,
            }
        }
    }

    /// Proven flows evicted so far (a full table with no unproven flow left to evict).
    pub fn proven_evicted(&self) -> u64 {
        self.proven_evicted
    }

    /// The budget this table charges.
    pub fn budget(&self) -> &Arc<FlowBudget> {
        &self.budget
    }

    /// Evicts flows (unproven first, least recently seen first) until the budget has room for
    /// `bytes` more, or this table is empty; hands each evicted flow to `evicted`.
    pub fn make_room(&mut self, bytes: usize, mut evicted: impl FnMut(Flow)) {
        while !self.budget.fits(bytes) {
            if self.tail[usize::from(UNPROVEN)] == NIL {
                if self.tail[usize::from(PROVEN)] == NIL {
                    return;
                }
                self.proven_evicted += 1;
            }
            match self.pop_evictable() {
                Some(f) => evicted(f),
                None => return,
            }
        }
    }

    /// Adds a flow for a key not in the table; when the table is full, first evicts and
    /// returns the least recently seen (unproven first).
    pub fn insert(&mut self, key: FlowKey, mut flow: Flow) -> Option<Flow> {
        let gone = &mut self.gone[key.quick() % GONE];
        if *gone == Some(key) {
            *gone = None;
        }
        let evicted = if self.index.len() >= self.max {
            if self.tail[usize::from(UNPROVEN)] == NIL {
                self.proven_evicted += 1;
            }
            self.pop_evictable()
        } else {
            None
        };
        let i = match self.free.pop() {
            Some(i) => i,
            None => {
                if self.used == self.pages.len() * PAGE {
                    self.pages.push(
                        (0..PAGE)
                            .map(|_| None)
                            .collect::<Vec<_>>()
                            .into_boxed_slice(),
                    );
                }
                self.used += 1;
                (self.used - 1) as u32
            }
        };
        self.budget.recharge(&mut flow);
        let tier = if flow.handshake == Handshake::Done {
            PROVEN
        } else {
            UNPROVEN
        };
        let net = self.net_for(&key.client);
        let charged = flow.charged;
        flow.net_charged = charged;
        flow.tier = tier;
        self.pages[i as usize / PAGE][i as usize % PAGE] = Some(Slot {
            key,
            prev: NIL,
            next: NIL,
            net,
            nprev: NIL,
            nnext: NIL,
            flow,
        });
        self.near_share();
        let bytes = self.net(net).bytes;
        self.net(net).flows += 1;
        self.set_net_bytes(net, bytes + charged as usize);
        self.link_front(i);
        self.net_link_last(i, net);
        let h = self.hash(&key);
        let Flows {
            index,
            pages,
            hasher,
            ..
        } = self;
        index.insert_unique(h, i, |&j| {
            use std::hash::BuildHasher;
            let k = &pages[j as usize / PAGE][j as usize % PAGE]
                .as_ref()
                .expect("indexed slots are occupied")
                .key;
            hasher.hash_one(k)
        });
        evicted
    }

    /// Removes the flow of `key`.
    pub fn remove(&mut self, key: &FlowKey) -> Option<Flow> {
        let h = self.hash(key);
        let Flows { index, pages, .. } = self;
        let entry = index
            .find_entry(h, |&i| {
                pages[i as usize / PAGE][i as usize % PAGE]
                    .as_ref()
                    .is_some_and(|s| s.key == *key)
            })
            .ok()?;
        let (i, _) = entry.remove();
        self.gone[key.quick() % GONE] = Some(*key);
        if self.handed == i {
            self.handed = NIL;
        }
        self.unlink(i);
        let n = self.net_at(i);
        self.net_unlink(i, n);
        self.free.push(i);
        let slot = self.pages[i as usize / PAGE][i as usize % PAGE].take()?;
        self.budget.sub(slot.flow.charged as usize);
        self.near_share();
        let bytes = self.net(n).bytes;
        self.set_net_bytes(n, bytes.saturating_sub(slot.flow.net_charged as usize));
        let net = self.net(n);
        net.flows -= 1;
        if net.flows == 0 {
            self.drop_net(n);
        }
        Some(slot.flow)
    }

    /// Source networks with flows in this table.
    pub fn networks(&self) -> usize {
        self.net_index.len()
    }

    /// What the flows of `client`'s network hold here, in bytes (as of their last packet).
    pub fn network_bytes(&self, client: std::net::IpAddr) -> usize {
        self.find_net(&net_of(&octets(client)))
            .and_then(|n| self.nets[n as usize].as_ref())
            .map_or(0, |n| n.bytes)
    }

    /// The least recently seen flow of either tier: the one idle longest.
    fn oldest(&self) -> u32 {
        match self
            .tail
            .map(|t| (t != NIL).then(|| self.at(t).flow.last_seen))
        {
            [Some(a), Some(b)] if b < a => self.tail[1],
            [Some(_), _] => self.tail[0],
            [None, _] => self.tail[1],
        }
    }

    /// Removes the least recently seen flow (of either tier).
    pub fn pop_oldest(&mut self) -> Option<Flow> {
        let i = self.oldest();
        if i == NIL {
            return None;
        }
        let key = self.at(i).key;
        self.remove(&key)
    }

    /// Removes the flow to evict: the least recently seen unproven one, else the least
    /// recently seen proven one.
    pub fn pop_evictable(&mut self) -> Option<Flow> {
        let i = match self.tail {
            [NIL, t] => t,
            [t, _] => t,
        };
        if i == NIL {
            return None;
        }
        let key = self.at(i).key;
        self.remove(&key)
    }

    /// When the least recently seen flow (of either tier) was last seen.
    pub fn oldest_seen(&self) -> Option<Instant> {
        let i = self.oldest();
        (i != NIL).then(|| self.at(i).flow.last_seen)
    }

    /// Bytes the table itself holds: slot pages, the index, the free list.
    pub fn table_bytes(&self) -> usize {
        self.pages.len() * PAGE * std::mem::size_of::<Option<Slot>>()
            + self.index.capacity() * (std::mem::size_of::<u32>() + 1)
            + self.free.capacity() * std::mem::size_of::<u32>()
            + self.nets.capacity() * std::mem::size_of::<Option<Net>>()
            + self.net_index.capacity() * (std::mem::size_of::<u32>() + 1)
            + self.nets_free.capacity() * std::mem::size_of::<u32>()
    }
}
