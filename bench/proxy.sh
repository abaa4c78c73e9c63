#!/usr/bin/env bash
# The proxy benchmark: in one run, inside a network namespace of its own (root needed, for
# iptables), wrk against nginx directly, HAProxy in `mode http`, HAProxy in `mode tcp`,
# and edgemesh on both of its paths (HTTP-aware, and opaque TCP via appProtocol: tcp);
# then a bulk TCP transfer (iperf3) directly, through HAProxy and through edgemesh.
# Prints one table with ratios. The HTTP comparison (the one with a target) runs in ROUNDS
# rounds of four runs, their order reversed each round, and reports each round's ratios and
# the medians: edgemesh, HAProxy addressed directly, HAProxy behind a DNAT rule (the way
# kube-proxy publishes a ClusterIP), and HAProxy in a namespace without any nat rule.
#
# Why the namespace state matters: once the namespace holds a nat rule, the kernel tracks
# every connection in it (conntrack), which cost HAProxy 2–11% of its req/s here. Every
# node edgemesh runs on has nat rules (its own interception, the CNI's, kube-proxy's), so
# HAProxy is measured in that same state, with one DNAT rule of its own in the nat table;
# the bare namespace is reported beside it.
# Usage: bench/proxy.sh [seconds per run, default 10] [ROUNDS, default 5]
# PERF_EDGEMESH=FILE also records a perf profile of edgecore during its first HTTP run.
# EDGECORE_BIN=PATH runs that edgecore binary instead of this tree's release build (A/B runs).
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-10}
ROUNDS=${2:-5}
[ "$(id -u)" = 0 ] || { echo "needs root (network namespace and iptables)" >&2; exit 1; }

need=()
for entry in wrk:wrk haproxy:haproxy nginx:nginx-light iperf3:iperf3 ip:iproute2 iptables:iptables nft:nftables python3:python3; do
    command -v "${entry%%:*}" >/dev/null 2>&1 || need+=("${entry##*:}")
