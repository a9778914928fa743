//! `stringban run`: the live daemon. One worker thread per NFQUEUE queue, each with its own
//! [`Engine`] sibling over the shared blacklist; the main thread handles signals, reloads,
//! expiry and the periodic summary.
//!
//! Verdict mapping (docs/ARCHITECTURE.md, *The live daemon*):
//! - Accept and Drop → run-length batch verdicts: each run of consecutive packets with the same
//!   verdict is one `NFQNL_MSG_VERDICT_BATCH`, all of a wake-up's verdicts in one `sendto`;
//! - Reset → drop, and destroy the local socket with `SOCK_DESTROY` (the MTA's session is
//!   aborted at once and the kernel sends the remote a RST). Where that is unsupported or no
//!   local socket has the 4-tuple, the packet is repeated with the RESET mark, so the kernel's
//!   REJECT rule resets the remote;
//! - Bypass → repeated with the BYPASS mark, which the rules save into the connmark.

use std::fs::File;
use std::io::{self, Write};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration as StdDuration, SystemTime, UNIX_EPOCH};

use tracing::{error, info, warn};

use crate::blacklist::Blacklist;
use crate::config::Config;
use crate::engine::{Engine, Stats, Verdict};
use crate::io::firewall::{self, Marks, RulesConfig};
use crate::io::nfqueue::codec::{self, Builder};
use crate::io::nfqueue::{Queue, QueueConfig, QueueError, kernel_counters};
use crate::io::offload::Offload;
use crate::io::rst::RstInjector;
use crate::io::sockdiag::{Destroyed, SockDiag};
use crate::parse::{self, Transport};
use crate::persist::{Disk, Health};
use crate::store::Store;
use crate::time::Instant;

/// Everything `run` needs besides the rule configuration.
#[derive(Clone, Debug)]
pub struct DaemonConfig {
    pub queues: (u16, u16),
    pub queue: QueueConfig,
    pub install_rules: bool,
    pub fail_open: bool,
    /// Who writes the rules; None: auto ([`firewall::choose`]).
    pub firewall: Option<firewall::Backend>,
    pub marks: Marks,
    pub pidfile: Option<PathBuf>,
    pub summary_every: StdDuration,
    /// Abort local sockets with SOCK_DESTROY when a flow is reset; false forces the fallback
    /// (REJECT for the remote, a crafted RST for the local side).
    pub sock_destroy: bool,
    /// Where bans are kept across restarts (snapshot + journal); None: nowhere.
    pub state_dir: Option<PathBuf>,
    /// How often the journal is fsync'd (a crash loses at most the bans of this last interval).
    pub fsync_every: StdDuration,
    /// How often the journal is folded into a new snapshot.
    pub snapshot_every: StdDuration,
    /// The control socket; None: none.
    pub control_socket: Option<PathBuf>,
    /// A group given read-write access to the control socket (mode 0660), e.g. the MTA's, so
    /// that its ACL can call `stringban add --reset`; None: root only (mode 0600).
    pub control_group: Option<u32>,
    /// Where Prometheus metrics are served (host:port); None: nowhere.
    pub metrics: Option<String>,
    /// Mirror bans into ipsets dropped before the queue.
    pub offload: bool,
}

/// Reads the configuration again (SIGHUP).
pub type Reload = Box<dyn Fn() -> Result<Config, String> + Send>;

