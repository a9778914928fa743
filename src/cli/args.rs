//! The command line, as clap parses it.

use super::*;

#[derive(Parser)]
#[command(
    name = "stringban",
    version,
    about = "Ban the senders of packets that carry a string (replaces -m string + -m recent)"
)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Subcommand)]
pub(crate) enum Command {
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
    Count(CountArgs),
    /// One screen on the running daemon: uptime, queues and rules, bans per list, the top
    /// sources, drops and errors.
    Status(StatusArgs),
    /// Ban an address by hand (ADDR or ADDR/PREFIX, the list's prefix).
    Add(AddArgs),
    /// Lift a ban.
    Del(DelArgs),
    /// Lift every ban of a list (or of all lists).
    Flush(FlushArgs),
    /// The running daemon's counters, as JSON.
    Stats(Ctl),
    /// Make the running daemon re-read its configuration (as SIGHUP) and say how it went
    /// (exit 2 when it was refused).
    Reload(Ctl),
    /// Ban every address of an xt_recent dump (/proc/net/xt_recent/NAME) in the running daemon.
    ImportRecent(ImportArgs),
    /// Read an iptables-save file or a shell script of iptables commands; --print shows each
    /// rule in `iptables -S` save form (or the line's error).
    Import(IptImportArgs),
    /// Print the shell completion script for bash, zsh or fish.
    Completions(CompletionsArgs),
    /// Write the man pages (stringban.1 and one per command) into DIR (packaging).
    #[command(hide = true)]
    ManPages(ManPagesArgs),
}

#[derive(Args)]
pub(crate) struct CompletionsArgs {
    /// bash, zsh or fish.
    #[arg(value_name = "SHELL")]
    pub(crate) shell: String,
}

#[derive(Args)]
pub(crate) struct ManPagesArgs {
    #[arg(value_name = "DIR")]
    pub(crate) dir: PathBuf,
}

#[derive(Args)]
pub(crate) struct IptImportArgs {
    /// The iptables-save file or shell script.
    #[arg(value_name = "FILE")]
    pub(crate) file: PathBuf,
    /// Print each parsed rule in save form, one per line.
    #[arg(long)]
    pub(crate) print: bool,
    /// Write the configuration here (default: standard output).
    #[arg(long, value_name = "CONFIG")]
    pub(crate) out: Option<PathBuf>,
}

/// Where the running daemon's control socket is.
#[derive(Args, Clone, Debug)]
pub(crate) struct Ctl {
    /// The daemon's control socket.
    #[arg(
        long,
        default_value = "/run/stringban/control.sock",
        value_name = "PATH"
    )]
    pub(crate) control_socket: PathBuf,
}

#[derive(Args)]
pub(crate) struct ListPick {
    /// One list only (default: all).
    #[arg(long, value_name = "NAME")]
    pub(crate) list: Option<String>,
    #[command(flatten)]
    pub(crate) ctl: Ctl,
}

#[derive(Args)]
pub(crate) struct CountArgs {
    /// As JSON: the total and each list's.
    #[arg(long)]
    pub(crate) json: bool,
    #[command(flatten)]
    pub(crate) pick: ListPick,
}

#[derive(Args)]
pub(crate) struct StatusArgs {
    /// Everything as one JSON object.
    #[arg(long)]
    pub(crate) json: bool,
    #[command(flatten)]
    pub(crate) ctl: Ctl,
}

#[derive(Args)]
pub(crate) struct ListArgs {
    /// One JSON object per ban.
    #[arg(long)]
    pub(crate) json: bool,
    /// text (default) or xt-recent (the /proc/net/xt_recent line layout, times in Unix seconds).
    #[arg(long, value_name = "FORMAT")]
    pub(crate) format: Option<String>,
    #[command(flatten)]
    pub(crate) pick: ListPick,
}

#[derive(Args)]
pub(crate) struct AddArgs {
    #[arg(value_name = "ADDR[/PREFIX]")]
    pub(crate) addr: String,
    /// Ban length (default: the list's TTL).
    #[arg(long, value_name = "DURATION")]
    pub(crate) ttl: Option<String>,
    /// Also reset, at once and both ways, every live session from the address to a protected
    /// port (SOCK_DESTROY): for sessions the queue no longer sees, such as STARTTLS ones.
    #[arg(long)]
    pub(crate) reset: bool,
    /// The daemon's answer as JSON.
    #[arg(long)]
    pub(crate) json: bool,
    #[command(flatten)]
    pub(crate) pick: OneList,
}

/// The one list a ban goes into.
#[derive(Args)]
pub(crate) struct OneList {
    /// The list to ban in (default: the first list of the configuration).
    #[arg(long, value_name = "NAME")]
    pub(crate) list: Option<String>,
    #[command(flatten)]
    pub(crate) ctl: Ctl,
}

#[derive(Args)]
pub(crate) struct FlushArgs {
    /// The daemon's answer as JSON.
    #[arg(long)]
    pub(crate) json: bool,
    #[command(flatten)]
    pub(crate) pick: ListPick,
}

