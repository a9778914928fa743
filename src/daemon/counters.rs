//! The daemon's counters gathered into one [`crate::metrics::Snapshot`], rendered as the log
//! line, `stats` and the metrics.

use super::*;

/// The Prometheus exposition of every counter.
pub(super) fn metrics_text(shared: &Shared, blacklist: &Blacklist) -> String {
    use std::fmt::Write as _;
    let mut text = with_counters(shared, blacklist, crate::metrics::render);
    let _ = writeln!(
        text,
        "# HELP stringban_reload_failures_total Reloads refused (the old rules kept).\n# TYPE stringban_reload_failures_total counter\nstringban_reload_failures_total {}",
        shared.reload_failures.load(Relaxed)
    );
    let _ = writeln!(
        text,
        "# HELP stringban_log_lines_held_back_total Ban/unban log lines held back by the rate limit.\n# TYPE stringban_log_lines_held_back_total counter\nstringban_log_lines_held_back_total {}",
        lock(&shared.banlog).held_total
    );
    if let Some(share) = &shared.share {
        share.metrics(&mut text);
    }
    text
}

/// Every counter as JSON (`stringban stats`).
pub(super) fn stats_json(shared: &Shared, blacklist: &Blacklist) -> serde_json::Value {
    let mut stats = with_counters(shared, blacklist, |s| s.json());
    if let Some(share) = &shared.share {
        stats["share"] = share.json();
    }
    stats
}

/// Every worker's counters, summed.
pub(super) fn total_stats(shared: &Shared) -> WorkerStats {
    let mut total = WorkerStats::default();
    for s in &shared.stats {
        let s = lock(s);
        total.engine.merge(&s.engine);
        total.malformed += s.malformed;
        total.destroyed += s.destroyed;
        total.reset_by_mark += s.reset_by_mark;
        total.crafted += s.crafted;
        total.crafted_failed += s.crafted_failed;
        total.forwarded += s.forwarded;
        total.forwarded_resets += s.forwarded_resets;
        total.reset_no_socket += s.reset_no_socket;
        total.lookups += s.lookups;
        total.lookups_over_budget += s.lookups_over_budget;
        total.lookup_errors += s.lookup_errors;
        total.gso += s.gso;
        total.csum_not_ready += s.csum_not_ready;
        total.wakeups += s.wakeups;
        total.latency.merge(&s.latency);
    }
    total
}

/// The log line of every counter.
pub(super) fn summary(shared: &Shared, blacklist: &Blacklist) -> String {
    let mut line = with_counters(shared, blacklist, |s| s.line());
    if let Some(s) = &shared.share {
        let up = s.out_connected.load(Relaxed) && s.in_connected.load(Relaxed);
        line.push_str(&format!(
            " share={} lag={} published={} pending={} applied={} share_errors={}",
            if up { "connected" } else { "DISCONNECTED" },
            s.lag_entries.load(Relaxed),
            s.published.load(Relaxed),
            s.pending.load(Relaxed),
            s.applied.load(Relaxed),
            s.errors.load(Relaxed)
        ));
    }
    line
}

/// One snapshot of every counter — the workers' summed, the shared ones, the lists, the kernel's
/// queue counters, the store's health — handed to `f` (the log line, `stats`, the metrics: one
/// source, three renderings).
pub(super) fn with_counters<R>(
    shared: &Shared,
    blacklist: &Blacklist,
    f: impl FnOnce(&crate::metrics::Snapshot<'_>) -> R,
) -> R {
    let total = total_stats(shared);
    let (names, iptables_rules): (Vec<String>, Vec<(usize, String)>) = {
        let config = lock(&shared.config);
        (
            config.rules.iter().map(|r| r.name.clone()).collect(),
            config.iptables.as_ref().map_or(Vec::new(), |i| {
                i.ruleset
                    .rules
                    .iter()
                    .map(|r| (r.line, r.to_string()))
                    .collect()
            }),
        )
    };
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
        crafted_failed: total.crafted_failed,
        forwarded: total.forwarded,
        forwarded_resets: total.forwarded_resets,
        reset_no_socket: total.reset_no_socket,
        flow_memory: (
            shared.flow_budget.used(),
            shared.flow_budget.peak(),
            shared.flow_budget.limit(),
            shared.flow_budget.share(),
        ),
        lookups: total.lookups,
        lookups_over_budget: total.lookups_over_budget,
        lookup_errors: total.lookup_errors,
        iptables_rules: &iptables_rules,
        gso: total.gso,
        csum_not_ready: total.csum_not_ready,
        reset_on_request: shared.reset_on_request.load(Relaxed),
        reset_failures: shared.reset_failures.load(Relaxed),
        control_refused: shared.control_refused.load(Relaxed),
        control_denied: shared.control_denied.load(Relaxed),
        metrics_refused: shared.metrics_refused.load(Relaxed),
        window_dropped: shared.window_dropped.as_ref().map(|n| n.load(Relaxed)),
        store: shared.store_health.status(),
    })
}
