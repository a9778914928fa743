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
    /// One 36-byte write: the derived impl makes six calls (with length prefixes), and the
    /// flow table hashes a key for every packet.
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        let mut b = [0u8; 36];
        b[..16].copy_from_slice(&self.client);
        b[16..32].copy_from_slice(&self.server);
        b[32..34].copy_from_slice(&self.cport.to_ne_bytes());
        b[34..].copy_from_slice(&self.sport.to_ne_bytes());
        state.write(&b);
    }
}

impl FlowKey {
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
#[derive(Debug)]
pub struct FlowBudget {
    limit: AtomicUsize,
    used: AtomicUsize,
    peak: AtomicUsize,
}

impl FlowBudget {
    pub fn new(limit: usize) -> FlowBudget {
        FlowBudget {
            limit: AtomicUsize::new(limit),
            used: AtomicUsize::new(0),
            peak: AtomicUsize::new(0),
        }
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
        self.used.load(Relaxed)
    }

    pub fn peak(&self) -> usize {
        self.peak.load(Relaxed)
    }

    /// Is there room for `bytes` more?
    pub fn fits(&self, bytes: usize) -> bool {
        self.used().saturating_add(bytes) <= self.limit()
    }

    pub fn over(&self) -> bool {
        self.used() > self.limit()
    }

    fn add(&self, bytes: usize) {
        let now = self.used.fetch_add(bytes, Relaxed) + bytes;
        self.peak.fetch_max(now, Relaxed);
    }

    fn sub(&self, bytes: usize) {
        self.used.fetch_sub(bytes, Relaxed);
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
    /// Which recency list the slot is on: [`UNPROVEN`] or [`PROVEN`].
    tier: u8,
    flow: Flow,
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
    hasher: std::collections::hash_map::RandomState,
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
}

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
        self.budget.sub(charged);
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
            hasher: std::collections::hash_map::RandomState::new(),
            pages: Vec::new(),
            used: 0,
            free: Vec::new(),
            head: [NIL; 2],
            tail: [NIL; 2],
            max: max.clamp(1, NIL as usize - 1),
            proven_evicted: 0,
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

    fn find(&self, key: &FlowKey) -> Option<u32> {
        let h = self.hash(key);
        self.index.find(h, |&i| self.at(i).key == *key).copied()
    }

    fn unlink(&mut self, i: u32) {
        let (prev, next, tier) = {
            let s = self.slot(i);
            (s.prev, s.next, usize::from(s.tier))
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
        let tier = usize::from(self.slot(i).tier);
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
        let tier = usize::from(self.at(i).tier);
        if self.head[tier] != i {
            self.unlink(i);
            self.link_front(i);
        }
        Some(&mut self.slot(i).flow)
    }

    /// The flow of `key`, its place in the recency order unchanged.
    pub fn peek(&mut self, key: &FlowKey) -> Option<&mut Flow> {
        let i = self.find(key)?;
        Some(&mut self.slot(i).flow)
    }

    /// Moves the flow of `key` among the proven (most recently seen there).
    pub fn promote(&mut self, key: &FlowKey) -> Option<&mut Flow> {
        let i = self.find(key)?;
        if self.at(i).tier != PROVEN {
            self.unlink(i);
            self.slot(i).tier = PROVEN;
            self.link_front(i);
        }
        Some(&mut self.slot(i).flow)
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
        self.pages[i as usize / PAGE][i as usize % PAGE] = Some(Slot {
            key,
            prev: NIL,
            next: NIL,
            tier,
            flow,
        });
        self.link_front(i);
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
        self.unlink(i);
        self.free.push(i);
        let flow = self.pages[i as usize / PAGE][i as usize % PAGE]
            .take()
            .map(|s| s.flow);
        if let Some(f) = &flow {
            self.budget.sub(f.charged as usize);
        }
        flow
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
    }
}
