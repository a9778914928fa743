//! Bans shared by a fleet of daemons through Redis (README, *A fleet that bans together*).
//!
//! ```text
//!  host A                      Redis                          host B, C, …
//!  changes ──► share-out ──►  XADD  stringban:{F}:log  ──►  share-in (XREAD BLOCK from
//!  thread      (journal        ZADD  …:exp:LIST              its own cursor) ──► blacklist
//!              while down)     HSET  …:ban:LIST              ──► store, offload, as local bans
//! ```
//!
//! Two threads, each with its own connection (the `redis` crate's sync API):
//! - **share-out** takes this host's own changes from the changes thread (convictions, `add`,
//!   `del`, `flush`) and writes each, in one atomic script call per batch, to the change log (a
//!   stream, `XADD … MAXLEN ~ N`) and to the list's snapshot (a hash of key → expiry, node, rule,
//!   and a sorted set by expiry that lets expired bans be pruned). While Redis is away the
//!   changes wait in memory (bounded: compacted to one change per key), and reconnects back off
//!   from 100 ms to 5 s.
//! - **share-in** reads the log (one `MULTI` of `XINFO STREAM` + `XREAD`, `XREAD BLOCK` to wait
//!   when nothing is new) from this node's cursor, kept in the state
//!   directory (`share.cursor`), so a reconnect or a restart reads only what it missed. A node
//!   without a cursor, or whose cursor points before what the log still holds (trimmed), or a
//!   log that went backwards (Redis restarted empty), loads the snapshot instead, then reads the
//!   log from the point the snapshot was taken. Entries of its own node are skipped; applying a
//!   ban is idempotent and monotonic ([`crate::blacklist::List::apply_shared`]).
//!
//! Expiry travels as absolute time (unix seconds). A peer's ban is capped at this host's
//! `max_ttl` for the list (local TTLs stay authoritative); clock skew between hosts shifts a
//! ban's end by the skew, which each node measures against Redis' `TIME` at connect
//! (`clock_offset_ms` in `stats`, warned above 2 s).

pub mod wire;

use std::collections::{HashMap, VecDeque};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Mutex, RwLock};
use std::time::{Duration as StdDuration, Instant as StdInstant};

use redis::Value;
use serde_json::json;
use tracing::{error, info, warn};

use crate::blacklist::{Blacklist, By, Change, NO_RULE, PEER_RULE, RuleId, peer_index};
use crate::time::Instant;
use wire::{Cursor, Keys, Msg, Op, Propagation, StreamId};

/// Connecting (TCP and TLS handshake, AUTH) gives up after this.
const CONNECT_TIMEOUT: StdDuration = StdDuration::from_secs(3);
/// A reply not read within this: the connection is dropped and made again.
const IO_TIMEOUT: StdDuration = StdDuration::from_secs(5);
/// How long one `XREAD` blocks (the reader checks for a stop in between).
const BLOCK_MS: u64 = 500;
/// Entries per `XREAD`, and changes per `MULTI`.
const READ_COUNT: usize = 5000;
const WRITE_BATCH: usize = 2000;
/// Changes kept while Redis is away before they are compacted to one per key.
const MAX_PENDING: usize = 1_000_000;
/// Reconnects back off from the first to the last.
const BACKOFF: (StdDuration, StdDuration) =
    (StdDuration::from_millis(100), StdDuration::from_secs(5));
/// Expired bans are pruned from the snapshot this often (by every node; it is idempotent).
const PRUNE_EVERY: StdDuration = StdDuration::from_secs(30);
/// The cursor file in the state directory, and the peers' origins.
pub const CURSOR_FILE: &str = "share.cursor";
pub const ORIGINS_FILE: &str = "share.origins";

/// The fleet, as the daemon runs it (the `[share]` section and the `--share*` flags resolved).
#[derive(Clone, Debug, Eq, PartialEq)]
pub struct ShareConfig {
    pub url: String,
    /// The fleet key: sign what is published, apply only what is signed.
    pub key: Option<wire::FleetKey>,
    pub ca_file: Option<PathBuf>,
    pub fleet: String,
    pub node: String,
    /// `node` was given (`--share-node`, `[share] node`); else it is the host name, a label for
    /// the id the daemon makes once and keeps in its state directory ([`node_id`]).
    pub node_given: bool,
    /// The lists shared, by name; empty: all.
    pub lists: Vec<String>,
    pub maxlen: u64,
}

impl ShareConfig {
    /// Is the list named `name` shared?
    pub fn shares(&self, name: &str) -> bool {
        self.lists.is_empty() || self.lists.iter().any(|l| l == name)
    }
}

/// The file in the state directory that keeps this node's id.
pub const NODE_FILE: &str = "share.node";

/// This node's id when none was given: the one kept in `dir`'s [`NODE_FILE`], else a new one —
/// `label` (the host name, cut to 55 characters) and 8 random hex digits — written there (0600)
/// for every later start. Two hosts with one host name (cloned machines, containers sharing a
/// UTS name) so get two ids. Without a state directory, a new id each start.
pub fn node_id(dir: Option<&Path>, label: &str) -> Result<String, String> {
    let file = dir.map(|d| d.join(NODE_FILE));
    if let Some(f) = &file {
        match std::fs::read_to_string(f) {
            Ok(text) => {
                let id = text.trim();
                if wire::is_token(id) {
                    return Ok(id.to_string());
                }
                return Err(format!(
                    "{}: not a node id (1 to 64 letters, digits, '.', '_', '-', ':'); remove it to make a new one",
                    f.display()
                ));
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(format!("{}: {e}", f.display())),
        }
    }
    let label: String = label.chars().take(55).collect();
    let id = format!(
        "{label}-{:08x}",
        crate::blacklist::HashKeys::random().0 as u32
    );
    if let Some(f) = &file {
        crate::store::create_private(f)
            .and_then(|mut w| {
                w.write_all(format!("{id}\n").as_bytes())?;
                w.sync_all()
            })
            .map_err(|e| format!("{}: {e}", f.display()))?;
    }
    Ok(id)
}

/// This host's name (its UTS namespace's), made a valid node id.
pub fn host_name() -> String {
    let raw = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let name: String = raw
        .trim()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | ':') {
                c
            } else {
                '-'
            }
        })
        .take(64)
        .collect();
    if name.is_empty() {
        "stringban".into()
    } else {
        name
    }
}

/// The client of `cfg` (the URL parsed; for TLS, the CA file read).
pub fn client(cfg: &ShareConfig) -> Result<redis::Client, String> {
    let url = crate::config::redact_url(&cfg.url);
    let tls = cfg.url.starts_with("rediss://");
    if tls {
        // rustls needs one process-wide crypto provider; a second install is refused, harmlessly.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
    match (&cfg.ca_file, tls) {
        (Some(ca), true) => {
            let pem = std::fs::read(ca).map_err(|e| format!("{}: {e}", ca.display()))?;
            redis::Client::build_with_tls(
                cfg.url.as_str(),
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(pem),
                },
            )
            .map_err(|e| format!("{url}: {e}"))
        }
        (Some(ca), false) => Err(format!(
            "{}: a CA file is for rediss:// (TLS) URLs; {url} is plain TCP",
            ca.display()
        )),
        (None, _) => redis::Client::open(cfg.url.as_str()).map_err(|e| format!("{url}: {e}")),
    }
}

/// Connects with the timeouts set.
fn connect(client: &redis::Client) -> redis::RedisResult<redis::Connection> {
    let con = client.get_connection_with_timeout(CONNECT_TIMEOUT)?;
    con.set_read_timeout(Some(IO_TIMEOUT))?;
    con.set_write_timeout(Some(IO_TIMEOUT))?;
    Ok(con)
}

/// Is this a failure that waiting may cure (Redis down, restarting, unreachable), rather than
/// a wrong password, a missing permission, a certificate refused or a bad URL?
pub fn transient(e: &redis::RedisError) -> bool {
    if e.is_connection_refusal() || e.is_timeout() || e.is_connection_dropped() {
        return true;
    }
    let text = e.to_string();
    // A server loading its data, or a replica: it will answer.
    if text.contains("LOADING") || text.contains("BUSY") || text.contains("TRYAGAIN") {
        return true;
    }
    e.kind() == redis::ErrorKind::Io
        && !text.contains("certificate")
        && !text.contains("InvalidCertificate")
        && !text.contains("tls")
        && !text.contains("TLS")
}

/// Checks at start that Redis takes this node: connects, authenticates, and runs what the
/// threads will run (`TIME`, `XINFO STREAM` / `EXISTS` on the log). A wrong password, a
/// missing ACL permission or a refused certificate is an error (the daemon does not start in
/// a silent local-only mode); Redis being down is not: filtering starts, and the threads
/// connect when it is back. Returns the note logged.
pub fn check_start(cfg: &ShareConfig, client: &redis::Client) -> Result<String, String> {
    let url = crate::config::redact_url(&cfg.url);
    let keys = Keys::new(&cfg.fleet);
    let tried = connect(client).and_then(|mut con| {
        redis::cmd("PING").query::<String>(&mut con)?;
        redis::cmd("EXISTS")
            .arg(keys.log())
            .query::<i64>(&mut con)?;
        redis::cmd("TIME").query::<(String, String)>(&mut con)?;
        Ok(())
    });
    match tried {
        Ok(()) => Ok(format!("Redis at {url} reached")),
        Err(e) if transient(&e) => Ok(format!(
            "Redis at {url} not reachable now ({e}); filtering starts, bans are shared once it is back"
        )),
        Err(e) => Err(format!("sharing through {url}: {e}")),
    }
}

