//! The `stringban` command: a thin shell over the library.
//!
//! Exit codes: 0 success; 2 bad command line, configuration or input file; 1 anything else.

use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use serde_json::json;

use stringban::Engine;
use stringban::attack::{self, GenConfig, GenError, Kind};
use stringban::config::{Config, Flags};
use stringban::daemon::{self, DaemonConfig, DaemonError};
use stringban::io::firewall::{self, Marks, RulesConfig};
use stringban::io::nfqueue::QueueConfig;
use stringban::replay::{self, Options, ReplayError};
use stringban::rule::Mode;

#[derive(Parser)]
#[command(
    name = "stringban",
    version,
    about = "Ban the senders of packets that carry a string (replaces -m string + -m recent)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Replay pcap/pcapng files through the engine, packet timestamps as the clock.
    Replay(ReplayArgs),
    /// Write a realistic capture of the spam flood, with its ground truth beside it.
    Gen(GenArgs),
    /// Check a configuration file and print its rules in iptables save form.
    Check(CheckArgs),
    /// Run the daemon: decide packets from NFQUEUE, ban, reset (root).
    Run(Box<RunArgs>),
    /// Print, install or remove the kernel rules that queue traffic to the daemon.
    Rules(RulesArgs),
    /// List the running daemon's bans (control socket).
    List(ListArgs),
    /// Count the running daemon's bans.
    Count(ListPick),
    /// Ban an address by hand (ADDR or ADDR/PREFIX, the list's prefix).
    Add(AddArgs),
    /// Lift a ban.
    Del(DelArgs),
    /// Lift every ban of a list (or of all lists).
    Flush(ListPick),
    /// The running daemon's counters, as JSON.
    Stats(Ctl),
    /// Make the running daemon re-read its configuration (as SIGHUP).
    Reload(Ctl),
    /// Ban every address of an xt_recent dump (/proc/net/xt_recent/NAME) in the running daemon.
    ImportRecent(ImportArgs),
    /// Read an iptables-save file or a shell script of iptables commands; --print shows each
    /// rule in `iptables -S` save form (or the line's error).
    Import(IptImportArgs),
}

#[derive(Args)]
struct IptImportArgs {
    /// The iptables-save file or shell script.
    #[arg(value_name = "FILE")]
    file: PathBuf,
    /// Print each parsed rule in save form, one per line.
    #[arg(long)]
    print: bool,
    /// Write the configuration here (default: standard output).
    #[arg(long, value_name = "CONFIG")]
    out: Option<PathBuf>,
}

/// Where the running daemon's control socket is.
#[derive(Args, Clone, Debug)]
struct Ctl {
    /// The daemon's control socket.
    #[arg(long, default_value = "/run/stringban.sock", value_name = "PATH")]
    control_socket: PathBuf,
}

#[derive(Args)]
struct ListPick {
    /// One list only (default: all).
    #[arg(long, value_name = "NAME")]
    list: Option<String>,
    #[command(flatten)]
    ctl: Ctl,
}

#[derive(Args)]
struct ListArgs {
    /// One JSON object per ban.
    #[arg(long)]
    json: bool,
    /// text (default) or xt-recent (the /proc/net/xt_recent line layout, times in Unix seconds).
    #[arg(long, value_name = "FORMAT")]
    format: Option<String>,
    #[command(flatten)]
    pick: ListPick,
}

#[derive(Args)]
struct AddArgs {
    #[arg(value_name = "ADDR[/PREFIX]")]
    addr: String,
    /// Ban length (default: the list's TTL).
    #[arg(long, value_name = "DURATION")]
    ttl: Option<String>,
    /// Also reset, at once and both ways, every live session from the address to a protected
    /// port (SOCK_DESTROY): for sessions the queue no longer sees, such as STARTTLS ones.
    #[arg(long)]
    reset: bool,
    #[command(flatten)]
    pick: ListPick,
}

#[derive(Args)]
struct DelArgs {
    #[arg(value_name = "ADDR")]
    addr: String,
    #[command(flatten)]
    pick: ListPick,
}