/// The wall clock as an engine [`Instant`].
pub fn now() -> Instant {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    Instant::from_micros(u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

/// Counters of one worker that the engine does not keep.
#[derive(Clone, Debug, Default)]
pub struct WorkerStats {
    pub engine: Stats,
    pub malformed: u64,
    pub wakeups: u64,
    pub destroyed: u64,
    pub reset_by_mark: u64,
    /// Crafted RSTs sent toward the local side (with `reset_by_mark`).
    pub crafted: u64,
    pub gso: u64,
    pub csum_not_ready: u64,
    /// Time in `decide`, every 16th packet.
    pub latency: crate::metrics::Latency,
}

struct Shared {
    /// The recent tables of imported iptables rules: one set for every worker and reload.
    recent: Mutex<Option<Arc<Mutex<crate::recent::Tables>>>>,
    stop: AtomicBool,
    /// Set once every worker has stopped: the store saves what is left and exits.
    store_stop: AtomicBool,
    generation: AtomicU64,
    config: Mutex<Config>,
    stats: Vec<Mutex<WorkerStats>>,
    /// `add --reset`: sessions destroyed, and requests whose sessions could not be reset.
    reset_on_request: AtomicU64,
    reset_failures: AtomicU64,
    /// Control connections refused (pool full) or not accepted (an accept error).
    control_refused: AtomicU64,
    store_health: Health,
}

/// The kernel rules this daemon installed: removed when dropped before the daemon's own orderly
/// removal at exit took them — that is, when a start fails after installing them.
struct RulesGuard(Option<RulesConfig>);

impl Drop for RulesGuard {
    fn drop(&mut self) {
        if let Some(cfg) = self.0.take() {
            match firewall::remove(&cfg) {
                Ok(()) => warn!("start failed: removed the rules it had installed"),
                Err(e) => {
                    error!("start failed, and removing the rules it had installed failed: {e}")
                }
            }
        }
    }
}

/// The control socket this daemon bound: removed when the daemon stops (or fails to start).
struct SocketGuard(Option<PathBuf>);

impl Drop for SocketGuard {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// One owner of the kernel rules per network namespace: an exclusive lock on
/// `/run/stringban/rules-net-<namespace inode>.lock`, taken before any rule is touched and held
/// for the daemon's life. A second daemon that would install rules in the same namespace is
/// refused before it changes anything (it would flush and rewrite the first one's chain, and its
/// stop would remove the first one's jumps).
struct RulesLock {
    _held: File,
}

impl RulesLock {
    const DIR: &'static str = "/run/stringban";

    fn take() -> Result<RulesLock, String> {
        use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
        let ns = std::fs::metadata("/proc/self/ns/net")
            .map(|m| m.ino())
            .map_err(|e| format!("/proc/self/ns/net: {e}"))?;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(Self::DIR)
            .map_err(|e| format!("{}: {e}", Self::DIR))?;
        let path = format!("{}/rules-net-{ns}.lock", Self::DIR);
        let mut f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(|e| format!("{path}: {e}"))?;
        match f.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let holder = std::fs::read_to_string(&path).unwrap_or_default();
                return Err(format!(
                    "another stringban (pid {}) manages the kernel rules in this network namespace; refusing to touch them (run this one without --install-rules, or in another namespace)",
                    holder.trim()
                ));
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(format!("{path}: {e}")),
        }
        let _ = f.set_len(0);
        let _ = write!(f, "{}", std::process::id());
        Ok(RulesLock { _held: f })
    }
}

/// A pidfile held locked for the daemon's life.
struct PidFile {
    path: PathBuf,
    file: File,
}

impl PidFile {
    fn lock(path: PathBuf) -> Result<PidFile, String> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        match file.try_lock() {
            Ok(()) => Ok(PidFile { path, file }),
            Err(std::fs::TryLockError::WouldBlock) => {
                let pid = std::fs::read_to_string(&path).unwrap_or_default();
                Err(format!(
                    "already running (pid {}, pidfile {})",
                    pid.trim(),
                    path.display()
                ))
            }
            Err(std::fs::TryLockError::Error(e)) => Err(format!("{}: {e}", path.display())),
        }
    }

    fn write_pid(&mut self) -> io::Result<()> {
        self.file.set_len(0)?;
        writeln!(self.file, "{}", std::process::id())?;
        self.file.flush()
    }
}

impl Drop for PidFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Why the daemon could not start (exit code 2 for the caller) or failed (1).
#[derive(Debug)]
pub enum DaemonError {
    Start(String),
    Failed(String),
}

impl std::fmt::Display for DaemonError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DaemonError::Start(m) | DaemonError::Failed(m) => f.write_str(m),
        }
    }
}

