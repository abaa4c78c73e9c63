#!/usr/bin/env bash
# HTTP benchmarks beside bench/proxy.sh, in the same setup (a network namespace of its own,
# root needed for iptables; nginx or nghttpd backends; HAProxy 2.6 from Debian; edgecore
# with real iptables interception, running only during its own runs), one mode per argument:
#
#   close    new connection per request: wrk -H 'Connection: close' -t2 -c64 against nginx
#            directly, HAProxy `mode http` (addressed directly and behind a DNAT rule, as
#            kube-proxy publishes a ClusterIP) and edgemesh's HTTP path, in ROUNDS
#            alternating rounds (order reversed every other round); ratios and p99.
#   h2       HTTP/2: h2load -c16 -m10 for SECS seconds (1 s warm-up), 1 KiB body, h2c all the
#            way: through interception to two `nghttpd --no-tls` backends, against HAProxy
#            `mode http` with `proto h2` on its bind and on both servers; ROUNDS alternating
#            runs; every request must succeed (h2load's failed, errored, timed-out and 4xx/5xx
#            counts are printed; its 2xx count may fall a few short of "succeeded", for
#            requests whose head came in the warm-up second and whose end came after it).
#   sockets  1,000 keep-alive clients (wrk -t2 -c1000) over a Service with 10 endpoints (10
#            addresses, one nginx listener): upstream sockets held by edgecore and by
#            HAProxy, sampled with `ss -tnp state established` during the run and after it.
#
# Port state: ~28,000 connections in a 10 s run of `close` leave TIME_WAIT sockets behind,
# and those would exhaust ephemeral ports and collapse every later run. So the namespace,
# for every run of every mode, has net.ipv4.tcp_tw_reuse=1, a wide
# net.ipv4.ip_local_port_range (10000-65535), at most 1,024 sockets in TIME_WAIT
# (tcp_max_tw_buckets: here the servers close first, see below) and conntrack's TIME_WAIT
# timeout at 5 s (all four are per network namespace); each `close` run prints the
# TIME_WAIT sockets and conntrack entries it started with.
#
# The namespace has one DNAT rule in its nat table throughout, so conntrack is on for every
# run, as on any node edgemesh runs on (see bench/proxy.sh).
# Measured on: 2 cores (x86_64), shared with other jobs; each run prints the 1-minute load.
# Usage: bench/http_modes.sh [close|h2|sockets|all] [seconds per run, default 10] [ROUNDS, default 5]
# EDGECORE_BIN=PATH runs another edgecore binary (for before/after runs of a change).
# PERF_H2=FILE records a perf profile (perf record -g) of edgecore during its first h2 run;
# PERF_CALLGRAPH="--call-graph dwarf" unwinds with DWARF instead (the build has no frame pointers).
set -euo pipefail
cd "$(dirname "$0")/.."
MODE=${1:-all}
SECS=${2:-10}
ROUNDS=${3:-5}
[ "$(id -u)" = 0 ] || { echo "needs root (network namespace and iptables)" >&2; exit 1; }
case $MODE in close | h2 | sockets | all) ;; *) echo "mode: close, h2, sockets or all" >&2; exit 64 ;; esac

need=()
for entry in wrk:wrk haproxy:haproxy nginx:nginx-light h2load:nghttp2-client nghttpd:nghttp2-server \
    ip:iproute2 ss:iproute2 iptables:iptables python3:python3; do
    command -v "${entry%%:*}" >/dev/null 2>&1 || need+=("${entry##*:}")