/// The peers' origins: (node, rule name) by index, tagged on their bans as
/// `PEER_RULE + index`; kept in `share.origins` so that a restart names them alike.
#[derive(Debug, Default)]
struct Origins {
    list: Vec<(String, String)>,
    /// node → rule → index (looked up with borrowed names: no allocation per entry).
    index: HashMap<String, HashMap<String, u16>>,
    file: Option<PathBuf>,
}

impl Origins {
    /// The most origins (node × rule pairs); more are all tagged as the last one, `?`.
    const MAX: usize = (NO_RULE - PEER_RULE) as usize - 1;

    fn load(file: Option<PathBuf>) -> Origins {
        let mut o = Origins {
            file,
            ..Origins::default()
        };
        if let Some(text) = o
            .file
            .as_ref()
            .and_then(|f| std::fs::read_to_string(f).ok())
        {
            for line in text.lines() {
                let (node, rule) = line.split_once('\t').unwrap_or((line, ""));
                // A line written before names were checked keeps its place (the line's index
                // is the rule id stored bans carry), under a name that prints harmlessly.
                match wire::check_names(node, rule) {
                    Ok(()) => o.insert(node, rule),
                    Err(_) => o.insert("unreadable", ""),
                };
            }
        }
        o
    }

    fn insert(&mut self, node: &str, rule: &str) -> u16 {
        let i = u16::try_from(self.list.len().min(Self::MAX)).unwrap_or(0);
        if self.list.len() < Self::MAX {
            self.list.push((node.to_string(), rule.to_string()));
            self.index
                .entry(node.to_string())
                .or_default()
                .insert(rule.to_string(), i);
        }
        i
    }

    /// The rule id tagging bans of `node`'s `rule`; a new origin is appended to the file.
    fn tag(&mut self, node: &str, rule: &str) -> Result<RuleId, String> {
        if let Some(&i) = self.index.get(node).and_then(|r| r.get(rule)) {
            return Ok(PEER_RULE + i);
        }
        if self.list.len() >= Self::MAX {
            return Ok(PEER_RULE + Self::MAX as u16);
        }
        let i = self.insert(node, rule);
        if let Some(f) = &self.file {
            use std::os::unix::fs::OpenOptionsExt;
            let line = format!("{node}\t{}\n", rule.replace(['\t', '\n'], " "));
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
                .open(f)
                .and_then(|mut file| {
                    file.write_all(line.as_bytes())?;
                    file.sync_data()
                })
                .map_err(|e| format!("{}: {e}", f.display()))?;
        }
        Ok(PEER_RULE + i)
    }
}

/// The fleet's state, shared by the share threads, `stats`, `status` and the metrics.
#[derive(Debug)]
pub struct ShareState {
    pub config: ShareConfig,
    keys: Keys,
    origins: RwLock<Origins>,
    dir: Option<PathBuf>,
    /// Each thread's connection is up.
    pub out_connected: AtomicBool,
    pub in_connected: AtomicBool,
    /// Changes written to the log by this node.
    pub published: AtomicU64,
    /// Entries read from the log (own entries included), applied (changed a list), skipped
    /// (own, a list not shared here, allowlisted, another prefix, expired), bad (unreadable).
    pub received: AtomicU64,
    pub applied: AtomicU64,
    pub skipped: AtomicU64,
    /// Faults: failed connects and commands, bad entries, files not written.
    pub errors: AtomicU64,
    pub reconnects: AtomicU64,
    /// Local changes waiting for Redis (`queued` of them still on their way to the publisher).
    pub pending: AtomicU64,
    pub queued: AtomicU64,
    /// Changes dropped because the wait was full (with every key already compacted).
    pub dropped: AtomicU64,
    pub bootstraps: AtomicU64,
    pub bootstrap_bans: AtomicU64,
    /// What the last bootstrap and the last catch-up did (entries, seconds).
    last_sync: Mutex<serde_json::Value>,
    /// Entries of the log not yet read, and how far behind (ms), at the last check.
    pub lag_entries: AtomicU64,
    pub lag_ms: AtomicU64,
    /// This host's clock minus Redis' (ms), measured at connect.
    pub clock_offset_ms: AtomicI64,
    last_error: Mutex<String>,
    propagation: Mutex<Propagation>,
    /// Every local change made before this time (unix s) has been published.
    published_through: AtomicU64,
    /// Set when the log went backwards (Redis lost its data): publish every local ban again.
    republish: AtomicBool,
    /// Entries and snapshot values refused, by [`wire::Refused`] (unsigned, bad signature,
    /// stale or repeated).
    pub refused: [AtomicU64; 4],
    /// Signatures of the entries read lately: a signed entry written again is a replay.
    seen: Mutex<Seen>,
    /// The times (`at_us`) of the entries this process published lately, and when it started:
    /// an entry under this node's id that it did not write is another node using the same id.
    own: Mutex<Own>,
    started_us: u64,
    /// Entries read under this node's id that this node did not write.
    pub duplicate_node: AtomicU64,
}

/// What this process published lately (at most [`Own::MAX`] entry times).
#[derive(Debug, Default)]
struct Own {
    order: std::collections::VecDeque<u64>,
    set: std::collections::HashSet<u64>,
}

impl Own {
    const MAX: usize = 1 << 20;

    fn add(&mut self, at_us: u64) {
        if self.set.insert(at_us) {
            self.order.push_back(at_us);
        }
        while self.order.len() > Own::MAX {
            if let Some(old) = self.order.pop_front() {
                self.set.remove(&old);
            }
        }
    }
}

/// The signatures of the entries read in the last [`wire::SIGNED_SKEW_MS`] (twice over), at
/// most [`Seen::MAX`]: a valid entry copied into the log again within the skew is refused.
#[derive(Debug, Default)]
struct Seen {
    order: std::collections::VecDeque<(u64, u64)>,
    set: std::collections::HashSet<u64>,
}

impl Seen {
    const MAX: usize = 200_000;

    /// Is `sig` (read in an entry of Redis time `ms`) new? Remembers it.
    fn first(&mut self, sig: &str, ms: u64) -> bool {
        use std::hash::{BuildHasher, Hasher};
        let mut h = SEEN_HASH.build_hasher();
        h.write(sig.as_bytes());
        let fp = h.finish();
        while let Some(&(t, old)) = self.order.front() {
            if self.order.len() < Seen::MAX && t + 2 * wire::SIGNED_SKEW_MS >= ms {
                break;
            }
            self.order.pop_front();
            self.set.remove(&old);
        }
        if !self.set.insert(fp) {
            return false;
        }
        self.order.push_back((ms, fp));
        true
    }
}

/// What the log still holds of each shared key's history (signed entries only): the position
/// of its last ban and of its last lift, and of each list's last flush. A lift or flush removes
/// the key from the snapshot in the same script that logs it, so a snapshot value whose key
/// was lifted after its last ban was put back by someone without the fleet's key: an old
/// signed value planted again. Keys are kept as 64-bit keyed fingerprints of (list, key): 24
/// bytes or so per key of a full log (1,000,000 entries by default), not a copy of each.
#[derive(Debug, Default)]
struct History {
    /// Fingerprint → (last ban, last lift), 0 for none.
    keys: HashMap<u64, (u32, u32)>,
    flush: HashMap<String, u32>,
}

static HISTORY_HASH: std::sync::LazyLock<crate::decide::sip::SipKeys<1, 3>> =
    std::sync::LazyLock::new(crate::decide::sip::SipKeys::random);

impl History {
    fn print(list: &str, key: crate::blacklist::Key) -> u64 {
        use std::hash::BuildHasher;
        HISTORY_HASH.hash_one((list, key))
    }

    /// Notes the `at`-th change of the log (from 1).
    fn note(&mut self, at: u32, msg: &Msg) {
        match &msg.op {
            Op::Ban { key, .. } => {
                self.keys.entry(Self::print(&msg.list, *key)).or_default().0 = at
            }
            Op::Unban { key, .. } => {
                self.keys.entry(Self::print(&msg.list, *key)).or_default().1 = at
            }
            Op::Flush { .. } => {
                self.flush.insert(msg.list.clone(), at);
            }
        }
    }

    /// Was `key` of `list` lifted (or its list flushed) after it was last banned?
    fn lifted(&self, list: &str, key: crate::blacklist::Key) -> bool {
        let (banned, lifted) = self
            .keys
            .get(&Self::print(list, key))
            .copied()
            .unwrap_or_default();
        lifted.max(self.flush.get(list).copied().unwrap_or(0)) > banned
    }
}

/// Calls `f` with each entry of the log from `from` to `to` (inclusive; `-` for the first),
/// paged.
fn scan_log(
    con: &mut redis::Connection,
    state: &ShareState,
    from: &str,
    to: StreamId,
    mut f: impl FnMut(StreamId, &[Value]),
) -> redis::RedisResult<u64> {
    let mut start = from.to_string();
    let mut n = 0u64;
    loop {
        let page: Value = redis::cmd("XRANGE")
            .arg(state.keys.log())
            .arg(&start)
            .arg(to.to_string())
            .arg("COUNT")
            .arg(10_000)
            .query(con)?;
        let mut last = None;
        let mut got = 0u64;
        // An XRANGE reply is the entries alone; as one stream of an XREAD reply, the same.
        for_each_entry(
            &Value::Array(vec![Value::Array(vec![Value::Nil, page])]),
            |id, fields| {
                got += 1;
                last = Some(id);
                f(id, fields);
            },
        );
        n += got;
        match last {
            Some(id) if got == 10_000 => start = format!("({id}"),
            _ => return Ok(n),
        }
    }
}