/// Runs until SIGTERM or SIGINT. Order at start: lock the pidfile, bind every queue, install
/// the rules, write the pid, tell systemd READY. At exit: finish in-flight batches, unbind,
/// remove the rules it installed.
pub fn run(config: Config, daemon: DaemonConfig, reload: Reload) -> Result<(), DaemonError> {
    let mut pidfile = match &daemon.pidfile {
        Some(p) => Some(PidFile::lock(p.clone()).map_err(DaemonError::Start)?),
        None => None,
    };
    let term = Arc::new(AtomicBool::new(false));
    let hup = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(sig, Arc::clone(&term))
            .map_err(|e| DaemonError::Start(format!("signal handler: {e}")))?;
    }
    signal_hook::flag::register(signal_hook::consts::SIGHUP, Arc::clone(&hup))
        .map_err(|e| DaemonError::Start(format!("signal handler: {e}")))?;

    // Bans first: restored before the queues are bound, so none is missing once they are.
    let keys = daemon
        .state_dir
        .as_deref()
        .map(crate::store::peek_keys)
        .unwrap_or_default();
    let blacklist = Arc::new(Blacklist::with_hash_keys(config.lists.clone(), &keys));
    let store = match &daemon.state_dir {
        Some(dir) => Some(open_store(dir, &blacklist)?),
        None => None,
    };

    let mut queues = Vec::new();
    for num in daemon.queues.0..=daemon.queues.1 {
        let q = Queue::open(QueueConfig {
            num,
            ..daemon.queue.clone()
        })
        .map_err(|e| DaemonError::Start(e.to_string()))?;
        queues.push(q);
    }
    let offload = if daemon.offload {
        let capacity: usize = config
            .lists
            .iter()
            .map(|l| l.capacity)
            .fold(0usize, usize::saturating_add);
        let o = Offload::new(capacity);
        o.setup()
            .map_err(|e| DaemonError::Start(format!("offload: {e}")))?;
        let t = std::time::Instant::now();
        let n = o
            .resync(&blacklist, now())
            .map_err(|e| DaemonError::Start(format!("offload: {e}")))?;
        let secs = t.elapsed().as_secs_f64();
        info!(
            bans = n,
            seconds = (secs * 1000.0).round() / 1000.0,
            adds_per_second = (n as f64 / secs.max(1e-6)).round(),
            v4 = %o.v4,
            v6 = %o.v6,
            "offload sets loaded"
        );
        Some(o)
    } else {
        None
    };
    let mut rules_cfg = RulesConfig {
        fail_open: daemon.fail_open,
        marks: daemon.marks,
        offload_sets: offload.as_ref().map(|o| (o.v4.clone(), o.v6.clone())),
        ..RulesConfig::new(ports_of(&config), daemon.queues)
    };
    (
        rules_cfg.bypass,
        rules_cfg.replies,
        rules_cfg.skip_pure_acks,
    ) = rule_needs(&config);
    // Everything that can fail for want of a free resource is taken before the kernel rules
    // are touched, so that a failed start leaves the rules as they were.
    let control_listener = match &daemon.control_socket {
        Some(path) => Some(
            crate::control::bind(path, daemon.control_group).map_err(|e| {
                DaemonError::Start(format!("control socket {}: {e}", path.display()))
            })?,
        ),
        None => None,
    };
    let socket_guard = SocketGuard(
        daemon
            .control_socket
            .clone()
            .filter(|_| control_listener.is_some()),
    );
    let metrics_listener = match &daemon.metrics {
        Some(addr) => Some(
            crate::metrics::bind(addr)
                .map_err(|e| DaemonError::Start(format!("metrics listener {addr}: {e}")))?,
        ),
        None => None,
    };
    // The lock is declared first so that it is released last, after a failed start's guard
    // has removed the rules.
    let mut rules_lock: Option<RulesLock> = None;
    let mut rules_guard = RulesGuard(None);
    if daemon.install_rules {
        rules_lock = Some(RulesLock::take().map_err(DaemonError::Start)?);
        rules_cfg.backend = firewall::choose(daemon.firewall)
            .map_err(|e| DaemonError::Start(format!("installing rules: {e}")))?;
        if offload.is_some() && rules_cfg.backend == firewall::Backend::Nft {
            return Err(DaemonError::Start(
                "--offload mirrors bans into ipsets, which the iptables backend matches; use --firewall iptables".into(),
            ));
        }
        let tools = firewall::install(&rules_cfg)
            .map_err(|e| DaemonError::Start(format!("installing rules: {e}")))?;
        rules_guard.0 = Some(rules_cfg.clone());
        info!(tools = %tools.join(","), chain = %rules_cfg.chain, "rules installed");
    }
    if let Some(p) = pidfile.as_mut() {
        p.write_pid()
            .map_err(|e| DaemonError::Start(format!("writing the pidfile: {e}")))?;
    }
    notify_systemd("READY=1");
    info!(queues = ?daemon.queues, rules = config.rules.len(), "stringban running");

    let shared = Arc::new(Shared {
        recent: Mutex::new(None),
        stop: AtomicBool::new(false),
        store_stop: AtomicBool::new(false),
        generation: AtomicU64::new(0),
        config: Mutex::new(config),
        stats: queues
            .iter()
            .map(|_| Mutex::new(WorkerStats::default()))
            .collect(),
        reset_on_request: AtomicU64::new(0),
        reset_failures: AtomicU64::new(0),
        control_refused: AtomicU64::new(0),
        store_health: Health::default(),
    });
    let store_thread = if store.is_some() || offload.is_some() {
        let (tx, rx) = std::sync::mpsc::channel();
        blacklist.set_journal(&tx);
        drop(tx);
        let shared = Arc::clone(&shared);
        let blacklist = Arc::clone(&blacklist);
        let (fsync_every, snapshot_every) = (daemon.fsync_every, daemon.snapshot_every);
        let offload = offload.clone();
        Some(
            thread::Builder::new()
                .name("store".into())
                .spawn(move || {
                    let (store, _lock) = match store {
                        Some((s, l)) => (Some(s), Some(l)),
                        None => (None, None),
                    };
                    changes_loop(
                        store,
                        offload,
                        rx,
                        &shared,
                        &blacklist,
                        fsync_every,
                        snapshot_every,
                    )
                })
                .map_err(|e| DaemonError::Start(format!("spawning the store: {e}")))?,
        )
    } else {
        None
    };
    if let Some(listener) = control_listener {
        let shared = Arc::clone(&shared);
        let blacklist = Arc::clone(&blacklist);
        let hup = Arc::clone(&hup);
        thread::Builder::new()
            .name("control".into())
            .spawn(move || control_loop(listener, shared, blacklist, hup))
            .map_err(|e| DaemonError::Start(format!("spawning the control thread: {e}")))?;
    }
    if let (Some(listener), Some(addr)) = (metrics_listener, &daemon.metrics) {
        let (shared, blacklist) = (Arc::clone(&shared), Arc::clone(&blacklist));
        thread::Builder::new()
            .name("metrics".into())
            .spawn(move || {
                for stream in listener.incoming() {
                    let Ok(stream) = stream else { continue };
                    let body = metrics_text(&shared, &blacklist);
                    if let Err(e) = crate::metrics::respond(stream, &body) {
                        warn!("metrics connection: {e}");
                    }
                }
            })
            .map_err(|e| DaemonError::Start(format!("spawning the metrics thread: {e}")))?;
        info!(addr = %addr, "metrics served");
    }
    let mut handles = Vec::new();
    for (i, queue) in queues.into_iter().enumerate() {
        let shared = Arc::clone(&shared);
        let blacklist = Arc::clone(&blacklist);
        let marks = daemon.marks;
        let sock_destroy = daemon.sock_destroy;
        let handle = thread::Builder::new()
            .name(format!("queue-{}", queue.num()))
            .spawn(move || worker(i, queue, &shared, blacklist, marks, sock_destroy))
            .map_err(|e| DaemonError::Start(format!("spawning a worker: {e}")))?;
        handles.push(handle);
    }

    let mut last_summary = std::time::Instant::now();
    let mut last_expiry = std::time::Instant::now();
    let mut failure = None;
    while !term.load(Relaxed) {
        thread::sleep(StdDuration::from_millis(100));
        if hup.swap(false, Relaxed) {
            match reload() {
                Ok(new)
                    if rule_needs(&new)
                        != (
                            rules_cfg.bypass,
                            rules_cfg.replies,
                            rules_cfg.skip_pure_acks,
                        )
                        || ports_of(&new) != rules_cfg.ports =>
                {
                    warn!(
                        "reload refused: the new rules need other kernel rules (ports, or stream/smtp mode's bypass and replies); restart to change them"
                    )
                }
                Ok(new) => match apply_lists(&blacklist, &new) {
                    Ok(changed) => {
                        let n = new.rules.len();
                        *lock(&shared.config) = new;
                        shared.generation.fetch_add(1, Relaxed);
                        info!(
                            rules = n,
                            lists = %if changed.is_empty() { "unchanged".to_string() } else { changed.join(", ") },
                            "reloaded the rules; bans kept"
                        );
                    }
                    Err(e) => warn!("reload refused, keeping the old rules and lists: {e}"),
                },
                Err(e) => warn!("reload failed, keeping the old rules: {e}"),
            }
        }
        if last_expiry.elapsed() >= StdDuration::from_secs(10) {
            last_expiry = std::time::Instant::now();
            blacklist.expire(now());
        }
        if last_summary.elapsed() >= daemon.summary_every {
            last_summary = std::time::Instant::now();
            info!("{}", summary(&shared, &blacklist));
        }
        if handles.iter().any(|h| h.is_finished()) {
            failure = Some("a worker stopped".to_string());
            break;
        }
    }
    shared.stop.store(true, Relaxed);
    for h in handles {
        match h.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => failure = Some(e.to_string()),
            Err(_) => failure = Some("a worker panicked".into()),
        }
    }
    info!("{}", summary(&shared, &blacklist));
    shared.store_stop.store(true, Relaxed);
    if let Some(t) = store_thread {
        match t.join() {
            Ok(Ok(n)) => info!(bans = n, "state saved"),
            Ok(Err(e)) => {
                error!("saving the state: {e}");
                failure.get_or_insert(format!("saving the state: {e}"));
            }
            Err(_) => {
                failure.get_or_insert("the store thread panicked".into());
            }
        }
    }
    drop(socket_guard);
    if let Some(cfg) = rules_guard.0.take() {
        match firewall::remove(&cfg) {
            Ok(()) => info!("rules removed"),
            Err(e) => error!("removing rules: {e}"),
        }
    }
    if let Some(o) = offload.as_ref().filter(|_| daemon.install_rules) {
        o.destroy();
    }
    drop(rules_lock);
    drop(pidfile);
    match failure {
        Some(f) => Err(DaemonError::Failed(f)),
        None => Ok(()),
    }
}

