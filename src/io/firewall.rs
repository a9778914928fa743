//! The kernel rules stringban installs: a `STRINGBAN` chain that queues protected traffic to the
//! daemon and acts on the marks its verdicts set (DESIGN §4).
//!
//! ```text
//! -I INPUT -p tcp -m multiport --dports 25 -j STRINGBAN
//! -A STRINGBAN -m mark --mark INJECT/MASK -j RETURN             the daemon's own crafted RSTs
//! (the next three only when a matching mode can bypass a flow; not in packet mode)
//! -A STRINGBAN -m connmark --mark BYPASS/MASK -j RETURN        flow already judged clean
//! -A STRINGBAN -m mark --mark BYPASS/MASK -j CONNMARK --save-mark --nfmask MASK --ctmask MASK
//! -A STRINGBAN -m mark --mark BYPASS/MASK -j RETURN
//! -A STRINGBAN -m mark --mark RESET/MASK -j REJECT --reject-with tcp-reset
//! -A STRINGBAN -j NFQUEUE --queue-num 0 --queue-bypass         daemon down => traffic flows
//! ```
//!
//! Installed with `iptables`/`ip6tables` (iptables-nft or legacy). The rule text is built by pure
//! functions (tested); only [`install`] and [`remove`] run commands.

use std::fmt;
use std::io;
use std::process::{Command, Stdio};

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
        }
    }
}

/// The rules, as `iptables` arguments, in order: the jump(s) from INPUT first, then the chain.
pub fn rules(cfg: &RulesConfig) -> (Vec<Vec<String>>, Vec<Vec<String>>) {
    let words = |s: String| s.split_whitespace().map(String::from).collect::<Vec<_>>();
    let jumps = if cfg.ports.is_empty() {
        vec![words(format!("INPUT -p tcp -j {}", cfg.chain))]
    } else {
        cfg.ports
            .chunks(15) // multiport takes at most 15 ports
            .map(|chunk| {
                let list: Vec<String> = chunk.iter().map(u16::to_string).collect();
                words(format!(
                    "INPUT -p tcp -m multiport --dports {} -j {}",
                    list.join(","),
                    cfg.chain
                ))
            })
            .collect()
    };
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

/// The commands `install` runs, for one family's tool (`iptables` or `ip6tables`), as text.
pub fn script(cfg: &RulesConfig, tool: &str) -> String {
    let (jumps, chain) = rules(cfg);
    let mut out = format!("{tool} -w -N {}\n", cfg.chain);
    for r in &chain {
        out.push_str(&format!("{tool} -w -A {}\n", r.join(" ")));
    }
    for j in &jumps {
        out.push_str(&format!("{tool} -w -I {}\n", j.join(" ")));
    }
    out
}

/// A rules command that failed.
#[derive(Debug)]
pub enum FirewallError {
    /// Neither `iptables` nor `ip6tables` could be run.
    NoTool,
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
            FirewallError::NoTool => {
                f.write_str("iptables not found (install the iptables package)")
            }
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
            command: format!("{tool} -w {}", args.join(" ")),
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

/// Installs the rules (replacing an earlier copy of the chain). Idempotent.
pub fn install(cfg: &RulesConfig) -> Result<Vec<&'static str>, FirewallError> {
    let tools = tools();
    if !tools.contains(&"iptables") {
        return Err(FirewallError::NoTool);
    }
    let (jumps, chain) = rules(cfg);
    for tool in &tools {
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

/// Removes the jumps and the chain. Missing pieces are not an error.
pub fn remove(cfg: &RulesConfig) -> Result<(), FirewallError> {
    let (jumps, _) = rules(cfg);
    for tool in tools() {
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
}