done
if [ -n "${PERF_H2:-}" ] && ! command -v perf >/dev/null 2>&1; then need+=(linux-perf); fi
if [ ${#need[@]} -gt 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
# EDGECORE_BIN=PATH runs that binary instead of this tree's release build (A/B runs).
BIN=${EDGECORE_BIN:-./target/release/edgecore}
if [ -z "${EDGECORE_BIN:-}" ]; then
    cargo build --release --locked --bin edgecore >/dev/null 2>&1 || cargo build --release --locked --bin edgecore
fi
# 1,000 clients, as many upstream sockets, and the listeners' own.
ulimit -n "$(ulimit -Hn)"

NS=emhttp$$
NET=10.203.0
IP=$NET.2
HOST_IP=$NET.1
H2_IPS=("$NET.3" "$NET.4")
MANY_IPS=()
for i in $(seq 10 19); do MANY_IPS+=("$NET.$i"); done
EXTRA_IPS=("${H2_IPS[@]}" "${MANY_IPS[@]}")
source bench/one_host.sh
# The port state, set once for the namespace and so for every run (see the header).
X sysctl -qw net.ipv4.tcp_tw_reuse=1 "net.ipv4.ip_local_port_range=10000 65535"
# With `Connection: close` the server side closes first, so the TIME_WAIT sockets are the
# servers' (nginx, HAProxy, edgemesh), where tcp_tw_reuse does not apply: a later SYN
# from a reused client port meets one and may wait a second for its retransmit, and runs
# collapsed to a third of their rate that way. So the namespace keeps at most 1,024.
X sysctl -qw net.ipv4.tcp_max_tw_buckets=1024
HAP_VIP=10.96.200.10
X iptables -t nat -A OUTPUT -d "$HAP_VIP/32" -p tcp --dport 80 -j DNAT --to-destination "$IP:9080"
# The conntrack sysctls appear once the nat table made conntrack load in the namespace.
X sysctl -qw net.netfilter.nf_conntrack_tcp_timeout_time_wait=5 2>/dev/null ||
    echo "note: conntrack's TIME_WAIT timeout not settable here" >&2

# Backends: nginx (one worker, as in proxy.sh) with a small body from memory, on $IP:8080
# and on port 8090 of every address (the 10 endpoints); two nghttpd serving a 1 KiB file.
cat > "$WORK/nginx.conf" <<CONF
worker_processes 1;
worker_rlimit_nofile 16384;
pid $WORK/nginx.pid;
error_log $WORK/nginx.err;
events { worker_connections 8192; }
http {
    access_log off;
    keepalive_requests 1000000;
    server { listen $IP:8080; location / { return 200 "hello from nginx\n"; } }
    server { listen 8090; location / { return 200 "hello from nginx\n"; } }
}
CONF
ip netns exec "$NS" nginx -c "$WORK/nginx.conf" -g "daemon off;" & PIDS+=($!)
mkdir -p "$WORK/h2root"
head -c 1024 /dev/zero | tr '\0' 'x' > "$WORK/h2root/1k"
for a in "${H2_IPS[@]}"; do
    ip netns exec "$NS" nghttpd --no-tls -a "$a" -d "$WORK/h2root" 8443 >/dev/null 2>&1 & PIDS+=($!)
done

HAP_MANY=""
for i in "${!MANY_IPS[@]}"; do HAP_MANY+="    server m$i ${MANY_IPS[$i]}:8090"$'\n'; done
cat > "$WORK/haproxy.cfg" <<CONF
global
    maxconn 8000
defaults
    mode http
    timeout connect 5s
    timeout client 60s
    timeout server 60s
frontend http_in
    bind $IP:9080
    default_backend nginx_http
backend nginx_http
    http-reuse always
    server n1 $IP:8080
frontend h2_in
    bind $IP:9443 proto h2
    default_backend h2
backend h2
    balance roundrobin
    http-reuse always
    server h1 ${H2_IPS[0]}:8443 proto h2
    server h2 ${H2_IPS[1]}:8443 proto h2
frontend many_in
    bind $IP:9090
    default_backend many
backend many
    balance roundrobin
    http-reuse always
$HAP_MANY
CONF
ip netns exec "$NS" haproxy -f "$WORK/haproxy.cfg" -db >"$WORK/haproxy.log" 2>&1 & HAPROXY=$!; PIDS+=($HAPROXY)

# edgecore with three Services in its store, as if the cloud had sent them.
python3 - "$WORK/edge.db" "$IP" "${H2_IPS[*]}" "${MANY_IPS[*]}" <<'PY'
import json, sqlite3, sys
db, ip, h2, many = sys.argv[1], sys.argv[2], sys.argv[3].split(), sys.argv[4].split()
c = sqlite3.connect(db)
c.execute("create table if not exists meta(key text primary key, type text, value text)")
def svc(name, vip):
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": "default", "resourceVersion": "1"},
            "spec": {"clusterIP": vip, "ports": [{"name": "main", "port": 80, "protocol": "TCP"}]}}
def eps(name, ips, port):
    return {"apiVersion": "v1", "kind": "Endpoints", "metadata": {"name": name, "namespace": "default", "resourceVersion": "1"},
            "subsets": [{"addresses": [{"ip": a, "nodeName": "bench"} for a in ips], "ports": [{"name": "main", "port": port}]}]}
rows = [("web", svc("web", "10.96.100.10"), eps("web", [ip], 8080)),
        ("h2", svc("h2", "10.96.100.20"), eps("h2", h2, 8443)),
        ("many", svc("many", "10.96.100.30"), eps("many", many, 8090))]
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
EDGECORE=
edgecore_up() {
    [ -n "$EDGECORE" ] && return 0
    RUST_LOG=warn ip netns exec "$NS" "$BIN" --config "$WORK/edgecore.yaml" 2>>"${EDGECORE_LOG:-$WORK/edgecore.log}" &
    EDGECORE=$!
    local up=
    for _ in $(seq 100); do
        [ "$(X iptables -t nat -S EDGE-MESH 2>/dev/null | grep -c '^-A')" = 3 ] && { up=1; break; }
        sleep 0.1
    done
    [ -n "$up" ] || { echo "edgecore did not install its rules:" >&2; tail -20 "${EDGECORE_LOG:-$WORK/edgecore.log}" >&2; exit 1; }
    for _ in $(seq 100); do X bash -c "exec 3<>/dev/tcp/10.96.100.10/80" 2>/dev/null && break; sleep 0.1; done
}
edgecore_down() { # SIGTERM: it removes its rules on the way out
    [ -z "$EDGECORE" ] && return 0
    kill "$EDGECORE"; wait "$EDGECORE" 2>/dev/null || true
    EDGECORE=
}
for port in 8080 9080 9443 9090; do
    for _ in $(seq 100); do X bash -c "exec 3<>/dev/tcp/$IP/$port" 2>/dev/null && break; sleep 0.1; done
done
for a in "${H2_IPS[@]}"; do
    for _ in $(seq 100); do X bash -c "exec 3<>/dev/tcp/$a/8443" 2>/dev/null && break; sleep 0.1; done
done
kill -0 "$HAPROXY" 2>/dev/null || { echo "haproxy did not start:" >&2; cat "$WORK/haproxy.log" >&2; exit 1; }

load() { cut -d' ' -f1 /proc/loadavg; }
to_ms() { python3 -c "import sys,re;v=sys.argv[1];m=re.match(r'([0-9.]+)(us|ms|s)',v);x=float(m.group(1));print({'us':x/1000,'ms':x,'s':x*1000}[m.group(2)])" "$1"; }
echo "machine: $(nproc) cores, $(uname -m), $(uptime | sed 's/.*load/load/')"

# --- close: a new connection per request ------------------------------------------------
mode_close() {
    echo "== close: wrk -t2 -c64 -d${SECS}s --latency -H 'Connection: close', $ROUNDS rounds"
    local names=(direct haproxy_http haproxy_vip edgemesh_http) round name url out rps p99 tw ct err
    local results=$WORK/close.txt
    : > "$results"
    for round in $(seq "$ROUNDS"); do
        local order=("${names[@]}")
        (( round % 2 )) || order=("${names[3]}" "${names[2]}" "${names[1]}" "${names[0]}")
        for name in "${order[@]}"; do
            case $name in
                direct) url="http://$IP:8080/" ;;
                haproxy_http) url="http://$IP:9080/" ;;
                haproxy_vip) url="http://$HAP_VIP/" ;;
                edgemesh_http) url="http://10.96.100.10/" ;;
            esac
            if [[ $name == edgemesh* ]]; then edgecore_up; else edgecore_down; fi
            X wrk -t2 -c64 -d1s -H 'Connection: close' "$url" >/dev/null
            tw=$(X ss -tanH state time-wait | wc -l)
            ct=$(X cat /proc/sys/net/netfilter/nf_conntrack_count 2>/dev/null || echo ?)
            out=$(X wrk -t2 -c64 -d"${SECS}s" --latency -H 'Connection: close' "$url")
            rps=$(echo "$out" | awk '/Requests\/sec/{print $2}')
            p99=$(to_ms "$(echo "$out" | awk '$1=="99%"{print $2}')")
            err=$(echo "$out" | awk '/Non-2xx|Socket errors/{print}' | tr '\n' ' ')
            printf "  round %d %-14s %9.0f req/s  p99 %6.2f ms  load %s  (start: %s TIME_WAIT, %s conntrack) %s\n" \
                "$round" "$name" "$rps" "$p99" "$(load)" "$tw" "$ct" "$err"
            echo "$round $name $rps $p99" >> "$results"
        done
    done
    edgecore_down
    python3 - "$results" <<'PY'
