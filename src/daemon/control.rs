//! The control protocol: JSON lines over a unix socket (root only, mode 0600).
//!
//! One request per line, answered by one line — except `list`, answered by one line per ban and
//! then the closing `{"ok":true,"count":N}` line. Every answer's last line has `ok`; a bad
//! request gets `{"ok":false,"error":"…"}` and the connection stays usable.
//!
//! ```text
//! {"cmd":"list","list":"spam"}                       {"list":"spam","key":"198.18.0.7",…}… {"ok":true,"count":N}
//! {"cmd":"count"}                                    {"ok":true,"count":N,"lists":{"spam":N}}
//! {"cmd":"add","addr":"198.18.0.7","ttl":"1h"}       {"ok":true,"key":"198.18.0.7","new":true}
//! {"cmd":"del","addr":"198.18.0.7"}                  {"ok":true,"removed":1}
//! {"cmd":"flush","list":"spam"}                      {"ok":true,"removed":N}
//! {"cmd":"stats"}                                    {"ok":true,"stats":{…}}
//! {"cmd":"reload"}                                   {"ok":true}
//! ```
//!
//! [`handle`] is pure (the blacklist is in memory; `now` is passed in): tested with strings.
//! The daemon's listener thread ([`serve`]) and the CLI's [`request`] are the thin shells.

use std::io::{self, BufRead, BufReader, Write};
use std::net::IpAddr;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;

use serde_json::{Value, json};

use crate::blacklist::{Ban, Blacklist, Key, List, NO_RULE, RuleId, peer_index};
use crate::time::{self, Instant};

/// Longest request line read; a longer one is refused.
pub const MAX_LINE: usize = 64 * 1024;
/// Control connections served at once (a fixed pool of threads), and waiting for a place; one
/// more is answered "too many control connections" and closed.
pub const WORKERS: usize = 4;
pub const WAITING: usize = 64;
/// A connection idle this long (no request, or an answer not read) is closed.
pub const IDLE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// A request line must be whole this long after its first byte, or the connection is closed:
/// a client sending a byte now and then holds no worker past it.
pub const REQUEST_DEADLINE: std::time::Duration = std::time::Duration::from_secs(2);
/// Connections one uid other than root and the daemon's may hold at once.
pub const PER_UID: usize = 2;
/// Workers and waiting places kept for root and the daemon's own uid: no member of the control
/// group can delay them.
pub const ADMIN_WORKERS: usize = 2;

/// What the client at the other end may do, by its peer credentials (`SO_PEERCRED`).
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub enum Privilege {
    /// Root or the daemon's own uid: every command.
    Admin,
    /// Anyone else who can open the socket (a member of `--control-group`): `add` (with
    /// `reset`), `list`, `count`, `status`, `stats`.
    Member,
}

impl Privilege {
    /// `uid`'s privilege, for a daemon running as `daemon_uid`.
    pub fn of(uid: u32, daemon_uid: u32) -> Privilege {
        if uid == 0 || uid == daemon_uid {
            Privilege::Admin
        } else {
            Privilege::Member
        }
    }

    /// May it run `cmd`?
    pub fn may(self, cmd: &str) -> bool {
        self == Privilege::Admin || matches!(cmd, "add" | "list" | "count" | "status" | "stats")
    }
}

/// What a request asks of the daemon beyond its answer.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub enum Effect {
    None,
    /// Re-read the configuration (as SIGHUP).
    Reload,
}

/// Why a request (or a file a request names) was refused: the reply's `error`.
#[derive(Clone, Debug, Eq, PartialEq)]
pub struct BadRequest(pub String);

impl std::fmt::Display for BadRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for BadRequest {}

impl From<&str> for BadRequest {
    fn from(s: &str) -> BadRequest {
        BadRequest(s.to_string())
    }
}

impl From<BadRequest> for String {
    fn from(b: BadRequest) -> String {
        b.0
    }
}

/// `BadRequest` from `format!` arguments.
macro_rules! bad_request {
    ($($t:tt)*) => { BadRequest(format!($($t)*)) };
}

fn err(msg: impl Into<String>) -> String {
    json!({"ok": false, "error": msg.into()}).to_string()
}

/// The lists a request names (`list`), or all of them.
fn lists<'a>(bl: &'a Blacklist, req: &Value) -> Result<Vec<&'a List>, BadRequest> {
    match req.get("list") {
        None | Some(Value::Null) => Ok(bl.lists().iter().collect()),
        Some(Value::String(name)) => bl
            .by_name(name)
            .map(|(_, l)| vec![l])
            .ok_or_else(|| bad_request!("list {name:?}: no such list")),
        Some(other) => Err(bad_request!("list = {other}: expected a list name")),
    }
}

