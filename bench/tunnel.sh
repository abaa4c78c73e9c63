#!/usr/bin/env bash
# The tunnel benchmark (issue 15): three hosts in network namespaces, a cloud and two edges,
# each edge joined to the cloud by one veth and to nothing else (root needed). A pod on edge-b
# (nginx serving a small body and a 4 MiB file, and an iperf3 server) is reached by a client
# on edge-a three ways, side by side in one run:
#   direct         the cloud forwards (ip_forward=1) and the client dials the pod's IP: what a
#                  flat network gives, the floor for any relay;
#   haproxy chain  the cloud does not forward; one HAProxy `mode tcp` on edge-a, one in the
#                  cloud and one on edge-b, chained to the pod: what a plain TCP relay costs;
#   edgemesh       edgecore on each edge and cloudcore in the cloud, the pod published as
#                  Services, the client's connection intercepted on edge-a and carried over the
#                  cloud link. Runs only with TUNNEL=1 (see edgemesh_up below).
# Workloads, per target: a 4 MiB transfer (curl, a new connection each, median and p99 of many),
# keep-alive req/s with a small body (wrk -c32 -t2) and its p99, bulk TCP (iperf3, Gbit/s);
# with BW set (e.g. BW=100mbit) the 4 MiB transfer again with a tbf qdisc of that rate on both
# ends of each edge<->cloud veth (this kernel has no netem), as on real edge uplinks.
# For the two relays (chain, edgemesh), the CPU their three processes use per keep-alive
# request and per GiB of bulk: on a shared machine these move far less than the rates do.
# Each round runs every target once, the order reversed every other round, so that a shift in
# the shared machine's load hits all targets alike. Prints one table with ratios.
# Usage: bench/tunnel.sh [seconds per run, default 10] [ROUNDS, default 3]
# BW=RATE adds the shaped transfer (tc rate syntax: 100mbit). TUNNEL=1 adds edgemesh, with
# CLOUDCORE_BIN and EDGECORE_BIN (default: this tree's release builds) and the configs in
# TUNNEL_CONFIG (default bench/tunnel/): cloudcore.yaml, edgecore-a.yaml, edgecore-b.yaml and
# manifests.yaml (the Services). WORKLOADS (default "transfers keepalive bulk idle") picks
# what runs: a subset is for tuning one figure quickly; "idle" is the 1,000 idle streams.
# ONLY (e.g. "edgemesh") runs those targets alone, for profiling one. HAPROXY_THREADS=N sets
# each HAProxy's nbthread (default: HAProxy's own, one per core).
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-10}
ROUNDS=${2:-3}
BW=${BW:-}
TUNNEL=${TUNNEL:-}
WORKLOADS=" ${WORKLOADS:-transfers keepalive bulk idle} "
[ "$(id -u)" = 0 ] || { echo "needs root (network namespaces, tc)" >&2; exit 1; }

need=()
for entry in wrk:wrk haproxy:haproxy nginx:nginx-light iperf3:iperf3 ip:iproute2 tc:iproute2 curl:curl python3:python3 iptables-restore:iptables; do
    command -v "${entry%%:*}" >/dev/null 2>&1 || need+=("${entry##*:}")
