//! stringban: ban the senders of packets that carry a string.
//!
//! ```text
//!              ┌──────────── pure core (no sockets, no files, no clock) ────────────┐
//! bytes, now ─►│ parse::packet → Engine (blacklist check → scan::Scanner → ban)     │─► Decision
//!              └─────────────────────────────────────────────────────────────────────┘
//!   shells:  io::pcap + replay (bench, tests)     live NFQUEUE daemon
//! ```
//!
//! What the core promises:
//! - no I/O and no clock: [`Engine::decide`] takes `now`, so replays are deterministic;
//! - no panic on any packet bytes: a packet that does not parse is a counted [`Decision`];
//! - exact xt_string semantics in `packet` mode (offsets from the IP header, the whole pattern in
//!   `[from, min(to, len))`, the kernel's Latin-1 case table).
//!
//! Per rule, `packet` mode is the kernel's xt_string; `stream` mode scans each flow's in-order
//! byte stream ([`flow::Reasm`]), so a string split across segments is seen; `smtp` mode matches
//! only inside `MAIL FROM`/`RCPT TO` commands ([`flow::Smtp`]) and lets a flow bypass the queue
//! once its envelope is over. `gen` writes captures of the flood for the replay harness.

pub mod attack;
pub mod blacklist;
pub mod config;
pub mod control;
pub mod craft;
pub mod daemon;
pub mod engine;
pub mod flow;
pub mod io;
pub mod iptables;
// The iptables wing's runtime, at the crate root too (its most used paths).
pub use iptables::{chains, recent};
pub mod metrics;
pub mod parse;
pub mod persist;
pub mod replay;
pub mod rule;
pub mod scan;
pub mod script;
pub mod store;
pub mod time;
pub mod verdict;

pub use config::Config;
pub use engine::{Decision, Engine, Reason, Verdict};
pub use time::{Duration, Instant};
