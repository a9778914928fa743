//! Durable bans (docs/ARCHITECTURE.md, *Durable bans*): a snapshot file and an append-only journal in a state directory.
//!
//! ```text
//! bans.snapshot   header: magic "SBSNAPSH", version, generation, record count, list names,
//!                         per-list counts and hash keys, crc
//!                 blocks: magic "SBBK", record count (≤ 1024), crc32 of count and records,
//!                         fixed 40-byte records
//!                 trailer: a copy of the header, its length, magic "SBTL"
//! bans.journal    header: magic "SBJOURNL", version, generation, list names, crc — twice
//!                 records: fixed 48 bytes (ban / remove / flush), each with its crc32
//! ```
//!
//! Written: the snapshot to a temporary file, fsync'd, read back and checked, renamed over the
//! old one, the directory fsync'd — so a snapshot that does not read back whole never replaces
//! the previous one; the journal appended as changes come and fsync'd in small batches by the
//! daemon.
//! Loaded: the snapshot, then the journal of the same generation (one of another generation
//! predates the snapshot, whose state already includes it), dropping what has expired. The
//! journal is then appended to (its torn tail cut off), and folded into a new snapshot and an
//! empty journal of the next generation in the background.
//!
//! A damaged file never stops a start and never silently empties the list: each snapshot block
//! and each journal record carries its own crc32, so what is valid is restored and the rest is
//! reported (a torn journal tail from a crash is the common case). One damaged byte loses at
//! most one block: a damaged header is read from its copy (the snapshot's trailer, the
//! journal's second header), and after a damaged block the reader resynchronises on the next
//! block magic whose checksum holds. A damaged file is kept beside the state (`.damaged`)
//! before anything replaces it. Version-1 snapshots (no block magic, no trailer) still load. Times are whole seconds
//! (the blacklist's resolution); lists are matched by name, so reordering lists is harmless.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

use crate::blacklist::{Ban, Blacklist, Change, HashKeys, Key, ListId, RuleId};
use crate::time::Instant;

pub const SNAPSHOT: &str = "bans.snapshot";
pub const JOURNAL: &str = "bans.journal";
const SNAP_MAGIC: &[u8; 8] = b"SBSNAPSH";
const JOURNAL_MAGIC: &[u8; 8] = b"SBJOURNL";
/// The version written; 1 (no block magic, no trailer, one journal header) is still read.
const VERSION: u32 = 2;
const BLOCK_MAGIC: &[u8; 4] = b"SBBK";
const TRAILER_MAGIC: &[u8; 4] = b"SBTL";
/// Bytes before a version-2 block's records: magic, count, crc.
const BLOCK_HEAD: usize = 12;
/// Largest header read (the list-name table is bounded by it).
const MAX_HEADER: usize = 64 * 1024;
/// Bytes of a snapshot record.
pub const RECORD: usize = 40;
/// Bytes of a journal record, its crc included.
pub const JOURNAL_RECORD: usize = 48;
/// Records per snapshot block.
const BLOCK: usize = 1024;

const KIND_BAN: u8 = 1;
const KIND_REMOVE: u8 = 2;
const KIND_FLUSH: u8 = 3;

/// What loading found.
#[derive(Clone, Debug, Default, Eq, PartialEq)]
pub struct Loaded {
    /// Bans restored from the snapshot and the journal, live at load time.
    pub restored: usize,
    /// Records skipped because their ban had expired.
    pub expired: usize,
    /// Journal records applied.
    pub journal_records: usize,
    /// Damage and leftovers, one line each (file, what, how much was lost).
    pub problems: Vec<String>,
    /// The generation loaded (0: nothing on disk).
    pub generation: u64,
}

/// A persisted ban: the list's name index in the file's table and the ban.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
struct Rec {
    list: u16,
    ban: Ban,
}

fn put_key(out: &mut Vec<u8>, key: Key) {
    match key {
        Key::V4 { addr, prefix } => {
            out.extend_from_slice(&[4, prefix]);
            let mut a = [0u8; 16];
            a[..4].copy_from_slice(&addr.to_be_bytes());
            out.extend_from_slice(&a);
        }
        Key::V6 { addr, prefix } => {
            out.extend_from_slice(&[6, prefix]);
            out.extend_from_slice(&addr.to_be_bytes());
        }
    }
}

fn get_key(b: &[u8]) -> Option<Key> {
    let (family, prefix, a) = (b[0], b[1], &b[2..18]);
    match family {
        4 if prefix <= 32 => Some(Key::V4 {
            addr: u32::from_be_bytes(a[..4].try_into().ok()?),
            prefix,
        }),
        6 if prefix <= 128 => Some(Key::V6 {
            addr: u128::from_be_bytes(a.try_into().ok()?),
            prefix,
        }),
        _ => None,
    }
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(x)
}

fn secs(t: Instant) -> [u8; 4] {
    t.secs_u32().to_le_bytes()
}

fn at_secs(s: u32) -> Instant {
    Instant::from_secs(u64::from(s))
}

/// The 40-byte snapshot record of a ban.
fn encode_record(out: &mut Vec<u8>, list: u16, ban: &Ban) {
    out.extend_from_slice(&list.to_le_bytes());
    put_key(out, ban.key);
    out.extend_from_slice(&secs(ban.first_seen));
    out.extend_from_slice(&secs(ban.last_seen));
    out.extend_from_slice(&secs(ban.expires_at));
    out.extend_from_slice(&ban.hits.to_le_bytes());
    out.extend_from_slice(&ban.rule.to_le_bytes());
    // Zero in files written before thresholds and escalation (issue 13): no strikes, and a
    // live ban there counts as a first offence when restored.
    out.extend_from_slice(&[ban.strikes, ban.offences]);
}

fn decode_record(b: &[u8]) -> Option<Rec> {
    let key = get_key(&b[2..20])?;
    Some(Rec {
        list: u16_at(b, 0),
        ban: Ban {
            key,
            first_seen: at_secs(u32_at(b, 20)),
            last_seen: at_secs(u32_at(b, 24)),
            expires_at: at_secs(u32_at(b, 28)),
            hits: u32_at(b, 32),
            rule: u16_at(b, 36) as RuleId,
            strikes: b[38],
            offences: b[39],
        },
    })
}

/// The list-name table: count, then each name's length and bytes.
fn encode_names(out: &mut Vec<u8>, names: &[String]) {
    out.extend_from_slice(&(names.len() as u16).to_le_bytes());
    for n in names {
        let n = &n.as_bytes()[..n.len().min(255)];
        out.push(n.len() as u8);
        out.extend_from_slice(n);
    }
}

fn decode_names(b: &[u8]) -> Option<(Vec<String>, usize)> {
    let count = usize::from(u16::from_le_bytes(b.get(..2)?.try_into().ok()?));
    let mut at = 2;
    let mut names = Vec::with_capacity(count);
    for _ in 0..count {
        let len = usize::from(*b.get(at)?);
        let name = b.get(at + 1..at + 1 + len)?;
        names.push(String::from_utf8_lossy(name).into_owned());
        at += 1 + len;
    }
    Some((names, at))
}

/// A file header: magic, version, generation, [count,] names, [per-list IPv4/IPv6 counts,]
/// crc32 of all that.
fn encode_header(
    magic: &[u8; 8],
    generation: u64,
    count: Option<u64>,
    names: &[String],
    meta: &[[u64; 4]],
) -> Vec<u8> {
    let mut h = Vec::with_capacity(64);
    h.extend_from_slice(magic);
    h.extend_from_slice(&VERSION.to_le_bytes());
    h.extend_from_slice(&generation.to_le_bytes());
    if let Some(c) = count {
        h.extend_from_slice(&c.to_le_bytes());
    }
    encode_names(&mut h, names);
    for m in meta {
        for x in m {
            h.extend_from_slice(&x.to_le_bytes());
        }
    }
    let crc = crc32fast::hash(&h);
    h.extend_from_slice(&crc.to_le_bytes());
    h
}

