//! Text as a terminal or a log file may safely show it. Much of what stringban prints came from
//! strangers — a packet's bytes, a peer's node and rule names, a file's lines, a control
//! client's request — and a raw control character in it could forge a log line (a newline),
//! rewrite a terminal (`ESC]0;…`, `ESC[2J`) or reorder what a reader sees (bidi overrides).
//! So every log line goes out through [`Escaped`], and error messages through [`printable`]:
//! such characters are written as Rust escapes (`\n`, `\u{1b}`), the rest as is.

use std::borrow::Cow;
use std::io::{self, Write};

/// Must `c` be escaped? C0 and C1 controls and DEL (a tab excepted), and the invisible
/// direction marks and overrides.
fn hostile(c: char) -> bool {
    (c.is_control() && c != '\t')
        || matches!(c, '\u{061c}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// `text` with every [`hostile`] character escaped; borrowed when there is none.
pub fn printable(text: &str) -> Cow<'_, str> {
    if !text.chars().any(hostile) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if hostile(c) {
            out.extend(c.escape_debug());
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// A writer of log lines that escapes what each line holds: a write is one formatted event
/// (tracing's fmt layer writes each event at once), and only its final newline is kept raw.
/// Bytes that are not UTF-8 are written as U+FFFD.
#[derive(Debug)]
pub struct Escaped<W>(pub W);

impl<W: Write> Write for Escaped<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let (body, end) = match buf.split_last() {
            Some((b'\n', body)) => (body, "\n"),
            _ => (buf, ""),
        };
        let text = String::from_utf8_lossy(body);
        let line = printable(&text);
        if matches!((&text, &line), (Cow::Borrowed(_), Cow::Borrowed(_))) {
            self.0.write_all(buf)?;
        } else {
            self.0.write_all(format!("{line}{end}").as_bytes())?;
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn controls_are_escaped_and_the_rest_kept() {
        assert!(matches!(printable("mx1.example.com"), Cow::Borrowed(_)));
        assert_eq!(printable("a\tb"), "a\tb");
        assert_eq!(
            printable("mx\n2099-01-01T00:00:00Z INFO forged"),
            "mx\\n2099-01-01T00:00:00Z INFO forged"
        );
        assert_eq!(
            printable("\u{1b}]0;owned\u{7}\u{1b}[2J"),
            "\\u{1b}]0;owned\\u{7}\\u{1b}[2J"
        );
        assert_eq!(printable("x\u{9b}y\u{202e}z"), "x\\u{9b}y\\u{202e}z");
        assert_eq!(printable("é ü 例"), "é ü 例");
    }

    /// One event, one line: what a field held cannot start another line, and the event's own
    /// newline stays.
    #[test]
    fn a_log_line_stays_one_line() {
        let mut w = Escaped(Vec::new());
        w.write_all(b"share: refused node \"a\nb\x1b[2J\"\n")
            .unwrap();
        w.write_all(b"plain line\n").unwrap();
        w.write_all(b"bad utf8 \xff\n").unwrap();
        assert_eq!(
            String::from_utf8(w.0).unwrap(),
            "share: refused node \"a\\nb\\u{1b}[2J\"\nplain line\nbad utf8 \u{fffd}\n"
        );
    }
}
