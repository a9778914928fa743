//! The control socket's clients: list, count, add, del, flush, stats, reload, import-recent —
//! through the typed [`Client`]. A refused request is bad input (exit 2); an unreachable
//! socket or a broken answer exits 1.

use super::*;
use stringban::daemon::client::{BanLine, Client, ClientError, Command, ResetOutcome};

use stringban::daemon::printable::printable;

fn client(ctl: &Ctl) -> Client {
    Client::new(&ctl.control_socket)
}

/// A client error as the command's: refused → exit 2.
pub(crate) fn ctl_error(e: ClientError) -> anyhow::Error {
    match e {
        ClientError::Refused(why) => bad(why),
        other => anyhow::Error::new(other),
    }
}

/// `add`: bans, and with `--reset` resets the address's sessions; a reset that could not be
/// done is an error (exit 1) after the ban is in place.
pub(crate) fn run_add(a: AddArgs) -> anyhow::Result<()> {
    if a.json {
        return print_answer(
            &a.pick.ctl,
            &Command::Add {
                addr: a.addr,
                ttl: a.ttl,
                list: a.pick.list,
                reset: a.reset,
            },
        );
    }
    let added = client(&a.pick.ctl)
        .add(a.addr, a.ttl, a.pick.list, a.reset)
        .map_err(ctl_error)?;
    let mut line = format!(
        "banned {} in list {} ({})",
        added.key,
        added.list,
        if added.new { "new" } else { "renewed" }
    );
    let reset = added.reset.unwrap_or(ResetOutcome {
        sessions: 0,
        error: None,
    });
    if a.reset {
        line.push_str(&format!("; {} sessions reset", reset.sessions));
    }
    println!("{line}");
    match reset.error {
        Some(e) => Err(anyhow::anyhow!("reset: {e}")),
        None => Ok(()),
    }
}

pub(crate) fn run_count(a: CountArgs) -> anyhow::Result<()> {
    if a.json {
        return print_answer(&a.pick.ctl, &Command::Count { list: a.pick.list });
    }
    println!(
        "{}",
        client(&a.pick.ctl).count(a.pick.list).map_err(ctl_error)?
    );
    Ok(())
}

pub(crate) fn run_status(a: StatusArgs) -> anyhow::Result<()> {
    let status = client(&a.ctl).status().map_err(ctl_error)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&status)?);
    } else {
        // Line by line, escaped: names in it came from files and peers.
        for line in status_text(&status, unix_now()).lines() {
            println!("{}", printable(line));
        }
    }
    Ok(())
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

use stringban::replay::group as n;