/// Locks the state directory (one daemon per directory) and loads its bans.
fn open_store(
    dir: &std::path::Path,
    blacklist: &Blacklist,
) -> Result<(Store, std::fs::File), DaemonError> {
    let start = std::time::Instant::now();
    crate::store::create_dir(dir)
        .map_err(|e| DaemonError::Start(format!("state directory {}: {e}", dir.display())))?;
    let lock_path = dir.join("lock");
    use std::os::unix::fs::OpenOptionsExt;
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(&lock_path)
        .map_err(|e| DaemonError::Start(format!("{}: {e}", lock_path.display())))?;
    if let Err(e) = lock.try_lock() {
        return Err(DaemonError::Start(match e {
            std::fs::TryLockError::WouldBlock => format!(
                "state directory {} is in use by another stringban",
                dir.display()
            ),
            std::fs::TryLockError::Error(e) => format!("{}: {e}", lock_path.display()),
        }));
    }
    let (store, loaded) = Store::open(dir, blacklist, now())
        .map_err(|e| DaemonError::Start(format!("state directory {}: {e}", dir.display())))?;
    for p in &loaded.problems {
        warn!("state: {p}");
    }
    info!(
        restored = loaded.restored,
        expired = loaded.expired,
        journal_records = loaded.journal_records,
        seconds = (start.elapsed().as_secs_f64() * 1000.0).round() / 1000.0,
        dir = %dir.display(),
        "bans restored"
    );
    Ok((store, lock))
}

