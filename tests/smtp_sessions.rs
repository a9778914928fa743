//! Smtp mode follows every transaction of a session: crafted captures of each evasion
//! and false-positive class, each whole, cut at random places, out of order and retransmitted, in
//! Ethernet and raw-IP captures, replayed with default flags and with `--no-bypass`, under a
//! string rule and under `--rcpt-domain` rules: the banned set is exactly the spam senders.
//! Then random sessions: segmentation never changes who is banned.

mod common;

use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::process::Command;

use common::TempDir;
use stringban::attack::Rng;
use stringban::capture::pcap::linktype;
use stringban::config::{Config, Flags};
use stringban::replay::{self, Options};
use stringban::script::{self, Frame, Script, Shape};
use stringban::{Engine, Instant, Verdict};

const SERVER: (IpAddr, u16) = (IpAddr::V4(Ipv4Addr::new(198, 18, 0, 1)), 25);
const GREET: &str = "220 mx.test ESMTP\r\n";
const EHLO: &str = "EHLO bot.test\r\n";
const EHLO_OK: &str = "250-mx.test\r\n250-PIPELINING\r\n250-CHUNKING\r\n250 8BITMIME\r\n";

/// One clean transaction, DATA waited for, its body ended and answered.
fn clean_mail(s: Script, body: &str) -> Script {
    s.client("MAIL FROM:<a@partner.test>\r\n")
        .server("250 ok\r\n")
        .client("RCPT TO:<b@hosted.test>\r\n")
        .server("250 ok\r\n")
        .client("DATA\r\n")
        .server("354 go ahead\r\n")
        .client(format!("{body}\r\n.\r\n"))
        .server("250 queued\r\n")
}

fn start(n: u8) -> Script {
    Script::new(
        (
            IpAddr::V4(Ipv4Addr::new(198, 19, 0, n)),
            40_000 + u16::from(n),
        ),
        SERVER,
    )
    .server(GREET)
    .client(EHLO)
    .server(EHLO_OK)
}

const SPAM_RCPT: &str = "MAIL FROM:<x@bot.test>\r\nRCPT TO:<victim@Example.COM>\r\n";

/// Every class: a name, the session, and whether its sender must be banned (string rule
/// `@example.com`; `--rcpt-domain example.com` agrees, except where `sub` says the recipient is
/// in a subdomain: banned only with `--subdomains`).
struct Case {
    name: &'static str,
    script: Script,
    spam: bool,
    sub: bool,
}

