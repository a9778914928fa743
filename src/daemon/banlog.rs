//! One log line per ban and unban, at info, rate-limited: a flood of new bans must not become a
//! flood of log lines. Up to [`BURST`] lines at once and [`PER_SECOND`] a second after that;
//! what is held back is counted, and the next line that is written says how many.

use super::*;
use crate::blacklist::{Ban, Banned, Change};
use crate::control::Names;

/// Lines written at once before the limit applies.
pub(super) const BURST: f64 = 20.0;
/// Lines a second after the burst.
pub(super) const PER_SECOND: f64 = 10.0;

/// A token bucket and the count of the lines it held back.
pub(super) struct BanLog {
    tokens: f64,
    last: std::time::Instant,
    held: u64,
    /// Lines held back since the daemon started.
    pub(super) held_total: u64,
}

impl BanLog {
    pub(super) fn new() -> BanLog {
        BanLog {
            tokens: BURST,
            last: std::time::Instant::now(),
            held: 0,
            held_total: 0,
        }
    }

    /// Writes `line` unless over the limit; returns whether it did.
    pub(super) fn line(&mut self, line: impl FnOnce() -> String) -> bool {
        let now = std::time::Instant::now();
        let dt = now.duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + dt * PER_SECOND).min(BURST);
        if self.tokens < 1.0 {
            self.held += 1;
            self.held_total += 1;
            return false;
        }
        self.tokens -= 1.0;
        let text = line();
        if self.held > 0 {
            info!(
                "{text} ({} ban/unban lines held back by the log's rate limit)",
                self.held
            );
            self.held = 0;
        } else {
            info!("{text}");
        }
        true
    }

    /// Says how many lines were held back, if any, even without a new line to carry it.
    pub(super) fn flush(&mut self) {
        if self.held > 0 {
            info!(
                "{} ban/unban lines held back by the log's rate limit (at most {BURST} at once, {PER_SECOND}/s)",
                self.held
            );
            self.held = 0;
        }
    }
}

/// The log line of a change, if it is one worth a line (strikes are at debug).
pub(super) fn change_line(
    change: &Change,
    lists: &Blacklist,
    rules: &Names,
    now: Instant,
) -> Option<String> {
    let name = |id: crate::blacklist::ListId| {
        lists
            .lists()
            .get(usize::from(id))
            .map_or("?", |l| l.name())
            .to_string()
    };
    match change {
        Change::Ban(id, ban, Banned::New) => Some(format!(
            "ban {} list={} rule={} for {} (offence {})",
            ban.key,
            name(*id),
            rule_name(ban, rules),
            human_duration(ban.expires_at.saturating_sub(now).secs()),
            ban.offences.max(1)
        )),
        Change::Ban(id, ban, Banned::Shared) => Some(format!(
            "ban {} list={} rule={} for {} (shared by the fleet)",
            ban.key,
            name(*id),
            rule_name(ban, rules),
            human_duration(ban.expires_at.saturating_sub(now).secs()),
        )),
        Change::Ban(_, _, Banned::Strike(_) | Banned::Renewed) => None,
        Change::Remove(id, key, by) => Some(format!(
            "unban {key} list={} ({})",
            name(*id),
            match by {
                crate::blacklist::By::Local => "removed: del, or now allowlisted",
                crate::blacklist::By::Fleet => "removed fleet-wide: del --fleet",
                crate::blacklist::By::Peer => "removed by a peer of the fleet",
            }
        )),
        Change::Flush(id, by) => Some(format!(
            "unban every source of list={} ({})",
            name(*id),
            match by {
                crate::blacklist::By::Local => "flushed by hand",
                crate::blacklist::By::Fleet => "flushed fleet-wide: flush --fleet",
                crate::blacklist::By::Peer => "flushed by a peer of the fleet",
            }
        )),
    }
}

/// The line of a ban that ended.
pub(super) fn ended_line(list: &str, ban: &Ban, rules: &Names) -> String {
    format!(
        "unban {} list={} rule={} (ended after {}, {} packets dropped)",
        ban.key,
        list,
        rule_name(ban, rules),
        human_duration(ban.expires_at.saturating_sub(ban.first_seen).secs()),
        ban.hits
    )
}

/// `"rule"`, or `by-hand`; with `@node` for a peer's ban.
fn rule_name(ban: &Ban, names: &Names) -> String {
    let (node, rule) = names.of(ban.rule);
    let rule = rule.map_or("by-hand".to_string(), |r| format!("{r:?}"));
    match node {
        Some(n) if crate::blacklist::peer_index(ban.rule).is_some() => format!("{rule}@{n}"),
        _ => rule,
    }
}

/// `86400` → `1d`, `5400` → `1h30m`, `42` → `42s`.
pub fn human_duration(secs: u64) -> String {
    if secs == 0 {
        return "0s".into();
    }
    let mut out = String::new();
    let (mut left, mut units) = (secs, 0);
    for (unit, size) in [("d", 86_400), ("h", 3_600), ("m", 60), ("s", 1)] {
        if left >= size {
            out.push_str(&format!("{}{unit}", left / size));
            left %= size;
            units += 1;
            // Two units are enough for a person.
            if units == 2 {
                break;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_like_a_person_writes_them() {
        assert_eq!(human_duration(86_400), "1d");
        assert_eq!(human_duration(5_400), "1h30m");
        assert_eq!(human_duration(42), "42s");
        assert_eq!(human_duration(90_061), "1d1h");
        assert_eq!(human_duration(0), "0s");
    }

    #[test]
    fn the_limit_holds_lines_back_and_counts_them() {
        let mut log = BanLog::new();
        let written = (0..100).filter(|_| log.line(|| "x".into())).count();
        assert!((20..=22).contains(&written), "{written}");
        assert_eq!(log.held_total, 100 - written as u64);
    }
}
