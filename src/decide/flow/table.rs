//! The bounded flow table: one slot per flow, least-recently-seen eviction, idle expiry.

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

/// Where a flow stands.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub enum FlowState {
    /// Being inspected.
    Open,
    /// Past its envelope (or budget): the rest is let through uninspected.
    Bypassed,
    /// A rule matched.
    Convicted,
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
}

impl Flow {
    pub fn new(now: Instant, smtp: Option<Smtp>) -> Flow {
        Flow {
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
    flow: Flow,
}

/// The bounded flow table: see the module documentation. The index is a `hashbrown`
/// `HashTable` of slot numbers (4 bytes and a control byte per flow), hashed with SipHash
/// under a random key (flow keys are chosen by remote hosts); the key lives once, in the slot.
pub struct Flows {
    index: hashbrown::HashTable<u32>,
    hasher: std::collections::hash_map::RandomState,
    pages: Vec<Box<[Option<Slot>]>>,
    used: usize,
    free: Vec<u32>,
    /// Most recently seen.
    head: u32,
    /// Least recently seen.
    tail: u32,
    max: usize,
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
    pub fn new(max: usize) -> Flows {
        Flows {
            index: hashbrown::HashTable::new(),
            hasher: std::collections::hash_map::RandomState::new(),
            pages: Vec::new(),
            used: 0,
            free: Vec::new(),
            head: NIL,
            tail: NIL,
            max: max.clamp(1, NIL as usize - 1),
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
        let (prev, next) = {
            let s = self.slot(i);
            (s.prev, s.next)
        };
        if prev == NIL {
            self.head = next;
        } else {
            self.slot(prev).next = next;
        }
        if next == NIL {
            self.tail = prev;
        } else {
            self.slot(next).prev = prev;
        }
    }

    fn link_front(&mut self, i: u32) {
        let head = self.head;
        {
            let s = self.slot(i);
            s.prev = NIL;
            s.next = head;
        }
        if head != NIL {
            self.slot(head).prev = i;
        } else {
            self.tail = i;
        }
        self.head = i;
    }

    /// The flow of `key`, marked most recently seen.
    pub fn get(&mut self, key: &FlowKey) -> Option<&mut Flow> {
        let i = self.find(key)?;
        if self.head != i {
            self.unlink(i);
            self.link_front(i);
        }
        Some(&mut self.slot(i).flow)
    }

    /// Adds a flow for a key not in the table; when the table is full, first evicts and
    /// returns the least recently seen.
    pub fn insert(&mut self, key: FlowKey, flow: Flow) -> Option<Flow> {
        let evicted = if self.index.len() >= self.max {
            self.pop_oldest()
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
        self.pages[i as usize / PAGE][i as usize % PAGE] = Some(Slot {
            key,
            prev: NIL,
            next: NIL,
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
        self.pages[i as usize / PAGE][i as usize % PAGE]
            .take()
            .map(|s| s.flow)
    }

    /// Removes the least recently seen flow.
    pub fn pop_oldest(&mut self) -> Option<Flow> {
        if self.tail == NIL {
            return None;
        }
        let key = self.at(self.tail).key;
        self.remove(&key)
    }

    /// When the least recently seen flow was last seen.
    pub fn oldest_seen(&self) -> Option<Instant> {
        (self.tail != NIL).then(|| self.at(self.tail).flow.last_seen)
    }

    /// Bytes the table itself holds: slot pages, the index, the free list.
    pub fn table_bytes(&self) -> usize {
        self.pages.len() * PAGE * std::mem::size_of::<Option<Slot>>()
            + self.index.capacity() * (std::mem::size_of::<u32>() + 1)
            + self.free.capacity() * std::mem::size_of::<u32>()
    }
}
