//! Packets made by hand: TCP segments over IPv4 or IPv6 with correct lengths and checksums,
//! and the Ethernet header the generator writes. Used by the capture generator
//! ([`crate::attack`]), scripted sessions ([`crate::script`]), the live benchmark's sender and
//! the daemon's crafted reset toward the local side ([`crate::sys::rst`]).

use std::net::IpAddr;

/// TCP flags.
pub const FIN: u8 = 0x01;
pub const SYN: u8 = 0x02;
pub const RST: u8 = 0x04;
pub const ACK: u8 = 0x10;
pub const PSH_ACK: u8 = 0x18;
pub const FIN_ACK: u8 = 0x11;
pub const FIN_PSH_ACK: u8 = 0x19;

/// TCP state of one side of a connection.
#[derive(Clone, Copy, Debug)]
pub struct Side {
    pub addr: IpAddr,
    pub port: u16,
    pub seq: u32,
    pub ttl: u8,
    pub ip_id: u16,
}

/// The Ethernet header before an IP packet seen at the server (`v6`: its EtherType).
pub fn ethernet_header(v6: bool, from_client: bool) -> [u8; 14] {
    let server = [0x02, 0, 0, 0, 0, 0x01];
    let router = [0x02, 0, 0, 0, 0, 0x02];
    let (dst, src) = if from_client {
        (server, router)
    } else {
        (router, server)
    };
    let mut h = [0u8; 14];
    h[..6].copy_from_slice(&dst);
    h[6..12].copy_from_slice(&src);
    h[12..].copy_from_slice(if v6 { &[0x86, 0xdd] } else { &[0x08, 0x00] });
    h
}

/// A TCP segment from `src:sport` to `dst:dport` (same address family) with correct lengths and
/// checksums: for the live benchmark's packet generator.
pub fn tcp_segment(
    src: (IpAddr, u16),
    dst: (IpAddr, u16),
    seq: u32,
    ack: u32,
    payload: &[u8],
) -> Vec<u8> {
    tcp_flags_segment(src, dst, seq, ack, PSH_ACK, payload)
}

/// A TCP segment with the given flags (ACK number sent only with the ACK flag), correct lengths
/// and checksums: for scripted sessions ([`crate::script`]).
pub fn tcp_flags_segment(
    (src, sport): (IpAddr, u16),
    (dst, dport): (IpAddr, u16),
    seq: u32,
    ack: u32,
    flags: u8,
    payload: &[u8],
) -> Vec<u8> {
    let from = Side {
        addr: src,
        port: sport,
        seq,
        ttl: 64,
        ip_id: 1,
    };
    let to = Side {
        addr: dst,
        port: dport,
        seq: ack,
        ttl: 64,
        ip_id: 1,
    };
    let ack = if flags & ACK != 0 { ack } else { 0 };
    tcp_packet(&from, &to, flags, ack, payload, &[])
}

/// A bare RST from `src:sport` to `dst:dport` with sequence number `seq` (no ACK), correct
/// lengths and checksums: the daemon's crafted reset toward the local side.
pub fn tcp_rst((src, sport): (IpAddr, u16), (dst, dport): (IpAddr, u16), seq: u32) -> Vec<u8> {
    let from = Side {
        addr: src,
        port: sport,
        seq,
        ttl: 64,
        ip_id: 0,
    };
    let to = Side {
        addr: dst,
        port: dport,
        seq: 0,
        ttl: 64,
        ip_id: 0,
    };
    tcp_packet(&from, &to, RST, 0, &[], &[])
}

/// Builds an IPv4 or IPv6 TCP packet with correct lengths and checksums.
pub fn tcp_packet(
    from: &Side,
    to: &Side,
    flags: u8,
    ack: u32,
    payload: &[u8],
    options: &[u8],
) -> Vec<u8> {
    let tcp_len = 20 + options.len() + payload.len();
    let mut tcp = Vec::with_capacity(tcp_len);
    tcp.extend(from.port.to_be_bytes());
    tcp.extend(to.port.to_be_bytes());
    tcp.extend(from.seq.to_be_bytes());
    tcp.extend(ack.to_be_bytes());
    tcp.push(((20 + options.len()) as u8 / 4) << 4);
    tcp.push(flags);
    tcp.extend(64_240u16.to_be_bytes());
    tcp.extend([0, 0, 0, 0]);
    tcp.extend(options);
    tcp.extend(payload);
    let mut sum = Checksum::default();
    let mut out = Vec::with_capacity(40 + tcp_len);
    match (from.addr, to.addr) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let total = (20 + tcp_len) as u16;
            out.extend([0x45, 0]);
            out.extend(total.to_be_bytes());
            out.extend(from.ip_id.to_be_bytes());
            out.extend([0x40, 0, from.ttl, 6, 0, 0]);
            out.extend(s.octets());
            out.extend(d.octets());
            let mut h = Checksum::default();
            h.add(&out);
            out[10..12].copy_from_slice(&h.finish().to_be_bytes());
            sum.add(&s.octets());
            sum.add(&d.octets());
            sum.add(&[0, 6]);
            sum.add(&(tcp_len as u16).to_be_bytes());
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            out.extend([0x60, 0, 0, 0]);
            out.extend((tcp_len as u16).to_be_bytes());
            out.extend([6, from.ttl]);
            out.extend(s.octets());
            out.extend(d.octets());
            sum.add(&s.octets());
            sum.add(&d.octets());
            sum.add(&(tcp_len as u32).to_be_bytes());
            sum.add(&[0, 0, 0, 6]);
        }
        _ => unreachable!("a session's two sides share an address family"),
    }
    sum.add(&tcp);
    tcp[16..18].copy_from_slice(&sum.finish().to_be_bytes());
    out.extend(tcp);
    out
}

/// The Internet checksum (RFC 1071), fed in even-length pieces except the last.
#[derive(Default)]
pub struct Checksum(u32);

impl Checksum {
    pub fn add(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(2);
        for c in &mut chunks {
            self.0 += u32::from(u16::from_be_bytes([c[0], c[1]]));
        }
        if let [last] = chunks.remainder() {
            self.0 += u32::from(*last) << 8;
        }
    }

    pub fn finish(&self) -> u16 {
        let mut s = self.0;
        while s > 0xffff {
            s = (s & 0xffff) + (s >> 16);
        }
        !(s as u16)
    }
}
