//! Packet parsing: bytes that start at the IP header → a small [`Packet`] summary.
//!
//! etherparse's lax slicing is kept at the edge of this file; the rest of the core only sees
//! [`Packet`]. Lax means: an IPv4 `total_len` of 0 (GSO) or larger than the buffer (a short
//! NFQUEUE copy range, a pcap snap length) falls back to the buffer length, and a truncated
//! IPv6 extension chain still yields the addresses.
//!
//! Panic contract: no input makes [`packet`] panic. Every problem is an [`Error`] value.

use std::fmt;
use std::net::IpAddr;
use std::ops::Range;

use etherparse::err::ip::{HeaderError, LaxHeaderSliceError};
use etherparse::{IpNumber, LaxIpSlice, TcpSlice, UdpSlice};

/// TCP flag bits (byte 13 of the TCP header).
pub mod tcp_flags {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const PSH: u8 = 0x08;
    pub const ACK: u8 = 0x10;
}

/// IP protocol numbers we look into.
pub mod proto {
    pub const TCP: u8 = 0x06;
    pub const UDP: u8 = 0x11;
}

/// The parsed summary of one packet. `bytes` is the whole packet from the first byte of the IP
/// header, which is what xt_string offsets count from.
#[derive(Clone, Debug, Eq, PartialEq)]
pub struct Packet<'a> {
    pub bytes: &'a [u8],
    pub src: IpAddr,
    pub dst: IpAddr,
    /// IPv4 protocol / IPv6 next header after the extension chain.
    pub proto: u8,
    pub transport: Transport,
    /// The transport payload as offsets into `bytes` (empty when there is no transport header).
    pub payload: Range<usize>,
}

impl Packet<'_> {
    pub fn payload(&self) -> &[u8] {
        &self.bytes[self.payload.clone()]
    }

    /// Source and destination ports, for TCP and UDP.
    pub fn ports(&self) -> Option<(u16, u16)> {
        match self.transport {
            Transport::Tcp(t) => Some((t.sport, t.dport)),
            Transport::Udp { sport, dport } => Some((sport, dport)),
            Transport::Fragment | Transport::Other => None,
        }
    }
}

/// What follows the IP header(s).
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub enum Transport {
    /// A non-first fragment, or a first fragment too short to hold the transport header.
    Fragment,
    /// A protocol other than TCP and UDP (ICMP, ESP, …).
    Other,
    Tcp(Tcp),
    Udp {
        sport: u16,
        dport: u16,
    },
}

/// The TCP header fields the engine uses.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub struct Tcp {
    pub sport: u16,
    pub dport: u16,
    pub seq: u32,
    pub ack: u32,
    /// Byte 13 of the header; see [`tcp_flags`].
    pub flags: u8,
}

/// Why a packet could not be parsed.
#[derive(Clone, Copy, Debug, Eq, Hash, PartialEq)]
pub enum Error {
    /// The IP version nibble is neither 4 nor 6.
    BadVersion,
    /// IPv4 IHL below 5.
    BadHeaderLen,
    /// Shorter than the IP header, or than the TCP/UDP header it announces.
    Truncated,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Error::BadVersion => "ip version is neither 4 nor 6",
            Error::BadHeaderLen => "ipv4 header length below 20 bytes",
            Error::Truncated => "packet shorter than its headers",
        })
    }
}

/// Parses a packet that starts at the IP header.
#[inline]
pub fn packet(bytes: &[u8]) -> Result<Packet<'_>, Error> {
    match plain_v4_tcp(bytes) {
        Some(p) => Ok(p),
        None => sliced(bytes),
    }
}

/// The common case, read directly: IPv4, not a fragment, `total_len` within the buffer, a
/// whole TCP header. What etherparse would make of the same bytes, exactly (tested below:
/// `the_fast_path_agrees_with_etherparse`); anything else is left to it (`None`).
#[inline]
fn plain_v4_tcp(bytes: &[u8]) -> Option<Packet<'_>> {
    let head = bytes.get(..20)?;
    let ihl = usize::from(head[0] & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([head[2], head[3]]));
    // Version 4, TCP, no MF flag and offset 0 (DF may be set).
    if head[0] >> 4 != 4 || head[9] != proto::TCP || head[6] & 0x3f != 0 || head[7] != 0 {
        return None;
    }
    if ihl < 20 || total > bytes.len() || ihl + 20 > total {
        return None;
    }
    let tcp = &bytes[ihl..total];
    let doff = usize::from(tcp[12] >> 4) * 4;
    if doff < 20 || doff > tcp.len() {
        return None;
    }
    let tcp: &[u8; 20] = tcp.first_chunk()?;
    let addrs: &[u8; 20] = head.try_into().ok()?;
    Some(Packet {
        bytes,
        src: IpAddr::from(word(addrs, 12)),
        dst: IpAddr::from(word(addrs, 16)),
        proto: proto::TCP,
        transport: Transport::Tcp(Tcp {
            sport: u16::from_be_bytes([tcp[0], tcp[1]]),
            dport: u16::from_be_bytes([tcp[2], tcp[3]]),
            seq: u32::from_be_bytes(word(tcp, 4)),
            ack: u32::from_be_bytes(word(tcp, 8)),
            flags: tcp[13],
        }),
        payload: ihl + doff..total,
    })
}

