//! Our own NFQUEUE binding: a netlink socket bound to one queue, batch receive, batch verdicts.
//!
//! [`codec`] is the pure wire format; this module is the thin layer of system calls around it.
//! One [`Queue`] per worker thread. Packets are received many per wake-up (`recvmmsg` with
//! `MSG_WAITFORONE`); the verdicts of a batch go to the kernel in one `sendmsg`: each drop,
//! repeat or marked verdict on its own, then one `NFQNL_MSG_VERDICT_BATCH` accepting the rest.
#![allow(unsafe_code)]

pub mod codec;

use std::fmt;
use std::io;
use std::mem;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use codec::{Builder, CodecError, Message};

/// How a queue is set up.
#[derive(Clone, Debug, Eq, PartialEq)]
pub struct QueueConfig {
    pub num: u16,
    /// Bytes of each packet copied to us, from the IP header (at most 65531 are delivered).
    pub copy_range: u32,
    /// Packets the kernel holds for us before it drops (or, with fail-open, accepts) more.
    pub maxlen: u32,
    /// When the queue is full, accept packets instead of dropping them.
    pub fail_open: bool,
    /// Receive GSO packets unsegmented (fewer, larger packets; see the README).
    pub gso: bool,
    /// Receive buffer in bytes (`SO_RCVBUFFORCE`); 0 = `maxlen × copy_range`, capped at 256 MiB.
    pub rcvbuf: usize,
    /// Packets received per wake-up at most.
    pub batch: usize,
    /// Microseconds to keep polling for packets before sleeping (0: sleep at once).
    pub busy_poll_us: u64,
}

impl QueueConfig {
    pub fn new(num: u16) -> QueueConfig {
        QueueConfig {
            num,
            copy_range: 0xffff,
            maxlen: 65_536,
            fail_open: true,
            gso: true,
            rcvbuf: 0,
            batch: 64,
            busy_poll_us: 200,
        }
    }

    fn rcvbuf_bytes(&self) -> usize {
        if self.rcvbuf > 0 {
            return self.rcvbuf;
        }
        (self.maxlen as usize)
            .saturating_mul(self.copy_range as usize)
            .min(256 << 20)
    }
}

/// Why a queue could not be set up or used.
#[derive(Debug)]
pub enum QueueError {
    Socket {
        source: io::Error,
    },
    /// The kernel refused the bind or config (`errno`).
    Config {
        queue: u16,
        errno: i32,
    },
    Io {
        queue: u16,
        source: io::Error,
    },
    Codec {
        queue: u16,
        source: CodecError,
    },
}

impl fmt::Display for QueueError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            QueueError::Socket { source } => write!(f, "netlink socket: {source}"),
            QueueError::Config { queue, errno }
                if *errno == libc::EBUSY || (*errno == libc::EPERM && is_bound(*queue)) =>
            {
                write!(
                    f,
                    "queue {queue} is bound by another process (is stringban already running?)"
                )
            }
            QueueError::Config { queue, errno } if *errno == libc::EPERM => {
                write!(
                    f,
                    "queue {queue}: binding needs CAP_NET_ADMIN (run as root)"
                )
            }
            QueueError::Config { queue, errno } => {
                write!(
                    f,
                    "queue {queue}: the kernel refused the configuration: {}",
                    io::Error::from_raw_os_error(*errno)
                )
            }
            QueueError::Io { queue, source } => write!(f, "queue {queue}: {source}"),
            QueueError::Codec { queue, source } => write!(f, "queue {queue}: {source}"),
        }
    }
}

impl std::error::Error for QueueError {}

/// `SOL_NETLINK` and `NETLINK_NO_ENOBUFS` (linux/netlink.h).
const SOL_NETLINK: i32 = 270;
const NETLINK_NO_ENOBUFS: i32 = 5;

/// A bound NFQUEUE queue.
pub struct Queue {
    fd: OwnedFd,
    config: QueueConfig,
    seq: u32,
    bufs: Vec<Vec<u8>>,
    lens: Vec<usize>,
    iovs: Vec<libc::iovec>,
    hdrs: Vec<libc::mmsghdr>,
    out: Builder,
}

// SAFETY: the raw pointers in `iovs` and `hdrs` point only into `bufs`, which the `Queue`
// owns and moves with it; they are rewritten before every use.
unsafe impl Send for Queue {}

impl fmt::Debug for Queue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Queue")
            .field("num", &self.config.num)
            .finish()
    }
}

fn check(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// `setsockopt(2)` with a typed value.
pub(crate) fn setsockopt<T>(fd: &OwnedFd, level: i32, name: i32, value: &T) -> io::Result<()> {
    // SAFETY: `value` points to a live `T` of the size passed.
    let ret = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (value as *const T).cast(),
            mem::size_of::<T>() as libc::socklen_t,
        )
    };
    check(ret).map(drop)
}