/// The value of field `name` in an entry's fields.
fn field_of<'v>(fields: &'v [Value], name: &str) -> Option<&'v str> {
    fields
        .chunks_exact(2)
        .find(|kv| text(&kv[0]) == Some(name))
        .and_then(|kv| text(&kv[1]))
}

/// With a fleet key: remembers the signatures of the log's entries of the last
/// 2 × [`wire::SIGNED_SKEW_MS`] up to `upto` (a cursor read from the state directory), so that
/// one of them copied into the log again is refused as a replay by a freshly started node too.
fn recall_seen(
    con: &mut redis::Connection,
    state: &ShareState,
    upto: StreamId,
) -> redis::RedisResult<u64> {
    if state.config.key.is_none() {
        return Ok(0);
    }
    let from = format!("{}-0", upto.ms.saturating_sub(2 * wire::SIGNED_SKEW_MS));
    let mut seen = lock(&state.seen);
    scan_log(con, state, &from, upto, |id, fields| {
        if let Some(s) = field_of(fields, "s") {
            seen.first(s, id.ms);
        }
    })
}

/// With a fleet key: the history of every key the log still holds, up to `upto` (the
/// snapshot's position), from verified entries only; their signatures are remembered as
/// [`recall_seen`] does. Without one, nothing (Redis is trusted then).
fn log_history(
    con: &mut redis::Connection,
    state: &ShareState,
    upto: StreamId,
) -> redis::RedisResult<History> {
    let mut h = History::default();
    let Some(key) = state.config.key.as_ref() else {
        return Ok(h);
    };
    let recent = upto.ms.saturating_sub(2 * wire::SIGNED_SKEW_MS);
    let mut seen = lock(&state.seen);
    // A signature read twice is a replay: only its first place in the log counts (a ban
    // copied in after its lift must not read as a ban again). A copy is read only within the
    // skew of its original, so a memory of the last 20 minutes' signatures is enough.
    let mut once = Seen::default();
    let mut at = 0u32;
    scan_log(con, state, "-", upto, |id, fields| {
        let (Some(m), s) = (field_of(fields, "m"), field_of(fields, "s")) else {
            return;
        };
        if key.verify_entry(&state.config.fleet, m, s, id.ms).is_err()
            || s.is_some_and(|s| !once.first(s, id.ms))
        {
            return;
        }
        if let Ok(msg) = Msg::parse(m) {
            at = at.saturating_add(1);
            h.note(at, &msg);
        }
        if let Some(s) = s
            && id.ms >= recent
        {
            seen.first(s, id.ms);
        }
    })?;
    Ok(h)
}

static SEEN_HASH: std::sync::LazyLock<std::collections::hash_map::RandomState> =
    std::sync::LazyLock::new(std::collections::hash_map::RandomState::new);

/// The rule name an op carries (empty for lifts and flushes).
fn rule_of(op: &Op) -> &str {
    match op {
        Op::Ban { rule, .. } => rule,
        _ => "",
    }
}

/// Text from Redis as a log line may show it: escaped, and cut at 200 characters.
fn shown(text: &str) -> String {
    let mut out: String = text
        .chars()
        .take(200)
        .flat_map(char::escape_debug)
        .collect();
    if text.chars().count() > 200 {
        out.push('…');
    }
    out
}

impl ShareState {
    pub fn new(config: ShareConfig, dir: Option<&Path>) -> ShareState {
        let keys = Keys::new(&config.fleet);
        ShareState {
            keys,
            origins: RwLock::new(Origins::load(dir.map(|d| d.join(ORIGINS_FILE)))),
            dir: dir.map(Path::to_path_buf),
            config,
            out_connected: AtomicBool::new(false),
            in_connected: AtomicBool::new(false),
            published: AtomicU64::new(0),
            received: AtomicU64::new(0),
            applied: AtomicU64::new(0),
            skipped: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            reconnects: AtomicU64::new(0),
            pending: AtomicU64::new(0),
            queued: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            bootstraps: AtomicU64::new(0),
            bootstrap_bans: AtomicU64::new(0),
            last_sync: Mutex::new(json!(null)),
            lag_entries: AtomicU64::new(0),
            lag_ms: AtomicU64::new(0),
            clock_offset_ms: AtomicI64::new(0),
            last_error: Mutex::new(String::new()),
            propagation: Mutex::new(Propagation::default()),
            published_through: AtomicU64::new(0),
            republish: AtomicBool::new(false),
            refused: Default::default(),
            seen: Mutex::new(Seen::default()),
            own: Mutex::new(Own::default()),
            started_us: unix_us(),
            duplicate_node: AtomicU64::new(0),
        }
    }

    /// The peers' origins, by index (for [`crate::control::Names`]).
    pub fn origins(&self) -> Vec<(String, String)> {
        read(&self.origins).list.clone()
    }

    /// Counts a refused entry; logs the first of each kind, then every 1,000th (a flood of
    /// forged entries does not flood the log).
    fn refuse(&self, why: wire::Refused, what: impl FnOnce() -> String) {
        let n = self.refused[why as usize].fetch_add(1, Relaxed) + 1;
        if n == 1 || n.is_multiple_of(1000) {
            let what = what();
            warn!(
                refused = n,
                "share: refused ({}; {n} so far): {what}",
                why.as_str()
            );
            *lock(&self.last_error) = format!("refused {}: {what}", why.as_str());
        }
    }

    fn fault(&self, what: String) {
        self.errors.fetch_add(1, Relaxed);
        warn!("share: {what}");
        *lock(&self.last_error) = what;
    }

    /// The `share` object of `stats`.
    pub fn json(&self) -> serde_json::Value {
        let p = lock(&self.propagation).clone();
        let ms = |q: f64| p.quantile(q).map(|us| us as f64 / 1000.0);
        json!({
            "url": crate::config::redact_url(&self.config.url),
            "fleet": self.config.fleet,
            "node": self.config.node,
            "lists": if self.config.lists.is_empty() { json!("all") } else { json!(self.config.lists) },
            "connected": self.out_connected.load(Relaxed) && self.in_connected.load(Relaxed),
            "publisher_connected": self.out_connected.load(Relaxed),
            "reader_connected": self.in_connected.load(Relaxed),
            "lag_entries": self.lag_entries.load(Relaxed),
            "lag_seconds": self.lag_ms.load(Relaxed) as f64 / 1000.0,
            "published": self.published.load(Relaxed),
            "pending": self.pending.load(Relaxed) + self.queued.load(Relaxed),
            "dropped": self.dropped.load(Relaxed),
            "received": self.received.load(Relaxed),
            "applied": self.applied.load(Relaxed),
            "skipped": self.skipped.load(Relaxed),
            "signed": self.config.key.is_some(),
            "key_ids": self.config.key.as_ref().map(|k| k.ids().to_vec()),
            "refused": {
                "unsigned": self.refused[wire::Refused::Unsigned as usize].load(Relaxed),
                "bad_signature": self.refused[wire::Refused::BadSignature as usize].load(Relaxed),
                "stale": self.refused[wire::Refused::Stale as usize].load(Relaxed),
                "bad_name": self.refused[wire::Refused::BadName as usize].load(Relaxed),
            },
            "duplicate_node": self.duplicate_node.load(Relaxed),
            "errors": self.errors.load(Relaxed),
            "reconnects": self.reconnects.load(Relaxed),
            "bootstraps": self.bootstraps.load(Relaxed),
            "bootstrap_bans": self.bootstrap_bans.load(Relaxed),
            "last_sync": *lock(&self.last_sync),
            "clock_offset_ms": self.clock_offset_ms.load(Relaxed),
            "last_error": Some(lock(&self.last_error).clone()).filter(|e| !e.is_empty()),
            "propagation_ms": {
                "count": p.count,
                "p50": ms(0.5),
                "p99": ms(0.99),
                "max": ms(1.0),
                "over_1s": p.count - p.buckets[..10].iter().sum::<u64>(),
            },
        })
    }

