//! Destroying a local TCP socket with `SOCK_DESTROY` over `NETLINK_SOCK_DIAG` (what `ss -K` does).
//!
//! The kernel aborts the socket (`tcp_abort`): the application sees `ECONNABORTED` and frees its
//! session at once, and the kernel sends the peer a RST with correct sequence numbers. Needs
//! `CONFIG_INET_DIAG_DESTROY` and CAP_NET_ADMIN; without them the kernel answers `EOPNOTSUPP` /
//! `EPERM` and the caller falls back to the kernel REJECT rule.
//!
//! Never destroy by tuple alone: for a tuple that matches no connection the kernel's lookup
//! falls back to the *listening* socket, and destroying that takes the server off the air. So
//! a session is first looked up by its exact tuple ([`SockDiag::session`]), kept only if the
//! answer is that very tuple in a state that has completed its handshake, and then destroyed by
//! the cookie the kernel gave it ([`SockDiag::destroy_session`]): if the session is gone by
//! then, the kernel finds the listener again, its cookie differs, and it answers `ESTALE`.
#![allow(unsafe_code)]

use std::io;
use std::net::{IpAddr, Ipv6Addr};
use std::os::fd::OwnedFd;

use super::nfqueue::codec::{self, NLM_F_ACK, NLM_F_REQUEST};
use super::nfqueue::{netlink_socket, recv_one, send_to_kernel, setsockopt};

const NETLINK_SOCK_DIAG: i32 = 4;
const SOCK_DESTROY: u16 = 21;
const SOCK_DIAG_BY_FAMILY: u16 = 20;
const NLM_F_DUMP: u16 = 0x300;
/// TCP states a dump asks for: every state with a session (not LISTEN, TIME_WAIT or CLOSE).
const SESSION_STATES: u32 =
    (1 << 1) | (1 << 2) | (1 << 3) | (1 << 4) | (1 << 5) | (1 << 8) | (1 << 9) | (1 << 11);
const IPPROTO_TCP: u8 = 6;

/// TCP states in which the peer has completed the handshake and the socket still takes its
/// data: ESTABLISHED, FIN_WAIT1, FIN_WAIT2. The proof that a source is who it says it is.
const TAKES_DATA: [u8; 3] = [1, 4, 5];
/// `inet_diag_sockid.idiag_cookie` meaning "any socket".
const NO_COOKIE: [u8; 8] = [0xff; 8];

/// The kernel's answer to a request naming one socket.
enum Answer {
    /// An `inet_diag_msg` (None: malformed or of another family).
    Socket(Option<TcpSocket>),
    /// An `NLMSG_ERROR`'s errno (0: success).
    Errno(i32),
}

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

/// A local TCP socket found by a dump: its two ends, as the socket's family has them (an IPv4
/// peer of a dual-stack listener appears IPv4-mapped).
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub struct TcpSocket {
    pub local: IpAddr,
    pub lport: u16,
    pub remote: IpAddr,
    pub rport: u16,
    /// `TCP_ESTABLISHED` (1) … `TCP_NEW_SYN_RECV` (12), as the kernel numbers them.
    pub state: u8,
    /// The kernel's identity of this very socket (`sock_gen_cookie`), as the dump gave it.
    pub cookie: [u8; 8],
}

impl TcpSocket {
    /// Has the peer completed the handshake, and does the socket still take its data?
    pub fn takes_data(&self) -> bool {
        TAKES_DATA.contains(&self.state)
    }
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

    /// The local session `local:lport` ↔ `remote:rport`, found by that exact tuple, if it has
    /// completed its handshake and still takes the peer's data ([`TcpSocket::takes_data`]).
    /// Never a listener, a half-open request or a closing socket. For IPv4, also looks for the
    /// IPv4-mapped form on AF_INET6 sockets (dual-stack listeners).
    pub fn session(
        &mut self,
        local: IpAddr,
        lport: u16,
        remote: IpAddr,
        rport: u16,
    ) -> io::Result<Option<TcpSocket>> {
        if let Some(s) = self.exact(local, lport, remote, rport)? {
            return Ok(Some(s));
        }
        match (local, remote) {
            (IpAddr::V4(l), IpAddr::V4(r)) => self.exact(
                IpAddr::V6(l.to_ipv6_mapped()),
                lport,
                IpAddr::V6(r.to_ipv6_mapped()),
                rport,
            ),
            _ => Ok(None),
        }
    }