/// Parsed header: generation, count and per-list hash keys (snapshot only), names, length.
struct Header {
    version: u32,
    generation: u64,
    count: u64,
    names: Vec<String>,
    keys: Vec<HashKeys>,
    len: usize,
}

/// Why a state file's header (or the file as a whole) cannot be read.
#[derive(Debug)]
pub enum FormatError {
    BadMagic,
    CutShort,
    Version(u32),
    Checksum,
    Io(io::Error),
}

impl std::fmt::Display for FormatError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FormatError::BadMagic => f.write_str("not a stringban state file (bad magic)"),
            FormatError::CutShort => f.write_str("header cut short"),
            FormatError::Version(v) => {
                write!(f, "version {v}, this stringban reads 1 to {VERSION}")
            }
            FormatError::Checksum => f.write_str("header checksum mismatch"),
            FormatError::Io(e) => write!(f, "reading it: {e}"),
        }
    }
}

impl std::error::Error for FormatError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            FormatError::Io(e) => Some(e),
            _ => None,
        }
    }
}

fn decode_header(b: &[u8], magic: &[u8; 8], with_count: bool) -> Result<Header, FormatError> {
    if b.len() < 8 || &b[..8] != magic {
        return Err(FormatError::BadMagic);
    }
    if b.len() < 22 {
        return Err(FormatError::CutShort);
    }
    let version = u32_at(b, 8);
    if !(1..=VERSION).contains(&version) {
        return Err(FormatError::Version(version));
    }
    let generation = u64_at(b, 12);
    let mut at = 20;
    let count = if with_count {
        if b.len() < 30 {
            return Err(FormatError::CutShort);
        }
        at = 28;
        u64_at(b, 20)
    } else {
        0
    };
    let (names, used) = decode_names(&b[at..]).ok_or(FormatError::CutShort)?;
    at += used;
    let mut keys = Vec::new();
    if with_count {
        // Per list: IPv4 and IPv6 counts (informative), then the two hash keys.
        for _ in &names {
            if b.len() < at + 32 {
                return Err(FormatError::CutShort);
            }
            keys.push(HashKeys(u64_at(b, at + 16), u64_at(b, at + 24)));
            at += 32;
        }
    }
    if b.len() < at + 4 {
        return Err(FormatError::CutShort);
    }
    if crc32fast::hash(&b[..at]) != u32_at(b, at) {
        return Err(FormatError::Checksum);
    }
    Ok(Header {
        version,
        generation,
        count,
        names,
        keys,
        len: at + 4,
    })
}

/// The names of `blacklist`'s lists, by [`ListId`].
fn names_of(blacklist: &Blacklist) -> Vec<String> {
    blacklist
        .lists()
        .iter()
        .map(|l| l.config().name.clone())
        .collect()
}

/// The hash keys each list had in the snapshot in `dir`, by list name (empty when there is no
/// readable snapshot): a restart builds its lists with them (`Blacklist::with_hash_keys`), so
/// that loading inserts in bucket order.
pub fn peek_keys(dir: &Path) -> Vec<(String, HashKeys)> {
    let Ok(mut f) = File::open(dir.join(SNAPSHOT)) else {
        return Vec::new();
    };
    match locate(&mut f) {
        Ok(at) => at.header.names.into_iter().zip(at.header.keys).collect(),
        Err(_) => Vec::new(),
    }
}

/// Writes a snapshot of every live ban at `now` to `dir`: a temporary file, fsync'd, read back
/// and checked whole, then renamed over the old one and the directory fsync'd. On any failure
/// the temporary file is removed (a full disk gets its space back) and the previous snapshot
/// stays. Returns the number of bans written.
pub fn write_snapshot(
    dir: &Path,
    blacklist: &Blacklist,
    generation: u64,
    now: Instant,
) -> io::Result<u64> {
    let tmp = dir.join(format!("{SNAPSHOT}.tmp"));
    let written = write_checked(&tmp, blacklist, generation, now);
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    let count = written?;
    fs::rename(&tmp, dir.join(SNAPSHOT))?;
    sync_dir(dir)?;
    Ok(count)
}

fn write_checked(
    tmp: &Path,
    blacklist: &Blacklist,
    generation: u64,
    now: Instant,
) -> io::Result<u64> {
    let bans: Vec<Vec<Ban>> = blacklist.lists().iter().map(|l| l.records(now)).collect();
    let count: u64 = bans.iter().map(|b| b.len() as u64).sum();
    let file = create_private(tmp)?;
    let mut w = BufWriter::with_capacity(1 << 20, file);
    let meta: Vec<[u64; 4]> = bans
        .iter()
        .zip(blacklist.lists())
        .map(|(b, l)| {
            let v4 = b.iter().filter(|b| matches!(b.key, Key::V4 { .. })).count() as u64;
            let k = l.hash_keys();
            [v4, b.len() as u64 - v4, k.0, k.1]
        })
        .collect();
    let header = encode_header(
        SNAP_MAGIC,
        generation,
        Some(count),
        &names_of(blacklist),
        &meta,
    );
    w.write_all(&header)?;
    let mut block = Vec::with_capacity(BLOCK * RECORD);
    let mut n = 0u32;
    let flush = |w: &mut BufWriter<File>, block: &mut Vec<u8>, n: &mut u32| -> io::Result<()> {
        if *n > 0 {
            w.write_all(BLOCK_MAGIC)?;
            w.write_all(&n.to_le_bytes())?;
            w.write_all(&block_crc(*n, block).to_le_bytes())?;
            w.write_all(block)?;
            block.clear();
            *n = 0;
        }
        Ok(())
    };
    for (list, bans) in bans.iter().enumerate() {
        for ban in bans {
            encode_record(&mut block, list as u16, ban);
            n += 1;
            if n as usize == BLOCK {
                flush(&mut w, &mut block, &mut n)?;
            }
        }
    }
    flush(&mut w, &mut block, &mut n)?;
    w.write_all(&header)?;
    w.write_all(&(header.len() as u32).to_le_bytes())?;
    w.write_all(TRAILER_MAGIC)?;
    let file = w.into_inner().map_err(|e| e.into_error())?;
    file.sync_all()?;
    drop(file);
    let check = check_snapshot(tmp)?;
    if check.records != count || !check.problems.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "the new snapshot read back {} of {count} records ({}); the previous one is kept",
                check.records,
                check.problems.join("; ")
            ),
        ));
    }
    Ok(count)
}

/// A version-2 block's checksum: its record count, then its records.
fn block_crc(n: u32, records: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&n.to_le_bytes());
    h.update(records);
    h.finalize()
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Maps a file's list-name table onto the blacklist's lists.
fn map_lists(names: &[String], blacklist: &Blacklist) -> Vec<Option<ListId>> {
    names
        .iter()
        .map(|n| blacklist.by_name(n).map(|(id, _)| id))
        .collect()
}

/// Where a snapshot's blocks are, and the header that describes them.
struct Located {
    header: Header,
    /// Offsets of the first block and of the end of the last (the trailer's start).
    blocks: (u64, u64),
    /// The header was damaged and read from the trailer.
    from_trailer: bool,
}

