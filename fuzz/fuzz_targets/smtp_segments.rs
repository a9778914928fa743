//! Segmentation never changes who is banned (smtp mode). Two sessions per input:
//! - from the first 8 bytes, a random session of the SMTP grammar (`script::random_session`),
//!   whose sender must be banned exactly when the grammar's oracle says so, whole and cut;
//! - from the rest, an arbitrary session (bytes split at 0x00 into turns, client first), cut as
//!   the first bytes say: banned cut exactly when banned whole.
#![no_main]

use std::net::{IpAddr, Ipv4Addr};

use libfuzzer_sys::fuzz_target;
use stringban::attack::Rng;
use stringban::config::{Config, Flags};
use stringban::script::{self, Script, Shape, Step};
use stringban::{Engine, Instant, Verdict};

const CLIENT: (IpAddr, u16) = (IpAddr::V4(Ipv4Addr::new(198, 19, 0, 1)), 40000);
const SERVER: (IpAddr, u16) = (IpAddr::V4(Ipv4Addr::new(198, 18, 0, 1)), 25);

fn banned(s: &Script, shape: Shape) -> bool {
    let flags = Flags {
        string: vec!["@example.com".into()],
        mode: Some("smtp".into()),
        ports: vec![25],
        ..Flags::default()
    };
    let mut engine = Engine::new(&Config::build(None, &flags).expect("valid flags"));
    let mut reset = false;
    for f in s.packets(shape, Instant::from_secs(1_000)) {
        reset |= engine.decide(&f.ip, f.ts).verdict == Verdict::Reset;
    }
    assert_eq!(engine.stats().flow_refused, 0);
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
    let (s, spam) = script::random_session(&mut Rng::new(seed), CLIENT, SERVER);
    assert_eq!(banned(&s, Shape::WHOLE), spam, "grammar session, whole");
    assert_eq!(banned(&s, shape), spam, "grammar session, {shape:?}");

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
    assert_eq!(
        banned(&s, Shape::WHOLE),
        banned(&s, shape),
        "arbitrary session, {shape:?}"
    );
});
