//! Scripted SMTP sessions as packets: crafted captures for the replay tests, and random sessions
//! for the segmentation property test and fuzz target.
//!
//! A [`Script`] is what each side sends, in order. [`Script::packets`] turns it into a TCP
//! session (handshake, data, FIN) whose client bytes are cut into segments as a [`Shape`] says:
//! whole, cut at random places, with neighbouring segments swapped (out of order), or with
//! every segment sent twice (retransmitted). However it is cut, the bytes are the same, so an
//! engine that reassembles must judge every shape alike. [`random_session`] writes sessions
//! from the SMTP grammar (pipelining, BDAT, refused DATA, bare-LF dot lines, a body sent on with
//! the next envelope) with an exact oracle: is any envelope command one that `@example.com`
//! convicts?

use std::net::IpAddr;

use crate::attack::Rng;
use crate::capture::pcap::{Writer, linktype};
use crate::craft::{ethernet_header, tcp_flags_segment};
use crate::time::{Duration, Instant};

const FIN: u8 = 0x01;
const SYN: u8 = 0x02;
const ACK: u8 = 0x10;
const PSH_ACK: u8 = 0x18;
/// Largest segment payload.
pub const MSS: usize = 1460;

/// One side's turn.
#[derive(Clone, Debug, Eq, PartialEq)]
pub enum Step {
    Client(Vec<u8>),
    Server(Vec<u8>),
}

/// A session: who talks to whom, and what each side sends in turn.
#[derive(Clone, Debug, Eq, PartialEq)]
pub struct Script {
    pub client: (IpAddr, u16),
    pub server: (IpAddr, u16),
    pub steps: Vec<Step>,
}

/// How a script's client bytes become segments.
#[derive(Clone, Copy, Debug, Default, Eq, PartialEq)]
pub struct Shape {
    /// Cut each client turn at up to this many random places (besides every [`MSS`] bytes).
    pub cuts: usize,
    /// Seed of the cuts.
    pub seed: u64,
    /// Send each pair of neighbouring segments of a turn second first.
    pub reorder: bool,
    /// Send every client data segment twice.
    pub retransmit: bool,
}

impl Shape {
    pub const WHOLE: Shape = Shape {
        cuts: 0,
        seed: 0,
        reorder: false,
        retransmit: false,
    };
}

/// A packet of a scripted session, from its IP header.
#[derive(Clone, Debug, Eq, PartialEq)]
pub struct Frame {
    pub ts: Instant,
    pub from_client: bool,
    pub ip: Vec<u8>,
}

impl Script {
    pub fn new(client: (IpAddr, u16), server: (IpAddr, u16)) -> Script {
        Script {
            client,
            server,
            steps: Vec::new(),
        }
    }

    /// The client sends `bytes` (one turn).
    pub fn client(mut self, bytes: impl AsRef<[u8]>) -> Script {
        self.steps.push(Step::Client(bytes.as_ref().to_vec()));
        self
    }

    /// The server sends `bytes` (one turn).
    pub fn server(mut self, bytes: impl AsRef<[u8]>) -> Script {
        self.steps.push(Step::Server(bytes.as_ref().to_vec()));
        self
    }

    /// The session's packets, both ways, starting at `start` (1 ms apart).
    pub fn packets(&self, shape: Shape, start: Instant) -> Vec<Frame> {
        let mut rng = Rng::new(shape.seed ^ 0x5eed);
        let mut out = Vec::new();
        let mut now = start;
        let mut cseq: u32 = (rng.next_u64() as u32) | 1;
        let mut sseq: u32 = rng.next_u64() as u32;
        let mut push = |from_client: bool, seq: u32, ack: u32, flags: u8, payload: &[u8]| {
            let (from, to) = if from_client {
                (self.client, self.server)
            } else {
                (self.server, self.client)
            };
            out.push(Frame {
                ts: now,
                from_client,
                ip: tcp_flags_segment(from, to, seq, ack, flags, payload),
            });
            now = now.saturating_add(Duration::from_micros(1000));
        };
        push(true, cseq, 0, SYN, &[]);
        push(false, sseq, cseq.wrapping_add(1), SYN | ACK, &[]);
        cseq = cseq.wrapping_add(1);
        sseq = sseq.wrapping_add(1);
        push(true, cseq, sseq, ACK, &[]);
        for step in &self.steps {
            match step {
                Step::Server(bytes) => {
                    for chunk in bytes.chunks(MSS) {
                        push(false, sseq, cseq, PSH_ACK, chunk);
                        sseq = sseq.wrapping_add(chunk.len() as u32);
                    }
                }
                Step::Client(bytes) => {
                    let mut segs = cut(bytes, shape.cuts, &mut rng);
                    if shape.reorder {
                        for pair in segs.chunks_mut(2) {
                            pair.reverse();
                        }
                    }
                    for (off, len) in segs {
                        let seq = cseq.wrapping_add(off as u32);
                        let payload = &bytes[off..off + len];
                        for _ in 0..if shape.retransmit { 2 } else { 1 } {
                            push(true, seq, sseq, PSH_ACK, payload);
                        }
                    }
                    cseq = cseq.wrapping_add(bytes.len() as u32);
                }
            }
        }
        push(true, cseq, sseq, FIN | ACK, &[]);
        push(false, sseq, cseq.wrapping_add(1), FIN | ACK, &[]);
        push(true, cseq.wrapping_add(1), sseq.wrapping_add(1), ACK, &[]);
        out
    }
}

