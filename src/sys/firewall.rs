//! The kernel rules stringban installs: a `STRINGBAN` chain that queues protected traffic to the
//! daemon and acts on the marks its verdicts set (docs/ARCHITECTURE.md, *The live daemon*).
//!
//! ```text
//! -I INPUT -p tcp -m multiport --dports 25 -j STRINGBAN
//! -I OUTPUT -p tcp -m multiport --sports 25 -j STRINGBAN        smtp mode: the server's replies
//! (a gateway, `--chain forward [--protect CIDR]`: the servers behind this host)
//! -I FORWARD -d CIDR -p tcp -m multiport --dports 25 -j STRINGBAN
//! -I FORWARD -s CIDR -p tcp -m multiport --sports 25 -j STRINGBAN   smtp mode: their replies
//! -A STRINGBAN -m mark --mark INJECT/MASK -j RETURN             the daemon's own crafted RSTs
//! -A STRINGBAN -p tcp -m multiport --dports 25 -m conntrack --ctstate INVALID -j DROP
//!                                   (INPUT only: segments outside the TCP window, the kernel's check)
//! (the next three only when a matching mode can bypass a flow; not in packet mode)
//! -A STRINGBAN -m connmark --mark BYPASS/MASK -j RETURN        flow already judged clean
//! -A STRINGBAN -m mark --mark BYPASS/MASK -j CONNMARK --save-mark --nfmask MASK --ctmask MASK
//! -A STRINGBAN -m mark --mark BYPASS/MASK -j RETURN
//! -A STRINGBAN -m mark --mark RESET/MASK -j REJECT --reject-with tcp-reset
//! -A STRINGBAN -j NFQUEUE --queue-num 0 --queue-bypass         daemon down => traffic flows
//! ```
//!
//! Installed with `iptables`/`ip6tables` (iptables-nft or legacy), or, with [`Backend::Nft`], as
//! one native nftables table (`table inet stringban`, see [`nft_ruleset`]) where the kernel has
//! the nft `queue` statement. [`choose`] picks: iptables when the tool is there, else nft when
//! the kernel supports `queue`. The rule text is built by pure functions (tested); only
//! [`install`], [`remove`] and the probes run commands.

use std::fmt;
use std::io;
use std::process::{Command, Stdio};

use crate::allow::Cidr;
use crate::verdict::Hook;

/// Marks the daemon's verdicts set, and the bits of the packet mark they own.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub struct Marks {
    pub bypass: u32,
    pub reset: u32,
    pub mask: u32,
}

impl Marks {
    /// The mark of the daemon's own crafted RSTs: both bits, so it matches neither BYPASS nor
    /// RESET exactly. The chain lets such packets through first.
    pub fn inject(self) -> u32 {
        self.bypass | self.reset
    }
}

impl Default for Marks {
    fn default() -> Marks {
        Marks {
            bypass: 0x0001_0000,
            reset: 0x0002_0000,
            mask: 0x0003_0000,
        }
    }
}

/// The ipset of allowlisted networks that goes with offload set `set`: its members are never
/// dropped by the offload rule, whatever ban of a prefix covers them.
pub fn allow_set(set: &str) -> String {
    format!("{set}-allow")
}

/// What the rules protect and how.
#[derive(Clone, Debug, Eq, PartialEq)]
pub struct RulesConfig {
    pub chain: String,
    pub ports: Vec<u16>,
    /// First and last queue (`--queue-balance first:last`).
    pub queues: (u16, u16),
    pub marks: Marks,
    /// `--queue-bypass`: with no daemon bound, packets pass (fail-open). Off: they are dropped.
    pub fail_open: bool,
    /// Install the BYPASS connmark rules. Needed only by matching modes that end a flow's
    /// inspection early; without them conntrack stays out of the packet path (packet mode).
    pub bypass: bool,
    /// Also queue the server's replies (`OUTPUT` from the protected ports): smtp mode reads them.
    pub replies: bool,
    /// Let pure ACKs (no payload, no SYN/FIN/RST) through without queueing them: only when every
    /// rule follows flows, which pure ACKs tell nothing (packet mode sees every packet, as the
    /// kernel does). Matched exactly with `-m u32`: IP and TCP header lengths add up to the
    /// packet's, for the usual TCP headers of 20 and 32 bytes (no options, timestamps).
    pub skip_pure_acks: bool,
    /// Drop, before the queue, the clients' segments that conntrack finds INVALID (outside
    /// the TCP window, acknowledging what the server never sent, no connection): the window
    /// check for packet mode, which tracks no flows, and a second one for the flow modes.
    /// Only where the host sees both directions of its sessions (`INPUT`): it puts conntrack
    /// in the packet path.
    pub window_check: bool,
    /// Kernel offload: the IPv4 and IPv6 ipsets whose sources are dropped before the queue.
    pub offload_sets: Option<(String, String)>,
    pub backend: Backend,
    /// Where traffic is queued: `INPUT` (this host's servers) and/or `FORWARD` (a gateway's).
    pub hooks: Vec<Hook>,
    /// `FORWARD` only: the destination networks protected (empty: every forwarded packet to
    /// the ports). A family without one is not queued in `FORWARD` at all.
    pub protect: Vec<Cidr>,
}