/// Reads a snapshot's header, from the front or, when that is damaged, from the trailer.
fn locate<F: Read + io::Seek>(f: &mut F) -> Result<Located, FormatError> {
    use io::SeekFrom;
    let len = f.seek(SeekFrom::End(0)).map_err(FormatError::Io)?;
    f.seek(SeekFrom::Start(0)).map_err(FormatError::Io)?;
    let mut head = vec![0u8; (len as usize).min(MAX_HEADER)];
    let got = read_up_to(f, &mut head);
    let front = decode_header(&head[..got], SNAP_MAGIC, true);
    // The trailer: the header again, its length, "SBTL".
    let mut back = None;
    if len >= 8 && f.seek(SeekFrom::Start(len - 8)).is_ok() {
        let mut end = [0u8; 8];
        if read_up_to(f, &mut end) == 8 && &end[4..] == TRAILER_MAGIC {
            let tl = u64::from(u32_at(&end, 0));
            if tl as usize <= MAX_HEADER && tl + 8 <= len {
                let mut t = vec![0u8; tl as usize];
                if f.seek(SeekFrom::Start(len - 8 - tl)).is_ok()
                    && read_up_to(f, &mut t) == t.len()
                    && let Ok(h) = decode_header(&t, SNAP_MAGIC, true)
                    && h.len as u64 == tl
                {
                    back = Some((h, len - 8 - tl));
                }
            }
        }
    }
    let (header, from_trailer) = match (front, &back) {
        (Ok(h), _) => (h, false),
        (Err(_), Some((h, _))) => (clone_header(h), true),
        (Err(e), None) => return Err(e),
    };
    let end = match &back {
        Some((_, at)) => *at,
        None => len,
    };
    Ok(Located {
        blocks: (header.len as u64, end.max(header.len as u64)),
        header,
        from_trailer,
    })
}

fn clone_header(h: &Header) -> Header {
    Header {
        version: h.version,
        generation: h.generation,
        count: h.count,
        names: h.names.clone(),
        keys: h.keys.clone(),
        len: h.len,
    }
}

/// What a pass over a snapshot's blocks found.
#[derive(Debug, Default)]
struct Scan {
    records: u64,
    /// Runs of bytes that were not a valid block (each costs at most one block).
    damaged: u64,
    /// A version-1 file ended in the middle of a block, or its count was damaged.
    cut_short: bool,
}

/// Passes every valid block's records to `each`, reading `r` to its end. Version 2 resyncs
/// after damage on the next block magic whose count and checksum hold; version 1 (no magic)
/// skips a block whose checksum fails and stops at a damaged count.
/// `chunk`: bytes read at a time (at least a block; a load reads 1 MiB, a check of a small
/// file a block).
fn scan_blocks(
    r: &mut impl Read,
    version: u32,
    chunk: usize,
    mut each: impl FnMut(&[u8]) -> bool,
) -> Scan {
    let mut scan = Scan::default();
    let head = if version >= 2 { BLOCK_HEAD } else { 8 };
    let whole = head + BLOCK * RECORD;
    let chunk = chunk.max(whole);
    let mut pending: Vec<u8> = Vec::with_capacity(whole + chunk);
    let (mut pos, mut eof, mut in_damage) = (0usize, false, false);
    loop {
        // Refill so that a whole block is available when it exists (read straight into the
        // buffer's tail: one copy).
        if !eof && pending.len() - pos < whole {
            pending.drain(..pos);
            pos = 0;
            while pending.len() < whole {
                let at = pending.len();
                pending.resize(at + chunk, 0);
                let n = read_up_to(r, &mut pending[at..]);
                pending.truncate(at + n);
                if n == 0 {
                    eof = true;
                    break;
                }
            }
        }
        let rest = &pending[pos..];
        if rest.is_empty() {
            break;
        }
        if version < 2 {
            if rest.len() < 8 {
                scan.cut_short = true;
                break;
            }
            let n = u32_at(rest, 0) as usize;
            if n == 0 || n > BLOCK || rest.len() < 8 + n * RECORD {
                scan.cut_short = true;
                break;
            }
            let body = &rest[8..8 + n * RECORD];
            if crc32fast::hash(body) != u32_at(rest, 4) {
                scan.damaged += 1;
            } else if each(body) {
                scan.records += n as u64;
            } else {
                break;
            }
            pos += 8 + n * RECORD;
            continue;
        }
        let valid = rest.len() >= BLOCK_HEAD && &rest[..4] == BLOCK_MAGIC && {
            let n = u32_at(rest, 4) as usize;
            (1..=BLOCK).contains(&n)
                && rest.len() >= BLOCK_HEAD + n * RECORD
                && block_crc(n as u32, &rest[BLOCK_HEAD..BLOCK_HEAD + n * RECORD])
                    == u32_at(rest, 8)
        };
        if valid {
            let n = u32_at(rest, 4) as usize;
            if !each(&rest[BLOCK_HEAD..BLOCK_HEAD + n * RECORD]) {
                break;
            }
            scan.records += n as u64;
            pos += BLOCK_HEAD + n * RECORD;
            in_damage = false;
            continue;
        }
        if !in_damage {
            scan.damaged += 1;
            in_damage = true;
        }
        // Resynchronise: the next block magic after this byte.
        match memchr::memmem::find(&rest[1..], BLOCK_MAGIC) {
            Some(i) => pos += 1 + i,
            None if eof => break,
            // Keep the last bytes: a magic may straddle the refill.
            None => pos += rest.len().saturating_sub(BLOCK_MAGIC.len() - 1).max(1),
        }
    }
    scan
}

/// A snapshot file checked without loading it: records in valid blocks, and what is wrong.
#[derive(Debug, Default)]
pub struct Check {
    pub generation: u64,
    /// Records the header says the file holds.
    pub count: u64,
    /// Records in blocks whose checksum holds.
    pub records: u64,
    pub problems: Vec<String>,
}

/// Reads the snapshot at `path` through, checking every block.
pub fn check_snapshot(path: &Path) -> io::Result<Check> {
    let mut f = BufReader::with_capacity(1 << 20, File::open(path)?);
    Ok(check_from(&mut f))
}

fn check_from<F: Read + io::Seek>(f: &mut F) -> Check {
    let mut check = Check::default();
    let at = match locate(f) {
        Ok(at) => at,
        Err(e) => {
            check.problems.push(e.to_string());
            return check;
        }
    };
    check.generation = at.header.generation;
    check.count = at.header.count;
    if at.from_trailer {
        check
            .problems
            .push("header damaged; read from its copy at the end".into());
    }
    if f.seek(io::SeekFrom::Start(at.blocks.0)).is_err() {
        check.problems.push("cannot seek to the blocks".into());
        return check;
    }
    let scan = scan_blocks(
        &mut f.take(at.blocks.1 - at.blocks.0),
        at.header.version,
        0,
        |_| true,
    );
    check.records = scan.records;
    check.problems.extend(scan_problems(&scan, at.header.count));
    check
}

/// Lines for what a scan lost.
fn scan_problems(scan: &Scan, count: u64) -> Vec<String> {
    let lost = count.saturating_sub(scan.records);
    let mut out = Vec::new();
    if scan.damaged > 0 {
        out.push(format!(
            "{} damaged block(s) skipped: {lost} of {count} records lost",
            scan.damaged
        ));
    } else if scan.cut_short || lost > 0 {
        out.push(format!(
            "cut short or damaged: {lost} of {count} records missing"
        ));
    }
    if scan.records > count {
        out.push(format!(
            "{} records where the header says {count}",
            scan.records
        ));
    }
    out
}

