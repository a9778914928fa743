//! The daemon and its rules: run, rules print|install|remove.

use super::*;

pub(crate) fn parse_u32(flag: &str, text: &str) -> anyhow::Result<u32> {
    let parsed = match text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        Some(hex) => u32::from_str_radix(hex, 16),
        None => text.parse(),
    };
    parsed.map_err(|_| {
        bad(format!(
            "command line: {flag} = {text}: expected a number such as 0x10000"
        ))
    })
}

pub(crate) fn parse_queues(text: &str) -> anyhow::Result<(u16, u16)> {
    let err = || {
        bad(format!(
            "command line: --queues = {text}: expected N or FIRST:LAST (0 to 65535)"
        ))
    };
    let (a, b) = match text.split_once(':') {
        Some((a, b)) => (a.parse().map_err(|_| err())?, b.parse().map_err(|_| err())?),
        None => {
            let n: u16 = text.parse().map_err(|_| err())?;
            (n, n)
        }
    };
    if a > b || b - a >= 64 {
        return Err(err());
    }
    Ok((a, b))
}

/// `--chain` and `--protect`: where traffic is queued, and which networks behind a gateway are
/// protected. With imported iptables rules the chains default to the built-in ones the file
/// has rules in, and a chain asked for must be one of them.
pub(crate) fn hooks(
    q: &QueueArgs,
    config: Option<&stringban::Config>,
) -> anyhow::Result<(Vec<Hook>, Vec<Cidr>)> {
    let mut hooks = Vec::new();
    for c in &q.chain {
        let h = Hook::parse(c).ok_or_else(|| {
            bad(format!(
                "command line: --chain = {c}: expected input or forward"
            ))
        })?;
        if !hooks.contains(&h) {
            hooks.push(h);
        }
    }
    if let Some(ipt) = config.and_then(|c| c.iptables.as_ref()) {
        let has = ipt.chains.hooks();
        if has.is_empty() {
            return Err(bad(
                "--iptables: the file has no rules in the filter table's INPUT or FORWARD chain: nothing to run",
            ));
        }
        if let Some(h) = hooks.iter().find(|h| !has.contains(h)) {
            return Err(bad(format!(
                "command line: --chain = {}: the iptables rules have no {} rule",
                h.chain().to_ascii_lowercase(),
                h.chain()
            )));
        }
        if hooks.is_empty() {
            hooks = has;
        }
    }
    if hooks.is_empty() {
        hooks.push(Hook::Input);
    }
    let mut protect = Vec::new();
    for p in &q.protect {
        protect.push(
            p.parse::<Cidr>()
                .map_err(|e| bad(format!("command line: --protect = {p}: {e}")))?,
        );
    }
    if !protect.is_empty() && !hooks.contains(&Hook::Forward) {
        return Err(bad(
            "command line: --protect applies to --chain forward (the servers behind a gateway)",
        ));
    }
    Ok((hooks, protect))
}

pub(crate) fn marks(q: &QueueArgs) -> anyhow::Result<Marks> {
    let m = Marks {
        bypass: parse_u32("--bypass-mark", &q.bypass_mark)?,
        reset: parse_u32("--reset-mark", &q.reset_mark)?,
        mask: parse_u32("--mark-mask", &q.mark_mask)?,
    };
    if m.bypass == 0
        || m.reset == 0
        || m.bypass == m.reset
        || m.bypass & !m.mask != 0
        || m.reset & !m.mask != 0
    {
        return Err(bad(format!(
            "command line: marks bypass {:#x} reset {:#x} mask {:#x}: need two different non-zero marks inside the mask",
            m.bypass, m.reset, m.mask
        )));
    }
    Ok(m)
}

/// A duration flag as a std duration, at least `min_micros`.
pub(crate) fn std_duration(
    flag: &str,
    text: &str,
    min_micros: u64,
) -> anyhow::Result<std::time::Duration> {
    let d = stringban::time::parse_duration(text)
        .map_err(|e| bad(format!("command line: {flag} = {text}: {e}")))?;
    if d.micros() < min_micros {
        return Err(bad(format!(
            "command line: {flag} = {text}: at least {} ms",
            min_micros / 1000
        )));
    }
    Ok(std::time::Duration::from_micros(d.micros()))
}

/// `--firewall`: None for auto.
pub(crate) fn backend(q: &QueueArgs) -> anyhow::Result<Option<firewall::Backend>> {
    firewall::Backend::parse(&q.firewall)
        .map_err(|e| bad(format!("command line: --firewall = {}: {e}", q.firewall)))
}

