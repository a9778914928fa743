//! The control socket's clients: list, count, add, del, flush, stats, reload, import-recent —
//! through the typed [`Client`]. A refused request is bad input (exit 2); an unreachable
//! socket or a broken answer exits 1.

use super::*;
use stringban::daemon::client::{BanLine, Client, ClientError, ResetOutcome};

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

pub(crate) fn run_count(p: ListPick) -> anyhow::Result<()> {
    println!("{}", client(&p.ctl).count(p.list).map_err(ctl_error)?);
    Ok(())
}

pub(crate) fn run_del(a: DelArgs) -> anyhow::Result<()> {
    let n = client(&a.pick.ctl)
        .del(a.addr, a.pick.list)
        .map_err(ctl_error)?;
    println!("removed {n}");
    Ok(())
}

pub(crate) fn run_flush(p: ListPick) -> anyhow::Result<()> {
    println!(
        "removed {}",
        client(&p.ctl).flush(p.list).map_err(ctl_error)?
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
    client(&c).reload().map_err(ctl_error)?;
    println!("reload requested");
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
                "{:<42} list {:<12} ttl {:>8}s  hits {:>8}  first seen {}",
                ban.key, ban.list, ban.ttl_left, ban.hits, ban.first_seen
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