/// Reads the snapshot into `blacklist`. Returns its generation, or None when absent or
/// unreadable as a whole (reported in `loaded`).
fn load_snapshot(
    path: &Path,
    blacklist: &Blacklist,
    now: Instant,
    loaded: &mut Loaded,
) -> Option<u64> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return None,
        Err(e) => {
            loaded.problems.push(format!("{}: {e}", path.display()));
            return None;
        }
    };
    let mut r = BufReader::with_capacity(1 << 20, file);
    let before = loaded.problems.len();
    let (generation, damaged) = load_snapshot_from(&mut r, blacklist, now, loaded);
    if damaged {
        keep_damaged(path, loaded);
    }
    for p in &mut loaded.problems[before..] {
        *p = format!("{}: {p}", path.display());
    }
    generation
}

fn load_snapshot_from<F: Read + io::Seek>(
    r: &mut F,
    blacklist: &Blacklist,
    now: Instant,
    loaded: &mut Loaded,
) -> (Option<u64>, bool) {
    let at = match locate(r) {
        Ok(at) => at,
        Err(e) => {
            loaded.problems.push(format!("{e}; snapshot ignored"));
            return (None, true);
        }
    };
    if at.from_trailer {
        loaded
            .problems
            .push("header damaged; read from its copy at the end of the file".into());
    }
    if r.seek(io::SeekFrom::Start(at.blocks.0)).is_err() {
        loaded.problems.push("cannot seek to the blocks".into());
        return (None, true);
    }
    let header = at.header;
    let lists = map_lists(&header.names, blacklist);
    // Blocks are checked here while one worker thread restores them: the snapshot is in the
    // maps' bucket order (the lists hash with the snapshot's keys), so one inserter writes the
    // tables front to back; two would contend for the same shard (measured: 2.3 s vs 3.6 s
    // for 10 M bans).
    let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<u8>>(64);
    let (scan, (restored, expired, unknown)) = std::thread::scope(|scope| {
        let lists = &lists;
        let worker = scope.spawn(move || {
            let (mut restored, mut expired, mut unknown) = (0usize, 0usize, 0usize);
            for block in rx {
                for rec in block.chunks_exact(RECORD) {
                    let Some(rec) = decode_record(rec) else {
                        continue;
                    };
                    match lists.get(usize::from(rec.list)).copied().flatten() {
                        Some(id) if blacklist.list(id).restore(&rec.ban, now) => restored += 1,
                        Some(_) => expired += 1,
                        None => unknown += 1,
                    }
                }
            }
            (restored, expired, unknown)
        });
        let scan = scan_blocks(
            &mut r.take(at.blocks.1 - at.blocks.0),
            header.version,
            1 << 20,
            |body| tx.send(body.to_vec()).is_ok(),
        );
        drop(tx);
        (scan, worker.join().unwrap_or((0, 0, 0)))
    });
    loaded.restored += restored;
    loaded.expired += expired;
    let damage = scan_problems(&scan, header.count);
    let damaged = at.from_trailer || !damage.is_empty();
    loaded.problems.extend(damage);
    if unknown > 0 {
        loaded.problems.push(format!(
            "{unknown} bans of lists no longer configured were dropped"
        ));
    }
    (Some(header.generation), damaged)
}

/// Keeps a damaged state file beside the state as `NAME.damaged` (a hard link: no space
/// needed), so that the snapshot written after the start does not erase what could still be
/// recovered from it.
fn keep_damaged(path: &Path, loaded: &mut Loaded) {
    let mut kept = path.as_os_str().to_owned();
    kept.push(".damaged");
    let kept = PathBuf::from(kept);
    let _ = fs::remove_file(&kept);
    match fs::hard_link(path, &kept) {
        Ok(()) => loaded
            .problems
            .push(format!("damaged file kept as {}", kept.display())),
        Err(e) => loaded
            .problems
            .push(format!("keeping a copy as {}: {e}", kept.display())),
    }
}

fn read_up_to(r: &mut impl Read, buf: &mut [u8]) -> usize {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    got
}

/// The 48-byte journal record of a change (its crc last), with lists as file-table indexes.
pub fn encode_change(change: &Change) -> [u8; JOURNAL_RECORD] {
    let mut b = Vec::with_capacity(JOURNAL_RECORD);
    let (kind, list, ban) = match *change {
        Change::Ban(l, ban, _) => (KIND_BAN, l, Some(ban)),
        Change::Remove(l, key, _) => (
            KIND_REMOVE,
            l,
            Some(Ban {
                key,
                first_seen: Instant::ZERO,
                last_seen: Instant::ZERO,
                expires_at: Instant::ZERO,
                hits: 0,
                rule: 0,
                strikes: 0,
                offences: 0,
            }),
        ),
        Change::Flush(l, _) => (KIND_FLUSH, l, None),
    };
    b.extend_from_slice(&[kind, 0, 0, 0]);
    match ban {
        Some(ban) => encode_record(&mut b, list, &ban),
        None => {
            b.extend_from_slice(&list.to_le_bytes());
            b.extend_from_slice(&[0u8; RECORD - 2]);
        }
    }
    let crc = crc32fast::hash(&b);
    b.extend_from_slice(&crc.to_le_bytes());
    let mut out = [0u8; JOURNAL_RECORD];
    out.copy_from_slice(&b);
    out
}

/// A journal's header and where its records start: the first header, or when that is damaged
/// its copy (version 2 writes it twice).
fn journal_header(bytes: &[u8]) -> Result<(Header, usize), FormatError> {
    match decode_header(bytes, JOURNAL_MAGIC, false) {
        Ok(h) if h.version == 1 => {
            let at = h.len;
            Ok((h, at))
        }
        Ok(h) => {
            let at = 2 * h.len;
            Ok((h, at.min(bytes.len())))
        }
        Err(e) => {
            let head = &bytes[..bytes.len().min(2 * MAX_HEADER)];
            let copy = head
                .get(1..)
                .and_then(|b| memchr::memmem::find(b, JOURNAL_MAGIC))
                .map(|i| i + 1);
            match copy.map(|at| (at, decode_header(&bytes[at..], JOURNAL_MAGIC, false))) {
                Some((at, Ok(h))) if h.version >= 2 && at >= h.len => {
                    let start = at + h.len;
                    Ok((h, start))
                }
                _ => Err(e),
            }
        }
    }
}

/// Replays the journal at `path` (if its generation is `generation`) into `blacklist`.
fn load_journal(
    path: &Path,
    blacklist: &Blacklist,
    generation: u64,
    now: Instant,
    loaded: &mut Loaded,
) {
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return,
        Err(e) => {
            loaded.problems.push(format!("{}: {e}", path.display()));
            return;
        }
    };
    if load_journal_bytes(&bytes, path, blacklist, generation, now, loaded) {
        keep_damaged(path, loaded);
    }
}

