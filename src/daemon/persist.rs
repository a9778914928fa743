//! The daemon's hold on its state directory when the disk misbehaves (docs/ARCHITECTURE.md, *Durable bans*).
//!
//! The blacklist in memory is the truth; the journal and the snapshot are its copy on disk.
//! When a write, an fsync or a snapshot fails (disk full, out of file descriptors, an I/O
//! error), the fault is logged at error level at once and shown in `stats` and the metrics,
//! and the failed step is retried with backoff:
//! - a snapshot that fails (the journal still good — say, out of descriptors: the journal's
//!   is already open) leaves the previous snapshot in place; changes keep going to the
//!   journal and being fsync'd, so nothing is pending longer than the fsync interval;
//! - a journal write or fsync that fails gives the journal up (its tail is unknown — after a
//!   failed fsync Linux may even have dropped the dirty pages); changes are counted as pending,
//!   and a full rewrite — a new snapshot of everything in memory, read back and checked, then
//!   a new journal — is retried. Until it succeeds the previous snapshot and journal stay as
//!   they were: a crash restores what was on disk when the fault began.
//!
//! When the retry succeeds every ban made meanwhile is on disk and the store is healthy again.

use std::io;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::{Duration as StdDuration, Instant as StdInstant, SystemTime, UNIX_EPOCH};

use tracing::{error, info};

use crate::blacklist::{Blacklist, Change};
use crate::store::Store;
use crate::time::Instant;

/// First retry after a fault, and the longest wait between two.
pub const FIRST_RETRY: StdDuration = StdDuration::from_millis(250);
pub const MAX_RETRY: StdDuration = StdDuration::from_secs(4);

/// The store's health, shared with `stats` and the metrics.
#[derive(Debug, Default)]
pub struct Health {
    enabled: AtomicBool,
    failing: AtomicBool,
    errors: AtomicU64,
    recoveries: AtomicU64,
    pending: AtomicU64,
    /// Unix seconds; 0: never.
    last_fsync: AtomicU64,
    last_snapshot: AtomicU64,
    failing_since: AtomicU64,
    last_error: Mutex<String>,
}

/// What [`Health`] shows, read at once.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Status {
    pub enabled: bool,
    pub healthy: bool,
    /// Write, fsync and snapshot failures (each failed retry counts).
    pub errors: u64,
    /// Faults that ended: everything in memory written again.
    pub recoveries: u64,
    /// Changes not yet known to be on disk (since the last fsync, or since the fault began).
    pub pending: u64,
    pub last_fsync: u64,
    pub last_snapshot: u64,
    pub failing_since: u64,
    pub last_error: String,
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Health {
    pub fn status(&self) -> Status {
        Status {
            enabled: self.enabled.load(Relaxed),
            healthy: !self.failing.load(Relaxed),
            errors: self.errors.load(Relaxed),
            recoveries: self.recoveries.load(Relaxed),
            pending: self.pending.load(Relaxed),
            last_fsync: self.last_fsync.load(Relaxed),
            last_snapshot: self.last_snapshot.load(Relaxed),
            failing_since: self.failing_since.load(Relaxed),
            last_error: self
                .last_error
                .lock()
                .map(|e| e.clone())
                .unwrap_or_default(),
        }
    }

    fn error(&self, what: &str) {
        self.errors.fetch_add(1, Relaxed);
        if let Ok(mut e) = self.last_error.lock() {
            *e = what.to_string();
        }
    }
}

/// A fault in progress.
#[derive(Debug)]
struct Fault {
    since: StdInstant,
    next_try: StdInstant,
    backoff: StdDuration,
    /// The journal still takes changes (only a snapshot failed).
    journal_ok: bool,
}

/// The store as the store thread drives it.
#[derive(Debug)]
pub struct Disk<'a> {
    store: Store,
    health: &'a Health,
    fault: Option<Fault>,
    pending: u64,
}

