#!/usr/bin/env bash
# The UDP benchmark: in one run, inside a network namespace of its own (root needed, for
# iptables), a UDP echo server reached directly, through nginx's `stream` UDP proxy and
# through edgemesh (a UDP ClusterIP, intercepted by iptables):
# - many small datagrams: FLOWS client flows in closed loop (one 64-byte datagram out at a
#   time each, examples/udp_load.rs), datagrams/s and p99 round trip, in ROUNDS rounds with
#   the order reversed each round, ratios per round and their median;
# - iperf3 -u at full speed through each: received Mbit/s and loss;
# - RSS with 10,000 live flows (edgemesh, and nginx's workers).
# Usage: bench/udp.sh [seconds per run, default 10] [ROUNDS, default 5] [FLOWS, default 64]
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-10}
ROUNDS=${2:-5}
FLOWS=${3:-64}
[ "$(id -u)" = 0 ] || { echo "needs root (network namespace and iptables)" >&2; exit 1; }

need=()
for entry in nginx:nginx-light iperf3:iperf3 ip:iproute2 iptables:iptables conntrack:conntrack python3:python3 prlimit:util-linux; do
    command -v "${entry%%:*}" >/dev/null 2>&1 || need+=("${entry##*:}")
done
[ -f /usr/lib/nginx/modules/ngx_stream_module.so ] || need+=(libnginx-mod-stream)
if [ ${#need[@]} -gt 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
cargo build --release --locked --bin edgecore --example udp_load >/dev/null 2>&1 ||
    cargo build --release --locked --bin edgecore --example udp_load
BIN=./target/release/edgecore
LOAD=./target/release/examples/udp_load

NS=emudp$$
IP=10.203.0.2
HOST_IP=10.203.0.1
before_cleanup() { cp "$WORK/edgecore.log" /tmp/udp-bench-edgecore.log 2>/dev/null || true; }
source bench/one_host.sh

# Backends: the echo server (one thread) and iperf3.
# Ten thousand flows each through two proxies need more ports than the default range.
X sysctl -qw net.ipv4.ip_local_port_range="1024 65000"
# Started with `ip netns exec` itself (not the X function), so $! is the program's pid.
ip netns exec "$NS" "$LOAD" echo "$IP:7007" & PIDS+=($!)
ip netns exec "$NS" iperf3 -s -B "$IP" -p 5201 >/dev/null 2>&1 & PIDS+=($!)

# nginx's stream proxy, one worker per core (its best on this machine), sessions kept
# while datagrams flow, as edgemesh keeps flows.
cat > "$WORK/nginx.conf" <<CONF
load_module /usr/lib/nginx/modules/ngx_stream_module.so;
worker_processes auto;
worker_rlimit_nofile 20000;
pid $WORK/nginx.pid;
error_log $WORK/nginx.err;
events { worker_connections 15000; }
stream {
    server { listen $IP:9007 udp reuseport; proxy_pass $IP:7007; proxy_timeout 30s; }
    server { listen $IP:9201 udp reuseport; proxy_pass $IP:5201; proxy_timeout 30s; }
    server { listen $IP:9201; proxy_pass $IP:5201; }
}
CONF
ip netns exec "$NS" nginx -c "$WORK/nginx.conf" -g "daemon off;" & PIDS+=($!)

python3 - "$WORK/edge.db" "$IP" <<'PY'
import json, sqlite3, sys
db, ip = sys.argv[1], sys.argv[2]
c = sqlite3.connect(db)
c.execute("create table if not exists meta(key text primary key, type text, value text)")
def svc(name, vip, port, protocols):
    ports = [{"name": p.lower(), "port": port, "protocol": p} for p in protocols]
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": "default", "resourceVersion": "1"},
            "spec": {"clusterIP": vip, "ports": ports}}
def eps(name, port, protocols):
    ports = [{"name": p.lower(), "port": port, "protocol": p} for p in protocols]
    return {"apiVersion": "v1", "kind": "Endpoints", "metadata": {"name": name, "namespace": "default", "resourceVersion": "1"},
            "subsets": [{"addresses": [{"ip": ip, "nodeName": "bench"}], "ports": ports}]}
rows = [("echo", svc("echo", "10.96.100.20", 7, ["UDP"]), eps("echo", 7007, ["UDP"])),
        ("bulk", svc("bulk", "10.96.100.21", 5201, ["UDP", "TCP"]), eps("bulk", 5201, ["UDP", "TCP"]))]
for name, s, e in rows:
    c.execute("insert or replace into meta values (?,?,?)", (f"default/service/{name}", "service", json.dumps(s)))
    c.execute("insert or replace into meta values (?,?,?)", (f"default/endpoints/{name}", "endpoints", json.dumps(e)))
c.commit()
PY
cat > "$WORK/edgecore.yaml" <<CONF
health: {enable: false}
modules:
  edgeHub: {enable: false, nodeId: bench}
  metaManager: {dbPath: "$WORK/edge.db", socketPath: "$WORK/mm.sock"}
  edgeMesh: {listen: "0.0.0.0:40001", udp: {maxFlows: 12000}}
CONF
RUST_LOG=warn ip netns exec "$NS" prlimit --nofile=20000 "$BIN" --config "$WORK/edgecore.yaml" 2>>"$WORK/edgecore.log" &
EDGECORE=$!
for _ in $(seq 100); do
    [ "$(X iptables -t nat -S EDGE-MESH 2>/dev/null | grep -c -- '-p udp')" = 2 ] && break
    sleep 0.1
done
kill -0 "$EDGECORE" 2>/dev/null || { echo "edgecore did not start:" >&2; cat "$WORK/edgecore.log" >&2; exit 1; }

echo "machine: $(nproc) cores, $(uname -m); $FLOWS flows of 64-byte datagrams, closed loop, ${SECS}s per run; nginx $(nginx -v 2>&1 | cut -d/ -f2), worker_processes auto"
declare -A RATE P99
measure() {
    local name=$1 target=$2 out
    X "$LOAD" load "$target" "$FLOWS" 1 64 >/dev/null   # warm-up
    out=$(X "$LOAD" load "$target" "$FLOWS" "$SECS" 64)
    read -r rate _p50 p99 lost <<<"$out"
    RATE[$name]="${RATE[$name]:-} $rate"; P99[$name]="${P99[$name]:-} $p99"
    echo "  $name: $rate datagrams/s, p99 $p99 µs"
    [ "$lost" != 0 ] && echo "  $name: $lost datagrams lost (200 ms without an echo)"
    return 0
}
measure direct "$IP:7007"
RUNS=(nginx edgemesh)
for round in $(seq "$ROUNDS"); do
    order=("${RUNS[@]}")
    (( round % 2 )) || order=("${order[1]}" "${order[0]}")
    for name in "${order[@]}"; do
        case $name in
            nginx) measure nginx "$IP:9007" ;;
            edgemesh) measure edgemesh "10.96.100.20:7" ;;
        esac
    done
