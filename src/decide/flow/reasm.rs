//! One side's TCP segments into its in-order byte stream, within bounds.

use super::*;

/// What [`Reasm::push`] did with a segment.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub enum Push {
    /// New in-order bytes were appended to the output (this segment's and any held ones').
    Data,
    /// Nothing new: a retransmission or an empty segment.
    Old,
    /// Ahead of a gap: held until the gap is filled.
    Held,
    /// Ahead of a gap and beyond what a flow holds: refused (drop it; TCP sends it again).
    Refused,
}

/// Segments held ahead of a gap, in sequence order.
#[derive(Clone, Debug, Default)]
pub(super) struct Held {
    segs: Vec<(u32, Box<[u8]>)>,
    bytes: usize,
}

/// One side's reassembly: the next expected sequence number and the segments held ahead of it
/// (allocated only while some are).
#[derive(Clone, Debug, Default)]
pub struct Reasm {
    next: u32,
    known: bool,
    held: Option<Box<Held>>,
}

impl Reasm {
    /// The stream starts with the byte after the SYN's sequence number.
    pub fn syn(&mut self, seq: u32) {
        self.next = seq.wrapping_add(1);
        self.known = true;
        self.held = None;
    }

    /// The next expected sequence number, once known.
    pub fn next(&self) -> Option<u32> {
        self.known.then_some(self.next)
    }

    /// Bytes held out of order.
    pub fn held_bytes(&self) -> usize {
        self.held.as_ref().map_or(0, |h| h.bytes)
    }

    /// Takes segment `seq`/`payload`, appending every byte that is now in order and new to
    /// `out`. A flow picked up mid-stream starts at its first segment.
    pub fn push(&mut self, seq: u32, payload: &[u8], out: &mut Vec<u8>) -> Push {
        self.push_within(seq, payload, out, true)
    }

    /// [`Reasm::push`], holding a segment ahead of a gap only if `may_hold` (the memory budget
    /// has room): otherwise it is refused, and TCP sends it again.
    pub fn push_within(
        &mut self,
        seq: u32,
        payload: &[u8],
        out: &mut Vec<u8>,
        may_hold: bool,
    ) -> Push {
        if payload.is_empty() {
            return Push::Old;
        }
        if !self.known {
            self.known = true;
            self.next = seq;
        }
        if before(self.next, seq) {
            if !may_hold {
                return Push::Refused;
            }
            return self.hold(seq, payload);
        }
        let skip = self.next.wrapping_sub(seq) as usize;
        if skip >= payload.len() {
            return Push::Old;
        }
        out.extend_from_slice(&payload[skip..]);
        self.next = seq.wrapping_add(payload.len() as u32);
        self.drain(out);
        Push::Data
    }

    /// The new bytes of a segment that needs no buffering — in order (or retransmitted) with
    /// nothing held — advancing the stream past them (empty: nothing new). None: use
    /// [`Reasm::push`] (a gap, or held segments to drain).
    pub fn in_order<'a>(&mut self, seq: u32, payload: &'a [u8]) -> Option<&'a [u8]> {
        if self.held.is_some() {
            return None;
        }
        if !self.known {
            self.known = true;
            self.next = seq;
        }
        if before(self.next, seq) {
            return None;
        }
        let skip = self.next.wrapping_sub(seq) as usize;
        if skip >= payload.len() {
            return Some(&[]);
        }
        self.next = seq.wrapping_add(payload.len() as u32);
        Some(&payload[skip..])
    }

    fn hold(&mut self, seq: u32, payload: &[u8]) -> Push {
        if seq.wrapping_sub(self.next) > MAX_AHEAD {
            return Push::Refused;
        }
        let held = self.held.get_or_insert_with(Box::default);
        if held
            .segs
            .iter()
            .any(|(s, p)| *s == seq && p.len() >= payload.len())
        {
            return Push::Held;
        }
        if held.segs.len() >= MAX_HELD || held.bytes + payload.len() > MAX_HELD_BYTES {
            return Push::Refused;
        }
        let at = held
            .segs
            .iter()
            .position(|(s, _)| before(seq, *s))
            .unwrap_or(held.segs.len());
        held.segs.insert(at, (seq, payload.into()));
        held.bytes += payload.len();
        Push::Held
    }

    /// Appends held segments that the stream has reached.
    fn drain(&mut self, out: &mut Vec<u8>) {
        let Some(held) = self.held.as_mut() else {
            return;
        };
        while let Some((seq, _)) = held.segs.first() {
            if before(self.next, *seq) {
                break;
            }
            let (seq, p) = held.segs.remove(0);
            held.bytes -= p.len();
            let skip = self.next.wrapping_sub(seq) as usize;
            if skip < p.len() {
                out.extend_from_slice(&p[skip..]);
                self.next = seq.wrapping_add(p.len() as u32);
            }
        }
        if held.segs.is_empty() {
            self.held = None;
        }
    }
}
