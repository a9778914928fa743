//! Memory per ban at 10 M IPv4 entries, measured with a counting allocator (this test binary's
//! global allocator counts every live byte). The bar: at most 48 bytes per entry.

use std::net::{IpAddr, Ipv4Addr};
use stringban::Instant;
use stringban::blacklist::{List, ListConfig};

#[path = "common/counting.rs"]
mod counting;

#[global_allocator]
static GLOBAL: counting::Counting = counting::Counting;

#[test]
fn ten_million_ipv4_bans_fit_in_48_bytes_each() {
    const N: u32 = 10_000_000;
    let before = counting::live();
    let list = List::new(ListConfig::new("mem"));
    let now = Instant::from_secs(1_767_225_600);
    for i in 0..N {
        // Spread over the whole address space, as a real flood is.
        let addr = Ipv4Addr::from(i.wrapping_mul(2_654_435_761));
        list.ban(IpAddr::V4(addr), now, 0);
    }
    assert_eq!(list.len(), N as usize);
    let bytes = counting::live() - before;
    let per_entry = bytes as f64 / f64::from(N);
    println!("blacklist: {N} IPv4 entries use {bytes} bytes = {per_entry:.1} bytes/entry");
    assert!(per_entry <= 48.0, "{per_entry:.1} bytes per entry");
    assert!(list.check(
        IpAddr::V4(Ipv4Addr::from(7u32.wrapping_mul(2_654_435_761))),
        now
    ));
}