/// Four bytes of a 20-byte header at `at` (≤ 16).
#[inline(always)]
fn word(h: &[u8; 20], at: usize) -> [u8; 4] {
    [h[at], h[at + 1], h[at + 2], h[at + 3]]
}

/// Any packet, through etherparse's lax slicing.
fn sliced(bytes: &[u8]) -> Result<Packet<'_>, Error> {
    let (ip, _ext_err) = LaxIpSlice::from_slice(bytes).map_err(|e| match e {
        LaxHeaderSliceError::Len(_) => Error::Truncated,
        LaxHeaderSliceError::Content(HeaderError::UnsupportedIpVersion { .. }) => Error::BadVersion,
        LaxHeaderSliceError::Content(_) => Error::BadHeaderLen,
    })?;
    let (src, dst) = (ip.source_addr(), ip.destination_addr());
    let ip_payload = ip.payload();
    let proto = ip_payload.ip_number.0;
    let body = ip_payload.payload;
    // `body` is a sub-slice of `bytes`; its offset is the distance between the two pointers.
    let body_start = body.as_ptr() as usize - bytes.as_ptr() as usize;
    let fragment_tail = ip_payload.fragmented && !is_first_fragment(&ip);
    let (transport, payload) = if fragment_tail {
        (Transport::Fragment, body_start..body_start)
    } else {
        match ip_payload.ip_number {
            IpNumber::TCP => match TcpSlice::from_slice(body) {
                Ok(tcp) => {
                    let header = tcp.header_slice();
                    let tcp_summary = Tcp {
                        sport: tcp.source_port(),
                        dport: tcp.destination_port(),
                        seq: tcp.sequence_number(),
                        ack: tcp.acknowledgment_number(),
                        flags: header[13],
                    };
                    let start = body_start + header.len();
                    (Transport::Tcp(tcp_summary), start..body_start + body.len())
                }
                Err(_) if ip_payload.fragmented => (Transport::Fragment, body_start..body_start),
                Err(_) => return Err(Error::Truncated),
            },
            IpNumber::UDP => match UdpSlice::from_slice_lax(body) {
                Ok(udp) => {
                    let start = body_start + 8;
                    let transport = Transport::Udp {
                        sport: udp.source_port(),
                        dport: udp.destination_port(),
                    };
                    (transport, start..body_start + body.len())
                }
                Err(_) if ip_payload.fragmented => (Transport::Fragment, body_start..body_start),
                Err(_) => return Err(Error::Truncated),
            },
            _ => (Transport::Other, body_start..body_start),
        }
    };
    Ok(Packet {
        bytes,
        src,
        dst,
        proto,
        transport,
        payload,
    })
}

fn is_first_fragment(ip: &LaxIpSlice<'_>) -> bool {
    match ip {
        LaxIpSlice::Ipv4(v4) => v4.header().fragments_offset().value() == 0,
        // etherparse stops at an IPv6 fragment header; the payload after it is only a
        // transport header when the fragment offset is 0.
        LaxIpSlice::Ipv6(v6) => ipv6_first_fragment(v6.extensions()),
    }
}

