//! The NFQUEUE netlink wire format: building requests and parsing what the kernel sends.
//!
//! Written from the kernel UAPI headers `linux/netlink.h`, `linux/netfilter/nfnetlink.h` and
//! `linux/netfilter/nfnetlink_queue.h`. Pure functions over byte buffers, so every path is unit
//! tested with crafted bytes. Parsing never panics: anything malformed is a [`CodecError`].
//!
//! Netlink headers and attribute headers are in host byte order; the nfqueue payload structs
//! (`nfgenmsg.res_id`, packet and verdict headers, config values) are big-endian.

use std::fmt;

/// `NETLINK_NETFILTER`.
pub const NETLINK_NETFILTER: i32 = 12;
/// `NFNL_SUBSYS_QUEUE`.
pub const SUBSYS_QUEUE: u16 = 3;

/// Message types (`nfqnl_msg_types`).
pub const MSG_PACKET: u16 = 0;
pub const MSG_VERDICT: u16 = 1;
pub const MSG_CONFIG: u16 = 2;
pub const MSG_VERDICT_BATCH: u16 = 3;

/// The netfilter hooks a queued packet's header names (`NF_INET_LOCAL_IN`, `NF_INET_FORWARD`).
pub const HOOK_INPUT: u8 = 1;
pub const HOOK_FORWARD: u8 = 2;

/// Netlink control messages and flags.
pub const NLMSG_NOOP: u16 = 1;
pub const NLMSG_ERROR: u16 = 2;
pub const NLMSG_DONE: u16 = 3;
pub const NLM_F_REQUEST: u16 = 0x1;
pub const NLM_F_ACK: u16 = 0x4;

/// Packet attributes (`nfqnl_attr_type`).
pub const NFQA_PACKET_HDR: u16 = 1;
pub const NFQA_VERDICT_HDR: u16 = 2;
pub const NFQA_MARK: u16 = 3;
pub const NFQA_IFINDEX_INDEV: u16 = 5;
pub const NFQA_IFINDEX_OUTDEV: u16 = 6;
pub const NFQA_PAYLOAD: u16 = 10;
pub const NFQA_CAP_LEN: u16 = 13;
pub const NFQA_SKB_INFO: u16 = 14;

/// Config attributes (`nfqnl_attr_config`).
pub const NFQA_CFG_CMD: u16 = 1;
pub const NFQA_CFG_PARAMS: u16 = 2;
pub const NFQA_CFG_QUEUE_MAXLEN: u16 = 3;
pub const NFQA_CFG_MASK: u16 = 4;
pub const NFQA_CFG_FLAGS: u16 = 5;

/// Config commands (`nfqnl_msg_config_cmds`).
pub const CMD_BIND: u8 = 1;
pub const CMD_UNBIND: u8 = 2;

/// Copy modes (`nfqnl_config_mode`).
pub const COPY_PACKET: u8 = 2;

/// Queue flags (`NFQA_CFG_F_*`).
pub const CFG_F_FAIL_OPEN: u32 = 1 << 0;
pub const CFG_F_GSO: u32 = 1 << 2;

/// `NFQA_SKB_INFO` bits.
pub const SKB_CSUMNOTREADY: u32 = 1 << 0;
pub const SKB_GSO: u32 = 1 << 1;

/// Netfilter verdicts.
pub const NF_DROP: u32 = 0;
pub const NF_ACCEPT: u32 = 1;
pub const NF_REPEAT: u32 = 4;

const NLMSG_HDRLEN: usize = 16;
const NFGENMSG_LEN: usize = 4;
const NLA_HDRLEN: usize = 4;
/// `NLA_F_NESTED | NLA_F_NET_BYTEORDER`.
const NLA_TYPE_MASK: u16 = 0x3fff;

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// What is wrong with bytes from the kernel.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub enum CodecError {
    /// A netlink header's length is below the header size or beyond the buffer.
    BadMessageLength { len: u32, available: usize },
    /// An attribute's length is below 4 or beyond its message.
    BadAttributeLength { kind: u16, len: u16 },
    /// A message too short for the structure it must hold.
    Truncated { what: &'static str },
    /// A packet message without a required attribute.
    Missing { what: &'static str },
}

impl fmt::Display for CodecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CodecError::BadMessageLength { len, available } => {
                write!(
                    f,
                    "netlink message length {len} with {available} bytes available"
                )
            }
            CodecError::BadAttributeLength { kind, len } => {
                write!(f, "attribute {kind} with length {len}")
            }
            CodecError::Truncated { what } => write!(f, "truncated {what}"),
            CodecError::Missing { what } => write!(f, "packet message without {what}"),
        }
    }
}

