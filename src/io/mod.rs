//! Shells: code that touches files (and, later, sockets). Nothing in the core imports this.

pub mod pcap;