/// Who made a ban, by its rule id: a local rule, a peer of the fleet (node and rule), or a
/// ban by hand.
#[derive(Clone, Debug, Default, Eq, PartialEq)]
pub struct Names {
    /// The local rules' names, by rule id.
    pub rules: Vec<String>,
    /// This daemon's node id when it shares bans with a fleet.
    pub node: Option<String>,
    /// The peers' origins, by [`peer_index`]: node, and rule name (empty: by hand).
    pub origins: Vec<(String, String)>,
}

impl Names {
    /// Local rules only (no fleet).
    pub fn local(rules: Vec<String>) -> Names {
        Names {
            rules,
            ..Names::default()
        }
    }

    /// The node that made a ban with `rule` (None without a fleet), and the rule's name (None
    /// for a ban by hand, `?` for an id not known).
    pub fn of(&self, rule: RuleId) -> (Option<&str>, Option<&str>) {
        if let Some(i) = peer_index(rule) {
            return match self.origins.get(usize::from(i)) {
                Some((node, r)) => (Some(node), (!r.is_empty()).then_some(r.as_str())),
                None => (Some("?"), Some("?")),
            };
        }
        let node = self.node.as_deref();
        if rule == NO_RULE {
            return (node, None);
        }
        (
            node,
            Some(
                self.rules
                    .get(usize::from(rule))
                    .map_or("?", String::as_str),
            ),
        )
    }
}

/// One ban as a JSON object; `names` names the rule that made it (`rule_name`, null for a ban
/// by hand) and the node (`node`, null without a fleet).
pub fn ban_json(list: &str, ban: &Ban, now: Instant, names: &Names) -> Value {
    let (node, rule_name) = names.of(ban.rule);
    json!({
        "list": list,
        "key": ban.key.to_string(),
        "first_seen": ban.first_seen.micros() / 1_000_000,
        "last_seen": ban.last_seen.micros() / 1_000_000,
        "expires_at": ban.expires_at.micros() / 1_000_000,
        "ttl_left": ban.expires_at.saturating_sub(now).secs(),
        "hits": ban.hits,
        "rule": if ban.rule == NO_RULE || peer_index(ban.rule).is_some() { Value::Null } else { json!(ban.rule) },
        "rule_name": rule_name,
        "node": node,
        "offences": ban.offences,
    })
}

/// A list's part of `status`: its settings, bans, bans made in the last minute and hour, and
/// offenders remembered without a ban (strikes, served bans).
fn list_status(l: &List, now: Instant) -> Value {
    let c = l.config();
    let (mut bans, mut minute, mut hour, mut remembered) = (0u64, 0u64, 0u64, 0u64);
    for b in l.records(now) {
        if !b.is_banned(now) {
            remembered += 1;
            continue;
        }
        bans += 1;
        let age = now.saturating_sub(b.first_seen).secs();
        minute += u64::from(age < 60);
        hour += u64::from(age < 3600);
    }
    json!({
        "name": c.name,
        "ttl_s": c.ttl.secs(),
        "threshold": c.threshold,
        "window_s": c.window.secs(),
        "escalate": c.escalate,
        "max_ttl_s": c.max_ttl().secs(),
        "capacity": c.capacity,
        "bans": bans,
        "new_last_minute": minute,
        "new_last_hour": hour,
        "remembered": remembered,
    })
}

/// The `n` bans that dropped the most packets, across lists.
fn top_bans(bl: &Blacklist, now: Instant, n: usize) -> Vec<(String, Ban)> {
    let mut all: Vec<(String, Ban)> = Vec::new();
    for l in bl.lists() {
        let mut bans = l.bans(now);
        let k = n.min(bans.len());
        if k > 0 && k < bans.len() {
            bans.select_nth_unstable_by_key(k - 1, |b| std::cmp::Reverse(b.hits));
            bans.truncate(k);
        }
        all.extend(bans.into_iter().map(|b| (l.name().to_string(), b)));
    }
    all.sort_by_key(|(_, b)| (std::cmp::Reverse(b.hits), b.key));
    all.truncate(n);
    all
}

/// Parses `ADDR` or `ADDR/PREFIX` for `list`: the prefix, if given, must be the list's own for
/// that family (keys are the source masked by it).
pub fn parse_addr(text: &str, list: &List) -> Result<IpAddr, BadRequest> {
    let (addr, prefix) = match text.split_once('/') {
        Some((a, p)) => (a, Some(p)),
        None => (text, None),
    };
    let ip: IpAddr = addr
        .trim()
        .parse()
        .map_err(|_| bad_request!("addr = {text}: not an IP address"))?;
    if let Some(p) = prefix {
        let p: u8 = p
            .parse()
            .map_err(|_| bad_request!("addr = {text}: bad prefix length"))?;
        let own = match list.key(ip) {
            Key::V4 { prefix, .. } => prefix,
            Key::V6 { prefix, .. } => prefix,
        };
        if p != own {
            return Err(bad_request!(
                "addr = {text}: list {:?} bans /{own} keys for this family (set its prefix_v4 / prefix_v6 to ban /{p})",
                list.config().name
            ));
        }
    }
    Ok(ip)
}

