//! Segmentation never changes who is banned (stream mode): the client's bytes (the input after
//! its first 8 bytes, split at 0x00 into turns, client first) are sent whole and cut, reordered
//! and retransmitted as the first bytes say; the sender is banned cut exactly when banned whole.
#![no_main]

use std::net::{IpAddr, Ipv4Addr};

use libfuzzer_sys::fuzz_target;
use stringban::config::{Config, Flags};
use stringban::script::{Script, Shape, Step};
use stringban::{Engine, Instant, Verdict};

const CLIENT: (IpAddr, u16) = (IpAddr::V4(Ipv4Addr::new(198, 19, 0, 1)), 40000);
const SERVER: (IpAddr, u16) = (IpAddr::V4(Ipv4Addr::new(198, 18, 0, 1)), 25);

fn banned(s: &Script, shape: Shape, nocase: bool) -> bool {
    let flags = Flags {
        string: vec!["@example.com".into()],
        mode: Some("stream".into()),
        ports: vec![25],
        icase: nocase,
        ..Flags::default()
    };
    let mut engine = Engine::new(&Config::build(None, &flags).expect("valid flags"));
    let mut reset = false;
    for f in s.packets(shape, Instant::from_secs(1_000)) {
        reset |= engine.decide(&f.ip, f.ts).verdict == Verdict::Reset;
    }
    reset
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 8 {
        return;
    }
    let seed = u64::from_le_bytes(data[..8].try_into().expect("8 bytes"));
    let shape = Shape {
        cuts: 1 + (data[0] % 8) as usize,
        seed,
        reorder: data[1] & 1 != 0,
        retransmit: data[1] & 2 != 0,
    };
    let nocase = data[2] & 1 != 0;
    let mut s = Script::new(CLIENT, SERVER);
    for (i, turn) in data[8..].split(|b| *b == 0).enumerate() {
        if turn.is_empty() {
            continue;
        }
        s.steps.push(if i % 2 == 0 {
            Step::Client(turn.to_vec())
        } else {
            Step::Server(turn.to_vec())
        });
    }
    let whole = banned(&s, Shape::WHOLE, nocase);
    assert_eq!(whole, banned(&s, shape, nocase), "{shape:?}");
    // Whole, the stream holds the string exactly when its bytes do.
    let client: Vec<u8> = s
        .steps
        .iter()
        .filter_map(|st| match st {
            Step::Client(b) => Some(b.clone()),
            _ => None,
        })
        .collect::<Vec<_>>()
        .concat();
    let hay = if nocase {
        client.to_ascii_lowercase()
    } else {
        client
    };
    let found = hay.windows(12).any(|w| w == b"@example.com");
    assert_eq!(whole, found, "whole stream");
});
