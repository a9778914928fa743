//! The changes thread: the journal and snapshots (through [`crate::persist`]) and the
//! offload sets.

use super::*;

/// The changes thread: appends every change to the journal (if there is a state directory),
/// fsyncs it every `fsync_every`, folds it into a new snapshot every `snapshot_every` and once
/// more at exit, and rides out disk faults ([`crate::persist`]); mirrors the changes into the
/// offload sets in one `ipset restore` per interval and reconciles the sets every 10 s; hands
/// this host's own changes to the fleet's publisher (`share`).
/// Returns the number of bans in the last snapshot.
pub(super) fn changes_loop(
    store: Option<Store>,
    offload: Option<Offload>,
    rx: std::sync::mpsc::Receiver<crate::blacklist::Change>,
    share: Option<std::sync::mpsc::Sender<(crate::blacklist::Change, u64)>>,
    shared: &Shared,
    blacklist: &Blacklist,
    (fsync_every, snapshot_every): (StdDuration, StdDuration),
) -> io::Result<u64> {
    use std::sync::mpsc::RecvTimeoutError;
    let mut disk = store.map(|s| Disk::new(s, &shared.store_health));
    let mut last_sync = std::time::Instant::now();
    let mut last_snapshot = std::time::Instant::now();
    let mut last_check = std::time::Instant::now();
    let mut script = String::new();
    let mut resync = false;
    if let Some(disk) = disk.as_mut().filter(|d| d.needs_compaction()) {
        // Fold what the start replayed into a fresh snapshot, now that the queues run.
        disk.snapshot(blacklist, now());
    }
    let take = |c: crate::blacklist::Change,
                disk: &mut Option<Disk>,
                script: &mut String,
                resync: &mut bool| {
        if let Some(disk) = disk.as_mut() {
            disk.append(&c);
        }
        if let (Some(tx), Some(state)) = (share.as_ref().filter(|_| c.is_local()), &shared.share) {
            // Stamped: propagation is measured from here. The publisher gone (stopping):
            // nothing more to share.
            state.queued.fetch_add(1, Relaxed);
            let _ = tx.send((c, now().micros()));
        }
        if !matches!(
            c,
            crate::blacklist::Change::Ban(
                _,
                _,
                crate::blacklist::Banned::Renewed | crate::blacklist::Banned::Strike(_)
            )
        ) {
            lock(&shared.banlog).line(|| {
                super::banlog::change_line(&c, blacklist, &super::names(shared), now())
                    .unwrap_or_default()
            });
        }
        if let Some(o) = &offload {
            *resync |= matches!(c, crate::blacklist::Change::Flush(..));
            script.push_str(&o.change_lines(&c, now()));
        }
    };
    loop {
        let mut wait = fsync_every.saturating_sub(last_sync.elapsed());
        if let Some(retry) = disk.as_mut().and_then(|d| d.retry(blacklist, now())) {
            wait = wait.min(retry);
        }
        match rx.recv_timeout(wait.max(StdDuration::from_millis(1))) {
            Ok(c) => {
                take(c, &mut disk, &mut script, &mut resync);
                for c in rx.try_iter() {
                    take(c, &mut disk, &mut script, &mut resync);
                }
            }
            Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => {}
        }
        let stopping = shared.store_stop.load(Relaxed);
        if stopping {
            for c in rx.try_iter() {
                take(c, &mut disk, &mut script, &mut resync);
            }
        }
        if last_sync.elapsed() >= fsync_every || stopping {
            if let Some(disk) = disk.as_mut() {
                disk.sync();
            }
            if let Some(o) = &offload {
                if last_check.elapsed() >= StdDuration::from_secs(10) {
                    last_check = std::time::Instant::now();
                    resync |= offload_lost(o, blacklist);
                }
                let done = if resync {
                    o.resync(blacklist, now())
                        .map(|n| info!(bans = n, "offload sets resynced"))
                } else {
                    crate::sys::offload::restore(&script)
                };
                match done {
                    Ok(()) => {}
                    Err(e) => {
                        warn!("offload: {e}; resyncing");
                        resync = true;
                        script.clear();
                        continue;
                    }
                }
                script.clear();
                resync = false;
            }
            last_sync = std::time::Instant::now();
        }
        if stopping {
            return match disk.as_mut() {
                Some(disk) => disk.finish(blacklist, now()),
                None => Ok(0),
            };
        }
        if last_snapshot.elapsed() >= snapshot_every
            && let Some(disk) = disk.as_mut()
            && !disk.failing()
        {
            disk.snapshot(blacklist, now());
            last_snapshot = std::time::Instant::now();
        }
    }
}

/// Has an offload set disappeared, or lost most of its entries (flushed by hand)?
pub(super) fn offload_lost(o: &Offload, blacklist: &Blacklist) -> bool {
    let (mut v4, mut v6) = (0u64, 0u64);
    let t = now();
    for l in blacklist.lists() {
        for b in l.bans(t) {
            match b.key {
                crate::blacklist::Key::V4 { .. } => v4 += 1,
                crate::blacklist::Key::V6 { .. } => v6 += 1,
            }
        }
    }
    let lost = |set: &str, want: u64| match o.entries(set) {
        None => {
            warn!(set, "offload set missing: re-creating it");
            true
        }
        Some(have) if have < want / 2 => {
            warn!(set, have, want, "offload set lost its entries: resyncing");
            true
        }
        Some(_) => false,
    };
    lost(&o.v4, v4) | lost(&o.v6, v6)
}
