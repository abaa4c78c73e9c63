#!/usr/bin/env bash
# The footprint benchmark: how much memory an idle edgecore holds for its Services.
#
# What: for each count of Services (default 0 and 1000), an edgecore (release build) starts
# with that many Services and their Endpoints (two ready addresses each, on this node)
# already in its SQLite store, as the cloud would have left them: realistic Kubernetes
# objects (uid, labels, selector, clusterIPs, targetRef...), one TCP port each. Once
# /readyz says edgemesh has loaded the Services, and a second of idleness later, it prints
# the process's VmRSS, its anonymous part (heap, stacks) and its file-backed part (the
# binary's resident code), VmHWM (its peak) from /proc/PID/status, its thread count, and
# the line count of /metrics (scraped after RSS is read, so the scrape's own buffers are
# not counted; RSS after the scrape is printed too).
# How: no root needed: edgemesh without iptables, every listener on 127.0.0.1; no cloud
# link. RSS depends on the allocator and the core count (one edgemesh worker thread per
# core), so compare runs on the same machine; the README names the one the numbers are from.
# Usage: bench/footprint.sh [SERVICE_COUNT...]          (default: 0 1000)
#   EDGECORE=path  measures that binary instead of building target/release/edgecore.
#   RUNS=n         starts each count n times and prints every run (default 1).
set -euo pipefail
cd "$(dirname "$0")/.."
COUNTS=("$@")
[ ${#COUNTS[@]} -gt 0 ] || COUNTS=(0 1000)
RUNS=${RUNS:-1}
for tool in python3 curl; do
    command -v "$tool" >/dev/null || { echo "needs $tool" >&2; exit 1; }
done
if [ -z "${EDGECORE:-}" ]; then
    cargo build --release --locked --bin edgecore >/dev/null 2>&1 || cargo build --release --locked --bin edgecore
    EDGECORE=./target/release/edgecore
fi

WORK=$(mktemp -d)
PID=
cleanup() {
    [ -n "$PID" ] && kill "$PID" 2>/dev/null && wait "$PID" 2>/dev/null
    rm -rf "$WORK"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
status_kib() { awk -v k="$1:" '$1==k{print $2}' "/proc/$PID/status"; }

printf '%-9s %-4s %10s %10s %10s %10s %8s %14s %14s\n' services run "VmRSS KiB" "anon KiB" "file KiB" "VmHWM KiB" threads "/metrics lines" "RSS after KiB"
for count in "${COUNTS[@]}"; do
    for run in $(seq "$RUNS"); do
        dir="$WORK/$count-$run"
        mkdir -p "$dir"
        # The store as metamanager keeps it: one row per object, keyed by its edge path, its
        # value compact JSON as serde_json writes it.
        python3 - "$dir/edge.db" "$count" <<'PY'
import json, sqlite3, sys
db, count = sys.argv[1], int(sys.argv[2])
c = sqlite3.connect(db)
c.execute("CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, type TEXT NOT NULL, value TEXT NOT NULL)")
def meta(name, uid, i):
    return {"name": name, "namespace": "default", "uid": uid, "resourceVersion": str(1000 + i),
            "creationTimestamp": "2024-05-01T10:00:00Z", "labels": {"app": name}}
rows = []
for i in range(count):
    name = f"svc-{i:04d}"
    vip = f"10.96.{1 + i // 250}.{1 + i % 250}"
    svc = {"apiVersion": "v1", "kind": "Service",
           "metadata": meta(name, f"5b1c0d2e-0000-4000-8000-{i:012d}", i),
           "spec": {"type": "ClusterIP", "clusterIP": vip, "clusterIPs": [vip],
                    "ipFamilies": ["IPv4"], "ipFamilyPolicy": "SingleStack",
                    "internalTrafficPolicy": "Cluster", "sessionAffinity": "None",
                    "selector": {"app": name},
                    "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080}]},
           "status": {"loadBalancer": {}}}
    addrs = [{"ip": f"10.244.{i // 125}.{2 * (i % 125) + k + 1}", "nodeName": "bench",
              "targetRef": {"kind": "Pod", "namespace": "default", "name": f"{name}-pod-{k}",
                            "uid": f"9f3e7a10-0000-4000-8000-{2 * i + k:012d}"}}
             for k in range(2)]
    eps = {"apiVersion": "v1", "kind": "Endpoints",
           "metadata": meta(name, f"7c2d1e3f-0000-4000-8000-{i:012d}", i),
           "subsets": [{"addresses": addrs,
                        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]}]}
    rows.append((f"default/service/{name}", "service", json.dumps(svc, separators=(",", ":"))))
    rows.append((f"default/endpoints/{name}", "endpoints", json.dumps(eps, separators=(",", ":"))))
c.executemany("INSERT OR REPLACE INTO meta VALUES (?,?,?)", rows)
c.commit()
PY
        health=$(free_port)
        cat > "$dir/edgecore.yaml" <<CONF
health: {enable: true, address: "127.0.0.1:$health"}
modules:
  edgeHub: {enable: false, nodeId: bench}
  metaManager: {dbPath: "$dir/edge.db", socketPath: "$dir/mm.sock"}
  edgeMesh: {iptables: false, listen: "127.0.0.1:0", proxyListen: ""}
CONF
        RUST_LOG=warn "$EDGECORE" --config "$dir/edgecore.yaml" 2>>"$dir/edgecore.log" &
        PID=$!
        ready=
        for _ in $(seq 600); do
            if curl -fsS "http://127.0.0.1:$health/readyz" 2>/dev/null | grep -q 'services loaded'; then
                ready=1
                break
            fi
            kill -0 "$PID" 2>/dev/null || break
            sleep 0.1
        done
        if [ -z "$ready" ]; then
            echo "edgecore did not get ready with $count services:" >&2
            cat "$dir/edgecore.log" >&2
            exit 1
        fi
        sleep 1 # idle: whatever the start-up left behind has settled
        rss=$(status_kib VmRSS)
        anon=$(status_kib RssAnon)
        file=$(status_kib RssFile)
        hwm=$(status_kib VmHWM)
        threads=$(status_kib Threads)
        lines=$(curl -fsS "http://127.0.0.1:$health/metrics" | wc -l)
        after=$(status_kib VmRSS)
        printf '%-9s %-4s %10s %10s %10s %10s %8s %14s %14s\n' "$count" "$run" "$rss" "$anon" "$file" "$hwm" "$threads" "$lines" "$after"
        kill "$PID"
        wait "$PID" 2>/dev/null || true
        PID=
    done
done
