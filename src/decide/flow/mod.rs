//! Per-flow state for the `stream` and `smtp` matching modes (docs/ARCHITECTURE.md, *Flows*), all pure.
//!
//! - [`Reasm`] turns a side's TCP segments into its in-order byte stream: retransmitted bytes
//!   are never handed out twice, segments ahead of a gap are held (at most [`MAX_HELD`] segments
//!   and [`MAX_HELD_BYTES`] bytes per flow, at most [`MAX_AHEAD`] bytes ahead) until the gap is
//!   filled; a segment beyond those bounds is refused, and the engine drops it — TCP retransmits
//!   it later, so no byte is ever skipped unseen.
//! - [`Smtp`] follows an SMTP session from both sides, every transaction to QUIT or close: it
//!   hands out the path of every `MAIL FROM` and `RCPT TO` command line, skips message bodies
//!   (`DATA` answered 354, up to `CR LF . CR LF` — the only end of data, RFC 5321 §4.1.1.4; a
//!   bare LF or CR is counted, never taken as a line end) and `BDAT` chunks, and matches the
//!   server's replies to the commands in order (pipelining, including a group that starts with
//!   the end of a message), so a refused `DATA` leaves it reading commands. A reply inside a
//!   body means the server ended the data elsewhere: the reader follows it back to commands.
//!   Only `STARTTLS` answered 220 ends the reading: the rest is encrypted.
//! - [`Flows`] is the bounded table: one slot per flow, least-recently-seen eviction through an
//!   intrusive list, idle flows expired from the cold end.

use std::net::IpAddr;

use memchr::memchr;

use crate::time::Instant;

mod reasm;
mod smtp;
mod table;

pub use reasm::{Push, Reasm};
pub use smtp::{Envelope, Smtp, SmtpEvents, domain, path};
pub use table::{
    Flow, FlowBudget, FlowKey, FlowState, Flows, Handshake, SHARE_DIVISOR, network, slot_bytes,
};

/// Most out-of-order segments held per flow side.
pub const MAX_HELD: usize = 8;
/// Most bytes held out of order per flow side.
pub const MAX_HELD_BYTES: usize = 16 * 1024;
/// Farthest ahead of the next expected byte that a segment is held.
pub const MAX_AHEAD: u32 = 1 << 20;
/// Longest SMTP command line kept; a longer line is judged on its first `MAX_LINE` bytes
/// (RFC 5321 allows 512, and a path at most 256).
pub const MAX_LINE: usize = 4096;
/// Most commands awaiting a reply; beyond, replies are no longer matched to commands (a 354
/// still ends the envelope: it answers nothing but DATA).
pub const MAX_PENDING: usize = 21;