#[derive(Args)]
pub(crate) struct DelArgs {
    #[arg(value_name = "ADDR")]
    pub(crate) addr: String,
    /// The daemon's answer as JSON.
    #[arg(long)]
    pub(crate) json: bool,
    #[command(flatten)]
    pub(crate) pick: ListPick,
}

#[derive(Args)]
pub(crate) struct ImportArgs {
    /// A copy of /proc/net/xt_recent/NAME.
    #[arg(value_name = "FILE")]
    pub(crate) file: PathBuf,
    /// Ban length for the imported addresses (default: the list's TTL).
    #[arg(long, value_name = "DURATION")]
    pub(crate) ttl: Option<String>,
    #[command(flatten)]
    pub(crate) pick: OneList,
}

/// Queue and mark settings shared by `run` and `rules`.
#[derive(Args, Clone, Debug)]
pub(crate) struct QueueArgs {
    /// NFQUEUE queue number, or first:last for one worker per queue (iptables --queue-balance).
    #[arg(long, default_value = "0", value_name = "N|FIRST:LAST")]
    pub(crate) queues: String,
    /// Drop protected traffic while no daemon is bound (default: it flows, --queue-bypass).
    #[arg(long)]
    pub(crate) fail_closed: bool,
    /// Mark that asks the rules to stop queueing a flow (saved into the connmark).
    #[arg(long, default_value = "0x10000", value_name = "MARK")]
    pub(crate) bypass_mark: String,
    /// Mark that asks the rules to REJECT --reject-with tcp-reset.
    #[arg(long, default_value = "0x20000", value_name = "MARK")]
    pub(crate) reset_mark: String,
    /// Bits of the packet mark stringban owns.
    #[arg(long, default_value = "0x30000", value_name = "MASK")]
    pub(crate) mark_mask: String,
    /// Who writes the rules: iptables, nft (needs the kernel's nft queue statement), or auto
    /// (iptables if installed, else nft where the kernel supports queue).
    #[arg(long, default_value = "auto", value_name = "auto|iptables|nft")]
    pub(crate) firewall: String,
}

#[derive(Args)]
pub(crate) struct RunArgs {
    #[command(flatten)]
    pub(crate) rules: RuleArgs,
    #[command(flatten)]
    pub(crate) queue: QueueArgs,
    /// Install the kernel rules at start and remove them at exit.
    #[arg(long)]
    pub(crate) install_rules: bool,
    /// Write the pid here once queues are bound and rules installed; refuse to start twice.
    #[arg(long, value_name = "FILE")]
    pub(crate) pidfile: Option<PathBuf>,
    /// Bytes of each packet copied to the daemon.
    #[arg(long, default_value_t = 0xffff, value_name = "BYTES")]
    pub(crate) copy_range: u32,
    /// Packets the kernel holds per queue before fail-open (or drop).
    #[arg(long, default_value_t = 65_536, value_name = "N")]
    pub(crate) queue_maxlen: u32,
    /// Netlink receive buffer; 0 = queue-maxlen × copy-range, capped at 256 MiB.
    #[arg(long, default_value_t = 0, value_name = "BYTES")]
    pub(crate) rcvbuf: usize,
    /// Do not ask for GSO packets unsegmented.
    #[arg(long)]
    pub(crate) no_gso: bool,
    /// Microseconds a worker keeps polling for packets before it sleeps (0: sleep at once).
    #[arg(long, default_value_t = 200, value_name = "US")]
    pub(crate) busy_poll_us: u64,
    /// Do not abort local sockets with SOCK_DESTROY; reset them with a crafted RST instead (the
    /// fallback used where the kernel lacks CONFIG_INET_DIAG_DESTROY).
    #[arg(long)]
    pub(crate) no_sock_destroy: bool,
    /// How often to log the one-line summary.
    #[arg(long, default_value = "60s", value_name = "DURATION")]
    pub(crate) summary_interval: String,
    /// Where bans are kept across restarts and crashes (snapshot + journal).
    #[arg(long, default_value = "/var/lib/stringban", value_name = "DIR")]
    pub(crate) state_dir: PathBuf,
    /// Keep bans in memory only (a restart starts empty).
    #[arg(long)]
    pub(crate) no_state: bool,
    /// How often the journal of new bans is fsync'd: a crash loses at most this last interval.
    #[arg(long, default_value = "100ms", value_name = "DURATION")]
    pub(crate) fsync_interval: String,
    /// How often the journal is folded into a fresh snapshot.
    #[arg(long, default_value = "10m", value_name = "DURATION")]
    pub(crate) snapshot_interval: String,
    /// The control socket (mode 0600) that `stringban list|count|add|del|flush|stats|reload` use.
    #[arg(
        long,
        default_value = "/run/stringban/control.sock",
        value_name = "PATH"
    )]
    pub(crate) control_socket: PathBuf,
    /// No control socket.
    #[arg(long)]
    pub(crate) no_control: bool,
    /// Give this group (name or id) read-write access to the control socket (mode 0660): the
    /// MTA's group, so that its ACL can run `stringban add ADDR --reset`.
    #[arg(long, value_name = "GROUP")]
    pub(crate) control_group: Option<String>,
    /// Mirror bans into the ipsets stringban-v4/-v6 and drop their sources before the queue.
    #[arg(long)]
    pub(crate) offload: bool,
    /// Serve Prometheus metrics at this address (HOST:PORT; --metrics alone: 127.0.0.1:9325).
    #[arg(long, value_name = "ADDR", num_args = 0..=1, default_missing_value = "127.0.0.1:9325")]
    pub(crate) metrics: Option<String>,
    /// Share bans with a fleet through Redis: redis://[USER:PASSWORD@]HOST:PORT[/DB], or
    /// rediss://… for TLS (overrides [share] url; prefer the file, the command line is public).
    #[arg(long, value_name = "URL")]
    pub(crate) share: Option<String>,
    /// The CA certificate (PEM) that signed the Redis server's (rediss:// URLs).
    #[arg(long, value_name = "FILE")]
    pub(crate) share_ca: Option<PathBuf>,
    /// The fleet's name: its keys are under stringban:{FLEET}: (default: stringban).
    #[arg(long, value_name = "NAME")]
    pub(crate) share_fleet: Option<String>,
    /// This daemon's id in the fleet (default: the host name).
    #[arg(long, value_name = "ID")]
    pub(crate) share_node: Option<String>,
    /// The lists shared (default: all).
    #[arg(long, value_name = "LIST", value_delimiter = ',')]
    pub(crate) share_lists: Vec<String>,
    /// error, warn, info or debug.
    #[arg(long, default_value = "info", value_name = "LEVEL")]
    pub(crate) log_level: String,
}

