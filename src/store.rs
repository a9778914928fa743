//! Durable bans (DESIGN §7): a snapshot file and an append-only journal in a state directory.
//!
//! ```text
//! bans.snapshot   header: magic "SBSNAPSH", version, generation, record count, list names, crc
//!                 blocks: record count (≤ 1024), crc32 of the records, fixed 40-byte records
//! bans.journal    header: magic "SBJOURNL", version, generation, list names, crc
//!                 records: fixed 48 bytes (ban / remove / flush), each with its crc32
//! ```
//!
//! Written: the snapshot to a temporary file, fsync'd, renamed over the old one, the directory
//! fsync'd; the journal appended as changes come and fsync'd in small batches by the daemon.
//! Loaded: the snapshot, then the journal of the same generation (one of another generation
//! predates the snapshot, whose state already includes it), dropping what has expired. The
//! journal is then appended to (its torn tail cut off), and folded into a new snapshot and an
//! empty journal of the next generation in the background.
//!
//! A damaged file never stops a start and never silently empties the list: each snapshot block
//! and each journal record carries its own crc32, so what is valid is restored and the rest is
//! reported (a torn journal tail from a crash is the common case). Times are whole seconds
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
const VERSION: u32 = 1;
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
    out.extend_from_slice(&[0, 0]);
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
    generation: u64,
    count: u64,
    names: Vec<String>,
    keys: Vec<HashKeys>,
    len: usize,
}