    /// The Prometheus lines of the share state.
    pub fn metrics(&self, out: &mut String) {
        use std::fmt::Write as _;
        let gauge = |out: &mut String, name: &str, help: &str, v: f64| {
            let _ = writeln!(
                out,
                "# HELP stringban_share_{name} {help}\n# TYPE stringban_share_{name} gauge\nstringban_share_{name} {v}"
            );
        };
        let counter = |out: &mut String, name: &str, help: &str, v: u64| {
            let _ = writeln!(
                out,
                "# HELP stringban_share_{name}_total {help}\n# TYPE stringban_share_{name}_total counter\nstringban_share_{name}_total {v}"
            );
        };
        let up = self.out_connected.load(Relaxed) && self.in_connected.load(Relaxed);
        gauge(
            out,
            "connected",
            "Both connections to Redis are up (1) or not (0).",
            f64::from(u8::from(up)),
        );
        gauge(
            out,
            "lag_entries",
            "Entries of the fleet's change log not yet read.",
            self.lag_entries.load(Relaxed) as f64,
        );
        gauge(
            out,
            "lag_seconds",
            "How far behind the change log's newest entry the reader is.",
            self.lag_ms.load(Relaxed) as f64 / 1000.0,
        );
        gauge(
            out,
            "pending",
            "Local changes waiting for Redis.",
            (self.pending.load(Relaxed) + self.queued.load(Relaxed)) as f64,
        );
        gauge(
            out,
            "clock_offset_seconds",
            "This host's clock minus Redis' at the last connect.",
            self.clock_offset_ms.load(Relaxed) as f64 / 1000.0,
        );
        counter(
            out,
            "published",
            "Local changes written to the change log.",
            self.published.load(Relaxed),
        );
        counter(
            out,
            "received",
            "Entries read from the change log.",
            self.received.load(Relaxed),
        );
        counter(
            out,
            "applied",
            "Peers' changes applied to the lists.",
            self.applied.load(Relaxed),
        );
        counter(
            out,
            "skipped",
            "Entries not applied (own, list not shared, allowlisted, expired, other prefix).",
            self.skipped.load(Relaxed),
        );
        counter(
            out,
            "errors",
            "Share faults: connects, commands, bad entries, files.",
            self.errors.load(Relaxed),
        );
        gauge(
            out,
            "signed",
            "The fleet's entries are signed and checked with a fleet key (1) or not (0).",
            f64::from(u8::from(self.config.key.is_some())),
        );
        let _ = writeln!(
            out,
            "# HELP stringban_share_refused_total Entries and snapshot values refused: unsigned, bad signature, stale (replayed).\n# TYPE stringban_share_refused_total counter"
        );
        for why in [
            wire::Refused::Unsigned,
            wire::Refused::BadSignature,
            wire::Refused::Stale,
            wire::Refused::BadName,
        ] {
            let _ = writeln!(
                out,
                "stringban_share_refused_total{{why=\"{}\"}} {}",
                why.as_str(),
                self.refused[why as usize].load(Relaxed)
            );
        }
        counter(
            out,
            "dropped",
            "Local changes dropped because the wait for Redis was full.",
            self.dropped.load(Relaxed),
        );
        counter(
            out,
            "bootstraps",
            "Snapshots loaded (new node, cursor too old, log reset).",
            self.bootstraps.load(Relaxed),
        );
        let p = lock(&self.propagation).clone();
        let _ = writeln!(
            out,
            "# HELP stringban_share_propagation_seconds From a ban on a peer to its application here.\n# TYPE stringban_share_propagation_seconds histogram"
        );
        let mut cum = 0;
        for (b, n) in Propagation::BUCKETS_MS.iter().zip(p.buckets) {
            cum += n;
            let _ = writeln!(
                out,
                "stringban_share_propagation_seconds_bucket{{le=\"{}\"}} {cum}",
                b / 1000.0
            );
        }
        let _ = writeln!(
            out,
            "stringban_share_propagation_seconds_bucket{{le=\"+Inf\"}} {}\nstringban_share_propagation_seconds_sum {}\nstringban_share_propagation_seconds_count {}",
            p.count,
            p.sum_us as f64 / 1e6,
            p.count
        );
    }

    fn cursor_path(&self) -> Option<PathBuf> {
        self.dir.as_ref().map(|d| d.join(CURSOR_FILE))
    }

    /// The cursor saved in the state directory, if it is this fleet's.
    fn load_cursor(&self) -> Option<Cursor> {
        let path = self.cursor_path()?;
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
            Err(e) => {
                self.fault(format!(
                    "{}: {e}; loading the snapshot instead",
                    path.display()
                ));
                return None;
            }
        };
        match Cursor::parse(&text) {
            Ok(c) if c.fleet == self.config.fleet => Some(c),
            Ok(c) => {
                info!(was = %c.fleet, now = %self.config.fleet, "share: the cursor is another fleet's; loading the snapshot");
                None
            }
            Err(e) => {
                self.fault(format!(
                    "{}: {e}; loading the snapshot instead",
                    path.display()
                ));
                None
            }
        }
    }

    /// Writes the cursor (to a temporary file, fsync'd, renamed over the old one).
    fn save_cursor(&self, c: &Cursor) {
        let Some(path) = self.cursor_path() else {
            return;
        };
        let tmp = path.with_extension("tmp");
        let written = crate::store::create_private(&tmp)
            .and_then(|mut f| {
                f.write_all(c.to_text().as_bytes())?;
                f.sync_data()
            })
            .and_then(|()| std::fs::rename(&tmp, &path));
        if let Err(e) = written {
            self.fault(format!("saving the cursor {}: {e}", path.display()));
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn read<T>(m: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    m.read().unwrap_or_else(|p| p.into_inner())
}

fn write<T>(m: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    m.write().unwrap_or_else(|p| p.into_inner())
}

fn unix_us() -> u64 {
    super::now().micros()
}

/// A connection made again after a failure, backing off.
struct Link<'a> {
    client: &'a redis::Client,
    state: &'a ShareState,
    con: Option<redis::Connection>,
    backoff: StdDuration,
    next_try: StdInstant,
    up: &'a AtomicBool,
    name: &'static str,
    /// A connection was up before (to log the way back).
    was_up: bool,
}

impl<'a> Link<'a> {
    fn new(
        client: &'a redis::Client,
        state: &'a ShareState,
        up: &'a AtomicBool,
        name: &'static str,
    ) -> Link<'a> {
        Link {
            client,
            state,
            con: None,
            backoff: BACKOFF.0,
            next_try: StdInstant::now(),
            up,
            name,
            was_up: false,
        }
    }

    /// The connection, made now if it is time to try; None while backing off.
    fn get(&mut self) -> Option<&mut redis::Connection> {
        if self.con.is_none() && StdInstant::now() >= self.next_try {
            match connect(self.client).and_then(|mut c| {
                let t: (String, String) = redis::cmd("TIME").query(&mut c)?;
                Ok((c, t))
            }) {
                Ok((c, (s, us))) => {
                    let theirs = s.parse::<i64>().unwrap_or(0) * 1000
                        + us.parse::<i64>().unwrap_or(0) / 1000;
                    let ours = (unix_us() / 1000) as i64;
                    let offset = ours - theirs;
                    self.state.clock_offset_ms.store(offset, Relaxed);
                    if offset.abs() > 2000 {
                        warn!(
                            offset_ms = offset,
                            "share: this host's clock and Redis' differ by more than 2 s: shared bans end early or late by as much"
                        );
                    }
                    if self.was_up {
                        self.state.reconnects.fetch_add(1, Relaxed);
                        info!(thread = self.name, "share: Redis reconnected");
                    } else {
                        info!(thread = self.name, "share: Redis connected");
                    }
                    self.was_up = true;
                    self.backoff = BACKOFF.0;
                    self.con = Some(c);
                    self.up.store(true, Relaxed);
                }
                Err(e) => self.failed(format!("connecting: {e}")),
            }
        }
        self.con.as_mut()
    }

    /// The connection failed: drop it, and try again after the backoff.
    fn failed(&mut self, what: String) {
        if self.con.take().is_some() || self.backoff == BACKOFF.0 {
            self.state.fault(format!(
                "{} {what}; retrying with backoff (filtering goes on; bans are kept)",
                self.name
            ));
        } else {
            self.state.errors.fetch_add(1, Relaxed);
            *lock(&self.state.last_error) = format!("{} {what}", self.name);
        }
        self.up.store(false, Relaxed);
        self.next_try = StdInstant::now() + self.backoff;
        self.backoff = (self.backoff * 2).min(BACKOFF.1);
    }
}

/// A local change waiting to be written.
struct Pending {
    msg: Msg,
    made_s: u64,
}

