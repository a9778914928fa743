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
fn before(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) < 0
}

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
struct Held {
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

    /// Bytes held out of order.
    pub fn held_bytes(&self) -> usize {
        self.held.as_ref().map_or(0, |h| h.bytes)
    }

    /// Takes segment `seq`/`payload`, appending every byte that is now in order and new to
    /// `out`. A flow picked up mid-stream starts at its first segment.
    pub fn push(&mut self, seq: u32, payload: &[u8], out: &mut Vec<u8>) -> Push {
        if payload.is_empty() {
            return Push::Old;
        }
        if !self.known {
            self.known = true;
            self.next = seq;
        }
        if before(self.next, seq) {
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

/// The envelope command a path came from.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub enum Envelope {
    MailFrom,
    RcptTo,
}

/// A client command (or message end) awaiting the server's reply.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
enum Cmd {
    Greeting = 0,
    Other = 1,
    Data = 2,
    Bdat = 3,
    StartTls = 4,
    /// The `CRLF.CRLF` that ended a message body (answered 250 or an error).
    EndOfData = 5,
}

impl Cmd {
    fn from_bits(bits: u64) -> Cmd {
        match bits & 7 {
            0 => Cmd::Greeting,
            2 => Cmd::Data,
            3 => Cmd::Bdat,
            4 => Cmd::StartTls,
            5 => Cmd::EndOfData,
            _ => Cmd::Other,
        }
    }
}

/// What the client side is reading.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
enum Phase {
    Command,
    /// A message body; the state is how much of `CR LF . CR LF` was just seen ([`Eod`]).
    Body(Eod),
    /// The rest of a BDAT chunk.
    Chunk(u64),
    /// After STARTTLS was accepted: encrypted, nothing to read.
    Opaque,
}

/// Where a body stands with respect to its only terminator, `CR LF . CR LF` (RFC 5321
/// §4.1.1.4). A bare LF or CR is body text (the SMTP-smuggling ambiguity), never a line end.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
enum Eod {
    /// Inside a line.
    Mid,
    /// After a CR inside a line.
    Cr,
    /// At the start of a line (after CR LF; the DATA line's own CR LF counts).
    Bol,
    /// After CR LF `.`.
    Dot,
    /// After CR LF `.` CR.
    DotCr,
}

/// What [`body_end`] found in a run of body bytes.
#[derive(Clone, Copy, Debug, Default, Eq, PartialEq)]
struct BodyScan {
    /// Bytes read (up to and including the terminator's LF, if found).
    used: usize,
    /// The terminator was found.
    done: bool,
    /// Bare LFs and bare CRs seen.
    bare: u32,
}

/// Scans body bytes from state `eod` for `CR LF . CR LF`; `eod` is left where the scan ended.
fn body_end(bytes: &[u8], eod: &mut Eod) -> BodyScan {
    let mut scan = BodyScan::default();
    let mut i = 0;
    while i < bytes.len() {
        if *eod == Eod::Mid {
            // The common case: skip the rest of the line at memchr speed.
            match memchr::memchr2(b'\r', b'\n', &bytes[i..]) {
                Some(j) => i += j,
                None => break,
            }
        }
        let b = bytes[i];
        i += 1;
        *eod = match (*eod, b) {
            (Eod::DotCr, b'\n') => {
                scan.used = i;
                scan.done = true;
                *eod = Eod::Bol;
                return scan;
            }
            (Eod::Cr, b'\n') => Eod::Bol,
            (_, b'\n') => {
                scan.bare += 1;
                Eod::Mid
            }
            (Eod::Cr | Eod::DotCr, b'\r') => {
                scan.bare += 1;
                Eod::Cr
            }
            (Eod::Dot, b'\r') => Eod::DotCr,
            (_, b'\r') => Eod::Cr,
            (Eod::Bol, b'.') => Eod::Dot,
            (Eod::Cr | Eod::DotCr, _) => {
                scan.bare += 1;
                Eod::Mid
            }
            _ => Eod::Mid,
        };
    }
    scan.used = bytes.len();
    scan
}

/// Commands awaiting a reply, oldest first, packed 3 bits each into a `u64` (up to
/// [`MAX_PENDING`]).
#[derive(Clone, Copy, Debug, Default)]
struct Pending {
    bits: u64,
    len: u8,
}

impl Pending {
    fn push(&mut self, c: Cmd) -> bool {
        if usize::from(self.len) >= MAX_PENDING {
            return false;
        }
        self.bits |= (c as u64) << (3 * u32::from(self.len));
        self.len += 1;
        true
    }

    fn pop(&mut self) -> Option<Cmd> {
        if self.len == 0 {
            return None;
        }
        let c = Cmd::from_bits(self.bits);
        self.bits >>= 3;
        self.len -= 1;
        Some(c)
    }

    fn holds(&self, c: Cmd) -> bool {
        (0..u32::from(self.len)).any(|k| Cmd::from_bits(self.bits >> (3 * k)) == c)
    }
}

/// The client bytes since the last `DATA` line, read as a body would be, while that DATA awaits
/// its reply: if the server answers 354, they were body text, not commands.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
enum Shadow {
    /// No DATA awaits its reply.
    Off,
    /// The body so far, had the DATA been accepted when it was sent.
    On(Eod),
    /// They already hold a `CR LF . CR LF`.
    Ended,
}

/// Counters a session adds to; the engine takes them after each segment ([`Smtp::take_events`]).
#[derive(Clone, Copy, Debug, Default, Eq, PartialEq)]
pub struct SmtpEvents {
    /// Bare LFs and CRs inside message bodies (never taken as line ends).
    pub bare_newlines: u32,
    /// Server replies that came while a body was being read: the server ended the data where
    /// stringban did not see `CRLF.CRLF` (an MTA that takes a bare LF as a line end); the reader
    /// followed the server back to commands.
    pub resyncs: u32,
    /// Message bodies ended by `CRLF.CRLF`, and BDAT chunks.
    pub messages: u32,
}

/// An SMTP session followed from both sides, every transaction to its end. See the module
/// documentation.
#[derive(Clone, Debug)]
pub struct Smtp {
    phase: Phase,
    /// A partial command line (only while a line spans segments).
    line: Vec<u8>,
    pending: Pending,
    /// Replies can no longer be matched to commands (too many pending, or a gap).
    desync: bool,
    shadow: Shadow,
    /// Server reply line: bytes seen in the current line (saturating at 4) and its code.
    rpos: u8,
    code: u16,
    code_ok: bool,
    more: bool,
    events: SmtpEvents,
}

impl Smtp {
    /// A session; `from_start` when its SYN was seen (the server's greeting comes first).
    pub fn new(from_start: bool) -> Smtp {
        let mut pending = Pending::default();
        if from_start {
            pending.push(Cmd::Greeting);
        }
        Smtp {
            phase: Phase::Command,
            line: Vec::new(),
            pending,
            desync: false,
            shadow: Shadow::Off,
            rpos: 0,
            code: 0,
            code_ok: true,
            more: false,
            events: SmtpEvents::default(),
        }
    }

    /// Is the rest of the session opaque (STARTTLS accepted)? Only then may it bypass: a
    /// plaintext session can start another transaction after any message.
    pub fn opaque(&self) -> bool {
        self.phase == Phase::Opaque
    }

    /// Is a message body being read?
    pub fn in_body(&self) -> bool {
        matches!(self.phase, Phase::Body(_) | Phase::Chunk(_))
    }

    /// The counters since the last call, reset.
    pub fn take_events(&mut self) -> SmtpEvents {
        std::mem::take(&mut self.events)
    }

    /// Bytes allocated for a partial command line.
    pub fn line_capacity(&self) -> usize {
        self.line.capacity()
    }

    /// The server's stream had a gap: its replies can no longer be matched to commands (a 354,
    /// which only ever answers DATA, still starts a body).
    pub fn desync(&mut self) {
        self.desync = true;
        self.pending = Pending::default();
    }

    /// Reads client bytes. For each complete `MAIL FROM` / `RCPT TO` line calls `check` with its
    /// path; returns true as soon as `check` does (the rest of `bytes` is then left unread).
    pub fn client(
        &mut self,
        mut bytes: &[u8],
        mut check: impl FnMut(Envelope, &[u8]) -> bool,
    ) -> bool {
        while !bytes.is_empty() {
            match self.phase {
                Phase::Opaque => return false,
                Phase::Chunk(left) => {
                    let n = (left.min(bytes.len() as u64)) as usize;
                    bytes = &bytes[n..];
                    let left = left - n as u64;
                    self.phase = if left == 0 {
                        Phase::Command
                    } else {
                        Phase::Chunk(left)
                    };
                }
                Phase::Body(mut eod) => {
                    let scan = body_end(bytes, &mut eod);
                    bytes = &bytes[scan.used..];
                    self.events.bare_newlines = self.events.bare_newlines.saturating_add(scan.bare);
                    if scan.done {
                        self.phase = Phase::Command;
                        self.events.messages = self.events.messages.saturating_add(1);
                        self.expect(Cmd::EndOfData);
                    } else {
                        self.phase = Phase::Body(eod);
                    }
                }
                Phase::Command => {
                    let Some(i) = memchr(b'\n', bytes) else {
                        self.feed_shadow(bytes);
                        let room = MAX_LINE.saturating_sub(self.line.len());
                        self.line.extend_from_slice(&bytes[..bytes.len().min(room)]);
                        return false;
                    };
                    let (hit, cmd) = if self.line.is_empty() {
                        self.command(&bytes[..i], &mut check)
                    } else {
                        let room = MAX_LINE.saturating_sub(self.line.len());
                        let part = &bytes[..i];
                        self.line.extend_from_slice(&part[..part.len().min(room)]);
                        let line = std::mem::take(&mut self.line);
                        self.command(&line, &mut check)
                    };
                    if cmd == Cmd::Data {
                        // The body, if the server accepts, starts after this line.
                        self.shadow = Shadow::On(Eod::Bol);
                    } else {
                        self.feed_shadow(&bytes[..=i]);
                    }
                    bytes = &bytes[i + 1..];
                    if hit {
                        return true;
                    }
                }
            }
        }
        false
    }

    /// Reads `bytes` (already read as commands) into the shadow body of an unanswered DATA.
    fn feed_shadow(&mut self, bytes: &[u8]) {
        if let Shadow::On(mut eod) = self.shadow {
            self.shadow = if body_end(bytes, &mut eod).done {
                Shadow::Ended
            } else {
                Shadow::On(eod)
            };
        }
    }

    /// Records that the server will answer `cmd`.
    fn expect(&mut self, cmd: Cmd) {
        if !self.desync && !self.pending.push(cmd) {
            self.desync();
        }
    }

    fn command(
        &mut self,
        line: &[u8],
        check: &mut impl FnMut(Envelope, &[u8]) -> bool,
    ) -> (bool, Cmd) {
        let line = trim(&line[..line.len().min(MAX_LINE)]);
        let mut cmd = Cmd::Other;
        let mut hit = false;
        if let Some(arg) = verb2(line, b"MAIL", b"FROM") {
            hit = check(Envelope::MailFrom, path(arg));
        } else if let Some(arg) = verb2(line, b"RCPT", b"TO") {
            hit = check(Envelope::RcptTo, path(arg));
        } else if line.eq_ignore_ascii_case(b"DATA") {
            cmd = Cmd::Data;
        } else if line.eq_ignore_ascii_case(b"STARTTLS") {
            cmd = Cmd::StartTls;
        } else if let Some(size) = bdat_size(line) {
            // The chunk follows the command at once, whatever the server answers.
            cmd = Cmd::Bdat;
            self.events.messages = self.events.messages.saturating_add(1);
            if size > 0 {
                self.phase = Phase::Chunk(size);
            }
        }
        self.expect(cmd);
        (hit, cmd)
    }

    /// Reads server bytes (nothing once the session is opaque).
    pub fn server(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() && self.phase != Phase::Opaque {
            if self.rpos >= 4 {
                // Past the code: skip to the end of the line.
                match memchr(b'\n', bytes) {
                    Some(i) => {
                        bytes = &bytes[i + 1..];
                        self.end_reply_line();
                    }
                    None => return,
                }
                continue;
            }
            let b = bytes[0];
            bytes = &bytes[1..];
            if b == b'\n' {
                self.end_reply_line();
                continue;
            }
            match self.rpos {
                0..=2 if b.is_ascii_digit() => self.code = self.code * 10 + u16::from(b - b'0'),
                0..=2 => self.code_ok = false,
                _ => self.more = b == b'-',
            }
            self.rpos += 1;
        }
    }

    fn end_reply_line(&mut self) {
        let (rpos, code, ok, more) = (self.rpos, self.code, self.code_ok, self.more);
        self.rpos = 0;
        self.code = 0;
        self.code_ok = true;
        self.more = false;
        if rpos < 3 || !ok || more {
            return;
        }
        if let Phase::Body(_) = self.phase {
            // A server says nothing inside a body: it has ended the data where we saw no
            // CRLF.CRLF. Follow it back to commands (more inspection, never less).
            self.phase = Phase::Command;
            self.events.resyncs = self.events.resyncs.saturating_add(1);
            return;
        }
        let cmd = if self.desync {
            // 354 answers nothing but DATA.
            (code == 354).then_some(Cmd::Data)
        } else {
            self.pending.pop()
        };
        match cmd {
            Some(Cmd::Data) if code == 354 => self.data_accepted(),
            // A refused DATA: what followed it was commands; a later DATA keeps its shadow.
            Some(Cmd::Data) if !self.pending.holds(Cmd::Data) => self.shadow = Shadow::Off,
            Some(Cmd::StartTls) if code == 220 => {
                self.phase = Phase::Opaque;
                self.line = Vec::new();
            }
            _ => {}
        }
    }

    /// DATA answered 354: what the client sent after the DATA line is the body.
    fn data_accepted(&mut self) {
        let shadow = std::mem::replace(&mut self.shadow, Shadow::Off);
        if self.phase != Phase::Command {
            return;
        }
        if self.pending.holds(Cmd::Data) {
            // Another DATA was sent before this one was answered: where the body starts is
            // unclear, so keep reading commands (more inspection) and stop pairing replies.
            self.desync();
            return;
        }
        match shadow {
            // A conforming client waits for the 354; one that did not has already ended its
            // body: the server reads what followed as commands, and so do we (already did).
            Shadow::Ended => self.desync(),
            Shadow::On(eod) => {
                self.pending = Pending::default();
                self.line.clear();
                self.phase = Phase::Body(eod);
            }
            // A flow picked up mid-stream (or desynchronized) that saw no DATA line.
            Shadow::Off => {
                self.pending = Pending::default();
                let eod = if self.line.is_empty() {
                    Eod::Bol
                } else {
                    Eod::Mid
                };
                self.line.clear();
                self.phase = Phase::Body(eod);
            }
        }
    }
}

/// Trims ASCII whitespace (and the CR) from both ends.
fn trim(mut s: &[u8]) -> &[u8] {
    while let [first, rest @ ..] = s {
        if first.is_ascii_whitespace() {
            s = rest;
        } else {
            break;
        }
    }
    while let [rest @ .., last] = s {
        if last.is_ascii_whitespace() {
            s = rest;
        } else {
            break;
        }
    }
    s
}

fn skip_blanks(s: &[u8]) -> &[u8] {
    let n = s.iter().take_while(|b| **b == b' ' || **b == b'\t').count();
    &s[n..]
}

/// `VERB1 [blanks] VERB2 [blanks] :` case-insensitively at the start of `line`: the rest.
fn verb2<'a>(line: &'a [u8], v1: &[u8], v2: &[u8]) -> Option<&'a [u8]> {
    let head = line.get(..v1.len())?;
    if !head.eq_ignore_ascii_case(v1) {
        return None;
    }
    let rest = skip_blanks(&line[v1.len()..]);
    if rest.len() == line.len() - v1.len() {
        return None; // no blank between the words
    }
    let head = rest.get(..v2.len())?;
    if !head.eq_ignore_ascii_case(v2) {
        return None;
    }
    let rest = skip_blanks(&rest[v2.len()..]);
    rest.strip_prefix(b":")
}

