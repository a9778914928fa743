//! pcap and pcapng files: a streaming reader, the link-layer headers we strip, and a writer.
//!
//! Written here from the file format specifications (libpcap's savefile format, the pcapng
//! draft) rather than with `pcap-file` 2.0, which ignores pcapng's `if_tsresol` (timestamps off by
//! 1000× for the default microsecond resolution), refuses records longer than the snap length,
//! and reports a cut-off capture as a bare end-of-file. Here a truncated capture keeps everything
//! before the cut and says where it was; a corrupt one is an error value, never a panic.

use std::fmt;
use std::io::{self, BufRead, ErrorKind, Read, Write};

use crate::time::Instant;

/// Link types we can strip to the IP header.
pub mod linktype {
    pub const NULL: u32 = 0;
    pub const ETHERNET: u32 = 1;
    pub const RAW_OPENBSD: u32 = 12;
    pub const RAW: u32 = 101;
    pub const LOOP: u32 = 108;
    pub const LINUX_SLL: u32 = 113;
    pub const IPV4: u32 = 228;
    pub const IPV6: u32 = 229;
    pub const LINUX_SLL2: u32 = 276;

    pub fn is_supported(link: u32) -> bool {
        matches!(
            link,
            NULL | ETHERNET | RAW_OPENBSD | RAW | LOOP | LINUX_SLL | IPV4 | IPV6 | LINUX_SLL2
        )
    }
}

/// Why a frame has no IP packet for the engine.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub enum Skip {
    /// ARP, LLDP, … — not IP.
    NotIp,
    /// Shorter than its link header.
    Short,
    /// A link type we do not read.
    UnsupportedLink(u32),
}

/// Strips the link-layer header of `frame`, returning the bytes from the IP header on.
pub fn ip_packet(link: u32, frame: &[u8]) -> Result<&[u8], Skip> {
    use linktype::*;
    fn ether(ethertype: u16, rest: &[u8]) -> Result<&[u8], Skip> {
        match ethertype {
            0x0800 | 0x86dd => Ok(rest),
            _ => Err(Skip::NotIp),
        }
    }
    let be16 = |b: &[u8], at: usize| -> Option<u16> {
        Some(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]))
    };
    match link {
        ETHERNET => {
            let mut at = 12;
            let mut ethertype = be16(frame, at).ok_or(Skip::Short)?;
            while matches!(ethertype, 0x8100 | 0x88a8 | 0x9100) {
                at += 4;
                ethertype = be16(frame, at).ok_or(Skip::Short)?;
            }
            ether(ethertype, &frame[at + 2..])
        }
        LINUX_SLL => ether(
            be16(frame, 14).ok_or(Skip::Short)?,
            frame.get(16..).ok_or(Skip::Short)?,
        ),
        LINUX_SLL2 => ether(
            be16(frame, 0).ok_or(Skip::Short)?,
            frame.get(20..).ok_or(Skip::Short)?,
        ),
        RAW | RAW_OPENBSD | IPV4 | IPV6 => Ok(frame),
        NULL | LOOP => {
            let head: [u8; 4] = frame
                .get(..4)
                .ok_or(Skip::Short)?
                .try_into()
                .map_err(|_| Skip::Short)?;
            // NULL is in the capturing host's byte order, LOOP in network order.
            let family = if link == LOOP {
                u32::from_be_bytes(head)
            } else {
                let le = u32::from_le_bytes(head);
                if le < 0x1_0000 {
                    le
                } else {
                    u32::from_be_bytes(head)
                }
            };
            match family {
                2 | 24 | 28 | 30 => Ok(&frame[4..]),
                _ => Err(Skip::NotIp),
            }
        }
        other => Err(Skip::UnsupportedLink(other)),
    }
}

/// A capture that cannot be read (further).
#[derive(Debug)]
pub enum PcapError {
    Io(io::Error),
    /// The first bytes are neither a pcap nor a pcapng header.
    NotACapture {
        magic: u32,
    },
    /// The file ends inside a record: everything before it was read.
    Truncated {
        offset: u64,
    },
    /// A record or block header makes no sense.
    Corrupt {
        offset: u64,
        what: &'static str,
    },
}

