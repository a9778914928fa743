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
use crate::engine::{Engine, Hook, Stats, Verdict};
use crate::parse::{self, Transport};
use crate::persist::{Disk, Health};
use crate::store::Store;
use crate::sys::firewall::{self, Marks, RulesConfig};
use crate::sys::nfqueue::codec::{self, Builder};
use crate::sys::nfqueue::{Queue, QueueConfig, QueueError, kernel_counters};
use crate::sys::offload::Offload;
use crate::sys::rst::RstInjector;
use crate::sys::sockdiag::{Destroyed, SockDiag};
use crate::time::Instant;

mod banlog;
pub use banlog::human_duration;
mod changes;
pub mod client;
pub mod control;
mod counters;
mod guards;
pub mod metrics;
pub mod persist;
pub mod printable;
mod serve;
pub mod share;
pub mod store;
mod worker;

use changes::changes_loop;
use counters::{metrics_text, stats_json, summary};
use guards::{PidFile, RulesGuard, RulesLock, SocketGuard};
use serve::{apply_lists, control_loop};
pub use worker::WorkerStats;
use worker::worker;

/// Everything `run` needs besides the rule configuration.
#[derive(Clone, Debug)]
pub struct DaemonConfig {
    pub queues: (u16, u16),
    pub queue: QueueConfig,
    pub install_rules: bool,
    pub fail_open: bool,
    /// Who writes the rules; None: auto ([`firewall::choose`]).
    pub firewall: Option<firewall::Backend>,
    /// Drop the clients' segments conntrack finds INVALID before the queue (the kernel's
    /// window check; [`firewall::RulesConfig::window_check`]): where rules are installed for
    /// `INPUT` alone and the kernel has the conntrack match. Off: `--no-window-check`.
    pub window_check: bool,
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
    /// Mirror bans into ipsets dropped before the queue: Some(true) demanded (`--offload`: a
    /// start without ipset fails), Some(false) refused (`--no-offload`), None wherever the
    /// kernel and `ipset` have it (the default; needs `install_rules` and the iptables backend).
    pub offload: Option<bool>,
    /// Share bans with a fleet through Redis; None: this host alone.
    pub share: Option<share::ShareConfig>,
    /// Where traffic is queued (`INPUT`, and/or `FORWARD` on a gateway).
    pub hooks: Vec<crate::verdict::Hook>,
    /// `FORWARD`: the protected networks behind this host (empty: every destination).
    pub protect: Vec<crate::allow::Cidr>,
}

/// Reads the configuration again (SIGHUP).
pub type Reload = Box<dyn Fn() -> Result<Config, ReloadError> + Send>;