impl<'a> Disk<'a> {
    pub fn new(store: Store, health: &'a Health) -> Disk<'a> {
        health.enabled.store(true, Relaxed);
        let t = unix_now();
        health.last_fsync.store(t, Relaxed);
        health.last_snapshot.store(t, Relaxed);
        Disk {
            store,
            health,
            fault: None,
            pending: 0,
        }
    }

    pub fn failing(&self) -> bool {
        self.fault.is_some()
    }

    pub fn needs_compaction(&self) -> bool {
        self.store.needs_compaction()
    }

    fn set_pending(&mut self, n: u64) {
        self.pending = n;
        self.health.pending.store(n, Relaxed);
    }

    fn journal_ok(&self) -> bool {
        self.fault.as_ref().is_none_or(|f| f.journal_ok)
    }

    /// Journals one change (or, with the journal given up, counts it: the rewrite will hold
    /// it).
    pub fn append(&mut self, change: &Change) {
        self.set_pending(self.pending + 1);
        if self.journal_ok()
            && let Err(e) = self.store.journal.append(change)
        {
            self.fail("appending to the journal", &e, false);
        }
    }

    /// Makes the journal durable.
    pub fn sync(&mut self) {
        if !self.journal_ok() {
            return;
        }
        match self.store.journal.sync() {
            Ok(_) => {
                self.set_pending(0);
                self.health.last_fsync.store(unix_now(), Relaxed);
            }
            Err(e) => self.fail("fsync of the journal", &e, false),
        }
    }

    /// Folds the journal into a new snapshot (not while failing: the retry does).
    pub fn snapshot(&mut self, blacklist: &Blacklist, now: Instant) -> Option<u64> {
        if self.fault.is_some() {
            return None;
        }
        self.sync();
        if self.fault.is_some() {
            return None;
        }
        match self.store.rewrite(blacklist, now) {
            Ok(n) => {
                self.written();
                info!(bans = n, "snapshot written");
                Some(n)
            }
            Err(e) => {
                let journal_ok = !self.store.journal_lost();
                self.fail("writing a snapshot", &e, journal_ok);
                None
            }
        }
    }

    fn written(&mut self) {
        self.set_pending(0);
        let t = unix_now();
        self.health.last_fsync.store(t, Relaxed);
        self.health.last_snapshot.store(t, Relaxed);
    }

    fn fail(&mut self, what: &str, e: &io::Error, journal_ok: bool) {
        let line = format!("{what}: {e}");
        self.health.error(&line);
        match self.fault.as_mut() {
            None => {
                if journal_ok {
                    error!(
                        "store: {line}; the previous snapshot is kept and changes go on to the \
                         journal (retrying with backoff)"
                    );
                } else {
                    error!(
                        pending = self.pending,
                        "store: {line}; bans stay in memory and are written when the disk \
                         recovers (retrying with backoff)"
                    );
                }
                let now = StdInstant::now();
                self.fault = Some(Fault {
                    since: now,
                    next_try: now + FIRST_RETRY,
                    backoff: FIRST_RETRY,
                    journal_ok,
                });
                self.health.failing.store(true, Relaxed);
                self.health.failing_since.store(unix_now(), Relaxed);
            }
            Some(f) if f.journal_ok && !journal_ok => {
                error!(
                    pending = self.pending,
                    "store: {line}; the journal is given up too: bans stay in memory and are \
                     written when the disk recovers"
                );
                f.journal_ok = false;
            }
            Some(_) => {}
        }
    }

    /// When failing and the backoff has passed: rewrites everything in memory. Returns the
    /// time until the next try (None: not failing).
    pub fn retry(&mut self, blacklist: &Blacklist, now: Instant) -> Option<StdDuration> {
        let fault = self.fault.as_mut()?;
        let t = StdInstant::now();
        if t < fault.next_try {
            return Some(fault.next_try - t);
        }
        let journal_ok = fault.journal_ok;
        if journal_ok {
            // The journal first, as any snapshot does; a failure there gives it up.
            self.sync();
            if !self.journal_ok() {
                let f = self.fault.as_mut()?;
                f.next_try = t + f.backoff;
                return Some(f.backoff);
            }
        }
        let done = self.store.rewrite(blacklist, now);
        let journal_lost = self.store.journal_lost();
        let fault = self.fault.as_mut()?;
        match done {
            Ok(n) => {
                let failed_for = fault.since.elapsed().as_secs_f64();
                info!(
                    bans = n,
                    changes = self.pending,
                    failed_for_s = (failed_for * 10.0).round() / 10.0,
                    "store recovered: every ban in memory is on disk again"
                );
                self.fault = None;
                self.health.failing.store(false, Relaxed);
                self.health.failing_since.store(0, Relaxed);
                self.health.recoveries.fetch_add(1, Relaxed);
                self.written();
                None
            }
            Err(e) => {
                fault.backoff = (fault.backoff * 2).min(MAX_RETRY);
                fault.next_try = t + fault.backoff;
                let line = format!("rewriting the state: {e}");
                error!(
                    pending = self.pending,
                    retry_in_s = fault.backoff.as_secs_f64(),
                    "store still failing: {line}"
                );
                let backoff = fault.backoff;
                if journal_ok && journal_lost {
                    self.fail("starting a new journal", &e, false);
                } else {
                    self.health.error(&line);
                }
                Some(backoff)
            }
        }
    }

    /// At exit: a last snapshot (a last try when failing). Returns the bans written; an
    /// error when bans are left that are not on disk.
    pub fn finish(&mut self, blacklist: &Blacklist, now: Instant) -> io::Result<u64> {
        if self.fault.is_none() && self.snapshot(blacklist, now).is_some() {
            return Ok(blacklist.lists().iter().map(|l| l.len() as u64).sum());
        }
        if let Some(f) = self.fault.as_mut() {
            f.next_try = StdInstant::now();
        }
        if self.retry(blacklist, now).is_none() {
            return Ok(blacklist.lists().iter().map(|l| l.len() as u64).sum());
        }
        if self.journal_ok() {
            self.sync();
        }
        let last = self.health.status().last_error;
        if self.journal_ok() {
            error!(
                "store: no snapshot at exit ({last}); every ban is in the fsync'd journal and \
                 the next start loads it"
            );
            return Ok(blacklist.lists().iter().map(|l| l.len() as u64).sum());
        }
        Err(io::Error::other(format!(
            "the store is failing ({last}); {} changes since the fault began are not on disk",
            self.pending
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::blacklist::ListConfig;
    use std::net::{IpAddr, Ipv4Addr};

    const T0: Instant = Instant::from_secs(1_767_225_600);

    fn ip(i: u32) -> IpAddr {
        IpAddr::V4(Ipv4Addr::from(0xC612_0000 + i))
    }

    /// A snapshot that cannot be written (the state directory moved away) puts the store in
    /// a fault, shown at once; retries back off; once the directory is back, one rewrite puts
    /// every ban made meanwhile on disk.
    #[test]
    fn a_fault_is_shown_retried_and_ends_with_everything_on_disk() {
        let base = std::env::temp_dir().join(format!("sb-persist-{}", std::process::id()));
        let (dir, away) = (base.join("state"), base.join("away"));
        let _ = std::fs::remove_dir_all(&base);
        let b = Blacklist::new(vec![ListConfig::new("spam")]);
        let (tx, rx) = std::sync::mpsc::channel();
        b.set_journal(&tx);
        let (store, _) = Store::open(&dir, &b, T0).unwrap();
        let health = Health::default();
        let mut disk = Disk::new(store, &health);
        let feed = |disk: &mut Disk, from: u32, to: u32| {
            for i in from..to {
                b.list(0).ban(ip(i), T0, 0);
            }
            for c in rx.try_iter() {
                disk.append(&c);
            }
        };
        feed(&mut disk, 0, 100);
        assert_eq!(health.status().pending, 100);
        disk.sync();
        let s = health.status();
        assert!(s.enabled && s.healthy && s.pending == 0 && s.last_fsync > 0);

        // A snapshot that fails: the journal goes on (nothing pending past an fsync).
        std::fs::rename(&dir, &away).unwrap();
        assert_eq!(disk.snapshot(&b, T0), None);
        let s = health.status();
        assert!(!s.healthy && s.errors == 1 && s.failing_since > 0, "{s:?}");
        assert!(s.last_error.starts_with("writing a snapshot"), "{s:?}");
        feed(&mut disk, 100, 150);
        disk.sync();
        assert_eq!(
            health.status().pending,
            0,
            "the journal still takes changes"
        );
        assert!(
            disk.retry(&b, T0).is_some_and(|w| w <= FIRST_RETRY),
            "not yet due"
        );
        std::thread::sleep(FIRST_RETRY);
        assert_eq!(disk.retry(&b, T0), Some(FIRST_RETRY * 2), "backs off");
        assert_eq!(health.status().errors, 2);
        std::fs::rename(&away, &dir).unwrap();
        std::thread::sleep(FIRST_RETRY * 2);
        assert_eq!(disk.retry(&b, T0), None);
        let s = health.status();
        assert!(s.healthy && s.recoveries == 1 && s.pending == 0, "{s:?}");

        // A journal that fails (a full device): given up, changes pending in memory until a
        // rewrite puts them all on disk.
        disk.store.journal = crate::store::Journal::to_file(
            std::fs::OpenOptions::new()
                .append(true)
                .open("/dev/full")
                .unwrap(),
        );
        feed(&mut disk, 150, 200);
        disk.sync();
        let s = health.status();
        assert!(!s.healthy && s.pending == 50, "{s:?}");
        assert!(s.last_error.starts_with("fsync of the journal"), "{s:?}");
        feed(&mut disk, 200, 210);
        disk.sync();
        assert_eq!(health.status().pending, 60, "not journaled while given up");
        std::thread::sleep(FIRST_RETRY);
        assert_eq!(disk.retry(&b, T0), None);
        let s = health.status();
        assert!(s.healthy && s.recoveries == 2 && s.pending == 0, "{s:?}");
        feed(&mut disk, 210, 220);
        disk.sync();
        drop(disk);
        let again = Blacklist::new(vec![ListConfig::new("spam")]);
        let (_, loaded) = Store::open(&dir, &again, T0).unwrap();
        assert_eq!(again.list(0).len(), 220, "{:?}", loaded.problems);
        let _ = std::fs::remove_dir_all(&base);
    }
}