/// The changes thread: appends every change to the journal (if there is a state directory),
/// fsyncs it every `fsync_every`, folds it into a new snapshot every `snapshot_every` and once
/// more at exit, and rides out disk faults ([`crate::persist`]); mirrors the changes into the
/// offload sets in one `ipset restore` per interval and reconciles the sets every 10 s.
/// Returns the number of bans in the last snapshot.
fn changes_loop(
    store: Option<Store>,
    offload: Option<Offload>,
    rx: std::sync::mpsc::Receiver<crate::blacklist::Change>,
    shared: &Shared,
    blacklist: &Blacklist,
    fsync_every: StdDuration,
    snapshot_every: StdDuration,
) -> io::Result<u64> {
    use std::sync::mpsc::RecvTimeoutError;
    let mut disk = store.map(|s| Disk::new(s, &shared.store_health));
    let mut last_sync = std::time::Instant::now();
    let mut last_snapshot = std::time::Instant::now();
    let mut last_check = std::time::Instant::now();
    let mut script = String::new();
    let mut resync = false;
    if let Some(disk) = disk.as_mut().filter(|d| d.needs_compaction()) {
        // Fold what the start replayed into a fresh snapshot, now that the queues run.
        disk.snapshot(blacklist, now());
    }
    let take = |c: crate::blacklist::Change,
                disk: &mut Option<Disk>,
                script: &mut String,
                resync: &mut bool| {
        if let Some(disk) = disk.as_mut() {
            disk.append(&c);
        }
        if let Some(o) = &offload {
            *resync |= matches!(c, crate::blacklist::Change::Flush(_));
            script.push_str(&o.change_lines(&c, now()));
        }
    };
    loop {
        let mut wait = fsync_every.saturating_sub(last_sync.elapsed());
        if let Some(retry) = disk.as_mut().and_then(|d| d.retry(blacklist, now())) {
            wait = wait.min(retry);
        }
        match rx.recv_timeout(wait.max(StdDuration::from_millis(1))) {
            Ok(c) => {
                take(c, &mut disk, &mut script, &mut resync);
                for c in rx.try_iter() {
                    take(c, &mut disk, &mut script, &mut resync);
                }
            }
            Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => {}
        }
        let stopping = shared.store_stop.load(Relaxed);
        if stopping {
            for c in rx.try_iter() {
                take(c, &mut disk, &mut script, &mut resync);
            }
        }
        if last_sync.elapsed() >= fsync_every || stopping {
            if let Some(disk) = disk.as_mut() {
                disk.sync();
            }
            if let Some(o) = &offload {
                if last_check.elapsed() >= StdDuration::from_secs(10) {
                    last_check = std::time::Instant::now();
                    resync |= offload_lost(o, blacklist);
                }
                let done = if resync {
                    o.resync(blacklist, now())
                        .map(|n| info!(bans = n, "offload sets resynced"))
                } else {
                    crate::io::offload::restore(&script)
                };
                match done {
                    Ok(()) => {}
                    Err(e) => {
                        warn!("offload: {e}; resyncing");
                        resync = true;
                        script.clear();
                        continue;
                    }
                }
                script.clear();
                resync = false;
            }
            last_sync = std::time::Instant::now();
        }
        if stopping {
            return match disk.as_mut() {
                Some(disk) => disk.finish(blacklist, now()),
                None => Ok(0),
            };
        }
        if last_snapshot.elapsed() >= snapshot_every
            && let Some(disk) = disk.as_mut()
            && !disk.failing()
        {
            disk.snapshot(blacklist, now());
            last_snapshot = std::time::Instant::now();
        }
    }
}

/// Has an offload set disappeared, or lost most of its entries (flushed by hand)?
fn offload_lost(o: &Offload, blacklist: &Blacklist) -> bool {
    let (mut v4, mut v6) = (0u64, 0u64);
    let t = now();
    for l in blacklist.lists() {
        for b in l.bans(t) {
            match b.key {
                crate::blacklist::Key::V4 { .. } => v4 += 1,
                crate::blacklist::Key::V6 { .. } => v6 += 1,
            }
        }
    }
    let lost = |set: &str, want: u64| match o.entries(set) {
        None => {
            warn!(set, "offload set missing: re-creating it");
            true
        }
        Some(have) if have < want / 2 => {
            warn!(set, have, want, "offload set lost its entries: resyncing");
            true
        }
        Some(_) => false,
    };
    lost(&o.v4, v4) | lost(&o.v6, v6)
}

/// Accepts control connections and hands them to a fixed pool of [`crate::control::WORKERS`]
/// threads through a queue of [`crate::control::WAITING`]; a connection beyond that is answered
/// with an error and closed (counted, logged), and one idle for
/// [`crate::control::IDLE_TIMEOUT`] is closed: clients cannot exhaust threads or descriptors.
fn control_loop(
    listener: std::os::unix::net::UnixListener,
    shared: Arc<Shared>,
    blacklist: Arc<Blacklist>,
    hup: Arc<AtomicBool>,
) {
    use crate::control::{IDLE_TIMEOUT, WAITING, WORKERS};
    let (tx, rx) = std::sync::mpsc::sync_channel::<std::os::unix::net::UnixStream>(WAITING);
    let rx = Arc::new(Mutex::new(rx));
    for i in 0..WORKERS {
        let (shared, blacklist, hup, rx) = (
            Arc::clone(&shared),
            Arc::clone(&blacklist),
            Arc::clone(&hup),
            Arc::clone(&rx),
        );
        let spawned = thread::Builder::new()
            .name(format!("control-{i}"))
            .spawn(move || {
                let host = crate::control::Host {
                    stats: &|| stats_json(&shared, &blacklist),
                    reset: &|ip| reset_sessions(&shared, ip),
                };
                let on_effect = |e: crate::control::Effect| {
                    if e == crate::control::Effect::Reload {
                        hup.store(true, Relaxed);
                    }
                };
                loop {
                    let next = lock(&rx).recv();
                    let Ok(stream) = next else { return };
                    if let Err(e) =
                        crate::control::serve(stream, &blacklist, &now, &host, &on_effect)
                    {
                        warn!("control connection: {e}");
                    }
                }
            });
        if let Err(e) = spawned {
            error!("control worker {i}: {e}");
        }
    }
    let mut last_warn: Option<std::time::Instant> = None;
    let mut warn_once_a_second = |what: String| {
        if last_warn.is_none_or(|t| t.elapsed() >= StdDuration::from_secs(1)) {
            warn!("{what}");
            last_warn = Some(std::time::Instant::now());
        }
    };
    for stream in listener.incoming() {
        let stream = match stream {
            Ok(s) => s,
            Err(e) => {
                // Out of descriptors, say: count it, and do not spin.
                shared.control_refused.fetch_add(1, Relaxed);
                warn_once_a_second(format!("control socket: accept: {e}"));
                thread::sleep(StdDuration::from_millis(50));
                continue;
            }
        };
        let _ = stream.set_read_timeout(Some(IDLE_TIMEOUT));
        let _ = stream.set_write_timeout(Some(IDLE_TIMEOUT));
        if let Err(std::sync::mpsc::TrySendError::Full(mut s)) = tx.try_send(stream) {
            shared.control_refused.fetch_add(1, Relaxed);
            warn_once_a_second(format!(
                "control socket: {} connections open or waiting: refusing more",
                WORKERS + WAITING
            ));
            let _ = writeln!(
                s,
                "{}",
                serde_json::json!({"ok": false, "error": "too many control connections; try again"})
            );
        }
    }
}

