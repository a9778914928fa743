//! An SMTP session read from both sides: envelope paths out, bodies and chunks skipped.

use super::*;

/// The envelope command a path came from.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub enum Envelope {
    MailFrom,
    RcptTo,
}

/// A client command (or message end) awaiting the server's reply.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub(super) enum Cmd {
    Greeting = 0,
    Other = 1,
    Data = 2,
    Bdat = 3,
    StartTls = 4,
    /// The `CRLF.CRLF` that ended a message body (answered 250 or an error).
    EndOfData = 5,
    /// EHLO or HELO: its reply says whether the server offers CHUNKING.
    Hello = 6,
}

impl Cmd {
    fn from_bits(bits: u64) -> Cmd {
        match bits & 7 {
            0 => Cmd::Greeting,
            2 => Cmd::Data,
            3 => Cmd::Bdat,
            4 => Cmd::StartTls,
            5 => Cmd::EndOfData,
            6 => Cmd::Hello,
            _ => Cmd::Other,
        }
    }
}

/// What the client side is reading.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub(super) enum Phase {
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
pub(super) enum Eod {
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
pub(super) struct BodyScan {
    /// Bytes read (up to and including the terminator's LF, if found).
    used: usize,
    /// The terminator was found.
    done: bool,
    /// Bare LFs and bare CRs seen.
    bare: u32,
}

/// Scans body bytes from state `eod` for `CR LF . CR LF`; `eod` is left where the scan ended.
pub(super) fn body_end(bytes: &[u8], eod: &mut Eod) -> BodyScan {
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
pub(super) struct Pending {
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

    fn front(&self) -> Option<Cmd> {
        (self.len > 0).then(|| Cmd::from_bits(self.bits))
    }

    fn holds(&self, c: Cmd) -> bool {
        (0..u32::from(self.len)).any(|k| Cmd::from_bits(self.bits >> (3 * k)) == c)
    }
}

/// The client bytes since the last `DATA` line, read as a body would be, while that DATA awaits
/// its reply: if the server answers 354, they were body text, not commands.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub(super) enum Shadow {
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
    /// The server offered CHUNKING in its answer to the last EHLO: only then is a BDAT's chunk
    /// data (a server that does not know BDAT reads what follows as commands, and so do we).
    chunking: bool,
    /// The EHLO reply being read has a `CHUNKING` line; how much of the keyword the current
    /// reply line has matched (`CHUNKING_MATCHED`: all, then its end).
    chunking_offered: bool,
    kw: u8,
    events: SmtpEvents,
}

const CHUNKING: &[u8] = b"CHUNKING";
/// [`Smtp::kw`] once the whole keyword and the end of the word were seen.
const CHUNKING_MATCHED: u8 = CHUNKING.len() as u8 + 1;
/// [`Smtp::kw`] once the line can no longer be the keyword.
const KW_NO: u8 = u8::MAX;

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
            chunking: false,
            chunking_offered: false,
            kw: 0,
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
        } else if let Some(size) = bdat_size(line).filter(|_| self.chunking) {
            // The chunk follows the command at once, whatever the server answers: a server
            // that offered CHUNKING reads (and, refusing, discards) exactly `size` bytes
            // (RFC 3030). One that did not refuses the verb and reads what follows as commands.
            cmd = Cmd::Bdat;
            self.events.messages = self.events.messages.saturating_add(1);
            if size > 0 {
                self.phase = Phase::Chunk(size);
            }
        } else if verb(line, b"EHLO") || verb(line, b"HELO") {
            // A new greeting: what the server offers is what its answer to this one says.
            cmd = Cmd::Hello;
            self.chunking = false;
        }
        self.expect(cmd);
        (hit, cmd)
    }

    /// Reads server bytes (nothing once the session is opaque).
    pub fn server(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() && self.phase != Phase::Opaque {
            if self.rpos >= 4 {
                if self.kw != KW_NO && !self.desync && self.pending.front() == Some(Cmd::Hello) {
                    // A line of the EHLO reply: is it the CHUNKING keyword?
                    let b = bytes[0];
                    bytes = &bytes[1..];
                    if b == b'\n' {
                        self.end_reply_line();
                    } else {
                        self.keyword(b);
                    }
                    continue;
                }
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

    /// One byte of an EHLO reply line after its code: matches `CHUNKING` (any case), then the
    /// end of the word.
    fn keyword(&mut self, b: u8) {
        self.kw = match self.kw {
            k if usize::from(k) < CHUNKING.len()
                && b.to_ascii_uppercase() == CHUNKING[usize::from(k)] =>
            {
                k + 1
            }
            k if usize::from(k) == CHUNKING.len() && (b == b' ' || b == b'\r') => CHUNKING_MATCHED,
            CHUNKING_MATCHED => CHUNKING_MATCHED,
            _ => KW_NO,
        };
    }

    fn end_reply_line(&mut self) {
        let (rpos, code, ok, more) = (self.rpos, self.code, self.code_ok, self.more);
        let keyword = std::mem::take(&mut self.kw);
        self.rpos = 0;
        self.code = 0;
        self.code_ok = true;
        self.more = false;
        if rpos < 3 || !ok {
            return;
        }
        if code == 250 && !self.desync && self.pending.front() == Some(Cmd::Hello) {
            self.chunking_offered |=
                keyword == CHUNKING_MATCHED || (usize::from(keyword) == CHUNKING.len());
        }
        if more {
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
            Some(Cmd::Hello) => {
                self.chunking = code == 250 && std::mem::take(&mut self.chunking_offered);
                self.chunking_offered = false;
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
pub(super) fn trim(mut s: &[u8]) -> &[u8] {
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

pub(super) fn skip_blanks(s: &[u8]) -> &[u8] {
    let n = s.iter().take_while(|b| **b == b' ' || **b == b'\t').count();
    &s[n..]
}

/// `VERB1 [blanks] VERB2 [blanks] :` case-insensitively at the start of `line`: the rest.
pub(super) fn verb2<'a>(line: &'a [u8], v1: &[u8], v2: &[u8]) -> Option<&'a [u8]> {
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

/// Is `line` the command `v` (any case), alone or followed by a blank?
fn verb(line: &[u8], v: &[u8]) -> bool {
    line.get(..v.len())
        .is_some_and(|h| h.eq_ignore_ascii_case(v))
        && matches!(line.get(v.len()), None | Some(b' ' | b'\t'))
}

/// `BDAT <size> [LAST]`: the chunk size.
pub(super) fn bdat_size(line: &[u8]) -> Option<u64> {
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
