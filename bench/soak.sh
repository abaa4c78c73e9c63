#!/usr/bin/env bash
# The soak: a cloud and two edges in network namespaces (as bench/tunnel.sh builds them; the
# edges reach each other only through the cloud), mixed traffic for MINUTES minutes, and every
# minute one line per process: RSS, open file descriptors, and edge-a's error count. Flat lines
# are the target. Traffic, all from edge-a to pods on edge-b through the tunnel, at once:
#   - HTTP keep-alive: wrk -c16, 200 requests/s (through iptables interception);
#   - new connections: curl in a loop, one connection per request (Connection: close);
#   - TCP bulk: iperf3 for 20 s of every minute;
#   - DNS: dig against edge-a's Service DNS, 20 queries/s;
#   - metadata churn: a Service's annotation rewritten every second in the manifest folder.
# Usage: bench/soak.sh [MINUTES, default 30]   (root; installs what it needs)
set -euo pipefail
cd "$(dirname "$0")/.."
MINUTES=${1:-30}
[ "$(id -u)" = 0 ] || { echo "needs root (network namespaces, iptables)" >&2; exit 1; }
need=()
for entry in wrk:wrk nginx:nginx-light iperf3:iperf3 ip:iproute2 iptables:iptables curl:curl dig:dnsutils python3:python3; do
    command -v "${entry%%:*}" >/dev/null 2>&1 || need+=("${entry##*:}")
done
if [ ${#need[@]} -gt 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
cargo build --release --locked --bin cloudcore --bin edgecore >/dev/null 2>&1 ||
    cargo build --release --locked --bin cloudcore --bin edgecore

source bench/three_hosts.sh
WEB_VIP=10.96.120.10 BULK_VIP=10.96.120.11
WORK=$(mktemp -d)
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    three_hosts_down
    rm -rf "$WORK"
}
trap cleanup EXIT
three_hosts_up ems 10.204
X() { local ns=$1; shift; ip netns exec "$ns" "$@"; }
# Long-running processes start with `ip netns exec` itself, not X: a function run in the
# background is a subshell, and $! would be the subshell's pid, not the process's.

# The pods on edge-b.
cat > "$WORK/nginx.conf" <<CONF
worker_processes 1;
pid $WORK/nginx.pid;
error_log $WORK/nginx.err;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 1000000;
       server { listen $EDGE_B:8080; location / { return 200 "hello from edge-b\n"; } } }
CONF
ip netns exec "$B" nginx -c "$WORK/nginx.conf" -g "daemon off;" & PIDS+=($!)
ip netns exec "$B" iperf3 -s -B "$EDGE_B" -p 5201 >/dev/null 2>&1 & PIDS+=($!)

mkdir -p "$WORK/manifests"
services() { # generation
    cat <<YAML
apiVersion: v1
kind: Service
metadata: {name: web, namespace: default, annotations: {churn: "$1"}}
spec: {clusterIP: $WEB_VIP, ports: [{name: http, port: 80}]}
---
apiVersion: v1
kind: Endpoints
metadata: {name: web, namespace: default}
subsets: [{addresses: [{ip: $EDGE_B, nodeName: edge-b}], ports: [{name: http, port: 8080}]}]
---
apiVersion: v1
kind: Service
metadata: {name: bulk, namespace: default}
spec: {clusterIP: $BULK_VIP, ports: [{name: iperf, port: 5201, appProtocol: tcp}]}
---
apiVersion: v1
kind: Endpoints
metadata: {name: bulk, namespace: default}
subsets: [{addresses: [{ip: $EDGE_B, nodeName: edge-b}], ports: [{name: iperf, port: 5201}]}]
YAML
}
services 0 > "$WORK/manifests/soak.yaml"
cat > "$WORK/cloudcore.yaml" <<YAML
health: {address: "127.0.0.1:10550"}
modules:
  cloudHub: {address: "$CLOUD_IP:10000", insecure: true, objectSyncDb: "$WORK/object-sync.db"}
  edgeController: {source: manifests, manifests: {dir: "$WORK/manifests"}, versionsDb: "$WORK/versions.db"}
YAML
for n in a b; do
cat > "$WORK/edgecore-$n.yaml" <<YAML
health: {address: "127.0.0.1:10350"}
modules:
  edgeHub: {server: "$CLOUD_IP:10000", insecure: true, nodeId: edge-$n, reconnectInitialMs: 100}
  metaManager: {dbPath: "$WORK/edge-$n.db", socketPath: "$WORK/edge-$n.sock"}
  edgeMesh: {iptables: $([ $n = a ] && echo true || echo false), proxyListen: "", dns: {listen: "127.0.0.1:53"}}