/// A reload's lists applied to the live blacklist: every list checked first (same names in the
/// same order, same prefixes), then TTL, refresh and capacity changed in place. Returns what
/// changed; an error changes nothing.
fn apply_lists(blacklist: &Blacklist, new: &Config) -> Result<Vec<String>, String> {
    let lists = blacklist.lists();
    if !new
        .lists
        .iter()
        .map(|l| l.name.as_str())
        .eq(lists.iter().map(|l| l.name()))
    {
        return Err("the lists changed (names or order); restart to change lists".into());
    }
    for (list, cfg) in lists.iter().zip(&new.lists) {
        list.check_update(cfg)?;
    }
    let mut changed = Vec::new();
    for (list, cfg) in lists.iter().zip(&new.lists) {
        for c in list.update(cfg, now())? {
            changed.push(format!("{}: {c}", list.name()));
        }
    }
    Ok(changed)
}

/// `add ADDR --reset`: destroys every local session with `ip` on a protected port (the MTA sees
/// `ECONNABORTED`, the client a RST), for sessions that no longer reach the queue (bypassed
/// after STARTTLS) or are idle. Logged, counted, and answered.
fn reset_sessions(shared: &Shared, ip: std::net::IpAddr) -> serde_json::Value {
    use serde_json::json;
    let ports = lock(&shared.config).engine.ports.clone();
    let outcome = SockDiag::open().and_then(|mut diag| {
        diag.destroy_sessions_with(ip, |p| ports.is_any() || ports.contains(p))
    });
    let error = match outcome {
        Ok(Ok(n)) => {
            shared.reset_on_request.fetch_add(u64::from(n), Relaxed);
            info!(addr = %ip, sessions = n, "banned on request; its sessions reset");
            return json!({"sessions": n});
        }
        Ok(Err(_)) => "the kernel cannot destroy sockets (CONFIG_INET_DIAG_DESTROY off, or no CAP_NET_ADMIN): banned, but its open sessions were not reset".to_string(),
        Err(e) => format!("sock_diag: {e}: banned, but its open sessions were not reset"),
    };
    shared.reset_failures.fetch_add(1, Relaxed);
    warn!(addr = %ip, "reset on request failed: {error}");
    json!({"sessions": 0, "error": error})
}

/// The Prometheus exposition of every counter.
fn metrics_text(shared: &Shared, blacklist: &Blacklist) -> String {
    with_counters(shared, blacklist, crate::metrics::render)
}

/// Every counter as JSON (`stringban stats`).
fn stats_json(shared: &Shared, blacklist: &Blacklist) -> serde_json::Value {
    with_counters(shared, blacklist, |s| s.json())
}

fn ports_of(config: &Config) -> Vec<u16> {
    config.engine.ports.singles()
}