/// Which tool writes the rules.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub enum Backend {
    /// `iptables` and `ip6tables` (iptables-nft or legacy): the `STRINGBAN` chain.
    Iptables,
    /// `nft`: `table inet stringban`, both families in one table.
    Nft,
}

impl Backend {
    /// `auto` (None), `iptables` or `nft`.
    pub fn parse(s: &str) -> Result<Option<Backend>, UnknownBackend> {
        match s {
            "auto" => Ok(None),
            "iptables" => Ok(Some(Backend::Iptables)),
            "nft" => Ok(Some(Backend::Nft)),
            _ => Err(UnknownBackend),
        }
    }
}

/// A `--firewall` value other than auto, iptables and nft.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub struct UnknownBackend;

impl fmt::Display for UnknownBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("expected auto, iptables or nft")
    }
}

impl std::error::Error for UnknownBackend {}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Backend::Iptables => "iptables",
            Backend::Nft => "nft",
        })
    }
}

/// The backend to use: the requested one if it can work here, else (auto) iptables when the
/// tool is installed, then nft when the kernel supports its `queue` statement.
pub fn choose(requested: Option<Backend>) -> Result<Backend, FirewallError> {
    match requested {
        Some(Backend::Iptables) | None if has("iptables") => Ok(Backend::Iptables),
        Some(Backend::Iptables) => Err(FirewallError::NoTool),
        Some(Backend::Nft) | None => {
            if nft_queue_supported() {
                Ok(Backend::Nft)
            } else if requested.is_none() {
                Err(FirewallError::NoTool)
            } else {
                Err(FirewallError::NoNftQueue)
            }
        }
    }
}

impl RulesConfig {
    pub fn new(ports: Vec<u16>, queues: (u16, u16)) -> RulesConfig {
        RulesConfig {
            chain: "STRINGBAN".into(),
            ports,
            queues,
            marks: Marks::default(),
            fail_open: true,
            bypass: false,
            replies: false,
            skip_pure_acks: false,
            window_check: false,
            offload_sets: None,
            backend: Backend::Iptables,
            hooks: vec![Hook::Input],
            protect: Vec::new(),
        }
    }

    /// The protected networks of one family, as `-d`/`-s` values; `[None]` when none is given
    /// at all (every destination), `[]` when only the other family's are.
    fn protected(&self, v6: bool) -> Vec<Option<String>> {
        if self.protect.is_empty() {
            return vec![None];
        }
        self.protect
            .iter()
            .filter(|c| c.addr().is_ipv6() == v6)
            .map(|c| Some(c.to_string()))
            .collect()
    }
}

/// `-m u32` tests for a pure ACK whose TCP header is `doff` words, IPv4 (IHL 5) or IPv6 (TCP
/// right after the fixed header): the packet is exactly its headers.
fn pure_ack_u32(v6: bool, doff: u32) -> String {
    if v6 {
        format!("4>>8&0xFF=6&&4>>16={}&&52>>28={doff}", doff * 4)
    } else {
        format!("0>>22&0x3C=20&&0&0xFFFF={}&&32>>28={doff}", 20 + doff * 4)
    }
}

/// The rules for IPv4, as `iptables` arguments, in order: the jump(s) first, then the chain.
pub fn rules(cfg: &RulesConfig) -> (Vec<Vec<String>>, Vec<Vec<String>>) {
    rules_for(cfg, false)
}