/// share-out: writes this host's changes (from the changes thread, through `rx`) to Redis
/// until `rx` closes (the daemon stopping), then tries once more to write what waits.
pub fn publish_loop(
    state: &ShareState,
    client: &redis::Client,
    rx: Receiver<(Change, u64)>,
    blacklist: &Blacklist,
    rule_names: &dyn Fn() -> Vec<String>,
    republish_since: Option<u64>,
) {
    let mut link = Link::new(client, state, &state.out_connected, "publisher");
    let script = redis::Script::new(WRITE_SCRIPT);
    let mut pending: VecDeque<Pending> = VecDeque::new();
    let mut last_prune = StdInstant::now() - PRUNE_EVERY / 2;
    let mut names = rule_names();
    let own_bans = |pending: &mut VecDeque<Pending>, since: u64, names: &[String]| {
        let now = super::now();
        let mut n = 0u64;
        for l in blacklist.lists() {
            if !state.config.shares(l.name()) {
                continue;
            }
            for b in l.bans(now) {
                if peer_index(b.rule).is_none() && b.last_seen.secs() + 2 >= since {
                    pending.push_back(Pending {
                        msg: ban_msg(state, l.name(), &b, names, unix_us()),
                        made_s: now.secs(),
                    });
                    n += 1;
                }
            }
        }
        n
    };
    if let Some(since) = republish_since {
        let n = own_bans(&mut pending, since, &names);
        if n > 0 {
            info!(
                bans = n,
                "share: publishing this host's bans made since it last published"
            );
        }
    }
    // Connected from the start (not at the first change), so that `stats` tells at once.
    link.get();
    let mut open = true;
    while open || !pending.is_empty() {
        let wait = if !pending.is_empty() && link.con.is_some() {
            StdDuration::ZERO
        } else if !pending.is_empty() {
            link.next_try
                .saturating_duration_since(StdInstant::now())
                .min(StdDuration::from_secs(1))
        } else {
            StdDuration::from_secs(1)
        };
        if open {
            let take =
                |(c, at): (Change, u64), pending: &mut VecDeque<Pending>, names: &[String]| {
                    state.queued.fetch_sub(1, Relaxed);
                    if let Some(msg) = local_msg(state, blacklist, &c, names, at) {
                        pending.push_back(Pending {
                            msg,
                            made_s: at / 1_000_000,
                        });
                    }
                };
            match rx.recv_timeout(wait.max(StdDuration::from_micros(1))) {
                Ok(c) => {
                    names = rule_names();
                    take(c, &mut pending, &names);
                    for c in rx.try_iter().take(4 * WRITE_BATCH) {
                        take(c, &mut pending, &names);
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => open = false,
            }
        }
        if state.republish.swap(false, Relaxed) {
            let n = own_bans(&mut pending, 0, &names);
            info!(
                bans = n,
                "share: the change log went backwards (Redis lost its data): publishing this host's bans again"
            );
        }
        if pending.len() > MAX_PENDING {
            compact(&mut pending, state);
        }
        state.pending.store(pending.len() as u64, Relaxed);
        if link.get().is_none() {
            if !open {
                if !pending.is_empty() {
                    state.fault(format!(
                        "stopping with {} changes not published (Redis away); this host's bans are kept, and published at the next start",
                        pending.len()
                    ));
                }
                break;
            }
            continue;
        }
        while !pending.is_empty() {
            let n = pending.len().min(WRITE_BATCH);
            let Some(con) = link.con.as_mut() else { break };
            match write_batch(con, state, &script, pending.range(..n).map(|p| &p.msg)) {
                Ok(()) => {
                    pending.drain(..n);
                    state.published.fetch_add(n as u64, Relaxed);
                }
                Err(e) => {
                    link.failed(format!("publishing: {e}"));
                    break;
                }
            }
        }
        state.pending.store(pending.len() as u64, Relaxed);
        let through = pending
            .front()
            .map_or(unix_us() / 1_000_000, |p| p.made_s.saturating_sub(1));
        state.published_through.store(through, Relaxed);
        if last_prune.elapsed() >= PRUNE_EVERY
            && let Some(con) = link.con.as_mut()
        {
            last_prune = StdInstant::now();
            if let Err(e) = prune(con, state, blacklist) {
                link.failed(format!("pruning expired bans: {e}"));
            }
        }
    }
    state.pending.store(pending.len() as u64, Relaxed);
}

/// The log message of a local change of a shared list, if it is one to publish (bans and
/// renewals, removals and flushes made here; not strikes, not peers' changes).
fn local_msg(
    state: &ShareState,
    bl: &Blacklist,
    c: &Change,
    names: &[String],
    at_us: u64,
) -> Option<Msg> {
    if !c.is_local() {
        return None;
    }
    let list = bl.lists().get(usize::from(c.list()))?.name();
    if !state.config.shares(list) {
        return None;
    }
    let op = match *c {
        Change::Ban(_, ban, crate::blacklist::Banned::New | crate::blacklist::Banned::Renewed) => {
            return Some(ban_msg(state, list, &ban, names, at_us));
        }
        Change::Ban(..) => return None,
        Change::Remove(_, key, by) => Op::Unban {
            key,
            fleet: by == By::Fleet,
        },
        Change::Flush(_, by) => Op::Flush {
            fleet: by == By::Fleet,
        },
    };
    Some(Msg {
        node: state.config.node.clone(),
        list: list.to_string(),
        op,
        at_us,
    })
}

fn ban_msg(
    state: &ShareState,
    list: &str,
    ban: &crate::blacklist::Ban,
    names: &[String],
    at_us: u64,
) -> Msg {
    let rule = if ban.rule == NO_RULE || peer_index(ban.rule).is_some() {
        String::new()
    } else {
        names
            .get(usize::from(ban.rule))
            .cloned()
            .unwrap_or_default()
    };
    Msg {
        node: state.config.node.clone(),
        list: list.to_string(),
        op: Op::Ban {
            key: ban.key,
            until: ban.expires_at.secs(),
            rule,
        },
        at_us,
    }
}

/// Keeps the last change of each key (and nothing of a list before its last flush); if that
/// is still too much, drops the oldest (counted, logged).
fn compact(pending: &mut VecDeque<Pending>, state: &ShareState) {
    let before = pending.len();
    let mut seen: std::collections::HashSet<(String, Option<crate::blacklist::Key>)> =
        std::collections::HashSet::new();
    let mut flushed: std::collections::HashSet<String> = std::collections::HashSet::new();
    let mut keep: Vec<Pending> = Vec::with_capacity(before / 2);
    while let Some(p) = pending.pop_back() {
        if flushed.contains(&p.msg.list) {
            continue;
        }
        let key = match &p.msg.op {
            Op::Ban { key, .. } | Op::Unban { key, .. } => Some(*key),
            Op::Flush { .. } => {
                flushed.insert(p.msg.list.clone());
                None
            }
        };
        if seen.insert((p.msg.list.clone(), key)) {
            keep.push(p);
        }
    }
    keep.reverse();
    let over = keep.len().saturating_sub(MAX_PENDING);
    if over > 0 {
        state.dropped.fetch_add(over as u64, Relaxed);
        state.fault(format!(
            "{over} changes dropped from the wait for Redis (more than {MAX_PENDING} keys changed while it was away); they stay banned here"
        ));
    }
    pending.extend(keep.into_iter().skip(over));
    info!(
        before,
        after = pending.len(),
        "share: changes waiting for Redis compacted (one per key)"
    );
}

/// Writes a batch of changes, atomically (one script): each to the log, and to its list's
/// snapshot. KEYS: the log, then each list's expiry set and hash; ARGV: the log's bound, the
/// number of lists, their names, then three per message: the entry ([`Msg::to_text`]), its
/// signature (`s`, empty when the fleet has no key) and, for a ban, its snapshot value (signed
/// as the entry is).
const WRITE_SCRIPT: &str = r#"
local lists = {}
local n = tonumber(ARGV[2])
for i = 1, n do lists[ARGV[2 + i]] = {KEYS[2 * i], KEYS[2 * i + 1]} end
for i = 3 + n, #ARGV, 3 do
  local m, s, v = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  if s == '' then
    redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', 'm', m)
  else
    redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', 'm', m, 's', s)
  end
  local op, list, key, exp = string.match(m, '^(%a) (%S+) (%S+) (%S+) ')
  local k = lists[list]
  if op == 'b' then
    redis.call('ZADD', k[1], 'GT', exp, key)
    redis.call('HSET', k[2], key, v)
  elseif op == 'u' or op == 'U' then
    redis.call('ZREM', k[1], key)
    redis.call('HDEL', k[2], key)
  elseif op == 'f' or op == 'F' then
    redis.call('DEL', k[1], k[2])
  end
end
return (#ARGV - 2 - n) / 3
"#;

fn write_batch<'m>(
    con: &mut redis::Connection,
    state: &ShareState,
    script: &redis::Script,
    msgs: impl Iterator<Item = &'m Msg> + Clone,
) -> redis::RedisResult<()> {
    let keys = &state.keys;
    let mut lists: Vec<&str> = Vec::new();
    for m in msgs.clone() {
        if !lists.contains(&m.list.as_str()) {
            lists.push(&m.list);
        }
    }
    let mut call = script.prepare_invoke();
    call.key(keys.log());
    for l in &lists {
        call.key(keys.expiry(l)).key(keys.bans(l));
    }
    call.arg(state.config.maxlen).arg(lists.len());
    for l in &lists {
        call.arg(*l);
    }
    let t = unix_us() / 1000;
    let fleet = &state.config.fleet;
    {
        // Known as ours before the reader can meet them in the log.
        let mut own = lock(&state.own);
        for m in msgs.clone() {
            own.add(m.at_us);
        }
    }
    for m in msgs {
        let text = m.to_text();
        let key = state.config.key.as_ref();
        let sig = key.map_or(String::new(), |k| k.sign_entry(fleet, &text, t));
        let value = match &m.op {
            Op::Ban {
                key: k,
                until,
                rule,
            } => {
                let v = wire::snapshot_value(*until, &m.node, rule);
                match key {
                    Some(fk) => fk.sign_snapshot(fleet, &m.list, &wire::key_text(*k), &v),
                    None => v,
                }
            }
            _ => String::new(),
        };
        call.arg(text).arg(sig).arg(value);
    }
    call.invoke::<i64>(con).map(|_| ())
}

/// Removes expired bans from each shared list's snapshot, atomically per batch (a script:
/// a ban renewed meanwhile is not removed).
fn prune(
    con: &mut redis::Connection,
    state: &ShareState,
    bl: &Blacklist,
) -> redis::RedisResult<()> {
    const SCRIPT: &str =
        "local gone = redis.call('ZRANGE', KEYS[1], '-inf', ARGV[1], 'BYSCORE', 'LIMIT', 0, 5000)
for _, m in ipairs(gone) do redis.call('ZREM', KEYS[1], m); redis.call('HDEL', KEYS[2], m) end
return #gone";
    let now = super::now().secs();
    for l in bl.lists() {
        if !state.config.shares(l.name()) {
            continue;
        }
        for _ in 0..100 {
            let n: i64 = redis::cmd("EVAL")
                .arg(SCRIPT)
                .arg(2)
                .arg(state.keys.expiry(l.name()))
                .arg(state.keys.bans(l.name()))
                .arg(now)
                .query(con)?;
            if n < 5000 {
                break;
            }
        }
    }
    Ok(())
}

/// What `XINFO STREAM` says of the log (all zero when it does not exist yet).
#[derive(Clone, Debug, Default)]
struct LogInfo {
    last: StreamId,
    added: u64,
    /// Entries the log holds now (the last `length` of the `added`).
    length: u64,
    /// The fleet's epoch ([`Keys::epoch`]).
    epoch: String,
}

/// What an `XINFO STREAM` reply says (the epoch left empty).
fn parse_info(v: &Value) -> LogInfo {
    let mut info = LogInfo::default();
    let pairs: Vec<(String, &Value)> = match v {
        Value::Array(items) => items
            .chunks_exact(2)
            .filter_map(|kv| Some((text(&kv[0])?.to_string(), &kv[1])))
            .collect(),
        Value::Map(items) => items
            .iter()
            .filter_map(|(k, v)| Some((text(k)?.to_string(), v)))
            .collect(),
        _ => Vec::new(),
    };
    for (k, v) in pairs {
        match (k.as_str(), v) {
            ("last-generated-id", v) => {
                info.last = text(v).and_then(StreamId::parse).unwrap_or_default();
            }
            ("length", Value::Int(n)) => info.length = u64::try_from(*n).unwrap_or(0),
            ("entries-added", Value::Int(n)) => info.added = u64::try_from(*n).unwrap_or(0),
            _ => {}
        }
    }
    info
}

fn text(v: &Value) -> Option<&str> {
    match v {
        Value::BulkString(b) => std::str::from_utf8(b).ok(),
        Value::SimpleString(s) => Some(s),
        _ => None,
    }
}

/// What applying peers' changes needs of the daemon.
pub struct Apply<'a> {
    pub blacklist: &'a Blacklist,
    /// The allowlist now (a peer's ban of an address on it is not applied).
    pub allowlist: &'a dyn Fn() -> std::sync::Arc<crate::allow::Allowlist>,
    pub stop: &'a AtomicBool,
}

/// share-in: reads the log from this node's cursor (or loads the snapshot) and applies what
/// peers changed, until `stop`.
pub fn subscribe_loop(state: &ShareState, client: &redis::Client, apply: &Apply<'_>) {
    let mut link = Link::new(client, state, &state.in_connected, "reader");
    let mut cursor = state.load_cursor();
    if let Some(c) = &cursor {
        info!(cursor = %c.id, "share: reading the fleet's log from the saved cursor");
    }
    // A saved cursor: the signatures of the entries just before it are learnt before any
    // entry after it is read (a replay of one of them is then refused, after a restart too).
    let mut to_recall = cursor.as_ref().map(|c| c.id);
    // The cursor saved is the one of the previous tick: the changes applied up to it have had
    // (at least) a tick to reach the journal's fsync.
    let mut to_save: Option<Cursor> = None;
    let mut last_save = StdInstant::now();
    let mut catching_up: Option<(StdInstant, u64)> = None;
    let mut epoch_checked = StdInstant::now() - StdDuration::from_secs(2);
    while !apply.stop.load(Relaxed) {
        let Some(con) = link.get() else {
            std::thread::sleep(StdDuration::from_millis(50));
            continue;
        };
        if let Some(upto) = to_recall {
            match recall_seen(con, state, upto) {
                Ok(_) => to_recall = None,
                Err(e) => {
                    link.failed(format!("reading the log before the cursor: {e}"));
                    continue;
                }
            }
        }
        let start = StdInstant::now();
        let step = read_step(con, state, apply, &mut cursor, &mut epoch_checked);
        match step {
            Ok((before, lag)) => {
                if before > 1 && catching_up.is_none() {
                    catching_up = Some((start, before));
                }
                if lag == 0
                    && let Some((t, entries)) = catching_up.take()
                {
                    let secs = t.elapsed().as_secs_f64();
                    // Logged only when the node was really behind (a start, an outage), not
                    // for the few entries a busy fleet is always behind by.
                    if entries >= 100 || secs >= 1.0 {
                        info!(
                            entries,
                            seconds = (secs * 1000.0).round() / 1000.0,
                            "share: caught up with the fleet's log"
                        );
                    }
                    *lock(&state.last_sync) =
                        json!({"kind": "catch-up", "entries": entries, "seconds": secs});
                }
            }
            Err(e) => link.failed(format!("reading the log: {e}")),
        }
        if last_save.elapsed() >= StdDuration::from_secs(1) {
            last_save = StdInstant::now();
            if let Some(c) = to_save.take() {
                state.save_cursor(&c);
            }
            to_save = cursor.clone().map(|mut c| {
                c.published = state.published_through.load(Relaxed);
                c
            });
        }
    }
    // Stopping: every change applied is in the changes thread's channel, which it drains
    // before it saves the state.
    if let Some(mut c) = cursor {
        c.published = state.published_through.load(Relaxed);
        state.save_cursor(&c);
    }
}

/// One read of the log: atomically (one `MULTI`) the fleet's epoch, what the log holds and the
/// entries after the cursor, so that a gap — entries trimmed before this node read them — is
/// seen for certain (the log's first entry, `entries-added - length + 1`, past the cursor's
/// position + 1; the fleet never deletes entries, it only trims), never skipped over. A gap, another
/// epoch or no cursor loads the snapshot instead. With nothing new, waits (`XREAD BLOCK`) for
/// the next entry. Returns the entries there were to read, and the entries still to read.
fn read_step(
    con: &mut redis::Connection,
    state: &ShareState,
    apply: &Apply<'_>,
    cursor: &mut Option<Cursor>,
    epoch_checked: &mut StdInstant,
) -> redis::RedisResult<(u64, u64)> {
    let keys = &state.keys;
    let from = cursor.as_ref().map_or(StreamId::ZERO, |c| c.id);
    // The epoch (made if missing) once a second: it changes only when Redis lost its data, and
    // a log that restarted is also seen by its counts below.
    let epoch = if epoch_checked.elapsed() >= StdDuration::from_secs(1) || cursor.is_none() {
        *epoch_checked = StdInstant::now();
        let token = format!("{:016x}", crate::blacklist::HashKeys::random().0);
        let (_, e): (Value, Option<String>) = redis::pipe()
            .cmd("SET")
            .arg(keys.epoch())
            .arg(&token)
            .arg("NX")
            .cmd("GET")
            .arg(keys.epoch())
            .query(con)?;
        // A token, whatever Redis holds (it goes into the cursor file).
        wire::safe_epoch(&e.unwrap_or_default())
    } else {
        cursor.as_ref().map(|c| c.epoch.clone()).unwrap_or_default()
    };
    let read: redis::RedisResult<(Value, Value)> = redis::pipe()
        .atomic()
        .cmd("XINFO")
        .arg("STREAM")
        .arg(keys.log())
        .cmd("XREAD")
        .arg("COUNT")
        .arg(READ_COUNT)
        .arg("STREAMS")
        .arg(keys.log())
        .arg(from.to_string())
        .query(con);
    let (info, reply) = match read {
        Ok((info, reply)) => (
            LogInfo {
                epoch,
                ..parse_info(&info)
            },
            reply,
        ),
        // No log yet: nothing to read, nothing missed.
        Err(e) if e.to_string().contains("no such key") => (
            LogInfo {
                epoch,
                ..LogInfo::default()
            },
            Value::Nil,
        ),
        Err(e) => return Err(e),
    };
    let why = match cursor.as_ref() {
        None => Some("no cursor (a new node)"),
        Some(c) if c.epoch != info.epoch || info.last < c.id || info.added < c.pos => {
            state.republish.store(true, Relaxed);
            Some("the fleet's epoch changed or its log went backwards (Redis lost its data)")
        }
        // The log holds entries added - length + 1 to added; this node needs pos + 1 on.
        Some(c) if c.pos + info.length < info.added => {
            Some("the cursor points before what the log still holds")
        }
        Some(_) => None,
    };
    if let Some(why) = why {
        *cursor = Some(bootstrap(con, state, apply, &info, why)?);
        return Ok((0, 0));
    }
    let mut n = 0u64;
    let mut last = from;
    let mut batch = Batch::new(state, apply);
    for_each_entry(&reply, |id, fields| {
        n += 1;
        last = id;
        receive(state, apply, id, fields, &mut batch);
    });
    drop(batch);
    let Some(c) = cursor.as_mut() else {
        return Ok((0, 0));
    };
    let before = info.added.saturating_sub(c.pos);
    c.id = last;
    c.pos += n;
    let lag = info.added.saturating_sub(c.pos);
    state.lag_entries.store(lag, Relaxed);
    state.lag_ms.store(
        if lag == 0 {
            0
        } else {
            info.last.ms.saturating_sub(c.id.ms)
        },
        Relaxed,
    );
    if n == 0 {
        // Nothing new: wait for the next entry (read, applied and checked by the next step).
        let _: Value = redis::cmd("XREAD")
            .arg("COUNT")
            .arg(1)
            .arg("BLOCK")
            .arg(BLOCK_MS)
            .arg("STREAMS")
            .arg(keys.log())
            .arg(c.id.to_string())
            .query(con)?;
    }
    Ok((before, lag))
}

/// Calls `f` with each entry (id, fields) of an `XREAD` reply.
fn for_each_entry(reply: &Value, mut f: impl FnMut(StreamId, &[Value])) {
    let Value::Array(streams) = reply else { return };
    for s in streams {
        let Value::Array(kv) = s else { continue };
        let Some(Value::Array(entries)) = kv.get(1) else {
            continue;
        };
        for e in entries {
            let Value::Array(parts) = e else { continue };
            let (Some(id), Some(Value::Array(fields))) = (
                parts.first().and_then(text).and_then(StreamId::parse),
                parts.get(1),
            ) else {
                continue;
            };
            f(id, fields);
        }
    }
}

/// What applying a batch of changes reads once: the time, the allowlist, the origins.
struct Batch<'a> {
    now: Instant,
    allowlist: std::sync::Arc<crate::allow::Allowlist>,
    origins: std::sync::RwLockWriteGuard<'a, Origins>,
}