/// The wall clock as an engine [`Instant`].
pub fn now() -> Instant {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    Instant::from_micros(u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
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
    /// Control commands refused for want of privilege (a control-group member's `flush`).
    control_denied: AtomicU64,
    /// Metrics connections closed without an answer: too many at once, a request head over
    /// 16 KiB or not whole within 2 s.
    metrics_refused: AtomicU64,
    /// Segments the window check dropped before the queue (the kernel rules' counter, read
    /// every 2 s); None: no window check.
    window_dropped: Option<AtomicU64>,
    store_health: Health,
    /// The rate limit of the ban/unban log lines.
    banlog: Mutex<banlog::BanLog>,
    /// Reloads done and the last one's outcome; `reloaded` is signalled after each.
    reloads: Mutex<(u64, Result<String, String>)>,
    reloaded: std::sync::Condvar,
    reload_failures: AtomicU64,
    /// What `status` says about the daemon itself (queues, rules, offload, …).
    facts: serde_json::Value,
    started: std::time::Instant,
    /// The fleet's state, when bans are shared.
    share: Option<Arc<share::ShareState>>,
    /// One memory budget for the flow state of every worker (its limit follows reloads).
    flow_budget: Arc<crate::flow::FlowBudget>,
}

/// Why the daemon could not start (exit code 2 for the caller) or failed (1): what it was
/// doing, and the error underneath when there is one.
#[derive(Debug)]
pub struct DaemonError {
    /// A start that failed (nothing left behind), as opposed to a failure while running.
    pub at_start: bool,
    what: String,
    source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl DaemonError {
    /// A start that failed: `what` says what and why.
    pub fn start(what: impl std::fmt::Display) -> DaemonError {
        DaemonError {
            at_start: true,
            what: what.to_string(),
            source: None,
        }
    }

    /// A start that failed doing `what`, because of `source`.
    pub fn start_from(
        what: impl std::fmt::Display,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> DaemonError {
        DaemonError {
            at_start: true,
            what: what.to_string(),
            source: Some(Box::new(source)),
        }
    }

    /// A failure while running.
    pub fn failed(what: impl std::fmt::Display) -> DaemonError {
        DaemonError {
            at_start: false,
            what: what.to_string(),
            source: None,
        }
    }
}

impl std::fmt::Display for DaemonError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.source {
            Some(e) => write!(f, "{}: {e}", self.what),
            None => f.write_str(&self.what),
        }
    }
}

impl std::error::Error for DaemonError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

/// What re-reading the configuration can fail with (the file, or the configuration in it).
pub type ReloadError = Box<dyn std::error::Error + Send + Sync>;

/// Runs until SIGTERM or SIGINT. Order at start: lock the pidfile, bind every queue, install
/// the rules, write the pid, tell systemd READY. At exit: finish in-flight batches, unbind,
/// remove the rules it installed.
pub fn run(config: Config, daemon: DaemonConfig, reload: Reload) -> Result<(), DaemonError> {
    let mut pidfile = match &daemon.pidfile {
        Some(p) => Some(PidFile::lock(p.clone()).map_err(DaemonError::start)?),
        None => None,
    };
    let term = Arc::new(AtomicBool::new(false));
    let hup = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(sig, Arc::clone(&term))
            .map_err(|e| DaemonError::start(format!("signal handler: {e}")))?;
    }
    signal_hook::flag::register(signal_hook::consts::SIGHUP, Arc::clone(&hup))
        .map_err(|e| DaemonError::start(format!("signal handler: {e}")))?;

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
    // The baseline of the sweeps that log each ban's end: bans that ended before this start
    // (kept as records of their offenders) are not logged again.
    blacklist.expire(now());
    let lifted = serve::lift_allowlisted(&blacklist, &config.allow.list);
    if lifted > 0 {
        info!(lifted, "bans of allowlisted sources lifted at start");
    }
    // The fleet: a wrong password, a missing permission or a refused certificate stops the
    // start here, before anything is bound or installed; Redis down does not.
    let share = match &daemon.share {
        Some(cfg) => {
            let mut cfg = cfg.clone();
            if !cfg.node_given {
                cfg.node = share::node_id(daemon.state_dir.as_deref(), &cfg.node)
                    .map_err(DaemonError::start)?;
                if daemon.state_dir.is_none() {
                    warn!(node = %cfg.node, "share: no state directory: this node's id is new at every start (give --share-node)");
                }
            }
            let cfg = &cfg;
            let client = share::client(cfg).map_err(DaemonError::start)?;
            let note = share::check_start(cfg, &client).map_err(DaemonError::start)?;
            info!(fleet = %cfg.fleet, node = %cfg.node, "{note}");
            match &cfg.key {
                Some(k) => info!(
                    key = %k.ids()[0],
                    accepted = k.len(),
                    "share: entries signed with the fleet key; only signed ones are applied"
                ),
                None => warn!(
                    "share: no fleet key ([share] key_file, --share-key): entries are neither signed nor checked, so anything that can write to this Redis can ban, lift and flush here"
                ),
            }
            let state = Arc::new(share::ShareState::new(
                cfg.clone(),
                daemon.state_dir.as_deref(),
            ));
            Some((state, client))
        }
        None => None,
    };

    let mut queues = Vec::new();
    for num in daemon.queues.0..=daemon.queues.1 {
        let q = Queue::open(QueueConfig {
            num,
            ..daemon.queue.clone()
        })
        .map_err(|e| DaemonError::start(e.to_string()))?;
        queues.push(q);
    }
    // The rules lock (one daemon's rules per network namespace) is taken before the offload
    // sets are touched, so a second daemon never flushes the first one's sets. Declared
    // before the guards, it is released last, after a failed start's guards have removed the
    // rules and then the sets.
    let rules_lock: Option<RulesLock> = if daemon.install_rules {
        Some(RulesLock::take().map_err(DaemonError::start)?)
    } else {
        None
    };
    // Offload is decided before the rules are chosen, and the backend after: an automatic
    // offload is only taken where the daemon installs iptables rules.
    let auto_backend_ok = daemon.install_rules
        && matches!(daemon.firewall, None | Some(firewall::Backend::Iptables))
        && firewall::choose(daemon.firewall).is_ok_and(|b| b == firewall::Backend::Iptables);
    let (offload, offload_note) = match daemon.offload {
        Some(false) => (None, "off (--no-offload)".to_string()),
        None if !auto_backend_ok => (
            None,
            "off (the daemon does not install iptables rules; --offload with them)".to_string(),
        ),
        demand => match start_offload(&config, &blacklist) {
            Ok(o) => (
                Some(o),
                "on: the kernel drops banned sources, also while the queue fails open".to_string(),
            ),
            Err(e) if demand.is_none() => {
                warn!(
                    "offload: {e}; banned sources are dropped by the daemon only (a queue that fails open lets them through)"
                );
                (None, format!("off ({e})"))
            }
            Err(e) => return Err(DaemonError::start(format!("offload: {e}"))),
        },
    };
    // Destroys the sets when `run` returns, after the rules that use them are gone.
    let _offload_guard = guards::OffloadGuard(offload.clone().filter(|_| daemon.install_rules));
    let mut rules_cfg = RulesConfig {
        fail_open: daemon.fail_open,
        marks: daemon.marks,
        offload_sets: offload.as_ref().map(|o| (o.v4.clone(), o.v6.clone())),
        hooks: daemon.hooks.clone(),
        protect: daemon.protect.clone(),
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
                DaemonError::start(format!("control socket {}: {e}", path.display()))
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
                .map_err(|e| DaemonError::start(format!("metrics listener {addr}: {e}")))?,
        ),
        None => None,
    };
    let mut rules_guard = RulesGuard(None);
    let mut window_note = "off (the daemon does not install the rules)".to_string();
    if daemon.install_rules {
        rules_cfg.backend = firewall::choose(daemon.firewall)
            .map_err(|e| DaemonError::start(format!("installing rules: {e}")))?;
        if offload.is_some() && rules_cfg.backend == firewall::Backend::Nft {
            return Err(DaemonError::start(
                "--offload mirrors bans into ipsets, which the iptables backend matches; use --firewall iptables",
            ));
        }
        (rules_cfg.window_check, window_note) = window_check(&daemon, &rules_cfg);
        let tools = firewall::install(&rules_cfg)
            .map_err(|e| DaemonError::start(format!("installing rules: {e}")))?;
        rules_guard.0 = Some(rules_cfg.clone());
        info!(tools = %tools.join(","), chain = %rules_cfg.chain, "rules installed");
    }
    if let Some(p) = pidfile.as_mut() {
        p.write_pid()
            .map_err(|e| DaemonError::start(format!("writing the pidfile: {e}")))?;
    }
    notify_systemd("READY=1");
    info!(queues = ?daemon.queues, rules = config.rules.len(), "stringban running");

    let flow_budget = Arc::new(config.engine.flow_budget());
    let shared = Arc::new(Shared {
        flow_budget,
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
        control_denied: AtomicU64::new(0),
        metrics_refused: AtomicU64::new(0),
        window_dropped: rules_cfg.window_check.then(|| AtomicU64::new(0)),
        store_health: Health::default(),
        banlog: Mutex::new(banlog::BanLog::new()),
        reloads: Mutex::new((0, Ok(String::new()))),
        reloaded: std::sync::Condvar::new(),
        reload_failures: AtomicU64::new(0),
        facts: serde_json::json!({
            "version": env!("CARGO_PKG_VERSION"),
            "pid": std::process::id(),
            "queues": [daemon.queues.0, daemon.queues.1],
            "rules_installed": daemon.install_rules,
            "firewall": if daemon.install_rules { format!("{:?}", rules_cfg.backend).to_lowercase() } else { "none (rules installed by hand)".into() },
            "chain": rules_cfg.chain,
            "hooks": rules_cfg.hooks.iter().map(|h| h.chain()).collect::<Vec<_>>(),
            "protect": rules_cfg.protect.iter().map(|c| c.to_string()).collect::<Vec<_>>(),
            "fail_open": daemon.fail_open,
            "offload": offload.as_ref().map(|o| serde_json::json!([o.v4, o.v6])),
            "offload_note": offload_note,
            "window_check": rules_cfg.window_check,
            "window_note": window_note,
            "state_dir": daemon.state_dir.as_ref().map(|d| d.display().to_string()),
            "control_socket": daemon.control_socket.as_ref().map(|d| d.display().to_string()),
            "metrics": daemon.metrics,
            "share": daemon.share.as_ref().map(|s| serde_json::json!({
                "url": crate::config::redact_url(&s.url),
                "fleet": s.fleet,
                "node": s.node,
                "lists": if s.lists.is_empty() { serde_json::json!("all") } else { serde_json::json!(s.lists) },
            })),
        }),
        started: std::time::Instant::now(),
        share: share.as_ref().map(|(s, _)| Arc::clone(s)),
    });
    // The fleet's publisher takes this host's changes from the changes thread.
    let (share_tx, share_out) = match &share {
        Some((state, client)) => {
            let (tx, rx) = std::sync::mpsc::channel();
            let (state, client) = (Arc::clone(state), client.clone());
            let (bl, sh) = (Arc::clone(&blacklist), Arc::clone(&shared));
            let since = share::republish_since(&state);
            let t = thread::Builder::new()
                .name("share-out".into())
                .spawn(move || {
                    share::publish_loop(&state, &client, rx, &bl, &|| rule_names(&sh), Some(since));
                })
                .map_err(|e| DaemonError::start(format!("spawning the share publisher: {e}")))?;
            (Some(tx), Some(t))
        }
        None => (None, None),
    };
    let share_stop = Arc::new(AtomicBool::new(false));
    let share_in = match &share {
        Some((state, client)) => {
            let (state, client) = (Arc::clone(state), client.clone());
            let (bl, sh, stop) = (
                Arc::clone(&blacklist),
                Arc::clone(&shared),
                Arc::clone(&share_stop),
            );
            Some(
                thread::Builder::new()
                    .name("share-in".into())
                    .spawn(move || {
                        let allowlist = || Arc::clone(&lock(&sh.config).allow.list);
                        let apply = share::Apply {
                            blacklist: &bl,
                            allowlist: &allowlist,
                            stop: &stop,
                        };
                        share::subscribe_loop(&state, &client, &apply);
                    })
                    .map_err(|e| DaemonError::start(format!("spawning the share reader: {e}")))?,
            )
        }
        None => None,
    };
    let store_thread = if store.is_some() || offload.is_some() || share_tx.is_some() {
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
                        share_tx,
                        &shared,
                        &blacklist,
                        (fsync_every, snapshot_every),
                    )
                })
                .map_err(|e| DaemonError::start(format!("spawning the store: {e}")))?,
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
            .map_err(|e| DaemonError::start(format!("spawning the control thread: {e}")))?;
    }
    if let (Some(listener), Some(addr)) = (metrics_listener, &daemon.metrics) {
        let (shared, blacklist) = (Arc::clone(&shared), Arc::clone(&blacklist));
        thread::Builder::new()
            .name("metrics".into())
            .spawn(move || serve::metrics_loop(listener, shared, blacklist))
            .map_err(|e| DaemonError::start(format!("spawning the metrics thread: {e}")))?;
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
            .map_err(|e| DaemonError::start(format!("spawning a worker: {e}")))?;
        handles.push(handle);
    }

    let mut last_summary = std::time::Instant::now();
    let mut last_expiry = std::time::Instant::now();
    let mut last_window = std::time::Instant::now();
    let mut failure = None;
    while !term.load(Relaxed) {
        thread::sleep(StdDuration::from_millis(100));
        if hup.swap(false, Relaxed) {
            notify_systemd("RELOADING=1");
            let outcome = match reload() {
                Ok(new) if new.share != lock(&shared.config).share => Err(
                    "reload refused: the [share] section changed; restart to change the fleet"
                        .to_string(),
                ),
                Ok(new)
                    if rule_needs(&new)
                        != (
                            rules_cfg.bypass,
                            rules_cfg.replies,
                            rules_cfg.skip_pure_acks,
                        )
                        || ports_of(&new) != rules_cfg.ports =>
                {
                    Err("reload refused: the new rules need other kernel rules (ports, or stream/smtp mode's bypass and replies); restart to change them".to_string())
                }
                Ok(new)
                    if new.iptables.as_ref().is_some_and(|i| {
                        i.chains.hooks().iter().any(|h| !rules_cfg.hooks.contains(h))
                    }) =>
                {
                    Err(format!(
                        "reload refused: the new iptables rules use a chain that is not queued (queued: {}); restart to queue it",
                        rules_cfg.hooks.iter().map(|h| h.chain()).collect::<Vec<_>>().join(", ")
                    ))
                }
                Ok(new) => match apply_lists(&blacklist, &new) {
                    Ok(changed) => {
                        let n = new.rules.len();
                        let allowed = new.allow.list.entries().len();
                        let lifted = serve::lift_allowlisted(&blacklist, &new.allow.list);
                        if let Some(o) = &offload
                            && let Err(e) = crate::sys::offload::restore(&o.allow_script(&new.allow.list))
                        {
                            error!("offload: the allow sets could not follow the reload: {e}");
                        }
                        shared.flow_budget.set_limit(new.engine.flow_memory);
                        shared.flow_budget.set_share(new.engine.flow_share());
                        *lock(&shared.config) = new;
                        shared.generation.fetch_add(1, Relaxed);
                        let lists = if changed.is_empty() {
                            "unchanged".to_string()
                        } else {
                            changed.join(", ")
                        };
                        info!(rules = n, allowlist = allowed, lists = %lists, "reloaded the rules; bans kept");
                        Ok(format!("{n} rules, {allowed} allowlist entries, lists {lists}; bans kept ({lifted} of allowlisted sources lifted)"))
                    }
                    Err(e) => Err(format!("reload refused, keeping the old rules and lists: {e}")),
                },
                Err(e) => Err(format!("reload failed, keeping the old rules: {e}")),
            };
            match &outcome {
                Ok(_) => notify_systemd("READY=1\nSTATUS=running; last reload done"),
                Err(e) => {
                    warn!("{e}");
                    shared.reload_failures.fetch_add(1, Relaxed);
                    notify_systemd(&format!(
                        "READY=1\nSTATUS=running; last reload refused: {e}"
                    ));
                }
            }
            let mut r = lock(&shared.reloads);
            r.0 += 1;
            r.1 = outcome;
            shared.reloaded.notify_all();
        }
        if last_window.elapsed() >= StdDuration::from_secs(2)
            && let Some(dropped) = &shared.window_dropped
        {
            last_window = std::time::Instant::now();
            if let Some(n) = firewall::window_drops(&rules_cfg) {
                dropped.store(n, Relaxed);
            }
        }
        if last_expiry.elapsed() >= StdDuration::from_secs(10) {
            last_expiry = std::time::Instant::now();
            let rules = names(&shared);
            let mut log = lock(&shared.banlog);
            for l in blacklist.lists() {
                l.expire_reporting(now(), |ban| {
                    log.line(|| banlog::ended_line(l.name(), &ban, &rules));
                });
            }
            log.flush();
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
    notify_systemd("STOPPING=1");
    shared.stop.store(true, Relaxed);
    for h in handles {
        match h.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => failure = Some(e.to_string()),
            Err(_) => failure = Some("a worker panicked".into()),
        }
    }
    info!("{}", summary(&shared, &blacklist));
    // The fleet's reader stops first: what it applied is in the changes thread's channel,
    // which is drained before the state is saved; the publisher stops when that thread ends.
    share_stop.store(true, Relaxed);
    if let Some(t) = share_in
        && t.join().is_err()
    {
        failure.get_or_insert("the share reader panicked".into());
    }
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
    if let Some(t) = share_out
        && t.join().is_err()
    {
        failure.get_or_insert("the share publisher panicked".into());
    }
    drop(socket_guard);
    if let Some(cfg) = rules_guard.0.take() {
        match firewall::remove(&cfg) {
            Ok(()) => info!("rules removed"),
            Err(e) => error!("removing rules: {e}"),
        }
    }
    drop(_offload_guard);
    drop(rules_lock);
    drop(pidfile);
    match failure {
        Some(f) => Err(DaemonError::failed(f)),
        None => Ok(()),
    }
}

