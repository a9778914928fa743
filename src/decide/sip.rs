//! SipHash, keyed, taken a word at a time: the hash of the flow table and the ban maps, whose
//! keys remote hosts choose (so a keyed hash: whoever does not know the key cannot aim a flood
//! at one bucket; DESIGN.md keeps SipHash for this reason).
//!
//! std's hashers run every `write_u32`/`write_u64` through the byte-buffering path of
//! `write(&[u8])`: about 300 instructions for a 12-byte flow key, hashed for every packet.
//! Here a word written while no bytes are pending is compressed at once. The output is
//! SipHash's own, byte for byte (tested against std's `SipHasher` below): the ban maps' hash
//! is persisted with their keys, so it must not change.

use std::hash::{BuildHasher, Hasher};

/// SipHash-c-d state: `C` compression rounds per 8-byte block, `D` finalization rounds.
#[derive(Clone, Debug)]
pub struct Sip<const C: usize, const D: usize> {
    v: [u64; 4],
    /// Bytes written but not yet compressed (the low `ntail` bytes, little-endian).
    tail: u64,
    ntail: usize,
    /// Bytes written in all (SipHash's last block carries its low byte).
    len: usize,
}

/// SipHash-1-3, what std's `DefaultHasher` runs: the flow table's hash.
pub type Sip13 = Sip<1, 3>;
/// SipHash-2-4, the original and std's `SipHasher`: the ban maps' (persisted) hash.
pub type Sip24 = Sip<2, 4>;

impl<const C: usize, const D: usize> Sip<C, D> {
    pub fn new(k0: u64, k1: u64) -> Self {
        Sip {
            v: [
                k0 ^ 0x736f_6d65_7073_6575,
                k1 ^ 0x646f_7261_6e64_6f6d,
                k0 ^ 0x6c79_6765_6e65_7261,
                k1 ^ 0x7465_6462_7974_6573,
            ],
            tail: 0,
            ntail: 0,
            len: 0,
        }
    }

    #[inline(always)]
    fn round(v: &mut [u64; 4]) {
        v[0] = v[0].wrapping_add(v[1]);
        v[1] = v[1].rotate_left(13) ^ v[0];
        v[0] = v[0].rotate_left(32);
        v[2] = v[2].wrapping_add(v[3]);
        v[3] = v[3].rotate_left(16) ^ v[2];
        v[0] = v[0].wrapping_add(v[3]);
        v[3] = v[3].rotate_left(21) ^ v[0];
        v[2] = v[2].wrapping_add(v[1]);
        v[1] = v[1].rotate_left(17) ^ v[2];
        v[2] = v[2].rotate_left(32);
    }

    #[inline(always)]
    fn compress(&mut self, m: u64) {
        self.v[3] ^= m;
        for _ in 0..C {
            Self::round(&mut self.v);
        }
        self.v[0] ^= m;
    }

    /// `n` (≤ 8) bytes, given as the little-endian word `word`.
    #[inline(always)]
    fn bytes(&mut self, word: u64, n: usize) {
        self.len = self.len.wrapping_add(n);
        if self.ntail == 0 {
            if n == 8 {
                self.compress(word);
            } else {
                self.tail = word;
                self.ntail = n;
            }
            return;
        }
        let room = 8 - self.ntail;
        self.tail |= word << (8 * self.ntail);
        if n < room {
            self.ntail += n;
            return;
        }
        let block = self.tail;
        self.compress(block);
        let left = n - room;
        // The bytes of `word` beyond the block just compressed (none when it fit exactly).
        self.tail = if left == 0 { 0 } else { word >> (8 * room) };
        self.ntail = left;
    }
}

impl<const C: usize, const D: usize> Hasher for Sip<C, D> {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            self.bytes(u64::from_le_bytes(w), 8);
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut w = [0u8; 8];
            w[..rest.len()].copy_from_slice(rest);
            self.bytes(u64::from_le_bytes(w), rest.len());
        }
    }

    // std hashes integers as their native-endian bytes; read as little-endian words, as
    // SipHash reads its input.
    #[inline]
    fn write_u8(&mut self, x: u8) {
        self.bytes(u64::from(x), 1);
    }

    #[inline]
    fn write_u16(&mut self, x: u16) {
        self.bytes(u64::from(u16::from_le_bytes(x.to_ne_bytes())), 2);
    }

    #[inline]
    fn write_u32(&mut self, x: u32) {
        self.bytes(u64::from(u32::from_le_bytes(x.to_ne_bytes())), 4);
    }

    #[inline]
    fn write_u64(&mut self, x: u64) {
        self.bytes(u64::from_le_bytes(x.to_ne_bytes()), 8);
    }

    #[inline]
    fn write_u128(&mut self, x: u128) {
        let w = u128::from_le_bytes(x.to_ne_bytes());
        self.bytes(w as u64, 8);
        self.bytes((w >> 64) as u64, 8);
    }

    #[inline]
    fn write_usize(&mut self, x: usize) {
        self.write(&x.to_ne_bytes());
    }

    #[inline]
    fn finish(&self) -> u64 {
        let mut s = self.clone();
        let last = ((self.len as u64 & 0xff) << 56) | self.tail;
        s.compress(last);
        s.v[2] ^= 0xff;
        for _ in 0..D {
            Self::round(&mut s.v);
        }
        s.v[0] ^ s.v[1] ^ s.v[2] ^ s.v[3]
    }
}

