//! Memory per tracked flow, measured with a counting allocator (this test binary's global
//! allocator counts every live byte). The bar: at most 256 bytes per flow plus its carry bytes.

use std::net::{IpAddr, Ipv4Addr};
use stringban::config::{Config, Flags};
use stringban::craft::tcp_segment;
use stringban::{Engine, Instant, Verdict};

#[path = "common/counting.rs"]
mod counting;

#[global_allocator]
static GLOBAL: counting::Counting = counting::Counting;

/// Opens `n` flows (one data segment each, complete SMTP lines, from distinct sources) in an
/// engine with one smtp-mode and one stream-mode rule, so every flow holds both states.
fn flows_cost(n: u32) -> (usize, usize) {
    let flags = Flags {
        string: vec!["@example.com".into()],
        mode: Some("smtp".into()),
        ports: vec![25],
        max_flows: Some(u64::from(n) + 1),
        ..Flags::default()
    };
    let mut config = Config::build(None, &flags).unwrap();
    let mut stream_rule = config.rules[0].clone();
    stream_rule.mode = stringban::rule::Mode::Stream;
    stream_rule.name = "stream".into();
    config.rules.push(stream_rule);
    let mut engine = Engine::new(&config);
    let dst = IpAddr::V4(Ipv4Addr::new(198, 18, 0, 1));
    let now = Instant::from_secs(1_767_225_600);
    let payload = b"EHLO mx.partner.test\r\nMAIL FROM:<a@partner.test>\r\n";
    let packets: Vec<Vec<u8>> = (0..n)
        .map(|i| {
            let src = IpAddr::V4(Ipv4Addr::from(0xC613_0000u32 + i));
            tcp_segment(
                (src, 40_000 + (i % 20_000) as u16),
                (dst, 25),
                i,
                1,
                payload,
            )
        })
        .collect();
    // Warm the scratch buffers on a flow of its own, then measure.
    let warm = tcp_segment(
        (IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)), 1),
        (dst, 25),
        0,
        1,
        payload,
    );
    let _ = engine.decide(&warm, now);
    let before = counting::live();
    for p in &packets {
        assert_eq!(engine.decide(p, now).verdict, Verdict::Accept);
    }
    assert_eq!(engine.flows().len(), n as usize + 1);
    let bytes = counting::live() - before;
    // Each flow carries the stream rule's last 11 bytes (the pattern's length less one).
    let carry = n as usize * 11;
    drop(packets);
    (bytes, carry)
}

#[test]
fn a_tracked_flow_costs_at_most_256_bytes_plus_its_carry() {
    for n in [10_000u32, 60_000] {
        let (bytes, carry) = flows_cost(n);
        let per_flow = (bytes - carry) as f64 / f64::from(n);
        println!(
            "flows: {n} flows use {bytes} bytes = {per_flow:.1} bytes/flow plus {:.1} carry bytes",
            carry as f64 / f64::from(n)
        );
        assert!(per_flow <= 256.0, "{per_flow:.1} bytes per flow");
    }
}
