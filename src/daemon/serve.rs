//! The control socket's threads: a fixed pool serving [`crate::control`] requests, and what
//! only the daemon can do for them (reload, list updates, resets on request).

use super::*;

/// Accepts control connections and hands them to a fixed pool of [`crate::control::WORKERS`]
/// threads through a queue of [`crate::control::WAITING`]; a connection beyond that is answered
/// with an error and closed (counted, logged), and one idle for
/// [`crate::control::IDLE_TIMEOUT`] is closed: clients cannot exhaust threads or descriptors.
pub(super) fn control_loop(
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
                    allowed: &|ip| {
                        let list = Arc::clone(&lock(&shared.config).allow.list);
                        list.why(ip).map(|a| format!("{} ({})", a.cidr, a.origin))
                    },
                    rules: &|| super::names(&shared),
                    reload: &|| reload_and_wait(&shared, &hup),
                    status: &|| status_json(&shared, &blacklist),
                };
                let on_effect = |_: crate::control::Effect| {};
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