import sys
from statistics import median
runs = {}
for line in open(sys.argv[1]):
    r, name, rps, p99 = line.split()
    runs.setdefault(name, []).append((float(rps), float(p99)))
print("| target (Connection: close) | req/s | p99 ms | runs |")
print("|---|---|---|---|")
for k, label in [("direct", "nginx direct"), ("haproxy_http", "haproxy http"), ("haproxy_vip", "haproxy http via DNAT"), ("edgemesh_http", "edgemesh http")]:
    v = runs[k]
    print(f"| {label} | {median(x for x, _ in v):,.0f} | {median(p for _, p in v):.2f} | {len(v)} (median) |")
e = runs["edgemesh_http"]
for base in ("haproxy_http", "haproxy_vip", "direct"):
    b = runs[base]
    ratios = [x / y for (x, _), (y, _) in zip(e, b)]
    worse = sum(p > q for (_, p), (_, q) in zip(e, b))
    print(f"edgemesh / {base}: median {median(ratios):.2f}x, by round " + " ".join(f"{r:.2f}" for r in ratios)
          + f"; p99 edgemesh higher in {worse} of {len(ratios)}")
PY
}

# --- h2: h2load through interception vs HAProxy proto h2 --------------------------------
H2_FAILED=0
h2_run() { # name url -> "rps succeeded failed errored timeout mean_ms"
    local out
    out=$(X h2load -c16 -m10 -D "$SECS" --warm-up-time=1 "$2" 2>&1)
    echo "$out" >> "$WORK/h2load.$1.log"; [ -n "${H2LOG:-}" ] && echo "$out" >> "$H2LOG"
    python3 -c '
import re, sys
s = sys.stdin.read()
rps = re.search(r"finished in [0-9.]+\w+, ([0-9.]+) req/s", s).group(1)
m = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored, (\d+) timeout", s)
st = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", s)
t = re.search(r"time for request:\s+(\S+)\s+(\S+)\s+(\S+)", s)
def ms(v):
    x = float(re.match(r"[0-9.]+", v).group(0)); u = v[len(re.match(r"[0-9.]+", v).group(0)):]
    return x * {"us": 1e-3, "ms": 1, "s": 1000}[u]
print(rps, m.group(4), m.group(5), m.group(6), m.group(7), int(st.group(3)) + int(st.group(4)), f"{ms(t.group(3)):.2f}", f"{ms(t.group(2)):.2f}")
' <<<"$out"
}
mode_h2() {
    echo "== h2: h2load -c16 -m10 -D ${SECS} --warm-up-time=1, 1 KiB body, two nghttpd --no-tls backends, $ROUNDS rounds"
    local results=$WORK/h2.txt round name url line
    : > "$results"
    for round in $(seq "$ROUNDS"); do
        local order=(haproxy_h2 edgemesh_h2)
        (( round % 2 )) || order=(edgemesh_h2 haproxy_h2)
        for name in "${order[@]}"; do
            if [[ $name == edgemesh* ]]; then
                edgecore_up; url=http://10.96.100.20/1k
                if [ -n "${PERF_H2:-}" ] && [ -z "${PERFED:-}" ]; then
                    PERFED=1
                    (sleep 1; perf record -F 999 ${PERF_CALLGRAPH:--g} -p "$EDGECORE" -o "$PERF_H2" -- sleep "$SECS" >/dev/null 2>&1) &
                fi
            else
                edgecore_down; url=http://$IP:9443/1k
            fi
            read -r rps ok failed errored timeout bad mean max <<<"$(h2_run "$name" "$url")"
            printf "  round %d %-12s %9.0f req/s  %s succeeded, %s failed, %s errored, %s timeout, %s 4xx/5xx  mean %s ms max %s ms  load %s\n" \
                "$round" "$name" "$rps" "$ok" "$failed" "$errored" "$timeout" "$bad" "$mean" "$max" "$(load)"
            [ "$failed$errored$timeout$bad" = 0000 ] || H2_FAILED=1
            echo "$round $name $rps" >> "$results"
        done
    done
    edgecore_down
    python3 - "$results" <<'PY'
import sys
from statistics import median
runs = {}
for line in open(sys.argv[1]):
    r, name, rps = line.split()
    runs.setdefault(name, []).append(float(rps))
e, h = runs["edgemesh_h2"], runs["haproxy_h2"]
ratios = [x / y for x, y in zip(e, h)]
print(f"| h2 (h2load -c16 -m10) | req/s median | runs |\n|---|---|---|\n| haproxy proto h2 | {median(h):,.0f} | {len(h)} |\n| edgemesh h2c | {median(e):,.0f} | {len(e)} |")
print(f"edgemesh / haproxy h2: median {median(ratios):.2f}x, by round " + " ".join(f"{r:.2f}" for r in ratios))
PY
    [ "$H2_FAILED" = 0 ] && echo "every h2 request succeeded" || echo "SOME h2 REQUESTS FAILED (see above)"
}