/// Whether the rules drop what conntrack finds outside the window, and what `status` says
/// of it. A failed probe is warned about at once: packet mode then checks no window.
fn window_check(daemon: &DaemonConfig, rules: &RulesConfig) -> (bool, String) {
    if !daemon.window_check {
        return (false, "off (--no-window-check)".into());
    }
    if rules.hooks != [crate::verdict::Hook::Input] {
        return (
            false,
            "off (a gateway may see one direction of a session only; the flow tracker checks the window)"
                .into(),
        );
    }
    if rules.backend == firewall::Backend::Iptables
        && !firewall::tools()
            .iter()
            .all(|t| firewall::conntrack_works(t))
    {
        warn!(
            "window check: the kernel takes no conntrack match; segments outside the TCP window reach the queue (packet mode convicts them when the session exists)"
        );
        return (false, "off (the kernel takes no conntrack match)".into());
    }
    (
        true,
        "on: conntrack drops the clients' segments outside the TCP window before the queue".into(),
    )
}

/// Creates the offload sets, loads every ban and the allowlist into them; a failure removes
/// what it created.
fn start_offload(
    config: &Config,
    blacklist: &Blacklist,
) -> Result<Offload, crate::sys::offload::OffloadError> {
    let capacity: usize = config
        .lists
        .iter()
        .map(|l| l.capacity)
        .fold(0usize, usize::saturating_add);
    let o = Offload::new(capacity);
    o.setup()?;
    let t = std::time::Instant::now();
    let loaded = o.resync(blacklist, now()).and_then(|n| {
        crate::sys::offload::restore(&o.allow_script(&config.allow.list)).map(|()| n)
    });
    let n = match loaded {
        Ok(n) => n,
        Err(e) => {
            o.destroy();
            return Err(e);
        }
    };
    let secs = t.elapsed().as_secs_f64();
    info!(
        bans = n,
        seconds = (secs * 1000.0).round() / 1000.0,
        adds_per_second = (n as f64 / secs.max(1e-6)).round(),
        v4 = %o.v4,
        v6 = %o.v6,
        "offload sets loaded"
    );
    Ok(o)
}