impl std::error::Error for CodecError {}

/// One netlink message: its type, flags, sequence and payload (after the 16-byte header).
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub struct Message<'a> {
    pub kind: u16,
    pub flags: u16,
    pub seq: u32,
    pub payload: &'a [u8],
}

/// Iterates the netlink messages in a datagram. Stops after the first error.
pub fn messages(buf: &[u8]) -> impl Iterator<Item = Result<Message<'_>, CodecError>> {
    let mut rest = buf;
    let mut failed = false;
    std::iter::from_fn(move || {
        if failed || rest.len() < NLMSG_HDRLEN {
            return None;
        }
        let len = u32::from_ne_bytes([rest[0], rest[1], rest[2], rest[3]]);
        if (len as usize) < NLMSG_HDRLEN || len as usize > rest.len() {
            failed = true;
            return Some(Err(CodecError::BadMessageLength {
                len,
                available: rest.len(),
            }));
        }
        let msg = Message {
            kind: u16::from_ne_bytes([rest[4], rest[5]]),
            flags: u16::from_ne_bytes([rest[6], rest[7]]),
            seq: u32::from_ne_bytes([rest[8], rest[9], rest[10], rest[11]]),
            payload: &rest[NLMSG_HDRLEN..len as usize],
        };
        rest = rest.get(align4(len as usize)..).unwrap_or(&[]);
        Some(Ok(msg))
    })
}

/// The errno of an `NLMSG_ERROR` message (0 is an acknowledgement).
pub fn error_code(msg: &Message<'_>) -> Result<i32, CodecError> {
    let b = msg.payload.get(..4).ok_or(CodecError::Truncated {
        what: "netlink error message",
    })?;
    // The kernel sends -errno; a hostile i32::MIN must not overflow the negation.
    Ok(i32::from_ne_bytes([b[0], b[1], b[2], b[3]]).saturating_neg())
}

/// Iterates the attributes in `buf` as `(type, value)`.
pub fn attributes(buf: &[u8]) -> impl Iterator<Item = Result<(u16, &[u8]), CodecError>> {
    let mut rest = buf;
    let mut failed = false;
    std::iter::from_fn(move || {
        if failed || rest.len() < NLA_HDRLEN {
            return None;
        }
        let len = u16::from_ne_bytes([rest[0], rest[1]]);
        let kind = u16::from_ne_bytes([rest[2], rest[3]]) & NLA_TYPE_MASK;
        if (len as usize) < NLA_HDRLEN || len as usize > rest.len() {
            failed = true;
            return Some(Err(CodecError::BadAttributeLength { kind, len }));
        }
        let value = &rest[NLA_HDRLEN..len as usize];
        rest = rest.get(align4(len as usize)..).unwrap_or(&[]);
        Some(Ok((kind, value)))
    })
}

/// A packet the kernel queued to us.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub struct Queued<'a> {
    pub queue: u16,
    pub id: u32,
    pub hw_protocol: u16,
    pub hook: u8,
    /// The packet's mark (0 when the kernel sent none).
    pub mark: u32,
    pub indev: u32,
    pub outdev: u32,
    /// `NFQA_SKB_INFO` bits ([`SKB_CSUMNOTREADY`], [`SKB_GSO`]).
    pub skb_info: u32,
    /// The packet's full length when the copy was cut to the copy range.
    pub cap_len: Option<u32>,
    /// The packet from its IP header (possibly cut to the copy range).
    pub payload: &'a [u8],
}