YAML
done
RUST_LOG=warn ip netns exec "$C" ./target/release/cloudcore --config "$WORK/cloudcore.yaml" 2>"$WORK/cloudcore.log" & CLOUD=$!; PIDS+=($!)
RUST_LOG=warn ip netns exec "$A" ./target/release/edgecore --config "$WORK/edgecore-a.yaml" 2>"$WORK/edgecore-a.log" & EA=$!; PIDS+=($!)
RUST_LOG=warn ip netns exec "$B" ./target/release/edgecore --config "$WORK/edgecore-b.yaml" 2>"$WORK/edgecore-b.log" & EB=$!; PIDS+=($!)
for _ in $(seq 300); do X "$A" curl -sf -o /dev/null --max-time 1 "http://$WEB_VIP/" && break; sleep 0.1; done
X "$A" curl -sf -o /dev/null --max-time 2 "http://$WEB_VIP/" || { echo "web not answered from edge-a" >&2; tail "$WORK"/*.log >&2; exit 1; }

END=$((SECONDS + MINUTES * 60))
# Load, each in a loop until the end.
cat > "$WORK/rate.lua" <<'LUA'
-- wrk paced: each connection waits so that 16 connections make about 200 requests/s.
function delay() return 80 end
LUA
ip netns exec "$A" wrk -t1 -c16 -d"$((MINUTES * 60))s" -s "$WORK/rate.lua" "http://$WEB_VIP/" > "$WORK/wrk.out" 2>&1 & PIDS+=($!)
( while [ $SECONDS -lt $END ]; do X "$A" curl -s -o /dev/null -H 'Connection: close' --max-time 2 "http://$WEB_VIP/" || echo x >> "$WORK/curl.errors"; sleep 0.05; done ) & PIDS+=($!)
( while [ $SECONDS -lt $END ]; do X "$A" iperf3 -c "$BULK_VIP" -p 5201 -t 20 >/dev/null 2>&1 || echo x >> "$WORK/iperf.errors"; sleep 40; done ) & PIDS+=($!)
( while [ $SECONDS -lt $END ]; do X "$A" dig @127.0.0.1 +short +time=1 +tries=1 web.default.svc.cluster.local >/dev/null || echo x >> "$WORK/dig.errors"; sleep 0.05; done ) & PIDS+=($!)
( g=0; while [ $SECONDS -lt $END ]; do g=$((g + 1)); services "$g" > "$WORK/manifests/.soak.tmp"; mv "$WORK/manifests/.soak.tmp" "$WORK/manifests/soak.yaml"; sleep 1; done ) & PIDS+=($!)

rss() { awk '/^VmRSS/{print int($2/1024)}' "/proc/$1/status"; }
fds() { ls "/proc/$1/fd" | wc -l; }
errors() { X "$A" curl -s --max-time 2 127.0.0.1:10350/metrics | awk '/^edgemesh_errors_total/{s+=$2} END{print s+0}'; }
count() { [ -f "$1" ] && wc -l < "$1" || echo 0; }
echo "soak: $MINUTES min on $(nproc) cores; every minute: RSS MiB / open fds of cloudcore, edge-a, edge-b; edge-a's edgemesh_errors_total; client-side failures (curl, iperf3, dig)"
printf '%-6s %-14s %-14s %-14s %-8s %s\n' minute cloudcore edge-a edge-b errors "client failures"
minute=0
while [ $SECONDS -lt $END ]; do
    printf '%-6s %-14s %-14s %-14s %-8s %s\n' "$minute" "$(rss $CLOUD) / $(fds $CLOUD)" "$(rss $EA) / $(fds $EA)" "$(rss $EB) / $(fds $EB)" \
        "$(errors)" "$(count "$WORK/curl.errors") / $(count "$WORK/iperf.errors") / $(count "$WORK/dig.errors")"
    sleep 60
    minute=$((minute + 1))
done
printf '%-6s %-14s %-14s %-14s %-8s %s\n' "$minute" "$(rss $CLOUD) / $(fds $CLOUD)" "$(rss $EA) / $(fds $EA)" "$(rss $EB) / $(fds $EB)" \
    "$(errors)" "$(count "$WORK/curl.errors") / $(count "$WORK/iperf.errors") / $(count "$WORK/dig.errors")"
grep -E "Requests/sec|requests in|Non-2xx|Socket errors" "$WORK/wrk.out" || true