/// A keyed [`Sip`] for hash maps: `Sip13Keys::random()` for what lives only in memory.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub struct SipKeys<const C: usize, const D: usize>(pub u64, pub u64);

impl<const C: usize, const D: usize> SipKeys<C, D> {
    /// Two fresh random keys (drawn from std's randomly seeded hasher).
    pub fn random() -> Self {
        let r = std::collections::hash_map::RandomState::new();
        SipKeys(r.hash_one(0x5eed_u64), r.hash_one(0xfeed_u64))
    }
}

impl<const C: usize, const D: usize> BuildHasher for SipKeys<C, D> {
    type Hasher = Sip<C, D>;

    #[inline]
    fn build_hasher(&self) -> Sip<C, D> {
        Sip::new(self.0, self.1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::hash::Hash;

    #[allow(deprecated)]
    fn std24(k0: u64, k1: u64, f: impl Fn(&mut dyn Hasher)) -> u64 {
        let mut h = std::hash::SipHasher::new_with_keys(k0, k1);
        f(&mut h);
        h.finish()
    }

    fn ours24(k0: u64, k1: u64, f: impl Fn(&mut dyn Hasher)) -> u64 {
        let mut h = Sip24::new(k0, k1);
        f(&mut h);
        h.finish()
    }

    /// The reference vector of the SipHash paper (key 00..0f, message 00..0e).
    #[test]
    fn the_papers_vector() {
        let k0 = u64::from_le_bytes([0, 1, 2, 3, 4, 5, 6, 7]);
        let k1 = u64::from_le_bytes([8, 9, 10, 11, 12, 13, 14, 15]);
        let msg: Vec<u8> = (0..15).collect();
        let mut h = Sip24::new(k0, k1);
        h.write(&msg);
        assert_eq!(h.finish(), 0xa129_ca61_49be_45e5);
    }

    /// Keyed with zeros, SipHash-1-3 is std's `DefaultHasher::new()`.
    #[test]
    fn sip13_is_std_default_hasher() {
        for n in [0usize, 3, 8, 12, 36] {
            let bytes: Vec<u8> = (0..n as u8).collect();
            let mut ours = Sip13::new(0, 0);
            let mut std = std::collections::hash_map::DefaultHasher::new();
            for h in [&mut ours as &mut dyn Hasher, &mut std] {
                h.write(&bytes);
                h.write_u32(0xdead_beef);
                h.write_u64(7);
            }
            assert_eq!(ours.finish(), std.finish(), "{n} bytes");
        }
    }

    proptest::proptest! {
        /// Whatever mix of words and bytes is written, the hash is std's SipHash-2-4 of the
        /// same bytes: the persisted ban maps hash as they did.
        #[test]
        fn equals_std_siphash(k0: u64, k1: u64, a: u32, b: u128, c: u16, d: u64,
                              bytes: Vec<u8>, e: u8) {
            let f = |h: &mut dyn Hasher| {
                h.write_u32(a);
                h.write_u128(b);
                h.write(&bytes);
                h.write_u16(c);
                h.write_u64(d);
                h.write_u8(e);
                h.write_usize(bytes.len());
            };
            proptest::prop_assert_eq!(ours24(k0, k1, f), std24(k0, k1, f));
            let g = |h: &mut dyn Hasher| {
                h.write(&bytes);
                h.write_u64(d);
            };
            proptest::prop_assert_eq!(ours24(k0, k1, g), std24(k0, k1, g));
            proptest::prop_assert_eq!(
                SipKeys::<2, 4>(k0, k1).hash_one(b),
                {
                    #[allow(deprecated)]
                    let mut h = std::hash::SipHasher::new_with_keys(k0, k1);
                    b.hash(&mut h);
                    h.finish()
                }
            );
        }
    }
}