/// What the rules need of the kernel rules: the BYPASS connmark rules (a flow mode that may
/// bypass), the server's replies queued too (smtp mode), and whether pure ACKs may skip the
/// queue (every rule follows flows).
pub fn rule_needs(config: &Config) -> (bool, bool, bool) {
    use crate::rule::Mode;
    let flow = config.rules.iter().any(|r| r.mode.is_flow());
    let smtp = config.rules.iter().any(|r| r.mode == Mode::Smtp);
    // Imported iptables rules see every packet, as the kernel's do.
    let all_flow = config.iptables.is_none()
        && !config.rules.is_empty()
        && config.rules.iter().all(|r| r.mode.is_flow());
    (flow && config.engine.bypass, smtp, all_flow)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Every worker's counters, summed.
fn total_stats(shared: &Shared) -> WorkerStats {
    let mut total = WorkerStats::default();
    for s in &shared.stats {
        let s = lock(s);
        total.engine.merge(&s.engine);
        total.malformed += s.malformed;
        total.destroyed += s.destroyed;
        total.reset_by_mark += s.reset_by_mark;
        total.crafted += s.crafted;
        total.gso += s.gso;
        total.csum_not_ready += s.csum_not_ready;
        total.wakeups += s.wakeups;
        total.latency.merge(&s.latency);
    }
    total
}

/// The log line of every counter.
fn summary(shared: &Shared, blacklist: &Blacklist) -> String {
    with_counters(shared, blacklist, |s| s.line())
}

/// One snapshot of every counter — the workers' summed, the shared ones, the lists, the kernel's
/// queue counters, the store's health — handed to `f` (the log line, `stats`, the metrics: one
/// source, three renderings).
fn with_counters<R>(
    shared: &Shared,
    blacklist: &Blacklist,
    f: impl FnOnce(&crate::metrics::Snapshot<'_>) -> R,
) -> R {
    let total = total_stats(shared);
    let names: Vec<String> = lock(&shared.config)
        .rules
        .iter()
        .map(|r| r.name.clone())
        .collect();
    let queues = kernel_counters();
    f(&crate::metrics::Snapshot {
        engine: &total.engine,
        rule_names: &names,
        blacklist,
        queues: &queues,
        latency: &total.latency,
        malformed: total.malformed,
        wakeups: total.wakeups,
        sockets_destroyed: total.destroyed,
        reset_by_mark: total.reset_by_mark,
        crafted: total.crafted,
        gso: total.gso,
        csum_not_ready: total.csum_not_ready,
        reset_on_request: shared.reset_on_request.load(Relaxed),
        reset_failures: shared.reset_failures.load(Relaxed),
        control_refused: shared.control_refused.load(Relaxed),
        store: shared.store_health.status(),
    })
}

fn worker(
    index: usize,
    mut queue: Queue,
    shared: &Shared,
    blacklist: Arc<Blacklist>,
    marks: Marks,
    sock_destroy: bool,
) -> Result<(), QueueError> {
    let mut generation = shared.generation.load(Relaxed);
    let mut engine = Engine::with_blacklist(&lock(&shared.config), Arc::clone(&blacklist));
    share_recent(shared, &mut engine);
    let mut carried = WorkerStats::default();
    let mut out = Builder::new();
    let mut diag = if sock_destroy {
        SockDiag::open().ok()
    } else {
        None
    };
    let injector = match RstInjector::open(marks.inject()) {
        Ok(i) => Some(i),
        Err(e) => {
            warn!("no raw socket for crafted RSTs toward local sockets: {e}");
            None
        }
    };
    let num = queue.num();
    let mut published = std::time::Instant::now();
    let mut sampled = 0u32;
    while !shared.stop.load(Relaxed) {
        let g = shared.generation.load(Relaxed);
        if g != generation {
            generation = g;
            carried.engine.merge(engine.stats());
            engine = Engine::with_blacklist(&lock(&shared.config), Arc::clone(&blacklist));
            share_recent(shared, &mut engine);
        }
        let n = queue.recv()?;
        if n == 0 {
            publish(shared, index, &carried, &engine);
            continue;
        }
        carried.wakeups += 1;
        out.clear();
        let now = now();
        let mut runs = Runs::new(num);
        // A verdict that sets one of our marks (keeping the packet's other mark bits) and
        // repeats the packet, so that the chain acts on the mark.
        let repeat_marked = |out: &mut Builder, runs: &mut Runs, id: u32, old: u32, mark: u32| {
            runs.flush(out);
            out.verdict(num, id, codec::NF_REPEAT, Some(old & !marks.mask | mark));
        };
        for i in 0..n {
            for msg in queue.datagram(i) {
                let msg = match msg {
                    Ok(m) => m,
                    Err(_) => {
                        carried.malformed += 1;
                        break;
                    }
                };
                if msg.kind != (codec::SUBSYS_QUEUE << 8 | codec::MSG_PACKET) {
                    continue;
                }
                let q = match codec::packet(&msg) {
                    Ok(q) => q,
                    Err(_) => {
                        carried.malformed += 1;
                        continue;
                    }
                };
                carried.gso += u64::from(q.skb_info & codec::SKB_GSO != 0);
                carried.csum_not_ready += u64::from(q.skb_info & codec::SKB_CSUMNOTREADY != 0);
                sampled = sampled.wrapping_add(1);
                let decision = if sampled.is_multiple_of(16) {
                    let t = std::time::Instant::now();
                    let d = engine.decide(q.payload, now);
                    carried
                        .latency
                        .observe(u64::try_from(t.elapsed().as_nanos()).unwrap_or(u64::MAX));
                    d
                } else {
                    engine.decide(q.payload, now)
                };
                match decision.verdict {
                    Verdict::Accept => runs.push(&mut out, codec::NF_ACCEPT, q.id),
                    Verdict::Drop => runs.push(&mut out, codec::NF_DROP, q.id),
                    Verdict::Bypass => {
                        repeat_marked(&mut out, &mut runs, q.id, q.mark, marks.bypass)
                    }
                    Verdict::Reset => match destroy_local(diag.as_mut(), q.payload) {
                        Destroyed::Yes => {
                            carried.destroyed += 1;
                            runs.push(&mut out, codec::NF_DROP, q.id);
                        }
                        Destroyed::NoSocket | Destroyed::Unsupported => {
                            carried.reset_by_mark += 1;
                            repeat_marked(&mut out, &mut runs, q.id, q.mark, marks.reset);
                            carried.crafted += u64::from(reset_local(injector.as_ref(), q.payload));
                        }
                    },
                }
            }
        }
        runs.flush(&mut out);
        queue.send(&out)?;
        if published.elapsed() >= StdDuration::from_millis(500) {
            published = std::time::Instant::now();
            publish(shared, index, &carried, &engine);
        }
        if diag.is_none() && sock_destroy {
            diag = SockDiag::open().ok();
        }
    }
    publish(shared, index, &carried, &engine);
    Ok(())
}

/// Gives the engine the daemon's recent tables (the first engine's become them).
fn share_recent(shared: &Shared, engine: &mut Engine) {
    let mut slot = lock(&shared.recent);
    match slot.as_ref() {
        Some(tables) => engine.share_recent_tables(Arc::clone(tables)),
        None => *slot = engine.recent_tables(),
    }
}

/// Verdicts as runs: consecutive packets (in id order) with the same plain verdict become one
/// `NFQNL_MSG_VERDICT_BATCH`, which covers every queued id up to the run's last. A marked verdict
/// flushes the open run first, so no batch ever covers a packet judged on its own.
struct Runs {
    queue: u16,
    open: Option<(u32, u32)>,
}

impl Runs {
    fn new(queue: u16) -> Runs {
        Runs { queue, open: None }
    }

    fn push(&mut self, out: &mut Builder, verdict: u32, id: u32) {
        match &mut self.open {
            Some((v, last)) if *v == verdict => *last = id,
            _ => {
                self.flush(out);
                self.open = Some((verdict, id));
            }
        }
    }

    fn flush(&mut self, out: &mut Builder) {
        if let Some((verdict, last)) = self.open.take() {
            out.verdict_batch(self.queue, last, verdict);
        }
    }
}

fn publish(shared: &Shared, index: usize, carried: &WorkerStats, engine: &Engine) {
    let mut s = carried.clone();
    s.engine.merge(engine.stats());
    *lock(&shared.stats[index]) = s;
}

/// Sends the local side of the packet's flow (remote → local) a RST as if from the remote.
fn reset_local(injector: Option<&RstInjector>, packet: &[u8]) -> bool {
    let Some(injector) = injector else {
        return false;
    };
    let Ok(p) = parse::packet(packet) else {
        return false;
    };
    let Transport::Tcp(t) = p.transport else {
        return false;
    };
    // A RST is never answered with a RST (as the kernel's REJECT: `nf_send_reset`).
    if t.flags & crate::parse::tcp_flags::RST != 0 {
        return false;
    }
    injector.send(p.src, t.sport, p.dst, t.dport, t.seq).is_ok()
}

/// Destroys the local socket the packet (remote → local) belongs to.
fn destroy_local(diag: Option<&mut SockDiag>, packet: &[u8]) -> Destroyed {
    let Some(diag) = diag else {
        return Destroyed::Unsupported;
    };
    let Ok(p) = parse::packet(packet) else {
        return Destroyed::NoSocket;
    };
    let Transport::Tcp(t) = p.transport else {
        return Destroyed::NoSocket;
    };
    let (local, remote): (IpAddr, IpAddr) = (p.dst, p.src);
    diag.destroy(local, t.dport, remote, t.sport)
        .unwrap_or(Destroyed::Unsupported)
}

/// Sends `state` to systemd when started with `Type=notify` (`$NOTIFY_SOCKET`).
pub fn notify_systemd(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let Ok(sock) = std::os::unix::net::UnixDatagram::unbound() else {
        return;
    };
    let bytes = path.as_encoded_bytes();
    let sent = if let Some(name) = bytes.strip_prefix(b"@") {
        use std::os::linux::net::SocketAddrExt;
        std::os::unix::net::SocketAddr::from_abstract_name(name)
            .and_then(|a| sock.send_to_addr(state.as_bytes(), &a))
    } else {
        sock.send_to(state.as_bytes(), &path)
    };
    if let Err(e) = sent {
        warn!("notifying systemd: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::nfqueue::codec::{
        MSG_VERDICT, MSG_VERDICT_BATCH, NF_ACCEPT, NF_DROP, NF_REPEAT, SUBSYS_QUEUE,
    };

    /// (message type, verdict, id) of every verdict in `out`.
    fn verdicts(out: &Builder) -> Vec<(u16, u32, u32)> {
        codec::messages(out.as_bytes())
            .map(|m| {
                let m = m.unwrap();
                let (_, hdr) = codec::attributes(&m.payload[4..]).next().unwrap().unwrap();
                let v = u32::from_be_bytes(hdr[..4].try_into().unwrap());
                let id = u32::from_be_bytes(hdr[4..8].try_into().unwrap());
                (m.kind & 0xff, v, id)
            })
            .collect()
    }

    #[test]
    fn runs_become_batches_and_marked_verdicts_split_them() {
        let mut out = Builder::new();
        let mut runs = Runs::new(0);
        for id in 1..=3 {
            runs.push(&mut out, NF_DROP, id);
        }
        runs.push(&mut out, NF_ACCEPT, 4);
        runs.push(&mut out, NF_ACCEPT, 5);
        runs.flush(&mut out);
        out.verdict(0, 6, NF_REPEAT, Some(0x20000));
        runs.push(&mut out, NF_ACCEPT, 7);
        runs.flush(&mut out);
        runs.flush(&mut out);
        assert_eq!(
            verdicts(&out),
            vec![
                (MSG_VERDICT_BATCH, NF_DROP, 3),
                (MSG_VERDICT_BATCH, NF_ACCEPT, 5),
                (MSG_VERDICT, NF_REPEAT, 6),
                (MSG_VERDICT_BATCH, NF_ACCEPT, 7),
            ]
        );
        let _ = SUBSYS_QUEUE;
    }
}