/// Replays a journal's bytes; true when they are damaged (not just torn at the end).
fn load_journal_bytes(
    bytes: &[u8],
    path: &Path,
    blacklist: &Blacklist,
    generation: u64,
    now: Instant,
    loaded: &mut Loaded,
) -> bool {
    let (header, records_at) = match journal_header(bytes) {
        Ok(h) => h,
        Err(e) => {
            loaded
                .problems
                .push(format!("{}: {e}; journal ignored", path.display()));
            return true;
        }
    };
    let mut damaged = false;
    if decode_header(bytes, JOURNAL_MAGIC, false).is_err() {
        loaded.problems.push(format!(
            "{}: header damaged; read from its copy",
            path.display()
        ));
        damaged = true;
    }
    if header.generation != generation {
        // Written before the snapshot, which already holds its changes.
        return damaged;
    }
    let lists = map_lists(&header.names, blacklist);
    let body = &bytes[records_at..];
    let (mut bad, mut unknown) = (0usize, 0usize);
    let whole = body.len() / JOURNAL_RECORD;
    for rec in body.chunks_exact(JOURNAL_RECORD) {
        let (data, crc) = rec.split_at(JOURNAL_RECORD - 4);
        if crc32fast::hash(data) != u32_at(crc, 0) {
            bad += 1;
            continue;
        }
        if data[0] == KIND_FLUSH {
            // A flush carries no key.
            match lists.get(usize::from(u16_at(data, 4))).copied().flatten() {
                Some(id) => {
                    blacklist.list(id).clear();
                    loaded.journal_records += 1;
                }
                None => unknown += 1,
            }
            continue;
        }
        let Some(r) = decode_record(&data[4..]) else {
            bad += 1;
            continue;
        };
        let Some(id) = lists.get(usize::from(r.list)).copied().flatten() else {
            unknown += 1;
            continue;
        };
        let list = blacklist.list(id);
        match data[0] {
            KIND_BAN => {
                if list.restore(&r.ban, now) {
                    loaded.restored += 1;
                } else {
                    loaded.expired += 1;
                }
            }
            KIND_REMOVE => {
                list.remove(r.ban.key.addr());
            }
            _ => {
                bad += 1;
                continue;
            }
        }
        loaded.journal_records += 1;
    }
    let torn = body.len() - whole * JOURNAL_RECORD;
    if bad > 0 {
        loaded.problems.push(format!(
            "{}: {bad} record(s) failed their checksum and were skipped",
            path.display()
        ));
        damaged = true;
    }
    if torn > 0 {
        loaded.problems.push(format!(
            "{}: a torn last record ({torn} bytes) was dropped",
            path.display()
        ));
    }
    if unknown > 0 {
        loaded.problems.push(format!(
            "{}: {unknown} changes to lists no longer configured were dropped",
            path.display()
        ));
    }
    damaged
}

/// Loads a snapshot's and a journal's bytes into `blacklist`, as a start loads the files (for
/// the fuzz target: any bytes at all must load or be reported, never panic). `Loaded::restored`
/// counts what is live afterwards.
pub fn load_bytes(snapshot: &[u8], journal: &[u8], blacklist: &Blacklist, now: Instant) -> Loaded {
    let mut loaded = Loaded::default();
    let (generation, _) =
        load_snapshot_from(&mut io::Cursor::new(snapshot), blacklist, now, &mut loaded);
    let journal_gen = journal_header(journal).ok().map(|(h, _)| h.generation);
    let generation = generation.or(journal_gen).unwrap_or(0);
    load_journal_bytes(
        journal,
        Path::new(JOURNAL),
        blacklist,
        generation,
        now,
        &mut loaded,
    );
    loaded.generation = generation;
    loaded.restored = blacklist.lists().iter().map(|l| l.len()).sum();
    loaded
}

/// Checks a snapshot's bytes without loading them (see [`check_snapshot`]).
pub fn check_bytes(snapshot: &[u8]) -> Check {
    check_from(&mut io::Cursor::new(snapshot))
}

/// The journal being written.
#[derive(Debug)]
pub struct Journal {
    w: BufWriter<File>,
    /// Records written since the last sync.
    unsynced: usize,
    /// Records in this journal.
    pub records: u64,
}

impl Journal {
    /// Starts an empty journal of `generation` (replacing any).
    fn create(dir: &Path, generation: u64, names: &[String]) -> io::Result<Journal> {
        let path = dir.join(JOURNAL);
        let tmp = dir.join(format!("{JOURNAL}.tmp"));
        let written = (|| {
            let mut f = create_private(&tmp)?;
            let header = encode_header(JOURNAL_MAGIC, generation, None, names, &[]);
            f.write_all(&header)?;
            f.write_all(&header)?;
            f.sync_all()
        })();
        if let Err(e) = written {
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
        fs::rename(&tmp, &path)?;
        sync_dir(dir)?;
        let f = OpenOptions::new().append(true).open(&path)?;
        Ok(Journal {
            w: BufWriter::with_capacity(64 * 1024, f),
            unsynced: 0,
            records: 0,
        })
    }

    /// Opens an existing journal for appending, cutting off a torn last record.
    fn reopen(path: &Path) -> io::Result<Journal> {
        let bytes = fs::read(path)?;
        let (_, records_at) =
            journal_header(&bytes).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        let whole = (bytes.len() - records_at) / JOURNAL_RECORD;
        let f = OpenOptions::new().write(true).open(path)?;
        f.set_len((records_at + whole * JOURNAL_RECORD) as u64)?;
        f.sync_all()?;
        drop(f);
        let f = OpenOptions::new().append(true).open(path)?;
        Ok(Journal {
            w: BufWriter::with_capacity(64 * 1024, f),
            unsynced: 0,
            records: whole as u64,
        })
    }

    /// A journal that writes to `file` (tests: /dev/full makes every write fail).
    #[cfg(test)]
    pub(crate) fn to_file(file: File) -> Journal {
        Journal {
            w: BufWriter::with_capacity(64 * 1024, file),
            unsynced: 0,
            records: 0,
        }
    }

    pub fn append(&mut self, change: &Change) -> io::Result<()> {
        self.w.write_all(&encode_change(change))?;
        self.unsynced += 1;
        self.records += 1;
        Ok(())
    }

    /// Writes and fsyncs what was appended; returns how many records that was.
    pub fn sync(&mut self) -> io::Result<usize> {
        if self.unsynced == 0 {
            return Ok(0);
        }
        self.w.flush()?;
        self.w.get_ref().sync_data()?;
        Ok(std::mem::take(&mut self.unsynced))
    }
}

/// The state directory: its generation and the journal being written.
#[derive(Debug)]
pub struct Store {
    dir: PathBuf,
    generation: u64,
    names: Vec<String>,
    pub journal: Journal,
    needs_compaction: bool,
    /// A snapshot of a new generation was written but its journal could not be started: the
    /// current journal no longer loads, so nothing may be appended to it.
    journal_lost: bool,
}

impl Store {
    /// Opens (creating it, mode 0700) the state directory and loads the snapshot and the
    /// journal into `blacklist`. Writing stays cheap at start: the journal is kept (its torn
    /// tail cut off) and appended to; [`Store::needs_compaction`] tells the caller to fold it
    /// into a new snapshot when convenient (the daemon does it on its store thread).
    pub fn open(dir: &Path, blacklist: &Blacklist, now: Instant) -> io::Result<(Store, Loaded)> {
        create_dir(dir)?;
        let mut loaded = Loaded::default();
        let journal_path = dir.join(JOURNAL);
        let snapshot = load_snapshot(&dir.join(SNAPSHOT), blacklist, now, &mut loaded);
        let journal_gen = fs::read(&journal_path)
            .ok()
            .and_then(|b| journal_header(&b).ok())
            .map(|(h, _)| h.generation);
        let generation = snapshot.or(journal_gen).unwrap_or(0);
        loaded.generation = generation;
        let names = names_of(blacklist);
        // A journal of another generation predates the snapshot, which already holds it.
        let keep = journal_gen == Some(generation);
        if journal_gen.is_none() && journal_path.exists() {
            // Unreadable as a journal: reported, and kept before a new one replaces it.
            load_journal(&journal_path, blacklist, generation, now, &mut loaded);
        }
        if keep {
            load_journal(&journal_path, blacklist, generation, now, &mut loaded);
        }
        // Count what is live now (restores of one key overwrite each other).
        loaded.restored = blacklist.lists().iter().map(|l| l.len()).sum();
        let journal = if keep {
            Journal::reopen(&journal_path)?
        } else {
            Journal::create(dir, generation, &names)?
        };
        Ok((
            Store {
                dir: dir.to_path_buf(),
                generation,
                names,
                journal,
                needs_compaction: loaded.journal_records > 0 || !loaded.problems.is_empty(),
                journal_lost: false,
            },
            loaded,
        ))
    }