pub(crate) fn run_daemon(args: RunArgs) -> anyhow::Result<()> {
    let level = match args.log_level.as_str() {
        "error" => tracing::Level::ERROR,
        "warn" => tracing::Level::WARN,
        "info" => tracing::Level::INFO,
        "debug" => tracing::Level::DEBUG,
        other => {
            return Err(bad(format!(
                "command line: --log-level = {other}: expected error, warn, info or debug"
            )));
        }
    };
    // Every line escaped (a field may hold a stranger's text), so no colours: their escape
    // sequences would be escaped too.
    tracing_subscriber::fmt()
        .with_writer(|| stringban::daemon::printable::Escaped(io::stderr()))
        .with_ansi(false)
        .with_max_level(level)
        .with_target(false)
        .init();
    let config = load_config(&args.rules, true)?;
    let summary_every = stringban::time::parse_duration(&args.summary_interval).map_err(|e| {
        bad(format!(
            "command line: --summary-interval = {}: {e}",
            args.summary_interval
        ))
    })?;
    let queues = parse_queues(&args.queue.queues)?;
    let (hooks, protect) = hooks(&args.queue, Some(&config))?;
    let daemon = DaemonConfig {
        hooks,
        protect,
        queues,
        queue: QueueConfig {
            copy_range: args.copy_range,
            maxlen: args.queue_maxlen,
            fail_open: true,
            gso: !args.no_gso,
            rcvbuf: args.rcvbuf,
            busy_poll_us: args.busy_poll_us.min(100_000),
            ..QueueConfig::new(queues.0)
        },
        install_rules: args.install_rules,
        fail_open: !args.queue.fail_closed,
        marks: marks(&args.queue)?,
        firewall: backend(&args.queue)?,
        window_check: !args.queue.no_window_check,
        pidfile: args.pidfile.clone(),
        summary_every: std::time::Duration::from_micros(summary_every.micros().max(1_000_000)),
        sock_destroy: !args.no_sock_destroy,
        state_dir: (!args.no_state).then(|| args.state_dir.clone()),
        fsync_every: std_duration("--fsync-interval", &args.fsync_interval, 1_000)?,
        snapshot_every: std_duration("--snapshot-interval", &args.snapshot_interval, 1_000_000)?,
        control_socket: (!args.no_control).then(|| args.control_socket.clone()),
        control_group: match &args.control_group {
            Some(g) => Some(
                stringban::control::group_id(
                    g,
                    &std::fs::read_to_string("/etc/group").unwrap_or_default(),
                )
                .map_err(|e| bad(format!("command line: --control-group {g}: {e}")))?,
            ),
            None => None,
        },
        metrics: args.metrics.clone(),
        offload: match (args.offload, args.no_offload) {
            (true, _) => Some(true),
            (_, true) => Some(false),
            _ => None,
        },
        share: share_config(&args, &config)?,
    };
    let rule_args = args.rules.clone();
    let reload: sbdaemon::Reload =
        Box::new(move || load_config(&rule_args, true).map_err(|e| format!("{e:#}").into()));
    sbdaemon::run(config, daemon, reload).map_err(|e| {
        if e.at_start {
            bad(e.to_string())
        } else {
            anyhow::Error::new(e)
        }
    })
}

/// The fleet: the file's `[share]` section, overridden by the `--share*` flags; None without a
/// URL.
fn share_config(
    args: &RunArgs,
    config: &stringban::Config,
) -> anyhow::Result<Option<sbdaemon::share::ShareConfig>> {
    use stringban::config::{check_share_name, check_share_url, redact_url};
    let file = config.share.clone().unwrap_or_default();
    let Some(url) = args.share.clone().or(file.url.clone()) else {
        if args.share_ca.is_some()
            || args.share_key.is_some()
            || args.share_fleet.is_some()
            || args.share_node.is_some()
            || !args.share_lists.is_empty()
        {
            return Err(bad(
                "command line: --share-ca/--share-key/--share-fleet/--share-node/--share-lists need --share URL (or [share] url in the file)",
            ));
        }
        return Ok(None);
    };
    if args.share.is_some() {
        check_share_url(&url)
            .map_err(|e| bad(format!("command line: --share = {}: {e}", redact_url(&url))))?;
    }
    let name = |flag: &str, v: Option<String>| -> anyhow::Result<Option<String>> {
        if let Some(v) = &v {
            check_share_name(v).map_err(|e| bad(format!("command line: {flag} = {v}: {e}")))?;
        }
        Ok(v)
    };
    let fleet = name("--share-fleet", args.share_fleet.clone())?
        .or(file.fleet)
        .unwrap_or_else(|| "stringban".into());
    let given = name("--share-node", args.share_node.clone())?.or(file.node);
    let node_given = given.is_some();
    let node = given.unwrap_or_else(sbdaemon::share::host_name);
    let lists = if args.share_lists.is_empty() {
        file.lists.unwrap_or_default()
    } else {
        for l in &args.share_lists {
            if !config.lists.iter().any(|c| c.name == *l) {
                return Err(bad(format!(
                    "command line: --share-lists = {l}: no such list"
                )));
            }
        }
        args.share_lists.clone()
    };
    let key = match args
        .share_key
        .clone()
        .or(file.key_file.map(std::path::PathBuf::from))
    {
        Some(path) => Some(read_fleet_key(&path)?),
        None => None,
    };
    Ok(Some(sbdaemon::share::ShareConfig {
        key,
        url,
        ca_file: args
            .share_ca
            .clone()
            .or(file.ca_file.map(std::path::PathBuf::from)),
        fleet,
        node,
        node_given,
        lists,
        maxlen: file.maxlen.unwrap_or(1_000_000),
    }))
}

