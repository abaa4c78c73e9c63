# Sourced by the single-namespace benchmarks (proxy.sh, http_modes.sh, udp.sh): namespace
# $NS joined to the host by a veth pair ($HOST_IP/24 on the host end, $IP/24 and any
# EXTRA_IPS inside), a default route through it, loopback up, its resolv.conf pointing at
# 127.0.0.1; `X` runs a command inside. WORK is a scratch folder; on exit every pid in PIDS
# and $EDGECORE is killed, `before_cleanup` runs if the script defines it, and the
# namespace, the link and WORK are removed.
WORK=$(mktemp -d)
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}" ${EDGECORE:-}; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    declare -F before_cleanup >/dev/null && before_cleanup
    ip netns del "$NS" 2>/dev/null || true
    ip link del "vh$$" 2>/dev/null || true
    rm -rf "/etc/netns/$NS" "$WORK"
}
trap cleanup EXIT

ip netns add "$NS"
mkdir -p "/etc/netns/$NS" && echo "nameserver 127.0.0.1" > "/etc/netns/$NS/resolv.conf"
ip link add "vh$$" type veth peer name "vn$$"
ip link set "vn$$" netns "$NS"
ip addr add "$HOST_IP/24" dev "vh$$" && ip link set "vh$$" up
X() { ip netns exec "$NS" "$@"; }
X ip addr add "$IP/24" dev "vn$$"
for a in ${EXTRA_IPS[@]+"${EXTRA_IPS[@]}"}; do X ip addr add "$a/24" dev "vn$$"; done
X ip link set "vn$$" up
X ip link set lo up
X ip route add default via "$HOST_IP"
