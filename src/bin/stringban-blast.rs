//! `stringban-blast`: the live benchmark's packet generator. Sends TCP segments to port 25 from
//! many IPv4 sources through a raw socket, 64 per `sendmmsg`, bounded in count and time. A share
//! of the segments carries the pattern. Only for the benchmark's own namespaces: the destination
//! must be in 198.18.0.0/15 (sources 198.19.1.0 on, at most 65,000) or loopback (sources
//! 127.1.0.0 on, at most 16,000,000: how the memory test bans a million addresses). Up to 65,000
//! sources the segments are built once; beyond, each batch is built as it is sent.
//!
//! `stringban-blast DST COUNT SECONDS [--sources N] [--share PERMILLE] [--pattern S] [--pps N]
//! [--size PAYLOAD_BYTES]` — payloads are mail-body text padded to the size (default 64).
#![allow(unsafe_code)]

use std::io;
use std::mem;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use stringban::craft::tcp_segment;

struct Args {
    dst: Ipv4Addr,
    count: u64,
    seconds: f64,
    sources: u32,
    share_permille: u32,
    pattern: String,
    pps: u64,
    size: usize,
}

/// A command line that does not read (printed with the usage).
#[derive(Debug)]
struct BadArgs(String);

impl std::fmt::Display for BadArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<String> for BadArgs {
    fn from(s: String) -> BadArgs {
        BadArgs(s)
    }
}

impl From<&str> for BadArgs {
    fn from(s: &str) -> BadArgs {
        BadArgs(s.to_string())
    }
}

fn parse() -> Result<Args, BadArgs> {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: stringban-blast DST COUNT SECONDS [--sources N] [--share PERMILLE] [--pattern S] [--pps N] [--size PAYLOAD_BYTES]";
    if argv.len() < 3 {
        return Err(usage.into());
    }
    let dst: Ipv4Addr = argv[0]
        .parse()
        .map_err(|_| format!("DST = {}: not an IPv4 address", argv[0]))?;
    let in_range = dst.is_loopback() || (dst.octets()[0] == 198 && (dst.octets()[1] & 0xfe) == 18);
    if !in_range {
        return Err(BadArgs(format!(
            "DST = {dst}: only 198.18.0.0/15 or loopback (benchmark namespaces)"
        )));
    }
    let mut a = Args {
        dst,
        count: argv[1]
            .parse()
            .map_err(|_| format!("COUNT = {}: not a number", argv[1]))?,
        seconds: argv[2]
            .parse()
            .map_err(|_| format!("SECONDS = {}: not a number", argv[2]))?,
        sources: 4096,
        share_permille: 10,
        pattern: "@example.com".into(),
        pps: 0,
        size: 64,
    };
    let mut rest = argv[3..].iter();
    while let Some(flag) = rest.next() {
        let value = rest.next().ok_or(format!("{flag} needs a value"))?;
        let num = |v: &str| {
            v.parse::<u64>()
                .map_err(|_| format!("{flag} = {v}: not a number"))
        };
        match flag.as_str() {
            "--sources" => {
                let most = if a.dst.is_loopback() {
                    16_000_000
                } else {
                    65_000
                };
                a.sources = num(value)?.clamp(1, most) as u32
            }
            "--share" => a.share_permille = num(value)?.min(1000) as u32,
            "--pattern" => a.pattern = value.clone(),
            "--pps" => a.pps = num(value)?,
            "--size" => a.size = num(value)?.clamp(40, 1460) as usize,
            _ => return Err(BadArgs(format!("unknown flag {flag}; {usage}"))),
        }
    }
    if !(a.seconds > 0.0 && a.seconds <= 600.0) || a.count == 0 || a.count > 1_000_000_000 {
        return Err("COUNT must be 1..1e9 and SECONDS 0..600".into());
    }
    Ok(a)
}

/// Up to this many sources, every segment is built once before sending.
const PREBUILT: u32 = 65_000;

/// Source `i`'s address: 198.19.1.0 + i toward 198.18.0.0/15, 127.1.0.0 + i toward loopback.
fn source(a: &Args, i: u32) -> Ipv4Addr {
    let base = if a.dst.is_loopback() {
        Ipv4Addr::new(127, 1, 0, 0)
    } else {
        Ipv4Addr::new(198, 19, 1, 0)
    };
    Ipv4Addr::from(u32::from(base) + i)
}

