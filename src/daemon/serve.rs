//! The control socket's threads: a fixed pool serving [`crate::control`] requests, and what
//! only the daemon can do for them (reload, list updates, resets on request).

use super::*;

/// Accepts control connections and hands them to fixed pools of threads: the client's peer
/// credentials (`SO_PEERCRED`) decide its [`crate::control::Privilege`] and its pool — root and
/// the daemon's own uid have [`crate::control::ADMIN_WORKERS`] of their own, everyone else
/// shares [`crate::control::WORKERS`], at most [`crate::control::PER_UID`] connections per uid.
/// A connection beyond its pool's queue ([`crate::control::WAITING`]) or its uid's share is
/// answered with an error and closed (counted, logged); one idle for
/// [`crate::control::IDLE_TIMEOUT`], or whose request is not whole within
/// [`crate::control::REQUEST_DEADLINE`], is closed: clients cannot exhaust threads or
/// descriptors, and no member of the control group can delay an administrator.
pub(super) fn control_loop(
    listener: std::os::unix::net::UnixListener,
    shared: Arc<Shared>,
    blacklist: Arc<Blacklist>,
    hup: Arc<AtomicBool>,
) {
    use crate::control::{ADMIN_WORKERS, IDLE_TIMEOUT, PER_UID, Privilege, WAITING, WORKERS};
    type Conn = (std::os::unix::net::UnixStream, Privilege, u32);
    let per_uid: Arc<Mutex<std::collections::HashMap<u32, usize>>> = Arc::default();
    let daemon_uid = crate::sys::cred::euid();
    let mut pools = Vec::new();
    for (pool, workers) in [("control", WORKERS), ("control-admin", ADMIN_WORKERS)] {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Conn>(WAITING);
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..workers {
            let (shared, blacklist, hup, rx, per_uid) = (
                Arc::clone(&shared),
                Arc::clone(&blacklist),
                Arc::clone(&hup),
                Arc::clone(&rx),
                Arc::clone(&per_uid),
            );
            let spawned = thread::Builder::new()
                .name(format!("{pool}-{i}"))
                .spawn(move || {
                    let host = crate::control::Host {
                        stats: &|| stats_json(&shared, &blacklist),
                        reset: &|ip| reset_sessions(&shared, ip),
                        allowed: &|ip| {
                            let list = Arc::clone(&lock(&shared.config).allow.list);
                            list.why(ip).map(|a| format!("{} ({})", a.cidr, a.origin))
                        },
                        rules: &|| super::names(&shared),
                        reload: &|| reload_and_wait(&shared, &hup),
                        status: &|| status_json(&shared, &blacklist),
                        denied: &|| {
                            shared.control_denied.fetch_add(1, Relaxed);
                        },
                    };
                    let on_effect = |_: crate::control::Effect| {};
                    loop {
                        let next = lock(&rx).recv();
                        let Ok((stream, privilege, uid)) = next else {
                            return;
                        };
                        if let Err(e) = crate::control::serve(
                            stream, &blacklist, &now, &host, privilege, &on_effect,
                        ) {
                            warn!("control connection (uid {uid}): {e}");
                        }
                        if privilege == Privilege::Member {
                            let mut held = lock(&per_uid);
                            if let Some(n) = held.get_mut(&uid) {
                                *n -= 1;
                                if *n == 0 {
                                    held.remove(&uid);
                                }
                            }
                        }
                    }
                });
            if let Err(e) = spawned {
                error!("{pool} worker {i}: {e}");
            }
        }
        pools.push(tx);
    }
    let mut last_warn: Option<std::time::Instant> = None;
    let mut warn_once_a_second = |what: String| {
        if last_warn.is_none_or(|t| t.elapsed() >= StdDuration::from_secs(1)) {
            warn!("{what}");
            last_warn = Some(std::time::Instant::now());
        }
    };
    let refuse = |mut s: std::os::unix::net::UnixStream, why: &str| {
        let _ = writeln!(s, "{}", serde_json::json!({"ok": false, "error": why}));
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
        // No credentials (cannot happen on a Unix stream socket): the least privilege.
        let (privilege, uid) = match crate::sys::cred::peer_cred(&stream) {
            Ok((_, uid, _)) => (Privilege::of(uid, daemon_uid), uid),
            Err(_) => (Privilege::Member, u32::MAX),
        };
        if privilege == Privilege::Member {
            let mut held = lock(&per_uid);
            let n = held.entry(uid).or_insert(0);
            if *n >= PER_UID {
                drop(held);
                shared.control_refused.fetch_add(1, Relaxed);
                warn_once_a_second(format!(
                    "control socket: uid {uid} already holds {PER_UID} connections: refusing more"
                ));
                refuse(
                    stream,
                    "too many control connections from this user; try again",
                );
                continue;
            }
            *n += 1;
        }
        let pool = &pools[usize::from(privilege == Privilege::Admin)];
        if let Err(std::sync::mpsc::TrySendError::Full((s, _, _))) =
            pool.try_send((stream, privilege, uid))
        {
            if privilege == Privilege::Member
                && let Some(n) = lock(&per_uid).get_mut(&uid)
            {
                *n -= 1;
            }
            shared.control_refused.fetch_add(1, Relaxed);
            warn_once_a_second(format!(
                "control socket: the {} pool's connections are all open or waiting: refusing more",
                if privilege == Privilege::Admin {
                    "administrators'"
                } else {
                    "members'"
                }
            ));
            refuse(s, "too many control connections; try again");
        }
    }
}

