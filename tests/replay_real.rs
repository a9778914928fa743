//! Golden replays over the real captures in ../shared/pcaps/real (packet mode).

mod common;

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use stringban::config::{Config, Flags};
use stringban::replay::{self, Options, Report};
use stringban::{Engine, Verdict};

fn run(dir: &Path, files: &[&str], string: &str, port: u16) -> Report {
    let flags = Flags {
        string: vec![string.to_string()],
        ports: vec![port],
        ..Flags::default()
    };
    let config = Config::build(None, &flags).unwrap();
    let mut engine = Engine::new(&config);
    let paths: Vec<PathBuf> = files.iter().map(|f| dir.join(f)).collect();
    replay::replay(&mut engine, &paths, Options::default()).unwrap()
}

struct Row {
    file: String,
    client: IpAddr,
    port: u16,
    rcpt_domains: Vec<String>,
}

fn expected(dir: &Path) -> Vec<Row> {
    let text = std::fs::read_to_string(dir.join("expected.tsv")).unwrap();
    text.lines()
        .skip(1)
        .map(|line| {
            let f: Vec<&str> = line.split('\t').collect();
            Row {
                file: f[0].to_string(),
                client: f[1].parse().unwrap(),
                port: f[3].parse().unwrap(),
                rcpt_domains: if f[5] == "-" {
                    Vec::new()
                } else {
                    f[5].split(',').map(String::from).collect()
                },
            }
        })
        .collect()
}

/// For every SMTP connection with a recipient, a rule for one of its RCPT TO domains, guarding
/// the connection's server port, convicts that connection's client.
#[test]
fn a_recipient_domain_rule_convicts_each_client() {
    let Some(dir) = common::real_pcaps() else {
        return;
    };
    let rows = expected(&dir);
    let mut checked = 0;
    for row in rows.iter().filter(|r| !r.rcpt_domains.is_empty()) {
        let convicting = row.rcpt_domains.iter().find(|d| {
            let report = run(&dir, &[&row.file], d, row.port);
            replay::is_convicted(&report, row.client)
        });
        assert!(
            convicting.is_some(),
            "{} client {}: no rule for {:?} convicted it",
            row.file,
            row.client,
            row.rcpt_domains
        );
        checked += 1;
    }
    assert_eq!(
        checked, 27,
        "expected.tsv lists 27 connections with recipients"
    );
}

/// The first recipient domain alone convicts each client, and every match resets.
#[test]
fn the_first_recipient_domain_is_enough() {
    let Some(dir) = common::real_pcaps() else {
        return;
    };
    for row in expected(&dir).iter().filter(|r| !r.rcpt_domains.is_empty()) {
        let report = run(&dir, &[&row.file], &row.rcpt_domains[0], row.port);
        assert!(
            replay::is_convicted(&report, row.client),
            "{} {} {}",
            row.file,
            row.client,
            row.rcpt_domains[0]
        );
        let s = &report.stats;
        assert_eq!(
            s.verdict(Verdict::Reset),
            s.matches[0],
            "every match resets"
        );
    }
}

/// A domain that appears in no capture convicts nobody, and every capture (pcap and pcapng,
/// every link type) replays without an error.
#[test]
fn an_absent_domain_convicts_nothing() {
    let Some(dir) = common::real_pcaps() else {
        return;
    };
    let mut files: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.ends_with(".pcap") || n.ends_with(".pcapng"))
        .collect();
    files.sort();
    assert_eq!(files.len(), 30);
    let names: Vec<&str> = files.iter().map(String::as_str).collect();
    for port in [25, 587, 2525, 8240] {
        let report = run(&dir, &names, "@no-such-domain.invalid", port);
        assert!(report.banned.is_empty(), "{:?}", report.banned);
        assert_eq!(
            report.stats.verdict(Verdict::Drop) + report.stats.verdict(Verdict::Reset),
            0
        );
        assert!(report.stats.packets > 4_000, "{}", report.stats.packets);
        assert_eq!(report.stats.unparsed_total(), 0);
        assert!(report.files.iter().all(|f| f.truncated.is_none()));
    }
}

/// Banning is per source: in a capture with two SMTP clients, a rule for one's recipient
/// convicts it and not the other.
#[test]
fn only_the_matching_client_is_convicted() {
    let Some(dir) = common::real_pcaps() else {
        return;
    };
    let report = run(&dir, &["zeek_smtp.pcap"], "hotmail.com", 25);
    assert!(replay::is_convicted(
        &report,
        "192.168.133.100".parse().unwrap()
    ));
    assert!(!replay::is_convicted(&report, "10.10.1.4".parse().unwrap()));
    assert_eq!(
        replay::banned_sources(&report),
        vec!["192.168.133.100".to_string()]
    );
}

/// IPv6 clients are banned by /64 (the default prefix).
#[test]
fn ipv6_client_banned_by_prefix() {
    let Some(dir) = common::real_pcaps() else {
        return;
    };
    let report = run(&dir, &["zeek_smtp-attachment-msg.pcap"], "@example.com", 25);
    assert_eq!(replay::banned_sources(&report), vec!["::/64".to_string()]);
    assert!(replay::is_convicted(&report, "::1".parse().unwrap()));
}
