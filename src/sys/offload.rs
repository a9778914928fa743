//! Kernel offload: bans mirrored into ipsets, so that a banned source's packets —
//! its SYNs above all — are dropped by one `-m set` rule before they are queued.
//!
//! Two `hash:net` sets (`stringban-v4`, `stringban-v6`) with per-entry timeouts hold every
//! live ban with its remaining TTL (ipset caps a timeout at 2,147,483 s; the daemon's own list
//! still holds the ban after that). Changes are applied in batches through one `ipset restore`
//! per batch; a full resync flushes the sets and loads every ban. Reconciling: when a set has
//! disappeared (re-created, resynced) or lost most of its entries (flushed by hand: resynced).

use std::io::{self, Write};
use std::process::{Command, Stdio};

use crate::allow::Allowlist;
use crate::blacklist::{Ban, Blacklist, Change, Key};
use crate::sys::firewall::allow_set;
use crate::time::Instant;

/// The longest timeout ipset takes, in seconds.
pub const MAX_TIMEOUT: u64 = 2_147_483;

/// The two sets.
#[derive(Clone, Debug, Eq, PartialEq)]
pub struct Offload {
    pub v4: String,
    pub v6: String,
    /// `maxelem` of each set: the lists' total capacity, capped.
    pub maxelem: usize,
}

impl Offload {
    pub fn new(maxelem: usize) -> Offload {
        Offload {
            v4: "stringban-v4".into(),
            v6: "stringban-v6".into(),
            maxelem: maxelem.clamp(1024, 1 << 30),
        }
    }

    fn set_of(&self, key: &Key) -> &str {
        match key {
            Key::V4 { .. } => &self.v4,
            Key::V6 { .. } => &self.v6,
        }
    }

    /// The `ipset restore` line that adds `ban` at `now` (None once it has expired).
    pub fn add_line(&self, ban: &Ban, now: Instant) -> Option<String> {
        let left = ban.expires_at.saturating_sub(now).secs();
        (left > 0).then(|| {
            let (addr, prefix) = match ban.key {
                Key::V4 { prefix, .. } | Key::V6 { prefix, .. } => (ban.key.addr(), prefix),
            };
            format!(
                "add {} {addr}/{prefix} timeout {}\n",
                self.set_of(&ban.key),
                left.min(MAX_TIMEOUT)
            )
        })
    }

    /// The `ipset restore` lines of a change.
    pub fn change_lines(&self, change: &Change, now: Instant) -> String {
        match change {
            Change::Ban(_, ban, _) => self.add_line(ban, now).unwrap_or_default(),
            Change::Remove(_, key, _) => {
                let prefix = match key {
                    Key::V4 { prefix, .. } | Key::V6 { prefix, .. } => *prefix,
                };
                format!("del {} {}/{prefix}\n", self.set_of(key), key.addr())
            }
            // A list flushed: resync (other lists may still hold bans).
            Change::Flush(..) => String::new(),
        }
    }

    /// The `ipset restore` script that creates the sets (if missing): the bans', with
    /// timeouts, and beside each the allowlisted networks' ([`allow_set`]).
    pub fn create_script(&self) -> String {
        format!(
            "create {} hash:net family inet timeout 0 maxelem {m}\ncreate {} hash:net family inet6 timeout 0 maxelem {m}\n\
             create {} hash:net family inet\ncreate {} hash:net family inet6\n",
            self.v4,
            self.v6,
            allow_set(&self.v4),
            allow_set(&self.v6),
            m = self.maxelem
        )
    }

    /// The script that replaces the allow sets' members by `allow`'s networks (at start and
    /// on every reload), in one transaction.
    pub fn allow_script(&self, allow: &Allowlist) -> String {
        let (a4, a6) = (allow_set(&self.v4), allow_set(&self.v6));
        let mut script = format!("{}flush {a4}\nflush {a6}\n", self.create_script());
        for e in allow.entries() {
            let set = if e.cidr.addr().is_ipv4() { &a4 } else { &a6 };
            script.push_str(&format!(
                "add {set} {}/{}\n",
                e.cidr.addr(),
                e.cidr.prefix()
            ));
        }
        script
    }

    /// Creates the sets (if missing).
    pub fn setup(&self) -> Result<(), OffloadError> {
        restore(&self.create_script())
    }

    /// Flushes both sets and loads every live ban of `blacklist`: returns how many.
    pub fn resync(&self, blacklist: &Blacklist, now: Instant) -> Result<usize, OffloadError> {
        let mut script = self.create_script();
        script.push_str(&format!("flush {}\nflush {}\n", self.v4, self.v6));
        let mut n = 0;
        for l in blacklist.lists() {
            for ban in l.bans(now) {
                if let Some(line) = self.add_line(&ban, now) {
                    script.push_str(&line);
                    n += 1;
                }
            }
        }
        restore(&script).map(|()| n)
    }