/// Parses an `NFQNL_MSG_PACKET` message.
pub fn packet<'a>(msg: &Message<'a>) -> Result<Queued<'a>, CodecError> {
    let head = msg
        .payload
        .get(..NFGENMSG_LEN)
        .ok_or(CodecError::Truncated { what: "nfgenmsg" })?;
    let mut q = Queued {
        queue: u16::from_be_bytes([head[2], head[3]]),
        id: 0,
        hw_protocol: 0,
        hook: 0,
        mark: 0,
        indev: 0,
        outdev: 0,
        skb_info: 0,
        cap_len: None,
        payload: &[],
    };
    let (mut have_hdr, mut have_payload) = (false, false);
    let be32 = |v: &[u8], what| -> Result<u32, CodecError> {
        let b = v.get(..4).ok_or(CodecError::Truncated { what })?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    };
    for attr in attributes(&msg.payload[NFGENMSG_LEN..]) {
        let (kind, v) = attr?;
        match kind {
            NFQA_PACKET_HDR => {
                let b = v.get(..7).ok_or(CodecError::Truncated {
                    what: "packet header",
                })?;
                q.id = u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
                q.hw_protocol = u16::from_be_bytes([b[4], b[5]]);
                q.hook = b[6];
                have_hdr = true;
            }
            NFQA_MARK => q.mark = be32(v, "mark")?,
            NFQA_IFINDEX_INDEV => q.indev = be32(v, "input interface")?,
            NFQA_IFINDEX_OUTDEV => q.outdev = be32(v, "output interface")?,
            NFQA_SKB_INFO => q.skb_info = be32(v, "skb info")?,
            NFQA_CAP_LEN => q.cap_len = Some(be32(v, "captured length")?),
            NFQA_PAYLOAD => {
                q.payload = v;
                have_payload = true;
            }
            _ => {}
        }
    }
    if !have_hdr {
        return Err(CodecError::Missing {
            what: "a packet header",
        });
    }
    if !have_payload {
        return Err(CodecError::Missing { what: "a payload" });
    }
    Ok(q)
}

/// Appends netlink messages to a buffer.
#[derive(Debug, Default)]
pub struct Builder {
    buf: Vec<u8>,
    start: usize,
}

impl Builder {
    pub fn new() -> Builder {
        Builder::default()
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.buf
    }

    pub fn clear(&mut self) {
        self.buf.clear();
    }

    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// Starts a nfqueue message for `queue`; finish it with [`Builder::end`].
    pub fn begin(&mut self, msg: u16, flags: u16, seq: u32, queue: u16) -> &mut Builder {
        self.start = self.buf.len();
        self.buf.extend_from_slice(&[0; 4]);
        self.buf
            .extend_from_slice(&(SUBSYS_QUEUE << 8 | msg).to_ne_bytes());
        self.buf.extend_from_slice(&flags.to_ne_bytes());
        self.buf.extend_from_slice(&seq.to_ne_bytes());
        self.buf.extend_from_slice(&0u32.to_ne_bytes());
        // nfgenmsg: family AF_UNSPEC, version NFNETLINK_V0, res_id = queue number.
        self.buf.extend_from_slice(&[0, 0]);
        self.buf.extend_from_slice(&queue.to_be_bytes());
        self
    }

    /// Appends an attribute to the open message.
    pub fn attr(&mut self, kind: u16, value: &[u8]) -> &mut Builder {
        let len = u16::try_from(NLA_HDRLEN + value.len()).unwrap_or(u16::MAX);
        self.buf.extend_from_slice(&len.to_ne_bytes());
        self.buf.extend_from_slice(&kind.to_ne_bytes());
        self.buf.extend_from_slice(value);
        self.buf.resize(align4(self.buf.len()), 0);
        self
    }

    /// Writes the open message's length.
    pub fn end(&mut self) {
        let len = (self.buf.len() - self.start) as u32;
        self.buf[self.start..self.start + 4].copy_from_slice(&len.to_ne_bytes());
    }