fn decode_header(b: &[u8], magic: &[u8; 8], with_count: bool) -> Result<Header, String> {
    if b.len() < 8 || &b[..8] != magic {
        return Err("not a stringban state file (bad magic)".into());
    }
    if b.len() < 22 {
        return Err("header cut short".into());
    }
    let version = u32_at(b, 8);
    if version != VERSION {
        return Err(format!("version {version}, this stringban reads {VERSION}"));
    }
    let generation = u64_at(b, 12);
    let mut at = 20;
    let count = if with_count {
        if b.len() < 30 {
            return Err("header cut short".into());
        }
        at = 28;
        u64_at(b, 20)
    } else {
        0
    };
    let (names, used) = decode_names(&b[at..]).ok_or("header cut short")?;
    at += used;
    let mut keys = Vec::new();
    if with_count {
        // Per list: IPv4 and IPv6 counts (informative), then the two hash keys.
        for _ in &names {
            if b.len() < at + 32 {
                return Err("header cut short".into());
            }
            keys.push(HashKeys(u64_at(b, at + 16), u64_at(b, at + 24)));
            at += 32;
        }
    }
    if b.len() < at + 4 {
        return Err("header cut short".into());
    }
    if crc32fast::hash(&b[..at]) != u32_at(b, at) {
        return Err("header checksum mismatch".into());
    }
    Ok(Header {
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
    let mut head = vec![0u8; 64 * 1024];
    let got = read_up_to(&mut f, &mut head);
    match decode_header(&head[..got], SNAP_MAGIC, true) {
        Ok(h) => h.names.into_iter().zip(h.keys).collect(),
        Err(_) => Vec::new(),
    }
}

/// Writes a snapshot of every live ban at `now` to `dir` (temporary file, fsync, rename,
/// directory fsync). Returns the number of bans written.
pub fn write_snapshot(
    dir: &Path,
    blacklist: &Blacklist,
    generation: u64,
    now: Instant,
) -> io::Result<u64> {
    let tmp = dir.join(format!("{SNAPSHOT}.tmp"));
    let bans: Vec<Vec<Ban>> = blacklist.lists().iter().map(|l| l.bans(now)).collect();
    let count: u64 = bans.iter().map(|b| b.len() as u64).sum();
    let file = create_private(&tmp)?;
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
    w.write_all(&encode_header(
        SNAP_MAGIC,
        generation,
        Some(count),
        &names_of(blacklist),
        &meta,
    ))?;
    let mut block = Vec::with_capacity(BLOCK * RECORD);
    let mut n = 0u32;
    let flush = |w: &mut BufWriter<File>, block: &mut Vec<u8>, n: &mut u32| -> io::Result<()> {
        if *n > 0 {
            w.write_all(&n.to_le_bytes())?;
            w.write_all(&crc32fast::hash(block).to_le_bytes())?;
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
    let file = w.into_inner().map_err(|e| e.into_error())?;
    file.sync_all()?;
    drop(file);
    fs::rename(&tmp, dir.join(SNAPSHOT))?;
    sync_dir(dir)?;
    Ok(count)
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
    let mut head = vec![0u8; 64 * 1024];
    let got = read_up_to(&mut r, &mut head);
    let header = match decode_header(&head[..got], SNAP_MAGIC, true) {
        Ok(h) => h,
        Err(e) => {
            loaded
                .problems
                .push(format!("{}: {e}; snapshot ignored", path.display()));
            return None;
        }
    };
    let lists = map_lists(&header.names, blacklist);
    let mut pending: Vec<u8> = head[header.len..got].to_vec();
    let mut pos = 0;
    let mut seen = 0u64;
    let mut bad_blocks = 0u64;
    let mut buf = vec![0u8; 1 << 20];
    // Blocks are checked here while one worker thread restores them: the snapshot is in the
    // maps' bucket order (the lists hash with the snapshot's keys), so one inserter writes the
    // tables front to back; two would contend for the same shard (measured: 2.3 s vs 3.6 s
    // for 10 M bans).
    let workers = 1;
    let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<u8>>(64);
    let rx = std::sync::Mutex::new(rx);
    let (restored, expired, unknown) = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..workers)
            .map(|_| {
                let (rx, lists) = (&rx, &lists);
                scope.spawn(move || {
                    let (mut restored, mut expired, mut unknown) = (0usize, 0usize, 0usize);
                    loop {
                        let block = match rx.lock().map(|r| r.recv()) {
                            Ok(Ok(b)) => b,
                            _ => break,
                        };
                        for rec in block.chunks_exact(RECORD) {
                            let Some(rec) = decode_record(rec) else {
                                continue;
                            };
                            match lists.get(usize::from(rec.list)).copied().flatten() {
                                Some(id) if blacklist.list(id).restore(&rec.ban, now) => {
                                    restored += 1
                                }
                                Some(_) => expired += 1,
                                None => unknown += 1,
                            }
                        }
                    }
                    (restored, expired, unknown)
                })
            })
            .collect();
        loop {
            // Refill so that a whole block is available when it exists.
            if pending.len() - pos < 8 + BLOCK * RECORD {
                pending.drain(..pos);
                pos = 0;
                while pending.len() < 8 + BLOCK * RECORD {
                    let n = read_up_to(&mut r, &mut buf);
                    if n == 0 {
                        break;
                    }
                    pending.extend_from_slice(&buf[..n]);
                }
            }
            let rest = &pending[pos..];
            if rest.len() < 8 {
                break;
            }
            let n = u32_at(rest, 0) as usize;
            let crc = u32_at(rest, 4);
            if n == 0 || n > BLOCK || rest.len() < 8 + n * RECORD {
                loaded.problems.push(format!(
                    "{}: cut short or damaged after {seen} of {} records",
                    path.display(),
                    header.count
                ));
                break;
            }
            let body = &rest[8..8 + n * RECORD];
            if crc32fast::hash(body) != crc {
                bad_blocks += 1;
            } else if tx.send(body.to_vec()).is_err() {
                break;
            }
            seen += n as u64;
            pos += 8 + n * RECORD;
        }
        drop(tx);
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or((0, 0, 0)))
            .fold((0, 0, 0), |a, b| (a.0 + b.0, a.1 + b.1, a.2 + b.2))
    });
    loaded.restored += restored;
    loaded.expired += expired;
    if bad_blocks > 0 {
        loaded.problems.push(format!(
            "{}: {bad_blocks} block(s) of up to {BLOCK} records failed their checksum and were skipped",
            path.display()
        ));
    }
    if seen < header.count && !loaded.problems.iter().any(|p| p.contains("cut short")) {
        loaded.problems.push(format!(
            "{}: {} of {} records missing",
            path.display(),
            header.count - seen,
            header.count
        ));
    }
    if unknown > 0 {
        loaded.problems.push(format!(
            "{}: {unknown} bans of lists no longer configured were dropped",
            path.display()
        ));
    }
    Some(header.generation)
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
        Change::Ban(l, ban) => (KIND_BAN, l, Some(ban)),
        Change::Remove(l, key) => (
            KIND_REMOVE,
            l,
            Some(Ban {
                key,
                first_seen: Instant::ZERO,
                last_seen: Instant::ZERO,
                expires_at: Instant::ZERO,
                hits: 0,
                rule: 0,
            }),
        ),
        Change::Flush(l) => (KIND_FLUSH, l, None),
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
    let header = match decode_header(&bytes, JOURNAL_MAGIC, false) {
        Ok(h) => h,
        Err(e) => {
            loaded
                .problems
                .push(format!("{}: {e}; journal ignored", path.display()));
            return;
        }
    };
    if header.generation != generation {
        // Written before the snapshot, which already holds its changes.
        return;
    }
    let lists = map_lists(&header.names, blacklist);
    let body = &bytes[header.len..];
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
        let mut f = create_private(&tmp)?;
        f.write_all(&encode_header(JOURNAL_MAGIC, generation, None, names, &[]))?;
        f.sync_all()?;
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
        let header = decode_header(&bytes, JOURNAL_MAGIC, false)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        let whole = (bytes.len() - header.len) / JOURNAL_RECORD;
        let f = OpenOptions::new().write(true).open(path)?;
        f.set_len((header.len + whole * JOURNAL_RECORD) as u64)?;
        f.sync_all()?;
        drop(f);
        let f = OpenOptions::new().append(true).open(path)?;
        Ok(Journal {
            w: BufWriter::with_capacity(64 * 1024, f),
            unsynced: 0,
            records: whole as u64,
        })
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
            .and_then(|b| decode_header(&b, JOURNAL_MAGIC, false).ok())
            .map(|h| h.generation);
        let generation = snapshot.or(journal_gen).unwrap_or(0);
        loaded.generation = generation;
        let names = names_of(blacklist);
        // A journal of another generation predates the snapshot, which already holds it.
        let keep = journal_gen == Some(generation);
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
        let generation = self.generation + 1;
        let n = write_snapshot(&self.dir, blacklist, generation, now)?;
        self.journal = Journal::create(&self.dir, generation, &self.names)?;
        self.generation = generation;
        self.needs_compaction = false;
        Ok(n)
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

/// Creates (or truncates) a file readable by its owner only, whatever the umask.
pub fn create_private(path: &Path) -> io::Result<File> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
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
    use crate::blacklist::ListConfig;
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
            loaded.problems[0].contains("failed their checksum"),
            "{:?}",
            loaded.problems
        );
    }

    #[test]
    fn a_truncated_snapshot_keeps_every_whole_block() {
        let d = tmp("cut");
        fs::create_dir_all(&d.0).unwrap();
        filled(&d.0, 5000);
        let path = d.0.join(SNAPSHOT);
        let bytes = fs::read(&path).unwrap();
        fs::write(&path, &bytes[..bytes.len() - 100]).unwrap();
        let b = lists();
        let (_, loaded) = Store::open(&d.0, &b, T0).unwrap();
        assert_eq!(b.list(0).len(), 4096);
        assert!(
            loaded.problems[0].contains("cut short"),
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
            };
            store.journal.append(&Change::Ban(0, ban)).unwrap();
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
        assert_eq!(loaded.problems.len(), 2, "{:?}", loaded.problems);
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