/// Source `i`'s segment, clean or carrying the pattern. Body text up to the size; the pattern,
/// when carried, sits at the end (the whole segment is searched either way).
fn segment(a: &Args, i: u32, dirty: bool) -> Vec<u8> {
    let src = IpAddr::V4(source(a, i));
    let sport = 32_768 + (i % 28_000) as u16;
    let seq = i.wrapping_mul(2_654_435_761);
    let tail = if dirty {
        format!("victim{}>\r\n", a.pattern)
    } else {
        "hosted.example.net>\r\n".to_string()
    };
    let filler = b"the quarterly figures and the harbor report are attached as discussed. ";
    let mut body: Vec<u8> = filler
        .iter()
        .cycle()
        .take(a.size.saturating_sub(tail.len()))
        .copied()
        .collect();
    body.extend_from_slice(tail.as_bytes());
    tcp_segment((src, sport), (IpAddr::V4(a.dst), 25), seq, 1, &body)
}

/// Each source's segments, clean and carrying the pattern.
type Prebuilt = (Vec<Vec<u8>>, Vec<Vec<u8>>);

/// Prebuilt segments for each source, when there are at most [`PREBUILT`].
fn prebuilt(a: &Args) -> Option<Prebuilt> {
    (a.sources <= PREBUILT).then(|| {
        (0..a.sources)
            .map(|i| (segment(a, i, false), segment(a, i, true)))
            .unzip()
    })
}

fn raw_socket() -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2); checked before use.
    let fd = unsafe {
        libc::socket(
            libc::AF_INET,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::IPPROTO_RAW,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn main() -> ExitCode {
    let a = match parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("stringban-blast: {e}");
            return ExitCode::from(2);
        }
    };
    let sock = match raw_socket() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("stringban-blast: raw socket: {e} (needs root)");
            return ExitCode::from(1);
        }
    };
    let built = prebuilt(&a);
    let mut batch: Vec<Vec<u8>> = Vec::new();
    // SAFETY: sockaddr_in is plain data; zeroed is valid.
    let mut to: libc::sockaddr_in = unsafe { mem::zeroed() };
    to.sin_family = libc::AF_INET as libc::sa_family_t;
    to.sin_addr.s_addr = u32::from(a.dst).to_be();
    const BATCH: usize = 64;
    let deadline = Instant::now() + Duration::from_secs_f64(a.seconds);
    let started = Instant::now();
    let (mut sent, mut n, mut errors) = (0u64, 0u64, 0u64);
    while sent < a.count && Instant::now() < deadline {
        let k = BATCH.min((a.count - sent) as usize);
        // Every 1000 segments, `share_permille` carry the pattern.
        let pick = |j: usize| {
            let i = n + j as u64;
            (
                (i % u64::from(a.sources)) as u32,
                (i % 1000) < u64::from(a.share_permille),
            )
        };
        if built.is_none() {
            batch = (0..k)
                .map(|j| {
                    let (src, dirty) = pick(j);
                    segment(&a, src, dirty)
                })
                .collect();
        }
        let mut iovs: Vec<libc::iovec> = (0..k)
            .map(|j| {
                let seg = match &built {
                    Some((clean, dirty)) => {
                        let (src, carries) = pick(j);
                        if carries {
                            &dirty[src as usize]
                        } else {
                            &clean[src as usize]
                        }
                    }
                    None => &batch[j],
                };
                libc::iovec {
                    iov_base: seg.as_ptr() as *mut libc::c_void,
                    iov_len: seg.len(),
                }
            })
            .collect();
        // SAFETY: mmsghdr is plain data; zeroed is valid, and the fields are set below.
        let mut msgs: Vec<libc::mmsghdr> = (0..k).map(|_| unsafe { mem::zeroed() }).collect();
        for (m, iov) in msgs.iter_mut().zip(iovs.iter_mut()) {
            m.msg_hdr.msg_name = (&mut to as *mut libc::sockaddr_in).cast();
            m.msg_hdr.msg_namelen = mem::size_of::<libc::sockaddr_in>() as u32;
            m.msg_hdr.msg_iov = iov;
            m.msg_hdr.msg_iovlen = 1;
        }
        // SAFETY: `msgs` holds `k` headers pointing at live segments and at `to`.
        let r = unsafe { libc::sendmmsg(sock.as_raw_fd(), msgs.as_mut_ptr(), k as u32, 0) };
        if r < 0 {
            errors += 1;
            std::thread::sleep(Duration::from_micros(50));
            continue;
        }
        sent += r as u64;
        n += r as u64;
        if a.pps > 0 {
            let due = Duration::from_secs_f64(sent as f64 / a.pps as f64);
            if let Some(wait) = due.checked_sub(started.elapsed()) {
                std::thread::sleep(wait);
            }
        }
    }
    let secs = started.elapsed().as_secs_f64();
    println!("sent {sent} {secs:.3} {:.0} {errors}", sent as f64 / secs);
    ExitCode::SUCCESS
}
