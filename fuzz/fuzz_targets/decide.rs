//! Packet bytes through the whole engine: never a panic, and the same answer twice.
#![no_main]

use libfuzzer_sys::fuzz_target;
use stringban::config::{Config, Flags};
use stringban::{Engine, Instant};

fuzz_target!(|data: &[u8]| {
    let flags = Flags {
        string: vec!["@example.com".into()],
        icase: true,
        ports: vec![],
        ..Flags::default()
    };
    let config = Config::build(None, &flags).expect("valid flags");
    let (mut a, mut b) = (Engine::new(&config), Engine::new(&config));
    let now = Instant::from_secs(1_767_225_600);
    assert_eq!(a.decide(data, now), b.decide(data, now));
});