/// `a` before `b` in sequence space.
#[inline]
pub fn before(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) < 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn push_all(r: &mut Reasm, segs: &[(u32, &str)]) -> (String, Vec<Push>) {
        let mut out = Vec::new();
        let pushes = segs
            .iter()
            .map(|(s, p)| r.push(*s, p.as_bytes(), &mut out))
            .collect();
        (String::from_utf8(out).unwrap(), pushes)
    }

    #[test]
    fn reassembly_in_order_retransmitted_and_out_of_order() {
        let mut r = Reasm::default();
        r.syn(99);
        let (s, p) = push_all(
            &mut r,
            &[
                (100, "abc"),
                (100, "abc"),
                (101, "bcd"),
                (107, "hij"),
                (104, "efg"),
            ],
        );
        assert_eq!(s, "abcdefghij");
        assert_eq!(
            p,
            [Push::Data, Push::Old, Push::Data, Push::Held, Push::Data]
        );
        // Wrapping sequence numbers.
        let mut r = Reasm::default();
        r.syn(u32::MAX - 1);
        let (s, _) = push_all(&mut r, &[(u32::MAX, "xy"), (1, "z")]);
        assert_eq!(s, "xyz");
    }

    #[test]
    fn in_order_segments_are_read_in_place() {
        let mut r = Reasm::default();
        r.syn(99);
        assert_eq!(r.in_order(100, b"abc"), Some(&b"abc"[..]));
        assert_eq!(r.in_order(100, b"abc"), Some(&b""[..]), "retransmitted");
        assert_eq!(r.in_order(101, b"bcde"), Some(&b"de"[..]), "overlapping");
        assert_eq!(r.in_order(110, b"x"), None, "a gap: push holds it");
        let mut out = Vec::new();
        assert_eq!(r.push(110, b"x", &mut out), Push::Held);
        assert_eq!(
            r.in_order(105, b"fghij"),
            None,
            "something is held: push drains it"
        );
        assert_eq!(r.push(105, b"fghij", &mut out), Push::Data);
        assert_eq!(out, b"fghijx");
        assert_eq!(r.in_order(111, b"y"), Some(&b"y"[..]));
    }

    #[test]
    fn reassembly_bounds_refuse_rather_than_skip() {
        let mut r = Reasm::default();
        r.syn(0);
        let mut out = Vec::new();
        for i in 0..MAX_HELD as u32 {
            assert_eq!(r.push(100 + i * 10, b"0123456789", &mut out), Push::Held);
        }
        assert_eq!(r.push(500, b"x", &mut out), Push::Refused, "too many held");
        assert_eq!(
            r.push(2 << 20, b"x", &mut out),
            Push::Refused,
            "too far ahead"
        );
        // The gap filled: everything comes out in order.
        assert_eq!(r.push(1, &[b'.'; 99], &mut out), Push::Data);
        assert_eq!(out.len(), 99 + 80);
        assert_eq!(r.held_bytes(), 0);
    }

    fn envelope(s: &mut Smtp, client: &str) -> Vec<(Envelope, String)> {
        let mut seen = Vec::new();
        s.client(client.as_bytes(), |e, p| {
            seen.push((e, String::from_utf8_lossy(p).into_owned()));
            false
        });
        seen
    }

    #[test]
    fn envelope_paths_with_any_case_brackets_and_parameters() {
        let mut s = Smtp::new(true);
        let seen = envelope(
            &mut s,
            "EHLO x\r\nmail from:<a@b.test> SIZE=100\r\nRcpt To: <C@EXAMPLE.COM>\r\nRCPT TO:d@example.com NOTIFY=NEVER\nRCPT  TO :<e@f>\r\nRCPTTO:<no@x>\r\n",
        );
        assert_eq!(
            seen,
            [
                (Envelope::MailFrom, "<a@b.test>".to_string()),
                (Envelope::RcptTo, "<C@EXAMPLE.COM>".to_string()),
                (Envelope::RcptTo, "d@example.com".to_string()),
                (Envelope::RcptTo, "<e@f>".to_string()),
            ]
        );
        assert_eq!(domain(b"<C@EXAMPLE.COM>"), Some(&b"EXAMPLE.COM"[..]));
        assert_eq!(domain(b"<>"), None);
        assert_eq!(domain(b"<@relay:u@d.test>"), Some(&b"d.test"[..]));
    }

    #[test]
    fn lines_split_anywhere_are_joined() {
        let mut s = Smtp::new(false);
        let text = "RCPT TO:<victim@example.com>\r\n";
        for cut in 0..text.len() {
            let mut seen = envelope(&mut s, &text[..cut]);
            seen.extend(envelope(&mut s, &text[cut..]));
            assert_eq!(seen.len(), 1, "cut at {cut}");
            assert_eq!(seen[0].1, "<victim@example.com>");
        }
    }

    /// Client and server bytes in session order: `C:` lines are the client's, `S:` the
    /// server's. Returns the envelope paths seen.
    fn session(s: &mut Smtp, parts: &[(&str, &str)]) -> Vec<String> {
        let mut seen = Vec::new();
        for (who, bytes) in parts {
            if *who == "C" {
                seen.extend(envelope(s, bytes).into_iter().map(|(_, p)| p));
            } else {
                s.server(bytes.as_bytes());
            }
        }
        seen
    }

    #[test]
    fn body_after_accepted_data_is_skipped_and_commands_follow() {
        let mut s = Smtp::new(true);
        s.server(b"220 hi\r\n");
        envelope(&mut s, "MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\n");
        s.server(b"250 ok\r\n250 ok\r\n");
        assert!(!s.in_body());
        s.server(b"354 go\r\n");
        assert!(s.in_body(), "DATA accepted: a body follows");
        assert!(!s.opaque(), "a plaintext session never ends its reading");
        let body =
            "To: <x@example.com>\r\nRCPT TO:<y@example.com>\r\n..dot\r\n.\r\nRCPT TO:<after@z>\r\n";
        assert_eq!(
            envelope(&mut s, body),
            [(Envelope::RcptTo, "<after@z>".to_string())]
        );
        // An empty body: ".\r\n" right after 354.
        let mut s = Smtp::new(false);
        envelope(&mut s, "DATA\r\n");
        s.server(b"354 go\r\n");
        assert_eq!(envelope(&mut s, ".\r\nRCPT TO:<n@x>\r\n").len(), 1);
    }

    #[test]
    fn every_transaction_of_a_session_is_read() {
        let clean = "MAIL FROM:<a@b.test>\r\nRCPT TO:<c@d.test>\r\nDATA\r\n";
        let ok3 = "250 ok\r\n250 ok\r\n354 go\r\n";
        // A second transaction after a finished DATA, a fourth after three, and after RSET.
        let mut s = Smtp::new(true);
        let mut parts = vec![
            ("S", "220 hi\r\n"),
            ("C", "EHLO x\r\n"),
            ("S", "250 hi\r\n"),
        ];
        for _ in 0..3 {
            parts.extend([
                ("C", clean),
                ("S", ok3),
                ("C", "Subject: x\r\n\r\nhi\r\n.\r\n"),
            ]);
            parts.push(("S", "250 queued\r\n"));
        }
        parts.extend([("C", "RSET\r\n"), ("S", "250 reset\r\n")]);
        parts.extend([("C", "MAIL FROM:<e@f.test>\r\nRCPT TO:<v@example.com>\r\n")]);
        let seen = session(&mut s, &parts);
        assert_eq!(seen.len(), 8, "{seen:?}");
        assert_eq!(seen[7], "<v@example.com>");

        // The next envelope pipelined in the same segment as the end of data, before any reply.
        let mut s = Smtp::new(true);
        let seen = session(
            &mut s,
            &[
                ("S", "220 hi\r\n"),
                ("C", clean),
                ("S", ok3),
                (
                    "C",
                    "hello\r\n.\r\nMAIL FROM:<x@y>\r\nRCPT TO:<v@example.com>\r\nDATA\r\n",
                ),
                ("S", "250 queued\r\n250 ok\r\n250 ok\r\n354 go\r\n"),
                ("C", "RCPT TO:<in@body.test>\r\n.\r\n"),
                ("S", "250 queued\r\n"),
                ("C", "QUIT\r\n"),
            ],
        );
        assert_eq!(
            seen,
            ["<a@b.test>", "<c@d.test>", "<x@y>", "<v@example.com>"]
        );
        assert!(
            !s.in_body(),
            "the replies stayed paired: the second body ended"
        );

        // ... or in the next segment, before the server's 250 to the end of data.
        let mut s = Smtp::new(false);
        let seen = session(
            &mut s,
            &[
                ("C", "DATA\r\n"),
                ("S", "354 go\r\n"),
                ("C", "body\r\n.\r\n"),
                ("C", "MAIL FROM:<x@y>\r\nRCPT TO:<v@example.com>\r\n"),
            ],
        );
        assert_eq!(seen, ["<x@y>", "<v@example.com>"]);

        // After BDAT ... LAST, and after a refused DATA.
        let mut s = Smtp::new(false);
        let seen = session(
            &mut s,
            &[
                (
                    "C",
                    "MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nBDAT 5 LAST\r\nhello",
                ),
                ("S", "250 ok\r\n250 ok\r\n250 ok\r\n"),
                ("C", "MAIL FROM:<a@b>\r\nRCPT TO:<v@example.com>\r\n"),
            ],
        );
        assert_eq!(seen.last().unwrap(), "<v@example.com>");
        let mut s = Smtp::new(false);
        let seen = session(
            &mut s,
            &[
                ("C", "MAIL FROM:<a@b>\r\nDATA\r\n"),
                ("S", "250 ok\r\n503 no recipients\r\n"),
                ("C", "RCPT TO:<v@example.com>\r\n"),
            ],
        );
        assert_eq!(seen.last().unwrap(), "<v@example.com>");
    }

    /// A body after an accepted DATA, in two segments cut at `cut`: the paths seen, the events.
    fn body_cut_at(body: &str, cut: usize) -> (Vec<(Envelope, String)>, SmtpEvents) {
        let mut s = Smtp::new(false);
        session(&mut s, &[("C", "DATA\r\n"), ("S", "354 go\r\n")]);
        let mut seen = envelope(&mut s, &body[..cut]);
        seen.extend(envelope(&mut s, &body[cut..]));
        (seen, s.take_events())
    }

    #[test]
    fn only_crlf_dot_crlf_ends_data_split_anywhere() {
        // Bare-LF and bare-CR dot lines are body text: the RCPT after them is not a command.
        for fake in [
            "\n.\n",
            "\r\n.\n",
            "\n.\r\n",
            "\r.\r",
            "\r\n.\r",
            "\r\n.\r\r\n",
        ] {
            let body = format!(
                "line one{fake}RCPT TO:<v@example.com>\r\nmore\r\n.\r\nRCPT TO:<after@z>\r\n"
            );
            for cut in 0..body.len() {
                let (seen, events) = body_cut_at(&body, cut);
                assert_eq!(
                    seen,
                    [(Envelope::RcptTo, "<after@z>".to_string())],
                    "{fake:?} cut at {cut}"
                );
                assert!(events.bare_newlines >= 1, "{fake:?}");
            }
        }
        // The real end, split at every byte of CR LF . CR LF.
        let body = "text\r\n.\r\nRCPT TO:<v@example.com>\r\n";
        for cut in 0..body.len() {
            let (seen, events) = body_cut_at(body, cut);
            assert_eq!(seen.len(), 1, "cut at {cut}");
            assert_eq!(events.bare_newlines, 0);
        }
    }

    #[test]
    fn a_reply_inside_a_body_brings_the_reader_back_to_commands() {
        // An MTA that ends DATA at a bare LF says so in its replies.
        let mut s = Smtp::new(false);
        let seen = session(
            &mut s,
            &[
                ("C", "DATA\r\n"),
                ("S", "354 go\r\n"),
                ("C", "x\n.\n"),
                ("S", "250 queued\r\n"),
                ("C", "RCPT TO:<v@example.com>\r\n"),
            ],
        );
        assert_eq!(seen, ["<v@example.com>"]);
        assert_eq!(s.take_events().resyncs, 1);
    }

    #[test]
    fn a_body_sent_before_the_354_is_read_as_the_server_reads_it() {
        // Not waiting for 354 is a protocol error; such bytes are read as commands (more
        // inspection). If they held the end of data, the server is back on commands after the
        // 354 too, and so is the reader.
        let mut s = Smtp::new(false);
        let seen = session(
            &mut s,
            &[
                ("C", "DATA\r\nx\r\n.\r\n"),
                ("S", "354 go\r\n250 queued\r\n"),
                ("C", "RCPT TO:<v@example.com>\r\n"),
            ],
        );
        assert_eq!(seen, ["<v@example.com>"]);
        // If they did not, the rest is body.
        let mut s = Smtp::new(false);
        let seen = session(
            &mut s,
            &[
                ("C", "DATA\r\nSubject: x\r\n"),
                ("S", "354 go\r\n"),
                ("C", "RCPT TO:<in@body>\r\n.\r\n"),
            ],
        );
        assert!(seen.is_empty(), "{seen:?}");
        assert!(!s.in_body());
    }

    #[test]
    fn refused_data_does_not_hide_later_commands() {
        let mut s = Smtp::new(true);
        s.server(b"220 hi\r\n");
        envelope(&mut s, "MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\n");
        s.server(b"250 ok\r\n550 no such user\r\n554 no valid recipients\r\n");
        assert!(!s.in_body());
        assert_eq!(envelope(&mut s, "RCPT TO:<e@example.com>\r\n").len(), 1);
    }

    #[test]
    fn multiline_replies_and_pipelining() {
        let mut s = Smtp::new(true);
        envelope(
            &mut s,
            "EHLO x\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\n",
        );
        s.server(b"220 hi\r\n250-x\r\n250-PIPELINING\r\n250 SIZE\r\n250 ok\r\n25");
        s.server(b"0 ok\r\n");
        assert!(!s.in_body());
        s.server(b"354 go\r\n");
        assert!(s.in_body());
    }

    /// A server that offered CHUNKING reads a BDAT's chunk as data whatever it answers (RFC
    /// 3030: a refusal discards the chunk); the chunk may share a segment with the next command.
    #[test]
    fn bdat_chunks_are_data_where_the_server_offered_chunking() {
        let mut s = Smtp::new(true);
        s.server(b"220 hi\r\n");
        envelope(&mut s, "EHLO x\r\n");
        s.server(b"250-mx\r\n250-PIPELINING\r\n250-chunking\r\n250 SIZE\r\n");
        let seen = envelope(
            &mut s,
            "MAIL FROM:<a@b>\r\nBDAT 25\r\nRCPT TO:<x@example.com>\r\nRCPT TO:<y@z>\r\nBDAT 0 LAST\r\n",
        );
        assert_eq!(seen.len(), 2, "the chunk's 25 bytes are data: {seen:?}");
        assert_eq!(seen[1].1, "<y@z>");
        // A bad BDAT size is no chunk.
        assert_eq!(envelope(&mut s, "BDAT x\r\nRCPT TO:<a@b>\r\n").len(), 1);
        // Pipelined: the chunk, then a command, in one segment.
        let seen = envelope(
            &mut s,
            "BDAT 10 LAST\r\n0123456789RCPT TO:<p@example.com>\r\n",
        );
        assert_eq!(seen.len(), 1, "{seen:?}");
        assert_eq!(seen[0].1, "<p@example.com>");
    }

    /// A server that did not offer CHUNKING refuses BDAT (`502`/`503`) and reads what follows
    /// as commands: so does the reader. And a new EHLO answered without it withdraws it.
    #[test]
    fn bdat_is_a_command_where_the_server_offered_no_chunking() {
        let mut s = Smtp::new(true);
        s.server(b"220 hi\r\n");
        envelope(&mut s, "EHLO x\r\n");
        s.server(b"250-mx\r\n250-PIPELINING\r\n250 SIZE\r\n");
        let seen = envelope(
            &mut s,
            "MAIL FROM:<a@b>\r\nBDAT 999999999999999999\r\nRCPT TO:<x@example.com>\r\n",
        );
        assert_eq!(seen.len(), 2, "{seen:?}");
        assert_eq!(seen[1].1, "<x@example.com>");
        // CHUNKING offered, then a second EHLO's answer without it.
        let mut s = Smtp::new(true);
        s.server(b"220 hi\r\n");
        envelope(&mut s, "EHLO x\r\n");
        s.server(b"250-mx\r\n250 CHUNKING\r\n");
        envelope(&mut s, "EHLO again\r\n");
        s.server(b"250 mx\r\n");
        assert_eq!(
            envelope(&mut s, "BDAT 5\r\nRCPT TO:<x@example.com>\r\n").len(),
            1
        );
        // A refused EHLO offers nothing; CHUNKINGX is not the keyword.
        let mut s = Smtp::new(true);
        s.server(b"220 hi\r\n");
        envelope(&mut s, "EHLO x\r\n");
        s.server(b"250-mx\r\n250 CHUNKINGX\r\n");
        assert_eq!(
            envelope(&mut s, "BDAT 5\r\nRCPT TO:<x@example.com>\r\n").len(),
            1
        );
        // A reader that never saw the greeting's answer knows no CHUNKING: reads commands.
        let mut s = Smtp::new(false);
        assert_eq!(
            envelope(&mut s, "BDAT 5\r\nRCPT TO:<x@example.com>\r\n").len(),
            1
        );
    }

    #[test]
    fn starttls_accepted_makes_the_rest_opaque() {
        let mut s = Smtp::new(false);
        envelope(&mut s, "STARTTLS\r\n");
        s.server(b"220 go ahead\r\n");
        assert!(s.opaque());
        assert!(envelope(&mut s, "RCPT TO:<a@example.com>\r\n").is_empty());
        let mut s = Smtp::new(false);
        envelope(&mut s, "STARTTLS\r\n");
        s.server(b"454 TLS not available\r\n");
        assert!(!s.opaque());
        assert_eq!(envelope(&mut s, "RCPT TO:<a@example.com>\r\n").len(), 1);
        // A command pipelined after STARTTLS (not allowed) is still read.
        let mut s = Smtp::new(false);
        assert_eq!(
            envelope(&mut s, "STARTTLS\r\nRCPT TO:<a@example.com>\r\n").len(),
            1
        );
    }

    #[test]
    fn overlong_lines_are_cut_not_grown() {
        let mut s = Smtp::new(false);
        let long = format!("RCPT TO:<a@example.com>{}\r\n", " ".repeat(3 * MAX_LINE));
        assert_eq!(envelope(&mut s, &long).len(), 1);
        assert!(s.line_capacity() <= 256);
    }

    proptest::proptest! {
        /// Against a plain map, over keys enough to share the front caches' places (4,096
        /// and 1,024): the table finds exactly the flows inserted and not removed since,
        /// however slots are freed and reused.
        #[test]
        fn the_front_caches_never_answer_for_another_flow(
            ops in proptest::collection::vec((0u8..3, 0u16..3000), 1..3000)
        ) {
            let now = Instant::from_secs(1);
            let key = |p: u16| {
                FlowKey::new("10.0.0.1".parse().unwrap(), p, "10.0.0.2".parse().unwrap(), 25)
            };
            let mut t = Flows::new(100_000, std::sync::Arc::new(FlowBudget::new(usize::MAX)));
            let mut model = std::collections::HashMap::new();
            for (n, (op, port)) in ops.into_iter().enumerate() {
                let k = key(port);
                match op {
                    0 if !model.contains_key(&port) => {
                        let mut f = Flow::new(now, None, true);
                        f.packets = n as u32;
                        proptest::prop_assert!(t.insert(k, f).is_none());
                        model.insert(port, n as u32);
                    }
                    1 => {
                        let gone = t.remove(&k).map(|f| f.packets);
                        proptest::prop_assert_eq!(gone, model.remove(&port));
                    }
                    _ => {
                        let found = t.peek(&k).map(|f| f.packets);
                        proptest::prop_assert_eq!(found, model.get(&port).copied());
                    }
                }
            }
            proptest::prop_assert_eq!(t.len(), model.len());
        }
    }

    #[test]
    fn lru_table_evicts_the_least_recently_seen() {
        let now = Instant::from_secs(1);
        let key = |p: u16| {
            FlowKey::new(
                "10.0.0.1".parse().unwrap(),
                p,
                "10.0.0.2".parse().unwrap(),
                25,
            )
        };
        let mut t = Flows::new(3, std::sync::Arc::new(FlowBudget::new(usize::MAX)));
        for p in 1..=3 {
            assert!(t.insert(key(p), Flow::new(now, None, true)).is_none());
        }
        t.get(&key(1)).unwrap().packets = 7; // 1 is now the most recent
        let evicted = t.insert(key(4), Flow::new(now, None, true));
        assert!(evicted.is_some());
        assert!(t.get(&key(2)).is_none(), "2 was the least recently seen");
        assert_eq!(t.get(&key(1)).unwrap().packets, 7);
        assert!(t.remove(&key(3)).is_some());
        assert_eq!(t.len(), 2);
        assert!(t.pop_oldest().is_some());
        assert!(t.pop_oldest().is_some());
        assert!(t.pop_oldest().is_none());
        assert!(t.is_empty());
    }
}