#[derive(Args)]
struct ImportArgs {
    /// A copy of /proc/net/xt_recent/NAME.
    #[arg(value_name = "FILE")]
    file: PathBuf,
    /// Ban length for the imported addresses (default: the list's TTL).
    #[arg(long, value_name = "DURATION")]
    ttl: Option<String>,
    #[command(flatten)]
    pick: ListPick,
}

/// Queue and mark settings shared by `run` and `rules`.
#[derive(Args, Clone, Debug)]
struct QueueArgs {
    /// NFQUEUE queue number, or first:last for one worker per queue (iptables --queue-balance).
    #[arg(long, default_value = "0", value_name = "N|FIRST:LAST")]
    queues: String,
    /// Drop protected traffic while no daemon is bound (default: it flows, --queue-bypass).
    #[arg(long)]
    fail_closed: bool,
    /// Mark that asks the rules to stop queueing a flow (saved into the connmark).
    #[arg(long, default_value = "0x10000", value_name = "MARK")]
    bypass_mark: String,
    /// Mark that asks the rules to REJECT --reject-with tcp-reset.
    #[arg(long, default_value = "0x20000", value_name = "MARK")]
    reset_mark: String,
    /// Bits of the packet mark stringban owns.
    #[arg(long, default_value = "0x30000", value_name = "MASK")]
    mark_mask: String,
    /// Who writes the rules: iptables, nft (needs the kernel's nft queue statement), or auto
    /// (iptables if installed, else nft where the kernel supports queue).
    #[arg(long, default_value = "auto", value_name = "auto|iptables|nft")]
    firewall: String,
}

#[derive(Args)]
struct RunArgs {
    #[command(flatten)]
    rules: RuleArgs,
    #[command(flatten)]
    queue: QueueArgs,
    /// Install the kernel rules at start and remove them at exit.
    #[arg(long)]
    install_rules: bool,
    /// Write the pid here once queues are bound and rules installed; refuse to start twice.
    #[arg(long, value_name = "FILE")]
    pidfile: Option<PathBuf>,
    /// Bytes of each packet copied to the daemon.
    #[arg(long, default_value_t = 0xffff, value_name = "BYTES")]
    copy_range: u32,
    /// Packets the kernel holds per queue before fail-open (or drop).
    #[arg(long, default_value_t = 65_536, value_name = "N")]
    queue_maxlen: u32,
    /// Netlink receive buffer; 0 = queue-maxlen × copy-range, capped at 256 MiB.
    #[arg(long, default_value_t = 0, value_name = "BYTES")]
    rcvbuf: usize,
    /// Do not ask for GSO packets unsegmented.
    #[arg(long)]
    no_gso: bool,
    /// Microseconds a worker keeps polling for packets before it sleeps (0: sleep at once).
    #[arg(long, default_value_t = 200, value_name = "US")]
    busy_poll_us: u64,
    /// Do not abort local sockets with SOCK_DESTROY; reset them with a crafted RST instead (the
    /// fallback used where the kernel lacks CONFIG_INET_DIAG_DESTROY).
    #[arg(long)]
    no_sock_destroy: bool,
    /// How often to log the one-line summary.
    #[arg(long, default_value = "60s", value_name = "DURATION")]
    summary_interval: String,
    /// Where bans are kept across restarts and crashes (snapshot + journal).
    #[arg(long, default_value = "/var/lib/stringban", value_name = "DIR")]
    state_dir: PathBuf,
    /// Keep bans in memory only (a restart starts empty).
    #[arg(long)]
    no_state: bool,
    /// How often the journal of new bans is fsync'd: a crash loses at most this last interval.
    #[arg(long, default_value = "100ms", value_name = "DURATION")]
    fsync_interval: String,
    /// How often the journal is folded into a fresh snapshot.
    #[arg(long, default_value = "10m", value_name = "DURATION")]
    snapshot_interval: String,
    /// The control socket (mode 0600) that `stringban list|count|add|del|flush|stats|reload` use.
    #[arg(long, default_value = "/run/stringban.sock", value_name = "PATH")]
    control_socket: PathBuf,
    /// No control socket.
    #[arg(long)]
    no_control: bool,
    /// Give this group (name or id) read-write access to the control socket (mode 0660): the
    /// MTA's group, so that its ACL can run `stringban add ADDR --reset`.
    #[arg(long, value_name = "GROUP")]
    control_group: Option<String>,
    /// Mirror bans into the ipsets stringban-v4/-v6 and drop their sources before the queue.
    #[arg(long)]
    offload: bool,
    /// Serve Prometheus metrics at this address (HOST:PORT; --metrics alone: 127.0.0.1:9325).
    #[arg(long, value_name = "ADDR", num_args = 0..=1, default_missing_value = "127.0.0.1:9325")]
    metrics: Option<String>,
    /// error, warn, info or debug.
    #[arg(long, default_value = "info", value_name = "LEVEL")]
    log_level: String,
}