fn cases() -> Vec<Case> {
    let body = "Subject: minutes\r\n\r\nThe figures are attached.";
    let big: String = (0..560)
        .map(|i| format!("Line {i:04} of a long report, as discussed in the meeting.\r\n"))
        .collect(); // 40 KB
    let mut c = vec![
        Case {
            name: "second transaction after DATA",
            script: clean_mail(start(1), body).client(SPAM_RCPT).server("250 ok\r\n250 ok\r\n"),
            spam: true,
            sub: false,
        },
        Case {
            name: "second transaction after BDAT LAST",
            script: start(2)
                .client("MAIL FROM:<a@partner.test>\r\nRCPT TO:<b@hosted.test>\r\nBDAT 12 LAST\r\nhello world!")
                .server("250 ok\r\n250 ok\r\n250 chunk ok\r\n")
                .client(SPAM_RCPT),
            spam: true,
            sub: false,
        },
        Case {
            name: "a 40 KB clean mail, then spam",
            script: clean_mail(start(3), &big[..big.len() - 2]).client(SPAM_RCPT),
            spam: true,
            sub: false,
        },
        Case {
            name: "the fourth transaction after three clean ones",
            script: clean_mail(clean_mail(clean_mail(start(4), body), body), body)
                .client(SPAM_RCPT),
            spam: true,
            sub: false,
        },
        Case {
            name: "end of data and the next envelope in one segment (RFC 2920)",
            script: start(5)
                .client("MAIL FROM:<a@partner.test>\r\nRCPT TO:<b@hosted.test>\r\nDATA\r\n")
                .server("250 ok\r\n250 ok\r\n354 go ahead\r\n")
                .client(format!("{body}\r\n.\r\n{SPAM_RCPT}DATA\r\n"))
                .server("250 queued\r\n250 ok\r\n250 ok\r\n354 go\r\n"),
            spam: true,
            sub: false,
        },
        Case {
            name: "the next envelope right after the end of data, before any reply",
            script: start(6)
                .client("MAIL FROM:<a@partner.test>\r\nRCPT TO:<b@hosted.test>\r\nDATA\r\n")
                .server("250 ok\r\n250 ok\r\n354 go ahead\r\n")
                .client(format!("{body}\r\n.\r\n"))
                .client(SPAM_RCPT),
            spam: true,
            sub: false,
        },
        Case {
            name: "after RSET",
            script: start(7)
                .client("MAIL FROM:<a@partner.test>\r\n")
                .server("250 ok\r\n")
                .client("RSET\r\n")
                .server("250 reset\r\n")
                .client(SPAM_RCPT),
            spam: true,
            sub: false,
        },
        Case {
            name: "after a refused DATA",
            script: start(8)
                .client("MAIL FROM:<a@partner.test>\r\nRCPT TO:<nobody@hosted.test>\r\nDATA\r\n")
                .server("250 ok\r\n550 no such user\r\n554 no valid recipients\r\n")
                .client("RCPT TO:<b@hosted.test>\r\nDATA\r\nRCPT TO:<v@example.com>\r\n"),
            spam: true,
            sub: false,
        },
        Case {
            name: "after a refused STARTTLS",
            script: start(9)
                .client("STARTTLS\r\n")
                .server("454 TLS not available\r\n")
                .client(SPAM_RCPT),
            spam: true,
            sub: false,
        },
        Case {
            name: "a subdomain recipient in a second transaction",
            script: clean_mail(start(10), body)
                .client("MAIL FROM:<x@bot.test>\r\nRCPT TO:<v@mail.example.com>\r\n"),
            spam: false,
            sub: true,
        },
        Case {
            name: "a body that mentions the domain in headers and text",
            script: clean_mail(
                start(20),
                "To: <billing@example.com>\r\nCc: RCPT TO:<v@example.com>\r\n\r\nwrite to BILLING@EXAMPLE.COM",
            ),
            spam: false,
            sub: false,
        },
        Case {
            name: "STARTTLS accepted: the rest is opaque",
            script: start(21)
                .client("STARTTLS\r\n")
                .server("220 ready\r\n")
                .client("\x16\x03\x01\x00\x10RCPT TO:<v@example.com>\r\n")
                .server("\x16\x03\x03\x00\x10250 ok\r\n"),
            spam: false,
            sub: false,
        },
        Case {
            name: "a BDAT chunk that holds a dot line and a RCPT line",
            script: start(22)
                .client("MAIL FROM:<a@partner.test>\r\nRCPT TO:<b@hosted.test>\r\nBDAT 33 LAST\r\n\r\n.\r\nRCPT TO:<v@example.com>\r\n")
                .server("250 ok\r\n250 ok\r\n250 chunk ok\r\n")
                .client("QUIT\r\n"),
            spam: false,
            sub: false,
        },
    ];
    // Bare-LF and bare-CR dot lines (SMTP smuggling) are body text, never the end of data.
    for (i, fake) in ["\n.\n", "\r\n.\n", "\n.\r\n", "\r.\r"]
        .into_iter()
        .enumerate()
    {
        c.push(Case {
            name: "a clean body with a bare-newline dot line, then a RCPT line",
            script: clean_mail(
                start(30 + i as u8),
                &format!("Subject: x\r\n\r\nhello{fake}MAIL FROM:<a@b.test>\r\nRCPT TO:<v@example.com>\r\nbye"),
            )
            .client("QUIT\r\n")
            .server("221 bye\r\n"),
            spam: false,
            sub: false,
        });
    }
    c
}

fn shapes() -> Vec<(&'static str, Shape)> {
    let mut v = vec![("whole", Shape::WHOLE)];
    for seed in 1..=4 {
        v.push((
            "cut",
            Shape {
                cuts: 4,
                seed,
                ..Shape::WHOLE
            },
        ));
        v.push((
            "cut+reordered",
            Shape {
                cuts: 4,
                seed,
                reorder: true,
                ..Shape::WHOLE
            },
        ));
        v.push((
            "cut+retransmitted",
            Shape {
                cuts: 3,
                seed,
                retransmit: true,
                ..Shape::WHOLE
            },
        ));
        v.push((
            "cut+reordered+retransmitted",
            Shape {
                cuts: 6,
                seed,
                reorder: true,
                retransmit: true,
            },
        ));
    }
    v
}

fn frames(cases: &[Case], shape: Shape) -> Vec<Frame> {
    let mut all = Vec::new();
    for (i, c) in cases.iter().enumerate() {
        all.extend(
            c.script
                .packets(shape, Instant::from_secs(1_000 + 10 * i as u64)),
        );
    }
    all
}

