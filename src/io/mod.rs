//! Shells: code that touches files, sockets and the kernel. Nothing in the core imports this.

pub mod firewall;
pub mod nfqueue;
pub mod offload;
pub mod pcap;
pub mod rst;
pub mod sockdiag;