/// The screen `stringban status` prints, from the daemon's `status` object.
pub(crate) fn status_text(s: &serde_json::Value, now: u64) -> String {
    use std::fmt::Write as _;
    use stringban::daemon::human_duration as human;
    let u = |v: &serde_json::Value| v.as_u64().unwrap_or(0);
    let st = &s["stats"];
    let mut o = String::new();
    let _ = writeln!(
        o,
        "stringban {} — running for {} (pid {})",
        s["version"].as_str().unwrap_or("?"),
        human(u(&s["uptime_s"])),
        u(&s["pid"])
    );
    let q = &s["queues"];
    let queues = if q[0] == q[1] {
        format!("queue {}", u(&q[0]))
    } else {
        format!("queues {}-{}", u(&q[0]), u(&q[1]))
    };
    let strings = |v: &serde_json::Value| -> Vec<String> {
        v.as_array()
            .into_iter()
            .flatten()
            .filter_map(|h| h.as_str().map(String::from))
            .collect()
    };
    let (hooks, protect) = (strings(&s["hooks"]), strings(&s["protect"]));
    let rules = if s["rules_installed"] == true {
        format!(
            "kernel rules installed ({}, chain {} from {}{}, fail-{})",
            s["firewall"].as_str().unwrap_or("?"),
            s["chain"].as_str().unwrap_or("?"),
            if hooks.is_empty() {
                "INPUT".to_string()
            } else {
                hooks.join(" and ")
            },
            if protect.is_empty() {
                String::new()
            } else {
                format!(" protecting {}", protect.join(", "))
            },
            if s["fail_open"] == true {
                "open"
            } else {
                "closed"
            }
        )
    } else {
        "kernel rules not installed by the daemon (--install-rules off)".into()
    };
    let _ = writeln!(o, "{queues}; {rules}");
    let offload = match s["offload"].as_array() {
        Some(sets) => format!(
            "on (ipsets {})",
            sets.iter()
                .filter_map(|v| v.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
        None => s["offload_note"].as_str().unwrap_or("off").to_string(),
    };
    let store = &st["store"];
    let state = match s["state_dir"].as_str() {
        None => "none (--no-state: bans are lost on restart)".into(),
        Some(dir) if store["healthy"] == true => format!(
            "{dir} (healthy; last snapshot {} ago)",
            store["last_snapshot_age_s"]
                .as_u64()
                .map_or("never".into(), human)
        ),
        Some(dir) => format!(
            "{dir} (FAILING: {}; {} changes not on disk)",
            store["last_error"].as_str().unwrap_or("?"),
            u(&store["pending_records"])
        ),
    };
    let _ = writeln!(o, "offload: {offload}; state: {state}");
    if let Some(note) = s["window_note"].as_str() {
        let dropped = st["window_dropped"].as_u64().map_or(String::new(), |n| {
            format!(" ({} dropped)", stringban::replay::group(n))
        });
        let _ = writeln!(o, "window check: {note}{dropped}");
    }
    let allow: Vec<String> = s["allowlist"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|e| e["cidr"].as_str().unwrap_or("?").to_string())
                .collect()
        })
        .unwrap_or_default();
    let shown = allow.iter().take(6).cloned().collect::<Vec<_>>().join(", ");
    let _ = writeln!(
        o,
        "allowlist: {} entries{}{}",
        allow.len(),
        if allow.is_empty() { "" } else { ": " },
        if allow.len() > 6 {
            format!("{shown}, …")
        } else {
            shown
        }
    );
    let sh = &st["share"];
    let _ = match sh["node"].as_str() {
        None => writeln!(o, "fleet: none (bans are this host's alone)"),
        Some(node) => writeln!(
            o,
            "fleet: {} as node {node} through {} — {}; lag {} entries ({} s); published {}, pending {}; applied {} from peers; {}; {} errors{}{}",
            sh["fleet"].as_str().unwrap_or("?"),
            sh["url"].as_str().unwrap_or("?"),
            if sh["connected"] == true {
                "connected"
            } else {
                "DISCONNECTED"
            },
            u(&sh["lag_entries"]),
            sh["lag_seconds"].as_f64().unwrap_or(0.0),
            u(&sh["published"]),
            u(&sh["pending"]),
            u(&sh["applied"]),
            if sh["signed"] == true {
                let r = &sh["refused"];
                format!(
                    "signed (key {}), refused {} unsigned, {} forged, {} replayed",
                    sh["key_ids"][0].as_str().unwrap_or("?"),
                    u(&r["unsigned"]),
                    u(&r["bad_signature"]),
                    u(&r["stale"])
                )
            } else {
                "UNSIGNED: anything that can write to Redis can ban, lift and flush here"
                    .to_string()
            },
            u(&sh["errors"]),
            match u(&sh["duplicate_node"]) {
                0 => String::new(),
                n =>
                    format!(" — DUPLICATE NODE ID: {n} entries under this node's id made elsewhere"),
            },
            sh["last_error"]
                .as_str()
                .map_or(String::new(), |e| format!(" (last: {e})"))
        ),
    };
    let _ = writeln!(o, "\nrules:");
    if s["iptables_rules"] == true {
        let _ = writeln!(
            o,
            "  imported iptables rules ([iptables]), packets each matched:"
        );
        for r in st["iptables_rules"].as_array().into_iter().flatten() {
            let _ = writeln!(
                o,
                "  {:>12}  line {:<4} {}",
                n(u(&r["packets"])),
                u(&r["line"]),
                r["rule"].as_str().unwrap_or("?")
            );
        }
    }
    for r in s["rules"].as_array().into_iter().flatten() {
        let _ = writeln!(
            o,
            "  {:<28} {:<7} {:<7} {}",
            format!("{:?}", r["name"].as_str().unwrap_or("?")),
            r["mode"].as_str().unwrap_or("?"),
            r["action"].as_str().unwrap_or("?"),
            r["list"]
                .as_str()
                .map_or("bans nobody".into(), |l| format!("bans in list {l}"))
        );
    }
    let _ = writeln!(o, "\nlists:");
    let _ = writeln!(
        o,
        "  {:<16} {:>12} {:>9} {:>10} {:>11} {:>8} {:>10} {:>9}",
        "LIST", "BANS", "LAST MIN", "LAST HOUR", "REMEMBERED", "TTL", "THRESHOLD", "ESCALATE"
    );
    for l in s["lists"].as_array().into_iter().flatten() {
        let threshold = match u(&l["threshold"]) {
            0 | 1 => "1".to_string(),
            t => format!("{t}/{}", human(u(&l["window_s"]))),
        };
        let escalate = match u(&l["escalate"]) {
            0 | 1 => "off".to_string(),
            e => format!("x{e}≤{}", human(u(&l["max_ttl_s"]))),
        };
        let _ = writeln!(
            o,
            "  {:<16} {:>12} {:>9} {:>10} {:>11} {:>8} {:>10} {:>9}",
            l["name"].as_str().unwrap_or("?"),
            n(u(&l["bans"])),
            n(u(&l["new_last_minute"])),
            n(u(&l["new_last_hour"])),
            n(u(&l["remembered"])),
            human(u(&l["ttl_s"])),
            threshold,
            escalate
        );
    }
    let v = &st["verdicts"];
    let _ = writeln!(
        o,
        "\npackets: {} · accepted {} · dropped {} · reset {} · bypassed {} · allowlisted {} ({} matches not acted on)",
        n(u(&st["packets"])),
        n(u(&v["accept"])),
        n(u(&v["drop"])),
        n(u(&v["reset"])),
        n(u(&v["bypass"])),
        n(u(&st["allowlisted_packets"])),
        n(u(&st["allowlisted_convictions"]))
    );
    let un = &st["unproven"];
    let _ = writeln!(
        o,
        "proof of address: {} matches convicted nobody (no connection {} · no handshake {} · out of window {} · mid-stream {}) · resets with no session {} · socket lookups {} ({} over budget)",
        n([
            "no_connection",
            "no_handshake",
            "out_of_window",
            "mid_stream"
        ]
        .iter()
        .map(|c| u(&un[*c]))
        .sum()),
        n(u(&un["no_connection"])),
        n(u(&un["no_handshake"])),
        n(u(&un["out_of_window"])),
        n(u(&un["mid_stream"])),
        n(u(&st["reset_no_socket"])),
        n(u(&st["socket_lookups"]["lookups"])),
        n(u(&st["socket_lookups"]["over_budget"]))
    );
    let fm = &st["flow_memory"];
    let _ = writeln!(
        o,
        "flow memory: {} of {} MiB (peak {}), {} KiB per network and worker · flows evicted {} \
         ({} for the budget, {} proven, {} for their network's share) · {} refused (share full)",
        u(&fm["used_bytes"]) >> 20,
        u(&fm["limit_bytes"]) >> 20,
        u(&fm["peak_bytes"]) >> 20,
        n(u(&fm["network_share_bytes"]) >> 10),
        n(u(&st["flows_evicted"])),
        n(u(&st["flows_budget_evicted"])),
        n(u(&st["flows_proven_evicted"])),
        n(u(&st["flows_share_evicted"])),
        n(u(&st["flows_share_refused"]))
    );
    let queue_drops: u64 = st["kernel_queues"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|q| u(&q["queue_dropped"]) + u(&q["user_dropped"]))
        .sum();
    let errors = [
        ("unparsed", u(&st["unparsed"])),
        ("malformed", u(&st["malformed"])),
        ("kernel queue drops", queue_drops),
        ("store errors", u(&store["errors"])),
        ("reload failures", u(&s["reload_failures"])),
        ("reset failures", u(&st["reset_on_request_failures"])),
        ("crafted RSTs not sent", u(&st["crafted_rst_failures"])),
        ("socket lookups failed", u(&st["socket_lookups"]["errors"])),
        ("control refused", u(&st["control_refused"])),
    ];
    let _ = writeln!(
        o,
        "errors: {}",
        errors
            .iter()
            .map(|(what, k)| format!("{what} {}", n(*k)))
            .collect::<Vec<_>>()
            .join(" · ")
    );
    let top = s["top"].as_array().cloned().unwrap_or_default();
    if top.is_empty() {
        let _ = writeln!(o, "\nno bans");
    } else {
        let _ = writeln!(o, "\ntop sources by packets dropped:");
        let _ = writeln!(
            o,
            "  {:<40} {:<12} {:<24} {:>9} {:>10} {:>7}",
            "SOURCE", "LIST", "RULE", "DROPPED", "EXPIRES IN", "OFFENCE"
        );
        for b in &top {
            let _ = writeln!(
                o,
                "  {:<40} {:<12} {:<24} {:>9} {:>10} {:>7}",
                b["key"].as_str().unwrap_or("?"),
                b["list"].as_str().unwrap_or("?"),
                rule_of(b["rule_name"].as_str(), b["node"].as_str()),
                n(u(&b["hits"])),
                human(u(&b["expires_at"]).saturating_sub(now)),
                u(&b["offences"]).max(1)
            );
        }
    }
    o
}

