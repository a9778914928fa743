//! Golden replays over the real captures in ../shared/pcaps/real: packet mode, and smtp mode
//! against the envelope domains of expected.tsv.

mod common;

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use stringban::config::{Config, Flags};
use stringban::engine::Unproven;
use stringban::replay::{self, Options, Report};
use stringban::{Engine, Verdict};

fn run(dir: &Path, files: &[&str], string: &str, port: u16) -> Report {
    run_with(
        dir,
        files,
        Flags {
            string: vec![string.to_string()],
            ports: vec![port],
            ..Flags::default()
        },
    )
}

fn run_with(dir: &Path, files: &[&str], flags: Flags) -> Report {
    let config = Config::build(None, &flags).unwrap();
    let mut engine = Engine::new(&config);
    let paths: Vec<PathBuf> = files.iter().map(|f| dir.join(f)).collect();
    replay::replay(&mut engine, &paths, Options::default()).unwrap()
}

struct Row {
    file: String,
    client: IpAddr,
    port: u16,
    mail_from_domains: Vec<String>,
    rcpt_domains: Vec<String>,
}

impl Row {
    /// Every envelope domain of the connection, lower case.
    fn domains(&self) -> impl Iterator<Item = String> + '_ {
        self.mail_from_domains
            .iter()
            .chain(&self.rcpt_domains)
            .map(|d| d.to_ascii_lowercase())
    }
}

fn list(field: &str) -> Vec<String> {
    if field == "-" {
        Vec::new()
    } else {
        field.split(',').map(String::from).collect()
    }
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
                mail_from_domains: list(f[4]),
                rcpt_domains: list(f[5]),
            }
        })
        .collect()
}

