//! The generated attack, replayed in packet mode, gives exactly the verdicts its ground truth
//! predicts; and the `replay`/`gen` commands behave as documented.

mod common;

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Command;

use common::TempDir;
use stringban::attack::{self, Expected, GenConfig, Kind, Oracle, Truth};
use stringban::config::{Config, Flags};
use stringban::replay::{self, Options};
use stringban::{Engine, Verdict};

fn stringban() -> Command {
    Command::new(env!("CARGO_BIN_EXE_stringban"))
}

/// Runs `cmd`, asserting that it succeeds (showing its stderr if not).
fn ok(cmd: &mut Command) -> std::process::Output {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn gen_config() -> GenConfig {
    GenConfig {
        sessions: 3_000,
        sources: 900,
        legit_ratio: 0.15,
        seed: 42,
        ..GenConfig::default()
    }
}

fn write_capture(dir: &TempDir, cfg: &GenConfig) -> (PathBuf, Truth) {
    let path = dir.path().join("attack.pcap");
    let file = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
    let (truth, _) = attack::generate(cfg, file).unwrap();
    (path, truth)
}

/// Packet mode is the kernel's xt_string: it catches plain and pipelined spam, and it misses
/// `@EXAMPLE.COM` and a RCPT line split across two segments, while a legit mail whose body
/// mentions the domain gets its sender banned. (The stream and smtp modes will fix all three.)
#[test]
fn packet_mode_verdicts_match_the_ground_truth_exactly() {
    let dir = TempDir::new("gen");
    let (path, truth) = write_capture(&dir, &gen_config());
    let flags = Flags {
        string: vec!["@example.com".into()],
        ports: vec![25],
        ttl: Some("24h".into()),
        ..Flags::default()
    };
    let mut engine = Engine::new(&Config::build(None, &flags).unwrap());
    let report = replay::replay(&mut engine, &[path], Options::default()).unwrap();
    let want = truth.expected(32, 64);
    let s = &report.stats;
    assert_eq!(s.packets, want.packets);
    assert_eq!(s.verdict(Verdict::Accept), want.accept, "accept");
    assert_eq!(s.verdict(Verdict::Drop), want.drop, "drop");
    assert_eq!(s.verdict(Verdict::Reset), want.reset, "reset");
    assert_eq!(s.verdict(Verdict::Bypass), 0);
    assert_eq!(replay::banned_sources(&report).len(), want.convicted.len());
    let mut got = replay::banned_sources(&report);
    got.sort();
    assert_eq!(got, want.convicted);

    // What the kernel recipe gets wrong, stated as counts.
    assert!(
        want.missed_spam[&Kind::SpamUpper] > 0,
        "upper-case spam slips through packet mode"
    );
    assert!(
        want.missed_spam[&Kind::SpamSplit] > 0,
        "split RCPT slips through packet mode"
    );
    assert!(!want.missed_spam.contains_key(&Kind::Spam));
    assert!(!want.missed_spam.contains_key(&Kind::SpamPipelined));
    assert!(
        want.hurt_legit[&Kind::LegitMention] > 0,
        "body mentions get legit senders banned"
    );

    // Per source: upper-case and split bots are never convicted; every plain bot is.
    let mut kinds: HashMap<String, Kind> = HashMap::new();
    for r in &truth.rows {
        kinds.insert(attack::ban_key(r.client, 32, 64), r.kind);
    }
    for (key, kind) in &kinds {
        let convicted = got.binary_search(key).is_ok();
        match kind {
            Kind::SpamUpper | Kind::SpamSplit => assert!(!convicted, "{key} ({kind:?})"),
            Kind::Spam | Kind::SpamPipelined => assert!(convicted, "{key} ({kind:?})"),
            Kind::Legit | Kind::LegitMention => {}
        }
    }
}

/// Replays `path` with `--string @example.com --port 25 --ttl 24h` plus `flags`.
fn replay_with(path: &std::path::Path, flags: Flags) -> replay::Report {
    let flags = Flags {
        string: vec!["@example.com".into()],
        ports: vec![25],
        ttl: Some("24h".into()),
        ..flags
    };
    let mut engine = Engine::new(&Config::build(None, &flags).unwrap());
    replay::replay(&mut engine, &[path.to_path_buf()], Options::default()).unwrap()
}

fn assert_exact(report: &replay::Report, want: &Expected) {
    let s = &report.stats;
    assert_eq!(s.packets, want.packets);
    assert_eq!(s.verdict(Verdict::Accept), want.accept, "accept");
    assert_eq!(s.verdict(Verdict::Bypass), want.bypass, "bypass");
    assert_eq!(s.verdict(Verdict::Drop), want.drop, "drop");
    assert_eq!(s.verdict(Verdict::Reset), want.reset, "reset");
    let mut got = replay::banned_sources(report);
    got.sort();
    assert_eq!(got, want.convicted);
}

/// Stream mode with --icase reads the byte stream across segments: upper-case and split RCPTs
/// are caught — and, not being SMTP-aware, so is a body that mentions the domain.
#[test]
fn stream_mode_verdicts_match_the_ground_truth_exactly() {
    let dir = TempDir::new("stream");
    let (path, truth) = write_capture(&dir, &gen_config());
    let report = replay_with(
        &path,
        Flags {
            mode: Some("stream".into()),
            icase: true,
            ..Flags::default()
        },
    );
    let want = truth.expected_for(Oracle::StreamIcase, 32, 64);
    assert_exact(&report, &want);
    assert!(
        want.missed_spam.is_empty(),
        "every spam kind is caught: {:?}",
        want.missed_spam
    );
    // A source that once mentioned the domain in a body is banned, with its later plain mail.
    assert!(want.hurt_legit[&Kind::LegitMention] > 0);
    assert_eq!(report.stats.flow_refused, 0);
}

/// Smtp mode matches only envelope commands, in any case and across segments: every spam kind
/// is caught and no legit sender is banned, not even one whose body mentions the domain. With
/// bypass (the default) each clean session leaves the queue at the server's 354.
#[test]
fn smtp_mode_verdicts_match_the_ground_truth_exactly() {
    let dir = TempDir::new("smtp");
    let (path, truth) = write_capture(&dir, &gen_config());
    for bypass in [true, false] {
        let report = replay_with(
            &path,
            Flags {
                mode: Some("smtp".into()),
                no_bypass: !bypass,
                ..Flags::default()
            },
        );
        let want = truth.expected_for(Oracle::Smtp, 32, 64);
        assert_exact(&report, &want);
        assert!(want.missed_spam.is_empty(), "{:?}", want.missed_spam);
        assert!(want.hurt_legit.is_empty(), "{:?}", want.hurt_legit);
        assert_eq!(report.stats.flows_bypassed, 0, "bypass {bypass}");
        assert_eq!(report.stats.smtp_bare_newlines, 0);
        // Every clean message was read to its CRLF.CRLF.
        assert!(
            report.stats.smtp_messages
                >= truth.rows.iter().filter(|r| !r.kind.is_spam()).count() as u64
        );
    }
    // By rcpt domain instead of a string: the same convictions.
    let by_domain = {
        let flags = Flags {
            rcpt_domain: vec!["example.com".into()],
            ports: vec![25],
            ttl: Some("24h".into()),
            ..Flags::default()
        };
        let mut engine = Engine::new(&Config::build(None, &flags).unwrap());
        replay::replay(&mut engine, std::slice::from_ref(&path), Options::default()).unwrap()
    };
    let mut got = replay::banned_sources(&by_domain);
    got.sort();
    assert_eq!(got, truth.expected_for(Oracle::Smtp, 32, 64).convicted);
}

/// The seed report's kernel recipe, imported unchanged (`--iptables`): `-m string` + `-m
/// recent --set` + REJECT, and `-m recent --update --seconds 86400 -j DROP`. It decides as
/// packet mode does with addresses banned one by one (recent keys are whole addresses, so the
/// IPv6 bots that rotate inside their /64 are caught address by address): exactly the ground
/// truth's packet-mode prediction with /128 keys.
#[test]
fn the_imported_kernel_recipe_decides_as_the_kernel_would() {
    let dir = TempDir::new("iptables");
    let (path, truth) = write_capture(&dir, &gen_config());
    // Written once for iptables and once for ip6tables (the bots include IPv6 ones); one
    // recent table serves both families, as in the kernel.
    let recipe = ["iptables", "ip6tables"]
        .map(|ipt| format!("{ipt} -N blackchain\n{ipt} -A INPUT -p tcp --dport 25 -m recent --name blacklist --update --seconds 86400 -j DROP\n{ipt} -A INPUT -p tcp --dport ${{PORT}} -m string --string \"@example.com\" --algo bm -j blackchain\n{ipt} -A blackchain -m recent --set --name blacklist -p tcp -j REJECT --reject-with tcp-reset\n"))
        .concat();
    let recipe = format!("#!/bin/sh\nPORT=25\n{recipe}");
    let flags = Flags {
        iptables: Some(("recipe.sh".into(), recipe.clone())),
        ..Flags::default()
    };
    let mut engine = Engine::new(&Config::build(None, &flags).unwrap());
    let report = replay::replay(&mut engine, &[path], Options::default()).unwrap();
    let want = truth.expected(32, 128);
    let s = &report.stats;
    assert_eq!(s.packets, want.packets);
    assert_eq!(s.verdict(Verdict::Accept), want.accept, "accept");
    assert_eq!(s.verdict(Verdict::Drop), want.drop, "drop");
    assert_eq!(s.verdict(Verdict::Reset), want.reset, "reset");
    // The sources the recent table holds are reported as banned: every client that sent the
    // pattern (its first such packet was reset), each still banned at the end.
    let mut spammers: Vec<String> = truth
        .rows
        .iter()
        .filter(|r| r.pattern_packet.is_some())
        .map(|r| r.client.to_string())
        .collect();
    spammers.sort();
    spammers.dedup();
    let mut banned: Vec<String> = report
        .banned
        .iter()
        .map(|c| c.key.addr().to_string())
        .collect();
    banned.sort();
    assert_eq!(banned, spammers);
    assert!(
        report
            .banned
            .iter()
            .all(|c| c.live_at_end && c.list == "recent:blacklist")
    );
    let dropped: u64 = report.banned.iter().map(|c| c.dropped).sum();
    assert_eq!(
        dropped,
        want.drop + want.reset,
        "every drop and reset is a held source's"
    );
    let text = report.to_string();
    assert!(
        text.contains(&format!(
            "banned:   {} sources held by the recent tables the rules read ({} still acted on",
            banned.len(),
            banned.len()
        )),
        "{text}"
    );

    // The same recipe in FORWARD (a gateway's): the capture is judged there, alike.
    let forward = dir.path().join("forward.sh");
    std::fs::write(&forward, recipe.replace("-A INPUT", "-A FORWARD")).unwrap();
    let out = ok(stringban()
        .args(["replay", "--json", "--quiet", "--iptables"])
        .arg(&forward)
        .arg(dir.path().join("attack.pcap")));
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(j["verdicts"]["reset"], want.reset);
    assert_eq!(j["verdicts"]["drop"], want.drop);
    assert_eq!(j["banned_count"], spammers.len());
    let out = stringban()
        .args(["replay", "--quiet", "--chain", "input", "--iptables"])
        .arg(&forward)
        .arg(dir.path().join("attack.pcap"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("the iptables rules have no INPUT rule"));

    // `stringban import` turns the script into a configuration that decides alike.
    let script = dir.path().join("recipe.sh");
    std::fs::write(&script, &recipe).unwrap();
    let conf = dir.path().join("imported.toml");
    ok(stringban()
        .arg("import")
        .arg(&script)
        .arg("--out")
        .arg(&conf));
    let out = ok(stringban()
        .args(["replay", "--json", "--quiet", "--config"])
        .arg(&conf)
        .arg(dir.path().join("attack.pcap")));
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(j["verdicts"]["reset"], want.reset);
    assert_eq!(j["verdicts"]["drop"], want.drop);
}

#[test]
fn icase_catches_upper_case_but_not_splits() {
    let dir = TempDir::new("icase");
    let (path, truth) = write_capture(&dir, &gen_config());
    let flags = Flags {
        string: vec!["@example.com".into()],
        icase: true,
        ports: vec![25],
        ..Flags::default()
    };
    let mut engine = Engine::new(&Config::build(None, &flags).unwrap());
    let report = replay::replay(&mut engine, &[path], Options::default()).unwrap();
    let got = replay::banned_sources(&report);
    for r in &truth.rows {
        let key = attack::ban_key(r.client, 32, 64);
        match r.kind {
            Kind::SpamUpper => assert!(got.contains(&key), "{key}"),
            Kind::SpamSplit => assert!(!got.contains(&key), "{key}"),
            _ => {}
        }
    }
}

#[test]
fn cli_gen_then_replay_json_and_verdict_log() {
    let dir = TempDir::new("cli");
    let pcap = dir.path().join("flood.pcap");
    let out = ok(stringban()
        .args([
            "gen",
            "--sessions",
            "500",
            "--sources",
            "150",
            "--seed",
            "3",
            "--out",
        ])
        .arg(&pcap));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("expects: accept"), "{stdout}");
    let truth_path = dir.path().join("flood.truth.tsv");
    let truth = Truth::parse(&std::fs::read_to_string(&truth_path).unwrap()).unwrap();
    assert_eq!(truth.rows.len(), 500);
    let want = truth.expected(32, 64);

    let tsv = dir.path().join("verdicts.tsv");
    let out = ok(stringban()
        .args([
            "replay",
            "--json",
            "--string",
            "@example.com",
            "--port",
            "25",
            "--ttl",
            "24h",
            "--action",
            "reject",
            "--verdicts",
        ])
        .arg(&tsv)
        .arg(&pcap));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["packets"], want.packets);
    assert_eq!(json["verdicts"]["accept"], want.accept);
    assert_eq!(json["verdicts"]["drop"], want.drop);
    assert_eq!(json["verdicts"]["reset"], want.reset);
    assert_eq!(json["verdicts"]["bypass"], 0);
    assert_eq!(
        json["banned"].as_array().unwrap().len(),
        want.convicted.len()
    );
    assert!(json["engine_pps"].as_f64().unwrap() > 0.0);

    let log = std::fs::read_to_string(&tsv).unwrap();
    let lines: Vec<&str> = log.lines().collect();
    assert_eq!(lines[0], "#index\tsrc\tsport\tdst\tdport\tverdict\treason");
    assert_eq!(lines.len() as u64, want.packets + 1);
    let resets: Vec<&str> = lines
        .iter()
        .filter(|l| l.split('\t').nth(5) == Some("reset"))
        .copied()
        .collect();
    assert_eq!(resets.len() as u64, want.reset);
    assert!(
        resets
            .iter()
            .all(|l| l.ends_with("\tmatched:@example.com") && l.split('\t').nth(4) == Some("25"))
    );
    assert!(lines.iter().any(|l| l.ends_with("\tdrop\tbanned:default")));
    assert!(lines.iter().any(|l| l.ends_with("\taccept\tunguarded")));

    // The human summary names the same numbers.
    let out = stringban()
        .args(["replay", "--string", "@example.com"])
        .arg(&pcap)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(&format!("reset {}", want.reset)), "{text}");
    assert!(text.contains("top sources by packets dropped"), "{text}");
    assert!(text.contains("M packets/s"), "{text}");
}