impl<'a> Batch<'a> {
    fn new(state: &'a ShareState, apply: &Apply<'_>) -> Batch<'a> {
        Batch {
            now: super::now(),
            allowlist: (apply.allowlist)(),
            origins: write(&state.origins),
        }
    }
}

/// Applies one entry of the log.
fn receive(
    state: &ShareState,
    apply: &Apply<'_>,
    id: StreamId,
    fields: &[Value],
    batch: &mut Batch<'_>,
) {
    state.received.fetch_add(1, Relaxed);
    let field = |name: &str| {
        fields
            .chunks_exact(2)
            .find(|kv| text(&kv[0]) == Some(name))
            .and_then(|kv| text(&kv[1]))
    };
    let m = field("m");
    // With a fleet key, only what one of its keys signed, published when Redis says, and
    // seen once, is read at all.
    if let (Some(key), Some(m)) = (state.config.key.as_ref(), m) {
        let s = field("s");
        match key.verify_entry(&state.config.fleet, m, s, id.ms) {
            Ok(_) => {
                if let Some(s) = s
                    && !lock(&state.seen).first(s, id.ms)
                {
                    state.refuse(wire::Refused::Stale, || {
                        format!("entry {id} repeats one already read: a replay")
                    });
                    return;
                }
            }
            Err(why) => {
                state.refuse(why, || {
                    format!("entry {id} ({}): {}", why.as_str(), shown(m))
                });
                return;
            }
        }
    }
    let parsed = match m {
        Some(m) => Msg::parse(m),
        None => Err("no field \"m\"".to_string()),
    };
    let msg = match parsed {
        Ok(m) => m,
        Err(e) => {
            state.fault(format!("an entry of the log is unreadable: {e}"));
            return;
        }
    };
    if msg.node == state.config.node {
        state.skipped.fetch_add(1, Relaxed);
        // Made since this process started, and not by it: another node has this id.
        if msg.at_us >= state.started_us && !lock(&state.own).set.contains(&msg.at_us) {
            let n = state.duplicate_node.fetch_add(1, Relaxed) + 1;
            if n == 1 || n.is_multiple_of(1000) {
                let what = format!(
                    "another node publishes under this node's id {:?} (entry {id}; {n} so far): its bans are ignored here as our own; give each node its own id (--share-node, or remove {NODE_FILE} from one state directory)",
                    state.config.node
                );
                error!("share: {what}");
                state.errors.fetch_add(1, Relaxed);
                *lock(&state.last_error) = what;
            }
        }
        return;
    }
    if let Err(what) = wire::check_names(&msg.node, rule_of(&msg.op)) {
        state.refuse(wire::Refused::BadName, || format!("entry {id}: {what}"));
        return;
    }
    let Some((_, list)) = apply
        .blacklist
        .by_name(&msg.list)
        .filter(|_| state.config.shares(&msg.list))
    else {
        state.skipped.fetch_add(1, Relaxed);
        return;
    };
    let changed = match &msg.op {
        Op::Ban { key, until, rule } => {
            let done = apply_ban(state, list, &msg.node, rule, *key, *until, batch);
            if done {
                let delay = unix_us().saturating_sub(msg.at_us);
                lock(&state.propagation).add(delay);
            }
            done
        }
        // A peer's lift or flush takes only what the fleet shared here, unless its maker asked
        // for the whole fleet (`--fleet`).
        Op::Unban { key, fleet } => {
            list.key(key.addr()) == *key
                && if *fleet {
                    list.remove_by(key.addr(), By::Peer)
                } else {
                    list.remove_shared(key.addr())
                }
        }
        Op::Flush { fleet: true } => list.clear_by(By::Peer) > 0,
        Op::Flush { fleet: false } => list.clear_shared() > 0,
    };
    if changed {
        state.applied.fetch_add(1, Relaxed);
    } else {
        state.skipped.fetch_add(1, Relaxed);
    }
}

