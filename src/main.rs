//! The `stringban` command: a thin shell over the library.
//!
//! Exit codes: 0 success; 2 bad command line, configuration or input file; 1 anything else.

use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};

use stringban::Engine;
use stringban::attack::{self, GenConfig, GenError, Kind};
use stringban::config::{Config, Flags};
use stringban::replay::{self, Options, ReplayError};

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
    /// Matching mode: packet (exact xt_string).
    #[arg(long, value_name = "MODE")]
    mode: Option<String>,
    /// Most bans the first list holds before evicting the least recently seen.
    #[arg(long, value_name = "N")]
    capacity: Option<u64>,
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
        writeln!(
            out,
            "rule {i} {:?}: {filters} {} -> {} {list}, mode {}",
            r.name,
            r.matcher,
            r.action.name(),
            r.mode.name()
        )?;
    }
    Ok(())
}