/// `(offset, length)` segments of `bytes`: cut at up to `cuts` random places and every MSS.
fn cut(bytes: &[u8], cuts: usize, rng: &mut Rng) -> Vec<(usize, usize)> {
    let mut at: Vec<usize> = (MSS..bytes.len()).step_by(MSS).collect();
    if cuts > 0 && bytes.len() > 1 {
        for _ in 0..=rng.below(cuts as u64) {
            at.push(1 + rng.below(bytes.len() as u64 - 1) as usize);
        }
    }
    at.sort_unstable();
    at.dedup();
    let mut segs = Vec::with_capacity(at.len() + 1);
    let mut from = 0;
    for a in at.into_iter().chain([bytes.len()]) {
        if a > from {
            segs.push((from, a - from));
            from = a;
        }
    }
    segs
}

/// Writes frames as a pcap of link type `link` ([`linktype::ETHERNET`] or [`linktype::RAW`]).
pub fn write_pcap(out: impl std::io::Write, link: u32, frames: &[Frame]) -> std::io::Result<()> {
    let mut w = Writer::new(out, link)?;
    for f in frames {
        if link == linktype::ETHERNET {
            let eth = ethernet_header(f.ip.first().is_some_and(|b| b >> 4 == 6), f.from_client);
            w.write(f.ts, &[&eth, &f.ip])?;
        } else {
            w.write(f.ts, &[&f.ip])?;
        }
    }
    w.into_inner().flush()
}

/// The pattern the random sessions are judged by.
pub const SPAM: &str = "@example.com";