    /// Entries in a set, or None when it does not exist.
    pub fn entries(&self, set: &str) -> Option<u64> {
        let out = Command::new("ipset")
            .args(["list", set, "-terse"])
            .stderr(Stdio::null())
            .output()
            .ok()?;
        if !out.status.success() {
            return None;
        }
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .find_map(|l| l.strip_prefix("Number of entries: "))
            .and_then(|n| n.trim().parse().ok())
    }

    /// Destroys the sets (after the rules that use them are gone).
    pub fn destroy(&self) {
        for set in [
            self.v4.clone(),
            self.v6.clone(),
            allow_set(&self.v4),
            allow_set(&self.v6),
        ] {
            let _ = Command::new("ipset")
                .args(["destroy", &set])
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// Why an `ipset` transaction failed.
#[derive(Debug)]
pub enum OffloadError {
    /// `ipset` could not be run, fed or waited for.
    Io {
        what: &'static str,
        source: io::Error,
    },
    /// It ran and refused the script.
    Refused(String),
}

impl std::fmt::Display for OffloadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OffloadError::Io { what, source } if *what == "running ipset" => {
                write!(f, "{what}: {source} (install the ipset package)")
            }
            OffloadError::Io { what, source } => write!(f, "{what}: {source}"),
            OffloadError::Refused(stderr) => write!(f, "ipset restore: {stderr}"),
        }
    }
}

impl std::error::Error for OffloadError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            OffloadError::Io { source, .. } => Some(source),
            OffloadError::Refused(_) => None,
        }
    }
}

/// Runs one `ipset restore -exist` with `script` on its standard input (one transaction).
pub fn restore(script: &str) -> Result<(), OffloadError> {
    if script.is_empty() {
        return Ok(());
    }
    let mut child = Command::new("ipset")
        .args(["restore", "-exist"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| OffloadError::Io {
            what: "running ipset",
            source,
        })?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(script.as_bytes())
            .map_err(|source| OffloadError::Io {
                what: "writing to ipset",
                source,
            })?;
    }
    let out = child
        .wait_with_output()
        .map_err(|source| OffloadError::Io {
            what: "ipset",
            source,
        })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(OffloadError::Refused(
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::time::Duration;

    /// The allow sets hold the allowlist's networks, replaced whole; the offload rule drops a
    /// banned source only outside them.
    #[test]
    fn allowlisted_networks_are_kept_out_of_the_kernel_drop() {
        let o = Offload::new(10);
        let allow = Allowlist::new(
            ["198.18.0.2/32", "2001:db8::/48"]
                .iter()
                .map(|c| crate::allow::Allowed {
                    cidr: c.parse().unwrap(),
                    origin: "test".into(),
                })
                .collect(),
        );
        let script = o.allow_script(&allow);
        assert!(
            script.contains("create stringban-v4-allow hash:net family inet\n"),
            "{script}"
        );
        assert!(script.contains("flush stringban-v4-allow\nflush stringban-v6-allow\n"));
        assert!(script.contains("add stringban-v4-allow 198.18.0.2/32\n"));
        assert!(script.contains("add stringban-v6-allow 2001:db8::/48\n"));
        let mut cfg = crate::sys::firewall::RulesConfig::new(vec![25], (0, 0));
        cfg.offload_sets = Some((o.v4.clone(), o.v6.clone()));
        let rules = crate::sys::firewall::script(&cfg, "iptables");
        assert!(
            rules.contains("-m set --match-set stringban-v4 src -m set '!' --match-set stringban-v4-allow src -j DROP"),
            "{rules}"
        );
    }

    #[test]
    fn restore_lines() {
        let o = Offload::new(10);
        assert_eq!(o.maxelem, 1024);
        let t = Instant::from_secs(1_000);
        let ban = Ban {
            key: Key::V4 {
                addr: 0xC612_0007,
                prefix: 32,
            },
            first_seen: t,
            last_seen: t,
            expires_at: t.saturating_add(Duration::from_secs(90)),
            hits: 0,
            rule: 0,
            strikes: 0,
            offences: 1,
        };
        assert_eq!(
            o.add_line(&ban, t).unwrap(),
            "add stringban-v4 198.18.0.7/32 timeout 90\n"
        );
        assert_eq!(
            o.add_line(&ban, t.saturating_add(Duration::from_secs(90))),
            None
        );
        let far = Ban {
            key: Key::V6 {
                addr: 0x2001_0db8_0000_0001 << 64,
                prefix: 64,
            },
            expires_at: t.saturating_add(Duration::from_secs(10 * MAX_TIMEOUT)),
            ..ban
        };
        assert_eq!(
            o.add_line(&far, t).unwrap(),
            format!("add stringban-v6 2001:db8:0:1::/64 timeout {MAX_TIMEOUT}\n")
        );
        assert_eq!(
            o.change_lines(&Change::Remove(0, far.key, crate::blacklist::By::Local), t),
            "del stringban-v6 2001:db8:0:1::/64\n"
        );
        assert!(
            o.create_script()
                .contains("create stringban-v6 hash:net family inet6 timeout 0 maxelem 1024\n")
        );
    }
}