fn rule_text(name: Option<&str>) -> String {
    match name {
        Some(r) => format!("{r:?}"),
        None => "(by hand)".into(),
    }
}

/// The rule, and the node that banned when the daemon shares bans with a fleet.
fn rule_of(name: Option<&str>, node: Option<&str>) -> String {
    match node {
        // Escaped: a node name comes from the fleet (checked there, but printed defensively).
        Some(n) => format!("{}@{}", rule_text(name), n.escape_debug()),
        None => rule_text(name),
    }
}

/// `2026-11-28 11:30:05Z` (UTC) for Unix seconds.
pub(crate) fn utc(secs: u64) -> String {
    let days = secs / 86_400;
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm, public domain facts).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}Z",
        rem / 3_600,
        rem % 3_600 / 60,
        rem % 60
    )
}

/// `--json`: the daemon's final answer line, without its `ok`.
fn print_answer(ctl: &Ctl, cmd: &Command) -> anyhow::Result<()> {
    let answer = client(ctl).call(cmd).map_err(ctl_error)?;
    let mut last = answer.last().cloned().unwrap_or_default();
    if let Some(o) = last.as_object_mut() {
        o.remove("ok");
    }
    println!("{last}");
    Ok(())
}

pub(crate) fn run_del(a: DelArgs) -> anyhow::Result<()> {
    if a.json {
        return print_answer(
            &a.pick.ctl,
            &Command::Del {
                addr: a.addr,
                list: a.pick.list,
                fleet: a.fleet,
            },
        );
    }
    let n = client(&a.pick.ctl)
        .del(a.addr, a.pick.list, a.fleet)
        .map_err(ctl_error)?;
    println!("removed {n}");
    Ok(())
}

