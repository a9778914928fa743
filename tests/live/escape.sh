#!/usr/bin/env bash
# Everything printed is escaped (root, one throwaway network namespace, loopback only).
# Usage: escape.sh STRINGBAN_BINARY
# A daemon whose rule is named with terminal escapes and a newline, bans made through it and
# by hand, a control client sending escapes and a newline in its request: the daemon's log,
# `status`, `list`, `reload`'s answer and the client's own error hold none of those characters
# raw (each shows escaped), and no line was forged.
set -uo pipefail
BIN=$(realpath "$1")
HERE=$(cd "$(dirname "$0")" && pwd)
. "$HERE/lib.sh"
need ip python3

loopback_ns sbES || exit 1
cat > "$T/rules.toml" <<'EOF'
[allow]
defaults = false

[[rule]]
name = "evil\u001b]0;owned\u0007\u001b[2J\nFORGED 2099-01-01T00:00:00Z INFO banned everyone"
string = "@example.com"
EOF
ip netns exec "$S" python3 "$HERE/smtp_server.py" 127.0.0.1 25 "$T/server.log" & SPID=$!
trap 'kill $SPID 2>/dev/null; loopback_ns_cleanup' EXIT
ip netns exec "$S" "$BIN" run --config "$T/rules.toml" --install-rules --pidfile "$T/pid" --state-dir "$T/state" \
    --control-socket "$T/ctl.sock" --summary-interval 1s 2> "$T/daemon.log" & DPID=$!
for _ in $(seq 100); do [ -S "$T/ctl.sock" ] && [ -s "$T/pid" ] && break; sleep 0.05; done
[ -S "$T/ctl.sock" ] || { echo "daemon did not start:"; cat "$T/daemon.log"; exit 1; }
ctl() { "$BIN" "$@" --control-socket "$T/ctl.sock"; }
raw() {   # raw FILE: FILE holds no ESC, BEL or other C0 control but tab and newline
    ! LC_ALL=C grep -q $'[\x01-\x08\x0b-\x1f\x7f]' "$1"
}

ctl add 198.18.0.9 > /dev/null
# A real session on loopback that sends the string: convicted by the hostile rule.
out=$(ip netns exec "$S" python3 "$HERE/smtp_client.py" 127.0.0.1 127.0.0.1 'RCPT TO:<a@example.com>' 3)
check "a session sending the string is reset by the rule ($out)" test "$out" = reset
# A control client's own request, with escapes and a newline in the address.
python3 - "$T/ctl.sock" > "$T/client.out" <<'EOF'
import json, socket, sys
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
s.sendall(json.dumps({"cmd": "add", "addr": "\x1b[2J198.18.0.1\nFORGED line"}).encode() + b"\n")
print(s.recv(65536).decode(errors="replace"))
EOF
ctl add "$(printf '\033[2J1.2.3.4')" > "$T/add.out" 2>&1
ctl status > "$T/status.out" 2>&1
ctl list > "$T/list.out" 2>&1
ctl reload > "$T/reload.out" 2>&1
sleep 1.2

check "the rule's name shows escaped in status" grep -qF 'evil\u{1b}]0;owned\u{7}\u{1b}[2J\nFORGED' "$T/status.out"
check "... status holds no raw control character" raw "$T/status.out"
check "... nor list" raw "$T/list.out"
check "... nor reload's answer ($(head -c 80 "$T/reload.out"))" raw "$T/reload.out"
check "a bad address with escapes: refused, the error escaped ($(head -c 80 "$T/add.out"))" \
    bash -c "grep -q 'u{1b}' '$T/add.out' && $(declare -f raw); raw '$T/add.out'"
check "the daemon's JSON answer to the raw request holds none either ($(head -c 90 "$T/client.out"))" raw "$T/client.out"
check "the daemon's log holds no raw control character ($(wc -l < "$T/daemon.log") lines)" raw "$T/daemon.log"
check "... and no forged line" bash -c "! grep -q '^FORGED' '$T/daemon.log'"
check "... what the rule's name held is there, escaped" grep -qF '\nFORGED 2099' "$T/daemon.log"

echo "escape: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