/// The rules for one family (`ip6tables` when `v6`).
pub fn rules_for(cfg: &RulesConfig, v6: bool) -> (Vec<Vec<String>>, Vec<Vec<String>>) {
    let words = |s: String| s.split_whitespace().map(String::from).collect::<Vec<_>>();
    // `-m multiport --dports 25,587` in chunks of 15 (multiport's most), or nothing: every port.
    let port_matches = |dir: &str| -> Vec<String> {
        if cfg.ports.is_empty() {
            return vec![String::new()];
        }
        cfg.ports
            .chunks(15)
            .map(|chunk| {
                let list: Vec<String> = chunk.iter().map(u16::to_string).collect();
                format!(" -m multiport --{dir}ports {}", list.join(","))
            })
            .collect()
    };
    let mut jumps = Vec::new();
    for hook in &cfg.hooks {
        match hook {
            Hook::Input => {
                for m in port_matches("d") {
                    jumps.push(words(format!("INPUT -p tcp{m} -j {}", cfg.chain)));
                }
                if cfg.replies && !cfg.ports.is_empty() {
                    for m in port_matches("s") {
                        jumps.push(words(format!("OUTPUT -p tcp{m} -j {}", cfg.chain)));
                    }
                }
            }
            Hook::Forward => {
                for net in cfg.protected(v6) {
                    let to = net.as_ref().map_or(String::new(), |n| format!(" -d {n}"));
                    for m in port_matches("d") {
                        jumps.push(words(format!("FORWARD{to} -p tcp{m} -j {}", cfg.chain)));
                    }
                    if cfg.replies && !cfg.ports.is_empty() {
                        let from = net.as_ref().map_or(String::new(), |n| format!(" -s {n}"));
                        for m in port_matches("s") {
                            jumps.push(words(format!("FORWARD{from} -p tcp{m} -j {}", cfg.chain)));
                        }
                    }
                }
            }
        }
    }
    let Marks {
        bypass,
        reset,
        mask,
    } = cfg.marks;
    let c = &cfg.chain;
    let queue = if cfg.queues.0 == cfg.queues.1 {
        format!("--queue-num {}", cfg.queues.0)
    } else {
        format!("--queue-balance {}:{}", cfg.queues.0, cfg.queues.1)
    };
    let bypass_flag = if cfg.fail_open { " --queue-bypass" } else { "" };
    let inject = cfg.marks.inject();
    let mut chain = vec![words(format!(
        "{c} -m mark --mark {inject:#x}/{mask:#x} -j RETURN"
    ))];
    if let Some((set4, set6)) = &cfg.offload_sets {
        let set = if v6 { set6 } else { set4 };
        // Never an allowlisted source, though a ban of its prefix covers it: those go on to
        // the queue, where the allowlist is consulted.
        let allow = allow_set(set);
        chain.push(words(format!(
            "{c} -m set --match-set {set} src -m set ! --match-set {allow} src -j DROP"
        )));
    }
    if cfg.window_check {
        for m in port_matches("d") {
            chain.push(words(format!(
                "{c} -p tcp{m} -m conntrack --ctstate INVALID -j DROP"
            )));
        }
    }
    if cfg.skip_pure_acks {
        for doff in [5, 8] {
            // One argument with no blanks inside, so `words` keeps it whole.
            chain.push(words(format!(
                "{c} -p tcp --tcp-flags SYN,FIN,RST,ACK ACK -m u32 --u32 {} -j RETURN",
                pure_ack_u32(v6, doff)
            )));
        }
    }
    if cfg.bypass {
        chain.push(words(format!(
            "{c} -m connmark --mark {bypass:#x}/{mask:#x} -j RETURN"
        )));
        chain.push(words(format!(
            "{c} -m mark --mark {bypass:#x}/{mask:#x} -j CONNMARK --save-mark --nfmask {mask:#x} --ctmask {mask:#x}"
        )));
        chain.push(words(format!(
            "{c} -m mark --mark {bypass:#x}/{mask:#x} -j RETURN"
        )));
    }
    chain.push(words(format!(
        "{c} -p tcp -m mark --mark {reset:#x}/{mask:#x} -j REJECT --reject-with tcp-reset"
    )));
    chain.push(words(format!("{c} -j NFQUEUE {queue}{bypass_flag}")));
    (jumps, chain)
}