pub(crate) fn run_flush(a: FlushArgs) -> anyhow::Result<()> {
    let p = a.pick;
    if a.json {
        return print_answer(
            &p.ctl,
            &Command::Flush {
                list: p.list,
                fleet: a.fleet,
            },
        );
    }
    println!(
        "removed {}",
        client(&p.ctl).flush(p.list, a.fleet).map_err(ctl_error)?
    );
    Ok(())
}

pub(crate) fn run_stats(c: Ctl) -> anyhow::Result<()> {
    let stats = client(&c).stats().map_err(ctl_error)?;
    println!(
        "{}",
        serde_json::to_string_pretty(&stats).unwrap_or_default()
    );
    Ok(())
}

pub(crate) fn run_reload(c: Ctl) -> anyhow::Result<()> {
    let done = client(&c).reload().map_err(ctl_error)?;
    println!("reloaded: {}", printable(&done));
    Ok(())
}

pub(crate) fn run_list(args: ListArgs) -> anyhow::Result<()> {
    let format = match (args.json, args.format.as_deref()) {
        (true, _) => "json",
        (false, None | Some("text")) => "text",
        (false, Some("xt-recent")) => "xt-recent",
        (false, Some("json")) => "json",
        (false, Some(other)) => {
            return Err(bad(format!(
                "command line: --format = {other}: expected text, json or xt-recent"
            )));
        }
    };
    let bans: Vec<BanLine> = client(&args.pick.ctl)
        .list(args.pick.list)
        .map_err(ctl_error)?;
    let mut out = io::stdout().lock();
    if format == "text" {
        if bans.is_empty() {
            writeln!(out, "no bans")?;
            return Ok(());
        }
        writeln!(
            out,
            "{:<40} {:<12} {:<24} {:>10} {:>9} {:>7}  {:<21} {:<21}",
            "SOURCE",
            "LIST",
            if bans.iter().any(|b| b.node.is_some()) {
                "RULE@NODE"
            } else {
                "RULE"
            },
            "EXPIRES IN",
            "DROPPED",
            "OFFENCE",
            "BANNED AT (UTC)",
            "EXPIRES AT (UTC)"
        )?;
    }
    for ban in &bans {
        match format {
            // Through a JSON value: keys in the order the daemon sends them.
            "json" => writeln!(out, "{}", serde_json::to_value(ban)?)?,
            "xt-recent" => writeln!(
                out,
                "{}",
                stringban::control::xt_recent_line(&ban.key, ban.last_seen)
            )?,
            _ => writeln!(
                out,
                "{:<40} {:<12} {:<24} {:>10} {:>9} {:>7}  {:<21} {:<21}",
                printable(&ban.key),
                printable(&ban.list),
                rule_of(ban.rule_name.as_deref(), ban.node.as_deref()),
                stringban::daemon::human_duration(ban.ttl_left),
                ban.hits,
                ban.offences.max(1),
                utc(ban.first_seen),
                utc(ban.expires_at)
            )?,
        }
    }
    Ok(())
}

