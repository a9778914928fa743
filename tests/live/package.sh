#!/usr/bin/env bash
# Live test of the Debian package (root): built with scripts/package from the tested binary,
# installed with dpkg -i, every file checked, the unit checked by systemd-analyze (verify clean,
# security exposure <= 3.0), the daemon run from the package as the package's non-root user
# with only CAP_NET_ADMIN and CAP_NET_RAW (setpriv) inside network namespaces, then purged.
# Refuses to touch a stringban package installed by someone else.
# Usage: package.sh STRINGBAN_BINARY
set -uo pipefail
BIN=$(realpath "$1")
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
. "$HERE/lib.sh"
need ip iptables python3 dpkg setpriv systemd-analyze strip

if dpkg -s stringban >/dev/null 2>&1; then
    echo "FAIL: a stringban package is already installed here; not touching it"; exit 1
fi
S=sbPS$$; C=sbPC$$; T=$(mktemp -d); PIDS=(); DPID=; INSTALLED=
cleanup() {
    for p in $DPID "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
    sleep 0.3
    for p in $DPID "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null; done
    ip netns del "$S" 2>/dev/null; ip netns del "$C" 2>/dev/null
    [ -n "$INSTALLED" ] && dpkg --purge stringban > /dev/null 2>&1
    rm -rf "$T"
}
trap cleanup EXIT

echo "== build and install"
deb=$("$ROOT/scripts/package" "$BIN" 2> "$T/package.err" | tail -1)
[ -s "${deb:-/nonexistent}" ] || { cat "$T/package.err"; no "scripts/package built no package"; exit 1; }
ok "scripts/package built $(basename "$deb")"
dpkg -i "$deb" > "$T/dpkg.out" 2>&1; code=$?
INSTALLED=1
check "dpkg -i installs it (exit $code)" test "$code" -eq 0 || cat "$T/dpkg.out"
for f in /usr/bin/stringban /usr/share/man/man1/stringban.1.gz /usr/share/man/man1/stringban-run.1.gz \
    /usr/share/man/man1/stringban-status.1.gz /usr/share/bash-completion/completions/stringban \
    /usr/share/zsh/vendor-completions/_stringban /usr/share/fish/vendor_completions.d/stringban.fish \
    /etc/stringban/stringban.toml /usr/lib/systemd/system/stringban.service /usr/share/doc/stringban/README.md; do
    check "installed: $f" test -s "$f"
done
check "the example configuration is a conffile" grep -qx /etc/stringban/stringban.toml /var/lib/dpkg/info/stringban.conffiles
check "the configuration it installs is valid" /usr/bin/stringban check --config /etc/stringban/stringban.toml
check "the system user stringban exists, no login" bash -c "getent passwd stringban | grep -q ':/usr/sbin/nologin$'"
check "man stringban-status renders" bash -c "man -l /usr/share/man/man1/stringban-status.1.gz 2>/dev/null | grep -q 'One screen' || zcat /usr/share/man/man1/stringban-status.1.gz | grep -q 'One screen'"
check "bash completion completes commands" bash -c ". /usr/share/bash-completion/completions/stringban && COMP_WORDS=(stringban sta) COMP_CWORD=1 && _stringban stringban sta stringban && printf '%s\n' \"\${COMPREPLY[@]}\" | grep -qx status"

echo "== the unit"
unit=/usr/lib/systemd/system/stringban.service
systemd-analyze verify "$unit" > "$T/verify.out" 2>&1; code=$?
check "systemd-analyze verify: clean (exit $code)" bash -c "[ $code -eq 0 ] && ! grep -v '^$' '$T/verify.out' | grep -q ." || cat "$T/verify.out"
systemd-analyze security --offline=true "$unit" > "$T/security.out" 2>&1
score=$(sed -n 's/.*Overall exposure level for stringban.service: \([0-9.]*\).*/\1/p' "$T/security.out")
check "systemd-analyze security: exposure ${score:-?} <= 3.0" python3 -c "import sys; sys.exit(0 if float('${score:-99}') <= 3.0 else 1)" || tail -5 "$T/security.out"
for w in "User=stringban" "AmbientCapabilities=CAP_NET_ADMIN CAP_NET_RAW" "CapabilityBoundingSet=CAP_NET_ADMIN CAP_NET_RAW" \
    "RestrictAddressFamilies=AF_UNIX AF_NETLINK AF_INET AF_INET6" "SystemCallFilter=@system-service" "ProtectKernelTunables=yes" \
    "ProtectKernelModules=yes" "PrivateDevices=yes" "UMask=0077" "StateDirectory=stringban" "RuntimeDirectory=stringban" \
    "ExecReload=/usr/bin/stringban reload"; do
    check "unit: $w" grep -q "^$w" "$unit"
done