    /// Did loading replay a journal or find damage, so that a fresh snapshot is due?
    pub fn needs_compaction(&self) -> bool {
        self.needs_compaction
    }

    /// Writes a fresh snapshot and starts an empty journal (the next generation). Changes made
    /// meanwhile go to the new journal; replaying them over the snapshot is harmless.
    pub fn compact(&mut self, blacklist: &Blacklist, now: Instant) -> io::Result<u64> {
        self.journal.sync()?;
        self.rewrite(blacklist, now)
    }

    /// Writes a fresh snapshot of `blacklist` and an empty journal of the next generation,
    /// without syncing the current journal first: the recovery after a write or fsync failed,
    /// when the journal's tail is unknown and the blacklist in memory is the truth.
    pub fn rewrite(&mut self, blacklist: &Blacklist, now: Instant) -> io::Result<u64> {
        let generation = self.generation + 1;
        let n = write_snapshot(&self.dir, blacklist, generation, now)?;
        // The snapshot is the state now: the old journal's generation no longer loads, so a
        // journal that fails to start here leaves the caller failing, never appending to it.
        self.generation = generation;
        self.journal_lost = true;
        self.journal = Journal::create(&self.dir, generation, &self.names)?;
        self.journal_lost = false;
        self.needs_compaction = false;
        Ok(n)
    }

    /// Did the last [`Store::rewrite`] write its snapshot but fail to start the journal?
    pub fn journal_lost(&self) -> bool {
        self.journal_lost
    }
}

/// Makes `dir` the private state directory: created mode 0700 (whatever the umask), and an
/// existing one narrowed to 0700 — unless it is shared (sticky, like /tmp, or another user's),
/// which is refused: the snapshot's header holds the lists' hash keys. Its files are made 0600.
pub fn create_dir(dir: &Path) -> io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
    if !dir.exists() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
    }
    let m = fs::metadata(dir)?;
    let mode = m.permissions().mode() & 0o7777;
    if mode != 0o700 {
        let me = effective_uid()?;
        if mode & 0o1000 != 0 || m.uid() != me {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!(
                    "{} is shared (mode {mode:o}, owner {}): give stringban a directory of its own",
                    dir.display(),
                    m.uid()
                ),
            ));
        }
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700))?;
    }
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_file() && entry.metadata()?.permissions().mode() & 0o077 != 0 {
            fs::set_permissions(entry.path(), fs::Permissions::from_mode(0o600))?;
        }
    }
    Ok(())
}

/// This process's effective user id (from /proc: no unsafe call needed).
fn effective_uid() -> io::Result<u32> {
    let status = fs::read_to_string("/proc/self/status")?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1))
        .and_then(|euid| euid.parse().ok())
        .ok_or_else(|| io::Error::other("no effective uid in /proc/self/status"))
}

/// Creates (or truncates) a file readable by its owner only, whatever the umask; never through
/// a symbolic link (one planted there to make the daemon truncate another file: `ELOOP`).
pub fn create_private(path: &Path) -> io::Result<File> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)?;
    // An existing file keeps its mode on open: narrow it.
    f.set_permissions(fs::Permissions::from_mode(0o600))?;
    Ok(f)
}