pub(crate) fn run_import_recent(args: ImportArgs) -> anyhow::Result<()> {
    let text =
        fs::read_to_string(&args.file).map_err(|e| bad(format!("{}: {e}", args.file.display())))?;
    let addrs = stringban::control::parse_xt_recent(&text)
        .map_err(|e| bad(format!("{}: {e}", args.file.display())))?;
    let c = client(&args.pick.ctl);
    let mut new = 0;
    for a in &addrs {
        let added = c
            .add(
                a.to_string(),
                args.ttl.clone(),
                args.pick.list.clone(),
                false,
            )
            .map_err(ctl_error)?;
        new += usize::from(added.new);
    }
    println!(
        "imported {} addresses from {} ({new} new bans)",
        addrs.len(),
        args.file.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_dates() {
        assert_eq!(utc(0), "1970-01-01 00:00:00Z");
        assert_eq!(utc(1_795_865_405), "2026-11-28 11:30:05Z");
        assert_eq!(utc(951_782_400), "2000-02-29 00:00:00Z");
    }

    #[test]
    fn the_status_screen_reads_the_status_object() {
        let s = serde_json::json!({
            "version": "0.1.0", "uptime_s": 7_980, "pid": 42, "queues": [0, 1],
            "rules_installed": true, "firewall": "iptables", "chain": "STRINGBAN", "fail_open": true,
            "offload": null, "state_dir": "/var/lib/stringban",
            "window_note": "on: conntrack drops the clients' segments outside the TCP window before the queue",
            "allowlist": [{"cidr": "127.0.0.0/8", "origin": "default: loopback"}],
            "rules": [{"name": "@example.com", "mode": "smtp", "action": "reject", "list": "spam"}],
            "lists": [{"name": "spam", "bans": 23_992, "new_last_minute": 120, "new_last_hour": 23_992,
                       "remembered": 0, "ttl_s": 86_400, "threshold": 3, "window_s": 600, "escalate": 2, "max_ttl_s": 2_592_000}],
            "top": [{"key": "198.18.59.132", "list": "spam", "rule_name": "@example.com", "hits": 103,
                     "expires_at": 1_000 + 86_000, "offences": 2}],
            "reload_failures": 1,
            "stats": {"window_dropped": 1_234, "packets": 1_780_220, "verdicts": {"accept": 1, "drop": 553_987, "reset": 23_992, "bypass": 0},
                      "store": {"healthy": true, "last_snapshot_age_s": 12, "errors": 0}, "kernel_queues": []},
        });
        let mut gateway = s.clone();
        gateway["hooks"] = serde_json::json!(["FORWARD"]);
        gateway["protect"] = serde_json::json!(["198.18.2.0/24"]);
        gateway["iptables_rules"] = serde_json::json!(true);
        gateway["stats"]["iptables_rules"] = serde_json::json!([{"line": 3, "rule": "-A FORWARD -p tcp -m tcp --dport 25", "packets": 1234}]);
        let text = status_text(&gateway, 1_000);
        assert!(
            text.contains("chain STRINGBAN from FORWARD protecting 198.18.2.0/24, fail-open"),
            "{text}"
        );
        assert!(
            text.contains("       1,234  line 3    -A FORWARD -p tcp -m tcp --dport 25\n"),
            "{text}"
        );
        let text = status_text(&s, 1_000);
        for want in [
            "running for 2h13m (pid 42)",
            "queues 0-1; kernel rules installed (iptables, chain STRINGBAN from INPUT, fail-open)",
            "/var/lib/stringban (healthy; last snapshot 12s ago)",
            "allowlist: 1 entries: 127.0.0.0/8",
            "\"@example.com\"",
            "23,992",
            "3/10m",
            "x2≤30d",
            "dropped 553,987",
            "reload failures 1",
            "window check: on: conntrack drops",
            "before the queue (1,234 dropped)",
            "198.18.59.132",
            "23h53m",
        ] {
            assert!(text.contains(want), "{want:?} not in\n{text}");
        }
    }
}
