//! Blacklist lookup and insert with 10 M IPv4 entries.

use std::net::{IpAddr, Ipv4Addr};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;

use stringban::Instant;
use stringban::blacklist::{List, ListConfig};

const N: u32 = 10_000_000;
const PROBES: u32 = 1_024;

fn addr(i: u32) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(i.wrapping_mul(2_654_435_761)))
}

fn blacklist(c: &mut Criterion) {
    let now = Instant::from_secs(1_767_225_600);
    let list = List::new(ListConfig {
        refresh_on_hit: false,
        ..ListConfig::new("bench")
    });
    for i in 0..N {
        list.ban(addr(i), now, 0);
    }
    let mut group = c.benchmark_group("blacklist/10M");
    group.throughput(Throughput::Elements(u64::from(PROBES)));
    let hits = |start: u32| {
        (start..start + PROBES)
            .filter(|&i| list.check(addr(i), now))
            .count()
    };
    assert_eq!(hits(5_000), PROBES as usize);
    group.bench_function("lookup-hit", |b| {
        let mut start = 0;
        b.iter(|| {
            start = (start + PROBES) % (N - PROBES);
            black_box(hits(start))
        })
    });
    assert_eq!(hits(N), 0);
    group.bench_function("lookup-miss", |b| {
        let mut start = N;
        b.iter(|| {
            start = N + (start + PROBES) % (N - PROBES);
            black_box(hits(start))
        })
    });
    let refreshing = List::new(ListConfig::new("refresh"));
    for i in 0..PROBES {
        refreshing.ban(addr(i), now, 0);
    }
    assert!(refreshing.check(addr(1), now));
    group.bench_function("lookup-hit-refresh", |b| {
        b.iter(|| {
            (0..PROBES)
                .filter(|&i| refreshing.check(addr(i), black_box(now)))
                .count()
        })
    });
    group.bench_function("insert-new", |b| {
        let mut next = 2 * N;
        b.iter(|| {
            for _ in 0..PROBES {
                list.ban(addr(next), now, 0);
                next = next.wrapping_add(1);
            }
        })
    });
    group.bench_function("ban-renew", |b| {
        b.iter(|| {
            (0..PROBES).for_each(|i| {
                let _ = list.ban(addr(i), now, 0);
            })
        })
    });
    group.finish();
}

criterion_group!(benches, blacklist);
criterion_main!(benches);