/// A request: a JSON object whose keys are all different (`{"cmd":"count","cmd":"flush"}` is
/// refused, not run as its last key says).
struct Request(serde_json::Map<String, Value>);

impl<'de> serde::Deserialize<'de> for Request {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Request, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = Request;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut m: A,
            ) -> Result<Request, A::Error> {
                let mut map = serde_json::Map::new();
                while let Some((k, v)) = m.next_entry::<String, Value>()? {
                    if map.contains_key(&k) {
                        return Err(serde::de::Error::custom(format!("duplicate key \"{k}\"")));
                    }
                    map.insert(k, v);
                }
                Ok(Request(map))
            }
        }
        d.deserialize_map(Visit)
    }
}

/// What a request may ask of the daemon beyond its blacklist.
pub struct Host<'a> {
    /// The daemon's counters.
    pub stats: &'a dyn Fn() -> Value,
    /// Resets every live session from an address, both ways (`add … "reset":true`): the
    /// answer's `reset` object, `{"sessions":N}` or `{"sessions":0,"error":"…"}`.
    pub reset: &'a dyn Fn(IpAddr) -> Value,
    /// Why an address is allowlisted (the entry and where it came from), or None.
    pub allowed: &'a dyn Fn(IpAddr) -> Option<String>,
    /// The rules' names, by rule id, and the fleet's origins.
    pub rules: &'a dyn Fn() -> Names,
    /// Re-reads the configuration and waits for the outcome: what changed, or why it was
    /// refused.
    pub reload: &'a dyn Fn() -> Result<String, String>,
    /// The daemon's own facts for `status` (queues, rules, uptime, …).
    pub status: &'a dyn Fn() -> Value,
    /// Counts a command refused for want of privilege.
    pub denied: &'a dyn Fn(),
}

