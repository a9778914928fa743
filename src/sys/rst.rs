//! A crafted RST toward the local side, for kernels where `SOCK_DESTROY` is unavailable
//! (`CONFIG_INET_DIAG_DESTROY` is off by default upstream) or where no local socket exists.
//!
//! The RST claims to come from the remote peer, with `seq` = the dropped segment's sequence
//! number: the receiver's `rcv_nxt` when that segment was the next in order, which is what Linux
//! requires of an acceptable RST (RFC 5961). It is sent through a raw socket with the INJECT
//! mark, which the STRINGBAN chain returns on first, so the daemon's own ban does not drop it.
#![allow(unsafe_code)]

use std::io;
use std::mem;
use std::net::IpAddr;
use std::os::fd::{FromRawFd, OwnedFd};

use super::nfqueue::{send_to, setsockopt};
use crate::craft::tcp_rst;

/// Raw sockets (IPv4 and IPv6) that send crafted RSTs with a mark.
#[derive(Debug)]
pub struct RstInjector {
    v4: OwnedFd,
    v6: Option<OwnedFd>,
}

fn raw(family: i32, mark: u32) -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2); checked before use.
    let fd = unsafe {
        libc::socket(
            family,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::IPPROTO_RAW,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor we own.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    setsockopt(&fd, libc::SOL_SOCKET, libc::SO_MARK, &mark)?;
    Ok(fd)
}

impl RstInjector {
    /// Opens the sockets; `mark` is set on every RST sent.
    pub fn open(mark: u32) -> io::Result<RstInjector> {
        Ok(RstInjector {
            v4: raw(libc::AF_INET, mark)?,
            v6: raw(libc::AF_INET6, mark).ok(),
        })
    }

    /// Sends a RST from `remote:rport` to `local:lport` with sequence number `seq`.
    pub fn send(
        &self,
        remote: IpAddr,
        rport: u16,
        local: IpAddr,
        lport: u16,
        seq: u32,
    ) -> io::Result<()> {
        let packet = tcp_rst((remote, rport), (local, lport), seq);
        match local {
            IpAddr::V4(dst) => {
                // SAFETY: sockaddr_in is plain data; zeroed is valid.
                let mut to: libc::sockaddr_in = unsafe { mem::zeroed() };
                to.sin_family = libc::AF_INET as libc::sa_family_t;
                to.sin_addr.s_addr = u32::from(dst).to_be();
                send_to(&self.v4, &packet, &to)
            }
            IpAddr::V6(dst) => {
                let Some(v6) = &self.v6 else {
                    return Err(io::Error::other("no IPv6 raw socket"));
                };
                // SAFETY: sockaddr_in6 is plain data; zeroed is valid.
                let mut to: libc::sockaddr_in6 = unsafe { mem::zeroed() };
                to.sin6_family = libc::AF_INET6 as libc::sa_family_t;
                to.sin6_addr.s6_addr = dst.octets();
                send_to(v6, &packet, &to)
            }
        }
    }
}