#[derive(Args)]
struct RulesArgs {
    /// print, install or remove.
    #[arg(value_name = "ACTION")]
    action: String,
    /// Take the protected ports from this configuration.
    #[arg(long, short = 'c', value_name = "FILE")]
    config: Option<PathBuf>,
    /// Protected TCP destination port(s) (default 25).
    #[arg(long, value_name = "PORT", value_delimiter = ',')]
    port: Vec<u16>,
    /// The rules' matching mode (without --config): stream and smtp add the bypass rules, smtp
    /// also queues the server's replies.
    #[arg(long, value_name = "MODE", default_value = "packet")]
    mode: String,
    #[command(flatten)]
    queue: QueueArgs,
}

/// Rule flags shared by the commands that run the engine.
#[derive(Args, Clone, Debug, Default)]
struct RuleArgs {
    /// Configuration file (TOML); flags below add to it.
    #[arg(long, short = 'c', value_name = "FILE")]
    config: Option<PathBuf>,
    /// Ban sources of packets that contain this string (repeatable).
    #[arg(long, value_name = "STRING")]
    string: Vec<String>,
    /// Like --string, in iptables --hex-string syntax, e.g. '|40|example.com' (repeatable).
    #[arg(long, value_name = "HEX")]
    hex_string: Vec<String>,
    /// Match case-insensitively (the kernel's Latin-1 table).
    #[arg(long)]
    icase: bool,
    /// Match packets that do NOT contain the string (iptables '!').
    #[arg(long)]
    invert: bool,
    /// bm or kmp (printed only: both match the same on linear buffers).
    #[arg(long, value_name = "ALGO")]
    algo: Option<String>,
    /// First offset searched, counted from the IP header.
    #[arg(long, value_name = "N")]
    from: Option<u16>,
    /// End of the searched range (exclusive), counted from the IP header.
    #[arg(long, value_name = "N")]
    to: Option<u16>,
    /// Protected TCP destination port(s), overriding the configuration (default 25).
    #[arg(long, value_name = "PORT", value_delimiter = ',')]
    port: Vec<u16>,
    /// How long a ban lasts, e.g. 24h, 90m, 3600 (first list).
    #[arg(long, value_name = "DURATION")]
    ttl: Option<String>,
    /// reject (drop + reset), drop, or log (accept this packet, ban the source).
    #[arg(long, value_name = "ACTION")]
    action: Option<String>,
    /// Matching mode: packet (exact xt_string), stream (the TCP byte stream, across segments) or
    /// smtp (only in MAIL FROM / RCPT TO commands, any case; bodies never match).
    #[arg(long, value_name = "MODE")]
    mode: Option<String>,
    /// Most bans the first list holds before evicting the least recently seen.
    #[arg(long, value_name = "N")]
    capacity: Option<u64>,
    /// Ban senders of mail to this recipient domain (an smtp-mode rule; repeatable).
    #[arg(long, value_name = "DOMAIN")]
    rcpt_domain: Vec<String>,
    /// --rcpt-domain also matches its subdomains.
    #[arg(long)]
    subdomains: bool,
    /// Never let a flow bypass inspection (follow every session to its end).
    #[arg(long)]
    no_bypass: bool,
    /// Let a flow bypass inspection after this many client bytes (0: no budget).
    #[arg(long, value_name = "BYTES")]
    bypass_after: Option<u64>,
    /// Most flows tracked per worker, least recently seen evicted [default: 65536].
    #[arg(long, value_name = "N")]
    max_flows: Option<u64>,
    /// Forget a flow unseen this long [default: 300s].
    #[arg(long, value_name = "DURATION")]
    flow_idle: Option<String>,
    /// Run the rules of an iptables-save file or iptables shell script instead (-m string,
    /// -m recent, multiport, comment; the filter table's INPUT chain).
    #[arg(long, value_name = "FILE")]
    iptables: Option<PathBuf>,
    /// With --iptables: bound each recent table to N entries, evicting as the kernel's
    /// ip_list_tot (default: unbounded).
    #[arg(long, value_name = "N")]
    compat_list_tot: Option<u64>,
}