/// Applies a peer's ban (`node`'s `rule`, until unix second `until`, capped at this list's
/// `max_ttl`); true if it changed the list. Not counted here.
fn apply_ban(
    state: &ShareState,
    list: &crate::blacklist::List,
    node: &str,
    rule: &str,
    key: crate::blacklist::Key,
    until: u64,
    batch: &mut Batch<'_>,
) -> bool {
    if batch.allowlist.contains(key.addr()) {
        return false;
    }
    let tag = match batch.origins.tag(node, rule) {
        Ok(t) => t,
        Err(e) => {
            state.fault(format!("recording a peer's origin: {e}"));
            PEER_RULE
        }
    };
    let now = batch.now;
    // A peer's ban lasts at most the list's own TTL here (or its peer_max_ttl), from now.
    let until = Instant::from_secs(until).min(now.saturating_add(list.peer_max_ttl()));
    let done = list.apply_shared(key, until, now, tag);
    if !done && list.key(key.addr()) != key {
        state.fault(format!(
            "{node} banned {} in list {}, whose keys here have another prefix: not applied (give the list the same prefixes on every node)",
            wire::key_text(key),
            list.name()
        ));
    }
    done
}

/// Loads every shared list's snapshot, then returns the cursor of the log's position taken
/// just before (`info`): what changed while the snapshot was read is read again from the log
/// (applying twice is harmless). Own bans come back too: a node whose state was lost gets
/// them again.
fn bootstrap(
    con: &mut redis::Connection,
    state: &ShareState,
    apply: &Apply<'_>,
    info: &LogInfo,
    why: &str,
) -> redis::RedisResult<Cursor> {
    let t = StdInstant::now();
    let mut bans = 0u64;
    // Read first: a lift logged after the snapshot is read is applied from the log anyway.
    let history = log_history(con, state, info.last)?;
    let lists: Vec<&crate::blacklist::List> = apply
        .blacklist
        .lists()
        .iter()
        .filter(|l| state.config.shares(l.name()))
        .collect();
    // One thread reads the pages (HSCAN, 10,000 entries each) while this one applies them.
    std::thread::scope(|scope| -> redis::RedisResult<()> {
        let (tx, rx) = std::sync::mpsc::sync_channel::<(usize, Vec<Value>)>(4);
        let lists = &lists;
        let fetch = scope.spawn(move || -> redis::RedisResult<()> {
            for (i, l) in lists.iter().enumerate() {
                let key = state.keys.bans(l.name());
                let mut cursor = 0u64;
                loop {
                    let (next, items): (u64, Vec<Value>) = redis::cmd("HSCAN")
                        .arg(&key)
                        .cursor_arg(cursor)
                        .arg("COUNT")
                        .arg(10_000)
                        .query(con)?;
                    if tx.send((i, items)).is_err() {
                        return Ok(());
                    }
                    cursor = next;
                    if cursor == 0 {
                        break;
                    }
                }
            }
            Ok(())
        });
        for (i, items) in rx {
            let l = lists[i];
            let mut batch = Batch::new(state, apply);
            let now_s = batch.now.secs();
            for kv in items.chunks_exact(2) {
                let (Some(k), Some(v)) = (text(&kv[0]), text(&kv[1])) else {
                    continue;
                };
                let v = match state.config.key.as_ref() {
                    Some(key) => match key.verify_snapshot(&state.config.fleet, l.name(), k, v) {
                        Ok(v) => v,
                        Err(why) => {
                            state.refuse(why, || {
                                format!(
                                    "snapshot entry {} ({}): {}",
                                    shown(k),
                                    why.as_str(),
                                    shown(v)
                                )
                            });
                            continue;
                        }
                    },
                    None => wire::unsigned_snapshot(v),
                };
                let Some((until, node, rule)) = wire::parse_snapshot_value(v) else {
                    state.fault(format!(
                        "snapshot entry {} = {}: unreadable",
                        shown(k),
                        shown(v)
                    ));
                    continue;
                };
                if let Err(what) = wire::check_names(node, rule) {
                    state.refuse(wire::Refused::BadName, || {
                        format!("snapshot entry {}: {what}", shown(k))
                    });
                    continue;
                }
                if until <= now_s {
                    continue;
                }
                let Some(key) = wire::parse_key(k) else {
                    state.fault(format!("snapshot key {k:?}: not ADDR/PREFIX"));
                    continue;
                };
                if history.lifted(l.name(), key) {
                    state.refuse(wire::Refused::Stale, || {
                        format!(
                            "snapshot entry {}: lifted in the log after its last ban there (an old value written back)",
                            shown(k)
                        )
                    });
                    continue;
                }
                let k = key;
                if apply_ban(state, l, node, rule, k, until, &mut batch) {
                    bans += 1;
                }
            }
        }
        fetch.join().unwrap_or_else(|_| {
            Err(redis::RedisError::from((
                redis::ErrorKind::Client,
                "the snapshot reader panicked",
            )))
        })
    })?;
    let secs = t.elapsed().as_secs_f64();
    state.bootstraps.fetch_add(1, Relaxed);
    state.bootstrap_bans.store(bans, Relaxed);
    *lock(&state.last_sync) =
        json!({"kind": "bootstrap", "bans": bans, "seconds": secs, "why": why});
    info!(
        bans,
        seconds = (secs * 1000.0).round() / 1000.0,
        from = %info.last,
        "share: loaded the fleet's snapshot ({why})"
    );
    Ok(Cursor {
        fleet: state.config.fleet.clone(),
        epoch: info.epoch.clone(),
        id: info.last,
        pos: info.added,
        published: state.published_through.load(Relaxed),
    })
}

