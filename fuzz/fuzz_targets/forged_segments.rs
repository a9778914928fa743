//! Forged segments mixed into real sessions never convict an address that did not complete a
//! handshake (stream and smtp mode, no socket table: the tracker alone proves). From the input:
//! a random session of the SMTP grammar (its client completes its handshake), and forged
//! segments — any flags, sequence and acknowledgement numbers, payload, from a few forged
//! addresses or from the real client's address on other ports — inserted between its packets.
//! No forged address is ever banned, and the real client's fate is what it is without them.
#![no_main]

use std::net::{IpAddr, Ipv4Addr};

use libfuzzer_sys::fuzz_target;
use stringban::attack::Rng;
use stringban::config::{Config, Flags};
use stringban::craft::tcp_flags_segment;
use stringban::script::{self, Shape};
use stringban::{Engine, Instant, Verdict};

const CLIENT: (IpAddr, u16) = (IpAddr::V4(Ipv4Addr::new(198, 19, 0, 1)), 40000);
const SERVER: (IpAddr, u16) = (IpAddr::V4(Ipv4Addr::new(198, 18, 0, 1)), 25);

fuzz_target!(|data: &[u8]| {
    if data.len() < 9 {
        return;
    }
    let seed = u64::from_le_bytes(data[..8].try_into().expect("8 bytes"));
    let mode = if data[8] & 1 == 0 { "smtp" } else { "stream" };
    let flags = Flags {
        string: vec!["@example.com".into()],
        mode: Some(mode.into()),
        ports: vec![25],
        ..Flags::default()
    };
    let config = Config::build(None, &flags).expect("valid flags");
    let mut engine = Engine::new(&config);
    let (s, _) = script::random_session(&mut Rng::new(seed), CLIENT, SERVER);
    let frames = s.packets(Shape::WHOLE, Instant::from_secs(1_000));
    let mut alone = Engine::new(&config);
    let convicted_alone = frames
        .iter()
        .fold(false, |r, f| r | (alone.decide(&f.ip, f.ts).verdict == Verdict::Reset));
    // Forged segments: 12-byte headers (where, source, port, flags, seq, ack) + payload up to 0.
    let mut forged = data[9..].split(|b| *b == 0).filter(|c| c.len() >= 12).peekable();
    let mut reset = false;
    for (i, f) in frames.iter().enumerate() {
        while let Some(c) = forged.peek() {
            if usize::from(c[0]) % frames.len().max(1) != i {
                break;
            }
            let c = forged.next().expect("peeked");
            let src = if c[1] & 1 == 0 {
                (IpAddr::V4(Ipv4Addr::new(198, 19, 9, c[1])), u16::from_le_bytes([c[2], c[3]]))
            } else {
                // The real client's address, another port (never its own session's).
                (CLIENT.0, 40001 + u16::from(c[2]))
            };
            let seq = u32::from_le_bytes([c[5], c[6], c[7], c[8]]);
            let ack = u32::from_le_bytes([c[9], c[10], c[11], c[4]]);
            let mut payload = c[12..].to_vec();
            if c[3] & 1 == 1 {
                payload.extend_from_slice(b"RCPT TO:<v@example.com>\r\n");
            }
            let seg = tcp_flags_segment(src, SERVER, seq, ack, c[4] & 0x3f, &payload);
            let d = engine.decide(&seg, f.ts);
            assert_ne!(d.verdict, Verdict::Reset, "a forged segment was convicted");
        }
        reset |= engine.decide(&f.ip, f.ts).verdict == Verdict::Reset;
    }
    for i in 0..=255u8 {
        let forged = IpAddr::V4(Ipv4Addr::new(198, 19, 9, i));
        assert!(engine.blacklist().list(0).get(forged, Instant::from_secs(2_000)).is_none());
    }
    assert_eq!(reset, convicted_alone, "forged segments changed the real session's verdict");
});