#[derive(Args)]
struct ReplayArgs {
    #[command(flatten)]
    rules: RuleArgs,
    /// Print one JSON object instead of the summary.
    #[arg(long)]
    json: bool,
    /// Write one TSV line per packet: index, src, sport, dst, dport, verdict, reason.
    #[arg(long, value_name = "FILE")]
    verdicts: Option<PathBuf>,
    /// No progress line on stderr.
    #[arg(long)]
    quiet: bool,
    /// Capture files (pcap or pcapng).
    #[arg(required = true, value_name = "FILE")]
    files: Vec<PathBuf>,
}

#[derive(Args)]
struct GenArgs {
    /// Capture file to write (pcap, Ethernet).
    #[arg(long, short = 'o', value_name = "FILE")]
    out: PathBuf,
    /// Ground-truth file; default: the capture's name with .truth.tsv.
    #[arg(long, value_name = "FILE")]
    truth: Option<PathBuf>,
    #[arg(long, default_value_t = 100_000)]
    sessions: u64,
    #[arg(long, default_value_t = 31_000)]
    sources: u64,
    #[arg(long, default_value = "example.com")]
    spam_domain: String,
    /// Share of sessions that are legitimate mail (0 to 1).
    #[arg(long, default_value_t = 0.1)]
    legit_ratio: f64,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// New sessions per second, on average.
    #[arg(long, default_value_t = 50.0)]
    rate: f64,
}

#[derive(Args)]
struct CheckArgs {
    #[command(flatten)]
    rules: RuleArgs,
}

/// An error that exits with code 2 (bad input), as opposed to 1.
struct BadInput(String);

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Replay(args) => run_replay(args),
        Command::Gen(args) => run_gen(args),
        Command::Check(args) => run_check(args),
        Command::Run(args) => run_daemon(*args),
        Command::Rules(args) => run_rules(args),
        Command::List(args) => run_list(args),
        Command::Count(p) => ctl_simple(&p.ctl, json!({"cmd": "count", "list": p.list}), |a| {
            a["count"].to_string()
        }),
        Command::Add(a) => run_add(a),
        Command::Del(a) => ctl_simple(
            &a.pick.ctl,
            json!({"cmd": "del", "addr": a.addr, "list": a.pick.list}),
            |r| format!("removed {}", r["removed"]),
        ),
        Command::Flush(p) => ctl_simple(&p.ctl, json!({"cmd": "flush", "list": p.list}), |r| {
            format!("removed {}", r["removed"])
        }),
        Command::Stats(c) => ctl_simple(&c, json!({"cmd": "stats"}), |r| {
            serde_json::to_string_pretty(&r["stats"]).unwrap_or_default()
        }),
        Command::Reload(c) => ctl_simple(&c, json!({"cmd": "reload"}), |_| {
            "reload requested".to_string()
        }),
        Command::ImportRecent(a) => run_import_recent(a),
        Command::Import(a) => run_import(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => match e.downcast_ref::<BadInput>() {
            Some(BadInput(msg)) => {
                eprintln!("stringban: {msg}");
                ExitCode::from(2)
            }
            None => {
                eprintln!("stringban: {e:#}");
                ExitCode::from(1)
            }
        },
    }
}

impl std::fmt::Debug for BadInput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::fmt::Display for BadInput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for BadInput {}

fn bad(msg: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(BadInput(msg.into()))
}