/// An address for a key (its network address).
pub fn key_addr(key: Key) -> IpAddr {
    match key {
        Key::V4 { addr, .. } => IpAddr::V4(Ipv4Addr::from(addr)),
        Key::V6 { addr, .. } => IpAddr::V6(Ipv6Addr::from(addr)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::blacklist::{Banned, ListConfig};
    use crate::time::Duration;

    struct Dir(PathBuf);
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }
    fn tmp(name: &str) -> Dir {
        let p = std::env::temp_dir().join(format!("sb-store-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&p);
        Dir(p)
    }

    fn lists() -> Blacklist {
        Blacklist::new(vec![
            ListConfig {
                ttl: Duration::from_secs(3600),
                ..ListConfig::new("spam")
            },
            ListConfig::new("other"),
        ])
    }

    fn ip(i: u32) -> IpAddr {
        IpAddr::V4(Ipv4Addr::from(0xC612_0000 + i))
    }

    const T0: Instant = Instant::from_secs(1_767_225_600);

    #[test]
    fn the_state_directory_and_its_files_are_private() {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o7777;
        // An existing directory of ours with loose modes (an older version, or umask 000).
        let d = tmp("modes");
        fs::create_dir_all(&d.0).unwrap();
        fs::set_permissions(&d.0, fs::Permissions::from_mode(0o777)).unwrap();
        fs::write(d.0.join(SNAPSHOT), b"old").unwrap();
        fs::set_permissions(d.0.join(SNAPSHOT), fs::Permissions::from_mode(0o666)).unwrap();
        let b = lists();
        let (mut store, _) = Store::open(&d.0, &b, T0).unwrap();
        b.list(0).ban(ip(1), T0, 1);
        store.compact(&b, T0).unwrap();
        assert_eq!(mode(&d.0), 0o700);
        for e in fs::read_dir(&d.0).unwrap() {
            let p = e.unwrap().path();
            assert_eq!(mode(&p), 0o600, "{}", p.display());
        }
        // A new one is 0700 from the start, parents included.
        let n = tmp("modes-new");
        let deep = n.0.join("a/b");
        create_dir(&deep).unwrap();
        assert_eq!(mode(&deep), 0o700);
        // A shared (sticky) directory is refused, not narrowed.
        let s = tmp("modes-shared");
        fs::create_dir_all(&s.0).unwrap();
        fs::set_permissions(&s.0, fs::Permissions::from_mode(0o1777)).unwrap();
        let e = create_dir(&s.0).unwrap_err();
        assert!(e.to_string().contains("shared"), "{e}");
        assert_eq!(mode(&s.0), 0o1777);
    }

    #[test]
    fn snapshot_and_journal_round_trip() {
        let d = tmp("rt");
        let b = lists();
        let (mut store, loaded) = Store::open(&d.0, &b, T0).unwrap();
        assert_eq!(loaded, Loaded::default());
        let (tx, rx) = std::sync::mpsc::channel();
        b.set_journal(&tx);
        for i in 0..3000 {
            b.list(0).ban(ip(i), T0, 1);
        }
        b.list(1).ban_for(
            "2001:db8::1".parse().unwrap(),
            T0,
            Duration::from_secs(60),
            2,
        );
        b.list(0).remove(ip(7));
        for c in rx.try_iter() {
            store.journal.append(&c).unwrap();
        }
        store.journal.sync().unwrap();
        // Restart: everything comes back from the journal (the snapshot is empty).
        let b2 = lists();
        let (_, loaded) =
            Store::open(&d.0, &b2, T0.saturating_add(Duration::from_secs(10))).unwrap();
        assert!(loaded.problems.is_empty(), "{:?}", loaded.problems);
        assert_eq!(b2.list(0).len(), 2999);
        assert_eq!(b2.list(1).len(), 1);
        let ban = b2.list(0).get(ip(5), T0).unwrap();
        assert_eq!(ban.expires_at, T0.saturating_add(Duration::from_secs(3600)));
        assert_eq!(ban.rule, 1);
        assert!(b2.list(0).get(ip(7), T0).is_none());
        // And again, now from the compacted snapshot; an hour later they have expired.
        let b3 = lists();
        let (_, loaded) = Store::open(&d.0, &b3, T0).unwrap();
        assert_eq!(loaded.restored, 3000, "2,999 + 1");
        let b4 = lists();
        let (_, loaded) =
            Store::open(&d.0, &b4, T0.saturating_add(Duration::from_secs(3601))).unwrap();
        assert_eq!(b4.list(0).len(), 0);
        assert_eq!(
            loaded.expired, 3001,
            "every ban record of the journal has expired"
        );
    }

    /// Strikes and offences (thresholds, escalation) come back from the journal and from the
    /// snapshot.
    #[test]
    fn offenders_survive_a_restart() {
        let d = tmp("offenders");
        let offenders = || {
            Blacklist::new(vec![ListConfig {
                ttl: Duration::from_secs(60),
                threshold: 2,
                escalate: 3,
                ..ListConfig::new("spam")
            }])
        };
        let b = offenders();
        let (mut store, _) = Store::open(&d.0, &b, T0).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        b.set_journal(&tx);
        let l = b.list(0);
        l.ban(ip(1), T0, 0); // one strike
        l.ban(ip(2), T0, 0);
        l.ban(ip(2), T0, 0); // banned: first offence
        for c in rx.try_iter() {
            store.journal.append(&c).unwrap();
        }
        store.journal.sync().unwrap();
        let later = T0.saturating_add(Duration::from_secs(61));
        for round in ["journal", "snapshot"] {
            let b2 = offenders();
            let (mut s2, loaded) = Store::open(&d.0, &b2, later).unwrap();
            assert!(loaded.problems.is_empty(), "{round}: {:?}", loaded.problems);
            let l2 = b2.list(0);
            assert_eq!(l2.entry(ip(1), later).unwrap().strikes, 1, "{round}");
            assert_eq!(l2.entry(ip(2), later).unwrap().offences, 1, "{round}");
            assert!(
                l2.get(ip(2), later).is_none(),
                "{round}: the first ban was served"
            );
            if round == "snapshot" {
                // The second offence, two convictions later, lasts 3 × 60 s.
                l2.ban(ip(2), later, 0);
                l2.ban(ip(2), later, 0);
                let ban = l2.get(ip(2), later).unwrap();
                assert_eq!(ban.expires_at.saturating_sub(later).secs(), 180);
            }
            s2.compact(&b2, later).unwrap();
        }
    }

    fn filled(d: &Path, n: u32) -> Blacklist {
        let b = lists();
        for i in 0..n {
            b.list(0).ban(ip(i), T0, 0);
        }
        write_snapshot(d, &b, 5, T0).unwrap();
        b
    }

    #[test]
    fn a_damaged_snapshot_block_loses_only_that_block() {
        let d = tmp("dmg");
        fs::create_dir_all(&d.0).unwrap();
        filled(&d.0, 5000);
        let path = d.0.join(SNAPSHOT);
        let mut bytes = fs::read(&path).unwrap();
        let at = bytes.len() / 2;
        bytes[at] ^= 0xFF;
        fs::write(&path, &bytes).unwrap();
        let b = lists();
        let (_, loaded) = Store::open(&d.0, &b, T0).unwrap();
        assert_eq!(b.list(0).len(), 5000 - 1024, "{:?}", loaded.problems);
        assert!(
            loaded.problems[0].contains("1 damaged block(s) skipped: 1024 of 5000"),
            "{:?}",
            loaded.problems
        );
        // The damaged file is kept before the next snapshot replaces it.
        assert_eq!(fs::read(d.0.join("bans.snapshot.damaged")).unwrap(), bytes);
    }

    #[test]
    fn a_truncated_snapshot_keeps_every_whole_block() {
        let d = tmp("cut");
        fs::create_dir_all(&d.0).unwrap();
        filled(&d.0, 5000);
        let path = d.0.join(SNAPSHOT);
        let bytes = fs::read(&path).unwrap();
        // Cut inside the last block (5000 = 4 × 1024 + 904 records), the trailer gone with it.
        let last_block = 109 + 4 * (BLOCK_HEAD + BLOCK * RECORD);
        fs::write(&path, &bytes[..last_block + BLOCK_HEAD + 500 * RECORD]).unwrap();
        let b = lists();
        let (_, loaded) = Store::open(&d.0, &b, T0).unwrap();
        assert_eq!(b.list(0).len(), 4096, "{:?}", loaded.problems);
        assert!(
            loaded.problems[0].contains("904 of 5000 records lost"),
            "{:?}",
            loaded.problems
        );
        // A file that is not a snapshot at all: reported, start anyway, nothing loaded.
        fs::write(&path, b"garbage").unwrap();
        fs::remove_file(d.0.join(JOURNAL)).unwrap();
        let b = lists();
        let (_, loaded) = Store::open(&d.0, &b, T0).unwrap();
        assert!(
            loaded.problems[0].contains("bad magic"),
            "{:?}",
            loaded.problems
        );
    }

    /// The bar: one bit flipped at any byte of a 10,000-ban snapshot loses at most one block
    /// (1,024 bans); the header and trailer are each covered by the other.
    #[test]
    fn a_bit_flipped_anywhere_loses_at_most_one_block() {
        let d = tmp("flip");
        fs::create_dir_all(&d.0).unwrap();
        filled(&d.0, 10_000);
        let good = fs::read(d.0.join(SNAPSHOT)).unwrap();
        let intact = check_from(&mut io::Cursor::new(&good));
        assert_eq!((intact.records, intact.count), (10_000, 10_000));
        assert!(intact.problems.is_empty(), "{:?}", intact.problems);
        // Every offset, on every core (each thread flips its own copy).
        let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
        let worst = std::thread::scope(|scope| {
            let good = &good;
            let handles: Vec<_> = (0..threads)
                .map(|t| {
                    scope.spawn(move || {
                        let mut bytes = good.clone();
                        let mut worst = 10_000;
                        for at in (t..bytes.len()).step_by(threads) {
                            let bit = 1u8 << (at % 8);
                            bytes[at] ^= bit;
                            let c = check_from(&mut io::Cursor::new(&bytes));
                            bytes[at] ^= bit;
                            assert!(
                                c.records >= 10_000 - BLOCK as u64 && c.count == 10_000,
                                "flip at byte {at}: {} records of {} ({:?})",
                                c.records,
                                c.count,
                                c.problems
                            );
                            assert!(c.records <= 10_000, "flip at byte {at}: {}", c.records);
                            if c.records < 10_000 {
                                assert!(!c.problems.is_empty(), "flip at byte {at} unreported");
                            }
                            worst = worst.min(c.records);
                        }
                        worst
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap())
                .min()
                .unwrap()
        });
        assert_eq!(worst, 10_000 - BLOCK as u64);
    }

    /// The restart after a flip: what loads is what the check promised, the damaged file is
    /// kept, and the snapshot written after the start loads at least as much (never worse).
    #[test]
    fn a_restart_never_makes_a_damaged_snapshot_worse() {
        let d = tmp("flip-restart");
        fs::create_dir_all(&d.0).unwrap();
        filled(&d.0, 10_000);
        let good = fs::read(d.0.join(SNAPSHOT)).unwrap();
        let len = good.len();
        // Every byte of the header, the first block head, a block boundary and the trailer;
        // a sample of the rest.
        let mut offsets: Vec<usize> = (0..140).chain(len - 130..len).collect();
        let boundary = 109 + BLOCK_HEAD + BLOCK * RECORD;
        offsets.extend(boundary - 20..boundary + 20);
        offsets.extend((0..len).step_by(4099));
        for at in offsets {
            let mut bytes = good.clone();
            bytes[at] ^= 1 << (at % 8);
            let _ = fs::remove_file(d.0.join(JOURNAL));
            fs::write(d.0.join(SNAPSHOT), &bytes).unwrap();
            let b = lists();
            let (mut store, loaded) = Store::open(&d.0, &b, T0).unwrap();
            let first = b.list(0).len();
            assert!(first >= 10_000 - BLOCK, "flip at {at}: {first}");
            if first < 10_000 || !loaded.problems.is_empty() {
                assert!(store.needs_compaction());
                assert_eq!(fs::read(d.0.join("bans.snapshot.damaged")).unwrap(), bytes);
            }
            store.compact(&b, T0).unwrap();
            let again = lists();
            let (_, loaded) = Store::open(&d.0, &again, T0).unwrap();
            assert_eq!(again.list(0).len(), first, "flip at {at}");
            assert!(loaded.problems.is_empty(), "{:?}", loaded.problems);
        }
    }

    #[test]
    fn a_version_1_snapshot_still_loads() {
        let d = tmp("v1");
        fs::create_dir_all(&d.0).unwrap();
        let b = lists();
        for i in 0..1500 {
            b.list(0).ban(ip(i), T0, 0);
        }
        // Version 1: the header, then blocks of count, crc32 of the records, records.
        let mut f = encode_header(SNAP_MAGIC, 3, Some(1500), &names_of(&b), &[[0; 4]; 2]);
        f[8..12].copy_from_slice(&1u32.to_le_bytes());
        let crc_at = f.len() - 4;
        let crc = crc32fast::hash(&f[..crc_at]);
        f[crc_at..].copy_from_slice(&crc.to_le_bytes());
        for chunk in b.list(0).bans(T0).chunks(BLOCK) {
            let mut block = Vec::new();
            for ban in chunk {
                encode_record(&mut block, 0, ban);
            }
            f.extend_from_slice(&(chunk.len() as u32).to_le_bytes());
            f.extend_from_slice(&crc32fast::hash(&block).to_le_bytes());
            f.extend_from_slice(&block);
        }
        fs::write(d.0.join(SNAPSHOT), &f).unwrap();
        let again = lists();
        let (_, loaded) = Store::open(&d.0, &again, T0).unwrap();
        assert_eq!(again.list(0).len(), 1500, "{:?}", loaded.problems);
        assert!(loaded.problems.is_empty(), "{:?}", loaded.problems);
        assert_eq!(loaded.generation, 3);
    }

    #[test]
    fn a_failed_snapshot_keeps_the_previous_one() {
        let d = tmp("keep");
        fs::create_dir_all(&d.0).unwrap();
        let b = filled(&d.0, 2000);
        let before = fs::read(d.0.join(SNAPSHOT)).unwrap();
        // The temporary file cannot be made: nothing replaces the good snapshot.
        fs::create_dir(d.0.join(format!("{SNAPSHOT}.tmp"))).unwrap();
        b.list(0).ban(ip(99_999), T0, 0);
        assert!(write_snapshot(&d.0, &b, 6, T0).is_err());
        assert_eq!(fs::read(d.0.join(SNAPSHOT)).unwrap(), before);
    }

    #[test]
    fn a_damaged_journal_header_is_read_from_its_copy() {
        let d = tmp("jhead");
        let b = lists();
        let (mut store, _) = Store::open(&d.0, &b, T0).unwrap();
        for i in 0..50 {
            b.list(0).ban(ip(i), T0, 0);
            let ban = b.list(0).get(ip(i), T0).unwrap();
            store
                .journal
                .append(&Change::Ban(0, ban, Banned::New))
                .unwrap();
        }
        store.journal.sync().unwrap();
        drop(store);
        let path = d.0.join(JOURNAL);
        let good = fs::read(&path).unwrap();
        let header_len = decode_header(&good, JOURNAL_MAGIC, false).unwrap().len;
        for at in 0..2 * header_len {
            let mut bytes = good.clone();
            bytes[at] ^= 1 << (at % 8);
            fs::write(&path, &bytes).unwrap();
            let again = lists();
            let (_, loaded) = Store::open(&d.0, &again, T0).unwrap();
            assert_eq!(
                again.list(0).len(),
                50,
                "flip at {at}: {:?}",
                loaded.problems
            );
        }
    }

    #[test]
    fn a_torn_or_damaged_journal_keeps_every_valid_record() {
        let d = tmp("jrn");
        let b = lists();
        let (mut store, _) = Store::open(&d.0, &b, T0).unwrap();
        for i in 0..100 {
            let ban = Ban {
                key: b.list(0).key(ip(i)),
                first_seen: T0,
                last_seen: T0,
                expires_at: T0.saturating_add(Duration::from_secs(60)),
                hits: 0,
                rule: 0,
                strikes: 0,
                offences: 1,
            };
            store
                .journal
                .append(&Change::Ban(0, ban, Banned::New))
                .unwrap();
        }
        store.journal.sync().unwrap();
        drop(store);
        let path = d.0.join(JOURNAL);
        let mut bytes = fs::read(&path).unwrap();
        let len = bytes.len();
        bytes[len - 10 * JOURNAL_RECORD] ^= 1; // one record damaged
        bytes.truncate(len - 7); // the last one torn
        fs::write(&path, &bytes).unwrap();
        let b2 = lists();
        let (_, loaded) = Store::open(&d.0, &b2, T0).unwrap();
        assert_eq!(b2.list(0).len(), 98);
        assert_eq!(loaded.problems.len(), 3, "{:?}", loaded.problems);
        assert!(
            loaded
                .problems
                .iter()
                .any(|p| p.contains("bans.journal.damaged"))
        );
    }

    #[test]
    fn lists_are_matched_by_name_and_unknown_ones_reported() {
        let d = tmp("names");
        fs::create_dir_all(&d.0).unwrap();
        let b = lists();
        b.list(0).ban(ip(1), T0, 0);
        b.list(1).ban(ip(2), T0, 0);
        write_snapshot(&d.0, &b, 1, T0).unwrap();
        let reordered = Blacklist::new(vec![ListConfig::new("other")]);
        let (_, loaded) = Store::open(&d.0, &reordered, T0).unwrap();
        assert!(reordered.list(0).get(ip(2), T0).is_some());
        assert!(
            loaded.problems[0].contains("no longer configured"),
            "{:?}",
            loaded.problems
        );
    }

    #[test]
    fn a_restart_hashes_with_the_snapshots_keys() {
        let d = tmp("keys");
        fs::create_dir_all(&d.0).unwrap();
        let b = filled(&d.0, 10);
        let keys = peek_keys(&d.0);
        assert_eq!(keys.len(), 2);
        assert_eq!(keys[0], ("spam".to_string(), b.list(0).hash_keys()));
        let again = Blacklist::with_hash_keys(
            vec![ListConfig::new("other"), ListConfig::new("spam")],
            &keys,
        );
        assert_eq!(again.list(1).hash_keys(), b.list(0).hash_keys());
        assert_eq!(again.list(0).hash_keys(), b.list(1).hash_keys());
        assert!(peek_keys(Path::new("/nonexistent-stringban")).is_empty());
    }
}