/// Serves the metrics port: a pool of [`crate::metrics::WORKERS`] threads fed by a queue of
/// [`crate::metrics::WAITING`] (one more connection is closed at once, counted), each reading
/// at most [`crate::metrics::MAX_HEAD`] bytes of a request within
/// [`crate::metrics::HEAD_DEADLINE`]: a slow or endless client holds one worker for 2 s at
/// most, and the others go on answering scrapes.
pub(super) fn metrics_loop(
    listener: std::net::TcpListener,
    shared: Arc<Shared>,
    blacklist: Arc<Blacklist>,
) {
    use crate::metrics::{Head, WAITING, WORKERS};
    let (tx, rx) = std::sync::mpsc::sync_channel::<std::net::TcpStream>(WAITING);
    let rx = Arc::new(Mutex::new(rx));
    for i in 0..WORKERS {
        let (shared, blacklist, rx) =
            (Arc::clone(&shared), Arc::clone(&blacklist), Arc::clone(&rx));
        let spawned = thread::Builder::new()
            .name(format!("metrics-{i}"))
            .spawn(move || {
                loop {
                    let next = lock(&rx).recv();
                    let Ok(stream) = next else { return };
                    match crate::metrics::respond(stream, || metrics_text(&shared, &blacklist)) {
                        Ok(Head::Whole) => {}
                        Ok(_) => {
                            shared.metrics_refused.fetch_add(1, Relaxed);
                        }
                        Err(e) => warn!("metrics connection: {e}"),
                    }
                }
            });
        if let Err(e) = spawned {
            error!("metrics worker {i}: {e}");
        }
    }
    let mut last_warn: Option<std::time::Instant> = None;
    for stream in listener.incoming() {
        let Ok(stream) = stream else {
            thread::sleep(StdDuration::from_millis(50));
            continue;
        };
        if let Err(std::sync::mpsc::TrySendError::Full(s)) = tx.try_send(stream) {
            shared.metrics_refused.fetch_add(1, Relaxed);
            if last_warn.is_none_or(|t| t.elapsed() >= StdDuration::from_secs(1)) {
                warn!(
                    "metrics: {} connections open or waiting: closing more",
                    WORKERS + WAITING
                );
                last_warn = Some(std::time::Instant::now());
            }
            drop(s);
        }
    }
}

