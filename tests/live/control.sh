#!/usr/bin/env bash
# The control socket's trust boundary, live (root, one network namespace).
# Usage: control.sh STRINGBAN_BINARY
# A daemon with --control-group nogroup; the user nobody (group nogroup, not root, not the
# daemon's uid) is a member of the control group. Checks: nobody may add, list, count, status
# and stats, and is refused del, flush and reload (counted, nothing changed); a third connection
# of one uid is refused; twelve slow clients of four users (a byte a second) delay no command of
# root's by more than a second, and are cut off at the request deadline. Then the metrics port:
# a 400 MiB request line and four slow clients while five scrapes each answer within 1 s.
set -uo pipefail
BIN=$(realpath "$1")
HERE=$(cd "$(dirname "$0")" && pwd)
. "$HERE/lib.sh"
need ip setpriv python3
[ -x /usr/bin/python3 ] || { echo 'FAIL: /usr/bin/python3 not installed' >&2; exit 1; }

N=sbCT$$; T=$(mktemp -d); DPID=; SLOW=()
cleanup() {
    set +e
    for p in "${SLOW[@]}" $DPID; do kill "$p" 2>/dev/null; done
    for _ in $(seq 30); do kill -0 "$DPID" 2>/dev/null || break; sleep 0.1; done
    for p in "${SLOW[@]}" $DPID; do kill -9 "$p" 2>/dev/null; done
    ip netns del "$N" 2>/dev/null
    rm -rf "$T"
}
trap cleanup EXIT
chmod 755 "$T"
ip netns add "$N" || exit 1
ip netns exec "$N" "$BIN" run --string @example.com --pidfile "$T/pid" --state-dir "$T/state" \
    --control-socket "$T/ctl.sock" --control-group nogroup --metrics 127.0.0.1:9325 2> "$T/daemon.log" & DPID=$!
for _ in $(seq 100); do [ -S "$T/ctl.sock" ] && [ -s "$T/pid" ] && break; sleep 0.05; done
[ -S "$T/ctl.sock" ] || { echo "daemon did not start:"; cat "$T/daemon.log"; exit 1; }

# nobody runs a copy in $T: the build tree may be in a directory only root may enter.
cp "$BIN" "$T/sb" && chmod 755 "$T/sb"
as_nobody() { setpriv --reuid=nobody --regid=nogroup --clear-groups "$T/sb" "$@" --control-socket "$T/ctl.sock"; }
as_root() { "$BIN" "$@" --control-socket "$T/ctl.sock"; }
denied() { as_root stats | python3 -c 'import json,sys; print(json.load(sys.stdin)["control_denied"])'; }

echo "== a member of the control group (nobody) may add, not lift, flush or reload"
check "the socket is 0660, group nogroup" test "$(stat -c '%a %G' "$T/ctl.sock")" = "660 nogroup"
check "nobody adds a ban" bash -c "$(declare -f as_nobody); BIN='$BIN' T='$T'; as_nobody add 198.18.0.9 > /dev/null"
check "... and sees it (list, count)" bash -c "$(declare -f as_nobody); BIN='$BIN' T='$T'; as_nobody list | grep -q 198.18.0.9 && [ \"\$(as_nobody count)\" = 1 ]"
check "... and may ask for status and stats" bash -c "$(declare -f as_nobody); BIN='$BIN' T='$T'; as_nobody status > /dev/null && as_nobody stats > /dev/null"
for cmd in "del 198.18.0.9" "flush" "reload"; do
    # shellcheck disable=SC2086
    as_nobody $cmd > "$T/out.txt" 2>&1; code=$?
    check "nobody's $cmd is refused (exit $code: $(tail -1 "$T/out.txt" | cut -c1-100))" bash -c "[ $code -ne 0 ] && grep -q 'permission denied' '$T/out.txt'"
done
check "... nothing was lifted or flushed" test "$(as_root count)" = 1
check "... the refusals are counted ($(denied))" test "$(denied)" = 3
check "root may del" bash -c "'$BIN' del 198.18.0.9 --control-socket '$T/ctl.sock' > /dev/null && [ \"\$('$BIN' count --control-socket '$T/ctl.sock')\" = 0 ]"