/// Opens a netlink socket of `protocol`, bound with a kernel-chosen port id.
pub(crate) fn netlink_socket(protocol: i32) -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2) call; the result is checked before use.
    let raw = check(unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            protocol,
        )
    })?;
    // SAFETY: `raw` is a fresh descriptor we own.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: sockaddr_nl is plain data; zeroed is a valid value.
    let mut addr: libc::sockaddr_nl = unsafe { mem::zeroed() };
    addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
    // SAFETY: `addr` is a valid sockaddr_nl of the size passed.
    check(unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&addr as *const libc::sockaddr_nl).cast(),
            mem::size_of::<libc::sockaddr_nl>() as u32,
        )
    })?;
    Ok(fd)
}

/// `sendto(2)` of `bytes` to the socket address `addr` (a `sockaddr_*`).
pub(crate) fn send_to<A>(fd: &OwnedFd, bytes: &[u8], addr: &A) -> io::Result<()> {
    // SAFETY: `bytes` and `addr` are live and valid for the lengths passed.
    let ret = unsafe {
        libc::sendto(
            fd.as_raw_fd(),
            bytes.as_ptr().cast(),
            bytes.len(),
            0,
            (addr as *const A).cast(),
            mem::size_of::<A>() as libc::socklen_t,
        )
    };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Sends `bytes` to the kernel on a netlink socket.
pub(crate) fn send_to_kernel(fd: &OwnedFd, bytes: &[u8]) -> io::Result<()> {
    // SAFETY: sockaddr_nl is plain data; zeroed is a valid value (pid 0 = the kernel).
    let mut addr: libc::sockaddr_nl = unsafe { mem::zeroed() };
    addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
    send_to(fd, bytes, &addr)
}

/// Receives one datagram into `buf`; returns its length.
pub(crate) fn recv_one(fd: &OwnedFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: `buf` is valid for writes of its length.
    let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

impl Queue {
    /// Opens a socket, binds queue `config.num`, and sets copy mode, queue length and flags.
    pub fn open(config: QueueConfig) -> Result<Queue, QueueError> {
        let fd = netlink_socket(codec::NETLINK_NETFILTER)
            .map_err(|source| QueueError::Socket { source })?;
        let rcvbuf = i32::try_from(config.rcvbuf_bytes()).unwrap_or(i32::MAX);
        // SO_RCVBUFFORCE needs CAP_NET_ADMIN; SO_RCVBUF (capped by rmem_max) is the fallback.
        if setsockopt(&fd, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, &rcvbuf).is_err() {
            let _ = setsockopt(&fd, libc::SOL_SOCKET, libc::SO_RCVBUF, &rcvbuf);
        }
        let one: i32 = 1;
        let _ = setsockopt(&fd, SOL_NETLINK, NETLINK_NO_ENOBUFS, &one);
        let timeout = libc::timeval {
            tv_sec: 0,
            tv_usec: 200_000,
        };
        setsockopt(&fd, libc::SOL_SOCKET, libc::SO_RCVTIMEO, &timeout)
            .map_err(|source| QueueError::Socket { source })?;
        let buf_len = config.copy_range as usize + 512;
        let mut queue = Queue {
            fd,
            bufs: vec![vec![0u8; buf_len]; config.batch.max(1)],
            lens: vec![0; config.batch.max(1)],
            iovs: vec![
                libc::iovec {
                    iov_base: std::ptr::null_mut(),
                    iov_len: 0
                };
                config.batch.max(1)
            ],
            // SAFETY: mmsghdr is plain data; zeroed is a valid value.
            hdrs: (0..config.batch.max(1))
                .map(|_| unsafe { mem::zeroed() })
                .collect(),
            config,
            seq: 0,
            out: Builder::new(),
        };
        queue.command(|b, seq, num| b.config_cmd(seq, num, codec::CMD_BIND))?;
        let c = &queue.config;
        let flags = if c.fail_open {
            codec::CFG_F_FAIL_OPEN
        } else {
            0
        } | if c.gso { codec::CFG_F_GSO } else { 0 };
        let (copy_range, maxlen) = (c.copy_range, c.maxlen);
        queue.command(|b, seq, num| b.config_params(seq, num, copy_range, maxlen, flags))?;
        Ok(queue)
    }

    pub fn num(&self) -> u16 {
        self.config.num
    }

    /// Sends one acknowledged config message and waits for its acknowledgement.
    fn command(&mut self, build: impl FnOnce(&mut Builder, u32, u16)) -> Result<(), QueueError> {
        let num = self.config.num;
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        self.out.clear();
        build(&mut self.out, seq, num);
        send_to_kernel(&self.fd, self.out.as_bytes())
            .map_err(|source| QueueError::Io { queue: num, source })?;
        for _ in 0..64 {
            let n = match recv_one(&self.fd, &mut self.bufs[0]) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(source) => return Err(QueueError::Io { queue: num, source }),
            };
            for msg in codec::messages(&self.bufs[0][..n]) {
                let msg = msg.map_err(|source| QueueError::Codec { queue: num, source })?;
                if msg.kind == codec::NLMSG_ERROR && msg.seq == seq {
                    let errno = codec::error_code(&msg)
                        .map_err(|source| QueueError::Codec { queue: num, source })?;
                    return if errno == 0 {
                        Ok(())
                    } else {
                        Err(QueueError::Config { queue: num, errno })
                    };
                }
            }
        }
        Err(QueueError::Io {
            queue: num,
            source: io::Error::new(io::ErrorKind::TimedOut, "no acknowledgement"),
        })
    }

    /// Receives up to `batch` packets. Busy-polls for `busy_poll_us` first (non-blocking
    /// receives), then sleeps up to 200 ms. Returns how many datagrams arrived (0 on timeout).
    ///
    /// Why poll: a sleeping reader must be woken for every packet the kernel queues, and that
    /// wake-up (a cross-CPU interrupt, costly in a VM) is paid on the CPU that is receiving the
    /// traffic. A reader that is still polling when the next packet arrives costs the producer
    /// nothing. Under no traffic the poll ends quickly and the thread sleeps.
    pub fn recv(&mut self) -> Result<usize, QueueError> {
        let got = self.recv_flags(libc::MSG_DONTWAIT)?;
        if got > 0 {
            return Ok(got);
        }
        if self.config.busy_poll_us > 0 {
            let until = std::time::Instant::now()
                + std::time::Duration::from_micros(self.config.busy_poll_us);
            while std::time::Instant::now() < until {
                if self.readable() {
                    let got = self.recv_flags(libc::MSG_DONTWAIT)?;
                    if got > 0 {
                        return Ok(got);
                    }
                }
                std::hint::spin_loop();
            }
        }
        self.recv_flags(libc::MSG_WAITFORONE)
    }

    /// Is a datagram waiting? `poll` with a zero timeout reads the receive queue without taking
    /// its lock, so spinning on it does not contend with the kernel queueing the next packet.
    fn readable(&self) -> bool {
        let mut pfd = libc::pollfd {
            fd: self.fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd for the duration of the call.
        unsafe { libc::poll(&mut pfd, 1, 0) > 0 }
    }

    fn recv_flags(&mut self, flags: libc::c_int) -> Result<usize, QueueError> {
        let n = self.bufs.len();
        for (i, b) in self.bufs.iter_mut().enumerate() {
            self.iovs[i] = libc::iovec {
                iov_base: b.as_mut_ptr().cast(),
                iov_len: b.len(),
            };
        }
        for (h, iov) in self.hdrs.iter_mut().zip(self.iovs.iter_mut()) {
            // SAFETY: mmsghdr is plain data; zeroed is valid, and the iovec is set next.
            *h = unsafe { mem::zeroed() };
            h.msg_hdr.msg_iov = iov;
            h.msg_hdr.msg_iovlen = 1;
        }
        // SAFETY: `hdrs` holds `n` headers whose iovecs point into `self.bufs`, alive and
        // unaliased for the call.
        let got = unsafe {
            libc::recvmmsg(
                self.fd.as_raw_fd(),
                self.hdrs.as_mut_ptr(),
                n as u32,
                flags,
                std::ptr::null_mut(),
            )
        };
        if got < 0 {
            let e = io::Error::last_os_error();
            return match e.kind() {
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => Ok(0),
                // ENOBUFS: the kernel dropped messages for us; counted in /proc, go on.
                _ if e.raw_os_error() == Some(libc::ENOBUFS) => Ok(0),
                _ => Err(QueueError::Io {
                    queue: self.config.num,
                    source: e,
                }),
            };
        }
        for (len, h) in self.lens.iter_mut().zip(&self.hdrs).take(got as usize) {
            *len = h.msg_len as usize;
        }
        Ok(got as usize)
    }

    /// The netlink messages of received datagram `i` (`i < recv()`'s count).
    pub fn datagram(&self, i: usize) -> impl Iterator<Item = Result<Message<'_>, CodecError>> {
        codec::messages(&self.bufs[i][..self.lens[i]])
    }

    /// Sends verdicts built in `out` (one `sendmsg`).
    pub fn send(&self, out: &Builder) -> Result<(), QueueError> {
        if out.is_empty() {
            return Ok(());
        }
        send_to_kernel(&self.fd, out.as_bytes()).map_err(|source| QueueError::Io {
            queue: self.config.num,
            source,
        })
    }
}

impl Drop for Queue {
    fn drop(&mut self) {
        let _ = self.command(|b, seq, num| b.config_cmd(seq, num, codec::CMD_UNBIND));
    }
}

/// Is queue `num` bound by some process? (The kernel answers a bind of a queue that another
/// socket owns with `EPERM`, the same as a missing capability.)
fn is_bound(num: u16) -> bool {
    kernel_counters().iter().any(|c| c.queue == num)
}

/// Reads the kernel's per-queue counters (`/proc/net/netfilter/nfnetlink_queue`).
pub fn kernel_counters() -> Vec<codec::QueueCounters> {
    std::fs::read_to_string("/proc/net/netfilter/nfnetlink_queue")
        .map(|t| codec::parse_proc(&t))
        .unwrap_or_default()
}