/// Answers one request line. Each answer line goes to `out`.
pub fn handle(
    line: &str,
    bl: &Blacklist,
    now: Instant,
    host: &Host<'_>,
    privilege: Privilege,
    out: &mut dyn FnMut(String),
) -> Effect {
    let req: Value = match serde_json::from_str::<Request>(line) {
        Ok(Request(map)) => Value::Object(map),
        Err(e) if e.is_data() => {
            out(err(format!(
                "expected a JSON object such as {{\"cmd\":\"count\"}}: {e}"
            )));
            return Effect::None;
        }
        Err(e) => {
            out(err(format!("not JSON: {e}")));
            return Effect::None;
        }
    };
    let cmd = req.get("cmd").and_then(Value::as_str).unwrap_or("");
    if !cmd.is_empty() && !privilege.may(cmd) {
        (host.denied)();
        out(err(format!(
            "permission denied: {} needs root or the daemon's own user; members of the control group may add, list, count, status and stats",
            Value::from(cmd)
        )));
        return Effect::None;
    }
    let targets = match lists(bl, &req) {
        Ok(l) => l,
        Err(e) => {
            out(err(e));
            return Effect::None;
        }
    };
    match cmd {
        "list" => {
            let mut n = 0u64;
            let rules = (host.rules)();
            for l in &targets {
                for ban in l.bans(now) {
                    out(ban_json(&l.config().name, &ban, now, &rules).to_string());
                    n += 1;
                }
            }
            out(json!({"ok": true, "count": n}).to_string());
        }
        "count" => {
            let mut per = serde_json::Map::new();
            let mut total = 0u64;
            for l in &targets {
                let n = l.bans(now).len() as u64;
                per.insert(l.config().name.clone(), json!(n));
                total += n;
            }
            out(json!({"ok": true, "count": total, "lists": per}).to_string());
        }
        "add" => {
            let Some(&list) = targets.first() else {
                out(err("no list to add to"));
                return Effect::None;
            };
            let Some(text) = req.get("addr").and_then(Value::as_str) else {
                out(err("add needs \"addr\""));
                return Effect::None;
            };
            let ip = match parse_addr(text, list) {
                Ok(ip) => ip,
                Err(e) => {
                    out(err(e));
                    return Effect::None;
                }
            };
            let ttl = match req.get("ttl") {
                None | Some(Value::Null) => list.config().ttl,
                Some(Value::String(t)) => match time::parse_duration(t) {
                    Ok(d) if d.micros() > 0 => d,
                    Ok(_) => {
                        out(err("ttl must be more than 0"));
                        return Effect::None;
                    }
                    Err(e) => {
                        out(err(format!("ttl = {t}: {e}")));
                        return Effect::None;
                    }
                },
                Some(Value::Number(n)) if n.as_u64().is_some_and(|s| s > 0) => {
                    time::Duration::from_secs(n.as_u64().unwrap_or(1))
                }
                Some(other) => {
                    out(err(format!(
                        "ttl = {other}: expected seconds or a duration"
                    )));
                    return Effect::None;
                }
            };
            if let Some(why) = (host.allowed)(ip) {
                out(err(format!(
                    "{ip} is allowlisted by {why}: not banned (take it off the allowlist and reload first)"
                )));
                return Effect::None;
            }
            let reset = match req.get("reset") {
                None | Some(Value::Null) | Some(Value::Bool(false)) => false,
                Some(Value::Bool(true)) => true,
                Some(other) => {
                    out(err(format!("reset = {other}: expected true or false")));
                    return Effect::None;
                }
            };
            let new = list.ban_for(ip, now, ttl, NO_RULE) == crate::blacklist::Banned::New;
            let mut answer = json!({"ok": true, "key": list.key(ip).to_string(), "list": list.config().name, "new": new});
            if reset {
                // Banned first, so that nothing from the address is let in meanwhile.
                answer["reset"] = (host.reset)(ip);
            }
            out(answer.to_string());
        }
        "del" => {
            let Some(text) = req.get("addr").and_then(Value::as_str) else {
                out(err("del needs \"addr\""));
                return Effect::None;
            };
            let by = if req.get("fleet") == Some(&Value::Bool(true)) {
                crate::blacklist::By::Fleet
            } else {
                crate::blacklist::By::Local
            };
            let mut removed = 0;
            for l in &targets {
                match parse_addr(text, l) {
                    Ok(ip) => removed += usize::from(l.remove_by(ip, by)),
                    Err(e) => {
                        out(err(e));
                        return Effect::None;
                    }
                }
            }
            out(json!({"ok": true, "removed": removed}).to_string());
        }
        "flush" => {
            let by = if req.get("fleet") == Some(&Value::Bool(true)) {
                crate::blacklist::By::Fleet
            } else {
                crate::blacklist::By::Local
            };
            let removed: usize = targets.iter().map(|l| l.clear_by(by)).sum();
            out(json!({"ok": true, "removed": removed}).to_string());
        }
        "stats" => out(json!({"ok": true, "stats": (host.stats)()}).to_string()),
        "reload" => match (host.reload)() {
            Ok(done) => out(json!({"ok": true, "reloaded": done}).to_string()),
            Err(why) => out(err(why)),
        },
        "status" => {
            let rules = (host.rules)();
            let mut status = (host.status)();
            status["lists"] = json!(
                bl.lists()
                    .iter()
                    .map(|l| list_status(l, now))
                    .collect::<Vec<_>>()
            );
            status["top"] = json!(
                top_bans(bl, now, 10)
                    .iter()
                    .map(|(name, b)| ban_json(name, b, now, &rules))
                    .collect::<Vec<_>>()
            );
            out(json!({"ok": true, "status": status}).to_string());
        }
        "" => out(err("missing \"cmd\"")),
        other => out(err(format!(
            "cmd = {other}: expected list, count, add, del, flush, stats, status or reload"
        ))),
    }
    Effect::None
}

/// The xt_recent `/proc` line of a ban (docs/KERNEL.md §3.4), with times in seconds since the
/// epoch where the kernel prints jiffies: `src=ADDR ttl: 0 last_seen: T oldest_pkt: 1 T`.
pub fn xt_recent_line(key: &str, last_seen: u64) -> String {
    let addr = key.split('/').next().unwrap_or(key);
    let addr = match addr.parse::<IpAddr>() {
        Ok(IpAddr::V6(v6)) => v6
            .segments()
            .iter()
            .map(|s| format!("{s:04x}"))
            .collect::<Vec<_>>()
            .join(":"),
        _ => addr.to_string(),
    };
    format!("src={addr} ttl: 0 last_seen: {last_seen} oldest_pkt: 1 {last_seen}")
}

/// Addresses of an xt_recent `/proc/net/xt_recent/NAME` dump, in order (lines that do not
/// start with `src=` are reported by line number).
pub fn parse_xt_recent(text: &str) -> Result<Vec<IpAddr>, BadRequest> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let addr = line
            .strip_prefix("src=")
            .and_then(|r| r.split_whitespace().next())
            .ok_or_else(|| bad_request!("line {}: expected src=ADDR …: {line:?}", n + 1))?;
        let ip = addr
            .parse()
            .map_err(|_| bad_request!("line {}: src={addr}: not an IP address", n + 1))?;
        out.push(ip);
    }
    Ok(out)
}

