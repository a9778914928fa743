//! The control socket's clients: list, count, add, del, flush, stats, reload, import-recent.

use super::*;

/// Sends one request and returns the answer lines; an `ok: false` answer is bad input (exit 2).
pub(crate) fn ctl_request(
    ctl: &Ctl,
    req: &serde_json::Value,
) -> anyhow::Result<Vec<serde_json::Value>> {
    let answer = stringban::control::request(&ctl.control_socket, req)
        .map_err(|e| anyhow::anyhow!("control socket: {e}"))?;
    match answer.last() {
        Some(last) if last["ok"] == true => Ok(answer),
        Some(last) => Err(bad(last["error"].as_str().unwrap_or("error").to_string())),
        None => Err(anyhow::anyhow!("control socket: no answer")),
    }
}

/// `add`: bans, and with `--reset` resets the address's sessions; a reset that could not be
/// done is an error (exit 1) after the ban is in place.
pub(crate) fn run_add(a: AddArgs) -> anyhow::Result<()> {
    let mut req = json!({"cmd": "add", "addr": a.addr, "ttl": a.ttl, "list": a.pick.list});
    if a.reset {
        req["reset"] = json!(true);
    }
    let answer = ctl_request(&a.pick.ctl, &req)?;
    let Some(r) = answer.last() else {
        return Ok(());
    };
    let mut line = format!(
        "banned {} in list {} ({})",
        r["key"].as_str().unwrap_or(""),
        r["list"].as_str().unwrap_or(""),
        if r["new"] == true { "new" } else { "renewed" }
    );
    if a.reset {
        line.push_str(&format!("; {} sessions reset", r["reset"]["sessions"]));
    }
    println!("{line}");
    match r["reset"]["error"].as_str() {
        Some(e) => Err(anyhow::anyhow!("reset: {e}")),
        None => Ok(()),
    }
}

/// One request, its last answer line printed through `show`.
pub(crate) fn ctl_simple(
    ctl: &Ctl,
    req: serde_json::Value,
    show: impl Fn(&serde_json::Value) -> String,
) -> anyhow::Result<()> {
    let answer = ctl_request(ctl, &req)?;
    if let Some(last) = answer.last() {
        println!("{}", show(last));
    }
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
    let answer = ctl_request(
        &args.pick.ctl,
        &json!({"cmd": "list", "list": args.pick.list}),
    )?;
    let mut out = io::stdout().lock();
    for ban in &answer[..answer.len() - 1] {
        match format {
            "json" => writeln!(out, "{ban}")?,
            "xt-recent" => writeln!(out, "{}", stringban::control::xt_recent_line(ban))?,
            _ => writeln!(
                out,
                "{:<42} list {:<12} ttl {:>8}s  hits {:>8}  first seen {}",
                ban["key"].as_str().unwrap_or(""),
                ban["list"].as_str().unwrap_or(""),
                ban["ttl_left"],
                ban["hits"],
                ban["first_seen"]
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
    let mut new = 0;
    for a in &addrs {
        let answer = ctl_request(
            &args.pick.ctl,
            &json!({"cmd": "add", "addr": a.to_string(), "ttl": args.ttl, "list": args.pick.list}),
        )?;
        new += usize::from(answer.last().is_some_and(|r| r["new"] == true));
    }
    println!(
        "imported {} addresses from {} ({new} new bans)",
        addrs.len(),
        args.file.display()
    );
    Ok(())
}