/// The time a republish after a crash starts from: the saved cursor's mark (0 without one:
/// every local ban is published).
pub fn republish_since(state: &ShareState) -> u64 {
    state.load_cursor().map_or(0, |c| c.published)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::blacklist::Key;

    fn state() -> ShareState {
        ShareState::new(
            ShareConfig {
                url: "redis://127.0.0.1:1".into(),
                key: None,
                node_given: true,
                ca_file: None,
                fleet: "t".into(),
                node: "mx1".into(),
                lists: vec!["spam".into()],
                maxlen: 1000,
            },
            None,
        )
    }

    fn msg(list: &str, op: Op) -> Pending {
        Pending {
            msg: Msg {
                node: "mx1".into(),
                list: list.into(),
                op,
                at_us: 0,
            },
            made_s: 0,
        }
    }

    #[test]
    fn waiting_changes_compact_to_the_last_per_key_and_nothing_before_a_flush() {
        let k = |i: u32| Key::V4 {
            addr: 0xC612_0000 + i,
            prefix: 32,
        };
        let ban = |i, until| Op::Ban {
            key: k(i),
            until,
            rule: String::new(),
        };
        let mut q: VecDeque<Pending> = VecDeque::new();
        q.push_back(msg("bots", ban(1, 5)));
        q.push_back(msg("spam", ban(1, 5)));
        q.push_back(msg("spam", ban(2, 5)));
        q.push_back(msg("spam", Op::Flush { fleet: false }));
        q.push_back(msg("spam", ban(1, 9)));
        q.push_back(msg("spam", ban(1, 10)));
        q.push_back(msg(
            "spam",
            Op::Unban {
                key: k(3),
                fleet: false,
            },
        ));
        q.push_back(msg("bots", ban(1, 7)));
        let s = state();
        compact(&mut q, &s);
        let left: Vec<String> = q.iter().map(|p| p.msg.to_text()).collect();
        assert_eq!(
            left,
            [
                "f spam - - mx1 0 ",
                "b spam 198.18.0.1/32 10 mx1 0 ",
                "u spam 198.18.0.3/32 - mx1 0 ",
                "b bots 198.18.0.1/32 7 mx1 0 ",
            ]
        );
        assert_eq!(s.dropped.load(Relaxed), 0);
    }

    /// An empty directory of this test's own (tests run in parallel: one name each).
    fn fresh_dir(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("sb-origins-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn origins_are_tagged_once_and_kept_across_restarts() {
        let dir = fresh_dir("kept");
        let file = dir.join(ORIGINS_FILE);
        let mut o = Origins::load(Some(file.clone()));
        let a = o.tag("mx2", "spam to example.com").unwrap();
        let b = o.tag("mx3", "").unwrap();
        assert_eq!(o.tag("mx2", "spam to example.com").unwrap(), a);
        assert_eq!((peer_index(a), peer_index(b)), (Some(0), Some(1)));
        let again = Origins::load(Some(file));
        assert_eq!(again.list, o.list);
        let names = crate::control::Names {
            rules: vec!["local".into()],
            node: Some("mx1".into()),
            origins: again.list.clone(),
        };
        assert_eq!(names.of(a), (Some("mx2"), Some("spam to example.com")));
        assert_eq!(names.of(b), (Some("mx3"), None));
        assert_eq!(names.of(0), (Some("mx1"), Some("local")));
        assert_eq!(names.of(NO_RULE), (Some("mx1"), None));
        assert_eq!(names.of(PEER_RULE + 99), (Some("?"), Some("?")));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn failures_that_waiting_cures_are_told_from_those_it_does_not() {
        let io = |k| redis::RedisError::from(std::io::Error::new(k, "x"));
        assert!(transient(&io(std::io::ErrorKind::ConnectionRefused)));
        assert!(transient(&io(std::io::ErrorKind::TimedOut)));
        assert!(transient(&io(std::io::ErrorKind::ConnectionReset)));
        let auth = redis::RedisError::from((redis::ErrorKind::AuthenticationFailed, "WRONGPASS"));
        assert!(!transient(&auth));
        let cert = redis::RedisError::from(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "invalid peer certificate: UnknownIssuer",
        ));
        assert!(!transient(&cert));
    }

    #[test]
    fn a_list_not_named_is_not_shared() {
        let s = state();
        assert!(s.config.shares("spam") && !s.config.shares("bots"));
        let all = ShareConfig {
            lists: vec![],
            ..s.config.clone()
        };
        assert!(all.shares("bots"));
    }

    /// A signed entry read once is applied; the same entry again (a copy written into the log
    /// within the skew) is a replay; entries age out of the memory.
    /// A key lifted (or its list flushed) after its last ban is lifted; banned again after,
    /// it is not; a key the log never lifted is not.
    #[test]
    fn the_history_tells_a_value_written_back() {
        let key = |a: &str| Key::V4 {
            addr: u32::from(a.parse::<std::net::Ipv4Addr>().unwrap()),
            prefix: 32,
        };
        let msg = |list: &str, op: Op| Msg {
            node: "mx1".into(),
            list: list.into(),
            op,
            at_us: 1,
        };
        let ban = |a: &str| Op::Ban {
            key: key(a),
            until: 9,
            rule: String::new(),
        };
        let mut h = History::default();
        h.note(1, &msg("spam", ban("198.18.0.1")));
        h.note(2, &msg("spam", ban("198.18.0.2")));
        h.note(
            3,
            &msg(
                "spam",
                Op::Unban {
                    key: key("198.18.0.1"),
                    fleet: false,
                },
            ),
        );
        h.note(
            4,
            &msg(
                "spam",
                Op::Unban {
                    key: key("198.18.0.3"),
                    fleet: false,
                },
            ),
        );
        assert!(h.lifted("spam", key("198.18.0.1")));
        assert!(!h.lifted("spam", key("198.18.0.2")));
        assert!(
            h.lifted("spam", key("198.18.0.3")),
            "its ban is older than the log"
        );
        assert!(!h.lifted("spam", key("198.18.0.4")));
        assert!(!h.lifted("other", key("198.18.0.1")));
        h.note(5, &msg("spam", ban("198.18.0.1")));
        assert!(!h.lifted("spam", key("198.18.0.1")), "banned again since");
        h.note(6, &msg("spam", Op::Flush { fleet: true }));
        assert!(h.lifted("spam", key("198.18.0.2")));
        h.note(7, &msg("spam", ban("198.18.0.2")));
        assert!(!h.lifted("spam", key("198.18.0.2")));
    }

    #[test]
    fn a_signed_entry_is_read_once() {
        let mut seen = Seen::default();
        assert!(seen.first("1:aa", 1000));
        assert!(seen.first("1:bb", 1001));
        assert!(!seen.first("1:aa", 2000));
        let later = 1000 + 2 * wire::SIGNED_SKEW_MS + 1;
        assert!(seen.first("1:cc", later));
        assert!(
            seen.first("1:aa", later),
            "forgotten once older than twice the skew"
        );
        assert!(shown("a\nb\u{1b}[2J").contains("\\n") && !shown("a\nb").contains('\n'));
        assert!(shown(&"x".repeat(500)).chars().count() <= 201);
    }

    /// A node id is made once from the host name and kept; a damaged file is an error, never a
    /// silent new id.
    #[test]
    fn a_node_id_is_made_once_and_kept() {
        let dir = std::env::temp_dir().join(format!("sb-node-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let a = node_id(Some(&dir), "mx1").unwrap();
        assert!(
            a.starts_with("mx1-") && a.len() == 12 && wire::is_token(&a),
            "{a}"
        );
        assert_eq!(node_id(Some(&dir), "other").unwrap(), a);
        let other = std::env::temp_dir().join(format!("sb-node2-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&other);
        std::fs::create_dir_all(&other).unwrap();
        assert_ne!(
            node_id(Some(&other), "mx1").unwrap(),
            a,
            "one host name, two ids"
        );
        std::fs::write(dir.join(NODE_FILE), "bad\nid").unwrap();
        assert!(node_id(Some(&dir), "mx1").unwrap_err().contains(NODE_FILE));
        assert!(node_id(None, &"h".repeat(80)).unwrap().len() <= 64);
        let _ = std::fs::remove_dir_all(&dir);
        let _ = std::fs::remove_dir_all(&other);
    }

    /// An origins file from before names were checked: a bad line keeps its index (stored bans
    /// name their origin by it) but not its text.
    #[test]
    fn origins_files_keep_indices_and_drop_bad_names() {
        let dir = fresh_dir("bad-names");
        let f = dir.join(ORIGINS_FILE);
        std::fs::write(&f, "mx1\t@example.com\nA\u{1b}]0;x\tr\nmx2\t@b.test\n").unwrap();
        let o = Origins::load(Some(f));
        assert_eq!(o.list[0], ("mx1".to_string(), "@example.com".to_string()));
        assert_eq!(o.list[1], ("unreadable".to_string(), String::new()));
        assert_eq!(o.list[2], ("mx2".to_string(), "@b.test".to_string()));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