    /// One exact lookup (`SOCK_DIAG_BY_FAMILY` without `NLM_F_DUMP`). The kernel answers with
    /// whatever socket its lookup finds — the listener, when no connection has the tuple — so
    /// the answer is kept only if it *is* the tuple, in a state that takes data.
    fn exact(
        &mut self,
        local: IpAddr,
        lport: u16,
        remote: IpAddr,
        rport: u16,
    ) -> io::Result<Option<TcpSocket>> {
        let answer = self.ask(
            SOCK_DIAG_BY_FAMILY,
            NLM_F_REQUEST,
            (local, lport, remote, rport),
            NO_COOKIE,
        )?;
        match answer {
            Answer::Socket(found) => Ok(found.filter(|s| {
                s.takes_data()
                    && (s.local, s.lport, s.remote, s.rport) == (local, lport, remote, rport)
            })),
            Answer::Errno(0 | libc::ENOENT) => Ok(None),
            Answer::Errno(e) => Err(io::Error::from_raw_os_error(e)),
        }
    }

    /// Sends one request naming a socket and reads the kernel's answer to it (by sequence
    /// number): the socket it describes, or the errno of its `NLMSG_ERROR` (0: success).
    fn ask(
        &mut self,
        kind: u16,
        flags: u16,
        tuple: (IpAddr, u16, IpAddr, u16),
        cookie: [u8; 8],
    ) -> io::Result<Answer> {
        self.seq = self.seq.wrapping_add(1);
        send_to_kernel(
            &self.fd,
            &sockid_request(self.seq, kind, flags, tuple, cookie),
        )?;
        loop {
            let n = recv_one(&self.fd, &mut self.buf)?;
            for msg in codec::messages(&self.buf[..n]) {
                let Ok(msg) = msg else {
                    return Err(io::Error::other("malformed sock_diag reply"));
                };
                if msg.seq != self.seq {
                    continue;
                }
                match msg.kind {
                    SOCK_DIAG_BY_FAMILY => return Ok(Answer::Socket(parse_diag_msg(msg.payload))),
                    codec::NLMSG_ERROR => {
                        let errno =
                            codec::error_code(&msg).map_err(|e| io::Error::other(e.to_string()))?;
                        return Ok(Answer::Errno(errno));
                    }
                    _ => {}
                }
            }
        }
    }

    /// Destroys `session` (found by [`SockDiag::session`] or a dump) by its tuple *and* cookie:
    /// if it is gone, the kernel's lookup falls back to the listener, whose cookie differs, and
    /// nothing is destroyed ([`Destroyed::NoSocket`]).
    pub fn destroy_session(&mut self, session: &TcpSocket) -> io::Result<Destroyed> {
        let answer = self.ask(
            SOCK_DESTROY,
            NLM_F_REQUEST | NLM_F_ACK,
            (session.local, session.lport, session.remote, session.rport),
            session.cookie,
        )?;
        Ok(match answer {
            Answer::Errno(0) => Destroyed::Yes,
            Answer::Errno(libc::ENOENT | libc::ESTALE) | Answer::Socket(_) => Destroyed::NoSocket,
            Answer::Errno(libc::EOPNOTSUPP | libc::EPERM | libc::EACCES) => Destroyed::Unsupported,
            Answer::Errno(e) => return Err(io::Error::from_raw_os_error(e)),
        })
    }