fn load_config(args: &RuleArgs) -> anyhow::Result<Config> {
    let text = match &args.config {
        Some(path) => {
            Some(fs::read_to_string(path).map_err(|e| bad(format!("{}: {e}", path.display())))?)
        }
        None => None,
    };
    let flags = Flags {
        string: args.string.clone(),
        hex_string: args.hex_string.clone(),
        icase: args.icase,
        invert: args.invert,
        algo: args.algo.clone(),
        from: args.from,
        to: args.to,
        ports: args.port.clone(),
        ttl: args.ttl.clone(),
        action: args.action.clone(),
        mode: args.mode.clone(),
        capacity: args.capacity,
        rcpt_domain: args.rcpt_domain.clone(),
        subdomains: args.subdomains,
        no_bypass: args.no_bypass,
        bypass_after: args.bypass_after,
        max_flows: args.max_flows,
        flow_idle: args.flow_idle.clone(),
        iptables: match &args.iptables {
            Some(path) => Some((
                path.display().to_string(),
                fs::read_to_string(path).map_err(|e| bad(format!("{}: {e}", path.display())))?,
            )),
            None => None,
        },
        compat_list_tot: args.compat_list_tot,
    };
    let name = args.config.as_ref().map(|p| p.display().to_string());
    let file = name.as_deref().zip(text.as_deref());
    Config::build(file, &flags).map_err(|e| bad(e.to_string()))
}

fn run_replay(args: ReplayArgs) -> anyhow::Result<()> {
    let config = load_config(&args.rules)?;
    let mut engine = Engine::new(&config);
    let verdicts: Option<Box<dyn Write>> = match &args.verdicts {
        Some(path) => {
            let f = File::create(path).map_err(|e| bad(format!("{}: {e}", path.display())))?;
            Some(Box::new(BufWriter::new(f)))
        }
        None => None,
    };
    let options = Options {
        verdicts,
        progress: !args.quiet,
    };
    let report = replay::replay(&mut engine, &args.files, options).map_err(|e| match e {
        ReplayError::Verdicts { .. } => anyhow::Error::new(e),
        other => bad(other.to_string()),
    })?;
    let mut out = io::stdout().lock();
    if args.json {
        serde_json::to_writer(&mut out, &report.to_json()).context("writing JSON")?;
        writeln!(out)?;
    } else {
        writeln!(out, "{report}")?;
    }
    for f in &report.files {
        if let Some(t) = &f.truncated {
            eprintln!("stringban: warning: {}: {t}", f.path.display());
        }
    }
    Ok(())
}

fn run_gen(args: GenArgs) -> anyhow::Result<()> {
    let cfg = GenConfig {
        sessions: args.sessions,
        sources: args.sources,
        spam_domain: args.spam_domain,
        legit_ratio: args.legit_ratio,
        seed: args.seed,
        rate: args.rate,
        start: GenConfig::default().start,
    };
    let truth_path = args.truth.unwrap_or_else(|| truth_path(&args.out));
    let file = File::create(&args.out).map_err(|e| bad(format!("{}: {e}", args.out.display())))?;
    let (truth, summary) = match attack::generate(&cfg, BufWriter::with_capacity(1 << 20, file)) {
        Ok(v) => v,
        Err(GenError::BadConfig {
            key,
            value,
            problem,
        }) => {
            let _ = fs::remove_file(&args.out);
            return Err(bad(format!("{key} = {value}: {problem}")));
        }
        Err(e) => {
            return Err(anyhow::Error::new(e).context(format!("writing {}", args.out.display())));
        }
    };
    let tf =
        File::create(&truth_path).with_context(|| format!("creating {}", truth_path.display()))?;
    let mut tw = BufWriter::new(tf);
    truth
        .write(&cfg, &mut tw)
        .and_then(|()| tw.flush())
        .with_context(|| format!("writing {}", truth_path.display()))?;
    let expected = truth.expected(32, 64);
    let mut out = io::stdout().lock();
    writeln!(
        out,
        "wrote {} ({} packets, {} bytes, {:.0} s of traffic from {} sources)",
        args.out.display(),
        summary.packets,
        summary.bytes,
        summary.duration.micros() as f64 / 1e6,
        summary.sources
    )?;
    writeln!(
        out,
        "wrote {} (ground truth, one row per session)",
        truth_path.display()
    )?;
    write!(out, "sessions:")?;
    for (kind, count) in &summary.sessions_by_kind {
        write!(out, " {} {count}", kind.name())?;
    }
    writeln!(out)?;
    writeln!(
        out,
        "packet mode, --string @{} --action reject, TTL longer than the capture, expects: accept {} drop {} reset {} ({} sources banned)",
        cfg.spam_domain,
        expected.accept,
        expected.drop,
        expected.reset,
        expected.convicted.len()
    )?;
    let missed = |k: Kind| expected.missed_spam.get(&k).copied().unwrap_or(0);
    writeln!(
        out,
        "  spam sessions it misses: {} upper-case, {} split; legit sessions it hurts: {} (body mentions the domain)",
        missed(Kind::SpamUpper),
        missed(Kind::SpamSplit),
        expected.hurt_legit.values().sum::<u64>()
    )?;
    for (name, oracle) in [
        ("stream mode --icase", attack::Oracle::StreamIcase),
        ("smtp mode", attack::Oracle::Smtp),
    ] {
        let e = truth.expected_for(oracle, 32, 64);
        writeln!(
            out,
            "{name} expects: accept {} bypass {} drop {} reset {} ({} sources banned; spam sessions missed {}, legit sessions hurt {})",
            e.accept,
            e.bypass,
            e.drop,
            e.reset,
            e.convicted.len(),
            e.missed_spam.values().sum::<u64>(),
            e.hurt_legit.values().sum::<u64>()
        )?;
    }
    Ok(())
}

