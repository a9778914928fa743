//! The pure core: everything a packet's decision needs, and nothing that touches a socket, a
//! file or the clock (`now` is passed in). The live daemon and the pcap replay run it alike.
//!
//! `parse` (packet bytes → headers) → `engine` (guard, blacklist, rules, flows) with `rule`
//! (xt_string options), `scan` (the matchers), `flow` (reassembly, the SMTP reader, the flow
//! table), `blacklist` (bans with TTLs) → `verdict`. `config` validates what the engine runs;
//! `time` is the clock's value type.

pub mod allow;
pub mod blacklist;
pub mod config;
pub mod engine;
pub mod flow;
pub mod parse;
pub mod rule;
pub mod scan;
pub mod sip;
pub mod time;
pub mod verdict;