/// The fleet key file: owned by no one else than its reader's kind (no access for others),
/// one key per line. The error names the file, never a key.
fn read_fleet_key(path: &std::path::Path) -> anyhow::Result<sbdaemon::share::wire::FleetKey> {
    use std::os::unix::fs::MetadataExt;
    let shown = path.display();
    let meta = fs::metadata(path).map_err(|e| bad(format!("{shown}: the fleet key: {e}")))?;
    if meta.mode() & 0o007 != 0 {
        return Err(bad(format!(
            "{shown}: the fleet key is readable or writable by others (mode {:o}): chmod 600 it",
            meta.mode() & 0o777
        )));
    }
    let text = fs::read_to_string(path).map_err(|e| bad(format!("{shown}: the fleet key: {e}")))?;
    sbdaemon::share::wire::FleetKey::parse(&text).map_err(|e| bad(format!("{shown}: {e}")))
}

pub(crate) fn run_rules(args: RulesArgs) -> anyhow::Result<()> {
    let file = match &args.config {
        Some(path) => {
            let text =
                fs::read_to_string(path).map_err(|e| bad(format!("{}: {e}", path.display())))?;
            Some(
                Config::from_toml(&path.display().to_string(), &text)
                    .map_err(|e| bad(e.to_string()))?,
            )
        }
        None => None,
    };
    let ports = if !args.port.is_empty() {
        if args.port.contains(&0) {
            return Err(bad("command line: --port = 0: ports are 1-65535"));
        }
        args.port.clone()
    } else if let Some(config) = &file {
        config.engine.ports.singles()
    } else {
        vec![25]
    };
    let (bypass, replies, skip_pure_acks) = match &file {
        Some(config) => sbdaemon::rule_needs(config),
        None => match Mode::parse(&args.mode) {
            Some(m) => (m.is_flow(), m.is_flow(), m.is_flow()),
            None => {
                return Err(bad(format!(
                    "command line: --mode = {}: expected packet, stream or smtp",
                    args.mode
                )));
            }
        },
    };
    let requested = backend(&args.queue)?;
    let (hooks, protect) = hooks(&args.queue, file.as_ref())?;
    // As the daemon installs them: the window check where only INPUT is queued (the printed
    // rules cannot probe the kernel; the daemon leaves the rule out where it lacks conntrack).
    let window_check = !args.queue.no_window_check && hooks == [stringban::verdict::Hook::Input];
    let mut cfg = RulesConfig {
        hooks,
        protect,
        fail_open: !args.queue.fail_closed,
        marks: marks(&args.queue)?,
        window_check,
        bypass,
        replies,
        skip_pure_acks,
        ..RulesConfig::new(ports, parse_queues(&args.queue.queues)?)
    };
    match args.action.as_str() {
        "print" => {
            let mut out = io::stdout().lock();
            if requested == Some(firewall::Backend::Nft) {
                write!(out, "{}", firewall::nft_ruleset(&cfg))?;
            } else {
                write!(out, "{}", firewall::script(&cfg, "iptables"))?;
                write!(out, "{}", firewall::script(&cfg, "ip6tables"))?;
            }
            Ok(())
        }
        "install" | "remove" => {
            cfg.backend = match (args.action.as_str(), requested) {
                // Removing needs only the tool, not the kernel's queue support.
                ("remove", Some(b)) => b,
                _ => firewall::choose(requested).map_err(|e| anyhow::anyhow!(e))?,
            };
            rules_apply(&args.action, &cfg)
        }
        other => Err(bad(format!(
            "command line: rules {other}: expected print, install or remove"
        ))),
    }
}

pub(crate) fn rules_apply(action: &str, cfg: &RulesConfig) -> anyhow::Result<()> {
    match action {
        "install" => {
            let tools = firewall::install(cfg).map_err(|e| anyhow::anyhow!(e))?;
            println!("installed chain {} with {}", cfg.chain, tools.join(" and "));
            Ok(())
        }
        _ => {
            firewall::remove(cfg).map_err(|e| anyhow::anyhow!(e))?;
            println!("removed chain {} ({})", cfg.chain, cfg.backend);
            Ok(())
        }
    }
}