    /// A verdict on one packet, with an optional new mark.
    pub fn verdict(&mut self, queue: u16, id: u32, verdict: u32, mark: Option<u32>) {
        self.begin(MSG_VERDICT, NLM_F_REQUEST, 0, queue);
        self.attr(NFQA_VERDICT_HDR, &verdict_hdr(verdict, id));
        if let Some(mark) = mark {
            self.attr(NFQA_MARK, &mark.to_be_bytes());
        }
        self.end();
    }

    /// One verdict for every packet of `queue` with an id up to `id` still in the queue.
    pub fn verdict_batch(&mut self, queue: u16, id: u32, verdict: u32) {
        self.begin(MSG_VERDICT_BATCH, NLM_F_REQUEST, 0, queue);
        self.attr(NFQA_VERDICT_HDR, &verdict_hdr(verdict, id));
        self.end();
    }

    /// A config command (bind, unbind), acknowledged.
    pub fn config_cmd(&mut self, seq: u32, queue: u16, cmd: u8) {
        self.begin(MSG_CONFIG, NLM_F_REQUEST | NLM_F_ACK, seq, queue);
        // nfqnl_msg_config_cmd: command, pad, pf (unused for queue bind).
        self.attr(NFQA_CFG_CMD, &[cmd, 0, 0, 0]);
        self.end();
    }

    /// Copy mode and range, queue length and flags, acknowledged.
    pub fn config_params(
        &mut self,
        seq: u32,
        queue: u16,
        copy_range: u32,
        maxlen: u32,
        flags: u32,
    ) {
        self.begin(MSG_CONFIG, NLM_F_REQUEST | NLM_F_ACK, seq, queue);
        let mut params = copy_range.to_be_bytes().to_vec();
        params.push(COPY_PACKET);
        self.attr(NFQA_CFG_PARAMS, &params);
        self.attr(NFQA_CFG_QUEUE_MAXLEN, &maxlen.to_be_bytes());
        self.attr(NFQA_CFG_FLAGS, &flags.to_be_bytes());
        self.attr(NFQA_CFG_MASK, &(CFG_F_FAIL_OPEN | CFG_F_GSO).to_be_bytes());
        self.end();
    }
}

fn verdict_hdr(verdict: u32, id: u32) -> [u8; 8] {
    let mut h = [0u8; 8];
    h[..4].copy_from_slice(&verdict.to_be_bytes());
    h[4..].copy_from_slice(&id.to_be_bytes());
    h
}

/// Counters of one queue from `/proc/net/netfilter/nfnetlink_queue`.
#[derive(Clone, Copy, Debug, Default, Eq, PartialEq)]
pub struct QueueCounters {
    pub queue: u16,
    pub portid: u32,
    pub waiting: u64,
    pub copy_mode: u8,
    pub copy_range: u32,
    pub queue_dropped: u64,
    pub user_dropped: u64,
    pub last_id: u32,
}