/// `attack.pcap` → `attack.truth.tsv`.
fn truth_path(capture: &Path) -> PathBuf {
    capture.with_extension("truth.tsv")
}

fn run_check(args: CheckArgs) -> anyhow::Result<()> {
    let config = load_config(&args.rules)?;
    let mut out = io::stdout().lock();
    writeln!(
        out,
        "ports: {}",
        if config.engine.ports.is_any() {
            "any".to_string()
        } else {
            config.engine.ports.to_string()
        }
    )?;
    for l in &config.lists {
        writeln!(
            out,
            "list {:?}: ttl {} refresh_on_hit {} capacity {} prefix /{} /{}",
            l.name, l.ttl, l.refresh_on_hit, l.capacity, l.prefix_v4, l.prefix_v6
        )?;
    }
    if let Some(ipt) = &config.iptables {
        for (family, table) in ipt.ruleset.tables() {
            for line in ipt.ruleset.save(family, &table) {
                writeln!(out, "iptables ({family:?}, {table}): {line}")?;
            }
        }
        if let Some(n) = ipt.list_tot {
            writeln!(
                out,
                "recent tables bounded to {n} entries (--compat-list-tot)"
            )?;
        }
    }
    for (i, r) in config.rules.iter().enumerate() {
        let list = r.ban.map_or("(no ban)".to_string(), |id| {
            format!("list {:?}", config.lists[usize::from(id)].name)
        });
        let mut filters = format!("-p {}", r.protocol.name());
        if !r.dports.is_any() {
            filters.push_str(&format!(" --dports {}", r.dports));
        }
        if !r.sports.is_any() {
            filters.push_str(&format!(" --sports {}", r.sports));
        }
        let what = match &r.rcpt_domain {
            Some(d) => format!(
                "RCPT TO domain {}{}",
                String::from_utf8_lossy(&d.name),
                if d.subdomains {
                    " and its subdomains"
                } else {
                    ""
                }
            ),
            None => r.matcher.to_string(),
        };
        writeln!(
            out,
            "rule {i} {:?}: {filters} {what} -> {} {list}, mode {}",
            r.name,
            r.action.name(),
            r.mode.name()
        )?;
    }
    Ok(())
}

