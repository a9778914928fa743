//! One planned session as packets: the TCP conversation of a bot or a legitimate sender.

use std::net::IpAddr;

use super::truth::TruthRow;
use super::{GenConfig, HOSTED, Kind, Plan, Rng, SERVER_NAME, SERVER_V4, SERVER_V6, Source, WORDS};
use crate::craft::{ACK, FIN_ACK, FIN_PSH_ACK, PSH_ACK, SYN, Side, tcp_packet};
use crate::time::{Duration, Instant};

/// One packet of a session, from the IP header on.
pub(super) struct Packet {
    pub(super) ts: Instant,
    pub(super) from_client: bool,
    pub(super) bytes: Vec<u8>,
    /// The TCP payload is the last `payload_len` bytes.
    pub(super) payload_len: usize,
}

struct SessionWriter {
    client: Side,
    server: Side,
    now: Instant,
    rtt_us: u64,
    packets: Vec<Packet>,
}

impl SessionWriter {
    /// Sends a segment; the capture point is at the server, so a client segment is seen at
    /// `now` and the server's answer shortly after.
    fn send(&mut self, from_client: bool, flags: u8, payload: &[u8], options: &[u8]) {
        let (from, to) = if from_client {
            (&mut self.client, &self.server)
        } else {
            (&mut self.server, &self.client)
        };
        let ack = if flags & ACK != 0 { to.seq } else { 0 };
        let bytes = tcp_packet(from, to, flags, ack, payload, options);
        from.seq = from
            .seq
            .wrapping_add(payload.len() as u32 + u32::from(flags & (SYN | 0x01) != 0));
        from.ip_id = from.ip_id.wrapping_add(1);
        self.packets.push(Packet {
            ts: self.now,
            from_client,
            bytes,
            payload_len: payload.len(),
        });
    }

    /// Client packets sent so far.
    fn client_count(&self) -> u32 {
        self.packets.iter().filter(|p| p.from_client).count() as u32
    }

    /// Advances the clock: `half` half round trips plus `extra` microseconds.
    fn wait(&mut self, half: u64, extra: u64) {
        self.now = self
            .now
            .saturating_add(Duration::from_micros(self.rtt_us * half / 2 + extra));
    }

    fn client(&mut self, payload: &[u8]) {
        self.wait(1, 300);
        self.send(true, PSH_ACK, payload, &[]);
    }

    fn server(&mut self, payload: &[u8]) {
        self.wait(0, 250);
        self.send(false, PSH_ACK, payload, &[]);
        self.wait(1, 0);
    }
}

