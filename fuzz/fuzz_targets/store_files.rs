//! Any bytes as a snapshot and a journal: loading never panics, restores no more than the
//! valid blocks and records hold, and a snapshot written from what loaded reads back whole.
//! The input is split at its first "\n--\n": snapshot before, journal after.
#![no_main]

use libfuzzer_sys::fuzz_target;
use stringban::Instant;
use stringban::blacklist::{Blacklist, ListConfig};
use stringban::store;

fuzz_target!(|data: &[u8]| {
    let cut = data
        .windows(4)
        .position(|w| w == b"\n--\n")
        .unwrap_or(data.len());
    let (snapshot, journal) = (&data[..cut], data.get(cut + 4..).unwrap_or(&[]));
    let now = Instant::from_secs(1_000_000);
    let lists = || Blacklist::new(vec![ListConfig::new("default"), ListConfig::new("other")]);
    let b = lists();
    let loaded = store::load_bytes(snapshot, journal, &b, now);
    let check = store::check_bytes(snapshot);
    let journal_records = (journal.len() / store::JOURNAL_RECORD) as u64;
    assert!(
        loaded.restored as u64 <= check.records + journal_records,
        "{loaded:?} {check:?}"
    );
    // What loaded writes and reads back whole.
    let dir = std::env::temp_dir().join(format!("sb-fuzz-store-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    let n = store::write_snapshot(&dir, &b, 1, now).expect("write");
    assert_eq!(n as usize, loaded.restored);
    let again = store::check_snapshot(&dir.join(store::SNAPSHOT)).expect("read back");
    assert_eq!((again.records, again.problems.len()), (n, 0));
});