/// A reload's lists applied to the live blacklist: every list checked first (same names in the
/// same order, same prefixes), then TTL, refresh and capacity changed in place. Returns what
/// changed; an error changes nothing.
pub(super) fn apply_lists(
    blacklist: &Blacklist,
    new: &Config,
) -> Result<Vec<String>, crate::blacklist::ListChange> {
    let lists = blacklist.lists();
    if !new
        .lists
        .iter()
        .map(|l| l.name.as_str())
        .eq(lists.iter().map(|l| l.name()))
    {
        return Err(crate::blacklist::ListChange::Lists);
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

/// Lifts the bans of sources the allowlist now allows (a ban made before the address was
/// allowlisted, or restored from disk): removed like `del`, so the journal and the offload sets
/// follow. Returns how many.
pub(super) fn lift_allowlisted(blacklist: &Blacklist, allow: &crate::allow::Allowlist) -> usize {
    if allow.is_empty() {
        return 0;
    }
    let t = now();
    let mut lifted = 0;
    for l in blacklist.lists() {
        for b in l.bans(t) {
            if allow.contains(b.key.addr()) && l.remove(b.key.addr()) {
                let why = allow.why(b.key.addr()).map(|a| a.origin.clone());
                info!(source = %b.key, list = %l.name(), allowed_by = ?why, "ban lifted: the source is allowlisted");
                lifted += 1;
            }
        }
    }
    lifted
}

/// `add ADDR --reset`: destroys every local session with `ip` on a protected port (the MTA sees
/// `ECONNABORTED`, the client a RST), for sessions that no longer reach the queue (bypassed
/// after STARTTLS) or are idle. Logged, counted, and answered.
pub(super) fn reset_sessions(shared: &Shared, ip: std::net::IpAddr) -> serde_json::Value {
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

/// Asks the main thread to reload (as SIGHUP) and waits for its outcome (at most 30 s).
fn reload_and_wait(shared: &Shared, hup: &AtomicBool) -> Result<String, String> {
    let mut r = lock(&shared.reloads);
    let seen = r.0;
    hup.store(true, Relaxed);
    let deadline = std::time::Instant::now() + StdDuration::from_secs(30);
    while r.0 == seen {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return Err("no reload outcome within 30 s".into());
        }
        r = match shared.reloaded.wait_timeout(r, left) {
            Ok((g, _)) => g,
            Err(poisoned) => poisoned.into_inner().0,
        };
    }
    r.1.clone()
}

/// The daemon's part of `status`: its facts, uptime, the allowlist, the rules, and the
/// counters a person looks at first.
fn status_json(shared: &Shared, blacklist: &Blacklist) -> serde_json::Value {
    use serde_json::json;
    let mut v = shared.facts.clone();
    v["uptime_s"] = json!(shared.started.elapsed().as_secs());
    let (rules, allow) = {
        let c = lock(&shared.config);
        let rules: Vec<_> = c
            .rules
            .iter()
            .map(|r| {
                json!({
                    "name": r.name,
                    "mode": format!("{:?}", r.mode).to_lowercase(),
                    "action": format!("{:?}", r.action).to_lowercase(),
                    "list": r.ban.map(|l| blacklist.list(l).name().to_string()),
                })
            })
            .collect();
        let allow: Vec<_> = c
            .allow
            .list
            .entries()
            .iter()
            .map(|a| json!({"cidr": a.cidr.to_string(), "origin": a.origin}))
            .collect();
        (rules, allow)
    };
    v["rules"] = json!(rules);
    v["iptables_rules"] = json!(lock(&shared.config).iptables.is_some());
    v["allowlist"] = json!(allow);
    v["reload_failures"] = json!(shared.reload_failures.load(Relaxed));
    v["log_lines_held_back"] = json!(lock(&shared.banlog).held_total);
    v["stats"] = stats_json(shared, blacklist);
    v
}
