//! Root-only live tests: the daemon on a real NFQUEUE in throwaway network namespaces
//! (tests/live/daemon.sh). `#[ignore]`d in plain `cargo test`; `scripts/test` runs them as root,
//! where any failure, or a missing tool, fails the test loudly.

use std::process::Command;

#[test]
#[ignore = "needs root, iptables, iproute2 and python3; run by scripts/test as root"]
fn daemon_in_namespaces() {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/live/daemon.sh");
    let out = Command::new("bash")
        .arg(script)
        .arg(env!("CARGO_BIN_EXE_stringban"))
        .output()
        .expect("run bash");
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}");
    eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "live tests failed:\n{stdout}");
    assert!(stdout.contains(" passed, 0 failed"), "{stdout}");
}