/// Binds the control socket at `path`, mode 0600 (0660 owned by `group` when given) from the
/// moment it exists: it is bound inside a fresh 0700 directory beside `path`, given its mode,
/// then renamed into place. A stale socket at `path` (nobody answers) is replaced; anything else
/// there — a live daemon's socket, a regular file, a directory, a link — is refused and left
/// alone.
pub fn bind(path: &Path, group: Option<u32>) -> io::Result<UnixListener> {
    use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
    let refuse = |what: &str| {
        io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!("{}: {what}; refusing to replace it", path.display()),
        )
    };
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => {
            if UnixStream::connect(path).is_ok() {
                return Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    format!("{}: another daemon answers there", path.display()),
                ));
            }
        }
        Ok(m) if m.is_dir() => return Err(refuse("a directory is there")),
        Ok(m) if m.file_type().is_symlink() => return Err(refuse("a symbolic link is there")),
        Ok(_) => return Err(refuse("a file that is not a socket is there")),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    // /run/stringban by default: made here when run by hand (systemd's RuntimeDirectory makes
    // it for the service).
    if !parent.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(parent)?;
    }
    let private = parent.join(format!(".{name}.{}.tmp", std::process::id()));
    let _ = std::fs::remove_dir_all(&private);
    std::fs::DirBuilder::new().mode(0o700).create(&private)?;
    let result = (|| {
        std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o700))?;
        let inner = private.join("s");
        let listener = UnixListener::bind(&inner)?;
        if let Some(gid) = group {
            std::os::unix::fs::chown(&inner, None, Some(gid))?;
            std::fs::set_permissions(&inner, std::fs::Permissions::from_mode(0o660))?;
        } else {
            std::fs::set_permissions(&inner, std::fs::Permissions::from_mode(0o600))?;
        }
        // Over a stale socket of ours only (checked above): rename replaces it atomically.
        std::fs::rename(&inner, path)?;
        Ok(listener)
    })();
    let _ = std::fs::remove_dir_all(&private);
    result
}

/// The id of group `name` (a name in `group_file`, the text of /etc/group, or a number).
pub fn group_id(name: &str, group_file: &str) -> Result<u32, BadRequest> {
    if let Ok(gid) = name.parse::<u32>() {
        return Ok(gid);
    }
    group_file
        .lines()
        .find_map(|l| {
            let mut f = l.split(':');
            (f.next() == Some(name)).then(|| f.nth(1).and_then(|g| g.parse().ok()))?
        })
        .ok_or_else(|| bad_request!("no group {name} in /etc/group"))
}

/// Serves one connection until it closes: each line is [`handle`]d; `on_effect` runs for
/// requests that ask for more than an answer.
pub fn serve(
    stream: UnixStream,
    bl: &Blacklist,
    now: &dyn Fn() -> Instant,
    host: &Host<'_>,
    privilege: Privilege,
    on_effect: &dyn Fn(Effect),
) -> io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut w = io::BufWriter::new(stream);
    let mut raw = Vec::new();
    loop {
        raw.clear();
        let n = match read_request(&mut reader, &mut raw) {
            Ok(n) => n,
            // Idle past the timeout, or a request not whole by its deadline: the connection
            // is closed, its place freed.
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        if n == 0 {
            return Ok(());
        }
        if n > MAX_LINE {
            writeln!(w, "{}", err("request line too long"))?;
            w.flush()?;
            return Ok(());
        }
        let Ok(line) = std::str::from_utf8(&raw) else {
            writeln!(w, "{}", err("request is not UTF-8"))?;
            w.flush()?;
            continue;
        };
        let mut failed = None;
        let effect = handle(line.trim_end(), bl, now(), host, privilege, &mut |answer| {
            if failed.is_none()
                && let Err(e) = writeln!(w, "{answer}")
            {
                failed = Some(e);
            }
        });
        if let Some(e) = failed {
            return Err(e);
        }
        w.flush()?;
        on_effect(effect);
    }
}

/// Reads one request line into `raw` (at most [`MAX_LINE`] + 1 bytes): waiting up to
/// [`IDLE_TIMEOUT`] for its first byte, then up to [`REQUEST_DEADLINE`] for the rest. Returns
/// the bytes read (0 at the end of the stream); a timeout is an error of kind `TimedOut`.
fn read_request(reader: &mut BufReader<UnixStream>, raw: &mut Vec<u8>) -> io::Result<usize> {
    let mut deadline = None;
    loop {
        let wait = match deadline {
            None => IDLE_TIMEOUT,
            Some(d) => {
                let left = d - std::time::Instant::now().min(d);
                if left.is_zero() {
                    return Err(io::ErrorKind::TimedOut.into());
                }
                left
            }
        };
        reader.get_ref().set_read_timeout(Some(wait))?;
        let buf = reader.fill_buf()?;
        if buf.is_empty() {
            return Ok(raw.len());
        }
        deadline.get_or_insert_with(|| std::time::Instant::now() + REQUEST_DEADLINE);
        let room = MAX_LINE + 1 - raw.len();
        let (take, done) = match memchr::memchr(b'\n', buf) {
            Some(i) if i < room => (i + 1, true),
            _ => (buf.len().min(room), false),
        };
        raw.extend_from_slice(&buf[..take]);
        reader.consume(take);
        if done || raw.len() > MAX_LINE {
            return Ok(raw.len());
        }
    }
}

