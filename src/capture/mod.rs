//! Captures: the pcap/pcapng codec, the replay harness that runs the engine over a capture,
//! the flood generator (`attack`: plan, sessions, ground truth), scripted SMTP sessions
//! (`script`) and the packet builders they share with the daemon's reset path (`craft`).

pub mod attack;
pub mod craft;
pub mod pcap;
pub mod replay;
pub mod script;
