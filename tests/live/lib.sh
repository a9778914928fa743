# Shared by tests/live/*.sh, scripts/demo and scripts/bench-live. Source it; needs root.

# need TOOL... — exits the script, loudly, unless it runs as root with every TOOL installed.
need() {
    [ "$(id -u)" -eq 0 ] || { echo "FAIL: live tests need root" >&2; exit 1; }
    local t
    for t in "$@"; do command -v "$t" >/dev/null || { echo "FAIL: $t not installed" >&2; exit 1; }; done
}

# Test checks: `check WHAT COMMAND...` counts COMMAND's success as a pass, printing WHAT.
passed=0; failed=0
ok() { echo "  ok: $*"; passed=$((passed + 1)); }
no() { echo "  FAIL: $*"; failed=$((failed + 1)); }
check() { local what=$1; shift; if "$@"; then ok "$what"; else no "$what"; fi; }

# netns_pair SERVER CLIENT ADDRESSES TMPDIR — two namespaces joined by a veth pair: SERVER has
# 198.18.0.1/24 on vS, CLIENT 198.18.0.2/24 on vC plus ADDRESSES addresses 198.19.X.Y
# (X.Y = 256 + i, i.e. 198.19.1.0 on) on its loopback, which SERVER reaches via 198.18.0.2 as if
# behind a router: the server keeps one neighbour entry however many clients there are.
netns_pair() {
    local s=$1 c=$2 n=$3 tmp=$4 i
    ip netns add "$s" && ip netns add "$c" || return 1
    ip link add vS netns "$s" type veth peer name vC netns "$c" || return 1
    ip -n "$s" addr add 198.18.0.1/24 dev vS
    ip -n "$c" addr add 198.18.0.2/24 dev vC
    ip -n "$s" link set lo up; ip -n "$c" link set lo up
    if [ "$n" -gt 0 ]; then
        for i in $(seq 0 $((n - 1))); do
            echo "addr add 198.19.$(( (256 + i) >> 8 )).$(( (256 + i) & 255 ))/32 dev lo"
        done > "$tmp/addrs"
        ip -n "$c" -batch "$tmp/addrs" || return 1
    fi
    ip -n "$s" link set vS up; ip -n "$c" link set vC up
    ip -n "$s" route add 198.19.0.0/16 via 198.18.0.2
}

# exim_start SERVER TMPDIR — a fresh Exim (tests/live/exim.conf.in) on 198.18.0.1:25 in SERVER,
# empty inbox at TMPDIR/mail/inbox, STARTTLS with a self-signed certificate made here, and an
# ACL that bans a sender of mail to example.com through `$SB_ACL_BIN add ADDR --reset` on the
# control socket TMPDIR/ctl.sock (SB_ACL_BIN unset: /bin/false), CHUNKING offered to
# $EXIM_CHUNKING (default: every host; empty: nobody). Sets EPID. Fails if Exim does
# not start within 5 s.
exim_start() {
    local s=$1 tmp=$2 here
    here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
    chmod 755 "$tmp"
    rm -rf "$tmp/spool" "$tmp/log" "$tmp/mail" "$tmp/tls"; mkdir -p "$tmp/spool" "$tmp/log" "$tmp/mail" "$tmp/tls"
    chown Debian-exim:Debian-exim "$tmp/spool" "$tmp/log" "$tmp/mail"
    openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=mx.stringban.test \
        -keyout "$tmp/tls/key.pem" -out "$tmp/tls/cert.pem" 2> "$tmp/tls/openssl.out" || { cat "$tmp/tls/openssl.out"; return 1; }
    chgrp Debian-exim "$tmp/tls/key.pem"; chmod 640 "$tmp/tls/key.pem"
    sed -e "s|SPOOLDIR|$tmp/spool|; s|LOGDIR|$tmp/log|g; s|MAILDIR|$tmp/mail|; s|TLSDIR|$tmp/tls|g" \
        -e "s|SBBIN|${SB_ACL_BIN:-/bin/false}|; s|CTLSOCK|$tmp/ctl.sock|" \
        -e "s|CHUNKINGHOSTS|${EXIM_CHUNKING-*}|" "$here/exim.conf.in" > "$tmp/exim.conf"
    ip netns exec "$s" exim4 -C "$tmp/exim.conf" -bdf > "$tmp/exim.out" 2>&1 & EPID=$!
    for _ in $(seq 50); do grep -q "listening for SMTP" "$tmp/log/mainlog" 2>/dev/null && return 0; sleep 0.1; done
    echo "Exim did not start:"; cat "$tmp/exim.out" "$tmp/log/"* 2>/dev/null; return 1
}

# exim_stop — kills the Exim daemon started by exim_start and its session processes (ours).
exim_stop() {
    [ -z "${EPID:-}" ] && return 0
    local p
    for p in $(pgrep -P "$EPID"); do kill "$p" 2>/dev/null; done
    kill "$EPID" 2>/dev/null; wait "$EPID" 2>/dev/null; EPID=
}

# loopback_ns PREFIX — a throwaway namespace with only lo up, a temporary directory and a trap
# that stops the daemon started as $DPID (ours) and removes both. Sets S and T.
loopback_ns() {
    S=$1$$; T=$(mktemp -d); DPID=
    trap 'loopback_ns_cleanup' EXIT
    ip netns add "$S" && ip -n "$S" link set lo up
}
loopback_ns_cleanup() {
    [ -n "${DPID:-}" ] && { kill "$DPID" 2>/dev/null; sleep 0.3; kill -9 "$DPID" 2>/dev/null; }
    ip netns del "$S" 2>/dev/null
    rm -rf "$T"
}