fn write(dir: &Path, name: &str, link: u32, frames: &[Frame]) -> std::path::PathBuf {
    let path = dir.join(name);
    let f = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
    script::write_pcap(f, link, frames).unwrap();
    path
}

fn banned(path: &Path, flags: Flags) -> (Vec<String>, replay::Report) {
    let mut engine = Engine::new(&Config::build(None, &flags).unwrap());
    let report = replay::replay(&mut engine, &[path.to_path_buf()], Options::default()).unwrap();
    let mut b = replay::banned_sources(&report);
    b.sort();
    (b, report)
}

fn want(cases: &[Case], with_sub: bool) -> Vec<String> {
    let mut w: Vec<String> = cases
        .iter()
        .filter(|c| c.spam || (with_sub && c.sub))
        .map(|c| c.script.client.0.to_string())
        .collect();
    w.sort();
    w
}

/// The issue's bar: 0 missed spam transactions and 0 banned clean senders, for every class,
/// shape, link type, bypass setting and rule form.
#[test]
fn every_class_in_every_shape_bans_exactly_the_spam_senders() {
    let dir = TempDir::new("smtp-classes");
    let cases = cases();
    let string_rule = |bypass: bool| Flags {
        string: vec!["@example.com".into()],
        mode: Some("smtp".into()),
        ports: vec![25],
        no_bypass: !bypass,
        ..Flags::default()
    };
    let domain_rule = |bypass: bool, subdomains: bool| Flags {
        rcpt_domain: vec!["example.com".into()],
        subdomains,
        ports: vec![25],
        no_bypass: !bypass,
        ..Flags::default()
    };
    let mut runs = 0;
    for (shape_name, shape) in shapes() {
        let fr = frames(&cases, shape);
        for link in [linktype::ETHERNET, linktype::RAW] {
            let path = write(dir.path(), &format!("c-{link}.pcap"), link, &fr);
            for bypass in [true, false] {
                let what = format!("{shape_name} {shape:?} link {link} bypass {bypass}");
                let (got, report) = banned(&path, string_rule(bypass));
                assert_eq!(got, want(&cases, false), "string rule, {what}");
                assert_eq!(report.stats.flow_refused, 0, "{what}");
                let (got, _) = banned(&path, domain_rule(bypass, false));
                assert_eq!(got, want(&cases, false), "--rcpt-domain, {what}");
                let (got, _) = banned(&path, domain_rule(bypass, true));
                assert_eq!(
                    got,
                    want(&cases, true),
                    "--rcpt-domain --subdomains, {what}"
                );
                // Bare newlines counted, per source.
                assert!(report.stats.smtp_bare_newlines >= 4, "{what}");
                assert_eq!(report.stats.smtp_bare_sources.len(), 4, "{what}");
                // Only the STARTTLS session bypasses, and only with bypass on.
                let bypassed = report.stats.flows_bypassed;
                assert_eq!(bypassed, u64::from(bypass), "{what}");
                runs += 1;
            }
        }
    }
    assert!(runs >= 60, "{runs}");
}

/// Each class alone, to name the one that fails, through the `replay` command as a user runs
/// it: `stringban replay --mode smtp --string @example.com --port 25 FILE`.
#[test]
fn the_replay_command_convicts_each_spam_class_alone() {
    let dir = TempDir::new("smtp-cli");
    for (i, case) in cases().into_iter().enumerate() {
        let fr = frames(
            std::slice::from_ref(&case),
            Shape {
                cuts: 3,
                seed: i as u64 + 1,
                reorder: true,
                retransmit: false,
            },
        );
        let path = write(dir.path(), "one.pcap", linktype::ETHERNET, &fr);
        let out = Command::new(env!("CARGO_BIN_EXE_stringban"))
            .args([
                "replay",
                "--mode",
                "smtp",
                "--string",
                "@example.com",
                "--port",
                "25",
                "--json",
            ])
            .arg(&path)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let n = json["banned"].as_array().unwrap().len();
        assert_eq!(
            n,
            usize::from(case.spam),
            "{}: banned {}",
            case.name,
            json["banned"]
        );
        assert_eq!(
            json["verdicts"]["reset"].as_u64().unwrap() > 0,
            case.spam,
            "{}",
            case.name
        );
    }
}

