//! What a peer (or anyone with write access to Redis) puts in the fleet's log, snapshot and
//! cursor file: never a panic; what parses writes back to what parses the same.
#![no_main]

use libfuzzer_sys::fuzz_target;
use stringban::daemon::share::wire::{Cursor, Msg, parse_key, parse_snapshot_value};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(m) = Msg::parse(text) {
        assert_eq!(Msg::parse(&m.to_text()), Ok(m));
    }
    if let Ok(c) = Cursor::parse(text) {
        assert_eq!(Cursor::parse(&c.to_text()), Ok(c));
    }
    let _ = parse_snapshot_value(text);
    let _ = parse_key(text);
});
