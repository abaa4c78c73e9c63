# Sourced by the benchmarks that need a cloud and two edges (bench/tunnel.sh, bench/soak.sh):
# three network namespaces, each edge joined to the cloud by one veth and to nothing else,
# the cloud not forwarding, so the edges reach each other only through a relay in the cloud.
#
#   three_hosts_up PREFIX NET   makes namespaces ${PREFIX}c$$, ${PREFIX}a$$, ${PREFIX}b$$ and sets
#                               C, A, B (their names), CLOUD_IP=NET.0.1 (the cloud's loopback),
#                               CLOUD_A=NET.1.1 / EDGE_A=NET.1.2 (edge-a's link) and
#                               CLOUD_B=NET.2.1 / EDGE_B=NET.2.2 (edge-b's link)
#   three_hosts_down            deletes them (call it from the script's EXIT trap)
#
# Nothing here touches the host's own interfaces, so the addresses cannot clash with
# anything outside the namespaces.

three_hosts_up() { # prefix, first two octets
    C=$1c$$ A=$1a$$ B=$1b$$
    CLOUD_IP=$2.0.1
    CLOUD_A=$2.1.1 EDGE_A=$2.1.2
    CLOUD_B=$2.2.1 EDGE_B=$2.2.2
    local ns
    for ns in "$C" "$A" "$B"; do
        ip netns add "$ns"
        # A lookup inside a namespace would hang on the host's unreachable resolver.
        mkdir -p "/etc/netns/$ns" && echo "nameserver 127.0.0.1" > "/etc/netns/$ns/resolv.conf"
        ip -n "$ns" link set lo up
        # Many transfers are a new connection each: let a client reuse its TIME_WAIT ports.
        ip netns exec "$ns" sysctl -qw net.ipv4.tcp_tw_reuse=1
    done
    ip -n "$C" addr add "$CLOUD_IP/32" dev lo
    # Both ends made inside their namespaces: no interface ever exists on the host.
    ip link add to-cloud netns "$A" type veth peer name to-a netns "$C"
    ip link add to-cloud netns "$B" type veth peer name to-b netns "$C"
    ip -n "$C" addr add "$CLOUD_A/24" dev to-a && ip -n "$C" link set to-a up
    ip -n "$C" addr add "$CLOUD_B/24" dev to-b && ip -n "$C" link set to-b up
    ip -n "$A" addr add "$EDGE_A/24" dev to-cloud && ip -n "$A" link set to-cloud up
    ip -n "$B" addr add "$EDGE_B/24" dev to-cloud && ip -n "$B" link set to-cloud up
    ip -n "$A" route add default via "$CLOUD_A"
    ip -n "$B" route add default via "$CLOUD_B"
    # Said outright: a new namespace may copy the host's setting, and a host with containers
    # forwards.
    ip netns exec "$C" sysctl -qw net.ipv4.ip_forward=0
}

three_hosts_down() {
    local ns
    for ns in ${C:+"$C"} ${A:+"$A"} ${B:+"$B"}; do
        ip netns del "$ns" 2>/dev/null || true
        rm -rf "/etc/netns/$ns"
    done
}