/// The path of a MAIL/RCPT argument: `<...>` (brackets included), or up to the first blank;
/// parameters such as `SIZE=` after it are left out.
pub fn path(arg: &[u8]) -> &[u8] {
    let arg = skip_blanks(arg);
    if arg.first() == Some(&b'<') {
        match memchr(b'>', arg) {
            Some(i) => &arg[..=i],
            None => arg,
        }
    } else {
        let end = arg
            .iter()
            .position(|b| *b == b' ' || *b == b'\t')
            .unwrap_or(arg.len());
        &arg[..end]
    }
}

/// The domain of a path (after its last `@`, brackets and blanks removed), if any.
pub fn domain(path: &[u8]) -> Option<&[u8]> {
    let p = path.strip_prefix(b"<").unwrap_or(path);
    let p = p.strip_suffix(b">").unwrap_or(p);
    let at = p.iter().rposition(|b| *b == b'@')?;
    let d = trim(&p[at + 1..]);
    (!d.is_empty()).then_some(d)
}

/// `BDAT <size> [LAST]`: the chunk size.
fn bdat_size(line: &[u8]) -> Option<u64> {
    let head = line.get(..4)?;
    if !head.eq_ignore_ascii_case(b"BDAT") {
        return None;
    }
    let rest = skip_blanks(&line[4..]);
    if rest.len() == line.len() - 4 {
        return None;
    }
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    if digits == 0 || digits > 18 {
        return None;
    }
    let after = &rest[digits..];
    if !(after.is_empty() || after[0] == b' ' || after[0] == b'\t') {
        return None;
    }
    std::str::from_utf8(&rest[..digits]).ok()?.parse().ok()
}