/// The commands `install` runs, for one family's tool (`iptables` or `ip6tables`), as shell
/// text: every word that the shell would read otherwise (`--u32 0>>22&0x3C=20`) is quoted, so
/// the output pastes into a shell as the very commands.
pub fn script(cfg: &RulesConfig, tool: &str) -> String {
    let (jumps, chain) = rules_for(cfg, tool == "ip6tables");
    let line = |r: &[String]| {
        r.iter()
            .map(|w| shell_word(w))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let mut out = format!("{tool} -w -N {}\n", shell_word(&cfg.chain));
    for r in &chain {
        out.push_str(&format!("{tool} -w -A {}\n", line(r)));
    }
    for j in &jumps {
        out.push_str(&format!("{tool} -w -I {}\n", line(j)));
    }
    out
}

/// `word` as one shell word: as is when it has nothing the shell reads, else single-quoted.
pub fn shell_word(word: &str) -> String {
    let plain = !word.is_empty()
        && word
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-+=:,./@%".contains(&b));
    if plain {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', "'\\''"))
    }
}

/// The nftables table that does what the `STRINGBAN` chain does, for both families, as an
/// `nft -f` script that replaces an earlier copy atomically (declare, delete, define).
pub fn nft_ruleset(cfg: &RulesConfig) -> String {
    let t = nft_table(cfg);
    let Marks {
        bypass,
        reset,
        mask,
    } = cfg.marks;
    let inject = cfg.marks.inject();
    let ports = if cfg.ports.is_empty() {
        "meta l4proto tcp".to_string()
    } else {
        let list: Vec<String> = cfg.ports.iter().map(u16::to_string).collect();
        format!("tcp dport {{ {} }}", list.join(", "))
    };
    let queue = if cfg.queues.0 == cfg.queues.1 {
        format!("queue num {}", cfg.queues.0)
    } else {
        format!("queue num {}-{}", cfg.queues.0, cfg.queues.1)
    };
    let queue = if cfg.fail_open {
        format!("{queue} bypass")
    } else {
        queue
    };
    let mut guard = vec![format!("meta mark & {mask:#x} == {inject:#x} return")];
    if cfg.window_check {
        guard.push(format!("{ports} ct state invalid counter drop"));
    }
    if cfg.skip_pure_acks {
        for doff in [5u32, 8] {
            guard.push(format!(
                "tcp flags & (fin | syn | rst | ack) == ack ip hdrlength 5 ip length {} tcp doff {doff} return",
                20 + doff * 4
            ));
            guard.push(format!(
                "tcp flags & (fin | syn | rst | ack) == ack ip6 nexthdr tcp ip6 length {} tcp doff {doff} return",
                doff * 4
            ));
        }
    }
    if cfg.bypass {
        guard.push(format!("ct mark & {mask:#x} == {bypass:#x} return"));
        guard.push(format!(
            "meta mark & {mask:#x} == {bypass:#x} ct mark set ct mark & {:#x} | {bypass:#x}",
            !mask
        ));
        guard.push(format!("meta mark & {mask:#x} == {bypass:#x} return"));
    }
    guard.push(format!(
        "meta mark & {mask:#x} == {reset:#x} meta l4proto tcp reject with tcp reset"
    ));
    guard.push(queue);
    let mut out = format!("table inet {t}\ndelete table inet {t}\ntable inet {t} {{\n");
    let replies = cfg.replies && !cfg.ports.is_empty();
    if cfg.hooks.contains(&Hook::Input) {
        out.push_str(
            "\tchain input {\n\t\ttype filter hook input priority filter; policy accept;\n",
        );
        out.push_str(&format!("\t\t{ports} jump guard\n\t}}\n"));
        if replies {
            out.push_str(
                "\tchain output {\n\t\ttype filter hook output priority filter; policy accept;\n",
            );
            out.push_str(&format!(
                "\t\t{} jump guard\n\t}}\n",
                ports.replace("dport", "sport")
            ));
        }
    }
    if cfg.hooks.contains(&Hook::Forward) {
        out.push_str(
            "\tchain forward {\n\t\ttype filter hook forward priority filter; policy accept;\n",
        );
        let mut nets: Vec<(&str, Option<String>)> = Vec::new();
        if cfg.protect.is_empty() {
            nets.push(("", None));
        }
        for (family, v6) in [("ip", false), ("ip6", true)] {
            let list: Vec<String> = cfg.protected(v6).into_iter().flatten().collect();
            if !list.is_empty() {
                nets.push((family, Some(list.join(", "))));
            }
        }
        for (family, list) in &nets {
            let (to, from) = match list {
                Some(l) => (
                    format!("{family} daddr {{ {l} }} "),
                    format!("{family} saddr {{ {l} }} "),
                ),
                None => (String::new(), String::new()),
            };
            out.push_str(&format!("\t\t{to}{ports} jump guard\n"));
            if replies {
                out.push_str(&format!(
                    "\t\t{from}{} jump guard\n",
                    ports.replace("dport", "sport")
                ));
            }
        }
        out.push_str("\t}\n");
    }
    out.push_str("\tchain guard {\n");
    for g in guard {
        out.push_str(&format!("\t\t{g}\n"));
    }
    out.push_str("\t}\n}\n");
    out
}

/// The nftables table's name: the chain's, in lower case (`stringban`).
fn nft_table(cfg: &RulesConfig) -> String {
    cfg.chain.to_ascii_lowercase()
}

/// Runs `nft ARGS` with `script` on its standard input.
fn nft(args: &[&str], script: &str) -> Result<(bool, String), FirewallError> {
    let child = Command::new("nft")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = child.map_err(|source| FirewallError::Spawn {
        tool: "nft".into(),
        source,
    })?;
    if let Some(mut stdin) = child.stdin.take() {
        use std::io::Write;
        let _ = stdin.write_all(script.as_bytes());
    }
    let out = child
        .wait_with_output()
        .map_err(|source| FirewallError::Spawn {
            tool: "nft".into(),
            source,
        })?;
    Ok((
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

/// A rules command that failed.
#[derive(Debug)]
pub enum FirewallError {
    /// Neither `iptables` nor an `nft` with kernel `queue` support is there.
    NoTool,
    /// `nft` was asked for, but it is missing or the kernel lacks its `queue` statement.
    NoNftQueue,
    Spawn {
        tool: String,
        source: io::Error,
    },
    Failed {
        command: String,
        stderr: String,
    },
}

impl fmt::Display for FirewallError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FirewallError::NoTool => f.write_str(
                "iptables not found, and no nft with kernel queue support (install the iptables package)",
            ),
            FirewallError::NoNftQueue => f.write_str(
                "nft cannot queue here: nft missing or the kernel lacks the nft queue statement (CONFIG_NFT_QUEUE); use --firewall iptables",
            ),
            FirewallError::Spawn { tool, source } => write!(f, "running {tool}: {source}"),
            FirewallError::Failed { command, stderr } => {
                write!(f, "`{command}` failed: {}", stderr.trim())
            }
        }
    }
}

impl std::error::Error for FirewallError {}

fn run(tool: &str, args: &[String]) -> Result<(bool, String), FirewallError> {
    let out = Command::new(tool)
        .arg("-w")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|source| FirewallError::Spawn {
            tool: tool.into(),
            source,
        })?;
    Ok((
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

fn must(tool: &str, args: &[String]) -> Result<(), FirewallError> {
    match run(tool, args)? {
        (true, _) => Ok(()),
        (false, stderr) => Err(FirewallError::Failed {
            command: format!(
                "{tool} -w {}",
                args.iter()
                    .map(|a| shell_word(a))
                    .collect::<Vec<_>>()
                    .join(" ")
            ),
            stderr,
        }),
    }
}

fn has(tool: &str) -> bool {
    Command::new(tool)
        .arg("-V")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The tools present: `iptables` and, if there, `ip6tables`.
pub fn tools() -> Vec<&'static str> {
    ["iptables", "ip6tables"]
        .into_iter()
        .filter(|t| has(t))
        .collect()
}

/// Installs the rules (replacing an earlier copy of the chain or table). Idempotent. Returns the
/// tools used.
pub fn install(cfg: &RulesConfig) -> Result<Vec<&'static str>, FirewallError> {
    if cfg.backend == Backend::Nft {
        return match nft(&["-f", "-"], &nft_ruleset(cfg))? {
            (true, _) => Ok(vec!["nft"]),
            (false, stderr) => Err(FirewallError::Failed {
                command: "nft -f - (stringban rules print --firewall nft)".into(),
                stderr,
            }),
        };
    }
    let tools = tools();
    if !tools.contains(&"iptables") {
        return Err(FirewallError::NoTool);
    }
    for tool in &tools {
        let (jumps, chain) = rules_for(cfg, *tool == "ip6tables");
        let name = cfg.chain.clone();
        if !run(tool, &["-N".into(), name.clone()])?.0 {
            must(tool, &["-F".into(), name.clone()])?;
        }
        for r in &chain {
            must(tool, &[vec!["-A".to_string()], r.clone()].concat())?;
        }
        for j in &jumps {
            if !run(tool, &[vec!["-C".to_string()], j.clone()].concat())?.0 {
                must(tool, &[vec!["-I".to_string()], j.clone()].concat())?;
            }
        }
    }
    Ok(tools)
}

/// Removes the jumps and the chain (or the table). Missing pieces are not an error.
pub fn remove(cfg: &RulesConfig) -> Result<(), FirewallError> {
    if cfg.backend == Backend::Nft {
        let t = nft_table(cfg);
        let _ = nft(
            &["-f", "-"],
            &format!("table inet {t}\ndelete table inet {t}\n"),
        )?;
        return Ok(());
    }
    for tool in tools() {
        let (jumps, _) = rules_for(cfg, tool == "ip6tables");
        for j in &jumps {
            // A jump may have been added more than once by hand; remove every copy (bounded).
            for _ in 0..16 {
                if !run(tool, &[vec!["-D".to_string()], j.clone()].concat())?.0 {
                    break;
                }
            }
        }
        let _ = run(tool, &["-F".into(), cfg.chain.clone()])?;
        let _ = run(tool, &["-X".into(), cfg.chain.clone()])?;
    }
    Ok(())
}

/// Packets the window check's rules dropped, from `iptables -L -v -x` (or `nft list chain`)
/// text: the first column of each rule line matching `ctstate INVALID` (nft: the `counter
/// packets N` of the `ct state invalid` rule), summed.
pub fn parse_window_drops(text: &str) -> u64 {
    text.lines()
        .map(|l| {
            if l.contains("ctstate INVALID") {
                l.split_whitespace().next().and_then(|n| n.parse().ok())
            } else if l.contains("ct state invalid") {
                l.split_whitespace()
                    .skip_while(|w| *w != "packets")
                    .nth(1)
                    .and_then(|n| n.parse().ok())
            } else {
                None
            }
        })
        .map(|n: Option<u64>| n.unwrap_or(0))
        .sum()
}

/// What the window check has dropped so far, read from the kernel's rule counters; None when
/// they cannot be read (the xtables lock is waited for 1 s at most: the daemon's main loop
/// reads them).
pub fn window_drops(cfg: &RulesConfig) -> Option<u64> {
    if cfg.backend == Backend::Nft {
        let t = nft_table(cfg);
        let out = Command::new("nft")
            .args(["list", "chain", "inet", &t, "guard"])
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output()
            .ok()?;
        return out
            .status
            .success()
            .then(|| parse_window_drops(&String::from_utf8_lossy(&out.stdout)));
    }
    let mut n = 0;
    for tool in tools() {
        let out = Command::new(tool)
            .args(["-w", "1", "-L", &cfg.chain, "-v", "-x", "-n"])
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output()
            .ok()?;
        if !out.status.success() {
            return None;
        }
        n += parse_window_drops(&String::from_utf8_lossy(&out.stdout));
    }
    Some(n)
}

/// Does the kernel take a conntrack match (`-m conntrack --ctstate INVALID`) from `tool`?
/// Tried on a chain of its own, made and removed here.
pub fn conntrack_works(tool: &str) -> bool {
    let chain = "STRINGBAN-PROBE".to_string();
    let args = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let _ = run(tool, &args(&["-X", &chain]));
    if !run(tool, &args(&["-N", &chain])).is_ok_and(|r| r.0) {
        return false;
    }
    let ok = run(
        tool,
        &args(&[
            "-A",
            &chain,
            "-m",
            "conntrack",
            "--ctstate",
            "INVALID",
            "-j",
            "DROP",
        ]),
    )
    .is_ok_and(|r| r.0);
    let _ = run(tool, &args(&["-F", &chain]));
    let _ = run(tool, &args(&["-X", &chain]));
    ok
}

/// Does the running kernel support the nft `queue` statement? Checked with a dry run
/// (`nft -c`), which the kernel validates without applying. False when `nft` is absent.
pub fn nft_queue_supported() -> bool {
    let probe = "add table inet stringban_probe\nadd chain inet stringban_probe c { type filter hook input priority 0; }\nadd rule inet stringban_probe c queue num 0 bypass\n";
    let child = Command::new("nft")
        .args(["-c", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
    let Ok(mut child) = child else { return false };
    if let Some(stdin) = child.stdin.as_mut() {
        use std::io::Write;
        let _ = stdin.write_all(probe.as_bytes());
    }
    drop(child.stdin.take());
    child.wait().is_ok_and(|s| s.success())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `rules print` prints pastes into a shell as the very commands: a real shell splits
    /// every line into the words install runs (the smtp rules' `--u32 0>>22&…` included).
    #[test]
    fn printed_rules_paste_into_a_shell() {
        let mut cfg = RulesConfig::new(vec![25, 587], (0, 3));
        (cfg.bypass, cfg.replies, cfg.skip_pure_acks) = (true, true, true);
        for tool in ["iptables", "ip6tables"] {
            let (jumps, chain) = rules_for(&cfg, tool == "ip6tables");
            let mut want: Vec<Vec<String>> = vec![vec!["-N".into(), cfg.chain.clone()]];
            want.extend(
                chain
                    .iter()
                    .map(|r| [vec!["-A".to_string()], r.clone()].concat()),
            );
            want.extend(
                jumps
                    .iter()
                    .map(|r| [vec!["-I".to_string()], r.clone()].concat()),
            );
            let text = script(&cfg, tool);
            assert!(
                text.contains("'0>>22&0x3C=20") || tool == "ip6tables",
                "{text}"
            );
            for (line, want) in text.lines().zip(&want) {
                let out = std::process::Command::new("sh")
                    .arg("-c")
                    .arg(format!("printf '%s\\n' {line}"))
                    .output()
                    .unwrap();
                let words: Vec<&str> = std::str::from_utf8(&out.stdout).unwrap().lines().collect();
                assert_eq!(&words[..2], [tool, "-w"], "{line}");
                assert_eq!(words[2..], want[..], "{line}");
            }
        }
        assert_eq!(shell_word("it's"), "'it'\\''s'");
        assert_eq!(shell_word(""), "''");
    }

    #[test]
    fn default_rules() {
        let mut cfg = RulesConfig::new(vec![25], (0, 0));
        cfg.bypass = true;
        assert_eq!(
            script(&cfg, "iptables"),
            "iptables -w -N STRINGBAN
iptables -w -A STRINGBAN -m mark --mark 0x30000/0x30000 -j RETURN
iptables -w -A STRINGBAN -m connmark --mark 0x10000/0x30000 -j RETURN
iptables -w -A STRINGBAN -m mark --mark 0x10000/0x30000 -j CONNMARK --save-mark --nfmask 0x30000 --ctmask 0x30000
iptables -w -A STRINGBAN -m mark --mark 0x10000/0x30000 -j RETURN
iptables -w -A STRINGBAN -p tcp -m mark --mark 0x20000/0x30000 -j REJECT --reject-with tcp-reset
iptables -w -A STRINGBAN -j NFQUEUE --queue-num 0 --queue-bypass
iptables -w -I INPUT -p tcp -m multiport --dports 25 -j STRINGBAN
"
        );
    }

    /// The window check drops the clients' INVALID segments (to the protected ports only,
    /// never the server's own) after the daemon's injected RSTs and before anything else.
    #[test]
    fn the_window_check_drops_what_conntrack_finds_invalid() {
        let mut cfg = RulesConfig::new(vec![25, 587], (0, 0));
        cfg.window_check = true;
        let (_, chain) = rules(&cfg);
        assert_eq!(
            chain[1].join(" "),
            "STRINGBAN -p tcp -m multiport --dports 25,587 -m conntrack --ctstate INVALID -j DROP"
        );
        assert!(chain[0].join(" ").contains("0x30000/0x30000 -j RETURN"));
        cfg.backend = Backend::Nft;
        assert!(
            nft_ruleset(&cfg)
                .contains("\t\tmeta mark & 0x30000 == 0x30000 return\n\t\ttcp dport { 25, 587 } ct state invalid counter drop\n")
        );
        // What it dropped, from the rule counters the daemon reads.
        let ipt = "Chain STRINGBAN (1 references)\n    pkts      bytes target     prot opt in     out     source               destination\n       0        0 RETURN     all  --  *      *       0.0.0.0/0            0.0.0.0/0            mark match 0x30000/0x30000\n      12      600 DROP       tcp  --  *      *       0.0.0.0/0            0.0.0.0/0            multiport dports 25 ctstate INVALID\n       7      350 DROP       tcp  --  *      *       0.0.0.0/0            0.0.0.0/0            multiport dports 465 ctstate INVALID\n";
        assert_eq!(parse_window_drops(ipt), 19);
        let nft = "table inet stringban {\n\tchain guard {\n\t\ttcp dport { 25 } ct state invalid counter packets 5 bytes 300 drop\n\t}\n}\n";
        assert_eq!(parse_window_drops(nft), 5);
    }

    #[test]
    fn balance_fail_closed_and_many_ports() {
        let mut cfg = RulesConfig::new((1..=20).collect(), (0, 3));
        cfg.fail_open = false;
        let (jumps, chain) = rules(&cfg);
        assert_eq!(jumps.len(), 2, "multiport takes 15 ports per rule");
        assert_eq!(
            chain.last().unwrap().join(" "),
            "STRINGBAN -j NFQUEUE --queue-balance 0:3"
        );
        let any = rules(&RulesConfig::new(vec![], (0, 0))).0;
        assert_eq!(any[0].join(" "), "INPUT -p tcp -j STRINGBAN");
        // Packet mode never bypasses: no connmark rules, so conntrack stays out of the path.
        let (_, packet_mode) = rules(&RulesConfig::new(vec![25], (0, 0)));
        assert_eq!(packet_mode.len(), 3);
        assert!(
            packet_mode
                .iter()
                .all(|r| !r.join(" ").contains("connmark"))
        );
    }

    #[test]
    fn nft_table_does_what_the_chain_does() {
        let mut cfg = RulesConfig::new(vec![25, 587], (0, 3));
        cfg.backend = Backend::Nft;
        assert_eq!(
            nft_ruleset(&cfg),
            "table inet stringban
delete table inet stringban
table inet stringban {
\tchain input {
\t\ttype filter hook input priority filter; policy accept;
\t\ttcp dport { 25, 587 } jump guard
\t}
\tchain guard {
\t\tmeta mark & 0x30000 == 0x30000 return
\t\tmeta mark & 0x30000 == 0x20000 meta l4proto tcp reject with tcp reset
\t\tqueue num 0-3 bypass
\t}
}
"
        );
        cfg.bypass = true;
        cfg.fail_open = false;
        cfg.queues = (2, 2);
        let text = nft_ruleset(&cfg);
        assert!(text.contains("\t\tct mark & 0x30000 == 0x10000 return\n"));
        assert!(text.contains(
            "\t\tmeta mark & 0x30000 == 0x10000 ct mark set ct mark & 0xfffcffff | 0x10000\n"
        ));
        assert!(
            text.contains("\t\tqueue num 2\n"),
            "fail-closed: no bypass flag"
        );
        cfg.ports.clear();
        assert!(nft_ruleset(&cfg).contains("\t\tmeta l4proto tcp jump guard\n"));
    }

    #[test]
    fn smtp_mode_also_queues_the_replies() {
        let mut cfg = RulesConfig::new(vec![25], (0, 0));
        cfg.bypass = true;
        cfg.replies = true;
        let (jumps, _) = rules(&cfg);
        assert_eq!(
            jumps.iter().map(|j| j.join(" ")).collect::<Vec<_>>(),
            [
                "INPUT -p tcp -m multiport --dports 25 -j STRINGBAN",
                "OUTPUT -p tcp -m multiport --sports 25 -j STRINGBAN"
            ]
        );
        cfg.backend = Backend::Nft;
        assert!(nft_ruleset(&cfg).contains(
            "\tchain output {\n\t\ttype filter hook output priority filter; policy accept;\n\t\ttcp sport { 25 } jump guard\n\t}\n"
        ));
    }

    #[test]
    fn flow_modes_let_pure_acks_through_unqueued() {
        let mut cfg = RulesConfig::new(vec![25], (0, 0));
        cfg.skip_pure_acks = true;
        let v4 = script(&cfg, "iptables");
        assert!(v4.contains("iptables -w -A STRINGBAN -p tcp --tcp-flags SYN,FIN,RST,ACK ACK -m u32 --u32 '0>>22&0x3C=20&&0&0xFFFF=52&&32>>28=8' -j RETURN\n"), "{v4}");
        let v6 = script(&cfg, "ip6tables");
        assert!(
            v6.contains("-m u32 --u32 '4>>8&0xFF=6&&4>>16=20&&52>>28=5' -j RETURN\n"),
            "{v6}"
        );
        cfg.backend = Backend::Nft;
        assert!(nft_ruleset(&cfg).contains("ip6 nexthdr tcp ip6 length 32 tcp doff 8 return"));
        cfg.skip_pure_acks = false;
        assert!(!script(&cfg, "iptables").contains("u32"));
    }

    #[test]
    fn a_gateway_queues_forwarded_traffic_to_the_protected_networks() {
        let mut cfg = RulesConfig::new(vec![25], (0, 0));
        cfg.hooks = vec![Hook::Forward];
        cfg.replies = true;
        let jumps = |cfg: &RulesConfig, v6| {
            rules_for(cfg, v6)
                .0
                .iter()
                .map(|j| j.join(" "))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            jumps(&cfg, false),
            [
                "FORWARD -p tcp -m multiport --dports 25 -j STRINGBAN",
                "FORWARD -p tcp -m multiport --sports 25 -j STRINGBAN"
            ]
        );
        cfg.protect = vec![
            Cidr::new("198.18.2.0".parse().unwrap(), 24).unwrap(),
            Cidr::new("198.18.3.7".parse().unwrap(), 32).unwrap(),
        ];
        assert_eq!(
            jumps(&cfg, false),
            [
                "FORWARD -d 198.18.2.0/24 -p tcp -m multiport --dports 25 -j STRINGBAN",
                "FORWARD -s 198.18.2.0/24 -p tcp -m multiport --sports 25 -j STRINGBAN",
                "FORWARD -d 198.18.3.7/32 -p tcp -m multiport --dports 25 -j STRINGBAN",
                "FORWARD -s 198.18.3.7/32 -p tcp -m multiport --sports 25 -j STRINGBAN"
            ]
        );
        assert!(jumps(&cfg, true).is_empty(), "no IPv6 network protected");
        cfg.hooks = vec![Hook::Input, Hook::Forward];
        cfg.replies = false;
        cfg.ports.clear();
        assert_eq!(
            jumps(&cfg, false),
            [
                "INPUT -p tcp -j STRINGBAN",
                "FORWARD -d 198.18.2.0/24 -p tcp -j STRINGBAN",
                "FORWARD -d 198.18.3.7/32 -p tcp -j STRINGBAN"
            ]
        );
        cfg.backend = Backend::Nft;
        cfg.ports = vec![25];
        cfg.replies = true;
        cfg.protect
            .push(Cidr::new("2001:db8::".parse().unwrap(), 32).unwrap());
        let nft = nft_ruleset(&cfg);
        assert!(nft.contains("\tchain forward {\n\t\ttype filter hook forward priority filter; policy accept;\n\t\tip daddr { 198.18.2.0/24, 198.18.3.7/32 } tcp dport { 25 } jump guard\n\t\tip saddr { 198.18.2.0/24, 198.18.3.7/32 } tcp sport { 25 } jump guard\n\t\tip6 daddr { 2001:db8::/32 } tcp dport { 25 } jump guard\n"), "{nft}");
    }

    #[test]
    fn backend_names() {
        assert_eq!(Backend::parse("auto"), Ok(None));
        assert_eq!(Backend::parse("nft"), Ok(Some(Backend::Nft)));
        assert_eq!(Backend::parse("iptables"), Ok(Some(Backend::Iptables)));
        assert!(Backend::parse("ipfw").is_err());
    }
}
