//! Root-only live tests in throwaway network namespaces. `#[ignore]`d in plain `cargo test`;
//! `scripts/test` runs them as root, where any failure, or a missing tool, fails loudly.

use std::process::Command;

/// Runs one live script; it prints `NAME: N passed, M failed` last and exits non-zero on failure.
fn live(script: &str) {
    let path = format!("{}/tests/live/{script}", env!("CARGO_MANIFEST_DIR"));
    let out = Command::new("bash")
        .arg(&path)
        .arg(env!("CARGO_BIN_EXE_stringban"))
        .arg(env!("CARGO_BIN_EXE_stringban-blast"))
        .output()
        .expect("run bash");
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}");
    eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{script} failed:\n{stdout}");
    assert!(stdout.contains(" passed, 0 failed"), "{stdout}");
}

/// The daemon on a real NFQUEUE with a line-based SMTP stand-in (tests/live/daemon.sh).
#[test]
#[ignore = "needs root, iptables, iproute2 and python3; run by scripts/test as root"]
fn daemon_in_namespaces() {
    live("daemon.sh");
}

/// A real Exim behind stringban, then behind the kernel recipe (tests/live/exim.sh).
#[test]
#[ignore = "needs root, iptables, iproute2, python3, exim4-daemon-light and swaks; run by scripts/test as root"]
fn exim_in_namespaces() {
    live("exim.sh");
}

/// A million bans held in at most 150 MB of resident memory (tests/live/memory.sh).
#[test]
#[ignore = "needs root, iptables and iproute2; run by scripts/test as root"]
fn memory_with_a_million_bans() {
    live("memory.sh");
}

/// Durable bans and the control socket: clean restart, kill -9 mid-flood, damaged snapshot,
/// every control command (tests/live/state.sh).
#[test]
#[ignore = "needs root, iptables, iproute2 and python3; run by scripts/test as root"]
fn state_and_control_in_a_namespace() {
    live("state.sh");
}

/// `stringban import --print` equals the kernel's `iptables -S` / `ip6tables -S` for scripts of
/// every supported option, and refuses what iptables refuses (tests/live/import.sh).
#[test]
#[ignore = "needs root, iptables, ip6tables and iproute2; run by scripts/test as root"]
fn import_prints_what_the_kernel_saves() {
    live("import.sh");
}

/// The same segments through the kernel's own iptables rules and through `stringban run
/// --iptables` with the same script: every per-segment verdict equal (tests/live/diff.sh;
/// over 10,000 randomized segments per run, the seed printed for a rerun).
#[test]
#[ignore = "needs root, iptables, ip6tables, iproute2 and python3; run by scripts/test as root"]
fn differential_against_the_kernel() {
    live("diff.sh");
}

/// Fault injection: a full disk for 30 s during a flood, descriptors exhausted, bit flips in the
/// snapshot — bans kept, faults shown at once, recovery by itself (tests/live/faults.sh).
#[test]
#[ignore = "needs root, iptables, iproute2, python3 and util-linux (unshare, prlimit); run by scripts/test as root"]
fn store_faults_in_a_namespace() {
    live("faults.sh");
}

/// The allowlist, thresholds and escalation across restarts (tests/live/allow.sh).
#[test]
#[ignore = "needs root, iptables, iproute2 and python3; run by scripts/test as root"]
fn allowlist_and_escalation_in_namespaces() {
    live("allow.sh");
}

/// The Debian package: installs, runs as a non-root user with two capabilities, purges
/// (tests/live/package.sh).
#[test]
#[ignore = "needs root, dpkg, cargo-deb, setpriv, systemd-analyze, iptables and iproute2; run by scripts/test as root"]
fn debian_package_installs_runs_and_purges() {
    live("package.sh");
}

/// The fleet: three daemons and a real redis-server in namespaces share bans; Redis killed -9
/// under bans, a host away and back, a new host, ACL over TLS, a wrong password
/// (tests/live/fleet.sh).
#[test]
#[ignore = "needs root, iptables, iproute2, python3, redis-server, redis-cli and openssl; run by scripts/test as root"]
fn a_fleet_shares_bans_through_redis() {
    live("fleet.sh");
}

/// Gateway mode: a real Exim behind a router running stringban in FORWARD — the seed's recipe
/// through `--iptables`, and `--chain forward --protect` in smtp mode (tests/live/gateway.sh).
#[test]
#[ignore = "needs root, iptables, iproute2, python3, exim4-daemon-light and swaks; run by scripts/test as root"]
fn a_gateway_protects_the_mail_server_behind_it() {
    live("gateway.sh");
}

/// The attacker: forged segments with no connection, forged sources, blind handshakes, guessed
/// sequence numbers, flow floods (peak RSS), the eviction flood and BDAT, against a real Exim
/// in every mode, IPv4 and IPv6 (tests/live/attack.sh).
#[test]
#[ignore = "needs root, iptables, iproute2, python3, exim4-daemon-light, swaks and ss; run by scripts/test as root"]
fn an_attacker_gets_nothing() {
    live("attack.sh");
}

/// Everything printed is escaped: a rule named with terminal escapes and a newline, a control
/// request holding them; the log, status, list and errors show them escaped
/// (tests/live/escape.sh).
#[test]
#[ignore = "needs root, iproute2, iptables and python3; run by scripts/test as root"]
fn what_strangers_wrote_is_printed_escaped() {
    live("escape.sh");
}

/// The control socket's trust boundary: a member of the control group may add but not lift,
/// flush or reload; slow clients delay no administrator (tests/live/control.sh).
#[test]
#[ignore = "needs root, iproute2, util-linux (setpriv) and python3; run by scripts/test as root"]
fn the_control_group_may_add_but_not_lift() {
    live("control.sh");
}