    /// The local TCP sessions with `remote` (IPv4 peers also as IPv4-mapped on AF_INET6).
    pub fn sessions_with(&mut self, remote: IpAddr) -> io::Result<Vec<TcpSocket>> {
        let mapped = match remote {
            IpAddr::V4(v4) => IpAddr::V6(v4.to_ipv6_mapped()),
            v6 => v6,
        };
        let mut found = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        for family in [libc::AF_INET as u8, libc::AF_INET6 as u8] {
            if family == libc::AF_INET as u8 && remote.is_ipv6() {
                continue;
            }
            self.seq = self.seq.wrapping_add(1);
            send_to_kernel(&self.fd, &dump_request(self.seq, family))?;
            'dump: loop {
                let n = recv_one(&self.fd, &mut buf)?;
                for msg in codec::messages(&buf[..n]) {
                    let msg = msg.map_err(|_| io::Error::other("malformed sock_diag reply"))?;
                    if msg.seq != self.seq {
                        continue;
                    }
                    match msg.kind {
                        codec::NLMSG_DONE => break 'dump,
                        codec::NLMSG_ERROR => {
                            let errno = codec::error_code(&msg)
                                .map_err(|e| io::Error::other(e.to_string()))?;
                            if errno != 0 {
                                return Err(io::Error::from_raw_os_error(errno));
                            }
                            break 'dump;
                        }
                        SOCK_DIAG_BY_FAMILY => {
                            if let Some(sock) = parse_diag_msg(msg.payload)
                                && (sock.remote == remote || sock.remote == mapped)
                            {
                                found.push(sock);
                            }
                        }
                        _ => {}
                    }
                }
            }
        }
        Ok(found)
    }

    /// Destroys every local TCP session with `remote` whose local port `guarded` admits: the
    /// local application sees `ECONNABORTED`, the peer a RST. Returns how many were destroyed,
    /// or [`Destroyed::Unsupported`] when the kernel cannot destroy sockets.
    pub fn destroy_sessions_with(
        &mut self,
        remote: IpAddr,
        guarded: impl Fn(u16) -> bool,
    ) -> io::Result<Result<u32, Destroyed>> {
        let mut n = 0;
        for s in self.sessions_with(remote)? {
            // A session that has not completed its handshake is no proof of anything, and
            // aborting a half-open request would hand its tuple to whoever raced for it.
            if !guarded(s.lport) || !s.takes_data() {
                continue;
            }
            match self.destroy_session(&s)? {
                Destroyed::Yes => n += 1,
                Destroyed::NoSocket => {}
                Destroyed::Unsupported => return Ok(Err(Destroyed::Unsupported)),
            }
        }
        Ok(Ok(n))
    }
}