/// A random session from the SMTP grammar between `client` and `server`, and whether a rule
/// `--string @example.com --mode smtp` must convict it: some `MAIL FROM` or `RCPT TO` command
/// (not body text, not a BDAT chunk, not after STARTTLS) holds the pattern in any case.
pub fn random_session(
    rng: &mut Rng,
    client: (IpAddr, u16),
    server: (IpAddr, u16),
) -> (Script, bool) {
    let mut s = Script::new(client, server).server("220 mx.test ESMTP\r\n");
    let mut spam = false;
    let path = |rng: &mut Rng, spam: &mut bool| {
        // Domains the pattern convicts (any case, or as a prefix of a longer name), and ones
        // it must not (near misses).
        let spammy = [
            "example.com",
            "EXAMPLE.COM",
            "exAmple.Com",
            "example.com.evil.test",
        ];
        let clean = [
            "clean.test",
            "example.co",
            "sub.example.com",
            "example.org",
            "mail.test",
        ];
        let d = if rng.chance(0.07) {
            *rng.pick(&spammy)
        } else {
            *rng.pick(&clean)
        };
        let p = format!("<u{}@{d}>", rng.below(100));
        *spam |= p.to_ascii_lowercase().contains(SPAM);
        p
    };
    s = s
        .client("EHLO client.test\r\n")
        .server("250-mx.test\r\n250-PIPELINING\r\n250-CHUNKING\r\n250 8BITMIME\r\n");
    // Client bytes carried into the next turn: the end of a body sent on with the next group.
    let mut carry: Vec<u8> = Vec::new();
    let mut carried_replies = String::new();
    for _ in 0..1 + rng.below(4) {
        if rng.chance(0.15) {
            s = s
                .client(format!("{}RSET\r\n", take(&mut carry)))
                .server(format!(
                    "{}250 reset\r\n",
                    std::mem::take(&mut carried_replies)
                ));
        }
        let pipelined = rng.chance(0.5);
        let mail = format!("MAIL FROM:{}\r\n", path(rng, &mut spam));
        let rcpts: Vec<String> = (0..1 + rng.below(3))
            .map(|_| format!("RCPT TO:{}\r\n", path(rng, &mut spam)))
            .collect();
        let bdat = rng.chance(0.25);
        let refused = !bdat && rng.chance(0.1);
        let data_reply = if refused {
            "554 no valid recipients\r\n"
        } else {
            "354 go ahead\r\n"
        };
        if pipelined && !bdat {
            let group = format!("{}{mail}{}DATA\r\n", take(&mut carry), rcpts.concat());
            let replies = format!(
                "{}250 ok\r\n{}{data_reply}",
                std::mem::take(&mut carried_replies),
                "250 ok\r\n".repeat(rcpts.len())
            );
            s = s.client(group).server(replies);
        } else {
            s = s
                .client(format!("{}{mail}", take(&mut carry)))
                .server(format!(
                    "{}250 ok\r\n",
                    std::mem::take(&mut carried_replies)
                ));
            for r in &rcpts {
                s = s.client(r).server("250 ok\r\n");
            }
            if !bdat {
                s = s.client("DATA\r\n").server(data_reply);
            }
        }
        if refused {
            continue;
        }
        if bdat {
            let chunks = 1 + rng.below(3);
            for k in 0..chunks {
                let body = random_body(rng);
                let last = if k + 1 == chunks { " LAST" } else { "" };
                let mut turn = format!("BDAT {}{last}\r\n", body.len()).into_bytes();
                turn.extend_from_slice(&body);
                s = s.client(turn).server("250 chunk ok\r\n");
            }
            continue;
        }
        let mut body = random_body(rng);
        body.extend_from_slice(b"\r\n.\r\n");
        if rng.chance(0.4) {
            // Sent on with the next group, before the server's 250 to it.
            carry = body;
            carried_replies = "250 queued\r\n".into();
        } else {
            s = s.client(body).server("250 queued\r\n");
        }
    }
    if !carry.is_empty() {
        s = s.client(take(&mut carry)).server(carried_replies);
    }
    if rng.chance(0.15) {
        // STARTTLS at the end: what follows is encrypted, whatever it looks like.
        s = s.client("STARTTLS\r\n").server("220 ready\r\n");
        s = s.client(format!("\x16\x03\x01RCPT TO:<v{SPAM}>\r\n"));
    } else {
        s = s.client("QUIT\r\n").server("221 bye\r\n");
    }
    (s, spam)
}

fn take(v: &mut Vec<u8>) -> String {
    String::from_utf8_lossy(&std::mem::take(v)).into_owned()
}

/// Body text: plain lines, lines that look like spam envelope commands, dot-stuffed lines, and
/// bare-LF / bare-CR "dot lines" that are not the end of data.
fn random_body(rng: &mut Rng) -> Vec<u8> {
    let mut b = Vec::new();
    for _ in 0..1 + rng.below(12) {
        let line: &[u8] = match rng.below(10) {
            0 => b"RCPT TO:<victim@example.com>\r\n",
            1 => b"MAIL FROM:<boss@EXAMPLE.COM>\r\n",
            2 => b"..a dot-stuffed line\r\n",
            3 => b"x\n.\nRCPT TO:<v@example.com>\r\n",
            4 => b"y\r\n.\nRCPT TO:<v@example.com>\r\n",
            5 => b"z\n.\r\nRCPT TO:<v@example.com>\r\n",
            6 => b"w\r.\rRCPT TO:<v@example.com>\r\n",
            _ => b"The quarterly figures are attached, as discussed.\r\n",
        };
        b.extend_from_slice(line);
    }
    // Bodies end without their last CRLF: the caller adds CRLF . CRLF (or BDAT takes them as is).
    b.truncate(b.len() - 2);
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cuts_cover_every_byte_once() {
        let mut rng = Rng::new(7);
        for len in [1usize, 2, 10, 1460, 1461, 5000] {
            for cuts in [0, 1, 5] {
                let segs = cut(&vec![0; len], cuts, &mut rng);
                let mut next = 0;
                for (off, l) in segs {
                    assert_eq!(off, next);
                    assert!(l > 0 && l <= MSS);
                    next += l;
                }
                assert_eq!(next, len);
            }
        }
    }
}
