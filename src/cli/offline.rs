//! Commands that need no daemon: replay, gen, check, import.

use super::*;

/// The configuration of the command line and `--config`, with the allowlist's files read and,
/// for the daemon (`host`), its defaults: loopback and this host's addresses.
pub(crate) fn load_config(args: &RuleArgs, host: bool) -> anyhow::Result<Config> {
    let text = match &args.config {
        Some(path) => {
            Some(fs::read_to_string(path).map_err(|e| bad(format!("{}: {e}", path.display())))?)
        }
        None => None,
    };
    let flags = Flags {
        iptables: match &args.iptables {
            Some(path) => Some((
                path.display().to_string(),
                fs::read_to_string(path).map_err(|e| bad(format!("{}: {e}", path.display())))?,
            )),
            None => None,
        },
        iptables_family: family_arg(args.family)?,
        ..args.flags.clone()
    };
    let name = args.config.as_ref().map(|p| p.display().to_string());
    let file = name.as_deref().zip(text.as_deref());
    let mut config = Config::build(file, &flags).map_err(|e| bad(e.to_string()))?;
    let addrs = if host {
        Some(
            stringban::sys::ifaddrs::host_addresses()
                .map_err(|e| bad(format!("the host's addresses (getifaddrs): {e}")))?,
        )
    } else {
        None
    };
    config
        .resolve_allowlist(
            |path| fs::read_to_string(path).map_err(|e| e.to_string()),
            addrs.as_deref(),
        )
        .map_err(|e| bad(e.to_string()))?;
    Ok(config)
}

pub(crate) fn run_replay(args: ReplayArgs) -> anyhow::Result<()> {
    let config = load_config(&args.rules, false)?;
    let mut engine = Engine::new(&config);
    let verdicts: Option<Box<dyn Write>> = match &args.verdicts {
        Some(path) => {
            let f = File::create(path).map_err(|e| bad(format!("{}: {e}", path.display())))?;
            Some(Box::new(BufWriter::new(f)))
        }
        None => None,
    };
    // Imported rules: the chain the capture is judged in (a file with FORWARD rules only: there).
    let has = config
        .iptables
        .as_ref()
        .map_or(Vec::new(), |i| i.chains.hooks());
    let hook = match &args.chain {
        Some(c) => {
            let h = Hook::parse(c).ok_or_else(|| {
                bad(format!(
                    "command line: --chain = {c}: expected input or forward"
                ))
            })?;
            if config.iptables.is_some() && !has.contains(&h) {
                return Err(bad(format!(
                    "command line: --chain = {c}: the iptables rules have no {} rule",
                    h.chain()
                )));
            }
            h
        }
        None if has == [Hook::Forward] => Hook::Forward,
        None => Hook::Input,
    };
    let options = Options {
        verdicts,
        progress: !args.quiet,
        hook,
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
            eprintln!(
                "stringban: warning: {}",
                stringban::daemon::printable::printable(&format!("{}: {t}", f.path.display()))
            );
        }
    }
    Ok(())
}

pub(crate) fn run_gen(args: GenArgs) -> anyhow::Result<()> {
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
pub(crate) fn truth_path(capture: &Path) -> PathBuf {
    capture.with_extension("truth.tsv")
}

pub(crate) fn run_check(args: CheckArgs) -> anyhow::Result<()> {
    let config = load_config(&args.rules, false)?;
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
        if l.threshold > 1 {
            writeln!(
                out,
                "  bans after {} convictions within {}",
                l.threshold, l.window
            )?;
        }
        if l.escalate > 1 {
            writeln!(
                out,
                "  repeat offenders: ttl x{} per offence, at most {}, remembered {} after a ban",
                l.escalate,
                l.max_ttl(),
                l.remember()
            )?;
        }
    }
    for a in config.allow.list.entries() {
        writeln!(out, "allow {} ({})", a.cidr, a.origin)?;
    }
    writeln!(
        out,
        "allowlist defaults (run): {}",
        if config.allow.defaults {
            "loopback and this host's addresses"
        } else {
            "off"
        }
    )?;
    if let Some(ipt) = &config.iptables {
        for (family, table) in ipt.ruleset.tables() {
            let tool = match family {
                stringban::iptables::Family::V4 => "iptables",
                stringban::iptables::Family::V6 => "ip6tables",
            };
            for line in ipt.ruleset.save(family, &table) {
                writeln!(out, "{tool} -t {table} -S: {line}")?;
            }
        }
        let hooks: Vec<&str> = ipt.chains.hooks().iter().map(|h| h.chain()).collect();
        writeln!(
            out,
            "iptables rules run in: {}",
            if hooks.is_empty() {
                "no chain (the file has no INPUT or FORWARD rule in the filter table)".to_string()
            } else {
                hooks.join(" and ")
            }
        )?;
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

/// `--family 4|6` as the family of a save file's lines.
pub(crate) fn family_arg(
    family: Option<u8>,
) -> anyhow::Result<Option<stringban::iptables::Family>> {
    use stringban::iptables::Family;
    match family {
        None => Ok(None),
        Some(4) => Ok(Some(Family::V4)),
        Some(6) => Ok(Some(Family::V6)),
        Some(n) => Err(bad(format!(
            "command line: --family = {n}: expected 4 or 6"
        ))),
    }
}

pub(crate) fn run_import(args: IptImportArgs) -> anyhow::Result<()> {
    let text =
        fs::read_to_string(&args.file).map_err(|e| bad(format!("{}: {e}", args.file.display())))?;
    let set = stringban::iptables::parse_as(&text, family_arg(args.family)?)
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