echo "== the packaged daemon as user stringban with CAP_NET_ADMIN and CAP_NET_RAW only"
netns_pair "$S" "$C" 4 "$T" || exit 1
ip netns exec "$S" python3 "$HERE/smtp_server.py" 198.18.0.1 25 "$T/server.log" & PIDS+=($!)
chmod 755 "$T"; mkdir -p "$T/state" "$T/run"; chown stringban:stringban "$T/state" "$T/run"; chmod 700 "$T/state"
# As systemd would run it: its own /run (RuntimeDirectory=stringban: the rules lock) in a private
# mount namespace, then setpriv down to the user and the two capabilities (ambient, as
# AmbientCapabilities= gives them, so that iptables and ipset inherit them).
ip netns exec "$S" unshare -m --propagation private sh -c '
    mount -t tmpfs -o mode=755 tmpfs /run && mkdir -m 755 /run/stringban && chown stringban:stringban /run/stringban &&
    exec setpriv --reuid=stringban --regid=stringban --init-groups \
        --inh-caps=-all,+net_admin,+net_raw --ambient-caps=-all,+net_admin,+net_raw --bounding-set=-all,+net_admin,+net_raw \
        /usr/bin/stringban run --config /etc/stringban/stringban.toml --install-rules --state-dir "$1/state" \
        --pidfile "$1/run/pid" --control-socket "$1/run/control.sock"' sh "$T" 2> "$T/daemon.log" & DPID=$!
# The pid is written once the rules are installed (the socket is bound before them).
for _ in $(seq 200); do [ -S "$T/run/control.sock" ] && [ -s "$T/run/pid" ] && break; sleep 0.05; done
test -S "$T/run/control.sock" || cat "$T/daemon.log"
check "it starts (control socket up)" test -S "$T/run/control.sock"
# `ip netns exec`, `unshare`, `sh` and `setpriv` all exec in place: $DPID is the daemon.
status=/proc/$DPID/status
check "it runs as user stringban" bash -c "[ \"\$(awk '/^Uid:/ {print \$2}' $status)\" = \"\$(id -u stringban)\" ]"
check "with exactly CAP_NET_ADMIN and CAP_NET_RAW (CapEff 0x3000)" bash -c "[ \"\$(awk '/^CapEff:/ {print \$2}' $status)\" = 0000000000003000 ]"
check "its rules are in place" bash -c "ip netns exec '$S' iptables -S INPUT | grep -q -- '-j STRINGBAN'"
say() { ip netns exec "$C" python3 "$HERE/smtp_client.py" "$@"; }
check "spam to example.com is reset" test "$(say 198.19.1.0 198.18.0.1 'EHLO bot\nMAIL FROM:<x@bot.test>\nRCPT TO:<v@example.com>')" = reset
check "... and its sender banned" bash -c "ip netns exec '$S' /usr/bin/stringban list --json --control-socket '$T/run/control.sock' | grep -q '\"198.19.1.0\"'"
check "legit mail flows" test "$(say 198.19.1.1 198.18.0.1 'EHLO mx\nMAIL FROM:<a@partner.test>\nRCPT TO:<b@hosted.test>\nQUIT')" = ok
check "status answers" bash -c "ip netns exec '$S' /usr/bin/stringban status --control-socket '$T/run/control.sock' | grep -q 'kernel rules installed'"
check "the state it writes is the user's, private" bash -c "[ \"\$(stat -c %U:%a '$T/state/bans.journal')\" = stringban:600 ]"
kill "$DPID"; wait "$DPID"; code=$?; DPID=
[ "$code" -eq 0 ] || tail -5 "$T/daemon.log"
check "it stops cleanly (exit $code)" test "$code" -eq 0
check "... and removes its rules" bash -c "! ip netns exec '$S' iptables -S INPUT | grep -q STRINGBAN"

echo "== purge while another daemon runs"
# A daemon of the tested binary (not the package's), with its rules in S: the purge (which
# removes /run/stringban) must leave it its rules lock and its rules.
ip netns exec "$S" "$BIN" run --string @example.com --install-rules --queues 5 --pidfile "$T/other.pid" \
    --no-state --no-control 2> "$T/other.log" & OTHER=$!; PIDS+=($OTHER)
for _ in $(seq 100); do [ -s "$T/other.pid" ] && break; sleep 0.05; done
check "another daemon runs with its rules" bash -c "ip netns exec '$S' iptables -S STRINGBAN | grep -q -- '--queue-num 5'"
dpkg --purge stringban > "$T/purge.out" 2>&1; code=$?
INSTALLED=
check "dpkg --purge (exit $code)" test "$code" -eq 0 || cat "$T/purge.out"
check "no file is left" bash -c "! ls /usr/bin/stringban /etc/stringban /usr/lib/systemd/system/stringban.service /usr/share/man/man1/stringban.1.gz 2>/dev/null | grep -q ."
check "the user is gone" bash -c "! getent passwd stringban"
check "the package is gone" bash -c "! dpkg -s stringban > /dev/null 2>&1"
check "the other daemon kept its rules" bash -c "ip netns exec '$S' iptables -S STRINGBAN | grep -q -- '--queue-num 5'"
ip netns exec "$S" "$BIN" run --string @example.com --install-rules --queues 6 --no-state --no-control > "$T/third.out" 2>&1; code=$?
check "... and its lock: a third is refused (exit $code)" bash -c "[ $code = 2 ] && grep -q 'another stringban (pid $OTHER)' '$T/third.out'"
kill "$OTHER"; wait "$OTHER" 2>/dev/null
check "... and it removes its rules when it stops" bash -c "! ip netns exec '$S' iptables -S 2>/dev/null | grep -q STRINGBAN"

echo "package: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