/// For every SMTP connection with a recipient, a rule for one of its RCPT TO domains, guarding
/// the connection's server port, convicts that connection's client.
#[test]
fn a_recipient_domain_rule_convicts_each_client() {
    let Some(dir) = common::real_pcaps("replay_real::a_recipient_domain_rule_convicts_each_client")
    else {
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
    let Some(dir) = common::real_pcaps("replay_real::the_first_recipient_domain_is_enough") else {
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
    let Some(dir) = common::real_pcaps("replay_real::an_absent_domain_convicts_nothing") else {
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
    let Some(dir) = common::real_pcaps("replay_real::only_the_matching_client_is_convicted") else {
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
    let Some(dir) = common::real_pcaps("replay_real::ipv6_client_banned_by_prefix") else {
        return;
    };
    let report = run(&dir, &["zeek_smtp-attachment-msg.pcap"], "@example.com", 25);
    assert_eq!(replay::banned_sources(&report), vec!["::/64".to_string()]);
    assert!(replay::is_convicted(&report, "::1".parse().unwrap()));
}

/// Captures of the client's side only (no SYN-ACK, no reply): no handshake to prove an address.
const ONE_SIDED: [&str; 2] = [
    "zeek_smtp-one-side-only.pcap",
    "zeek_smtp-attachment-msg.pcap",
];

fn smtp_flags(string: &str, port: u16, bypass: bool) -> Flags {
    Flags {
        string: vec![string.to_string()],
        ports: vec![port],
        mode: Some("smtp".into()),
        no_bypass: !bypass,
        ..Flags::default()
    }
}

/// Smtp mode, every session followed to its end: for each capture, port and envelope domain D
/// in expected.tsv, `--string @D --mode smtp` convicts exactly the clients with a MAIL FROM or
/// RCPT TO domain that `@D` matches (a domain starting with D), and no other. This covers the
/// captures with a domain split across segments, out-of-order segments, pipelining, BDAT, and
/// commands after a refused DATA.
#[test]
fn smtp_mode_convicts_exactly_the_envelope_domains() {
    let Some(dir) =
        common::real_pcaps("replay_real::smtp_mode_convicts_exactly_the_envelope_domains")
    else {
        return;
    };
    let rows = expected(&dir);
    let mut cases = 0;
    let mut seen = std::collections::BTreeSet::new();
    for row in &rows {
        if !seen.insert((row.file.clone(), row.port)) {
            continue;
        }
        let here: Vec<&Row> = rows
            .iter()
            .filter(|r| r.file == row.file && r.port == row.port)
            .collect();
        let domains: std::collections::BTreeSet<String> =
            here.iter().flat_map(|r| r.domains()).collect();
        for d in &domains {
            let report = run_with(
                &dir,
                &[&row.file],
                smtp_flags(&format!("@{d}"), row.port, false),
            );
            let want: std::collections::HashSet<IpAddr> = here
                .iter()
                .filter(|r| r.domains().any(|x| x.starts_with(d.as_str())))
                .map(|r| r.client)
                .collect();
            // A capture of the client's side alone shows no handshake: nothing proves the
            // client's address, so nobody is convicted and the refusal is counted.
            let one_sided = ONE_SIDED.contains(&row.file.as_str());
            if one_sided && !want.is_empty() {
                assert!(
                    report.stats.unproven[Unproven::NoHandshake as usize] > 0,
                    "{}: @{d}",
                    row.file
                );
            }
            for r in &here {
                assert_eq!(
                    replay::is_convicted(&report, r.client),
                    want.contains(&r.client) && !one_sided,
                    "{} port {}: @{d} and client {}",
                    r.file,
                    r.port,
                    r.client
                );
            }
            cases += 1;
        }
    }
    assert!(cases > 600, "{cases} (capture, domain) cases");
}

/// With bypass (the daemon's default) a plaintext session is still read to its end: every
/// transaction's envelope counts, so the convictions are exactly those of the full reading.
#[test]
fn smtp_mode_with_bypass_reads_every_transaction() {
    let Some(dir) =
        common::real_pcaps("replay_real::smtp_mode_with_bypass_reads_every_transaction")
    else {
        return;
    };
    for row in expected(&dir)
        .iter()
        .filter(|r| !r.rcpt_domains.is_empty() && !ONE_SIDED.contains(&r.file.as_str()))
    {
        for d in &row.rcpt_domains {
            let d = format!("@{d}");
            let with = run_with(&dir, &[&row.file], smtp_flags(&d, row.port, true));
            let without = run_with(&dir, &[&row.file], smtp_flags(&d, row.port, false));
            assert!(
                replay::is_convicted(&with, row.client),
                "{} {} {d}",
                row.file,
                row.client
            );
            let (mut a, mut b) = (
                replay::banned_sources(&with),
                replay::banned_sources(&without),
            );
            a.sort();
            b.sort();
            assert_eq!(a, b, "{} {d}", row.file);
        }
    }
}

/// A domain found only in a capture's headers or body (packet mode sees it there, as the kernel
/// would) convicts nobody in smtp mode — including text inside BDAT chunks.
#[test]
fn smtp_mode_ignores_domains_in_headers_and_bodies() {
    let Some(dir) =
        common::real_pcaps("replay_real::smtp_mode_ignores_domains_in_headers_and_bodies")
    else {
        return;
    };
    let cases = [
        (
            "zeek_rfc3030-bdat-multipart-chunked.pcap",
            25,
            "corelight.com",
        ),
        ("zeek_smtp-bdat-pipeline-8bitmime.pcap", 25, "gmail.com"),
        ("zeek_smtp-multi-addr.pcap", 25, "gmail.com"),
        ("zeek_smtp-multi-addr.pcap", 25, "example.com"),
        (
            "suricata-verify_smtpsuricataflowbitsFN.pcap",
            25,
            "sd-26634.dedibox.fr",
        ),
        (
            "suricata-verify_mime-stream-depth.pcap",
            2525,
            "carrefourdentaire.com",
        ),
    ];
    for (file, port, domain) in cases {
        let needle = format!("@{domain}");
        let packet = run_with(
            &dir,
            &[file],
            Flags {
                string: vec![needle.clone()],
                icase: true,
                ports: vec![port],
                ..Flags::default()
            },
        );
        assert!(
            !packet.banned.is_empty(),
            "{file}: packet mode sees {needle}"
        );
        for bypass in [false, true] {
            let smtp = run_with(&dir, &[file], smtp_flags(&needle, port, bypass));
            assert!(
                smtp.banned.is_empty(),
                "{file}: smtp mode convicts nobody for {needle}"
            );
            assert_eq!(smtp.stats.verdict(Verdict::Reset), 0);
        }
    }
}