#[test]
fn bad_input_exits_2_with_a_clear_message() {
    let dir = TempDir::new("bad");
    let run = |args: &[&str]| {
        let out = stringban().args(args).output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let missing = dir.path().join("missing.pcap");
    let (code, err) = run(&["replay", "--string", "x", missing.to_str().unwrap()]);
    assert_eq!(code, Some(2));
    assert!(
        err.contains("missing.pcap") && err.contains("No such file"),
        "{err}"
    );

    let text = dir.path().join("notes.pcap");
    std::fs::write(&text, "these are not packets\n").unwrap();
    let (code, err) = run(&["replay", "--string", "x", text.to_str().unwrap()]);
    assert_eq!(code, Some(2));
    assert!(
        err.contains("notes.pcap: not a pcap or pcapng file"),
        "{err}"
    );

    let conf = dir.path().join("bad.toml");
    std::fs::write(
        &conf,
        "[[rule]]\nstring = \"@example.com\"\n\n[[list]]\nname = \"x\"\nttl = \"forever\"\n",
    )
    .unwrap();
    let (code, err) = run(&[
        "replay",
        "--config",
        conf.to_str().unwrap(),
        text.to_str().unwrap(),
    ]);
    assert_eq!(code, Some(2));
    assert!(err.contains("bad.toml:6: list.ttl = forever:"), "{err}");

    let (code, err) = run(&["replay", "--hex-string", "|0g|", text.to_str().unwrap()]);
    assert_eq!(code, Some(2));
    assert!(
        err.contains("--hex-string = |0g|: Invalid hex char 'g'"),
        "{err}"
    );

    let (code, err) = run(&[
        "replay",
        "--string",
        "x",
        "--port",
        "smtp",
        text.to_str().unwrap(),
    ]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("smtp"), "{err}");

    let (code, err) = run(&[
        "gen",
        "--out",
        dir.path().join("g.pcap").to_str().unwrap(),
        "--legit-ratio",
        "2",
    ]);
    assert_eq!(code, Some(2));
    assert!(err.contains("--legit-ratio = 2"), "{err}");
}

#[test]
fn truncated_capture_is_replayed_up_to_the_cut() {
    let dir = TempDir::new("trunc");
    let (path, truth) = write_capture(
        &dir,
        &GenConfig {
            sessions: 200,
            sources: 60,
            ..gen_config()
        },
    );
    let bytes = std::fs::read(&path).unwrap();
    let cut = dir.path().join("cut.pcap");
    std::fs::write(&cut, &bytes[..bytes.len() - 30]).unwrap();
    let out = stringban()
        .args(["replay", "--json", "--string", "@example.com"])
        .arg(&cut)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("cut.pcap: capture is truncated"),
        "{stderr}"
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let total: u64 = truth
        .rows
        .iter()
        .map(|r| u64::from(r.c2s_packets + r.s2c_packets))
        .sum();
    assert_eq!(json["packets"], total - 1);
    assert!(json["files"][0]["truncated"].is_string());
}

#[test]
fn config_file_and_check_command() {
    let example = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/stringban.toml");
    let out = ok(stringban().args(["check", "--config"]).arg(&example));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("-m string --string \"@example.com\" --algo bm"),
        "{text}"
    );
    assert!(text.contains("list \"spam\": ttl 1d"), "{text}");
}

