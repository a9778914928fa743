//! Destroying a local TCP socket with `SOCK_DESTROY` over `NETLINK_SOCK_DIAG` (what `ss -K` does).
//!
//! The kernel aborts the socket (`tcp_abort`): the application sees `ECONNABORTED` and frees its
//! session at once, and the kernel sends the peer a RST with correct sequence numbers. Needs
//! `CONFIG_INET_DIAG_DESTROY` and CAP_NET_ADMIN; without them the kernel answers `EOPNOTSUPP` /
//! `EPERM` and the caller falls back to the kernel REJECT rule.
#![allow(unsafe_code)]

use std::io;
use std::net::{IpAddr, Ipv6Addr};
use std::os::fd::OwnedFd;

use super::nfqueue::codec::{self, NLM_F_ACK, NLM_F_REQUEST};
use super::nfqueue::{netlink_socket, recv_one, send_to_kernel, setsockopt};

const NETLINK_SOCK_DIAG: i32 = 4;
const SOCK_DESTROY: u16 = 21;
const IPPROTO_TCP: u8 = 6;

/// The outcome of a destroy request.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub enum Destroyed {
    /// A socket was aborted.
    Yes,
    /// No local socket has that 4-tuple.
    NoSocket,
    /// The kernel cannot destroy sockets (`CONFIG_INET_DIAG_DESTROY` off, or no permission).
    Unsupported,
}

/// A `NETLINK_SOCK_DIAG` socket.
#[derive(Debug)]
pub struct SockDiag {
    fd: OwnedFd,
    seq: u32,
    buf: Vec<u8>,
}

impl SockDiag {
    pub fn open() -> io::Result<SockDiag> {
        let fd = netlink_socket(NETLINK_SOCK_DIAG)?;
        // A reply never takes long; never let a lost one block a worker.
        let timeout = libc::timeval {
            tv_sec: 1,
            tv_usec: 0,
        };
        setsockopt(&fd, libc::SOL_SOCKET, libc::SO_RCVTIMEO, &timeout)?;
        Ok(SockDiag {
            fd,
            seq: 0,
            buf: vec![0; 8192],
        })
    }

    /// Destroys the local TCP socket `local:lport` ↔ `remote:rport`. For IPv4, also tries the
    /// IPv4-mapped form on AF_INET6 sockets (dual-stack listeners).
    pub fn destroy(
        &mut self,
        local: IpAddr,
        lport: u16,
        remote: IpAddr,
        rport: u16,
    ) -> io::Result<Destroyed> {
        let first = self.destroy_one(local, lport, remote, rport)?;
        if first != Destroyed::NoSocket {
            return Ok(first);
        }
        match (local, remote) {
            (IpAddr::V4(l), IpAddr::V4(r)) => {
                let (l6, r6) = (
                    IpAddr::V6(l.to_ipv6_mapped()),
                    IpAddr::V6(r.to_ipv6_mapped()),
                );
                self.destroy_one(l6, lport, r6, rport)
            }
            _ => Ok(first),
        }
    }

    fn destroy_one(
        &mut self,
        local: IpAddr,
        lport: u16,
        remote: IpAddr,
        rport: u16,
    ) -> io::Result<Destroyed> {
        self.seq = self.seq.wrapping_add(1);
        let request = destroy_request(self.seq, local, lport, remote, rport);
        send_to_kernel(&self.fd, &request)?;
        loop {
            let n = recv_one(&self.fd, &mut self.buf)?;
            for msg in codec::messages(&self.buf[..n]) {
                let Ok(msg) = msg else {
                    return Err(io::Error::other("malformed sock_diag reply"));
                };
                if msg.kind != codec::NLMSG_ERROR || msg.seq != self.seq {
                    continue;
                }
                let errno = codec::error_code(&msg).map_err(|e| io::Error::other(e.to_string()))?;
                return Ok(match errno {
                    0 => Destroyed::Yes,
                    libc::ENOENT => Destroyed::NoSocket,
                    libc::EOPNOTSUPP | libc::EPERM | libc::EACCES => Destroyed::Unsupported,
                    e => return Err(io::Error::from_raw_os_error(e)),
                });
            }
        }
    }
}

/// The `SOCK_DESTROY` request: nlmsghdr + `inet_diag_req_v2` with the exact 4-tuple and no cookie.
pub fn destroy_request(seq: u32, local: IpAddr, lport: u16, remote: IpAddr, rport: u16) -> Vec<u8> {
    let family = if local.is_ipv4() {
        libc::AF_INET as u8
    } else {
        libc::AF_INET6 as u8
    };
    let mut m = Vec::with_capacity(72);
    m.extend(72u32.to_ne_bytes());
    m.extend(SOCK_DESTROY.to_ne_bytes());
    m.extend((NLM_F_REQUEST | NLM_F_ACK).to_ne_bytes());
    m.extend(seq.to_ne_bytes());
    m.extend(0u32.to_ne_bytes());
    // inet_diag_req_v2: family, protocol, ext, pad, states (all).
    m.extend([family, IPPROTO_TCP, 0, 0]);
    m.extend(u32::MAX.to_ne_bytes());
    // inet_diag_sockid: sport, dport (big-endian), src[4], dst[4], if, cookie[2].
    m.extend(lport.to_be_bytes());
    m.extend(rport.to_be_bytes());
    m.extend(addr16(local));
    m.extend(addr16(remote));
    m.extend(0u32.to_ne_bytes());
    m.extend(u32::MAX.to_ne_bytes());
    m.extend(u32::MAX.to_ne_bytes());
    m
}

fn addr16(addr: IpAddr) -> [u8; 16] {
    match addr {
        IpAddr::V4(a) => {
            let mut out = [0u8; 16];
            out[..4].copy_from_slice(&a.octets());
            out
        }
        IpAddr::V6(a) => Ipv6Addr::octets(&a),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_layout() {
        let r = destroy_request(
            9,
            "198.19.0.1".parse().unwrap(),
            25,
            "198.19.1.2".parse().unwrap(),
            40000,
        );
        assert_eq!(r.len(), 72);
        assert_eq!(u16::from_ne_bytes([r[4], r[5]]), SOCK_DESTROY);
        assert_eq!(r[16], libc::AF_INET as u8);
        assert_eq!(r[17], 6);
        assert_eq!(&r[24..26], &25u16.to_be_bytes());
        assert_eq!(&r[26..28], &40000u16.to_be_bytes());
        assert_eq!(&r[28..32], &[198, 19, 0, 1]);
        assert_eq!(&r[44..48], &[198, 19, 1, 2]);
        assert_eq!(&r[64..72], &[0xff; 8]);
        let v6 = destroy_request(
            1,
            "2001:db8::1".parse().unwrap(),
            25,
            "2001:db8::2".parse().unwrap(),
            1,
        );
        assert_eq!(v6[16], libc::AF_INET6 as u8);
        assert_eq!(
            v6[28..44],
            "2001:db8::1".parse::<Ipv6Addr>().unwrap().octets()
        );
    }
}
