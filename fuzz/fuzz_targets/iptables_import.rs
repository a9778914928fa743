//! Any text as an iptables script or save file: the importer parses it or says why, never
//! panics, and never expands variables without bound.
#![no_main]

use libfuzzer_sys::fuzz_target;
use stringban::iptables;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Ok(rules) = iptables::parse(&text) {
        // What it accepted prints, and prints the same when parsed again.
        let script = rules.script();
        assert!(
            script.len() <= 64 * data.len() + 4096,
            "{} bytes from {}",
            script.len(),
            data.len()
        );
        if let Ok(again) = iptables::parse(&script) {
            assert_eq!(again.script(), script);
        }
    }
});
