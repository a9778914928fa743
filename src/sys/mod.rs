//! The system: netlink (NFQUEUE, sock_diag), raw sockets, and the firewall and ipset commands.
//! Every `unsafe` block of the library lives here, each with its SAFETY comment; nothing in the
//! pure core imports this.

pub mod cred;
pub mod firewall;
pub mod ifaddrs;
pub mod nfqueue;
pub mod offload;
pub mod rst;
pub mod sockdiag;