pub(super) fn build_session(
    plan: &Plan,
    source: &Source,
    cfg: &GenConfig,
    needle: &[u8],
    rng: &mut Rng,
) -> (Vec<Packet>, TruthRow) {
    let server_addr = if plan.client.is_ipv6() {
        IpAddr::V6(SERVER_V6)
    } else {
        IpAddr::V4(SERVER_V4)
    };
    let mut w = SessionWriter {
        client: Side {
            addr: plan.client,
            port: plan.client_port,
            seq: rng.next_u64() as u32,
            ttl: source.ttl,
            ip_id: rng.next_u64() as u16,
        },
        server: Side {
            addr: server_addr,
            port: 25,
            seq: rng.next_u64() as u32,
            ttl: 64,
            ip_id: rng.next_u64() as u16,
        },
        now: plan.start,
        rtt_us: source.rtt_us,
        packets: Vec::with_capacity(24),
    };
    let domain = &cfg.spam_domain;
    let word = |rng: &mut Rng| *rng.pick(WORDS);
    let spam = plan.kind.is_spam();
    let helo = if spam {
        format!("{}{}.dsl.test", word(rng), rng.below(9999))
    } else {
        format!("mx{}.{}-partner.test", rng.below(9), word(rng))
    };
    let mail_from = if spam {
        format!("{}{}@{}-deals.test", word(rng), rng.below(999), word(rng))
    } else {
        format!("{}@{}-partner.test", word(rng), word(rng))
    };
    let user = format!("{}.{}", word(rng), rng.below(99));
    let rcpt = match plan.kind {
        Kind::Spam | Kind::SpamSplit | Kind::SpamPipelined => format!("{user}@{domain}"),
        Kind::SpamUpper => format!("{user}@{domain}").to_uppercase(),
        Kind::Legit | Kind::LegitMention => format!("{user}@{HOSTED}"),
    };
    let to_header = match plan.kind {
        Kind::Spam | Kind::SpamPipelined | Kind::Legit | Kind::LegitMention => format!("<{rcpt}>"),
        Kind::SpamUpper | Kind::SpamSplit => "undisclosed-recipients:;".to_string(),
    };
    let body = message_body(plan, &mail_from, &to_header, domain, rng);

    // Handshake.
    w.send(true, SYN, &[], &[2, 4, 0x05, 0xb4]);
    w.wait(0, 150);
    w.send(false, SYN | ACK, &[], &[2, 4, 0x05, 0xb4]);
    w.wait(2, 0);
    w.send(true, ACK, &[], &[]);
    w.server(format!("220 {SERVER_NAME} ESMTP ready\r\n").as_bytes());
    w.client(format!("EHLO {helo}\r\n").as_bytes());
    w.server(format!("250-{SERVER_NAME}\r\n250-PIPELINING\r\n250-SIZE 52428800\r\n250-8BITMIME\r\n250 SMTPUTF8\r\n").as_bytes());
    let mail_cmd = format!("MAIL FROM:<{mail_from}>\r\n");
    let rcpt_cmd = format!("RCPT TO:<{rcpt}>\r\n");
    // Client packets that end the MAIL and RCPT lines; the session packet of the 354.
    let (mail_packet, rcpt_packet, bypass_at);
    if plan.kind == Kind::SpamPipelined {
        w.client(format!("{mail_cmd}{rcpt_cmd}DATA\r\n").as_bytes());
        (mail_packet, rcpt_packet) = (w.client_count(), w.client_count());
        w.server(b"250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n354 End data with <CR><LF>.<CR><LF>\r\n");
        bypass_at = w.packets.len() as u32;
    } else {
        w.client(mail_cmd.as_bytes());
        mail_packet = w.client_count();
        w.server(b"250 2.1.0 Ok\r\n");
        if plan.kind == Kind::SpamSplit {
            // Split strictly inside "@domain", so that neither segment holds it whole.
            let at = rcpt_cmd.find('@').unwrap_or(9);
            let cut = at + 1 + rng.below(domain.len() as u64 - 1) as usize;
            w.client(&rcpt_cmd.as_bytes()[..cut]);
            w.wait(0, 400);
            w.send(true, PSH_ACK, &rcpt_cmd.as_bytes()[cut..], &[]);
        } else {
            w.client(rcpt_cmd.as_bytes());
        }
        rcpt_packet = w.client_count();
        w.server(b"250 2.1.5 Ok\r\n");
        w.client(b"DATA\r\n");
        w.server(b"354 End data with <CR><LF>.<CR><LF>\r\n");
        bypass_at = w.packets.len() as u32;
    }
    let chunks: Vec<&[u8]> = body.chunks(1460).collect();
    for (i, chunk) in chunks.iter().enumerate() {
        if i == 0 {
            w.wait(1, 300);
        } else {
            w.wait(0, 120);
        }
        w.send(true, PSH_ACK, chunk, &[]);
    }
    let queue_id: String = (0..10)
        .map(|_| char::from(b"0123456789ABCDEF"[rng.below(16) as usize]))
        .collect();
    w.server(format!("250 2.0.0 Ok: queued as {queue_id}\r\n").as_bytes());
    w.client(b"QUIT\r\n");
    w.wait(0, 250);
    w.send(false, FIN_PSH_ACK, b"221 2.0.0 Bye\r\n", &[]);
    w.wait(1, 0);
    w.wait(1, 200);
    w.send(true, FIN_ACK, &[], &[]);
    w.wait(0, 100);
    w.send(false, ACK, &[], &[]);

    let mut c2s = 0u32;
    let mut s2c = 0u32;
    let mut pattern_packet = None;
    let mut stream_packet = None;
    // The client's byte stream so far, in lower case (the needle is ASCII).
    let lower_needle = needle.to_ascii_lowercase();
    let holds = |hay: &[u8]| hay.windows(needle.len()).any(|win| win == lower_needle);
    let mut stream: Vec<u8> = Vec::new();
    for p in &w.packets {
        if p.from_client {
            c2s += 1;
            if pattern_packet.is_none() && p.bytes.windows(needle.len()).any(|win| win == needle) {
                pattern_packet = Some(c2s);
            }
            stream.extend(p.bytes[p.bytes.len() - p.payload_len..].to_ascii_lowercase());
            if stream_packet.is_none() && holds(&stream) {
                stream_packet = Some(c2s);
            }
        } else {
            s2c += 1;
        }
    }
    let smtp_packet = if holds(mail_from.to_ascii_lowercase().as_bytes()) {
        Some(mail_packet)
    } else if holds(rcpt.to_ascii_lowercase().as_bytes()) {
        Some(rcpt_packet)
    } else {
        None
    };
    let row = TruthRow {
        session: plan.id,
        start: plan.start,
        client: plan.client,
        client_port: plan.client_port,
        server: server_addr,
        kind: plan.kind,
        mail_from,
        rcpt_to: rcpt,
        c2s_packets: c2s,
        s2c_packets: s2c,
        pattern_packet,
        stream_packet,
        smtp_packet,
        bypass_at,
    };
    (w.packets, row)
}

fn message_body(plan: &Plan, from: &str, to_header: &str, domain: &str, rng: &mut Rng) -> Vec<u8> {
    let mut b = String::with_capacity(2048);
    let msg_id = rng.next_u64();
    b.push_str(&format!("From: <{from}>\r\nTo: {to_header}\r\nSubject: "));
    let (subject, lines) = match plan.kind {
        Kind::Legit | Kind::LegitMention => ("Minutes of the planning meeting", 4 + rng.below(30)),
        _ => ("You have WON a prize, claim now", 3 + rng.below(12)),
    };
    b.push_str(&format!("{subject}\r\nMessage-ID: <{msg_id:016x}@{}>\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n", plan.client_port));
    for i in 0..lines {
        if plan.kind == Kind::LegitMention && i == 1 {
            b.push_str(&format!(
                "The invoice from billing@{domain} arrived twice; please ignore the second one.\r\n"
            ));
            continue;
        }
        let w1 = WORDS[rng.below(WORDS.len() as u64) as usize];
        let w2 = WORDS[rng.below(WORDS.len() as u64) as usize];
        b.push_str(&format!("Line {i}: the {w1} report and the {w2} figures are attached as discussed last week.\r\n"));
    }
    b.push_str(".\r\n");
    b.into_bytes()
}
