//! Any text as an iptables script or save file (read as IPv4 and as IPv6): the importer parses
//! it or says why, never panics, and never expands variables without bound; what it takes
//! prints the same when read again, and runs in INPUT and FORWARD without panicking.
#![no_main]

use libfuzzer_sys::fuzz_target;
use stringban::chains::Chains;
use stringban::iptables::{self, Family};
use stringban::time::Instant;
use stringban::verdict::Hook;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    for family in [None, Some(Family::V6)] {
        let Ok(rules) = iptables::parse_as(&text, family) else {
            continue;
        };
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
        if let Ok(mut chains) = Chains::new(&rules, Some(100)) {
            let mut counts = vec![0; chains.rule_count()];
            for (src, dst) in [("198.18.0.2", "198.18.0.1"), ("2001:db8::2", "2001:db8::1")] {
                let bytes = stringban::craft::tcp_segment(
                    (src.parse().unwrap(), 40_000),
                    (dst.parse().unwrap(), 25),
                    1,
                    1,
                    b"RCPT TO:<a@example.com>\r\n",
                );
                let p = stringban::parse::packet(&bytes).unwrap();
                for hook in [Hook::Input, Hook::Forward] {
                    chains.decide(&p, hook, Instant::from_secs(1), &mut counts);
                }
            }
        }
    }
});
