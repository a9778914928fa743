//! `Engine::decide` over the generated flood (packet and smtp mode) and over clean traffic,
//! packets held in memory.
//! Each timed run starts from a fresh engine; its verdict totals are asserted against the
//! capture's ground truth first.

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;

use stringban::attack::{self, GenConfig};
use stringban::capture::pcap::{Reader, ip_packet};
use stringban::config::{Config, Flags};
use stringban::{Engine, Instant, Verdict};

type Loaded = (Vec<(Instant, Vec<u8>)>, attack::Truth);

fn load_truth(cfg: &GenConfig) -> Loaded {
    let mut capture = Vec::new();
    let (truth, _) = attack::generate(cfg, &mut capture).expect("generate");
    let mut reader = Reader::new(&capture[..]).expect("header");
    let mut packets = Vec::new();
    while let Some(rec) = reader.next_record().expect("record") {
        packets.push((rec.ts, ip_packet(rec.link, rec.data).expect("ip").to_vec()));
    }
    (packets, truth)
}

fn load(cfg: &GenConfig) -> (Vec<(Instant, Vec<u8>)>, attack::Expected) {
    let (packets, truth) = load_truth(cfg);
    (packets, truth.expected(32, 64))
}

fn run(engine: &mut Engine, packets: &[(Instant, Vec<u8>)]) -> [u64; 4] {
    let mut v = [0u64; 4];
    for (ts, p) in packets {
        let d = engine.decide(p, *ts);
        v[Verdict::ALL
            .iter()
            .position(|x| *x == d.verdict)
            .unwrap_or(0)] += 1;
    }
    v
}

fn engine(c: &mut Criterion) {
    let flags = Flags {
        string: vec!["@example.com".into()],
        ports: vec![25],
        ..Flags::default()
    };
    let config = Config::build(None, &flags).expect("config");
    let (flood, want) = load(&GenConfig {
        sessions: 20_000,
        sources: 6_000,
        ..GenConfig::default()
    });
    assert_eq!(
        run(&mut Engine::new(&config), &flood),
        [want.accept, 0, want.drop, want.reset]
    );

    // Clean traffic: the same sessions, no spam, so every guarded packet is scanned.
    let (clean, clean_want) = load(&GenConfig {
        sessions: 20_000,
        sources: 6_000,
        legit_ratio: 1.0,
        ..GenConfig::default()
    });
    let icase_flags = Flags {
        string: vec!["@no-such-domain.invalid".into()],
        icase: true,
        ports: vec![25],
        ..Flags::default()
    };
    let icase = Config::build(None, &icase_flags).expect("config");
    assert_eq!(
        run(&mut Engine::new(&icase), &clean),
        [clean_want.packets, 0, 0, 0]
    );

    // Smtp mode: every session read to its end (bodies searched for CRLF.CRLF only).
    let (smtp_flood, truth) = load_truth(&GenConfig {
        sessions: 20_000,
        sources: 6_000,
        ..GenConfig::default()
    });
    let smtp_flags = Flags {
        mode: Some("smtp".into()),
        ..flags.clone()
    };
    let smtp = Config::build(None, &smtp_flags).expect("config");
    let smtp_want = truth.expected_for(attack::Oracle::Smtp, 32, 64);
    assert_eq!(
        run(&mut Engine::new(&smtp), &smtp_flood),
        [smtp_want.accept, 0, smtp_want.drop, smtp_want.reset]
    );

    let mut group = c.benchmark_group("engine/decide");
    group.throughput(Throughput::Elements(smtp_flood.len() as u64));
    group.bench_function("smtp-flood", |b| {
        b.iter_batched_ref(
            || Engine::new(&smtp),
            |e| run(e, black_box(&smtp_flood)),
            BatchSize::LargeInput,
        )
    });
    group.throughput(Throughput::Elements(flood.len() as u64));
    group.bench_function("flood", |b| {
        b.iter_batched_ref(
            || Engine::new(&config),
            |e| run(e, black_box(&flood)),
            BatchSize::LargeInput,
        )
    });
    group.throughput(Throughput::Elements(clean.len() as u64));
    group.bench_function("clean-icase", |b| {
        b.iter_batched_ref(
            || Engine::new(&icase),
            |e| run(e, black_box(&clean)),
            BatchSize::LargeInput,
        )
    });
    group.finish();
}

criterion_group!(benches, engine);
criterion_main!(benches);
