//! Netlink datagrams from the kernel: parsing never panics, whatever the bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use stringban::sys::nfqueue::codec;

fuzz_target!(|data: &[u8]| {
    for msg in codec::messages(data).flatten() {
        let _ = codec::error_code(&msg);
        if let Ok(q) = codec::packet(&msg) {
            assert!(q.payload.len() <= data.len());
        }
        for attr in codec::attributes(msg.payload).flatten() {
            assert!(attr.1.len() <= msg.payload.len());
        }
    }
    let _ = codec::parse_proc(&String::from_utf8_lossy(data));
});