#[test]
fn check_reads_ip6tables_save_files() {
    let save =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/live/import/t-lines.save6");
    let out = ok(stringban().args(["check", "--iptables"]).arg(&save));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("ip6tables -t filter -S: -P FORWARD DROP\n"),
        "{text}"
    );
    assert!(text.contains("ip6tables -t filter -S: -A OUTPUT -m recent --rcheck --hitcount 12 --name foo --mask ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff --rsource\n"), "{text}");
    assert!(
        text.contains("iptables rules run in: INPUT and FORWARD\n"),
        "{text}"
    );
    // Without its header, the family must be given.
    let dir = TempDir::new("save6");
    let bare = dir.path().join("bare");
    let body: String = std::fs::read_to_string(&save)
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&bare, body).unwrap();
    let out = stringban()
        .args(["check", "--iptables"])
        .arg(&bare)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not of this family"));
    ok(stringban()
        .args(["check", "--family", "6", "--iptables"])
        .arg(&bare));
    let out = stringban()
        .args(["check", "--family", "5", "--iptables"])
        .arg(&bare)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--family = 5: expected 4 or 6"));
}

#[test]
fn rules_print_shows_the_chain() {
    let out = ok(stringban().args(["rules", "print", "--port", "25,587", "--queues", "0:1"]));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("iptables -w -I INPUT -p tcp -m multiport --dports 25,587 -j STRINGBAN"),
        "{text}"
    );
    assert!(
        text.contains("-j NFQUEUE --queue-balance 0:1 --queue-bypass"),
        "{text}"
    );
    assert!(text.contains("ip6tables -w -A STRINGBAN -p tcp -m mark --mark 0x20000/0x30000 -j REJECT --reject-with tcp-reset"), "{text}");
    let out = ok(stringban().args([
        "rules",
        "print",
        "--fail-closed",
        "--bypass-mark",
        "0x100",
        "--reset-mark",
        "0x200",
        "--mark-mask",
        "0x300",
    ]));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("-j NFQUEUE --queue-num 0\n"), "{text}");
    assert!(
        text.contains("-p tcp -m mark --mark 0x200/0x300 -j REJECT --reject-with tcp-reset"),
        "{text}"
    );
    // Packet mode never bypasses a flow: no connmark rules, so conntrack stays out of the path.
    assert!(!text.contains("connmark"), "{text}");
    // A gateway: FORWARD to the protected networks, each family its own; smtp mode also queues
    // the servers' replies on their way back.
    let out = ok(stringban().args([
        "rules",
        "print",
        "--chain",
        "forward",
        "--protect",
        "198.18.0.0/24,2001:db8::/48",
        "--mode",
        "smtp",
    ]));
    let text = String::from_utf8_lossy(&out.stdout);
    for want in [
        "iptables -w -I FORWARD -d 198.18.0.0/24 -p tcp -m multiport --dports 25 -j STRINGBAN\n",
        "iptables -w -I FORWARD -s 198.18.0.0/24 -p tcp -m multiport --sports 25 -j STRINGBAN\n",
        "ip6tables -w -I FORWARD -d 2001:db8::/48 -p tcp -m multiport --dports 25 -j STRINGBAN\n",
    ] {
        assert!(text.contains(want), "{want}\n{text}");
    }
    assert!(!text.contains("INPUT"), "{text}");
    let bad = |args: &[&str], want: &str| {
        let out = stringban().args(args).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(want), "{args:?}: {err}");
    };
    bad(
        &["rules", "print", "--protect", "198.18.0.0/24"],
        "--protect applies to --chain forward",
    );
    bad(
        &["rules", "print", "--chain", "output"],
        "--chain = output: expected input or forward",
    );
    bad(
        &[
            "rules",
            "print",
            "--chain",
            "forward",
            "--protect",
            "198.18.0.1/24",
        ],
        "--protect = 198.18.0.1/24",
    );
}

#[test]
fn run_and_rules_refuse_bad_flags_with_exit_2() {
    let run = |args: &[&str]| {
        let out = stringban().args(args).output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let (code, err) = run(&["rules", "print", "--queues", "3:1"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("--queues = 3:1"), "{err}");
    let (code, err) = run(&[
        "rules",
        "print",
        "--bypass-mark",
        "0x10000",
        "--reset-mark",
        "0x10000",
    ]);
    assert_eq!(code, Some(2));
    assert!(
        err.contains("need two different non-zero marks inside the mask"),
        "{err}"
    );
    let (code, err) = run(&["rules", "flush"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("expected print, install or remove"), "{err}");
    let (code, err) = run(&["run", "--string", "x", "--log-level", "loud"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("--log-level = loud"), "{err}");
    let (code, err) = run(&["run", "--hex-string", "|zz|"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("Invalid hex char 'z'"), "{err}");
}