/// A dump of the TCP sockets of `family` in [`SESSION_STATES`].
pub fn dump_request(seq: u32, family: u8) -> Vec<u8> {
    let mut m = Vec::with_capacity(72);
    m.extend(72u32.to_ne_bytes());
    m.extend(SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    m.extend((NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    m.extend(seq.to_ne_bytes());
    m.extend(0u32.to_ne_bytes());
    m.extend([family, IPPROTO_TCP, 0, 0]);
    m.extend(SESSION_STATES.to_ne_bytes());
    // inet_diag_sockid: all zero (no filter), cookie "none".
    m.extend([0u8; 40]);
    m.extend(u32::MAX.to_ne_bytes());
    m.extend(u32::MAX.to_ne_bytes());
    m
}

/// The two ends of the socket an `inet_diag_msg` describes, or None if it is malformed or of
/// another family.
pub fn parse_diag_msg(p: &[u8]) -> Option<TcpSocket> {
    if p.len() < 72 {
        return None;
    }
    let lport = u16::from_be_bytes([p[4], p[5]]);
    let rport = u16::from_be_bytes([p[6], p[7]]);
    let addr = |b: &[u8]| -> Option<IpAddr> {
        match i32::from(p[0]) {
            libc::AF_INET => Some(IpAddr::from(<[u8; 4]>::try_from(&b[..4]).ok()?)),
            libc::AF_INET6 => Some(IpAddr::from(<[u8; 16]>::try_from(&b[..16]).ok()?)),
            _ => None,
        }
    };
    Some(TcpSocket {
        local: addr(&p[8..24])?,
        lport,
        remote: addr(&p[24..40])?,
        rport,
        state: p[1],
        cookie: p[44..52].try_into().ok()?,
    })
}

/// A request naming one socket: nlmsghdr (`kind`, `flags`) + `inet_diag_req_v2` with the exact
/// 4-tuple (local, local port, remote, remote port) and `cookie` ([`NO_COOKIE`]: any socket).
pub fn sockid_request(
    seq: u32,
    kind: u16,
    flags: u16,
    (local, lport, remote, rport): (IpAddr, u16, IpAddr, u16),
    cookie: [u8; 8],
) -> Vec<u8> {
    let family = if local.is_ipv4() {
        libc::AF_INET as u8
    } else {
        libc::AF_INET6 as u8
    };
    let mut m = Vec::with_capacity(72);
    m.extend(72u32.to_ne_bytes());
    m.extend(kind.to_ne_bytes());
    m.extend(flags.to_ne_bytes());
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
    m.extend(cookie);
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
    fn dump_request_and_reply_layout() {
        let r = dump_request(9, libc::AF_INET as u8);
        assert_eq!(r.len(), 72);
        assert_eq!(u16::from_ne_bytes([r[4], r[5]]), SOCK_DIAG_BY_FAMILY);
        assert_eq!(u16::from_ne_bytes([r[6], r[7]]), NLM_F_REQUEST | NLM_F_DUMP);
        // An inet_diag_msg for 198.18.0.1:25 <- 198.19.0.7:40000.
        let mut m = vec![libc::AF_INET as u8, 1, 0, 0];
        m.extend(25u16.to_be_bytes());
        m.extend(40000u16.to_be_bytes());
        m.extend([198, 18, 0, 1]);
        m.extend([0; 12]);
        m.extend([198, 19, 0, 7]);
        m.extend([0; 12]);
        m.extend([0; 32]); // interface, cookie, expires, queues, uid, inode
        let s = parse_diag_msg(&m).unwrap();
        assert_eq!(s.local, "198.18.0.1".parse::<IpAddr>().unwrap());
        assert_eq!((s.lport, s.rport), (25, 40000));
        assert_eq!(s.remote, "198.19.0.7".parse::<IpAddr>().unwrap());
        assert_eq!(parse_diag_msg(&m[..71]), None);
        m[0] = 99;
        assert_eq!(parse_diag_msg(&m), None);
    }

    fn tuple(l: &str, lp: u16, r: &str, rp: u16) -> (IpAddr, u16, IpAddr, u16) {
        (l.parse().unwrap(), lp, r.parse().unwrap(), rp)
    }

    #[test]
    fn request_layout() {
        let cookie = [1, 2, 3, 4, 5, 6, 7, 8];
        let r = sockid_request(
            9,
            SOCK_DESTROY,
            NLM_F_REQUEST | NLM_F_ACK,
            tuple("198.19.0.1", 25, "198.19.1.2", 40000),
            cookie,
        );
        assert_eq!(r.len(), 72);
        assert_eq!(u16::from_ne_bytes([r[4], r[5]]), SOCK_DESTROY);
        assert_eq!(r[16], libc::AF_INET as u8);
        assert_eq!(r[17], 6);
        assert_eq!(&r[24..26], &25u16.to_be_bytes());
        assert_eq!(&r[26..28], &40000u16.to_be_bytes());
        assert_eq!(&r[28..32], &[198, 19, 0, 1]);
        assert_eq!(&r[44..48], &[198, 19, 1, 2]);
        assert_eq!(
            &r[64..72],
            &cookie,
            "destroyed by cookie, never by tuple alone"
        );
        let v6 = sockid_request(
            1,
            SOCK_DIAG_BY_FAMILY,
            NLM_F_REQUEST,
            tuple("2001:db8::1", 25, "2001:db8::2", 1),
            NO_COOKIE,
        );
        assert_eq!(u16::from_ne_bytes([v6[6], v6[7]]), NLM_F_REQUEST, "no dump");
        assert_eq!(v6[16], libc::AF_INET6 as u8);
        assert_eq!(
            v6[28..44],
            "2001:db8::1".parse::<Ipv6Addr>().unwrap().octets()
        );
    }

    /// The fields a lookup's answer is judged by: the listener the kernel falls back to is in
    /// state LISTEN with an empty remote end, so it is never taken for the session.
    #[test]
    fn only_sessions_that_completed_their_handshake_take_data() {
        let mut m = vec![libc::AF_INET as u8, 10, 0, 0];
        m.extend(25u16.to_be_bytes());
        m.extend(0u16.to_be_bytes());
        m.extend([198, 18, 0, 1]);
        m.extend([0; 12]);
        m.extend([0; 16]);
        m.extend([0; 4]);
        m.extend([9, 9, 9, 9, 9, 9, 9, 9]);
        m.extend([0; 20]);
        let listener = parse_diag_msg(&m).unwrap();
        assert_eq!(listener.cookie, [9; 8]);
        assert!(!listener.takes_data(), "LISTEN");
        for (state, takes) in [
            (1, true),
            (3, false),
            (4, true),
            (5, true),
            (6, false),
            (8, false),
            (12, false),
        ] {
            let mut s = m.clone();
            s[1] = state;
            assert_eq!(
                parse_diag_msg(&s).unwrap().takes_data(),
                takes,
                "state {state}"
            );
        }
    }
}