impl fmt::Display for PcapError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PcapError::Io(e) => write!(f, "{e}"),
            PcapError::NotACapture { magic } => {
                write!(f, "not a pcap or pcapng file (first bytes {magic:#010x})")
            }
            PcapError::Truncated { offset } => write!(
                f,
                "capture is truncated: it ends inside a record at byte {offset}"
            ),
            PcapError::Corrupt { offset, what } => {
                write!(f, "corrupt capture at byte {offset}: {what}")
            }
        }
    }
}

impl std::error::Error for PcapError {}

impl From<io::Error> for PcapError {
    fn from(e: io::Error) -> PcapError {
        PcapError::Io(e)
    }
}

/// One captured frame.
#[derive(Clone, Copy, Debug)]
pub struct Record<'a> {
    pub ts: Instant,
    pub link: u32,
    pub data: &'a [u8],
}

/// A pcapng interface: its link type and timestamp unit.
#[derive(Clone, Copy, Debug)]
struct Interface {
    link: u32,
    /// Timestamp resolution: `(is_power_of_two, exponent)`; (false, 6) is microseconds.
    resol: (bool, u8),
    offset_secs: i64,
}

enum Format {
    Pcap {
        big_endian: bool,
        nanos: bool,
        link: u32,
    },
    PcapNg {
        big_endian: bool,
        interfaces: Vec<Interface>,
    },
}

/// Records larger than this are corrupt (a pcapng block may hold a 256 KiB frame plus options).
const MAX_RECORD: usize = 16 << 20;

/// Reads records one at a time from a pcap or pcapng stream.
pub struct Reader<R: BufRead> {
    input: R,
    format: Format,
    buf: Vec<u8>,
    offset: u64,
}

