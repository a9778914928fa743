//! Time as plain numbers. The core never reads a clock: every shell passes `now` in.
//!
//! [`Instant`] counts microseconds since the Unix epoch. The replay shell takes it from packet
//! timestamps; the live shell from the system clock. Because it is wall-clock based, a ban's
//! expiry survives a restart unchanged (issue: durable blacklist).

use std::fmt;

/// A point in time: microseconds since 1970-01-01T00:00:00Z.
#[derive(Clone, Copy, Debug, Default, Eq, Hash, Ord, PartialEq, PartialOrd)]
pub struct Instant(u64);

impl Instant {
    /// The Unix epoch.
    pub const ZERO: Instant = Instant(0);

    pub const fn from_micros(micros: u64) -> Instant {
        Instant(micros)
    }

    pub const fn from_secs(secs: u64) -> Instant {
        Instant(secs.saturating_mul(1_000_000))
    }

    pub const fn micros(self) -> u64 {
        self.0
    }

    /// Whole seconds since the epoch.
    pub const fn secs(self) -> u64 {
        self.0 / 1_000_000
    }

    /// Whole seconds since the epoch, saturating at `u32::MAX` (the year 2106).
    pub fn secs_u32(self) -> u32 {
        u32::try_from(self.0 / 1_000_000).unwrap_or(u32::MAX)
    }

    pub const fn saturating_add(self, d: Duration) -> Instant {
        Instant(self.0.saturating_add(d.0))
    }

    pub const fn saturating_sub(self, other: Instant) -> Duration {
        Duration(self.0.saturating_sub(other.0))
    }
}

/// A span of time in microseconds.
#[derive(Clone, Copy, Debug, Default, Eq, Hash, Ord, PartialEq, PartialOrd)]
pub struct Duration(u64);

impl Duration {
    pub const ZERO: Duration = Duration(0);

    pub const fn from_micros(micros: u64) -> Duration {
        Duration(micros)
    }

    pub const fn from_millis(millis: u64) -> Duration {
        Duration(millis.saturating_mul(1_000))
    }

    pub const fn from_secs(secs: u64) -> Duration {
        Duration(secs.saturating_mul(1_000_000))
    }

    pub const fn micros(self) -> u64 {
        self.0
    }

    pub const fn secs(self) -> u64 {
        self.0 / 1_000_000
    }
}

impl fmt::Display for Duration {
    /// The largest unit that divides the value: `24h`, `90s`, `1500ms`, `7us`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [(u64, &str); 6] = [
            (86_400_000_000, "d"),
            (3_600_000_000, "h"),
            (60_000_000, "m"),
            (1_000_000, "s"),
            (1_000, "ms"),
            (1, "us"),
        ];
        if self.0 == 0 {
            return f.write_str("0s");
        }
        for (size, unit) in UNITS {
            if self.0.is_multiple_of(size) {
                return write!(f, "{}{unit}", self.0 / size);
            }
        }
        unreachable!("every value is a multiple of 1us")
    }
}

/// Why a duration string was refused.
#[derive(Clone, Debug, Eq, PartialEq)]
pub struct BadDuration;

impl fmt::Display for BadDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("expected a duration such as 86400, 90s, 15m, 24h, 7d or 1h30m")
    }
}

/// Parses `86400` (seconds), `90s`, `500ms`, `15m`, `24h`, `7d`, `1w`, or a sum such as `1h30m`.
pub fn parse_duration(text: &str) -> Result<Duration, BadDuration> {
    let text = text.trim();
    if text.is_empty() {
        return Err(BadDuration);
    }
    if text.bytes().all(|b| b.is_ascii_digit()) {
        let secs: u64 = text.parse().map_err(|_| BadDuration)?;
        return Ok(Duration::from_secs(secs));
    }
    let mut total: u64 = 0;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(BadDuration);
        }
        let value: u64 = rest[..digits].parse().map_err(|_| BadDuration)?;
        rest = &rest[digits..];
        let unit_len = rest.bytes().take_while(u8::is_ascii_alphabetic).count();
        let micros_per = match &rest[..unit_len] {
            "us" => 1,
            "ms" => 1_000,
            "s" => 1_000_000,
            "m" => 60_000_000,
            "h" => 3_600_000_000,
            "d" => 86_400_000_000,
            "w" => 604_800_000_000,
            _ => return Err(BadDuration),
        };
        rest = &rest[unit_len..];
        let part = value.checked_mul(micros_per).ok_or(BadDuration)?;
        total = total.checked_add(part).ok_or(BadDuration)?;
    }
    Ok(Duration(total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units_and_sums() {
        assert_eq!(parse_duration("86400"), Ok(Duration::from_secs(86_400)));
        assert_eq!(parse_duration("24h"), Ok(Duration::from_secs(86_400)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5_400)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(7 * 86_400)));
        assert_eq!(parse_duration(" 2w "), Ok(Duration::from_secs(14 * 86_400)));
    }

    #[test]
    fn refuses_garbage() {
        for bad in [
            "",
            "h",
            "24x",
            "1.5h",
            "-3s",
            "24 h",
            "99999999999999999999",
        ] {
            assert_eq!(parse_duration(bad), Err(BadDuration), "{bad:?}");
        }
    }

    #[test]
    fn displays_largest_unit() {
        assert_eq!(Duration::from_secs(86_400).to_string(), "1d");
        assert_eq!(Duration::from_secs(5_400).to_string(), "90m");
        assert_eq!(Duration::from_millis(1_500).to_string(), "1500ms");
        assert_eq!(Duration::ZERO.to_string(), "0s");
    }

    #[test]
    fn seconds_saturate() {
        assert_eq!(Instant::from_micros(u64::MAX).secs_u32(), u32::MAX);
        assert_eq!(Instant::from_secs(1_700_000_000).secs_u32(), 1_700_000_000);
    }
}
