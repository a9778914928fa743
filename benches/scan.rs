//! Scanner throughput. Each case asserts its match count before timing, so a fast but wrong
//! change fails instead of winning. `naive` (a `windows()` scan) is the same-run baseline.

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;

use stringban::rule::{Algo, StringMatch};
use stringban::scan::{Choice, Scanner};

const PACKETS: usize = 64;

/// SMTP-like text of `size` bytes; every fourth packet carries needle `k % needles.len()`.
fn corpus(size: usize, needles: &[Vec<u8>], upper: bool) -> (Vec<Vec<u8>>, usize) {
    let filler = b"Line 7: the willow report and the quartz figures are attached as discussed last week.\r\n";
    let mut hits = 0;
    let packets = (0..PACKETS)
        .map(|k| {
            let mut p: Vec<u8> = filler.iter().cycle().take(size).copied().collect();
            if k % 4 == 0 {
                let n = &needles[k % needles.len()];
                let at = size - n.len() - (k % 7);
                p[at..at + n.len()].copy_from_slice(n);
                if upper {
                    p[at..at + n.len()].make_ascii_uppercase();
                }
                hits += 1;
            }
            p
        })
        .collect();
    (packets, hits)
}

fn needles(n: usize) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| format!("@spam-domain-{i:03}.example").into_bytes())
        .collect()
}

fn rules(needles: &[Vec<u8>], icase: bool) -> Vec<StringMatch> {
    needles
        .iter()
        .map(|p| StringMatch {
            pattern: p.clone(),
            algo: Algo::Bm,
            from: 0,
            to: u16::MAX,
            icase,
            invert: false,
        })
        .collect()
}

fn count(scanner: &mut Scanner, packets: &[Vec<u8>]) -> usize {
    packets
        .iter()
        .filter(|p| scanner.first_match(p, |_| true).is_some())
        .count()
}

fn prebuilt(c: &mut Criterion) {
    let mut group = c.benchmark_group("scan/prebuilt");
    for n in [1usize, 8, 100] {
        for icase in [false, true] {
            for size in [64usize, 512, 1460] {
                let needles = needles(n);
                let (packets, hits) = corpus(size, &needles, icase);
                let rules = rules(&needles, icase);
                let refs: Vec<&StringMatch> = rules.iter().collect();
                let mut scanner = Scanner::new(&refs);
                assert_eq!(
                    count(&mut scanner, &packets),
                    hits,
                    "{n} needles icase={icase} size={size}"
                );
                group.throughput(Throughput::Bytes((size * PACKETS) as u64));
                let id =
                    BenchmarkId::new(format!("{n}{}", if icase { "-icase" } else { "" }), size);
                group.bench_function(id, |b| b.iter(|| count(&mut scanner, black_box(&packets))));
            }
        }
    }
    group.finish();
}

fn strategies(c: &mut Criterion) {
    // Justifies FINDER_MAX_RULES / FINDER_BUDGET: memmem finders one by one vs Aho-Corasick.
    let mut group = c.benchmark_group("scan/strategy");
    for size in [64usize, 1460] {
        for n in [1usize, 2, 4, 8] {
            let needles = needles(n);
            let (packets, hits) = corpus(size, &needles, false);
            let rules = rules(&needles, false);
            let refs: Vec<&StringMatch> = rules.iter().collect();
            group.throughput(Throughput::Bytes((size * PACKETS) as u64));
            for (name, choice) in [
                ("finders", Choice::Finders),
                ("automata", Choice::Automata),
                ("auto", Choice::Auto),
            ] {
                let mut scanner = Scanner::with_choice(&refs, choice);
                assert_eq!(count(&mut scanner, &packets), hits);
                let id = BenchmarkId::new(format!("{name}-{n}"), size);
                group.bench_function(id, |b| b.iter(|| count(&mut scanner, black_box(&packets))));
            }
        }
    }
    group.finish();
}

fn baselines(c: &mut Criterion) {
    let mut group = c.benchmark_group("scan/baseline");
    let needles = needles(1);
    let needle = needles[0].clone();
    let (packets, hits) = corpus(1460, &needles, false);
    group.throughput(Throughput::Bytes((1460 * PACKETS) as u64));
    let naive = |packets: &[Vec<u8>]| {
        packets
            .iter()
            .filter(|p| p.windows(needle.len()).any(|w| w == needle))
            .count()
    };
    assert_eq!(naive(&packets), hits);
    group.bench_function("naive/1460", |b| b.iter(|| naive(black_box(&packets))));
    let oneshot = |packets: &[Vec<u8>]| {
        packets
            .iter()
            .filter(|p| memchr::memmem::find(p, &needle).is_some())
            .count()
    };
    assert_eq!(oneshot(&packets), hits);
    group.bench_function("memmem-oneshot/1460", |b| {
        b.iter(|| oneshot(black_box(&packets)))
    });
    group.finish();
}

criterion_group!(benches, prebuilt, strategies, baselines);
criterion_main!(benches);