impl<R: BufRead> Reader<R> {
    /// Reads the file header.
    pub fn new(mut input: R) -> Result<Reader<R>, PcapError> {
        let mut head = [0u8; 4];
        match input.read_exact(&mut head) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::UnexpectedEof => {
                return Err(PcapError::NotACapture { magic: 0 });
            }
            Err(e) => return Err(e.into()),
        }
        let magic = u32::from_le_bytes(head);
        let mut reader = Reader {
            input,
            format: Format::PcapNg {
                big_endian: false,
                interfaces: Vec::new(),
            },
            buf: Vec::new(),
            offset: 4,
        };
        match magic {
            0xa1b2_c3d4 | 0xa1b2_3c4d | 0xd4c3_b2a1 | 0x4d3c_b2a1 => {
                let big_endian = matches!(magic, 0xd4c3_b2a1 | 0x4d3c_b2a1);
                let nanos = matches!(magic, 0xa1b2_3c4d | 0x4d3c_b2a1);
                let mut rest = [0u8; 20];
                reader.read_exact(&mut rest)?;
                let link = u32_at(&rest, 16, big_endian) & 0x0fff_ffff;
                reader.format = Format::Pcap {
                    big_endian,
                    nanos,
                    link,
                };
            }
            0x0a0d_0d0a => {
                reader.read_block_body(0x0a0d_0d0a)?;
            }
            _ => {
                return Err(PcapError::NotACapture {
                    magic: u32::from_be_bytes(head),
                });
            }
        }
        Ok(reader)
    }

    /// The link type of a classic pcap file (pcapng files have one per interface).
    pub fn pcap_link(&self) -> Option<u32> {
        match self.format {
            Format::Pcap { link, .. } => Some(link),
            Format::PcapNg { .. } => None,
        }
    }

    /// Bytes consumed so far.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// The next frame, `Ok(None)` at a clean end of file.
    pub fn next_record(&mut self) -> Result<Option<Record<'_>>, PcapError> {
        match self.format {
            Format::Pcap {
                big_endian,
                nanos,
                link,
            } => {
                let mut head = [0u8; 16];
                if !self.read_or_eof(&mut head)? {
                    return Ok(None);
                }
                let secs = u64::from(u32_at(&head, 0, big_endian));
                let frac = u64::from(u32_at(&head, 4, big_endian));
                let caplen = u32_at(&head, 8, big_endian) as usize;
                if caplen > MAX_RECORD {
                    return Err(PcapError::Corrupt {
                        offset: self.offset - 16,
                        what: "record length above 16 MiB",
                    });
                }
                self.buf.resize(caplen, 0);
                let mut buf = std::mem::take(&mut self.buf);
                let read = self.read_exact(&mut buf);
                self.buf = buf;
                read?;
                let micros = secs * 1_000_000 + if nanos { frac / 1_000 } else { frac };
                Ok(Some(Record {
                    ts: Instant::from_micros(micros),
                    link,
                    data: &self.buf,
                }))
            }
            Format::PcapNg { .. } => loop {
                let mut head = [0u8; 4];
                if !self.read_or_eof(&mut head)? {
                    return Ok(None);
                }
                let big_endian = matches!(
                    self.format,
                    Format::PcapNg {
                        big_endian: true,
                        ..
                    }
                );
                let block_type = u32_at(&head, 0, big_endian);
                if block_type == 0x0a0d_0d0a {
                    self.read_block_body(block_type)?;
                    continue;
                }
                if let Some((ts, link, range)) = self.read_block_body(block_type)? {
                    return Ok(Some(Record {
                        ts,
                        link,
                        data: &self.buf[range],
                    }));
                }
            },
        }
    }

    /// Reads the rest of a pcapng block whose type was just read. Returns a packet's timestamp,
    /// link type and data range in `self.buf` for packet blocks.
    fn read_block_body(
        &mut self,
        block_type: u32,
    ) -> Result<Option<(Instant, u32, std::ops::Range<usize>)>, PcapError> {
        let start = self.offset - 4;
        let mut len_bytes = [0u8; 4];
        self.read_exact(&mut len_bytes)?;
        if block_type == 0x0a0d_0d0a {
            let mut bom = [0u8; 4];
            self.read_exact(&mut bom)?;
            let big_endian = match u32::from_le_bytes(bom) {
                0x1a2b_3c4d => false,
                0x4d3c_2b1a => true,
                _ => {
                    return Err(PcapError::Corrupt {
                        offset: start,
                        what: "section header byte-order magic",
                    });
                }
            };
            self.format = Format::PcapNg {
                big_endian,
                interfaces: Vec::new(),
            };
            let total = u32_at(&len_bytes, 0, big_endian) as usize;
            if total < 28 || !total.is_multiple_of(4) || total > MAX_RECORD {
                return Err(PcapError::Corrupt {
                    offset: start,
                    what: "section header length",
                });
            }
            self.skip(total - 12)?;
            return Ok(None);
        }
        let Format::PcapNg { big_endian, .. } = self.format else {
            return Err(PcapError::Corrupt {
                offset: start,
                what: "pcapng block in a pcap file",
            });
        };
        let total = u32_at(&len_bytes, 0, big_endian) as usize;
        if total < 12 || !total.is_multiple_of(4) || total > MAX_RECORD {
            return Err(PcapError::Corrupt {
                offset: start,
                what: "block length",
            });
        }
        let mut body = std::mem::take(&mut self.buf);
        body.resize(total - 8, 0);
        let read = self.read_exact(&mut body);
        self.buf = body;
        read?;
        let body = &self.buf[..total - 12];
        let Format::PcapNg { interfaces, .. } = &mut self.format else {
            unreachable!("checked above")
        };
        let corrupt = |what| PcapError::Corrupt {
            offset: start,
            what,
        };
        match block_type {
            1 => {
                if body.len() < 8 {
                    return Err(corrupt("interface description block too short"));
                }
                let link = u32::from(u16_at(body, 0, big_endian));
                let mut iface = Interface {
                    link,
                    resol: (false, 6),
                    offset_secs: 0,
                };
                let mut opts = &body[8..];
                while opts.len() >= 4 {
                    let code = u16_at(opts, 0, big_endian);
                    let len = usize::from(u16_at(opts, 2, big_endian));
                    let value = opts
                        .get(4..4 + len)
                        .ok_or_else(|| corrupt("interface option length"))?;
                    match (code, value) {
                        (0, _) => break,
                        (9, [r]) => iface.resol = (r & 0x80 != 0, r & 0x7f),
                        (14, v) if v.len() == 8 => {
                            let raw: [u8; 8] = v.try_into().map_err(|_| corrupt("if_tsoffset"))?;
                            iface.offset_secs = if big_endian {
                                i64::from_be_bytes(raw)
                            } else {
                                i64::from_le_bytes(raw)
                            };
                        }
                        _ => {}
                    }
                    opts = opts.get(4 + len.div_ceil(4) * 4..).unwrap_or(&[]);
                }
                interfaces.push(iface);
                Ok(None)
            }
            6 => {
                if body.len() < 20 {
                    return Err(corrupt("enhanced packet block too short"));
                }
                let iface_id = u32_at(body, 0, big_endian) as usize;
                let iface = *interfaces
                    .get(iface_id)
                    .ok_or_else(|| corrupt("packet names an undeclared interface"))?;
                let ticks = u64::from(u32_at(body, 4, big_endian)) << 32
                    | u64::from(u32_at(body, 8, big_endian));
                let caplen = u32_at(body, 12, big_endian) as usize;
                if 20 + caplen > body.len() {
                    return Err(corrupt("captured length beyond the block"));
                }
                Ok(Some((timestamp(ticks, iface), iface.link, 20..20 + caplen)))
            }
            3 => {
                let iface = *interfaces
                    .first()
                    .ok_or_else(|| corrupt("simple packet block before any interface"))?;
                let orig = u32_at(body, 0, big_endian) as usize;
                let caplen = orig.min(body.len().saturating_sub(4));
                Ok(Some((Instant::ZERO, iface.link, 4..4 + caplen)))
            }
            _ => Ok(None),
        }
    }

    fn skip(&mut self, n: usize) -> Result<(), PcapError> {
        let copied = io::copy(&mut (&mut self.input).take(n as u64), &mut io::sink())?;
        self.offset += copied;
        if copied < n as u64 {
            return Err(PcapError::Truncated {
                offset: self.offset,
            });
        }
        Ok(())
    }

    fn read_exact(&mut self, buf: &mut [u8]) -> Result<(), PcapError> {
        if self.read_or_eof(buf)? {
            Ok(())
        } else {
            Err(PcapError::Truncated {
                offset: self.offset,
            })
        }
    }

    /// Fills `buf`; false on a clean end of file before the first byte.
    fn read_or_eof(&mut self, buf: &mut [u8]) -> Result<bool, PcapError> {
        let mut filled = 0;
        while filled < buf.len() {
            match self.input.read(&mut buf[filled..]) {
                Ok(0) if filled == 0 => return Ok(false),
                Ok(0) => {
                    self.offset += filled as u64;
                    return Err(PcapError::Truncated {
                        offset: self.offset,
                    });
                }
                Ok(n) => filled += n,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
        self.offset += filled as u64;
        Ok(true)
    }
}

fn timestamp(ticks: u64, iface: Interface) -> Instant {
    let (pow2, exp) = iface.resol;
    let micros: u128 = if pow2 {
        (u128::from(ticks) * 1_000_000) >> exp.min(127)
    } else if exp >= 6 {
        u128::from(ticks) / 10u128.pow(u32::from(exp - 6).min(30))
    } else {
        u128::from(ticks) * 10u128.pow(u32::from(6 - exp))
    };
    let offset = iface.offset_secs.saturating_mul(1_000_000);
    let micros = i128::try_from(micros)
        .unwrap_or(i128::MAX)
        .saturating_add(i128::from(offset));
    Instant::from_micros(u64::try_from(micros.max(0)).unwrap_or(u64::MAX))
}

fn u32_at(b: &[u8], at: usize, big_endian: bool) -> u32 {
    let raw = [b[at], b[at + 1], b[at + 2], b[at + 3]];
    if big_endian {
        u32::from_be_bytes(raw)
    } else {
        u32::from_le_bytes(raw)
    }
}

fn u16_at(b: &[u8], at: usize, big_endian: bool) -> u16 {
    let raw = [b[at], b[at + 1]];
    if big_endian {
        u16::from_be_bytes(raw)
    } else {
        u16::from_le_bytes(raw)
    }
}

/// Writes a classic little-endian microsecond pcap file.
pub struct Writer<W: Write> {
    out: W,
}

impl<W: Write> Writer<W> {
    pub fn new(mut out: W, link: u32) -> io::Result<Writer<W>> {
        out.write_all(&0xa1b2_c3d4u32.to_le_bytes())?;
        out.write_all(&2u16.to_le_bytes())?;
        out.write_all(&4u16.to_le_bytes())?;
        out.write_all(&[0; 8])?;
        out.write_all(&262_144u32.to_le_bytes())?;
        out.write_all(&link.to_le_bytes())?;
        Ok(Writer { out })
    }

    /// Writes one frame given in parts (link header, IP packet), to avoid a copy.
    pub fn write(&mut self, ts: Instant, parts: &[&[u8]]) -> io::Result<()> {
        let len: usize = parts.iter().map(|p| p.len()).sum();
        let len = u32::try_from(len)
            .map_err(|_| io::Error::new(ErrorKind::InvalidInput, "frame above 4 GiB"))?;
        let secs = u32::try_from(ts.micros() / 1_000_000)
            .map_err(|_| io::Error::new(ErrorKind::InvalidInput, "timestamp after 2106"))?;
        self.out.write_all(&secs.to_le_bytes())?;
        self.out
            .write_all(&((ts.micros() % 1_000_000) as u32).to_le_bytes())?;
        self.out.write_all(&len.to_le_bytes())?;
        self.out.write_all(&len.to_le_bytes())?;
        for p in parts {
            self.out.write_all(p)?;
        }
        Ok(())
    }

    pub fn into_inner(self) -> W {
        self.out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const IP: &[u8] = &[
        0x45, 0, 0, 20, 0, 0, 0, 0, 64, 6, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8,
    ];

    type Records = Vec<(u64, u32, Vec<u8>)>;

    fn read_all(bytes: &[u8]) -> (Records, Option<PcapError>) {
        let mut r = Reader::new(bytes).unwrap();
        let mut out = Vec::new();
        loop {
            match r.next_record() {
                Ok(Some(rec)) => out.push((rec.ts.micros(), rec.link, rec.data.to_vec())),
                Ok(None) => return (out, None),
                Err(e) => return (out, Some(e)),
            }
        }
    }

    #[test]
    fn pcap_round_trip_and_truncation() {
        let mut w = Writer::new(Vec::new(), linktype::RAW).unwrap();
        w.write(Instant::from_micros(1_700_000_000_123_456), &[IP])
            .unwrap();
        w.write(
            Instant::from_micros(1_700_000_001_000_000),
            &[&IP[..10], &IP[10..]],
        )
        .unwrap();
        let bytes = w.into_inner();
        let (recs, err) = read_all(&bytes);
        assert!(err.is_none());
        assert_eq!(recs.len(), 2);
        assert_eq!(recs[0], (1_700_000_000_123_456, linktype::RAW, IP.to_vec()));
        let (recs, err) = read_all(&bytes[..bytes.len() - 3]);
        assert_eq!(recs.len(), 1);
        assert!(matches!(err, Some(PcapError::Truncated { .. })), "{err:?}");
    }

    #[test]
    fn not_a_capture() {
        assert!(matches!(
            Reader::new(&b"hello world, this is text"[..]),
            Err(PcapError::NotACapture { .. })
        ));
        assert!(matches!(
            Reader::new(&b""[..]),
            Err(PcapError::NotACapture { magic: 0 })
        ));
    }

    #[test]
    fn big_endian_nanosecond_pcap() {
        let mut f = Vec::new();
        f.extend(0xa1b2_3c4du32.to_be_bytes());
        f.extend([
            0, 2, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0, 0, 0, 101,
        ]);
        f.extend(10u32.to_be_bytes());
        f.extend(5_000u32.to_be_bytes());
        f.extend(20u32.to_be_bytes());
        f.extend(20u32.to_be_bytes());
        f.extend(IP);
        let (recs, err) = read_all(&f);
        assert!(err.is_none());
        assert_eq!(recs[0].0, 10_000_005);
    }

    fn block(kind: u32, body: &[u8]) -> Vec<u8> {
        let len = (12 + body.len().div_ceil(4) * 4) as u32;
        let mut b = kind.to_le_bytes().to_vec();
        b.extend(len.to_le_bytes());
        b.extend(body);
        b.resize(len as usize - 4, 0);
        b.extend(len.to_le_bytes());
        b
    }

    #[test]
    fn pcapng_with_resolutions() {
        let mut f = block(
            0x0a0d_0d0a,
            &[
                0x4d, 0x3c, 0x2b, 0x1a, 1, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
            ],
        );
        // Interface 0: raw IP, default microseconds. Interface 1: Ethernet, nanoseconds.
        f.extend(block(1, &[101, 0, 0, 0, 0, 0, 4, 0]));
        f.extend(block(
            1,
            &[1, 0, 0, 0, 0, 0, 4, 0, 9, 0, 1, 0, 9, 0, 0, 0, 0, 0, 0, 0],
        ));
        let epb = |iface: u32, ticks: u64, data: &[u8]| {
            let mut b = iface.to_le_bytes().to_vec();
            b.extend(((ticks >> 32) as u32).to_le_bytes());
            b.extend((ticks as u32).to_le_bytes());
            b.extend((data.len() as u32).to_le_bytes());
            b.extend((data.len() as u32).to_le_bytes());
            b.extend(data);
            block(6, &b)
        };
        f.extend(epb(0, 1_700_000_000_000_001, IP));
        f.extend(block(5, &[0; 8])); // interface statistics: skipped
        let mut eth = vec![0u8; 12];
        eth.extend([0x08, 0x00]);
        eth.extend(IP);
        f.extend(epb(1, 1_700_000_000_000_001_000, &eth));
        let (recs, err) = read_all(&f);
        assert!(err.is_none(), "{err:?}");
        assert_eq!(recs.len(), 2);
        assert_eq!(recs[0].0, 1_700_000_000_000_001);
        assert_eq!(recs[1].0, 1_700_000_000_000_001);
        assert_eq!(ip_packet(recs[1].1, &recs[1].2), Ok(IP));
        let (recs, err) = read_all(&f[..f.len() - 5]);
        assert_eq!(recs.len(), 1);
        assert!(matches!(err, Some(PcapError::Truncated { .. })));
    }

    #[test]
    fn link_headers() {
        use linktype::*;
        let mut eth_vlan = vec![0u8; 12];
        eth_vlan.extend([0x81, 0x00, 0, 5, 0x08, 0x00]);
        eth_vlan.extend(IP);
        assert_eq!(ip_packet(ETHERNET, &eth_vlan), Ok(IP));
        let mut arp = vec![0u8; 12];
        arp.extend([0x08, 0x06, 0, 0]);
        assert_eq!(ip_packet(ETHERNET, &arp), Err(Skip::NotIp));
        let mut sll = vec![0u8; 14];
        sll.extend([0x86, 0xdd]);
        sll.extend(IP);
        assert_eq!(ip_packet(LINUX_SLL, &sll), Ok(IP));
        let mut sll2 = vec![0x08, 0x00];
        sll2.extend([0u8; 18]);
        sll2.extend(IP);
        assert_eq!(ip_packet(LINUX_SLL2, &sll2), Ok(IP));
        let mut null_le = 2u32.to_le_bytes().to_vec();
        null_le.extend(IP);
        assert_eq!(ip_packet(NULL, &null_le), Ok(IP));
        let mut null_be = 30u32.to_be_bytes().to_vec();
        null_be.extend(IP);
        assert_eq!(ip_packet(NULL, &null_be), Ok(IP));
        let mut lo = 2u32.to_be_bytes().to_vec();
        lo.extend(IP);
        assert_eq!(ip_packet(LOOP, &lo), Ok(IP));
        assert_eq!(ip_packet(RAW, IP), Ok(IP));
        assert_eq!(ip_packet(ETHERNET, &[0; 5]), Err(Skip::Short));
        assert_eq!(ip_packet(147, IP), Err(Skip::UnsupportedLink(147)));
    }
}