/// Locks the state directory (one daemon per directory) and loads its bans.
fn open_store(
    dir: &std::path::Path,
    blacklist: &Blacklist,
) -> Result<(Store, std::fs::File), DaemonError> {
    let start = std::time::Instant::now();
    crate::store::create_dir(dir)
        .map_err(|e| DaemonError::start(format!("state directory {}: {e}", dir.display())))?;
    let lock_path = dir.join("lock");
    use std::os::unix::fs::OpenOptionsExt;
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(&lock_path)
        .map_err(|e| DaemonError::start(format!("{}: {e}", lock_path.display())))?;
    if let Err(e) = lock.try_lock() {
        return Err(DaemonError::start(match e {
            std::fs::TryLockError::WouldBlock => format!(
                "state directory {} is in use by another stringban",
                dir.display()
            ),
            std::fs::TryLockError::Error(e) => format!("{}: {e}", lock_path.display()),
        }));
    }
    let (store, loaded) = Store::open(dir, blacklist, now())
        .map_err(|e| DaemonError::start(format!("state directory {}: {e}", dir.display())))?;
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

/// Who made each ban: the rules' names, and the fleet's node and origins.
fn names(shared: &Shared) -> crate::control::Names {
    crate::control::Names {
        rules: rule_names(shared),
        node: shared.share.as_ref().map(|s| s.config.node.clone()),
        origins: shared
            .share
            .as_ref()
            .map(|s| s.origins())
            .unwrap_or_default(),
    }
}

/// The rules' names, by rule id.
fn rule_names(shared: &Shared) -> Vec<String> {
    lock(&shared.config)
        .rules
        .iter()
        .map(|r| r.name.clone())
        .collect()
}

fn ports_of(config: &Config) -> Vec<u16> {
    config.engine.ports.singles()
}

/// What the rules need of the kernel rules: the BYPASS connmark rules (a flow mode that may
/// bypass), the server's side queued too (a flow mode), and whether pure ACKs may skip the
/// queue (every rule follows flows).
pub fn rule_needs(config: &Config) -> (bool, bool, bool) {
    let flow = config.rules.iter().any(|r| r.mode.is_flow());
    // Imported iptables rules see every packet, as the kernel's do.
    let all_flow = config.iptables.is_none()
        && !config.rules.is_empty()
        && config.rules.iter().all(|r| r.mode.is_flow());
    // Every flow mode reads the server's side: the SYN-ACK and the sequence numbers it sends
    // are what a client must acknowledge to prove its address (smtp mode also reads replies).
    (flow && config.engine.bypass, flow, all_flow)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
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