done
if [ ${#need[@]} -gt 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
BIN=${EDGECORE_BIN:-./target/release/edgecore}
if [ -z "${EDGECORE_BIN:-}" ]; then
    cargo build --release --locked --bin edgecore >/dev/null 2>&1 || cargo build --release --locked --bin edgecore
fi

NS=embench$$
IP=10.202.0.2
HOST_IP=10.202.0.1
source bench/one_host.sh

# Backend: nginx answering a small body from memory; iperf3 for bulk.
cat > "$WORK/nginx.conf" <<CONF
worker_processes 1;
pid $WORK/nginx.pid;
error_log $WORK/nginx.err;
events { worker_connections 4096; }
http {
    access_log off;
    keepalive_requests 1000000;
    server { listen $IP:8080; location / { return 200 "hello from nginx\n"; } }
}
CONF
ip netns exec "$NS" nginx -c "$WORK/nginx.conf" -g "daemon off;" & PIDS+=($!)
ip netns exec "$NS" iperf3 -s -B "$IP" -p 5201 >/dev/null 2>&1 & PIDS+=($!)

cat > "$WORK/haproxy.cfg" <<CONF
global
    maxconn 8000
defaults
    timeout connect 5s
    timeout client 60s
    timeout server 60s
frontend http_in
    mode http
    bind $IP:9080
    default_backend nginx_http
backend nginx_http
    mode http
    http-reuse always
    server n1 $IP:8080
frontend tcp_in
    mode tcp
    bind $IP:9081
    default_backend nginx_tcp
backend nginx_tcp
    mode tcp
    server n1 $IP:8080
frontend bulk_in
    mode tcp
    bind $IP:9082
    default_backend iperf
backend iperf
    mode tcp
    server i1 $IP:5201
CONF
ip netns exec "$NS" haproxy -f "$WORK/haproxy.cfg" -db >"$WORK/haproxy.log" 2>&1 & PIDS+=($!)

# edgecore with three Services already in its store, as if the cloud had sent them.
python3 - "$WORK/edge.db" "$IP" <<'PY'
import json, sqlite3, sys
db, ip = sys.argv[1], sys.argv[2]
c = sqlite3.connect(db)
c.execute("create table if not exists meta(key text primary key, type text, value text)")
def svc(name, vip, port, app=None):
    p = {"name": "main", "port": port, "protocol": "TCP"}
    if app: p["appProtocol"] = app
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": "default", "resourceVersion": "1"},
            "spec": {"clusterIP": vip, "ports": [p]}}
def eps(name, port):
    return {"apiVersion": "v1", "kind": "Endpoints", "metadata": {"name": name, "namespace": "default", "resourceVersion": "1"},
            "subsets": [{"addresses": [{"ip": ip, "nodeName": "bench"}], "ports": [{"name": "main", "port": port}]}]}
rows = [("web", svc("web", "10.96.100.10", 80), eps("web", 8080)),
        ("webtcp", svc("webtcp", "10.96.100.11", 80, "tcp"), eps("webtcp", 8080)),
        ("bulk", svc("bulk", "10.96.100.12", 5201, "tcp"), eps("bulk", 5201))]
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
  edgeMesh: {listen: "0.0.0.0:40001"}
CONF
# HAProxy's virtual IP, DNAT'ed to it as kube-proxy would publish a ClusterIP. The rule also
# puts the namespace in the state every edgemesh node is in: a nat table, so conntrack.
HAP_VIP=10.96.200.10
nat_node() {
    X iptables -t nat -C OUTPUT -d "$HAP_VIP/32" -p tcp --dport 80 -j DNAT --to-destination "$IP:9080" 2>/dev/null ||
        X iptables -t nat -A OUTPUT -d "$HAP_VIP/32" -p tcp --dport 80 -j DNAT --to-destination "$IP:9080"
}
# No nat table at all (iptables-nft keeps empty base chains, which still cost a little).
nat_bare() { X nft delete table ip nat 2>/dev/null || X iptables -t nat -F; }
nat_node

# edgecore runs only for edgemesh's runs: HAProxy and nginx are measured without it beside
# them, and edgemesh without HAProxy busy.
EDGECORE=
edgecore_up() {
    [ -n "$EDGECORE" ] && return 0
    RUST_LOG=warn ip netns exec "$NS" "$BIN" --config "$WORK/edgecore.yaml" 2>>"$WORK/edgecore.log" &
    EDGECORE=$!
    for _ in $(seq 100); do
        [ "$(X iptables -t nat -S EDGE-MESH 2>/dev/null | grep -c '^-A')" = 3 ] && break
        sleep 0.1
    done
    for vip in 10.96.100.10:80 10.96.100.11:80 10.96.100.12:5201; do
        for _ in $(seq 100); do X bash -c "exec 3<>/dev/tcp/${vip%:*}/${vip#*:}" 2>/dev/null && break; sleep 0.1; done
    done
}
edgecore_down() { # SIGTERM: it removes its rules on the way out
    [ -z "$EDGECORE" ] && return 0
    # The kernel's high-water mark of its RSS: a sampler would itself load the machine.
    local hwm peak
    hwm=$(awk '/VmHWM/{print $2}' "/proc/$EDGECORE/status" 2>/dev/null || echo 0)
    peak=$(cat "$WORK/rss" 2>/dev/null || echo 0)
    [ "${hwm:-0}" -gt "$peak" ] && echo "$hwm" > "$WORK/rss"
    kill "$EDGECORE"; wait "$EDGECORE" 2>/dev/null || true
    EDGECORE=
}
for port in 8080 9080 9081; do
    for _ in $(seq 100); do X bash -c "exec 3<>/dev/tcp/$IP/$port" 2>/dev/null && break; sleep 0.1; done
done

# wrk: requests/s and p99 (ms).
run_wrk() {
    local out rps p99
    out=$(X wrk -t2 -c64 -d"${SECS}s" --latency "$1")
    rps=$(echo "$out" | awk '/Requests\/sec/{print $2}')
    p99=$(echo "$out" | awk '$1=="99%"{print $2}')
    errors=$(echo "$out" | awk '/Non-2xx|Socket errors/{print}' | tr '\n' ' ')
    echo "$rps $p99 ${errors:-}"
}
to_ms() { python3 -c "import sys,re;v=sys.argv[1];m=re.match(r'([0-9.]+)(us|ms|s)',v);x=float(m.group(1));print({'us':x/1000,'ms':x,'s':x*1000}[m.group(2)])" "$1"; }

echo "machine: $(nproc) cores, $(uname -m); wrk -t2 -c64 -d${SECS}s; nginx 1 worker; haproxy defaults"
# One wrk run against `name`'s url; its req/s and p99 are appended to RPS[name], P99[name].
declare -A RPS P99
measure() {
    local name=$1 url=$2 rps p99 rest
    if [[ $name == edgemesh* ]]; then edgecore_up; else edgecore_down; fi
    if [[ $name == *bare ]]; then nat_bare; fi
    # One second of the same load first: every run starts with its connections made and its
    # buffers grown (HAProxy keeps its server connections between runs, edgecore is new).
    X wrk -t2 -c64 -d1s "$url" >/dev/null
    if [[ $name == edgemesh_http && -n "${PERF_EDGEMESH:-}" && -z "${PERFED:-}" ]]; then
        PERFED=1
        perf record -F 999 -g -p "$EDGECORE" -o "$PERF_EDGEMESH" -- sleep "$SECS" >/dev/null 2>&1 &
    fi
    read -r rps p99 rest <<<"$(run_wrk "$url")"
    if [[ $name == *bare ]]; then nat_node; fi
    RPS[$name]="${RPS[$name]:-} $rps"; P99[$name]="${P99[$name]:-} $(to_ms "$p99")"
    [ -n "${rest:-}" ] && echo "  $name: $rest"
    return 0
}
measure direct "http://$IP:8080/"
measure haproxy_tcp "http://$IP:9081/"
measure edgemesh_tcp "http://10.96.100.11/"
# The comparison that has a target runs in rounds, the four back to back and their order
# reversed each round, so that a shift in the machine's load mid-run hits all alike.
HTTP_RUNS=(haproxy_http edgemesh_http haproxy_vip haproxy_bare)
for round in $(seq "$ROUNDS"); do
    order=("${HTTP_RUNS[@]}")
    (( round % 2 )) || order=("${order[3]}" "${order[2]}" "${order[1]}" "${order[0]}")
    for name in "${order[@]}"; do
        case $name in
            haproxy_http | haproxy_bare) measure "$name" "http://$IP:9080/" ;;
            haproxy_vip) measure "$name" "http://$HAP_VIP/" ;;
            edgemesh_http) measure "$name" "http://10.96.100.10/" ;;
        esac
    done
