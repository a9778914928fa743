//! Restart time: loading a snapshot of 10 M IPv4 bans (the bar: under 3 s), with the same run's
//! baseline of making those 10 M bans from scratch in memory.

use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::time::Duration as StdDuration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};

use stringban::Instant;
use stringban::blacklist::{Blacklist, ListConfig};
use stringban::store::{Store, peek_keys, write_snapshot};

const N: u32 = 10_000_000;

fn addr(i: u32) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(i.wrapping_mul(2_654_435_761)))
}

fn lists() -> Blacklist {
    Blacklist::new(vec![ListConfig::new("default")])
}

fn store(c: &mut Criterion) {
    // Bans ten years from expiry, so that a daemon restarted on the kept state (scripts/
    // bench-restart sets STRINGBAN_BENCH_STATE) finds them all live.
    let now = Instant::from_secs(1_767_225_600);
    let keep = std::env::var_os("STRINGBAN_BENCH_STATE").map(PathBuf::from);
    let dir: PathBuf = keep.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!("sb-bench-store-{}", std::process::id()))
    });
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let full = lists();
    let ten_years = stringban::Duration::from_secs(10 * 365 * 86_400);
    for i in 0..N {
        full.list(0).ban_for(addr(i), now, ten_years, 0);
    }
    assert_eq!(write_snapshot(&dir, &full, 1, now).unwrap(), u64::from(N));
    drop(full);

    let mut group = c.benchmark_group("store/10M");
    group.sample_size(10);
    group.measurement_time(StdDuration::from_secs(30));
    group.throughput(Throughput::Elements(u64::from(N)));
    group.bench_function("load-snapshot", |b| {
        b.iter_with_large_drop(|| {
            // As the daemon does: the lists hash with the snapshot's keys.
            let bl = Blacklist::with_hash_keys(vec![ListConfig::new("default")], &peek_keys(&dir));
            let (_, loaded) = Store::open(&dir, &bl, now).unwrap();
            assert_eq!(loaded.restored, N as usize);
            assert!(loaded.problems.is_empty());
            bl
        })
    });
    group.bench_function("baseline-ban-in-memory", |b| {
        b.iter_with_large_drop(|| {
            let bl = lists();
            for i in 0..N {
                bl.list(0).ban(addr(i), now, 0);
            }
            bl
        })
    });
    group.finish();
    if keep.is_none() {
        let _ = std::fs::remove_dir_all(&dir);
    }
}

criterion_group!(benches, store);
criterion_main!(benches);
