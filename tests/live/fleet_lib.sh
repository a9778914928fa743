# Shared by tests/live/fleet.sh and scripts/bench-fleet: the fleet's network and daemons.
# Source it after lib.sh, with BIN (the stringban binary) and HERE (tests/live) set; it builds,
# and tears down at exit (a trap), namespace R — a bridge, Redis on 198.18.9.1, clients
# 198.19.1.0-9 on its loopback — and hosts A-D (198.18.9.11-14) each with the line-based SMTP
# stand-in on port 25. Every process it starts is killed by PID; only its namespaces are touched.

R=sbFR$$; HOSTS=(A B C D); T=$(mktemp -d); PIDS=(); RPID=; R2PID=
declare -A DPID=() ADDR=([A]=198.18.9.11 [B]=198.18.9.12 [C]=198.18.9.13 [D]=198.18.9.14)
ns() { echo "sbF$1$$"; }
cleanup() {
    for h in "${HOSTS[@]}"; do [ -n "${DPID[$h]:-}" ] && kill "${DPID[$h]}" 2>/dev/null; done
    for p in "${PIDS[@]}" $RPID $R2PID; do kill "$p" 2>/dev/null; done
    # Daemons with a million bans take a few seconds to save them: up to 10 s, then -9.
    local h
    for _ in $(seq 100); do
        for h in "${HOSTS[@]}"; do [ -n "${DPID[$h]:-}" ] && ! kill -0 "${DPID[$h]}" 2>/dev/null && DPID[$h]=; done
        [ -z "${DPID[A]:-}${DPID[B]:-}${DPID[C]:-}${DPID[D]:-}" ] && break
        sleep 0.1
    done
    for h in "${HOSTS[@]}"; do [ -n "${DPID[$h]:-}" ] && kill -9 "${DPID[$h]}" 2>/dev/null; done
    for p in "${PIDS[@]}" $RPID $R2PID; do kill -9 "$p" 2>/dev/null; done
    for h in "${HOSTS[@]}"; do ip netns del "$(ns "$h")" 2>/dev/null; done
    ip netns del "$R" 2>/dev/null
    rm -rf "$T"
}
trap cleanup EXIT

# The network: a bridge in R, one veth per host.
ip netns add "$R" || exit 1
ip -n "$R" link set lo up
ip -n "$R" link add br0 type bridge && ip -n "$R" addr add 198.18.9.1/24 dev br0 && ip -n "$R" link set br0 up
for i in $(seq 0 9); do ip -n "$R" addr add "198.19.1.$i/32" dev lo; done
for h in "${HOSTS[@]}"; do
    n=$(ns "$h")
    ip netns add "$n" && ip -n "$n" link set lo up
    ip link add "v$h$$" netns "$R" type veth peer name eth0 netns "$n" || exit 1
    ip -n "$R" link set "v$h$$" master br0 && ip -n "$R" link set "v$h$$" up
    ip -n "$n" addr add "${ADDR[$h]}/24" dev eth0 && ip -n "$n" link set eth0 up
    ip -n "$n" route add 198.19.0.0/16 via 198.18.9.1
    ip netns exec "$n" python3 "$HERE/smtp_server.py" "${ADDR[$h]}" 25 "$T/server-$h.log" & PIDS+=($!)
    mkdir -p "$T/$h"
done

cat > "$T/sb.toml" <<TOML
[[list]]
name = "spam"
ttl = "1h"
prefix_v6 = 128
capacity = 2000000

[[rule]]
string = "@example.com"
list = "spam"
TOML

redis_start() { # redis_start DIR ARGS... — sets RPID
    mkdir -p "$1"
    local dir=$1; shift
    ip netns exec "$R" redis-server --bind 198.18.9.1 --appendonly yes --dir "$dir" --save '' \
        --protected-mode no --logfile "$dir/redis.log" "$@" & RPID=$!
}
redis_wait() { # redis_wait ARGS... (redis-cli's)
    for _ in $(seq 100); do
        [ "$(ip netns exec "$R" redis-cli -h 198.18.9.1 "$@" ping 2>/dev/null)" = PONG ] && return 0
        sleep 0.05
    done
    echo "redis did not start:"; cat "$T"/redis*/redis.log; return 1
}
URL=redis://198.18.9.1:6379
SHARE=(--share "$URL" --share-fleet test)
start_host() { # start_host H [ARGS…] — the daemon of host H, sharing (ARGS replace the --share flags)
    local h=$1; shift
    local args=("$@"); [ $# -eq 0 ] && args=("${SHARE[@]}")
    rm -f "$T/$h/pid"
    ip netns exec "$(ns "$h")" "$BIN" run --config "$T/sb.toml" --install-rules --pidfile "$T/$h/pid" \
        --state-dir "$T/$h/${STATE:-state}" --control-socket "$T/$h/ctl.sock" --metrics 127.0.0.1:9325 \
        $([ -z "${NONODE:-}" ] && echo --share-node "$h") "${args[@]}" \
        2>> "$T/$h/daemon.log" & DPID[$h]=$!
    for _ in $(seq 100); do [ -S "$T/$h/ctl.sock" ] && [ -s "$T/$h/pid" ] && return 0; sleep 0.05; done
    echo "daemon $h did not start:"; cat "$T/$h/daemon.log"; return 1
}
stop_host() { kill "${DPID[$1]}"; wait "${DPID[$1]}" 2>/dev/null; DPID[$1]=; }
ctl() { local h=$1; shift; ip netns exec "$(ns "$h")" "$BIN" "$@" --control-socket "$T/$h/ctl.sock"; }
client() { ip netns exec "$R" python3 "$HERE/smtp_client.py" "$@"; }
count() { ctl "$1" count --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["count"])'; }
# field H ADDR FIELD: a field of ADDR's ban on H (empty: not banned).
field() { ctl "$1" list --json | python3 -c 'import json,sys
for l in sys.stdin:
    b = json.loads(l)
    if b["key"] == sys.argv[1]: print(b[sys.argv[2]])' "$2" "$3"; }
# share H KEY: a value of H's share stats.
share() { ctl "$1" stats | python3 -c 'import json,sys; print(json.load(sys.stdin)["share"][sys.argv[1]])' "$2"; }
# until_eq SECONDS WANT COMMAND…: polls COMMAND's output until it is WANT (at most SECONDS).
until_eq() { local s=$1 want=$2; shift 2; local got; for _ in $(seq $((s * 20))); do got=$("$@" 2>/dev/null); [ "$got" = "$want" ] && return 0; sleep 0.05; done; echo "    (got '$got', want '$want')"; return 1; }