done
if [ ${#need[@]} -gt 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi

# The same addresses as tests/common/topology.rs: edge-a's link 10.203.1.0/24, edge-b's
# 10.203.2.0/24, the cloud .1 on each and 10.203.0.1 on its loopback.
source bench/three_hosts.sh
WORK=$(mktemp -d)
PIDS=()
EM_PIDS=()
cleanup() {
    for pid in "${PIDS[@]}" "${EM_PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    three_hosts_down
    rm -rf "$WORK"
}
trap cleanup EXIT
three_hosts_up emt 10.203
POD_IP=$EDGE_B

XC() { ip netns exec "$C" "$@"; }
XA() { ip netns exec "$A" "$@"; }
forwarding() { XC sysctl -qw "net.ipv4.ip_forward=$1"; }

# tbf on both ends of both links, or none.
shape() {
    local ns dev ns_dev
    for ns_dev in "$A:to-cloud" "$C:to-a" "$C:to-b" "$B:to-cloud"; do
        ns=${ns_dev%%:*} dev=${ns_dev#*:}
        if [ "$1" = on ]; then
            tc -n "$ns" qdisc replace dev "$dev" root tbf rate "$BW" burst 32kbit latency 50ms
        else
            tc -n "$ns" qdisc del dev "$dev" root 2>/dev/null || true
        fi
    done
}

# The pod on edge-b: nginx with a small body and a 4 MiB file, and iperf3.
mkdir -p "$WORK/www"
head -c 4194304 /dev/urandom > "$WORK/www/4m"
cat > "$WORK/nginx.conf" <<CONF
user root;
worker_processes 1;
pid $WORK/nginx.pid;
error_log $WORK/nginx.err;
events { worker_connections 4096; }
http {
    access_log off;
    sendfile on;
    keepalive_requests 1000000;
    server {
        listen $POD_IP:8080;
        location = /small { return 200 "hello from nginx\n"; }
        location = /4m { root $WORK/www; }
    }
}
CONF
ip netns exec "$B" nginx -c "$WORK/nginx.conf" -g "daemon off;" & PIDS+=($!)
ip netns exec "$B" iperf3 -s -B "$POD_IP" -p 5201 >/dev/null 2>&1 & PIDS+=($!)

# The chain: each HAProxy relays its port 9080 (HTTP) and 9201 (iperf3) to the next hop.
haproxy_at() { # namespace, bind address, next hop address, next hop http port, next hop bulk port
    cat > "$WORK/haproxy-$1.cfg" <<CONF
global
    maxconn 8000
${HAPROXY_THREADS:+    nbthread $HAPROXY_THREADS}
defaults
    mode tcp
    timeout connect 5s
    timeout client 60s
    timeout server 60s
frontend web
    bind $2:9080
    default_backend web
backend web
    server next $3:$4
frontend bulk
    bind $2:9201
    default_backend bulk
backend bulk
    server next $3:$5
CONF
    ip netns exec "$1" haproxy -f "$WORK/haproxy-$1.cfg" -db >"$WORK/haproxy-$1.log" 2>&1 & PIDS+=($!)
    HAPROXY_PIDS+=($!)
}
HAPROXY_PIDS=()
haproxy_at "$B" "$EDGE_B" "$POD_IP" 8080 5201
haproxy_at "$C" "$CLOUD_A" "$EDGE_B" 9080 9201
haproxy_at "$A" "$EDGE_A" "$CLOUD_A" 9080 9201

wait_tcp() { # namespace, address, port
    for _ in $(seq 100); do
        ip netns exec "$1" bash -c "exec 3<>/dev/tcp/$2/$3" 2>/dev/null && return 0
        sleep 0.1
    done
    echo "nothing accepts $2:$3 from $1" >&2; exit 1
}
wait_tcp "$B" "$POD_IP" 8080
wait_tcp "$B" "$POD_IP" 5201
wait_tcp "$B" "$EDGE_B" 9080
wait_tcp "$C" "$CLOUD_A" 9080
wait_tcp "$A" "$EDGE_A" 9080
# The premise: without forwarding in the cloud, edge-a cannot reach the pod on edge-b.
if XA timeout 2 bash -c "exec 3<>/dev/tcp/$POD_IP/8080" 2>/dev/null; then
    echo "edge-a reaches $POD_IP with forwarding off: the topology is wrong" >&2; exit 1
fi

# edgemesh: cloudcore in the cloud, edgecore on each edge, from the three config files in
# TUNNEL_CONFIG. They are templates: ${WORK}, ${CLOUD_IP}, ${CLOUD_A}, ${CLOUD_B}, ${EDGE_A},
# ${EDGE_B}, ${POD_IP}, ${WEB_VIP} and ${BULK_VIP} are replaced before use (files, sockets and
# databases go under ${WORK}). The configs publish the pod on node edge-b as two Services,
# WEB_VIP:80 -> pod:8080 and BULK_VIP:5201 -> pod:5201 (appProtocol: tcp), and edge-a's
# edgecore intercepts those ClusterIPs; the client on edge-a dials them. The processes run only
# for edgemesh's own runs, so the other targets are measured without them beside.
WEB_VIP=10.96.110.10
BULK_VIP=10.96.110.11
IDLE_VIP=10.96.110.12
TUNNEL_CONFIG=${TUNNEL_CONFIG:-bench/tunnel}
if [ "$TUNNEL" = 1 ]; then
    if [ -z "${CLOUDCORE_BIN:-}" ] || [ -z "${EDGECORE_BIN:-}" ]; then
        cargo build --release --locked --bin cloudcore --bin edgecore >/dev/null 2>&1 ||
            cargo build --release --locked --bin cloudcore --bin edgecore
    fi
    CLOUDCORE_BIN=${CLOUDCORE_BIN:-./target/release/cloudcore}
    EDGECORE_BIN=${EDGECORE_BIN:-./target/release/edgecore}
    for f in cloudcore edgecore-a edgecore-b; do
        [ -f "$TUNNEL_CONFIG/$f.yaml" ] || { echo "TUNNEL=1 needs $TUNNEL_CONFIG/$f.yaml" >&2; exit 1; }
        WORK=$WORK CLOUD_IP=$CLOUD_IP CLOUD_A=$CLOUD_A CLOUD_B=$CLOUD_B EDGE_A=$EDGE_A EDGE_B=$EDGE_B \
            POD_IP=$POD_IP WEB_VIP=$WEB_VIP BULK_VIP=$BULK_VIP IDLE_VIP=$IDLE_VIP python3 -c \
            'import os,string,sys; sys.stdout.write(string.Template(open(sys.argv[1]).read()).substitute(os.environ))' \
            "$TUNNEL_CONFIG/$f.yaml" > "$WORK/$f.yaml"
    done
    mkdir -p "$WORK/manifests"
    WEB_VIP=$WEB_VIP BULK_VIP=$BULK_VIP IDLE_VIP=$IDLE_VIP POD_IP=$POD_IP python3 -c \
        'import os,string,sys; sys.stdout.write(string.Template(open(sys.argv[1]).read()).substitute(os.environ))' \
        "$TUNNEL_CONFIG/manifests.yaml" > "$WORK/manifests/bench.yaml"
else
    echo "edgemesh tunnel: not wired yet (TUNNEL=1 runs it; see edgemesh_up in $0)"
fi
edgemesh_up() {
    [ ${#EM_PIDS[@]} -gt 0 ] && return 0
    # `ip netns exec` itself, not XC: a function in the background is a subshell, and $! would
    # be the subshell's pid rather than the process's.
    RUST_LOG=warn ip netns exec "$C" "$CLOUDCORE_BIN" --config "$WORK/cloudcore.yaml" 2>>"$WORK/cloudcore.log" & EM_PIDS+=($!)
    RUST_LOG=warn ip netns exec "$A" "$EDGECORE_BIN" --config "$WORK/edgecore-a.yaml" 2>>"$WORK/edgecore-a.log" & EM_PIDS+=($!)
    RUST_LOG=warn ip netns exec "$B" "$EDGECORE_BIN" --config "$WORK/edgecore-b.yaml" 2>>"$WORK/edgecore-b.log" & EM_PIDS+=($!)
    # Ready when both Services answer from edge-a through the tunnel (30 s at most).
    local deadline=$((SECONDS + 30))
    while [ $SECONDS -lt $deadline ]; do
        XA curl -sf -o /dev/null --max-time 1 "http://$WEB_VIP/small" && break
        sleep 0.1
    done
    XA curl -sf -o /dev/null --max-time 2 "http://$WEB_VIP/small" ||
        { echo "edgemesh: $WEB_VIP/small not answered from edge-a in 30 s; the logs end:" >&2; tail -n 5 "$WORK"/*core*.log >&2; exit 1; }
    wait_tcp "$A" "$BULK_VIP" 5201
}
edgemesh_down() {
    [ ${#EM_PIDS[@]} -eq 0 ] && return 0
    kill "${EM_PIDS[@]}" 2>/dev/null || true
    wait "${EM_PIDS[@]}" 2>/dev/null || true
    EM_PIDS=()
}

# Where each target is reached from edge-a: the HTTP base URL and the iperf3 host:port.
declare -A WEB BULK
WEB[direct]="http://$POD_IP:8080" BULK[direct]="$POD_IP:5201"
WEB[chain]="http://$EDGE_A:9080" BULK[chain]="$EDGE_A:9201"
WEB[edgemesh]="http://$WEB_VIP" BULK[edgemesh]="$BULK_VIP:5201"
if [ -n "${ONLY:-}" ]; then
    read -ra TARGETS <<< "$ONLY"
else
    TARGETS=(direct chain)
    [ "$TUNNEL" = 1 ] && TARGETS+=(edgemesh)
fi

# Puts the namespaces in the state `target` runs in.
enter() {
    if [ "$1" = direct ]; then forwarding 1; else forwarding 0; fi
    if [ "$1" = edgemesh ]; then edgemesh_up; else edgemesh_down; fi
}

RESULTS=$WORK/results
# 4 MiB transfers, a new connection each, for SECS seconds and at least 20: one line per
# transfer in RESULTS ("target metric ms"). curl reads the URLs from a config file, so that one
# process runs a batch and its start-up is not in the times (time_total starts at its connect).
transfers() { # target, metric name
    local url="${WEB[$1]}/4m" start=$SECONDS n=0 out
    : > "$WORK/curl.cfg"
    for _ in $(seq 20); do printf 'url = "%s"\noutput = "/dev/null"\n' "$url" >> "$WORK/curl.cfg"; done
    XA curl -sf -o /dev/null "$url" # the first connection of the run is not measured
    while [ $n -lt 20 ] || [ $((SECONDS - start)) -lt "$SECS" ]; do
        out=$(XA curl -sf -H 'Connection: close' -w '%{size_download} %{time_total}\n' -K "$WORK/curl.cfg")
        echo "$out" | awk -v t="$1" -v m="$2" '
            $1 != 4194304 { print "short transfer: " $0 > "/dev/stderr"; exit 1 }
            { print t, m, $2 * 1000 }' >> "$RESULTS"
        n=$((n + 20))
    done
}
# Keep-alive req/s and p99 (ms) with a small body, and the relays' CPU per request.
keepalive() {
    local out rps p99 errors before
    XA wrk -t2 -c32 -d1s "${WEB[$1]}/small" >/dev/null # connections made and buffers grown first
    before=$(relays_cpu "$1")
    out=$(XA wrk -t2 -c32 -d"${SECS}s" --latency "${WEB[$1]}/small")
    if [ -n "$before" ]; then
        echo "$1 cpu_us_per_req $(echo "$out" | awk -v b="$before" -v a="$(relays_cpu "$1")" \
            '/requests in/{print (a - b) * 1e6 / $1}')" >> "$RESULTS"
    fi
    rps=$(echo "$out" | awk '/Requests\/sec/{print $2}')
    p99=$(echo "$out" | awk '$1=="99%"{print $2}')
    errors=$(echo "$out" | awk '/Non-2xx|Socket errors/{print}' | tr '\n' ' ')
    [ -n "$errors" ] && echo "  $1: $errors"
    echo "$1 rps $rps" >> "$RESULTS"
    echo "$1 rps_p99 $(python3 -c "import sys,re;m=re.match(r'([0-9.]+)(us|ms|s)',sys.argv[1]);x=float(m.group(1));print({'us':x/1000,'ms':x,'s':x*1000}[m.group(2)])" "$p99")" >> "$RESULTS"
}
# CPU seconds a process has used so far: user + system, or user alone with `user`.
cpu_secs() {
    awk -v hz="$(getconf CLK_TCK)" -v user="${2:-}" \
        '{print (user == "user" ? $14 : $14 + $15) / hz}' "/proc/$1/stat"
}
# The CPU seconds the relays of `target` have used so far, summed (none for direct): the
# three HAProxies of the chain, or cloudcore and the two edgecores. A figure per request or
# per GiB, unlike a rate, hardly moves with what else the shared machine runs. `user` as
# the second argument counts user time alone: the relays' own work, without the kernel's
# socket work, which grows when other tenants contend for the cores.
relays_cpu() {
    local pids=() pid total=0
    case "$1" in
        chain) pids=("${HAPROXY_PIDS[@]}") ;;
        edgemesh) pids=("${EM_PIDS[@]}") ;;
        *) return 0 ;;
    esac
    for pid in "${pids[@]}"; do total=$(awk -v t="$total" -v c="$(cpu_secs "$pid" "${2:-}")" 'BEGIN{print t + c}'); done
    echo "$total"
}
# CPU seconds used between `before` and `after`, per GiB of `bytes` relayed.
per_gib() {
    awk -v b="$1" -v a="$2" -v n="$3" 'BEGIN{print (a - b) / (n / 2^30)}'
}
bulk() {
    local out before after relays user
    [ "$1" = edgemesh ] && before=$(cpu_secs "${EM_PIDS[0]}")
    relays=$(relays_cpu "$1")
    user=$(relays_cpu "$1" user)
    out=$(XA iperf3 -c "${BULK[$1]%:*}" -p "${BULK[$1]#*:}" -t "$SECS" -J |
        python3 -c "import json,sys;e=json.load(sys.stdin)['end']['sum_received'];print(e['bits_per_second']/1e9, e['bytes'])")
    echo "$1 gbps ${out% *}" >> "$RESULTS"
    if [ -n "$relays" ]; then
        echo "$1 cpu_per_gib $(per_gib "$relays" "$(relays_cpu "$1")" "${out#* }")" >> "$RESULTS"
        echo "$1 user_per_gib $(per_gib "$user" "$(relays_cpu "$1" user)" "${out#* }")" >> "$RESULTS"
    fi
    if [ "$1" = edgemesh ]; then
        # cloudcore's CPU per GiB it relayed (both directions of the link count as one GiB).
        after=$(cpu_secs "${EM_PIDS[0]}")
        echo "edgemesh cloud_cpu_per_gib $(per_gib "$before" "$after" "${out#* }")" >> "$RESULTS"
    fi
}

# RSS (KiB) of each edgemesh process: cloudcore, edgecore on edge-a, edgecore on edge-b.
rss_all() {
    for pid in "${EM_PIDS[@]}"; do awk '/^VmRSS/{printf "%s ", $2}' "/proc/$pid/status"; done
}
# 1,000 idle streams: clients on edge-a hold 1,000 connections to IDLE_VIP (opaque TCP, each
# a stream through the cloud) to a server on edge-b that accepts and keeps them.
idle_streams() {
    local before after
    enter edgemesh
    ip netns exec "$B" python3 -c '
import os, socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], 7777)); s.listen(2048); held = []
while True:
    c, _ = s.accept(); held.append(c)
    open(sys.argv[2] + ".t", "w").write(str(len(held))); os.replace(sys.argv[2] + ".t", sys.argv[2])
' "$POD_IP" "$WORK/held" & PIDS+=($!)
    wait_tcp "$B" "$POD_IP" 7777
    before=$(rss_all)
    ip netns exec "$A" python3 -c '
import socket, sys, time
held = [socket.create_connection((sys.argv[1], 7777)) for _ in range(1000)]
time.sleep(3600)
' "$IDLE_VIP" & local client=$!
    local deadline=$((SECONDS + 60))
    while [ "$(cat "$WORK/held" 2>/dev/null || echo 0)" -lt 1000 ] && [ $SECONDS -lt $deadline ]; do sleep 0.2; done
    after=$(rss_all)
    echo "1,000 idle streams: held $(cat "$WORK/held" 2>/dev/null || echo 0) at edge-b; RSS KiB (cloudcore, edge-a, edge-b) before: $before; holding them: $after"
    kill "$client" 2>/dev/null || true
    edgemesh_down
}
# Every target once per round, the order reversed every other round.
in_rounds() { # what to run per target
    local order
    for round in $(seq "$ROUNDS"); do
        order=("${TARGETS[@]}")
        if (( round % 2 == 0 )); then
            order=()
            for ((i = ${#TARGETS[@]} - 1; i >= 0; i--)); do order+=("${TARGETS[i]}"); done
        fi
        for target in "${order[@]}"; do
            enter "$target"
            "$@" "$target"
        done
    done
    edgemesh_down
}
wants() { [[ "$WORKLOADS" == *" $1 "* ]]; }
unlimited() {
    if wants transfers; then transfers "$1" xfer; fi
    if wants keepalive; then keepalive "$1"; fi
    if wants bulk; then bulk "$1"; fi
}
shaped() { transfers "$1" xfer_bw; }

echo "machine: $(nproc) cores (shared), $(uname -r); ${SECS}s per run, $ROUNDS rounds; wrk -t2 -c32; nginx 1 worker; haproxy defaults (mode tcp)"
: > "$RESULTS"
in_rounds unlimited
if [ -n "$BW" ] && wants transfers; then
    shape on
    in_rounds shaped
    shape off
elif [ -z "$BW" ]; then
    echo "BW unset: no shaped transfer (BW=100mbit adds it)"
fi

if [ "$TUNNEL" = 1 ] && wants idle; then idle_streams > "$WORK/idle.txt"; fi

python3 - "$RESULTS" "$BW" "${TARGETS[*]}" <<'PY'
import sys
from collections import defaultdict
from statistics import median
path, bw, targets = sys.argv[1], sys.argv[2], sys.argv[3].split()
values = defaultdict(list)
for line in open(path):
    t, m, v = line.split()
    values[(t, m)].append(float(v))
def p99(xs):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(0.99 * (len(xs) - 1))))]
rows = [("4 MiB transfer, median ms", "xfer", median, "lower"),
        ("4 MiB transfer, p99 ms", "xfer", p99, "lower"),
        ("keep-alive req/s (wrk -c32, small body)", "rps", median, "higher"),
        ("keep-alive p99 ms", "rps_p99", median, "lower"),
        ("bulk TCP Gbit/s (iperf3)", "gbps", median, "higher"),
        ("relays' CPU µs per keep-alive request", "cpu_us_per_req", median, "lower"),
        ("relays' CPU s per GiB (bulk)", "cpu_per_gib", median, "lower"),
        ("relays' user CPU s per GiB (bulk)", "user_per_gib", median, "lower")]
if bw:
    rows += [(f"4 MiB transfer at {bw}, median ms", "xfer_bw", median, "lower"),
             (f"4 MiB transfer at {bw}, p99 ms", "xfer_bw", p99, "lower")]
names = {"direct": "direct", "chain": "haproxy chain", "edgemesh": "edgemesh"}
cols = ["direct", "chain", "edgemesh"]
head = ["workload"] + [names[c] for c in cols] + ["chain / direct", "edgemesh / direct", "edgemesh / chain"]
print("| " + " | ".join(head) + " |")
print("|" + "---|" * len(head))
def fmt(x):
    return "-" if x is None else (f"{x:,.0f}" if x >= 1000 else f"{x:.2f}" if x >= 10 else f"{x:.3f}")
for label, metric, agg, better in rows:
    v = {c: agg(values[(c, metric)]) if values[(c, metric)] else None for c in cols}
    ratio = lambda a, b: "-" if v[a] is None or v[b] is None else f"{v[a] / v[b]:.2f}x"
    print("| " + " | ".join([label] + [fmt(v[c]) for c in cols]
                            + [ratio("chain", "direct"), ratio("edgemesh", "direct"), ratio("edgemesh", "chain")]) + " |")
counts = {c: len(values[(c, "xfer")]) for c in targets}
print()
if any(counts.values()):
    print("transfers per target: " + ", ".join(f"{names[c]} {n}" for c, n in counts.items())
          + (", at " + bw + ": " + ", ".join(f"{names[c]} {len(values[(c, 'xfer_bw')])}" for c in targets) if bw else "")
          + "; req/s, p99 and Gbit/s are medians over rounds; ratios are row over column (for times lower is better)")
cpu = values[("edgemesh", "cloud_cpu_per_gib")]
if cpu:
    print(f"cloudcore CPU seconds per GiB relayed (iperf3 runs, median): {median(cpu):.2f}")
PY
if [ -f "$WORK/idle.txt" ]; then cat "$WORK/idle.txt"; fi