fn parse_u32(flag: &str, text: &str) -> anyhow::Result<u32> {
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

fn parse_queues(text: &str) -> anyhow::Result<(u16, u16)> {
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

fn marks(q: &QueueArgs) -> anyhow::Result<Marks> {
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
fn std_duration(flag: &str, text: &str, min_micros: u64) -> anyhow::Result<std::time::Duration> {
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

/// Sends one request and returns the answer lines; an `ok: false` answer is bad input (exit 2).
fn ctl_request(ctl: &Ctl, req: &serde_json::Value) -> anyhow::Result<Vec<serde_json::Value>> {
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
fn run_add(a: AddArgs) -> anyhow::Result<()> {
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
fn ctl_simple(
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

fn run_list(args: ListArgs) -> anyhow::Result<()> {
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

fn run_import(args: IptImportArgs) -> anyhow::Result<()> {
    let text =
        fs::read_to_string(&args.file).map_err(|e| bad(format!("{}: {e}", args.file.display())))?;
    let set = stringban::iptables::parse(&text)
        .map_err(|e| bad(format!("{}:{e}", args.file.display())))?;
    if !args.print {
        let toml = format!(
            "# stringban configuration imported by `stringban import {}`.\n# The rules run as the kernel runs them (README: Running iptables rules):\n# stringban run --config THIS_FILE --install-rules\n[iptables]\nrules = '''\n{}'''\n",
            args.file.display(),
            set.script()
        );
        // Check what was written reads back to the same rules.
        let back = Config::from_toml("imported", &toml).map_err(|e| anyhow::anyhow!("{e}"))?;
        let same = back.iptables.as_ref().is_some_and(|i| {
            set.tables()
                .iter()
                .all(|(f, t)| i.ruleset.save(*f, t) == set.save(*f, t))
        });
        if !same {
            return Err(anyhow::anyhow!(
                "the written configuration does not read back to the same rules"
            ));
        }
        match &args.out {
            Some(path) => {
                fs::write(path, &toml).with_context(|| format!("writing {}", path.display()))?
            }
            None => print!("{toml}"),
        }
        return Ok(());
    }
    let mut out = io::stdout().lock();
    let tables = set.tables();
    for (family, table) in &tables {
        let (family, table) = (*family, table.as_str());
        // One table: exactly `iptables -S`; several: each after a header line.
        if tables.len() > 1 {
            let tool = match family {
                stringban::iptables::Family::V4 => "iptables",
                stringban::iptables::Family::V6 => "ip6tables",
            };
            writeln!(out, "# {tool} -t {table} -S")?;
        }
        for line in set.save(family, table) {
            writeln!(out, "{line}")?;
        }
    }
    Ok(())
}

fn run_import_recent(args: ImportArgs) -> anyhow::Result<()> {
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

/// `--firewall`: None for auto.
fn backend(q: &QueueArgs) -> anyhow::Result<Option<firewall::Backend>> {
    firewall::Backend::parse(&q.firewall)
        .map_err(|e| bad(format!("command line: --firewall = {}: {e}", q.firewall)))
}

fn run_daemon(args: RunArgs) -> anyhow::Result<()> {
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
    tracing_subscriber::fmt()
        .with_writer(io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&io::stderr()))
        .with_max_level(level)
        .with_target(false)
        .init();
    let config = load_config(&args.rules)?;
    let summary_every = stringban::time::parse_duration(&args.summary_interval).map_err(|e| {
        bad(format!(
            "command line: --summary-interval = {}: {e}",
            args.summary_interval
        ))
    })?;
    let queues = parse_queues(&args.queue.queues)?;
    let daemon = DaemonConfig {
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
        offload: args.offload,
    };
    let rule_args = args.rules.clone();
    let reload: daemon::Reload =
        Box::new(move || load_config(&rule_args).map_err(|e| e.to_string()));
    daemon::run(config, daemon, reload).map_err(|e| match e {
        DaemonError::Start(m) => bad(m),
        DaemonError::Failed(m) => anyhow::anyhow!(m),
    })
}

fn run_rules(args: RulesArgs) -> anyhow::Result<()> {
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
        args.port.clone()
    } else if let Some(config) = &file {
        config.engine.ports.singles()
    } else {
        vec![25]
    };
    let (bypass, replies, skip_pure_acks) = match &file {
        Some(config) => daemon::rule_needs(config),
        None => match Mode::parse(&args.mode) {
            Some(m) => (m.is_flow(), m == Mode::Smtp, m.is_flow()),
            None => {
                return Err(bad(format!(
                    "command line: --mode = {}: expected packet, stream or smtp",
                    args.mode
                )));
            }
        },
    };
    let requested = backend(&args.queue)?;
    let mut cfg = RulesConfig {
        fail_open: !args.queue.fail_closed,
        marks: marks(&args.queue)?,
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

fn rules_apply(action: &str, cfg: &RulesConfig) -> anyhow::Result<()> {
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