done

bulk() { X iperf3 -c "$1" -p "$2" -t "$SECS" -J | python3 -c "import json,sys;print(json.load(sys.stdin)['end']['sum_received']['bits_per_second']/1e9)"; }
edgecore_down
B_direct=$(bulk "$IP" 5201)
B_haproxy=$(bulk "$IP" 9082)
edgecore_up
B_edgemesh=$(bulk 10.96.100.12 5201)
edgecore_down
RSS_MB=$(python3 -c "print(round(int(open('$WORK/rss').read())/1024,1))")

python3 - <<PY
from statistics import median
names = {"direct": "direct", "haproxy_http": "haproxy http", "haproxy_vip": "haproxy http via DNAT",
         "haproxy_bare": "haproxy http, no nat table", "haproxy_tcp": "haproxy tcp",
         "edgemesh_http": "edgemesh http", "edgemesh_tcp": "edgemesh tcp"}
raw_rps = {"direct": "${RPS[direct]}", "haproxy_http": "${RPS[haproxy_http]}", "haproxy_vip": "${RPS[haproxy_vip]}",
           "haproxy_bare": "${RPS[haproxy_bare]}", "haproxy_tcp": "${RPS[haproxy_tcp]}",
           "edgemesh_http": "${RPS[edgemesh_http]}", "edgemesh_tcp": "${RPS[edgemesh_tcp]}"}
raw_p99 = {"direct": "${P99[direct]}", "haproxy_http": "${P99[haproxy_http]}", "haproxy_vip": "${P99[haproxy_vip]}",
           "haproxy_bare": "${P99[haproxy_bare]}", "haproxy_tcp": "${P99[haproxy_tcp]}",
           "edgemesh_http": "${P99[edgemesh_http]}", "edgemesh_tcp": "${P99[edgemesh_tcp]}"}
runs = {k: [float(x) for x in v.split()] for k, v in raw_rps.items()}
p99s = {k: [float(x) for x in v.split()] for k, v in raw_p99.items()}
rps = {k: median(v) for k, v in runs.items()}
p99 = {k: median(v) for k, v in p99s.items()}
print("| target | req/s (keep-alive) | p99 ms | runs |")
print("|---|---|---|---|")
for k in names:
    print(f"| {names[k]} | {rps[k]:,.0f} | {p99[k]:.2f} | {len(runs[k])}{' (median)' if len(runs[k]) > 1 else ''} |")
print()
print(f"| bulk TCP (iperf3) | direct | haproxy tcp | edgemesh |")
print("|---|---|---|---|")
print(f"| Gbit/s | {${B_direct}:.2f} | {${B_haproxy}:.2f} | {${B_edgemesh}:.2f} |")
print()
for base in ("haproxy_http", "haproxy_vip", "haproxy_bare"):
    ratios = [e / h for e, h in zip(runs["edgemesh_http"], runs[base])]
    tails = " ".join(f"{e:.2f}/{h:.2f}" for e, h in zip(p99s["edgemesh_http"], p99s[base]))
    worse = sum(e > h for e, h in zip(p99s["edgemesh_http"], p99s[base]))
    print(f"edgemesh http / {names[base]}: median {median(ratios):.2f}x, by round " + " ".join(f"{r:.2f}" for r in ratios))
    print(f"    p99 ms by round (edgemesh/haproxy): {tails}; edgemesh higher in {worse} of {len(ratios)}")
print(f"target: edgemesh http / haproxy http >= 1.0x, p99 no worse: median {median([e / h for e, h in zip(runs['edgemesh_http'], runs['haproxy_http'])]):.2f}x, p99 {p99['edgemesh_http']:.2f} vs {p99['haproxy_http']:.2f} ms")
print(f"edgemesh tcp / haproxy tcp req/s: {rps['edgemesh_tcp']/rps['haproxy_tcp']:.2f}x")
print(f"edgemesh bulk / haproxy tcp bulk: {${B_edgemesh}/${B_haproxy}:.2f}x (target >= 0.9)")
print(f"edgemesh peak RSS (VmHWM, under load): {${RSS_MB}} MiB (target <= 30)")
PY