# --- sockets: upstream sockets under 1,000 clients --------------------------------------
# Established sockets to the 10 endpoints (port 8090) owned by process $1.
upstream_sockets() { X ss -tnpH state established '( dport = :8090 )' | grep -c "pid=$1," || true; }
mode_sockets() {
    echo "== sockets: wrk -t2 -c1000 -d${SECS}s (keep-alive), a Service with 10 endpoints"
    local name url pid during after1 after10 after40 out rps
    for name in haproxy edgemesh; do
        if [ "$name" = edgemesh ]; then edgecore_up; url=http://10.96.100.30/; pid=$EDGECORE
        else edgecore_down; url=http://$IP:9090/; pid=$HAPROXY; fi
        ip netns exec "$NS" wrk -t2 -c1000 -d"${SECS}s" "$url" > "$WORK/sockets.$name" &
        local wrk=$! samples=()
        # Samples at a quarter, half and three quarters of the run: the most is reported.
        for q in 1 2 1; do sleep "$(python3 -c "print($SECS * $q / 4)")"; samples+=("$(upstream_sockets "$pid")"); done
        wait "$wrk"
        sleep 1; after1=$(upstream_sockets "$pid")
        sleep 9; after10=$(upstream_sockets "$pid")
        # Past edgemesh's upstream idle expiry (upstreamIdleTimeoutMs, 30 s by default).
        sleep 30; after40=$(upstream_sockets "$pid")
        during=$(printf '%s\n' "${samples[@]}" | sort -n | tail -1)
        rps=$(awk '/Requests\/sec/{print $2}' "$WORK/sockets.$name")
        out=$(awk '/Non-2xx|Socket errors/{print}' "$WORK/sockets.$name" | tr '\n' ' ')
        printf "  %-9s %9.0f req/s  upstream sockets during %s (samples %s), 1 s after %s, 10 s after %s, 40 s after %s  load %s %s\n" \
            "$name" "$rps" "$during" "${samples[*]}" "$after1" "$after10" "$after40" "$(load)" "$out"
    done
    edgecore_down
}

case $MODE in
    close) mode_close ;;
    h2) mode_h2 ;;
    sockets) mode_sockets ;;
    all) mode_close; mode_h2; mode_sockets ;;
esac