/// A flow, named from the client's side: client address and port, server address and port.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub struct FlowKey {
    client: [u8; 16],
    server: [u8; 16],
    cport: u16,
    sport: u16,
}

fn octets(a: IpAddr) -> [u8; 16] {
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

struct Slot {
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

    #[test]
    fn bdat_chunks_are_skipped_whatever_the_reply() {
        let mut s = Smtp::new(false);
        let seen = envelope(
            &mut s,
            "MAIL FROM:<a@b>\r\nBDAT 25\r\nRCPT TO:<x@example.com>\r\nRCPT TO:<y@z>\r\nBDAT 0 LAST\r\n",
        );
        assert_eq!(seen.len(), 2, "the chunk's 25 bytes are data: {seen:?}");
        assert_eq!(seen[1].1, "<y@z>");
        // A bad BDAT size is no chunk.
        let mut s = Smtp::new(false);
        assert_eq!(envelope(&mut s, "BDAT x\r\nRCPT TO:<a@b>\r\n").len(), 1);
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
        let mut t = Flows::new(3);
        for p in 1..=3 {
            assert!(t.insert(key(p), Flow::new(now, None)).is_none());
        }
        t.get(&key(1)).unwrap().packets = 7; // 1 is now the most recent
        let evicted = t.insert(key(4), Flow::new(now, None));
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