#[derive(Args)]
pub(crate) struct RulesArgs {
    /// print, install or remove.
    #[arg(value_name = "ACTION")]
    pub(crate) action: String,
    /// Take the protected ports from this configuration.
    #[arg(long, short = 'c', value_name = "FILE")]
    pub(crate) config: Option<PathBuf>,
    /// Protected TCP destination port(s) (default 25).
    #[arg(long, value_name = "PORT", value_delimiter = ',')]
    pub(crate) port: Vec<u16>,
    /// The rules' matching mode (without --config): stream and smtp add the bypass rules, smtp
    /// also queues the server's replies.
    #[arg(long, value_name = "MODE", default_value = "packet")]
    pub(crate) mode: String,
    #[command(flatten)]
    pub(crate) queue: QueueArgs,
}

/// Rule flags shared by the commands that run the engine.
#[derive(Args, Clone, Debug, Default)]
pub(crate) struct RuleArgs {
    /// Configuration file (TOML); flags below add to it.
    #[arg(long, short = 'c', value_name = "FILE")]
    pub(crate) config: Option<PathBuf>,
    /// The rule, list and engine flags (the configuration's one-liner form).
    #[command(flatten)]
    pub(crate) flags: Flags,
    /// Run the rules of an iptables-save file or iptables shell script instead (-m string,
    /// -m recent, multiport, comment; the filter table's INPUT chain).
    #[arg(long, value_name = "FILE")]
    pub(crate) iptables: Option<PathBuf>,
}

#[derive(Args)]
pub(crate) struct ReplayArgs {
    #[command(flatten)]
    pub(crate) rules: RuleArgs,
    /// Print one JSON object instead of the summary.
    #[arg(long)]
    pub(crate) json: bool,
    /// Write one TSV line per packet: index, src, sport, dst, dport, verdict, reason.
    #[arg(long, value_name = "FILE")]
    pub(crate) verdicts: Option<PathBuf>,
    /// No progress line on stderr.
    #[arg(long)]
    pub(crate) quiet: bool,
    /// Capture files (pcap or pcapng).
    #[arg(required = true, value_name = "FILE")]
    pub(crate) files: Vec<PathBuf>,
}

#[derive(Args)]
pub(crate) struct GenArgs {
    /// Capture file to write (pcap, Ethernet).
    #[arg(long, short = 'o', value_name = "FILE")]
    pub(crate) out: PathBuf,
    /// Ground-truth file; default: the capture's name with .truth.tsv.
    #[arg(long, value_name = "FILE")]
    pub(crate) truth: Option<PathBuf>,
    #[arg(long, default_value_t = 100_000)]
    pub(crate) sessions: u64,
    #[arg(long, default_value_t = 31_000)]
    pub(crate) sources: u64,
    #[arg(long, default_value = "example.com")]
    pub(crate) spam_domain: String,
    /// Share of sessions that are legitimate mail (0 to 1).
    #[arg(long, default_value_t = 0.1)]
    pub(crate) legit_ratio: f64,
    #[arg(long, default_value_t = 1)]
    pub(crate) seed: u64,
    /// New sessions per second, on average.
    #[arg(long, default_value_t = 50.0)]
    pub(crate) rate: f64,
}

#[derive(Args)]
pub(crate) struct CheckArgs {
    #[command(flatten)]
    pub(crate) rules: RuleArgs,
}
