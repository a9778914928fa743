//! stringban: ban the senders of packets that carry a string.
//!
//! ```text
//!              ┌──────────── pure core (no sockets, no files, no clock) ────────────┐
//! bytes, now ─►│ parse::packet → Engine (blacklist check → scan::Scanner → ban)     │─► Decision
//!              └─────────────────────────────────────────────────────────────────────┘
//!   shells:  capture (pcap, replay, generator)     daemon (NFQUEUE, store, control) over sys
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

// The `stats` document is one `json!` literal, deeper than the macro's default limit.
#![recursion_limit = "256"]

// The tree is the architecture: the pure core, the iptables wing, captures, the daemon, the
// system calls. The modules most used are re-exported here under their short paths.
pub mod capture;
pub mod craft;
pub mod daemon;
pub mod decide;
pub mod iptables;
pub mod sys;

pub use capture::{attack, replay, script};
pub use daemon::{control, metrics, persist, store};
pub use decide::{allow, blacklist, config, engine, flow, parse, rule, scan, time, verdict};
pub use iptables::{chains, recent};

pub use config::Config;
pub use engine::{Decision, Engine, Reason, Verdict};
pub use time::{Duration, Instant};