fn ipv6_first_fragment(exts: &etherparse::Ipv6ExtensionsSlice<'_>) -> bool {
    for ext in exts.clone().into_iter() {
        if let etherparse::Ipv6ExtensionSlice::Fragment(frag) = ext {
            return frag.fragment_offset().value() == 0;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    /// IPv4 TCP 198.18.0.2:40000 → 198.18.0.1:25, ACK|PSH, payload "RCPT TO:<a@example.com>\r\n".
    static V4_DATA: [u8; 65] = [
        0x45, 0x00, 0x00, 0x41, 0x00, 0x01, 0x40, 0x00, 0x40, 0x06, 0x00, 0x00, 198, 18, 0, 2, 198,
        18, 0, 1, // ip
        0x9c, 0x40, 0x00, 0x19, 0x00, 0x00, 0x00, 0x64, 0x00, 0x00, 0x00, 0xc8, 0x50, 0x18, 0xff,
        0xff, 0x00, 0x00, 0x00, 0x00, // tcp
        b'R', b'C', b'P', b'T', b' ', b'T', b'O', b':', b'<', b'a', b'@', b'e', b'x', b'a', b'm',
        b'p', b'l', b'e', b'.', b'c', b'o', b'm', b'>', b'\r', b'\n',
    ];

    /// IPv6 TCP with a hop-by-hop extension header, 2001:db8::2:40000 → 2001:db8::1:25, SYN.
    static V6_HOPOPT_SYN: [u8; 68] = [
        0x60, 0x00, 0x00, 0x00, 0x00, 0x1c, 0x00, 0x40, // version, len 28, next hop-by-hop
        0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2, // src
        0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, // dst
        0x06, 0x00, 0x01, 0x04, 0x00, 0x00, 0x00, 0x00, // hop-by-hop: next tcp, PadN
        0x9c, 0x40, 0x00, 0x19, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x50, 0x02, 0xff,
        0xff, 0x00, 0x00, 0x00, 0x00,
    ];

    #[test]
    fn deconstruct_v4() {
        let p = packet(&V4_DATA).unwrap();
        assert_eq!(p.src, "198.18.0.2".parse::<IpAddr>().unwrap());
        assert_eq!(p.dst, "198.18.0.1".parse::<IpAddr>().unwrap());
        assert_eq!(p.ports(), Some((40000, 25)));
        assert_eq!(p.payload(), b"RCPT TO:<a@example.com>\r\n");
        assert_eq!(p.payload, 40..65);
        let Transport::Tcp(t) = p.transport else {
            panic!("not tcp")
        };
        assert_eq!((t.seq, t.ack), (100, 200));
        assert_eq!(t.flags, tcp_flags::ACK | tcp_flags::PSH);
    }

    #[test]
    fn deconstruct_v6_with_extension_header() {
        let p = packet(&V6_HOPOPT_SYN).unwrap();
        assert_eq!(p.proto, proto::TCP);
        assert_eq!(p.ports(), Some((40000, 25)));
        assert!(p.payload().is_empty());
        assert_eq!(p.payload.start, 68);
        let Transport::Tcp(t) = p.transport else {
            panic!("not tcp")
        };
        assert_eq!(t.flags, tcp_flags::SYN);
    }

    #[test]
    fn gso_total_len_zero_uses_buffer_length() {
        let mut gso = V4_DATA;
        gso[2] = 0;
        gso[3] = 0;
        assert_eq!(
            packet(&gso).unwrap().payload(),
            b"RCPT TO:<a@example.com>\r\n"
        );
    }

    #[test]
    fn short_copy_range_keeps_what_is_there() {
        let p = packet(&V4_DATA[..50]).unwrap();
        assert_eq!(p.payload(), b"RCPT TO:<a");
    }

    #[test]
    fn truncated() {
        assert_eq!(packet(&V4_DATA[..10]), Err(Error::Truncated));
        assert_eq!(packet(&V4_DATA[..30]), Err(Error::Truncated));
        assert_eq!(packet(&[]), Err(Error::Truncated));
    }

    #[test]
    fn impossible_header_len() {
        let mut bad = V4_DATA;
        bad[0] = 0x44;
        assert_eq!(packet(&bad), Err(Error::BadHeaderLen));
    }

    #[test]
    fn bad_version() {
        let mut bad = V4_DATA;
        bad[0] = 0x55;
        assert_eq!(packet(&bad), Err(Error::BadVersion));
    }

    #[test]
    fn non_first_fragment_has_no_ports() {
        let mut frag = V4_DATA;
        frag[6] = 0x00;
        frag[7] = 0x10; // offset 16 * 8 bytes
        let p = packet(&frag).unwrap();
        assert_eq!(p.transport, Transport::Fragment);
        assert_eq!(p.ports(), None);
    }

    proptest::proptest! {
        /// Whatever the header fields (version, lengths, flags, offsets, protocol) and
        /// however the buffer is cut, the direct IPv4 path parses as etherparse does.
        #[test]
        fn the_fast_path_agrees_with_etherparse(
            v: u8, ihl in 0u8..16, total in proptest::prop_oneof![0u16..120, proptest::prelude::any::<u16>()],
            frag: u16, proto in proptest::prop_oneof![proptest::strategy::Just(6u8), proptest::prelude::any::<u8>()],
            doff in 0u8..16, body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..120),
            four in proptest::prelude::any::<bool>(), cut in 0usize..200,
        ) {
            let mut b = V4_DATA.to_vec();
            b.extend_from_slice(&body);
            b[0] = if four { 0x40 | ihl } else { v };
            b[2..4].copy_from_slice(&total.to_be_bytes());
            b[6..8].copy_from_slice(&frag.to_be_bytes());
            b[9] = proto;
            let at = usize::from(ihl.max(5)) * 4 + 12;
            if at < b.len() {
                b[at] = (b[at] & 0x0f) | doff << 4;
            }
            b.truncate(cut.max(1));
            if let Some(fast) = plain_v4_tcp(&b) {
                proptest::prop_assert_eq!(Ok(fast), sliced(&b));
            }
            proptest::prop_assert_eq!(packet(&b), sliced(&b));
        }
    }

    #[test]
    fn the_fast_path_takes_the_common_case() {
        assert!(plain_v4_tcp(&V4_DATA).is_some());
        assert!(plain_v4_tcp(&V6_HOPOPT_SYN).is_none());
    }

    #[test]
    fn other_protocols_are_summarised() {
        let mut icmp = V4_DATA;
        icmp[9] = 0x01;
        let p = packet(&icmp).unwrap();
        assert_eq!(p.transport, Transport::Other);
        assert_eq!(p.proto, 1);
    }
}