/// Sends one request to the daemon at `path` and returns its answer lines (the last has `ok`).
pub fn request(path: &Path, req: &Value) -> io::Result<Vec<Value>> {
    let stream = UnixStream::connect(path).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!(
                "{}: {e} (is the daemon running with --control-socket {}?)",
                path.display(),
                path.display()
            ),
        )
    })?;
    let mut w = stream.try_clone()?;
    // A daemon that refuses the connection (too many open) has already said why and closed:
    // read its answer rather than report the broken pipe.
    if let Err(e) = writeln!(w, "{req}")
        && e.kind() != io::ErrorKind::BrokenPipe
        && e.kind() != io::ErrorKind::ConnectionReset
    {
        return Err(e);
    }
    let mut out = Vec::new();
    for line in BufReader::new(stream).lines() {
        let v: Value = serde_json::from_str(&line?)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        let last = v.get("ok").is_some();
        out.push(v);
        if last {
            break;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::blacklist::ListConfig;

    const T0: Instant = Instant::from_secs(1_767_225_600);

    fn bl() -> Blacklist {
        Blacklist::new(vec![
            ListConfig::new("spam"),
            ListConfig {
                prefix_v4: 24,
                ..ListConfig::new("nets")
            },
        ])
    }

    fn ask(bl: &Blacklist, line: &str) -> (Vec<Value>, Effect) {
        ask_as(bl, line, Privilege::Admin)
    }

    fn ask_as(bl: &Blacklist, line: &str, privilege: Privilege) -> (Vec<Value>, Effect) {
        let mut out = Vec::new();
        let host = Host {
            stats: &|| json!({"packets": 7}),
            reset: &|ip| json!({"sessions": 1, "addr": ip.to_string()}),
            allowed: &|ip| {
                (ip == IpAddr::from([192, 0, 2, 1])).then(|| "192.0.2.1/32 (test)".into())
            },
            rules: &|| Names::local(vec!["r0".into()]),
            reload: &|| Ok("reloaded".into()),
            status: &|| json!({"uptime_s": 5}),
            denied: &|| {},
        };
        let effect = handle(line, bl, T0, &host, privilege, &mut |l| {
            out.push(serde_json::from_str(&l).unwrap())
        });
        (out, effect)
    }

    #[test]
    fn bind_replaces_only_a_stale_socket_and_sets_the_mode_first() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("sb-ctl-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        // A regular file (a typo pointing at a config file) is refused and kept.
        let file = dir.join("stringban.toml");
        std::fs::write(&file, "rules").unwrap();
        let e = bind(&file, None).unwrap_err();
        assert!(e.to_string().contains("not a socket"), "{e}");
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "rules");
        assert!(bind(&dir, None).is_err(), "a directory");
        // A fresh socket: mode 0600, and nothing left beside it.
        let sock = dir.join("ctl.sock");
        let live = bind(&sock, None).unwrap();
        let mode = std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 2);
        // A live daemon's socket is refused; a stale one (no listener) is replaced.
        assert_eq!(
            bind(&sock, None).unwrap_err().kind(),
            io::ErrorKind::AddrInUse
        );
        drop(live);
        use std::os::unix::fs::MetadataExt;
        let own_group = std::fs::metadata(&dir).unwrap().gid();
        let again = bind(&sock, Some(own_group)).unwrap();
        let mode = std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o660, "with a group");
        drop(again);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn duplicate_keys_and_bad_bytes_get_an_error_reply() {
        let b = bl();
        ask(&b, r#"{"cmd":"add","addr":"198.18.0.7"}"#);
        let (a, _) = ask(&b, r#"{"cmd":"count","cmd":"flush"}"#);
        assert_eq!(a[0]["ok"], false);
        assert!(
            a[0]["error"].as_str().unwrap().contains("duplicate key"),
            "{}",
            a[0]
        );
        assert_eq!(b.lists()[0].len(), 1, "nothing flushed");
        // Over a socket: invalid UTF-8 is answered, and the connection stays usable.
        let (client, server) = UnixStream::pair().unwrap();
        let t = std::thread::spawn(move || {
            let host = Host {
                stats: &|| Value::Null,
                reset: &|_| Value::Null,
                allowed: &|_| None,
                rules: &Names::default,
                reload: &|| Err("no".into()),
                status: &|| Value::Null,
                denied: &|| {},
            };
            serve(server, &bl(), &|| T0, &host, Privilege::Admin, &|_| {}).unwrap();
        });
        let mut w = client.try_clone().unwrap();
        w.write_all(b"\xff\xfe{\n{\"cmd\":\"count\"}\n").unwrap();
        let mut lines = BufReader::new(client).lines();
        let first: Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
        assert_eq!(first["error"], "request is not UTF-8");
        let second: Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
        assert_eq!(second["ok"], true);
        drop(w);
        drop(lines);
        t.join().unwrap();
    }

    #[test]
    fn group_ids_by_name_or_number() {
        let file = "root:x:0:\nDebian-exim:x:107:\nmail:x:8:\n";
        assert_eq!(group_id("Debian-exim", file), Ok(107));
        assert_eq!(group_id("mail", file), Ok(8));
        assert_eq!(group_id("42", file), Ok(42));
        assert!(
            group_id("nobody-here", file)
                .unwrap_err()
                .0
                .contains("nobody-here")
        );
    }

    #[test]
    fn add_count_list_del_flush() {
        let b = bl();
        let (a, _) = ask(&b, r#"{"cmd":"add","addr":"198.18.0.7","ttl":"1h"}"#);
        assert_eq!(
            a[0],
            json!({"ok": true, "key": "198.18.0.7", "list": "spam", "new": true})
        );
        let (a, _) = ask(
            &b,
            r#"{"cmd":"add","addr":"198.18.5.9/24","list":"nets","ttl":60}"#,
        );
        assert_eq!(a[0]["key"], "198.18.5.0/24");
        // add with reset: banned, then the host resets the address's sessions.
        let (a, _) = ask(&b, r#"{"cmd":"add","addr":"198.18.0.8","reset":true}"#);
        assert_eq!(a[0]["new"], true);
        assert_eq!(a[0]["reset"], json!({"sessions": 1, "addr": "198.18.0.8"}));
        let (a, _) = ask(&b, r#"{"cmd":"add","addr":"198.18.0.9","reset":"yes"}"#);
        assert_eq!(a[0]["ok"], false);
        assert_eq!(b.lists()[0].len(), 2, "a bad request bans nothing");
        let (a, _) = ask(&b, r#"{"cmd":"del","addr":"198.18.0.8"}"#);
        assert_eq!(a[0]["removed"], 1);
        let (a, _) = ask(&b, r#"{"cmd":"count"}"#);
        assert_eq!(
            a[0],
            json!({"ok": true, "count": 2, "lists": {"spam": 1, "nets": 1}})
        );
        let (a, _) = ask(&b, r#"{"cmd":"list","list":"spam"}"#);
        assert_eq!(a.len(), 2);
        assert_eq!(a[0]["ttl_left"], 3600);
        assert_eq!(a[0]["rule"], Value::Null);
        assert_eq!(a[1], json!({"ok": true, "count": 1}));
        assert_eq!(
            xt_recent_line(
                a[0]["key"].as_str().unwrap_or(""),
                a[0]["last_seen"].as_u64().unwrap_or(0)
            ),
            "src=198.18.0.7 ttl: 0 last_seen: 1767225600 oldest_pkt: 1 1767225600"
        );
        let (a, _) = ask(&b, r#"{"cmd":"del","addr":"198.18.0.7"}"#);
        assert_eq!(a[0], json!({"ok": true, "removed": 1}));
        let (a, _) = ask(&b, r#"{"cmd":"flush"}"#);
        assert_eq!(a[0], json!({"ok": true, "removed": 1}));
        let (a, e) = ask(&b, r#"{"cmd":"reload"}"#);
        assert_eq!((a[0]["ok"].as_bool(), e), (Some(true), Effect::None));
        assert_eq!(a[0]["reloaded"], "reloaded");
        let (a, _) = ask(&b, r#"{"cmd":"status"}"#);
        assert_eq!(a[0]["status"]["uptime_s"], 5);
        assert!(a[0]["status"]["lists"].is_array() && a[0]["status"]["top"].is_array());
        let (a, _) = ask(&b, r#"{"cmd":"add","addr":"192.0.2.1"}"#);
        assert_eq!(a[0]["ok"], false);
        assert!(
            a[0]["error"].as_str().unwrap().contains("allowlisted"),
            "{}",
            a[0]
        );
        let (a, _) = ask(&b, r#"{"cmd":"stats"}"#);
        assert_eq!(a[0]["stats"]["packets"], 7);
    }

    #[test]
    fn bad_requests_get_an_error_reply() {
        let b = bl();
        for (line, want) in [
            ("nonsense", "not JSON"),
            ("[1]", "expected a JSON object"),
            (r#"{"cmd":"fly"}"#, "cmd = fly"),
            (r#"{}"#, "missing \"cmd\""),
            (r#"{"cmd":"add"}"#, "add needs \"addr\""),
            (r#"{"cmd":"add","addr":"300.1.1.1"}"#, "not an IP address"),
            (r#"{"cmd":"add","addr":"198.18.0.1/24"}"#, "bans /32 keys"),
            (
                r#"{"cmd":"add","addr":"198.18.0.1","ttl":"soon"}"#,
                "ttl = soon",
            ),
            (r#"{"cmd":"add","addr":"198.18.0.1","ttl":0}"#, "ttl = 0"),
            (r#"{"cmd":"count","list":"nope"}"#, "no such list"),
            (r#"{"cmd":"del","addr":"x"}"#, "not an IP address"),
        ] {
            let (a, _) = ask(&b, line);
            assert_eq!(a[0]["ok"], false, "{line}");
            let msg = a[0]["error"].as_str().unwrap();
            assert!(msg.contains(want), "{line}: {msg}");
        }
        assert_eq!(b.lists()[0].len(), 0);
    }

    #[test]
    fn xt_recent_dumps_parse_and_ipv6_prints_in_full() {
        let dump = "src=192.0.2.7 ttl: 52 last_seen: 4295312345 oldest_pkt: 2 4295300000, 4295312345\nsrc=2001:0db8:0000:0000:0000:0000:0000:0001 ttl: 0 last_seen: 1 oldest_pkt: 1 1\n\n";
        let ips = parse_xt_recent(dump).unwrap();
        assert_eq!(
            ips,
            [
                "192.0.2.7".parse::<IpAddr>().unwrap(),
                "2001:db8::1".parse().unwrap()
            ]
        );
        assert!(
            parse_xt_recent("garbage\n")
                .unwrap_err()
                .0
                .contains("line 1")
        );
        let v = json!({"key": "2001:db8::/64", "last_seen": 5});
        assert_eq!(
            xt_recent_line(
                v["key"].as_str().unwrap_or(""),
                v["last_seen"].as_u64().unwrap_or(0)
            ),
            "src=2001:0db8:0000:0000:0000:0000:0000:0000 ttl: 0 last_seen: 5 oldest_pkt: 1 5"
        );
    }

    /// A member of the control group (not root, not the daemon's uid) may add, list, count and
    /// ask for status and stats; del, flush and reload are refused with a reason, and change
    /// nothing.
    #[test]
    fn a_member_of_the_control_group_may_add_but_not_lift_flush_or_reload() {
        assert_eq!(Privilege::of(0, 1000), Privilege::Admin);
        assert_eq!(Privilege::of(1000, 1000), Privilege::Admin);
        assert_eq!(Privilege::of(65534, 0), Privilege::Member);
        let b = bl();
        let (a, _) = ask_as(
            &b,
            r#"{"cmd":"add","addr":"198.18.0.9"}"#,
            Privilege::Member,
        );
        assert_eq!(a.last().unwrap()["ok"], true, "{a:?}");
        for ok in ["list", "count", "status", "stats"] {
            let (a, _) = ask_as(&b, &format!(r#"{{"cmd":"{ok}"}}"#), Privilege::Member);
            assert_eq!(a.last().unwrap()["ok"], true, "{ok}: {a:?}");
        }
        for refused in [
            r#"{"cmd":"del","addr":"198.18.0.9"}"#,
            r#"{"cmd":"flush"}"#,
            r#"{"cmd":"reload"}"#,
        ] {
            let (a, effect) = ask_as(&b, refused, Privilege::Member);
            assert_eq!(effect, Effect::None);
            let e = a[0]["error"].as_str().unwrap();
            assert!(e.starts_with("permission denied"), "{e}");
        }
        assert_eq!(b.lists()[0].len(), 1, "nothing lifted or flushed");
        let (a, _) = ask_as(&b, r#"{"cmd":"flush"}"#, Privilege::Admin);
        assert_eq!(a.last().unwrap()["ok"], true);
    }

    /// A request must be whole within the deadline after its first byte: a client that sends a
    /// byte now and then is cut off, its worker freed.
    #[test]
    fn a_slow_request_is_cut_off_at_its_deadline() {
        let (client, server) = UnixStream::pair().unwrap();
        let t = std::thread::spawn(move || {
            let host = Host {
                stats: &|| Value::Null,
                reset: &|_| Value::Null,
                allowed: &|_| None,
                rules: &Names::default,
                reload: &|| Err("no".into()),
                status: &|| Value::Null,
                denied: &|| {},
            };
            let t0 = std::time::Instant::now();
            serve(server, &bl(), &|| T0, &host, Privilege::Member, &|_| {}).unwrap();
            t0.elapsed()
        });
        let mut w = client.try_clone().unwrap();
        for b in br#"{"cmd":"#.iter() {
            if w.write_all(&[*b]).is_err() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(400));
        }
        let took = t.join().unwrap();
        assert!(
            took < REQUEST_DEADLINE + std::time::Duration::from_millis(600),
            "{took:?}"
        );
        assert!(took >= REQUEST_DEADLINE, "{took:?}");
    }
}