done

# iperf3 -u at full speed (-b 0), 1400-byte datagrams: what the receiver got (the rate
# sent less the share lost).
bulk() {
    X iperf3 -c "$1" -p "$2" -u -b 0 -l 1400 -t "$SECS" -J >"$WORK/iperf.json" || true
    python3 -c "
import json, sys
r = json.load(open(sys.argv[1]))
if 'error' in r:
    print('failed', r['error'].replace(' ', '_'), file=sys.stderr); print('0 100')
else:
    e = r['end']['sum']; lost = e.get('lost_percent', 0)
    print(f\"{e['bits_per_second'] * (1 - lost / 100) / 1e6:.0f} {lost:.1f}\")" "$WORK/iperf.json"
}
read -r B_direct L_direct <<<"$(bulk "$IP" 5201)"
read -r B_nginx L_nginx <<<"$(bulk "$IP" 9201)"
read -r B_edgemesh L_edgemesh <<<"$(bulk 10.96.100.21 5201)"

# RSS with 10,000 live flows: edgecore's, and nginx's workers' together.
rss_kib() { local t=0; for p in "$@"; do t=$((t + $(awk '/VmRSS/{print $2}' "/proc/$p/status"))); done; echo $t; }
workers=$(pgrep -f "nginx: worker" -P "$(cat "$WORK/nginx.pid")" | tr '\n' ' ')
# One proxy at a time: 10,000 client sockets and 10,000 upstream sockets each.
held() { # name target pids...: prints "before after answered" (KiB, KiB, flows)
    local target=$2; shift 2
    local before after answered pid
    before=$(rss_kib "$@")
    ip netns exec "$NS" prlimit --nofile=20000 "$LOAD" hold "$target" 10000 >"$WORK/hold" & pid=$!
    for _ in $(seq 1200); do grep -q held "$WORK/hold" 2>/dev/null && break; sleep 0.1; done
    after=$(rss_kib "$@")
    answered=$(cut -d' ' -f2 "$WORK/hold")
    kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true
    echo "$before $after ${answered:-0}"
}
read -r E_before E_with HELD_E <<<"$(held edgemesh 10.96.100.20:7 "$EDGECORE")"
read -r N_before N_with HELD_N <<<"$(held nginx "$IP:9007" $workers)"

python3 - <<PY
from statistics import median
rate = {k: [float(x) for x in v.split()] for k, v in {"direct": "${RATE[direct]}", "nginx": "${RATE[nginx]}", "edgemesh": "${RATE[edgemesh]}"}.items()}
p99 = {k: [float(x) for x in v.split()] for k, v in {"direct": "${P99[direct]}", "nginx": "${P99[nginx]}", "edgemesh": "${P99[edgemesh]}"}.items()}
print("| target | datagrams/s | p99 round trip (µs) | runs |")
print("|---|---|---|---|")
for k in ("direct", "nginx", "edgemesh"):
    print(f"| {k} | {median(rate[k]):,.0f} | {median(p99[k]):,.0f} | {len(rate[k])}{' (median)' if len(rate[k]) > 1 else ''} |")
ratios = [e / n for e, n in zip(rate["edgemesh"], rate["nginx"])]
tails = " ".join(f"{e:.0f}/{n:.0f}" for e, n in zip(p99["edgemesh"], p99["nginx"]))
print()
print(f"edgemesh / nginx datagrams/s: median {median(ratios):.2f}x, by round " + " ".join(f"{r:.2f}" for r in ratios) + " (target >= 1.0)")
print(f"    p99 µs by round (edgemesh/nginx): {tails}")
print()
print("| iperf3 -u -b 0 -l 1400 | direct | nginx | edgemesh |")
print("|---|---|---|---|")
print(f"| received Mbit/s | ${B_direct} | ${B_nginx} | ${B_edgemesh} |")
print(f"| lost % | ${L_direct} | ${L_nginx} | ${L_edgemesh} |")
print()
print(f"RSS with 10,000 live flows: edgemesh {${E_before}/1024:.1f} -> {${E_with}/1024:.1f} MiB ({${HELD_E}} flows answered); nginx workers {${N_before}/1024:.1f} -> {${N_with}/1024:.1f} MiB ({${HELD_N}} answered)")
PY