/// Random sessions from the SMTP grammar, each replayed whole and in random segmentations:
/// exactly the sessions with a spam envelope command are banned, however they are cut.
#[test]
fn segmentation_never_changes_who_is_banned() {
    let mut rng = Rng::new(0x1010);
    let mut sessions = Vec::new();
    for i in 0..600u32 {
        let client = (
            IpAddr::V4(Ipv4Addr::new(198, 19, (i >> 8) as u8 + 1, i as u8)),
            1024 + i as u16,
        );
        sessions.push(script::random_session(&mut rng, client, SERVER));
    }
    let spam = sessions.iter().filter(|(_, s)| *s).count();
    assert!(
        spam > 100 && spam < 550,
        "{spam} spam of 600: both kinds are exercised"
    );
    let mut want: Vec<String> = sessions
        .iter()
        .filter(|(_, s)| *s)
        .map(|(sc, _)| sc.client.0.to_string())
        .collect();
    want.sort();
    let flags = Flags {
        string: vec!["@example.com".into()],
        mode: Some("smtp".into()),
        ports: vec![25],
        ..Flags::default()
    };
    for seed in 0..6u64 {
        let shape = if seed == 0 {
            Shape::WHOLE
        } else {
            Shape {
                cuts: 1 + seed as usize * 2,
                seed,
                reorder: seed % 2 == 0,
                retransmit: seed % 3 == 0,
            }
        };
        let mut engine = Engine::new(&Config::build(None, &flags).unwrap());
        let mut got = Vec::new();
        for (i, (sc, _)) in sessions.iter().enumerate() {
            for f in sc.packets(shape, Instant::from_secs(10 + i as u64)) {
                let d = engine.decide(&f.ip, f.ts);
                if d.verdict == Verdict::Reset {
                    got.push(sc.client.0.to_string());
                }
            }
        }
        got.sort();
        got.dedup();
        assert_eq!(got, want, "shape {shape:?}");
        assert_eq!(engine.stats().flow_refused, 0);
    }
}

/// SMTP-ish tokens, bare newlines and dots, so that arbitrary sessions reach every state.
fn token() -> impl proptest::strategy::Strategy<Value = &'static str> {
    use proptest::prelude::*;
    prop_oneof![
        Just("DATA\r\n"),
        Just("354 go\r\n"),
        Just("250 ok\r\n"),
        Just("250-x\r\n"),
        Just("554 no\r\n"),
        Just("220 ready\r\n"),
        Just("\r\n.\r\n"),
        Just("\n.\n"),
        Just(".\r\n"),
        Just("RCPT TO:<v@example.com>\r\n"),
        Just("MAIL FROM:<a@b.test>\r\n"),
        Just("BDAT 7\r\n"),
        Just("BDAT 3 LAST\r\n"),
        Just("STARTTLS\r\n"),
        Just("RSET\r\n"),
        Just("\r"),
        Just("\n"),
        Just("."),
        Just("x@example."),
        Just("com>\r\n"),
    ]
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig { cases: 3_000, ..Default::default() })]

    /// Arbitrary sessions (turns of tokens, client first): cut, reordered and retransmitted,
    /// each is banned exactly when it is banned whole.
    #[test]
    fn arbitrary_sessions_judge_alike_however_cut(
        turns in proptest::collection::vec(proptest::collection::vec(token(), 1..8), 1..10),
        seed in 1u64..u64::MAX,
        cuts in 1usize..12,
        reorder: bool,
        retransmit: bool,
    ) {
        let mut s = Script::new((IpAddr::V4(Ipv4Addr::new(198, 19, 0, 1)), 40_000), SERVER);
        for (i, t) in turns.iter().enumerate() {
            let bytes = t.concat();
            s = if i % 2 == 0 { s.client(bytes) } else { s.server(bytes) };
        }
        let shape = Shape { cuts, seed, reorder, retransmit };
        let judge = |shape: Shape| {
            let flags = Flags {
                string: vec!["@example.com".into()],
                mode: Some("smtp".into()),
                ports: vec![25],
                ..Flags::default()
            };
            let mut engine = Engine::new(&Config::build(None, &flags).unwrap());
            let mut reset = false;
            for f in s.packets(shape, Instant::from_secs(5)) {
                reset |= engine.decide(&f.ip, f.ts).verdict == Verdict::Reset;
            }
            (reset, engine.stats().smtp_messages, engine.stats().flow_refused)
        };
        let (whole, messages, _) = judge(Shape::WHOLE);
        let (cut, cut_messages, refused) = judge(shape);
        proptest::prop_assert_eq!(whole, cut);
        proptest::prop_assert_eq!(refused, 0);
        if !whole {
            proptest::prop_assert_eq!(messages, cut_messages);
        }
    }
}
