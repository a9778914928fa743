//! Captures: the pcap/pcapng codec, the replay harness that runs the engine over a capture,
//! the flood generator (`attack`: plan, sessions, ground truth), scripted SMTP sessions
//! (`script`). Their packets are built by [`crate::craft`], which the daemon's reset path
//! shares.

pub mod attack;
pub mod pcap;
pub mod replay;
pub mod script;