/// Parses `/proc/net/netfilter/nfnetlink_queue`: one line per bound queue, `queue portid
/// waiting copy_mode copy_range queue_dropped user_dropped id_sequence 1`.
pub fn parse_proc(text: &str) -> Vec<QueueCounters> {
    text.lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 8 {
                return None;
            }
            Some(QueueCounters {
                queue: f[0].parse().ok()?,
                portid: f[1].parse().ok()?,
                waiting: f[2].parse().ok()?,
                copy_mode: f[3].parse().ok()?,
                copy_range: f[4].parse().ok()?,
                queue_dropped: f[5].parse().ok()?,
                user_dropped: f[6].parse().ok()?,
                last_id: f[7].parse().ok()?,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A packet message as the kernel sends it: queue 3, id 7, IPv4, hook INPUT, mark 0x10,
    /// indev 2, skb info CSUMNOTREADY, payload of 5 bytes (padded to 8).
    fn kernel_packet() -> Vec<u8> {
        let mut attrs = Vec::new();
        let mut attr = |kind: u16, v: &[u8]| {
            attrs.extend(((4 + v.len()) as u16).to_ne_bytes());
            attrs.extend(kind.to_ne_bytes());
            attrs.extend(v);
            attrs.resize(align4(attrs.len()), 0);
        };
        attr(NFQA_PACKET_HDR, &[0, 0, 0, 7, 0x08, 0x00, 1]);
        attr(NFQA_MARK, &0x10u32.to_be_bytes());
        attr(NFQA_IFINDEX_INDEV, &2u32.to_be_bytes());
        attr(NFQA_SKB_INFO, &SKB_CSUMNOTREADY.to_be_bytes());
        attr(99, &[1, 2, 3]); // unknown attributes are skipped
        attr(NFQA_PAYLOAD, &[0x45, 0, 0, 0, 9]);
        let mut m = Vec::new();
        let len = (16 + 4 + attrs.len()) as u32;
        m.extend(len.to_ne_bytes());
        m.extend((SUBSYS_QUEUE << 8 | MSG_PACKET).to_ne_bytes());
        m.extend(0u16.to_ne_bytes());
        m.extend(0u32.to_ne_bytes());
        m.extend(0u32.to_ne_bytes());
        m.extend([2, 0, 0, 3]);
        m.extend(attrs);
        m
    }

    #[test]
    fn parses_a_packet_message() {
        let buf = kernel_packet();
        let msgs: Vec<_> = messages(&buf).collect();
        assert_eq!(msgs.len(), 1);
        let msg = msgs[0].unwrap();
        assert_eq!(msg.kind, SUBSYS_QUEUE << 8 | MSG_PACKET);
        let q = packet(&msg).unwrap();
        assert_eq!(
            (q.queue, q.id, q.hw_protocol, q.hook, q.mark, q.indev),
            (3, 7, 0x0800, 1, 0x10, 2)
        );
        assert_eq!(q.skb_info, SKB_CSUMNOTREADY);
        assert_eq!(q.payload, &[0x45, 0, 0, 0, 9]);
        assert_eq!(q.cap_len, None);
    }

    #[test]
    fn several_messages_in_one_datagram() {
        let mut buf = kernel_packet();
        buf.extend(kernel_packet());
        assert_eq!(messages(&buf).filter(|m| m.is_ok()).count(), 2);
    }

    #[test]
    fn malformed_input_is_an_error_never_a_panic() {
        let good = kernel_packet();
        // Message length beyond the buffer, and below the header size.
        let mut long = good.clone();
        long[..4].copy_from_slice(&1000u32.to_ne_bytes());
        assert!(matches!(
            messages(&long).next(),
            Some(Err(CodecError::BadMessageLength { .. }))
        ));
        let mut short = good.clone();
        short[..4].copy_from_slice(&8u32.to_ne_bytes());
        assert!(matches!(
            messages(&short).next(),
            Some(Err(CodecError::BadMessageLength { .. }))
        ));
        // Attribute length beyond the message.
        let mut bad_attr = good.clone();
        bad_attr[20..22].copy_from_slice(&500u16.to_ne_bytes());
        let msg = messages(&bad_attr).next().unwrap().unwrap();
        assert!(matches!(
            packet(&msg),
            Err(CodecError::BadAttributeLength { .. })
        ));
        // Attribute length below its header.
        let mut tiny_attr = good.clone();
        tiny_attr[20..22].copy_from_slice(&2u16.to_ne_bytes());
        let msg = messages(&tiny_attr).next().unwrap().unwrap();
        assert!(packet(&msg).is_err());
        // No payload attribute.
        let cut = &good[..good.len() - 12];
        let mut no_payload = cut.to_vec();
        no_payload[..4].copy_from_slice(&(cut.len() as u32).to_ne_bytes());
        let msg = messages(&no_payload).next().unwrap().unwrap();
        assert_eq!(packet(&msg), Err(CodecError::Missing { what: "a payload" }));
        // A packet header too short.
        let mut short_hdr = good.clone();
        short_hdr[20..22].copy_from_slice(&8u16.to_ne_bytes());
        let msg = messages(&short_hdr).next().unwrap().unwrap();
        assert!(packet(&msg).is_err());
        // Every prefix of a good message, and every single-byte change, parses or errors.
        for n in 0..good.len() {
            for m in messages(&good[..n]).flatten() {
                let _ = packet(&m);
            }
        }
        for i in 0..good.len() {
            for b in [0u8, 1, 0x7f, 0xff] {
                let mut x = good.clone();
                x[i] = b;
                for m in messages(&x).flatten() {
                    let _ = packet(&m);
                    let _ = error_code(&m);
                }
            }
        }
    }

    #[test]
    fn builds_verdicts() {
        let mut b = Builder::new();
        b.verdict(3, 7, NF_DROP, None);
        b.verdict(3, 8, NF_REPEAT, Some(0x4000_0000));
        b.verdict_batch(3, 20, NF_ACCEPT);
        let msgs: Vec<_> = messages(b.as_bytes()).map(Result::unwrap).collect();
        assert_eq!(msgs.len(), 3);
        assert_eq!(msgs[0].kind, SUBSYS_QUEUE << 8 | MSG_VERDICT);
        assert_eq!(msgs[2].kind, SUBSYS_QUEUE << 8 | MSG_VERDICT_BATCH);
        assert_eq!(&msgs[0].payload[..4], &[0, 0, 0, 3]);
        let attrs: Vec<_> = attributes(&msgs[1].payload[4..])
            .map(Result::unwrap)
            .collect();
        assert_eq!(attrs[0], (NFQA_VERDICT_HDR, &[0, 0, 0, 4, 0, 0, 0, 8][..]));
        assert_eq!(attrs[1], (NFQA_MARK, &[0x40, 0, 0, 0][..]));
        let batch: Vec<_> = attributes(&msgs[2].payload[4..])
            .map(Result::unwrap)
            .collect();
        assert_eq!(batch[0], (NFQA_VERDICT_HDR, &[0, 0, 0, 1, 0, 0, 0, 20][..]));
    }

    #[test]
    fn builds_config() {
        let mut b = Builder::new();
        b.config_cmd(1, 5, CMD_BIND);
        b.config_params(2, 5, 0xffff, 65536, CFG_F_FAIL_OPEN | CFG_F_GSO);
        let msgs: Vec<_> = messages(b.as_bytes()).map(Result::unwrap).collect();
        assert_eq!(msgs[0].flags, NLM_F_REQUEST | NLM_F_ACK);
        assert_eq!((msgs[0].seq, msgs[1].seq), (1, 2));
        let attrs: Vec<_> = attributes(&msgs[1].payload[4..])
            .map(Result::unwrap)
            .collect();
        assert_eq!(
            attrs[0],
            (NFQA_CFG_PARAMS, &[0, 0, 0xff, 0xff, COPY_PACKET][..])
        );
        assert_eq!(attrs[1], (NFQA_CFG_QUEUE_MAXLEN, &[0, 1, 0, 0][..]));
        assert_eq!(attrs[2], (NFQA_CFG_FLAGS, &[0, 0, 0, 5][..]));
    }

    #[test]
    fn error_messages() {
        let mut m = Vec::new();
        m.extend(36u32.to_ne_bytes());
        m.extend(NLMSG_ERROR.to_ne_bytes());
        m.extend([0; 10]);
        m.extend((-16i32).to_ne_bytes());
        m.extend([0; 16]);
        let msg = messages(&m).next().unwrap().unwrap();
        assert_eq!(error_code(&msg), Ok(16));
        // Found by the fuzz target: i32::MIN as the error code.
        m[16..20].copy_from_slice(&i32::MIN.to_ne_bytes());
        let msg = messages(&m).next().unwrap().unwrap();
        assert_eq!(error_code(&msg), Ok(i32::MAX));
    }

    #[test]
    fn proc_counters() {
        let text =
            "    0  12345     0 2 65535     0     0       17  1\n    3  99 4 2 65535 12 3 100 1\n";
        let c = parse_proc(text);
        assert_eq!(c.len(), 2);
        assert_eq!(
            (
                c[1].queue,
                c[1].portid,
                c[1].waiting,
                c[1].queue_dropped,
                c[1].user_dropped,
                c[1].last_id
            ),
            (3, 99, 4, 12, 3, 100)
        );
    }
}