echo "== slow clients and connection caps"
slow() {   # slow USER: a client (in group nogroup) that sends a byte a second, for at most 12 s
    # The system's python: a python3 on root's PATH may live where nobody cannot read.
    setpriv --reuid="$1" --regid=nogroup --clear-groups /usr/bin/python3 - "$T/ctl.sock" <<'EOF'
import socket, sys, time
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
t0 = time.time()
try:
    for b in b'{"cmd":"count"' * 4:
        s.send(bytes([b]))
        time.sleep(1)
        if time.time() - t0 > 12:
            break
    print("not cut off", flush=True)
except OSError:
    print("cut off after %.1f s" % (time.time() - t0), flush=True)
EOF
}
# Three connections each from four users of the group: more than the members' 4 workers.
i=0
for u in nobody daemon bin sys; do
    for _ in 1 2 3; do i=$((i + 1)); slow "$u" > "$T/slow$i.out" 2>&1 & SLOW+=($!); done
done
sleep 1.5
t0=$(date +%s%N); n=$(as_root count); ms=$(( ($(date +%s%N) - t0) / 1000000 ))
check "with 12 slow clients of 4 users connected, root's count answers in $ms ms ($n)" bash -c "[ $ms -lt 1000 ] && [ '$n' = 0 ]"
t0=$(date +%s%N); as_root add 198.18.0.10 > /dev/null; ms=$(( ($(date +%s%N) - t0) / 1000000 ))
check "... and root's add in $ms ms" test "$ms" -lt 1000
check "... beyond 2 connections of one user, more are refused (logged: $(grep -o 'uid [0-9]* already holds 2 connections' "$T/daemon.log" | head -1))" \
    grep -q 'already holds 2 connections' "$T/daemon.log"
wait "${SLOW[@]}" 2>/dev/null; SLOW=()
cut=$(cat "$T"/slow*.out | grep -c 'cut off after [0-6]\.')
check "every slow client was refused, or cut off 2 s after a worker took it (at most two rounds of 4 workers): $cut of 12 ($(cat "$T"/slow*.out | sort | uniq -c | tr '\n' ' '))" test "$cut" = 12
check "none was left to hold a worker" bash -c "! grep -q 'not cut off' $T/slow*.out"
check "nobody gets answers again once they are gone" bash -c "$(declare -f as_nobody); BIN='$BIN' T='$T'; [ \"\$(as_nobody count)\" = 1 ]"

echo "== the metrics port: a 400 MiB request line and slow clients do not blind a scrape"
ip netns exec "$N" ip link set lo up
hwm0=$(awk '/VmHWM/ {print $2}' "/proc/$DPID/status")
ip netns exec "$N" python3 - > "$T/metrics.out" 2>&1 <<'EOF'
import socket, threading, time
def big():
    s = socket.create_connection(("127.0.0.1", 9325))
    chunk, sent, t0 = b"x" * (1 << 20), 0, time.time()
    try:
        while sent < 400 << 20 and time.time() - t0 < 20:
            s.sendall(chunk); sent += len(chunk)
    except OSError:
        pass
    print("big: sent %d MiB before the server closed" % (sent >> 20), flush=True)
def slow():
    s = socket.create_connection(("127.0.0.1", 9325))
    try:
        for _ in range(8):
            s.send(b"G"); time.sleep(1.5)
    except OSError:
        pass
ts = [threading.Thread(target=big)] + [threading.Thread(target=slow) for _ in range(4)]
for t in ts: t.start()
time.sleep(0.5)
worst = 0.0
for _ in range(5):
    t0 = time.time()
    s = socket.create_connection(("127.0.0.1", 9325), timeout=5)
    s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    data = b""
    while True:
        b = s.recv(65536)
        if not b: break
        data += b
    worst = max(worst, time.time() - t0)
    assert data.startswith(b"HTTP/1.1 200") and b"stringban_packets_total" in data, data[:100]
    time.sleep(0.3)
print("scrape worst %.3f s" % worst, flush=True)
for t in ts: t.join()
EOF
hwm1=$(awk '/VmHWM/ {print $2}' "/proc/$DPID/status")
worst=$(grep -o 'scrape worst [0-9.]*' "$T/metrics.out" | awk '{print $3}')
check "5 scrapes during the flood each answered within 1 s (worst ${worst:-none} s; $(grep big: "$T/metrics.out"))" \
    python3 -c "import sys; sys.exit(0 if float('${worst:-9}') < 1 else 1)"
check "... the daemon's peak RSS grew by $(( (hwm1 - hwm0) / 1024 )) MB (at most 20)" test $((hwm1 - hwm0)) -le 20480
refused=$(as_root stats | python3 -c 'import json,sys; print(json.load(sys.stdin)["metrics_refused"])')
check "... the connections closed unanswered are counted ($refused)" test "$refused" -ge 5

echo "control: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
